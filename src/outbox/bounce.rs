//! Bounces: delivery status notifications (RFC 3464) for mail the outbox
//! could not deliver, and the checks around them (whom never to bounce to,
//! how many hops a message has made).
//!
//! Owns: the text of a bounce. Must not: queue it (the caller enqueues the
//! result with the null reverse-path `<>`), read the clock, or touch files.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::queue::one_line;

/// Line length limit of the message format, without CRLF (RFC 5322 2.1.1).
pub const MAX_LINE: usize = 998;
/// Preferred line length (RFC 5322 2.1.1 "SHOULD be no more than 78").
const SOFT_LINE: usize = 78;
/// Longest unbroken piece of text put on one line; longer words are cut so
/// that every line stays within `MAX_LINE` with room for a field name.
const MAX_WORD: usize = 900;
/// Longest remote diagnostic quoted: a few reply lines of 512 octets
/// (RFC 5321 4.5.3.1.5) each.
pub const MAX_DIAGNOSTIC_CHARS: usize = 2000;
/// Longest address quoted; RFC 5321 4.5.3.1.3 allows 256 octets in a path.
const MAX_ADDRESS_CHARS: usize = 512;
/// Most of the original header section returned. Enough for any honest
/// message; a hostile 1 MB header is not mirrored back in full.
pub const MAX_RETURNED_HEADERS: usize = 64 * 1024;
/// RFC 2046 5.1.1: a boundary is at most 70 characters.
const MAX_BOUNDARY: usize = 70;

/// Loop detection: a message that has made this many hops (Received
/// header fields) is refused or bounced with 5.4.6 (RFC 3463 "routing
/// loop detected"). RFC 5321 6.3 advises counting Received fields and a
/// large threshold ("normally at least 100"); Postfix uses 50. We keep the
/// project's chosen 30: a home server's mail never legitimately makes that
/// many hops.
pub const MAX_HOPS: usize = 30;

/// Per-process counter, so two bounces with the same ID still get
/// different boundaries.
static BOUNDARY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One recipient the outbox gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The forward-path, without angle brackets.
    pub address: String,
    /// Enhanced status code (RFC 3463), e.g. `5.1.1`; `4.4.7` for a message
    /// that expired in the queue. Anything else becomes `5.0.0`.
    pub status: String,
    /// The server that refused it, when one answered.
    pub remote_mta: Option<String>,
    /// The remote server's words (its reply, possibly several lines), or our
    /// own explanation when no server answered.
    pub diagnostic: String,
}

/// Everything a bounce is made of.
#[derive(Debug, Clone)]
pub struct BounceParams<'a> {
    /// Our host name: `Reporting-MTA`, `From: MAILER-DAEMON@...`, Message-ID.
    pub hostname: &'a str,
    /// The original reverse-path (without angle brackets): the bounce's `To`.
    pub original_sender: &'a str,
    /// The original message; only its header section is returned.
    pub original_message: &'a [u8],
    /// When we accepted the original message (unix secs): `Arrival-Date`.
    pub arrival_date: u64,
    pub failures: &'a [FailedRecipient],
    /// Unix seconds: the bounce's `Date`.
    pub now: u64,
    /// Unique ID for the bounce's `Message-ID: <id@hostname>`.
    pub bounce_id: &'a str,
}

/// Should a failure be reported to `sender`? Never to the null reverse-path
/// (RFC 5321 4.5.5: a bounce of a bounce must not be sent) nor to
/// MAILER-DAEMON, which some systems use as a sender instead of `<>`.
pub fn should_bounce(sender: &str) -> bool {
    let address = sender.trim();
    let address = address.strip_prefix('<').unwrap_or(address);
    let address = address.strip_suffix('>').unwrap_or(address).trim();
    if address.is_empty() {
        return false;
    }
    let local = address.rsplit_once('@').map_or(address, |(local, _)| local);
    !local.eq_ignore_ascii_case("mailer-daemon")
}

/// Counts the `Received:` fields in the header section of `message` (CRLF
/// or LF line endings), for the loop limit `MAX_HOPS`.
pub fn hop_count(message: &[u8]) -> usize {
    header_lines(message)
        .filter(|line| field_name(line).is_some_and(|n| n.eq_ignore_ascii_case(b"received")))
        .count()
}

/// The lines of the header section, without line endings, up to the first
/// empty line.
fn header_lines(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
}

/// The field name of a header line (RFC 5322 2.2, with the obsolete
/// white space before the colon of 4.5); None for a continuation line or
/// something that is no field.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line.get(..colon)?.trim_ascii_end();
    (!name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic())).then_some(name)
}

/// Builds the bounce: an RFC 3464 `multipart/report;
/// report-type=delivery-status` from `MAILER-DAEMON@hostname`, with CRLF
/// line endings, to be queued with the null reverse-path for
/// `original_sender` (only when `should_bounce` says so).
///
/// It is ASCII unless an address, a diagnostic or the returned headers are
/// not; then the parts say `8bit`, non-ASCII addresses use the `utf-8`
/// address type of RFC 6533 in a `message/global-delivery-status` part, and
/// the caller should queue it with SMTPUTF8 when the sender's address is
/// not ASCII.
pub fn build_bounce(params: &BounceParams) -> Vec<u8> {
    let hostname = clean_token(params.hostname, "localhost");
    let bounce_id = clean_token(params.bounce_id, "bounce");
    let sender = one_line(params.original_sender, MAX_ADDRESS_CHARS);

    let text = human_part(&hostname, params.failures);
    let (status_type, status) = status_part(&hostname, params);
    let headers = returned_headers(params.original_message);

    let boundary = pick_boundary(&bounce_id, &[&text, &status, &headers]);
    let cte = |body: &str| if body.is_ascii() { "7bit" } else { "8bit" };
    let all_ascii = text.is_ascii() && status.is_ascii() && headers.is_ascii() && sender.is_ascii();

    let mut out = String::new();
    push_field(
        &mut out,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{hostname}>"),
    );
    push_field(&mut out, "To", &format!("<{sender}>"));
    push_field(&mut out, "Subject", "Undelivered Mail Returned to Sender");
    push_field(&mut out, "Date", &rfc5322_date(params.now));
    push_field(&mut out, "Message-ID", &format!("<{bounce_id}@{hostname}>"));
    // RFC 3834 5: automatic responses must say so, so that vacation
    // programs and other robots do not answer them.
    push_field(&mut out, "Auto-Submitted", "auto-replied");
    push_field(&mut out, "MIME-Version", "1.0");
    push_field(
        &mut out,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    if !all_ascii {
        push_field(&mut out, "Content-Transfer-Encoding", "8bit");
    }
    out.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    let parts = [
        (
            "text/plain; charset=utf-8".to_string(),
            &text,
            "Notification",
        ),
        (status_type.to_string(), &status, "Delivery report"),
        (
            "text/rfc822-headers".to_string(),
            &headers,
            "Undelivered Message Headers",
        ),
    ];
    for (content_type, body, description) in parts {
        let _ = write!(out, "--{boundary}\r\n");
        push_field(&mut out, "Content-Description", description);
        push_field(&mut out, "Content-Type", &content_type);
        push_field(&mut out, "Content-Transfer-Encoding", cte(body));
        out.push_str("\r\n");
        out.push_str(body);
        out.push_str("\r\n");
    }
    let _ = write!(out, "--{boundary}--\r\n");
    out.into_bytes()
}

/// The human-readable part, after Postfix's wording.
fn human_part(hostname: &str, failures: &[FailedRecipient]) -> String {
    let mut out = String::new();
    let mut paragraph = |text: &str| {
        for line in wrap(text, SOFT_LINE) {
            out.push_str(&line);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
    };
    paragraph(&format!("This is the mail system at host {hostname}."));
    paragraph(
        "I'm sorry to have to inform you that your message could not be delivered \
         to one or more recipients. Its headers are attached below.",
    );
    paragraph("For further assistance, please send mail to postmaster.");
    paragraph(
        "If you do so, please include this problem report. You can delete your own \
         text from the attached returned message.",
    );
    let count = failures.len();
    for (i, f) in failures.iter().enumerate() {
        let address = one_line(&f.address, MAX_ADDRESS_CHARS);
        let diagnostic = one_line(&f.diagnostic, MAX_DIAGNOSTIC_CHARS);
        let line = match (&f.remote_mta, diagnostic.is_empty()) {
            (Some(mta), false) => format!(
                "<{address}>: host {} said: {diagnostic}",
                one_line(mta, MAX_ADDRESS_CHARS)
            ),
            (_, false) => format!("<{address}>: {diagnostic}"),
            (_, true) => format!("<{address}>: delivery failed"),
        };
        for l in wrap(&line, SOFT_LINE) {
            out.push_str(&l);
            out.push_str("\r\n");
        }
        if i + 1 < count {
            out.push_str("\r\n");
        }
    }
    out
}

/// The machine-readable part (RFC 3464 2.2 and 2.3) and its content type.
fn status_part(hostname: &str, params: &BounceParams) -> (&'static str, String) {
    let global = params.failures.iter().any(|f| !f.address.is_ascii());
    let mut out = String::new();
    push_field(&mut out, "Reporting-MTA", &format!("dns; {hostname}"));
    push_field(&mut out, "Arrival-Date", &rfc5322_date(params.arrival_date));
    for f in params.failures {
        out.push_str("\r\n");
        let address = one_line(&f.address, MAX_ADDRESS_CHARS);
        // RFC 6533 3: a non-ASCII address is of type utf-8, allowed in a
        // message/global-delivery-status part.
        let addr_type = if address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        push_field(
            &mut out,
            "Final-Recipient",
            &format!("{addr_type}; {address}"),
        );
        push_field(&mut out, "Action", "failed");
        push_field(&mut out, "Status", &failure_status(&f.status));
        if let Some(mta) = &f.remote_mta {
            push_field(
                &mut out,
                "Remote-MTA",
                &format!("dns; {}", clean_token(mta, "unknown")),
            );
        }
        let diagnostic = one_line(&f.diagnostic, MAX_DIAGNOSTIC_CHARS);
        if !diagnostic.is_empty() {
            // "smtp" only for words a remote SMTP server said (RFC 3464
            // 2.3.6); our own explanations get a private type.
            let kind = if f.remote_mta.is_some() {
                "smtp"
            } else {
                "X-mailgate"
            };
            push_field(
                &mut out,
                "Diagnostic-Code",
                &format!("{kind}; {diagnostic}"),
            );
        }
    }
    let content_type = if global {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    (content_type, out)
}

/// A status code fit for `Action: failed`: class 4 or 5 (RFC 3463 3.1),
/// subject and detail of one to three digits; otherwise `5.0.0`.
fn failure_status(status: &str) -> String {
    let status = status.trim();
    let mut fields = status.split('.');
    let class_ok = matches!(fields.next(), Some("4" | "5"));
    let number_ok = |f: Option<&str>| {
        f.is_some_and(|f| (1..=3).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()))
    };
    if class_ok && number_ok(fields.next()) && number_ok(fields.next()) && fields.next().is_none() {
        status.to_string()
    } else {
        "5.0.0".to_string()
    }
}

/// The original header section for the `text/rfc822-headers` part: CRLF
/// lines within `MAX_LINE` (longer lines are folded at the limit), invalid
/// UTF-8 as `?`, control characters other than TAB as spaces, at most
/// `MAX_RETURNED_HEADERS` bytes.
fn returned_headers(message: &[u8]) -> String {
    let mut out = String::new();
    for raw in header_lines(message) {
        let room = MAX_RETURNED_HEADERS.saturating_sub(out.len());
        if room == 0 {
            break;
        }
        let raw = raw.get(..room.min(raw.len())).unwrap_or(raw);
        let line: String = String::from_utf8_lossy(raw)
            .chars()
            .map(|c| match c {
                '\u{FFFD}' => '?',
                '\t' => '\t',
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => ' ',
                c => c,
            })
            .collect();
        let mut first = true;
        for piece in split_at_width(&line, MAX_WORD) {
            if !first {
                // A folded continuation (RFC 5322 2.2.3).
                out.push(' ');
            }
            out.push_str(piece);
            out.push_str("\r\n");
            first = false;
        }
    }
    out
}

/// Appends `Name: value` as a header field, folded at spaces to about
/// `SOFT_LINE` characters and never over `MAX_LINE`. `value` must already
/// be one line (see `one_line`).
fn push_field(out: &mut String, name: &str, value: &str) {
    let mut line = format!("{name}:");
    let mut words_on_line = 0;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        for piece in split_at_width(word, MAX_WORD) {
            let width = line.chars().count() + 1 + piece.chars().count();
            if words_on_line > 0 && width > SOFT_LINE {
                // Fold: the line break goes before white space (RFC 5322 2.2.3).
                out.push_str(&line);
                out.push_str("\r\n");
                line.clear();
                words_on_line = 0;
            }
            line.push(' ');
            line.push_str(piece);
            words_on_line += 1;
        }
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

/// Wraps one-line text into lines of about `width` characters at spaces;
/// words longer than `MAX_WORD` are cut.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for piece in split_at_width(word, MAX_WORD) {
            if !line.is_empty() && line.chars().count() + 1 + piece.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(piece);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Cuts `text` into pieces of at most `max` bytes, at character boundaries.
fn split_at_width(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        pieces.push(head);
        rest = tail;
    }
    pieces.push(rest);
    pieces
}

/// A host name or ID fit for `dns; host`, `<id@host>` and a boundary:
/// letters, digits and `.-_` (plus `[]:` for address literals), bounded.
fn clean_token(text: &str, fallback: &str) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'))
        .take(255)
        .collect();
    if cleaned.is_empty() {
        fallback.to_string()
    } else {
        cleaned
    }
}

/// A MIME boundary (RFC 2046 5.1.1) that occurs in none of the parts.
fn pick_boundary(id: &str, parts: &[&str]) -> String {
    let id: String = id
        .chars()
        .filter(|c| *c != ':' && *c != '[' && *c != ']')
        .take(40)
        .collect();
    loop {
        let n = BOUNDARY_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut boundary = format!("=_mailgate_{id}_{n}");
        boundary.truncate(MAX_BOUNDARY);
        if !parts.iter().any(|p| p.contains(&boundary)) {
            return boundary;
        }
    }
}

/// `Tue, 14 Nov 2023 22:13:20 +0000` (RFC 5322 3.3), in UTC.
pub fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = DAYS.get((days % 7) as usize).copied().unwrap_or("Thu");
    let month = MONTHS
        .get(month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("Jan");
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic
/// Gregorian calendar (H. Hinnant's `civil_from_days`, for days >= 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailparse::{parse_mail, MailHeaderMap, ParsedMail};

    const T0: u64 = 1_700_000_000; // Tue, 14 Nov 2023 22:13:20 +0000

    fn failures() -> Vec<FailedRecipient> {
        vec![
            FailedRecipient {
                address: "nobody@remote.example".to_string(),
                status: "5.1.1".to_string(),
                remote_mta: Some("mx.remote.example".to_string()),
                diagnostic: "550 5.1.1 <nobody@remote.example>: Recipient address rejected"
                    .to_string(),
            },
            FailedRecipient {
                address: "slow@other.example".to_string(),
                status: "4.4.7".to_string(),
                remote_mta: None,
                diagnostic: "delivery time expired: connection refused".to_string(),
            },
        ]
    }

    const ORIGINAL: &[u8] = b"Received: from pc by mail.example.test\r\n\
From: Bob <bob@example.test>\r\n\
To: nobody@remote.example\r\n\
Subject: Lunch on Friday\r\n\
Message-ID: <abc@example.test>\r\n\
\r\n\
Secret body text.\r\n";

    fn bounce(original: &[u8], failures: &[FailedRecipient]) -> Vec<u8> {
        build_bounce(&BounceParams {
            hostname: "mail.example.test",
            original_sender: "bob@example.test",
            original_message: original,
            arrival_date: T0 - 3600,
            failures,
            now: T0,
            bounce_id: "1700000000.P1.Q000007",
        })
    }

    /// Checks the structure every bounce must have and returns the bodies
    /// of its three parts.
    fn check_structure(raw: &[u8]) -> (String, String, String) {
        for line in raw.split(|&b| b == b'\n') {
            assert!(line.len() <= MAX_LINE + 1, "line of {} bytes", line.len());
            assert!(line.is_empty() || line.ends_with(b"\r"), "bare LF");
            assert!(
                !line[..line.len().saturating_sub(1)].contains(&b'\r'),
                "bare CR"
            );
        }
        let mail = parse_mail(raw).unwrap();
        let h = &mail.headers;
        assert_eq!(
            h.get_first_value("From").unwrap(),
            "Mail Delivery System <MAILER-DAEMON@mail.example.test>"
        );
        assert_eq!(h.get_first_value("To").unwrap(), "<bob@example.test>");
        assert_eq!(
            h.get_first_value("Subject").unwrap(),
            "Undelivered Mail Returned to Sender"
        );
        assert_eq!(h.get_first_value("Auto-Submitted").unwrap(), "auto-replied");
        assert_eq!(
            h.get_first_value("Date").unwrap(),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(
            h.get_first_value("Message-ID").unwrap(),
            "<1700000000.P1.Q000007@mail.example.test>"
        );
        assert_eq!(mail.ctype.mimetype, "multipart/report");
        assert_eq!(
            mail.ctype.params.get("report-type").map(String::as_str),
            Some("delivery-status")
        );
        assert_eq!(mail.subparts.len(), 3);
        let body = |p: &ParsedMail| p.get_body().unwrap();
        assert_eq!(mail.subparts[0].ctype.mimetype, "text/plain");
        assert!(mail.subparts[1].ctype.mimetype.ends_with("delivery-status"));
        assert_eq!(mail.subparts[2].ctype.mimetype, "text/rfc822-headers");
        (
            body(&mail.subparts[0]),
            body(&mail.subparts[1]),
            body(&mail.subparts[2]),
        )
    }

    /// The per-recipient groups of a delivery-status body, parsed as
    /// header blocks (RFC 3464 2.1).
    fn status_groups(status: &str) -> Vec<Vec<(String, String)>> {
        status
            .replace("\r\n", "\n")
            .split("\n\n")
            .filter(|g| !g.trim().is_empty())
            .map(|g| {
                let (headers, _) = mailparse::parse_headers(g.as_bytes()).unwrap();
                headers
                    .iter()
                    .map(|h| (h.get_key(), h.get_value()))
                    .collect()
            })
            .collect()
    }

    fn field<'a>(group: &'a [(String, String)], key: &str) -> Option<&'a str> {
        group
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn well_formed_report() {
        let raw = bounce(ORIGINAL, &failures());
        let (text, status, headers) = check_structure(&raw);
        assert!(raw.is_ascii());
        assert!(text.contains("<nobody@remote.example>: host mx.remote.example said: 550 5.1.1"));
        assert!(text.contains("<slow@other.example>: delivery time expired: connection refused"));
        let groups = status_groups(&status);
        assert_eq!(groups.len(), 3);
        assert_eq!(
            field(&groups[0], "Reporting-MTA"),
            Some("dns; mail.example.test")
        );
        assert_eq!(
            field(&groups[0], "Arrival-Date"),
            Some("Tue, 14 Nov 2023 21:13:20 +0000")
        );
        let g = &groups[1];
        assert_eq!(
            field(g, "Final-Recipient"),
            Some("rfc822; nobody@remote.example")
        );
        assert_eq!(field(g, "Action"), Some("failed"));
        assert_eq!(field(g, "Status"), Some("5.1.1"));
        assert_eq!(field(g, "Remote-MTA"), Some("dns; mx.remote.example"));
        assert_eq!(
            field(g, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 <nobody@remote.example>: Recipient address rejected")
        );
        let g = &groups[2];
        assert_eq!(
            field(g, "Final-Recipient"),
            Some("rfc822; slow@other.example")
        );
        assert_eq!(field(g, "Status"), Some("4.4.7"));
        assert_eq!(field(g, "Remote-MTA"), None);
        assert_eq!(
            field(g, "Diagnostic-Code"),
            Some("X-mailgate; delivery time expired: connection refused")
        );
        assert!(headers.contains("Subject: Lunch on Friday"));
        assert!(headers.contains("Message-ID: <abc@example.test>"));
        assert!(!headers.contains("Secret body"), "body is not returned");
    }

    #[test]
    fn hostile_originals() {
        let huge_header = {
            let mut m = b"Subject: big\r\nX-Big: ".to_vec();
            m.extend(vec![b'A'; 1024 * 1024]);
            m.extend_from_slice(b"\r\n\r\nbody\r\n");
            m
        };
        let many_lines = {
            let mut m = Vec::new();
            for i in 0..100_000 {
                m.extend_from_slice(format!("X-H{i}: v\n").as_bytes());
            }
            m
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no headers", b"\r\njust a body\r\n".to_vec()),
            ("empty", Vec::new()),
            ("no blank line", b"Subject: only headers".to_vec()),
            ("LF only", b"Subject: lf\nFrom: a@b\n\nbody\n".to_vec()),
            (
                "8-bit junk",
                b"Subject: \xff\xfe caf\xc3\xa9 \x00\x1b[2J\r\nX: \x80\r\n\r\n\xff".to_vec(),
            ),
            ("bare CR", b"Subject: a\rb\r\n\r\n".to_vec()),
            ("1 MB header", huge_header),
            ("many lines", many_lines),
            (
                "fake boundary",
                b"Subject: x\r\n--=_mailgate_1700000000.P1.Q000007_0\r\n\r\n".to_vec(),
            ),
        ];
        for (name, original) in cases {
            let raw = bounce(&original, &failures());
            assert!(
                raw.len() < MAX_RETURNED_HEADERS + 16 * 1024,
                "{name}: {} bytes",
                raw.len()
            );
            let (_, status, headers) = check_structure(&raw);
            assert_eq!(status_groups(&status).len(), 3, "{name}");
            assert!(
                !headers.contains('\u{FFFD}') && !headers.contains('\0'),
                "{name}"
            );
        }
    }

    #[test]
    fn injection_in_diagnostic_and_address_is_neutralised() {
        let evil = vec![FailedRecipient {
            address: "a@x\r\nBcc: victim@example".to_string(),
            status: "5.1.1\r\nX-Evil: 1".to_string(),
            remote_mta: Some("mx.x\r\nX-Evil: 2".to_string()),
            diagnostic: "550 no\r\n\r\n--boundary\r\nContent-Type: text/html\r\nX-Evil: 3\n.\r\n"
                .to_string(),
        }];
        let raw = bounce(ORIGINAL, &evil);
        let (_, status, _) = check_structure(&raw);
        // No injected field anywhere a field could start: the top-level
        // header, the part headers, the delivery-status groups.
        let mail = parse_mail(&raw).unwrap();
        let mut keys: Vec<String> = mail.headers.iter().map(|h| h.get_key()).collect();
        for part in &mail.subparts {
            keys.extend(part.headers.iter().map(|h| h.get_key()));
        }
        for group in status_groups(&status) {
            keys.extend(group.into_iter().map(|(k, _)| k));
        }
        for key in keys {
            assert!(
                !["x-evil", "bcc"].contains(&key.to_ascii_lowercase().as_str()),
                "{key}"
            );
        }
        let groups = status_groups(&status);
        assert_eq!(groups.len(), 2);
        let g = &groups[1];
        assert_eq!(field(g, "Status"), Some("5.0.0"));
        assert_eq!(field(g, "Remote-MTA"), Some("dns; mx.xX-Evil:2"));
        assert_eq!(
            field(g, "Diagnostic-Code"),
            Some("smtp; 550 no --boundary Content-Type: text/html X-Evil: 3 .")
        );
        assert_eq!(
            field(g, "Final-Recipient"),
            Some("rfc822; a@x Bcc: victim@example")
        );
    }

    #[test]
    fn long_diagnostic_is_folded() {
        let words = "word ".repeat(1000);
        let unbroken = "x".repeat(5000);
        for diagnostic in [words, unbroken] {
            let f = vec![FailedRecipient {
                address: "a@x".to_string(),
                status: "5.2.2".to_string(),
                remote_mta: Some("mx".to_string()),
                diagnostic,
            }];
            let raw = bounce(ORIGINAL, &f);
            let (text, status, _) = check_structure(&raw);
            let groups = status_groups(&status);
            let code = field(&groups[1], "Diagnostic-Code").unwrap();
            assert!(code.starts_with("smtp; "));
            assert!(
                code.len() >= MAX_DIAGNOSTIC_CHARS - 10 && code.len() < MAX_DIAGNOSTIC_CHARS + 20,
                "{}",
                code.len()
            );
            assert!(text.lines().all(|l| l.len() <= MAX_LINE));
        }
    }

    #[test]
    fn utf8_addresses_use_global_status() {
        let f = vec![FailedRecipient {
            address: "ünï@例え.jp".to_string(),
            status: "5.1.1".to_string(),
            remote_mta: None,
            diagnostic: String::new(),
        }];
        let raw = bounce(ORIGINAL, &f);
        let mail = parse_mail(&raw).unwrap();
        assert_eq!(
            mail.subparts[1].ctype.mimetype,
            "message/global-delivery-status"
        );
        // UTF-8 by definition (RFC 6533 6.2), so no charset parameter.
        let status = String::from_utf8(mail.subparts[1].get_body_raw().unwrap()).unwrap();
        assert!(status.contains("Final-Recipient: utf-8; ünï@例え.jp"));
        assert!(!status.contains("Diagnostic-Code"));
        assert_eq!(
            mail.headers
                .get_first_value("Content-Transfer-Encoding")
                .as_deref(),
            Some("8bit")
        );
    }

    #[test]
    fn empty_hostname_and_id_fall_back() {
        let raw = build_bounce(&BounceParams {
            hostname: "\r\n",
            original_sender: "",
            original_message: b"",
            arrival_date: 0,
            failures: &[],
            now: 0,
            bounce_id: "<>",
        });
        let mail = parse_mail(&raw).unwrap();
        assert_eq!(
            mail.headers.get_first_value("Message-ID").unwrap(),
            "<bounce@localhost>"
        );
        assert_eq!(
            mail.headers.get_first_value("Date").unwrap(),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
        assert_eq!(mail.subparts.len(), 3);
    }

    #[test]
    fn boundaries_differ_and_avoid_content() {
        let a = bounce(ORIGINAL, &failures());
        let b = bounce(ORIGINAL, &failures());
        let ct = |raw: &[u8]| {
            parse_mail(raw)
                .unwrap()
                .ctype
                .params
                .get("boundary")
                .cloned()
                .unwrap()
        };
        assert_ne!(ct(&a), ct(&b));
        // Content holding the next boundaries does not break the structure.
        let next = BOUNDARY_COUNTER.load(Ordering::Relaxed);
        let mut original = b"Subject: x\r\n".to_vec();
        for n in next..next + 5 {
            original.extend_from_slice(
                format!("X: --=_mailgate_1700000000.P1.Q000007_{n}\r\n").as_bytes(),
            );
        }
        let raw = bounce(&original, &failures());
        let boundary = ct(&raw);
        let (_, _, headers) = check_structure(&raw);
        assert!(!headers.contains(&boundary));
        assert!(boundary.len() <= MAX_BOUNDARY);
    }

    #[test]
    fn status_codes() {
        let cases = [
            ("5.1.1", "5.1.1"),
            ("4.4.7", "4.4.7"),
            (" 5.7.1 ", "5.7.1"),
            ("5.123.456", "5.123.456"),
            ("2.0.0", "5.0.0"),
            ("5.1", "5.0.0"),
            ("5.1.1.1", "5.0.0"),
            ("5.1234.1", "5.0.0"),
            ("5.x.1", "5.0.0"),
            ("", "5.0.0"),
            ("550", "5.0.0"),
        ];
        for (input, want) in cases {
            assert_eq!(failure_status(input), want, "{input:?}");
        }
    }

    #[test]
    fn who_gets_bounces() {
        let cases = [
            ("", false),
            ("<>", false),
            (" <> ", false),
            ("MAILER-DAEMON@example.test", false),
            ("<mailer-daemon@example.test>", false),
            ("Mailer-Daemon", false),
            ("bob@example.test", true),
            ("<bob@example.test>", true),
            ("postmaster@example.test", true),
            ("mailer-daemon-fan@example.test", true),
        ];
        for (sender, want) in cases {
            assert_eq!(should_bounce(sender), want, "{sender:?}");
        }
    }

    #[test]
    fn hop_counting() {
        let cases: &[(&[u8], usize)] = &[
            (b"", 0),
            (b"Received: a\r\nreceived: b\r\nRECEIVED : c\r\nSubject: x\r\n\r\nReceived: body\r\n", 3),
            (b"Received: a\n (continued)\n\tReceived: not a field\nX-Received: no\n\nReceived: body", 1),
            (b"\r\nReceived: all body", 0),
            (b"Subject: x\nReceived: y", 1),
            (b"Received\r\nReceived:", 1),
            (b"\xff\xfeReceived: x\r\n", 0),
        ];
        for (message, want) in cases {
            assert_eq!(
                hop_count(message),
                *want,
                "{:?}",
                String::from_utf8_lossy(message)
            );
        }
        let mut looping = Vec::new();
        for _ in 0..MAX_HOPS + 1 {
            looping.extend_from_slice(b"Received: from a by b\r\n");
        }
        assert!(hop_count(&looping) > MAX_HOPS);
    }

    #[test]
    fn dates() {
        let cases = [
            (0, "Thu, 01 Jan 1970 00:00:00 +0000"),
            (T0, "Tue, 14 Nov 2023 22:13:20 +0000"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 +0000"),
            (253_402_300_800, "Sat, 01 Jan 10000 00:00:00 +0000"),
        ];
        for (secs, want) in cases {
            assert_eq!(rfc5322_date(secs), want);
        }
        let _ = rfc5322_date(u64::MAX);
    }

    #[test]
    fn folding() {
        let mut out = String::new();
        push_field(
            &mut out,
            "Diagnostic-Code",
            &format!("smtp; {}", "abc ".repeat(60)),
        );
        for line in out.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= SOFT_LINE, "{line:?}");
        }
        assert!(out.lines().skip(1).all(|l| l.starts_with(' ')));
        let (headers, _) = mailparse::parse_headers(out.as_bytes()).unwrap();
        assert_eq!(
            headers[0].get_value(),
            format!("smtp; {}", "abc ".repeat(60).trim_end())
        );
    }
}
