//! Multi-drop routing: which local mailboxes a message collected from a
//! shared ISP maildrop belongs to (`multidrop = yes`).
//!
//! Owns: reading the recipient headers of the message's header section and
//! asking a resolver which of those addresses are ours.
//! Must not: know the config (the resolver is a closure), touch the message,
//! or fail: junk headers give `Unrouted`, and the caller uses `deliver_to`.
//!
//! # The rule
//!
//! Header classes are tried in this fixed order:
//!
//! 1. `Delivered-To`
//! 2. `X-Original-To`
//! 3. `Envelope-To` and `X-Envelope-To`
//! 4. `To` and `Cc`
//!
//! The first class that names at least one local mailbox wins, and the
//! message goes to every local mailbox named by any header of that class
//! (in header order, each once). Later classes are not looked at. So an
//! envelope header written by the ISP (`Delivered-To: alice@example.test`)
//! beats a `To:` that names the whole family, and a message Bcc'd to a
//! family member, whose `To:` names strangers only, still finds its way by
//! its envelope header. Addresses that are not local (the resolver returns
//! `None` or an empty list) are ignored. When no class names a local
//! mailbox the message is `Unrouted` and goes to the account's `deliver_to`.
//! This follows fetchmail's multidrop mode with `envelope` headers
//! preferred over the message's own `To`/`Cc`.

use mailparse::{MailAddr, MailHeader};

/// The header classes, in the order they are tried; each lists the
/// (case-insensitive) header names it covers, and the name reported in `by`.
const CLASSES: &[(&str, &[&str])] = &[
    ("Delivered-To", &["Delivered-To"]),
    ("X-Original-To", &["X-Original-To"]),
    ("Envelope-To", &["Envelope-To", "X-Envelope-To"]),
    ("To/Cc", &["To", "Cc"]),
];

/// Bound on addresses examined per message, so a header with a million
/// recipients does not cost a million resolver calls. Real envelope headers
/// carry one; a family's To/Cc a handful.
pub const MAX_ADDRESSES: usize = 1000;

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Local mailbox addresses (as the resolver returned them), deduplicated,
    /// in order; `by` names the header class that decided (see `CLASSES`).
    Routed {
        mailboxes: Vec<String>,
        by: &'static str,
    },
    /// No header named a local mailbox: deliver to the account's `deliver_to`.
    Unrouted,
}

/// Routes `message` (or just its header section) by the rule in the module
/// doc. `resolve` maps an address to the local mailboxes it reaches (`None`
/// or empty: not ours); the lead wires it to `Config::resolve` keeping only
/// `.local`.
pub fn route(message: &[u8], resolve: &dyn Fn(&str) -> Option<Vec<String>>) -> Route {
    let headers = match mailparse::parse_headers(message) {
        Ok((headers, _)) => headers,
        Err(_) => return Route::Unrouted,
    };
    let mut budget = MAX_ADDRESSES;
    for (by, names) in CLASSES {
        let mut mailboxes: Vec<String> = Vec::new();
        for header in headers.iter().filter(|h| is_one_of(h, names)) {
            for addr in addresses(header) {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                for mb in resolve(&addr).unwrap_or_default() {
                    if !mailboxes.contains(&mb) {
                        mailboxes.push(mb);
                    }
                }
            }
        }
        if !mailboxes.is_empty() {
            return Route::Routed { mailboxes, by };
        }
    }
    Route::Unrouted
}

fn is_one_of(header: &MailHeader, names: &[&str]) -> bool {
    let key = header.get_key_ref();
    let key = key.trim();
    names.iter().any(|n| key.eq_ignore_ascii_case(n))
}

/// The addr-specs of one header: parsed as an RFC 5322 address-list (groups,
/// display names, encoded words, comments); if that fails (envelope headers
/// are often written loosely), split on commas and whitespace and keep what
/// looks like `local@domain`, angle brackets removed.
fn addresses(header: &MailHeader) -> Vec<String> {
    let mut out = Vec::new();
    match mailparse::addrparse_header(header) {
        Ok(list) => {
            for a in list.iter() {
                match a {
                    MailAddr::Single(s) => push_addr(&mut out, &s.addr),
                    MailAddr::Group(g) => {
                        for s in &g.addrs {
                            push_addr(&mut out, &s.addr);
                        }
                    }
                }
            }
        }
        Err(_) => {
            let value = header.get_value();
            for word in value.split(|c: char| c == ',' || c.is_whitespace()) {
                push_addr(&mut out, word);
            }
        }
    }
    out
}

fn push_addr(out: &mut Vec<String>, raw: &str) {
    // mailparse 0.18 keeps the "," that follows a group's ";" in front of
    // the next address (`g: a@x;, b@y` gives ", b@y"): trim separators.
    let a = raw
        .trim_matches(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    // An addr-spec has exactly one '@' outside quotes in practice; we only
    // need a plausible key for the resolver, which decides what is ours.
    let plausible = match a.rsplit_once('@') {
        Some((local, domain)) => !local.is_empty() && !domain.is_empty() && !domain.contains('@'),
        None => false,
    };
    if plausible && !a.chars().any(|c| c.is_control() || c.is_whitespace()) {
        out.push(a.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bob, alice, gran's local copy are ours (example.test); `family@` fans
    /// out to bob and alice; everything else is remote.
    fn resolver(addr: &str) -> Option<Vec<String>> {
        let a = addr.to_ascii_lowercase();
        match a.as_str() {
            "bob@example.test" | "robert@example.test" => Some(vec!["bob@example.test".into()]),
            "alice@example.test" => Some(vec!["alice@example.test".into()]),
            "family@example.test" => {
                Some(vec!["bob@example.test".into(), "alice@example.test".into()])
            }
            "nobody@example.test" => Some(vec![]),
            "jörg@example.test" => Some(vec!["joerg@example.test".into()]),
            _ => None,
        }
    }

    fn routed(by: &'static str, mbs: &[&str]) -> Route {
        Route::Routed {
            mailboxes: mbs.iter().map(|s| s.to_string()).collect(),
            by,
        }
    }

    #[test]
    fn routing_table() {
        let cases: &[(&str, &[u8], Route)] = &[
            (
                "delivered-to alone",
                b"Delivered-To: alice@example.test\r\nTo: x@y\r\n\r\nbody",
                routed("Delivered-To", &["alice@example.test"]),
            ),
            (
                "delivered-to beats To naming the family",
                b"To: bob@example.test, alice@example.test\r\nDelivered-To: alice@example.test\r\n\r\n",
                routed("Delivered-To", &["alice@example.test"]),
            ),
            (
                "ISP's own Delivered-To is not local: next class",
                b"Delivered-To: bob123@isp.example\r\nX-Original-To: bob@example.test\r\nTo: alice@example.test\r\n\r\n",
                routed("X-Original-To", &["bob@example.test"]),
            ),
            (
                "envelope-to",
                b"Envelope-To: <alice@example.test>\r\nTo: bob@example.test\r\n\r\n",
                routed("Envelope-To", &["alice@example.test"]),
            ),
            (
                "x-envelope-to, same class as envelope-to, both counted",
                b"X-Envelope-To: bob@example.test\r\nEnvelope-To: alice@example.test\r\n\r\n",
                routed("Envelope-To", &["bob@example.test", "alice@example.test"]),
            ),
            (
                "to and cc union, dedup through aliases",
                b"To: Bob <bob@example.test>, stranger@else.example\r\nCc: robert@example.test, \"Alice A.\" <ALICE@example.test>\r\n\r\n",
                routed("To/Cc", &["bob@example.test", "alice@example.test"]),
            ),
            (
                "group syntax",
                b"To: friends: bob@example.test, x@y.example;, alice@example.test\r\n\r\n",
                routed("To/Cc", &["bob@example.test", "alice@example.test"]),
            ),
            (
                "empty group",
                b"To: undisclosed-recipients:;\r\nCc: alice@example.test\r\n\r\n",
                routed("To/Cc", &["alice@example.test"]),
            ),
            (
                "encoded-word display name",
                b"To: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <bob@example.test>\r\n\r\n",
                routed("To/Cc", &["bob@example.test"]),
            ),
            (
                "alias fans out",
                b"To: family@example.test\r\n\r\n",
                routed("To/Cc", &["bob@example.test", "alice@example.test"]),
            ),
            (
                "folded header and comments",
                b"To: bob@example.test (Bob),\r\n\talice@example.test\r\n\r\n",
                routed("To/Cc", &["bob@example.test", "alice@example.test"]),
            ),
            (
                "header names any case, bare LF",
                b"delivered-to: bob@example.test\nTO: alice@example.test\n\n",
                routed("Delivered-To", &["bob@example.test"]),
            ),
            (
                "duplicate Delivered-To lines",
                b"Delivered-To: bob@example.test\r\nDelivered-To: bob@example.test\r\nDelivered-To: alice@example.test\r\n\r\n",
                routed("Delivered-To", &["bob@example.test", "alice@example.test"]),
            ),
            (
                "8-bit UTF-8 local part",
                "To: jörg@example.test\r\n\r\n".as_bytes(),
                routed("To/Cc", &["joerg@example.test"]),
            ),
            (
                "non-local only",
                b"Delivered-To: bob123@isp.example\r\nTo: a@b.example\r\nCc: c@d.example\r\n\r\n",
                Route::Unrouted,
            ),
            (
                "local domain, no such user (empty resolution)",
                b"To: nobody@example.test\r\n\r\n",
                Route::Unrouted,
            ),
            (
                "recipient headers only in the body do not count",
                b"Subject: hi\r\n\r\nTo: bob@example.test\r\n",
                Route::Unrouted,
            ),
            ("no headers at all", b"", Route::Unrouted),
            ("Bcc is not a routing header", b"Bcc: bob@example.test\r\n\r\n", Route::Unrouted),
            (
                "loose envelope header falls back to word split",
                b"X-Envelope-To: <alice@example.test>; bob@example.test\r\n\r\n",
                routed("Envelope-To", &["alice@example.test", "bob@example.test"]),
            ),
            (
                "leading continuation line: unparseable header section",
                b" folded\r\nTo: bob@example.test\r\n\r\n",
                Route::Unrouted,
            ),
        ];
        for (name, msg, want) in cases {
            assert_eq!(&route(msg, &resolver), want, "{name}");
        }
    }

    #[test]
    fn control_characters_never_route() {
        // A catch-all resolver: it would take anything, so only the
        // address filter keeps a control character out of `Delivered-To:`.
        let seen = std::cell::RefCell::new(Vec::new());
        let any = |a: &str| {
            seen.borrow_mut().push(a.to_string());
            a.ends_with("@example.test").then(|| vec![a.to_string()])
        };
        let msg = b"Delivered-To: bob\x01@example.test\r\nX-Original-To: bob\0@example.test\r\n\
            Envelope-To: bob\x7f@example.test\r\nTo: alice@example.test\r\n\r\n";
        let want = Route::Routed {
            mailboxes: vec!["alice@example.test".into()],
            by: "To/Cc",
        };
        assert_eq!(route(msg, &any), want);
        assert!(
            seen.borrow()
                .iter()
                .all(|a| !a.chars().any(char::is_control)),
            "{:?}",
            seen.borrow()
        );
    }

    #[test]
    fn junk_never_panics() {
        let mut junk: Vec<Vec<u8>> = vec![
            b"To: \xff\xfe\x00\x01@\x80\r\n\r\n".to_vec(),
            b"To: <<<<@>>>>, ,,, @, a@, @b, \"unterminated\r\n\r\n".to_vec(),
            b"To: =?x?q?broken\r\nCc: =?UTF-8?B?!!!!?= <bob@example.test>\r\n\r\n".to_vec(),
            b"To: a:b:c:d;;;;\r\n\r\n".to_vec(),
            b"\r\r\r\n".to_vec(),
            b"To".to_vec(),
            b"To:".to_vec(),
            b":\r\n\r\n".to_vec(),
            b"To: (((((((\r\n\r\n".to_vec(),
        ];
        let mut every_byte = b"To: ".to_vec();
        every_byte.extend(0..=255u8);
        every_byte.extend_from_slice(b"\r\n\r\n");
        junk.push(every_byte);
        for msg in &junk {
            let _ = route(msg, &resolver);
            for cut in 0..msg.len() {
                let _ = route(&msg[..cut], &resolver);
            }
        }
        // Latin-1 8-bit in a display name still finds the address.
        assert_eq!(
            route(b"To: J\xf6rg <bob@example.test>\r\n\r\n", &resolver),
            routed("To/Cc", &["bob@example.test"])
        );
    }

    #[test]
    fn address_budget_is_bounded() {
        let mut msg = b"To: ".to_vec();
        for i in 0..(MAX_ADDRESSES + 10) {
            msg.extend_from_slice(format!("u{i}@x.example, ").as_bytes());
        }
        msg.extend_from_slice(b"bob@example.test\r\n\r\n");
        let calls = std::cell::Cell::new(0usize);
        let counting = |a: &str| {
            calls.set(calls.get() + 1);
            resolver(a)
        };
        assert_eq!(route(&msg, &counting), Route::Unrouted);
        assert_eq!(calls.get(), MAX_ADDRESSES);
    }
}
