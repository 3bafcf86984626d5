//! Everything that puts bytes on disk for good: the one durable-write
//! helper, Maildir folders, local delivery with its trace headers, the
//! outbox queue's files, the POP3 view of a Maildir, and the IMAP mailbox
//! store (`mailbox`: folders, UIDs, flags and modseqs as Dovecot keeps
//! them); and, in memory, who has which mailbox open (`mailboxes`, and
//! `mailbox::registry` per IMAP folder).
//!
//! Must not: speak any protocol or run on the event-loop thread (every
//! function here but `mailboxes`' and `mailbox::registry`'s may block on
//! fsync; call it from `crate::workers`).

pub mod deliver;
pub mod durable;
pub mod mailbox;
pub mod mailboxes;
pub mod maildir;
pub mod maildrop;
pub mod queue;
pub mod trace;

/// Seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
