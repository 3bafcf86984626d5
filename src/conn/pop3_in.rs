//! Driver for one inbound POP3 connection (plain with STLS, or pop3s).
//!
//! Owns: the socket (through the shared inbound pump), the sans-IO
//! `Pop3Session`, the maildrop lock while the session holds it, streaming
//! RETR/TOP with bounded memory (a worker reads the message file a chunk
//! ahead of the socket, and the next small messages before the client
//! asks for them: `pop3_ahead`), and handing password checks, scans and the QUIT
//! commit to the workers. Must not: parse POP3 itself, or touch a file on
//! the loop thread.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::Interest;

use super::pop3_ahead::ReadAhead;
use super::pump::{Inbound, Pumped, ServerCore};
use super::{Ctx, Driver, IdleClock, ListenerKind, Outcome};
use crate::net::canonical_ip;
use crate::proto::dotstuff::DotStuffer;
use crate::proto::pop3_server::{LoginFailure, Pop3Event, Pop3Params, Pop3Session};
use crate::store::maildir::Maildir;
use crate::store::maildrop;

/// RETR reads the message file in chunks of this size, one chunk ahead
/// of the socket: a 50 MB message costs a few chunks of memory, not 50 MB.
const STREAM_CHUNK: usize = 64 * 1024;

/// A failed login is answered after this pause.
const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);

impl ServerCore for Pop3Session {
    type Event = Pop3Event;
    fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<Pop3Event>) {
        Pop3Session::receive(self, input, out, events);
    }
    fn wants_input(&self) -> bool {
        Pop3Session::wants_input(self)
    }
    fn is_closed(&self) -> bool {
        Pop3Session::is_closed(self)
    }
    fn tls_started(&mut self, out: &mut Vec<u8>, events: &mut Vec<Pop3Event>) {
        Pop3Session::tls_started(self, out, events);
    }
}

enum Waiting {
    Nothing,
    Password,
    Scan,
    Commit,
    FailureDelay(Instant),
    /// Streaming a message to the client.
    Sending(Box<Stream>),
}

/// A message on its way out: the file travels to a worker for each read.
struct Stream {
    stuffer: DotStuffer,
    /// The file, while no read has it.
    file: Option<File>,
    /// A chunk read ahead, not yet queued for the socket.
    ahead: Option<Vec<u8>>,
    /// A worker is reading the next chunk.
    reading: bool,
    eof: bool,
    /// The message is in the read-ahead batch a worker is reading: its
    /// arrival starts the send (no second read of the same file).
    awaiting: Option<usize>,
}

pub struct Pop3In {
    io: Inbound<Pop3Session>,
    waiting: Waiting,
    /// The mailbox address being logged in, then locked.
    mailbox: Option<String>,
    /// The user name of the login in flight, for the log.
    login_user: Option<String>,
    locked: bool,
    maildir: Option<PathBuf>,
    /// The session must log in by then.
    login_by: Option<Instant>,
    /// Messages read before the client asks (after login).
    ahead: Option<ReadAhead>,
}

impl Pop3In {
    pub fn new(kind: ListenerKind, sock: TcpStream, peer: SocketAddr, cx: &mut Ctx) -> Pop3In {
        let ip = canonical_ip(peer.ip());
        let config = Arc::clone(cx.config());
        let implicit_tls = kind == ListenerKind::Pop3s;
        let params = Pop3Params {
            hostname: config.server.hostname.clone(),
            stls_available: !implicit_tls,
            tls_active: implicit_tls,
            plaintext_login_allowed: config.smtp.allow_plaintext_auth || ip.is_loopback(),
        };
        let idle = IdleClock::new(cx.now, config.pop3.timeout);
        let tls = implicit_tls.then_some(&cx.sv.tls);
        let core = Pop3Session::new(params);
        let mut io = Inbound::accept(sock, peer, core, idle, kind.name(), tls);
        io.core.greeting(&mut io.out);
        info!("{} connect from {peer}", kind.name());
        Pop3In {
            io,
            waiting: Waiting::Nothing,
            mailbox: None,
            login_user: None,
            locked: false,
            maildir: None,
            login_by: Some(cx.now + config.smtp.login_timeout),
            ahead: None,
        }
    }

    fn pump(&mut self, cx: &mut Ctx) {
        loop {
            self.feed_stream(cx);
            let may_read = matches!(self.waiting, Waiting::Nothing);
            match self.io.pump(&cx.sv.tls, may_read, cx.now) {
                Pumped::Events => self.handle_events(cx),
                Pumped::Waiting => {
                    // The socket took the last chunk and the next is here,
                    // or a message read ahead (maybe empty) is to be ended.
                    let more = matches!(&self.waiting, Waiting::Sending(st)
                        if (st.ahead.is_some() && self.io.t.pending_output() <= STREAM_CHUNK)
                            || (st.eof && !st.reading && st.ahead.is_none()));
                    if !more {
                        return;
                    }
                }
                Pumped::Closed => {
                    self.release(cx);
                    return;
                }
            }
        }
    }

    /// Queues the chunk read ahead once the socket has room, asks a worker
    /// for the next, and ends the response at the end of the file. When
    /// that starts the next pipelined RETR and its message was read ahead
    /// too, it goes on: up to STREAM_CHUNK of short answers leave in one
    /// write, not one write each.
    fn feed_stream(&mut self, cx: &mut Ctx) {
        loop {
            let Waiting::Sending(st) = &mut self.waiting else {
                return;
            };
            if self.io.t.pending_output() + self.io.out.len() <= STREAM_CHUNK {
                if let Some(chunk) = st.ahead.take() {
                    st.stuffer.encode(&chunk, &mut self.io.out);
                    if st.stuffer.is_saturated() {
                        // TOP's line limit reached: the rest is not needed.
                        // The file is closed on a worker, like every file.
                        st.eof = true;
                        if let Some(file) = st.file.take() {
                            cx.submit_quick(move || {
                                drop(file);
                                Outcome::Nothing
                            });
                        }
                    }
                }
            }
            if !st.reading && st.ahead.is_none() && !st.eof {
                if let Some(file) = st.file.take() {
                    st.reading = true;
                    cx.submit_quick(move || Outcome::Pop3Read(read_chunk(file)));
                }
            }
            if !(st.eof && st.ahead.is_none() && !st.reading) {
                return;
            }
            st.stuffer.finish(&mut self.io.out);
            self.waiting = Waiting::Nothing;
            self.io
                .core
                .send_done(&mut self.io.out, &mut self.io.events);
            self.handle_events(cx);
        }
    }

    fn handle_events(&mut self, cx: &mut Ctx) {
        for event in std::mem::take(&mut self.io.events) {
            match event {
                Pop3Event::Authenticate { user, password } => {
                    let ip = canonical_ip(self.io.t.peer().ip());
                    if !cx.begin_login(ip) {
                        // Blocked, or enough guesses from this address in
                        // flight already: refused unchecked, and the end.
                        info!(
                            "pop3 {}: login refused for {user:?}: too many failed logins",
                            self.io.t.peer()
                        );
                        self.login_failed(LoginFailure::BadCredentials);
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
                Pop3Event::StartTls => self.io.start_tls_after_flush(),
                Pop3Event::Send {
                    index,
                    path,
                    body_lines,
                } => self.start_send(index, path, body_lines, cx),
                Pop3Event::Commit { deleted, retrieved } => {
                    let Some(dir) = self.maildir.clone() else {
                        continue;
                    };
                    self.waiting = Waiting::Commit;
                    cx.submit(move || {
                        let deleted: Vec<_> = deleted.iter().collect();
                        let retrieved: Vec<_> = retrieved.iter().collect();
                        Outcome::Pop3Commit(maildrop::commit(&dir, &deleted, &retrieved).is_ok())
                    });
                }
                Pop3Event::Close => self.io.closing = true,
            }
        }
    }

    /// The "+OK" is queued. The message was read ahead, or a worker opens
    /// the file and reads the first chunk; after a RETR, a worker reads the
    /// messages that follow.
    fn start_send(&mut self, index: usize, path: PathBuf, body_lines: Option<usize>, cx: &mut Ctx) {
        let Some(dir) = self.maildir.clone() else {
            return;
        };
        let cached = self.ahead.as_mut().and_then(|ra| ra.take(index));
        // TOP is how clients look before they download: no read-ahead.
        let core = &self.io.core;
        let batch = match (&mut self.ahead, body_lines) {
            (Some(ra), None) => {
                ra.after_retr(index, |i| core.message(i).map(|m| (m.path.clone(), m.size)))
            }
            _ => None,
        };
        if let Some(batch) = batch {
            let dir = dir.clone();
            cx.submit_quick(move || Outcome::Pop3Ahead(batch.read(&dir)));
        }
        let reading = cached.is_none();
        let awaiting =
            (reading && self.ahead.as_ref().is_some_and(|ra| ra.coming(index))).then_some(index);
        self.waiting = Waiting::Sending(Box::new(Stream {
            stuffer: DotStuffer::with_body_line_limit(body_lines),
            file: None,
            eof: !reading,
            ahead: cached.filter(|bytes| !bytes.is_empty()),
            reading,
            awaiting,
        }));
        if reading && awaiting.is_none() {
            let full = dir.join(&path);
            cx.submit_quick(move || Outcome::Pop3Read(open_and_read(&full)));
        }
    }

    /// The RETR waiting for the read-ahead batch gets its message, or (the
    /// batch could not read it) a read of its own.
    fn ahead_arrived(&mut self, cx: &mut Ctx) {
        let Waiting::Sending(st) = &mut self.waiting else {
            return;
        };
        let Some(index) = st.awaiting.take() else {
            return;
        };
        if self.io.is_done() {
            self.waiting = Waiting::Nothing;
            return;
        }
        match self.ahead.as_mut().and_then(|ra| ra.take(index)) {
            Some(bytes) => {
                st.reading = false;
                st.eof = true;
                st.ahead = Some(bytes).filter(|b| !b.is_empty());
            }
            None => {
                let (Some(dir), Some(m)) = (self.maildir.clone(), self.io.core.message(index))
                else {
                    // Not a message of this session's listing: cannot be.
                    self.io.closing = true;
                    self.pump(cx);
                    return;
                };
                let full = dir.join(&m.path);
                cx.submit_quick(move || Outcome::Pop3Read(open_and_read(&full)));
                return;
            }
        }
        self.feed_stream(cx);
        self.pump(cx);
    }

    /// A worker's read of the message being sent.
    fn chunk_read(&mut self, read: std::io::Result<(Option<File>, Vec<u8>)>, cx: &mut Ctx) {
        let Waiting::Sending(st) = &mut self.waiting else {
            return;
        };
        st.reading = false;
        match read {
            Ok((file, chunk)) => {
                st.eof = file.is_none();
                st.file = file;
                if !chunk.is_empty() {
                    st.ahead = Some(chunk);
                }
            }
            Err(e) => {
                // The "+OK" already went out (and maybe part of the message):
                // the only honest thing left is to drop the connection
                // (RFC 1939 cannot abort a multi-line response).
                warn!("pop3 {}: reading message failed: {e}", self.io.t.peer());
                self.waiting = Waiting::Nothing;
                self.io.core.send_failed(&mut self.io.events);
                self.handle_events(cx);
            }
        }
    }

    /// Gives the maildrop lock back (the session is over).
    fn release(&mut self, cx: &mut Ctx) {
        if let Some(ra) = &mut self.ahead {
            ra.clear();
        }
        if self.locked {
            if let Some(mailbox) = &self.mailbox {
                cx.sv.mailboxes.unlock_exclusive(mailbox);
            }
            self.locked = false;
        }
    }

    fn finish(&mut self, cx: &mut Ctx) {
        self.io.finish();
        self.release(cx);
    }

    fn login_failed(&mut self, why: LoginFailure) {
        self.io
            .core
            .login_failed(why, &mut self.io.out, &mut self.io.events);
    }

    /// The password was right: lock the maildrop and have a worker list it.
    fn logged_in(&mut self, mailbox: String, cx: &mut Ctx) {
        if !cx.sv.mailboxes.lock_exclusive(&mailbox) {
            self.login_failed(LoginFailure::InUse);
            return;
        }
        self.locked = true;
        let dir = match Maildir::for_mailbox(&cx.config().server.data_dir, &mailbox) {
            Ok(m) => m.root().to_path_buf(),
            Err(e) => {
                warn!("pop3 {}: bad mailbox {mailbox}: {e}", self.io.t.peer());
                self.login_failed(LoginFailure::Temporary);
                return;
            }
        };
        self.maildir = Some(dir.clone());
        self.waiting = Waiting::Scan;
        cx.submit_quick(move || Outcome::Pop3Listing(maildrop::scan(&dir)));
    }
}

/// Worker side: opens a message file and reads its first chunk.
fn open_and_read(path: &Path) -> std::io::Result<(Option<File>, Vec<u8>)> {
    read_chunk(File::open(path)?)
}

/// Worker side: the next chunk of `file`, up to `STREAM_CHUNK` octets.
/// When the chunk reaches the end of the file, the file comes back as
/// None (it is closed here, not on the loop thread): a message that fits
/// in one chunk costs one worker round trip, not two.
fn read_chunk(mut file: File) -> std::io::Result<(Option<File>, Vec<u8>)> {
    // Sized to what is left (a 4 KiB message does not get 64 KiB), plus
    // one octet to see the end without another read.
    let left = file
        .metadata()
        .ok()
        .and_then(|m| {
            use std::io::Seek;
            let pos = file.stream_position().ok()?;
            Some(m.len().saturating_sub(pos))
        })
        .unwrap_or(STREAM_CHUNK as u64);
    let want = (left as usize).min(STREAM_CHUNK);
    let mut buf = vec![0u8; want + 1];
    let mut filled = 0;
    loop {
        match file.read(&mut buf[filled..]) {
            Ok(0) => {
                buf.truncate(filled);
                return Ok((None, buf));
            }
            Ok(n) => {
                filled += n;
                if filled == buf.len() {
                    // Not at the end yet (or the file grew).
                    return Ok((Some(file), buf));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Driver for Pop3In {
    fn ready(&mut self, cx: &mut Ctx) {
        self.pump(cx);
    }

    fn complete(&mut self, done: Outcome, cx: &mut Ctx) {
        if let Outcome::Nothing = done {
            // A file closed on a worker: nothing waited for it.
            return;
        }
        if let Outcome::Pop3Ahead(read) = done {
            // Kept for the RETRs to come, one of which may be waiting.
            if let Some(ra) = &mut self.ahead {
                ra.arrived(read);
            }
            self.ahead_arrived(cx);
            return;
        }
        if let Outcome::Pop3Read(read) = done {
            if !self.io.is_done() {
                self.chunk_read(read, cx);
                self.pump(cx);
            } else {
                self.waiting = Waiting::Nothing;
            }
            return;
        }
        self.waiting = Waiting::Nothing;
        if self.io.is_done() {
            self.release(cx);
            return;
        }
        match done {
            Outcome::Password(ok) => {
                let user = self.login_user.take().unwrap_or_default();
                let ip = canonical_ip(self.io.t.peer().ip());
                cx.end_login(ip, ok && self.mailbox.is_some());
                match (ok, self.mailbox.clone()) {
                    (true, Some(mailbox)) => self.logged_in(mailbox, cx),
                    _ => {
                        info!("pop3 {}: login failed for {user:?}", self.io.t.peer());
                        self.waiting = Waiting::FailureDelay(cx.now + LOGIN_FAILURE_DELAY);
                        return;
                    }
                }
            }
            Outcome::Pop3Listing(listing) => {
                let mailbox = self.mailbox.clone().unwrap_or_default();
                match listing {
                    Ok(listing) => {
                        self.login_by = None;
                        self.ahead = Some(ReadAhead::new());
                        info!(
                            "pop3 {}: {mailbox} logged in, {} messages",
                            self.io.t.peer(),
                            listing.len()
                        );
                        self.io.core.login_ok(
                            mailbox,
                            listing,
                            &mut self.io.out,
                            &mut self.io.events,
                        );
                    }
                    Err(e) => {
                        warn!(
                            "pop3 {}: cannot read maildrop of {mailbox}: {e}",
                            self.io.t.peer()
                        );
                        self.login_failed(LoginFailure::Temporary);
                    }
                }
            }
            Outcome::Pop3Commit(ok) => {
                if !ok {
                    warn!("pop3 {}: commit of the maildrop failed", self.io.t.peer());
                } else if let Some(mailbox) = self.mailbox.clone() {
                    cx.sv.mailboxes.changed(&mailbox, Some(cx.token.0));
                }
                self.io
                    .core
                    .commit_done(ok, &mut self.io.out, &mut self.io.events);
            }
            _ => return,
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
            && matches!(self.waiting, Waiting::Nothing | Waiting::Sending(_))
        {
            if login_late {
                info!(
                    "pop3 {}: no login within login_timeout, closing",
                    self.io.t.peer()
                );
            } else {
                info!("pop3 {}: timeout, closing", self.io.t.peer());
            }
            self.io.core.timed_out(&mut self.io.out);
            self.io.closing = true;
            self.pump(cx);
            self.finish(cx);
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
            Waiting::Password | Waiting::Scan | Waiting::Commit => None,
            _ => Some(idle),
        }
    }

    fn stop(&mut self, cx: &mut Ctx) {
        // Nothing is committed without QUIT (RFC 1939 6), so a stop loses
        // nothing: the client sees the connection end and retries.
        if !matches!(
            self.waiting,
            Waiting::Commit | Waiting::Password | Waiting::Scan
        ) {
            self.finish(cx);
        }
    }

    fn is_done(&self) -> bool {
        self.io.is_done()
    }

    fn is_idle(&self) -> bool {
        if self.ahead.as_ref().is_some_and(ReadAhead::in_flight) {
            return false;
        }
        match &self.waiting {
            Waiting::Password | Waiting::Scan | Waiting::Commit => false,
            Waiting::Sending(st) => !st.reading,
            _ => true,
        }
    }

    fn interest(&self) -> Interest {
        self.io.t.interest()
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        Some(self.io.t.socket())
    }
}
