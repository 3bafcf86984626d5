//! Trace information: the `Received:` line mailgate adds for each hop
//! (RFC 5321 4.4), RFC 5322 3.3 dates, and short queue ids.
//!
//! Every peer-supplied field (HELO argument, recipient, user name) is
//! sanitized here so a hostile client can never inject header lines.
//! Must not: read the clock itself (time is an argument) or do any IO.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A domain is at most 255 octets (RFC 5321 4.5.3.1.2); longer HELO
/// arguments, user names and TLS descriptions are cut there.
pub const MAX_FIELD: usize = 255;
/// A path, `<` and `>` included, is at most 256 octets (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// What the `Received:` line says about one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceInfo {
    /// Our own name (`[server] hostname`).
    pub hostname: String,
    /// The client's HELO/EHLO argument, as sent (sanitized on output).
    pub helo: String,
    /// The client's IP address, from the socket.
    pub peer: IpAddr,
    /// RFC 3848 protocol: `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `ESMTPSA`,
    /// or `POP3` for SmartPop.
    pub protocol: &'static str,
    /// e.g. `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`.
    pub tls: Option<String>,
    /// The authenticated user, if AUTH succeeded.
    pub auth_user: Option<String>,
    /// How the message came, when not from an SMTP client: e.g.
    /// `smartpop isp-bob`, written as a `(via ...)` comment.
    pub via: Option<String>,
    /// Our queue id for this transaction ([`new_id`]).
    pub id: String,
}

/// Keep only visible ASCII that cannot end a comment, quote or path
/// (`( ) \ < > " ;` are replaced by `?`, so are CR, LF, NUL, other
/// controls, spaces and 8-bit bytes), and cut to `max` octets. An empty
/// result becomes `unknown`, so the grammar always has a token.
pub fn sanitize(field: &str, max: usize) -> String {
    let mut out = String::with_capacity(field.len().min(max));
    for c in field.chars() {
        if out.len() >= max {
            break;
        }
        let ok = c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\' | '<' | '>' | '"' | ';');
        out.push(if ok { c } else { '?' });
    }
    if out.is_empty() {
        out.push_str("unknown");
    }
    out
}

/// Like [`sanitize`] but an empty input stays empty: for the null
/// reverse-path `<>` (RFC 5321 4.5.5). Non-ASCII letters are kept: such
/// an address only gets here through SMTPUTF8 (the SMTP core refuses it
/// otherwise, `sendmail` sets the flag), and RFC 6532 3.2 lets its
/// trace fields carry UTF-8, so `Return-Path: <jörg@example.test>` keeps
/// its `ö`. Non-ASCII controls, spaces and invisible format characters
/// (bidi overrides, zero widths) still become `?`.
pub fn sanitize_path(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    let max = MAX_PATH - 2;
    let mut out = String::with_capacity(path.len().min(max));
    for c in path.chars() {
        let ascii_ok =
            c.is_ascii_graphic() && !matches!(c, '(' | ')' | '\\' | '<' | '>' | '"' | ';');
        let utf8_ok = !c.is_ascii() && !c.is_control() && !c.is_whitespace() && !invisible(c);
        let c = if ascii_ok || utf8_ok { c } else { '?' };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Format characters that change how text is shown without being seen
/// (Unicode Cf): zero widths, bidi embeddings, overrides and isolates, BOM.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}' | '\u{ad}')
}

/// RFC 5321 4.1.3 address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
pub fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("[{v4}]"),
            None => format!("[IPv6:{v6}]"),
        },
    }
}

/// One `Received:` header field, CRLF line ends included (RFC 5321 4.4):
///
/// ```text
/// Received: from HELO ([IP])   (continuation lines start with a TAB)
///     by HOSTNAME (mailgate) with PROTOCOL id ID
///     (using TLSv1.3 with cipher X)
///     (authenticated as USER)
///     for <RCPT>; DATE
/// ```
///
/// TCP-info holds only the address literal: RFC 5321 reserves the domain
/// beside it for a reverse-DNS name, and we do no reverse lookups.
/// `rcpt` is the forward-path as the client gave it (one per copy).
pub fn received_line(info: &TraceInfo, rcpt: Option<&str>, date: SystemTime) -> String {
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "Received: from {} ({})\r\n\tby {} (mailgate) with {} id {}",
        sanitize(&info.helo, MAX_FIELD),
        address_literal(info.peer),
        sanitize(&info.hostname, MAX_FIELD),
        sanitize(info.protocol, MAX_FIELD),
        sanitize(&info.id, MAX_FIELD),
    );
    if let Some(tls) = &info.tls {
        let _ = write!(s, "\r\n\t(using {})", sanitize_words(tls));
    }
    if let Some(via) = &info.via {
        let _ = write!(s, "\r\n\t(via {})", sanitize_words(via));
    }
    if let Some(user) = &info.auth_user {
        let _ = write!(s, "\r\n\t(authenticated as {})", sanitize(user, MAX_FIELD));
    }
    s.push_str("\r\n\t");
    if let Some(rcpt) = rcpt {
        let _ = write!(s, "for <{}>", sanitize_path(rcpt));
    }
    let _ = write!(s, "; {}\r\n", rfc5322_date(date));
    s
}

/// A comment of a few words: spaces are kept, each word sanitized.
fn sanitize_words(text: &str) -> String {
    let words: Vec<String> = text
        .split(' ')
        .filter(|w| !w.is_empty())
        .take(8)
        .map(|w| sanitize(w, MAX_FIELD))
        .collect();
    words.join(" ")
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 5322 3.3 date-time in UTC: `Tue, 25 Nov 2026 01:33:29 +0000`.
/// Times before 1970 (a router without RTC never has them) print as the
/// epoch.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let secs = i64::try_from(secs).unwrap_or(i64::MAX / 2);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let wday = DAYS
        .get(days.rem_euclid(7) as usize)
        .copied()
        .unwrap_or("Thu");
    let mon = MONTHS.get(m as usize - 1).copied().unwrap_or("Jan");
    format!(
        "{wday}, {d:02} {mon} {y:04} {:02}:{:02}:{:02} +0000",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Crockford base32: sortable, no look-alike letters.
const BASE32: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn push_base32(out: &mut String, mut v: u64, min_digits: usize) {
    let mut buf = [b'0'; 13]; // 13 * 5 bits >= 64 bits
    let mut i = buf.len();
    while v > 0 || buf.len() - i < min_digits.max(1) {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = BASE32.get((v & 31) as usize).copied().unwrap_or(b'0');
        }
        v >>= 5;
        if i == 0 {
            break;
        }
    }
    out.extend(buf.iter().skip(i).map(|&b| b as char));
}

/// A short id, unique within this process and practically unique across
/// restarts: seconds (7 base32 digits, enough until year 3058),
/// microseconds (4 digits), then a process-wide counter (1+ digits).
/// Ids sort by time. Example: `1QZ4M2K3F8A0`.
pub fn new_id(now: SystemTime) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut s = String::with_capacity(16);
    push_base32(&mut s, d.as_secs() & ((1 << 35) - 1), 7);
    push_base32(&mut s, u64::from(d.subsec_micros()), 4);
    push_base32(&mut s, n, 1);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn utf8_paths_keep_their_letters() {
        let table: &[(&str, &str)] = &[
            ("", ""),
            ("jörg@exämple.test", "jörg@exämple.test"),
            ("用户@例子.测试", "用户@例子.测试"),
            ("a\u{202e}b@x.test", "a?b@x.test"),
            ("a\u{85}b\u{2028}c@x.test", "a?b?c@x.test"),
            ("a b<c>@x.test", "a?b?c?@x.test"),
            ("x\r\nBcc: y", "x??Bcc:?y"),
        ];
        for (input, want) in table {
            assert_eq!(sanitize_path(input), *want, "{input:?}");
        }
        let long = "é".repeat(400);
        let cut = sanitize_path(&long);
        assert!(cut.len() <= MAX_PATH - 2 && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn dates() {
        let table: &[(u64, &str)] = &[
            (0, "Thu, 01 Jan 1970 00:00:00 +0000"),
            (86_399, "Thu, 01 Jan 1970 23:59:59 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"), // leap year (div by 400)
            (951_868_800, "Wed, 01 Mar 2000 00:00:00 +0000"),
            (1_078_012_800, "Sun, 29 Feb 2004 00:00:00 +0000"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 +0000"), // 2100 is not leap
            (4_107_542_399, "Sun, 28 Feb 2100 23:59:59 +0000"),
            (1_709_164_800, "Thu, 29 Feb 2024 00:00:00 +0000"),
            (1_735_689_599, "Tue, 31 Dec 2024 23:59:59 +0000"),
            (1_795_570_409, "Wed, 25 Nov 2026 01:33:29 +0000"),
            (2_147_483_647, "Tue, 19 Jan 2038 03:14:07 +0000"),
            (4_294_967_296, "Sun, 07 Feb 2106 06:28:16 +0000"),
        ];
        for (secs, want) in table {
            assert_eq!(rfc5322_date(at(*secs)), *want, "secs {secs}");
        }
        // Before the epoch: clamped.
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(rfc5322_date(before), "Thu, 01 Jan 1970 00:00:00 +0000");
        // Far future does not panic.
        let _ = rfc5322_date(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4));
    }

    #[test]
    fn civil_roundtrip_against_day_count() {
        // Walk 1970..2400 day by day and check monotonic calendar steps.
        let (mut py, mut pm, mut pd) = civil_from_days(0);
        for days in 1..(430 * 366) {
            let (y, m, d) = civil_from_days(days);
            let next_day = y == py && m == pm && d == pd + 1;
            let next_month = y == py && m == pm + 1 && d == 1;
            let next_year = y == py + 1 && m == 1 && d == 1 && pm == 12 && pd == 31;
            assert!(next_day || next_month || next_year, "{days}: {y}-{m}-{d}");
            if next_month {
                let leap = (py % 4 == 0 && py % 100 != 0) || py % 400 == 0;
                let len = [
                    31,
                    if leap { 29 } else { 28 },
                    31,
                    30,
                    31,
                    30,
                    31,
                    31,
                    30,
                    31,
                    30,
                    31,
                ];
                assert_eq!(pd, len[pm as usize - 1], "{py}-{pm}");
            }
            (py, pm, pd) = (y, m, d);
        }
    }

    fn info(helo: &str) -> TraceInfo {
        TraceInfo {
            hostname: "mail.example.test".into(),
            helo: helo.into(),
            peer: "192.0.2.7".parse().unwrap(),
            protocol: "ESMTP",
            tls: None,
            auth_user: None,
            via: None,
            id: "1QZ4M2K3F8A0".into(),
        }
    }

    #[test]
    fn received_plain() {
        let got = received_line(&info("client.example"), Some("bob@example.test"), at(0));
        assert_eq!(
            got,
            "Received: from client.example ([192.0.2.7])\r\n\
             \tby mail.example.test (mailgate) with ESMTP id 1QZ4M2K3F8A0\r\n\
             \tfor <bob@example.test>; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn received_tls_auth_v6() {
        let mut i = info("[IPv6:2001:db8::1]");
        i.peer = "2001:db8::1".parse().unwrap();
        i.protocol = "ESMTPSA";
        i.tls = Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384".into());
        i.auth_user = Some("bob@example.test".into());
        let got = received_line(&i, None, at(0));
        assert_eq!(
            got,
            "Received: from [IPv6:2001:db8::1] ([IPv6:2001:db8::1])\r\n\
             \tby mail.example.test (mailgate) with ESMTPSA id 1QZ4M2K3F8A0\r\n\
             \t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\
             \t(authenticated as bob@example.test)\r\n\
             \t; Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
        let mut i = info("x");
        i.peer = "::ffff:192.0.2.9".parse().unwrap();
        assert!(received_line(&i, None, at(0)).contains("([192.0.2.9])"));
    }

    #[test]
    fn received_hostile_fields() {
        let long = "a".repeat(10 * 1024);
        let hostile = [
            "evil\r\nX-Injected: 1",
            "evil\nX-Injected: 1",
            "evil\rX",
            "nul\0byte",
            "",
            "(comment) \\ \"q\" <x>;",
            "caf\u{e9}.example",
            &long,
        ];
        for h in hostile {
            let mut i = info(h);
            i.auth_user = Some(h.to_string());
            i.tls = Some(h.to_string());
            let got = received_line(&i, Some(h), at(0));
            // Exactly the CRLFs we put there, each followed by a tab.
            let body = got.strip_suffix("\r\n").unwrap();
            for (n, line) in body.split("\r\n").enumerate() {
                assert!(n == 0 || line.starts_with('\t'), "{line:?}");
                assert!(line.len() < 998, "RFC 5322 2.1.1 line limit");
                // ASCII, except the UTF-8 letters an SMTPUTF8 forward-path
                // keeps in `for <...>` (RFC 6532 3.2).
                let ascii = if line.starts_with("\tfor <") {
                    line.chars().filter(|c| c.is_ascii()).collect::<String>()
                } else {
                    line.to_string()
                };
                assert!(
                    ascii
                        .bytes()
                        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b)),
                    "{line:?}"
                );
            }
            assert!(!got.contains("\r\nX-Injected"));
            assert!(
                !body.contains('\n') || body.matches('\n').count() == body.matches("\r\n").count()
            );
        }
        assert_eq!(sanitize("", MAX_FIELD), "unknown");
        assert_eq!(sanitize(&long, MAX_FIELD).len(), MAX_FIELD);
        assert_eq!(sanitize("a\r\nb", 10), "a??b");
        assert_eq!(sanitize_path(""), "");
    }

    #[test]
    fn ids_unique_and_short() {
        let now = at(1_795_570_409);
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = new_id(now);
            assert!(id.len() >= 12 && id.len() <= 24, "{id}");
            assert!(id.bytes().all(|b| BASE32.contains(&b)));
            assert!(seen.insert(id));
        }
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..1000).map(|_| new_id(now)).collect::<Vec<_>>()))
            .collect();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(seen.insert(id));
            }
        }
        let mut s = String::new();
        push_base32(&mut s, 0, 1);
        push_base32(&mut s, u64::MAX, 1);
        assert_eq!(s, "0FZZZZZZZZZZZZ");
    }
}
