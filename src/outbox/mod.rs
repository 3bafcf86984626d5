//! The outbox's storage and policy: the queue on disk (`queue`), the retry
//! schedule (`schedule`) and delivery status notifications (`bounce`).
//!
//! Owns: everything about a queued message except moving its bytes to
//! another server. Must not: open sockets, resolve names, or speak SMTP;
//! the outbound connection driver does that and calls in here.

pub mod bounce;
pub mod queue;
pub mod runner;
pub mod schedule;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::proto::smtp_server::Transaction;
use crate::store::deliver::DeliveryError;
use crate::store::trace::{self, TraceInfo};

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Queues the remote recipients of an accepted transaction, with our
/// `Received:` line on top. Returns the queue id once it is durable.
pub fn enqueue_relayed(
    config: &Config,
    tx: &Transaction,
    remote: &[String],
    trace_info: &TraceInfo,
    now: SystemTime,
) -> Result<queue::QueueEntry, DeliveryError> {
    let for_rcpt = match remote {
        [one] => Some(one.as_str()),
        _ => None,
    };
    let received = trace::received_line(trace_info, for_rcpt, now);
    let mut message = Vec::with_capacity(received.len() + tx.data.len());
    message.extend_from_slice(received.as_bytes());
    message.extend_from_slice(&tx.data);
    enqueue(config, &tx.reverse_path, remote, &message, tx.smtputf8, now)
}

/// Queues `message` (headers complete) for `recipients`.
pub fn enqueue(
    config: &Config,
    sender: &str,
    recipients: &[String],
    message: &[u8],
    smtputf8: bool,
    now: SystemTime,
) -> Result<queue::QueueEntry, DeliveryError> {
    let queue = queue::Queue::at(&config.server.data_dir);
    queue
        .ensure_dirs()
        .and_then(|_| queue.enqueue(sender, recipients, message, smtputf8, unix_secs(now)))
        .inspect(|entry| {
            log::info!(
                "queued id={} from=<{sender}> to={} size={}",
                entry.id,
                recipients
                    .iter()
                    .map(|r| format!("<{r}>"))
                    .collect::<Vec<_>>()
                    .join(","),
                message.len()
            );
        })
        .map_err(|e| DeliveryError::from_io(&e))
}

/// Takes back an entry that was queued for a transaction that then failed.
pub fn cancel(config: &Config, id: &str) {
    if let Err(e) = queue::Queue::at(&config.server.data_dir).remove(id) {
        log::error!("cannot remove queue entry {id} of a failed transaction: {e}");
    }
}

/// `mailgate queue`: the listing, read from the files (no server needed).
pub fn listing(config: &Config) -> Result<String, String> {
    let data_dir = &config.server.data_dir;
    // "Outbox is empty" would hide a wrong data_dir (or a server that
    // never ran): say what is missing instead.
    if !data_dir.is_dir() {
        return Err(format!(
            "data_dir {} does not exist (no server has run with this config yet?)",
            data_dir.display()
        ));
    }
    let loaded = queue::Queue::at(&config.server.data_dir).load_all();
    for p in &loaded.problems {
        eprintln!("warning: {p}");
    }
    Ok(queue::format_listing(
        &loaded.entries,
        unix_secs(SystemTime::now()),
    ))
}

/// Makes untrusted text (a remote server's reply, an address) safe for one
/// `key: value` line of an envelope file, a header field body or a terminal:
/// every control character (CR, LF, NUL, ESC, ...) and Unicode line or
/// paragraph separator becomes a space, runs of whitespace collapse to one
/// space, and the result is cut to at most `max_chars` characters.
pub fn one_line(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars));
    let mut count = 0;
    let mut pending_space = false;
    for c in text.chars() {
        let blank = c.is_whitespace() || c.is_control() || c == '\u{2028}' || c == '\u{2029}';
        if blank {
            pending_space = !out.is_empty();
            continue;
        }
        let needed = if pending_space { 2 } else { 1 };
        if count + needed > max_chars {
            break;
        }
        if pending_space {
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        out.push(c);
        count += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_table() {
        let cases: &[(&str, usize, &str)] = &[
            ("plain", 100, "plain"),
            ("  lead and trail  ", 100, "lead and trail"),
            (
                "550-5.1.1 no\r\n550 5.1.1 such user",
                100,
                "550-5.1.1 no 550 5.1.1 such user",
            ),
            ("a\0b\x1b[31mc", 100, "a b [31mc"),
            ("x\r\nSubject: injected", 100, "x Subject: injected"),
            ("tab\there", 100, "tab here"),
            ("abcdef", 3, "abc"),
            ("ab cd", 3, "ab"),
            ("", 10, ""),
            ("\r\n\r\n", 10, ""),
            ("ünïcödé line\u{2028}sep", 100, "ünïcödé line sep"),
            ("ünï", 2, "ün"),
        ];
        for (input, max, want) in cases {
            assert_eq!(one_line(input, *max), *want, "input {input:?}");
        }
    }
}
