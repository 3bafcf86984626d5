//! Fuzz harnesses for mailgate: one function per target, shared by the
//! cargo-fuzz binaries (`fuzz_targets/*.rs`) and by `tests/replay.rs`,
//! which replays the seeds and every input that ever found a bug
//! (`regressions/TARGET/*`) on stable Rust.
//!
//! Owns: driving each sans-IO core the way its driver would, with every
//! choice the driver makes (where reads split, which events succeed)
//! taken from the input, and checking the promises the cores make beyond
//! "no panic" (reply framing, recipient limits, no DELE before delivery).
//! Must not: touch the network or the disk.
//!
//! Input layout for the protocol targets: a few header bytes (flags and a
//! seed), then the bytes the peer sends. Read splits and event answers come
//! from a small PRNG seeded by the header, so the fuzzer reaches every split
//! point without spending input bytes on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use mailgate::config::{Config, Keep, Resolution, TlsMode};
use mailgate::proto::dns::{self, LookupStep, MxLookup, QType, MAX_MX_HOSTS};
use mailgate::proto::pop3_client::{FetchEvent, FetchParams, Pop3Fetch};
use mailgate::proto::pop3_server::{LoginFailure, Pop3Event, Pop3Params, Pop3Session};
use mailgate::proto::smtp_client::{
    ClientEvent, ClientParams, Credentials, Envelope, SmtpClient, TlsPolicy,
};
use mailgate::proto::smtp_server::{
    DeliveryOutcome, Event, Recipients, Role, SessionParams, SmtpSession,
};
use mailgate::smartpop::records::Records;
use mailgate::smartpop::route::{route, Route, MAX_ADDRESSES};
use mailgate::store::maildrop::MessageInfo;

/// RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with its CRLF.
const MAX_SMTP_REPLY_LINE: usize = 512;
/// RFC 2449 4: a POP3 response line is at most 512 octets with its CRLF.
const MAX_POP3_RESPONSE_LINE: usize = 512;
/// Rounds of reading and answering per input: bounds the time per run.
const MAX_STEPS: usize = 10_000;

/// SplitMix64: deterministic choices from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: &[u8]) -> Rng {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for &b in seed {
            s = s.rotate_left(8) ^ u64::from(b);
        }
        Rng(s)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability 1/n.
    fn one_in(&mut self, n: u64) -> bool {
        self.next() % n == 0
    }

    /// A read of `input[pos..]` that never runs past the end of a line:
    /// a client core must see a reply alone when it acts on it (STARTTLS:
    /// data after the 220 is an injection and ends the session).
    fn line_chunk(&mut self, input: &[u8], pos: usize) -> usize {
        let n = self.chunk(input.len() - pos);
        match input[pos..pos + n].iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => n,
        }
    }

    /// A read size: mostly small (every split point), sometimes all of it.
    fn chunk(&mut self, left: usize) -> usize {
        let n = match self.next() % 8 {
            0 => left,
            1..=3 => 1 + (self.next() % 4) as usize,
            _ => 1 + (self.next() % 600) as usize,
        };
        n.clamp(1, left.max(1))
    }
}

/// Splits off `N` header bytes (zeros when the input is shorter).
fn header<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut h = [0u8; N];
    let n = data.len().min(N);
    h[..n].copy_from_slice(&data[..n]);
    (h, &data[n..])
}

fn bit(flags: u8, n: u8) -> bool {
    flags & (1 << n) != 0
}

/// Every line of `out` ends in CRLF, has no other CR or LF, and fits the
/// limit; `first` checks the start of each line.
fn check_lines(out: &[u8], limit: usize, first: &dyn Fn(&[u8]) -> bool) {
    if out.is_empty() {
        return;
    }
    assert!(out.ends_with(b"\r\n"), "output not ended by CRLF: {out:?}");
    for line in out[..out.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(!line.contains(&b'\r'), "bare CR in output: {line:?}");
        assert!(
            line.len() + 2 <= limit,
            "output line over {limit}: {line:?}"
        );
        assert!(first(line), "malformed output line: {line:?}");
    }
    // No bare LF either: every LF has its CR.
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF in output: {out:?}");
        }
    }
}

fn smtp_reply_line(line: &[u8]) -> bool {
    line.len() >= 3
        && line[..3].iter().all(u8::is_ascii_digit)
        && matches!(line.get(3), None | Some(b' ') | Some(b'-'))
}

// ---- SMTP server ---------------------------------------------------------

/// Local domains example.test and other.test with bob, alice and
/// postmaster; other.test has a catch-all; everything else is remote.
struct TestRcpts;

impl Recipients for TestRcpts {
    fn is_local_domain(&self, domain: &str) -> bool {
        domain == "example.test" || domain == "other.test"
    }
    fn resolve(&self, address: &str) -> Option<Resolution> {
        let (local, domain) = address.rsplit_once('@')?;
        let domain = domain.to_ascii_lowercase();
        if !self.is_local_domain(&domain) {
            return Some(Resolution {
                local: vec![],
                remote: vec![address.to_string()],
            });
        }
        let local = local.to_ascii_lowercase();
        if domain == "other.test" {
            return Some(Resolution {
                local: vec!["info@other.test".into()],
                remote: vec![],
            });
        }
        ["bob", "alice", "postmaster"]
            .contains(&local.as_str())
            .then(|| Resolution {
                local: vec![format!("{local}@{domain}")],
                remote: vec![],
            })
    }
    fn postmaster_domain(&self) -> Option<String> {
        Some("example.test".into())
    }
}

/// What one run of a session produced, for comparing two runs.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    out: Vec<u8>,
    events: Vec<String>,
    /// All input was read and every event answered (not cut by MAX_STEPS).
    complete: bool,
    /// STARTTLS/STLS went ahead: plaintext after it is dropped, so where
    /// the reads split matters and two runs may differ.
    tls: bool,
}

/// Header: flags (role, limits, policy), then a 2-byte seed. The session
/// runs twice: reads split at random (answers sometimes delayed, so input
/// is held) and the whole input in one read. Where reads split must not
/// change a single reply or transaction (RFC 5321 2.3.7: lines, not
/// packets, are the unit), unless STARTTLS went ahead.
pub fn smtp_server(data: &[u8]) {
    let ([flags, s0, s1], input) = header::<3>(data);
    let split = run_smtp(flags, [s0, s1], input, true);
    let whole = run_smtp(flags, [s0, s1], input, false);
    if split.complete && whole.complete && !split.tls && !whole.tls {
        assert_eq!(
            String::from_utf8_lossy(&split.out),
            String::from_utf8_lossy(&whole.out),
            "replies depend on where reads split"
        );
        assert_eq!(
            split.events, whole.events,
            "events depend on where reads split"
        );
    }
}

fn run_smtp(flags: u8, seed: [u8; 2], input: &[u8], split: bool) -> Transcript {
    // Answers come from one generator, reads and delays from another, so
    // both runs answer the same events the same way.
    let mut answers = Rng::new(&[flags, seed[0], seed[1]]);
    let mut reads = Rng::new(&[seed[1], seed[0], flags, 1]);
    let role = match flags & 3 {
        1 => Role::Submission,
        2 => Role::Smtps,
        _ => Role::Mx,
    };
    let max_recipients = 3;
    let params = SessionParams {
        hostname: "mx.example.test".into(),
        peer: if bit(flags, 2) {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))
        },
        role,
        max_message_size: if bit(flags, 3) { 64 } else { 100_000 },
        max_recipients,
        relay_allowed: bit(flags, 4),
        tls_active: role == Role::Smtps,
        starttls_available: bit(flags, 5),
        plaintext_auth_allowed: bit(flags, 6),
    };
    let mut s = SmtpSession::new(params);
    let mut t = Transcript {
        out: Vec::new(),
        events: Vec::new(),
        complete: false,
        tls: false,
    };
    let mut out = Vec::new();
    let mut events = Vec::new();
    // The body of the transaction under way, as the driver keeps it.
    let mut body: Vec<u8> = Vec::new();
    s.greeting(&mut out);
    let mut pos = 0;
    let mut steps = 0;
    while steps < MAX_STEPS && !s.is_closed() {
        steps += 1;
        check_lines(&out, MAX_SMTP_REPLY_LINE, &smtp_reply_line);
        t.out.append(&mut out);
        // Answer what the session waits for, now or after more input
        // arrived and was held (the driver's worker is slow).
        let answer_now = !split || reads.one_in(2);
        if !events.is_empty() && (!s.wants_input() || pos >= input.len() || answer_now) {
            for event in std::mem::take(&mut events) {
                // Where reads split decides how the body is cut into
                // chunks (and whether a Discard is needed), not what the
                // delivered message is: only that is in the transcript.
                if !matches!(event, Event::Body(_) | Event::Discard | Event::Deliver(_)) {
                    t.events.push(format!("{event:?}"));
                }
                match event {
                    Event::Body(chunk) => {
                        assert!(
                            !chunk.is_empty()
                                && chunk.len() <= mailgate::proto::smtp_server::BODY_CHUNK,
                            "a body chunk of {} octets",
                            chunk.len()
                        );
                        body.extend_from_slice(&chunk);
                    }
                    Event::Discard => body.clear(),
                    Event::Deliver(mut tx) => {
                        assert!(tx.data.is_empty(), "the data comes in Body events");
                        tx.data = std::mem::take(&mut body);
                        t.events.push(format!("{:?}", Event::Deliver(tx.clone())));
                        assert!(
                            !tx.recipients.is_empty(),
                            "a transaction without recipients"
                        );
                        assert!(tx.recipients.len() <= max_recipients, "over max_recipients");
                        let outcome = match answers.next() % 4 {
                            0 => DeliveryOutcome::TempFail {
                                code: 452,
                                enhanced: "4.3.1",
                                text: "Insufficient system storage\r\n\0".into(),
                            },
                            1 => DeliveryOutcome::PermFail {
                                code: 250,
                                enhanced: "5.2.2",
                                text: "odd code".into(),
                            },
                            _ => DeliveryOutcome::Accepted {
                                queue_id: "Q1\r\n250 fake".into(),
                            },
                        };
                        s.delivered(outcome, &TestRcpts, &mut out, &mut events);
                    }
                    Event::Authenticate { .. } => {
                        let ok = answers.one_in(2);
                        s.auth_result(ok, &TestRcpts, &mut out, &mut events);
                    }
                    Event::StartTls => {
                        t.tls = true;
                        s.tls_started(&mut out, &mut events);
                    }
                    Event::Close => {}
                }
            }
            continue;
        }
        if pos >= input.len() || !s.wants_input() {
            break;
        }
        let n = if split {
            reads.chunk(input.len() - pos)
        } else {
            input.len() - pos
        };
        s.receive(&input[pos..pos + n], &TestRcpts, &mut out, &mut events);
        pos += n;
    }
    t.complete =
        (pos >= input.len() || s.is_closed()) && events.iter().all(|e| matches!(e, Event::Close));
    check_lines(&out, MAX_SMTP_REPLY_LINE, &smtp_reply_line);
    t.out.append(&mut out);
    if bit(flags, 7) {
        s.timed_out(&mut out);
    } else {
        s.shutting_down(&mut out);
    }
    check_lines(&out, MAX_SMTP_REPLY_LINE, &smtp_reply_line);
    t.out.append(&mut out);
    t
}

// ---- POP3 server ---------------------------------------------------------

fn listing() -> Vec<MessageInfo> {
    (1..=3)
        .map(|i| MessageInfo {
            path: PathBuf::from(format!("new/170000000{i}.M1P1Q{i}.host,S=10,W=12")),
            size: 12 * i,
            uidl: format!("170000000{i}.M1P1Q{i}"),
        })
        .collect()
}

/// Header: flags (TLS, plaintext login), then a 2-byte seed. Two runs,
/// reads split and whole, must answer alike (see `smtp_server`).
pub fn pop3_server(data: &[u8]) {
    let ([flags, s0, s1], input) = header::<3>(data);
    let split = run_pop3(flags, [s0, s1], input, true);
    let whole = run_pop3(flags, [s0, s1], input, false);
    if split.complete && whole.complete && !split.tls && !whole.tls {
        assert_eq!(
            String::from_utf8_lossy(&split.out),
            String::from_utf8_lossy(&whole.out),
            "responses depend on where reads split"
        );
        assert_eq!(
            split.events, whole.events,
            "events depend on where reads split"
        );
    }
}

fn run_pop3(flags: u8, seed: [u8; 2], input: &[u8], split: bool) -> Transcript {
    let mut answers = Rng::new(&[flags, seed[0], seed[1]]);
    let mut reads = Rng::new(&[seed[1], seed[0], flags, 1]);
    let mut s = Pop3Session::new(Pop3Params {
        hostname: "mx.example.test".into(),
        stls_available: bit(flags, 0),
        tls_active: bit(flags, 1),
        plaintext_login_allowed: bit(flags, 2),
    });
    let mut t = Transcript {
        out: Vec::new(),
        events: Vec::new(),
        complete: false,
        tls: false,
    };
    let mut out = Vec::new();
    let mut events = Vec::new();
    s.greeting(&mut out);
    let mut pos = 0;
    let mut steps = 0;
    let pop3_line = |l: &[u8]| !l.is_empty();
    while steps < MAX_STEPS && !s.is_closed() {
        steps += 1;
        check_lines(&out, MAX_POP3_RESPONSE_LINE, &pop3_line);
        t.out.append(&mut out);
        let answer_now = !split || reads.one_in(2);
        if !events.is_empty() && (!s.wants_input() || pos >= input.len() || answer_now) {
            for event in std::mem::take(&mut events) {
                t.events.push(format!("{event:?}"));
                match event {
                    Pop3Event::Authenticate { .. } => match answers.next() % 4 {
                        0 => s.login_failed(LoginFailure::BadCredentials, &mut out, &mut events),
                        1 => s.login_failed(LoginFailure::InUse, &mut out, &mut events),
                        2 => s.login_failed(LoginFailure::Temporary, &mut out, &mut events),
                        _ => {
                            s.login_ok("bob@example.test".into(), listing(), &mut out, &mut events)
                        }
                    },
                    Pop3Event::StartTls => {
                        t.tls = true;
                        s.tls_started(&mut out, &mut events);
                    }
                    Pop3Event::Send { index, .. } => {
                        assert!(index < 3, "Send of a message not in the listing");
                        if answers.one_in(8) {
                            s.send_failed(&mut events);
                        } else {
                            s.send_done(&mut out, &mut events);
                        }
                    }
                    Pop3Event::Commit { deleted, .. } => {
                        assert!(deleted.len() <= 3);
                        let ok = !answers.one_in(4);
                        s.commit_done(ok, &mut out, &mut events);
                    }
                    Pop3Event::Close => {}
                }
            }
            continue;
        }
        if pos >= input.len() || !s.wants_input() {
            break;
        }
        let n = if split {
            reads.chunk(input.len() - pos)
        } else {
            input.len() - pos
        };
        s.receive(&input[pos..pos + n], &mut out, &mut events);
        pos += n;
    }
    t.complete = (pos >= input.len() || s.is_closed())
        && events.iter().all(|e| matches!(e, Pop3Event::Close));
    check_lines(&out, MAX_POP3_RESPONSE_LINE, &pop3_line);
    t.out.append(&mut out);
    s.timed_out(&mut out);
    t.out.append(&mut out);
    t
}

// ---- config --------------------------------------------------------------

/// The whole input is the INI text; addresses in it are then resolved.
pub fn config(data: &[u8]) {
    // `Config::load` refuses non-UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((config, _warnings)) = Config::parse(Path::new("fuzz.ini"), text) else {
        return;
    };
    let words = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .filter(|w| w.contains('@'))
        .take(20);
    for w in words.chain(["bob@example.test", "a+b@c", "@", "x@"]) {
        let _ = config.resolve(w);
        let _ = config.find_login(w);
        if let Some((_, domain)) = w.rsplit_once('@') {
            let _ = config.is_local_domain(domain);
        }
    }
    let _ = config.relay_allowed(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let _ = config.relay_allowed(IpAddr::V6(Ipv6Addr::LOCALHOST));
}

// ---- SmartPop multi-drop routing -----------------------------------------

/// The whole input is the message.
pub fn multidrop_route(data: &[u8]) {
    let calls = std::cell::Cell::new(0usize);
    let resolve = |addr: &str| -> Option<Vec<String>> {
        calls.set(calls.get() + 1);
        let (local, domain) = addr.rsplit_once('@')?;
        match (
            local.to_ascii_lowercase().as_str(),
            domain.to_ascii_lowercase().as_str(),
        ) {
            ("bob" | "alice", "example.test") => Some(vec![addr.to_ascii_lowercase()]),
            ("family", "example.test") => {
                Some(vec!["bob@example.test".into(), "alice@example.test".into()])
            }
            (_, "other.test") => Some(vec![]),
            _ => None,
        }
    };
    let routed = route(data, &resolve);
    assert!(
        calls.get() <= MAX_ADDRESSES,
        "resolver asked {} times",
        calls.get()
    );
    if let Route::Routed { mailboxes, .. } = routed {
        assert!(!mailboxes.is_empty(), "routed to nobody");
        let mut seen = mailboxes.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen.len(),
            mailboxes.len(),
            "a mailbox twice: {mailboxes:?}"
        );
    }
}

// ---- DNS -----------------------------------------------------------------

/// Header: a seed byte and a flags byte. The rest, as raw packets and as
/// the answers to an MX lookup: each answer is a 2-byte length and that
/// many bytes (length 0: the query times out). Bit 0 of an answer's first
/// byte makes it a well-formed start (the query's id and question, with
/// header flags and counts from the input), so the fuzzer reaches the
/// record parsing; otherwise the bytes are used raw with the query's id.
pub fn dns_response(data: &[u8]) {
    let ([seed, flags], rest) = header::<2>(data);
    let qtype = match flags & 3 {
        0 => QType::Mx,
        1 => QType::A,
        _ => QType::Aaaa,
    };
    let _ = dns::parse_response(
        u16::from_be_bytes([seed, flags]),
        "example.test",
        qtype,
        rest,
    );
    let mut framed = rest.to_vec();
    while dns::tcp_take(&mut framed).is_some() {}
    let _ = dns::resolv_conf_nameserver(&String::from_utf8_lossy(rest));

    let want_ipv6 = bit(flags, 2);
    let mut lookup = if bit(flags, 3) {
        MxLookup::addresses_of("smarthost.example.net", want_ipv6, u64::from(seed))
    } else {
        MxLookup::new("example.test", want_ipv6, u64::from(seed))
    };
    let mut step = lookup.start();
    let mut pos = 0;
    for _ in 0..64 {
        let query = match &step {
            LookupStep::Query(q) => q.clone(),
            LookupStep::Done(Ok(hosts)) => {
                assert!(!hosts.is_empty(), "an empty host list is a failure");
                assert!(hosts.len() <= MAX_MX_HOSTS, "{} hosts", hosts.len());
                for h in hosts {
                    assert!(!h.addrs.is_empty(), "host {} without addresses", h.host);
                }
                return;
            }
            LookupStep::Done(Err(_)) => return,
        };
        if pos + 2 > rest.len() {
            return;
        }
        let len = usize::from(u16::from_be_bytes([rest[pos], rest[pos + 1]]));
        pos += 2;
        let end = (pos + len).min(rest.len());
        let answer = &rest[pos..end];
        pos = end;
        if answer.is_empty() {
            step = lookup.on_timeout();
            continue;
        }
        let mut packet = query.id.to_be_bytes().to_vec();
        if answer[0] & 1 == 1 {
            // Flags and counts from the input, then the real question.
            let head = answer.get(1..11).unwrap_or(&answer[1..]);
            packet.extend_from_slice(head);
            packet.resize(12, 0);
            packet.extend_from_slice(query.packet.get(12..).unwrap_or(&[]));
            packet.extend_from_slice(answer.get(11..).unwrap_or(&[]));
        } else {
            packet.extend_from_slice(answer.get(2..).unwrap_or(&[]));
        }
        if let Some(next) = lookup.on_response(&packet) {
            step = next;
        }
    }
}

// ---- SMTP client (outbox) ------------------------------------------------

/// Header: flags (TLS policy, AUTH, sender, SMTPUTF8, recipients, and
/// bit 7: reads may span reply lines), a message length byte and a seed;
/// then the message, then the server's bytes.
pub fn smtp_client(data: &[u8]) {
    let ([flags, msg_len, seed], rest) = header::<3>(data);
    let mut rng = Rng::new(&[flags, msg_len, seed]);
    let (message, input) = rest.split_at(usize::from(msg_len).min(rest.len()));
    let tls = match flags & 3 {
        0 => TlsPolicy::None,
        1 => TlsPolicy::Opportunistic,
        2 => TlsPolicy::Required,
        _ => TlsPolicy::Implicit,
    };
    let params = ClientParams {
        helo_name: "mx.example.test".into(),
        tls,
        auth: bit(flags, 2).then(|| Credentials {
            username: "bob".into(),
            password: "secret".into(),
            bearer: bit(flags, 6),
        }),
        auth_requires_tls: bit(flags, 3),
    };
    let recipients: Vec<String> = ["carol@remote.test", "dan@remote.test", "erin@remote.test"]
        .iter()
        .take(1 + usize::from(flags >> 6))
        .map(|s| s.to_string())
        .collect();
    let mut scan = mailgate::proto::dotstuff::WireScan::new();
    scan.feed(message);
    let env = Envelope {
        reverse_path: if bit(flags, 4) {
            String::new()
        } else {
            "bob@example.test".into()
        },
        recipients: recipients.clone(),
        size: scan.size(),
        eight_bit: scan.eight_bit(),
        smtputf8: bit(flags, 5),
    };
    let mut c = SmtpClient::new(params, env);
    let mut out = Vec::new();
    let mut pos = 0;
    let check = |r: &mailgate::proto::smtp_client::SessionResult| {
        assert_eq!(
            r.recipients.len(),
            recipients.len(),
            "one result per recipient"
        );
        for (got, want) in r.recipients.iter().zip(&recipients) {
            assert_eq!(&got.recipient, want, "results in envelope order");
        }
    };
    let by_line = !bit(flags, 7);
    while pos < input.len() {
        let n = if by_line {
            rng.line_chunk(input, pos)
        } else {
            rng.chunk(input.len() - pos)
        };
        let mut event = c.receive(&input[pos..pos + n], &mut out);
        pos += n;
        if let Some(ClientEvent::SendBody) = event {
            // The driver streams the stored message in pieces.
            for piece in message.chunks(1 + rng.chunk(message.len().max(1))) {
                c.body_chunk(piece, &mut out);
            }
            event = c.body_end(&mut out);
        }
        out.clear();
        match event {
            Some(ClientEvent::StartTls) => {
                if rng.one_in(4) {
                    check(&c.tls_failed("handshake failed"));
                    return;
                }
                c.tls_started(&mut out);
            }
            Some(ClientEvent::Done(result)) => {
                check(&result);
                assert!(c.is_done());
                return;
            }
            // A second request for the body cannot come; nothing to do.
            Some(ClientEvent::SendBody) | None => {}
        }
    }
    let _ = c.reply_timeout();
    let result = if bit(flags, 1) {
        c.timed_out()
    } else {
        c.connection_lost()
    };
    check(&result);
}

// ---- POP3 client (SmartPop) ----------------------------------------------

/// Header: flags (TLS mode, keep policy, size limit, and bit 7: reads may
/// span lines), a records length byte and a seed; then the records file
/// text, then the server's bytes.
pub fn pop3_client(data: &[u8]) {
    let ([flags, rec_len, seed], rest) = header::<3>(data);
    let mut rng = Rng::new(&[flags, rec_len, seed]);
    let (records_text, input) = rest.split_at(usize::from(rec_len).min(rest.len()));
    let (records, _skipped) = Records::parse(records_text);
    let tls = match flags & 3 {
        0 => TlsMode::None,
        1 => TlsMode::StartTls,
        _ => TlsMode::Tls,
    };
    let keep = match (flags >> 2) & 3 {
        0 => Keep::No,
        1 => Keep::Yes,
        _ => Keep::For(std::time::Duration::from_secs(7 * 86_400)),
    };
    let params = FetchParams {
        account: "isp".into(),
        username: "bob123".into(),
        password: "secret".into(),
        tls,
        tls_active: tls == TlsMode::Tls,
        keep,
        max_message_size: if bit(flags, 4) { 100 } else { 100_000 },
        now: 1_700_000_000,
        bearer: bit(flags, 6),
    };
    let mut c = Pop3Fetch::new(params, records.iter());
    // The no-loss rule: with nothing recorded before, DELE n only after
    // message n was delivered.
    let check_dele = records.is_empty();
    let mut delivered: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut pos = 0;
    let mut steps = 0;
    let check = |out: &[u8], delivered: &[u32]| {
        if !check_dele {
            return;
        }
        for line in out.split(|&b| b == b'\n') {
            if let Some(n) = line.strip_prefix(b"DELE ") {
                let n: u32 = String::from_utf8_lossy(n).trim().parse().unwrap_or(0);
                assert!(delivered.contains(&n), "DELE {n} before its delivery");
            }
        }
    };
    let mut body_len = 0u64;
    while steps < MAX_STEPS && !c.is_done() {
        steps += 1;
        check(&out, &delivered);
        out.clear();
        if let Some(event) = events.first().cloned() {
            events.remove(0);
            match event {
                FetchEvent::StartTls => c.tls_started(&mut out),
                FetchEvent::Body(chunk) => body_len += chunk.len() as u64,
                FetchEvent::Deliver { number, .. } => {
                    assert!(
                        body_len <= 100_000 + mailgate::proto::pop3_client::RETR_SLACK,
                        "a message over the bound"
                    );
                    body_len = 0;
                    let ok = !rng.one_in(5);
                    if ok {
                        delivered.push(number);
                    }
                    c.delivered(ok, &mut out, &mut events);
                }
                FetchEvent::Oversized { .. } | FetchEvent::NewMail => {}
                FetchEvent::Done(_) => return,
            }
            continue;
        }
        if pos >= input.len() {
            break;
        }
        let n = if bit(flags, 7) {
            rng.chunk(input.len() - pos)
        } else {
            rng.line_chunk(input, pos)
        };
        c.receive(&input[pos..pos + n], &mut out, &mut events);
        pos += n;
    }
    check(&out, &delivered);
    let _ = c.connection_lost();
}

/// What an IMAP command reader produced, APPEND chunks joined (their
/// split depends on the reads).
#[derive(Debug, PartialEq, Eq)]
enum ImapItem {
    Continue,
    Command(String),
    Bad(Option<String>, String, bool),
    Append(String),
    Data(Vec<u8>),
    Done(String),
    Raw(Vec<u8>),
}

/// The IMAP command reader and parser: the same items whatever the read
/// splits; a BAD's tag is a valid tag; nothing piles up beyond the
/// command limit (a literal over it is refused before it is stored); the
/// strings a LOGIN carries survive our own response encoding.
pub fn imap_parser(data: &[u8]) {
    let ([flags, s0], input) = header::<2>(data);
    let whole = run_imap_parser(flags, s0, input, false);
    let split = run_imap_parser(flags, s0, input, true);
    assert_eq!(whole, split, "items depend on where reads split");
}

fn run_imap_parser(flags: u8, seed: u8, input: &[u8], split: bool) -> Vec<ImapItem> {
    use mailgate::proto::imap::parser::{CommandReader, Input, RawLine, MAX_COMMAND, MAX_LINE};
    use mailgate::proto::imap::types::CommandBody;
    // Decisions come from the command itself, not the read pattern, so
    // both runs make the same ones.
    let mut reads = Rng::new(&[seed, flags, 2]);
    let mut r = CommandReader::new();
    let mut items = Vec::new();
    let mut pos = 0;
    let mut raw_lines = 0usize;
    let mut idle = false;
    let mut steps = 0;
    while pos < input.len() && steps < MAX_STEPS {
        steps += 1;
        let n = if split {
            reads.chunk(input.len() - pos)
        } else {
            input.len() - pos
        };
        r.feed(&input[pos..pos + n]);
        pos += n;
        loop {
            if idle {
                match r.next_line() {
                    RawLine::NeedMore => break,
                    RawLine::Line(l) => {
                        idle = false;
                        raw_lines += 1;
                        items.push(ImapItem::Raw(l));
                    }
                    RawLine::TooLong => {
                        idle = false;
                        items.push(ImapItem::Raw(b"<too long>".to_vec()));
                    }
                }
                continue;
            }
            match r.next_input() {
                Input::NeedMore => break,
                Input::Continue => items.push(ImapItem::Continue),
                Input::Command(c) => {
                    if let CommandBody::Login { user, password } = &c.body {
                        round_trip_astring(user);
                        round_trip_astring(password);
                    }
                    idle = matches!(c.body, CommandBody::Idle) && bit(flags, 0);
                    items.push(ImapItem::Command(format!("{c:?}")));
                }
                Input::Bad { tag, reason, close } => {
                    if let Some(t) = &tag {
                        assert!(
                            !t.is_empty() && !t.contains(' ') && !t.contains('+'),
                            "bad tag {t:?}"
                        );
                    }
                    items.push(ImapItem::Bad(tag, reason.into_owned(), close));
                }
                Input::No { tag, reason } => {
                    assert!(
                        !tag.is_empty() && !tag.contains(' ') && !tag.contains('+'),
                        "bad tag {tag:?}"
                    );
                    items.push(ImapItem::Bad(Some(tag), reason.into_owned(), false));
                }
                Input::AppendStart(h) => {
                    // Accept small ones, or per flag bit 1.
                    if h.size < 100_000 && (h.size % 2 == 0 || bit(flags, 1)) {
                        r.accept_append();
                    } else {
                        r.reject_append();
                    }
                    items.push(ImapItem::Append(format!("{h:?}")));
                }
                Input::AppendData(d) => match items.last_mut() {
                    Some(ImapItem::Data(prev)) => prev.extend(d),
                    _ => items.push(ImapItem::Data(d)),
                },
                Input::AppendDone { tag } => items.push(ImapItem::Done(tag)),
            }
        }
        // Between reads the reader holds at most one command in progress.
        assert!(
            r.buffered() <= MAX_COMMAND + MAX_LINE + n,
            "reader holds {}",
            r.buffered()
        );
    }
    let _ = raw_lines;
    items
}

/// A string written as an astring by our response writer parses back to
/// itself.
fn round_trip_astring(s: &str) {
    use mailgate::proto::imap::parser::parse_command;
    use mailgate::proto::imap::response::astring;
    use mailgate::proto::imap::types::CommandBody;
    let mut line = b"t LOGIN ".to_vec();
    astring(&mut line, s.as_bytes());
    line.extend_from_slice(b" x");
    match parse_command(&line) {
        Ok(c) => match c.body {
            CommandBody::Login { user, .. } => assert_eq!(user, s, "astring round trip"),
            other => panic!("{other:?}"),
        },
        Err(e) => panic!("our astring of {s:?} does not parse: {e:?}"),
    }
}

/// MIME structure of any bytes: the same whatever the chunking; every
/// range inside the message; announced section sizes equal the bytes a
/// Presenter gives; BODYSTRUCTURE and ENVELOPE balanced.
pub fn imap_mime(data: &[u8]) {
    use mailgate::proto::imap::mime::{structure, Presenter, SectionRange, StructureBuilder};
    use mailgate::proto::imap::types::{Section, SectionText};
    let ([seed], msg) = header::<1>(data);
    let whole = structure(msg);
    let mut reads = Rng::new(&[seed, 3]);
    let mut b = StructureBuilder::new();
    let mut pos = 0;
    while pos < msg.len() {
        let n = reads.chunk(msg.len() - pos);
        b.feed(&msg[pos..pos + n]);
        pos += n;
    }
    assert_eq!(b.finish(), whole, "structure depends on chunking");
    assert!(whole.size() >= msg.len() as u64);
    let mut v = Vec::new();
    whole.body_structure(&mut v, true);
    balanced(&v);
    v.clear();
    whole.body_structure(&mut v, false);
    balanced(&v);
    v.clear();
    whole.envelope(&mut v, 0);
    balanced(&v);
    let mut paths: Vec<Vec<u32>> = vec![vec![]];
    for a in 1..4 {
        paths.push(vec![a]);
        for b in 1..3 {
            paths.push(vec![a, b]);
            paths.push(vec![a, b, 1]);
        }
    }
    for path in paths {
        for text in [
            None,
            Some(SectionText::Header),
            Some(SectionText::Text),
            Some(SectionText::Mime),
        ] {
            if text == Some(SectionText::Mime) && path.is_empty() {
                continue;
            }
            let s = Section {
                part: path.clone(),
                text,
            };
            if let Some(SectionRange::Bytes(span)) = whole.section(&s) {
                assert!(
                    span.raw_start <= span.raw_end && span.raw_end <= msg.len() as u64,
                    "{span:?}"
                );
                let bytes = &msg[span.raw_start as usize..span.raw_end as usize];
                for partial in [None, Some((0, 1)), Some((3, 10))] {
                    let mut p = Presenter::new(partial);
                    let mut out = Vec::new();
                    p.feed(&mut out, bytes);
                    assert_eq!(
                        out.len() as u64,
                        Presenter::length(partial, span.size),
                        "{s:?} {span:?}"
                    );
                }
            }
        }
    }
}

/// Parentheses balance outside strings and literals.
fn balanced(v: &[u8]) {
    let mut depth: i64 = 0;
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'"' => {
                i += 1;
                while i < v.len() && v[i] != b'"' {
                    i += 1;
                }
            }
            b'{' => {
                let close = v[i..].iter().position(|&c| c == b'}').expect("literal") + i;
                let n: usize = std::str::from_utf8(&v[i + 1..close])
                    .unwrap()
                    .parse()
                    .unwrap();
                i = close + 2 + n;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                assert!(depth >= 0, "unbalanced: {}", String::from_utf8_lossy(v));
            }
            _ => {}
        }
        i += 1;
    }
    assert_eq!(depth, 0, "unbalanced: {}", String::from_utf8_lossy(v));
}

/// The IMAP session core fed arbitrary bytes, whole and in random
/// pieces, with the driver's side played here (logins succeed or fail by
/// a header bit, commands come back done, APPENDs are taken or refused):
/// it never panics, and what it answers does not depend on how reads split.
pub fn imap_session(data: &[u8]) {
    let ([flags, s0], input) = header::<2>(data);
    let whole = run_imap_session(flags, s0, input, false);
    let split = run_imap_session(flags, s0, input, true);
    assert_eq!(whole, split, "answers depend on where reads split");
}

fn run_imap_session(flags: u8, seed: u8, input: &[u8], split: bool) -> (Vec<u8>, usize, usize) {
    use mailgate::proto::imap::session::{ImapEvent, ImapSession, SessionParams, State};
    use mailgate::proto::imap::types::CommandBody;
    let mut reads = Rng::new(&[seed, flags, 3]);
    let mut s = ImapSession::new(SessionParams {
        hostname: "fuzz.test".into(),
        starttls_available: flags & 1 != 0,
        tls_active: flags & 2 != 0,
        plaintext_login_allowed: flags & 4 != 0,
        append_limit: 1 << 16,
    });
    let mut out = Vec::new();
    s.greeting(&mut out);
    let mut n_events = 0;
    let mut appended = 0;
    let mut pos = 0;
    let mut steps = 0;
    while pos < input.len() && steps < MAX_STEPS && !s.is_closed() {
        steps += 1;
        let n = if split {
            reads.chunk(input.len() - pos)
        } else {
            input.len() - pos
        };
        let mut events = Vec::new();
        s.receive(&input[pos..pos + n], &mut out, &mut events);
        pos += n;
        while !events.is_empty() {
            // An APPEND literal comes as one AppendData per piece read,
            // so only the other events are counted (its bytes are below).
            n_events += events
                .iter()
                .filter(|e| !matches!(e, ImapEvent::AppendData(_)))
                .count();
            for e in std::mem::take(&mut events) {
                match e {
                    ImapEvent::Login { tag, .. } => s.login_done(&tag, flags & 8 != 0, &mut out),
                    ImapEvent::Run(cmd) => match cmd.body {
                        CommandBody::Idle => {}
                        CommandBody::Select { .. } | CommandBody::Examine { .. } => {
                            s.command_done(State::Selected)
                        }
                        CommandBody::Close | CommandBody::Unselect => {
                            s.command_done(State::Authenticated)
                        }
                        _ => s.command_done(s.state()),
                    },
                    ImapEvent::AppendStart(h) => {
                        if flags & 16 != 0 && h.size < 4096 {
                            s.append_accept();
                        } else {
                            s.append_reject();
                        }
                    }
                    ImapEvent::AppendDone { .. } | ImapEvent::IdleDone { .. } => {
                        s.command_done(s.state())
                    }
                    ImapEvent::AppendData(bytes) => appended += bytes.len(),
                    ImapEvent::StartTls | ImapEvent::Close => {}
                }
            }
            s.run(&mut out, &mut events);
        }
    }
    (out, n_events, appended)
}

// ---- OAuth2 token endpoint answers -------------------------------------------

/// Header: a byte whose value splits the input into reads (1 to 256
/// octets each, so the HTTP parser meets every split). The rest is what a
/// token endpoint sends back: fed to the bounded HTTP response parser, and
/// its body (or the raw input when it is no HTTP) to the token, device and
/// JSON readers; the input as text is also the address a user pastes.
pub fn oauth_answer(data: &[u8]) {
    use mailgate::proto::{http, json, oauth};
    let ([split], rest) = header::<1>(data);
    let step = usize::from(split) + 1;
    let mut p = http::ResponseParser::new();
    let mut got = None;
    for chunk in rest.chunks(step) {
        match p.feed(chunk) {
            Ok(Some(r)) => {
                got = Some(r);
                break;
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
    let r = got.or_else(|| p.finish().ok());
    let (status, ctype, body) = match &r {
        Some(r) => (r.status, r.content_type.as_deref(), &r.body[..]),
        None => (u16::from(split) + 200, None, rest),
    };
    if let Ok(t) = oauth::parse_tokens(status, ctype, body) {
        assert!(!t.access_token.is_empty());
    }
    let _ = oauth::parse_device(status, ctype, body);
    let _ = json::parse(body);
    let text = String::from_utf8_lossy(rest);
    let _ = oauth::code_from_redirect(&text, "state");
    let _ = http::Url::parse(&text);
    let _ = oauth::decode(&text);
}
