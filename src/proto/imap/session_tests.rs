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

/// A session logged in as bob, output and events cleared.
fn logged_in() -> ImapSession {
    let mut s = ImapSession::new(params(true));
    let (mut o, mut e) = (Vec::new(), Vec::new());
    s.receive(b"a LOGIN bob x\r\n", &mut o, &mut e);
    s.login_done("a", true, &mut o);
    s
}

#[test]
fn qresync_parameters_need_enable_qresync() {
    let mut s = logged_in();
    let (mut o, mut e) = (Vec::new(), Vec::new());
    s.receive(b"b SELECT INBOX (QRESYNC (7 5))\r\n", &mut o, &mut e);
    let text = String::from_utf8_lossy(&o);
    assert!(text.contains("b BAD"), "RFC 7162 3.2.5: {text}");
    assert!(e.is_empty());
    s.command_done(State::Selected);
    o.clear();
    s.receive(
        b"c UID FETCH 1:* FLAGS (CHANGEDSINCE 5 VANISHED)\r\n",
        &mut o,
        &mut e,
    );
    assert!(String::from_utf8_lossy(&o).contains("c BAD"));
    assert!(e.is_empty());
    s.receive(b"d ENABLE QRESYNC\r\n", &mut o, &mut e);
    assert!(s.condstore, "QRESYNC implies CONDSTORE");
    s.receive(b"e SELECT INBOX (QRESYNC (7 5 1:9))\r\n", &mut o, &mut e);
    let [ImapEvent::Run(Command {
        body: CommandBody::Select { params, .. },
        ..
    })] = &e[..]
    else {
        panic!("{e:?}");
    };
    let q = params.qresync.as_ref().map(|q| (q.uidvalidity, q.modseq));
    assert_eq!(q, Some((7, 5)));
    s.command_done(State::Selected);
    e.clear();
    s.receive(
        b"f UID FETCH 1:* FLAGS (CHANGEDSINCE 5 VANISHED)\r\n",
        &mut o,
        &mut e,
    );
    assert!(matches!(
        &e[..],
        [ImapEvent::Run(Command {
            body: CommandBody::Fetch { vanished: true, .. },
            ..
        })]
    ));
}

/// The known-uids of `SELECT INBOX (QRESYNC (1 1 SET))`.
fn known(set: &str) -> crate::proto::imap::types::SeqSet {
    let line = format!("a SELECT INBOX (QRESYNC (1 1 {set}))");
    match crate::proto::imap::parser::parse_command(line.as_bytes()) {
        Ok(Command {
            body: CommandBody::Select { params, .. },
            ..
        }) => params
            .qresync
            .and_then(|q| q.known_uids)
            .expect("known uids"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn qresync_vanished_from_expunge_records() {
    use super::super::qresync::{vanished, write_vanished, Expunges};
    // Present 1,2,5,9; records say 3,4,6 went after the client's modseq
    // (7 and 8 went before: the client knows).
    let present = [1, 2, 5, 9];
    let rec = Expunges::Known(vec![3, 4, 6]);
    assert_eq!(vanished(None, 10, &present, &rec), vec![(3, 4), (6, 6)]);
    // Only what the client says it knows.
    let k = known("1:3,6:*");
    assert_eq!(vanished(Some(&k), 10, &present, &rec), vec![(3, 3), (6, 6)]);
    let mut out = Vec::new();
    write_vanished(&mut out, true, &[(3, 4), (6, 6)]);
    assert_eq!(out, b"* VANISHED (EARLIER) 3:4,6\r\n");
    out.clear();
    write_vanished(&mut out, true, &[]);
    assert!(out.is_empty());
}

#[test]
fn qresync_forgotten_expunges_report_every_gap_in_ranges() {
    use super::super::qresync::{resend, vanished, Expunges};
    let present = [2, 5, 6, 9];
    // Everything up to UIDNEXT-1 that is not here.
    assert_eq!(
        vanished(None, 12, &present, &Expunges::Forgotten),
        vec![(1, 1), (3, 4), (7, 8), (10, 11)]
    );
    // A client naming every UID costs ranges, not 4 billion entries.
    let k = known("1:4294967295");
    assert_eq!(
        vanished(Some(&k), 12, &present, &Expunges::Forgotten),
        vec![(1, 1), (3, 4), (7, 8), (10, 11)]
    );
    let k = known("5:7");
    assert_eq!(
        vanished(Some(&k), 12, &present, &Expunges::Forgotten),
        vec![(7, 7)]
    );
    // An empty mailbox never used: nothing can have vanished.
    assert!(vanished(None, 1, &[], &Expunges::Forgotten).is_empty());
    // FETCH again: changed after the modseq, among the known UIDs.
    let k = known("1:5");
    assert!(resend(Some(&k), 12, 5, 20, 10));
    assert!(!resend(Some(&k), 12, 6, 20, 10), "not known to the client");
    assert!(!resend(None, 12, 5, 10, 10), "not changed since");
    assert!(resend(None, 12, 9, 11, 10));
}

#[test]
fn a_name_that_is_not_modified_utf7_is_no_not_bad() {
    let mut s = logged_in();
    let (mut o, mut e) = (Vec::new(), Vec::new());
    s.receive(
        b"b SELECT a&b\r\nc CREATE \"x&AOQ\"\r\nd SELECT \"p\xc3\xa4\"\r\n",
        &mut o,
        &mut e,
    );
    let text = String::from_utf8_lossy(&o);
    for tag in ["b NO", "c NO", "d NO"] {
        assert!(text.contains(tag), "{tag} (as Dovecot): {text}");
    }
    assert!(e.is_empty(), "nothing for the driver: {e:?}");
    assert!(!s.is_closed(), "NOs do not count as BADs: {text}");
    // Still BAD: a broken command, and anything before LOGIN.
    o.clear();
    s.receive(b"e SELECT\r\n", &mut o, &mut e);
    assert!(String::from_utf8_lossy(&o).contains("e BAD"));
    let (out, _) = both(params(true), b"a SELECT a&b\r\n");
    assert!(out.contains("a BAD"), "{out}");
}

#[test]
fn bads_of_known_commands_do_not_end_the_session() {
    // imaptest listext: four refused LIST options in a row, then more.
    let input = b"a LIST (imaptest) \"\" \"\"\r\nb LIST (recursivematch) \"\" \"\"\r\n\
c LIST (recursivematch remote) \"\" \"\"\r\nd LIST \"\" \"\" RETURN (imaptest)\r\ne CAPABILITY\r\n";
    let (out, ev) = both(params(true), input);
    for t in ["a BAD", "b BAD", "c BAD", "d BAD", "e OK"] {
        assert!(out.contains(t), "{t}: {out}");
    }
    assert!(!out.contains("* BYE"), "{out}");
    assert!(ev.is_empty());
    // Those do not reset the count of lines that are no IMAP at all.
    let (out, ev) = both(
        params(true),
        b"GET / HTTP/1.1\r\nx NOOP y\r\nHost: a\r\nz FOO\r\n",
    );
    assert!(out.contains("* BYE"), "{out}");
    assert_eq!(ev, vec![ImapEvent::Close]);
}

#[test]
fn recent_is_claimed_once_per_uid() {
    use super::super::recent::{RecentSet, MAX_CLAIMS};
    // SELECT claimed 5..8; 8 and 9 went to another session; 10..12 here.
    let mut r = RecentSet::selected(5, 8);
    assert!(!r.contains(4) && r.contains(5) && r.contains(7) && !r.contains(8));
    assert!(r.wants(10) && !r.wants(8));
    r.claim(10, 10); // someone else was first: nothing, and not asked again
    assert!(!r.wants(10) && !r.contains(9));
    r.claim(10, 13);
    assert!(r.contains(12) && !r.contains(13) && !r.contains(9));
    r.claim(13, 14);
    assert!(r.contains(13), "adjacent claims merge");
    // EXAMINE shows the unclaimed as recent and never claims.
    let e = RecentSet::examined(20);
    assert!(e.contains(20) && e.contains(4_000_000_000) && !e.contains(19));
    assert!(!e.wants(u32::MAX));
    // Bounded: a session that keeps losing races forgets old claims.
    let mut b = RecentSet::selected(1, 2);
    for i in 0..(MAX_CLAIMS as u32 + 5) {
        b.claim(10 + 2 * i, 11 + 2 * i);
    }
    assert!(!b.contains(1) && b.contains(10 + 2 * (MAX_CLAIMS as u32 + 4)));
}
