//! The one outbound connector: from a destination (hosts in order, or a
//! domain's MX) to a connected socket, for every client driver (the
//! outbox's SMTP sessions, SmartPop's collection).
//!
//! Owns: name lookups through the non-blocking `Resolver` (IP literals and
//! `localhost` need none), the ordered list of addresses to try, the TCP
//! connect with its timeout, and what went wrong along the way (for the
//! caller's report). Must not: speak any protocol or start TLS; a session
//! that fails on one address asks for the next with `advance`.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::resolver::{LookupResult, Resolver};
use super::transport::Transport;
use crate::config::HostPort;
use crate::proto::dns::{LookupFailure, MxLookup};

/// RFC 5321 4.5.3.2 gives no connect timeout; Postfix's
/// `smtp_connect_timeout` is 30s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// RFC 5321 5.1: mail to a domain goes to its MX hosts on port 25.
const SMTP_PORT: u16 = 25;

/// Where to connect.
#[derive(Debug, Clone)]
pub enum Destination {
    /// These hosts, in order (a smarthost list, an ISP's server).
    Hosts(Vec<HostPort>),
    /// The MX hosts of this domain (or its address records), port 25.
    Mx(String),
}

/// One address to try, with the name it came from (for TLS and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
}

/// What a call into the connector ended with.
pub enum Connect {
    /// Still resolving or connecting: wait for the socket or the deadline.
    Pending,
    /// Connected to `current()`: the session may start.
    Connected(Box<Transport>),
    /// Nothing left to try; see `lookup_failure` and `connect_error`.
    Exhausted,
}

enum Phase {
    Idle,
    Resolving {
        resolver: Box<Resolver>,
        /// The name and port being looked up (None: the MX domain).
        name: Option<HostPort>,
    },
    Connecting {
        t: Box<Transport>,
        deadline: Instant,
    },
}

pub struct Connector {
    /// Host names still to look up, in order.
    unresolved: VecDeque<HostPort>,
    /// The MX domain, until it is looked up.
    mx: Option<String>,
    /// The MX domain, for messages.
    domain: String,
    targets: Vec<Target>,
    next_target: usize,
    phase: Phase,
    nameserver: Option<SocketAddr>,
    lookup_failure: Option<(String, LookupFailure)>,
    connect_error: Option<String>,
}

impl Connector {
    pub fn new(destination: Destination, nameserver: Option<SocketAddr>) -> Connector {
        let (unresolved, mx) = match destination {
            Destination::Hosts(hosts) => (hosts.into(), None),
            Destination::Mx(domain) => (VecDeque::new(), Some(domain)),
        };
        Connector {
            unresolved,
            domain: mx.clone().unwrap_or_default(),
            mx,
            targets: Vec::new(),
            next_target: 0,
            phase: Phase::Idle,
            nameserver,
            lookup_failure: None,
            connect_error: None,
        }
    }

    /// The address connected to (or being connected to).
    pub fn current(&self) -> Option<&Target> {
        self.next_target
            .checked_sub(1)
            .and_then(|i| self.targets.get(i))
    }

    /// Another address or name is left to try.
    pub fn has_more(&self) -> bool {
        self.next_target < self.targets.len() || !self.unresolved.is_empty() || self.mx.is_some()
    }

    /// The last lookup that failed: what was looked up, and why.
    pub fn lookup_failure(&self) -> Option<&(String, LookupFailure)> {
        self.lookup_failure.as_ref()
    }

    /// The last connect that failed ("connect to ADDR: why").
    pub fn connect_error(&self) -> Option<&str> {
        self.connect_error.as_deref()
    }

    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle => None,
            Phase::Resolving { resolver, .. } => Some(resolver.deadline()),
            Phase::Connecting { deadline, .. } => Some(*deadline),
        }
    }

    /// Starts on the next name or address (the first, or the one after a
    /// session that failed).
    pub fn advance(&mut self, registry: &Registry, token: Token, now: Instant) -> Connect {
        self.phase = Phase::Idle;
        loop {
            if let Some(domain) = self.mx.take() {
                let lookup = MxLookup::new(&domain, true, seed());
                match self.lookup(lookup, None, registry, token, now) {
                    Some(result) => {
                        self.resolved(result, None, domain);
                        continue;
                    }
                    None => return Connect::Pending,
                }
            }
            if let Some(hp) = self.unresolved.pop_front() {
                if let Some(addrs) = literal_addresses(&hp.host) {
                    self.targets.extend(addrs.into_iter().map(|ip| Target {
                        host: hp.host.clone(),
                        addr: SocketAddr::new(ip, hp.port),
                    }));
                    continue;
                }
                let lookup = MxLookup::addresses_of(&hp.host, true, seed());
                let name = hp.host.clone();
                match self.lookup(lookup, Some(hp.clone()), registry, token, now) {
                    Some(result) => {
                        self.resolved(result, Some(hp), name);
                        continue;
                    }
                    None => return Connect::Pending,
                }
            }
            let Some(target) = self.targets.get(self.next_target) else {
                return Connect::Exhausted;
            };
            self.next_target += 1;
            let addr = target.addr;
            match TcpStream::connect(addr) {
                Ok(sock) => {
                    let mut t = Box::new(Transport::new(sock, addr));
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = registry.register(t.socket(), token, interest) {
                        self.connect_error = Some(format!("connect to {addr}: {e}"));
                        continue;
                    }
                    self.phase = Phase::Connecting {
                        t,
                        deadline: now + CONNECT_TIMEOUT,
                    };
                    return Connect::Pending;
                }
                Err(e) => self.connect_error = Some(format!("connect to {addr}: {e}")),
            }
        }
    }

    /// The DNS or TCP socket is ready.
    pub fn ready(&mut self, registry: &Registry, token: Token, now: Instant) -> Connect {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Idle => Connect::Pending,
            Phase::Resolving { mut resolver, name } => match resolver.ready(registry, now) {
                Some(result) => self.lookup_done(result, name, registry, token, now),
                None => {
                    self.phase = Phase::Resolving { resolver, name };
                    Connect::Pending
                }
            },
            Phase::Connecting { mut t, deadline } => match connect_state(&mut t) {
                Ok(true) => Connect::Connected(t),
                Ok(false) => {
                    self.phase = Phase::Connecting { t, deadline };
                    Connect::Pending
                }
                Err(e) => {
                    self.connect_error = Some(format!("connect to {}: {e}", t.peer()));
                    self.advance(registry, token, now)
                }
            },
        }
    }

    /// Call when `deadline()` has passed.
    pub fn timer(&mut self, registry: &Registry, token: Token, now: Instant) -> Connect {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Idle => Connect::Pending,
            Phase::Resolving { mut resolver, name } => match resolver.timeout(registry, now) {
                Some(result) => self.lookup_done(result, name, registry, token, now),
                None => {
                    self.phase = Phase::Resolving { resolver, name };
                    Connect::Pending
                }
            },
            Phase::Connecting { t, deadline } if deadline <= now => {
                self.connect_error = Some(format!("connect to {}: timed out", t.peer()));
                self.advance(registry, token, now)
            }
            phase => {
                self.phase = phase;
                Connect::Pending
            }
        }
    }

    fn lookup_done(
        &mut self,
        result: LookupResult,
        name: Option<HostPort>,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) -> Connect {
        let what = name.as_ref().map_or_else(String::new, |hp| hp.host.clone());
        self.resolved(result, name, what);
        self.advance(registry, token, now)
    }

    /// Starts a lookup; Some when it needed no query (or could not start).
    fn lookup(
        &mut self,
        lookup: MxLookup,
        name: Option<HostPort>,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) -> Option<LookupResult> {
        let Some(ns) = self.nameserver else {
            return Some(Err(LookupFailure {
                permanent: false,
                enhanced: "4.4.3",
                reason: "no DNS resolver configured (nameserver, /etc/resolv.conf)".into(),
            }));
        };
        match Resolver::start(lookup, ns, registry, token, now) {
            Ok(resolver) => {
                self.phase = Phase::Resolving {
                    resolver: Box::new(resolver),
                    name,
                };
                None
            }
            Err(result) => Some(result),
        }
    }

    /// Adds a lookup's addresses to the targets, or notes its failure.
    fn resolved(&mut self, result: LookupResult, name: Option<HostPort>, what: String) {
        let port = name.as_ref().map_or(SMTP_PORT, |hp| hp.port);
        match result {
            Ok(hosts) => {
                for h in hosts {
                    let host = name
                        .as_ref()
                        .map_or_else(|| h.host.clone(), |hp| hp.host.clone());
                    for addr in h.addrs {
                        self.targets.push(Target {
                            host: host.clone(),
                            addr: SocketAddr::new(addr, port),
                        });
                    }
                }
            }
            Err(f) => {
                let what = if what.is_empty() {
                    self.domain.clone()
                } else {
                    what
                };
                self.lookup_failure = Some((what, f));
            }
        }
    }
}

/// A host needing no lookup: an IP literal (`[` `]` allowed), or
/// `localhost`, which RFC 6761 6.3 reserves for the loopback.
fn literal_addresses(host: &str) -> Option<Vec<IpAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    if bare.eq_ignore_ascii_case("localhost") || bare.eq_ignore_ascii_case("localhost.") {
        return Some(vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]);
    }
    None
}

/// Ok(true) once a non-blocking connect has finished, Ok(false) while it
/// is still under way.
fn connect_state(t: &mut Transport) -> io::Result<bool> {
    if let Some(e) = t.socket().take_error()? {
        return Err(e);
    }
    match t.socket().peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Query ids and the shuffle of equal-preference MX hosts (RFC 5321 5.1).
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_need_no_lookup() {
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(literal_addresses("192.0.2.1"), Some(vec![v4]));
        assert_eq!(literal_addresses("[192.0.2.1]"), Some(vec![v4]));
        assert_eq!(
            literal_addresses("[::1]"),
            Some(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
        );
        assert_eq!(literal_addresses("LocalHost.").map(|v| v.len()), Some(2));
        assert_eq!(literal_addresses("mail.example.test"), None);
    }

    #[test]
    fn connects_to_the_first_address_that_answers() {
        let mut poll = mio::Poll::new().unwrap();
        // A port nothing listens on, then one that accepts.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused_port = closed.local_addr().unwrap().port();
        drop(closed);
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open_port = open.local_addr().unwrap().port();
        let hosts = vec![
            HostPort {
                host: "127.0.0.1".into(),
                port: refused_port,
            },
            HostPort {
                host: "[127.0.0.1]".into(),
                port: open_port,
            },
        ];
        let mut c = Connector::new(Destination::Hosts(hosts), None);
        let token = Token(9);
        let mut events = mio::Events::with_capacity(8);
        let mut now = Instant::now();
        let mut state = c.advance(poll.registry(), token, now);
        let deadline = now + Duration::from_secs(10);
        let connected = loop {
            match state {
                Connect::Connected(t) => break t,
                Connect::Exhausted => panic!("exhausted: {:?}", c.connect_error()),
                Connect::Pending => {}
            }
            assert!(now < deadline, "connect took too long");
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            now = Instant::now();
            state = c.ready(poll.registry(), token, now);
        };
        assert_eq!(connected.peer().port(), open_port);
        assert_eq!(c.current().map(|t| t.addr.port()), Some(open_port));
        assert!(
            c.connect_error().is_some_and(|e| e.contains("connect to")),
            "the refused address is noted"
        );
        assert!(!c.has_more());
    }

    #[test]
    fn no_nameserver_is_a_temporary_lookup_failure() {
        let poll = mio::Poll::new().unwrap();
        let mut c = Connector::new(Destination::Mx("example.test".into()), None);
        assert!(matches!(
            c.advance(poll.registry(), Token(1), Instant::now()),
            Connect::Exhausted
        ));
        let (_, f) = c.lookup_failure().expect("a lookup failure");
        assert!(!f.permanent);
        assert_eq!(f.enhanced, "4.4.3");
    }
}
