//! Durable writes, one way: write into a temporary file, fsync it, rename it
//! into place, fsync the folder that now names it. Maildir delivery, the
//! outbox queue and SmartPop's UIDL records all go through here, so a crash
//! at any moment leaves either the old state or the whole new file, never a
//! half file under a final name (qmail `maildir_child`, chasquid `safeio`).
//!
//! Must not: write a final path directly, or leave a partial temporary file
//! behind on error.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Files hold other people's mail: owner only.
pub const FILE_MODE: u32 = 0o600;
/// Folders likewise (Maildir convention: 0700).
pub const DIR_MODE: u32 = 0o700;
/// Write buffer: one `write(2)` covers the headers and a typical message.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// fsync a directory, making the names created or removed in it durable
/// (rename(2) and unlink(2) are only persistent once their folder is synced).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsync the folder holding `path`.
pub fn fsync_parent(path: &Path) -> io::Result<()> {
    fsync_dir(parent_of(path))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `mkdir -p` with mode [`DIR_MODE`], fsyncing the parent of every folder
/// it creates so the new folders survive a crash. Existing folders are left
/// as they are; a non-folder in the way is an error (`ENOTDIR`).
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    // Walk up to the first ancestor that exists, remembering what is missing.
    let mut missing = Vec::new();
    let mut cur = dir;
    let mut existing = None;
    loop {
        match fs::metadata(cur) {
            Ok(m) if m.is_dir() => {
                existing = Some(cur);
                break;
            }
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(cur);
                match cur.parent() {
                    Some(p) if !p.as_os_str().is_empty() => cur = p,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    // The ancestor we stopped at may have been made a moment ago by another
    // thread or process that has not yet synced its name (the first mail
    // to bob and to alice at once, both under mail/example.test/). Every
    // creator syncs each folder's name before making the next one below
    // it, so only this one name can be pending: sync it before building on
    // it. One fsync, on the slow path only (something was missing).
    if let (Some(existing), false) = (existing, missing.is_empty()) {
        fsync_parent(existing)?;
    }
    for d in missing.iter().rev() {
        match DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => {}
            // Another process made it first; it is still ours to sync below.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
        fsync_parent(d)?;
    }
    Ok(())
}

/// Create `tmp_path` (which must not exist: callers use unique names), let
/// `fill` write the contents through a buffered writer, flush and fsync.
/// On any error the temporary file is removed. The file is not yet visible
/// under its final name: follow with [`publish`] or use [`write_durable`].
pub fn write_synced<F>(tmp_path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    // O_EXCL: never clobber (or later remove) a file another writer owns.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(tmp_path)?;
    let result = (|| {
        let mut w = BufWriter::with_capacity(WRITE_BUFFER, file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp_path);
    }
    result
}

/// Rename a synced temporary file to its final name and fsync the final
/// folder. If the rename fails the temporary file is removed.
pub fn publish(tmp_path: &Path, final_path: &Path) -> io::Result<()> {
    if let Err(e) = fs::rename(tmp_path, final_path) {
        let _ = fs::remove_file(tmp_path);
        return Err(e);
    }
    fsync_parent(final_path)
}

/// The whole durable write: `parts` concatenated into `tmp_path`, fsynced,
/// renamed over `final_path` (atomically replacing an older version), and
/// the final folder fsynced. `tmp_path` must be on the same filesystem as
/// `final_path` and must not exist.
pub fn write_durable(tmp_path: &Path, final_path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    write_durable_with(tmp_path, final_path, |w| {
        parts.iter().try_for_each(|p| w.write_all(p))
    })
}

/// Like [`write_durable`], with the contents streamed by `fill` (which may
/// transform its input on the way, e.g. CRLF to LF).
pub fn write_durable_with<F>(tmp_path: &Path, final_path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    write_synced(tmp_path, fill)?;
    publish(tmp_path, final_path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh folder under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("mailgate-test-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn writes_parts_and_replaces() {
        let t = TempDir::new("durable");
        let tmp = t.path().join("x.tmp");
        let fin = t.path().join("x");
        write_durable(&tmp, &fin, &[b"hello ", b"", b"world"]).unwrap();
        assert_eq!(fs::read(&fin).unwrap(), b"hello world");
        assert!(!tmp.exists());
        let mode = fs::metadata(&fin).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
        // A second write atomically replaces the first.
        write_durable(&tmp, &fin, &[b"v2"]).unwrap();
        assert_eq!(fs::read(&fin).unwrap(), b"v2");
    }

    #[test]
    fn failing_fill_leaves_nothing() {
        let t = TempDir::new("durable-fail");
        let tmp = t.path().join("x.tmp");
        let fin = t.path().join("x");
        let err = write_durable_with(&tmp, &fin, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert!(!tmp.exists());
        assert!(!fin.exists());
    }

    #[test]
    fn existing_tmp_is_not_clobbered_or_removed() {
        let t = TempDir::new("durable-excl");
        let tmp = t.path().join("x.tmp");
        fs::write(&tmp, b"someone else's").unwrap();
        let err = write_durable(&tmp, &t.path().join("x"), &[b"mine"]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&tmp).unwrap(), b"someone else's");
    }

    #[test]
    fn rename_failure_removes_tmp() {
        let t = TempDir::new("durable-rename");
        let tmp = t.path().join("x.tmp");
        // The final name is a non-empty folder: rename(2) refuses.
        let fin = t.path().join("dir");
        fs::create_dir_all(fin.join("inside")).unwrap();
        assert!(write_durable(&tmp, &fin, &[b"x"]).is_err());
        assert!(!tmp.exists());
    }

    #[test]
    fn create_dir_all_durable_cases() {
        let t = TempDir::new("durable-mkdir");
        let deep = t.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        let mode = fs::metadata(&deep).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, DIR_MODE);
        // Idempotent.
        create_dir_all_durable(&deep).unwrap();
        // A file in the way.
        fs::write(t.path().join("file"), b"").unwrap();
        let err = create_dir_all_durable(&t.path().join("file/sub")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
    }
}
