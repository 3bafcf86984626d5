//! SMTP paths: the `<...>` argument of `MAIL FROM:` and `RCPT TO:`.
//!
//! Owns: the RFC 5321 4.1.2 grammar of Path / Mailbox (dot-string and
//! quoted local parts, domains, address literals), the RFC 5321 4.5.3.1
//! length limits, source-route stripping (RFC 5321 4.1.1.3 / appendix C),
//! and refusing local parts that could be turned into path or routing
//! tricks further down (`/`, `\`, `.`, `..`; `%` and `!` are reported by
//! [`Mailbox::has_routing_chars`] for the caller to refuse on local RCPTs).
//! Must not: decide policy (relay, local users), know the config, or
//! reply: it returns values and errors; the session picks the reply codes.
//!
//! Non-ASCII (UTF-8) text is accepted by the grammar (RFC 6531 3.3); the
//! caller refuses it unless `SMTPUTF8` was given on MAIL
//! ([`Mailbox::is_ascii`]).

use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 4.5.3.1.1: maximum local-part length, octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 4.5.3.1.2: maximum domain length, octets.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 4.5.3.1.3: maximum reverse-path / forward-path length,
/// octets, including the angle brackets.
pub const MAX_PATH: usize = 256;
/// RFC 1035 2.3.4: maximum label length, octets.
pub const MAX_LABEL: usize = 63;

/// A mailbox `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part as given (case kept). A quoted local part stays quoted
    /// only when it needs to be (RFC 5321 4.1.2: `"bob"` is `bob`).
    pub local: String,
    /// The domain, lower-cased; an address literal keeps its brackets.
    pub domain: String,
}

impl Mailbox {
    /// `local@domain`.
    pub fn address(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }

    /// False when the mailbox needs SMTPUTF8 (RFC 6531).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// `%` and `!` in the local part: the old `user%host@relay` and
    /// `host!user@relay` source routing. Refused for local-domain RCPTs
    /// so nothing down the line can be talked into relaying.
    pub fn has_routing_chars(&self) -> bool {
        self.local.contains(['%', '!'])
    }

    /// Is the domain an address literal (`[1.2.3.4]`, `[ipv6:...]`)?
    pub fn is_address_literal(&self) -> bool {
        self.domain.starts_with('[')
    }
}

/// A parsed reverse-path or forward-path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// `<>`: the null reverse-path (RFC 5321 4.5.5), only valid in MAIL.
    Null,
    /// `<Postmaster>` without a domain (RFC 5321 4.1.1.3), only valid in RCPT.
    Postmaster,
    Mailbox(Mailbox),
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrError {
    /// Not RFC 5321 4.1.2 grammar (501 5.1.3 / 5.1.7).
    Syntax(&'static str),
    /// Over an RFC 5321 4.5.3.1 limit (501 5.1.3 / 5.1.7).
    TooLong(&'static str),
    /// Grammatical but refused by policy (553 5.1.3 / 5.1.7).
    Forbidden(&'static str),
}

impl AddrError {
    pub fn text(&self) -> &'static str {
        match self {
            AddrError::Syntax(t) | AddrError::TooLong(t) | AddrError::Forbidden(t) => t,
        }
    }
}

/// Parses a path starting at `<`. Returns the path and the rest of the
/// input after `>` (the ESMTP parameters, if any).
///
/// Source routes (`<@a,@b:user@d>`) are accepted and stripped, as
/// RFC 5321 4.1.1.3 and appendix C allow ("SHOULD ignore").
/// Does `s` hold a control character (C0 such as CR, LF, NUL, TAB; DEL;
/// C1)? No address that reaches a header may: a CR or LF would end the
/// header line and start a forged one (`Bcc:` injection), a NUL ends C
/// strings in other programs. The SMTP parser never lets one through
/// (`is_atext`, quoted strings are printable only); other ways in
/// (`sendmail` arguments and headers) check with this.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

pub fn parse_path(input: &str) -> Result<(Path, &str), AddrError> {
    let rest = input
        .strip_prefix('<')
        .ok_or(AddrError::Syntax("path must be in angle brackets"))?;
    if let Some(after) = rest.strip_prefix('>') {
        return Ok((Path::Null, after));
    }
    let rest = skip_source_route(rest)?;
    let (local, rest) = parse_local_part(rest)?;
    if let Some(after) = rest.strip_prefix('>') {
        // RFC 5321 4.1.1.3: "Postmaster" without a domain, any case.
        if local.eq_ignore_ascii_case("postmaster") {
            return Ok((Path::Postmaster, after));
        }
        return Err(AddrError::Syntax("address has no domain"));
    }
    let rest = rest
        .strip_prefix('@')
        .ok_or(AddrError::Syntax("invalid character in local part"))?;
    let end = rest
        .find('>')
        .ok_or(AddrError::Syntax("path must end with '>'"))?;
    let (domain_text, after) = rest.split_at(end);
    let after = after.get(1..).unwrap_or("");
    let domain = parse_domain_or_literal(domain_text)?;

    // Limits, on the path as given (RFC 5321 4.5.3.1).
    let path_len = input.len() - after.len();
    if local.len() > MAX_LOCAL_PART {
        return Err(AddrError::TooLong("local part too long"));
    }
    if domain.len() > MAX_DOMAIN {
        return Err(AddrError::TooLong("domain too long"));
    }
    if path_len > MAX_PATH {
        return Err(AddrError::TooLong("path too long"));
    }
    Ok((Path::Mailbox(Mailbox { local, domain }), after))
}

/// Skips `@a,@b:` (A-d-l ":" in RFC 5321 4.1.2), checking each domain.
fn skip_source_route(input: &str) -> Result<&str, AddrError> {
    if !input.starts_with('@') {
        return Ok(input);
    }
    let colon = input
        .find(':')
        .ok_or(AddrError::Syntax("bad source route"))?;
    let (route, rest) = input.split_at(colon);
    for hop in route.split(',') {
        let domain = hop
            .strip_prefix('@')
            .ok_or(AddrError::Syntax("bad source route"))?;
        parse_domain_or_literal(domain)?;
    }
    Ok(rest.get(1..).unwrap_or(""))
}

/// RFC 5322 3.2.3 atext (ASCII), plus UTF-8 for RFC 6531 3.3.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

/// Parses a Dot-string or Quoted-string local part; returns it in
/// canonical form and the input after it.
fn parse_local_part(input: &str) -> Result<(String, &str), AddrError> {
    let (content, rest, quoted) = if let Some(q) = input.strip_prefix('"') {
        let (content, rest) = parse_quoted(q)?;
        (content, rest, true)
    } else {
        let end = input.find(['@', '>']).unwrap_or(input.len());
        let (text, rest) = input.split_at(end);
        if !is_dot_string(text) {
            return Err(AddrError::Syntax("invalid local part"));
        }
        (text.to_string(), rest, false)
    };
    // Refuse what could become a path element or a path trick later on:
    // the local part may end up naming a folder (Maildir) or a file.
    if content.is_empty() {
        return Err(AddrError::Syntax("empty local part"));
    }
    if content == "." || content == ".." {
        return Err(AddrError::Forbidden("local part '.' or '..' not allowed"));
    }
    if content.contains(['/', '\\']) {
        return Err(AddrError::Forbidden(
            "'/' or '\\' in local part not allowed",
        ));
    }
    let canonical = if !quoted || is_dot_string(&content) {
        content
    } else {
        format!("\"{content}\"")
    };
    Ok((canonical, rest))
}

/// Reads a Quoted-string body (after the opening DQUOTE) up to the closing
/// one. Returns the unquoted content and the input after the DQUOTE.
fn parse_quoted(input: &str) -> Result<(String, &str), AddrError> {
    let mut content = String::new();
    let mut chars = input.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((content, input.get(i + 1..).unwrap_or(""))),
            // quoted-pairSMTP (RFC 5321 4.1.2) is grammatical, but a
            // backslash is refused by policy; report it as such.
            '\\' => {
                return match chars.next() {
                    Some((_, p)) if (' '..='~').contains(&p) => Err(AddrError::Forbidden(
                        "'/' or '\\' in local part not allowed",
                    )),
                    _ => Err(AddrError::Syntax("bad quoted pair in local part")),
                };
            }
            // qtextSMTP: %d32-33 / %d35-91 / %d93-126, and UTF-8 (RFC 6531).
            c if (' '..='~').contains(&c) || (!c.is_ascii() && !c.is_control()) => content.push(c),
            _ => return Err(AddrError::Syntax("invalid character in quoted local part")),
        }
    }
    Err(AddrError::Syntax("unterminated quoted local part"))
}

/// RFC 5321 4.1.2 Dot-string: Atom *("." Atom).
fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A domain (RFC 5321 4.1.2 Domain, with U-labels per RFC 6531) or an
/// address literal; returns it lower-cased.
pub fn parse_domain_or_literal(text: &str) -> Result<String, AddrError> {
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or(AddrError::Syntax("bad address literal"))?;
        let ok = match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => inner
                .get(5..)
                .is_some_and(|v6| v6.parse::<Ipv6Addr>().is_ok()),
            _ => inner.parse::<Ipv4Addr>().is_ok(),
        };
        if !ok {
            return Err(AddrError::Syntax("bad address literal"));
        }
        return Ok(text.to_ascii_lowercase());
    }
    if text.len() > MAX_DOMAIN {
        return Err(AddrError::TooLong("domain too long"));
    }
    if !is_domain(text) {
        return Err(AddrError::Syntax("invalid domain"));
    }
    Ok(text.to_lowercase())
}

/// RFC 5321 4.1.2: sub-domain *("." sub-domain), sub-domain = Let-dig
/// [Ldh-str]; non-ASCII letters allowed as U-labels (RFC 6531 3.3).
pub fn is_domain(text: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
            })
    };
    !text.is_empty() && text.len() <= MAX_DOMAIN && text.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Path {
        Path::Mailbox(Mailbox {
            local: local.into(),
            domain: domain.into(),
        })
    }

    #[test]
    fn accepted_paths() {
        let long_local = "a".repeat(64);
        let long_local_path = format!("<{long_local}@x.test>");
        let cases: Vec<(&str, Path, &str)> = vec![
            ("<>", Path::Null, ""),
            ("<> SIZE=10", Path::Null, " SIZE=10"),
            ("<bob@example.test>", mb("bob", "example.test"), ""),
            ("<Bob@EXAMPLE.Test>", mb("Bob", "example.test"), ""),
            (
                "<bob+tag@example.test> X",
                mb("bob+tag", "example.test"),
                " X",
            ),
            ("<a.b.c@d-e.f>", mb("a.b.c", "d-e.f"), ""),
            (
                "<\"john doe\"@example.test>",
                mb("\"john doe\"", "example.test"),
                "",
            ),
            ("<\"bob\"@example.test>", mb("bob", "example.test"), ""),
            ("<\"a>b\"@example.test>", mb("\"a>b\"", "example.test"), ""),
            ("<bob@[192.0.2.1]>", mb("bob", "[192.0.2.1]"), ""),
            (
                "<bob@[IPv6:2001:db8::1]>",
                mb("bob", "[ipv6:2001:db8::1]"),
                "",
            ),
            (
                "<@a.test,@b.test:bob@example.test>",
                mb("bob", "example.test"),
                "",
            ),
            ("<@a.test:bob@example.test>", mb("bob", "example.test"), ""),
            ("<postmaster>", Path::Postmaster, ""),
            ("<PostMaster>", Path::Postmaster, ""),
            (
                "<user%host@example.test>",
                mb("user%host", "example.test"),
                "",
            ),
            ("<héllo@exämple.test>", mb("héllo", "exämple.test"), ""),
            ("<1@123.test>", mb("1", "123.test"), ""),
            (long_local_path.as_str(), mb(&long_local, "x.test"), ""),
        ];
        for (input, want, rest) in cases {
            assert_eq!(parse_path(input), Ok((want, rest)), "{input}");
        }
    }

    #[test]
    fn control_characters() {
        for bad in [
            "a\rb",
            "a\nb",
            "\0",
            "a\tb",
            "\x7f",
            "\u{85}",
            "evil@x.test\nBcc: y@z",
        ] {
            assert!(has_control(bad), "{bad:?}");
        }
        for good in ["", "bob@example.test", "héllo@exämple.test", "a b"] {
            assert!(!has_control(good), "{good:?}");
        }
    }

    #[test]
    fn refused_paths() {
        use AddrError::*;
        let long_local = format!("<{}@x.test>", "a".repeat(65));
        let long_domain = format!("<a@{}.test>", "b".repeat(60).repeat(5));
        let long_label = format!("<a@{}.test>", "b".repeat(64));
        let label = "b".repeat(60);
        let long_path = format!("<{}@{label}.{label}.{label}.{label}.test>", "a".repeat(64));
        let cases: Vec<(&str, &str)> = vec![
            ("bob@example.test", "Syntax"),
            ("<bob@example.test", "Syntax"),
            ("<bob>", "Syntax"),
            ("<a@remote.test@example.test>", "Syntax"),
            ("<.bob@example.test>", "Syntax"),
            ("<bob.@example.test>", "Syntax"),
            ("<a..b@example.test>", "Syntax"),
            ("<@example.test>", "Syntax"),
            ("<bob@>", "Syntax"),
            ("<bob@-x.test>", "Syntax"),
            ("<bob@x-.test>", "Syntax"),
            ("<bob@x..test>", "Syntax"),
            ("<bob@x.test.>", "Syntax"),
            ("<bob@x_y.test>", "Syntax"),
            ("<bob@[1.2.3]>", "Syntax"),
            ("<bob@[1.2.3.4>", "Syntax"),
            ("<bob@[tag:foo]>", "Syntax"),
            ("<b\0ob@example.test>", "Syntax"),
            ("<b\tob@example.test>", "Syntax"),
            ("<bob@exa\x01mple.test>", "Syntax"),
            // CR, LF and C1 controls, in either part (header injection).
            ("<b\rob@example.test>", "Syntax"),
            ("<bob@example.test\n>", "Syntax"),
            ("<\"b\nBcc: x\"@example.test>", "Syntax"),
            ("<b\u{85}ob@example.test>", "Syntax"),
            ("<bob@ex\u{85}ample.test>", "Syntax"),
            ("<\"b\x7fob\"@example.test>", "Syntax"),
            ("<\"bob@example.test>", "Syntax"),
            ("<\"\"@example.test>", "Syntax"),
            ("<b ob@example.test>", "Syntax"),
            ("<@a.test bob@example.test>", "Syntax"),
            ("<@a.test,b.test:bob@example.test>", "Syntax"),
            ("<a/b@example.test>", "Forbidden"),
            ("<\"a\\\\b\"@example.test>", "Forbidden"),
            ("<\"a\\\"b\"@example.test>", "Forbidden"),
            ("<\".\"@example.test>", "Forbidden"),
            ("<\"..\"@example.test>", "Forbidden"),
            ("<\"../etc\"@example.test>", "Forbidden"),
            (long_local.as_str(), "TooLong"),
            (long_domain.as_str(), "TooLong"),
            (long_label.as_str(), "Syntax"),
            (long_path.as_str(), "TooLong"),
            ("", "Syntax"),
            ("<", "Syntax"),
        ];
        for (input, want) in cases {
            match parse_path(input) {
                Err(e) => {
                    let kind = match e {
                        Syntax(_) => "Syntax",
                        TooLong(_) => "TooLong",
                        Forbidden(_) => "Forbidden",
                    };
                    assert_eq!(kind, want, "{input:?}: {e:?}");
                }
                Ok(p) => panic!("{input:?} accepted as {p:?}"),
            }
        }
    }

    #[test]
    fn mailbox_helpers() {
        let Ok((Path::Mailbox(m), _)) = parse_path("<a!b@example.test>") else {
            panic!("parse")
        };
        assert!(m.has_routing_chars());
        assert!(m.is_ascii());
        assert_eq!(m.address(), "a!b@example.test");
        let Ok((Path::Mailbox(m), _)) = parse_path("<ü@example.test>") else {
            panic!("parse")
        };
        assert!(!m.is_ascii());
        let Ok((Path::Mailbox(m), _)) = parse_path("<a@[10.0.0.1]>") else {
            panic!("parse")
        };
        assert!(m.is_address_literal());
    }
}
