//! Driver for one inbound IMAP connection (plain with STARTTLS, or imaps).
//!
//! Owns: the socket (through the shared inbound pump), the sans-IO
//! `ImapSession`, and handing password checks to the workers with the
//! same login penalties as POP3 and SMTP AUTH. Must not: parse IMAP
//! itself, or touch a file on the loop thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use mio::net::TcpStream;
use mio::Interest;

use super::pump::{Inbound, Pumped, ServerCore};
use super::{Ctx, Driver, IdleClock, ListenerKind, Outcome};
use crate::net::canonical_ip;
use crate::proto::imap::session::{ImapEvent, ImapParams, ImapSession, LoginFailure};

/// A failed login is answered after this pause.
const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);

impl ServerCore for ImapSession {
    type Event = ImapEvent;
    fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        ImapSession::receive(self, input, out, events);
    }
    fn wants_input(&self) -> bool {
        ImapSession::wants_input(self)
    }
    fn is_closed(&self) -> bool {
        ImapSession::is_closed(self)
    }
    fn tls_started(&mut self, out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        ImapSession::tls_started(self, out, events);
    }
}

enum Waiting {
    Nothing,
    Password,
    FailureDelay(Instant),
}

pub struct ImapIn {
    io: Inbound<ImapSession>,
    waiting: Waiting,
    /// The mailbox address of the login in flight.
    mailbox: Option<String>,
    login_user: Option<String>,
    /// The session must log in by then.
    login_by: Option<Instant>,
}

impl ImapIn {
    pub fn new(kind: ListenerKind, sock: TcpStream, peer: SocketAddr, cx: &mut Ctx) -> ImapIn {
        let ip = canonical_ip(peer.ip());
        let config = Arc::clone(cx.config());
        let implicit_tls = kind == ListenerKind::Imaps;
        let params = ImapParams {
            hostname: config.server.hostname.clone(),
            starttls_available: !implicit_tls,
            tls_active: implicit_tls,
            plaintext_login_allowed: implicit_tls
                || config.smtp.allow_plaintext_auth
                || ip.is_loopback(),
            append_limit: config.smtp.max_message_size,
        };
        let idle = IdleClock::new(cx.now, config.imap.timeout);
        let tls = implicit_tls.then_some(&cx.sv.tls);
        let core = ImapSession::new(params);
        let mut io = Inbound::accept(sock, peer, core, idle, kind.name(), tls);
        io.core.greeting(&mut io.out);
        info!("{} connect from {peer}", kind.name());
        ImapIn {
            io,
            waiting: Waiting::Nothing,
            mailbox: None,
            login_user: None,
            login_by: Some(cx.now + config.smtp.login_timeout),
        }
    }

    fn pump(&mut self, cx: &mut Ctx) {
        loop {
            let may_read = matches!(self.waiting, Waiting::Nothing);
            match self.io.pump(&cx.sv.tls, may_read, cx.now) {
                Pumped::Events => self.handle_events(cx),
                Pumped::Waiting | Pumped::Closed => return,
            }
        }
    }

    fn handle_events(&mut self, cx: &mut Ctx) {
        for event in std::mem::take(&mut self.io.events) {
            match event {
                ImapEvent::Authenticate { user, password } => {
                    let ip = canonical_ip(self.io.t.peer().ip());
                    if !cx.begin_login(ip) {
                        info!(
                            "imap {}: login refused for {user:?}: too many failed logins",
                            self.io.t.peer()
                        );
                        self.io.core.login_failed(
                            LoginFailure::BadCredentials,
                            &mut self.io.out,
                            &mut self.io.events,
                        );
                        self.io.events.clear();
                        self.io.closing = true;
                        continue;
                    }
                    self.waiting = Waiting::Password;
                    let config = Arc::clone(cx.config());
                    self.mailbox = config.find_login(&user).map(|m| m.address.clone());
                    self.login_user = Some(user.clone());
                    cx.submit_quick(move || {
                        Outcome::Password(super::check_login(&config, &user, &password))
                    });
                }
                ImapEvent::StartTls => self.io.start_tls_after_flush(),
                ImapEvent::Close => self.io.closing = true,
            }
        }
    }

    fn login_failed(&mut self, why: LoginFailure) {
        self.io
            .core
            .login_failed(why, &mut self.io.out, &mut self.io.events);
    }
}

impl Driver for ImapIn {
    fn ready(&mut self, cx: &mut Ctx) {
        self.pump(cx);
    }

    fn complete(&mut self, done: Outcome, cx: &mut Ctx) {
        let Outcome::Password(ok) = done else {
            return;
        };
        self.waiting = Waiting::Nothing;
        if self.io.is_done() {
            return;
        }
        let user = self.login_user.take().unwrap_or_default();
        let ip = canonical_ip(self.io.t.peer().ip());
        cx.end_login(ip, ok && self.mailbox.is_some());
        match (ok, self.mailbox.clone()) {
            (true, Some(mailbox)) => {
                self.login_by = None;
                info!("imap {}: {mailbox} logged in", self.io.t.peer());
                self.io
                    .core
                    .login_ok(mailbox, &mut self.io.out, &mut self.io.events);
            }
            _ => {
                info!("imap {}: login failed for {user:?}", self.io.t.peer());
                self.waiting = Waiting::FailureDelay(cx.now + LOGIN_FAILURE_DELAY);
                return;
            }
        }
        self.handle_events(cx);
        self.pump(cx);
    }

    fn timer(&mut self, cx: &mut Ctx) {
        if let Waiting::FailureDelay(at) = self.waiting {
            if at <= cx.now {
                self.waiting = Waiting::Nothing;
                self.login_failed(LoginFailure::BadCredentials);
                if cx.login_blocked(canonical_ip(self.io.t.peer().ip())) {
                    self.io.closing = true;
                }
                self.handle_events(cx);
                self.pump(cx);
                return;
            }
        }
        let login_late = self.login_by.is_some_and(|t| t <= cx.now);
        if (self.io.idle.expired(cx.now) || login_late) && matches!(self.waiting, Waiting::Nothing)
        {
            info!("imap {}: timeout, closing", self.io.t.peer());
            self.io.core.timed_out(&mut self.io.out);
            self.io.closing = true;
            self.pump(cx);
            self.io.finish();
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.io.is_done() {
            return None;
        }
        let idle = self.io.idle.deadline();
        let idle = self.login_by.map_or(idle, |t| t.min(idle));
        match self.waiting {
            Waiting::FailureDelay(at) => Some(at.min(idle)),
            Waiting::Password => None,
            Waiting::Nothing => Some(idle),
        }
    }

    fn stop(&mut self, _cx: &mut Ctx) {
        if !matches!(self.waiting, Waiting::Password) {
            self.io.finish();
        }
    }

    fn is_done(&self) -> bool {
        self.io.is_done()
    }

    fn is_idle(&self) -> bool {
        !matches!(self.waiting, Waiting::Password)
    }

    fn interest(&self) -> Interest {
        self.io.t.interest()
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        Some(self.io.t.socket())
    }
}
