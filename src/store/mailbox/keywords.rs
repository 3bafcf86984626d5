//! `dovecot-keywords`: which keyword each file-name letter `a`..`z` means,
//! one `<index> <keyword>` line each (Dovecot's maildir-keywords.c).
//!
//! Read without a lock (the file is only ever replaced by rename); written
//! only under the folder's uidlist lock, through a temporary file renamed
//! over it, with an mtime that grows on every change (Dovecot checks the
//! mtime to see whether to re-read). Keywords match case-insensitively,
//! as in Dovecot (`strcasecmp`); an index once given is never reused for
//! another keyword while the file exists.
//!
//! Must not: hold more than [`MAX_KEYWORDS`] names (the letters run out).

use super::flags::MAX_KEYWORDS;
use crate::store::durable;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const FILE: &str = "dovecot-keywords";
/// RFC 3501 9 `atom`: no specials. A longer keyword is refused too.
pub const MAX_KEYWORD_LEN: usize = 200;

/// Index -> keyword, as in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keywords {
    slots: Vec<Option<String>>,
}

impl Keywords {
    /// Parse the file's text; bad lines are skipped as Dovecot does.
    pub fn parse(text: &str) -> Keywords {
        let mut k = Keywords::default();
        for line in text.lines() {
            let Some((idx, name)) = line.split_once(' ') else {
                continue;
            };
            let Ok(idx) = idx.parse::<usize>() else {
                continue;
            };
            if idx >= MAX_KEYWORDS || name.is_empty() || k.index_of(name).is_some() {
                continue;
            }
            if k.slots.len() <= idx {
                k.slots.resize(idx + 1, None);
            }
            if let Some(slot) = k.slots.get_mut(idx) {
                *slot = Some(name.to_string());
            }
        }
        k
    }

    pub fn read(dir: &Path) -> io::Result<Keywords> {
        match fs::read(dir.join(FILE)) {
            Ok(b) => Ok(Keywords::parse(&String::from_utf8_lossy(&b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Keywords::default()),
            Err(e) => Err(e),
        }
    }

    pub fn serialize(&self) -> String {
        let mut s = String::new();
        for (i, k) in self.slots.iter().enumerate() {
            if let Some(k) = k {
                s.push_str(&format!("{i} {k}\n"));
            }
        }
        s
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(name)))
    }

    pub fn name(&self, idx: usize) -> Option<&str> {
        self.slots.get(idx).and_then(|s| s.as_deref())
    }

    /// All keywords in index order (for FLAGS / PERMANENTFLAGS).
    pub fn names(&self) -> Vec<&str> {
        self.slots.iter().flatten().map(|s| s.as_str()).collect()
    }

    /// The index of `name`, adding it in the first free slot. `None` when
    /// all 26 letters are taken (the STORE then fails, as in Dovecot).
    pub fn intern(&mut self, name: &str) -> Option<(usize, bool)> {
        if let Some(i) = self.index_of(name) {
            return Some((i, false));
        }
        let free = self.slots.iter().position(|s| s.is_none());
        let i = match free {
            Some(i) => i,
            None if self.slots.len() < MAX_KEYWORDS => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return None,
        };
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Some(name.to_string());
        }
        Some((i, true))
    }

    /// Replace the file durably (caller holds the uidlist lock). The
    /// mtime is set past the old one so Dovecot sees the change.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let path = dir.join(FILE);
        let old_mtime = fs::metadata(&path).and_then(|m| m.modified()).ok();
        let tmp = dir.join(format!("{FILE}.mailgate-tmp.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        durable::write_synced(&tmp, |w| w.write_all(self.serialize().as_bytes()))?;
        let now = SystemTime::now();
        if let Some(old) = old_mtime {
            if now <= old + Duration::from_secs(1) {
                let secs = old.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + 1;
                set_mtime(&tmp, secs)?;
            }
        }
        durable::publish(&tmp, &path)
    }
}

/// A keyword atom (RFC 3501 9 `flag-keyword = atom`): no specials, no
/// backslash, not empty.
pub fn valid_keyword(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_KEYWORD_LEN
        && name.bytes().all(|b| {
            (0x21..0x7f).contains(&b)
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
        })
}

fn set_mtime(path: &Path, secs: u64) -> io::Result<()> {
    let f = fs::File::options().write(true).open(path)?;
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;

    #[test]
    fn parse_intern_write() {
        let k = Keywords::parse("0 $Forwarded\n2 Work\nbad\n99 x\n1 \n3 work\n");
        assert_eq!(k.names(), ["$Forwarded", "Work"]);
        assert_eq!(k.index_of("WORK"), Some(2));
        let mut k = k;
        assert_eq!(k.intern("$Junk"), Some((1, true)));
        assert_eq!(k.intern("$junk"), Some((1, false)));
        assert_eq!(k.serialize(), "0 $Forwarded\n1 $Junk\n2 Work\n");
        for i in 3..MAX_KEYWORDS {
            assert!(k.intern(&format!("k{i}")).is_some());
        }
        assert_eq!(k.intern("one-too-many"), None);
        let t = TempDir::new("kw");
        k.write(t.path()).unwrap();
        let m1 = fs::metadata(t.path().join(FILE))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(Keywords::read(t.path()).unwrap(), k);
        k.write(t.path()).unwrap();
        let m2 = fs::metadata(t.path().join(FILE))
            .unwrap()
            .modified()
            .unwrap();
        assert!(m2 > m1, "mtime grows on every write");
        assert!(valid_keyword("$Label1") && !valid_keyword("a b") && !valid_keyword("\\Seen"));
    }
}
