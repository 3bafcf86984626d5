//! The outbox's policy: which queued messages are due and where they go
//! (`runner`), the retry schedule (`schedule`), delivery status
//! notifications (`bounce`), and the jobs it hands to outbound sessions
//! (`job`). The queue's files are `store::queue`.
//!
//! Owns: everything about a queued message except moving its bytes to
//! another server. Must not: open sockets, resolve names, or speak SMTP;
//! the outbound connection driver does that and reports back.

pub mod bounce;
pub mod job;
pub mod runner;
pub mod schedule;

pub use job::{GroupReport, OutboundJob, RouteSpec};

use std::time::SystemTime;

use crate::config::Config;
use crate::store::queue;

pub use crate::store::unix_secs;

/// `mailgate queue`: the listing, read from the files (no server needed).
pub fn listing(config: &Config) -> Result<String, String> {
    let loaded = queue::Queue::at(&config.server.data_dir).load_all();
    for p in &loaded.problems {
        eprintln!("warning: {p}");
    }
    Ok(queue::format_listing(
        &loaded.entries,
        unix_secs(SystemTime::now()),
    ))
}
