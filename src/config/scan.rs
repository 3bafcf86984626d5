//! The INI line scanner: text -> sections of `key = value` entries, each
//! with its 1-based line number.
//!
//! Owns: the file's syntax (spec "Config file (INI)"): whole-line comments
//! starting with `;` or `#`, `[kind name]` headers, `key = value` where the
//! value runs to the end of its line (`password = a;b#c` keeps all of it:
//! no inline comments, quotes, escapes or continuation lines).
//! Must not: know which sections or keys exist (that is `build`).
//!
//! Why not rust-ini (the design's listed crate): its parser has no line
//! numbers, and it joins a line ending in `\` with the next one even with
//! escapes turned off (`password = ab\` swallows the following line), and
//! an indented `; comment` or a line without `=` becomes part of the next
//! key. Checking its output against a line scan would mean two readings of
//! one file that can disagree, so the scan below is the one parser; the
//! `rust_ini_joins_backslash_lines` test records the behaviour that decided
//! it.

/// One `[kind name]` section and its entries, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSection {
    pub line: usize,
    /// Lower-case first word: `server`, `mailbox`, ...
    pub kind: String,
    /// The rest of the header, trimmed, as written (may be empty).
    pub name: String,
    pub entries: Vec<RawEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub line: usize,
    /// Lower-case key.
    pub key: String,
    /// Trimmed value, every other character kept.
    pub value: String,
}

/// A syntax problem on one line; `build` turns it into a `Diagnostic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Scans the whole text. Lines with syntax errors are skipped and reported;
/// scanning always goes on to the end so every problem is listed.
pub fn scan(text: &str) -> (Vec<RawSection>, Vec<SyntaxError>) {
    let mut sections: Vec<RawSection> = Vec::new();
    let mut errors = Vec::new();
    // A UTF-8 byte order mark some Windows editors write.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (idx, raw) in text.split('\n').enumerate() {
        let line = idx + 1;
        let mut err = |message: String| errors.push(SyntaxError { line, message });
        // CRLF files: the CR belongs to the line ending, not the value.
        let content = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = content.trim();
        if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        if let Some(c) = content.chars().find(|&c| c.is_control() && c != '\t') {
            err(format!("control character {c:?} in line"));
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[') {
            let Some(inner) = header.strip_suffix(']') else {
                err("a section header is [NAME] alone on its line".into());
                continue;
            };
            let inner = inner.trim();
            let (kind, name) = match inner.split_once(char::is_whitespace) {
                Some((k, n)) => (k, n.trim()),
                None => (inner, ""),
            };
            if kind.is_empty() {
                err("empty section header".into());
                continue;
            }
            sections.push(RawSection {
                line,
                kind: kind.to_ascii_lowercase(),
                name: name.to_string(),
                entries: Vec::new(),
            });
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            // Not echoed: a line missing its `=` may well be `password secret`.
            err("expected `key = value`, a [section] or a comment".into());
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            err("missing key name before =".into());
            continue;
        }
        let Some(section) = sections.last_mut() else {
            err(format!(
                "key {key:?} is outside any section: put it under a [section] header"
            ));
            continue;
        };
        section.entries.push(RawEntry {
            line,
            key: key.to_ascii_lowercase(),
            value: value.trim().to_string(),
        });
    }
    (sections, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: usize, key: &str, value: &str) -> RawEntry {
        RawEntry {
            line,
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn sections_keys_and_lines() {
        let text = "; top comment\n# another\n\n[Server]\nhostname = mail.example.test\n  Data_Dir=/x \n\t[mailbox  Bob@Example.TEST ]\npassword = a;b#c\n";
        let (secs, errs) = scan(text);
        assert_eq!(errs, vec![]);
        assert_eq!(secs.len(), 2);
        assert_eq!(
            (secs[0].line, secs[0].kind.as_str(), secs[0].name.as_str()),
            (4, "server", "")
        );
        assert_eq!(
            secs[0].entries,
            vec![
                entry(5, "hostname", "mail.example.test"),
                entry(6, "data_dir", "/x")
            ]
        );
        assert_eq!(
            (secs[1].line, secs[1].kind.as_str(), secs[1].name.as_str()),
            (7, "mailbox", "Bob@Example.TEST")
        );
        assert_eq!(secs[1].entries, vec![entry(8, "password", "a;b#c")]);
    }

    #[test]
    fn values_run_to_end_of_line() {
        let cases = [
            ("k = a;b#c", "a;b#c"),
            ("k=  spaced out  ", "spaced out"),
            ("k = \"quoted\"", "\"quoted\""),
            ("k = 'q'", "'q'"),
            ("k = back\\", "back\\"),
            ("k = a\\nb", "a\\nb"),
            ("k = x = y", "x = y"),
            ("k =", ""),
            ("k = ; not a comment", "; not a comment"),
            ("k = tab\there", "tab\there"),
            ("k = ünïcode ✓", "ünïcode ✓"),
        ];
        for (line, want) in cases {
            let (secs, errs) = scan(&format!("[s]\n{line}\nnext = 1\n"));
            assert_eq!(errs, vec![], "{line}");
            assert_eq!(
                secs[0].entries,
                vec![entry(2, "k", want), entry(3, "next", "1")],
                "{line}"
            );
        }
    }

    #[test]
    fn line_endings_and_bom() {
        let (secs, errs) = scan("\u{feff}[s]\r\nk = v\r\n\r\n; c\r\nj = w");
        assert_eq!(errs, vec![]);
        assert_eq!(secs[0].line, 1);
        assert_eq!(
            secs[0].entries,
            vec![entry(2, "k", "v"), entry(5, "j", "w")]
        );
        // A bare CR inside a line is no line ending: refused, not split.
        let (_, errs) = scan("[s]\nk = a\rb\n");
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let text =
            "orphan = 1\n[s]\njunk line\n= v\n[unterminated\n[x] trailing\n[]\nk\0 = v\nok = 1\n";
        let (secs, errs) = scan(text);
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 3, 4, 5, 6, 7, 8], "{errs:?}");
        assert!(errs[0].message.contains("outside any section"));
        assert_eq!(secs.len(), 1);
        assert_eq!(secs[0].entries, vec![entry(9, "ok", "1")]);
    }

    #[test]
    fn hostile_input_never_panics() {
        let long = format!("[s]\nk = {}\n", "x".repeat(1 << 20));
        let (secs, errs) = scan(&long);
        assert!(errs.is_empty());
        assert_eq!(secs[0].entries[0].value.len(), 1 << 20);
        let junk: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let (_, errs) = scan(&junk);
        assert!(!errs.is_empty());
        for text in [
            "",
            "\n",
            "[",
            "]",
            "=",
            "[s",
            "\u{feff}",
            "\u{feff}\u{feff}",
            "\r",
            "\r\n\r\n",
            "[s]\n=\n",
            "[ s ]\n k = \u{85}",
        ] {
            let _ = scan(text);
        }
        // Every prefix of a small valid file scans.
        let text = "[server]\r\nhostname = h\r\n[mailbox a@b]\r\npassword = {PLAIN}x";
        for i in 0..=text.len() {
            if let Some(prefix) = text.get(..i) {
                let _ = scan(prefix);
            }
        }
    }

    #[test]
    fn rust_ini_joins_backslash_lines() {
        // The behaviour that rules rust-ini out for "a value runs to the end
        // of its line", even with quotes and escapes disabled.
        let opt = ini::ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            enabled_indented_mutiline_value: false,
            enabled_preserve_key_leading_whitespace: false,
        };
        let parsed = ini::Ini::load_from_str_opt("[s]\npassword = ab\\\nuser = x\n", opt);
        let joined = parsed
            .ok()
            .and_then(|i| i.get_from(Some("s"), "password").map(str::to_owned));
        assert_ne!(joined.as_deref(), Some("ab\\"));
        let (secs, _) = scan("[s]\npassword = ab\\\nuser = x\n");
        assert_eq!(
            secs[0].entries,
            vec![entry(2, "password", "ab\\"), entry(3, "user", "x")]
        );
    }
}
