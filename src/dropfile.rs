//! The maildrop's drop files, and sendmail's side of the maildrop: the
//! format (`encode`/`decode`: text envelope lines, then the message), a
//! durable write of one (`drop_message`: temp name, fsync, rename, sync)
//! and the bell that tells a running server to look (`ring`). The
//! server's side (the folder, the bell's listener, `pick_up`) is
//! `pickup`; see there for the folder's modes and why.
//!
//! Must not: know the config, the queue or delivery; it only moves a
//! `Submission` into the folder and back out as checked data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// What a caller of sendmail asked for, before it is checked: the
/// maildrop carries this (see `encode`), not a transaction, since
/// the server must not trust the caller's idea of the sender.
#[derive(Debug, Default, PartialEq)]
pub struct Submission {
    /// -f: the envelope sender (empty or `<>`: the null sender).
    pub from: Option<String>,
    /// -F: the full name for a missing From:.
    pub from_name: Option<String>,
    /// -t: recipients from To/Cc/Bcc too (Bcc lines are removed).
    pub from_headers: bool,
    pub recipients: Vec<String>,
    /// The message as read (CRLF lines, the -i dot rule applied).
    pub message: Vec<u8>,
}

/// sticky + setgid + rwx-wx-wx: see the header.
pub const MAILDROP_MODE: u32 = 0o3733;
/// A drop file: its writer and the server's group (inherited) read it.
pub(crate) const FILE_MODE: u32 = 0o640;
/// Where bad files are set aside; only the server's user enters it.
pub const REJECTED: &str = "rejected";
pub(crate) const REJECTED_MODE: u32 = 0o700;
/// The bell: a datagram socket any local user may write to.
pub const BELL: &str = "pickup";
pub(crate) const BELL_MODE: u32 = 0o666;
/// A file being written; renamed to its final name once synced.
pub(crate) const TEMP_PREFIX: &str = ".tmp.";
/// A temp file this old was left by a sendmail that died: removed.
pub(crate) const STALE_TEMP: Duration = Duration::from_secs(3600);
/// Final names: 128 random bits in hex, so that a name cannot be guessed.
pub(crate) const NAME_LEN: usize = 32;
/// First line of a drop file (format version).
pub(crate) const MAGIC: &str = "mailgate-maildrop 1";
/// Room for the envelope lines on top of `max_message_size`.
pub(crate) const MAX_ENVELOPE: usize = 64 * 1024;
/// One envelope field: a path is at most 256 octets (RFC 5321 4.5.3.1.3);
/// a full name (-F) gets the same room.
pub(crate) const MAX_FIELD: usize = 256;
/// How often the server looks at the maildrop without a bell (Postfix's
/// pickup wakes every 60 s too).
pub const SCAN_INTERVAL: Duration = Duration::from_secs(60);
/// After the bell woke the server, datagrams are ignored this long, so a
/// user ringing in a loop costs at most a few scans a second.
pub(crate) const BELL_QUIET: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------
// The format (sans-IO)

/// The envelope lines, an empty line, then the message as sendmail read it
/// (CRLF lines). Lines: `F addr` (-f; `F` alone for `<>`), `N name` (-F),
/// `T` (-t), `R addr` (one per recipient argument).
pub fn encode(sub: &Submission) -> Result<Vec<u8>, String> {
    let mut out = format!("{MAGIC}\n");
    let mut field = |tag: &str, value: &str| -> Result<(), String> {
        check_field(value)?;
        out.push_str(tag);
        if !value.is_empty() {
            out.push(' ');
            out.push_str(value);
        }
        out.push('\n');
        Ok(())
    };
    if let Some(f) = &sub.from {
        field("F", f)?;
    }
    if let Some(n) = &sub.from_name {
        field("N", n)?;
    }
    for r in &sub.recipients {
        field("R", r)?;
    }
    if sub.from_headers {
        out.push_str("T\n");
    }
    out.push('\n');
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&sub.message);
    Ok(bytes)
}

pub(crate) fn check_field(value: &str) -> Result<(), String> {
    if value.len() > MAX_FIELD {
        return Err(format!("argument longer than {MAX_FIELD} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err("control character in an argument".into());
    }
    Ok(())
}

/// Parses a drop file: hostile input. `max_message` and `max_recipients`
/// are the config's SMTP limits, which local mail obeys too.
pub fn decode(bytes: &[u8], max_message: u64, max_recipients: usize) -> Result<Submission, String> {
    let head_end = bytes
        .windows(2)
        .take(MAX_ENVELOPE)
        .position(|w| w == b"\n\n")
        .ok_or("no end of the envelope")?;
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| "envelope is not UTF-8")?;
    let message = &bytes[head_end + 2..];
    if message.len() as u64 > max_message {
        return Err(format!("message larger than {max_message} bytes"));
    }
    let mut lines = head.split('\n');
    if lines.next() != Some(MAGIC) {
        return Err("not a mailgate maildrop file".into());
    }
    let mut sub = Submission {
        message: message.to_vec(),
        ..Submission::default()
    };
    for line in lines {
        let (tag, value) = line.split_once(' ').unwrap_or((line, ""));
        check_field(value)?;
        let value = value.to_string();
        match tag {
            "F" if sub.from.is_none() => sub.from = Some(value),
            "N" if sub.from_name.is_none() => sub.from_name = Some(value),
            "T" if value.is_empty() => sub.from_headers = true,
            "R" if !value.is_empty() => {
                if sub.recipients.len() >= max_recipients {
                    return Err(format!("more than {max_recipients} recipients"));
                }
                sub.recipients.push(value)
            }
            _ => {
                return Err(format!(
                    "bad envelope line {:?}",
                    crate::store::trace::sanitize(line, 40)
                ))
            }
        }
    }
    Ok(sub)
}

pub(crate) fn random_name() -> io::Result<String> {
    let mut buf = [0u8; NAME_LEN / 2];
    // SAFETY: getrandom(2) writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn is_final_name(name: &str) -> bool {
    name.len() == NAME_LEN && name.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------
// sendmail's side

/// Writes `sub` into the maildrop `dir` durably, then rings the bell. Ok
/// means the message survives a power cut: the file was synced before the
/// rename, and the rename was synced after it.
pub fn drop_message(dir: &Path, sub: &Submission) -> Result<(), String> {
    let bytes = encode(sub)?;
    let name = random_name().map_err(|e| format!("no random name: {e}"))?;
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let fin = dir.join(&name);
    let what = |e: io::Error| format!("cannot write into the maildrop {}: {e}", dir.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(what)?;
    let written = (|| {
        // The umask may have taken the group's read bit: put it back.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &fin)?;
        sync_rename(dir, &file)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(what(e));
    }
    ring(dir);
    Ok(())
}

/// Makes the rename durable. Only the server's user may open the folder
/// (fsync needs a descriptor and a folder without `r` cannot be opened),
/// so others sync the file system the file is on, which includes the
/// folder's entry (syncfs(2)).
pub(crate) fn sync_rename(dir: &Path, file: &File) -> io::Result<()> {
    match crate::store::durable::fsync_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // SAFETY: syncfs(2) on a valid, owned descriptor.
            if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        other => other,
    }
}

/// Tells a running server to look now; without one, nothing happens and
/// the file waits for the server's start or its next scan.
pub fn ring(dir: &Path) {
    if let Ok(sock) = UnixDatagram::unbound() {
        let _ = sock.send_to(b"!", dir.join(BELL));
    }
}
