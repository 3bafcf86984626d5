//! SmartPop's memory of one account: `data_dir/smartpop/NAME`.
//!
//! Owns: the set of UIDLs (RFC 1939 "unique-id listing") seen on one remote
//! maildrop, each with the time it was first seen and two flags
//! (`delivered`: the message is durably in the local Maildir, so it must never
//! be fetched again; `oversized`: the "too big" report was already made;
//! `rejected`: the local delivery refused it for good, e.g. too many hops,
//! so it is left on the server and not fetched again), the
//! text file that holds them, and its durable rewrite.
//! Must not: talk to the network or decide what to fetch (that is
//! `proto::pop3_client`); it only answers "what do we know about this UIDL".
//!
//! File format, one entry per line, fields separated by one space:
//!
//! ```text
//! UIDL FIRST_SEEN FLAGS [id=HASH/SIZE] [staged=MAILBOX/NAME|...]
//! ```
//!
//! `UIDL` is 1..=`MAX_UIDL_LEN` octets in 0x21..=0x7E (RFC 1939 section 7,
//! so it never contains a space), `FIRST_SEEN` is unix seconds, `FLAGS` is
//! `-` or any of `d` (delivered), `o` (oversized reported) and `r`
//! (rejected by the local delivery). `id=` (IMAP keys) is the message's
//! fingerprint (`proto::msgid`: its Message-ID hashed, and its size), by
//! which it is found again after a UIDVALIDITY change. Lines that do
//! not parse are skipped when loading (a torn or hand-edited file must never
//! stop collection): the worst that follows is a duplicate delivery, never a
//! loss, because a message is only DELEd after its line is durable.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use crate::proto::msgid::Fingerprint;
pub use crate::proto::pop3_client::{valid_uidl, Entry, MAX_UIDL_LEN};
use crate::store::deliver::StagedCopy;
use crate::store::maildir::Maildir;

/// Longest account name used as a file name (config section names are short;
/// the bound keeps us well under NAME_MAX = 255 with the `.tmp` suffix).
pub const MAX_ACCOUNT_NAME_LEN: usize = 128;

/// Subdirectory of `data_dir` that holds one records file per account.
pub const RECORDS_DIR: &str = "smartpop";

/// Why an account name cannot be a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAccountName(pub String);

impl std::fmt::Display for BadAccountName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "smartpop account name {:?} cannot be used as a file name",
            self.0
        )
    }
}

impl std::error::Error for BadAccountName {}

/// `data_dir/smartpop/NAME`, refusing names that could escape the directory
/// or hide (`/`, `..`, a leading `.`, control characters, anything but
/// `A-Z a-z 0-9 - _ . @ +`).
pub fn records_path(data_dir: &Path, account: &str) -> Result<PathBuf, BadAccountName> {
    let ok = !account.is_empty()
        && account.len() <= MAX_ACCOUNT_NAME_LEN
        && !account.starts_with('.')
        && !account.contains("..")
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+'));
    if ok {
        Ok(data_dir.join(RECORDS_DIR).join(account))
    } else {
        Err(BadAccountName(account.to_string()))
    }
}

/// The records of one account, in memory, bound to their file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    /// Copies named by `staged=` fields: written to a Maildir's `tmp/`
    /// and recorded, perhaps not yet renamed into `new/` (a crash in
    /// between); `finish_staged` completes them.
    staged: Vec<StagedCopy>,
    /// The file holds lines that a rewrite would shorten (`staged=`).
    compact: bool,
}

impl Records {
    /// No entries yet; nothing is written until the first `record_*` or `save`.
    pub fn empty(path: PathBuf) -> Records {
        Records {
            path,
            entries: BTreeMap::new(),
            staged: Vec::new(),
            compact: false,
        }
    }

    /// Reads the file at `path`; a missing file is an empty record set.
    /// Junk lines are skipped (and counted in the log), never fatal.
    pub fn load(path: PathBuf) -> io::Result<Records> {
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (mut records, skipped) = Records::parse(&text);
        if skipped > 0 {
            log::warn!("{}: skipped {skipped} unreadable line(s)", path.display());
        }
        records.path = path;
        Ok(records)
    }

    /// Parses file text; returns the records (with an empty path) and the
    /// number of lines skipped as junk.
    pub fn parse(text: &[u8]) -> (Records, usize) {
        let mut records = Records::empty(PathBuf::new());
        let mut skipped = 0;
        for line in text.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            match parse_line(line) {
                Some((uidl, entry, staged)) => {
                    records.merge(uidl, entry);
                    records.staged.extend(staged);
                }
                None => skipped += 1,
            }
        }
        (records, skipped)
    }

    /// The file text, one line per entry, sorted by UIDL.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.entries.len() * 32);
        for (uidl, e) in &self.entries {
            s.push_str(uidl);
            s.push(' ');
            s.push_str(&e.first_seen.to_string());
            s.push(' ');
            let flags = [(e.delivered, 'd'), (e.oversized, 'o'), (e.rejected, 'r')];
            let mut any = false;
            for (_, c) in flags.iter().filter(|(set, _)| *set) {
                s.push(*c);
                any = true;
            }
            if !any {
                s.push('-');
            }
            if let Some(fp) = &e.fingerprint {
                s.push_str(" id=");
                s.push_str(&fp.to_field());
            }
            s.push('\n');
        }
        s
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, uidl: &str) -> Option<&Entry> {
        self.entries.get(uidl)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Marks `uidl` delivered in memory (first seen `now` if new).
    pub fn mark_delivered(&mut self, uidl: &str, now: u64) {
        self.mark(uidl, now, |e| e.delivered = true);
    }

    /// Marks the oversize report for `uidl` as made, in memory.
    pub fn mark_oversized(&mut self, uidl: &str, now: u64) {
        self.mark(uidl, now, |e| e.oversized = true);
    }

    /// Marks `uidl` as refused for good by the local delivery, in memory.
    pub fn mark_rejected(&mut self, uidl: &str, now: u64) {
        self.mark(uidl, now, |e| e.rejected = true);
    }

    /// Sets a flag of `uidl`'s entry, made (first seen `now`) if new.
    /// Invalid UIDLs are ignored: they could not be written back as a line.
    fn mark(&mut self, uidl: &str, now: u64, set: impl FnOnce(&mut Entry)) {
        if valid_uidl(uidl) {
            set(self.entries.entry(uidl.to_string()).or_insert(Entry {
                first_seen: now,
                ..Entry::default()
            }));
        }
    }

    /// Records `uidl` as refused for good, durably (it is then left on the
    /// server and not fetched again).
    pub fn record_rejected(&mut self, uidl: &str, now: u64) -> io::Result<()> {
        let before = self.entries.get(uidl).copied();
        self.mark_rejected(uidl, now);
        self.save_or_revert(uidl, before)
    }

    /// Records `uidl` as delivered and makes it durable before returning.
    /// Call it after the message itself is durable in the Maildir and before
    /// telling the client `delivered(true)`: only then may DELE be sent.
    /// On error the in-memory state is left as it was.
    pub fn record_delivered(&mut self, uidl: &str, now: u64) -> io::Result<()> {
        let before = self.entries.get(uidl).copied();
        self.mark_delivered(uidl, now);
        self.save_or_revert(uidl, before)
    }

    /// Records `uidl` as delivered, naming the copies staged in `tmp/`
    /// and not yet renamed into `new/`: called between the two, so that a
    /// crash there is finished by `finish_staged` at the next start (the
    /// message in the mailbox once, not fetched again).
    /// `fingerprint` (IMAP) is kept with it for a UIDVALIDITY change.
    pub fn record_staged(
        &mut self,
        uidl: &str,
        now: u64,
        copies: &[StagedCopy],
        fingerprint: Option<Fingerprint>,
    ) -> io::Result<()> {
        let before = self.entries.get(uidl).copied();
        self.mark(uidl, now, |e| {
            e.delivered = true;
            e.fingerprint = e.fingerprint.or(fingerprint);
        });
        let result = self.append_with(uidl, staged_field(copies).as_deref());
        if result.is_err() {
            self.revert(uidl, before);
        }
        result
    }

    /// Takes back a delivery recorded by `record_staged` whose copies were
    /// then undone: rewrites the file without `uidl`.
    pub fn forget(&mut self, uidl: &str) -> io::Result<()> {
        self.entries.remove(uidl);
        self.save()
    }

    /// Renames into `new/` every recorded copy still in `tmp/` (left by a
    /// crash between recording and renaming). Cheap when there is none:
    /// one `stat` per recorded copy. Returns how many were finished.
    pub fn finish_staged(&mut self, data_dir: &Path) -> io::Result<usize> {
        let mut finished = 0;
        for (mailbox, name) in std::mem::take(&mut self.staged) {
            let Ok(md) = Maildir::for_mailbox(data_dir, &mailbox) else {
                continue;
            };
            let tmp = md.tmp_dir().join(&name);
            if tmp.exists() {
                let published = md.new_dir().join(&name);
                if same_file(&tmp, &published) {
                    // Published as a link, cut before its tmp/ name went.
                    std::fs::remove_file(&tmp)?;
                    continue;
                }
                md.publish(&name)?;
                crate::store::durable::fsync_dir(&md.new_dir())?;
                log::warn!("smartpop: finished the delivery of {name} to {mailbox} cut by a crash");
                finished += 1;
            }
        }
        self.compact = true;
        Ok(finished)
    }

    /// Makes the names of `copies` in their `tmp/` folders durable. Call
    /// it before [`Records::record_staged`]: staging fsyncs each file but
    /// not its folder, and a record naming a copy that a power cut then
    /// takes away would count the UIDL as delivered (and DELE it) with no
    /// copy anywhere (found by tests/test_powercut.py).
    pub fn sync_staged(data_dir: &Path, copies: &[StagedCopy]) -> io::Result<()> {
        let mut synced: Vec<PathBuf> = Vec::new();
        for (mailbox, _) in copies {
            let tmp = Maildir::for_mailbox(data_dir, mailbox)?.tmp_dir();
            if !synced.contains(&tmp) {
                // Waits for a worker still making this Maildir (its tmp/
                // can be in use before its own name is synced).
                crate::store::durable::create_dir_all_durable(&tmp)?;
                crate::store::durable::fsync_dir(&tmp)?;
                synced.push(tmp);
            }
        }
        Ok(())
    }

    /// Records that the oversize report for `uidl` was made, durably.
    pub fn record_oversized(&mut self, uidl: &str, now: u64) -> io::Result<()> {
        let before = self.entries.get(uidl).copied();
        self.mark_oversized(uidl, now);
        self.save_or_revert(uidl, before)
    }

    fn save_or_revert(&mut self, uidl: &str, before: Option<Entry>) -> io::Result<()> {
        let result = self.append_with(uidl, None);
        if result.is_err() {
            self.revert(uidl, before);
        }
        result
    }

    fn revert(&mut self, uidl: &str, before: Option<Entry>) {
        match before {
            Some(e) => {
                self.entries.insert(uidl.to_string(), e);
            }
            None => {
                self.entries.remove(uidl);
            }
        }
    }

    /// Gives `new` the entry of `old` (a message found again under a new
    /// key after a UIDVALIDITY change), in memory; `old` goes at the next
    /// prune. False when `old` is unknown or `new` cannot be a key.
    pub fn rekey(&mut self, old: &str, new: &str) -> bool {
        match self.entries.get(old).copied() {
            Some(e) if valid_uidl(new) => {
                self.entries.insert(new.to_string(), e);
                true
            }
            _ => false,
        }
    }

    /// Forgets every UIDL not in `on_server` (the maildrop's listing after a
    /// session whose QUIT got +OK), so the file does not grow forever.
    /// Returns how many entries were dropped; call `save` if non-zero.
    pub fn prune<S: AsRef<str>>(&mut self, on_server: &[S]) -> usize {
        let keep: HashSet<&str> = on_server.iter().map(|s| s.as_ref()).collect();
        let before = self.entries.len();
        self.entries.retain(|uidl, _| keep.contains(uidl.as_str()));
        before - self.entries.len()
    }

    /// `prune`, then `save` if anything was dropped or the file can be
    /// compacted.
    pub fn prune_and_save<S: AsRef<str>>(&mut self, on_server: &[S]) -> io::Result<usize> {
        let dropped = self.prune(on_server);
        if dropped > 0 || self.compact {
            self.save()?;
            self.compact = false;
        }
        Ok(dropped)
    }

    /// Appends `uidl`'s current line and fsyncs: one short write per
    /// fetched message instead of rewriting the whole file (which made a
    /// 2000-message collection quadratic). Loading merges repeated lines;
    /// `prune_and_save` compacts. The line starts with a newline so that a
    /// line torn by a crash can never glue onto this one (empty lines are
    /// skipped when loading, and a torn line is junk, never misread).
    fn append_with(&mut self, uidl: &str, extra: Option<&str>) -> io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let Some(entry) = self.entries.get(uidl) else {
            return Ok(());
        };
        let mut one = Records::empty(PathBuf::new());
        one.entries.insert(uidl.to_string(), *entry);
        let mut line = format!("\n{}", one.to_text());
        if let Some(extra) = extra {
            line.pop();
            line.push(' ');
            line.push_str(extra);
            line.push('\n');
            // These lines are only needed until the next start: compact then.
            self.compact = true;
        }
        let existed = self.path.exists();
        if !existed {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::store::durable::create_dir_all_durable(dir)?;
            }
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        file.write_all(line.as_bytes())?;
        file.sync_all()?;
        if !existed {
            // The new name must survive a power cut too, and so must the
            // folder's own name in data_dir: whoever made it (the runner
            // does, with a plain mkdir) did not sync data_dir.
            crate::store::durable::fsync_parent(&self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::store::durable::fsync_parent(dir)?;
            }
        }
        Ok(())
    }

    /// Rewrites the whole file durably (see `write_durable`).
    pub fn save(&self) -> io::Result<()> {
        write_durable(&self.path, self.to_text().as_bytes())
    }

    fn merge(&mut self, uidl: String, entry: Entry) {
        let e = self.entries.entry(uidl).or_insert(entry);
        e.first_seen = e.first_seen.min(entry.first_seen);
        e.delivered |= entry.delivered;
        e.oversized |= entry.oversized;
        e.rejected |= entry.rejected;
        e.fingerprint = e.fingerprint.or(entry.fingerprint);
    }
}

/// `staged=MAILBOX/NAME|MAILBOX/NAME` (Maildir names hold commas).
fn parse_staged(field: &str) -> Option<Vec<StagedCopy>> {
    let list = field.strip_prefix("staged=")?;
    list.split('|')
        .map(|pair| {
            let (mailbox, name) = pair.split_once('/')?;
            (!mailbox.is_empty() && !name.is_empty() && !name.contains('/'))
                .then(|| (mailbox.to_string(), name.to_string()))
        })
        .collect()
}

/// The `staged=` field for `copies`, if every part can be written in it.
fn staged_field(copies: &[StagedCopy]) -> Option<String> {
    let safe = |t: &str| !t.is_empty() && !t.contains([' ', '|', '/', '\n', '\r']);
    if copies.is_empty() || !copies.iter().all(|(m, n)| safe(m) && safe(n)) {
        return None;
    }
    let parts: Vec<String> = copies.iter().map(|(m, n)| format!("{m}/{n}")).collect();
    Some(format!("staged={}", parts.join("|")))
}

fn parse_line(line: &[u8]) -> Option<(String, Entry, Vec<StagedCopy>)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.split(' ');
    let uidl = fields.next()?;
    let first_seen = fields.next()?;
    let flags = fields.next()?;
    let mut staged = None;
    let mut fingerprint = None;
    for field in fields {
        match field.strip_prefix("id=") {
            Some(fp) if fingerprint.is_none() => fingerprint = Some(Fingerprint::parse_field(fp)?),
            Some(_) => return None,
            None if staged.is_none() => staged = Some(parse_staged(field)?),
            None => return None,
        }
    }
    let staged = staged.unwrap_or_default();
    if !valid_uidl(uidl) {
        return None;
    }
    if first_seen.is_empty() || !first_seen.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let first_seen: u64 = first_seen.parse().ok()?;
    let mut entry = Entry {
        first_seen,
        fingerprint,
        ..Entry::default()
    };
    if flags != "-" {
        if flags.is_empty() {
            return None;
        }
        for c in flags.chars() {
            match c {
                'd' => entry.delivered = true,
                'o' => entry.oversized = true,
                'r' => entry.rejected = true,
                _ => return None,
            }
        }
    }
    Some((uidl.to_string(), entry, staged))
}

/// Replaces `path` with `data` so that after a crash the file is either the
/// old one or the new one, whole, by the project's one durable write
/// (`store::durable`): `.NAME.tmp` beside it, fsync, rename, fsync the
/// folder. Runs are serialized per account, so a `.tmp` found here is a
/// crash's leftover and is removed first.
fn write_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "records path has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = match dir {
        Some(d) => {
            crate::store::durable::create_dir_all_durable(d)?;
            d.join(tmp_name)
        }
        None => PathBuf::from(tmp_name),
    };
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    crate::store::durable::write_durable(&tmp, path, &[data])
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn temp_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "mailgate-records-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn account_names() {
        let d = Path::new("/data");
        for good in ["isp-bob", "bob@isp.example", "a_b+c", "x.y", "A1"] {
            assert_eq!(
                records_path(d, good),
                Ok(PathBuf::from("/data/smartpop").join(good)),
                "{good}"
            );
        }
        let long = "a".repeat(MAX_ACCOUNT_NAME_LEN + 1);
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "a/b",
            "/abs",
            ".hidden",
            "a..b",
            "a b",
            "a\0b",
            "a\nb",
            "é",
            long.as_str(),
        ] {
            assert!(records_path(d, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uidl_validity() {
        assert!(valid_uidl("whqtswO00WBw418f9t5JxYwZ"));
        assert!(valid_uidl("!~"));
        assert!(!valid_uidl(""));
        assert!(!valid_uidl("a b"));
        assert!(!valid_uidl("a\x7f"));
        assert!(!valid_uidl("é"));
        assert!(valid_uidl(&"x".repeat(MAX_UIDL_LEN)));
        assert!(!valid_uidl(&"x".repeat(MAX_UIDL_LEN + 1)));
    }

    #[test]
    fn text_roundtrip() {
        let mut r = Records::empty(PathBuf::from("x"));
        r.mark_delivered("b", 20);
        r.mark_oversized("a", 10);
        r.mark_delivered("c", 30);
        r.mark_oversized("c", 99);
        r.mark_delivered("bad uidl", 5);
        r.mark_rejected("d", 40);
        r.mark_rejected("c", 1);
        let text = r.to_text();
        assert_eq!(text, "a 10 o\nb 20 d\nc 30 dor\nd 40 r\n");
        let (back, skipped) = Records::parse(text.as_bytes());
        assert_eq!(skipped, 0);
        assert_eq!(back.entries, r.entries);
    }

    #[test]
    fn fingerprints_roundtrip_and_move_with_rekey() {
        let fp = Fingerprint::of(b"Message-ID: <m@x>\r\n", 4096);
        let mut r = Records::empty(PathBuf::from("x"));
        r.mark("imap:INBOX:1:5", 20, |e| {
            e.delivered = true;
            e.fingerprint = fp;
        });
        let text = r.to_text();
        assert!(text.starts_with("imap:INBOX:1:5 20 d id="), "{text}");
        let (back, skipped) = Records::parse(text.as_bytes());
        assert_eq!((skipped, &back.entries), (0, &r.entries));
        // With a staged= field after it, and a repeated or bad id= is junk.
        let line = format!("{} staged=bob@x/n1\n", text.trim_end());
        assert_eq!(Records::parse(line.as_bytes()).0.entries, r.entries);
        let bad = "k 1 d id=00/1\nk 1 d id=0000000000000001/1 id=0000000000000001/1\n";
        assert_eq!(Records::parse(bad.as_bytes()).1, 2);
        assert!(r.rekey("imap:INBOX:1:5", "imap:INBOX:2:9"));
        assert!(!r.rekey("imap:INBOX:7:7", "imap:INBOX:2:8"));
        assert!(!r.rekey("imap:INBOX:1:5", "bad key"));
        assert_eq!(r.get("imap:INBOX:2:9"), r.get("imap:INBOX:1:5"));
        assert_eq!(r.prune(&["imap:INBOX:2:9"]), 1);
        assert_eq!(r.get("imap:INBOX:2:9").and_then(|e| e.fingerprint), fp);
    }

    #[test]
    fn junk_lines_are_skipped() {
        let text: &[u8] = b"good 1 d\r\n\
            \n\
            only-two 5\n\
            four fields 1 d\n\
            neg -1 d\n\
            big 99999999999999999999999 d\n\
            flags 1 x\n\
            flags2 1 \n\
            \xff\xfe 1 d\n\
            nul\x00 1 d\n\
            plain 7 -\n\
            dup 9 d\n\
            dup 3 o\n\
            trailing 1 d";
        let (r, skipped) = Records::parse(text);
        assert_eq!(skipped, 8);
        assert_eq!(
            r.get("good"),
            Some(&Entry {
                first_seen: 1,
                delivered: true,
                ..Entry::default()
            })
        );
        assert_eq!(
            r.get("plain"),
            Some(&Entry {
                first_seen: 7,
                ..Entry::default()
            })
        );
        assert_eq!(
            r.get("dup"),
            Some(&Entry {
                first_seen: 3,
                delivered: true,
                oversized: true,
                rejected: false,
                fingerprint: None,
            })
        );
        assert!(r.get("trailing").is_some());
        assert_eq!(r.len(), 4);
    }

    #[test]
    fn hostile_bytes_never_panic() {
        let mut junk = Vec::new();
        for b in 0..=255u8 {
            junk.extend_from_slice(&[b, b' ', b'1', b' ', b, b'\n', b'\r', b]);
        }
        let _ = Records::parse(&junk);
        let _ = Records::parse(b"\n\n\r\r  \n");
    }

    #[test]
    fn prune_keeps_only_listed() {
        let mut r = Records::empty(PathBuf::from("x"));
        for u in ["a", "b", "c"] {
            r.mark_delivered(u, 1);
        }
        assert_eq!(r.prune(&["b", "zz"]), 2);
        assert_eq!(r.iter().map(|(u, _)| u).collect::<Vec<_>>(), vec!["b"]);
        assert_eq!(r.prune::<&str>(&[]), 1);
        assert!(r.is_empty());
    }

    #[test]
    fn durable_file_roundtrip() {
        let dir = temp_dir();
        let path = records_path(&dir, "isp-bob").unwrap();
        let mut r = Records::load(path.clone()).unwrap();
        assert!(r.is_empty());
        r.record_delivered("m1", 100).unwrap();
        r.record_oversized("m2", 200).unwrap();
        let back = Records::load(path.clone()).unwrap();
        assert_eq!(back, r);
        // One appended line per record, each after a newline.
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "\nm1 100 d\n\nm2 200 o\n"
        );
        // A line torn by a crash never spoils the next record.
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"m3 1")
            .unwrap();
        r.record_delivered("m4", 300).unwrap();
        let back = Records::load(path.clone()).unwrap();
        assert_eq!(back.get("m4").map(|e| e.delivered), Some(true));
        assert!(back.get("m3").is_none());
        r.record_delivered("m1", 400).unwrap();
        let back = Records::load(path.clone()).unwrap();
        assert_eq!(
            back.get("m1").map(|e| e.first_seen),
            Some(100),
            "repeats merge"
        );
        assert_eq!(r.prune_and_save(&["m2"]).unwrap(), 2);
        assert_eq!(fs::read_to_string(&path).unwrap(), "m2 200 o\n");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("isp-bob")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn staged_copies_are_finished_after_a_crash() {
        let dir = temp_dir();
        let path = records_path(&dir, "isp").unwrap();
        let md = Maildir::for_mailbox(&dir, "bob@example.test").unwrap();
        md.create().unwrap();
        // A copy staged in tmp/, recorded, then the crash: never renamed.
        fs::write(md.tmp_dir().join("100.M1P1Q1.host,S=3,W=3"), b"hi\n").unwrap();
        // Another whose rename did happen.
        fs::write(md.new_dir().join("100.M2P1Q2.host,S=3,W=3"), b"ho\n").unwrap();
        let mut r = Records::load(path.clone()).unwrap();
        let copies = [(
            "bob@example.test".to_string(),
            "100.M1P1Q1.host,S=3,W=3".to_string(),
        )];
        r.record_staged("u1", 100, &copies, None).unwrap();
        let done = [(
            "bob@example.test".to_string(),
            "100.M2P1Q2.host,S=3,W=3".to_string(),
        )];
        r.record_staged("u2", 100, &done, None).unwrap();
        let mut back = Records::load(path.clone()).unwrap();
        assert!(back.get("u1").is_some_and(|e| e.delivered));
        assert_eq!(back.finish_staged(&dir).unwrap(), 1);
        assert!(md.new_dir().join("100.M1P1Q1.host,S=3,W=3").exists());
        assert!(!md.tmp_dir().join("100.M1P1Q1.host,S=3,W=3").exists());
        // Idempotent, and compacted at the end of the next session.
        assert_eq!(back.finish_staged(&dir).unwrap(), 0);
        back.prune_and_save(&["u1", "u2"]).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("staged="), "{text}");
        // Names that cannot be written in the field are not recorded as staged.
        assert_eq!(staged_field(&[("a b".into(), "n".into())]), None);
        assert_eq!(
            parse_staged("staged=bob@x/n1,S=1|al@x/n2").map(|v| v.len()),
            Some(2)
        );
        assert_eq!(parse_staged("staged=bob@x"), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_save_reverts_memory() {
        let dir = temp_dir();
        fs::create_dir_all(&dir).unwrap();
        // A regular file where the records directory should be.
        fs::write(dir.join(RECORDS_DIR), b"not a dir").unwrap();
        let mut r = Records::empty(records_path(&dir, "acct").unwrap());
        assert!(r.record_delivered("m1", 1).is_err());
        assert!(r.get("m1").is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
