//! The POP3 server protocol core, sans-IO: RFC 1939 with CAPA and response
//! codes (RFC 2449, RFC 3206), STLS (RFC 2595) and SASL PLAIN (RFC 5034,
//! RFC 4616).
//!
//! Owns: command framing (bounded lines), the AUTHORIZATION / TRANSACTION /
//! UPDATE state machine, the maildrop's deleted and retrieved marks, and
//! every reply line except message bodies.
//!
//! Must not: touch sockets, files, TLS, threads or clocks, or check
//! passwords. Bytes come in through [`Pop3Session::receive`]; reply bytes go
//! to `out` and the work the driver must do goes to `events`
//! ([`Pop3Event`]). While an event is being carried out (a password check,
//! a TLS handshake, a message being streamed, the UPDATE commit), the core
//! holds further pipelined commands and answers them once the driver
//! reports the completion.

use std::path::PathBuf;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;

use super::line::{Line, Lines};
use super::sasl::{self, PlainError};
use base64::Engine as _;

/// One message of the maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Relative to the maildir: `new/NAME` or `cur/NAME:2,FLAGS`.
    pub path: PathBuf,
    /// Size with CRLF line ends, before dot-stuffing (the `W=` of the name).
    pub size: u64,
    /// Unique-id for UIDL: stable across `new/` -> `cur/` moves and restarts.
    pub uidl: String,
}

/// Longest command line, CRLF included (RFC 2449 4, raising RFC 1939's 47).
/// RFC 1939 3 also caps arguments at 40 characters; that cap is not
/// enforced, since passwords and SASL initial responses are often longer
/// and the line cap already bounds memory.
const MAX_COMMAND_LINE: usize = 255;
/// Longest SASL continuation line. RFC 5034 4 binds only the AUTH command
/// itself to the 255-octet limit; a PLAIN response carries two identities
/// and a password in base64, and 1 KiB leaves room for long ones.
const MAX_SASL_LINE: usize = 1024;
/// Protocol errors before the session is dropped: stops a peer that
/// speaks another protocol (or none) from holding a connection.
const MAX_ERRORS: u32 = 10;
/// Failed logins before the session is dropped (the driver adds a delay).
const MAX_FAILED_LOGINS: u32 = 3;
/// Commands a session may give before it has logged in. A real client
/// needs about five (CAPA, STLS, CAPA, USER, PASS); one that only sends
/// NOOP or CAPA to keep a connection slot is cut off (Postfix bounds the
/// same with `smtpd_junk_command_limit`).
pub const MAX_COMMANDS_BEFORE_LOGIN: u32 = 30;
/// Pipelined input held while an event is carried out (RFC 2449 6.6 lets
/// clients send many commands at once). Past this, `wants_input()` is
/// false and the driver stops reading the socket.
const MAX_BUFFERED_INPUT: usize = 16 * 1024;
/// A driver that keeps feeding past `MAX_BUFFERED_INPUT` is cut off here.
const MAX_BUFFERED_INPUT_HARD: usize = 4 * MAX_BUFFERED_INPUT;
/// RFC 2449 6.9.
const IMPLEMENTATION: &str = "mailgate";

/// RFC 4648 base64; padding is optional because some clients drop it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What the driver knows about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3Params {
    /// Named in the greeting and the QUIT reply.
    pub hostname: String,
    /// A TLS config exists, so STLS can be offered.
    pub stls_available: bool,
    /// TLS from the first byte (POP3S) or after STLS.
    pub tls_active: bool,
    /// USER/PASS and AUTH PLAIN allowed without TLS (loopback, or config).
    pub plaintext_login_allowed: bool,
}

/// Work the driver carries out for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pop3Event {
    /// Check the password (slow: on a worker), lock the maildrop and scan
    /// it; then call `login_ok` or `login_failed`.
    Authenticate { user: String, password: String },
    /// `out` ends with "+OK Begin TLS": flush it, run the handshake, then
    /// call `tls_started`.
    StartTls,
    /// `out` ends with "+OK ...": stream the message at `path` (relative to
    /// the maildir) through `DotStuffer::with_body_line_limit(body_lines)`,
    /// then call `send_done` (or `send_failed` if the file cannot be read).
    /// `index` is 0-based in the login listing.
    Send {
        index: usize,
        path: PathBuf,
        body_lines: Option<usize>,
    },
    /// QUIT in TRANSACTION (RFC 1939 6): run `maildrop::commit`, then call
    /// `commit_done`.
    Commit {
        deleted: Vec<MessageInfo>,
        retrieved: Vec<MessageInfo>,
    },
    /// Flush `out`, then close the connection (and release the lock).
    Close,
}

/// Why a login did not succeed (the driver's verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// Unknown user or wrong password: the client is told the same either way.
    BadCredentials,
    /// Another session holds the maildrop lock (RFC 2449 8.1.1 IN-USE).
    InUse,
    /// The maildrop could not be read now (RFC 3206 SYS/TEMP).
    Temporary,
}

/// The RFC 1939 states, plus the SASL exchange inside AUTHORIZATION.
#[derive(Debug)]
enum State {
    /// RFC 1939 4; `user` is the name of the USER command just accepted.
    Authorization {
        user: Option<String>,
    },
    /// AUTH PLAIN sent "+ ": the next line is the client response (RFC 5034 4).
    SaslResponse,
    /// RFC 1939 5.
    Transaction(Maildrop),
    /// RFC 1939 6: the commit is running.
    Update,
    Closed,
}

/// An event the driver is carrying out; input waits until it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Login,
    Tls,
    Send,
    Commit,
}

/// The maildrop as the session sees it: the login listing and its marks.
#[derive(Debug)]
struct Maildrop {
    messages: Vec<MessageInfo>,
    deleted: Vec<bool>,
    retrieved: Vec<bool>,
}

impl Maildrop {
    fn new(messages: Vec<MessageInfo>) -> Maildrop {
        let n = messages.len();
        Maildrop {
            messages,
            deleted: vec![false; n],
            retrieved: vec![false; n],
        }
    }

    /// Undeleted messages as (1-based number, message).
    fn visible(&self) -> impl Iterator<Item = (usize, &MessageInfo)> {
        self.messages
            .iter()
            .zip(&self.deleted)
            .enumerate()
            .filter(|(_, (_, &deleted))| !deleted)
            .map(|(i, (m, _))| (i + 1, m))
    }

    /// "N messages (S octets)", counting undeleted messages (RFC 1939 5 STAT).
    fn summary(&self) -> (usize, u64) {
        self.visible().fold((0, 0), |(n, size), (_, m)| {
            (n + 1, size.saturating_add(m.size))
        })
    }

    /// Resolves a message-number argument (RFC 1939 5: deleted messages
    /// may not be referred to).
    fn lookup(&self, number: usize) -> Result<(usize, &MessageInfo), Reply> {
        let index = number.checked_sub(1);
        match index.and_then(|i| self.messages.get(i).map(|m| (i, m))) {
            None => Err(Reply::err(format!(
                "no such message, only {} messages in maildrop",
                self.messages.len()
            ))),
            Some((i, _)) if self.deleted.get(i).copied().unwrap_or(false) => {
                Err(Reply::err(format!("message {number} already deleted")))
            }
            Some(found) => Ok(found),
        }
    }
}

/// What a handler answers; the dispatcher writes it and counts errors.
#[derive(Debug)]
enum Reply {
    /// "+OK text"
    Ok(String),
    /// "-ERR text"; counts toward `MAX_ERRORS`.
    Err(String),
    /// "+OK text", the lines, "." (RFC 1939 3 multi-line response).
    Multi(String, Vec<String>),
    /// "+ " (RFC 5034 4 server challenge, empty for PLAIN).
    Continue,
    /// The answer comes with an event's completion.
    Later,
}

impl Reply {
    fn ok(text: impl Into<String>) -> Reply {
        Reply::Ok(text.into())
    }
    fn err(text: impl Into<String>) -> Reply {
        Reply::Err(text.into())
    }
}

/// A parsed command line (RFC 1939 3: keywords are case-insensitive).
#[derive(Debug)]
enum Command<'a> {
    User(&'a str),
    Pass(&'a str),
    Apop,
    Auth {
        mechanism: Option<&'a str>,
        initial: Option<&'a str>,
    },
    Stls,
    Capa,
    Quit,
    Stat,
    List(Option<usize>),
    Retr(usize),
    Dele(usize),
    Noop,
    Rset,
    Top(usize, usize),
    Uidl(Option<usize>),
}

/// One line out of the framer.
/// One POP3 server session.
#[derive(Debug)]
pub struct Pop3Session {
    params: Pop3Params,
    state: State,
    pending: Option<Pending>,
    /// Unprocessed input: the start of a line, or pipelined commands.
    input: Lines,
    errors: u32,
    failed_logins: u32,
    /// Commands given in AUTHORIZATION state.
    commands_before_login: u32,
}

impl Pop3Session {
    pub fn new(params: Pop3Params) -> Self {
        Pop3Session {
            params,
            state: State::Authorization { user: None },
            pending: None,
            input: Lines::default(),
            errors: 0,
            failed_logins: 0,
            commands_before_login: 0,
        }
    }

    /// The server greeting (RFC 1939 4). No APOP timestamp: APOP is not offered.
    pub fn greeting(&mut self, out: &mut Vec<u8>) {
        write_line(
            out,
            &format!("+OK {} POP3 server ready", self.params.hostname),
        );
    }

    /// Feeds bytes from the client; answers every complete command it can.
    pub fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<Pop3Event>) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if self.pending.is_some() && self.input.buffered() + input.len() > MAX_BUFFERED_INPUT_HARD {
            // The driver ignored wants_input(); nothing sane can be said
            // mid-response, so drop the connection.
            self.close(events);
            return;
        }
        self.input.push(input);
        self.process(out, events);
    }

    /// The password was right and the maildrop is locked and scanned.
    pub fn login_ok(
        &mut self,
        mailbox: String,
        listing: Vec<MessageInfo>,
        out: &mut Vec<u8>,
        events: &mut Vec<Pop3Event>,
    ) {
        if !self.complete(Pending::Login) {
            return;
        }
        let maildrop = Maildrop::new(listing);
        let (n, size) = maildrop.summary();
        self.state = State::Transaction(maildrop);
        write_line(
            out,
            &format!("+OK {mailbox} has {n} messages ({size} octets)"),
        );
        self.process(out, events);
    }

    /// The login did not succeed; back to AUTHORIZATION (or closed after
    /// `MAX_FAILED_LOGINS` bad credentials).
    pub fn login_failed(
        &mut self,
        why: LoginFailure,
        out: &mut Vec<u8>,
        events: &mut Vec<Pop3Event>,
    ) {
        if !self.complete(Pending::Login) {
            return;
        }
        self.state = State::Authorization { user: None };
        match why {
            LoginFailure::BadCredentials => {
                self.failed_logins = self.failed_logins.saturating_add(1);
                if self.failed_logins >= MAX_FAILED_LOGINS {
                    write_line(out, "-ERR [AUTH] too many failures");
                    self.close(events);
                    return;
                }
                write_line(out, "-ERR [AUTH] Authentication failed");
            }
            LoginFailure::InUse => {
                write_line(out, "-ERR [IN-USE] Mailbox is locked by another session")
            }
            LoginFailure::Temporary => write_line(
                out,
                "-ERR [SYS/TEMP] Temporary server failure, try again later",
            ),
        }
        self.process(out, events);
    }

    /// The TLS handshake after STLS succeeded. RFC 2595 4: the session
    /// starts over in AUTHORIZATION with no greeting; anything received in
    /// plaintext after STLS is discarded (command injection).
    pub fn tls_started(&mut self, out: &mut Vec<u8>, events: &mut Vec<Pop3Event>) {
        if !self.complete(Pending::Tls) {
            return;
        }
        self.params.tls_active = true;
        self.state = State::Authorization { user: None };
        self.input.clear();
        self.process(out, events);
    }

    /// The message of the last `Send` is written (terminator included).
    /// The message at `index` (0-based) of the login listing, in
    /// TRANSACTION state: what a driver reading ahead needs to know.
    pub fn message(&self, index: usize) -> Option<&MessageInfo> {
        match &self.state {
            State::Transaction(md) => md.messages.get(index),
            _ => None,
        }
    }

    pub fn send_done(&mut self, out: &mut Vec<u8>, events: &mut Vec<Pop3Event>) {
        if self.complete(Pending::Send) {
            self.process(out, events);
        }
    }

    /// The message of the last `Send` could not be read after its "+OK"
    /// went out: the multi-line response cannot be completed honestly, so
    /// the connection is closed without UPDATE (RFC 1939 6: nothing is
    /// removed).
    pub fn send_failed(&mut self, events: &mut Vec<Pop3Event>) {
        if self.complete(Pending::Send) {
            self.close(events);
        }
    }

    /// The UPDATE state's commit finished (RFC 1939 6 QUIT).
    pub fn commit_done(&mut self, ok: bool, out: &mut Vec<u8>, events: &mut Vec<Pop3Event>) {
        if !self.complete(Pending::Commit) {
            return;
        }
        if ok {
            write_line(
                out,
                &format!("+OK {} POP3 server signing off", self.params.hostname),
            );
        } else {
            write_line(out, "-ERR [SYS/TEMP] some deleted messages not removed");
        }
        self.close(events);
    }

    /// The inactivity timer fired (RFC 1939 3 autologout): closed without
    /// UPDATE. The driver closes the connection after flushing `out`.
    pub fn timed_out(&mut self, out: &mut Vec<u8>) {
        if matches!(self.state, State::Closed) {
            return;
        }
        // Mid-message, a reply line would corrupt the message.
        if self.pending != Some(Pending::Send) {
            write_line(out, "-ERR autologout: idle for too long");
        }
        self.pending = None;
        self.state = State::Closed;
    }

    /// True when the driver should read from the socket.
    pub fn wants_input(&self) -> bool {
        !matches!(self.state, State::Closed)
            && self.pending.is_none()
            && self.input.buffered() < MAX_BUFFERED_INPUT
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Bad-credential logins so far (the driver delays replies with it).
    pub fn failed_logins(&self) -> u32 {
        self.failed_logins
    }

    /// Clears `expected` if it is what is pending; a stray completion is
    /// ignored (a driver bug must not become a panic or a protocol lie).
    fn complete(&mut self, expected: Pending) -> bool {
        if self.pending == Some(expected) && !matches!(self.state, State::Closed) {
            self.pending = None;
            true
        } else {
            false
        }
    }

    fn close(&mut self, events: &mut Vec<Pop3Event>) {
        self.state = State::Closed;
        self.pending = None;
        self.input.clear();
        events.push(Pop3Event::Close);
    }

    fn login_allowed(&self) -> bool {
        self.params.tls_active || self.params.plaintext_login_allowed
    }

    /// Answers buffered lines until input runs out or an event is pending.
    fn process(&mut self, out: &mut Vec<u8>, events: &mut Vec<Pop3Event>) {
        while self.pending.is_none() && !matches!(self.state, State::Closed | State::Update) {
            let Some(framed) = self.next_line() else {
                break;
            };
            let reply = match framed {
                Line::TooLong => {
                    self.abandon_sasl();
                    Reply::err("line too long")
                }
                Line::Text(bytes) => match checked_text(&bytes) {
                    None => {
                        self.abandon_sasl();
                        Reply::err("invalid characters in command")
                    }
                    Some(line) => {
                        if matches!(self.state, State::Authorization { .. }) {
                            self.commands_before_login += 1;
                            if self.commands_before_login > MAX_COMMANDS_BEFORE_LOGIN {
                                write_line(out, "-ERR too many commands without logging in");
                                self.close(events);
                                return;
                            }
                        }
                        self.dispatch(line, events)
                    }
                },
            };
            self.write_reply(reply, out, events);
        }
    }

    /// The next command line (one framer for POP3: `line::Lines`; a line
    /// ends at LF, CRLF or a bare LF as many clients send).
    fn next_line(&mut self) -> Option<Line> {
        let limit = match self.state {
            State::SaslResponse => MAX_SASL_LINE,
            _ => MAX_COMMAND_LINE,
        };
        self.input.next(limit)
    }

    /// A bad line in the SASL exchange ends it (RFC 5034 4: -ERR).
    fn abandon_sasl(&mut self) {
        if matches!(self.state, State::SaslResponse) {
            self.state = State::Authorization { user: None };
        }
    }

    fn write_reply(&mut self, reply: Reply, out: &mut Vec<u8>, events: &mut Vec<Pop3Event>) {
        match reply {
            Reply::Ok(text) if text.is_empty() => write_line(out, "+OK"),
            Reply::Ok(text) => write_line(out, &format!("+OK {text}")),
            Reply::Multi(text, lines) => {
                write_line(out, &format!("+OK {text}"));
                for line in lines {
                    write_line(out, &line);
                }
                write_line(out, ".");
            }
            Reply::Continue => write_line(out, "+ "),
            Reply::Later => {}
            Reply::Err(text) => {
                write_line(out, &format!("-ERR {text}"));
                self.errors = self.errors.saturating_add(1);
                if self.errors >= MAX_ERRORS && !self.is_closed() {
                    write_line(out, "-ERR too many errors");
                    self.close(events);
                }
            }
        }
    }

    /// The one dispatch: (state, command) -> reply.
    fn dispatch(&mut self, line: &str, events: &mut Vec<Pop3Event>) -> Reply {
        if matches!(self.state, State::SaslResponse) {
            self.state = State::Authorization { user: None };
            return self.sasl_plain(line, events);
        }
        let command = match parse(line) {
            Ok(command) => command,
            Err(reply) => return reply,
        };
        let login_allowed = self.login_allowed();
        match (&mut self.state, command) {
            (State::Authorization { .. } | State::Transaction(_), Command::Capa) => {
                Reply::Multi("Capability list follows".into(), self.capabilities())
            }

            // RFC 1939 4: the AUTHORIZATION state.
            (State::Authorization { .. }, Command::User(_) | Command::Pass(_))
                if !login_allowed =>
            {
                plaintext_disallowed()
            }
            (State::Authorization { user }, Command::User(name)) => {
                *user = Some(name.to_string());
                Reply::ok("send PASS")
            }
            (State::Authorization { user }, Command::Pass(password)) => match user.take() {
                None => Reply::err("USER first"),
                Some(user) => self.authenticate(user, password.to_string(), events),
            },
            (State::Authorization { .. }, Command::Apop) => Reply::err("APOP not supported"),
            (
                State::Authorization { .. },
                Command::Auth {
                    mechanism: None, ..
                },
            ) => {
                // Not in RFC 5034, but RFC 1734-era clients (Outlook) probe so.
                let mechanisms = if login_allowed {
                    vec!["PLAIN".into()]
                } else {
                    vec![]
                };
                Reply::Multi("SASL mechanisms follow".into(), mechanisms)
            }
            (
                State::Authorization { user },
                Command::Auth {
                    mechanism: Some(m),
                    initial,
                },
            ) => {
                *user = None;
                if !m.eq_ignore_ascii_case("PLAIN") {
                    Reply::err("Unsupported authentication mechanism")
                } else if !login_allowed {
                    plaintext_disallowed()
                } else {
                    match initial {
                        Some(response) => self.sasl_plain(response, events),
                        None => {
                            self.state = State::SaslResponse;
                            Reply::Continue
                        }
                    }
                }
            }
            (State::Authorization { .. }, Command::Stls) => {
                if self.params.tls_active {
                    Reply::err("Command not permitted when TLS active")
                } else if !self.params.stls_available {
                    Reply::err("STLS not available")
                } else {
                    // RFC 2595 4: nothing sent after STLS in plaintext counts.
                    self.input.clear();
                    self.state = State::Authorization { user: None };
                    self.pending = Some(Pending::Tls);
                    events.push(Pop3Event::StartTls);
                    Reply::ok("Begin TLS negotiation now")
                }
            }
            (State::Authorization { .. }, Command::Quit) => {
                let reply = Reply::ok(format!("{} POP3 server signing off", self.params.hostname));
                self.close(events);
                reply
            }

            // RFC 1939 5: the TRANSACTION state.
            (State::Transaction(md), Command::Stat) => {
                let (n, size) = md.summary();
                Reply::ok(format!("{n} {size}"))
            }
            (State::Transaction(md), Command::List(None)) => {
                let (n, size) = md.summary();
                let lines = md
                    .visible()
                    .map(|(i, m)| format!("{i} {}", m.size))
                    .collect();
                Reply::Multi(format!("{n} messages ({size} octets)"), lines)
            }
            (State::Transaction(md), Command::List(Some(number))) => match md.lookup(number) {
                Ok((_, m)) => Reply::ok(format!("{number} {}", m.size)),
                Err(reply) => reply,
            },
            (State::Transaction(md), Command::Uidl(None)) => {
                let lines = md
                    .visible()
                    .map(|(i, m)| format!("{i} {}", m.uidl))
                    .collect();
                Reply::Multi("unique-id listing follows".into(), lines)
            }
            (State::Transaction(md), Command::Uidl(Some(number))) => match md.lookup(number) {
                Ok((_, m)) => Reply::ok(format!("{number} {}", m.uidl)),
                Err(reply) => reply,
            },
            (State::Transaction(md), Command::Retr(number)) => match md.lookup(number) {
                Ok((index, m)) => {
                    let reply = Reply::ok(format!("{} octets", m.size));
                    events.push(Pop3Event::Send {
                        index,
                        path: m.path.clone(),
                        body_lines: None,
                    });
                    if let Some(mark) = md.retrieved.get_mut(index) {
                        *mark = true;
                    }
                    self.pending = Some(Pending::Send);
                    reply
                }
                Err(reply) => reply,
            },
            (State::Transaction(md), Command::Top(number, body_lines)) => {
                match md.lookup(number) {
                    // RFC 1939 7: TOP does not count as retrieving.
                    Ok((index, m)) => {
                        events.push(Pop3Event::Send {
                            index,
                            path: m.path.clone(),
                            body_lines: Some(body_lines),
                        });
                        self.pending = Some(Pending::Send);
                        Reply::ok("top of message follows")
                    }
                    Err(reply) => reply,
                }
            }
            (State::Transaction(md), Command::Dele(number)) => match md.lookup(number) {
                Ok((index, _)) => {
                    if let Some(mark) = md.deleted.get_mut(index) {
                        *mark = true;
                    }
                    Reply::ok(format!("message {number} deleted"))
                }
                Err(reply) => reply,
            },
            (State::Transaction(_), Command::Noop) => Reply::ok(""),
            (State::Transaction(md), Command::Rset) => {
                md.deleted.iter_mut().for_each(|d| *d = false);
                let (n, size) = md.summary();
                Reply::ok(format!("maildrop has {n} messages ({size} octets)"))
            }
            (State::Transaction(md), Command::Quit) => {
                // RFC 1939 6: only QUIT in TRANSACTION enters UPDATE.
                let mut deleted = Vec::new();
                let mut retrieved = Vec::new();
                for ((m, &d), &r) in md.messages.iter().zip(&md.deleted).zip(&md.retrieved) {
                    if d {
                        deleted.push(m.clone());
                    } else if r {
                        retrieved.push(m.clone());
                    }
                }
                events.push(Pop3Event::Commit { deleted, retrieved });
                self.state = State::Update;
                self.pending = Some(Pending::Commit);
                Reply::Later
            }

            (_, _) => Reply::err("command not valid in this state"),
        }
    }

    /// Hands a login to the driver; the reply comes with its verdict.
    fn authenticate(
        &mut self,
        user: String,
        password: String,
        events: &mut Vec<Pop3Event>,
    ) -> Reply {
        events.push(Pop3Event::Authenticate { user, password });
        self.pending = Some(Pending::Login);
        Reply::Later
    }

    /// The PLAIN client response (RFC 4616 2):
    /// `[authzid] NUL authcid NUL passwd`, base64 encoded (RFC 5034 4).
    fn sasl_plain(&mut self, response: &str, events: &mut Vec<Pop3Event>) -> Reply {
        if response == "*" {
            // RFC 5034 4: the client cancels the exchange.
            return Reply::err("Authentication cancelled");
        }
        // RFC 5034 4: "=" is an empty initial response.
        let encoded = if response == "=" { "" } else { response };
        let Ok(decoded) = BASE64.decode(encoded) else {
            return Reply::err("Invalid base64 data");
        };
        match sasl::parse_plain(&decoded) {
            Ok(plain) => self.authenticate(plain.authcid, plain.password, events),
            Err(PlainError::Malformed) => Reply::err("Invalid PLAIN response"),
            // Acting as another user is not offered.
            Err(PlainError::ForeignAuthzid) => {
                Reply::err("[AUTH] Authorization identity not permitted")
            }
        }
    }

    /// RFC 2449 5 CAPA, for the current state.
    fn capabilities(&self) -> Vec<String> {
        let authorization = matches!(self.state, State::Authorization { .. });
        let mut caps: Vec<String> = vec!["TOP".into(), "UIDL".into()];
        // Logins are only advertised when they would be accepted now
        // (RFC 2595 2.1 LOGINDISABLED spirit; clients then use STLS first).
        if authorization && self.login_allowed() {
            caps.push("USER".into());
            caps.push("SASL PLAIN".into());
        }
        caps.push("RESP-CODES".into());
        caps.push("AUTH-RESP-CODE".into());
        caps.push("PIPELINING".into());
        if authorization && self.params.stls_available && !self.params.tls_active {
            caps.push("STLS".into());
        }
        caps.push(format!("IMPLEMENTATION {IMPLEMENTATION}"));
        caps
    }
}

fn plaintext_disallowed() -> Reply {
    // RFC 2595 / RFC 3206: the same answer whether or not the user exists.
    Reply::err("[AUTH] Plaintext authentication disallowed, use STLS")
}

fn write_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A command line as text: UTF-8 (passwords may hold non-ASCII) with no
/// control characters (NUL, a stray CR, DEL, C1).
fn checked_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.chars().any(char::is_control) {
        return None;
    }
    Some(text)
}

/// Parses a command line (RFC 1939 3: a keyword, then arguments separated
/// by single spaces).
fn parse(line: &str) -> Result<Command<'_>, Reply> {
    let (keyword, rest) = match line.split_once(' ') {
        Some((keyword, rest)) => (keyword, Some(rest)),
        None => (line, None),
    };
    let args: Vec<&str> = rest
        .map(|r| r.split(' ').filter(|a| !a.is_empty()).collect())
        .unwrap_or_default();
    let syntax = || Reply::err("syntax error");
    let command = match keyword.to_ascii_uppercase().as_str() {
        "USER" => match rest.map(str::trim) {
            Some(name) if !name.is_empty() => Command::User(name),
            _ => return Err(syntax()),
        },
        // RFC 1939 7: spaces may be part of the password.
        "PASS" => Command::Pass(rest.ok_or_else(syntax)?),
        "APOP" => Command::Apop,
        "AUTH" => match args.as_slice() {
            [] => Command::Auth {
                mechanism: None,
                initial: None,
            },
            [m] => Command::Auth {
                mechanism: Some(m),
                initial: None,
            },
            [m, i] => Command::Auth {
                mechanism: Some(m),
                initial: Some(i),
            },
            _ => return Err(syntax()),
        },
        "STLS" | "CAPA" | "QUIT" | "STAT" | "NOOP" | "RSET" if !args.is_empty() => {
            return Err(syntax())
        }
        "STLS" => Command::Stls,
        "CAPA" => Command::Capa,
        "QUIT" => Command::Quit,
        "STAT" => Command::Stat,
        "NOOP" => Command::Noop,
        "RSET" => Command::Rset,
        "LIST" | "UIDL" => {
            let number = match args.as_slice() {
                [] => None,
                [n] => Some(number(n)?),
                _ => return Err(syntax()),
            };
            if keyword.eq_ignore_ascii_case("LIST") {
                Command::List(number)
            } else {
                Command::Uidl(number)
            }
        }
        "RETR" | "DELE" => match args.as_slice() {
            [n] if keyword.eq_ignore_ascii_case("RETR") => Command::Retr(number(n)?),
            [n] => Command::Dele(number(n)?),
            _ => return Err(syntax()),
        },
        "TOP" => match args.as_slice() {
            [n, lines] => Command::Top(number(n)?, line_count(lines)?),
            _ => return Err(syntax()),
        },
        _ => return Err(Reply::err("unknown command")),
    };
    Ok(command)
}

/// TOP's line count: a huge one means the whole body, not an error.
fn line_count(arg: &str) -> Result<usize, Reply> {
    match number(arg) {
        Err(_) if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) => Ok(usize::MAX),
        other => other,
    }
}

/// A decimal argument (RFC 1939 msg-number, TOP's line count).
fn number(arg: &str) -> Result<usize, Reply> {
    if arg.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = arg.parse() {
            return Ok(n);
        }
    }
    Err(Reply::err("invalid number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "mail.example.test";
    /// base64("\0bob\0secret")
    const PLAIN_BOB: &str = "AGJvYgBzZWNyZXQ=";

    fn params(stls_available: bool, tls_active: bool, plaintext: bool) -> Pop3Params {
        Pop3Params {
            hostname: HOST.into(),
            stls_available,
            tls_active,
            plaintext_login_allowed: plaintext,
        }
    }

    fn listing() -> Vec<MessageInfo> {
        [
            ("new/a", 100, "u1"),
            ("new/b", 200, "u2"),
            ("cur/c:2,S", 300, "u3"),
        ]
        .iter()
        .map(|&(path, size, uidl)| MessageInfo {
            path: PathBuf::from(path),
            size,
            uidl: uidl.into(),
        })
        .collect()
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    struct H {
        s: Pop3Session,
    }

    impl H {
        fn new(p: Pop3Params) -> H {
            let mut s = Pop3Session::new(p);
            let mut out = Vec::new();
            s.greeting(&mut out);
            assert_eq!(out, format!("+OK {HOST} POP3 server ready\r\n").as_bytes());
            H { s }
        }

        /// Plaintext allowed, STLS available.
        fn auth() -> H {
            H::new(params(true, false, true))
        }

        fn logged_in() -> H {
            let mut h = H::auth();
            let (out, ev) = h.send("USER bob\r\nPASS secret\r\n");
            assert_eq!(out, "+OK send PASS\r\n");
            assert_eq!(
                ev,
                vec![Pop3Event::Authenticate {
                    user: "bob".into(),
                    password: "secret".into()
                }]
            );
            let (out, ev) =
                h.with(|s, o, e| s.login_ok("bob@example.test".into(), listing(), o, e));
            assert_eq!(out, "+OK bob@example.test has 3 messages (600 octets)\r\n");
            assert!(ev.is_empty());
            h
        }

        fn send(&mut self, input: &str) -> (String, Vec<Pop3Event>) {
            self.send_bytes(input.as_bytes())
        }

        fn send_bytes(&mut self, input: &[u8]) -> (String, Vec<Pop3Event>) {
            self.with(|s, o, e| s.receive(input, o, e))
        }

        fn with(
            &mut self,
            f: impl FnOnce(&mut Pop3Session, &mut Vec<u8>, &mut Vec<Pop3Event>),
        ) -> (String, Vec<Pop3Event>) {
            let mut out = Vec::new();
            let mut events = Vec::new();
            f(&mut self.s, &mut out, &mut events);
            (String::from_utf8(out).unwrap(), events)
        }
    }

    const OUT_OF_STATE: &str = "-ERR command not valid in this state\r\n";

    #[test]
    fn a_slot_kept_by_noops_before_login_is_closed() {
        // USER is answered +OK (NOOP is not valid before login and would
        // end the session sooner, by the error cap).
        let mut h = H::auth();
        let n = MAX_COMMANDS_BEFORE_LOGIN as usize;
        let (out, ev) = h.send(&"USER bob\r\n".repeat(n + 5));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), n + 1, "{out}");
        assert!(lines[..n].iter().all(|l| l.starts_with("+OK")), "{out}");
        assert_eq!(lines[n], "-ERR too many commands without logging in");
        assert_eq!(ev, vec![Pop3Event::Close]);
        assert!(h.s.is_closed());
        // A logged-in session is not counted.
        let mut h = H::logged_in();
        let (out, ev) = h.send(&"NOOP\r\n".repeat(n + 5));
        assert_eq!(out.lines().filter(|l| l.starts_with("+OK")).count(), n + 5);
        assert!(ev.is_empty());
    }

    /// Each row on a fresh session: (command line, exact reply).
    fn run_table(make: fn() -> H, rows: &[(&str, &str)]) {
        for &(input, want) in rows {
            let mut h = make();
            let (out, _) = h.send(input);
            assert_eq!(out, want, "input {input:?}");
        }
    }

    #[test]
    fn authorization_state_table() {
        let capa = "+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n\
                    RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\n\
                    IMPLEMENTATION mailgate\r\n.\r\n";
        run_table(
            H::auth,
            &[
                ("CAPA\r\n", capa),
                ("capa\r\n", capa),
                ("USER bob\r\n", "+OK send PASS\r\n"),
                ("user  bob \r\n", "+OK send PASS\r\n"),
                ("USER\r\n", "-ERR syntax error\r\n"),
                ("USER \r\n", "-ERR syntax error\r\n"),
                ("PASS secret\r\n", "-ERR USER first\r\n"),
                ("PASS\r\n", "-ERR syntax error\r\n"),
                (
                    "APOP bob 0123456789abcdef\r\n",
                    "-ERR APOP not supported\r\n",
                ),
                ("AUTH\r\n", "+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n"),
                (
                    "AUTH CRAM-MD5\r\n",
                    "-ERR Unsupported authentication mechanism\r\n",
                ),
                ("AUTH PLAIN\r\n", "+ \r\n"),
                ("AUTH PLAIN a b\r\n", "-ERR syntax error\r\n"),
                ("STAT\r\n", OUT_OF_STATE),
                ("LIST\r\n", OUT_OF_STATE),
                ("LIST 1\r\n", OUT_OF_STATE),
                ("RETR 1\r\n", OUT_OF_STATE),
                ("DELE 1\r\n", OUT_OF_STATE),
                ("NOOP\r\n", OUT_OF_STATE),
                ("RSET\r\n", OUT_OF_STATE),
                ("TOP 1 1\r\n", OUT_OF_STATE),
                ("UIDL\r\n", OUT_OF_STATE),
                ("UIDL 1\r\n", OUT_OF_STATE),
                ("STAT 1\r\n", "-ERR syntax error\r\n"),
                ("BOGUS\r\n", "-ERR unknown command\r\n"),
                ("\r\n", "-ERR unknown command\r\n"),
                (
                    "QUIT\r\n",
                    "+OK mail.example.test POP3 server signing off\r\n",
                ),
            ],
        );
    }

    #[test]
    fn plaintext_disallowed_table() {
        let disallowed = "-ERR [AUTH] Plaintext authentication disallowed, use STLS\r\n";
        let make = || H::new(params(true, false, false));
        run_table(
            make,
            &[
                (
                    "CAPA\r\n",
                    "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n\
                     AUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\nIMPLEMENTATION mailgate\r\n.\r\n",
                ),
                ("USER bob\r\n", disallowed),
                ("USER nosuchuser\r\n", disallowed),
                ("PASS secret\r\n", disallowed),
                ("AUTH PLAIN\r\n", disallowed),
                (&format!("AUTH PLAIN {PLAIN_BOB}\r\n"), disallowed),
                ("AUTH\r\n", "+OK SASL mechanisms follow\r\n.\r\n"),
                ("STLS\r\n", "+OK Begin TLS negotiation now\r\n"),
            ],
        );
        // Without STLS on offer there is no way in, and no events.
        let mut h = H::new(params(false, false, false));
        let (out, ev) = h.send("STLS\r\nUSER bob\r\nPASS secret\r\n");
        assert_eq!(
            out,
            format!("-ERR STLS not available\r\n{disallowed}{disallowed}")
        );
        assert!(ev.is_empty());
    }

    #[test]
    fn tls_active_table() {
        let make = || H::new(params(true, true, false));
        run_table(
            make,
            &[
                (
                    "CAPA\r\n",
                    "+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\n\
                     RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION mailgate\r\n.\r\n",
                ),
                ("STLS\r\n", "-ERR Command not permitted when TLS active\r\n"),
                ("USER bob\r\n", "+OK send PASS\r\n"),
            ],
        );
    }

    #[test]
    fn transaction_state_table() {
        let deleted1 = "-ERR message 1 already deleted\r\n";
        let no_such = "-ERR no such message, only 3 messages in maildrop\r\n";
        run_table(
            H::logged_in,
            &[
                ("STAT\r\n", "+OK 3 600\r\n"),
                ("LIST\r\n", "+OK 3 messages (600 octets)\r\n1 100\r\n2 200\r\n3 300\r\n.\r\n"),
                ("LIST 2\r\n", "+OK 2 200\r\n"),
                ("list 3\r\n", "+OK 3 300\r\n"),
                ("LIST 0\r\n", no_such),
                ("LIST 4\r\n", no_such),
                ("LIST x\r\n", "-ERR invalid number\r\n"),
                ("LIST -1\r\n", "-ERR invalid number\r\n"),
                ("LIST +1\r\n", "-ERR invalid number\r\n"),
                ("LIST 99999999999999999999999\r\n", "-ERR invalid number\r\n"),
                ("LIST 1 2\r\n", "-ERR syntax error\r\n"),
                ("UIDL\r\n", "+OK unique-id listing follows\r\n1 u1\r\n2 u2\r\n3 u3\r\n.\r\n"),
                ("UIDL 3\r\n", "+OK 3 u3\r\n"),
                ("UIDL 4\r\n", no_such),
                ("RETR 1\r\n", "+OK 100 octets\r\n"),
                ("RETR 4\r\n", no_such),
                ("RETR\r\n", "-ERR syntax error\r\n"),
                ("TOP 2 0\r\n", "+OK top of message follows\r\n"),
                ("TOP 2\r\n", "-ERR syntax error\r\n"),
                ("TOP 2 x\r\n", "-ERR invalid number\r\n"),
                ("TOP 2 -1\r\n", "-ERR invalid number\r\n"),
                ("TOP 2 99999999999999999999999\r\n", "+OK top of message follows\r\n"),
                ("TOP 9 1\r\n", no_such),
                ("DELE 1\r\n", "+OK message 1 deleted\r\n"),
                ("DELE 1\r\nDELE 1\r\n", "+OK message 1 deleted\r\n-ERR message 1 already deleted\r\n"),
                ("DELE 1\r\nRETR 1\r\n", &format!("+OK message 1 deleted\r\n{deleted1}")),
                ("DELE 1\r\nTOP 1 0\r\n", &format!("+OK message 1 deleted\r\n{deleted1}")),
                ("DELE 1\r\nLIST 1\r\n", &format!("+OK message 1 deleted\r\n{deleted1}")),
                ("DELE 1\r\nUIDL 1\r\n", &format!("+OK message 1 deleted\r\n{deleted1}")),
                ("DELE 1\r\nSTAT\r\n", "+OK message 1 deleted\r\n+OK 2 500\r\n"),
                (
                    "DELE 2\r\nLIST\r\nUIDL\r\n",
                    "+OK message 2 deleted\r\n+OK 2 messages (400 octets)\r\n1 100\r\n3 300\r\n.\r\n\
                     +OK unique-id listing follows\r\n1 u1\r\n3 u3\r\n.\r\n",
                ),
                (
                    "DELE 1\r\nDELE 3\r\nRSET\r\nSTAT\r\n",
                    "+OK message 1 deleted\r\n+OK message 3 deleted\r\n\
                     +OK maildrop has 3 messages (600 octets)\r\n+OK 3 600\r\n",
                ),
                ("NOOP\r\n", "+OK\r\n"),
                ("NOOP x\r\n", "-ERR syntax error\r\n"),
                (
                    "CAPA\r\n",
                    "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n\
                     AUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION mailgate\r\n.\r\n",
                ),
                ("USER bob\r\n", OUT_OF_STATE),
                ("PASS secret\r\n", OUT_OF_STATE),
                ("APOP bob x\r\n", OUT_OF_STATE),
                ("AUTH PLAIN\r\n", OUT_OF_STATE),
                ("AUTH\r\n", OUT_OF_STATE),
                ("STLS\r\n", OUT_OF_STATE),
                ("HELO\r\n", "-ERR unknown command\r\n"),
                ("QUIT\r\n", ""),
            ],
        );
    }

    #[test]
    fn retr_and_top_emit_send_and_hold_pipelined_commands() {
        let mut h = H::logged_in();
        let (out, ev) = h.send("RETR 1\r\nTOP 3 5\r\nSTAT\r\n");
        assert_eq!(out, "+OK 100 octets\r\n");
        assert_eq!(
            ev,
            vec![Pop3Event::Send {
                index: 0,
                path: "new/a".into(),
                body_lines: None
            }]
        );
        assert!(!h.s.wants_input());
        let (out, ev) = h.with(|s, o, e| s.send_done(o, e));
        assert_eq!(out, "+OK top of message follows\r\n");
        assert_eq!(
            ev,
            vec![Pop3Event::Send {
                index: 2,
                path: "cur/c:2,S".into(),
                body_lines: Some(5)
            }]
        );
        let (out, ev) = h.with(|s, o, e| s.send_done(o, e));
        assert_eq!(out, "+OK 3 600\r\n");
        assert!(ev.is_empty());
        assert!(h.s.wants_input());
        // A stray completion changes nothing.
        let (out, ev) = h.with(|s, o, e| s.send_done(o, e));
        assert_eq!((out.as_str(), ev.len()), ("", 0));
    }

    #[test]
    fn quit_commits_deleted_and_retrieved() {
        let mut h = H::logged_in();
        let (out, ev) = h.send("RETR 2\r\n");
        assert_eq!(out, "+OK 200 octets\r\n");
        assert_eq!(ev.len(), 1);
        h.with(|s, o, e| s.send_done(o, e));
        // TOP does not mark as retrieved; a retrieved then deleted one is deleted.
        let (_, _) = h.send("TOP 1 0\r\n");
        h.with(|s, o, e| s.send_done(o, e));
        let (_, _) = h.send("RETR 3\r\n");
        h.with(|s, o, e| s.send_done(o, e));
        let (out, ev) = h.send("DELE 3\r\nQUIT\r\nSTAT\r\n");
        assert_eq!(out, "+OK message 3 deleted\r\n");
        let all = listing();
        assert_eq!(
            ev,
            vec![Pop3Event::Commit {
                deleted: vec![all[2].clone()],
                retrieved: vec![all[1].clone()],
            }]
        );
        assert!(!h.s.wants_input());
        let (out, ev) = h.with(|s, o, e| s.commit_done(true, o, e));
        assert_eq!(out, "+OK mail.example.test POP3 server signing off\r\n");
        assert_eq!(ev, vec![Pop3Event::Close]);
        assert!(h.s.is_closed());
        let (out, ev) = h.send("STAT\r\n");
        assert_eq!((out.as_str(), ev.len()), ("", 0));
    }

    #[test]
    fn failed_commit_says_so() {
        let mut h = H::logged_in();
        let (_, ev) = h.send("QUIT\r\n");
        assert_eq!(
            ev,
            vec![Pop3Event::Commit {
                deleted: vec![],
                retrieved: vec![]
            }]
        );
        let (out, ev) = h.with(|s, o, e| s.commit_done(false, o, e));
        assert_eq!(out, "-ERR [SYS/TEMP] some deleted messages not removed\r\n");
        assert_eq!(ev, vec![Pop3Event::Close]);
    }

    #[test]
    fn quit_in_authorization_closes_without_commit() {
        let mut h = H::auth();
        let (out, ev) = h.send("USER bob\r\nQUIT\r\nCAPA\r\n");
        assert_eq!(
            out,
            "+OK send PASS\r\n+OK mail.example.test POP3 server signing off\r\n"
        );
        assert_eq!(ev, vec![Pop3Event::Close]);
        assert!(h.s.is_closed());
    }

    #[test]
    fn dropped_connection_and_timeout_commit_nothing() {
        let mut h = H::logged_in();
        let (_, ev) = h.send("DELE 1\r\nDELE 2\r\n");
        assert!(ev.is_empty());
        let (out, _) = h.with(|s, o, _| s.timed_out(o));
        assert_eq!(out, "-ERR autologout: idle for too long\r\n");
        assert!(h.s.is_closed());
        assert!(!h.s.wants_input());
        // Mid-message, the timeout writes nothing.
        let mut h = H::logged_in();
        h.send("RETR 1\r\n");
        let (out, _) = h.with(|s, o, _| s.timed_out(o));
        assert_eq!(out, "");
        let (out, ev) = h.with(|s, o, e| s.send_done(o, e));
        assert_eq!((out.as_str(), ev.len()), ("", 0));
    }

    #[test]
    fn send_failed_closes_without_commit() {
        let mut h = H::logged_in();
        h.send("DELE 2\r\nRETR 1\r\nQUIT\r\n");
        let (out, ev) = h.with(|s, _, e| s.send_failed(e));
        assert_eq!(out, "");
        assert_eq!(ev, vec![Pop3Event::Close]);
        assert!(h.s.is_closed());
    }

    #[test]
    fn login_failures() {
        let mut h = H::auth();
        for round in 1..=3u32 {
            let (out, ev) = h.send("USER bob\r\nPASS wrong\r\n");
            assert_eq!(out, "+OK send PASS\r\n");
            assert_eq!(ev.len(), 1);
            let (out, ev) = h.with(|s, o, e| s.login_failed(LoginFailure::BadCredentials, o, e));
            assert_eq!(h.s.failed_logins(), round);
            if round < 3 {
                assert_eq!(out, "-ERR [AUTH] Authentication failed\r\n");
                assert!(ev.is_empty());
            } else {
                assert_eq!(out, "-ERR [AUTH] too many failures\r\n");
                assert_eq!(ev, vec![Pop3Event::Close]);
                assert!(h.s.is_closed());
            }
        }

        for (why, want) in [
            (
                LoginFailure::InUse,
                "-ERR [IN-USE] Mailbox is locked by another session\r\n",
            ),
            (
                LoginFailure::Temporary,
                "-ERR [SYS/TEMP] Temporary server failure, try again later\r\n",
            ),
        ] {
            let mut h = H::auth();
            h.send(&format!("AUTH PLAIN {PLAIN_BOB}\r\n"));
            let (out, ev) = h.with(|s, o, e| s.login_failed(why, o, e));
            assert_eq!(out, want);
            assert!(ev.is_empty());
            assert_eq!(h.s.failed_logins(), 0);
            // Still in AUTHORIZATION: a new attempt works.
            let (out, _) = h.send("USER bob\r\n");
            assert_eq!(out, "+OK send PASS\r\n");
        }
    }

    #[test]
    fn login_completion_answers_pipelined_commands() {
        let mut h = H::auth();
        let (out, ev) = h.send("USER bob\r\nPASS secret\r\nSTAT\r\nLIST 2\r\nQUIT\r\n");
        assert_eq!(out, "+OK send PASS\r\n");
        assert_eq!(ev.len(), 1);
        assert!(!h.s.wants_input());
        let (out, ev) = h.with(|s, o, e| s.login_ok("bob".into(), listing(), o, e));
        assert_eq!(
            out,
            "+OK bob has 3 messages (600 octets)\r\n+OK 3 600\r\n+OK 2 200\r\n"
        );
        assert!(matches!(ev.as_slice(), [Pop3Event::Commit { .. }]));
        // After a failure, pipelined commands meet AUTHORIZATION.
        let mut h = H::auth();
        h.send("USER bob\r\nPASS wrong\r\nSTAT\r\n");
        let (out, _) = h.with(|s, o, e| s.login_failed(LoginFailure::BadCredentials, o, e));
        assert_eq!(
            out,
            format!("-ERR [AUTH] Authentication failed\r\n{OUT_OF_STATE}")
        );
    }

    #[test]
    fn password_keeps_spaces_and_utf8() {
        for (line, password) in [
            ("PASS my secret \r\n", "my secret "),
            ("PASS  x\r\n", " x"),
            ("PASS pässwörd\r\n", "pässwörd"),
            ("PASS \r\n", ""),
        ] {
            let mut h = H::auth();
            h.send("USER bob\r\n");
            let (_, ev) = h.send(line);
            assert_eq!(
                ev,
                vec![Pop3Event::Authenticate {
                    user: "bob".into(),
                    password: password.into()
                }],
                "{line:?}"
            );
        }
    }

    #[test]
    fn sasl_plain_table() {
        let bob = || Pop3Event::Authenticate {
            user: "bob".into(),
            password: "secret".into(),
        };
        let invalid = "-ERR Invalid PLAIN response\r\n";
        // (initial response, expected reply, expected event)
        let rows: Vec<(String, &str, Option<Pop3Event>)> = vec![
            (PLAIN_BOB.into(), "", Some(bob())),
            (b64(b"bob\0bob\0secret"), "", Some(bob())),
            (b64(b"BOB\0bob\0secret"), "", Some(bob())),
            ("AGJvYgBzZWNyZXQ".into(), "", Some(bob())), // padding dropped
            (
                b64(b"alice\0bob\0secret"),
                "-ERR [AUTH] Authorization identity not permitted\r\n",
                None,
            ),
            (
                b64(b"\0bob\0sec ret\xc3\xa9"),
                "",
                Some(Pop3Event::Authenticate {
                    user: "bob".into(),
                    password: "sec reté".into(),
                }),
            ),
            ("!!!!".into(), "-ERR Invalid base64 data\r\n", None),
            (
                "AGJvYgBzZWNyZXQ=x".into(),
                "-ERR Invalid base64 data\r\n",
                None,
            ),
            ("=".into(), invalid, None),
            (b64(b"bob\0secret"), invalid, None),
            (b64(b"\0bob\0sec\0ret"), invalid, None),
            (b64(b"\0\0secret"), invalid, None),
            (b64(b"\0b\xffb\0secret"), invalid, None),
            ("*".into(), "-ERR Authentication cancelled\r\n", None),
        ];
        for (response, want, event) in rows {
            // Inline initial response.
            let mut h = H::auth();
            let (out, ev) = h.send(&format!("AUTH PLAIN {response}\r\n"));
            assert_eq!(out, want, "inline {response:?}");
            assert_eq!(ev, event.clone().into_iter().collect::<Vec<_>>());
            // After the "+ " continuation.
            let mut h = H::auth();
            let (out, _) = h.send("auth plain\r\n");
            assert_eq!(out, "+ \r\n");
            let (out, ev) = h.send(&format!("{response}\r\n"));
            assert_eq!(out, want, "continued {response:?}");
            assert_eq!(ev, event.into_iter().collect::<Vec<_>>());
            if want.starts_with("-ERR") {
                // Back in AUTHORIZATION.
                let (out, _) = h.send("USER bob\r\n");
                assert_eq!(out, "+OK send PASS\r\n");
            }
        }
    }

    #[test]
    fn sasl_continuation_hostile_lines() {
        for (line, want) in [
            (
                b"AGJv\0YgBzZWNyZXQ=\r\n".to_vec(),
                "-ERR invalid characters in command\r\n",
            ),
            (
                [vec![b'A'; 2000], b"\r\n".to_vec()].concat(),
                "-ERR line too long\r\n",
            ),
        ] {
            let mut h = H::auth();
            h.send("AUTH PLAIN\r\n");
            let (out, ev) = h.send_bytes(&line);
            assert_eq!(out, want);
            assert!(ev.is_empty());
            let (out, _) = h.send("USER bob\r\n");
            assert_eq!(out, "+OK send PASS\r\n");
        }
        // A long but bounded continuation is accepted (beyond 255 octets).
        let long = b64(&[b"\0bob\0".as_slice(), &[b'p'; 400]].concat());
        let mut h = H::auth();
        h.send("AUTH PLAIN\r\n");
        let (out, ev) = h.send(&format!("{long}\r\n"));
        assert_eq!(out, "");
        assert_eq!(ev.len(), 1);
    }

    #[test]
    fn stls_discards_pipelined_plaintext() {
        let mut h = H::new(params(true, false, false));
        let (out, ev) = h.send("STLS\r\nUSER evil\r\nPASS x\r\n");
        assert_eq!(out, "+OK Begin TLS negotiation now\r\n");
        assert_eq!(ev, vec![Pop3Event::StartTls]);
        assert!(!h.s.wants_input());
        // Plaintext arriving before the handshake completes is dropped too.
        h.send("CAPA\r\n");
        let (out, ev) = h.with(|s, o, e| s.tls_started(o, e));
        assert_eq!((out.as_str(), ev.len()), ("", 0));
        let (out, _) = h.send("STLS\r\nUSER bob\r\n");
        assert_eq!(
            out,
            "-ERR Command not permitted when TLS active\r\n+OK send PASS\r\n"
        );
        let (_, ev) = h.send("PASS secret\r\n");
        assert_eq!(ev.len(), 1);
    }

    #[test]
    fn stls_forgets_user() {
        let mut h = H::auth();
        h.send("USER bob\r\nSTLS\r\n");
        h.with(|s, o, e| s.tls_started(o, e));
        let (out, ev) = h.send("PASS secret\r\n");
        assert_eq!(out, "-ERR USER first\r\n");
        assert!(ev.is_empty());
    }

    #[test]
    fn line_limits() {
        let mut h = H::auth();
        // 253 octets + CRLF = 255: the longest command (RFC 2449 4).
        let max = format!("USER {}\r\n", "a".repeat(248));
        assert_eq!(max.len(), MAX_COMMAND_LINE);
        let (out, _) = h.send(&max);
        assert_eq!(out, "+OK send PASS\r\n");
        let over = format!("USER {}\r\n", "a".repeat(249));
        let (out, _) = h.send(&over);
        assert_eq!(out, "-ERR line too long\r\n");
        // A bare-LF line of 255 octets is also fine.
        let (out, _) = h.send(&format!("USER {}\n", "a".repeat(249)));
        assert_eq!(out, "+OK send PASS\r\n");

        // A huge line streamed in: memory stays bounded, one reply at its end.
        let mut h = H::auth();
        for _ in 0..100 {
            let (out, _) = h.send(&"A".repeat(1000));
            assert_eq!(out, "");
            assert!(h.s.input.buffered() < MAX_COMMAND_LINE);
            assert!(h.s.wants_input());
        }
        let (out, _) = h.send("AAAA\r\nCAPA\r\n");
        assert!(out.starts_with("-ERR line too long\r\n+OK Capability list follows\r\n"));
    }

    #[test]
    fn hostile_junk() {
        let invalid = "-ERR invalid characters in command\r\n";
        let rows: &[(&[u8], &str)] = &[
            (b"CAPA\n", "+OK Capability list follows\r\n"),
            (b"US\0ER bob\r\n", invalid),
            (b"USER b\xffb\r\n", invalid),
            (b"USER bob\x1b[31m\r\n", invalid),
            (b"CA\rPA\r\n", invalid),
            (b"USER bob\r\r\n", invalid),
            (b"USER \xc2\x85\r\n", invalid), // C1 NEL
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", invalid), // TLS hello
            (b"GET / HTTP/1.1\r\n", "-ERR unknown command\r\n"),
            (b"USER\tbob\r\n", invalid),
        ];
        for &(input, want) in rows {
            let mut h = H::auth();
            let (out, ev) = h.send_bytes(input);
            assert!(out.starts_with(want), "{input:?}: {out:?}");
            assert!(ev.is_empty());
        }
    }

    #[test]
    fn too_many_errors_closes() {
        let mut h = H::logged_in();
        let (out, ev) = h.send(&"BOGUS\r\n".repeat(12));
        let want = format!(
            "{}-ERR too many errors\r\n",
            "-ERR unknown command\r\n".repeat(10)
        );
        assert_eq!(out, want);
        assert_eq!(ev, vec![Pop3Event::Close], "no Commit: errors are no QUIT");
        assert!(h.s.is_closed());
    }

    /// Plays a script with a driver that completes every event at once;
    /// returns the whole transcript of replies and the events seen.
    fn play(chunks: &[&[u8]]) -> (String, Vec<Pop3Event>) {
        let mut s = Pop3Session::new(params(true, false, true));
        let mut out = Vec::new();
        let mut seen = Vec::new();
        s.greeting(&mut out);
        for chunk in chunks {
            let mut events = Vec::new();
            s.receive(chunk, &mut out, &mut events);
            while !events.is_empty() {
                let mut next = Vec::new();
                for event in events.drain(..) {
                    match &event {
                        Pop3Event::Authenticate { password, .. } if password == "secret" => {
                            s.login_ok("bob".into(), listing(), &mut out, &mut next)
                        }
                        Pop3Event::Authenticate { .. } => {
                            s.login_failed(LoginFailure::BadCredentials, &mut out, &mut next)
                        }
                        Pop3Event::StartTls => s.tls_started(&mut out, &mut next),
                        Pop3Event::Send { index, .. } => {
                            out.extend_from_slice(format!("<body {index}>\r\n.\r\n").as_bytes());
                            s.send_done(&mut out, &mut next)
                        }
                        Pop3Event::Commit { .. } => s.commit_done(true, &mut out, &mut next),
                        Pop3Event::Close => {}
                    }
                    seen.push(event);
                }
                events = next;
            }
        }
        (String::from_utf8(out).unwrap(), seen)
    }

    const SCRIPT: &str = "CAPA\r\nUSER bob\r\nPASS wrong\r\nAUTH PLAIN\r\nAGJvYgBzZWNyZXQ=\r\n\
                          STAT\r\nLIST\nUIDL 2\r\nRETR 1\r\nTOP 2 1\r\nDELE 3\r\nNOOP\r\n\
                          BOGUS\r\nQUIT\r\nNOOP\r\n";

    #[test]
    fn script_transcript() {
        let (out, events) = play(&[SCRIPT.as_bytes()]);
        let want = "+OK mail.example.test POP3 server ready\r\n\
            +OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\n\
            AUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\nIMPLEMENTATION mailgate\r\n.\r\n\
            +OK send PASS\r\n-ERR [AUTH] Authentication failed\r\n+ \r\n\
            +OK bob has 3 messages (600 octets)\r\n+OK 3 600\r\n\
            +OK 3 messages (600 octets)\r\n1 100\r\n2 200\r\n3 300\r\n.\r\n+OK 2 u2\r\n\
            +OK 100 octets\r\n<body 0>\r\n.\r\n+OK top of message follows\r\n<body 1>\r\n.\r\n\
            +OK message 3 deleted\r\n+OK\r\n-ERR unknown command\r\n\
            +OK mail.example.test POP3 server signing off\r\n";
        assert_eq!(out, want);
        let all = listing();
        assert!(events.contains(&Pop3Event::Commit {
            deleted: vec![all[2].clone()],
            retrieved: vec![all[0].clone()],
        }));
        assert_eq!(events.last(), Some(&Pop3Event::Close));
    }

    #[test]
    fn script_split_anywhere_gives_same_transcript() {
        let bytes = SCRIPT.as_bytes();
        let whole = play(&[bytes]);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(play(&bytewise), whole);
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            assert_eq!(play(&[a, b]), whole, "split at {i}");
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let long = "A".repeat(300);
        let pieces: Vec<&[u8]> = vec![
            b"USER bob",
            b"PASS secret",
            b"PASS x",
            b"AUTH PLAIN",
            b"AUTH PLAIN ",
            PLAIN_BOB.as_bytes(),
            b"*",
            b"=",
            b"STAT",
            b"LIST",
            b"LIST 2",
            b"LIST 0",
            b"RETR 1",
            b"RETR 9",
            b"TOP 1 0",
            b"TOP 2 99999999999999999999",
            b"DELE 2",
            b"RSET",
            b"UIDL",
            b"UIDL 3",
            b"QUIT",
            b"STLS",
            b"CAPA",
            b"NOOP",
            b"AUTH",
            b"APOP",
            b" ",
            b"\r\n",
            b"\r\n",
            b"\r\n",
            b"\n",
            b"\r",
            b"\0",
            b"\xff",
            b"\xc3",
            b".",
            long.as_bytes(),
        ];
        let (mut sends, mut commits) = (0, 0);
        for _ in 0..5000 {
            let mut s = Pop3Session::new(params(next() % 2 == 0, next() % 3 == 0, next() % 2 == 0));
            let mut out = Vec::new();
            s.greeting(&mut out);
            let mut input = Vec::new();
            if next() % 2 == 0 {
                input.extend_from_slice(b"USER bob\r\nPASS secret\r\n");
            }
            for _ in 0..(next() % 40) {
                if next() % 10 == 0 {
                    input.push(next() as u8);
                }
                input.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
                match next() % 8 {
                    0 => input.push(b'\n'),
                    1 => {}
                    _ => input.extend_from_slice(b"\r\n"),
                }
            }
            let mut rest = &input[..];
            let mut pending: Vec<Pop3Event> = Vec::new();
            while !rest.is_empty() || !pending.is_empty() {
                let mut events = Vec::new();
                let was_closed = s.is_closed();
                let before = out.len();
                if !rest.is_empty() && (pending.is_empty() || next() % 4 == 0) {
                    let n = 1 + (next() % 64) as usize;
                    let (a, b) = rest.split_at(n.min(rest.len()));
                    rest = b;
                    s.receive(a, &mut out, &mut events);
                } else if let Some(event) = pending.pop() {
                    match event {
                        Pop3Event::Authenticate { .. } => match next() % 5 {
                            0 | 4 => s.login_ok("bob".into(), listing(), &mut out, &mut events),
                            1 => s.login_failed(LoginFailure::InUse, &mut out, &mut events),
                            2 => s.login_failed(LoginFailure::Temporary, &mut out, &mut events),
                            _ => {
                                s.login_failed(LoginFailure::BadCredentials, &mut out, &mut events)
                            }
                        },
                        Pop3Event::StartTls => s.tls_started(&mut out, &mut events),
                        Pop3Event::Send { index, .. } => {
                            assert!(index < 3);
                            if next() % 10 == 0 {
                                s.send_failed(&mut events)
                            } else {
                                s.send_done(&mut out, &mut events)
                            }
                        }
                        Pop3Event::Commit { .. } => {
                            s.commit_done(next() % 2 == 0, &mut out, &mut events)
                        }
                        Pop3Event::Close => {}
                    }
                }
                if next() % 50 == 0 {
                    s.timed_out(&mut out);
                }
                if was_closed {
                    assert_eq!(out.len(), before, "no output once closed");
                }
                assert!(out.is_empty() || out.ends_with(b"\r\n"));
                assert!(s.input.buffered() <= MAX_BUFFERED_INPUT_HARD);
                for e in &events {
                    sends += usize::from(matches!(e, Pop3Event::Send { .. }));
                    commits += usize::from(matches!(e, Pop3Event::Commit { .. }));
                }
                pending.extend(events.into_iter().filter(|e| *e != Pop3Event::Close));
                // At most one event is ever outstanding.
                assert!(pending.len() <= 1);
            }
        }
        // The junk reached the TRANSACTION and UPDATE states often enough.
        assert!(
            sends > 20 && commits > 20,
            "sends {sends}, commits {commits}"
        );
    }
}
