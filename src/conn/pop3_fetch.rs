//! Driver for one SmartPop collection run: prepare, connect, fetch.
//!
//! Owns: the run's steps: a worker reads the account's records and TLS
//! setup first; the one outbound connector reaches the ISP's POP3 server
//! (plain, STLS or implicit TLS); the sans-IO `Pop3Fetch` core speaks
//! POP3; each fetched message goes to a worker that delivers it and
//! records its UIDL durably before the core may send DELE. Must not:
//! touch a file on the loop thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::Interest;

use super::{Ctx, Driver, Effect, Outcome};
use crate::config::{Config, SmartPopConfig, TlsMode};
use crate::net::connector::{Connect, Connector, Destination};
use crate::net::transport::{ReadStatus, Transport};
use crate::proto::pop3_client::{FetchError, FetchEvent, FetchParams, FetchSummary, Pop3Fetch};
use crate::smartpop::records::Records;
use crate::smartpop::runner::FetchJob;

/// A POP3 server that says nothing for this long is given up on
/// (fetchmail's default timeout).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

enum Phase {
    Start,
    /// A worker reads the records and the TLS setup.
    Preparing,
    /// The connector is resolving or connecting.
    Connecting,
    Session {
        t: Transport,
        core: Box<Pop3Fetch>,
        deadline: Instant,
    },
    /// A worker is storing a message.
    Delivering {
        t: Transport,
        core: Box<Pop3Fetch>,
    },
    Done,
}

pub struct Pop3FetchDriver {
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
}

impl Pop3FetchDriver {
    pub fn new(job: FetchJob) -> Pop3FetchDriver {
        let destination = Destination::Hosts(vec![job.account.host.clone()]);
        Pop3FetchDriver {
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
        let params = FetchParams {
            account: self.account.name.clone(),
            username: self.account.username.clone(),
            password: self.account.password.clone(),
            tls: self.account.tls,
            tls_active: implicit,
            keep: self.account.keep,
            max_message_size: self.config.smtp.max_message_size,
            now: crate::outbox::unix_secs(std::time::SystemTime::now()),
        };
        let core = Pop3Fetch::new(params, self.records.iter().flat_map(|r| r.iter()));
        self.phase = Phase::Session {
            t,
            core: Box::new(core),
            deadline: cx.now + REPLY_TIMEOUT,
        };
        self.pump(cx);
    }

    fn pump(&mut self, cx: &mut Ctx) {
        let Phase::Session { t, core, deadline } = &mut self.phase else {
            return;
        };
        let mut input = Vec::new();
        let mut lost: Option<FetchSummary> = None;
        loop {
            t.queue(&self.out);
            self.out.clear();
            if t.flush().is_err() {
                lost = Some(core.connection_lost());
                break;
            }
            if !self.events.is_empty() {
                break;
            }
            input.clear();
            match t.read(&mut input, usize::MAX) {
                Ok(ReadStatus::Data(0)) => continue,
                Ok(ReadStatus::Data(_)) => {
                    *deadline = cx.now + REPLY_TIMEOUT;
                    core.receive(&input, &mut self.out, &mut self.events);
                }
                Ok(ReadStatus::WouldBlock) => break,
                Ok(ReadStatus::Closed) => {
                    lost = Some(core.connection_lost());
                    break;
                }
                Err(e) => {
                    lost = Some(if t.is_tls() && !t.tls_established() {
                        core.abort(FetchError::Tls(e.to_string()))
                    } else {
                        core.connection_lost()
                    });
                    break;
                }
            }
        }
        if let Some(summary) = lost {
            self.finish(cx, summary);
            return;
        }
        let interest = t.interest();
        let _ = cx.registry().reregister(t.socket(), cx.token, interest);
        self.handle_events(cx);
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
                FetchEvent::Deliver { uidl, data, .. } => {
                    let Phase::Session { t, core, .. } =
                        std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        continue;
                    };
                    let peer = t.peer().ip();
                    let tls = t.tls_description();
                    self.phase = Phase::Delivering { t, core };
                    self.in_flight = uidl.clone();
                    let job = crate::smartpop::collect::Fetched {
                        config: Arc::clone(&self.config),
                        account: self.account.clone(),
                        server: self.account.host.host.clone(),
                        peer,
                        tls,
                        uidl,
                        data,
                    };
                    let records = self.records.take();
                    self.jobs += 1;
                    cx.submit(move || {
                        let (ok, records) = job.deliver(records);
                        Outcome::SmartPopDelivered(ok, records.map(Box::new))
                    });
                }
                FetchEvent::Oversized { uidl, size, .. } => {
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
        if let Phase::Session { .. } = self.phase {
            if !self.out.is_empty() {
                self.pump(cx);
            }
        }
    }

    fn finish(&mut self, cx: &mut Ctx, summary: FetchSummary) {
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

impl Driver for Pop3FetchDriver {
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
            Phase::Preparing | Phase::Delivering { .. } | Phase::Done => {}
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
                if let Phase::Delivering { t, mut core } =
                    std::mem::replace(&mut self.phase, Phase::Done)
                {
                    if cx.stopping() {
                        // `stop` came while the worker stored the message: end
                        // here (no QUIT, so no DELE is committed; the record
                        // makes the next run DELE it without fetching it again).
                        // `delivered` counts the message; what it would send is dropped.
                        core.delivered(ok, &mut Vec::new(), &mut Vec::new());
                        let summary =
                            core.abort(FetchError::Connection("mailgate is stopping".into()));
                        self.phase = Phase::Delivering { t, core };
                        self.finish(cx, summary);
                        return;
                    }
                    let uidl = self.in_flight.take();
                    let entry =
                        uidl.and_then(|u| self.records.as_ref().and_then(|r| r.get(&u).copied()));
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
            }
            _ => {}
        }
        self.release_account(cx);
    }

    fn timer(&mut self, cx: &mut Ctx) {
        match &mut self.phase {
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
