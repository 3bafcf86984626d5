//! Driver for one SmartPop IMAP collection run (`protocol = imap`):
//! prepare, connect, fetch, then (IDLE offered, one folder) stay in IDLE
//! and reconnect with backoff when the connection drops.
//!
//! Owns: the run's steps, as `pop3_fetch` does them for POP3: a worker
//! reads the account's records and TLS setup first; the one outbound
//! connector reaches the ISP's IMAP server (plain, STARTTLS or implicit
//! TLS); the sans-IO `ImapFetch` core speaks IMAP; each RETR body is written to a staging file by workers as it
//! arrives (one write in flight; the socket is not read while a full
//! chunk waits behind it, so memory stays bounded for any size), then a
//! worker delivers it from there and records its UIDL durably before the
//! core may send DELE. Must not: touch a file on the loop thread.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::Interest;

use super::{Ctx, Driver, Effect, Outcome};
use crate::config::{Config, SmartPopConfig, TlsMode};
use crate::net::connector::{Connect, Connector, Destination};
use crate::net::transport::{ReadStatus, Transport};
use crate::proto::imap_client::{
    Auth, FetchError, FetchEvent, FetchSummary, ImapFetch, ImapKeep, ImapParams, IDLE_REFRESH,
};
use crate::smartpop::records::Records;
use crate::smartpop::runner::FetchJob;

/// A server that says nothing for this long (outside IDLE) is given up on.
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// While a staging write is in flight, the socket is read until this many
/// body octets wait behind it; then reading stops until the write is back.
const STAGE_CHUNK: usize = 64 * 1024;

/// The RETR body on its way to the staging file.
#[derive(Default)]
struct Stage {
    path: PathBuf,
    /// Bumped when a message is handed to the delivery or dropped: a
    /// write that comes back for an older one is stale.
    gen: u64,
    /// Message `gen`'s staging file between writes (None before its
    /// first write and while a worker writes).
    file: Option<File>,
    /// Body octets waiting for the next write.
    pending: Vec<u8>,
    /// The message generation a worker is writing for.
    writing: Option<u64>,
    /// A write of message `gen` failed: it cannot be delivered.
    failed: Option<String>,
    /// The core said `Deliver` for message `gen`: its UIDL, waiting for
    /// the last write.
    deliver: Option<Option<String>>,
    /// A staging file was made during this run (removed at its end).
    used: bool,
    /// Message `gen` is going to the staging file (it outgrew one
    /// chunk); until then its body is only in `pending`.
    on_disk: bool,
}

impl Stage {
    /// Reading more now would only pile up memory behind a slow disk.
    fn backed_up(&self) -> bool {
        self.writing.is_some() && self.pending.len() >= STAGE_CHUNK
    }

    /// Forgets message `gen` (oversized, delivered, or the session
    /// ended); its file, if open, is the caller's to close on a worker.
    #[must_use]
    fn next_message(&mut self) -> Option<File> {
        self.gen += 1;
        self.pending = Vec::new();
        self.failed = None;
        self.deliver = None;
        self.on_disk = false;
        self.file.take()
    }
}

/// What one turn of reading found.
enum Io {
    /// The core has events to handle.
    Events,
    /// Nothing to read now (or reading waits for the disk).
    Blocked,
    Lost(FetchSummary),
}

enum Phase {
    Start,
    /// A worker reads the records and the TLS setup.
    Preparing,
    /// The connector is resolving or connecting.
    Connecting,
    Session {
        t: Transport,
        core: Box<ImapFetch>,
        deadline: Instant,
    },
    /// The connection dropped while idling: reconnect at `until`.
    Backoff {
        until: Instant,
    },
    /// A worker is storing a message.
    Delivering {
        t: Transport,
        core: Box<ImapFetch>,
    },
    Done,
}

pub struct ImapFetchDriver {
    account: SmartPopConfig,
    config: Arc<Config>,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    records: Option<Records>,
    connector: Connector,
    phase: Phase,
    out: Vec<u8>,
    events: Vec<FetchEvent>,
    /// `records` holds oversize marks not yet written (saved at the end).
    records_dirty: bool,
    /// The UIDL of the message a worker is storing.
    in_flight: Option<String>,
    /// Worker jobs submitted and not yet completed.
    jobs: usize,
    /// The session is over (`finish` ran); the driver is done once `jobs`
    /// is also 0, and only then is the account free for its next run, so
    /// a next run never reads the records before this one's last write.
    finished: bool,
    /// The run could not start (records or TLS setup unreadable).
    broken: bool,
    stage: Stage,
    /// The next reconnection's pause (doubles up to `MAX_BACKOFF`).
    backoff: Duration,
    /// This run reached IDLE at least once: a drop means reconnect.
    idled: bool,
}

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl ImapFetchDriver {
    pub fn new(job: FetchJob) -> ImapFetchDriver {
        let destination = Destination::Hosts(vec![job.account.host.clone()]);
        ImapFetchDriver {
            connector: Connector::new(destination, job.config.resolver),
            account: job.account,
            config: job.config,
            tls_config: None,
            records: None,
            phase: Phase::Start,
            out: Vec::new(),
            events: Vec::new(),
            records_dirty: false,
            in_flight: None,
            jobs: 0,
            finished: false,
            broken: false,
            stage: Stage::default(),
            backoff: MIN_BACKOFF,
            idled: false,
        }
    }

    fn name(&self) -> &str {
        &self.account.name
    }

    /// The records and TLS setup are read: connect.
    fn prepared(
        &mut self,
        prepared: Result<(Records, Arc<rustls::ClientConfig>), String>,
        cx: &mut Ctx,
    ) {
        match prepared {
            Ok((records, tls)) => {
                let stage = crate::smartpop::collect::staging_path(
                    &self.config.server.data_dir,
                    &self.account.name,
                );
                let Some(stage) = stage else {
                    // `prepare` read the records by this name: cannot happen.
                    self.broken = true;
                    let e = FetchError::Local("bad account name".into());
                    self.finish(cx, summary_error(e));
                    return;
                };
                self.stage.path = stage;
                self.records = Some(records);
                self.tls_config = Some(tls);
                self.phase = Phase::Connecting;
                let step = self.connector.advance(cx.registry(), cx.token, cx.now);
                self.connect_step(step, cx);
            }
            Err(e) => {
                log::error!("smartpop {}: {e}", self.name());
                self.broken = true;
                self.finish(cx, summary_error(FetchError::Connection(e)));
            }
        }
    }

    fn connect_step(&mut self, step: Connect, cx: &mut Ctx) {
        match step {
            Connect::Pending => self.phase = Phase::Connecting,
            Connect::Connected(t) => self.connected(t, cx),
            Connect::Exhausted => {
                let why = if let Some(e) = self.connector.connect_error() {
                    e.to_string()
                } else if let Some((what, f)) = self.connector.lookup_failure() {
                    format!("cannot resolve {what}: {}", f.reason)
                } else {
                    "no address".to_string()
                };
                self.finish(cx, summary_error(FetchError::Connection(why)));
            }
        }
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls_config
            .clone()
            .unwrap_or_else(crate::tls::opportunistic_client_config)
    }

    fn connected(&mut self, t: Box<Transport>, cx: &mut Ctx) {
        let mut t = *t;
        let implicit = self.account.tls == TlsMode::Tls;
        if implicit {
            if let Err(e) = t.start_tls_client(&self.tls(), &self.account.host.host) {
                self.finish(cx, summary_error(FetchError::Tls(e.to_string())));
                return;
            }
        }
        let params = ImapParams {
            account: self.account.name.clone(),
            // With auth = oauth2 the server put the access token in
            // `password`.
            auth: if self.account.oauth.is_some() {
                Auth::Bearer {
                    user: self.account.username.clone(),
                    token: self.account.password.clone(),
                }
            } else {
                Auth::Password {
                    user: self.account.username.clone(),
                    pass: self.account.password.clone(),
                }
            },
            starttls: self.account.tls == TlsMode::StartTls,
            tls_active: implicit,
            folders: self.account.folders.clone(),
            keep: match &self.account.move_to {
                Some(f) => ImapKeep::Move(f.clone()),
                None => ImapKeep::Keep(self.account.keep),
            },
            idle: self.account.idle,
            max_message_size: self.config.smtp.max_message_size,
            now: crate::outbox::unix_secs(std::time::SystemTime::now()),
        };
        let core = ImapFetch::new(params, self.records.iter().flat_map(|r| r.iter()));
        self.phase = Phase::Session {
            t,
            core: Box::new(core),
            deadline: cx.now + REPLY_TIMEOUT,
        };
        self.pump(cx);
    }

    fn pump(&mut self, cx: &mut Ctx) {
        loop {
            match self.read_some(cx) {
                Io::Events => {
                    self.handle_events(cx);
                    if !matches!(self.phase, Phase::Session { .. }) {
                        break;
                    }
                }
                Io::Blocked => break,
                Io::Lost(summary) => {
                    self.finish(cx, summary);
                    return;
                }
            }
        }
        if let Phase::Session { t, .. } | Phase::Delivering { t, .. } = &mut self.phase {
            let interest = t.interest();
            let _ = cx.registry().reregister(t.socket(), cx.token, interest);
        }
    }

    /// Flushes output and reads until the core has events, the socket has
    /// nothing more, or the staging writes fall behind.
    fn read_some(&mut self, cx: &mut Ctx) -> Io {
        let Phase::Session { t, core, deadline } = &mut self.phase else {
            return Io::Blocked;
        };
        let mut input = Vec::new();
        loop {
            t.queue(&self.out);
            self.out.clear();
            if t.flush().is_err() {
                return Io::Lost(core.connection_lost());
            }
            if !self.events.is_empty() {
                return Io::Events;
            }
            if self.stage.backed_up() {
                return Io::Blocked;
            }
            input.clear();
            match t.read(&mut input, usize::MAX) {
                Ok(ReadStatus::Data(0)) => continue,
                Ok(ReadStatus::Data(_)) => {
                    core.receive(&input, &mut self.out, &mut self.events);
                    if core.idling() {
                        *deadline = cx.now + IDLE_REFRESH;
                        self.idled = true;
                        self.backoff = MIN_BACKOFF;
                    } else {
                        *deadline = cx.now + REPLY_TIMEOUT;
                    }
                }
                Ok(ReadStatus::WouldBlock) => return Io::Blocked,
                Ok(ReadStatus::Closed) => return Io::Lost(core.connection_lost()),
                Err(e) => {
                    return Io::Lost(if t.is_tls() && !t.tls_established() {
                        core.abort(FetchError::Tls(e.to_string()))
                    } else {
                        core.connection_lost()
                    });
                }
            }
        }
    }

    /// Hands the waiting body octets to a worker when none is writing;
    /// once the message is complete and written, to the delivery.
    fn kick_stage(&mut self, cx: &mut Ctx) {
        if self.stage.writing.is_some() {
            return;
        }
        // A body within one chunk never touches the disk: it goes to the
        // delivery from memory (most mail is a few KiB).
        let spill = self.stage.on_disk || self.stage.pending.len() >= STAGE_CHUNK;
        if spill && !self.stage.pending.is_empty() && self.stage.failed.is_none() {
            self.stage.on_disk = true;
            let data = std::mem::take(&mut self.stage.pending);
            let file = self.stage.file.take();
            let path = self.stage.path.clone();
            self.stage.writing = Some(self.stage.gen);
            self.stage.used = true;
            self.jobs += 1;
            cx.submit(move || {
                Outcome::SmartPopStaged(crate::smartpop::collect::write_stage(file, &path, &data))
            });
            return;
        }
        let Some(uidl) = self.stage.deliver.take() else {
            return;
        };
        if let Some(e) = self.stage.failed.take() {
            warn!(
                "smartpop {}: cannot stage the message ({e}); left on the server",
                self.name()
            );
            let file = self.stage.next_message();
            self.close_file(file, cx);
            self.delivery_done(false, cx);
            return;
        }
        let Phase::Delivering { t, .. } = &self.phase else {
            return;
        };
        let job = crate::smartpop::collect::Fetched {
            config: Arc::clone(&self.config),
            account: self.account.clone(),
            server: self.account.host.host.clone(),
            peer: t.peer().ip(),
            tls: t.tls_description(),
            uidl,
            staged: self.stage.file.take(),
            staged_path: self.stage.on_disk.then(|| self.stage.path.clone()),
            data: std::mem::take(&mut self.stage.pending),
        };
        // None: the job has the file.
        let left = self.stage.next_message();
        self.close_file(left, cx);
        let records = self.records.take();
        self.jobs += 1;
        cx.submit(move || {
            let (ok, records) = job.deliver(records);
            Outcome::SmartPopDelivered(ok, records.map(Box::new))
        });
    }

    /// A staging write came back.
    fn staged(&mut self, written: std::io::Result<File>, cx: &mut Ctx) {
        let generation = self.stage.writing.take();
        match written {
            Ok(file) if generation == Some(self.stage.gen) => self.stage.file = Some(file),
            // For a message dropped since.
            Ok(file) => self.close_file(Some(file), cx),
            Err(e) if generation == Some(self.stage.gen) => {
                self.stage.failed = Some(e.to_string());
                self.stage.pending = Vec::new();
            }
            Err(_) => {}
        }
        if self.finished {
            return;
        }
        self.kick_stage(cx);
        self.pump(cx);
    }

    /// Files are closed on a worker, never on the loop thread (`close` on
    /// a regular file is disk work too).
    fn close_file(&mut self, file: Option<File>, cx: &mut Ctx) {
        if let Some(file) = file {
            self.jobs += 1;
            cx.submit_quick(move || {
                drop(file);
                Outcome::Nothing
            });
        }
    }

    /// The delivery of the message in flight is over: `ok` when it is
    /// durable in every mailbox and its UIDL durably recorded.
    fn delivery_done(&mut self, ok: bool, cx: &mut Ctx) {
        let Phase::Delivering { t, mut core } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        if cx.stopping() {
            // `stop` came while the worker stored the message: end
            // here (no QUIT, so no DELE is committed; the record
            // makes the next run DELE it without fetching it again).
            // `delivered` counts the message; what it would send is dropped.
            core.delivered(ok, &mut Vec::new(), &mut Vec::new());
            let summary = core.abort(FetchError::Connection("mailgate is stopping".into()));
            self.phase = Phase::Delivering { t, core };
            self.finish(cx, summary);
            return;
        }
        let uidl = self.in_flight.take();
        let entry = uidl.and_then(|u| self.records.as_ref().and_then(|r| r.get(&u).copied()));
        if !ok && entry.is_some_and(|e| e.rejected && !e.delivered) {
            core.rejected(&mut self.out, &mut self.events);
        } else {
            core.delivered(ok, &mut self.out, &mut self.events);
        }
        self.phase = Phase::Session {
            t,
            core,
            deadline: cx.now + REPLY_TIMEOUT,
        };
        self.handle_events(cx);
        self.pump(cx);
    }

    fn handle_events(&mut self, cx: &mut Ctx) {
        for event in std::mem::take(&mut self.events) {
            match event {
                FetchEvent::StartTls => {
                    let Phase::Session { t, core, .. } = &mut self.phase else {
                        continue;
                    };
                    t.queue(&self.out);
                    self.out.clear();
                    let _ = t.flush();
                    let tls = self
                        .tls_config
                        .clone()
                        .unwrap_or_else(crate::tls::opportunistic_client_config);
                    match t.start_tls_client(&tls, &self.account.host.host) {
                        Ok(()) => core.tls_started(&mut self.out),
                        Err(e) => {
                            let summary = core.abort(FetchError::Tls(e.to_string()));
                            self.finish(cx, summary);
                            return;
                        }
                    }
                }
                FetchEvent::Body(chunk) => {
                    if self.stage.failed.is_none() {
                        self.stage.pending.extend_from_slice(&chunk);
                    }
                    self.kick_stage(cx);
                }
                FetchEvent::Deliver { uidl, .. } => {
                    // Nothing is read while the message is stored.
                    let Phase::Session { t, core, .. } =
                        std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        continue;
                    };
                    self.phase = Phase::Delivering { t, core };
                    self.in_flight = uidl.clone();
                    self.stage.deliver = Some(uidl);
                    self.kick_stage(cx);
                }
                FetchEvent::Oversized { uidl, size, .. } => {
                    // What was staged of it (a LIST size that lied) goes.
                    let file = self.stage.next_message();
                    self.close_file(file, cx);
                    warn!("smartpop {}: a message of {size} bytes is over max_message_size; left on the server", self.name());
                    let notice = crate::smartpop::collect::oversize_notice(
                        &self.config,
                        &self.account,
                        size,
                    );
                    // The mark keeps the notice to once per message. It is
                    // written with the next delivery's record or at the end
                    // of the run: saving a copy here, on another worker,
                    // could race a delivery's save and lose its UIDL.
                    if let (Some(uidl), Some(records)) = (uidl, self.records.as_mut()) {
                        records.mark_oversized(
                            &uidl,
                            crate::outbox::unix_secs(std::time::SystemTime::now()),
                        );
                        self.records_dirty = true;
                    }
                    self.jobs += 1;
                    cx.submit(move || {
                        notice();
                        Outcome::SmartPopNoted
                    });
                }
                FetchEvent::Done(summary) => {
                    self.finish(cx, summary);
                    return;
                }
            }
        }
    }

    fn finish(&mut self, cx: &mut Ctx, summary: FetchSummary) {
        let lost = matches!(summary.error, Some(FetchError::Connection(_)));
        if self.idled && lost && !cx.stopping() && !self.broken {
            if let Phase::Session { mut t, .. } = std::mem::replace(&mut self.phase, Phase::Done) {
                t.close();
            }
            let file = self.stage.next_message();
            self.close_file(file, cx);
            let wait = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            warn!(
                "smartpop {}: fetched={} deleted={} then {}; reconnecting in {}s",
                self.name(),
                summary.fetched,
                summary.deleted,
                summary
                    .error
                    .as_ref()
                    .map_or(String::new(), |e| e.to_string()),
                wait.as_secs()
            );
            self.phase = Phase::Backoff {
                until: cx.now + wait,
            };
            return;
        }
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Session { mut t, .. } | Phase::Delivering { mut t, .. } => {
                t.queue(&self.out);
                self.out.clear();
                t.close();
            }
            _ => {}
        }
        // One line per poll. `deleted` counts only what the server really
        // removed: DELEs take effect at QUIT's +OK (RFC 1939 section 6).
        let deleted = if summary.committed {
            summary.deleted
        } else {
            0
        };
        let mut line = format!(
            "smartpop {}: fetched={} kept={} deleted={deleted} oversized={} failed={}",
            self.name(),
            summary.fetched,
            summary.kept,
            summary.skipped_oversized,
            summary.failed
        );
        if !summary.committed && summary.deleted > 0 {
            line.push_str(&format!(" undeleted={}", summary.deleted));
        }
        match &summary.error {
            None => info!("{line}"),
            Some(e) => warn!("{line} error: {e}"),
        }
        let file = self.stage.next_message();
        self.close_file(file, cx);
        if std::mem::take(&mut self.stage.used) {
            let path = self.stage.path.clone();
            self.jobs += 1;
            cx.submit(move || {
                crate::smartpop::collect::remove_stage(&path);
                Outcome::SmartPopNoted
            });
        }
        let dirty = self.records_dirty;
        if let Some(mut records) = self.records.take() {
            if summary.remaining.is_some() || dirty {
                let remaining = summary.remaining;
                self.jobs += 1;
                cx.submit(move || {
                    let result = match remaining {
                        Some(list) => records.prune(&list) > 0 || dirty,
                        None => dirty,
                    };
                    if result {
                        if let Err(e) = records.save() {
                            warn!("smartpop records {}: {e}", records.path().display());
                        }
                    }
                    Outcome::SmartPopNoted
                });
            }
        }
        self.finished = true;
        self.release_account(cx);
    }

    /// Frees the account for its next run once nothing of this one is left.
    fn release_account(&mut self, cx: &mut Ctx) {
        if self.finished && self.jobs == 0 {
            cx.effect(Effect::FetchDone {
                account: self.account.name.clone(),
                broken: self.broken,
            });
        }
    }
}

fn summary_error(e: FetchError) -> FetchSummary {
    FetchSummary {
        error: Some(e),
        ..FetchSummary::default()
    }
}

impl Driver for ImapFetchDriver {
    fn ready(&mut self, cx: &mut Ctx) {
        match &mut self.phase {
            Phase::Start => {
                self.phase = Phase::Preparing;
                self.jobs += 1;
                let config = Arc::clone(&self.config);
                let account = self.account.clone();
                cx.submit(move || {
                    Outcome::SmartPopReady(crate::smartpop::collect::prepare(&config, &account))
                });
            }
            Phase::Connecting => {
                let step = self.connector.ready(cx.registry(), cx.token, cx.now);
                self.connect_step(step, cx);
            }
            Phase::Session { .. } => self.pump(cx),
            Phase::Preparing | Phase::Delivering { .. } | Phase::Backoff { .. } | Phase::Done => {}
        }
    }

    fn complete(&mut self, done: Outcome, cx: &mut Ctx) {
        self.jobs = self.jobs.saturating_sub(1);
        match done {
            Outcome::SmartPopReady(prepared) => {
                if cx.stopping() {
                    self.finish(
                        cx,
                        summary_error(FetchError::Connection("mailgate is stopping".into())),
                    );
                } else {
                    self.prepared(prepared, cx);
                }
            }
            Outcome::SmartPopDelivered(ok, records) => {
                self.records = records.map(|r| *r);
                self.delivery_done(ok, cx);
            }
            Outcome::SmartPopStaged(written) => self.staged(written, cx),
            _ => {}
        }
        self.release_account(cx);
    }

    fn timer(&mut self, cx: &mut Ctx) {
        match &mut self.phase {
            Phase::Backoff { until } if *until <= cx.now => {
                let destination = Destination::Hosts(vec![self.account.host.clone()]);
                self.connector = Connector::new(destination, self.config.resolver);
                self.phase = Phase::Connecting;
                let step = self.connector.advance(cx.registry(), cx.token, cx.now);
                self.connect_step(step, cx);
            }
            Phase::Session { core, deadline, .. } if *deadline <= cx.now && core.idling() => {
                core.refresh_idle(&mut self.out);
                *deadline = cx.now + REPLY_TIMEOUT;
                self.pump(cx);
            }
            Phase::Connecting => {
                let step = self.connector.timer(cx.registry(), cx.token, cx.now);
                self.connect_step(step, cx);
            }
            Phase::Session { core, deadline, .. } if *deadline <= cx.now => {
                let summary = core.abort(FetchError::Connection("server timed out".into()));
                self.finish(cx, summary);
            }
            _ => {}
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Connecting => self.connector.deadline(),
            Phase::Session { deadline, .. } => Some(*deadline),
            Phase::Backoff { until } => Some(*until),
            _ => None,
        }
    }

    fn stop(&mut self, cx: &mut Ctx) {
        // Nothing is lost by stopping: what was delivered is recorded, the
        // rest stays on the server (no QUIT, so no DELE is committed).
        match &mut self.phase {
            Phase::Preparing | Phase::Delivering { .. } | Phase::Done => {}
            Phase::Session { core, .. } => {
                let summary = core.abort(FetchError::Connection("mailgate is stopping".into()));
                self.finish(cx, summary);
            }
            _ => self.finish(
                cx,
                summary_error(FetchError::Connection("mailgate is stopping".into())),
            ),
        }
    }

    fn is_done(&self) -> bool {
        self.finished && self.jobs == 0
    }

    fn is_idle(&self) -> bool {
        self.jobs == 0
    }

    fn interest(&self) -> Interest {
        Interest::READABLE
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        None
    }
}
