//! The `subscriptions` file at the Maildir root, in Dovecot's format
//! (subscription-file.c, version 2): the header `V\t2\n\n`, then one
//! storage name per line with its hierarchy levels separated by a tab
//! (levels tab-escaped: `\x01` -> `\x011`, TAB -> `\x01t`, CR -> `\x01r`,
//! LF -> `\x01n`). Files without the header (older Dovecot, Courier) hold
//! one storage name per line. Changed under `subscriptions.lock` (a
//! dotlock, stale after 30 s as in Dovecot) by replacing the file.
//!
//! Subscriptions are names, not folders (RFC 3501 6.3.6): they survive a
//! DELETE and RENAME leaves them alone, as in Dovecot.
//!
//! Must not: keep a name that could not be a folder name.

use super::dotlock::{Dotlock, LockTable};
use super::names::{FolderName, Separator};
use crate::store::durable;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub const FILE: &str = "subscriptions";
const HEADER: &str = "V\t2\n\n";
/// SUBSCRIPTION_FILE_CHANGE_TIMEOUT / LOCK_TIMEOUT.
const STALE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(120);

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x01' {
            match it.next() {
                Some('1') => out.push('\x01'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\x01' => out.push_str("\x011"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            c => out.push(c),
        }
    }
    out
}

/// The subscribed folders, in file order; lines that are not valid names
/// are skipped (Dovecot removes them).
pub fn parse(text: &str) -> Vec<FolderName> {
    let (v2, body) = match text.strip_prefix(HEADER) {
        Some(b) => (true, b),
        None => (false, text),
    };
    let mut out: Vec<FolderName> = Vec::new();
    for line in body.lines() {
        let storage = if v2 {
            line.split('\t').map(unescape).collect::<Vec<_>>().join(".")
        } else {
            line.to_string()
        };
        // Old software wrote a trailing separator; Dovecot strips it.
        let storage = storage.strip_suffix('.').unwrap_or(&storage);
        if let Ok(n) = FolderName::parse(storage, Separator::Dot) {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

pub fn serialize(names: &[FolderName]) -> String {
    let mut s = String::from(HEADER);
    for n in names {
        let levels: Vec<String> = n.storage().split('.').map(escape).collect();
        s.push_str(&levels.join("\t"));
        s.push('\n');
    }
    s
}

pub fn read(root: &Path) -> io::Result<Vec<FolderName>> {
    match fs::read(root.join(FILE)) {
        Ok(b) => Ok(parse(&String::from_utf8_lossy(&b))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Subscribe (`on`) or unsubscribe `name`; durable before it returns.
/// Returns whether the file changed.
pub fn set(locks: &Arc<LockTable>, root: &Path, name: &FolderName, on: bool) -> io::Result<bool> {
    durable::create_dir_all_durable(root)?;
    let path = root.join(FILE);
    let _lock = Dotlock::acquire(locks, &path, STALE, WAIT)?;
    let mut names = read(root)?;
    let had = names.contains(name);
    if had == on {
        return Ok(false);
    }
    if on {
        names.push(name.clone());
    } else {
        names.retain(|n| n != name);
    }
    let tmp = root.join(format!("{FILE}.mailgate-tmp"));
    let _ = fs::remove_file(&tmp);
    durable::write_durable(&tmp, &path, &[serialize(&names).as_bytes()])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;
    use crate::store::mailbox::dotlock::test_table;

    fn n(s: &str) -> FolderName {
        FolderName::parse(s, Separator::Dot).unwrap()
    }

    #[test]
    fn dovecot_format_both_ways() {
        let text = "V\t2\n\nINBOX\nSent\nLists\tFamily\n../x\n";
        assert_eq!(
            parse(text),
            [FolderName::Inbox, n("Sent"), n("Lists.Family")]
        );
        assert_eq!(
            parse("Sent\nLists.Family.\n"),
            [n("Sent"), n("Lists.Family")]
        );
        assert_eq!(
            parse("V\t2\n\nA\x01tB\n"),
            [],
            "a tab is never a valid level"
        );
        let t = TempDir::new("subs");
        assert!(set(&test_table(), t.path(), &n("Sent"), true).unwrap());
        assert!(!set(&test_table(), t.path(), &n("Sent"), true).unwrap());
        assert!(set(&test_table(), t.path(), &n("Lists.Family"), true).unwrap());
        assert!(set(&test_table(), t.path(), &FolderName::Inbox, true).unwrap());
        assert_eq!(
            fs::read_to_string(t.path().join(FILE)).unwrap(),
            "V\t2\n\nSent\nLists\tFamily\nINBOX\n"
        );
        assert!(set(&test_table(), t.path(), &n("Sent"), false).unwrap());
        assert_eq!(
            read(t.path()).unwrap(),
            [n("Lists.Family"), FolderName::Inbox]
        );
        assert!(!t.path().join("subscriptions.lock").exists());
    }
}
