//! The one mio event loop: listeners, the token -> driver table, timers,
//! signals, and the Waker that worker threads use to hand back results.
//!
//! Owns: accepting (with the connection limits), dispatching readiness,
//! completions and deadlines to drivers, SIGHUP reloads, graceful stop.
//! Must not: know any protocol, or block (no disk sync, no hashing here).

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

use crate::server::{Completion, Shared};

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

/// What a listening socket serves; decides which driver an accepted
/// connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    SmtpMx,
    Submission,
    Smtps,
    Pop3,
    Pop3s,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::SmtpMx => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::Smtps => "smtps",
            ListenerKind::Pop3 => "pop3",
            ListenerKind::Pop3s => "pop3s",
        }
    }
}

/// One connection's state machine as the loop sees it.
pub trait Driver {
    /// The socket is ready, or the driver may have work to resume: pump IO.
    fn ready(&mut self, sh: &mut Shared);
    /// A worker finished a job this driver submitted.
    fn complete(&mut self, done: Completion, sh: &mut Shared);
    /// The deadline returned by `deadline()` has passed.
    fn timer(&mut self, sh: &mut Shared);
    fn deadline(&self) -> Option<Instant>;
    /// The server is stopping: finish or abort politely.
    fn stop(&mut self, sh: &mut Shared);
    /// True once the driver can be dropped (socket closed).
    fn is_done(&self) -> bool;
    /// False while a worker job for it is in flight; such a driver is not
    /// dropped by a stop until the job comes back.
    fn is_idle(&self) -> bool;
    fn interest(&self) -> Interest;
    /// The socket the loop registers for this driver; None for drivers
    /// that change sockets over their life (outbound: DNS, then TCP) and
    /// register them themselves through `Shared::registry` and `current`.
    fn source(&mut self) -> Option<&mut TcpStream>;
}

struct Entry {
    driver: Box<dyn Driver>,
    interest: Interest,
    /// The earliest deadline this entry has in the timer heap.
    armed: Option<Instant>,
    /// Counted against max_connections_per_ip while it lives.
    ip: Option<IpAddr>,
}

pub struct EventLoop {
    poll: Poll,
    listeners: Vec<(TcpListener, ListenerKind)>,
    conns: HashMap<Token, Entry>,
    next_token: usize,
    timers: BinaryHeap<Reverse<(Instant, Token)>>,
    per_ip: HashMap<IpAddr, usize>,
    inbound: usize,
    signals: Signals,
    stopping: Option<Instant>,
    /// When to retry accepting after a failed accept.
    accept_retry: Option<Instant>,
}

/// Makes a connection's driver; supplied by `server.rs`.
pub type Acceptor = fn(ListenerKind, TcpStream, SocketAddr, &mut Shared) -> Box<dyn Driver>;

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
                signals,
                stopping: None,
                accept_retry: None,
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
        sh: &mut Shared,
        accept: Acceptor,
        done_rx: Receiver<Completion>,
    ) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            sh.now = Instant::now();
            if let Some(until) = self.stopping {
                let busy = self.conns.values().any(|e| !e.driver.is_idle());
                if self.conns.is_empty() || (sh.now >= until && !busy) {
                    info!("stopped");
                    return Ok(());
                }
            }
            let timeout = self.poll_timeout(sh);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            sh.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    SIGNALS => self.signals(sh),
                    Token(t) if t < FIRST_CONNECTION => self.accept(t - FIRST_LISTENER, sh, accept),
                    token => self.dispatch(token, sh, |d, sh| d.ready(sh)),
                }
            }
            // Worker results arrive whether or not the waker fired this round.
            while let Ok(done) = done_rx.try_recv() {
                let token = done.token;
                if token == crate::server::MANAGER {
                    sh.manager_complete(done);
                } else {
                    self.dispatch(token, sh, move |d, sh| d.complete(done, sh));
                }
            }
            self.fire_timers(sh);
            if self.accept_retry.is_some_and(|at| at <= sh.now) {
                self.accept_retry = None;
                for i in 0..self.listeners.len() {
                    self.accept(i, sh, accept);
                }
            }
            sh.tick();
            for (driver, token) in sh.take_new_drivers() {
                let token = token.unwrap_or_else(|| self.take_token());
                self.insert(token, driver, None, sh);
            }
        }
    }

    fn take_token(&mut self) -> Token {
        let t = Token(self.next_token);
        self.next_token += 1;
        t
    }

    fn poll_timeout(&mut self, sh: &Shared) -> Option<Duration> {
        let mut next = self.timers.peek().map(|Reverse((t, _))| *t);
        if let Some(retry) = self.accept_retry {
            next = Some(next.map_or(retry, |n| n.min(retry)));
        }
        if let Some(wake) = sh.next_wakeup() {
            next = Some(next.map_or(wake, |n| n.min(wake)));
        }
        if let Some(stop) = self.stopping {
            // While stopping, look around often to notice the end.
            let soon = sh.now + Duration::from_millis(100);
            next = Some(next.map_or(soon, |n| n.min(soon)).min(stop.max(sh.now)));
        }
        next.map(|t| t.saturating_duration_since(sh.now))
    }

    fn accept(&mut self, index: usize, sh: &mut Shared, accept: Acceptor) {
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
                    self.accept_retry = Some(sh.now + ACCEPT_RETRY);
                    return;
                }
            };
            let ip = canonical_ip(peer.ip());
            if let Some(reason) = self.refuse_reason(ip, sh) {
                info!("refused {} connection from {ip}: {reason}", kind.name());
                refuse(&mut sock, kind, reason);
                continue;
            }
            let driver = accept(kind, sock, peer, sh);
            let token = self.take_token();
            *self.per_ip.entry(ip).or_insert(0) += 1;
            self.inbound += 1;
            self.insert(token, driver, Some(ip), sh);
        }
    }

    fn refuse_reason(&self, ip: IpAddr, sh: &Shared) -> Option<&'static str> {
        let (max_total, max_per_ip) = (
            sh.config.smtp.max_connections,
            sh.config.smtp.max_connections_per_ip,
        );
        if self.inbound >= max_total {
            return Some("too many connections");
        }
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= max_per_ip {
            return Some("too many connections from your address");
        }
        if sh.penalty.is_blocked(ip, sh.now) {
            return Some("too many failed logins");
        }
        None
    }

    fn insert(
        &mut self,
        token: Token,
        mut driver: Box<dyn Driver>,
        ip: Option<IpAddr>,
        sh: &mut Shared,
    ) {
        let interest = driver.interest();
        if let Some(sock) = driver.source() {
            if let Err(e) = self.poll.registry().register(sock, token, interest) {
                error!("cannot register connection: {e}");
                self.release(ip);
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
            },
        );
        // Let it write its greeting (or start connecting) at once.
        self.dispatch(token, sh, |d, sh| d.ready(sh));
    }

    fn release(&mut self, ip: Option<IpAddr>) {
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

    /// Runs `f` on a connection's driver, then re-arms its interest and timer
    /// or drops it.
    fn dispatch(
        &mut self,
        token: Token,
        sh: &mut Shared,
        f: impl FnOnce(&mut dyn Driver, &mut Shared),
    ) {
        let Some(entry) = self.conns.get_mut(&token) else {
            return;
        };
        sh.current = token;
        f(entry.driver.as_mut(), sh);
        if entry.driver.is_done() && entry.driver.is_idle() {
            if let Some(entry) = self.conns.remove(&token) {
                let mut entry = entry;
                if let Some(sock) = entry.driver.source() {
                    let _ = self.poll.registry().deregister(sock);
                }
                self.release(entry.ip);
            }
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
    }

    fn fire_timers(&mut self, sh: &mut Shared) {
        while let Some(Reverse((at, token))) = self.timers.peek().copied() {
            if at > sh.now {
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
                Some(d) if d <= sh.now => self.dispatch(token, sh, |d, sh| d.timer(sh)),
                // Activity moved the deadline; the dispatch re-arms it.
                _ => self.dispatch(token, sh, |_, _| {}),
            }
        }
    }

    fn signals(&mut self, sh: &mut Shared) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            match sig {
                SIGHUP => sh.reload(),
                SIGTERM | SIGINT => self.begin_stop(sh),
                SIGUSR1 => sh.flush_requested(),
                SIGUSR2 => sh.fetch_requested(),
                _ => {}
            }
        }
    }

    fn begin_stop(&mut self, sh: &mut Shared) {
        if self.stopping.is_some() {
            return;
        }
        info!(
            "stopping: no new connections, {} in flight get {}s",
            self.conns.len(),
            STOP_GRACE.as_secs()
        );
        self.stopping = Some(sh.now + STOP_GRACE);
        for (l, _) in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
        }
        self.listeners.clear();
        let tokens: Vec<Token> = self.conns.keys().copied().collect();
        for token in tokens {
            self.dispatch(token, sh, |d, sh| d.stop(sh));
        }
        sh.stopping = true;
    }
}

/// `::ffff:1.2.3.4` counts as `1.2.3.4` for limits and relay checks.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
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
