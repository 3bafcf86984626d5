use super::*;

fn params(plain_ok: bool) -> ImapParams {
    ImapParams {
        hostname: "mx.example.test".into(),
        starttls_available: true,
        tls_active: false,
        plaintext_login_allowed: plain_ok,
        append_limit: 1000,
    }
}

/// Feeds `input` whole and byte by byte; both must give the same output
/// and events. Password checks are answered `ok` by the closure.
fn run(p: ImapParams, input: &[u8], ok: bool) -> (String, Vec<ImapEvent>) {
    let mut results = Vec::new();
    for bytewise in [false, true] {
        let mut s = ImapSession::new(p.clone());
        let mut out = Vec::new();
        let mut all = Vec::new();
        s.greeting(&mut out);
        let chunks: Vec<&[u8]> = if bytewise {
            input.chunks(1).collect()
        } else {
            vec![input]
        };
        for c in chunks {
            let mut ev = Vec::new();
            s.receive(c, &mut out, &mut ev);
            while let Some(e) = ev.first().cloned() {
                ev.remove(0);
                all.push(e.clone());
                let mut more = Vec::new();
                match e {
                    ImapEvent::Authenticate { user, .. } if ok => {
                        s.login_ok(user, &mut out, &mut more)
                    }
                    ImapEvent::Authenticate { .. } => {
                        s.login_failed(LoginFailure::BadCredentials, &mut out, &mut more)
                    }
                    // The handshake never starts here: what follows in
                    // plaintext must be dropped (see `tls_then_login`).
                    ImapEvent::StartTls => {}
                    ImapEvent::Close => {}
                }
                ev.extend(more);
            }
        }
        results.push((String::from_utf8_lossy(&out).into_owned(), all));
    }
    assert_eq!(results[0], results[1], "whole vs byte by byte");
    results.remove(0)
}

#[test]
fn greeting_and_capability_off_loopback() {
    let (out, _) = run(params(false), b"a CAPABILITY\r\n", true);
    assert!(out.starts_with("* OK [CAPABILITY IMAP4rev1 "), "{out}");
    assert!(
        out.contains("* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS LOGINDISABLED\r\n"),
        "{out}"
    );
    assert!(!out.contains("AUTH=PLAIN"));
    assert!(out.ends_with("a OK CAPABILITY completed\r\n"));
}

#[test]
fn login_refused_without_tls() {
    let (out, ev) = run(params(false), b"a LOGIN bob secret\r\n", true);
    assert!(out.contains("a NO [PRIVACYREQUIRED]"), "{out}");
    assert!(ev.is_empty());
}

#[test]
fn login_and_logout() {
    let (out, ev) = run(
        params(true),
        b"a LOGIN bob \"se cret\"\r\nb NOOP\r\nc LOGOUT\r\n",
        true,
    );
    assert_eq!(
        ev,
        vec![
            ImapEvent::Authenticate {
                user: "bob".into(),
                password: "se cret".into()
            },
            ImapEvent::Close
        ]
    );
    assert!(
        out.contains("a OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID] Logged in\r\n"),
        "{out}"
    );
    assert!(out.contains("b OK NOOP completed\r\n"));
    assert!(
        out.ends_with("* BYE Logging out\r\nc OK LOGOUT completed\r\n"),
        "{out}"
    );
}

#[test]
fn login_with_literal_password() {
    let (out, ev) = run(params(true), b"a LOGIN {3}\r\nbob {2+}\r\npw\r\n", true);
    assert!(out.contains("+ Ready for literal data\r\n"), "{out}");
    assert_eq!(
        ev,
        vec![ImapEvent::Authenticate {
            user: "bob".into(),
            password: "pw".into()
        }]
    );
}

#[test]
fn bad_password() {
    let (out, _) = run(params(true), b"a LOGIN bob x\r\nb SELECT INBOX\r\n", false);
    assert!(
        out.contains("a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"),
        "{out}"
    );
    assert!(out.contains("b BAD Log in first\r\n"), "{out}");
}

#[test]
fn authenticate_plain_with_and_without_initial_response() {
    // "\0bob\0pw"
    let (out, ev) = run(params(true), b"a AUTHENTICATE PLAIN AGJvYgBwdw==\r\n", true);
    assert!(out.contains("a OK [CAPABILITY"), "{out}");
    assert_eq!(
        ev,
        vec![ImapEvent::Authenticate {
            user: "bob".into(),
            password: "pw".into()
        }]
    );
    let (out, ev) = run(
        params(true),
        b"a AUTHENTICATE PLAIN\r\nAGJvYgBwdw\r\n",
        true,
    );
    assert!(out.contains("+ \r\na OK [CAPABILITY"), "{out}");
    assert_eq!(ev.len(), 1);
    let (out, ev) = run(params(true), b"a AUTHENTICATE PLAIN\r\n*\r\n", true);
    assert!(out.contains("a BAD AUTHENTICATE cancelled"), "{out}");
    assert!(ev.is_empty());
    let (out, _) = run(
        params(true),
        b"a AUTHENTICATE PLAIN YWxpY2UAYm9iAHB3\r\n",
        true,
    );
    assert!(out.contains("a NO [AUTHENTICATIONFAILED]"), "{out}");
    let (out, _) = run(params(true), b"a AUTHENTICATE CRAM-MD5\r\n", true);
    assert!(out.contains("a NO [CANNOT]"), "{out}");
}

#[test]
fn starttls_drops_plaintext_injection() {
    // The LOGIN after STARTTLS in the same packet must not be run.
    let (out, ev) = run(params(false), b"a STARTTLS\r\nb LOGIN bob pw\r\n", true);
    assert!(out.contains("a OK Begin TLS negotiation now\r\n"), "{out}");
    assert_eq!(ev, vec![ImapEvent::StartTls]);
    assert!(!out.contains("b "), "{out}");
}

#[test]
fn starttls_when_tls_active_is_bad() {
    let p = ImapParams {
        tls_active: true,
        starttls_available: false,
        ..params(true)
    };
    let (out, _) = run(p, b"a STARTTLS\r\nb CAPABILITY\r\n", true);
    assert!(out.contains("a BAD"), "{out}");
    assert!(!out.contains("STARTTLS LOGINDISABLED"));
    assert!(out.contains("AUTH=PLAIN"));
}

#[test]
fn three_bads_in_a_row_end_the_session() {
    let (out, ev) = run(
        params(true),
        b"a FOO\r\nb NOOP\r\nc FOO\r\nd FOO\r\ne\r\nf NOOP\r\n",
        true,
    );
    assert!(out.contains("b OK NOOP"), "{out}");
    assert!(out.contains("* BYE Too many invalid commands\r\n"), "{out}");
    assert!(!out.contains("f OK"), "{out}");
    assert_eq!(ev, vec![ImapEvent::Close]);
}

#[test]
fn huge_literal_is_refused_without_allocating() {
    let (out, ev) = run(params(true), b"a LOGIN {4000000000}\r\n", true);
    assert!(out.contains("BAD"), "{out}");
    assert!(!out.contains("+ Ready"), "{out}");
    assert!(ev.is_empty() || ev == vec![ImapEvent::Close], "{ev:?}");
}

#[test]
fn append_before_login_is_bad_and_costs_nothing() {
    let (out, _) = run(params(true), b"a APPEND INBOX {5}\r\nb NOOP\r\n", true);
    assert!(out.contains("a BAD Log in first"), "{out}");
    assert!(!out.contains("+ Ready"), "{out}");
    assert!(out.contains("b OK NOOP"), "{out}");
}

#[test]
fn unimplemented_after_login_is_no() {
    let (out, _) = run(
        params(true),
        b"a LOGIN bob pw\r\nb SELECT INBOX\r\nc ID NIL\r\n",
        true,
    );
    assert!(out.contains("b NO [CANNOT]"), "{out}");
    assert!(
        out.contains("* ID (\"name\" \"mailgate\")\r\nc OK"),
        "{out}"
    );
}

#[test]
fn tls_then_login() {
    let mut s = ImapSession::new(params(false));
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    s.receive(b"a STARTTLS\r\nb LOGIN bob pw\r\n", &mut out, &mut ev);
    assert_eq!(ev, vec![ImapEvent::StartTls]);
    assert!(!s.wants_input());
    s.tls_started(&mut out, &mut ev);
    out.clear();
    s.receive(b"c CAPABILITY\r\nd LOGIN bob pw\r\n", &mut out, &mut ev);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("AUTH=PLAIN") && !text.contains("STARTTLS"),
        "{text}"
    );
    assert!(!text.contains("b "), "{text}");
    assert_eq!(
        ev.last(),
        Some(&ImapEvent::Authenticate {
            user: "bob".into(),
            password: "pw".into()
        })
    );
}
