//! The outbox's storage and policy: the queue on disk (`queue`), the retry
//! schedule (`schedule`) and delivery status notifications (`bounce`).
//!
//! Owns: everything about a queued message except moving its bytes to
//! another server. Must not: open sockets, resolve names, or speak SMTP;
//! the outbound connection driver does that and calls in here.

pub mod bounce;
pub mod queue;
pub mod schedule;

/// Makes untrusted text (a remote server's reply, an address) safe for one
/// `key: value` line of an envelope file, a header field body or a terminal:
/// every control character (CR, LF, NUL, ESC, ...) and Unicode line or
/// paragraph separator becomes a space, runs of whitespace collapse to one
/// space, and the result is cut to at most `max_chars` characters.
pub fn one_line(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars));
    let mut count = 0;
    let mut pending_space = false;
    for c in text.chars() {
        let blank = c.is_whitespace() || c.is_control() || c == '\u{2028}' || c == '\u{2029}';
        if blank {
            pending_space = !out.is_empty();
            continue;
        }
        let needed = if pending_space { 2 } else { 1 };
        if count + needed > max_chars {
            break;
        }
        if pending_space {
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_table() {
        let cases: &[(&str, usize, &str)] = &[
            ("plain", 100, "plain"),
            ("  lead and trail  ", 100, "lead and trail"),
            (
                "550-5.1.1 no\r\n550 5.1.1 such user",
                100,
                "550-5.1.1 no 550 5.1.1 such user",
            ),
            ("a\0b\x1b[31mc", 100, "a b [31mc"),
            ("x\r\nSubject: injected", 100, "x Subject: injected"),
            ("tab\there", 100, "tab here"),
            ("abcdef", 3, "abc"),
            ("ab cd", 3, "ab"),
            ("", 10, ""),
            ("\r\n\r\n", 10, ""),
            ("ünïcödé line\u{2028}sep", 100, "ünïcödé line sep"),
            ("ünï", 2, "ün"),
        ];
        for (input, max, want) in cases {
            assert_eq!(one_line(input, *max), *want, "input {input:?}");
        }
    }
}
