//! `dovecot-uidlist` version 3, read and written as Dovecot does
//! (maildir-uidlist.c):
//!
//! ```text
//! 3 V<uidvalidity> N<nextuid> G<mailbox guid, 32 hex>[ <other header fields>]
//! <uid>[ <ext key><value> ...] :<base file name>
//! ```
//!
//! Records are in ascending UID order and name a message by its base name
//! (before `:2,`), so flag renames never touch the uidlist. Extension keys
//! are `A`..`Z` (`W` = CRLF size, `S` = size, when the file name lacks
//! them); unknown header fields and record extensions are kept.
//!
//! Parsing is forgiving where Dovecot would throw the file away: a torn
//! last line (no newline: a writer that died while appending) or a bad
//! line is dropped and the rest kept, so a damaged file loses as few UIDs
//! as possible. Version 1 (`1 <uidvalidity> <nextuid>`) is read too.
//!
//! Must not: write except by [`Uidlist::write`] (temporary file, fsync,
//! rename, fsync folder) with the uidlist lock held.

use super::fasthash::{self, FastMap};
use crate::store::durable;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

pub const FILE: &str = "dovecot-uidlist";
/// Dovecot writes the replacement here while it holds the lock.
pub const TMP_FILE: &str = "dovecot-uidlist.tmp";
/// UIDs are non-zero 32-bit (RFC 3501 2.3.1.1); Dovecot refuses u32::MAX.
pub const MAX_UID: u32 = u32::MAX - 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    /// Extension fields as written (`W1234`).
    pub ext: Vec<String>,
    /// Base file name (no `:2,` info).
    pub base: String,
}

impl Record {
    /// The value of extension `key` (`W` -> CRLF size).
    pub fn ext_value(&self, key: char) -> Option<&str> {
        self.ext.iter().find_map(|e| e.strip_prefix(key))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uidlist {
    pub uidvalidity: u32,
    pub next_uid: u32,
    /// Mailbox GUID, 32 lowercase hex digits.
    pub guid: String,
    /// Header fields other than V, N and G, kept as they were.
    pub header_ext: Vec<String>,
    pub records: Vec<Record>,
}

/// What reading found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A usable file; `damaged` when some lines had to be dropped (the
    /// caller rewrites it).
    Ok { list: Uidlist, damaged: bool },
    /// The header is unusable: records that could be read are kept so
    /// their UIDs survive if the UIDVALIDITY is known from elsewhere.
    BadHeader { records: Vec<Record> },
}

impl Uidlist {
    pub fn new(uidvalidity: u32, guid: String) -> Uidlist {
        Uidlist {
            uidvalidity,
            next_uid: 1,
            guid,
            header_ext: Vec::new(),
            records: Vec::new(),
        }
    }

    pub fn parse(bytes: &[u8]) -> Parsed {
        let text = String::from_utf8_lossy(bytes);
        let complete = text.ends_with('\n');
        let mut lines: Vec<&str> = text.split('\n').collect();
        // The piece after the last newline: empty, or a torn line.
        let torn = lines.pop().is_some_and(|l| !l.is_empty());
        let mut damaged = torn || !complete && !text.is_empty();
        let mut it = lines.into_iter();
        let header = it.next().and_then(parse_header);
        let mut records: Vec<Record> = Vec::with_capacity(it.len());
        let mut by_base: FastMap<String, usize> = fasthash::with_capacity(it.len());
        let v1 = matches!(header, Some((1, ..)));
        for line in it {
            match parse_record(line, v1) {
                Some(r) if records.last().is_none_or(|l| l.uid < r.uid) => {
                    if let Some(&old) = by_base.get(&r.base) {
                        // Dovecot: a duplicate file entry keeps the newer UID.
                        records.remove(old);
                        by_base.clear();
                        for (i, rec) in records.iter().enumerate() {
                            by_base.insert(rec.base.clone(), i);
                        }
                        damaged = true;
                    }
                    by_base.insert(r.base.clone(), records.len());
                    records.push(r);
                }
                _ => damaged = true,
            }
        }
        match header {
            Some((version, v, n, guid, header_ext)) => {
                let last = records.last().map(|r| r.uid).unwrap_or(0);
                let next_uid = n.max(last.saturating_add(1));
                let guid_ok = guid.as_deref().is_some_and(valid_guid);
                let list = Uidlist {
                    uidvalidity: v,
                    next_uid,
                    guid: guid.filter(|g| valid_guid(g)).unwrap_or_else(new_guid),
                    header_ext,
                    records,
                };
                Parsed::Ok {
                    list,
                    damaged: damaged || version != 3 || !guid_ok || next_uid != n,
                }
            }
            None => Parsed::BadHeader { records },
        }
    }

    /// Read `dir/dovecot-uidlist`; `Ok(None)` when it does not exist.
    pub fn read(dir: &Path) -> io::Result<Option<Parsed>> {
        let mut buf = Vec::new();
        match fs::File::open(dir.join(FILE)) {
            Ok(mut f) => {
                f.read_to_end(&mut buf)?;
                Ok(Some(Uidlist::parse(&buf)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn serialize(&self) -> Vec<u8> {
        let mut s = String::with_capacity(64 + self.records.len() * 64);
        s.push_str(&format!(
            "3 V{} N{} G{}",
            self.uidvalidity, self.next_uid, self.guid
        ));
        for h in &self.header_ext {
            s.push(' ');
            s.push_str(h);
        }
        s.push('\n');
        for r in &self.records {
            s.push_str(&r.uid.to_string());
            for e in &r.ext {
                s.push(' ');
                s.push_str(e);
            }
            s.push_str(" :");
            s.push_str(&r.base);
            s.push('\n');
        }
        s.into_bytes()
    }

    /// Replace the file: `dovecot-uidlist.tmp`, fsync, rename, fsync the
    /// folder. The caller holds the uidlist lock (which is also what makes
    /// the fixed temporary name safe, as in Dovecot).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        durable::write_durable(&tmp, &dir.join(FILE), &[&self.serialize()])
    }

    /// Binary search by UID.
    pub fn find(&self, uid: u32) -> Option<&Record> {
        self.records
            .binary_search_by_key(&uid, |r| r.uid)
            .ok()
            .and_then(|i| self.records.get(i))
    }
}

type Header = (u8, u32, u32, Option<String>, Vec<String>);

fn parse_header(line: &str) -> Option<Header> {
    let (ver, rest) = line.split_once(' ')?;
    match ver {
        "1" => {
            let mut it = rest.split(' ');
            let v = it.next()?.parse().ok().filter(|&v| v != 0)?;
            let n = it.next()?.parse().ok().filter(|&n| n != 0)?;
            Some((1, v, n, None, Vec::new()))
        }
        "3" => {
            let (mut v, mut n, mut g, mut other) = (0u32, 0u32, None, Vec::new());
            for field in rest.split(' ').filter(|f| !f.is_empty()) {
                let mut cs = field.chars();
                let key = cs.next()?;
                let value = cs.as_str();
                match key {
                    'V' => v = value.parse().ok()?,
                    'N' => n = value.parse().ok()?,
                    'G' => g = Some(value.to_string()),
                    _ => other.push(field.to_string()),
                }
            }
            (v != 0 && n != 0).then_some((3, v, n, g, other))
        }
        _ => None,
    }
}

fn parse_record(line: &str, v1: bool) -> Option<Record> {
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    let uid: u32 = line.get(..digits)?.parse().ok()?;
    if uid == 0 || uid > MAX_UID {
        return None;
    }
    let rest = line
        .get(digits..)?
        .strip_prefix(' ')?
        .trim_start_matches(' ');
    let (ext, name) = if v1 {
        (Vec::new(), rest)
    } else {
        let colon = rest.find(':')?;
        let ext: Vec<String> = rest
            .get(..colon)?
            .split(' ')
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if ext
            .iter()
            .any(|e| !e.starts_with(|c: char| c.is_ascii_uppercase()))
        {
            return None;
        }
        (ext, rest.get(colon + 1..)?)
    };
    let base = name.split(':').next().unwrap_or("");
    if base.is_empty() || base.contains('/') || base.starts_with('.') {
        return None;
    }
    Some(Record {
        uid,
        ext,
        base: base.to_string(),
    })
}

fn valid_guid(g: &str) -> bool {
    g.len() == 32 && g.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A fresh 128-bit mailbox GUID (Dovecot's `guid_128_generate` is also
/// random-ish; only uniqueness matters).
pub fn new_guid() -> String {
    let mut b = [0u8; 16];
    let ok = fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mix = t ^ (u128::from(std::process::id()) << 64);
        b = mix.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;

    const DOVECOT: &str = "3 V1700000000 N5 G0123456789abcdef0123456789abcdef\n\
        1 :1700000000.M1P1.host,S=10,W=12\n\
        3 W99 :1700000001.M2P1.host\n\
        4 :1700000002.M3P1.host,S=5,W=6\n";

    fn ok(p: Parsed) -> (Uidlist, bool) {
        match p {
            Parsed::Ok { list, damaged } => (list, damaged),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trips_dovecot_format() {
        let (l, damaged) = ok(Uidlist::parse(DOVECOT.as_bytes()));
        assert!(!damaged);
        assert_eq!((l.uidvalidity, l.next_uid), (1_700_000_000, 5));
        assert_eq!(l.records.len(), 3);
        assert_eq!(l.find(3).unwrap().ext_value('W'), Some("99"));
        assert_eq!(l.find(2), None);
        assert_eq!(String::from_utf8(l.serialize()).unwrap(), DOVECOT);
        let t = TempDir::new("uidlist");
        l.write(t.path()).unwrap();
        assert_eq!(fs::read_to_string(t.path().join(FILE)).unwrap(), DOVECOT);
        assert!(!t.path().join(TMP_FILE).exists());
        assert_eq!(ok(Uidlist::read(t.path()).unwrap().unwrap()).0, l);
    }

    #[test]
    fn unknown_header_fields_and_info_in_names_are_kept_or_dropped_like_dovecot() {
        let text = "3 V7 N3 Gffffffffffffffffffffffffffffffff P%08Xu Xyz\n1 :a:2,S\n";
        let (l, damaged) = ok(Uidlist::parse(text.as_bytes()));
        assert!(!damaged);
        assert_eq!(l.header_ext, ["P%08Xu", "Xyz"]);
        assert_eq!(l.records[0].base, "a");
        assert_eq!(
            String::from_utf8(l.serialize()).unwrap(),
            "3 V7 N3 Gffffffffffffffffffffffffffffffff P%08Xu Xyz\n1 :a\n"
        );
    }

    #[test]
    fn torn_and_bad_lines_keep_every_good_uid() {
        let mut torn = DOVECOT.to_string();
        torn.push_str("5 :1700000003.M4P1.ho");
        let (l, damaged) = ok(Uidlist::parse(torn.as_bytes()));
        assert!(damaged);
        assert_eq!(
            l.records.iter().map(|r| r.uid).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        let junk = "3 V7 N2 G0123456789abcdef0123456789abcdef\n\
            1 :a\nxx :b\n0 :c\n2 lower :d\n3 :../e\n2 :f\n9 :g\n8 :h\n10 :a\n";
        let (l, damaged) = ok(Uidlist::parse(junk.as_bytes()));
        assert!(damaged);
        let got: Vec<(u32, &str)> = l.records.iter().map(|r| (r.uid, r.base.as_str())).collect();
        // "a" appears again as 10: Dovecot keeps the newer UID.
        assert_eq!(got, [(2, "f"), (9, "g"), (10, "a")]);
        assert_eq!(l.next_uid, 11, "next_uid never below the last UID + 1");
        // Header gone: records still offered.
        match Uidlist::parse(b"3 Vx N1\n1 :a\n2 :b\n") {
            Parsed::BadHeader { records } => assert_eq!(records.len(), 2),
            other => panic!("{other:?}"),
        }
        for bad in [&b""[..], b"3 V0 N1 G00\n", b"2 V1 N1\n", b"3 V1\n"] {
            assert!(
                matches!(Uidlist::parse(bad), Parsed::BadHeader { .. }),
                "{bad:?}"
            );
        }
        // Version 1, and a missing GUID: read, marked for rewrite.
        let (l, damaged) = ok(Uidlist::parse(b"1 42 7\n3 x.host\n"));
        assert!(damaged);
        assert_eq!((l.uidvalidity, l.next_uid, l.records[0].uid), (42, 7, 3));
        assert_eq!(l.guid.len(), 32);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"0123456789 :VNG3\nabcW/.-\xc3\xa9";
        for len in 0..400usize {
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            let mut text = b"3 V1 N1 G0123456789abcdef0123456789abcdef\n".to_vec();
            text.extend_from_slice(&buf);
            for input in [&buf[..], &text[..]] {
                if let Parsed::Ok { list, .. } = Uidlist::parse(input) {
                    assert!(list.records.windows(2).all(|w| w[0].uid < w[1].uid));
                    assert!(list.records.last().is_none_or(|r| r.uid < list.next_uid));
                }
            }
        }
    }
}
