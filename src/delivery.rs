//! Accepting one message for its recipients: copies into local Maildirs,
//! and one outbox entry for the remote recipients, all or nothing.
//!
//! Runs on a worker thread (it fsyncs). Used by SMTP, `sendmail`, bounces
//! and SmartPop, so that every way in writes mail the same way.

use std::path::Path;
use std::time::SystemTime;

use log::info;

use crate::config::Config;
use crate::proto::envelope::{DeliveryOutcome, Transaction};
use crate::store::deliver::{self, DeliveryError, LocalDelivery, LocalRecipient};
use crate::store::queue::{Queue, QueueEntry};
use crate::store::trace::{self, TraceInfo};
use crate::store::unix_secs;

/// Where one accepted message goes, after recipient resolution.
pub struct Routed {
    pub local: Vec<LocalRecipient>,
    pub remote: Vec<String>,
}

/// Collects every recipient's mailboxes and remote addresses, each once.
pub fn route(config: &Config, tx: &Transaction) -> Routed {
    let mut local: Vec<LocalRecipient> = Vec::new();
    let mut remote: Vec<String> = Vec::new();
    for rcpt in &tx.recipients {
        for mailbox in &rcpt.resolution.local {
            if local.iter().any(|l| &l.mailbox == mailbox) {
                continue;
            }
            local.push(LocalRecipient {
                mailbox: mailbox.clone(),
                original: rcpt.address.clone(),
                quota: config.mailboxes.get(mailbox).and_then(|m| m.quota),
            });
        }
        for addr in &rcpt.resolution.remote {
            if !remote.iter().any(|r| r.eq_ignore_ascii_case(addr)) {
                remote.push(addr.clone());
            }
        }
    }
    Routed { local, remote }
}

/// Stores `tx` durably; the outcome is the reply the client gets, and the
/// outbox entry made for its remote recipients, if any.
pub fn accept(
    config: &Config,
    tx: Transaction,
    tls: Option<String>,
) -> (DeliveryOutcome, Option<QueueEntry>) {
    let now = SystemTime::now();
    let trace = TraceInfo {
        hostname: config.server.hostname.clone(),
        helo: tx.helo.clone(),
        peer: tx.peer,
        protocol: tx.protocol,
        tls,
        auth_user: tx.auth_user.clone(),
        via: None,
        id: trace::new_id(now),
    };
    let routed = route(config, &tx);
    match store(&config.server.data_dir, config, &tx, &routed, &trace, now) {
        Ok(queued) => {
            let to: Vec<String> = tx
                .recipients
                .iter()
                .map(|r| format!("<{}>", r.address))
                .collect();
            info!(
                "accepted id={} from=<{}> to={} size={} client={} [{}]{}",
                trace.id,
                tx.reverse_path,
                to.join(","),
                tx.data.len(),
                trace::sanitize(&tx.helo, 64),
                tx.peer,
                tx.auth_user
                    .as_deref()
                    .map(|u| format!(" user={u}"))
                    .unwrap_or_default()
            );
            (DeliveryOutcome::Accepted { queue_id: trace.id }, queued)
        }
        Err(e) => {
            info!(
                "rejected from=<{}> client=[{}]: {e}",
                tx.reverse_path, tx.peer
            );
            let (code, enhanced, text) = (e.code(), e.enhanced(), e.text().to_string());
            let outcome = if e.is_permanent() {
                DeliveryOutcome::PermFail {
                    code,
                    enhanced,
                    text,
                }
            } else {
                DeliveryOutcome::TempFail {
                    code,
                    enhanced,
                    text,
                }
            };
            (outcome, None)
        }
    }
}

/// The remote part is queued first: if the local copies then fail, the
/// queue entry is removed again, so the client's retry after a 4xx finds
/// nothing half done.
fn store(
    data_dir: &Path,
    config: &Config,
    tx: &Transaction,
    routed: &Routed,
    trace: &TraceInfo,
    now: SystemTime,
) -> Result<Option<QueueEntry>, DeliveryError> {
    deliver::check_hops(&tx.data)?;
    let queued = if routed.remote.is_empty() {
        None
    } else {
        Some(crate::delivery::enqueue_relayed(
            config,
            tx,
            &routed.remote,
            trace,
            now,
        )?)
    };
    if routed.local.is_empty() {
        return Ok(queued);
    }
    let request = LocalDelivery {
        extra_headers: String::new(),
        delivered_to_check: true,
        reverse_path: tx.reverse_path.clone(),
        recipients: routed.local.clone(),
        trace: trace.clone(),
        message: &tx.data,
    };
    match deliver::deliver_local(data_dir, &request) {
        Ok(_) => Ok(queued),
        Err(e) => {
            if let Some(entry) = queued {
                crate::delivery::cancel(config, &entry.id);
            }
            Err(e)
        }
    }
}

/// Queues the remote recipients of an accepted transaction, with our
/// `Received:` line on top. Returns the queue id once it is durable.
pub fn enqueue_relayed(
    config: &Config,
    tx: &Transaction,
    remote: &[String],
    trace_info: &TraceInfo,
    now: SystemTime,
) -> Result<QueueEntry, DeliveryError> {
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
) -> Result<QueueEntry, DeliveryError> {
    let queue = Queue::at(&config.server.data_dir);
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
    if let Err(e) = Queue::at(&config.server.data_dir).remove(id) {
        log::error!("cannot remove queue entry {id} of a failed transaction: {e}");
    }
}
