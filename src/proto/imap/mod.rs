//! The IMAP4rev1 server core (RFC 3501 and the extensions of issue 13),
//! sans-IO.
//!
//! Owns: the command grammar and its framing (`parser`), the modified
//! UTF-7 mailbox-name codec (`utf7`), the command and data types
//! (`types`), response encoding (`response`), message structure,
//! sections and search matching computed from a message's bytes (`mime`,
//! `search`), and the selected mailbox as a session sees it (`view`:
//! sequence numbers, UIDs, flags, modseqs, and the untagged updates),
//! QRESYNC's choice of what a resyncing client is told (`qresync`), and
//! which messages are `\Recent` for a session (`recent`).
//!
//! Not here yet: the session state machine (states, dispatch, events to
//! the driver); the driver and the store are written elsewhere.
//!
//! Must not: import anything else of the crate, touch sockets, files,
//! clocks or threads. The mailbox is seen through plain data types
//! defined here; the store and the connection driver fill them in.

pub mod capability;
pub mod mime;
pub mod parser;
pub mod qresync;
pub mod recent;
pub mod response;
pub mod search;
pub mod session;
pub mod types;
pub mod utf7;
pub mod view;
