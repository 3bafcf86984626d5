//! Driver for one outbound SMTP session: resolve, connect, deliver.
//!
//! Owns: the DNS exchange (UDP, TCP on truncation) for the recipient
//! domain's MX or the smarthost's name, trying each address in order with
//! a connect timeout, the TLS upgrade, and the sans-IO `SmtpClient`. Hands
//! its per-recipient results to the outbox runner. Must not: touch the
//! queue files (the runner's worker job does).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::config::{HostPort, TlsMode};
use crate::event_loop::Driver;
use crate::net::resolver::Resolver;
use crate::net::transport::{ReadStatus, Transport};
use crate::proto::dns::{self, MxLookup};
use crate::proto::smtp_client::{
    ClientEvent, ClientParams, Credentials, Envelope, Outcome, RcptResult, SessionResult,
    SmtpClient, TlsPolicy,
};
use crate::server::{Completion, Shared};

/// RFC 5321 4.5.3.2 gives no connect timeout; Postfix's
/// `smtp_connect_timeout` is 30s.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What one session delivers, and how to reach the server.
pub struct OutboundJob {
    pub entry_id: String,
    pub envelope: Envelope,
    pub helo_name: String,
    pub route: RouteSpec,
}

pub enum RouteSpec {
    /// The ISP's relay(s), tried in order.
    Smarthost {
        hosts: Vec<HostPort>,
        tls: TlsMode,
        credentials: Option<Credentials>,
        tls_config: Arc<rustls::ClientConfig>,
    },
    /// The recipient domain's MX hosts on port 25.
    Direct {
        domain: String,
        nameserver: SocketAddr,
        /// STARTTLS failed with this host last time: plaintext now.
        plaintext_hosts: Vec<String>,
        tls_config: Arc<rustls::ClientConfig>,
    },
}

/// The session's outcome, for the runner.
pub struct GroupReport {
    pub entry_id: String,
    pub results: Vec<RcptResult>,
    /// The server that gave the final answers ("host[addr]"), if any.
    pub relay: Option<String>,
    /// Direct mode: a host whose STARTTLS handshake failed.
    pub tls_failed_host: Option<String>,
}

struct Target {
    host: String,
    addr: SocketAddr,
}

enum Phase {
    /// Looking up `names` one after another (smarthost: each host; direct:
    /// the domain's MX then addresses, all in one `MxLookup`).
    Resolving {
        resolver: Resolver,
        /// The port and name being resolved (smarthost), or None (direct).
        current: Option<HostPort>,
    },
    Connecting {
        t: Transport,
        deadline: Instant,
    },
    Session {
        t: Transport,
        /// Boxed: the client's state dwarfs the other phases.
        client: Box<SmtpClient>,
        deadline: Instant,
        out: Vec<u8>,
    },
    Done,
}

pub struct SmtpOut {
    job: OutboundJob,
    token: Option<Token>,
    phase: Phase,
    /// Smarthost names still to resolve, in order.
    unresolved: Vec<HostPort>,
    targets: Vec<Target>,
    next_target: usize,
    /// The last failure, reported if no server gives a better answer.
    last_failure: Option<SessionResult>,
    lookup_failure: Option<(bool, &'static str, String)>,
    tls_failed_host: Option<String>,
    done: bool,
}

impl SmtpOut {
    pub fn new(job: OutboundJob) -> SmtpOut {
        let unresolved = match &job.route {
            RouteSpec::Smarthost { hosts, .. } => hosts.clone(),
            RouteSpec::Direct { .. } => Vec::new(),
        };
        SmtpOut {
            job,
            token: None,
            phase: Phase::Done,
            unresolved,
            targets: Vec::new(),
            next_target: 0,
            last_failure: None,
            lookup_failure: None,
            tls_failed_host: None,
            done: false,
        }
    }

    fn seed() -> u64 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
    }

    /// Starts the next step: resolve the next name, or connect to the next
    /// address, or report.
    fn advance(&mut self, sh: &mut Shared) {
        loop {
            // Smarthost names first, in order; IP literals need no lookup.
            if let Some(hp) = self.take_unresolved() {
                if let Ok(ip) = hp
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                {
                    self.targets.push(Target {
                        host: hp.host.clone(),
                        addr: SocketAddr::new(ip, hp.port),
                    });
                    continue;
                }
                let lookup = MxLookup::addresses_of(&hp.host, true, Self::seed());
                self.start_lookup(lookup, Some(hp), sh);
                return;
            }
            if let Some(target) = self.targets.get(self.next_target) {
                self.next_target += 1;
                let addr = target.addr;
                match TcpStream::connect(addr) {
                    Ok(sock) => {
                        let mut t = Transport::new(sock, addr);
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        if register(&sh.registry, self.token, t.socket(), interest).is_err() {
                            continue;
                        }
                        self.phase = Phase::Connecting {
                            t,
                            deadline: sh.now + CONNECT_TIMEOUT,
                        };
                        return;
                    }
                    Err(e) => {
                        self.note_connect_failure(&format!("connect to {}: {e}", addr));
                        continue;
                    }
                }
            }
            self.report(sh);
            return;
        }
    }

    fn take_unresolved(&mut self) -> Option<HostPort> {
        if self.unresolved.is_empty() {
            None
        } else {
            Some(self.unresolved.remove(0))
        }
    }

    fn start_lookup(&mut self, lookup: MxLookup, current: Option<HostPort>, sh: &mut Shared) {
        let ns = match &self.job.route {
            RouteSpec::Direct { nameserver, .. } => Some(*nameserver),
            RouteSpec::Smarthost { .. } => crate::outbox::runner::nameserver(&sh.config),
        };
        let (Some(ns), Some(token)) = (ns, self.token) else {
            let failure = dns::LookupFailure {
                permanent: false,
                enhanced: "4.4.3",
                reason: "no DNS resolver configured (nameserver, /etc/resolv.conf)".into(),
            };
            self.lookup_done(Err(failure), current, sh);
            return;
        };
        match Resolver::start(lookup, ns, &sh.registry, token, sh.now) {
            Ok(resolver) => self.phase = Phase::Resolving { resolver, current },
            Err(result) => self.lookup_done(result, current, sh),
        }
    }

    /// The resolver's socket is ready, or its deadline passed.
    fn pump_dns(&mut self, sh: &mut Shared, timed_out: bool) {
        let Phase::Resolving { resolver, .. } = &mut self.phase else {
            return;
        };
        let result = if timed_out {
            resolver.timeout(&sh.registry, sh.now)
        } else {
            resolver.ready(&sh.registry, sh.now)
        };
        if let Some(result) = result {
            let current = match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Resolving { current, .. } => current,
                _ => None,
            };
            self.lookup_done(result, current, sh);
        }
    }

    fn lookup_done(
        &mut self,
        result: Result<Vec<dns::MxHost>, dns::LookupFailure>,
        current: Option<HostPort>,
        sh: &mut Shared,
    ) {
        self.phase = Phase::Done;
        let port = current.as_ref().map_or(25, |hp| hp.port);
        match result {
            Ok(hosts) => {
                for h in hosts {
                    for addr in h.addrs {
                        self.targets.push(Target {
                            host: current
                                .as_ref()
                                .map_or_else(|| h.host.clone(), |hp| hp.host.clone()),
                            addr: SocketAddr::new(addr, port),
                        });
                    }
                }
            }
            Err(f) => {
                let what = current.map_or_else(|| self.domain().to_string(), |hp| hp.host);
                info!(
                    "outbox {}: lookup of {what} failed: {}",
                    self.job.entry_id, f.reason
                );
                // A smarthost name that does not resolve is an operator
                // problem: retry, never bounce.
                let permanent = f.permanent && matches!(self.job.route, RouteSpec::Direct { .. });
                self.lookup_failure =
                    Some((permanent, f.enhanced, format!("{what}: {}", f.reason)));
            }
        }
        self.advance(sh);
    }

    fn domain(&self) -> &str {
        match &self.job.route {
            RouteSpec::Direct { domain, .. } => domain,
            RouteSpec::Smarthost { .. } => "smarthost",
        }
    }

    fn note_connect_failure(&mut self, reason: &str) {
        info!("outbox {}: {reason}", self.job.entry_id);
        let results = self
            .job
            .envelope
            .recipients
            .iter()
            .map(|r| RcptResult {
                recipient: r.clone(),
                outcome: Outcome::Transient {
                    reply: reason.to_string(),
                    enhanced: Some("4.4.1".into()),
                },
                remote: false,
            })
            .collect();
        self.last_failure = Some(SessionResult {
            recipients: results,
            greeting: None,
            tls: false,
            try_next_host: true,
            sent_8bit_without_8bitmime: false,
        });
    }

    fn current_target(&self) -> Option<&Target> {
        self.next_target
            .checked_sub(1)
            .and_then(|i| self.targets.get(i))
    }

    fn client_params(&self) -> (ClientParams, bool) {
        let host = self.current_target().map(|t| t.host.as_str()).unwrap_or("");
        let (tls, auth, requires_tls) = match &self.job.route {
            RouteSpec::Smarthost {
                tls, credentials, ..
            } => {
                let policy = match tls {
                    TlsMode::Tls => TlsPolicy::Implicit,
                    TlsMode::StartTls => TlsPolicy::Required,
                    TlsMode::None => TlsPolicy::None,
                };
                (policy, credentials.clone(), *tls != TlsMode::None)
            }
            RouteSpec::Direct {
                plaintext_hosts, ..
            } => {
                let policy = if plaintext_hosts.iter().any(|h| h == host) {
                    TlsPolicy::None
                } else {
                    TlsPolicy::Opportunistic
                };
                (policy, None, false)
            }
        };
        let implicit = tls == TlsPolicy::Implicit;
        (
            ClientParams {
                helo_name: self.job.helo_name.clone(),
                tls,
                auth,
                auth_requires_tls: requires_tls,
            },
            implicit,
        )
    }

    fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        match &self.job.route {
            RouteSpec::Smarthost { tls_config, .. } | RouteSpec::Direct { tls_config, .. } => {
                Arc::clone(tls_config)
            }
        }
    }

    /// The TCP connection is up (or failed): start the SMTP session.
    fn connected(&mut self, sh: &mut Shared) {
        let Phase::Connecting { t, .. } = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let mut t = t;
        let failed = match t.socket().take_error() {
            Ok(Some(e)) | Err(e) => Some(e.to_string()),
            Ok(None) => match t.socket().peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    // Not yet: keep waiting.
                    self.phase = Phase::Connecting {
                        t,
                        deadline: sh.now + CONNECT_TIMEOUT,
                    };
                    return;
                }
                Err(e) => Some(e.to_string()),
            },
        };
        if let Some(e) = failed {
            self.note_connect_failure(&format!("connect to {}: {e}", t.peer()));
            self.advance(sh);
            return;
        }
        let (params, implicit) = self.client_params();
        if implicit {
            let host = self
                .current_target()
                .map(|t| t.host.clone())
                .unwrap_or_default();
            if let Err(e) = t.start_tls_client(&self.tls_config(), &host) {
                self.note_connect_failure(&format!("TLS to {host}: {e}"));
                self.advance(sh);
                return;
            }
        }
        let client = Box::new(SmtpClient::new(params, self.job.envelope.clone()));
        let deadline = sh.now + client.reply_timeout();
        self.phase = Phase::Session {
            t,
            client,
            deadline,
            out: Vec::new(),
        };
        self.pump_session(sh);
    }

    fn pump_session(&mut self, sh: &mut Shared) {
        let mut finished: Option<SessionResult> = None;
        let mut handshake_failed = false;
        let host = self
            .current_target()
            .map(|t| t.host.clone())
            .unwrap_or_default();
        let tls_config = self.tls_config();
        if let Phase::Session {
            t,
            client,
            deadline,
            out,
        } = &mut self.phase
        {
            let mut input = Vec::new();
            loop {
                t.queue(out);
                out.clear();
                if let Err(e) = t.flush() {
                    let (result, tls) = transport_failure(client, t, Some(&e));
                    handshake_failed = tls;
                    finished = Some(result);
                    break;
                }
                input.clear();
                match t.read(&mut input, usize::MAX) {
                    Ok(ReadStatus::Data(0)) => continue,
                    Ok(ReadStatus::Data(_)) => {
                        *deadline = sh.now + client.reply_timeout();
                        match client.receive(&input, out) {
                            None => {}
                            Some(ClientEvent::StartTls) => {
                                t.queue(out);
                                out.clear();
                                let _ = t.flush();
                                if let Err(e) = t.start_tls_client(&tls_config, &host) {
                                    finished = Some(client.tls_failed(&e.to_string()));
                                    break;
                                }
                                client.tls_started(out);
                            }
                            Some(ClientEvent::Done(result)) => {
                                t.queue(out);
                                out.clear();
                                let _ = t.flush();
                                finished = Some(result);
                                break;
                            }
                        }
                    }
                    Ok(ReadStatus::WouldBlock) => break,
                    Ok(ReadStatus::Closed) => {
                        let (result, tls) = transport_failure(client, t, None);
                        handshake_failed = tls;
                        finished = Some(result);
                        break;
                    }
                    Err(e) => {
                        let (result, tls) = transport_failure(client, t, Some(&e));
                        handshake_failed = tls;
                        finished = Some(result);
                        break;
                    }
                }
            }
        }
        if handshake_failed && matches!(self.job.route, RouteSpec::Direct { .. }) {
            // Opportunistic TLS (RFC 7435): next time, this host gets
            // plaintext rather than no mail at all.
            self.tls_failed_host = Some(host);
        }
        if let Some(result) = finished {
            self.session_done(result, sh);
        } else if let Phase::Session { t, .. } = &mut self.phase {
            let interest = t.interest();
            if let Some(tok) = self.token {
                let _ = sh.registry.reregister(t.socket(), tok, interest);
            }
        }
    }

    fn session_done(&mut self, result: SessionResult, sh: &mut Shared) {
        let relay = self
            .current_target()
            .map(|t| format!("{}[{}]:{}", t.host, t.addr.ip(), t.addr.port()));
        if let Phase::Session { mut t, .. } = std::mem::replace(&mut self.phase, Phase::Done) {
            t.close();
        }
        let more_targets = self.next_target < self.targets.len() || !self.unresolved.is_empty();
        if result.try_next_host && more_targets {
            debug!(
                "outbox {}: {} failed, trying the next host",
                self.job.entry_id,
                relay.as_deref().unwrap_or("?")
            );
            self.last_failure = Some(result);
            self.advance(sh);
            return;
        }
        for r in &result.recipients {
            let status = match &r.outcome {
                Outcome::Delivered { .. } => "sent",
                Outcome::Transient { .. } => "deferred",
                Outcome::Permanent { .. } => "bounced",
            };
            info!(
                "delivery id={} to=<{}> relay={} status={status} ({})",
                self.job.entry_id,
                r.recipient,
                relay.as_deref().unwrap_or("none"),
                r.outcome.reply()
            );
        }
        self.finish(result.recipients, relay, sh);
    }

    /// No server gave answers: report the last failure seen.
    fn report(&mut self, sh: &mut Shared) {
        let results = if let Some(f) = self.last_failure.take() {
            f.recipients
        } else {
            let (permanent, enhanced, reason) = self.lookup_failure.take().unwrap_or((
                false,
                "4.4.4",
                format!("no address to deliver to for {}", self.domain()),
            ));
            self.job
                .envelope
                .recipients
                .iter()
                .map(|r| RcptResult {
                    recipient: r.clone(),
                    outcome: if permanent {
                        Outcome::Permanent {
                            reply: reason.clone(),
                            enhanced: enhanced.to_string(),
                        }
                    } else {
                        Outcome::Transient {
                            reply: reason.clone(),
                            enhanced: Some(enhanced.to_string()),
                        }
                    },
                    remote: false,
                })
                .collect()
        };
        for r in &results {
            info!(
                "delivery id={} to=<{}> relay=none status={} ({})",
                self.job.entry_id,
                r.recipient,
                if r.outcome.is_permanent() {
                    "bounced"
                } else {
                    "deferred"
                },
                r.outcome.reply()
            );
        }
        self.finish(results, None, sh);
    }

    fn finish(&mut self, results: Vec<RcptResult>, relay: Option<String>, sh: &mut Shared) {
        self.phase = Phase::Done;
        self.done = true;
        let report = GroupReport {
            entry_id: self.job.entry_id.clone(),
            results,
            relay,
            tls_failed_host: self.tls_failed_host.take(),
        };
        sh.outbox_report(report);
    }
}

/// Registers a socket of this driver under its token.
fn register(
    registry: &Registry,
    token: Option<Token>,
    source: &mut dyn mio::event::Source,
    interest: Interest,
) -> io::Result<()> {
    match token {
        Some(t) => registry.register(source, t, interest),
        None => Err(io::Error::other("driver not registered")),
    }
}

/// The connection failed (`err`) or the peer closed it (`None`). During a
/// TLS handshake that is a TLS failure (true): a server that hangs up on a
/// ClientHello it cannot handle is as common as one that sends an alert.
fn transport_failure(
    client: &mut SmtpClient,
    t: &Transport,
    err: Option<&io::Error>,
) -> (SessionResult, bool) {
    if t.is_tls() && !t.tls_established() {
        let reason = err.map_or_else(
            || "the server closed the connection".to_string(),
            |e| e.to_string(),
        );
        (client.tls_failed(&reason), true)
    } else {
        (client.connection_lost(), false)
    }
}

impl Driver for SmtpOut {
    fn ready(&mut self, sh: &mut Shared) {
        if self.token.is_none() {
            self.token = Some(sh.current);
            match &self.job.route {
                RouteSpec::Direct { domain, .. } => {
                    let lookup = MxLookup::new(domain, true, Self::seed());
                    self.start_lookup(lookup, None, sh);
                }
                RouteSpec::Smarthost { .. } => self.advance(sh),
            }
            return;
        }
        match self.phase {
            Phase::Resolving { .. } => self.pump_dns(sh, false),
            Phase::Connecting { .. } => self.connected(sh),
            Phase::Session { .. } => self.pump_session(sh),
            Phase::Done => {}
        }
    }

    fn complete(&mut self, _done: Completion, _sh: &mut Shared) {}

    fn timer(&mut self, sh: &mut Shared) {
        match &mut self.phase {
            Phase::Resolving { resolver, .. } if resolver.deadline() <= sh.now => {
                self.pump_dns(sh, true);
            }
            Phase::Connecting { t, deadline } if *deadline <= sh.now => {
                let peer = t.peer();
                self.phase = Phase::Done;
                self.note_connect_failure(&format!("connect to {peer}: timed out"));
                self.advance(sh);
            }
            Phase::Session {
                client, deadline, ..
            } if *deadline <= sh.now => {
                let result = client.timed_out();
                self.session_done(result, sh);
            }
            _ => {}
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Resolving { resolver, .. } => Some(resolver.deadline()),
            Phase::Connecting { deadline, .. } | Phase::Session { deadline, .. } => Some(*deadline),
            Phase::Done => None,
        }
    }

    fn stop(&mut self, sh: &mut Shared) {
        // Nothing is lost: the queue entry stays as it was and is retried
        // at the next start. Report so the runner can forget the attempt.
        if !self.done {
            let result = match &mut self.phase {
                Phase::Session { client, .. } => client.connection_lost(),
                _ => {
                    self.last_failure = None;
                    self.lookup_failure = Some((false, "4.3.2", "server shutting down".into()));
                    self.report(sh);
                    return;
                }
            };
            self.session_done(result, sh);
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn is_idle(&self) -> bool {
        true
    }

    fn interest(&self) -> Interest {
        Interest::READABLE
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        None
    }
}
