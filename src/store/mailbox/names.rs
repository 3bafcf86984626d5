//! Folder names: IMAP mailbox names to Maildir++ folders, as Dovecot's
//! default `maildir` layout (LAYOUT=maildir++) maps them.
//!
//! Names cross this API in their IMAP wire form: modified UTF-7 (RFC 3501
//! 5.1.3), which is also what Dovecot writes on disk (its maildir storage
//! names are mUTF-7 unless `UTF-8` is configured). The IMAP core decodes
//! and checks UTF-7 for display and SEARCH; this module only refuses names
//! that could leave the Maildir or collide with its own files.
//!
//! Layout: INBOX is the Maildir root itself; `Sent` is `ROOT/.Sent`,
//! `Lists/Family` (separator `/`) or `Lists.Family` (separator `.`, the
//! Dovecot default for Maildir++) is `ROOT/.Lists.Family`. On disk the
//! separator is always `.`, so with `/` as the IMAP separator a `.` inside
//! a name is refused, as Dovecot does ("Character not allowed in mailbox
//! name: '.'") when no storage escape character is set.
//!
//! Must not: touch the disk.

use std::fmt;
use std::path::{Path, PathBuf};

/// The on-disk hierarchy separator of Maildir++ (Dovecot `list->sep`).
pub const DISK_SEP: char = '.';
/// Longest folder directory name: one path component (NAME_MAX) holds the
/// whole `.A.B.C` name.
pub const MAX_DIR_NAME: usize = 255;
/// Dovecot's MAILBOX_MAX_HIERARCHY_NAME_LENGTH: one level of a name.
pub const MAX_LEVEL: usize = 255;
/// Folder directory Dovecot renames a folder to while deleting it
/// (`..DOVECOT-TRASHED`, mailbox-list-maildir.h).
pub const TRASH_DIR: &str = "..DOVECOT-TRASHED";
/// Maildir's own subfolders: never a folder level (Dovecot refuses them
/// with its `fs` layout; refusing them here keeps a move to that layout
/// possible and makes the intent plain).
const RESERVED_LEVELS: [&str; 3] = ["tmp", "new", "cur"];

/// Why a name was refused: the text goes into the tagged NO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError(pub &'static str);

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for NameError {}

/// The IMAP hierarchy separator the server presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Separator {
    /// `.`: Dovecot's default with Maildir++ (names map 1:1 to disk).
    Dot,
    /// `/`: what many Dovecot setups configure (`separator = /`).
    Slash,
}

impl Separator {
    pub fn char(self) -> char {
        match self {
            Separator::Dot => '.',
            Separator::Slash => '/',
        }
    }
}

/// A checked folder: INBOX or a Maildir++ subfolder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FolderName {
    Inbox,
    /// The storage name: levels joined by `.` (`Lists.Family`), the
    /// directory name without its leading dot, and what Dovecot's
    /// `subscriptions` file and `box->name` use.
    Sub(String),
}

impl FolderName {
    /// Check and map an IMAP name (mUTF-7) given with separator `sep`.
    /// `INBOX` is case-insensitive (RFC 3501 5.1), also as the first level
    /// of a longer name (`inbox/x` is `INBOX/x`), as Dovecot normalises it.
    pub fn parse(imap: &str, sep: Separator) -> Result<FolderName, NameError> {
        if imap.is_empty() {
            return Err(NameError("Name is empty"));
        }
        if imap.eq_ignore_ascii_case("INBOX") {
            return Ok(FolderName::Inbox);
        }
        let s = sep.char();
        let mut levels: Vec<&str> = imap.split(s).collect();
        if let Some(first) = levels.first_mut() {
            if first.eq_ignore_ascii_case("INBOX") {
                *first = "INBOX";
            }
        }
        for level in &levels {
            check_level(level, sep)?;
        }
        let storage = levels.join(".");
        if storage.len() + 1 > MAX_DIR_NAME {
            return Err(NameError("Mailbox name too long"));
        }
        Ok(FolderName::Sub(storage))
    }

    /// From a directory name found in the Maildir root (`.Sent`), or
    /// `None` for anything that is not a folder (`.`, `..`, Dovecot's
    /// trash folder, names we would refuse to create).
    pub fn from_dir_name(dir: &str) -> Option<FolderName> {
        let storage = dir.strip_prefix(DISK_SEP)?;
        if dir == TRASH_DIR {
            return None;
        }
        let name = FolderName::Sub(storage.to_string());
        // Whatever parses with the Dot separator is a name we could have made.
        match FolderName::parse(storage, Separator::Dot) {
            Ok(FolderName::Sub(_)) => Some(name),
            _ => None,
        }
    }

    /// The folder's directory: the root for INBOX, `ROOT/.NAME` otherwise.
    pub fn dir(&self, root: &Path) -> PathBuf {
        match self {
            FolderName::Inbox => root.to_path_buf(),
            FolderName::Sub(s) => root.join(format!("{DISK_SEP}{s}")),
        }
    }

    /// The name as the client sees it with separator `sep`.
    pub fn imap(&self, sep: Separator) -> String {
        match self {
            FolderName::Inbox => "INBOX".to_string(),
            FolderName::Sub(s) => match sep {
                Separator::Dot => s.clone(),
                Separator::Slash => s.replace(DISK_SEP, "/"),
            },
        }
    }

    /// The storage name (`INBOX` or `Lists.Family`).
    pub fn storage(&self) -> &str {
        match self {
            FolderName::Inbox => "INBOX",
            FolderName::Sub(s) => s,
        }
    }

    /// Is `self` strictly below `parent` in the hierarchy?
    pub fn is_below(&self, parent: &FolderName) -> bool {
        let (FolderName::Sub(me), p) = (self, parent.storage()) else {
            return false;
        };
        me.len() > p.len() + 1 && me.starts_with(p) && me.as_bytes().get(p.len()) == Some(&b'.')
    }

    /// `self` with its prefix `from` replaced by `to` (RENAME of a parent).
    pub fn reparent(&self, from: &FolderName, to: &FolderName) -> Option<FolderName> {
        if !self.is_below(from) {
            return None;
        }
        let rest = self.storage().get(from.storage().len()..)?;
        Some(FolderName::Sub(format!("{}{rest}", to.storage())))
    }
}

/// One level of a name: non-empty (no leading, trailing or doubled
/// separator), printable ASCII (mUTF-7 is 7-bit; control characters and
/// DEL are refused as Dovecot and RFC 9755 do), no `/` (a path), no `.`
/// when it is not the separator, no `..`-style dots, no Maildir subfolder
/// name, mUTF-7 shifts well formed.
fn check_level(level: &str, sep: Separator) -> Result<(), NameError> {
    if level.is_empty() {
        return Err(NameError("Invalid mailbox name: empty hierarchy level"));
    }
    if level.len() > MAX_LEVEL {
        return Err(NameError("Mailbox name too long"));
    }
    if let Some(c) = level.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(if c.is_control() {
            NameError("Invalid mailbox name: control character")
        } else {
            NameError("Invalid mailbox name: not modified UTF-7")
        });
    }
    if level.contains('/') {
        return Err(NameError("Name must not have '/' characters"));
    }
    if sep == Separator::Slash && level.contains('.') {
        return Err(NameError("Character not allowed in mailbox name: '.'"));
    }
    if level.starts_with('~') {
        return Err(NameError("Invalid mailbox name: begins with '~'"));
    }
    if RESERVED_LEVELS.contains(&level) {
        return Err(NameError("Invalid mailbox name: contains reserved name"));
    }
    check_mutf7_shifts(level)
}

/// `&` opens a base64 run closed by `-`; `&-` is a literal `&`
/// (RFC 3501 5.1.3). Only the framing is checked here.
fn check_mutf7_shifts(level: &str) -> Result<(), NameError> {
    let bad = NameError("Invalid mailbox name: not modified UTF-7");
    let mut rest = level;
    while let Some(i) = rest.find('&') {
        let after = rest.get(i + 1..).unwrap_or("");
        let end = after.find('-').ok_or(bad.clone())?;
        let run = after.get(..end).unwrap_or("");
        if !run
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b',')
        {
            return Err(bad);
        }
        rest = after.get(end + 1..).unwrap_or("");
    }
    Ok(())
}

/// The special-use folders (RFC 6154) created on first use, with the
/// names Dovecot's example config and most clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
}

impl SpecialUse {
    pub const ALL: [SpecialUse; 5] = [
        SpecialUse::Sent,
        SpecialUse::Drafts,
        SpecialUse::Trash,
        SpecialUse::Junk,
        SpecialUse::Archive,
    ];

    /// The LIST attribute (RFC 6154 2).
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
        }
    }

    /// The default folder name (the config may choose others).
    pub fn default_name(self) -> &'static str {
        match self {
            SpecialUse::Sent => "Sent",
            SpecialUse::Drafts => "Drafts",
            SpecialUse::Trash => "Trash",
            SpecialUse::Junk => "Junk",
            SpecialUse::Archive => "Archive",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_like_dovecot_maildirplusplus() {
        let root = Path::new("/m");
        let table: &[(&str, Separator, &str)] = &[
            ("Sent", Separator::Dot, "/m/.Sent"),
            ("Lists.Family", Separator::Dot, "/m/.Lists.Family"),
            ("Lists/Family", Separator::Slash, "/m/.Lists.Family"),
            ("INBOX.Sub", Separator::Dot, "/m/.INBOX.Sub"),
            ("inbox/Sub", Separator::Slash, "/m/.INBOX.Sub"),
            ("Entw&APw-rfe", Separator::Dot, "/m/.Entw&APw-rfe"),
            ("A &- B", Separator::Dot, "/m/.A &- B"),
        ];
        for (imap, sep, dir) in table {
            let n = FolderName::parse(imap, *sep).unwrap();
            assert_eq!(n.dir(root), Path::new(dir), "{imap}");
            let back = n.imap(*sep);
            assert_eq!(FolderName::parse(&back, *sep).unwrap(), n);
        }
        for inbox in ["INBOX", "inbox", "InBoX"] {
            let n = FolderName::parse(inbox, Separator::Dot).unwrap();
            assert_eq!(n, FolderName::Inbox);
            assert_eq!(n.dir(root), root);
        }
        assert_eq!(
            FolderName::parse("Lists.Family", Separator::Dot)
                .unwrap()
                .imap(Separator::Slash),
            "Lists/Family"
        );
    }

    #[test]
    fn refuses_escapes_and_collisions() {
        let long = "x".repeat(300);
        let long_total = vec!["y".repeat(100); 3].join(".");
        for (bad, sep) in [
            ("", Separator::Dot),
            ("..", Separator::Dot),
            (".", Separator::Dot),
            (".Sent", Separator::Dot),
            ("Sent.", Separator::Dot),
            ("a..b", Separator::Dot),
            ("../../etc", Separator::Dot),
            ("a/b", Separator::Dot),
            ("/etc", Separator::Slash),
            ("a//b", Separator::Slash),
            ("a.b", Separator::Slash),
            ("..", Separator::Slash),
            ("tmp", Separator::Dot),
            ("new", Separator::Slash),
            ("x.cur", Separator::Dot),
            ("~root", Separator::Dot),
            ("a\nb", Separator::Dot),
            ("a\rb", Separator::Dot),
            ("a\0b", Separator::Dot),
            ("a\x7fb", Separator::Dot),
            ("caf\u{e9}", Separator::Dot),
            ("a&b", Separator::Dot),
            ("a&A!-", Separator::Dot),
            (long.as_str(), Separator::Dot),
            (long_total.as_str(), Separator::Dot),
        ] {
            assert!(FolderName::parse(bad, sep).is_err(), "{bad:?} {sep:?}");
        }
    }

    #[test]
    fn directory_names() {
        assert_eq!(
            FolderName::from_dir_name(".Sent"),
            Some(FolderName::Sub("Sent".into()))
        );
        for not in [".", "..", TRASH_DIR, "cur", "new", "tmp", "...x", ".a..b"] {
            assert_eq!(FolderName::from_dir_name(not), None, "{not}");
        }
    }

    #[test]
    fn hierarchy() {
        let a = FolderName::parse("a", Separator::Dot).unwrap();
        let ab = FolderName::parse("a.b", Separator::Dot).unwrap();
        let abc = FolderName::parse("a.b.c", Separator::Dot).unwrap();
        let ax = FolderName::parse("ax", Separator::Dot).unwrap();
        assert!(ab.is_below(&a) && abc.is_below(&a) && !ax.is_below(&a) && !a.is_below(&a));
        let z = FolderName::parse("z", Separator::Dot).unwrap();
        assert_eq!(abc.reparent(&a, &z).unwrap().storage(), "z.b.c");
        let inbox_child = FolderName::parse("INBOX.x", Separator::Dot).unwrap();
        assert!(inbox_child.is_below(&FolderName::Inbox));
    }
}
