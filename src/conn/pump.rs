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
use crate::net::transport::{ReadStatus, Transport};

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
    /// Does this event answer the client (a command completed) and so
    /// count as progress for the idle clock? Bytes of a message handed
    /// out as they arrive do not: a client trickling a message must still
    /// move `MIN_PROGRESS_BYTES` per timeout.
    fn answers(_event: &Self::Event) -> bool {
        true
    }
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
pub struct Inbound<S: ServerCore> {
    pub t: Transport,
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

impl<S: ServerCore> Inbound<S> {
    pub fn new(t: Transport, core: S, idle: IdleClock, what: &'static str) -> Inbound<S> {
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
                    let answered =
                        !self.out.is_empty() || self.events.iter().any(|e| S::answers(e));
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
