//! POP3 read-ahead: whole small messages read on a worker before the
//! client asks for them, so a client that RETRs message after message
//! (fetchmail, poplib, a pipelining client with 16 commands in flight)
//! is answered from memory instead of waiting one worker round trip per
//! message.
//!
//! Owns: which messages to read next (the ones after the last RETR, in
//! listing order), the bytes read so far, and the memory bound. Must not:
//! read files itself (the driver hands `Batch` to a worker) or know POP3.
//!
//! Why the next ones by number: every POP3 client that downloads reads
//! the listing and RETRs in order. A client that jumps around costs one
//! batch of wasted reads (at most `BUDGET` octets), never a wrong answer:
//! what is served from here is the file's bytes, and Maildir files are
//! never rewritten.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// At most this many octets of messages read ahead per session (three
/// batches of [`REFILL`]).
pub const BUDGET: u64 = 192 * 1024;

/// A batch is read once this much of the budget is free, so 4 KiB
/// messages come 16 to a worker job: at 32 KiB (8 per job) the worker
/// wake-ups and context switches cost pipelined RETR a quarter more CPU
/// per message (bench: 0.033 -> 0.028 ms, Dovecot 0.041). Two batches
/// are still held when the next is asked for: with one (a 128 KiB
/// budget) the loop sent what it held before the worker was back and
/// waited; paired, 10 pipelined sessions of 5000 RETRs were 1.11x and
/// 1.13x faster with two (every one of 16 pairs), 17.0 against 18.4 and
/// 14.0 against 15.7 us of server CPU a message.
const REFILL: u64 = 64 * 1024;

/// A batch has at most this many messages.
const MAX_BATCH: usize = 32;

/// What a worker is to read: (listing index, size counted, path).
pub struct Batch(Vec<(usize, u64, PathBuf)>);

/// What a worker read: each message whole, or nothing for one it could not
/// read (the normal path will then report the error on its RETR).
pub type BatchRead = Vec<(usize, u64, Option<Vec<u8>>)>;

impl Batch {
    /// Worker side: reads each file whole. A file that grew past what the
    /// listing said is not kept (the streaming path sends it).
    pub fn read(self, dir: &Path) -> BatchRead {
        // Opened relative to the mailbox directory, opened once per batch:
        // perf of pipelined RETR showed the walk of the whole path
        // (`link_path_walk`, `__d_lookup_rcu`) in 15.8% of the server's
        // samples, for the same few directories every time (11.2% after).
        // A directory that cannot be opened reads nothing: each RETR then
        // takes the normal path, which reports the error.
        let base = open_dir(dir);
        self.0
            .into_iter()
            .map(|(index, size, path)| {
                let file = base.as_ref().and_then(|base| open_under(base, &path));
                (index, size, file.and_then(|f| read_small(f, size)))
            })
            .collect()
    }
}

/// The directory, held (`O_PATH`) only to open the files under it.
fn open_dir(dir: &Path) -> Option<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .ok()
}

/// Opens `name` (relative, e.g. "cur/1700000000.M1P2.host,S=4096") under
/// `base` for reading: openat(2), which std does not offer.
fn open_under(base: &File, name: &Path) -> Option<File> {
    let name = CString::new(name.as_os_str().as_bytes()).ok()?;
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    // SAFETY: the directory descriptor and the NUL-terminated name are
    // valid for the whole call.
    let fd = unsafe { libc::openat(base.as_raw_fd(), name.as_ptr(), flags) };
    // SAFETY: a descriptor openat() just returned, owned by nothing else.
    (fd >= 0).then(|| File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `listed` is the listing's size, never below the file's (LF counts as
/// CRLF there): room for the whole file up front makes it one read and
/// the read that finds the end, where an empty Vec read through `Take`
/// would probe with reads of 32, 64, 128... octets (strace: 10 reads per
/// 4 KiB message).
fn read_small(file: File, listed: u64) -> Option<Vec<u8>> {
    let room = usize::try_from(listed.min(BUDGET) + 1).unwrap_or(0);
    let mut buf = Vec::with_capacity(room);
    // One octet more than the budget: a bigger file is not read ahead.
    file.take(BUDGET + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= BUDGET).then_some(buf)
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead::new()
    }
}

/// One session's read-ahead. The listing itself stays with the POP3 core;
/// calls that need it are given a lookup: index -> (path, size), with the
/// listing's (CRLF) size, a close enough measure of the file.
pub struct ReadAhead {
    /// Messages read, in index order, with the size they were counted at.
    ready: VecDeque<(usize, u64, Vec<u8>)>,
    /// Octets in `ready` plus those a worker is reading.
    held: u64,
    /// The first index not yet read or asked for.
    next: usize,
    /// A worker is reading a batch.
    in_flight: bool,
    /// The first index of the batch in flight (it ends before `next`).
    flight_from: usize,
}

impl ReadAhead {
    pub fn new() -> ReadAhead {
        ReadAhead {
            ready: VecDeque::new(),
            held: 0,
            next: usize::MAX,
            in_flight: false,
            flight_from: 0,
        }
    }

    /// The message at `index`, if it was read ahead. Messages before it
    /// are dropped (the client went past them).
    pub fn take(&mut self, index: usize) -> Option<Vec<u8>> {
        while let Some((i, _, _)) = self.ready.front() {
            if *i >= index {
                break;
            }
            self.drop_front();
        }
        match self.ready.front() {
            Some((i, _, _)) if *i == index => {
                let (_, size, bytes) = self.ready.pop_front()?;
                self.held = self.held.saturating_sub(size);
                Some(bytes)
            }
            _ => None,
        }
    }

    fn drop_front(&mut self) {
        if let Some((_, size, _)) = self.ready.pop_front() {
            self.held = self.held.saturating_sub(size);
        }
    }

    /// The client RETRs `index`: the batch to read next (the messages after
    /// it that fit in what is left of the budget), if one should be read now.
    pub fn after_retr(
        &mut self,
        index: usize,
        listing: impl Fn(usize) -> Option<(PathBuf, u64)>,
    ) -> Option<Batch> {
        if self.in_flight {
            return None;
        }
        let from = index + 1;
        if self.next == usize::MAX || from > self.next {
            // First RETR, or a jump past what was read: start over there.
            self.clear();
            self.next = from;
        }
        // Refill only when a batch's worth is free: one batch per
        // several messages, not one per message.
        if self.held > BUDGET - REFILL {
            return None;
        }
        let mut batch = Vec::new();
        let mut i = self.next;
        while batch.len() < MAX_BATCH {
            let Some((path, size)) = listing(i) else {
                break;
            };
            if self.held + size > BUDGET {
                break;
            }
            self.held += size;
            batch.push((i, size, path));
            i += 1;
        }
        if batch.is_empty() {
            return None;
        }
        self.flight_from = self.next;
        self.next = i;
        self.in_flight = true;
        Some(Batch(batch))
    }

    /// A worker is reading a batch (its completion is still to come).
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// The message at `index` is in the batch a worker is reading: better
    /// to wait for it than to read it a second time.
    pub fn coming(&self, index: usize) -> bool {
        self.in_flight && (self.flight_from..self.next).contains(&index)
    }

    /// A worker's batch came back.
    pub fn arrived(&mut self, read: BatchRead) {
        self.in_flight = false;
        for (index, size, bytes) in read {
            match bytes {
                Some(bytes) => self.ready.push_back((index, size, bytes)),
                None => self.held = self.held.saturating_sub(size),
            }
        }
    }

    /// Nothing is held or read for this session any more (it ends).
    pub fn clear(&mut self) {
        self.ready.clear();
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_in_the_batch_being_read_is_coming() {
        let sizes = [10u64; 8];
        let mut ra = ReadAhead::new();
        let batch = ra.after_retr(0, listing(&sizes)).unwrap();
        let indexes: Vec<usize> = batch.0.iter().map(|(i, _, _)| *i).collect();
        assert_eq!(indexes, (1..8).collect::<Vec<_>>());
        assert!(!ra.coming(0), "the RETR itself is read on its own");
        assert!(ra.coming(1) && ra.coming(7));
        assert!(!ra.coming(8));
        ra.arrived(
            indexes
                .iter()
                .map(|&i| (i, 10, Some(vec![i as u8])))
                .collect(),
        );
        assert!(!ra.coming(2), "arrived: taken, not awaited");
        assert_eq!(ra.take(2), Some(vec![2]));
    }

    fn listing(sizes: &[u64]) -> impl Fn(usize) -> Option<(PathBuf, u64)> + '_ {
        |i| {
            sizes
                .get(i)
                .map(|s| (PathBuf::from(format!("new/{i}")), *s))
        }
    }

    fn indexes(b: &Batch) -> Vec<usize> {
        b.0.iter().map(|(i, _, _)| *i).collect()
    }

    fn fake_read(b: Batch) -> BatchRead {
        b.0.into_iter()
            .map(|(i, s, _)| (i, s, Some(vec![i as u8])))
            .collect()
    }

    #[test]
    fn reads_the_following_messages_within_the_budget() {
        let sizes = &[BUDGET / 16; 40];
        let l = listing(sizes);
        let mut ra = ReadAhead::new();
        let b = ra.after_retr(0, &l).unwrap();
        // The budget holds 16 messages after the first.
        assert_eq!(indexes(&b), (1..=16).collect::<Vec<_>>());
        // One batch at a time.
        assert!(ra.after_retr(1, &l).is_none());
        ra.arrived(fake_read(b));
        for i in 1..=5 {
            assert_eq!(ra.take(i), Some(vec![i as u8]));
        }
        // 11 of 16 held: less than a batch's worth free, no new batch yet.
        assert!(ra.after_retr(5, &l).is_none());
        assert_eq!(ra.take(6), Some(vec![6]));
        // REFILL free: the next batch continues where the last ended and
        // fills the budget again.
        let b = ra.after_retr(6, &l).unwrap();
        assert_eq!(indexes(&b), (17..=22).collect::<Vec<_>>());
    }

    #[test]
    fn a_big_message_is_not_read_ahead() {
        let sizes = &[10, BUDGET + 1, 10];
        let l = listing(sizes);
        let mut ra = ReadAhead::new();
        assert!(ra.after_retr(0, &l).is_none());
        let b = ra.after_retr(1, &l).unwrap();
        assert_eq!(indexes(&b), vec![2]);
    }

    #[test]
    fn a_jump_starts_over_and_skipped_messages_are_dropped() {
        let sizes = &[1000; 100];
        let l = listing(sizes);
        let mut ra = ReadAhead::new();
        let b = ra.after_retr(0, &l).unwrap();
        ra.arrived(fake_read(b));
        // The client jumps to 50: what was read is dropped.
        assert_eq!(ra.take(50), None);
        let b = ra.after_retr(50, &l).unwrap();
        assert_eq!(indexes(&b)[0], 51);
        ra.arrived(fake_read(b));
        // Skipping 51 drops it and serves 52.
        assert_eq!(ra.take(52), Some(vec![52]));
        assert_eq!(ra.take(51), None);
    }

    #[test]
    fn an_unreadable_message_is_left_to_the_streaming_path() {
        let sizes = &[10; 4];
        let l = listing(sizes);
        let mut ra = ReadAhead::new();
        let b = ra.after_retr(0, &l).unwrap();
        let mut read = fake_read(b);
        read[0].2 = None;
        ra.arrived(read);
        assert_eq!(ra.take(1), None);
        assert_eq!(ra.take(2), Some(vec![2]));
    }

    #[test]
    fn last_message_has_nothing_after_it() {
        let sizes = &[10; 3];
        let l = listing(sizes);
        let mut ra = ReadAhead::new();
        assert!(ra.after_retr(2, &l).is_none());
    }

    #[test]
    fn worker_reads_small_files_whole_and_refuses_big_ones() {
        let dir = std::env::temp_dir().join(format!("mg-ahead-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("new")).unwrap();
        std::fs::write(dir.join("new/a"), b"hello").unwrap();
        std::fs::write(dir.join("new/b"), vec![b'x'; BUDGET as usize + 1]).unwrap();
        let got = Batch(vec![
            (0, 5, "new/a".into()),
            (1, 9, "new/b".into()),
            (2, 9, "new/gone".into()),
        ])
        .read(&dir);
        assert_eq!(
            got,
            vec![(0, 5, Some(b"hello".to_vec())), (1, 9, None), (2, 9, None)]
        );
        // The mailbox directory went away: nothing is read ahead.
        let got = Batch(vec![(0, 5, "new/a".into())]).read(&dir.join("gone"));
        assert_eq!(got, vec![(0, 5, None)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
