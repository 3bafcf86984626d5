//! Accepting one message for its recipients: copies into local Maildirs,
//! and one outbox entry for the remote recipients, all or nothing.
//!
//! Runs on a worker thread (it fsyncs). Used by SMTP, `sendmail`, bounces
//! and SmartPop, so that every way in writes mail the same way. The body
//! is in memory (`Transaction::data`) or, for a large SMTP message, in the
//! spool (`store::spool`), from which every copy is streamed.

use std::path::Path;
use std::time::SystemTime;

use log::info;

use crate::config::Config;
use crate::proto::envelope::{DeliveryOutcome, Transaction};
use crate::store::deliver::{self, DeliveryError, LocalDelivery, LocalRecipient};
use crate::store::message::Message;
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
    accept_message(config, &tx, Message::Wire(&tx.data), tls)
}

/// [`accept`] for a transaction whose body is `message` (`tx.data` is
/// not looked at): every copy is written from it.
pub fn accept_message(
    config: &Config,
    tx: &Transaction,
    message: Message<'_>,
    tls: Option<String>,
) -> (DeliveryOutcome, Option<QueueEntry>) {
    accept_checked(config, tx, message, tls, &Checked::default())
}

/// What the MX role's checks (SPF, DKIM, DMARC) add to a delivery.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Header lines (CRLF-terminated) for each local copy:
    /// `Authentication-Results:`.
    pub headers: String,
    /// DMARC asked for quarantine: local copies go to the Junk folder.
    pub junk: bool,
}

/// [`accept_message`] for a message the MX checks passed or quarantined.
pub fn accept_checked(
    config: &Config,
    tx: &Transaction,
    message: Message<'_>,
    tls: Option<String>,
    checked: &Checked,
) -> (DeliveryOutcome, Option<QueueEntry>) {
    // Every way in checks its addresses (the SMTP parser, `sendmail`);
    // this is the last line before they reach headers and queue files.
    let hostile = std::iter::once(&tx.reverse_path)
        .chain(tx.recipients.iter().map(|r| &r.address))
        .any(|a| crate::proto::address::has_control(a));
    if hostile {
        info!(
            "rejected client=[{}]: control character in an address",
            tx.peer
        );
        return (
            DeliveryOutcome::PermFail {
                code: 553,
                enhanced: "5.1.7",
                text: "control character in an address".into(),
            },
            None,
        );
    }
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
    let routed = route(config, tx);
    match store(config, tx, message, &routed, &trace, now, checked) {
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
                message.sizes().map_or(0, |s| s.1),
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
            (refusal(&e), None)
        }
    }
}

/// The reply for a delivery that failed.
pub fn refusal(e: &DeliveryError) -> DeliveryOutcome {
    let (code, enhanced, text) = (e.code(), e.enhanced(), e.text().to_string());
    if e.is_permanent() {
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
    }
}

/// The remote part is queued first: if the local copies then fail, the
/// queue entry is removed again, so the client's retry after a 4xx finds
/// nothing half done.
fn store(
    config: &Config,
    tx: &Transaction,
    message: Message<'_>,
    routed: &Routed,
    trace: &TraceInfo,
    now: SystemTime,
    checked: &Checked,
) -> Result<Option<QueueEntry>, DeliveryError> {
    let data_dir: &Path = &config.server.data_dir;
    deliver::check_hops_of(&message)?;
    let queued = if routed.remote.is_empty() {
        None
    } else {
        Some(enqueue_relayed_with(
            config,
            tx,
            message,
            &routed.remote,
            trace,
            now,
            &checked.headers,
        )?)
    };
    if routed.local.is_empty() {
        return Ok(queued);
    }
    let request = LocalDelivery {
        extra_headers: checked.headers.clone(),
        delivered_to_check: true,
        reverse_path: tx.reverse_path.clone(),
        recipients: routed.local.clone(),
        trace: trace.clone(),
        message,
    };
    let stored = if checked.junk {
        deliver::deliver_local_junk(data_dir, &request)
    } else {
        deliver::deliver_local(data_dir, &request)
    };
    match stored {
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
    message: Message<'_>,
    remote: &[String],
    trace_info: &TraceInfo,
    now: SystemTime,
) -> Result<QueueEntry, DeliveryError> {
    enqueue_relayed_with(config, tx, message, remote, trace_info, now, "")
}

/// [`enqueue_relayed`] with `extra_headers` (CRLF-terminated, e.g. the MX
/// checks' `Authentication-Results:`) below our `Received:` line.
fn enqueue_relayed_with(
    config: &Config,
    tx: &Transaction,
    message: Message<'_>,
    remote: &[String],
    trace_info: &TraceInfo,
    now: SystemTime,
    extra_headers: &str,
) -> Result<QueueEntry, DeliveryError> {
    let for_rcpt = match remote {
        [one] => Some(one.as_str()),
        _ => None,
    };
    let mut received = trace::received_line(trace_info, for_rcpt, now);
    received.push_str(extra_headers);
    // Mail our own users send is signed once, here (the queue holds the
    // signed message); mail from outside only passing through is not.
    if tx.auth_user.is_some() || tx.protocol == "local" || config.relay_allowed(tx.peer) {
        received.insert_str(0, &crate::signing::signatures(config, &message));
    }
    let size = received.len() as u64 + message.sizes().map_or(0, |s| s.1);
    let entry = QueueLine {
        sender: &tx.reverse_path,
        recipients: remote,
        smtputf8: tx.smtputf8,
        id: Some(&trace_info.id),
        size,
    };
    enqueue_with(config, &entry, now, &mut |w| {
        message.write_stored(received.as_bytes(), w)
    })
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
    let signed = crate::signing::signatures(config, &Message::Wire(message));
    let entry = QueueLine {
        sender,
        recipients,
        smtputf8,
        id: None,
        size: (signed.len() + message.len()) as u64,
    };
    enqueue_with(config, &entry, now, &mut |w| {
        crate::store::maildir::write_lf(w, &[signed.as_bytes(), message])
    })
}

/// What a new queue entry is, for [`enqueue_with`].
#[derive(Clone, Copy)]
struct QueueLine<'a> {
    sender: &'a str,
    recipients: &'a [String],
    smtputf8: bool,
    /// The message's id so far (its `Received:` id), kept as its queue id
    /// when free: one id per message in the log.
    id: Option<&'a str>,
    /// On the wire, for the log.
    size: u64,
}

/// [`enqueue`] with the message (stored form) written by `fill`.
fn enqueue_with(
    config: &Config,
    line: &QueueLine<'_>,
    now: SystemTime,
    fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<QueueEntry, DeliveryError> {
    let queue = Queue::at(&config.server.data_dir);
    let QueueLine {
        sender,
        recipients,
        smtputf8,
        id,
        size,
    } = *line;
    queue
        .ensure_dirs()
        .and_then(|_| queue.enqueue_with(sender, recipients, smtputf8, unix_secs(now), id, fill))
        .inspect(|entry| {
            log::info!(
                "queued id={} from=<{sender}> to={} size={}",
                entry.id,
                recipients
                    .iter()
                    .map(|r| format!("<{r}>"))
                    .collect::<Vec<_>>()
                    .join(","),
                size
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

/// Delivers a message mailgate wrote itself (a bounce) for `to` with the
/// null reverse-path: a copy into each of `local`'s mailboxes (what `to`
/// resolved to), and one queue entry for the `remote` addresses.
pub fn deliver_notice(
    config: &Config,
    to: &str,
    local: &[String],
    remote: &[String],
    message: &[u8],
    now: SystemTime,
) -> Result<(), DeliveryError> {
    if !local.is_empty() {
        let request = LocalDelivery {
            extra_headers: String::new(),
            delivered_to_check: true,
            reverse_path: String::new(),
            recipients: local
                .iter()
                .map(|m| LocalRecipient {
                    mailbox: m.clone(),
                    original: to.to_string(),
                    quota: None,
                })
                .collect(),
            trace: TraceInfo {
                hostname: config.server.hostname.clone(),
                helo: config.server.hostname.clone(),
                peer: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                protocol: "local",
                tls: None,
                auth_user: None,
                via: None,
                id: trace::new_id(now),
            },
            message: Message::Wire(message),
        };
        deliver::deliver_local(&config.server.data_dir, &request)?;
    }
    if !remote.is_empty() {
        let smtputf8 = remote.iter().any(|r| !r.is_ascii());
        enqueue(config, "", remote, message, smtputf8, now)?;
    }
    Ok(())
}
