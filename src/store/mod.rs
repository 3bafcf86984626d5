//! Everything that puts bytes on disk for good: the one durable-write
//! helper, Maildir folders, local delivery with its trace headers, and the
//! POP3 view of a Maildir.
//!
//! Must not: speak any protocol or run on the event-loop thread (every
//! function here may block on fsync; call it from `crate::workers`).

pub mod deliver;
pub mod durable;
pub mod maildir;
pub mod maildrop;
pub mod trace;
