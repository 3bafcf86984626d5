//! The SMTP intake spool: `data_dir/spool/`, where the body of a message
//! too big to keep in memory is written as it arrives, before the
//! delivery copies it into each mailbox and the queue.
//!
//! Owns: the folder (made, and emptied of what a crash left, at start-up),
//! one file per message body under way, written in the stored form (LF
//! line ends: the one `maildir::CrlfToLf` conversion, so DATA and BDAT
//! bodies end up alike), its sizes (`S`, and `W = S + LFs`), reading it
//! back, and removing it.
//! Must not: fsync (a spool file is not a copy anyone was promised; the
//! copies made from it are durable), or run on the event-loop thread.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::durable::{self, FILE_MODE};
use crate::store::maildir::CrlfToLf;

/// The folder under `data_dir`.
pub const SPOOL_DIR: &str = "spool";

/// The spool folder of `data_dir`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SPOOL_DIR)
}

/// At start-up, before any connection: makes the folder, and removes
/// every file in it (bodies of transactions a crash or a kill cut short:
/// none of them was answered 250, so the clients still have them).
/// Returns how many were removed.
pub fn prepare(data_dir: &Path) -> io::Result<usize> {
    let dir = dir(data_dir);
    durable::create_dir_all_durable(&dir)?;
    let mut removed = 0;
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// A body being written: the open file, the conversion state (a CR at the
/// end of one chunk waits for the next), and the sizes so far. Travels to
/// a worker for each write and comes back with the result.
#[derive(Debug)]
pub struct SpoolWriter {
    file: File,
    path: PathBuf,
    conv: CrlfToLf,
    /// Octets on disk (LF line ends).
    size: u64,
    /// LFs on disk: the wire form is `size + lfs` octets.
    lfs: u64,
    /// Reused between writes: the converted chunk.
    buf: Vec<u8>,
}

/// A unique name: the process, and a counter (the folder is ours alone).
fn new_path(data_dir: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    dir(data_dir).join(format!("{}.{n}", std::process::id()))
}

impl SpoolWriter {
    /// A new empty spool file (mode 0600, never an existing one).
    pub fn create(data_dir: &Path) -> io::Result<SpoolWriter> {
        let path = new_path(data_dir);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)?;
        Ok(SpoolWriter {
            file,
            path,
            conv: CrlfToLf::default(),
            size: 0,
            lfs: 0,
            buf: Vec::new(),
        })
    }

    /// Appends the next wire bytes of the body (CRLF line ends), stored
    /// with LF line ends.
    pub fn write(&mut self, wire: &[u8]) -> io::Result<()> {
        self.buf.clear();
        let buf = &mut self.buf;
        self.conv.feed(wire, &mut |b: &[u8]| {
            buf.extend_from_slice(b);
            Ok(())
        })?;
        self.append()
    }

    fn append(&mut self) -> io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.size += self.buf.len() as u64;
        self.lfs += self.buf.iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(())
    }

    /// The body is complete: a CR held back at its very end is written.
    pub fn finish(mut self) -> io::Result<Spooled> {
        self.buf.clear();
        let buf = &mut self.buf;
        self.conv.finish(&mut |b: &[u8]| {
            buf.extend_from_slice(b);
            Ok(())
        })?;
        self.append()?;
        Ok(Spooled {
            file: self.file,
            path: self.path,
            size: self.size,
            lfs: self.lfs,
        })
    }

    /// The body will not be delivered: its file goes.
    pub fn remove(self) {
        remove_file(&self.path);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A complete body in the spool, in the stored form.
#[derive(Debug)]
pub struct Spooled {
    file: File,
    path: PathBuf,
    size: u64,
    lfs: u64,
}

impl Spooled {
    /// Octets on disk, and on the wire (CRLF line ends).
    pub fn sizes(&self) -> (u64, u64) {
        (self.size, self.size + self.lfs)
    }

    /// Reads into `buf` from `offset`; 0 at the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Copies the whole body to `w`, as stored.
    pub fn copy_to(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut buf = vec![0u8; durable::WRITE_BUFFER];
        let mut offset = 0u64;
        while offset < self.size {
            let n = self.read_at(&mut buf, offset)?;
            if n == 0 {
                // Shorter than written: someone truncated our file.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} is shorter than written", self.path.display()),
                ));
            }
            let want = usize::try_from(self.size - offset).unwrap_or(usize::MAX);
            w.write_all(buf.get(..n.min(want)).unwrap_or_default())?;
            offset += n as u64;
        }
        Ok(())
    }

    /// Delivered (or refused): the file goes.
    pub fn remove(self) {
        remove_file(&self.path);
    }
}

/// Removes a spool file; a failure is logged (the next start-up removes
/// what is left).
fn remove_file(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::error!("cannot remove spool file {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;
    use crate::store::maildir;

    #[test]
    fn writes_stored_form_across_chunks() {
        let t = TempDir::new("spool");
        prepare(t.path()).unwrap();
        // A CRLF cut between two writes, a bare CR, a CR at the very end.
        let chunks: &[&[u8]] = &[b"a\r", b"\nb\rc\r\n", b"", b"d\r"];
        let mut w = SpoolWriter::create(t.path()).unwrap();
        for c in chunks {
            w.write(c).unwrap();
        }
        let path = w.path().to_path_buf();
        let s = w.finish().unwrap();
        let wire: Vec<u8> = chunks.concat();
        assert_eq!(s.sizes(), maildir::lf_sizes(&[&wire]));
        let mut stored = Vec::new();
        s.copy_to(&mut stored).unwrap();
        let mut want = Vec::new();
        maildir::write_lf(&mut want, &[&wire]).unwrap();
        assert_eq!(stored, want);
        assert_eq!(fs::read(&path).unwrap(), want);
        s.remove();
        assert!(!path.exists());
    }

    #[test]
    fn prepare_empties_what_a_crash_left() {
        let t = TempDir::new("spool-prepare");
        prepare(t.path()).unwrap();
        let w = SpoolWriter::create(t.path()).unwrap();
        let left = w.path().to_path_buf();
        drop(w);
        fs::write(dir(t.path()).join("999.1"), b"old").unwrap();
        assert_eq!(prepare(t.path()).unwrap(), 2);
        assert!(!left.exists());
        assert_eq!(fs::read_dir(dir(t.path())).unwrap().count(), 0);
        // A removed writer leaves nothing either.
        let w = SpoolWriter::create(t.path()).unwrap();
        let p = w.path().to_path_buf();
        w.remove();
        assert!(!p.exists());
    }
}
