//! Talking to the running server: the pid file and the requests that
//! `mailgate flush` and `mailgate fetch` send.
//!
//! `data_dir/mailgate.pid` holds the pid and stays locked (flock) while the
//! server runs, so a second `serve` on the same data_dir refuses to start
//! and `flush`/`fetch` can tell a live server from a stale file. Requests
//! are signals: SIGUSR1 means "look at the outbox" (and retry everything
//! when `data_dir/flush.request` exists), SIGUSR2 means "run SmartPop",
//! with the account (or `*`) in `data_dir/fetch.request`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

pub const PID_FILE: &str = "mailgate.pid";
pub const FETCH_REQUEST: &str = "fetch.request";
pub const FLUSH_REQUEST: &str = "flush.request";

pub enum Request {
    /// `mailgate flush`: retry every queued message now.
    Flush,
    /// New mail in the queue (from `sendmail`): look at it, leaving the
    /// retry times of older mail alone.
    Rescan,
    /// One account, or all of them.
    Fetch(Option<String>),
}

/// The locked pid file of a running server; removed when dropped.
pub struct PidFile {
    path: PathBuf,
    _file: File,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The signals that [`request`] sends to the pid it reads from the file.
const REQUEST_SIGNALS: [libc::c_int; 2] = [libc::SIGUSR1, libc::SIGUSR2];

/// Call first thing in `serve`, before any handler is installed.
///
/// Once our pid is in the pid file, [`request`]'s SIGUSR1/SIGUSR2 may
/// come, and their default action is to terminate. Depending on the
/// start-up order the event loop installs its handlers after the pid file
/// is written, so a `sendmail` or `flush` in between used to kill a
/// server that was just starting. The two are ignored from here on; the
/// event loop's handlers replace that (so this must never run after them:
/// it would silence them). A request lost this way costs nothing: a
/// starting server scans its queue and polls anyway.
pub fn ignore_requests_until_ready() {
    for sig in REQUEST_SIGNALS {
        // SAFETY: installing SIG_IGN for a signal that has no handler yet
        // has no memory-safety preconditions; a later sigaction (the
        // event loop's) replaces it.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// Takes the pid file lock for `serve`.
pub fn lock_pid_file(data_dir: &Path) -> Result<PidFile, String> {
    let path = data_dir.join(PID_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if !try_lock(&file) {
        let pid = read_pid(&mut file)
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default();
        return Err(format!(
            "another mailgate is already serving {}{pid}",
            data_dir.display()
        ));
    }
    file.set_len(0)
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(PidFile { path, _file: file })
}

/// Sends `req` to the server running on `data_dir`.
pub fn request(data_dir: &Path, req: Request) -> Result<(), String> {
    let path = data_dir.join(PID_FILE);
    let no_server = || format!("no mailgate server is running on {}", data_dir.display());
    let mut file = File::open(&path).map_err(|_| no_server())?;
    if try_lock(&file) {
        // We could take the lock, so nobody holds it: a stale pid file.
        return Err(no_server());
    }
    let pid = read_pid(&mut file).ok_or_else(no_server)?;
    let signal = match req {
        Request::Flush => {
            std::fs::write(data_dir.join(FLUSH_REQUEST), b"flush\n")
                .map_err(|e| format!("cannot write the flush request: {e}"))?;
            libc::SIGUSR1
        }
        Request::Rescan => libc::SIGUSR1,
        Request::Fetch(account) => {
            let what = account.unwrap_or_else(|| "*".to_string());
            let tmp = data_dir.join(format!("{FETCH_REQUEST}.{}", std::process::id()));
            std::fs::write(&tmp, format!("{what}\n"))
                .and_then(|_| std::fs::rename(&tmp, data_dir.join(FETCH_REQUEST)))
                .map_err(|e| format!("cannot write the fetch request: {e}"))?;
            libc::SIGUSR2
        }
    };
    // SAFETY: kill(2) with a pid read from our own pid file and a constant
    // signal number has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        return Err(format!(
            "cannot signal the server (pid {pid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Was SIGUSR1 a flush (true) or only a rescan? Removes the request.
pub fn take_flush_request(data_dir: &Path) -> bool {
    std::fs::remove_file(data_dir.join(FLUSH_REQUEST)).is_ok()
}

/// Reads and removes the pending fetch request: Some(None) for all accounts.
pub fn take_fetch_request(data_dir: &Path) -> Option<Option<String>> {
    let path = data_dir.join(FETCH_REQUEST);
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    let what = text.trim();
    if what.is_empty() || what == "*" {
        Some(None)
    } else {
        Some(Some(what.to_string()))
    }
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock(2) on a valid, owned descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn read_pid(file: &mut File) -> Option<i32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|p: &i32| *p > 0)
}
