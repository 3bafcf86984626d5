//! Driver for one outbound SMTP session: read the queued message, connect,
//! deliver.
//!
//! Owns: the message read (on a worker), the connection through the one
//! outbound connector (MX or smarthost lookups, each address in turn), the
//! TLS upgrade, and the sans-IO `SmtpClient`. Reports its per-recipient
//! results as an `Effect`. Must not: touch the queue files (the runner's
//! worker job does), or read a file on the loop thread.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info};
use mio::net::TcpStream;
use mio::Interest;

use super::{Ctx, Driver, Effect, Outcome as Done};
use crate::config::TlsMode;
use crate::net::connector::{Connect, Connector, Destination};
use crate::net::transport::{ReadStatus, Transport};
use crate::outbox::{GroupReport, OutboundJob, RouteSpec};
use crate::proto::smtp_client::{
    ClientEvent, ClientParams, Envelope, Outcome, RcptResult, SessionResult, SmtpClient, TlsPolicy,
};
use crate::store::deliver;

enum Phase {
    /// Not started yet.
    Start,
    /// A worker reads the queued message.
    Loading,
    /// The connector is resolving or connecting.
    Connecting,
    Session {
        t: Box<Transport>,
        /// Boxed: the client's state dwarfs the other phases.
        client: Box<SmtpClient>,
        deadline: Instant,
        out: Vec<u8>,
    },
    Done,
}

pub struct SmtpOut {
    job: OutboundJob,
    envelope: Option<Envelope>,
    connector: Connector,
    phase: Phase,
    /// The last session's failure, reported if no server gives a better answer.
    last_failure: Option<SessionResult>,
    tls_failed_host: Option<String>,
    done: bool,
}

impl SmtpOut {
    pub fn new(job: OutboundJob) -> SmtpOut {
        let destination = match &job.route {
            RouteSpec::Smarthost { hosts, .. } => Destination::Hosts(hosts.clone()),
            RouteSpec::Direct { domain, .. } => Destination::Mx(domain.clone()),
        };
        SmtpOut {
            connector: Connector::new(destination, job.nameserver),
            job,
            envelope: None,
            phase: Phase::Start,
            last_failure: None,
            tls_failed_host: None,
            done: false,
        }
    }

    /// The message is read: check it, then connect.
    fn loaded(&mut self, read: io::Result<Vec<u8>>, cx: &mut Ctx) {
        let message = match read {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("cannot read queued message {}: {e}", self.job.entry_id);
                info!("outbox {}: {reason}", self.job.entry_id);
                let results = self.all_recipients(false, "4.3.0", &reason);
                self.finish(results, None, cx);
                return;
            }
        };
        // RFC 5321 6.3: a message that went round too often is a loop.
        if deliver::count_received(&message) > deliver::MAX_RECEIVED {
            let results =
                self.all_recipients(true, "5.4.6", "too many hops (Received: lines), mail loop");
            self.finish(results, None, cx);
            return;
        }
        self.envelope = Some(Envelope {
            reverse_path: self.job.reverse_path.clone(),
            recipients: self.job.recipients.clone(),
            message: message.into(),
            smtputf8: self.job.smtputf8,
        });
        self.phase = Phase::Connecting;
        let step = self.connector.advance(cx.registry(), cx.token, cx.now);
        self.connect_step(step, cx);
    }

    fn connect_step(&mut self, step: Connect, cx: &mut Ctx) {
        match step {
            Connect::Pending => self.phase = Phase::Connecting,
            Connect::Connected(t) => self.start_session(t, cx),
            Connect::Exhausted => self.report(cx),
        }
    }

    fn client_params(&self) -> (ClientParams, bool) {
        let host = self
            .connector
            .current()
            .map(|t| t.host.as_str())
            .unwrap_or("");
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

    /// The TCP connection is up: start the SMTP session.
    fn start_session(&mut self, mut t: Box<Transport>, cx: &mut Ctx) {
        let (params, implicit) = self.client_params();
        let host = self
            .connector
            .current()
            .map(|t| t.host.clone())
            .unwrap_or_default();
        if implicit {
            if let Err(e) = t.start_tls_client(&self.tls_config(), &host) {
                self.note_failure(&format!("TLS to {host}: {e}"));
                let step = self.connector.advance(cx.registry(), cx.token, cx.now);
                self.connect_step(step, cx);
                return;
            }
        }
        let Some(envelope) = self.envelope.clone() else {
            return;
        };
        let client = Box::new(SmtpClient::new(params, envelope));
        let deadline = cx.now + client.reply_timeout();
        self.phase = Phase::Session {
            t,
            client,
            deadline,
            out: Vec::new(),
        };
        self.pump_session(cx);
    }

    fn pump_session(&mut self, cx: &mut Ctx) {
        let mut finished: Option<SessionResult> = None;
        let mut handshake_failed = false;
        let host = self
            .connector
            .current()
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
                        *deadline = cx.now + client.reply_timeout();
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
            self.session_done(result, cx);
        } else if let Phase::Session { t, .. } = &mut self.phase {
            let interest = t.interest();
            let _ = cx.registry().reregister(t.socket(), cx.token, interest);
        }
    }

    fn session_done(&mut self, result: SessionResult, cx: &mut Ctx) {
        let relay = self
            .connector
            .current()
            .map(|t| format!("{}[{}]:{}", t.host, t.addr.ip(), t.addr.port()));
        if let Phase::Session { mut t, .. } = std::mem::replace(&mut self.phase, Phase::Done) {
            t.close();
        }
        if result.try_next_host && self.connector.has_more() {
            debug!(
                "outbox {}: {} failed, trying the next host",
                self.job.entry_id,
                relay.as_deref().unwrap_or("?")
            );
            self.last_failure = Some(result);
            let step = self.connector.advance(cx.registry(), cx.token, cx.now);
            self.connect_step(step, cx);
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
        self.finish(result.recipients, relay, cx);
    }

    /// A session could not even begin on this address (TLS setup).
    fn note_failure(&mut self, reason: &str) {
        info!("outbox {}: {reason}", self.job.entry_id);
        self.last_failure = Some(SessionResult {
            recipients: self.all_recipients(false, "4.4.1", reason),
            greeting: None,
            tls: false,
            try_next_host: true,
            sent_8bit_without_8bitmime: false,
        });
    }

    /// The same answer for every recipient of this session.
    fn all_recipients(&self, permanent: bool, enhanced: &str, reason: &str) -> Vec<RcptResult> {
        self.job
            .recipients
            .iter()
            .map(|r| RcptResult {
                recipient: r.clone(),
                outcome: if permanent {
                    Outcome::Permanent {
                        reply: reason.to_string(),
                        enhanced: enhanced.to_string(),
                    }
                } else {
                    Outcome::Transient {
                        reply: reason.to_string(),
                        enhanced: Some(enhanced.to_string()),
                    }
                },
                remote: false,
            })
            .collect()
    }

    fn domain(&self) -> &str {
        match &self.job.route {
            RouteSpec::Direct { domain, .. } => domain,
            RouteSpec::Smarthost { .. } => "smarthost",
        }
    }

    /// No server gave answers: report the best failure seen (a session's
    /// replies, else a connect error, else a lookup failure).
    fn report(&mut self, cx: &mut Ctx) {
        let results = if let Some(f) = self.last_failure.take() {
            f.recipients
        } else if let Some(e) = self.connector.connect_error() {
            info!("outbox {}: {e}", self.job.entry_id);
            self.all_recipients(false, "4.4.1", e)
        } else if let Some((what, f)) = self.connector.lookup_failure() {
            info!(
                "outbox {}: lookup of {what} failed: {}",
                self.job.entry_id, f.reason
            );
            // A smarthost name that does not resolve is an operator
            // problem: retry, never bounce.
            let permanent = f.permanent && matches!(self.job.route, RouteSpec::Direct { .. });
            self.all_recipients(permanent, f.enhanced, &format!("{what}: {}", f.reason))
        } else {
            let reason = format!("no address to deliver to for {}", self.domain());
            self.all_recipients(false, "4.4.4", &reason)
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
        self.finish(results, None, cx);
    }

    fn finish(&mut self, results: Vec<RcptResult>, relay: Option<String>, cx: &mut Ctx) {
        self.phase = Phase::Done;
        self.done = true;
        cx.effect(Effect::OutboundDone(GroupReport {
            entry_id: self.job.entry_id.clone(),
            results,
            relay,
            tls_failed_host: self.tls_failed_host.take(),
        }));
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
    fn ready(&mut self, cx: &mut Ctx) {
        match self.phase {
            Phase::Start => {
                self.phase = Phase::Loading;
                let path = self.job.message_path.clone();
                cx.submit_quick(move || Done::OutboundMessage(std::fs::read(path)));
            }
            Phase::Connecting => {
                let step = self.connector.ready(cx.registry(), cx.token, cx.now);
                self.connect_step(step, cx);
            }
            Phase::Session { .. } => self.pump_session(cx),
            Phase::Loading | Phase::Done => {}
        }
    }

    fn complete(&mut self, done: Done, cx: &mut Ctx) {
        if let (Done::OutboundMessage(read), Phase::Loading) = (done, &self.phase) {
            if self.done {
                return;
            }
            self.loaded(read, cx);
        }
    }

    fn timer(&mut self, cx: &mut Ctx) {
        match &mut self.phase {
            Phase::Connecting => {
                let step = self.connector.timer(cx.registry(), cx.token, cx.now);
                self.connect_step(step, cx);
            }
            Phase::Session {
                client, deadline, ..
            } if *deadline <= cx.now => {
                let result = client.timed_out();
                self.session_done(result, cx);
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
        // Nothing is lost: the queue entry stays as it was and is retried
        // at the next start. Report so the runner can forget the attempt.
        if self.done {
            return;
        }
        match &mut self.phase {
            Phase::Session { client, .. } => {
                let result = client.connection_lost();
                self.session_done(result, cx);
            }
            // The worker's read comes back and is ignored; report now.
            _ => {
                let results = self.all_recipients(false, "4.3.2", "server shutting down");
                self.finish(results, None, cx);
            }
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn is_idle(&self) -> bool {
        !matches!(self.phase, Phase::Loading)
    }

    fn interest(&self) -> Interest {
        Interest::READABLE
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        None
    }
}
