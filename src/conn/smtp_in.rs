//! Driver for one inbound SMTP connection (MX, submission or smtps role).
//!
//! Owns: the socket (via `Transport`), the sans-IO `SmtpSession`, the idle
//! deadline, the message body under way (`body::BodySink`: memory, then
//! the spool, with the global budget's back-pressure), handing messages
//! and password checks to the workers, and the delayed answer to a failed
//! AUTH. Must not: parse SMTP itself, or touch the disk on the loop thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use mio::net::TcpStream;
use mio::Interest;

use super::body::{BodySink, Next, Ready, SpoolJob};
use super::mailauth_in::{self, Check, DnsSet, DnsblCheck, Progress, Verdict};
use super::pump::{Inbound, Pumped, ServerCore};
use super::{Ctx, Driver, Effect, IdleClock, ListenerKind, Outcome};
use crate::config::{Config, Resolution};
use crate::net::canonical_ip;
use crate::proto::smtp_server::{
    DeliveryOutcome, Event, Recipients, Role, SessionParams, SmtpSession,
};

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

/// The SMTP core with the config it resolves recipients against (the
/// one in force when the session began).
pub struct SmtpCore {
    session: SmtpSession,
    config: Arc<Config>,
}

impl ServerCore for SmtpCore {
    type Event = Event;
    fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<Event>) {
        self.session
            .receive(input, self.config.as_ref(), out, events);
    }
    fn wants_input(&self) -> bool {
        self.session.wants_input()
    }
    fn is_closed(&self) -> bool {
        self.session.is_closed()
    }
    fn tls_started(&mut self, out: &mut Vec<u8>, events: &mut Vec<Event>) {
        self.session.tls_started(out, events);
    }
    fn answers(event: &Event) -> bool {
        !matches!(event, Event::Body(_) | Event::Discard)
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
    /// MX role: the DNSBL answers, before the greeting.
    Dnsbl,
    /// MX role: SPF, DKIM, DMARC (and greylisting) for the message.
    Checks,
}

/// The MX checks of one message give up on DNS after this long.
const CHECKS_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SmtpIn {
    io: Inbound<SmtpCore>,
    role: ListenerKind,
    waiting: Waiting,
    /// The username of the AUTH in flight.
    auth_attempt: Option<String>,
    /// Submission and smtps: the session must log in by then.
    login_by: Option<Instant>,
    /// The message body under way.
    body: BodySink,
    /// The global budget refused the last read: not the client's silence.
    starved: bool,
    /// MX checks: this connection's DNS questions in flight.
    dns: DnsSet,
    dnsbl: Option<DnsblCheck>,
    check: Option<(Check, Instant)>,
    /// Local mailboxes of the delivery in flight (IMAP IDLE wake-ups).
    delivering_to: Vec<String>,
}

impl SmtpIn {
    pub fn new(kind: ListenerKind, sock: TcpStream, peer: SocketAddr, cx: &mut Ctx) -> SmtpIn {
        let ip = canonical_ip(peer.ip());
        let cfg = Arc::clone(cx.config());
        let implicit_tls = kind == ListenerKind::Smtps;
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
        let session = SmtpSession::new(params);
        let idle = IdleClock::new(cx.now, cfg.smtp.timeout);
        let login_timeout = cfg.smtp.login_timeout;
        let core = SmtpCore {
            session,
            config: cfg,
        };
        let tls = implicit_tls.then_some(&cx.sv.tls);
        let mut io = Inbound::accept(sock, peer, core, idle, kind.name(), tls);
        let mut dns = DnsSet::default();
        let dnsbl = mailauth_in::dnsbl_applies(cx.config(), kind, ip)
            .then(|| DnsblCheck::start(ip, &mut dns, cx));
        if dnsbl.is_none() {
            io.core.session.greeting(&mut io.out);
        }
        info!("{} connect from {peer}", kind.name());
        let login_by = (kind != ListenerKind::SmtpMx).then(|| cx.now + login_timeout);
        let mut me = SmtpIn {
            io,
            role: kind,
            waiting: if dnsbl.is_some() {
                Waiting::Dnsbl
            } else {
                Waiting::Nothing
            },
            auth_attempt: None,
            login_by,
            body: BodySink::new(cx.token, cx.config().server.data_dir.clone()),
            starved: false,
            dns,
            dnsbl,
            check: None,
            delivering_to: Vec::new(),
        };
        // Every answer may have come from the cache.
        me.poll_checks(cx);
        me
    }

    /// Moves the MX checks on with what arrived (DNS answers, a worker's
    /// result); true when the session has something new to say.
    fn poll_checks(&mut self, cx: &mut Ctx) -> bool {
        if !self.dns.busy() && self.dnsbl.is_none() && self.check.is_none() {
            return false;
        }
        self.dns.poll(cx);
        if let Some((_, started)) = &self.check {
            if cx.now.saturating_duration_since(*started) >= CHECKS_TIMEOUT {
                self.dns.fail_all("the checks took too long");
            }
        }
        let mut news = false;
        if let Some(d) = &self.dnsbl {
            if let Some(verdict) = d.verdict(&mut self.dns, cx) {
                self.dnsbl = None;
                self.waiting = Waiting::Nothing;
                news = true;
                match verdict {
                    None => self.io.core.session.greeting(&mut self.io.out),
                    Some(text) => {
                        self.io
                            .out
                            .extend_from_slice(format!("554 5.7.1 {text}\r\n").as_bytes());
                        self.io.closing = true;
                    }
                }
            }
        }
        let Some((check, started)) = self.check.as_mut() else {
            return news;
        };
        let started = *started;
        match check.advance(&mut self.dns, cx) {
            Progress::Waiting => news,
            Progress::Verify(h) => {
                cx.submit_quick(move || Outcome::MailAuthVerified(mailauth_in::verify_job(h)));
                news
            }
            Progress::Done(verdict) => {
                self.check = None;
                let _ = started;
                match verdict {
                    Verdict::Refuse(outcome, h) => {
                        if let Some(h) = h {
                            if let Some(spooled) = h.spooled {
                                cx.submit_quick(move || {
                                    spooled.remove();
                                    Outcome::Nothing
                                });
                            }
                        }
                        self.body.delivered(&mut cx.sv.budget);
                        self.answer_delivery(outcome, cx);
                    }
                    Verdict::Deliver(h, checked) => {
                        let config = Arc::clone(cx.config());
                        let tls = self.io.t.tls_description();
                        self.waiting = Waiting::Delivery;
                        self.delivering_to = local_recipients(&h.tx);
                        cx.submit(move || {
                            let h = *h;
                            let message = match &h.spooled {
                                Some(s) => crate::store::message::Message::Stored(s),
                                None => crate::store::message::Message::Wire(&h.tx.data),
                            };
                            let (outcome, queued) = crate::delivery::accept_checked(
                                &config, &h.tx, message, tls, &checked,
                            );
                            if let Some(s) = h.spooled {
                                s.remove();
                            }
                            Outcome::Delivered(outcome, queued)
                        });
                    }
                }
                true
            }
        }
    }

    fn ip(&self) -> std::net::IpAddr {
        canonical_ip(self.io.t.peer().ip())
    }

    /// Pumps IO and carries out the core's events until it waits.
    fn pump(&mut self, cx: &mut Ctx) {
        loop {
            let mut may_read = matches!(self.waiting, Waiting::Nothing) && self.body.may_read();
            self.starved = false;
            if may_read && !cx.sv.budget.may_read(cx.token) {
                // Back-pressure: the budget wakes us when it has room.
                may_read = false;
                self.starved = true;
            }
            match self.io.pump(&cx.sv.tls, may_read, cx.now) {
                Pumped::Events => self.handle_events(cx),
                Pumped::Waiting => {
                    if self.starved || cx.sv.budget.under_pressure() {
                        // What we hold goes to disk, so the budget frees
                        // whatever our client does.
                        if let Some(job) = self.body.flush() {
                            self.submit_spool(job, cx);
                        }
                    }
                    return;
                }
                Pumped::Closed => {
                    if self.io.core.session.in_transaction() {
                        info!(
                            "smtp {}: connection lost during a transaction",
                            self.io.t.peer()
                        );
                    }
                    self.closed(cx);
                    return;
                }
            }
        }
    }

    /// The connection is over: forget the body under way (its spool file
    /// is removed on a worker).
    fn closed(&mut self, cx: &mut Ctx) {
        self.dns.clear();
        self.dnsbl = None;
        if let Some((mut check, _)) = self.check.take() {
            let idle = check.idle();
            if let Some(spooled) = check.take_spooled() {
                cx.submit_quick(move || {
                    spooled.remove();
                    Outcome::Nothing
                });
            }
            if idle {
                self.body.delivered(&mut cx.sv.budget);
                self.waiting = Waiting::Nothing;
            }
        }
        let (job, dropped) = self.body.close(&mut cx.sv.budget);
        if let Some(job) = job {
            self.submit_spool(job, cx);
        }
        if dropped {
            // Its delivery never started: nothing to wait for.
            self.waiting = Waiting::Nothing;
        }
    }

    fn submit_spool(&mut self, job: SpoolJob, cx: &mut Ctx) {
        cx.submit(move || match job.run() {
            Some(result) => Outcome::Spooled(result),
            None => Outcome::SpoolRemoved,
        });
    }

    fn handle_events(&mut self, cx: &mut Ctx) {
        // Answering a delivery at once (a failed spool) adds events.
        while !self.io.events.is_empty() {
            for event in std::mem::take(&mut self.io.events) {
                self.handle_event(event, cx);
            }
        }
    }

    fn handle_event(&mut self, event: Event, cx: &mut Ctx) {
        {
            match event {
                Event::Body(bytes) => {
                    if let Some(job) = self.body.body(bytes, &mut cx.sv.budget) {
                        self.submit_spool(job, cx);
                    }
                }
                Event::Discard => {
                    if let Some(job) = self.body.discard(&mut cx.sv.budget) {
                        self.submit_spool(job, cx);
                    }
                }
                Event::Deliver(tx) => {
                    self.waiting = Waiting::Delivery;
                    if let Some(ready) = self.body.deliver(tx, &mut cx.sv.budget) {
                        self.submit_delivery(ready, cx);
                    }
                }
                Event::Authenticate { username, password } => {
                    if !cx.begin_login(self.ip()) {
                        // Blocked, or enough guesses from this address in
                        // flight already: refused unchecked, and the end.
                        info!(
                            "smtp {}: authentication refused for {username:?}: too many failed logins",
                            self.io.t.peer()
                        );
                        let config = Arc::clone(&self.io.core.config);
                        let io = &mut self.io;
                        io.core.session.auth_result(
                            false,
                            config.as_ref(),
                            &mut io.out,
                            &mut Vec::new(),
                        );
                        io.closing = true;
                        return;
                    }
                    self.waiting = Waiting::Password;
                    self.auth_attempt = Some(username.clone());
                    let config = Arc::clone(cx.config());
                    cx.submit_quick(move || {
                        Outcome::Password(super::check_login(&config, &username, &password))
                    });
                }
                Event::StartTls => self.io.start_tls_after_flush(),
                Event::Close => self.io.closing = true,
            }
        }
    }

    /// Stores a complete message on a worker (from memory, or from its
    /// spool file, which goes afterwards); a body that could not be
    /// spooled is answered at once.
    fn submit_delivery(&mut self, ready: Ready, cx: &mut Ctx) {
        let checked = match &ready {
            Ready::Memory(tx) | Ready::Spool { tx, .. } => {
                mailauth_in::applies(cx.config(), self.role, tx).then(|| Check::new(tx))
            }
            Ready::Refuse(_) => None,
        };
        if let Some(check) = checked {
            // SPF over DNS while a worker hashes the message.
            self.waiting = Waiting::Checks;
            self.check = Some((check, cx.now));
            cx.submit(move || Outcome::MailAuthHashed(mailauth_in::hash_job(ready)));
            self.poll_checks(cx);
            return;
        }
        self.waiting = Waiting::Delivery;
        let config = Arc::clone(cx.config());
        let tls = self.io.t.tls_description();
        // The local mailboxes this delivery reaches: their IMAP sessions
        // hear of it once it is stored (IDLE).
        let tx_of = match &ready {
            Ready::Memory(tx) | Ready::Spool { tx, .. } => Some(tx),
            Ready::Refuse(_) => None,
        };
        self.delivering_to = tx_of.map(local_recipients).unwrap_or_default();
        match ready {
            Ready::Memory(tx) => cx.submit(move || {
                let (outcome, queued) = crate::delivery::accept(&config, tx, tls);
                Outcome::Delivered(outcome, queued)
            }),
            Ready::Spool { tx, writer, tail } => cx.submit(move || {
                let (outcome, queued) = match super::body::finish_spool(writer, &tail) {
                    Ok(spooled) => {
                        let message = crate::store::message::Message::Stored(&spooled);
                        let done = crate::delivery::accept_message(&config, &tx, message, tls);
                        spooled.remove();
                        done
                    }
                    Err(e) => (
                        crate::delivery::refusal(&crate::store::deliver::DeliveryError::from_io(
                            &e,
                        )),
                        None,
                    ),
                };
                Outcome::Delivered(outcome, queued)
            }),
            Ready::Refuse(outcome) => self.answer_delivery(outcome, cx),
        }
    }

    /// A check's result came for a session that ended or no longer waits
    /// for it: its spooled copy is removed on a worker (an unlink is file
    /// work, not the loop's) and the body's budget is given back.
    fn abandon_checks(&mut self, spooled: Option<crate::store::spool::Spooled>, cx: &mut Ctx) {
        if let Some(s) = spooled {
            cx.submit_quick(move || {
                s.remove();
                Outcome::Nothing
            });
        }
        self.waiting = Waiting::Nothing;
        self.body.delivered(&mut cx.sv.budget);
    }

    /// The reply to the end of the data.
    fn answer_delivery(&mut self, outcome: DeliveryOutcome, cx: &mut Ctx) {
        self.waiting = Waiting::Nothing;
        if self.io.is_done() {
            return;
        }
        if let DeliveryOutcome::Accepted { .. } = &outcome {
            self.io.idle.touch(cx.now);
        }
        let config = Arc::clone(&self.io.core.config);
        let io = &mut self.io;
        io.core
            .session
            .delivered(outcome, config.as_ref(), &mut io.out, &mut io.events);
        if cx.stopping() && !io.core.session.in_transaction() {
            // The transaction we waited for is done; no new one.
            io.core.session.shutting_down(&mut io.out);
            io.closing = true;
        }
    }
}

impl Driver for SmtpIn {
    fn ready(&mut self, cx: &mut Ctx) {
        if self.poll_checks(cx) {
            self.handle_events(cx);
        }
        self.pump(cx);
        if self.io.is_done() {
            self.closed(cx);
        }
    }

    fn complete(&mut self, done: Outcome, cx: &mut Ctx) {
        let config = Arc::clone(&self.io.core.config);
        match done {
            Outcome::Delivered(outcome, queued) => {
                self.body.delivered(&mut cx.sv.budget);
                if let Some(entry) = queued {
                    cx.effect(Effect::Queued(entry));
                }
                let reached = std::mem::take(&mut self.delivering_to);
                if matches!(outcome, DeliveryOutcome::Accepted { .. }) && !reached.is_empty() {
                    cx.effect(Effect::MailboxesChanged(reached));
                }
                self.answer_delivery(outcome, cx);
                if self.io.is_done() {
                    return;
                }
            }
            Outcome::Spooled(result) => {
                for next in self.body.written(result, &mut cx.sv.budget) {
                    match next {
                        Next::Job(job) => self.submit_spool(job, cx),
                        Next::Deliver(ready) => self.submit_delivery(ready, cx),
                    }
                }
                if self.io.is_done() {
                    return;
                }
                // Our disk was slow, not the client.
                self.io.idle.touch(cx.now);
            }
            Outcome::Password(ok) => {
                self.waiting = Waiting::Nothing;
                if self.io.is_done() {
                    return;
                }
                let user = self.auth_attempt.take().unwrap_or_default();
                cx.end_login(self.ip(), ok);
                if ok {
                    info!("smtp {}: authenticated as {user}", self.io.t.peer());
                    self.login_by = None;
                    let io = &mut self.io;
                    io.core
                        .session
                        .auth_result(true, config.as_ref(), &mut io.out, &mut io.events);
                } else {
                    info!(
                        "smtp {}: authentication failed for {user:?}",
                        self.io.t.peer()
                    );
                    self.waiting = Waiting::FailureDelay(cx.now + AUTH_FAILURE_DELAY);
                    return;
                }
            }
            Outcome::MailAuthHashed(result) => {
                if self.io.is_done() || self.check.is_none() {
                    return self.abandon_checks(result.ok().and_then(|h| h.spooled), cx);
                }
                if let Some((check, _)) = self.check.as_mut() {
                    check.hashed(result);
                }
                self.poll_checks(cx);
            }
            Outcome::MailAuthVerified(h) => {
                if self.io.is_done() || self.check.is_none() {
                    return self.abandon_checks(h.spooled, cx);
                }
                if let Some((check, _)) = self.check.as_mut() {
                    check.verified(h);
                }
                self.poll_checks(cx);
            }
            _ => return,
        }
        self.handle_events(cx);
        self.pump(cx);
    }

    fn timer(&mut self, cx: &mut Ctx) {
        if self.dns.deadline().is_some_and(|t| t <= cx.now) || self.check.is_some() {
            if self.poll_checks(cx) {
                self.handle_events(cx);
            }
            self.pump(cx);
            if self.io.is_done() {
                self.closed(cx);
                return;
            }
        }
        if let Waiting::FailureDelay(at) = self.waiting {
            if at <= cx.now {
                self.waiting = Waiting::Nothing;
                let config = Arc::clone(&self.io.core.config);
                let io = &mut self.io;
                io.core
                    .session
                    .auth_result(false, config.as_ref(), &mut io.out, &mut io.events);
                if cx.login_blocked(self.ip()) {
                    // This address is now blocked: its sessions end too.
                    self.io.closing = true;
                }
                self.handle_events(cx);
                self.pump(cx);
                return;
            }
        }
        let login_late = self.login_by.is_some_and(|t| t <= cx.now);
        if (self.io.idle.expired(cx.now) || login_late)
            && !matches!(
                self.waiting,
                Waiting::Delivery | Waiting::Password | Waiting::Checks
            )
            && !self.body.busy()
        {
            if self.starved {
                // We stopped reading (a full budget), not the client.
                self.io.idle.touch(cx.now);
                return;
            }
            if login_late {
                info!(
                    "smtp {}: no login within login_timeout, closing",
                    self.io.t.peer()
                );
            } else {
                info!("smtp {}: timeout, closing", self.io.t.peer());
            }
            if cx.stopping() {
                // The grace period after SIGTERM ran out: say why.
                self.io.core.session.shutting_down(&mut self.io.out);
            } else {
                self.io.core.session.timed_out(&mut self.io.out);
            }
            self.io.closing = true;
            self.pump(cx);
            // A client that does not even read gets no more patience.
            self.io.finish();
            self.closed(cx);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.io.is_done() {
            return None;
        }
        let idle = self.io.idle.deadline();
        let idle = self.login_by.map_or(idle, |t| t.min(idle));
        let dns = self.dns.deadline();
        let check_end = self.check.as_ref().map(|(_, t)| *t + CHECKS_TIMEOUT);
        match self.waiting {
            Waiting::FailureDelay(at) => Some(at.min(idle)),
            Waiting::Delivery | Waiting::Password => None,
            Waiting::Checks => match (dns, check_end) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            Waiting::Dnsbl => Some(dns.map_or(idle, |d| d.min(idle))),
            // A spool write of ours is in flight.
            Waiting::Nothing if self.body.busy() => None,
            Waiting::Nothing => Some(idle),
        }
    }

    fn stop(&mut self, cx: &mut Ctx) {
        if self.io.is_done() {
            return;
        }
        if matches!(self.waiting, Waiting::Delivery | Waiting::Checks)
            || self.io.core.session.in_transaction()
        {
            // Let the transaction finish; the loop's grace period bounds it.
            self.io.idle.cut_to(cx.now + Duration::from_secs(5));
            return;
        }
        self.io.core.session.shutting_down(&mut self.io.out);
        self.io.closing = true;
        self.pump(cx);
    }

    fn is_done(&self) -> bool {
        self.io.is_done()
    }

    fn is_idle(&self) -> bool {
        !matches!(
            self.waiting,
            Waiting::Delivery | Waiting::Password | Waiting::Checks
        ) && !self.body.busy()
    }

    fn interest(&self) -> Interest {
        self.io.t.interest()
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        Some(self.io.t.socket())
    }
}

impl SmtpIn {
    pub fn role(&self) -> ListenerKind {
        self.role
    }
}

/// The local mailboxes a transaction reaches: their IMAP sessions hear of
/// the delivery once it is stored (IDLE).
fn local_recipients(tx: &crate::proto::envelope::Transaction) -> Vec<String> {
    tx.recipients
        .iter()
        .flat_map(|r| r.resolution.local.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::fake;
    use crate::net::transport::tests::{peer, server_tls};
    use crate::net::transport::Transport;
    use std::io::Write;
    use std::path::Path;

    /// The real SMTP core behind the one pump, fed a byte at a time over a
    /// congested fake pipe: the transaction comes out as one Deliver event,
    /// and the driver's answer reaches the client.
    #[test]
    fn a_transaction_byte_by_byte_through_the_pump() {
        let text = "[server]\nhostname = mx.example.test\ndata_dir = /nonexistent\n\
                    [domain example.test]\n[mailbox bob@example.test]\npassword = {PLAIN}x\n";
        let (config, _) = Config::parse(Path::new("t.ini"), text).expect("config");
        let config = Arc::new(config);
        let params = SessionParams {
            hostname: "mx.example.test".into(),
            peer: peer().ip(),
            role: Role::Mx,
            max_message_size: 1 << 20,
            max_recipients: 10,
            relay_allowed: false,
            tls_active: false,
            starttls_available: true,
            plaintext_auth_allowed: false,
        };
        let (server_end, client) = fake::pair(1, 64);
        let mut client = client.stutter();
        let core = SmtpCore {
            session: SmtpSession::new(params),
            config,
        };
        let now = Instant::now();
        let mut io = Inbound::new(
            Transport::new(server_end, peer()),
            core,
            IdleClock::new(now, Duration::from_secs(60)),
            "smtp",
        );
        io.core.session.greeting(&mut io.out);
        let tls = server_tls();
        let script = b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.test>\r\n\
                       DATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
        let mut replies = Vec::new();
        let mut deliveries = Vec::new();
        let mut to_send: &[u8] = script;
        for _ in 0..20_000 {
            if let Some((&b, rest)) = to_send.split_first() {
                if client.write(&[b]).is_ok() {
                    to_send = rest;
                }
            }
            match io.pump(&tls, true, Instant::now()) {
                Pumped::Events => {
                    for ev in std::mem::take(&mut io.events) {
                        if let Event::Deliver(tx) = ev {
                            deliveries.push(tx);
                            let cfg = Arc::clone(&io.core.config);
                            io.core.session.delivered(
                                DeliveryOutcome::Accepted {
                                    queue_id: "Q1".into(),
                                },
                                cfg.as_ref(),
                                &mut io.out,
                                &mut io.events,
                            );
                        }
                    }
                }
                Pumped::Waiting => {}
                Pumped::Closed => break,
            }
            replies.extend(client.drain_all());
        }
        replies.extend(client.drain_all());
        let text = String::from_utf8_lossy(&replies);
        assert_eq!(deliveries.len(), 1, "{text}");
        assert_eq!(deliveries[0].recipients[0].address, "bob@example.test");
        assert!(text.starts_with("220 mx.example.test"), "{text}");
        assert!(text.contains("354 "), "{text}");
        assert!(text.contains("250 2.0.0 Ok: queued as Q1"), "{text}");
        assert!(
            text.trim_end()
                .ends_with("221 2.0.0 mx.example.test closing connection"),
            "{text}"
        );
        assert_eq!(deliveries[0].reverse_path, "a@remote.test");
        assert!(io.is_done());
    }
}
