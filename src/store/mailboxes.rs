//! Who has which mailbox open, and who wants to hear when one changes.
//!
//! Owns: POP3's exclusive maildrop lock (RFC 1939 4: one session in
//! TRANSACTION state per maildrop; one process, so a set is enough) and
//! the change notices that wake sessions watching a mailbox (an IMAP IDLE
//! session when SMTP, SmartPop or another session changes it).
//! Must not: touch the disk or know any protocol. The loop thread owns
//! the one `Mailboxes`; watchers are named by an opaque number (the
//! driver's token), so the store knows nothing of the event loop.

use std::collections::{HashMap, HashSet};

/// Mailbox addresses are compared case-insensitively.
fn key(mailbox: &str) -> String {
    mailbox.to_ascii_lowercase()
}

#[derive(Debug, Default)]
pub struct Mailboxes {
    exclusive: HashSet<String>,
    watchers: HashMap<String, HashSet<usize>>,
    /// Watchers to wake, each once, however many changes came.
    woken: HashSet<usize>,
}

impl Mailboxes {
    /// Takes the exclusive (POP3) lock; false if another session holds it.
    pub fn lock_exclusive(&mut self, mailbox: &str) -> bool {
        self.exclusive.insert(key(mailbox))
    }

    pub fn unlock_exclusive(&mut self, mailbox: &str) {
        self.exclusive.remove(&key(mailbox));
    }

    pub fn is_locked(&self, mailbox: &str) -> bool {
        self.exclusive.contains(&key(mailbox))
    }

    /// `watcher` wants to be woken when `mailbox` changes.
    pub fn watch(&mut self, mailbox: &str, watcher: usize) {
        self.watchers
            .entry(key(mailbox))
            .or_default()
            .insert(watcher);
    }

    /// Forgets `watcher` everywhere (its session ended).
    pub fn unwatch(&mut self, watcher: usize) {
        self.watchers.retain(|_, w| {
            w.remove(&watcher);
            !w.is_empty()
        });
        self.woken.remove(&watcher);
    }

    /// `mailbox` changed (mail arrived, flags changed, messages expunged):
    /// every watcher but `by` (the session that made the change) is woken.
    pub fn changed(&mut self, mailbox: &str, by: Option<usize>) {
        if let Some(w) = self.watchers.get(&key(mailbox)) {
            self.woken
                .extend(w.iter().copied().filter(|&id| Some(id) != by));
        }
    }

    /// The watchers to wake now, each once.
    pub fn take_woken(&mut self) -> Vec<usize> {
        let mut woken: Vec<usize> = self.woken.drain().collect();
        woken.sort_unstable();
        woken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_lock_is_per_mailbox_and_case_blind() {
        let mut m = Mailboxes::default();
        assert!(m.lock_exclusive("bob@example.test"));
        assert!(!m.lock_exclusive("Bob@Example.test"), "held");
        assert!(m.lock_exclusive("alice@example.test"), "another mailbox");
        m.unlock_exclusive("BOB@example.test");
        assert!(!m.is_locked("bob@example.test"));
        assert!(m.lock_exclusive("bob@example.test"));
    }

    #[test]
    fn changes_wake_every_other_watcher_once() {
        let mut m = Mailboxes::default();
        m.watch("bob@example.test", 1);
        m.watch("bob@example.test", 2);
        m.watch("alice@example.test", 3);
        m.changed("bob@example.test", None);
        m.changed("BOB@example.test", Some(1));
        assert_eq!(m.take_woken(), vec![1, 2]);
        assert!(m.take_woken().is_empty(), "woken once");
        m.changed("bob@example.test", Some(2));
        assert_eq!(m.take_woken(), vec![1], "not the session that changed it");
        m.unwatch(1);
        m.changed("bob@example.test", None);
        assert_eq!(m.take_woken(), vec![2]);
        m.changed("nobody@example.test", None);
        assert!(m.take_woken().is_empty());
    }
}
