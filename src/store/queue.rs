//! The outbox queue on disk: `data_dir/queue/`.
//!
//! Layout, one message per pair of files:
//! - `queue/ID.msg`: the message exactly as it will be sent (Received header
//!   already added by the caller), stored with LF line endings;
//! - `queue/ID.env`: its envelope, a text file of `key: value` lines that a
//!   human and `mailgate queue` can read (see `QueueEntry::to_text`);
//! - `queue/tmp/`: half-written files; everything here is garbage after a
//!   crash;
//! - `queue/corrupt/`: envelopes (and their messages) that recovery could not
//!   use, kept for a human rather than deleted.
//!
//! Commit protocol: the message is written durably first, then the envelope;
//! the envelope's existence commits the message. Envelope updates replace
//! the file atomically (tmp + rename). A finished message loses its envelope
//! first, then its message file. So after a crash an `.msg` without `.env` is
//! never a committed message and recovery removes it, and an `.env` without
//! `.msg` is damage (moved to `corrupt/`).
//!
//! Owns: those files and their format. Must not: speak SMTP, choose retry
//! times (`schedule`), or build bounces (`bounce`). It does blocking file IO
//! with fsync: call it from the worker pool, not the event loop.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The queue's folder under `data_dir` (spec: "Data on disk").
pub const QUEUE_DIR: &str = "queue";
const TMP_DIR: &str = "tmp";
const CORRUPT_DIR: &str = "corrupt";
const MSG_EXT: &str = "msg";
const ENV_EXT: &str = "env";
/// Last line of every envelope: a file without it was cut short.
const END_MARKER: &str = "end";

/// Largest envelope file read. With at most a few hundred recipients of at
/// most 256 octets each (RFC 5321 4.5.3.1.3, path) plus their last errors, a
/// real envelope stays far below this; anything larger is not ours.
const MAX_ENVELOPE_BYTES: u64 = 4 * 1024 * 1024;
/// Longest `last_error` kept: a reply line is at most 512 octets
/// (RFC 5321 4.5.3.1.5), plus room for the host that said it.
pub const MAX_ERROR_CHARS: usize = 600;
/// Longest address accepted into an envelope. RFC 5321 4.5.3.1.3 limits a
/// path to 256 octets; we allow more and only guard the file format.
const MAX_ADDRESS_BYTES: usize = 1000;
/// Longest queue ID accepted from a file name; ours are about 35 characters.
const MAX_ID_LEN: usize = 64;
/// How many fresh IDs `enqueue` tries before it gives up (they only collide
/// with files left by an earlier process that had the same pid).
const MAX_ID_TRIES: u32 = 1000;

/// Per-process sequence number for IDs and tmp names.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where delivery to one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Delivered,
    /// Permanently failed or given up; its bounce has been queued.
    Failed,
}

impl RcptState {
    fn as_str(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<RcptState> {
        match s {
            "pending" => Some(RcptState::Pending),
            "delivered" => Some(RcptState::Delivered),
            "failed" => Some(RcptState::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientState {
    /// The forward-path, without angle brackets.
    pub address: String,
    pub state: RcptState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Unix time of the next attempt (meaningful while pending).
    pub next_try: u64,
    /// The last failure, one line; empty when none. Sanitized and cut to
    /// `MAX_ERROR_CHARS` when written, so callers may store raw replies.
    pub last_error: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// Unique, sortable, file-name-safe.
    pub id: String,
    /// Unix time it was queued.
    pub created: u64,
    /// The reverse-path without angle brackets; empty for the null sender.
    pub sender: String,
    /// Whether the message needs the SMTPUTF8 extension (RFC 6531).
    pub smtputf8: bool,
    pub recipients: Vec<RecipientState>,
}

impl QueueEntry {
    /// Is some pending recipient due at `now`?
    pub fn due(&self, now: u64) -> bool {
        self.pending().any(|r| r.next_try <= now)
    }

    /// The earliest `next_try` among pending recipients; None when none is
    /// pending (the entry is finished).
    pub fn next_due(&self) -> Option<u64> {
        self.pending().map(|r| r.next_try).min()
    }

    /// Every recipient delivered or failed: the entry can be removed.
    pub fn is_finished(&self) -> bool {
        self.pending().next().is_none()
    }

    pub fn pending(&self) -> impl Iterator<Item = &RecipientState> {
        self.recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending)
    }

    /// The envelope file's text.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "id: {}", self.id);
        let _ = writeln!(out, "created: {}", self.created);
        let _ = writeln!(out, "sender: {}", self.sender);
        let _ = writeln!(
            out,
            "smtputf8: {}",
            if self.smtputf8 { "yes" } else { "no" }
        );
        for r in &self.recipients {
            let _ = writeln!(out, "recipient: {}", r.address);
            let _ = writeln!(out, "state: {}", r.state.as_str());
            let _ = writeln!(out, "attempts: {}", r.attempts);
            let _ = writeln!(out, "next_try: {}", r.next_try);
            let _ = writeln!(
                out,
                "last_error: {}",
                one_line(&r.last_error, MAX_ERROR_CHARS)
            );
        }
        out.push_str(END_MARKER);
        out.push('\n');
        out
    }

    /// Parses an envelope file's text. Strict about the keys it knows and
    /// about the end marker; lines with unknown keys are skipped so that a
    /// newer version's additions do not strand mail after a downgrade.
    pub fn parse(text: &str) -> Result<QueueEntry, String> {
        let mut id = None;
        let mut created = None;
        let mut sender = None;
        let mut smtputf8 = None;
        let mut recipients: Vec<PartialRcpt> = Vec::new();
        let mut ended = false;
        for (n, line) in text.lines().enumerate() {
            let lineno = n + 1;
            if ended {
                return Err(format!("line {lineno}: text after the end marker"));
            }
            if line == END_MARKER {
                ended = true;
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("line {lineno}: not a `key: value` line"));
            };
            let value = value.strip_prefix(' ').unwrap_or(value);
            let dup = || format!("line {lineno}: duplicate {key}");
            let number = |v: &str| -> Result<u64, String> {
                v.parse::<u64>()
                    .map_err(|_| format!("line {lineno}: bad number for {key}"))
            };
            match (key, recipients.last_mut()) {
                ("recipient", _) => recipients.push(PartialRcpt::new(value)),
                ("id", None) => set_once(&mut id, value.to_string()).map_err(|_| dup())?,
                ("created", None) => set_once(&mut created, number(value)?).map_err(|_| dup())?,
                ("sender", None) => set_once(&mut sender, value.to_string()).map_err(|_| dup())?,
                ("smtputf8", None) => {
                    let flag = match value {
                        "yes" => true,
                        "no" => false,
                        _ => return Err(format!("line {lineno}: smtputf8 must be yes or no")),
                    };
                    set_once(&mut smtputf8, flag).map_err(|_| dup())?
                }
                ("state", Some(r)) => {
                    let state = RcptState::parse(value)
                        .ok_or_else(|| format!("line {lineno}: unknown state {value:?}"))?;
                    set_once(&mut r.state, state).map_err(|_| dup())?
                }
                ("attempts", Some(r)) => {
                    let n = u32::try_from(number(value)?)
                        .map_err(|_| format!("line {lineno}: attempts out of range"))?;
                    set_once(&mut r.attempts, n).map_err(|_| dup())?
                }
                ("next_try", Some(r)) => {
                    set_once(&mut r.next_try, number(value)?).map_err(|_| dup())?
                }
                ("last_error", Some(r)) => {
                    set_once(&mut r.last_error, value.to_string()).map_err(|_| dup())?
                }
                ("id" | "created" | "sender" | "smtputf8", Some(_)) => {
                    return Err(format!("line {lineno}: {key} after the first recipient"));
                }
                ("state" | "attempts" | "next_try" | "last_error", None) => {
                    return Err(format!("line {lineno}: {key} before any recipient"));
                }
                _ => {}
            }
        }
        if !ended {
            return Err("no end marker: the file was cut short".to_string());
        }
        let entry = QueueEntry {
            id: id.ok_or("missing id")?,
            created: created.ok_or("missing created")?,
            sender: sender.ok_or("missing sender")?,
            smtputf8: smtputf8.ok_or("missing smtputf8")?,
            recipients: recipients
                .into_iter()
                .map(PartialRcpt::finish)
                .collect::<Result<Vec<_>, _>>()?,
        };
        if entry.recipients.is_empty() {
            return Err("no recipients".to_string());
        }
        if !valid_id(&entry.id) {
            return Err(format!("bad id {:?}", one_line(&entry.id, 80)));
        }
        Ok(entry)
    }
}

/// A recipient block being read.
struct PartialRcpt {
    address: String,
    state: Option<RcptState>,
    attempts: Option<u32>,
    next_try: Option<u64>,
    last_error: Option<String>,
}

impl PartialRcpt {
    fn new(address: &str) -> PartialRcpt {
        PartialRcpt {
            address: address.to_string(),
            state: None,
            attempts: None,
            next_try: None,
            last_error: None,
        }
    }

    fn finish(self) -> Result<RecipientState, String> {
        let missing =
            |what: &str| format!("recipient {}: missing {what}", one_line(&self.address, 80));
        Ok(RecipientState {
            state: self.state.ok_or_else(|| missing("state"))?,
            attempts: self.attempts.ok_or_else(|| missing("attempts"))?,
            next_try: self.next_try.ok_or_else(|| missing("next_try"))?,
            last_error: self.last_error.unwrap_or_default(),
            address: self.address,
        })
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), ()> {
    if slot.is_some() {
        return Err(());
    }
    *slot = Some(value);
    Ok(())
}

/// `mailgate flush`: makes every pending recipient of every entry due at
/// `now`. Errors are logged; an entry that cannot be rewritten keeps its
/// old time. The caller makes sure no other writer rewrites envelopes
/// meanwhile (the outbox runner records no attempt while a flush runs).
pub fn make_all_due(data_dir: &Path, now: u64) {
    let queue = Queue::at(data_dir);
    for mut entry in queue.load_all().entries {
        let mut changed = false;
        for r in entry.recipients.iter_mut() {
            if r.state == RcptState::Pending && r.next_try > now {
                r.next_try = now;
                changed = true;
            }
        }
        if changed {
            if let Err(e) = queue.update(&entry) {
                log::warn!("flush: cannot update {}: {e}", entry.id);
            }
        }
    }
}

/// Envelopes read, and what was wrong with the ones that could not be.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Sorted by ID, i.e. by age.
    pub entries: Vec<QueueEntry>,
    /// One line per unreadable or misplaced file, for the log or the CLI.
    pub problems: Vec<String>,
}

/// The queue folder. Holds only a path: cheap to clone and to share with
/// worker threads. Only one process may write a queue (the server); the CLI
/// only reads it.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
}

impl Queue {
    /// Opens `data_dir/queue` for the server: creates the folders, then
    /// recovers from a crash and returns the live entries. Recovery empties
    /// `tmp/`, removes every `.msg` without an `.env` (never committed, or
    /// finished), removes entries whose recipients are all delivered or
    /// failed, and moves every `.env` that is unreadable or has no
    /// `.msg` into `corrupt/` (with its `.msg`, if any). Problems are logged
    /// at warn level and returned.
    ///
    /// Must run before anything else writes the queue, and never while a
    /// server writes it: it deletes half-written files.
    pub fn open(data_dir: &Path) -> io::Result<(Queue, Loaded)> {
        let queue = Queue::at(data_dir);
        queue.ensure_dirs()?;
        let loaded = queue.recover()?;
        for problem in &loaded.problems {
            log::warn!("queue: {problem}");
        }
        Ok((queue, loaded))
    }

    /// Creates the queue folders if they are missing (no recovery), each
    /// folder's name synced in its parent: a message committed in a
    /// `queue/` whose own name was never synced would vanish with it in a
    /// power cut (found by tests/test_powercut.py).
    pub fn ensure_dirs(&self) -> io::Result<()> {
        crate::store::durable::create_dir_all_durable(&self.dir.join(TMP_DIR))?;
        crate::store::durable::create_dir_all_durable(&self.dir.join(CORRUPT_DIR))
    }

    /// The queue of `data_dir`, without creating or recovering anything:
    /// for `mailgate queue`, which may run beside a live server.
    pub fn at(data_dir: &Path) -> Queue {
        Queue {
            dir: data_dir.join(QUEUE_DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The message file of `id`: LF line endings, to be sent with CRLF.
    pub fn message_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{MSG_EXT}"))
    }

    fn envelope_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ENV_EXT}"))
    }

    fn tmp_path(&self, id: &str, ext: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir.join(TMP_DIR).join(format!("{id}.{ext}.{n}"))
    }

    /// Queues one message for `recipients` and returns only once both of
    /// its files are durable. `message` may have CRLF or LF line endings;
    /// it is stored with LF. `sender` is the reverse-path without angle
    /// brackets (empty for the null sender, e.g. a bounce). Each recipient
    /// starts pending with its first try due at `now`. Exact duplicate
    /// recipients are merged.
    pub fn enqueue(
        &self,
        sender: &str,
        recipients: &[String],
        message: &[u8],
        smtputf8: bool,
        now: u64,
    ) -> io::Result<QueueEntry> {
        self.enqueue_with(sender, recipients, smtputf8, now, None, &mut |w| {
            crate::store::maildir::write_lf(w, &[message])
        })
    }

    /// [`Queue::enqueue`] with the message written by `fill`, which must
    /// write the stored form (LF line ends): a spooled body is copied,
    /// never read into memory whole. `id` is the id the message already
    /// has (its `Received:` id), so that the log names it one way from
    /// intake to delivery; it is used when it is a valid, free name.
    pub fn enqueue_with(
        &self,
        sender: &str,
        recipients: &[String],
        smtputf8: bool,
        now: u64,
        id: Option<&str>,
        fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
    ) -> io::Result<QueueEntry> {
        check_address(sender, true)?;
        if recipients.is_empty() {
            return Err(invalid("no recipients"));
        }
        let mut seen = BTreeSet::new();
        let mut rcpts = Vec::with_capacity(recipients.len());
        for address in recipients {
            check_address(address, false)?;
            if seen.insert(address.as_str()) {
                rcpts.push(RecipientState {
                    address: address.clone(),
                    state: RcptState::Pending,
                    attempts: 0,
                    next_try: now,
                    last_error: String::new(),
                });
            }
        }
        let id = match id {
            Some(id) if valid_id(id) && self.is_free(id) => id.to_string(),
            _ => self.new_id(now)?,
        };
        let msg_path = self.message_path(&id);
        crate::store::durable::write_durable_with(&self.tmp_path(&id, MSG_EXT), &msg_path, fill)?;
        let entry = QueueEntry {
            id,
            created: now,
            sender: sender.to_string(),
            smtputf8,
            recipients: rcpts,
        };
        if let Err(e) = self.write_envelope(&entry) {
            // Not committed: the caller reports a temporary failure, and
            // nothing of this message may stay behind to be sent later.
            let _ = fs::remove_file(self.envelope_path(&entry.id));
            let _ = fs::remove_file(&msg_path);
            return Err(e);
        }
        Ok(entry)
    }

    /// Rewrites the envelope of `entry` atomically and durably. Fails with
    /// NotFound if its message is gone (the entry was removed).
    pub fn update(&self, entry: &QueueEntry) -> io::Result<()> {
        check_id(&entry.id)?;
        check_address(&entry.sender, true)?;
        for r in &entry.recipients {
            check_address(&r.address, false)?;
        }
        if !self.message_path(&entry.id).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("queue entry {} is gone", entry.id),
            ));
        }
        self.write_envelope(entry)
    }

    /// Removes a finished entry: the envelope first (made durable), then the
    /// message, so that a crash in between leaves only an orphan `.msg` for
    /// recovery to delete. Removing an absent entry is not an error.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        check_id(id)?;
        ignore_not_found(fs::remove_file(self.envelope_path(id)))?;
        sync_dir(&self.dir)?;
        ignore_not_found(fs::remove_file(self.message_path(id)))
    }

    /// Reads one envelope.
    pub fn load(&self, id: &str) -> Result<QueueEntry, String> {
        check_id(id).map_err(|e| e.to_string())?;
        self.read_envelope(id)
    }

    /// Reads every envelope; an unreadable one is reported in `problems`,
    /// never a panic or an error for the whole queue. A missing queue
    /// folder reads as empty. Changes nothing on disk.
    pub fn load_all(&self) -> Loaded {
        let mut loaded = Loaded::default();
        let names = match self.scan() {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return loaded,
            Err(e) => {
                loaded
                    .problems
                    .push(format!("cannot read {}: {e}", self.dir.display()));
                return loaded;
            }
        };
        for id in &names.envelopes {
            match self.read_envelope(id) {
                Ok(entry) => loaded.entries.push(entry),
                Err(e) => loaded.problems.push(format!("{id}.{ENV_EXT}: {e}")),
            }
        }
        loaded
    }

    fn recover(&self) -> io::Result<Loaded> {
        let mut loaded = Loaded::default();
        // Half-written files: nothing in tmp/ was ever committed.
        for dirent in fs::read_dir(self.dir.join(TMP_DIR))? {
            let path = dirent?.path();
            if let Err(e) = fs::remove_file(&path) {
                loaded
                    .problems
                    .push(format!("cannot remove {}: {e}", path.display()));
            }
        }
        let names = self.scan()?;
        let mut keep_msg = BTreeSet::new();
        for id in &names.envelopes {
            let has_msg = names.messages.contains(id);
            match self.read_envelope(id) {
                Ok(entry) if has_msg && entry.is_finished() => {
                    // Crash after the last update, before `remove`: the
                    // bounces were queued before that update, so finish it.
                    if let Err(e) = self.remove(id) {
                        loaded
                            .problems
                            .push(format!("cannot remove finished {id}: {e}"));
                    }
                    keep_msg.insert(id.clone());
                }
                Ok(entry) if has_msg => {
                    keep_msg.insert(id.clone());
                    loaded.entries.push(entry);
                }
                Ok(_) => {
                    loaded.problems.push(format!(
                        "{id}.{ENV_EXT}: its message file is missing; moved to {CORRUPT_DIR}/"
                    ));
                    self.move_aside(id, ENV_EXT, &mut loaded.problems);
                }
                Err(e) => {
                    loaded
                        .problems
                        .push(format!("{id}.{ENV_EXT}: {e}; moved to {CORRUPT_DIR}/"));
                    self.move_aside(id, ENV_EXT, &mut loaded.problems);
                    if has_msg {
                        keep_msg.insert(id.clone());
                        self.move_aside(id, MSG_EXT, &mut loaded.problems);
                    }
                }
            }
        }
        // A message without an envelope was never committed (crash during
        // enqueue) or was finished (crash during remove): not ours to send.
        for id in names.messages.difference(&keep_msg) {
            let path = self.message_path(id);
            if let Err(e) = fs::remove_file(&path) {
                loaded
                    .problems
                    .push(format!("cannot remove {}: {e}", path.display()));
            }
        }
        loaded.problems.extend(
            names
                .strangers
                .iter()
                .map(|n| format!("unexpected file {n:?} left alone")),
        );
        // corrupt/ first: a file moved aside must have its new name
        // durable before its old one goes (POSIX makes no rename atomic
        // across folders), or a power cut between the syncs loses it.
        sync_dir(&self.dir.join(CORRUPT_DIR))?;
        sync_dir(&self.dir)?;
        Ok(loaded)
    }

    /// Moves `ID.ext` into `corrupt/`, never over an earlier file there.
    fn move_aside(&self, id: &str, ext: &str, problems: &mut Vec<String>) {
        let from = self.dir.join(format!("{id}.{ext}"));
        let corrupt = self.dir.join(CORRUPT_DIR);
        let mut to = corrupt.join(format!("{id}.{ext}"));
        let mut n = 1;
        while to.exists() {
            to = corrupt.join(format!("{id}.{ext}.{n}"));
            n += 1;
        }
        if let Err(e) = fs::rename(&from, &to) {
            problems.push(format!("cannot move {} aside: {e}", from.display()));
        }
    }

    fn scan(&self) -> io::Result<Names> {
        let mut names = Names::default();
        for dirent in fs::read_dir(&self.dir)? {
            let dirent = dirent?;
            let name = dirent.file_name();
            let name = name.to_string_lossy();
            if name == TMP_DIR || name == CORRUPT_DIR {
                continue;
            }
            let split = name.rsplit_once('.').filter(|(id, _)| valid_id(id));
            match split {
                Some((id, MSG_EXT)) => names.messages.insert(id.to_string()),
                Some((id, ENV_EXT)) => names.envelopes.insert(id.to_string()),
                _ => names.strangers.insert(name.into_owned()),
            };
        }
        Ok(names)
    }

    fn read_envelope(&self, id: &str) -> Result<QueueEntry, String> {
        let file = File::open(self.envelope_path(id)).map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        file.take(MAX_ENVELOPE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_ENVELOPE_BYTES {
            return Err(format!("larger than {MAX_ENVELOPE_BYTES} bytes"));
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| "not UTF-8 text".to_string())?;
        let entry = QueueEntry::parse(text)?;
        if entry.id != id {
            return Err(format!(
                "id {:?} does not match the file name",
                one_line(&entry.id, 80)
            ));
        }
        Ok(entry)
    }

    fn write_envelope(&self, entry: &QueueEntry) -> io::Result<()> {
        write_durable(
            &self.tmp_path(&entry.id, ENV_EXT),
            &self.envelope_path(&entry.id),
            entry.to_text().as_bytes(),
        )
    }

    /// The header section of a queued message (up to and including the
    /// empty line), at most `limit` octets of it: what a bounce returns,
    /// without reading a big message whole.
    pub fn read_header_section(&self, id: &str, limit: usize) -> io::Result<Vec<u8>> {
        use std::io::BufRead;
        let file = fs::File::open(self.message_path(id))?;
        let mut reader = io::BufReader::new(file.take(limit as u64));
        let mut out = Vec::new();
        loop {
            let start = out.len();
            if reader.read_until(b'\n', &mut out)? == 0 {
                return Ok(out);
            }
            let line = &out[start..];
            if line == b"\n" || line == b"\r\n" {
                return Ok(out);
            }
        }
    }

    /// No message or envelope has this id.
    fn is_free(&self, id: &str) -> bool {
        !self.message_path(id).exists() && !self.envelope_path(id).exists()
    }

    /// A fresh ID: time, pid and a counter; checked against the folder
    /// because a restarted server may get the same pid (always 1 in a
    /// container) within the same second.
    fn new_id(&self, now: u64) -> io::Result<String> {
        let pid = std::process::id();
        for _ in 0..MAX_ID_TRIES {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let id = format!("{now:010}.P{pid}.Q{n:06}");
            if self.is_free(&id) {
                return Ok(id);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free queue id",
        ))
    }
}

#[derive(Default)]
struct Names {
    messages: BTreeSet<String>,
    envelopes: BTreeSet<String>,
    strangers: BTreeSet<String>,
}

/// IDs become file names: ASCII letters, digits, `.`, `_`, `-`, no leading
/// dot, bounded length.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_id(id: &str) -> io::Result<()> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(invalid("bad queue id"))
    }
}

/// An address must fit on its envelope line: no control characters.
fn check_address(address: &str, may_be_empty: bool) -> io::Result<()> {
    if address.is_empty() && !may_be_empty {
        return Err(invalid("empty recipient address"));
    }
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(invalid("address too long"));
    }
    if address
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err(invalid("control character in address"));
    }
    Ok(())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

fn ignore_not_found(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// CRLF line endings become LF; a lone CR or LF is kept as it is. A
/// message without CRLF is not copied.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to `final_path` durably, the one way the project does it
/// (`store::durable`): `tmp` (which must not exist) written and fsynced,
/// renamed over `final_path`, the folder fsynced; no `tmp` left on error.
fn write_durable(tmp: &Path, final_path: &Path, data: &[u8]) -> io::Result<()> {
    crate::store::durable::write_durable(tmp, final_path, &[data])
}

/// `mailgate queue`: a human listing of `entries` at time `now`.
pub fn format_listing(entries: &[QueueEntry], now: u64) -> String {
    if entries.is_empty() {
        return "Outbox is empty\n".to_string();
    }
    let mut sorted: Vec<&QueueEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let mut out = String::new();
    for e in sorted {
        let sender = if e.sender.is_empty() {
            "<>".to_string()
        } else {
            format!("<{}>", one_line(&e.sender, 300))
        };
        let utf8 = if e.smtputf8 { "  (SMTPUTF8)" } else { "" };
        let _ = writeln!(
            out,
            "{}  age {}  from {sender}{utf8}",
            e.id,
            human_duration(now.saturating_sub(e.created))
        );
        for r in &e.recipients {
            let plural = if r.attempts == 1 { "" } else { "s" };
            let status = match r.state {
                RcptState::Pending if r.next_try <= now => {
                    format!("pending, {} attempt{plural}, next try now", r.attempts)
                }
                RcptState::Pending => format!(
                    "pending, {} attempt{plural}, next try in {}",
                    r.attempts,
                    human_duration(r.next_try - now)
                ),
                RcptState::Delivered => "delivered".to_string(),
                RcptState::Failed => format!("failed after {} attempt{plural}", r.attempts),
            };
            let _ = writeln!(out, "    <{}>  {status}", one_line(&r.address, 300));
            let error = one_line(&r.last_error, MAX_ERROR_CHARS);
            if !error.is_empty() {
                let _ = writeln!(out, "        last error: {error}");
            }
        }
    }
    let n = entries.len();
    let _ = writeln!(out, "{n} message{} in queue", if n == 1 { "" } else { "s" });
    out
}

/// `45s`, `5m`, `2h`, `3d`: the largest whole unit, rounded down.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

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
    use super::*;

    const T0: u64 = 1_700_000_000;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("mailgate-queue-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn open(dir: &TempDir) -> (Queue, Loaded) {
        Queue::open(&dir.0).unwrap()
    }

    #[test]
    fn enqueue_load_roundtrip() {
        let tmp = TempDir::new("roundtrip");
        let (q, loaded) = open(&tmp);
        assert!(loaded.entries.is_empty() && loaded.problems.is_empty());
        let msg = b"Received: from x\r\nSubject: hi\r\n\r\nbody\r\nline\r\n";
        let e = q
            .enqueue(
                "bob@example.test",
                &rcpts(&["a@x.example", "b@y.example", "a@x.example"]),
                msg,
                true,
                T0,
            )
            .unwrap();
        assert_eq!(e.recipients.len(), 2, "duplicates merged");
        assert!(e.due(T0) && !e.due(T0 - 1));
        assert_eq!(e.next_due(), Some(T0));
        assert_eq!(
            fs::read(q.message_path(&e.id)).unwrap(),
            b"Received: from x\nSubject: hi\n\nbody\nline\n"
        );
        let again = q.load_all();
        assert_eq!(again.entries, vec![e.clone()]);
        assert!(again.problems.is_empty());
        // A restart keeps it.
        let (_, reopened) = open(&tmp);
        assert_eq!(reopened.entries, vec![e.clone()]);
        assert!(reopened.problems.is_empty());
        assert!(files(&q.dir().join(TMP_DIR)).is_empty());
    }

    #[test]
    fn a_given_id_is_kept_when_free_and_valid() {
        let tmp = TempDir::new("given-id");
        let (q, _) = open(&tmp);
        let put = |id: Option<&str>| {
            q.enqueue_with("s@x", &rcpts(&["a@x"]), false, T0, id, &mut |w| {
                w.write_all(b"m\n")
            })
            .unwrap()
            .id
        };
        assert_eq!(put(Some("1QZ4M2K3F8A0")), "1QZ4M2K3F8A0");
        // Taken, or not a file name: a fresh one.
        let again = put(Some("1QZ4M2K3F8A0"));
        assert_ne!(again, "1QZ4M2K3F8A0");
        let bad = put(Some("../escape"));
        assert!(!bad.contains('/'));
    }

    #[test]
    fn header_section_read_alone() {
        let tmp = TempDir::new("headers");
        let (q, _) = open(&tmp);
        let body = "x".repeat(100_000);
        let msg = format!("Subject: hi\r\nTo: a@x\r\n\r\n{body}\r\n");
        let e = q
            .enqueue("s@x", &rcpts(&["a@x"]), msg.as_bytes(), false, T0)
            .unwrap();
        assert_eq!(
            q.read_header_section(&e.id, 64 * 1024).unwrap(),
            b"Subject: hi\nTo: a@x\n\n"
        );
        // No empty line within the limit: the limit's worth.
        let e = q
            .enqueue("s@x", &rcpts(&["a@x"]), body.as_bytes(), false, T0)
            .unwrap();
        assert_eq!(q.read_header_section(&e.id, 1000).unwrap().len(), 1000);
    }

    #[test]
    fn null_sender_and_odd_addresses_roundtrip() {
        let tmp = TempDir::new("null");
        let (q, _) = open(&tmp);
        let e = q
            .enqueue(
                "",
                &rcpts(&["\"a b\"@x.example", "ünï@例え.jp"]),
                b"x\n",
                false,
                T0,
            )
            .unwrap();
        assert_eq!(q.load_all().entries, vec![e.clone()]);
        assert_eq!(e.sender, "");
    }

    #[test]
    fn enqueue_rejects_bad_input() {
        let tmp = TempDir::new("reject");
        let (q, _) = open(&tmp);
        let long = "a".repeat(MAX_ADDRESS_BYTES + 1);
        let cases: &[(&str, Vec<String>)] = &[
            ("s@x", vec![]),
            ("s@x", rcpts(&[""])),
            ("s@x\nrecipient: evil@x", rcpts(&["a@x"])),
            ("s@x", rcpts(&["a@x\r\nstate: delivered"])),
            ("s@x", rcpts(&["a\0@x"])),
            ("s@x", vec![long]),
        ];
        for (sender, list) in cases {
            let err = q.enqueue(sender, list, b"x\n", false, T0).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{sender:?} {list:?}"
            );
        }
        assert_eq!(files(q.dir()), vec![CORRUPT_DIR, TMP_DIR]);
    }

    #[test]
    fn ids_unique_and_sortable() {
        let tmp = TempDir::new("ids");
        let (q, _) = open(&tmp);
        let mut ids = Vec::new();
        for i in 0..20 {
            ids.push(
                q.enqueue("s@x", &rcpts(&["a@x"]), b"m\n", false, T0 + i / 5)
                    .unwrap()
                    .id,
            );
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
        assert!(ids.iter().all(|id| valid_id(id)));
    }

    #[test]
    fn id_collision_with_old_files_is_skipped() {
        let tmp = TempDir::new("collide");
        let (q, _) = open(&tmp);
        // Files an earlier process with our pid left at the next counter values.
        let next = COUNTER.load(Ordering::Relaxed);
        for n in next..next + 50 {
            let id = format!("{T0:010}.P{}.Q{n:06}", std::process::id());
            fs::write(q.envelope_path(&id), "junk").unwrap();
        }
        let e = q
            .enqueue("s@x", &rcpts(&["a@x"]), b"m\n", false, T0)
            .unwrap();
        assert_eq!(
            fs::read_to_string(q.envelope_path(&e.id)).unwrap(),
            e.to_text()
        );
    }

    #[test]
    fn update_is_atomic_and_leaves_no_tmp() {
        let tmp = TempDir::new("update");
        let (q, _) = open(&tmp);
        let mut e = q
            .enqueue("s@x", &rcpts(&["a@x", "b@y"]), b"m\n", false, T0)
            .unwrap();
        e.recipients[0].state = RcptState::Delivered;
        e.recipients[0].attempts = 1;
        e.recipients[1].attempts = 1;
        e.recipients[1].next_try = T0 + 300;
        e.recipients[1].last_error = "mx.y: 451 4.7.1\r\nSubject: injected\0 try later".to_string();
        q.update(&e).unwrap();
        assert!(files(&q.dir().join(TMP_DIR)).is_empty());
        let loaded = q.load_all().entries;
        assert_eq!(loaded.len(), 1);
        let got = &loaded[0];
        assert_eq!(got.recipients[0].state, RcptState::Delivered);
        assert_eq!(
            got.recipients[1].last_error,
            "mx.y: 451 4.7.1 Subject: injected try later"
        );
        assert!(!got.due(T0 + 299) && got.due(T0 + 300));
        assert_eq!(got.next_due(), Some(T0 + 300));
        // Error line is bounded.
        e.recipients[1].last_error = "x".repeat(100_000);
        q.update(&e).unwrap();
        assert_eq!(
            q.load_all().entries[0].recipients[1].last_error.len(),
            MAX_ERROR_CHARS
        );
        // Address injection refused.
        e.recipients[1].address = "b@y\nstate: delivered".to_string();
        assert_eq!(
            q.update(&e).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn finish_and_remove() {
        let tmp = TempDir::new("remove");
        let (q, _) = open(&tmp);
        let mut e = q
            .enqueue("s@x", &rcpts(&["a@x", "b@y"]), b"m\n", false, T0)
            .unwrap();
        assert!(!e.is_finished());
        e.recipients[0].state = RcptState::Delivered;
        e.recipients[1].state = RcptState::Failed;
        assert!(e.is_finished() && !e.due(u64::MAX) && e.next_due().is_none());
        q.remove(&e.id).unwrap();
        assert_eq!(files(q.dir()), vec![CORRUPT_DIR, TMP_DIR]);
        // Idempotent, and an update after removal does not resurrect it.
        q.remove(&e.id).unwrap();
        assert_eq!(q.update(&e).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(files(q.dir()), vec![CORRUPT_DIR, TMP_DIR]);
        // Path tricks refused.
        assert_eq!(
            q.remove("../../etc/passwd").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn recovery_after_crashes() {
        let tmp = TempDir::new("crash");
        let (q, _) = open(&tmp);
        let good = q
            .enqueue("s@x", &rcpts(&["a@x"]), b"m\n", false, T0)
            .unwrap();
        let lost_msg = q
            .enqueue("s@x", &rcpts(&["a@x"]), b"m\n", false, T0)
            .unwrap();
        let truncated = q
            .enqueue("s@x", &rcpts(&["a@x", "b@x"]), b"m\n", false, T0)
            .unwrap();
        // Crash during enqueue: message written, envelope not.
        fs::write(q.message_path("1700000000.P1.Q000001"), "uncommitted\n").unwrap();
        // Damage: envelope without its message.
        fs::remove_file(q.message_path(&lost_msg.id)).unwrap();
        // Damage: envelope cut short after a whole recipient block.
        let text = truncated.to_text();
        let cut = text.find("recipient: b@x").unwrap();
        fs::write(q.envelope_path(&truncated.id), &text[..cut]).unwrap();
        // Crash during a durable write: junk in tmp/.
        fs::write(q.dir().join(TMP_DIR).join("half.env.3"), "id: half").unwrap();
        fs::write(q.dir().join(TMP_DIR).join("x.msg.9"), vec![0u8; 1000]).unwrap();
        // Something a human left.
        fs::write(q.dir().join("README"), "hi").unwrap();

        let (q, loaded) = open(&tmp);
        assert_eq!(loaded.entries, vec![good.clone()]);
        assert_eq!(loaded.problems.len(), 3, "{:?}", loaded.problems);
        assert!(loaded
            .problems
            .iter()
            .any(|p| p.contains(&lost_msg.id) && p.contains("missing")));
        assert!(loaded
            .problems
            .iter()
            .any(|p| p.contains(&truncated.id) && p.contains("cut short")));
        assert!(loaded.problems.iter().any(|p| p.contains("README")));
        assert!(files(&q.dir().join(TMP_DIR)).is_empty());
        let mut want = vec![
            CORRUPT_DIR.to_string(),
            "README".to_string(),
            format!("{}.env", good.id),
            format!("{}.msg", good.id),
            TMP_DIR.to_string(),
        ];
        want.sort();
        assert_eq!(files(q.dir()), want);
        let mut corrupt = vec![
            format!("{}.env", lost_msg.id),
            format!("{}.env", truncated.id),
            format!("{}.msg", truncated.id),
        ];
        corrupt.sort();
        assert_eq!(files(&q.dir().join(CORRUPT_DIR)), corrupt);

        // Crash between removing the envelope and the message.
        fs::remove_file(q.envelope_path(&good.id)).unwrap();
        let (q, loaded) = open(&tmp);
        assert!(loaded.entries.is_empty());
        assert!(!q.message_path(&good.id).exists());

        // Crash after the final update, before remove: recovery finishes it.
        let mut done = q
            .enqueue("s@x", &rcpts(&["a@x", "b@x"]), b"m\n", false, T0)
            .unwrap();
        done.recipients[0].state = RcptState::Delivered;
        done.recipients[1].state = RcptState::Failed;
        q.update(&done).unwrap();
        let (q, loaded) = open(&tmp);
        assert!(
            loaded.entries.is_empty() && loaded.problems.iter().all(|p| p.contains("README")),
            "{:?}",
            loaded.problems
        );
        assert!(!q.message_path(&done.id).exists() && !q.envelope_path(&done.id).exists());

        // The same damage again does not overwrite what corrupt/ holds.
        fs::write(q.envelope_path(&lost_msg.id), "junk").unwrap();
        let (q, _) = open(&tmp);
        assert_eq!(files(&q.dir().join(CORRUPT_DIR)).len(), 4);
    }

    #[test]
    fn junk_envelopes_never_panic() {
        let tmp = TempDir::new("junk");
        let (q, _) = open(&tmp);
        let good = q
            .enqueue("s@x", &rcpts(&["a@x"]), b"m\n", false, T0)
            .unwrap();
        let text = good.to_text();
        // A tiny deterministic PRNG (xorshift) for random bytes.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut random = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        let mut junk: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\n\n\n".to_vec(),
            b"end\n".to_vec(),
            b"id: x\nend\n".to_vec(),
            text.replace("attempts: 0", "attempts: 99999999999")
                .into_bytes(),
            text.replace("attempts: 0", "attempts: -1").into_bytes(),
            text.replace("state: pending", "state: PENDING")
                .into_bytes(),
            text.replace("smtputf8: no", "smtputf8: maybe").into_bytes(),
            text.replace("end\n", "end\nmore\n").into_bytes(),
            format!("{text}{text}").into_bytes(),
            text.replace("recipient: a@x\n", "").into_bytes(),
            text.replace("\n", "\r\n")
                .replace("end\r\n", "")
                .into_bytes(),
            vec![0xff; 100],
            vec![b'a'; MAX_ENVELOPE_BYTES as usize + 10],
        ];
        for len in [1, 7, 100, 4096] {
            junk.push(random(len));
        }
        for cut in 0..text.len() - 1 {
            junk.push(text.as_bytes()[..cut].to_vec());
        }
        let mut bad_ids = Vec::new();
        for (i, bytes) in junk.iter().enumerate() {
            let id = format!("{T0:010}.junk{i}");
            fs::write(q.envelope_path(&id), bytes).unwrap();
            fs::write(q.message_path(&id), "m\n").unwrap();
            bad_ids.push(id);
        }
        let loaded = q.load_all();
        assert_eq!(loaded.entries, vec![good.clone()]);
        assert_eq!(loaded.problems.len(), junk.len());
        let (q, recovered) = open(&tmp);
        assert_eq!(recovered.entries, vec![good]);
        assert_eq!(files(&q.dir().join(CORRUPT_DIR)).len(), 2 * junk.len());
    }

    #[test]
    fn parse_accepts_unknown_keys_and_missing_last_error() {
        let text = "id: 1.P1.Q1\ncreated: 5\nsender: \nsmtputf8: no\nfuture: thing\n\
                    recipient: a@x\nstate: failed\nattempts: 3\nnext_try: 9\nhint: x\nend\n";
        let e = QueueEntry::parse(text).unwrap();
        assert_eq!(e.sender, "");
        assert_eq!(e.recipients[0].state, RcptState::Failed);
        assert_eq!(e.recipients[0].last_error, "");
        // The same without the space after the colon.
        let e2 = QueueEntry::parse(&text.replace(": ", ":")).unwrap();
        assert_eq!(e2, e);
    }

    #[test]
    fn load_all_on_missing_dir_is_empty() {
        let tmp = TempDir::new("missing");
        let loaded = Queue::at(&tmp.0).load_all();
        assert!(loaded.entries.is_empty() && loaded.problems.is_empty());
        assert!(
            !tmp.0.join(QUEUE_DIR).exists(),
            "the CLI view creates nothing"
        );
    }

    #[test]
    fn write_durable_semantics() {
        let tmp = TempDir::new("durable");
        let tmp_file = tmp.0.join("t");
        let final_file = tmp.0.join("f");
        write_durable(&tmp_file, &final_file, b"one").unwrap();
        assert_eq!(fs::read(&final_file).unwrap(), b"one");
        assert!(!tmp_file.exists());
        // An existing tmp is refused (O_EXCL) and not removed: it is not ours.
        fs::write(&tmp_file, "someone else's").unwrap();
        assert_eq!(
            write_durable(&tmp_file, &final_file, b"two")
                .unwrap_err()
                .kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read(&tmp_file).unwrap(), b"someone else's");
        assert_eq!(fs::read(&final_file).unwrap(), b"one");
        fs::remove_file(&tmp_file).unwrap();
        // A failing rename removes our tmp.
        let into_missing = tmp.0.join("no-such-dir").join("f");
        assert!(write_durable(&tmp_file, &into_missing, b"three").is_err());
        assert!(!tmp_file.exists());
    }

    #[test]
    fn crlf_conversion() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a\r\nb\r\n", b"a\nb\n"),
            (b"a\nb\n", b"a\nb\n"),
            (b"a\rb\r", b"a\rb\r"),
            (b"\r\r\n\n", b"\r\n\n"),
            (b"\r", b"\r"),
            (b"\xff\r\n\x00", b"\xff\n\x00"),
        ];
        // Stored as Maildir copies are (one conversion: maildir::write_lf).
        let tmp = TempDir::new("crlf");
        let (q, _) = open(&tmp);
        for (input, want) in cases {
            let e = q
                .enqueue("s@x", &rcpts(&["a@x"]), input, false, T0)
                .unwrap();
            let stored = fs::read(q.message_path(&e.id)).unwrap();
            assert_eq!(&stored, want, "{input:?}");
        }
    }

    #[test]
    fn human_durations() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (300, "5m"),
            (3599, "59m"),
            (7200, "2h"),
            (86_399, "23h"),
            (259_200, "3d"),
            (u64::MAX, "213503982334601d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want);
        }
    }

    #[test]
    fn listing() {
        assert_eq!(format_listing(&[], T0), "Outbox is empty\n");
        let rcpt = |address: &str, state, attempts, next_try, last_error: &str| RecipientState {
            address: address.to_string(),
            state,
            attempts,
            next_try,
            last_error: last_error.to_string(),
        };
        let entries = vec![
            QueueEntry {
                id: "1700000290.P7.Q000002".to_string(),
                created: T0 + 290,
                sender: String::new(),
                smtputf8: false,
                recipients: vec![rcpt("bob@x.example", RcptState::Pending, 0, T0 + 290, "")],
            },
            QueueEntry {
                id: "1699992800.P7.Q000001".to_string(),
                created: T0 - 7200,
                sender: "alice@example.test".to_string(),
                smtputf8: true,
                recipients: vec![
                    rcpt(
                        "a@y.example",
                        RcptState::Pending,
                        3,
                        T0 + 1200,
                        "mx.y.example: 451 4.7.1\r\n\x1b[2J later",
                    ),
                    rcpt("b@y.example", RcptState::Delivered, 1, T0, ""),
                    rcpt(
                        "c@y.example",
                        RcptState::Failed,
                        1,
                        T0,
                        "mx.y.example: 550 5.1.1 no such user",
                    ),
                ],
            },
        ];
        let want = "\
1699992800.P7.Q000001  age 2h  from <alice@example.test>  (SMTPUTF8)
    <a@y.example>  pending, 3 attempts, next try in 10m
        last error: mx.y.example: 451 4.7.1 [2J later
    <b@y.example>  delivered
    <c@y.example>  failed after 1 attempt
        last error: mx.y.example: 550 5.1.1 no such user
1700000290.P7.Q000002  age 5m  from <>
    <bob@x.example>  pending, 0 attempts, next try now
2 messages in queue
";
        assert_eq!(format_listing(&entries, T0 + 600), want);
        assert!(format_listing(&entries[..1], T0).ends_with("\n1 message in queue\n"));
    }
}

#[cfg(test)]
mod one_line_tests {
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
