//! One IMAP folder: a Maildir (INBOX, or a Maildir++ `.Name` folder) with
//! Dovecot's `dovecot-uidlist`, `dovecot-keywords` and our
//! `mailgate-modseq`, and the operations on it, each durable before it
//! returns `Ok`.
//!
//! A [`Snapshot`] is what one sync found: the messages in UID order with
//! their current file names, flags, sizes (from `,S=`/`,W=`) and modseqs.
//! Building one reads the uidlist, the keywords, the modseq file and the
//! listings of `new/` and `cur/`: never a message file (INTERNALDATE is a
//! stat on demand, a size missing from the name is read on demand).
//!
//! Order of writes, and what a crash at each point leaves:
//! - APPEND: message -> `tmp/` (fsync) -> renamed into `new/` or `cur/`
//!   (fsync folder) -> uidlist with its UID (rename, fsync) -> modseq
//!   (fdatasync) -> Ok. A crash before the uidlist leaves a message without
//!   UID that the next sync numbers; no client was told a UID for it.
//! - COPY: hard link (or copy + fsync) into the target's `tmp/`, then as
//!   APPEND. The source is untouched.
//! - MOVE: with both uidlists locked, each file is first hidden in the
//!   source (renamed to `.mv.NAME` in its own folder, which every Maildir
//!   reader skips; fsync), then hard-linked into the target (fsync), then
//!   the target uidlist (new UIDs), the source uidlist (records dropped),
//!   and last the hidden names unlinked (fsync). A rename(2) across
//!   folders is not enough: a power cut can keep its removal and lose its
//!   addition (another writer's sync of the source makes the removal
//!   durable first). A crash leaves a hidden name, which the next locked
//!   scan of the source settles by its link count: 2, the target has the
//!   message (the hidden name goes); 1, the target lost it (the name is
//!   restored). So the message is never in neither folder, nor visibly in
//!   both.
//! - STORE: rename to the new flags in `cur/`; from `new/` to `cur/` a hard
//!   link, fsync `cur/`, and only then the unlink of the `new/` name and
//!   fsync `new/` (a cut between leaves two names of one file: `cur/` wins,
//!   and the next locked scan removes the `new/` twin); then the modseq
//!   record (fdatasync), then Ok.
//! - EXPUNGE: unlink, fsync the folder(s), uidlist without them, expunge
//!   records, Ok.
//!
//! Every change takes the folder's `dovecot-uidlist.lock` (Dovecot's
//! dotlock), so Dovecot, mailgate's workers and other mailgate processes
//! can share the folder.
//!
//! Must not: rewrite a message, or run on the event-loop thread.

use super::dotlock::{self, Dotlock, LockTable};
use super::fasthash::{self, FastMap};
use super::flags::{self, Flags};
use super::keywords::{self, Keywords};
use super::modseq::State;
use super::names::FolderName;
use super::uidlist::{self, Parsed, Record, Uidlist};
use super::uidvalidity;
use crate::store::durable;
use crate::store::maildir::{self, CrlfToLf, Sub};
use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Prefix of a message file hidden in its source folder while a MOVE
/// links it into the target (see the module header). Dovecot, mutt and
/// every Maildir reader skip names that start with a dot.
const MOVING: &str = ".mv.";

#[cfg(test)]
thread_local! {
    /// Test-only: the step at which to "crash" (panic, so that no cleanup
    /// code of the operation runs, as after SIGKILL).
    pub(crate) static CRASH_AT: std::cell::Cell<Option<&'static str>> =
        const { std::cell::Cell::new(None) };
}

/// A point between two durable steps; tests crash here.
fn step(_name: &'static str) {
    #[cfg(test)]
    if CRASH_AT.with(|c| c.get()) == Some(_name) {
        panic!("simulated crash at {_name}");
    }
}

/// Dovecot's `maildirfolder` marker in every Maildir++ subfolder.
pub const MAILDIRFOLDER: &str = "maildirfolder";
/// Dovecot's MAILDIR_TMP_DELETE_SECS (the Maildir spec's 36 hours): a
/// file in `tmp/` this old is a leftover of a writer that died.
pub const TMP_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(36 * 60 * 60);
/// Read size for spool copies and on-demand size counts.
const CHUNK: usize = 64 * 1024;

/// One message as the last sync saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub uid: u32,
    /// Current file name, info (`:2,FLAGS`) included.
    pub name: Box<str>,
    pub sub: Sub,
    pub flags: Flags,
    /// Size on disk (`,S=`), when the name says.
    pub size: Option<u64>,
    /// RFC822.SIZE: the size with CRLF line ends (`,W=`, or the uidlist's
    /// `W` extension), when known without reading the file.
    pub vsize: Option<u64>,
    pub modseq: u64,
}

impl Message {
    pub fn base(&self) -> &str {
        flags::base(&self.name)
    }
}

/// Stat stamps of what a sync read, to tell cheaply whether to sync again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    new: (i64, i64),
    cur: (i64, i64),
    uidlist: (u64, i64, i64, u64),
    /// `new/` or `cur/` changed less than [`SETTLE_SECS`] before the scan
    /// began: a change during or just after it may leave the same mtime
    /// (a coarse clock tick, FAT's 2 s), so the stamp cannot vouch that
    /// nothing changed since. Dovecot's maildir sync has the same rule.
    unsettled: bool,
}

/// How long after a folder's last change its mtimes can be trusted to
/// tell a later change apart: FAT keeps mtimes to 2 s, and a kernel
/// without fine-grained timestamps ticks every few ms.
const SETTLE_SECS: i64 = 2;

impl Stamp {
    /// Nothing in the folder changed since `self` was taken, as far as
    /// `now` (a fresh stamp) can tell.
    fn vouches_for(&self, now: &Stamp) -> bool {
        !self.unsettled && (self.new, self.cur, self.uidlist) == (now.new, now.cur, now.uidlist)
    }
}

/// An immutable view of a folder, shared by the sessions that have it
/// selected (`Arc`): sequence numbers are positions in `messages`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: FolderName,
    pub uidvalidity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    /// Expunges with a modseq at or below this are no longer recorded.
    pub expunge_floor: u64,
    pub keywords: Keywords,
    /// Ascending UID.
    pub messages: Vec<Message>,
    /// UIDs at or above this were \Recent for whoever claimed them.
    pub first_recent: u32,
    stamp: Stamp,
}

impl Snapshot {
    pub fn find(&self, uid: u32) -> Option<&Message> {
        self.position(uid).and_then(|i| self.messages.get(i))
    }
    /// 0-based position (sequence number - 1) of `uid`.
    pub fn position(&self, uid: u32) -> Option<usize> {
        self.messages.binary_search_by_key(&uid, |m| m.uid).ok()
    }
    /// Taken of the same on-disk state as far as its stats tell, and
    /// vouching for it alike.
    pub fn same_stamp(&self, other: &Snapshot) -> bool {
        self.stamp == other.stamp
    }

    /// What changed from `old` to `self`, for EXPUNGE/EXISTS/FETCH.
    pub fn diff(&self, old: &Snapshot) -> Diff {
        let mut d = Diff::default();
        if self.uidvalidity != old.uidvalidity {
            d.uidvalidity_changed = true;
            return d;
        }
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&old.messages, &self.messages);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.uid == y.uid => {
                    if x.flags != y.flags || x.modseq != y.modseq {
                        d.flags.push(y.uid);
                    }
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.uid < y.uid => {
                    d.expunged.push(x.uid);
                    i += 1;
                }
                (Some(x), None) => {
                    d.expunged.push(x.uid);
                    i += 1;
                }
                (_, Some(y)) => {
                    d.added.push(y.uid);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        d.keywords_changed = self.keywords != old.keywords;
        d
    }
    /// Messages without \Seen (STATUS UNSEEN).
    pub fn unseen(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| !m.flags.has(flags::SEEN))
            .count()
    }
    /// Sequence number (1-based) of the first message without \Seen, for
    /// SELECT's `[UNSEEN n]`.
    pub fn first_unseen(&self) -> Option<usize> {
        self.messages
            .iter()
            .position(|m| !m.flags.has(flags::SEEN))
            .map(|i| i + 1)
    }
    /// IMAP keyword names of a message's flags (known keywords only).
    pub fn keyword_names(&self, f: Flags) -> Vec<&str> {
        f.keyword_indexes()
            .filter_map(|i| self.keywords.name(i))
            .collect()
    }
}

/// Changes between two snapshots of one folder (UIDs, ascending).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub expunged: Vec<u32>,
    pub added: Vec<u32>,
    pub flags: Vec<u32>,
    pub keywords_changed: bool,
    /// The folder was rebuilt under a new UIDVALIDITY: start over.
    pub uidvalidity_changed: bool,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.expunged.is_empty()
            && self.added.is_empty()
            && self.flags.is_empty()
            && !self.keywords_changed
            && !self.uidvalidity_changed
    }
}

/// A message to append: its wire form (CRLF line ends) in a spool file.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub spool: &'a Path,
    pub system: u8,
    pub keywords: &'a [&'a str],
    /// INTERNALDATE (the file's mtime); now when `None`.
    pub internal_date: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Set,
    Add,
    Remove,
}

/// What a STORE did.
#[derive(Debug, Clone)]
pub struct Stored {
    /// (uid, new flags, new modseq) of every message whose flags changed.
    pub changed: Vec<(u32, Flags, u64)>,
    /// UNCHANGEDSINCE failures (RFC 7162 3.1.3): modified since.
    pub modified: Vec<u32>,
    pub snapshot: Arc<Snapshot>,
}

/// (source UID, new UID) pairs, for COPYUID (RFC 4315 3).
pub type UidMap = Vec<(u32, u32)>;

/// A message renamed into a folder, not yet numbered: base, subfolder,
/// file name, S, W, flags.
type Placed = (String, Sub, String, u64, u64, Flags);

/// What a COPY did: the pairs and the target's snapshot.
#[derive(Debug, Clone)]
pub struct Copied {
    pub uids: UidMap,
    pub target: Arc<Snapshot>,
}

/// What a MOVE did: the pairs and both snapshots.
#[derive(Debug, Clone)]
pub struct Moved {
    pub uids: UidMap,
    pub source: Arc<Snapshot>,
    pub target: Arc<Snapshot>,
}

/// Errors an IMAP session answers with NO, beside IO errors.
pub fn too_many_keywords() -> io::Error {
    io::Error::new(
        io::ErrorKind::QuotaExceeded,
        "Too many keywords in this folder (26 at most)",
    )
}

/// One folder of a mailbox. Creating the value touches no disk.
#[derive(Debug, Clone)]
pub struct Folder {
    root: PathBuf,
    name: FolderName,
    dir: PathBuf,
    /// The process's uidlist locks (see `dotlock`).
    locks: Arc<LockTable>,
}

/// The same folder: the lock table is the process's, not part of it.
impl PartialEq for Folder {
    fn eq(&self, other: &Folder) -> bool {
        self.root == other.root && self.name == other.name
    }
}
impl Eq for Folder {}

/// What a scan under the lock found, ready to be changed and written.
struct Scan {
    list: Uidlist,
    keywords: Keywords,
    state: State,
    /// uid -> message (ascending in `messages`).
    messages: Vec<Message>,
    uidlist_dirty: bool,
    keywords_dirty: bool,
    /// Unix seconds when the scan began (see [`Stamp::unsettled`]).
    began: i64,
}

impl Folder {
    pub fn new(root: &Path, name: FolderName, locks: &Arc<LockTable>) -> Folder {
        let dir = name.dir(root);
        Folder {
            root: root.to_path_buf(),
            name,
            dir,
            locks: Arc::clone(locks),
        }
    }
    pub fn name(&self) -> &FolderName {
        &self.name
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn exists(&self) -> bool {
        self.dir.join("cur").is_dir()
    }

    /// Make the folder's directories (and `maildirfolder` for a
    /// subfolder), durable. Existing parts are left alone.
    pub fn create_dirs(&self) -> io::Result<()> {
        for sub in ["cur", "new", "tmp"] {
            durable::create_dir_all_durable(&self.dir.join(sub))?;
        }
        if self.name != FolderName::Inbox {
            let marker = self.dir.join(MAILDIRFOLDER);
            if !marker.exists() {
                File::create(&marker)?;
                durable::fsync_dir(&self.dir)?;
            }
        }
        Ok(())
    }

    fn lock(&self) -> io::Result<Dotlock> {
        Dotlock::acquire(
            &self.locks,
            &self.dir.join(uidlist::FILE),
            dotlock::UIDLIST_STALE,
            dotlock::UIDLIST_WAIT,
        )
    }

    /// Remove leftovers older than `max_age` ([`TMP_MAX_AGE`]) from `tmp/`
    /// (a crash between staging and rename). Not part of a sync, which
    /// must stay one listing: call it now and then (at login). Returns how
    /// many were removed.
    pub fn clean_tmp(&self, max_age: std::time::Duration) -> io::Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        let rd = match fs::read_dir(self.dir.join("tmp")) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        for de in rd {
            let de = de?;
            let Ok(meta) = de.metadata() else { continue };
            let changed = meta.modified().unwrap_or(now);
            let old = now.duration_since(changed).is_ok_and(|age| age > max_age);
            if meta.is_file() && old && fs::remove_file(de.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Does the folder look changed since `snap` (3 stats, no listing)?
    pub fn changed_since(&self, snap: &Snapshot) -> bool {
        !snap.stamp.vouches_for(&self.stamp())
    }

    /// The stat fields; [`Folder::snapshot_of`] decides `unsettled`.
    fn stamp(&self) -> Stamp {
        let dir_stamp = |p: PathBuf| {
            fs::metadata(p)
                .map(|m| (m.mtime(), m.mtime_nsec()))
                .unwrap_or((0, 0))
        };
        let u = fs::metadata(self.dir.join(uidlist::FILE))
            .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
            .unwrap_or((0, 0, 0, 0));
        Stamp {
            new: dir_stamp(self.dir.join("new")),
            cur: dir_stamp(self.dir.join("cur")),
            uidlist: u,
            unsettled: false,
        }
    }

    /// Sync: the folder's current state. Takes the lock only when the
    /// uidlist or the modseq file must be written (new messages, messages
    /// gone, flags changed by someone else, a damaged uidlist).
    pub fn sync(&self) -> io::Result<Arc<Snapshot>> {
        if !self.exists() {
            return Err(not_found());
        }
        let stamp = self.stamp();
        let scan = self.scan(false)?;
        if let Some(scan) = scan {
            return Ok(Arc::new(self.snapshot_of(scan, stamp)));
        }
        let _lock = self.lock()?;
        let mut scan = self.scan(true)?.ok_or_else(|| io::Error::other("scan"))?;
        self.write_scan(&mut scan)?;
        Ok(Arc::new(self.snapshot_of(scan, self.stamp())))
    }

    /// NOOP / IDLE poll: `snap` itself when nothing changed on disk since
    /// (three stats, no listing), else a full [`Folder::sync`].
    pub fn sync_from(&self, snap: &Arc<Snapshot>) -> io::Result<Arc<Snapshot>> {
        if self.changed_since(snap) {
            self.sync()
        } else {
            Ok(Arc::clone(snap))
        }
    }

    /// Sync and claim the \Recent messages (SELECT, not EXAMINE): returns
    /// the snapshot and the first UID that is \Recent for this session
    /// (RFC 3501 2.3.2: exactly one session sees a message as recent).
    ///
    /// `known`: another session's snapshot of this folder. When its stamp
    /// vouches that nothing changed since and it left nothing to claim,
    /// it is the answer, without a scan (a scan of 20,000 names is 30 to
    /// 70 ms: 1000 sessions opening one INBOX spent a minute listing it).
    /// No lock for that: a claim by another session needs new messages,
    /// which change the stamp (as for [`Folder::sync_from`]).
    pub fn select(&self, known: Option<&Arc<Snapshot>>) -> io::Result<(Arc<Snapshot>, u32)> {
        if !self.exists() {
            return Err(not_found());
        }
        if let Some(k) = known.filter(|k| k.first_recent >= k.uid_next && !self.changed_since(k)) {
            return Ok((Arc::clone(k), k.uid_next));
        }
        let _lock = self.lock()?;
        let mut scan = self.scan(true)?.ok_or_else(|| io::Error::other("scan"))?;
        let first = scan.state.claim_recent(scan.list.next_uid);
        self.write_scan(&mut scan)?;
        Ok((Arc::new(self.snapshot_of(scan, self.stamp())), first))
    }

    /// A selected session learnt of new messages: claims the \Recent of
    /// those no session has claimed yet. Returns the claimed `[lo, hi)`
    /// (empty when another session was first); durable before it returns.
    pub fn claim_recent(&self) -> io::Result<(u32, u32)> {
        let _lock = self.lock()?;
        let mut scan = self.scan(true)?.ok_or_else(|| io::Error::other("scan"))?;
        let hi = scan.list.next_uid;
        let lo = scan.state.claim_recent(hi);
        self.write_scan(&mut scan)?;
        Ok((lo, hi))
    }

    /// The snapshot a finished scan leaves: its messages move into it
    /// (a copy cost a SELECT of 20,000 messages 20,000 names copied and
    /// freed, and STORE made one it never used).
    fn snapshot_of(&self, scan: Scan, mut stamp: Stamp) -> Snapshot {
        // Against the scan's start, not the stamp's own time: a stamp taken
        // after a slow scan must not vouch for a delivery made during it.
        // A clock set back (a router before NTP) counts as unsettled: a
        // needless scan, never a missed change.
        stamp.unsettled = stamp.new.0.max(stamp.cur.0) > scan.began - SETTLE_SECS;
        Snapshot {
            name: self.name.clone(),
            uidvalidity: scan.list.uidvalidity,
            uid_next: scan.list.next_uid,
            highest_modseq: scan.state.highest,
            expunge_floor: scan.state.expunge_floor,
            keywords: scan.keywords,
            messages: scan.messages,
            first_recent: scan.state.first_recent,
            stamp,
        }
    }

    /// Read everything. Without the lock, `None` means "something must be
    /// written: take the lock and scan again".
    fn scan(&self, locked: bool) -> io::Result<Option<Scan>> {
        let began = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let parsed = Uidlist::read(&self.dir)?;
        let keywords = Keywords::read(&self.dir)?;
        let mut listing = list_all(&self.dir)?;
        if listing.has_leftovers() {
            if !locked {
                return Ok(None);
            }
            self.settle_leftovers(&listing)?;
            listing = list_all(&self.dir)?;
        }
        let mut files = listing.files;
        let mut new_v = false;
        let (mut list, mut uidlist_dirty) = match parsed {
            Some(Parsed::Ok { list, damaged }) => (list, damaged),
            other => {
                if !locked {
                    return Ok(None);
                }
                let records = match other {
                    Some(Parsed::BadHeader { records }) => records,
                    _ => Vec::new(),
                };
                let (list, fresh_v) = self.rebuild(records)?;
                new_v = fresh_v;
                (list, true)
            }
        };
        // Match records to files; a record whose file is missing may be a
        // rename that readdir missed: list once more before dropping it.
        let mut messages = Vec::with_capacity(list.records.len());
        let mut relisted = false;
        let mut kept = Vec::with_capacity(list.records.len());
        let known_kw = keywords_mask(&keywords);
        for rec in std::mem::take(&mut list.records) {
            let mut hit = files.remove(rec.base.as_str());
            if hit.is_none() && !relisted {
                relisted = true;
                let matched: std::collections::HashSet<&str> =
                    messages.iter().map(|m: &Message| m.base()).collect();
                let again = list_files(&self.dir)?;
                for (b, v) in again {
                    if !matched.contains(b.as_str()) {
                        files.entry(b).or_insert(v);
                    }
                }
                hit = files.remove(rec.base.as_str());
            }
            match hit {
                Some((sub, name)) => {
                    messages.push(message_of(&rec, sub, name, known_kw));
                    kept.push(rec);
                }
                None => uidlist_dirty = true,
            }
        }
        list.records = kept;
        // New files, in Dovecot's order (maildir_filename_sort_cmp).
        let mut fresh: Vec<(String, (Sub, String))> = files.into_iter().collect();
        if !fresh.is_empty() {
            if !locked {
                return Ok(None);
            }
            fresh.sort_by(|a, b| dovecot_sort_cmp(&a.0, &b.0));
            for (base, (sub, name)) in fresh {
                if list.next_uid > uidlist::MAX_UID {
                    return Err(io::Error::other("folder has run out of UIDs"));
                }
                let rec = Record {
                    uid: list.next_uid,
                    ext: Vec::new(),
                    base,
                };
                list.next_uid += 1;
                messages.push(message_of(&rec, sub, name, known_kw));
                list.records.push(rec);
            }
            uidlist_dirty = true;
        }
        // Modseqs.
        let mut state = if new_v {
            State::create(list.uidvalidity)
        } else {
            State::load(&self.dir, list.uidvalidity)?
        };
        let mut live: FastMap<u32, ()> = fasthash::with_capacity(messages.len());
        for m in &mut messages {
            live.insert(m.uid, ());
            match state.messages.get(&m.uid) {
                Some(&(ms, f)) if f == m.flags => m.modseq = ms,
                _ => {
                    if !locked {
                        return Ok(None);
                    }
                    m.modseq = state.bump(m.uid, m.flags);
                }
            }
        }
        let gone: Vec<u32> = state
            .messages
            .keys()
            .filter(|u| !live.contains_key(u))
            .copied()
            .collect();
        if !gone.is_empty() {
            if !locked {
                return Ok(None);
            }
            for uid in gone {
                state.expunge(uid);
            }
        }
        if !locked && (uidlist_dirty || state.is_dirty()) {
            return Ok(None);
        }
        Ok(Some(Scan {
            list,
            keywords,
            state,
            messages,
            uidlist_dirty,
            keywords_dirty: false,
            began,
        }))
    }

    /// A missing or headless uidlist: keep the UIDVALIDITY our modseq file
    /// remembers (and UIDs above any it knew), else take a new one.
    /// Also says whether the UIDVALIDITY is new.
    fn rebuild(&self, records: Vec<Record>) -> io::Result<(Uidlist, bool)> {
        let remembered = fs::read(self.dir.join(super::modseq::FILE))
            .ok()
            .and_then(|b| State::parse(&String::from_utf8_lossy(&b)));
        let (v, floor, fresh) = match remembered {
            Some(st) if st.uidvalidity != 0 => {
                let max_uid = st
                    .messages
                    .keys()
                    .chain(st.expunged.keys())
                    .copied()
                    .max()
                    .unwrap_or(0)
                    .max(st.first_recent.saturating_sub(1));
                log::warn!(
                    "{}: rebuilding dovecot-uidlist, keeping UIDVALIDITY {}",
                    self.dir.display(),
                    st.uidvalidity
                );
                (st.uidvalidity, max_uid.saturating_add(1), false)
            }
            _ => (uidvalidity::next(&self.root)?, 1, true),
        };
        let mut list = Uidlist::new(v, uidlist::new_guid());
        let last = records.last().map(|r| r.uid).unwrap_or(0);
        list.records = records;
        list.next_uid = floor.max(last.saturating_add(1));
        Ok((list, fresh))
    }

    fn write_scan(&self, scan: &mut Scan) -> io::Result<()> {
        if scan.keywords_dirty {
            scan.keywords.write(&self.dir)?;
            scan.keywords_dirty = false;
        }
        if scan.uidlist_dirty {
            scan.list.write(&self.dir)?;
            scan.uidlist_dirty = false;
        }
        scan.state.save(&self.dir)
    }

    fn locked_scan(&self) -> io::Result<(Dotlock, Scan)> {
        if !self.exists() {
            return Err(not_found());
        }
        let lock = self.lock()?;
        let scan = self.scan(true)?.ok_or_else(|| io::Error::other("scan"))?;
        Ok((lock, scan))
    }

    /// Flags for new keyword names, interning them (dirty marks the file).
    fn intern(scan: &mut Scan, system: u8, names: &[&str]) -> io::Result<Flags> {
        let mut f = Flags {
            system,
            keywords: 0,
        };
        for n in names {
            if !keywords::valid_keyword(n) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "invalid keyword",
                ));
            }
            let (i, added) = scan.keywords.intern(n).ok_or_else(too_many_keywords)?;
            scan.keywords_dirty |= added;
            f.keywords |= 1 << i;
        }
        Ok(f)
    }

    /// APPEND (or MULTIAPPEND): every message is in the folder, numbered
    /// in the uidlist and durable when this returns; the UIDs are for
    /// APPENDUID (RFC 4315).
    pub fn append(&self, msgs: &[NewMessage<'_>]) -> io::Result<(Vec<u32>, Arc<Snapshot>)> {
        self.create_dirs_if_missing()?;
        let host = local_host();
        let mut staged: Vec<(PathBuf, u64, u64)> = Vec::with_capacity(msgs.len());
        let result = (|| {
            for m in msgs {
                let tmp_name = maildir::unique_name(SystemTime::now(), &host, 0, 0);
                let tmp = self.dir.join("tmp").join(tmp_name);
                let (s, w) = stage_converting(m.spool, &tmp)?;
                staged.push((tmp.clone(), s, w));
                step("append:staged");
                if let Some(t) = m.internal_date {
                    File::options().write(true).open(&tmp)?.set_modified(t)?;
                }
            }
            let (_lock, mut scan) = self.locked_scan()?;
            let mut flagsets = Vec::with_capacity(msgs.len());
            for m in msgs {
                flagsets.push(Self::intern(&mut scan, m.system, m.keywords)?);
            }
            if scan.keywords_dirty {
                scan.keywords.write(&self.dir)?;
                scan.keywords_dirty = false;
            }
            let (mut to_new, mut to_cur) = (false, false);
            let mut placed: Vec<Placed> = Vec::new();
            for ((tmp, s, w), f) in staged.iter().zip(&flagsets) {
                let base = maildir::unique_name(SystemTime::now(), &host, *s, *w);
                let (sub, name) = placement(&base, *f);
                let dest = self.dir.join(sub.dir_name()).join(&name);
                fs::rename(tmp, &dest)?;
                step("append:renamed");
                placed.push((base, sub, name, *s, *w, *f));
                match sub {
                    Sub::New => to_new = true,
                    Sub::Cur => to_cur = true,
                }
            }
            staged.clear();
            // From here on an error takes the messages out again: a NO
            // must mean "not appended" (only a crash leaves them, unnumbered).
            let undo: Vec<PathBuf> = placed
                .iter()
                .map(|(_, sub, name, ..)| self.dir.join(sub.dir_name()).join(name))
                .collect();
            let numbered = (|| {
                self.fsync_subs(to_new, to_cur)?;
                step("append:synced");
                self.number_appended(&mut scan, placed)
            })();
            match numbered {
                Ok(uids) => Ok((uids, Arc::new(self.snapshot_of(scan, self.stamp())))),
                Err(e) => {
                    for p in undo {
                        let _ = fs::remove_file(p);
                    }
                    let _ = self.fsync_subs(to_new, to_cur);
                    Err(e)
                }
            }
        })();
        for (tmp, _, _) in staged {
            let _ = fs::remove_file(tmp);
        }
        result
    }

    /// Give the placed messages their UIDs and write uidlist and modseqs.
    fn number_appended(&self, scan: &mut Scan, placed: Vec<Placed>) -> io::Result<Vec<u32>> {
        let mut uids = Vec::with_capacity(placed.len());
        {
            for (base, sub, name, s, w, f) in placed {
                if scan.list.next_uid > uidlist::MAX_UID {
                    return Err(io::Error::other("folder has run out of UIDs"));
                }
                let uid = scan.list.next_uid;
                scan.list.next_uid += 1;
                scan.list.records.push(Record {
                    uid,
                    ext: Vec::new(),
                    base,
                });
                let modseq = scan.state.bump(uid, f);
                scan.messages.push(Message {
                    uid,
                    name: name.into(),
                    sub,
                    flags: f,
                    size: Some(s),
                    vsize: Some(w),
                    modseq,
                });
                uids.push(uid);
            }
        }
        scan.uidlist_dirty = true;
        if scan.keywords_dirty {
            scan.keywords.write(&self.dir)?;
            scan.keywords_dirty = false;
        }
        scan.list.write(&self.dir)?;
        scan.uidlist_dirty = false;
        step("append:uidlist");
        scan.state.save(&self.dir)?;
        Ok(uids)
    }

    fn create_dirs_if_missing(&self) -> io::Result<()> {
        if self.exists() {
            Ok(())
        } else {
            Err(not_found())
        }
    }

    /// `cur/` before `new/`: where a message goes from `new/` to `cur/`,
    /// its `cur/` name is durable before its `new/` one is gone.
    fn fsync_subs(&self, new: bool, cur: bool) -> io::Result<()> {
        if cur {
            durable::fsync_dir(&self.dir.join("cur"))?;
        }
        if new {
            durable::fsync_dir(&self.dir.join("new"))?;
        }
        Ok(())
    }

    /// STORE / UID STORE: change the flags of `uids` (missing ones are
    /// skipped: expunged meanwhile). Durable before it returns.
    pub fn store(
        &self,
        uids: &[u32],
        op: FlagOp,
        system: u8,
        keyword_names: &[&str],
        unchanged_since: Option<u64>,
    ) -> io::Result<Stored> {
        let (_lock, mut scan) = self.locked_scan()?;
        let change = match op {
            FlagOp::Remove => Flags {
                system,
                keywords: keyword_names
                    .iter()
                    .filter_map(|n| scan.keywords.index_of(n))
                    .fold(0, |acc, i| acc | (1 << i)),
            },
            _ => Self::intern(&mut scan, system, keyword_names)?,
        };
        if scan.keywords_dirty {
            scan.keywords.write(&self.dir)?;
            scan.keywords_dirty = false;
        }
        let (mut changed, mut modified) = (Vec::new(), Vec::new());
        let (mut from_new, mut touched_cur) = (false, false);
        let mut renamed: Vec<usize> = Vec::new();
        // `new/` names of files linked into `cur/`, unlinked once it is synced.
        let mut unlink_after: Vec<PathBuf> = Vec::new();
        for &uid in uids {
            let Ok(i) = scan.messages.binary_search_by_key(&uid, |m| m.uid) else {
                continue;
            };
            let Some(m) = scan.messages.get_mut(i) else {
                continue;
            };
            if unchanged_since.is_some_and(|since| m.modseq > since) {
                modified.push(uid);
                continue;
            }
            let new = match op {
                FlagOp::Set => change,
                FlagOp::Add => m.flags.union(change),
                FlagOp::Remove => m.flags.minus(change),
            };
            if new == m.flags {
                continue;
            }
            let new_name = flags::with_flags(&m.name, new);
            let to = self.dir.join("cur").join(&new_name);
            // None: gone since the scan (a POP3 DELE): skip it.
            let Some((was, from)) = self.locate(m)? else {
                continue;
            };
            let moved = if was == Sub::New {
                match fs::hard_link(&from, &to) {
                    Ok(()) => {
                        unlink_after.push(from);
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    // No links on this filesystem (FAT): rename it is.
                    Err(_) => {
                        from_new = true;
                        ignore_missing(fs::rename(&from, &to))?
                    }
                }
            } else {
                ignore_missing(fs::rename(&from, &to))?
            };
            if !moved {
                continue;
            }
            touched_cur = true;
            m.name = new_name.into();
            m.sub = Sub::Cur;
            m.flags = new;
            renamed.push(i);
        }
        step("store:renamed");
        self.fsync_subs(false, touched_cur)?;
        step("store:cur-synced");
        for from in &unlink_after {
            ignore_missing(fs::remove_file(from))?;
            from_new = true;
        }
        self.fsync_subs(from_new, false)?;
        step("store:synced");
        for i in renamed {
            if let Some(m) = scan.messages.get_mut(i) {
                m.modseq = scan.state.bump(m.uid, m.flags);
                changed.push((m.uid, m.flags, m.modseq));
            }
        }
        self.write_scan(&mut scan)?;
        Ok(Stored {
            changed,
            modified,
            snapshot: Arc::new(self.snapshot_of(scan, self.stamp())),
        })
    }

    /// EXPUNGE (`uids` = None: every \Deleted message) or UID EXPUNGE
    /// (only those of `uids` that are \Deleted, RFC 4315 2.1).
    pub fn expunge(&self, uids: Option<&[u32]>) -> io::Result<(Vec<u32>, Arc<Snapshot>)> {
        let sorted = uids.map(|u| {
            let mut v = u.to_vec();
            v.sort_unstable();
            v
        });
        self.remove(sorted.as_deref(), true)
    }

    /// Removes `uids` (ascending; all with None), only the \Deleted ones if
    /// `deleted_only` (EXPUNGE) or all of them (a MOVE's originals).
    fn remove(
        &self,
        uids: Option<&[u32]>,
        deleted_only: bool,
    ) -> io::Result<(Vec<u32>, Arc<Snapshot>)> {
        let (_lock, mut scan) = self.locked_scan()?;
        let mut gone = Vec::new();
        let (mut in_new, mut in_cur) = (false, false);
        for m in &scan.messages {
            if (deleted_only && !m.flags.has(flags::DELETED))
                || uids.is_some_and(|u| u.binary_search(&m.uid).is_err())
            {
                continue;
            }
            match self.remove_current(m)? {
                Some(Sub::New) => in_new = true,
                Some(Sub::Cur) => in_cur = true,
                None => {}
            }
            gone.push(m.uid);
        }
        self.fsync_subs(in_new, in_cur)?;
        self.drop_uids(&mut scan, &gone);
        self.write_scan(&mut scan)?;
        Ok((gone, Arc::new(self.snapshot_of(scan, self.stamp()))))
    }

    fn drop_uids(&self, scan: &mut Scan, gone: &[u32]) {
        if gone.is_empty() {
            return;
        }
        scan.messages.retain(|m| !gone.contains(&m.uid));
        scan.list.records.retain(|r| !gone.contains(&r.uid));
        for &uid in gone {
            scan.state.expunge(uid);
        }
        scan.uidlist_dirty = true;
    }

    /// COPY / UID COPY into `dest`: returns (source UID, new UID) pairs
    /// for COPYUID and the target's snapshot. The source is untouched.
    pub fn copy_to(&self, uids: &[u32], dest: &Folder) -> io::Result<Copied> {
        let src = self.sync()?;
        dest.create_dirs_if_missing()?;
        let host = local_host();
        let mut staged: Vec<(u32, PathBuf, Message)> = Vec::new();
        let result = (|| {
            for &uid in uids {
                let Some(m) = src.find(uid) else { continue };
                let base = maildir::unique_name(SystemTime::now(), &host, 0, 0);
                let tmp = dest.dir.join("tmp").join(&base);
                self.link_or_copy(m, &tmp)?;
                staged.push((uid, tmp, m.clone()));
            }
            let (_lock, mut scan) = dest.locked_scan()?;
            let mut placed = Vec::new();
            let (mut to_new, mut to_cur) = (false, false);
            for (uid, tmp, m) in &staged {
                let names = src.keyword_names(m.flags);
                let f = Self::intern(&mut scan, m.flags.system, &names)?;
                let base = new_base_like(m, &host);
                let (sub, name) = placement(&base, f);
                placed.push((*uid, tmp.clone(), base, sub, name, f, m.clone()));
            }
            if scan.keywords_dirty {
                scan.keywords.write(&dest.dir)?;
                scan.keywords_dirty = false;
            }
            for (_, tmp, _, sub, name, _, _) in &placed {
                fs::rename(tmp, dest.dir.join(sub.dir_name()).join(name))?;
                to_new |= *sub == Sub::New;
                to_cur |= *sub == Sub::Cur;
            }
            staged.clear();
            dest.fsync_subs(to_new, to_cur)?;
            let mut map = Vec::new();
            for (uid, _, base, sub, name, f, m) in placed {
                let new_uid = dest.add_record(&mut scan, base, sub, name, f, &m)?;
                map.push((uid, new_uid));
            }
            dest.write_scan(&mut scan)?;
            Ok(Copied {
                uids: map,
                target: Arc::new(dest.snapshot_of(scan, dest.stamp())),
            })
        })();
        for (_, tmp, _) in staged {
            let _ = fs::remove_file(tmp);
        }
        result
    }

    fn add_record(
        &self,
        scan: &mut Scan,
        base: String,
        sub: Sub,
        name: String,
        f: Flags,
        like: &Message,
    ) -> io::Result<u32> {
        if scan.list.next_uid > uidlist::MAX_UID {
            return Err(io::Error::other("folder has run out of UIDs"));
        }
        let uid = scan.list.next_uid;
        scan.list.next_uid += 1;
        let mut ext = Vec::new();
        if maildir::parse_sizes(&base).1.is_none() {
            if let Some(w) = like.vsize {
                ext.push(format!("W{w}"));
            }
        }
        scan.list.records.push(Record { uid, ext, base });
        let modseq = scan.state.bump(uid, f);
        scan.messages.push(Message {
            uid,
            name: name.into(),
            sub,
            flags: f,
            size: like.size,
            vsize: like.vsize,
            modseq,
        });
        scan.uidlist_dirty = true;
        Ok(uid)
    }

    fn link_or_copy(&self, m: &Message, tmp: &Path) -> io::Result<()> {
        let src = self.resolve(m)?;
        match fs::hard_link(&src, tmp) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EMLINK)
                ) =>
            {
                let mut input = File::open(&src)?;
                durable::write_synced(tmp, |w| {
                    io::copy(&mut input, w)?;
                    Ok(())
                })?;
                let mtime = fs::metadata(&src)?.modified()?;
                File::options().write(true).open(tmp)?.set_modified(mtime)
            }
            Err(e) => Err(e),
        }
    }

    /// MOVE into the folder itself (RFC 6851 allows it; the messages get
    /// new UIDs at the end, as Dovecot does): a COPY, then an EXPUNGE of
    /// the originals. A crash between the two leaves the message twice
    /// (both durable), never nowhere; rename cannot do it in one step
    /// because the uidlist gives each file exactly one UID.
    fn move_within(&self, uids: &[u32]) -> io::Result<Moved> {
        let copied = self.copy_to(uids, self)?;
        let mut from: Vec<u32> = copied.uids.iter().map(|p| p.0).collect();
        from.sort_unstable();
        let (_, source) = self.remove(Some(&from), false)?;
        Ok(Moved {
            uids: copied.uids,
            target: Arc::clone(&source),
            source,
        })
    }

    /// MOVE / UID MOVE into `dest` (RFC 6851), by rename: see the module
    /// header for the order. Returns the pairs for COPYUID and both
    /// snapshots (source, target).
    pub fn move_to(&self, uids: &[u32], dest: &Folder) -> io::Result<Moved> {
        if dest.dir == self.dir {
            return self.move_within(uids);
        }
        dest.create_dirs_if_missing()?;
        // Lock order: by path, so two opposite MOVEs cannot deadlock.
        let (first, second) = if self.dir < dest.dir {
            (self, dest)
        } else {
            (dest, self)
        };
        let (l1, s1) = first.locked_scan()?;
        let (l2, s2) = second.locked_scan()?;
        let (mut src, mut dst) = if std::ptr::eq(first, self) {
            (s1, s2)
        } else {
            (s2, s1)
        };
        let host = local_host();
        let mut moved: Vec<(Message, String, Sub, String, Flags)> = Vec::new();
        let mut src_dirs = (false, false);
        let mut dst_dirs = (false, false);
        let want: Vec<Message> = src
            .messages
            .iter()
            .filter(|m| uids.contains(&m.uid))
            .cloned()
            .collect();
        let mut interned = Vec::new();
        for m in &want {
            let names: Vec<String> = m
                .flags
                .keyword_indexes()
                .filter_map(|i| src.keywords.name(i).map(str::to_string))
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            interned.push(Self::intern(&mut dst, m.flags.system, &refs)?);
        }
        if dst.keywords_dirty {
            dst.keywords.write(&dest.dir)?;
            dst.keywords_dirty = false;
        }
        let dst_bases: std::collections::HashSet<String> =
            dst.list.records.iter().map(|r| r.base.clone()).collect();
        // 1. Hidden in the source, durably: from here on no reader sees
        // the message there, and a crash leaves a name to settle by.
        let mut hidden: Vec<(Message, Flags, PathBuf)> = Vec::new();
        for (m, f) in want.into_iter().zip(interned) {
            let Some((was, from)) = self.locate(&m)? else {
                continue;
            };
            let Some(file_name) = from.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let hide = from.with_file_name(format!("{MOVING}{file_name}"));
            if !ignore_missing(fs::rename(&from, &hide))? {
                continue;
            }
            match was {
                Sub::New => src_dirs.0 = true,
                Sub::Cur => src_dirs.1 = true,
            }
            hidden.push((m, f, hide));
        }
        self.fsync_subs(src_dirs.0, src_dirs.1)?;
        step("move:hidden");
        // 2. Linked into the target.
        let mut unlink_after = Vec::new();
        for (m, f, hide) in hidden {
            let base = if dst_bases.contains(m.base()) {
                new_base_like(&m, &host)
            } else {
                m.base().to_string()
            };
            let (sub, name) = if m.sub == Sub::New && f == Flags::NONE {
                (Sub::New, base.clone())
            } else {
                (Sub::Cur, flags::with_flags(&base, f))
            };
            let to = dest.dir.join(sub.dir_name()).join(&name);
            match fs::hard_link(&hide, &to) {
                Ok(()) => unlink_after.push(hide),
                // No links on this filesystem (FAT): rename it is.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EMLINK)
                    ) =>
                {
                    fs::rename(&hide, &to)?
                }
                Err(e) => return Err(e),
            }
            match sub {
                Sub::New => dst_dirs.0 = true,
                Sub::Cur => dst_dirs.1 = true,
            }
            moved.push((m, base, sub, name, f));
            step("move:renamed");
        }
        dest.fsync_subs(dst_dirs.0, dst_dirs.1)?;
        step("move:synced");
        let mut map = Vec::new();
        let mut gone = Vec::new();
        for (m, base, sub, name, f) in moved {
            let new_uid = dest.add_record(&mut dst, base, sub, name, f, &m)?;
            map.push((m.uid, new_uid));
            gone.push(m.uid);
        }
        dest.write_scan(&mut dst)?;
        step("move:target-uidlist");
        self.drop_uids(&mut src, &gone);
        self.write_scan(&mut src)?;
        step("move:source-uidlist");
        // 3. The hidden names go.
        for hide in &unlink_after {
            ignore_missing(fs::remove_file(hide))?;
        }
        self.fsync_subs(src_dirs.0, src_dirs.1)?;
        let moved = Moved {
            uids: map,
            source: Arc::new(self.snapshot_of(src, self.stamp())),
            target: Arc::new(dest.snapshot_of(dst, dest.stamp())),
        };
        drop((l1, l2));
        Ok(moved)
    }

    /// Finishes what a crash interrupted (under the lock): a MOVE's hidden
    /// name goes when the target has the file (two links), and comes back
    /// when it does not; a STORE's `new/` twin of a `cur/` file goes.
    fn settle_leftovers(&self, listing: &Listing) -> io::Result<()> {
        let (mut new, mut cur) = (false, false);
        let mut touched = |sub: Sub| match sub {
            Sub::New => new = true,
            Sub::Cur => cur = true,
        };
        for (sub, hidden) in &listing.moving {
            let path = self.dir.join(sub.dir_name()).join(hidden);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.nlink() >= 2 {
                ignore_missing(fs::remove_file(&path))?;
            } else {
                let name = &hidden[MOVING.len()..];
                let back = self.dir.join(sub.dir_name()).join(name);
                if back.exists() {
                    ignore_missing(fs::remove_file(&path))?;
                } else {
                    ignore_missing(fs::rename(&path, &back))?;
                }
            }
            touched(*sub);
        }
        for (base, twin) in &listing.twins {
            let in_new = self.dir.join("new").join(twin);
            let in_cur = listing
                .files
                .get(base)
                .map(|(sub, name)| self.dir.join(sub.dir_name()).join(name));
            if in_cur.is_some_and(|c| same_file(&in_new, &c)) {
                ignore_missing(fs::remove_file(&in_new))?;
                touched(Sub::New);
            }
        }
        // The restored names before the removed ones: `cur/` first.
        self.fsync_subs(new, cur)
    }

    /// Where the message's file is now: (subfolder, path), found by its
    /// base name if it was renamed since the scan. `None`: it is gone.
    fn locate(&self, m: &Message) -> io::Result<Option<(Sub, PathBuf)>> {
        let p = self.dir.join(m.sub.dir_name()).join(&*m.name);
        if fs::symlink_metadata(&p).is_ok() {
            return Ok(Some((m.sub, p)));
        }
        Ok(list_files(&self.dir)?
            .remove(m.base())
            .map(|(sub, name)| (sub, self.dir.join(sub.dir_name()).join(name))))
    }

    /// Unlink the message's file, wherever it is now; `None`: gone already.
    fn remove_current(&self, m: &Message) -> io::Result<Option<Sub>> {
        match fs::remove_file(self.dir.join(m.sub.dir_name()).join(&*m.name)) {
            Ok(()) => return Ok(Some(m.sub)),
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            Err(_) => {}
        }
        let Some((sub, name)) = list_files(&self.dir)?.remove(m.base()) else {
            return Ok(None);
        };
        match fs::remove_file(self.dir.join(sub.dir_name()).join(name)) {
            Ok(()) => Ok(Some(sub)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The message's file now (found by its base name if it was renamed
    /// since the snapshot).
    pub fn resolve(&self, m: &Message) -> io::Result<PathBuf> {
        let p = self.dir.join(m.sub.dir_name()).join(&*m.name);
        if p.exists() {
            return Ok(p);
        }
        let files = list_files(&self.dir)?;
        match files.get(m.base()) {
            Some((sub, name)) => Ok(self.dir.join(sub.dir_name()).join(name)),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "message expunged")),
        }
    }

    /// Open the message (stored with LF line ends: the reader adds CRs).
    pub fn open(&self, m: &Message) -> io::Result<File> {
        File::open(self.resolve(m)?)
    }

    /// INTERNALDATE: the file's mtime (one stat).
    pub fn internal_date(&self, m: &Message) -> io::Result<SystemTime> {
        fs::metadata(self.resolve(m)?)?.modified()
    }

    /// RFC822.SIZE: from the name, else counted from the file.
    pub fn rfc822_size(&self, m: &Message) -> io::Result<u64> {
        if let Some(w) = m.vsize {
            return Ok(w);
        }
        let mut f = self.open(m)?;
        let mut buf = vec![0u8; CHUNK];
        let (mut n, mut prev_cr) = (0u64, false);
        loop {
            let got = f.read(&mut buf)?;
            if got == 0 {
                break;
            }
            for &b in buf.get(..got).unwrap_or(&[]) {
                n += 1;
                if b == b'\n' && !prev_cr {
                    n += 1;
                }
                prev_cr = b == b'\r';
            }
        }
        Ok(n)
    }

    /// Keeps RFC822.SIZEs counted from the files (UID, size) as the
    /// uidlist's `W` field (Dovecot's own record of it), so the next
    /// SELECT has them from the listing and FETCH RFC822.SIZE reads no
    /// file again: without `,W=` in the names, a big folder's first
    /// `UID FETCH 1:* (FLAGS RFC822.SIZE)` reads every message, and later
    /// ones do not. One uidlist write, under its lock, for all of them.
    pub fn remember_sizes(&self, sizes: &[(u32, u64)]) -> io::Result<()> {
        if sizes.is_empty() {
            return Ok(());
        }
        let sizes: HashMap<u32, u64> = sizes.iter().copied().collect();
        let (_lock, mut scan) = self.locked_scan()?;
        for rec in &mut scan.list.records {
            let Some(w) = sizes.get(&rec.uid) else {
                continue;
            };
            if rec.ext_value('W').is_none() && maildir::parse_sizes(&rec.base).1.is_none() {
                rec.ext.push(format!("W{w}"));
                scan.uidlist_dirty = true;
            }
        }
        self.write_scan(&mut scan)
    }

    /// QRESYNC: UIDs expunged after `modseq`, or `None` when that is older
    /// than the expunge records go (then report every gap, RFC 7162
    /// 3.2.5.2).
    pub fn vanished_since(&self, uidvalidity: u32, modseq: u64) -> io::Result<Option<Vec<u32>>> {
        let st = State::load(&self.dir, uidvalidity)?;
        if modseq < st.expunge_floor {
            return Ok(None);
        }
        Ok(Some(
            st.expunged
                .iter()
                .filter(|(_, &m)| m > modseq)
                .map(|(&u, _)| u)
                .collect(),
        ))
    }
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "Mailbox doesn't exist")
}

fn local_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: valid buffer; the last byte stays 0.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    if rc != 0 || end == 0 {
        return "localhost".into();
    }
    String::from_utf8_lossy(buf.get(..end).unwrap_or(&[])).into_owned()
}

/// Where a message with flags `f` goes: `new/BASE` without flags (what
/// Dovecot does for a flagless APPEND), `cur/BASE:2,FLAGS` otherwise.
fn placement(base: &str, f: Flags) -> (Sub, String) {
    if f == Flags::NONE {
        (Sub::New, base.to_string())
    } else {
        (Sub::Cur, flags::with_flags(base, f))
    }
}

/// A fresh unique base that keeps the source's `,S=`/`,W=` fields.
fn new_base_like(m: &Message, host: &str) -> String {
    let (s, w) = maildir::parse_sizes(m.base());
    let fresh = maildir::unique_name(SystemTime::now(), host, 0, 0);
    let stem = fresh.split(',').next().unwrap_or(&fresh).to_string();
    let mut out = stem;
    if let Some(s) = s.or(m.size) {
        out.push_str(&format!(",S={s}"));
    }
    if let Some(w) = w.or(m.vsize) {
        out.push_str(&format!(",W={w}"));
    }
    out
}

fn keywords_mask(k: &Keywords) -> u32 {
    (0..flags::MAX_KEYWORDS)
        .filter(|&i| k.name(i).is_some())
        .fold(0, |m, i| m | (1 << i))
}

fn message_of(rec: &Record, sub: Sub, name: String, known_kw: u32) -> Message {
    let mut f = flags::parse(&name);
    f.keywords &= known_kw;
    let (s, w) = maildir::parse_sizes(&rec.base);
    let w = w.or_else(|| rec.ext_value('W').and_then(|v| v.parse().ok()));
    let s = s.or_else(|| rec.ext_value('S').and_then(|v| v.parse().ok()));
    Message {
        uid: rec.uid,
        name: name.into(),
        sub,
        flags: f,
        size: s,
        vsize: w,
        modseq: 0,
    }
}

/// Base name -> (subfolder, file name) for `new/` then `cur/` (Dovecot's
/// order: a message moving from new/ to cur/ meanwhile is still seen).
/// Hidden names are skipped; of two files with one base, `cur/` wins.
fn list_files(dir: &Path) -> io::Result<FastMap<String, (Sub, String)>> {
    Ok(list_all(dir)?.files)
}

/// What one listing of `new/` and `cur/` found.
#[derive(Default)]
struct Listing {
    files: FastMap<String, (Sub, String)>,
    /// `new/` names whose base is also in `cur/`: an interrupted STORE's
    /// twin when they are one file.
    twins: Vec<(String, String)>,
    /// Hidden names an interrupted MOVE left: (sub, file name).
    moving: Vec<(Sub, String)>,
}

impl Listing {
    fn has_leftovers(&self) -> bool {
        !self.twins.is_empty() || !self.moving.is_empty()
    }
}

fn list_all(dir: &Path) -> io::Result<Listing> {
    let mut out = Listing::default();
    for sub in [Sub::New, Sub::Cur] {
        let rd = match fs::read_dir(dir.join(sub.dir_name())) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for de in rd {
            let de = de?;
            let Ok(name) = de.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                if name.len() > MOVING.len() && name.starts_with(MOVING) {
                    out.moving.push((sub, name));
                }
                continue;
            }
            match de.file_type() {
                Ok(t) if t.is_file() => {}
                Ok(t) if t.is_symlink() => {}
                Ok(_) => continue,
                Err(_) => continue,
            }
            // The base is cloned again only for a twin (rare): one
            // allocation less per file.
            match out.files.entry(flags::base(&name).to_string()) {
                Entry::Vacant(v) => {
                    v.insert((sub, name));
                }
                Entry::Occupied(mut o) => {
                    if let (Sub::New, twin) = o.insert((sub, name)) {
                        out.twins.push((o.key().clone(), twin));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Ok(true) done, Ok(false) the file was gone already.
fn ignore_missing(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Dovecot's `maildir_filename_sort_cmp`: seconds, then microseconds when
/// both names have `M<usec>`, then the base names.
pub fn dovecot_sort_cmp(a: &str, b: &str) -> Ordering {
    fn split(s: &str) -> (u64, &str) {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        let secs = s.get(..n).and_then(|d| d.parse().ok()).unwrap_or(0);
        (secs, s.get(n..).unwrap_or(""))
    }
    fn usecs(rest: &str) -> Option<u64> {
        let u = rest.strip_prefix('.')?;
        let uniq = u.split(['.', ':']).next().unwrap_or("");
        let i = uniq.find('M')?;
        let d: String = uniq
            .get(i + 1..)?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some(d.parse().unwrap_or(0))
    }
    let (sa, ra) = split(a);
    let (sb, rb) = split(b);
    sa.cmp(&sb)
        .then_with(|| match (usecs(ra), usecs(rb)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => Ordering::Equal,
        })
        .then_with(|| flags::base(ra).cmp(flags::base(rb)))
}

/// Copy a CRLF spool file into `tmp` with LF line ends, fsynced; returns
/// (S, W): the stored size and the wire size.
fn stage_converting(spool: &Path, tmp: &Path) -> io::Result<(u64, u64)> {
    let mut input = File::open(spool)?;
    let (mut s, mut lfs) = (0u64, 0u64);
    durable::write_synced(tmp, |w| {
        let mut conv = CrlfToLf::default();
        let mut buf = vec![0u8; CHUNK];
        let mut emit = |b: &[u8]| -> io::Result<()> {
            s += b.len() as u64;
            lfs += b.iter().filter(|&&c| c == b'\n').count() as u64;
            w.write_all(b)
        };
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            conv.feed(buf.get(..n).unwrap_or(&[]), &mut emit)?;
        }
        conv.finish(&mut emit)
    })?;
    Ok((s, s + lfs))
}
