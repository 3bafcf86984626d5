//! Driver for one SmartPop collection run: resolve, connect, fetch.
//!
//! Owns: the connection to the ISP's POP3 server (plain, STLS or implicit
//! TLS), the sans-IO `Pop3Fetch` core, and handing each fetched message to
//! a worker that delivers it and records its UIDL durably before the core
//! may send DELE. Must not: write files on the loop thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::config::{Config, SmartPopConfig, TlsMode};
use crate::event_loop::Driver;
use crate::net::resolver::Resolver;
use crate::net::transport::{ReadStatus, Transport};
use crate::proto::dns::MxLookup;
use crate::proto::pop3_client::{FetchError, FetchEvent, FetchParams, FetchSummary, Pop3Fetch};
use crate::server::{Completion, Outcome, Shared};
use crate::smartpop::records::Records;

/// Postfix's connect timeout; fetchmail's default is 300s, too patient
/// for an account that must not delay the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A POP3 server that says nothing for this long is given up on
/// (fetchmail's default timeout).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

enum Phase {
    Start,
    Resolving(Resolver),
    Connecting {
        t: Transport,
        deadline: Instant,
    },
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
    tls_config: Arc<rustls::ClientConfig>,
    records: Option<Records>,
    token: Option<Token>,
    phase: Phase,
    targets: Vec<SocketAddr>,
    next_target: usize,
    last_error: Option<String>,
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
}

impl Pop3FetchDriver {
    pub fn new(
        account: SmartPopConfig,
        config: Arc<Config>,
        tls_config: Arc<rustls::ClientConfig>,
        records: Records,
    ) -> Pop3FetchDriver {
        Pop3FetchDriver {
            account,
            config,
            tls_config,
            records: Some(records),
            token: None,
            phase: Phase::Start,
            targets: Vec::new(),
            next_target: 0,
            last_error: None,
            out: Vec::new(),
            events: Vec::new(),
            records_dirty: false,
            in_flight: None,
            jobs: 0,
            finished: false,
        }
    }

    fn name(&self) -> &str {
        &self.account.name
    }

    fn begin(&mut self, sh: &mut Shared) {
        self.token = Some(sh.current);
        let host = self
            .account
            .host
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.targets
                .push(SocketAddr::new(ip, self.account.host.port));
            self.connect_next(sh);
            return;
        }
        if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
            // RFC 6761 section 6.3: localhost is the loopback, not asked of DNS.
            let port = self.account.host.port;
            self.targets.push(SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                port,
            ));
            self.targets.push(SocketAddr::new(
                IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                port,
            ));
            self.connect_next(sh);
            return;
        }
        let Some(ns) = crate::outbox::runner::nameserver(&sh.config) else {
            self.finish(
                sh,
                summary_error(FetchError::Connection("no DNS resolver configured".into())),
            );
            return;
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let lookup = MxLookup::addresses_of(host, true, seed);
        match Resolver::start(lookup, ns, &sh.registry, sh.current, sh.now) {
            Ok(r) => self.phase = Phase::Resolving(r),
            Err(result) => self.resolved(result, sh),
        }
    }

    fn resolved(&mut self, result: crate::net::resolver::LookupResult, sh: &mut Shared) {
        match result {
            Ok(hosts) => {
                let port = self.account.host.port;
                self.targets = hosts
                    .into_iter()
                    .flat_map(|h| h.addrs)
                    .map(|a| SocketAddr::new(a, port))
                    .collect();
                self.connect_next(sh);
            }
            Err(f) => {
                let e = FetchError::Connection(format!(
                    "cannot resolve {}: {}",
                    self.account.host.host, f.reason
                ));
                self.finish(sh, summary_error(e));
            }
        }
    }

    fn connect_next(&mut self, sh: &mut Shared) {
        while let Some(addr) = self.targets.get(self.next_target).copied() {
            self.next_target += 1;
            let Some(token) = self.token else { break };
            match TcpStream::connect(addr) {
                Ok(sock) => {
                    let mut t = Transport::new(sock, addr);
                    if let Err(e) = sh.registry.register(
                        t.socket(),
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.last_error = Some(e.to_string());
                        continue;
                    }
                    self.phase = Phase::Connecting {
                        t,
                        deadline: sh.now + CONNECT_TIMEOUT,
                    };
                    return;
                }
                Err(e) => self.last_error = Some(format!("connect to {addr}: {e}")),
            }
        }
        let why = self
            .last_error
            .take()
            .unwrap_or_else(|| "no address".into());
        self.finish(sh, summary_error(FetchError::Connection(why)));
    }

    fn connected(&mut self, sh: &mut Shared) {
        let Phase::Connecting { mut t, deadline } = std::mem::replace(&mut self.phase, Phase::Done)
        else {
            return;
        };
        match t.socket().take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                self.last_error = Some(format!("connect to {}: {e}", t.peer()));
                self.connect_next(sh);
                return;
            }
        }
        match t.socket().peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => {
                self.phase = Phase::Connecting { t, deadline };
                return;
            }
            Err(e) => {
                self.last_error = Some(format!("connect to {}: {e}", t.peer()));
                self.connect_next(sh);
                return;
            }
        }
        let implicit = self.account.tls == TlsMode::Tls;
        if implicit {
            if let Err(e) = t.start_tls_client(&self.tls_config, &self.account.host.host) {
                self.finish(sh, summary_error(FetchError::Tls(e.to_string())));
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
            deadline: sh.now + REPLY_TIMEOUT,
        };
        self.pump(sh);
    }

    fn pump(&mut self, sh: &mut Shared) {
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
                    *deadline = sh.now + REPLY_TIMEOUT;
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
            self.finish(sh, summary);
            return;
        }
        if let Some(tok) = self.token {
            let interest = t.interest();
            let _ = sh.registry.reregister(t.socket(), tok, interest);
        }
        self.handle_events(sh);
    }

    fn handle_events(&mut self, sh: &mut Shared) {
        for event in std::mem::take(&mut self.events) {
            match event {
                FetchEvent::StartTls => {
                    let Phase::Session { t, core, .. } = &mut self.phase else {
                        continue;
                    };
                    t.queue(&self.out);
                    self.out.clear();
                    let _ = t.flush();
                    match t.start_tls_client(&self.tls_config, &self.account.host.host) {
                        Ok(()) => core.tls_started(&mut self.out),
                        Err(e) => {
                            let summary = core.abort(FetchError::Tls(e.to_string()));
                            self.finish(sh, summary);
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
                    sh.submit(move || {
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
                    sh.submit(move || {
                        notice();
                        Outcome::SmartPopNoted
                    });
                }
                FetchEvent::Done(summary) => {
                    self.finish(sh, summary);
                    return;
                }
            }
        }
        if let Phase::Session { .. } = self.phase {
            if !self.out.is_empty() {
                self.pump(sh);
            }
        }
    }

    fn finish(&mut self, sh: &mut Shared, summary: FetchSummary) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Session { mut t, .. } | Phase::Delivering { mut t, .. } => {
                t.queue(&self.out);
                self.out.clear();
                t.close();
            }
            Phase::Connecting { mut t, .. } => t.close(),
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
                sh.submit(move || {
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
        self.release_account(sh);
    }

    /// Frees the account for its next run once nothing of this one is left.
    fn release_account(&mut self, sh: &mut Shared) {
        if self.finished && self.jobs == 0 {
            sh.smartpop_finished(&self.account.name);
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
    fn ready(&mut self, sh: &mut Shared) {
        match &mut self.phase {
            Phase::Start => self.begin(sh),
            Phase::Resolving(r) => {
                if let Some(result) = r.ready(&sh.registry, sh.now) {
                    self.resolved(result, sh);
                }
            }
            Phase::Connecting { .. } => self.connected(sh),
            Phase::Session { .. } => self.pump(sh),
            Phase::Delivering { .. } | Phase::Done => {}
        }
    }

    fn complete(&mut self, done: Completion, sh: &mut Shared) {
        self.jobs = self.jobs.saturating_sub(1);
        if let Outcome::SmartPopDelivered(ok, records) = done.outcome {
            self.records = records.map(|r| *r);
            if let Phase::Delivering { t, mut core } =
                std::mem::replace(&mut self.phase, Phase::Done)
            {
                if sh.stopping {
                    // `stop` came while the worker stored the message: end
                    // here (no QUIT, so no DELE is committed; the record
                    // makes the next run DELE it without fetching it again).
                    // `delivered` counts the message; what it would send is dropped.
                    core.delivered(ok, &mut Vec::new(), &mut Vec::new());
                    let summary = core.abort(FetchError::Connection("mailgate is stopping".into()));
                    self.phase = Phase::Delivering { t, core };
                    self.finish(sh, summary);
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
                    deadline: sh.now + REPLY_TIMEOUT,
                };
                self.handle_events(sh);
                self.pump(sh);
            }
        }
        self.release_account(sh);
    }

    fn timer(&mut self, sh: &mut Shared) {
        match &mut self.phase {
            Phase::Resolving(r) => {
                if let Some(result) = r.timeout(&sh.registry, sh.now) {
                    self.resolved(result, sh);
                }
            }
            Phase::Connecting { t, deadline } if *deadline <= sh.now => {
                self.last_error = Some(format!("connect to {}: timed out", t.peer()));
                self.phase = Phase::Done;
                self.connect_next(sh);
            }
            Phase::Session { core, deadline, .. } if *deadline <= sh.now => {
                let summary = core.abort(FetchError::Connection("server timed out".into()));
                self.finish(sh, summary);
            }
            _ => {}
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Resolving(r) => Some(r.deadline()),
            Phase::Connecting { deadline, .. } | Phase::Session { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    fn stop(&mut self, sh: &mut Shared) {
        // Nothing is lost by stopping: what was delivered is recorded, the
        // rest stays on the server (no QUIT, so no DELE is committed).
        match &mut self.phase {
            Phase::Delivering { .. } | Phase::Done => {}
            Phase::Session { core, .. } => {
                let summary = core.abort(FetchError::Connection("mailgate is stopping".into()));
                self.finish(sh, summary);
            }
            _ => self.finish(
                sh,
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
