//! Message flags in Maildir file names, exactly as Dovecot writes them.
//!
//! `BASE:2,FLAGS`: the system flags as the Maildir letters `D` (\Draft),
//! `F` (\Flagged), `R` (\Answered), `S` (\Seen), `T` (\Deleted), then the
//! keywords as letters `a`..`z` (their index in `dovecot-keywords`), all in
//! ASCII order. Letters we do not know (`P` passed) are kept where they
//! stand, and a second `,` flag set after them is kept as it is, as
//! Dovecot's `maildir_filename_flags_full_set` does. `\Recent` is a
//! session property and never on disk.
//!
//! Must not: touch the disk.

/// RFC 3501 2.3.2 system flags, one bit each.
pub const ANSWERED: u8 = 1;
pub const FLAGGED: u8 = 2;
pub const DELETED: u8 = 4;
pub const SEEN: u8 = 8;
pub const DRAFT: u8 = 16;

/// Dovecot's MAILDIR_KEYWORD_FIRST..LAST: 26 keywords per folder.
pub const MAX_KEYWORDS: usize = 26;
/// Separates the unique base name from the info (`:2,`).
pub const INFO_SEP: char = ':';
/// Maildir info version 2 with flags.
pub const INFO_FLAGS: &str = ":2,";

/// The letters of the system flags in the order Dovecot emits them.
const LETTERS: [(char, u8); 5] = [
    ('D', DRAFT),
    ('F', FLAGGED),
    ('R', ANSWERED),
    ('S', SEEN),
    ('T', DELETED),
];

/// A message's flags: system flags and a keyword bit set (bit i = the
/// keyword with index i in `dovecot-keywords`, letter `a`+i).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    pub system: u8,
    pub keywords: u32,
}

impl Flags {
    pub const NONE: Flags = Flags {
        system: 0,
        keywords: 0,
    };

    pub fn has(&self, bit: u8) -> bool {
        self.system & bit != 0
    }
    pub fn union(self, o: Flags) -> Flags {
        Flags {
            system: self.system | o.system,
            keywords: self.keywords | o.keywords,
        }
    }
    pub fn minus(self, o: Flags) -> Flags {
        Flags {
            system: self.system & !o.system,
            keywords: self.keywords & !o.keywords,
        }
    }
    /// IMAP names of the system flags, in RFC 3501 order.
    pub fn system_names(&self) -> Vec<&'static str> {
        [
            (ANSWERED, "\\Answered"),
            (FLAGGED, "\\Flagged"),
            (DELETED, "\\Deleted"),
            (SEEN, "\\Seen"),
            (DRAFT, "\\Draft"),
        ]
        .iter()
        .filter(|(b, _)| self.system & b != 0)
        .map(|(_, n)| *n)
        .collect()
    }
    /// Keyword indexes set, ascending.
    pub fn keyword_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_KEYWORDS).filter(|i| self.keywords & (1 << i) != 0)
    }
}

/// The system flag for an IMAP flag name (case-insensitive), if it is one
/// that lives on disk.
pub fn system_flag(name: &str) -> Option<u8> {
    let n = name.to_ascii_lowercase();
    Some(match n.as_str() {
        "\\answered" => ANSWERED,
        "\\flagged" => FLAGGED,
        "\\deleted" => DELETED,
        "\\seen" => SEEN,
        "\\draft" => DRAFT,
        _ => return None,
    })
}

/// The unique base name: everything before the first `:` (Dovecot's
/// `maildir_filename_base_*`). POP3 UIDLs and uidlist lines use it.
pub fn base(name: &str) -> &str {
    name.split(INFO_SEP).next().unwrap_or(name)
}

/// Flags in a file name: from the last `:` if it is `:2,`; unknown
/// letters (and keyword letters past `known_keywords`) are ignored.
pub fn parse(name: &str) -> Flags {
    let Some(i) = name.rfind(INFO_SEP) else {
        return Flags::NONE;
    };
    match name.get(i..).and_then(|s| s.strip_prefix(INFO_FLAGS)) {
        Some(letters) => parse_letters(letters),
        None => Flags::NONE,
    }
}

/// The flags of the letters after `:2,` (up to a `,`).
pub fn parse_letters(letters: &str) -> Flags {
    let mut f = Flags::NONE;
    for c in letters.chars() {
        if c == ',' {
            break;
        }
        if let Some((_, bit)) = LETTERS.iter().find(|(l, _)| *l == c) {
            f.system |= bit;
        } else if c.is_ascii_lowercase() {
            f.keywords |= 1 << (c as u32 - 'a' as u32);
        }
    }
    f
}

/// The file name with `flags` (Dovecot's `maildir_filename_flags_full_set`):
/// known letters are replaced; unknown ones and a second flag set stay.
pub fn with_flags(name: &str, flags: Flags) -> String {
    let (head, old) = match name.rfind(INFO_SEP) {
        Some(i) => {
            let info = name.get(i..).unwrap_or("");
            let old = info.strip_prefix(INFO_FLAGS).unwrap_or("");
            (name.get(..i).unwrap_or(name), old)
        }
        None => (name, ""),
    };
    let mut out = String::with_capacity(name.len() + 12);
    out.push_str(head);
    out.push_str(INFO_FLAGS);
    let mut left = flags;
    let mut keywords_done = false;
    let known = |c: char| LETTERS.iter().any(|(l, _)| *l == c) || c.is_ascii_lowercase();
    let mut rest = old.chars().peekable();
    loop {
        while rest.peek().is_some_and(|&c| known(c)) {
            rest.next();
        }
        let next = match rest.peek() {
            None | Some(',') => 256u32,
            Some(&c) => c as u32,
        };
        for (letter, bit) in LETTERS {
            if left.system & bit != 0 && next > letter as u32 {
                out.push(letter);
                left.system &= !bit;
            }
        }
        if !keywords_done && next > 'a' as u32 {
            for i in flags.keyword_indexes() {
                out.push((b'a' + i as u8) as char);
            }
            keywords_done = true;
        }
        match rest.next() {
            None => break,
            Some(',') => {
                out.push(',');
                out.extend(rest);
                break;
            }
            Some(c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(system: u8, keywords: u32) -> Flags {
        Flags { system, keywords }
    }

    #[test]
    fn dovecot_order_and_round_trip() {
        let table: &[(&str, Flags, &str)] = &[
            ("b", f(SEEN, 0), "b:2,S"),
            (
                "b",
                f(SEEN | DRAFT | DELETED | ANSWERED | FLAGGED, 0),
                "b:2,DFRST",
            ),
            ("b:2,S", Flags::NONE, "b:2,"),
            ("b:2,RS", f(SEEN, 0b101), "b:2,Sac"),
            (
                "b,S=5,W=6:2,S",
                f(SEEN | FLAGGED, 1 << 25),
                "b,S=5,W=6:2,FSz",
            ),
            // Unknown letter P (passed) stays where it is.
            ("b:2,PS", f(SEEN | DRAFT, 0), "b:2,DPS"),
            ("b:2,P", f(SEEN | FLAGGED, 1), "b:2,FPSa"),
            // A second flag set is kept verbatim.
            ("b:2,S,xyz", f(DRAFT, 0), "b:2,D,xyz"),
            // Other info versions are replaced.
            ("b:1,junk", f(SEEN, 0), "b:2,S"),
        ];
        for (name, flags, want) in table {
            let got = with_flags(name, *flags);
            assert_eq!(&got, want, "{name} {flags:?}");
            assert_eq!(parse(&got), *flags, "{got}");
            assert_eq!(base(&got), base(name));
        }
    }

    #[test]
    fn parse_cases() {
        assert_eq!(parse("x"), Flags::NONE);
        assert_eq!(parse("x:2,"), Flags::NONE);
        assert_eq!(parse("x:1,S"), Flags::NONE);
        assert_eq!(parse("x:2,FS,T"), f(FLAGGED | SEEN, 0));
        assert_eq!(parse("x:2,Sbd"), f(SEEN, 0b1010));
        assert_eq!(parse("a:b:2,T"), f(DELETED, 0));
        assert_eq!(base("a:b:2,T"), "a");
        assert_eq!(system_flag("\\SEEN"), Some(SEEN));
        assert_eq!(system_flag("\\Recent"), None);
        assert_eq!(
            f(SEEN | ANSWERED, 0).system_names(),
            ["\\Answered", "\\Seen"]
        );
    }
}
