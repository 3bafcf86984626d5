use super::*;

fn params(plain_ok: bool) -> SessionParams {
    SessionParams {
        hostname: "mx.example.test".into(),
        starttls_available: true,
        tls_active: false,
        plaintext_login_allowed: plain_ok,
        append_limit: 1000,
    }
}

/// Feeds `input` whole and byte by byte; both must give the same.
fn both(p: SessionParams, input: &[u8]) -> (String, Vec<ImapEvent>) {
    let mut s = ImapSession::new(p.clone());
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    s.receive(input, &mut out, &mut ev);
    let mut s2 = ImapSession::new(p);
    let (mut out2, mut ev2) = (Vec::new(), Vec::new());
    for b in input {
        s2.receive(std::slice::from_ref(b), &mut out2, &mut ev2);
    }
    assert_eq!(out, out2);
    assert_eq!(ev, ev2);
    (String::from_utf8_lossy(&out).into_owned(), ev)
}

#[test]
fn capability_and_logout() {
    let (out, ev) = both(params(true), b"a CAPABILITY\r\nb LOGOUT\r\nc NOOP\r\n");
    assert!(out.contains("* CAPABILITY IMAP4rev1"), "{out}");
    assert!(
        out.contains("AUTH=PLAIN") && out.contains("STARTTLS"),
        "{out}"
    );
    assert!(out.contains("a OK") && out.contains("* BYE") && out.contains("b OK"));
    assert!(!out.contains("c OK"), "nothing after LOGOUT: {out}");
    assert_eq!(ev, vec![ImapEvent::Close]);
}

#[test]
fn login_refused_in_clear_off_loopback() {
    let (out, ev) = both(params(false), b"a LOGIN bob secret\r\nb CAPABILITY\r\n");
    assert!(out.contains("a NO [PRIVACYREQUIRED]"), "{out}");
    assert!(out.contains("LOGINDISABLED"), "{out}");
    assert!(ev.is_empty());
}

#[test]
fn login_waits_for_the_driver() {
    let (out, ev) = both(params(true), b"a LOGIN bob \"se cret\"\r\nb NOOP\r\n");
    assert_eq!(
        ev,
        vec![ImapEvent::Login {
            tag: "a".into(),
            user: "bob".into(),
            password: "se cret".into()
        }]
    );
    assert!(!out.contains("b OK"), "the next command waits: {out}");
    let mut s = ImapSession::new(params(true));
    let (mut o, mut e) = (Vec::new(), Vec::new());
    s.receive(b"a LOGIN bob x\r\nb NOOP\r\n", &mut o, &mut e);
    assert!(!s.wants_input());
    s.login_done("a", true, &mut o);
    s.run(&mut o, &mut e);
    let o = String::from_utf8_lossy(&o);
    assert!(
        o.contains("a OK [CAPABILITY") && o.contains("b OK NOOP"),
        "{o}"
    );
    assert_eq!(s.state(), State::Authenticated);
}

#[test]
fn authenticate_plain_with_and_without_initial_response() {
    // "\0bob\0secret"
    let b64 = "AGJvYgBzZWNyZXQ=";
    let (_, ev) = both(
        params(true),
        format!("a AUTHENTICATE PLAIN {b64}\r\n").as_bytes(),
    );
    assert!(
        matches!(&ev[..], [ImapEvent::Login { user, password, .. }] if user == "bob" && password == "secret")
    );
    let (out, ev) = both(
        params(true),
        format!("a AUTHENTICATE PLAIN\r\n{b64}\r\n").as_bytes(),
    );
    assert!(out.starts_with("+ \r\n") || out.starts_with("+ "), "{out}");
    assert!(matches!(&ev[..], [ImapEvent::Login { user, .. }] if user == "bob"));
    let (out, ev) = both(params(true), b"a AUTHENTICATE PLAIN\r\n*\r\n");
    assert!(out.contains("a BAD"), "{out}");
    assert!(ev.is_empty());
    let (out, _) = both(params(true), b"a AUTHENTICATE PLAIN !!!\r\n");
    assert!(out.contains("a BAD"), "{out}");
}

#[test]
fn three_bads_in_a_row_end_the_session() {
    let (out, ev) = both(
        params(true),
        b"a FOO\r\nb BAR\r\nc NOOP\r\nd X\r\ne Y\r\nf Z\r\ng NOOP\r\n",
    );
    assert!(
        out.contains("c OK"),
        "a good command resets the count: {out}"
    );
    assert!(out.contains("* BYE"), "{out}");
    assert!(!out.contains("g OK"), "{out}");
    assert_eq!(ev, vec![ImapEvent::Close]);
}

#[test]
fn mailbox_commands_need_a_login_and_a_selection() {
    let (out, ev) = both(params(true), b"a SELECT INBOX\r\nb FETCH 1 FLAGS\r\n");
    assert!(out.contains("a BAD") && out.contains("b BAD"), "{out}");
    assert!(ev.is_empty());
    let mut s = ImapSession::new(params(true));
    let (mut o, mut e) = (Vec::new(), Vec::new());
    s.receive(b"a LOGIN bob x\r\n", &mut o, &mut e);
    s.login_done("a", true, &mut o);
    e.clear();
    o.clear();
    s.receive(b"b FETCH 1 FLAGS\r\nc SELECT INBOX\r\n", &mut o, &mut e);
    let text = String::from_utf8_lossy(&o);
    assert!(text.contains("b BAD"), "{text}");
    assert!(matches!(
        &e[..],
        [ImapEvent::Run(Command {
            body: CommandBody::Select { .. },
            ..
        })]
    ));
    assert!(!s.wants_input());
    s.command_done(State::Selected);
    assert_eq!(s.state(), State::Selected);
}

#[test]
fn idle_ends_with_done() {
    let mut s = ImapSession::new(params(true));
    let (mut o, mut e) = (Vec::new(), Vec::new());
    s.receive(b"a LOGIN bob x\r\n", &mut o, &mut e);
    s.login_done("a", true, &mut o);
    s.command_done(State::Selected);
    e.clear();
    s.receive(b"b IDLE\r\nDO", &mut o, &mut e);
    assert!(s.is_idling());
    assert!(matches!(
        &e[..],
        [ImapEvent::Run(Command {
            body: CommandBody::Idle,
            ..
        })]
    ));
    e.clear();
    s.receive(b"NE\r\n", &mut o, &mut e);
    assert_eq!(e, vec![ImapEvent::IdleDone { tag: "b".into() }]);
}

#[test]
fn enable_condstore() {
    let mut s = ImapSession::new(params(true));
    let (mut o, mut e) = (Vec::new(), Vec::new());
    s.receive(b"a LOGIN bob x\r\n", &mut o, &mut e);
    s.login_done("a", true, &mut o);
    o.clear();
    s.receive(b"b ENABLE QRESYNC\r\n", &mut o, &mut e);
    assert!(s.condstore && s.qresync);
    assert!(String::from_utf8_lossy(&o).contains("* ENABLED QRESYNC"));
}
