//! Tokens of one account in `data_dir/oauth/NAME` (0600, in a 0700
//! folder), written durably (tmp, fsync, rename, fsync the folder) so a
//! rotated refresh token is on disk before it is ever used.
//!
//! Format: `key=value` lines (`access_token`, `refresh_token`,
//! `expires_at` in Unix seconds, `last_error`). Blocking file IO: call it
//! on a worker or from the CLI, never on the loop thread.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::store::durable;

/// An access token is not handed out when it expires within this margin.
pub const EXPIRY_MARGIN_SECS: u64 = 60;

/// Longest token file we read.
const MAX_FILE: u64 = 64 * 1024;

/// What is stored for an account. `Debug` hides the tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Unix seconds; 0 when unknown.
    pub expires_at: u64,
    /// The last refresh failure (never a token), for `mailgate oauth status`.
    pub last_error: Option<String>,
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stored")
            .field("access_token", &"<hidden>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<hidden>"),
            )
            .field("expires_at", &self.expires_at)
            .field("last_error", &self.last_error)
            .finish()
    }
}

/// `data_dir/oauth`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("oauth")
}

/// An account name usable as a file name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

fn path(data_dir: &Path, name: &str) -> io::Result<PathBuf> {
    if !valid_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("account name {name:?} cannot name a token file"),
        ));
    }
    Ok(dir(data_dir).join(name))
}

fn one_line(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\n' || b == b'\r' || b == 0)
}

/// Reads the account's tokens; `Ok(None)` when it never logged in.
pub fn load(data_dir: &Path, name: &str) -> io::Result<Option<Stored>> {
    let p = path(data_dir, name)?;
    let meta = match fs::metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if meta.len() > MAX_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "token file too large",
        ));
    }
    let text = fs::read_to_string(&p)?;
    let mut s = Stored::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "access_token" => s.access_token = v.to_string(),
            "refresh_token" if !v.is_empty() => s.refresh_token = Some(v.to_string()),
            "expires_at" => s.expires_at = v.parse().unwrap_or(0),
            "last_error" if !v.is_empty() => s.last_error = Some(v.to_string()),
            _ => {}
        }
    }
    Ok(Some(s))
}

/// Writes the account's tokens durably, replacing the old file.
pub fn save(data_dir: &Path, name: &str, s: &Stored) -> io::Result<()> {
    let p = path(data_dir, name)?;
    let fields = [
        Some(s.access_token.as_str()),
        s.refresh_token.as_deref(),
        s.last_error.as_deref(),
    ];
    if !fields.iter().flatten().all(|f| one_line(f)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "token with a line break",
        ));
    }
    let d = dir(data_dir);
    if !d.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&d)?;
        durable::fsync_parent(&d)?;
    }
    let text = format!(
        "access_token={}\nrefresh_token={}\nexpires_at={}\nlast_error={}\n",
        s.access_token,
        s.refresh_token.as_deref().unwrap_or(""),
        s.expires_at,
        s.last_error.as_deref().unwrap_or("")
    );
    let tmp = d.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    durable::write_durable(&tmp, &p, &[text.as_bytes()])
}

/// Records a refresh failure (the tokens stay as they are).
pub fn set_error(data_dir: &Path, name: &str, error: Option<&str>) -> io::Result<()> {
    let mut s = load(data_dir, name)?.unwrap_or_default();
    s.last_error = error.map(|e| e.replace(['\n', '\r', '\0'], " "));
    save(data_dir, name, &s)
}

/// The account's access token if it is valid for at least
/// [`EXPIRY_MARGIN_SECS`] more at `now` (Unix seconds); for the POP3, IMAP
/// and SMTP drivers, on a worker.
pub fn access_token_at(data_dir: &Path, name: &str, now: u64) -> io::Result<Option<String>> {
    Ok(load(data_dir, name)?.and_then(|s| {
        let fresh = s.expires_at == 0 || s.expires_at > now.saturating_add(EXPIRY_MARGIN_SECS);
        (fresh && !s.access_token.is_empty()).then_some(s.access_token)
    }))
}

/// [`access_token_at`] now.
pub fn access_token(data_dir: &Path, name: &str) -> io::Result<Option<String>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    access_token_at(data_dir, name, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_mode_and_expiry() {
        let tmp = std::env::temp_dir().join(format!("mailgate-oauth-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        assert_eq!(load(&tmp, "isp").unwrap(), None);
        assert_eq!(access_token_at(&tmp, "isp", 0).unwrap(), None);
        let s = Stored {
            access_token: "at1".into(),
            refresh_token: Some("rt1".into()),
            expires_at: 1000,
            last_error: None,
        };
        save(&tmp, "isp", &s).unwrap();
        assert_eq!(load(&tmp, "isp").unwrap(), Some(s.clone()));
        let mode = fs::metadata(dir(&tmp).join("isp"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(dir(&tmp)).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        assert_eq!(
            access_token_at(&tmp, "isp", 900).unwrap().as_deref(),
            Some("at1")
        );
        assert_eq!(access_token_at(&tmp, "isp", 950).unwrap(), None);
        set_error(&tmp, "isp", Some("invalid_grant\nx")).unwrap();
        let got = load(&tmp, "isp").unwrap().unwrap();
        assert_eq!(got.last_error.as_deref(), Some("invalid_grant x"));
        assert_eq!(got.refresh_token.as_deref(), Some("rt1"));
        assert!(!format!("{got:?}").contains("rt1"));
        let bad = Stored {
            access_token: "a\nrefresh_token=evil".into(),
            ..Stored::default()
        };
        assert!(save(&tmp, "isp", &bad).is_err());
        for name in ["", "../x", ".hidden", "a/b"] {
            assert!(save(&tmp, name, &s).is_err(), "{name}");
        }
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir(&tmp))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["isp"]);
        fs::remove_dir_all(&tmp).unwrap();
    }
}
