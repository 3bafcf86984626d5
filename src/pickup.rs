//! The maildrop: how `sendmail` run by any local user hands a message to
//! the server without being able to write the queue or the mailboxes.
//!
//! Postfix's design (postdrop, maildrop/, pickup) without a setgid binary:
//! the maildrop folder (`[server] maildrop`) is mode 3733, owned by the
//! server's user and group. Anyone may create a file in it (`-wx` for
//! others) but nobody else may list it (no `r`); the sticky bit keeps users
//! from removing or renaming each other's files; the setgid bit gives every
//! new file the server's group whatever the writer's groups are, so a file
//! written 0640 is readable by its writer and the server and nobody else.
//!
//! Owns: the folder's layout and modes (`prepare`), the drop-file format
//! (`encode`/`decode`, text envelope lines then the message), writing one
//! durably (`drop_message`: temp name, fsync, rename, fsync) and the bell
//! (a datagram socket in the folder; a local user cannot signal the
//! server's process, the way Postfix's postdrop writes to public/pickup);
//! on the server: the bell's listener thread and `pick_up`, which reads
//! each file as hostile input, injects it through `delivery` and removes it
//! only once it is delivered or queued. A bad file moves to `rejected/`.
//!
//! Must not: run on the event loop thread (`pick_up` is a worker job; the
//! bell thread only turns a datagram into our own SIGUSR1), trust anything
//! in a file but its owner's uid (from fstat), or deliver any other way
//! than `delivery::accept`.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use log::{info, warn};

use crate::config::Config;
pub use crate::dropfile::SCAN_INTERVAL;
use crate::dropfile::{
    decode, is_final_name, Submission, BELL, BELL_MODE, BELL_QUIET, MAILDROP_MODE, MAX_ENVELOPE,
    REJECTED, REJECTED_MODE, STALE_TEMP, TEMP_PREFIX,
};
use crate::proto::smtp_server::DeliveryOutcome;
use crate::store::queue::QueueEntry;

// ---------------------------------------------------------------------
// The server's side

/// Makes the maildrop (and its `rejected/`) with the right owner and
/// modes. `owner` is the server's user and group when `serve` runs as root
/// before the drop; None when the server runs as itself.
pub fn prepare(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    let fail = |what: &str, e: io::Error| format!("maildrop {}: {what}: {e}", dir.display());
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).map_err(|e| fail("cannot create its parent", e))?;
    }
    make_dir(dir, owner, MAILDROP_MODE).map_err(|e| fail("cannot prepare", e))?;
    make_dir(&dir.join(REJECTED), owner, REJECTED_MODE)
        .map_err(|e| fail("cannot prepare rejected/", e))
}

fn make_dir(dir: &Path, owner: Option<(u32, u32)>, mode: u32) -> io::Result<()> {
    let existed = match fs::create_dir(dir) {
        Ok(()) => false,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => true,
        Err(e) => return Err(e),
    };
    // O_NOFOLLOW: a symlink a user planted there is refused, not followed.
    let fd = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)?;
    let uid = owner.map_or_else(crate::privileges::euid, |(u, _)| u);
    // A folder someone else owns and uses (`maildrop = /tmp` by mistake)
    // is never taken over; an empty one (made by mkdir or a package) is.
    if existed && fd.metadata()?.uid() != uid && fs::read_dir(dir)?.next().is_some() {
        return Err(io::Error::other(
            "it exists, is not empty and belongs to another user; refusing to take it over",
        ));
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&fd, Some(uid), Some(gid))?;
    }
    fd.set_permissions(fs::Permissions::from_mode(mode))?;
    let meta = fd.metadata()?;
    if meta.mode() & 0o7777 != mode {
        return Err(io::Error::other(format!(
            "mode is {:o}, not {mode:o}",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Binds the bell and starts the thread that turns each ring into our own
/// SIGUSR1 (which the loop already handles by looking at the queue and the
/// maildrop). Call after the privilege drop.
pub fn start_bell(dir: &Path) -> Result<(), String> {
    let path = dir.join(BELL);
    // A stale socket, or anything a user put there while we were down.
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(format!("cannot remove {}: {e}", path.display()))
        }
        _ => {}
    }
    let sock =
        UnixDatagram::bind(&path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(BELL_MODE))
        .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("pickup-bell".into())
        .spawn(move || bell_loop(sock))
        .map_err(|e| format!("cannot start the pickup bell: {e}"))?;
    Ok(())
}

fn bell_loop(sock: UnixDatagram) {
    let mut buf = [0u8; 16];
    while sock.recv(&mut buf).is_ok() {
        loop {
            // SAFETY: kill(2) on our own pid with a constant signal number.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
            std::thread::sleep(BELL_QUIET);
            // A ring in the quiet time may have come after the scan that
            // signal started had looked: it gets one more signal, so no
            // ring is lost, but never more than one per quiet time.
            if !drain(&sock, &mut buf) {
                break;
            }
        }
    }
}

/// Reads every waiting datagram; true when there was one.
fn drain(sock: &UnixDatagram, buf: &mut [u8]) -> bool {
    let mut any = false;
    if sock.set_nonblocking(true).is_ok() {
        while sock.recv(buf).is_ok() {
            any = true;
        }
        let _ = sock.set_nonblocking(false);
    }
    any
}

/// What one pickup scan injected, for the loop to hand on.
#[derive(Default)]
pub struct Picked {
    /// Outbox entries for remote recipients.
    pub queued: Vec<QueueEntry>,
    /// Mailboxes that got mail (for POP3 sessions watching them).
    pub mailboxes: Vec<String>,
}

/// On a worker: injects every file in the maildrop. One scan at a time
/// (the server makes sure), so a file is never delivered twice.
pub fn pick_up(config: &Config) -> Picked {
    let dir = &config.server.maildrop;
    let mut picked = Picked::default();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                warn!("maildrop {}: cannot list: {e}", dir.display());
            }
            return picked;
        }
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            // Not a name sendmail makes; moved by its real (non-UTF-8) name.
            let shown = entry.file_name().to_string_lossy().into_owned();
            let owner = entry.metadata().ok().map(|m| m.uid());
            set_aside_path(
                dir,
                &entry.path(),
                &shown,
                owner,
                "not a name sendmail makes",
            );
            removed = true;
            continue;
        };
        if name == BELL || name == REJECTED {
            continue;
        }
        if name.starts_with(TEMP_PREFIX) {
            removed |= remove_stale(&entry.path(), &name);
            continue;
        }
        match pick_one(config, dir, &name) {
            Ok(Some((queued, mailboxes))) => {
                picked.queued.extend(queued);
                picked.mailboxes.extend(mailboxes);
                removed = true;
            }
            Ok(None) => removed = true,
            // The disk is full or the like: this and the rest wait.
            Err(Retry(why)) => {
                warn!("maildrop: {name} waits: {why}");
                break;
            }
        }
    }
    if removed {
        if let Err(e) = crate::store::durable::fsync_dir(dir) {
            warn!("maildrop {}: cannot sync: {e}", dir.display());
        }
    }
    picked
}

fn remove_stale(path: &Path, name: &str) -> bool {
    let old = fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE_TEMP);
    if old && fs::remove_file(path).is_ok() {
        info!("maildrop: removed {name}, left by a sendmail that did not finish");
        return true;
    }
    false
}

struct Retry(String);

type Injected = (Option<QueueEntry>, Vec<String>);

/// Ok(Some): delivered and removed; Ok(None): set aside; Err: try later.
fn pick_one(config: &Config, dir: &Path, name: &str) -> Result<Option<Injected>, Retry> {
    let path = dir.join(name);
    let (uid, sub) = match read_file(config, &path, name) {
        Ok(v) => v,
        Err((uid, why)) => {
            set_aside(dir, name, uid, &why);
            return Ok(None);
        }
    };
    let Some(login) = crate::sendmail::user_name(uid) else {
        set_aside(dir, name, Some(uid), "no such user");
        return Ok(None);
    };
    let tx = match crate::sendmail::prepare(config, &sub, uid, &login) {
        Ok(tx) => tx,
        Err(e) => {
            set_aside(dir, name, Some(uid), &e.message);
            return Ok(None);
        }
    };
    let local: Vec<String> = crate::delivery::route(config, &tx)
        .local
        .into_iter()
        .map(|l| l.mailbox)
        .collect();
    match crate::delivery::accept(config, tx, None) {
        (DeliveryOutcome::Accepted { queue_id }, queued) => {
            info!("maildrop: {name} from uid {uid} ({login}) is message {queue_id}");
            if let Err(e) = fs::remove_file(&path) {
                // Delivered but still there: out of the scan's way, or it
                // would go out again at every scan.
                set_aside(
                    dir,
                    name,
                    Some(uid),
                    &format!("delivered, but cannot remove: {e}"),
                );
            }
            Ok(Some((queued, local)))
        }
        (DeliveryOutcome::TempFail { code, text, .. }, _) => Err(Retry(format!("{code} {text}"))),
        (DeliveryOutcome::PermFail { code, text, .. }, _) => {
            set_aside(dir, name, Some(uid), &format!("{code} {text}"));
            Ok(None)
        }
    }
}

/// Opens and parses one file. Err carries the owner (if known) and why the
/// file is set aside.
fn read_file(
    config: &Config,
    path: &Path,
    name: &str,
) -> Result<(u32, Submission), (Option<u32>, String)> {
    // O_NOFOLLOW: never a symlink; O_NONBLOCK: a FIFO cannot hang us.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            let owner = fs::symlink_metadata(path).ok().map(|m| m.uid());
            (owner, format!("cannot open: {e}"))
        })?;
    let meta = file
        .metadata()
        .map_err(|e| (None, format!("cannot stat: {e}")))?;
    let uid = meta.uid();
    if !is_final_name(name) {
        return Err((Some(uid), "not a name sendmail makes".into()));
    }
    if !meta.is_file() {
        return Err((Some(uid), "not a regular file".into()));
    }
    // A hard link to someone else's file would be mailed as theirs.
    if meta.nlink() != 1 {
        return Err((Some(uid), "has other hard links".into()));
    }
    let limit = config.smtp.max_message_size + MAX_ENVELOPE as u64;
    if meta.len() > limit {
        return Err((Some(uid), format!("larger than {limit} bytes")));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (Some(uid), format!("cannot read: {e}")))?;
    let sub = decode(
        &bytes,
        config.smtp.max_message_size,
        config.smtp.max_recipients,
    )
    .map_err(|e| (Some(uid), e))?;
    Ok((uid, sub))
}

/// Moves a bad file out of the scan's way, with one log line; removes it
/// if even that fails, so it is never tried again.
fn set_aside(dir: &Path, name: &str, uid: Option<u32>, why: &str) {
    set_aside_path(dir, &dir.join(name), name, uid, why)
}

fn set_aside_path(dir: &Path, from: &Path, name: &str, uid: Option<u32>, why: &str) {
    let shown = crate::store::trace::sanitize(name, 64);
    let who = uid.map(|u| format!(" from uid {u}")).unwrap_or_default();
    let to: PathBuf = dir.join(REJECTED).join(format!(
        "{}.{shown}",
        crate::store::trace::new_id(SystemTime::now())
    ));
    match fs::rename(from, &to) {
        Ok(()) => warn!(
            "maildrop: {shown}{who} set aside as {}: {why}",
            to.display()
        ),
        Err(e) => {
            let _ = fs::remove_file(from);
            warn!("maildrop: {shown}{who} removed ({why}); could not set it aside: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dropfile::{encode, random_name};

    fn sub() -> Submission {
        Submission {
            from: Some(String::new()),
            from_name: Some("Cron Daemon".into()),
            from_headers: true,
            recipients: vec!["bob".into(), "x@y.test".into()],
            message: b"Subject: hi\r\n\r\nbody\n\n\r\n".to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sub()).unwrap_or_default();
        let back = decode(&bytes, 1000, 10).ok().unwrap_or_default();
        assert_eq!(back, sub());
        assert!(decode(&bytes, 10, 10).is_err(), "size limit");
        assert!(decode(&bytes, 1000, 1).is_err(), "recipient limit");
    }

    #[test]
    fn hostile_envelopes() {
        for bad in [
            &b""[..],
            b"mailgate-maildrop 1\nR bob\n",
            b"mailgate-maildrop 2\n\nbody",
            b"mailgate-maildrop 1\nX y\n\nbody",
            b"mailgate-maildrop 1\nR \x1b[31m\n\nbody",
            b"mailgate-maildrop 1\nR a\rb\n\nbody",
            b"mailgate-maildrop 1\nF a\nF b\n\nbody",
            b"mailgate-maildrop 1\nT x\n\nbody",
            b"mailgate-maildrop 1\nR \xff\n\nbody",
        ] {
            assert!(decode(bad, 1000, 10).is_err(), "{bad:?}");
        }
        let long = format!("mailgate-maildrop 1\nR {}\n\nx", "a".repeat(300));
        assert!(decode(long.as_bytes(), 1000, 10).is_err());
        let mut s = sub();
        s.recipients.push("a\nR evil".into());
        assert!(encode(&s).is_err());
    }

    #[test]
    fn names() {
        let a = random_name().unwrap_or_default();
        let b = random_name().unwrap_or_default();
        assert!(is_final_name(&a) && is_final_name(&b) && a != b);
        assert!(!is_final_name(".tmp.x") && !is_final_name(BELL));
    }
}
