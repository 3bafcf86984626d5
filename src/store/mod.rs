//! Everything that puts bytes on disk for good: the one durable-write
//! helper, Maildir folders, local delivery with its trace headers, the
//! outbox queue's files, the SMTP intake spool and the message bodies
//! delivered from memory or from it, the POP3 view of a Maildir, and the
//! IMAP mailbox store (`mailbox`: folders, UIDs, flags and modseqs as
//! Dovecot keeps them); and, in memory, who has which mailbox open
//! (`mailboxes`) and the folder views IMAP sessions share
//! (`mailbox::SharedSnapshots`).
//!
//! Must not: speak any protocol or run on the event-loop thread (every
//! function here but `mailboxes`' and `SharedSnapshots`' may block on
//! fsync; call it from `crate::workers`).

pub mod deliver;
pub mod durable;
pub mod mailbox;
pub mod mailboxes;
pub mod maildir;
pub mod maildrop;
pub mod message;
pub mod queue;
pub mod spool;
pub mod trace;

/// Seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
