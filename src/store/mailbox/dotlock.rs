//! Dovecot's dotlock (lib/file-dotlock.c), for `dovecot-uidlist.lock`:
//! the lock is the file `PATH.lock`, made with O_EXCL (Dovecot's default
//! `dotlock_use_excl = yes`) and holding `PID:HOSTNAME`. A lock is stale
//! when its holder is a process of this host that no longer exists (only
//! checked once the lock is older than 2 s, as Dovecot does), or when
//! neither it nor the file it protects changed for the stale timeout
//! (120 s for the uidlist). Released by unlinking it.
//!
//! Threads of this process share one PID, so a table of the locks this
//! process holds ([`LockTable`]) stands in front of the file: two workers
//! never both take a lock, and a lock file with our PID that no thread
//! holds is left over from an earlier process with the same PID, hence
//! stale. The server makes one table and lends it to every mailbox it
//! opens (`Services::mailbox_locks`); two tables in one process would
//! each take the other's locks for stale ones.
//!
//! Must not: be held across anything but the short file work it guards;
//! block the event loop (it sleeps while waiting: workers only).

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT (maildir-uidlist.h).
pub const UIDLIST_STALE: Duration = Duration::from_secs(120);
/// Dovecot waits stale timeout + 2 s before giving up.
pub const UIDLIST_WAIT: Duration = Duration::from_secs(122);
/// STALE_PID_CHECK_SECS: a younger lock's PID is not checked.
const PID_CHECK_AGE: Duration = Duration::from_secs(2);
/// Dovecot's wait between checks: 0.1 .. 0.2 s growing to at most 3 s.
const FIRST_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(3);

/// The lock files this process holds, and a wake-up for threads
/// waiting for one of them.
#[derive(Debug, Default)]
pub struct LockTable {
    held: Mutex<HashSet<PathBuf>>,
    released: Condvar,
}

impl LockTable {
    /// The table a process shares between all its mailboxes.
    pub fn shared() -> Arc<LockTable> {
        Arc::new(LockTable::default())
    }

    /// Take `lock_path` in this process, waiting until `deadline`.
    fn enter(&self, lock_path: &Path, deadline: Instant) -> io::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.contains(lock_path) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "lock busy"));
            }
            held = self
                .released
                .wait_timeout(held, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        held.insert(lock_path.to_path_buf());
        Ok(())
    }

    fn leave(&self, lock_path: &Path) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.remove(lock_path);
        self.released.notify_all();
    }
}

/// The table unit tests share: they are threads of one process, as the
/// server's workers are.
#[cfg(test)]
pub(crate) fn test_table() -> Arc<LockTable> {
    static TABLE: std::sync::OnceLock<Arc<LockTable>> = std::sync::OnceLock::new();
    Arc::clone(TABLE.get_or_init(LockTable::shared))
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct Dotlock {
    lock_path: PathBuf,
    ino: u64,
    table: Arc<LockTable>,
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates
    // on success when the name fits (we leave the last byte zero).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    String::from_utf8_lossy(buf.get(..end).unwrap_or(&[])).into_owned()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

impl Dotlock {
    /// Lock `path` (the lock file is `path.lock`), waiting up to `wait`.
    /// `ErrorKind::WouldBlock` when the lock stays busy.
    pub fn acquire(
        table: &Arc<LockTable>,
        path: &Path,
        stale: Duration,
        wait: Duration,
    ) -> io::Result<Dotlock> {
        let mut lock_os = path.as_os_str().to_owned();
        lock_os.push(".lock");
        let lock_path = PathBuf::from(lock_os);
        let deadline = Instant::now() + wait;
        // In-process first.
        table.enter(&lock_path, deadline)?;
        match Self::acquire_file(path, &lock_path, stale, deadline) {
            Ok(ino) => Ok(Dotlock {
                lock_path,
                ino,
                table: Arc::clone(table),
            }),
            Err(e) => {
                table.leave(&lock_path);
                Err(e)
            }
        }
    }

    fn acquire_file(
        path: &Path,
        lock_path: &Path,
        stale: Duration,
        deadline: Instant,
    ) -> io::Result<u64> {
        let me = format!("{}:{}", std::process::id(), hostname());
        let mut wait = FIRST_WAIT;
        // What we saw of the lock and of the protected file, for staleness.
        let mut seen: Option<(u64, i64, i64)> = None;
        let mut last_change = Instant::now();
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(lock_path)
            {
                Ok(mut f) => {
                    // An empty lock is still a lock (Dovecot truncates on
                    // a failed write); the PID only helps stale detection.
                    let _ = f.write_all(me.as_bytes());
                    return Ok(f.metadata()?.ino());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let meta = match fs::symlink_metadata(lock_path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let file_m = fs::metadata(path).map(|m| m.mtime()).unwrap_or(0);
            let now_seen = (meta.ino(), meta.mtime(), file_m);
            if seen != Some(now_seen) {
                seen = Some(now_seen);
                last_change = Instant::now();
            }
            let age = SystemTime::now()
                .duration_since(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH))
                .unwrap_or_default();
            let dead_holder = age >= PID_CHECK_AGE && holder_is_dead(lock_path, &me);
            if dead_holder || last_change.elapsed() > stale {
                log::warn!("overriding stale lock {}", lock_path.display());
                match fs::remove_file(lock_path) {
                    Ok(()) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is held by another process", lock_path.display()),
                ));
            }
            std::thread::sleep(wait.min(left));
            wait = (wait + wait / 2).min(MAX_WAIT);
        }
    }

    pub fn path(&self) -> &Path {
        &self.lock_path
    }
}

/// `PID:HOST` of this host whose process is gone, or our own PID on a
/// lock no thread of ours holds (we hold the in-process entry now).
fn holder_is_dead(lock_path: &Path, me: &str) -> bool {
    let mut s = String::new();
    if fs::File::open(lock_path)
        .and_then(|f| f.take(512).read_to_string(&mut s))
        .is_err()
    {
        return false;
    }
    let s = s.trim_end_matches('\n');
    if s == me {
        return true;
    }
    let Some((pid, host)) = s.split_once(':') else {
        return false;
    };
    if host != hostname() {
        return false;
    }
    match pid.parse::<i32>() {
        Ok(pid) if pid > 0 => !pid_alive(pid),
        _ => false,
    }
}

impl Drop for Dotlock {
    fn drop(&mut self) {
        // Only remove the file if it is still ours (not overridden).
        if let Ok(m) = fs::symlink_metadata(&self.lock_path) {
            if m.ino() == self.ino {
                if let Err(e) = fs::remove_file(&self.lock_path) {
                    log::error!("unlock {}: {e}", self.lock_path.display());
                }
            } else {
                log::warn!("lock {} was overridden", self.lock_path.display());
            }
        }
        self.table.leave(&self.lock_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;

    #[test]
    fn exclusive_between_threads_and_released_on_drop() {
        let t = TempDir::new("dotlock");
        let p = t.path().join("dovecot-uidlist");
        let table = LockTable::shared();
        let l = Dotlock::acquire(&table, &p, UIDLIST_STALE, Duration::ZERO).unwrap();
        let content = fs::read_to_string(l.path()).unwrap();
        assert!(content.starts_with(&format!("{}:", std::process::id())));
        let (p2, table2) = (p.clone(), Arc::clone(&table));
        let busy = std::thread::spawn(move || {
            Dotlock::acquire(&table2, &p2, UIDLIST_STALE, Duration::from_millis(50)).map(|_| ())
        })
        .join()
        .unwrap();
        assert_eq!(busy.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let (p3, table3) = (p.clone(), Arc::clone(&table));
        let waiter = std::thread::spawn(move || {
            Dotlock::acquire(&table3, &p3, UIDLIST_STALE, Duration::from_secs(5)).map(|_| ())
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(l);
        waiter.join().unwrap().unwrap();
        assert!(!t.path().join("dovecot-uidlist.lock").exists());
    }

    #[test]
    fn stale_locks_are_overridden_live_ones_are_not() {
        let t = TempDir::new("dotlock-stale");
        let p = t.path().join("dovecot-uidlist");
        let lock = t.path().join("dovecot-uidlist.lock");
        let old = SystemTime::now() - Duration::from_secs(10);
        let table = LockTable::shared();
        // A dead process of this host (PID far above pid_max).
        fs::write(&lock, format!("2147483000:{}", hostname())).unwrap();
        fs::File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        drop(Dotlock::acquire(&table, &p, UIDLIST_STALE, Duration::from_secs(2)).unwrap());
        // A live one (PID 1) on this host, fresh: stays.
        fs::write(&lock, format!("1:{}", hostname())).unwrap();
        let err =
            Dotlock::acquire(&table, &p, UIDLIST_STALE, Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(lock.exists());
        // Another host's lock unchanged past the stale timeout: overridden.
        fs::write(&lock, "1:otherhost").unwrap();
        drop(
            Dotlock::acquire(
                &table,
                &p,
                Duration::from_millis(200),
                Duration::from_secs(3),
            )
            .unwrap(),
        );
        assert!(!lock.exists());
    }

    /// A lock file with our PID that this process's table does not hold
    /// is a leftover of an earlier process with the same PID: overridden
    /// once it is old enough to have its PID checked.
    #[test]
    fn our_pid_on_a_lock_no_thread_holds_is_stale() {
        let t = TempDir::new("dotlock-own-pid");
        let p = t.path().join("dovecot-uidlist");
        let lock = t.path().join("dovecot-uidlist.lock");
        fs::write(&lock, format!("{}:{}", std::process::id(), hostname())).unwrap();
        fs::File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(10))
            .unwrap();
        let table = LockTable::shared();
        drop(Dotlock::acquire(&table, &p, UIDLIST_STALE, Duration::from_secs(2)).unwrap());
        assert!(!lock.exists());
    }
}
