//! `dovecot-uidvalidity` at the Maildir root: the source of new
//! UIDVALIDITY values, as Dovecot's mailbox-uidvalidity.c keeps it. The
//! file holds the last value given out as 8 hex digits; beside it an
//! empty file `dovecot-uidvalidity.<8 hex>` names the same value and is
//! renamed to the next value each time one is taken, which makes taking a
//! value atomic between processes without a lock. With neither, the first
//! value is the current time.
//!
//! Unlike Dovecot we fsync the root after the rename and the file after
//! the write: a value handed out must never be handed out again after a
//! crash (a folder deleted and re-created must not get its old
//! UIDVALIDITY back, RFC 3501 2.3.1.1).
//!
//! Must not: be called on the event loop (fsync).

use crate::store::durable;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub const FILE: &str = "dovecot-uidvalidity";
/// Dovecot's RETRY_COUNT for the rename race.
const RETRIES: u32 = 10;

fn now32() -> u32 {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    u32::try_from(s).unwrap_or(u32::MAX).max(1)
}

fn companion(root: &Path, v: u32) -> std::path::PathBuf {
    root.join(format!("{FILE}.{v:08x}"))
}

fn bump(v: u32) -> u32 {
    v.wrapping_add(1).max(1)
}

/// Take the next UIDVALIDITY for a new (or rebuilt) folder under `root`.
pub fn next(root: &Path) -> io::Result<u32> {
    durable::create_dir_all_durable(root)?;
    let main = root.join(FILE);
    let current = fs::File::open(&main).ok().and_then(|mut f| {
        let mut buf = [0u8; 8];
        let n = f.read(&mut buf).ok()?;
        let s = std::str::from_utf8(buf.get(..n)?).ok()?;
        u32::from_str_radix(s.trim(), 16).ok().filter(|&v| v != 0)
    });
    let value = match current.and_then(|v| rename_from(root, v)) {
        Some(v) => v,
        None => rescan(root)?,
    };
    durable::fsync_dir(root)?;
    write_main(root, value)?;
    Ok(value)
}

/// Rename `FILE.<v>` to the next value (trying up to [`RETRIES`] values
/// on ENOENT, as another process may have taken one meanwhile).
fn rename_from(root: &Path, mut v: u32) -> Option<u32> {
    for _ in 0..RETRIES {
        let next = bump(v);
        match fs::rename(companion(root, v), companion(root, next)) {
            Ok(()) => return Some(next),
            Err(e) if e.kind() == io::ErrorKind::NotFound => v = next,
            Err(_) => return None,
        }
    }
    None
}

/// No usable main file: find the companion files; none -> start at now.
fn rescan(root: &Path) -> io::Result<u32> {
    let prefix = format!("{FILE}.");
    let mut values: Vec<u32> = Vec::new();
    for de in fs::read_dir(root)? {
        let name = de?.file_name();
        if let Some(hex) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) {
            if let Ok(v) = u32::from_str_radix(hex, 16) {
                values.push(v);
            }
        }
    }
    let (Some(&min), Some(&max)) = (values.iter().min(), values.iter().max()) else {
        let v = now32();
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(companion(root, v))?;
        return Ok(v);
    };
    if min != max {
        let _ = fs::remove_file(companion(root, min));
    }
    rename_from(root, max).ok_or_else(|| io::Error::other("dovecot-uidvalidity rename failed"))
}

fn write_main(root: &Path, v: u32) -> io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(root.join(FILE))?;
    // Dovecot: pwrite of the 8 digits at offset 0, no truncation.
    f.write_all_at(format!("{v:08x}").as_bytes(), 0)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;

    #[test]
    fn sequence_and_companion_file() {
        let t = TempDir::new("uidvalidity");
        let a = next(t.path()).unwrap();
        assert!(a >= now32() - 5);
        let b = next(t.path()).unwrap();
        assert_eq!(b, a + 1);
        assert_eq!(
            fs::read_to_string(t.path().join(FILE)).unwrap(),
            format!("{b:08x}")
        );
        assert!(companion(t.path(), b).exists() && !companion(t.path(), a).exists());
        // Main file lost: the companion carries on.
        fs::remove_file(t.path().join(FILE)).unwrap();
        assert_eq!(next(t.path()).unwrap(), b + 1);
        // Main file garbage: same.
        fs::write(t.path().join(FILE), "zz").unwrap();
        assert_eq!(next(t.path()).unwrap(), b + 2);
        // Dovecot-written state (value in main file, companion present).
        let t2 = TempDir::new("uidvalidity-dc");
        fs::write(t2.path().join(FILE), "5f000000").unwrap();
        fs::write(companion(t2.path(), 0x5f00_0000), "").unwrap();
        assert_eq!(next(t2.path()).unwrap(), 0x5f00_0001);
        // Duplicate companions: the highest wins, the lowest is removed.
        fs::remove_file(t2.path().join(FILE)).unwrap();
        fs::write(companion(t2.path(), 3), "").unwrap();
        assert_eq!(next(t2.path()).unwrap(), 0x5f00_0002);
        assert!(!companion(t2.path(), 3).exists());
    }
}
