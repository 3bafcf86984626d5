//! One APPEND's message literal on its way to the disk: the bytes the
//! core hands out (`ImapEvent::AppendData`) are held while they are less
//! than a chunk, then written to a spool file in the mailbox's `tmp/` on
//! a worker, one write at a time; the driver reads no more from the
//! socket while a write is out, so an APPEND of any size holds at most a
//! chunk and a read. At the literal's end the store's append (which
//! fsyncs and publishes, `Folder::append`) takes the spool file and
//! removes it.
//!
//! Owns: the spool file (never left behind: a session that ends mid-APPEND
//! has it removed, now or when its write is back), and a failed write
//! (the rest of the literal is dropped, the command answered NO).
//! Must not: touch files itself (it describes the work as
//! [`AppendJob`]s, the driver runs them on workers), or know the socket.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::imap::parser::AppendHead;

/// Bytes held before they go to the spool file; a smaller message is
/// written in one go by the final job.
pub const APPEND_CHUNK: usize = 128 * 1024;

/// The spool file holds a mailbox's message: only its owner reads it.
const FILE_MODE: u32 = 0o600;

/// A spool file in the mailbox's `tmp/` (the literal as it came, CRLF;
/// the store converts it when it stages the message).
#[derive(Debug)]
pub struct AppendSpool {
    file: File,
    path: PathBuf,
}

impl AppendSpool {
    /// A new empty file under `root/tmp/`, never an existing one.
    pub fn create(root: &Path) -> io::Result<AppendSpool> {
        // Unique in the process (the counter) and across restarts (the
        // pid): two sessions may APPEND in the same instant.
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = root
            .join("tmp")
            .join(format!("imap-append.{}.{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)?;
        Ok(AppendSpool { file, path })
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn remove(self) {
        drop(self.file);
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Disk work for an APPEND, run on a worker.
#[derive(Debug)]
pub enum AppendJob {
    /// Append `bytes`, to a new spool file when `spool` is None.
    Write {
        spool: Option<AppendSpool>,
        root: PathBuf,
        bytes: Vec<u8>,
    },
    /// The message will not be stored: its file goes.
    Remove(AppendSpool),
}

impl AppendJob {
    /// Does the work; a write answers with the spool back (a failed one
    /// has removed its file).
    pub fn run(self) -> Option<io::Result<AppendSpool>> {
        match self {
            AppendJob::Write { spool, root, bytes } => Some(write_to(spool, &root, &bytes)),
            AppendJob::Remove(s) => {
                s.remove();
                None
            }
        }
    }
}

/// Writes `bytes` to `spool` (a new one under `root` if None); on failure
/// the file is removed.
pub fn write_to(spool: Option<AppendSpool>, root: &Path, bytes: &[u8]) -> io::Result<AppendSpool> {
    let mut s = match spool {
        Some(s) => s,
        None => AppendSpool::create(root)?,
    };
    match s.write(bytes) {
        Ok(()) => Ok(s),
        Err(e) => {
            log::error!("cannot write {}: {e}", s.path().display());
            s.remove();
            Err(e)
        }
    }
}

/// The whole literal is in: what the final job stores.
#[derive(Debug)]
pub struct AppendBody {
    pub head: AppendHead,
    /// The spool so far, if a chunk was written.
    pub spool: Option<AppendSpool>,
    /// The bytes after it.
    pub tail: Vec<u8>,
    /// A write failed: answer NO with this, store nothing.
    pub failed: Option<io::Error>,
}

/// The literal of the APPEND under way on one connection.
#[derive(Debug)]
pub struct AppendSink {
    head: AppendHead,
    root: PathBuf,
    mem: Vec<u8>,
    /// The spool file, while no worker has it.
    spool: Option<AppendSpool>,
    /// A write is on a worker.
    writing: bool,
    failed: Option<io::Error>,
    /// The literal ended while a write was out: finish when it is back.
    ended: bool,
    closed: bool,
}

/// What the driver does next.
#[derive(Debug)]
pub enum Next {
    Nothing,
    Job(AppendJob),
    /// The literal is complete: store it.
    Store(AppendBody),
}

impl AppendSink {
    pub fn new(head: AppendHead, root: PathBuf) -> AppendSink {
        AppendSink {
            head,
            root,
            mem: Vec::new(),
            spool: None,
            writing: false,
            failed: None,
            ended: false,
            closed: false,
        }
    }

    /// A write is out: the driver reads nothing more until it is back.
    pub fn busy(&self) -> bool {
        self.writing
    }

    /// The session gave it up.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The next bytes of the literal.
    pub fn data(&mut self, bytes: &[u8]) -> Next {
        if self.closed || self.failed.is_some() {
            // Dropped: the command is answered NO at its end.
            return Next::Nothing;
        }
        self.mem.extend_from_slice(bytes);
        self.write_job()
    }

    fn write_job(&mut self) -> Next {
        if self.writing || self.mem.len() < APPEND_CHUNK {
            return Next::Nothing;
        }
        self.writing = true;
        Next::Job(AppendJob::Write {
            spool: self.spool.take(),
            root: self.root.clone(),
            bytes: std::mem::take(&mut self.mem),
        })
    }

    /// The literal and its line are complete.
    pub fn end(&mut self) -> Next {
        if self.writing {
            self.ended = true;
            return Next::Nothing;
        }
        Next::Store(AppendBody {
            head: self.head.clone(),
            spool: self.spool.take(),
            tail: std::mem::take(&mut self.mem),
            failed: self.failed.take(),
        })
    }

    /// The write that was out came back.
    pub fn written(&mut self, r: io::Result<AppendSpool>) -> Next {
        self.writing = false;
        match r {
            Ok(s) if self.closed => return Next::Job(AppendJob::Remove(s)),
            Ok(s) => self.spool = Some(s),
            Err(e) => {
                self.failed = Some(e);
                self.mem = Vec::new();
            }
        }
        if self.closed {
            return Next::Nothing;
        }
        if self.ended {
            self.ended = false;
            return self.end();
        }
        self.write_job()
    }

    /// The session is over (or the command was abandoned): nothing is
    /// kept; the spool goes now, or when its write is back.
    pub fn close(&mut self) -> Option<AppendJob> {
        self.closed = true;
        self.mem = Vec::new();
        self.spool.take().map(AppendJob::Remove)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;

    fn head() -> AppendHead {
        AppendHead {
            tag: "a".into(),
            mailbox: crate::proto::imap::types::MailboxName::new("INBOX".into()),
            flags: vec![],
            date: None,
            size: 10,
            sync: true,
        }
    }

    fn files(t: &TempDir) -> usize {
        std::fs::read_dir(t.path().join("tmp")).unwrap().count()
    }

    fn run(n: Next) -> io::Result<AppendSpool> {
        match n {
            Next::Job(j) => j.run().unwrap(),
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn chunks_go_to_the_spool_one_write_at_a_time() {
        let t = TempDir::new("imap-append");
        std::fs::create_dir_all(t.path().join("tmp")).unwrap();
        let mut s = AppendSink::new(head(), t.path().to_path_buf());
        assert!(matches!(s.data(b"small"), Next::Nothing));
        let job = s.data(&vec![b'x'; APPEND_CHUNK]);
        assert!(s.busy());
        // More while the write is out is held, not a second write.
        assert!(matches!(s.data(b"more"), Next::Nothing));
        assert!(matches!(s.end(), Next::Nothing));
        let Next::Store(body) = s.written(run(job)) else {
            panic!("the end waited for the write");
        };
        assert_eq!(body.tail, b"more");
        let spool = body.spool.unwrap();
        assert_eq!(
            std::fs::metadata(spool.path()).unwrap().len(),
            5 + APPEND_CHUNK as u64
        );
        spool.remove();
        assert_eq!(files(&t), 0);
    }

    #[test]
    fn a_session_gone_mid_append_leaves_no_file() {
        let t = TempDir::new("imap-append");
        std::fs::create_dir_all(t.path().join("tmp")).unwrap();
        // Gone while no write is out.
        let mut s = AppendSink::new(head(), t.path().to_path_buf());
        let job = s.data(&vec![b'x'; APPEND_CHUNK]);
        assert!(matches!(s.written(run(job)), Next::Nothing));
        assert_eq!(files(&t), 1);
        s.close().unwrap().run();
        assert_eq!(files(&t), 0);
        // Gone while a write is out: removed when it is back.
        let mut s = AppendSink::new(head(), t.path().to_path_buf());
        let job = s.data(&vec![b'x'; APPEND_CHUNK]);
        assert!(s.close().is_none());
        let Next::Job(rm) = s.written(run(job)) else {
            panic!("the file must go");
        };
        rm.run();
        assert_eq!(files(&t), 0);
    }

    #[test]
    fn a_failed_write_drops_the_rest_and_reports() {
        let t = TempDir::new("imap-append");
        // No tmp/: the spool cannot be made.
        let mut s = AppendSink::new(head(), t.path().to_path_buf());
        let job = s.data(&vec![b'x'; APPEND_CHUNK]);
        assert!(matches!(s.written(run(job)), Next::Nothing));
        assert!(matches!(s.data(&vec![b'y'; APPEND_CHUNK]), Next::Nothing));
        let Next::Store(body) = s.end() else {
            panic!("no store");
        };
        assert!(body.failed.is_some() && body.spool.is_none() && body.tail.is_empty());
    }
}
