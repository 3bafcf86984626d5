//! Driver for one inbound POP3 connection (plain with STLS, or pop3s).
//!
//! Owns: the socket, the sans-IO `Pop3Session`, the maildrop lock while
//! the session holds it, streaming RETR/TOP from the message file with
//! bounded memory, and handing password checks, scans and the QUIT commit
//! to the workers. Must not: parse POP3 itself.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::Interest;

use super::IdleClock;
use crate::event_loop::{canonical_ip, Driver, ListenerKind};
use crate::net::transport::{ReadStatus, Transport};
use crate::proto::dotstuff::DotStuffer;
use crate::proto::pop3_server::{LoginFailure, Pop3Event, Pop3Params, Pop3Session};
use crate::server::{Completion, Outcome, Shared};
use crate::store::maildir::Maildir;
use crate::store::maildrop;

/// RETR reads the message file in chunks of this size and refills only
/// when the socket has taken what was queued: a 50 MB message costs this
/// much memory, not 50 MB.
const STREAM_CHUNK: usize = 64 * 1024;

/// Stop reading pipelined commands while this much output waits.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// A failed login is answered after this pause.
const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);

enum Waiting {
    Nothing,
    Password,
    Scan,
    Commit,
    FailureDelay(Instant),
    TlsAfterFlush,
    /// Streaming a message to the client.
    Sending(Box<Stream>),
}

struct Stream {
    file: File,
    stuffer: DotStuffer,
}

pub struct Pop3In {
    t: Transport,
    session: Pop3Session,
    out: Vec<u8>,
    events: Vec<Pop3Event>,
    waiting: Waiting,
    idle: IdleClock,
    closing: bool,
    done: bool,
    /// The mailbox address being logged in, then locked.
    mailbox: Option<String>,
    locked: bool,
    maildir: Option<PathBuf>,
}

impl Pop3In {
    pub fn new(kind: ListenerKind, sock: TcpStream, peer: SocketAddr, sh: &mut Shared) -> Pop3In {
        let ip = canonical_ip(peer.ip());
        let mut t = Transport::new(sock, peer);
        let implicit_tls = kind == ListenerKind::Pop3s;
        let mut done = false;
        if implicit_tls {
            if let Err(e) = t.start_tls_server(&sh.tls) {
                warn!("pop3s {ip}: cannot start TLS: {e}");
                done = true;
            }
        }
        let params = Pop3Params {
            hostname: sh.config.server.hostname.clone(),
            stls_available: !implicit_tls,
            tls_active: implicit_tls,
            plaintext_login_allowed: sh.config.smtp.allow_plaintext_auth || ip.is_loopback(),
        };
        let mut session = Pop3Session::new(params);
        let mut out = Vec::new();
        session.greeting(&mut out);
        info!("{} connect from {peer}", kind.name());
        Pop3In {
            t,
            session,
            out,
            events: Vec::new(),
            waiting: Waiting::Nothing,
            idle: IdleClock::new(sh.now, sh.config.pop3.timeout),
            closing: false,
            done,
            mailbox: None,
            locked: false,
            maildir: None,
        }
    }

    fn pump(&mut self, sh: &mut Shared) {
        let mut input = Vec::new();
        while !self.done {
            self.t.queue(&self.out);
            self.out.clear();
            if let Err(e) = self.t.flush() {
                info!("pop3 {}: write failed: {e}", self.t.peer());
                self.finish(sh);
                return;
            }
            match &mut self.waiting {
                Waiting::TlsAfterFlush => {
                    if !self.t.is_flushed() {
                        return;
                    }
                    if let Err(e) = self.t.start_tls_server(&sh.tls) {
                        warn!("pop3 {}: cannot start TLS: {e}", self.t.peer());
                        self.finish(sh);
                        return;
                    }
                    self.waiting = Waiting::Nothing;
                    self.session.tls_started(&mut self.out, &mut self.events);
                    self.handle_events(sh);
                    continue;
                }
                Waiting::Sending(stream) => {
                    if self.t.pending_output() > STREAM_CHUNK {
                        return;
                    }
                    match refill(stream, &mut self.out) {
                        Ok(true) => continue,
                        Ok(false) => {
                            self.waiting = Waiting::Nothing;
                            self.session.send_done(&mut self.out, &mut self.events);
                            self.handle_events(sh);
                            continue;
                        }
                        Err(e) => {
                            // Part of the message already went out: the only
                            // honest thing left is to drop the connection
                            // (RFC 1939 cannot abort a multi-line response).
                            warn!("pop3 {}: reading message failed: {e}", self.t.peer());
                            self.waiting = Waiting::Nothing;
                            self.session.send_failed(&mut self.events);
                            self.handle_events(sh);
                            continue;
                        }
                    }
                }
                _ => {}
            }
            if self.closing || self.session.is_closed() {
                if self.t.is_flushed() {
                    self.finish(sh);
                }
                return;
            }
            if !matches!(self.waiting, Waiting::Nothing)
                || !self.session.wants_input()
                || self.t.pending_output() > MAX_PENDING_OUTPUT
            {
                return;
            }
            input.clear();
            match self.t.read(&mut input, usize::MAX) {
                Ok(ReadStatus::Data(0)) => continue,
                Ok(ReadStatus::Data(n)) => {
                    self.session
                        .receive(&input, &mut self.out, &mut self.events);
                    let answered = !self.out.is_empty() || !self.events.is_empty();
                    self.idle.read(n, answered, sh.now);
                    self.handle_events(sh);
                }
                Ok(ReadStatus::WouldBlock) => return,
                Ok(ReadStatus::Closed) | Err(_) => {
                    self.finish(sh);
                    return;
                }
            }
        }
    }

    fn handle_events(&mut self, sh: &mut Shared) {
        for event in std::mem::take(&mut self.events) {
            match event {
                Pop3Event::Authenticate { user, password } => {
                    self.waiting = Waiting::Password;
                    let config = Arc::clone(&sh.config);
                    self.mailbox = config.find_login(&user).map(|m| m.address.clone());
                    sh.submit(move || {
                        Outcome::Password(crate::server::check_login(&config, &user, &password))
                    });
                }
                Pop3Event::StartTls => self.waiting = Waiting::TlsAfterFlush,
                Pop3Event::Send {
                    path, body_lines, ..
                } => self.start_send(path, body_lines, sh),
                Pop3Event::Commit { deleted, retrieved } => {
                    let Some(dir) = self.maildir.clone() else {
                        continue;
                    };
                    self.waiting = Waiting::Commit;
                    sh.submit(move || {
                        let deleted: Vec<_> = deleted.iter().collect();
                        let retrieved: Vec<_> = retrieved.iter().collect();
                        Outcome::Pop3Commit(maildrop::commit(&dir, &deleted, &retrieved).is_ok())
                    });
                }
                Pop3Event::Close => self.closing = true,
            }
        }
    }

    fn start_send(&mut self, path: PathBuf, body_lines: Option<usize>, sh: &mut Shared) {
        let Some(dir) = self.maildir.as_ref() else {
            return;
        };
        match File::open(dir.join(&path)) {
            Ok(file) => {
                let stuffer = DotStuffer::with_body_line_limit(body_lines);
                self.waiting = Waiting::Sending(Box::new(Stream { file, stuffer }));
            }
            Err(e) => {
                // The "+OK" is already queued; a vanished file (deleted by an
                // admin or another program) can only end the connection.
                warn!(
                    "pop3 {}: cannot open {}: {e}",
                    self.t.peer(),
                    path.display()
                );
                self.session.send_failed(&mut self.events);
                self.handle_events(sh);
            }
        }
    }

    fn finish(&mut self, sh: &mut Shared) {
        if self.done {
            return;
        }
        if self.locked {
            if let Some(mailbox) = &self.mailbox {
                sh.maildrop_locks.remove(mailbox);
            }
            self.locked = false;
        }
        self.t.close();
        self.done = true;
    }
}

/// Queues the next chunk of the message; false once it has all gone.
fn refill(stream: &mut Stream, out: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut buf = vec![0u8; STREAM_CHUNK];
    loop {
        match stream.file.read(&mut buf) {
            Ok(0) => {
                stream.stuffer.finish(out);
                return Ok(false);
            }
            Ok(n) => {
                stream.stuffer.encode(&buf[..n], out);
                if stream.stuffer.is_saturated() {
                    // TOP's line limit reached: the rest of the file is not needed.
                    stream.stuffer.finish(out);
                    return Ok(false);
                }
                return Ok(true);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

impl Driver for Pop3In {
    fn ready(&mut self, sh: &mut Shared) {
        self.pump(sh);
    }

    fn complete(&mut self, done: Completion, sh: &mut Shared) {
        self.waiting = Waiting::Nothing;
        if self.done {
            return;
        }
        match done.outcome {
            Outcome::Password(ok) => {
                let mailbox = self.mailbox.clone();
                match (ok, mailbox) {
                    (true, Some(mailbox)) => {
                        if sh.maildrop_locks.contains(&mailbox) {
                            self.session.login_failed(
                                LoginFailure::InUse,
                                &mut self.out,
                                &mut self.events,
                            );
                        } else {
                            sh.maildrop_locks.insert(mailbox.clone());
                            self.locked = true;
                            let data_dir = &sh.config.server.data_dir;
                            let dir = match Maildir::for_mailbox(data_dir, &mailbox) {
                                Ok(m) => m.root().to_path_buf(),
                                Err(e) => {
                                    warn!("pop3 {}: bad mailbox {mailbox}: {e}", self.t.peer());
                                    self.session.login_failed(
                                        LoginFailure::Temporary,
                                        &mut self.out,
                                        &mut self.events,
                                    );
                                    self.handle_events(sh);
                                    self.pump(sh);
                                    return;
                                }
                            };
                            self.maildir = Some(dir.clone());
                            self.waiting = Waiting::Scan;
                            sh.submit(move || Outcome::Pop3Listing(maildrop::scan(&dir)));
                            return;
                        }
                    }
                    _ => {
                        info!("pop3 {}: login failed", self.t.peer());
                        sh.login_failed(canonical_ip(self.t.peer().ip()));
                        self.waiting = Waiting::FailureDelay(sh.now + LOGIN_FAILURE_DELAY);
                        return;
                    }
                }
            }
            Outcome::Pop3Listing(listing) => {
                let mailbox = self.mailbox.clone().unwrap_or_default();
                match listing {
                    Ok(listing) => {
                        info!(
                            "pop3 {}: {mailbox} logged in, {} messages",
                            self.t.peer(),
                            listing.len()
                        );
                        self.session
                            .login_ok(mailbox, listing, &mut self.out, &mut self.events);
                    }
                    Err(e) => {
                        warn!(
                            "pop3 {}: cannot read maildrop of {mailbox}: {e}",
                            self.t.peer()
                        );
                        self.session.login_failed(
                            LoginFailure::Temporary,
                            &mut self.out,
                            &mut self.events,
                        );
                    }
                }
            }
            Outcome::Pop3Commit(ok) => {
                if !ok {
                    warn!("pop3 {}: commit of the maildrop failed", self.t.peer());
                }
                self.session
                    .commit_done(ok, &mut self.out, &mut self.events);
            }
            _ => return,
        }
        self.handle_events(sh);
        self.pump(sh);
    }

    fn timer(&mut self, sh: &mut Shared) {
        if let Waiting::FailureDelay(at) = self.waiting {
            if at <= sh.now {
                self.waiting = Waiting::Nothing;
                self.session.login_failed(
                    LoginFailure::BadCredentials,
                    &mut self.out,
                    &mut self.events,
                );
                self.handle_events(sh);
                self.pump(sh);
                return;
            }
        }
        if self.idle.expired(sh.now)
            && matches!(self.waiting, Waiting::Nothing | Waiting::Sending(_))
        {
            info!("pop3 {}: timeout, closing", self.t.peer());
            self.session.timed_out(&mut self.out);
            self.closing = true;
            self.pump(sh);
            if !self.done {
                self.finish(sh);
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        match self.waiting {
            Waiting::FailureDelay(at) => Some(at.min(self.idle.deadline())),
            Waiting::Password | Waiting::Scan | Waiting::Commit => None,
            _ => Some(self.idle.deadline()),
        }
    }

    fn stop(&mut self, sh: &mut Shared) {
        // Nothing is committed without QUIT (RFC 1939 6), so a stop loses
        // nothing: the client sees the connection end and retries.
        if !matches!(
            self.waiting,
            Waiting::Commit | Waiting::Password | Waiting::Scan
        ) {
            self.finish(sh);
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    fn is_idle(&self) -> bool {
        !matches!(
            self.waiting,
            Waiting::Password | Waiting::Scan | Waiting::Commit
        )
    }

    fn interest(&self) -> Interest {
        self.t.interest()
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        Some(self.t.socket())
    }
}
