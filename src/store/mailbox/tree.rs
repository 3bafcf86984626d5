//! A mailbox: the folder tree of one user's Maildir, laid out as
//! Dovecot's Maildir++ (INBOX at the root, `.Name` folders beside
//! `cur/new/tmp`, `dovecot-uidvalidity` and `subscriptions` at the root).
//!
//! Owns: listing, CREATE, DELETE, RENAME (INBOX's messages move to the new
//! folder, RFC 3501 6.3.5), the special-use folders, subscriptions.
//!
//! Must not: run on the event loop (it fsyncs), or follow a name that
//! `names` refused.

use super::dotlock::LockTable;
use super::folder::{Folder, MAILDIRFOLDER};
use super::names::{FolderName, NameError, Separator, SpecialUse, TRASH_DIR};
use super::subscriptions;
use crate::store::durable;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One folder of the tree, for LIST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: FolderName,
    pub special_use: Option<SpecialUse>,
}

#[derive(Debug, Clone)]
pub struct Mailbox {
    root: PathBuf,
    sep: Separator,
    /// Special-use folders and their names (config; defaults in
    /// [`SpecialUse::default_name`]).
    special: Vec<(SpecialUse, FolderName)>,
    locks: Arc<LockTable>,
}

pub fn invalid(e: NameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.0)
}

fn exists_error() -> io::Error {
    io::Error::new(io::ErrorKind::AlreadyExists, "Mailbox already exists")
}

impl Mailbox {
    /// `root` is the user's Maildir (`store::maildir::Maildir::root`).
    /// `locks`: the process's lock table (`dotlock::LockTable`).
    pub fn new(root: &Path, sep: Separator, locks: &Arc<LockTable>) -> Mailbox {
        let special = SpecialUse::ALL
            .iter()
            .map(|&u| (u, FolderName::Sub(u.default_name().to_string())))
            .collect();
        Mailbox {
            root: root.to_path_buf(),
            sep,
            special,
            locks: Arc::clone(locks),
        }
    }

    /// Use other names for the special-use folders (IMAP names with this
    /// mailbox's separator).
    pub fn with_special_names(
        mut self,
        names: &[(SpecialUse, &str)],
    ) -> Result<Mailbox, NameError> {
        for (u, n) in names {
            let name = FolderName::parse(n, self.sep)?;
            if let Some(slot) = self.special.iter_mut().find(|(x, _)| x == u) {
                slot.1 = name;
            }
        }
        Ok(self)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn separator(&self) -> Separator {
        self.sep
    }

    pub fn parse(&self, imap_name: &str) -> io::Result<FolderName> {
        FolderName::parse(imap_name, self.sep).map_err(invalid)
    }

    pub fn folder(&self, name: &FolderName) -> Folder {
        Folder::new(&self.root, name.clone(), &self.locks)
    }

    pub fn special_use_of(&self, name: &FolderName) -> Option<SpecialUse> {
        self.special
            .iter()
            .find(|(_, n)| n == name)
            .map(|(u, _)| *u)
    }

    /// INBOX and every folder directory, sorted by name. One read of the
    /// root directory (Dovecot's maildir++ iterator).
    pub fn list(&self) -> io::Result<Vec<Listed>> {
        let mut out = vec![FolderName::Inbox];
        match fs::read_dir(&self.root) {
            Ok(rd) => {
                for de in rd {
                    let de = de?;
                    let Ok(dir) = de.file_name().into_string() else {
                        continue;
                    };
                    let Some(name) = FolderName::from_dir_name(&dir) else {
                        continue;
                    };
                    if de.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        out.push(name);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        out.sort();
        Ok(out
            .into_iter()
            .map(|name| Listed {
                special_use: self.special_use_of(&name),
                name,
            })
            .collect())
    }

    /// Make INBOX and the special-use folders that are missing (first
    /// login), subscribing the ones it makes, as Dovecot's
    /// `auto = subscribe` does.
    pub fn ensure_defaults(&self) -> io::Result<Vec<FolderName>> {
        let mut made = Vec::new();
        let inbox = self.folder(&FolderName::Inbox);
        if !inbox.exists() {
            inbox.create_dirs()?;
        }
        for (_, name) in &self.special {
            let f = self.folder(name);
            if !f.exists() {
                f.create_dirs()?;
                durable::fsync_dir(&self.root)?;
                subscriptions::set(&self.locks, &self.root, name, true)?;
                made.push(name.clone());
            }
        }
        Ok(made)
    }

    /// CREATE. A trailing separator only says the client wants children
    /// (RFC 3501 6.3.3): it is dropped.
    pub fn create(&self, imap_name: &str) -> io::Result<FolderName> {
        let trimmed = imap_name.strip_suffix(self.sep.char()).unwrap_or(imap_name);
        let name = self.parse(trimmed)?;
        let f = self.folder(&name);
        if name == FolderName::Inbox || f.dir().exists() {
            return Err(exists_error());
        }
        fs::create_dir_all(&self.root)?;
        f.create_dirs()?;
        durable::fsync_dir(&self.root)?;
        Ok(name)
    }

    /// DELETE: the folder is first renamed to Dovecot's trash name (one
    /// atomic step that takes it out of every listing), then removed.
    /// Children stay (Maildir++ has no \Noselect folders; Dovecot does
    /// the same). Subscriptions stay (RFC 3501 6.3.4).
    pub fn delete(&self, imap_name: &str) -> io::Result<()> {
        let name = self.parse(imap_name)?;
        if name == FolderName::Inbox {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "INBOX can't be deleted",
            ));
        }
        let dir = name.dir(&self.root);
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "Mailbox doesn't exist",
            ));
        }
        let trash = self.root.join(TRASH_DIR);
        if trash.exists() {
            fs::remove_dir_all(&trash)?;
        }
        fs::rename(&dir, &trash)?;
        durable::fsync_dir(&self.root)?;
        fs::remove_dir_all(&trash)?;
        durable::fsync_dir(&self.root)
    }

    /// RENAME, children included. Renaming INBOX makes the new folder and
    /// moves every INBOX message into it (RFC 3501 6.3.5); INBOX stays.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<FolderName> {
        let from = self.parse(from)?;
        let to = self.parse(to)?;
        if to == FolderName::Inbox {
            return Err(exists_error());
        }
        let to_dir = to.dir(&self.root);
        if to_dir.exists() {
            return Err(exists_error());
        }
        if to.is_below(&from) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Can't rename mailbox under itself",
            ));
        }
        if from == FolderName::Inbox {
            let src = self.folder(&FolderName::Inbox);
            let snap = src.sync()?;
            let dst = self.folder(&to);
            dst.create_dirs()?;
            durable::fsync_dir(&self.root)?;
            let uids: Vec<u32> = snap.messages.iter().map(|m| m.uid).collect();
            src.move_to(&uids, &dst)?;
            return Ok(to);
        }
        let from_dir = from.dir(&self.root);
        if !from_dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "Mailbox doesn't exist",
            ));
        }
        let children: Vec<FolderName> = self
            .list()?
            .into_iter()
            .map(|l| l.name)
            .filter(|n| n.is_below(&from))
            .collect();
        fs::rename(&from_dir, &to_dir)?;
        for child in children {
            if let Some(new) = child.reparent(&from, &to) {
                let (a, b) = (child.dir(&self.root), new.dir(&self.root));
                if !b.exists() {
                    fs::rename(a, b)?;
                }
            }
        }
        // A renamed top-level folder under INBOX. needs no marker change:
        // every subfolder has its maildirfolder file already.
        debug_assert!(to_dir.join(MAILDIRFOLDER).exists() || !to_dir.exists());
        durable::fsync_dir(&self.root)?;
        Ok(to)
    }

    pub fn subscribe(&self, imap_name: &str, on: bool) -> io::Result<bool> {
        let name = self.parse(imap_name)?;
        subscriptions::set(&self.locks, &self.root, &name, on)
    }

    pub fn subscriptions(&self) -> io::Result<Vec<FolderName>> {
        subscriptions::read(&self.root)
    }
}
