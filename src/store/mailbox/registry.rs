//! Who has which folder open, and who must hear of a change: plain data
//! the event loop owns (no threads, no IO, no clock).
//!
//! A session registers the folder it selected with [`Registry::open`].
//! When a worker finishes a change (APPEND, STORE, EXPUNGE, COPY/MOVE into
//! a folder) the loop calls [`Registry::publish`] with the new snapshot:
//! every other session on that folder gets a pending [`Notice`], and the
//! ones in IDLE are returned so the loop can wake them at once. Mail that
//! arrives from outside IMAP (SMTP, SmartPop, a POP3 QUIT, Dovecot) is
//! announced with [`Registry::touch`]: those sessions re-sync (cheaply:
//! `Folder::changed_since` is three stats) and diff snapshots
//! (`Snapshot::diff`) to produce EXISTS / EXPUNGE / FETCH.
//!
//! The latest snapshot of a folder is kept while sessions have it open, so
//! a woken session can adopt it without a rescan of its own.
//!
//! Must not: do IO, or hold a snapshot of a folder nobody has open.

use super::folder::{Diff, Snapshot};
use super::names::FolderName;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The driver's token, as in `store::mailboxes`.
pub type SessionId = usize;

/// One folder of one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FolderKey {
    pub root: PathBuf,
    pub name: FolderName,
}

/// What a session has yet to hear about (set bits; the session finds the
/// details by diffing snapshots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notice {
    pub arrived: bool,
    pub flags: bool,
    pub expunged: bool,
    /// Changed outside IMAP, or unknown: re-sync from disk.
    pub resync: bool,
}

impl Notice {
    pub fn any(&self) -> bool {
        self.arrived || self.flags || self.expunged || self.resync
    }
    fn merge(&mut self, o: Notice) {
        self.arrived |= o.arrived;
        self.flags |= o.flags;
        self.expunged |= o.expunged;
        self.resync |= o.resync;
    }
    pub fn of(diff: &Diff) -> Notice {
        Notice {
            arrived: !diff.added.is_empty(),
            flags: !diff.flags.is_empty() || diff.keywords_changed,
            expunged: !diff.expunged.is_empty(),
            resync: diff.uidvalidity_changed,
        }
    }
}

#[derive(Debug, Default)]
struct Watch {
    idle: bool,
    pending: Notice,
}

#[derive(Debug, Default)]
struct Entry {
    latest: Option<Arc<Snapshot>>,
    sessions: BTreeMap<SessionId, Watch>,
}

#[derive(Debug, Default)]
pub struct Registry {
    folders: HashMap<FolderKey, Entry>,
    by_session: HashMap<SessionId, FolderKey>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// `session` selected `key` (leaving whatever it had selected).
    pub fn open(&mut self, key: FolderKey, session: SessionId, snapshot: Arc<Snapshot>) {
        self.close(session);
        let e = self.folders.entry(key.clone()).or_default();
        e.sessions.insert(session, Watch::default());
        if e.latest.as_ref().is_none_or(|l| newer(&snapshot, l)) {
            e.latest = Some(snapshot);
        }
        self.by_session.insert(session, key);
    }

    /// The session closed its folder or went away.
    pub fn close(&mut self, session: SessionId) {
        if let Some(key) = self.by_session.remove(&session) {
            if let Some(e) = self.folders.get_mut(&key) {
                e.sessions.remove(&session);
                if e.sessions.is_empty() {
                    self.folders.remove(&key);
                }
            }
        }
    }

    pub fn set_idle(&mut self, session: SessionId, idle: bool) {
        if let Some(w) = self.watch(session) {
            w.idle = idle;
        }
    }

    fn watch(&mut self, session: SessionId) -> Option<&mut Watch> {
        let key = self.by_session.get(&session)?;
        self.folders.get_mut(key)?.sessions.get_mut(&session)
    }

    /// A change made by `origin` (or by a worker for nobody, `None`)
    /// produced `snapshot`. Returns the IDLE sessions to wake now.
    pub fn publish(
        &mut self,
        key: &FolderKey,
        origin: Option<SessionId>,
        snapshot: Arc<Snapshot>,
        notice: Notice,
    ) -> Vec<SessionId> {
        let Some(e) = self.folders.get_mut(key) else {
            return Vec::new();
        };
        if e.latest.as_ref().is_none_or(|l| newer(&snapshot, l)) {
            e.latest = Some(snapshot);
        }
        notify(e, origin, notice)
    }

    /// Something outside IMAP changed `key` (delivery to INBOX, POP3
    /// QUIT): everyone re-syncs. Returns the IDLE sessions to wake.
    pub fn touch(&mut self, key: &FolderKey) -> Vec<SessionId> {
        let Some(e) = self.folders.get_mut(key) else {
            return Vec::new();
        };
        notify(
            e,
            None,
            Notice {
                resync: true,
                ..Notice::default()
            },
        )
    }

    /// Every session with a folder of this mailbox open (a delivery that
    /// does not know the folder, or a POP3 session's deletions).
    pub fn touch_mailbox(&mut self, root: &Path) -> Vec<SessionId> {
        let keys: Vec<FolderKey> = self
            .folders
            .keys()
            .filter(|k| k.root == root)
            .cloned()
            .collect();
        keys.iter().flat_map(|k| self.touch(k)).collect()
    }

    /// What `session` has to report (and clears it).
    pub fn take_notice(&mut self, session: SessionId) -> Notice {
        self.watch(session)
            .map(|w| std::mem::take(&mut w.pending))
            .unwrap_or_default()
    }

    /// The newest snapshot any session or worker published for `key`.
    pub fn latest(&self, key: &FolderKey) -> Option<Arc<Snapshot>> {
        self.folders.get(key).and_then(|e| e.latest.clone())
    }

    /// Sessions that have `key` open (POP3 needs to know IMAP is there).
    pub fn sessions(&self, key: &FolderKey) -> Vec<SessionId> {
        self.folders
            .get(key)
            .map(|e| e.sessions.keys().copied().collect())
            .unwrap_or_default()
    }
}

fn newer(a: &Snapshot, b: &Snapshot) -> bool {
    a.uidvalidity != b.uidvalidity || a.highest_modseq >= b.highest_modseq
}

fn notify(e: &mut Entry, origin: Option<SessionId>, notice: Notice) -> Vec<SessionId> {
    let mut wake = Vec::new();
    for (id, w) in e.sessions.iter_mut() {
        if Some(*id) == origin {
            continue;
        }
        w.pending.merge(notice);
        if w.idle && w.pending.any() {
            wake.push(*id);
        }
    }
    wake
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;
    use crate::store::mailbox::dotlock::test_table;
    use crate::store::mailbox::flags::SEEN;
    use crate::store::mailbox::folder::{FlagOp, Folder, NewMessage};

    #[test]
    fn notices_reach_other_sessions_and_wake_idle_ones() {
        let t = TempDir::new("registry");
        let root = t.path().join("m");
        let f = Folder::new(&root, FolderName::Inbox, &test_table());
        f.create_dirs().unwrap();
        let key = FolderKey {
            root: root.clone(),
            name: FolderName::Inbox,
        };
        let s0 = f.sync().unwrap();
        let mut r = Registry::new();
        r.open(key.clone(), 1, s0.clone());
        r.open(key.clone(), 2, s0.clone());
        r.open(key.clone(), 3, s0.clone());
        r.set_idle(2, true);
        // Session 1 appends: 2 (IDLE) is woken, 3 finds it at its next command.
        let spool = t.path().join("spool");
        std::fs::write(&spool, "Subject: x\r\n\r\ny\r\n").unwrap();
        let (_, s1) = f
            .append(&[NewMessage {
                spool: &spool,
                system: 0,
                keywords: &[],
                internal_date: None,
            }])
            .unwrap();
        let notice = Notice::of(&s1.diff(&s0));
        assert!(notice.arrived && !notice.flags);
        assert_eq!(r.publish(&key, Some(1), s1.clone(), notice), vec![2]);
        assert!(!r.take_notice(1).any(), "the origin already knows");
        assert!(r.take_notice(2).arrived);
        assert!(r.take_notice(3).arrived);
        assert!(!r.take_notice(3).any(), "taken once");
        // The woken session adopts the shared snapshot and diffs.
        let latest = r.latest(&key).unwrap();
        assert_eq!(latest.diff(&s0).added, [1]);
        // A flag change by 3, an outside delivery: touch wakes IDLE sessions.
        let st = f.store(&[1], FlagOp::Add, SEEN, &[], None).unwrap();
        let n = Notice::of(&st.snapshot.diff(&s1));
        assert!(n.flags);
        assert_eq!(r.publish(&key, Some(3), st.snapshot.clone(), n), vec![2]);
        assert_eq!(r.touch_mailbox(&root), vec![2]);
        assert!(r.take_notice(1).resync);
        // Sessions leave; the last one drops the folder and its snapshot.
        r.close(1);
        r.close(2);
        assert_eq!(r.sessions(&key), vec![3]);
        r.close(3);
        assert!(r.latest(&key).is_none());
        assert!(r.touch(&key).is_empty());
    }
}
