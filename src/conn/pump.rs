//! The one inbound pump: moves bytes between a client's connection and a
//! server core (SMTP, POP3, and the IMAP core to come) until the socket
//! would block, the core waits for the driver, or the core has events.
//!
//! Owns: the transport, the core's output and event buffers, the idle
//! clock, the STARTTLS/STLS switch (the "go ahead" reply must reach the
//! client in plaintext before the handshake starts), closing once the
//! last reply is flushed, and back-pressure (no reading while the client
//! leaves too much output unread, or while the driver waits for a worker).
//! Must not: interpret events; the driver carries them out.

use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};

use super::IdleClock;
use mio::net::TcpStream;

use crate::net::transport::{ReadStatus, Transport, Wire};

/// Stop reading while this much output waits for a client that does not
/// read its replies (a pipelining flood), so memory stays bounded.
pub const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// What the pump needs of a sans-IO server core.
pub trait ServerCore {
    type Event;
    /// Feeds client bytes; replies go to `out`, work for the driver to `events`.
    fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<Self::Event>);
    /// False while the core waits for the driver (a delivery, a password
    /// check): it must not be fed then.
    fn wants_input(&self) -> bool;
    /// The core said goodbye: flush, then close.
    fn is_closed(&self) -> bool;
    /// The TLS handshake the core asked for has started.
    fn tls_started(&mut self, out: &mut Vec<u8>, events: &mut Vec<Self::Event>);
}

/// Why `pump` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// The core produced events: carry them out, then pump again.
    Events,
    /// Nothing more to do until the socket, a worker or a timer says so.
    Waiting,
    /// The connection is closed.
    Closed,
}

/// A client connection and its core.
pub struct Inbound<S: ServerCore, W: Wire = TcpStream> {
    pub t: Transport<W>,
    pub core: S,
    /// Replies not yet handed to the transport.
    pub out: Vec<u8>,
    pub events: Vec<S::Event>,
    pub idle: IdleClock,
    /// Close once the output is flushed (the core's `Close`, a timeout).
    pub closing: bool,
    done: bool,
    /// The core asked for TLS: start it once its reply is flushed.
    tls_after_flush: bool,
    /// "smtp", "pop3": for log lines.
    what: &'static str,
}

impl<S: ServerCore, W: Wire> Inbound<S, W> {
    pub fn new(t: Transport<W>, core: S, idle: IdleClock, what: &'static str) -> Inbound<S, W> {
        Inbound {
            t,
            core,
            out: Vec::new(),
            events: Vec::new(),
            idle,
            closing: false,
            done: false,
            tls_after_flush: false,
            what,
        }
    }

    /// An accepted client connection; with `implicit_tls` (smtps, pop3s)
    /// the TLS session starts at once, and one that cannot start closes.
    pub fn accept(
        sock: W,
        peer: std::net::SocketAddr,
        core: S,
        idle: IdleClock,
        what: &'static str,
        implicit_tls: Option<&Arc<rustls::ServerConfig>>,
    ) -> Inbound<S, W> {
        let mut io = Inbound::new(Transport::new(sock, peer), core, idle, what);
        if let Some(tls) = implicit_tls {
            if let Err(e) = io.t.start_tls_server(tls) {
                warn!("{what} {peer}: cannot start TLS: {e}");
                io.finish();
            }
        }
        io
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The core's reply to STARTTLS/STLS is in `out`: the handshake starts
    /// once it has gone out.
    pub fn start_tls_after_flush(&mut self) {
        self.tls_after_flush = true;
    }

    /// Closes the connection now (after a best-effort flush).
    pub fn finish(&mut self) {
        if !self.done {
            self.t.queue(&self.out);
            self.out.clear();
            self.t.close();
            self.done = true;
        }
    }

    /// Writes what is queued; reads and feeds the core while `may_read`
    /// (the driver is not waiting for a worker) and the core wants input.
    pub fn pump(
        &mut self,
        tls: &Arc<rustls::ServerConfig>,
        may_read: bool,
        now: Instant,
    ) -> Pumped {
        let mut input = Vec::new();
        loop {
            if self.done {
                return Pumped::Closed;
            }
            self.t.queue(&self.out);
            self.out.clear();
            if let Err(e) = self.t.flush() {
                info!("{} {}: write failed: {e}", self.what, self.t.peer());
                self.finish();
                return Pumped::Closed;
            }
            if self.tls_after_flush {
                if !self.t.is_flushed() {
                    return Pumped::Waiting;
                }
                self.tls_after_flush = false;
                if let Err(e) = self.t.start_tls_server(tls) {
                    warn!("{} {}: cannot start TLS: {e}", self.what, self.t.peer());
                    self.finish();
                    return Pumped::Closed;
                }
                self.core.tls_started(&mut self.out, &mut self.events);
                if !self.events.is_empty() {
                    return Pumped::Events;
                }
                continue;
            }
            if self.closing || self.core.is_closed() {
                if self.t.is_flushed() {
                    self.finish();
                    return Pumped::Closed;
                }
                return Pumped::Waiting;
            }
            if !may_read || !self.core.wants_input() || self.t.pending_output() > MAX_PENDING_OUTPUT
            {
                return Pumped::Waiting;
            }
            input.clear();
            match self.t.read(&mut input, usize::MAX) {
                Ok(ReadStatus::Data(0)) => continue,
                Ok(ReadStatus::Data(n)) => {
                    self.core.receive(&input, &mut self.out, &mut self.events);
                    let answered = !self.out.is_empty() || !self.events.is_empty();
                    self.idle.read(n, answered, now);
                    if !self.events.is_empty() {
                        return Pumped::Events;
                    }
                }
                Ok(ReadStatus::WouldBlock) => return Pumped::Waiting,
                Ok(ReadStatus::Closed) => {
                    self.finish();
                    return Pumped::Closed;
                }
                Err(e) => {
                    info!("{} {}: read failed: {e}", self.what, self.t.peer());
                    self.finish();
                    return Pumped::Closed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::fake::{self, End};
    use crate::net::transport::tests::{peer, server_tls};
    use std::io::{Read, Write};
    use std::time::Duration;

    /// A line core: "X" is answered "+X"; "TLS" asks for TLS after "+go";
    /// "WORK" emits an event and waits for `done`; "QUIT" says bye and closes.
    #[derive(Default)]
    struct LineCore {
        buf: Vec<u8>,
        waiting: bool,
        closed: bool,
        tls: bool,
        lines: Vec<String>,
    }

    #[derive(Debug, PartialEq)]
    enum Ev {
        StartTls,
        Work,
    }

    impl ServerCore for LineCore {
        type Event = Ev;
        fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<Ev>) {
            self.buf.extend_from_slice(input);
            while !self.waiting && !self.closed {
                let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                    break;
                };
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                self.lines.push(line.clone());
                match line.as_str() {
                    "TLS" => {
                        out.extend_from_slice(b"+go\r\n");
                        self.waiting = true;
                        events.push(Ev::StartTls);
                    }
                    "WORK" => {
                        self.waiting = true;
                        events.push(Ev::Work);
                    }
                    "QUIT" => {
                        out.extend_from_slice(b"+bye\r\n");
                        self.closed = true;
                    }
                    other => out.extend_from_slice(format!("+{other}\r\n").as_bytes()),
                }
            }
        }
        fn wants_input(&self) -> bool {
            !self.waiting && !self.closed
        }
        fn is_closed(&self) -> bool {
            self.closed
        }
        fn tls_started(&mut self, _out: &mut Vec<u8>, _events: &mut Vec<Ev>) {
            self.waiting = false;
            self.tls = true;
        }
    }

    fn inbound(end: End) -> Inbound<LineCore, End> {
        let now = Instant::now();
        Inbound::new(
            Transport::new(end, peer()),
            LineCore::default(),
            IdleClock::new(now, Duration::from_secs(60)),
            "test",
        )
    }

    #[test]
    fn commands_split_byte_by_byte_are_answered() {
        let (server_end, client) = fake::pair(1, 1 << 20);
        let mut io = inbound(server_end);
        let tls = server_tls();
        let mut client = client;
        client.write_all(b"ONE\r\nTWO\r\n").unwrap();
        for _ in 0..100 {
            assert_eq!(io.pump(&tls, true, Instant::now()), Pumped::Waiting);
        }
        assert_eq!(io.core.lines, ["ONE", "TWO"]);
        assert_eq!(client.drain_all(), b"+ONE\r\n+TWO\r\n");
    }

    #[test]
    fn a_waiting_driver_or_core_reads_nothing() {
        // 6 bytes per read: the first read takes exactly "WORK\r\n".
        let (server_end, mut client) = fake::pair(6, 1 << 20);
        let mut io = inbound(server_end);
        let tls = server_tls();
        client.write_all(b"WORK\r\nNEXT\r\n").unwrap();
        assert_eq!(io.pump(&tls, true, Instant::now()), Pumped::Events);
        assert_eq!(io.events.drain(..).collect::<Vec<_>>(), [Ev::Work]);
        // While the work is out, nothing more is fed.
        assert_eq!(io.pump(&tls, true, Instant::now()), Pumped::Waiting);
        assert_eq!(io.core.lines, ["WORK"]);
        io.core.waiting = false;
        // The driver itself may also hold reading back.
        assert_eq!(io.pump(&tls, false, Instant::now()), Pumped::Waiting);
        assert_eq!(io.core.lines, ["WORK"]);
        assert_eq!(io.pump(&tls, true, Instant::now()), Pumped::Waiting);
        assert_eq!(io.core.lines, ["WORK", "NEXT"]);
        assert_eq!(client.drain_all(), b"+NEXT\r\n");
    }

    #[test]
    fn a_client_that_does_not_read_stops_being_read() {
        // The client's side holds 1000 bytes; it pipelines many commands
        // and never reads a reply.
        let (server_end, mut client) = fake::pair(4096, 1000);
        let mut io = inbound(server_end);
        let tls = server_tls();
        let line = format!("{}\r\n", "x".repeat(500));
        let mut sent = 0;
        for _ in 0..400 {
            if client.write_all(line.as_bytes()).is_err() {
                break;
            }
            sent += 1;
            io.pump(&tls, true, Instant::now());
        }
        assert!(
            io.t.pending_output() > MAX_PENDING_OUTPUT,
            "{}",
            io.t.pending_output()
        );
        let answered = io.core.lines.len();
        assert!(answered < sent, "reading stopped: {answered} of {sent}");
        // Once the client reads, the rest is answered.
        for _ in 0..10_000 {
            client.drain_all();
            io.pump(&tls, true, Instant::now());
            if io.core.lines.len() == sent && io.t.is_flushed() {
                break;
            }
        }
        assert_eq!(io.core.lines.len(), sent);
    }

    #[test]
    fn starttls_reply_goes_out_in_plaintext_before_the_handshake() {
        let (server_end, client_end) = fake::pair(3, 1 << 16);
        let mut io = inbound(server_end);
        let tls = server_tls();
        let mut client = Transport::new(client_end, peer());
        client.queue(b"TLS\r\n");
        client.flush().unwrap();
        assert_eq!(io.pump(&tls, true, Instant::now()), Pumped::Events);
        assert_eq!(io.events.drain(..).collect::<Vec<_>>(), [Ev::StartTls]);
        io.start_tls_after_flush();
        // The go-ahead comes first, in the clear, whole.
        let mut plain = Vec::new();
        for _ in 0..100 {
            io.pump(&tls, true, Instant::now());
            let _ = client.read(&mut plain, usize::MAX).unwrap();
        }
        assert_eq!(plain, b"+go\r\n");
        assert!(io.core.tls, "the handshake started once it was flushed");
        client
            .start_tls_client(
                &crate::tls::opportunistic_client_config(),
                "mx.example.test",
            )
            .unwrap();
        client.queue(b"SECRET\r\n");
        let mut got = Vec::new();
        for _ in 0..2000 {
            client.flush().unwrap();
            io.pump(&tls, true, Instant::now());
            let _ = client.read(&mut got, usize::MAX).unwrap();
            if got == b"+SECRET\r\n" {
                break;
            }
        }
        assert_eq!(got, b"+SECRET\r\n");
        assert!(io.t.tls_established());
    }

    #[test]
    fn goodbye_is_flushed_before_the_close() {
        // 5 bytes of room at the client: "+bye\r\n" needs two rounds.
        let (server_end, mut client) = fake::pair(64, 5);
        let mut io = inbound(server_end);
        let tls = server_tls();
        client.write_all(b"QUIT").unwrap();
        assert_eq!(io.pump(&tls, true, Instant::now()), Pumped::Waiting);
        client.write_all(b"\r\n").unwrap();
        assert_eq!(io.pump(&tls, true, Instant::now()), Pumped::Waiting);
        assert!(!io.is_done(), "not closed with output pending");
        let mut got = client.drain_all();
        assert_eq!(io.pump(&tls, true, Instant::now()), Pumped::Closed);
        got.extend(client.drain_all());
        assert_eq!(got, b"+bye\r\n");
        assert!(io.is_done());
        let mut buf = [0u8; 8];
        assert_eq!(
            client.read(&mut buf).unwrap(),
            0,
            "the server shut its side"
        );
    }

    #[test]
    fn the_peer_closing_ends_the_session() {
        let (server_end, client) = fake::pair(64, 1024);
        let mut io = inbound(server_end);
        let tls = server_tls();
        client.shutdown().unwrap();
        assert_eq!(io.pump(&tls, true, Instant::now()), Pumped::Closed);
        assert!(io.is_done());
    }
}
