//! The one mio event loop: listeners, the token -> driver table, timers,
//! signals, and the Waker that worker threads use to hand back results.
//!
//! Owns: accepting (with the connection limits), dispatching readiness,
//! completions and deadlines to drivers, handing drivers' effects and the
//! signals to the `Host` (the server), graceful stop.
//! Must not: know any protocol, or block (no disk sync, no hashing, no
//! file reads here).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

use crate::conn::{self, Completion, Ctx, Driver, Effect, ListenerKind, Outcome, Services, HOST};
use crate::net::canonical_ip;
use crate::penalty::client_group;

const WAKER: Token = Token(0);
const SIGNALS: Token = Token(1);
const FIRST_LISTENER: usize = 16;
/// Connection tokens start here and are never reused (a u64 counter), so a
/// late worker completion can never reach the wrong connection.
const FIRST_CONNECTION: usize = 1 << 20;

/// After accept fails (EMFILE: out of descriptors), try again this soon:
/// the listener is edge-triggered, so waiting clients would otherwise
/// wait for the next new connection to wake it.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How long transactions in flight get to finish after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The share of `max_connections` kept for the household's clients
/// (submission, smtps, POP3): anonymous port-25 sessions may take at most
/// the rest, so a crowd of MX connections never starves a mail client.
const CLIENT_RESERVE_DIVISOR: usize = 4;

/// How often expired login-failure records are dropped.
const PENALTY_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Signals the loop hands to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: read the config again.
    Reload,
    /// SIGUSR1: `mailgate flush`, or `sendmail` queued something.
    Flush,
    /// SIGUSR2: `mailgate fetch`.
    Fetch,
}

/// What the loop needs of the server around it: somewhere to hand the
/// drivers' effects, the server's own worker results and the signals,
/// and the outbound connections it wants started.
pub trait Host {
    fn effect(&mut self, effect: Effect, sv: &mut Services, now: Instant);
    /// One of the host's own worker jobs (token `HOST`) finished.
    fn complete(&mut self, outcome: Outcome, sv: &mut Services, now: Instant);
    fn signal(&mut self, signal: Signal, sv: &mut Services, now: Instant);
    /// Runs every loop turn: drivers for the connections to start now.
    fn tick(&mut self, sv: &mut Services, now: Instant) -> Vec<Box<dyn Driver>>;
    /// The next moment the host needs a `tick` without any event.
    fn next_wakeup(&self) -> Option<Instant>;
}

struct Entry {
    driver: Box<dyn Driver>,
    interest: Interest,
    /// The earliest deadline this entry has in the timer heap.
    armed: Option<Instant>,
    /// Counted against max_connections_per_ip (by client group) while it lives.
    ip: Option<IpAddr>,
    /// Counted against the MX share of max_connections.
    mx: bool,
}

pub struct EventLoop {
    poll: Poll,
    listeners: Vec<(TcpListener, ListenerKind)>,
    conns: HashMap<Token, Entry>,
    next_token: usize,
    timers: BinaryHeap<Reverse<(Instant, Token)>>,
    /// Open inbound connections per client group (IPv6 per /64).
    per_ip: HashMap<IpAddr, usize>,
    inbound: usize,
    /// Of `inbound`, those on the MX port.
    mx_inbound: usize,
    signals: Signals,
    stopping: Option<Instant>,
    /// When to retry accepting after a failed accept.
    accept_retry: Option<Instant>,
    next_prune: Instant,
}

impl EventLoop {
    /// Binds every listener. Fails with a message naming the address.
    pub fn new(binds: &[(SocketAddr, ListenerKind)]) -> Result<(EventLoop, Arc<Waker>), String> {
        let poll = Poll::new().map_err(|e| format!("cannot create poll: {e}"))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(|e| format!("cannot create waker: {e}"))?,
        );
        let mut listeners = Vec::new();
        for (i, (addr, kind)) in binds.iter().enumerate() {
            let mut l = TcpListener::bind(*addr)
                .map_err(|e| format!("cannot listen on {addr} ({}): {e}", kind.name()))?;
            poll.registry()
                .register(&mut l, Token(FIRST_LISTENER + i), Interest::READABLE)
                .map_err(|e| format!("cannot register {addr}: {e}"))?;
            info!("listening on {addr} ({})", kind.name());
            listeners.push((l, *kind));
        }
        let mut signals = Signals::new([SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| format!("cannot register signals: {e}"))?;
        Ok((
            EventLoop {
                poll,
                listeners,
                conns: HashMap::new(),
                next_token: FIRST_CONNECTION,
                timers: BinaryHeap::new(),
                per_ip: HashMap::new(),
                inbound: 0,
                mx_inbound: 0,
                signals,
                stopping: None,
                accept_retry: None,
                next_prune: Instant::now(),
            },
            waker,
        ))
    }

    /// A handle for drivers that register their own sockets.
    pub fn registry(&self) -> io::Result<mio::Registry> {
        self.poll.registry().try_clone()
    }

    /// Runs until SIGTERM/SIGINT and the grace period are over.
    pub fn run(
        &mut self,
        sv: &mut Services,
        host: &mut dyn Host,
        done_rx: Receiver<Completion>,
    ) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        let mut now = Instant::now();
        loop {
            if let Some(until) = self.stopping {
                let busy = self.conns.values().any(|e| !e.driver.is_idle());
                if self.conns.is_empty() || (now >= until && !busy) {
                    info!("stopped");
                    return Ok(());
                }
            }
            let timeout = if sv.budget.has_woken() {
                // Connections the budget let read again: their sockets are
                // edge-triggered and will not fire for what already waits.
                Some(Duration::ZERO)
            } else {
                self.poll_timeout(host, now)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    SIGNALS => self.signals(sv, host, now),
                    Token(t) if t < FIRST_CONNECTION => {
                        self.accept(t - FIRST_LISTENER, sv, host, now)
                    }
                    token => self.dispatch(token, sv, host, now, |d, cx| d.ready(cx)),
                }
            }
            // Worker results arrive whether or not the waker fired this round.
            while let Ok(done) = done_rx.try_recv() {
                if done.token == HOST {
                    host.complete(done.outcome, sv, now);
                    self.hand_on_effects(sv, host, now);
                } else {
                    let outcome = done.outcome;
                    self.dispatch(done.token, sv, host, now, move |d, cx| {
                        d.complete(outcome, cx)
                    });
                }
            }
            self.fire_timers(sv, host, now);
            if self.accept_retry.is_some_and(|at| at <= now) {
                self.accept_retry = None;
                for i in 0..self.listeners.len() {
                    self.accept(i, sv, host, now);
                }
            }
            if now >= self.next_prune {
                sv.penalty.prune(now);
                self.next_prune = now + PENALTY_PRUNE_EVERY;
            }
            for driver in host.tick(sv, now) {
                let token = self.take_token();
                self.insert(token, driver, None, false, sv, host, now);
            }
            // Sessions watching a mailbox that changed (IMAP IDLE).
            for watcher in sv.mailboxes.take_woken() {
                self.dispatch(Token(watcher), sv, host, now, |d, cx| d.ready(cx));
            }
            // Connections the body budget lets read again, or asks to
            // spool what they hold (it filled).
            for token in sv.budget.take_woken() {
                self.dispatch(token, sv, host, now, |d, cx| d.ready(cx));
            }
        }
    }

    fn take_token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn poll_timeout(&mut self, host: &dyn Host, now: Instant) -> Option<Duration> {
        let mut next = self.timers.peek().map(|Reverse((t, _))| *t);
        if let Some(retry) = self.accept_retry {
            next = Some(next.map_or(retry, |n| n.min(retry)));
        }
        if let Some(wake) = host.next_wakeup() {
            next = Some(next.map_or(wake, |n| n.min(wake)));
        }
        if let Some(stop) = self.stopping {
            // While stopping, look around often to notice the end.
            let soon = now + Duration::from_millis(100);
            next = Some(next.map_or(soon, |n| n.min(soon)).min(stop.max(now)));
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    fn accept(&mut self, index: usize, sv: &mut Services, host: &mut dyn Host, now: Instant) {
        let Some((_, kind)) = self.listeners.get(index) else {
            return;
        };
        let kind = *kind;
        loop {
            let Some((listener, _)) = self.listeners.get(index) else {
                return;
            };
            let (mut sock, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: try again shortly.
                    warn!("accept on {} failed: {e}", kind.name());
                    self.accept_retry = Some(now + ACCEPT_RETRY);
                    return;
                }
            };
            let ip = canonical_ip(peer.ip());
            if let Some(reason) = self.refuse_reason(kind, ip, sv, now) {
                info!("refused {} connection from {ip}: {reason}", kind.name());
                refuse(&mut sock, kind, reason);
                continue;
            }
            let token = self.take_token();
            let driver = {
                let mut cx = Ctx { token, now, sv };
                conn::accept(kind, sock, peer, &mut cx)
            };
            let group = client_group(ip);
            *self.per_ip.entry(group).or_insert(0) += 1;
            self.inbound += 1;
            let mx = kind == ListenerKind::SmtpMx;
            if mx {
                self.mx_inbound += 1;
            }
            self.insert(token, driver, Some(group), mx, sv, host, now);
        }
    }

    fn refuse_reason(
        &self,
        kind: ListenerKind,
        ip: IpAddr,
        sv: &Services,
        now: Instant,
    ) -> Option<&'static str> {
        let (max_total, max_per_ip) = (
            sv.config.smtp.max_connections,
            sv.config.smtp.max_connections_per_ip,
        );
        if self.inbound >= max_total {
            return Some("too many connections");
        }
        if kind == ListenerKind::SmtpMx && self.mx_inbound >= mx_share(max_total) {
            return Some("too many connections");
        }
        if self.per_ip.get(&client_group(ip)).copied().unwrap_or(0) >= max_per_ip {
            return Some("too many connections from your address");
        }
        if sv.penalty.is_blocked(ip, now) {
            return Some("too many failed logins");
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        token: Token,
        mut driver: Box<dyn Driver>,
        ip: Option<IpAddr>,
        mx: bool,
        sv: &mut Services,
        host: &mut dyn Host,
        now: Instant,
    ) {
        let interest = driver.interest();
        if let Some(sock) = driver.source() {
            if let Err(e) = self.poll.registry().register(sock, token, interest) {
                error!("cannot register connection: {e}");
                self.release(ip, mx);
                return;
            }
        }
        self.conns.insert(
            token,
            Entry {
                driver,
                interest,
                armed: None,
                ip,
                mx,
            },
        );
        // Let it write its greeting (or start connecting) at once.
        self.dispatch(token, sv, host, now, |d, cx| d.ready(cx));
    }

    fn release(&mut self, ip: Option<IpAddr>, mx: bool) {
        if mx {
            self.mx_inbound = self.mx_inbound.saturating_sub(1);
        }
        if let Some(ip) = ip {
            self.inbound = self.inbound.saturating_sub(1);
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }

    /// Runs `f` on a connection's driver, hands its effects to the host,
    /// then re-arms its interest and timer or drops it.
    fn dispatch(
        &mut self,
        token: Token,
        sv: &mut Services,
        host: &mut dyn Host,
        now: Instant,
        f: impl FnOnce(&mut dyn Driver, &mut Ctx),
    ) {
        let Some(entry) = self.conns.get_mut(&token) else {
            return;
        };
        {
            let mut cx = Ctx { token, now, sv };
            f(entry.driver.as_mut(), &mut cx);
        }
        if entry.driver.is_done() && entry.driver.is_idle() {
            if let Some(mut entry) = self.conns.remove(&token) {
                if let Some(sock) = entry.driver.source() {
                    let _ = self.poll.registry().deregister(sock);
                }
                self.release(entry.ip, entry.mx);
            }
            sv.mailboxes.unwatch(token.0);
            self.hand_on_effects(sv, host, now);
            return;
        }
        let interest = entry.driver.interest();
        if interest != entry.interest {
            if let Some(sock) = entry.driver.source() {
                if let Err(e) = self.poll.registry().reregister(sock, token, interest) {
                    warn!("cannot reregister connection: {e}");
                }
            }
            entry.interest = interest;
        }
        if let Some(deadline) = entry.driver.deadline() {
            if entry.armed.is_none_or(|armed| deadline < armed) {
                entry.armed = Some(deadline);
                self.timers.push(Reverse((deadline, token)));
            }
        }
        self.hand_on_effects(sv, host, now);
    }

    fn hand_on_effects(&mut self, sv: &mut Services, host: &mut dyn Host, now: Instant) {
        for effect in sv.take_effects() {
            host.effect(effect, sv, now);
        }
    }

    fn fire_timers(&mut self, sv: &mut Services, host: &mut dyn Host, now: Instant) {
        while let Some(Reverse((at, token))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.conns.get_mut(&token) else {
                continue;
            };
            if entry.armed == Some(at) {
                entry.armed = None;
            }
            match entry.driver.deadline() {
                Some(d) if d <= now => self.dispatch(token, sv, host, now, |d, cx| d.timer(cx)),
                // Activity moved the deadline; the dispatch re-arms it.
                _ => self.dispatch(token, sv, host, now, |_, _| {}),
            }
        }
    }

    fn signals(&mut self, sv: &mut Services, host: &mut dyn Host, now: Instant) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGHUP => host.signal(Signal::Reload, sv, now),
                SIGTERM | SIGINT => self.begin_stop(sv, host, now),
                SIGUSR1 => host.signal(Signal::Flush, sv, now),
                SIGUSR2 => host.signal(Signal::Fetch, sv, now),
                _ => {}
            }
        }
    }

    fn begin_stop(&mut self, sv: &mut Services, host: &mut dyn Host, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        info!(
            "stopping: no new connections, {} in flight get {}s",
            self.conns.len(),
            STOP_GRACE.as_secs()
        );
        self.stopping = Some(now + STOP_GRACE);
        for (l, _) in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
        }
        self.listeners.clear();
        sv.stopping = true;
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for token in tokens {
            self.dispatch(token, sv, host, now, |d, cx| d.stop(cx));
        }
    }
}

/// How many of `max_total` connections the MX port may hold: all but a
/// quarter, kept for clients (at least one slot each way when possible).
fn mx_share(max_total: usize) -> usize {
    let reserve = (max_total / CLIENT_RESERVE_DIVISOR).max(1);
    max_total.saturating_sub(reserve).max(1)
}

/// Best-effort one-line refusal on a fresh socket, then close.
fn refuse(sock: &mut TcpStream, kind: ListenerKind, reason: &str) {
    use std::io::Write;
    let line = match kind {
        ListenerKind::Pop3 => format!("-ERR [SYS/TEMP] {reason}\r\n"),
        ListenerKind::SmtpMx | ListenerKind::Submission => {
            format!("421 4.7.0 {reason}, try again later\r\n")
        }
        // Implicit-TLS ports cannot be answered in plaintext.
        ListenerKind::Smtps | ListenerKind::Pop3s => String::new(),
    };
    if !line.is_empty() {
        let _ = sock.write(line.as_bytes());
    }
    let _ = sock.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::mx_share;

    #[test]
    fn clients_keep_a_quarter_of_the_slots() {
        assert_eq!(mx_share(200), 150);
        assert_eq!(mx_share(10), 8);
        assert_eq!(mx_share(4), 3);
        assert_eq!(mx_share(2), 1);
        assert_eq!(mx_share(1), 1);
    }
}
