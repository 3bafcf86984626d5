//! `mailgate-modseq`: the CONDSTORE/QRESYNC state (RFC 7162) that Dovecot
//! keeps only in its indexes, in a file of our own beside the uidlist.
//!
//! ```text
//! mailgate-modseq 1 V<uidvalidity> H<highest modseq> R<first recent uid> E<expunge floor>
//! m <uid> <modseq> <flag letters>     one per message (last line wins)
//! x <uid> <modseq>                    an expunge, for VANISHED
//! ```
//!
//! Appended to (and fdatasync'd before the change it records is answered),
//! compacted by a durable rename when it has grown to twice its live size;
//! only written under the folder's uidlist lock. The flag letters are what
//! the message had when its modseq was given: a file renamed by someone
//! else (Dovecot, mutt, POP3) shows other letters at the next sync and gets
//! a new modseq then.
//!
//! Losing the file (or finding one of another UIDVALIDITY) never shows a
//! client wrong data: the new state starts at a HIGHESTMODSEQ above any we
//! could have given out (the next second of the clock times 2^16, so the
//! old counter would have needed 65536 changes a second to get there;
//! a clock set back, as on a router without RTC before NTP, defeats it) and all
//! messages get that modseq, so a client that syncs from its old value
//! gets every flag again; the expunge floor E rises to it, so VANISHED
//! (EARLIER) then reports every gap instead of the expunges it forgot.
//! Only the newest [`MAX_EXPUNGES`] expunges are kept; dropping older ones
//! raises E likewise.
//!
//! Must not: decrease H, or give one modseq to two changes.

use super::fasthash::FastMap;
use super::flags::{self, Flags};
use crate::store::durable;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub const FILE: &str = "mailgate-modseq";
const MAGIC: &str = "mailgate-modseq 1";
/// Expunge records kept for QRESYNC (RFC 7162 3.2.5.2 lets a server
/// forget: it then reports more UIDs as vanished, never fewer).
pub const MAX_EXPUNGES: usize = 10_000;
/// Compact when the file has this many more lines than live records.
const COMPACT_SLACK: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub uidvalidity: u32,
    pub highest: u64,
    /// UIDs at or above this are \Recent for the next session to claim.
    pub first_recent: u32,
    /// Expunges with a modseq at or below this are forgotten.
    pub expunge_floor: u64,
    pub messages: FastMap<u32, (u64, Flags)>,
    /// uid -> modseq of its expunge.
    pub expunged: BTreeMap<u32, u64>,
    lines: usize,
    pending: String,
}

/// RFC 7162 3.1.1: mod-sequence values are at most 2^63 - 1; anything
/// larger in the file is garbage.
pub const MAX_MODSEQ: u64 = i64::MAX as u64;

fn modseq_value(v: &str) -> Option<u64> {
    v.parse::<u64>().ok().filter(|&m| m <= MAX_MODSEQ)
}

fn parse_modseq(v: &str) -> Result<u64, ()> {
    modseq_value(v).ok_or(())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Where a recovered state starts: the next second, so a loss within the
/// second its folder was made still lands above the old counter.
fn clock_floor() -> u64 {
    (now_secs() + 1) << 16
}

fn letters(f: Flags) -> String {
    let name = flags::with_flags("", f);
    name.trim_start_matches(flags::INFO_FLAGS).to_string()
}

impl State {
    /// The state of a folder that just got a new UIDVALIDITY (nothing was
    /// handed out under it yet): starts at this second times 2^16.
    pub fn create(uidvalidity: u32) -> State {
        let mut st = State::fresh(uidvalidity, 0);
        st.highest = now_secs() << 16;
        st.expunge_floor = st.highest;
        st.lines = usize::MAX / 2;
        st
    }

    /// A fresh state for `uidvalidity`, above anything handed out before.
    pub fn fresh(uidvalidity: u32, at_least: u64) -> State {
        let h = clock_floor().max(at_least.saturating_add(1));
        State {
            uidvalidity,
            highest: h,
            first_recent: 1,
            expunge_floor: h,
            messages: FastMap::default(),
            expunged: BTreeMap::new(),
            lines: 0,
            pending: String::new(),
        }
    }

    /// Parse the file; `None` if it is not ours or its header is torn.
    pub fn parse(text: &str) -> Option<State> {
        let mut lines = text.split('\n');
        let header = lines.next()?;
        let rest = header.strip_prefix(MAGIC)?;
        let mut st = State::fresh(0, 0);
        st.expunge_floor = 0;
        st.highest = 0;
        for field in rest.split(' ').filter(|f| !f.is_empty()) {
            let mut cs = field.chars();
            let k = cs.next();
            let v = cs.as_str();
            match k {
                Some('V') => st.uidvalidity = v.parse().ok()?,
                Some('H') => st.highest = modseq_value(v)?,
                Some('R') => st.first_recent = v.parse().ok()?,
                Some('E') => st.expunge_floor = modseq_value(v)?,
                _ => {}
            }
        }
        let body: Vec<&str> = lines.collect();
        let n = body.len();
        st.messages.reserve(n);
        for (i, line) in body.into_iter().enumerate() {
            // The piece after the last newline is torn (or empty): skip.
            if i + 1 == n {
                break;
            }
            st.lines += 1;
            let mut f = line.split(' ');
            match (f.next(), f.next(), f.next()) {
                (Some("m"), Some(uid), Some(ms)) => {
                    if let (Ok(uid), Ok(ms)) = (uid.parse(), parse_modseq(ms)) {
                        let fl = flags::parse_letters(f.next().unwrap_or(""));
                        st.highest = st.highest.max(ms);
                        st.messages.insert(uid, (ms, fl));
                    }
                }
                (Some("x"), Some(uid), Some(ms)) => {
                    if let (Ok(uid), Ok(ms)) = (uid.parse::<u32>(), parse_modseq(ms)) {
                        st.highest = st.highest.max(ms);
                        st.messages.remove(&uid);
                        st.expunged.insert(uid, ms);
                    }
                }
                (Some("r"), Some(uid), _) => {
                    if let Ok(uid) = uid.parse::<u32>() {
                        st.first_recent = st.first_recent.max(uid);
                    }
                }
                _ => {}
            }
        }
        Some(st)
    }

    /// Load for `uidvalidity`: a missing, foreign or mismatched file gives
    /// a fresh state above it.
    pub fn load(dir: &Path, uidvalidity: u32) -> io::Result<State> {
        let mut buf = Vec::new();
        match fs::File::open(dir.join(FILE)) {
            Ok(mut f) => {
                f.read_to_end(&mut buf)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let parsed = State::parse(&String::from_utf8_lossy(&buf));
        Ok(match parsed {
            Some(st) if st.uidvalidity == uidvalidity => st,
            Some(st) => {
                let mut f = State::fresh(uidvalidity, st.highest);
                f.lines = usize::MAX / 2; // rewrite at the next save
                f
            }
            None => {
                let mut f = State::fresh(uidvalidity, 0);
                f.lines = usize::MAX / 2;
                f
            }
        })
    }

    /// A new modseq for `uid` with `flags`.
    pub fn bump(&mut self, uid: u32, flags: Flags) -> u64 {
        self.highest = self.highest.saturating_add(1).min(MAX_MODSEQ);
        self.messages.insert(uid, (self.highest, flags));
        self.pending
            .push_str(&format!("m {uid} {} {}\n", self.highest, letters(flags)));
        self.highest
    }

    pub fn expunge(&mut self, uid: u32) -> u64 {
        self.highest = self.highest.saturating_add(1).min(MAX_MODSEQ);
        self.messages.remove(&uid);
        self.expunged.insert(uid, self.highest);
        self.pending
            .push_str(&format!("x {uid} {}\n", self.highest));
        self.highest
    }

    /// Mark UIDs below `uid_next` as no longer recent.
    pub fn claim_recent(&mut self, uid_next: u32) -> u32 {
        let first = self.first_recent;
        if uid_next > first {
            self.first_recent = uid_next;
            self.pending.push_str(&format!("r {uid_next}\n"));
        }
        first
    }

    /// Records to append, or a file to (re)write.
    pub fn is_dirty(&self) -> bool {
        !self.pending.is_empty() || self.lines >= usize::MAX / 2
    }

    /// Make the pending records durable: append + fdatasync, or a compacted
    /// rewrite (temporary file, fsync, rename, fsync folder).
    pub fn save(&mut self, dir: &Path) -> io::Result<()> {
        if self.pending.is_empty() && self.lines < usize::MAX / 2 {
            return Ok(());
        }
        if self.expunged.len() > MAX_EXPUNGES {
            let drop_n = self.expunged.len() - MAX_EXPUNGES;
            let dropped: Vec<(u32, u64)> = self
                .expunged
                .iter()
                .take(drop_n)
                .map(|(u, m)| (*u, *m))
                .collect();
            for (u, m) in dropped {
                self.expunged.remove(&u);
                self.expunge_floor = self.expunge_floor.max(m);
            }
            self.lines = usize::MAX / 2;
        }
        let live = self.messages.len() + self.expunged.len();
        let path = dir.join(FILE);
        let add = self.pending.matches('\n').count();
        if self.lines.saturating_add(add) > 2 * live + COMPACT_SLACK || !path.exists() {
            let text = self.serialize();
            let tmp = dir.join(format!("{FILE}.tmp"));
            let _ = fs::remove_file(&tmp);
            durable::write_durable(&tmp, &path, &[text.as_bytes()])?;
            self.lines = live;
        } else {
            let mut f = OpenOptions::new().append(true).mode(0o600).open(&path)?;
            f.write_all(self.pending.as_bytes())?;
            f.sync_data()?;
            self.lines += add;
        }
        self.pending.clear();
        Ok(())
    }

    fn serialize(&self) -> String {
        let mut s = format!(
            "{MAGIC} V{} H{} R{} E{}\n",
            self.uidvalidity, self.highest, self.first_recent, self.expunge_floor
        );
        let mut uids: Vec<&u32> = self.messages.keys().collect();
        uids.sort();
        for uid in uids {
            if let Some((ms, f)) = self.messages.get(uid) {
                s.push_str(&format!("m {uid} {ms} {}\n", letters(*f)));
            }
        }
        for (uid, ms) in &self.expunged {
            s.push_str(&format!("x {uid} {ms}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;

    #[test]
    fn records_survive_and_torn_lines_are_ignored() {
        let t = TempDir::new("modseq");
        let mut st = State::create(7);
        let h0 = st.highest;
        assert!(h0 >= clock_floor() - (10 << 16));
        let seen = Flags {
            system: flags::SEEN,
            keywords: 1,
        };
        let a = st.bump(1, seen);
        let b = st.bump(2, Flags::NONE);
        st.save(t.path()).unwrap();
        let c = st.expunge(1);
        assert!(a < b && b < c);
        st.save(t.path()).unwrap();
        // A writer that died mid-append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(t.path().join(FILE))
            .unwrap();
        f.write_all(b"m 2 99999999999999").unwrap();
        let back = State::load(t.path(), 7).unwrap();
        assert_eq!(back.highest, c);
        assert_eq!(back.messages.get(&2), Some(&(b, Flags::NONE)));
        assert_eq!(back.expunged.get(&1), Some(&c));
        assert!(!back.messages.contains_key(&1));
        // Another UIDVALIDITY or a lost file: fresh and strictly higher.
        let other = State::load(t.path(), 8).unwrap();
        assert!(other.highest > c && other.expunge_floor == other.highest);
        fs::remove_file(t.path().join(FILE)).unwrap();
        let lost = State::load(t.path(), 7).unwrap();
        assert!(lost.highest >= c, "clock floor is above the old counter");
    }

    #[test]
    fn garbage_never_panics() {
        for junk in [
            "",
            "mailgate-modseq 1 V\u{e9}9 H\u{1f600}",
            "mailgate-modseq 1 V1 H2\nm \u{e9} 3 S\nx 1\nm 1 2 \u{1f600}\n",
            "mailgate-modseq 1 V1 H5\nm 1 18446744073709551615 S\nx 2 99999999999999999999\n",
        ] {
            if let Some(st) = State::parse(junk) {
                assert!(st.highest <= MAX_MODSEQ);
            }
        }
        assert!(State::parse("mailgate-modseq 1 V1 H18446744073709551615").is_none());
        let mut st = State::parse("mailgate-modseq 1 V1 H5 R1 E0\n").unwrap();
        assert_eq!(st.bump(1, Flags::NONE), 6);
    }

    #[test]
    fn compaction_and_expunge_bound() {
        let t = TempDir::new("modseq-compact");
        let mut st = State::create(1);
        for round in 0..5u32 {
            for uid in 1..=600 {
                st.bump(
                    uid,
                    Flags {
                        system: (round % 2) as u8 * flags::SEEN,
                        keywords: 0,
                    },
                );
            }
            st.save(t.path()).unwrap();
        }
        let lines = fs::read_to_string(t.path().join(FILE))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 2 * 600 + COMPACT_SLACK + 700, "{lines}");
        for uid in 1..=600 {
            st.expunge(uid);
        }
        for uid in 10_000..(10_000 + MAX_EXPUNGES as u32) {
            st.expunge(uid);
        }
        st.save(t.path()).unwrap();
        let back = State::load(t.path(), 1).unwrap();
        assert_eq!(back.expunged.len(), MAX_EXPUNGES);
        assert!(back.expunge_floor >= *st.expunged.values().next().unwrap() - 1);
        assert!(!back.expunged.contains_key(&1));
        assert_eq!(back.highest, st.highest);
    }
}
