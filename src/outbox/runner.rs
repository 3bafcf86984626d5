//! The outbox at work: decides which queued messages are due, returns one
//! outbound job per message and destination, collects the sessions'
//! reports, and hands back the finished attempts for a worker to record
//! (retry times, bounces, removal; `record` below).
//!
//! Lives on the loop thread and touches no file there: the server reads
//! the queue folder on a worker when `wants_full_scan` says so, and every
//! write to the queue happens on a worker, one job per message at a time.
//! A flush (which rewrites every envelope) runs only while no attempt is
//! being recorded, and no attempt is recorded while it runs, so two
//! writers never race on an envelope.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{error, info, warn};

use crate::config::{Config, OutboxMode};
use crate::outbox::bounce::{self, BounceParams, FailedRecipient};
use crate::outbox::schedule::{self, Next};
use crate::outbox::unix_secs;
use crate::outbox::{GroupReport, OutboundJob, RouteSpec};
use crate::proto::smtp_client::{Credentials, Outcome};
use crate::store::queue::{Loaded, Queue, QueueEntry, RcptState};

/// Outbound sessions at once: a home uplink gains nothing from more, and
/// each costs a socket and buffers.
const MAX_SESSIONS: usize = 4;

/// Wait before retrying a bounce that could not be stored, when the retry
/// list is empty (the config refuses that; this keeps `record` total).
const BOUNCE_RETRY_SECS: u64 = 300;

/// Look at the queue at least this often, to pick up what `sendmail` queued
/// while no signal could reach us.
const SAFETY_SCAN: Duration = Duration::from_secs(300);

/// One message being delivered: its sessions' reports, gathered until the
/// last one is in.
struct Attempt {
    entry: QueueEntry,
    sessions_left: usize,
    reports: Vec<GroupReport>,
}

/// What a worker's `record` did to one entry.
pub struct Recorded {
    pub id: String,
    /// The entry as now on disk; None once removed (finished).
    pub entry: Option<QueueEntry>,
    /// A bounce went into the queue: read the queue again to see it.
    pub queued_bounce: bool,
}

pub struct Outbox {
    /// The queue as this process knows it, by id. Read whole from disk at
    /// start, on flush and every SAFETY_SCAN (to see what `sendmail`
    /// queued); otherwise kept current from what this process writes, so
    /// a busy relay does not re-read every envelope for every message.
    known: BTreeMap<String, QueueEntry>,
    /// When the queue folder is next read whole.
    next_full_scan: Instant,
    /// A worker is reading the queue folder.
    scanning: bool,
    /// `mailgate flush` asked; starts once nothing is being recorded.
    flush_wanted: bool,
    /// A worker is making every entry due.
    flushing: bool,
    attempts: HashMap<String, Attempt>,
    /// Entries whose results a worker is writing.
    recording: HashSet<String>,
    /// When `known` is next looked at for due entries.
    next_scan: Option<Instant>,
    sessions: usize,
    /// Direct mode: hosts whose STARTTLS handshake failed; the next
    /// attempt to them goes without TLS (opportunistic TLS, RFC 7435).
    plaintext_hosts: HashSet<String>,
    verified_tls: Option<Arc<rustls::ClientConfig>>,
    opportunistic_tls: Arc<rustls::ClientConfig>,
    /// `auth = oauth2`: the smarthost's access token now (the server's
    /// token schedule sets it before each tick).
    bearer: Option<String>,
}

impl Outbox {
    /// Opens the queue (recovering from a crash) and prepares TLS.
    pub fn new(config: &Config) -> Result<Outbox, String> {
        let (_, loaded) = Queue::open(&config.server.data_dir)
            .map_err(|e| format!("cannot open the outbox queue: {e}"))?;
        if !loaded.entries.is_empty() {
            info!("outbox: {} message(s) queued", loaded.entries.len());
        }
        let verified_tls =
            crate::tls::outbox_client_config(&config.outbox).map_err(|e| e.to_string())?;
        let now = Instant::now();
        Ok(Outbox {
            known: loaded
                .entries
                .into_iter()
                .map(|e| (e.id.clone(), e))
                .collect(),
            next_full_scan: now + SAFETY_SCAN,
            scanning: false,
            flush_wanted: false,
            flushing: false,
            attempts: HashMap::new(),
            recording: HashSet::new(),
            next_scan: Some(now),
            sessions: 0,
            plaintext_hosts: HashSet::new(),
            verified_tls: Some(verified_tls),
            opportunistic_tls: crate::tls::opportunistic_client_config(),
            bearer: None,
        })
    }

    /// The smarthost's OAuth2 access token for sessions started from now.
    pub fn set_bearer(&mut self, token: Option<String>) {
        self.bearer = token;
    }

    /// Something may be due now (a finished attempt, a free slot).
    pub fn kick(&mut self, now: Instant) {
        self.next_scan = Some(now);
    }

    /// This process queued `entry` (SMTP in); its first try is due now.
    pub fn add(&mut self, entry: QueueEntry, now: Instant) {
        self.known.insert(entry.id.clone(), entry);
        self.kick(now);
    }

    /// Read the whole queue folder at the next tick (flush, or mail that
    /// another process queued).
    pub fn rescan(&mut self, now: Instant) {
        self.next_full_scan = now;
        self.kick(now);
    }

    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.scanning {
            return self.next_scan;
        }
        self.next_scan.map(|n| n.min(self.next_full_scan))
    }

    /// The TLS client config rebuilt after a reload (ca_file may change).
    pub fn reload(&mut self, verified_tls: Result<Arc<rustls::ClientConfig>, String>) {
        match verified_tls {
            Ok(c) => self.verified_tls = Some(c),
            Err(e) => error!("outbox: {e}; keeping the previous CA setup"),
        }
    }

    /// True when the queue folder should be read whole now; the caller
    /// reads it on a worker and hands the result to `scanned`.
    pub fn wants_full_scan(&mut self, now: Instant) -> bool {
        if self.scanning || self.next_full_scan > now {
            return false;
        }
        self.scanning = true;
        self.next_full_scan = now + SAFETY_SCAN;
        true
    }

    /// The queue folder as a worker read it. Entries with an attempt or a
    /// record in flight keep the state this process knows (it is newer).
    pub fn scanned(&mut self, loaded: Loaded, now: Instant) {
        self.scanning = false;
        let mut known: BTreeMap<String, QueueEntry> = loaded
            .entries
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        for (id, entry) in &self.known {
            if self.attempts.contains_key(id) || self.recording.contains(id) {
                known.insert(id.clone(), entry.clone());
            }
        }
        self.known = known;
        self.kick(now);
    }

    /// `mailgate flush`: every entry due now, once no result is being
    /// written (see `take_flush`).
    pub fn request_flush(&mut self) {
        self.flush_wanted = true;
    }

    /// True when the flush may run now; the caller runs
    /// `queue::make_all_due` on a worker and then calls `flushed`.
    pub fn take_flush(&mut self) -> bool {
        if !self.flush_wanted || self.flushing || !self.recording.is_empty() {
            return false;
        }
        self.flush_wanted = false;
        self.flushing = true;
        true
    }

    /// The flush is written: read the queue again.
    pub fn flushed(&mut self, now: Instant) {
        self.flushing = false;
        self.rescan(now);
    }

    /// Jobs for the sessions that are due now.
    pub fn tick(&mut self, config: &Config, now: Instant, stopping: bool) -> Vec<OutboundJob> {
        if stopping || self.scanning {
            return Vec::new();
        }
        match self.next_scan {
            Some(at) if at <= now => {}
            _ => return Vec::new(),
        }
        let now_secs = unix_secs(SystemTime::now());
        let mut jobs: Vec<OutboundJob> = Vec::new();
        let mut next_due: Option<u64> = None;
        let mut waiting_for_slot = false;
        let mut due = Vec::new();
        for entry in self.known.values() {
            if self.attempts.contains_key(&entry.id) || self.recording.contains(&entry.id) {
                continue;
            }
            if entry.due(now_secs) {
                due.push(entry.id.clone());
            } else if let Some(d) = entry.next_due() {
                next_due = Some(next_due.map_or(d, |n| n.min(d)));
            }
        }
        for id in due {
            if self.sessions >= MAX_SESSIONS {
                waiting_for_slot = true;
                break;
            }
            let Some(entry) = self.known.get(&id).cloned() else {
                continue;
            };
            match self.start(config, entry, now_secs) {
                Ok(started) => jobs.extend(started),
                Err(e) => warn!("outbox: {e}"),
            }
        }
        self.next_scan = if waiting_for_slot {
            // A finished session kicks us; this is only a fallback.
            Some(now + Duration::from_secs(1))
        } else {
            let safety = now + SAFETY_SCAN;
            Some(next_due.map_or(safety, |d| {
                let wait = d.saturating_sub(now_secs);
                (now + Duration::from_secs(wait)).min(safety)
            }))
        };
        jobs
    }

    /// One session per destination: all due recipients together through
    /// the smarthost, or one session per recipient domain in direct mode.
    fn start(
        &mut self,
        config: &Config,
        entry: QueueEntry,
        now: u64,
    ) -> Result<Vec<OutboundJob>, String> {
        let due: Vec<String> = entry
            .recipients
            .iter()
            .filter(|r| r.state == RcptState::Pending && r.next_try <= now)
            .map(|r| r.address.clone())
            .collect();
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rcpt in due {
            let key = match config.outbox.mode {
                OutboxMode::Smarthost => String::new(),
                OutboxMode::Direct => rcpt.rsplit('@').next().unwrap_or("").to_ascii_lowercase(),
            };
            groups.entry(key).or_default().push(rcpt);
        }
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        if config.outbox.mode == OutboxMode::Direct && config.resolver.is_none() {
            return Err("no DNS resolver: set [outbox] nameserver".into());
        }
        let message_path = Queue::at(&config.server.data_dir).message_path(&entry.id);
        let mut jobs = Vec::new();
        for (domain, recipients) in groups {
            let route = match config.outbox.mode {
                OutboxMode::Smarthost => RouteSpec::Smarthost {
                    hosts: config.outbox.hosts.clone(),
                    tls: config.outbox.tls,
                    credentials: match (&config.outbox.username, &config.outbox.password) {
                        // Without a token (not signed in, revoked) the
                        // session fails with a 4.7.0 and the message waits.
                        (Some(u), _) if config.outbox.oauth.is_some() => Some(Credentials {
                            username: u.clone(),
                            password: self.bearer.clone().unwrap_or_default(),
                            bearer: true,
                        }),
                        (Some(u), Some(p)) => Some(Credentials {
                            username: u.clone(),
                            password: p.clone(),
                            bearer: false,
                        }),
                        _ => None,
                    },
                    tls_config: self
                        .verified_tls
                        .clone()
                        .unwrap_or_else(|| Arc::clone(&self.opportunistic_tls)),
                },
                OutboxMode::Direct => RouteSpec::Direct {
                    domain,
                    plaintext_hosts: self.plaintext_hosts.iter().cloned().collect(),
                    tls_config: Arc::clone(&self.opportunistic_tls),
                },
            };
            jobs.push(OutboundJob {
                entry_id: entry.id.clone(),
                reverse_path: entry.sender.clone(),
                recipients,
                smtputf8: entry.smtputf8,
                message_path: message_path.clone(),
                helo_name: config.server.hostname.clone(),
                route,
                nameserver: config.resolver,
            });
        }
        self.sessions += jobs.len();
        self.attempts.insert(
            entry.id.clone(),
            Attempt {
                entry,
                sessions_left: jobs.len(),
                reports: Vec::new(),
            },
        );
        Ok(jobs)
    }

    /// Attempts whose results are all in, to be recorded on a worker
    /// (none while a flush is being written).
    pub fn take_ready(&mut self) -> Vec<(QueueEntry, Vec<GroupReport>)> {
        if self.flushing {
            return Vec::new();
        }
        let ready: Vec<String> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.sessions_left == 0)
            .map(|(id, _)| id.clone())
            .collect();
        ready
            .into_iter()
            .filter_map(|id| {
                let a = self.attempts.remove(&id)?;
                self.recording.insert(id);
                Some((a.entry, a.reports))
            })
            .collect()
    }

    /// A session finished.
    pub fn report(&mut self, report: GroupReport) {
        self.sessions = self.sessions.saturating_sub(1);
        if let Some(host) = &report.tls_failed_host {
            self.plaintext_hosts.insert(host.clone());
        }
        if let Some(a) = self.attempts.get_mut(&report.entry_id) {
            a.sessions_left = a.sessions_left.saturating_sub(1);
            a.reports.push(report);
        }
    }

    /// A worker has written an attempt's results.
    pub fn recorded(&mut self, recorded: Recorded, now: Instant) {
        self.recording.remove(&recorded.id);
        match recorded.entry {
            Some(entry) => {
                self.known.insert(recorded.id, entry);
            }
            None => {
                self.known.remove(&recorded.id);
            }
        }
        if recorded.queued_bounce {
            self.next_full_scan = now;
        }
        self.kick(now);
    }
}

/// Worker side: writes one attempt's results into the queue, bounces what
/// failed for good, and removes the entry once nothing is left to do.
pub fn record(config: &Config, entry: QueueEntry, reports: Vec<GroupReport>) -> Recorded {
    let now = unix_secs(SystemTime::now());
    let queue = Queue::at(&config.server.data_dir);
    // The envelope as it is now (a flush may have moved retry times since
    // the scan); the results below only touch the recipients tried.
    let mut entry = queue.load(&entry.id).unwrap_or(entry);
    let mut failed: Vec<FailedRecipient> = Vec::new();
    for report in &reports {
        for r in &report.results {
            let Some(state) = entry
                .recipients
                .iter_mut()
                .find(|s| s.address == r.recipient)
            else {
                continue;
            };
            match &r.outcome {
                Outcome::Delivered { .. } => state.state = RcptState::Delivered,
                Outcome::Permanent { reply, enhanced } => {
                    state.attempts += 1;
                    state.state = RcptState::Failed;
                    state.last_error = reply.clone();
                    failed.push(FailedRecipient {
                        address: r.recipient.clone(),
                        status: enhanced.clone(),
                        remote_mta: if r.remote { report.relay.clone() } else { None },
                        diagnostic: reply.clone(),
                    });
                }
                Outcome::Transient { reply, enhanced } => {
                    state.attempts += 1;
                    state.last_error = reply.clone();
                    let retry = &config.outbox.retry;
                    match schedule::next_attempt(
                        entry.created,
                        state.attempts,
                        now,
                        retry,
                        config.outbox.give_up_after,
                    ) {
                        Next::RetryAt(t) => state.next_try = t,
                        Next::GiveUp => {
                            info!(
                                "outbox {}: giving up on <{}> after {} attempts",
                                entry.id, r.recipient, state.attempts
                            );
                            state.state = RcptState::Failed;
                            let status = expired_status(enhanced.as_deref());
                            failed.push(FailedRecipient {
                                address: r.recipient.clone(),
                                status,
                                remote_mta: if r.remote { report.relay.clone() } else { None },
                                diagnostic: format!(
                                    "gave up after {} attempts: {reply}",
                                    state.attempts
                                ),
                            });
                        }
                    }
                }
            }
        }
    }
    let bounced = !failed.is_empty() && bounce::should_bounce(&entry.sender);
    if bounced {
        // The bounce is stored before the envelope changes: a crash in
        // between can repeat a bounce, never lose one.
        if let Err(e) = send_bounce(config, &queue, &entry, &failed, now) {
            // Keep the failed recipients pending so the bounce is tried
            // again later, but record everything else: returning without
            // writing would send delivered recipients a second copy, and
            // the immediate rescan would retry in a tight loop.
            error!(
                "outbox {}: cannot store the bounce: {e}; will retry",
                entry.id
            );
            let wait = config
                .outbox
                .retry
                .first()
                .map_or(BOUNCE_RETRY_SECS, |d| d.as_secs())
                .max(schedule::MIN_RETRY_INTERVAL_SECS);
            for f in &failed {
                if let Some(state) = entry.recipients.iter_mut().find(|s| s.address == f.address) {
                    state.state = RcptState::Pending;
                    state.next_try = now.saturating_add(wait);
                    state.last_error =
                        format!("{}; the bounce could not be stored: {e}", f.diagnostic);
                }
            }
        }
    }
    let finished = entry.is_finished();
    let result = if finished {
        queue.remove(&entry.id)
    } else {
        queue.update(&entry)
    };
    if let Err(e) = result {
        error!("outbox {}: cannot update the queue: {e}", entry.id);
    }
    Recorded {
        id: entry.id.clone(),
        entry: (!finished).then_some(entry),
        queued_bounce: bounced,
    }
}

fn send_bounce(
    config: &Config,
    queue: &Queue,
    entry: &QueueEntry,
    failed: &[FailedRecipient],
    now: u64,
) -> Result<(), String> {
    // Only the header section goes back (RFC 3464's text/rfc822-headers):
    // a 25 MB original costs what its headers cost.
    let original = queue
        .read_header_section(&entry.id, bounce::MAX_RETURNED_HEADERS)
        .unwrap_or_default();
    let bounce_id = format!("{}.B{now}", entry.id);
    let message = bounce::build_bounce(&BounceParams {
        hostname: &config.server.hostname,
        original_sender: &entry.sender,
        original_message: &original,
        arrival_date: entry.created,
        failures: failed,
        now,
        bounce_id: &bounce_id,
    });
    let sender = entry.sender.clone();
    info!(
        "outbox {}: bounce to <{sender}> for {} recipient(s)",
        entry.id,
        failed.len()
    );
    let Some((local, remote)) = bounce_route(config, &sender) else {
        // A reverse-path in one of our domains that names nobody (forged,
        // or a mailbox since removed) and no postmaster to take it: the
        // bounce could only go out to the smarthost and come back here.
        warn!(
            "outbox {}: <{sender}> is in a local domain but names no mailbox, nor does postmaster; bounce dropped",
            entry.id
        );
        return Ok(());
    };
    crate::delivery::deliver_notice(
        config,
        &sender,
        &local,
        &remote,
        &message,
        SystemTime::now(),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// The status of a recipient given up on: its last temporary status made
/// permanent (4.2.2 -> 5.2.2), else RFC 3463 5.4.7 "delivery time expired".
fn expired_status(last: Option<&str>) -> String {
    last.and_then(|e| e.strip_prefix("4."))
        .filter(|rest| !rest.is_empty())
        .map_or_else(|| "5.4.7".to_string(), |rest| format!("5.{rest}"))
}

/// Where a bounce for `sender` goes: (local mailboxes, remote addresses).
/// A sender in one of our domains is resolved like a recipient (aliases,
/// forwards); if it names nobody, the domain's postmaster gets it (the
/// "double bounce" of RFC 5321 4.5.5's spirit, as Postfix does). None when
/// neither exists. Any other sender is remote.
fn bounce_route(config: &Config, sender: &str) -> Option<(Vec<String>, Vec<String>)> {
    let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
    if !config.is_local_domain(domain) {
        return Some((Vec::new(), vec![sender.to_string()]));
    }
    config
        .resolve(sender)
        .filter(|r| !r.local.is_empty() || !r.remote.is_empty())
        .or_else(|| config.resolve(&format!("postmaster@{domain}")))
        .map(|r| (r.local, r.remote))
}

#[cfg(test)]
mod tests {
    use super::expired_status;

    #[test]
    fn expired_status_table() {
        let cases: &[(Option<&str>, &str)] = &[
            (Some("4.2.2"), "5.2.2"),
            (Some("4.4.1"), "5.4.1"),
            (Some("4.3.0"), "5.3.0"),
            (None, "5.4.7"),
            (Some(""), "5.4.7"),
            (Some("4."), "5.4.7"),
            (Some("5.1.1"), "5.4.7"),
            (Some("\u{e9}.1.1"), "5.4.7"),
            (Some("x"), "5.4.7"),
        ];
        for (input, want) in cases {
            assert_eq!(expired_status(*input), *want, "input {input:?}");
        }
    }
}
