//! The IMAP mailbox store: a user's Maildir as Dovecot lays it out
//! (Maildir++ folders, `dovecot-uidlist` v3, `dovecot-keywords`,
//! `dovecot-uidvalidity`, `subscriptions`, flags in file names), so
//! Dovecot can take a mailbox over or hand one back and no client
//! downloads anything twice, plus the CONDSTORE/QRESYNC state Dovecot
//! keeps only in its indexes (`mailgate-modseq`).
//!
//! - `names`: IMAP names <-> `.Folder` directories, validation.
//! - `flags`: `:2,DFRST` + keyword letters.
//! - `uidlist`, `keywords`, `uidvalidity`, `subscriptions`: Dovecot files.
//! - `dotlock`: Dovecot's `dovecot-uidlist.lock`.
//! - `fasthash`: the hash of the maps a folder scan builds.
//! - `modseq`: our modseq and expunge records.
//! - `folder`: sync (snapshots), APPEND, COPY, MOVE, STORE, EXPUNGE.
//! - `tree`: the folder tree (LIST, CREATE, DELETE, RENAME,
//!   special-use, subscriptions).
//! - here: `SharedSnapshots`, the folder views sessions share
//!   (loop-owned).
//!
//! Must not: speak IMAP (that is `proto::imap`) or run on the event loop
//! (every operation may fsync; `SharedSnapshots` alone is plain data).

pub mod dotlock;
pub mod fasthash;
pub mod flags;
pub mod folder;
pub mod keywords;
pub mod modseq;
pub mod names;
pub mod subscriptions;
pub mod tree;
pub mod uidlist;
pub mod uidvalidity;

pub use dotlock::LockTable;
pub use folder::{
    Copied, Diff, FlagOp, Folder, Message, Moved, NewMessage, Snapshot, Stored, UidMap,
};
pub use names::{FolderName, NameError, Separator, SpecialUse};
pub use tree::{Listed, Mailbox};

/// Snapshots sessions may share, by folder directory (loop-owned plain
/// data; entries die with their last session).
#[derive(Debug, Default)]
pub struct SharedSnapshots {
    by_dir: std::collections::HashMap<std::path::PathBuf, std::sync::Weak<Snapshot>>,
}

impl SharedSnapshots {
    /// `snap` itself, or an equal snapshot another session already holds.
    pub fn share(
        &mut self,
        dir: &std::path::Path,
        snap: std::sync::Arc<Snapshot>,
    ) -> std::sync::Arc<Snapshot> {
        if let Some(other) = self.by_dir.get(dir).and_then(std::sync::Weak::upgrade) {
            if std::sync::Arc::ptr_eq(&other, &snap) {
                return snap;
            }
            if other.uidvalidity == snap.uidvalidity
                && other.uid_next == snap.uid_next
                && other.highest_modseq == snap.highest_modseq
                && other.messages.len() == snap.messages.len()
                && snap.diff(&other).is_empty()
                // The newer stamp wins: one that cannot vouch (taken just
                // after a change) kept in place of one that can would make
                // every later NOOP and IDLE wake-up a full rescan.
                && other.same_stamp(&snap)
            {
                return other;
            }
        }
        if self.by_dir.len() > 64 {
            self.by_dir.retain(|_, w| w.strong_count() > 0);
        }
        self.by_dir
            .insert(dir.to_path_buf(), std::sync::Arc::downgrade(&snap));
        snap
    }

    /// The live snapshots of folders under `root` (one account's), for a
    /// SELECT or EXAMINE on a worker to start from.
    pub fn under(&self, root: &std::path::Path) -> Known {
        Known(
            self.by_dir
                .iter()
                .filter(|(dir, _)| dir.starts_with(root))
                .filter_map(|(dir, w)| Some((dir.clone(), w.upgrade()?)))
                .collect(),
        )
    }
}

/// Snapshots other sessions hold, by folder directory (see
/// [`SharedSnapshots::under`]); [`Folder::select`] checks one before use.
#[derive(Debug, Default)]
pub struct Known(Vec<(std::path::PathBuf, std::sync::Arc<Snapshot>)>);

impl Known {
    pub fn of(&self, dir: &std::path::Path) -> Option<&std::sync::Arc<Snapshot>> {
        self.0.iter().find(|(d, _)| d == dir).map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests;
