//! Non-blocking DNS for outbound drivers: runs one `MxLookup` (sans-IO)
//! over UDP, and over TCP when an answer is truncated (RFC 7766).
//!
//! Owns: the query sockets, registered under the owning driver's token,
//! and the per-query deadline. Must not: block, or read /etc/resolv.conf
//! on every query (the caller passes the nameserver).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use log::debug;
use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};

use crate::proto::dns::{
    self, Answer, DnsQuery, LookupFailure, LookupStep, MxHost, MxLookup, RecordLookup, RecordStep,
    DNS_TIMEOUT,
};

/// A DNS message over TCP is at most 64 KiB (RFC 1035 4.2.2).
const MAX_TCP_RESPONSE: usize = 2 + 65_535;

pub type LookupResult = Result<Vec<MxHost>, LookupFailure>;

/// What a sans-IO lookup asks for next, in the resolver's terms.
pub enum Next<T> {
    Query(DnsQuery),
    Done(T),
}

/// A sans-IO lookup the resolver can run: `MxLookup` (the outbox) or
/// `RecordLookup` (one question of any type, for mail authentication).
pub trait Lookup {
    type Output;
    fn start(&mut self) -> Next<Self::Output>;
    fn on_response(&mut self, packet: &[u8]) -> Option<Next<Self::Output>>;
    fn on_timeout(&mut self) -> Next<Self::Output>;
}

fn mx_next(step: LookupStep) -> Next<LookupResult> {
    match step {
        LookupStep::Query(q) => Next::Query(q),
        LookupStep::Done(r) => Next::Done(r),
    }
}

impl Lookup for MxLookup {
    type Output = LookupResult;
    fn start(&mut self) -> Next<LookupResult> {
        mx_next(MxLookup::start(self))
    }
    fn on_response(&mut self, packet: &[u8]) -> Option<Next<LookupResult>> {
        MxLookup::on_response(self, packet).map(mx_next)
    }
    fn on_timeout(&mut self) -> Next<LookupResult> {
        mx_next(MxLookup::on_timeout(self))
    }
}

fn record_next(step: RecordStep) -> Next<Result<Answer, String>> {
    match step {
        RecordStep::Query(q) => Next::Query(q),
        RecordStep::Done(r) => Next::Done(r),
    }
}

impl Lookup for RecordLookup {
    type Output = Result<Answer, String>;
    fn start(&mut self) -> Next<Self::Output> {
        record_next(RecordLookup::start(self))
    }
    fn on_response(&mut self, packet: &[u8]) -> Option<Next<Self::Output>> {
        RecordLookup::on_response(self, packet).map(record_next)
    }
    fn on_timeout(&mut self) -> Next<Self::Output> {
        record_next(RecordLookup::on_timeout(self))
    }
}

enum Sock {
    Udp(UdpSocket),
    Tcp {
        sock: TcpStream,
        out: Vec<u8>,
        input: Vec<u8>,
    },
}

/// One lookup in flight.
pub struct Resolver<L: Lookup = MxLookup> {
    lookup: L,
    sock: Option<Sock>,
    deadline: Instant,
    nameserver: SocketAddr,
    token: Token,
}

impl<L: Lookup> Resolver<L> {
    /// Starts `lookup`; Err carries the result when it needed no query.
    pub fn start(
        mut lookup: L,
        nameserver: SocketAddr,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) -> Result<Resolver<L>, L::Output> {
        let step = lookup.start();
        let mut r = Resolver {
            lookup,
            sock: None,
            deadline: now,
            nameserver,
            token,
        };
        match r.step(step, registry, now) {
            Some(done) => Err(done),
            None => Ok(r),
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The socket is readable (or writable, for TCP): the result, if done.
    pub fn ready(&mut self, registry: &Registry, now: Instant) -> Option<L::Output> {
        // Edge-triggered: drain every datagram; strays are skipped.
        while let Some(packet) = self.receive() {
            if let Some(step) = self.lookup.on_response(&packet) {
                return self.step(step, registry, now);
            }
        }
        None
    }

    /// Call when `deadline()` has passed.
    pub fn timeout(&mut self, registry: &Registry, now: Instant) -> Option<L::Output> {
        if now < self.deadline {
            return None;
        }
        let step = self.lookup.on_timeout();
        self.step(step, registry, now)
    }

    fn step(
        &mut self,
        step: Next<L::Output>,
        registry: &Registry,
        now: Instant,
    ) -> Option<L::Output> {
        match step {
            Next::Done(result) => {
                self.sock = None;
                Some(result)
            }
            Next::Query(q) => {
                self.send(&q, registry);
                self.deadline = now + DNS_TIMEOUT;
                None
            }
        }
    }

    /// Sends a query on a fresh socket (a fresh source port per query,
    /// RFC 5452 9.2). A send failure just waits for the timeout and retry.
    fn send(&mut self, q: &DnsQuery, registry: &Registry) {
        self.sock = None;
        let ns = self.nameserver;
        let sock = if q.tcp {
            dns::tcp_frame(&q.packet)
                .map_err(io::Error::other)
                .and_then(|frame| {
                    TcpStream::connect(ns).map(|sock| Sock::Tcp {
                        sock,
                        out: frame,
                        input: Vec::new(),
                    })
                })
        } else {
            let local: SocketAddr = if ns.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            UdpSocket::bind(local)
                .and_then(|s| s.connect(ns).map(|_| s))
                .and_then(|s| s.send(&q.packet).map(|_| s))
                .map(Sock::Udp)
        };
        let mut sock = match sock {
            Ok(s) => s,
            Err(e) => {
                debug!("dns query to {ns}: {e}");
                return;
            }
        };
        let registered = match &mut sock {
            Sock::Udp(u) => registry.register(u, self.token, Interest::READABLE),
            Sock::Tcp { sock, .. } => {
                registry.register(sock, self.token, Interest::READABLE | Interest::WRITABLE)
            }
        };
        if let Err(e) = registered {
            debug!("dns socket: {e}");
            return;
        }
        self.sock = Some(sock);
    }

    /// One complete answer, if one has arrived.
    fn receive(&mut self) -> Option<Vec<u8>> {
        match self.sock.as_mut()? {
            Sock::Udp(u) => {
                let mut buf = [0u8; 4096];
                loop {
                    match u.recv(&mut buf) {
                        Ok(n) => return buf.get(..n).map(<[u8]>::to_vec),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // WouldBlock, or ICMP unreachable: wait for the timeout.
                        Err(_) => return None,
                    }
                }
            }
            Sock::Tcp { sock, out, input } => {
                while !out.is_empty() {
                    match sock.write(out) {
                        Ok(n) => {
                            out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // Not yet connected, or failed: the timeout decides.
                        Err(_) => break,
                    }
                }
                let mut buf = [0u8; 4096];
                while input.len() < MAX_TCP_RESPONSE {
                    match sock.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => input.extend_from_slice(buf.get(..n).unwrap_or_default()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                dns::tcp_take(input)
            }
        }
    }
}
