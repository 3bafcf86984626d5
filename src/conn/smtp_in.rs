//! Driver for one inbound SMTP connection (MX, submission or smtps role).
//!
//! Owns: the socket (via `Transport`), the sans-IO `SmtpSession`, the idle
//! deadline, handing messages and password checks to the workers, and the
//! delayed answer to a failed AUTH. Must not: parse SMTP itself, or touch
//! the disk on the loop thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::Interest;

use super::IdleClock;
use crate::config::{Config, Resolution};
use crate::event_loop::{canonical_ip, Driver, ListenerKind};
use crate::net::transport::{ReadStatus, Transport};
use crate::proto::smtp_server::{
    DeliveryOutcome, Event, Recipients, Role, SessionParams, SmtpSession, Transaction,
};
use crate::server::{Completion, Outcome, Shared};

/// Stop reading while this much output waits for a client that does not
/// read its replies (a pipelining flood), so memory stays bounded.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// A failed AUTH is answered after this pause (slows password guessing
/// without a sleep in the loop).
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);

impl Recipients for Config {
    fn is_local_domain(&self, domain: &str) -> bool {
        Config::is_local_domain(self, domain)
    }
    fn resolve(&self, address: &str) -> Option<Resolution> {
        Config::resolve(self, address)
    }
    fn postmaster_domain(&self) -> Option<String> {
        Config::postmaster_domain(self)
    }
    fn may_send_as(&self, login: &str, reverse_path: &str) -> bool {
        Config::may_send_as(self, login, reverse_path)
    }
}

enum Waiting {
    Nothing,
    /// A worker is storing the message.
    Delivery,
    /// A worker is checking a password.
    Password,
    /// The password was wrong; answer at this instant.
    FailureDelay(Instant),
    /// "220 Ready to start TLS" must reach the client before the handshake.
    TlsAfterFlush,
}

pub struct SmtpIn {
    t: Transport,
    session: SmtpSession,
    role: ListenerKind,
    out: Vec<u8>,
    events: Vec<Event>,
    waiting: Waiting,
    idle: IdleClock,
    closing: bool,
    done: bool,
    auth_user: Option<String>,
    /// The username of the AUTH in flight.
    auth_attempt: Option<String>,
}

impl SmtpIn {
    pub fn new(kind: ListenerKind, sock: TcpStream, peer: SocketAddr, sh: &mut Shared) -> SmtpIn {
        let ip = canonical_ip(peer.ip());
        let cfg = &sh.config;
        let mut t = Transport::new(sock, peer);
        let implicit_tls = kind == ListenerKind::Smtps;
        let mut done = false;
        if implicit_tls {
            if let Err(e) = t.start_tls_server(&sh.tls) {
                warn!("smtps {ip}: cannot start TLS: {e}");
                done = true;
            }
        }
        let role = match kind {
            ListenerKind::Submission => Role::Submission,
            ListenerKind::Smtps => Role::Smtps,
            _ => Role::Mx,
        };
        let params = SessionParams {
            hostname: cfg.server.hostname.clone(),
            peer: ip,
            role,
            max_message_size: cfg.smtp.max_message_size,
            max_recipients: cfg.smtp.max_recipients,
            relay_allowed: cfg.relay_allowed(ip),
            tls_active: implicit_tls,
            starttls_available: !implicit_tls,
            plaintext_auth_allowed: cfg.smtp.allow_plaintext_auth || ip.is_loopback(),
        };
        let mut session = SmtpSession::new(params);
        let mut out = Vec::new();
        session.greeting(&mut out);
        info!("{} connect from {peer}", kind.name());
        SmtpIn {
            t,
            session,
            role: kind,
            out,
            events: Vec::new(),
            waiting: Waiting::Nothing,
            idle: IdleClock::new(sh.now, cfg.smtp.timeout),
            closing: false,
            done,
            auth_user: None,
            auth_attempt: None,
        }
    }

    fn ip(&self) -> std::net::IpAddr {
        canonical_ip(self.t.peer().ip())
    }

    /// Reads, feeds the core, carries out its events, writes; until the
    /// socket would block or the core waits for something.
    fn pump(&mut self, sh: &mut Shared) {
        let mut input = Vec::new();
        while !self.done {
            self.t.queue(&self.out);
            self.out.clear();
            if let Err(e) = self.t.flush() {
                info!("smtp {}: write failed: {e}", self.t.peer());
                self.finish();
                return;
            }
            if matches!(self.waiting, Waiting::TlsAfterFlush) {
                if !self.t.is_flushed() {
                    return;
                }
                if let Err(e) = self.t.start_tls_server(&sh.tls) {
                    warn!("smtp {}: cannot start TLS: {e}", self.t.peer());
                    self.finish();
                    return;
                }
                self.waiting = Waiting::Nothing;
                self.session.tls_started(&mut self.out, &mut self.events);
                self.handle_events(sh);
                continue;
            }
            if self.closing || self.session.is_closed() {
                if self.t.is_flushed() {
                    self.finish();
                }
                return;
            }
            if !matches!(self.waiting, Waiting::Nothing)
                || !self.session.wants_input()
                || self.t.pending_output() > MAX_PENDING_OUTPUT
            {
                return;
            }
            input.clear();
            match self.t.read(&mut input, usize::MAX) {
                Ok(ReadStatus::Data(0)) => continue,
                Ok(ReadStatus::Data(n)) => {
                    let config = Arc::clone(&sh.config);
                    self.session
                        .receive(&input, config.as_ref(), &mut self.out, &mut self.events);
                    let answered = !self.out.is_empty() || !self.events.is_empty();
                    self.idle.read(n, answered, sh.now);
                    self.handle_events(sh);
                }
                Ok(ReadStatus::WouldBlock) => return,
                Ok(ReadStatus::Closed) => {
                    if self.session.in_transaction() {
                        info!(
                            "smtp {}: connection lost during a transaction",
                            self.t.peer()
                        );
                    }
                    self.finish();
                    return;
                }
                Err(e) => {
                    info!("smtp {}: read failed: {e}", self.t.peer());
                    self.finish();
                    return;
                }
            }
        }
    }

    fn handle_events(&mut self, sh: &mut Shared) {
        for event in std::mem::take(&mut self.events) {
            match event {
                Event::Deliver(tx) => self.submit_delivery(tx, sh),
                Event::Authenticate { username, password } => {
                    self.waiting = Waiting::Password;
                    self.auth_attempt = Some(username.clone());
                    let config = Arc::clone(&sh.config);
                    sh.submit(move || {
                        Outcome::Password(crate::server::check_login(&config, &username, &password))
                    });
                }
                Event::StartTls => self.waiting = Waiting::TlsAfterFlush,
                Event::Close => self.closing = true,
            }
        }
    }

    fn submit_delivery(&mut self, tx: Transaction, sh: &mut Shared) {
        self.waiting = Waiting::Delivery;
        let config = Arc::clone(&sh.config);
        let tls = self.t.tls_description();
        sh.submit(move || {
            let (outcome, queued) = crate::delivery::accept(&config, tx, tls);
            Outcome::Delivered(outcome, queued)
        });
    }

    fn finish(&mut self) {
        if !self.done {
            self.t.close();
            self.done = true;
        }
    }
}

impl Driver for SmtpIn {
    fn ready(&mut self, sh: &mut Shared) {
        self.pump(sh);
    }

    fn complete(&mut self, done: Completion, sh: &mut Shared) {
        let config = Arc::clone(&sh.config);
        match done.outcome {
            Outcome::Delivered(outcome, queued) => {
                self.waiting = Waiting::Nothing;
                if let Some(entry) = queued {
                    sh.outbox_add(entry);
                }
                if self.done {
                    return;
                }
                if let DeliveryOutcome::Accepted { .. } = &outcome {
                    self.idle.touch(sh.now);
                }
                self.session
                    .delivered(outcome, config.as_ref(), &mut self.out, &mut self.events);
                if sh.stopping && !self.session.in_transaction() {
                    // The transaction we waited for is done; no new one.
                    self.session.shutting_down(&mut self.out);
                    self.closing = true;
                }
            }
            Outcome::Password(ok) => {
                self.waiting = Waiting::Nothing;
                if self.done {
                    return;
                }
                let user = self.auth_attempt.take().unwrap_or_default();
                if ok {
                    info!("smtp {}: authenticated as {user}", self.t.peer());
                    self.auth_user = Some(user);
                    self.waiting = Waiting::Nothing;
                    self.session.auth_result(
                        true,
                        config.as_ref(),
                        &mut self.out,
                        &mut self.events,
                    );
                } else {
                    info!("smtp {}: authentication failed for {user:?}", self.t.peer());
                    sh.login_failed(self.ip());
                    self.waiting = Waiting::FailureDelay(sh.now + AUTH_FAILURE_DELAY);
                    return;
                }
            }
            _ => return,
        }
        self.handle_events(sh);
        self.pump(sh);
    }

    fn timer(&mut self, sh: &mut Shared) {
        if let Waiting::FailureDelay(at) = self.waiting {
            if at <= sh.now {
                self.waiting = Waiting::Nothing;
                let config = Arc::clone(&sh.config);
                self.session
                    .auth_result(false, config.as_ref(), &mut self.out, &mut self.events);
                self.handle_events(sh);
                self.pump(sh);
                return;
            }
        }
        if self.idle.expired(sh.now)
            && !matches!(self.waiting, Waiting::Delivery | Waiting::Password)
        {
            info!("smtp {}: timeout, closing", self.t.peer());
            self.session.timed_out(&mut self.out);
            self.closing = true;
            self.pump(sh);
            // A client that does not even read gets no more patience.
            if !self.done {
                self.finish();
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        match self.waiting {
            Waiting::FailureDelay(at) => Some(at.min(self.idle.deadline())),
            Waiting::Delivery | Waiting::Password => None,
            _ => Some(self.idle.deadline()),
        }
    }

    fn stop(&mut self, sh: &mut Shared) {
        if self.done {
            return;
        }
        if matches!(self.waiting, Waiting::Delivery) || self.session.in_transaction() {
            // Let the transaction finish; the loop's grace period bounds it.
            self.idle.cut_to(sh.now + Duration::from_secs(5));
            return;
        }
        self.session.shutting_down(&mut self.out);
        self.closing = true;
        self.pump(sh);
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn is_idle(&self) -> bool {
        !matches!(self.waiting, Waiting::Delivery | Waiting::Password)
    }

    fn interest(&self) -> Interest {
        self.t.interest()
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        Some(self.t.socket())
    }
}

impl SmtpIn {
    pub fn role(&self) -> ListenerKind {
        self.role
    }
}
