//! Driver for one outbound SMTP session: measure the queued message,
//! connect, deliver it streamed from its file.
//!
//! Owns: the message's file and its reads (on workers: one pass that
//! measures it for MAIL FROM and the loop check, then chunks one ahead of
//! the socket while DATA runs, so a 50 MB message costs a few chunks of
//! memory), the connection through the one outbound connector (MX or
//! smarthost lookups, each address in turn), the TLS upgrade, and the
//! sans-IO `SmtpClient`. Reports its per-recipient results as an `Effect`.
//! Must not: touch the queue files (the runner's worker job does), or read
//! a file on the loop thread.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
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
    WireScan,
};
use crate::store::deliver;

/// The queued file is read in chunks of this size, one ahead of the
/// socket, and the next chunk is handed to the client only once the
/// transport holds no more than this (as POP3 RETR does).
const STREAM_CHUNK: usize = 64 * 1024;

/// Most of the header kept for the loop check (RFC 5321 6.3, counting
/// `Received:`). RFC 5322 sets no bound on a header; 30 hops of trace
/// fields take a few KiB, so a header longer than this is counted in its
/// first MiB only.
const MAX_HEADER_SCAN: usize = 1024 * 1024;

enum Phase {
    /// Not started yet.
    Start,
    /// A worker measures the queued message.
    Loading,
    /// The connector is resolving or connecting.
    Connecting,
    Session {
        t: Box<Transport>,
        /// Boxed: the client's state dwarfs the other phases.
        client: Box<SmtpClient>,
        deadline: Instant,
        out: Vec<u8>,
        /// The message on its way (after the 354).
        body: Option<BodyOut>,
    },
    Done,
}

/// The queued message as a worker found it (`load`).
pub struct QueuedMessage {
    /// None when `first` holds all of it (closed on the worker).
    pub file: Option<File>,
    /// Its first `STREAM_CHUNK` octets (all of it when shorter).
    pub first: Vec<u8>,
    /// RFC 1870 size and 8-bit octets, for MAIL FROM.
    pub size: u64,
    pub eight_bit: bool,
    /// `Received:` fields in its header.
    pub received: usize,
}

/// The loaded message, kept for every session of this driver.
struct Message {
    /// None while a worker reads from it.
    file: Option<File>,
    first: Vec<u8>,
    /// A worker has the file.
    reading: bool,
}

/// One session's progress through the message.
struct BodyOut {
    /// File offset of the next read.
    offset: u64,
    /// A chunk read, not yet handed to the client.
    ahead: Option<Vec<u8>>,
    /// This body asked a worker for the chunk at `offset`.
    waiting: bool,
    /// Nothing left to read.
    eof: bool,
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
    message: Option<Message>,
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
            message: None,
        }
    }

    /// The message is measured: check it, then connect.
    fn loaded(&mut self, read: io::Result<QueuedMessage>, cx: &mut Ctx) {
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
        self.message = Some(Message {
            file: message.file,
            first: message.first,
            reading: false,
        });
        // RFC 5321 6.3: a message that went round too often is a loop.
        if message.received > deliver::MAX_RECEIVED {
            let results =
                self.all_recipients(true, "5.4.6", "too many hops (Received: lines), mail loop");
            self.finish(results, None, cx);
            return;
        }
        self.envelope = Some(Envelope {
            reverse_path: self.job.reverse_path.clone(),
            recipients: self.job.recipients.clone(),
            size: message.size,
            eight_bit: message.eight_bit,
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
            body: None,
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
            body,
        } = &mut self.phase
        {
            let mut input = Vec::new();
            loop {
                if body.is_some() {
                    let before = out.len();
                    match feed_body(body, &mut self.message, t, client, out, cx) {
                        Err(why) => {
                            finished = Some(client.body_failed(&why));
                            break;
                        }
                        Ok(Some(ClientEvent::Done(result))) => {
                            t.queue(out);
                            out.clear();
                            let _ = t.flush();
                            finished = Some(result);
                            break;
                        }
                        Ok(_) => {}
                    }
                    // RFC 5321 4.5.3.2.5: each chunk that goes out
                    // restarts the data block timer (then the final
                    // reply's, after the dot).
                    if out.len() > before {
                        *deadline = cx.now + client.reply_timeout();
                    }
                }
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
                            Some(ClientEvent::SendBody) => {
                                let first = self.message.as_ref().map(|m| m.first.clone());
                                let first = first.unwrap_or_default();
                                *body = Some(BodyOut {
                                    offset: first.len() as u64,
                                    eof: first.len() < STREAM_CHUNK,
                                    ahead: Some(first),
                                    waiting: false,
                                });
                            }
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
                    Ok(ReadStatus::WouldBlock) => {
                        // The socket took what was queued and the next
                        // chunk is here: keep going.
                        let more = body.as_ref().is_some_and(|b| {
                            b.ahead.is_some() && t.pending_output() <= STREAM_CHUNK
                        });
                        if !more {
                            break;
                        }
                    }
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
        // A read still out brings the file back to `chunk_read`, which
        // closes it then.
        if let Some(file) = self.message.as_mut().and_then(|m| m.file.take()) {
            close_on_worker(file, cx);
        }
        cx.effect(Effect::OutboundDone(GroupReport {
            entry_id: self.job.entry_id.clone(),
            results,
            relay,
            tls_failed_host: self.tls_failed_host.take(),
        }));
    }
}

impl SmtpOut {
    /// A worker's read of the message came back (maybe for a session
    /// that has ended since: then the chunk is dropped).
    fn chunk_read(&mut self, read: io::Result<(File, Vec<u8>)>, cx: &mut Ctx) {
        let Some(message) = self.message.as_mut() else {
            return;
        };
        message.reading = false;
        if self.done {
            if let Ok((file, _)) = read {
                close_on_worker(file, cx);
            }
            return;
        }
        let waiting = match &mut self.phase {
            Phase::Session {
                body: Some(b),
                client,
                ..
            } if b.waiting && !self.done => {
                b.waiting = false;
                Some((b, client))
            }
            _ => None,
        };
        match (read, waiting) {
            (Ok((file, chunk)), Some((b, _))) => {
                message.file = Some(file);
                b.offset += chunk.len() as u64;
                b.eof = chunk.len() < STREAM_CHUNK;
                b.ahead = Some(chunk);
            }
            (Ok((file, _)), None) => message.file = Some(file),
            (Err(e), Some((_, client))) => {
                info!("outbox {}: reading the message: {e}", self.job.entry_id);
                let result = client.body_failed(&e.to_string());
                self.session_done(result, cx);
                return;
            }
            (Err(e), None) => info!("outbox {}: reading the message: {e}", self.job.entry_id),
        }
        if !self.done && matches!(self.phase, Phase::Session { .. }) {
            self.pump_session(cx);
        }
    }
}

/// Hands the chunk read ahead to the client once the transport has room,
/// asks a worker for the next one, and ends the message at the end of the
/// file. Err: the file is gone (an earlier read failed).
fn feed_body(
    body: &mut Option<BodyOut>,
    message: &mut Option<Message>,
    t: &Transport,
    client: &mut SmtpClient,
    out: &mut Vec<u8>,
    cx: &Ctx,
) -> Result<Option<ClientEvent>, String> {
    let Some(b) = body.as_mut() else {
        return Ok(None);
    };
    if t.pending_output() + out.len() <= STREAM_CHUNK {
        if let Some(chunk) = b.ahead.take() {
            client.body_chunk(&chunk, out);
        }
        if b.eof && !b.waiting {
            *body = None;
            return Ok(client.body_end(out));
        }
    }
    if b.ahead.is_none() && !b.eof && !b.waiting {
        let Some(m) = message.as_mut() else {
            return Err("the message is not loaded".into());
        };
        match m.file.take() {
            Some(file) => {
                m.reading = true;
                b.waiting = true;
                let offset = b.offset;
                cx.submit_quick(move || Done::OutboundRead(read_chunk_at(file, offset)));
            }
            // An earlier session's read is still out: it brings the file back.
            None if m.reading => {}
            None => return Err("the file was lost after a read error".into()),
        }
    }
    Ok(None)
}

/// Files are closed on a worker, never on the loop thread (`close` on a
/// regular file is disk work too).
fn close_on_worker(file: File, cx: &Ctx) {
    cx.submit_quick(move || {
        drop(file);
        Done::Nothing
    });
}

/// Worker side: opens the queued message and measures it in one pass of
/// `STREAM_CHUNK` reads (its RFC 1870 size and 8-bit octets for MAIL FROM,
/// the `Received:` fields of its header for the loop check), keeping only
/// the first chunk and the header.
pub fn load(path: &Path) -> io::Result<QueuedMessage> {
    let mut file = File::open(path)?;
    let mut scan = WireScan::new();
    let mut first: Option<Vec<u8>> = None;
    let mut head: Vec<u8> = Vec::new();
    let mut head_done = false;
    loop {
        let chunk = read_full(&mut file, STREAM_CHUNK)?;
        scan.feed(&chunk);
        if !head_done {
            let room = MAX_HEADER_SCAN.saturating_sub(head.len());
            head.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            head_done = head.len() >= MAX_HEADER_SCAN || header_complete(&head);
        }
        let end = chunk.len() < STREAM_CHUNK;
        if first.is_none() {
            first = Some(chunk);
        }
        if end {
            break;
        }
    }
    let first = first.unwrap_or_default();
    Ok(QueuedMessage {
        // A message within one chunk is never read again: close it here.
        file: (first.len() >= STREAM_CHUNK).then_some(file),
        first,
        size: scan.size(),
        eight_bit: scan.eight_bit(),
        received: deliver::count_received(&head),
    })
}

/// The header section ended (an empty line, RFC 5322 2.1) within `head`.
fn header_complete(head: &[u8]) -> bool {
    head.starts_with(b"\n")
        || head.starts_with(b"\r\n")
        || head.windows(2).any(|w| w == b"\n\n")
        || head.windows(3).any(|w| w == b"\n\r\n")
}

/// Reads until `want` octets or the end of the file (short only at the end).
fn read_full(file: &mut File, want: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match file.read(buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    // Kept for the driver's life (the first chunk): no more than it holds.
    buf.shrink_to_fit();
    Ok(buf)
}

/// Worker side: the chunk at `offset` (short only at the end of the
/// file), with the file handed back for the next read.
fn read_chunk_at(file: File, offset: u64) -> io::Result<(File, Vec<u8>)> {
    let mut buf = vec![0u8; STREAM_CHUNK];
    let mut got = 0;
    while got < STREAM_CHUNK {
        match file.read_at(buf.get_mut(got..).unwrap_or_default(), offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok((file, buf))
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
                cx.submit_quick(move || Done::OutboundLoaded(load(&path)));
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
        match done {
            Done::OutboundLoaded(read) if !self.done && matches!(self.phase, Phase::Loading) => {
                self.loaded(read, cx);
            }
            Done::OutboundLoaded(Ok(QueuedMessage {
                file: Some(late), ..
            })) => close_on_worker(late, cx),
            Done::OutboundRead(read) => self.chunk_read(read, cx),
            _ => {}
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
        !matches!(self.phase, Phase::Loading) && !self.message.as_ref().is_some_and(|m| m.reading)
    }

    fn interest(&self) -> Interest {
        Interest::READABLE
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        None
    }
}
