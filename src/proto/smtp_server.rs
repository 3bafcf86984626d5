//! The SMTP server side (RFC 5321), sans-IO, with the extensions mailgate
//! speaks: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152),
//! ENHANCEDSTATUSCODES (RFC 2034, codes from RFC 3463), SMTPUTF8
//! (RFC 6531), CHUNKING/BINARYMIME (RFC 3030), STARTTLS (RFC 3207) and
//! AUTH PLAIN/LOGIN (RFC 4954).
//!
//! Owns: the session state machine (one `State` enum, one dispatch
//! `match`), envelope checks (sequence, relay policy, recipient limits,
//! sizes), reply texts and codes, and the error caps.
//! Must not: touch sockets, files, TLS, clocks or threads. Bytes come in
//! through [`SmtpSession::receive`]; replies go out into the caller's
//! buffer; anything that needs the outside world (storing a message,
//! checking a password, the TLS handshake, closing) is an [`Event`], and
//! the session waits for the driver's answer before reading on.
//! Framing (line limits, bare LF/CR, CRLF.CRLF) is `line.rs`'s job;
//! path syntax is `address.rs`'s.
//!
//! Driver contract, in short:
//! 1. `greeting()` on accept; then feed every read to `receive()`, but
//!    only while `wants_input()` is true (backpressure: while a delivery,
//!    an authentication or the TLS handshake is pending, the session holds
//!    at most what was already given to it).
//! 2. After each call, write `out` and carry out `events` in order:
//!    `Deliver` -> store, then `delivered()`; `Authenticate` -> check,
//!    then `auth_result()`; `StartTls` -> flush `out`, handshake, then
//!    `tls_started()`; `Close` -> flush `out`, close.
//! 3. `timed_out()` / `shutting_down()` write a 421; when `is_closed()`
//!    turns true, flush and close (no `Close` event comes from them).

use std::net::IpAddr;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use super::address::{self, AddrError, Mailbox, Path};
pub use super::envelope::{DeliveryOutcome, Recipient, Resolution, Transaction};
use super::line::{Body, Frame, Framer, MAX_COMMAND_LINE, MAX_SASL_LINE};
use super::sasl::{self, PlainError};

/// Replies of 5xx to commands before the session is closed with 421
/// 4.7.0 (a brake on dictionary attacks and confused clients; Postfix
/// has `smtpd_hard_error_limit` for the same reason).
pub const MAX_ERRORS: u32 = 10;
/// Failed AUTH attempts before 421 4.7.0 (RFC 4954 4 lets the server
/// close after repeated failures).
pub const MAX_AUTH_FAILURES: u32 = 3;
/// NOOP, RSET, VRFY, EXPN and HELP an unauthenticated session may give
/// before it is closed with 421 4.7.0: answered commands that move no
/// mail must not keep a connection slot forever (Postfix's
/// `smtpd_junk_command_limit`, default 100).
pub const MAX_JUNK_COMMANDS: u32 = 100;

/// Base64 for SASL (RFC 4954 4): standard alphabet; padding accepted with
/// or without, as clients differ.
const SASL_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Which listener the client came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Port 25: mail for local domains from anyone.
    Mx,
    /// Port 587 (RFC 6409): AUTH required before MAIL.
    Submission,
    /// Port 465 (RFC 8314): like submission, TLS from the first byte.
    Smtps,
}

#[derive(Debug, Clone)]
pub struct SessionParams {
    pub hostname: String,
    pub peer: IpAddr,
    pub role: Role,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// The peer is in `relay_networks`.
    pub relay_allowed: bool,
    /// Implicit TLS (smtps) is already up.
    pub tls_active: bool,
    /// A certificate exists, so STARTTLS can be offered.
    pub starttls_available: bool,
    /// `allow_plaintext_auth = yes`, or the peer is loopback.
    pub plaintext_auth_allowed: bool,
}

/// What the core needs of the config (implemented for `config::Config`
/// by the driver side).
pub trait Recipients {
    /// Is `domain` (lower-case) one of ours?
    fn is_local_domain(&self, domain: &str) -> bool;
    /// Where mail for `address` goes; `None`: a local domain without such
    /// a user (550 5.1.1).
    fn resolve(&self, address: &str) -> Option<Resolution>;
    /// The domain whose postmaster receives `RCPT TO:<Postmaster>`
    /// (RFC 5321 4.1.1.3); typically the first local domain. When `None`,
    /// the server's hostname is used if it is a local domain.
    fn postmaster_domain(&self) -> Option<String> {
        None
    }
}

/// What the driver must do for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Store this message; the session waits until `delivered()`.
    Deliver(Transaction),
    /// The 220 is in `out`: flush it, do the TLS handshake, then call
    /// `tls_started()`.
    StartTls,
    /// Check these credentials; the session waits until `auth_result()`.
    Authenticate { username: String, password: String },
    /// Flush `out`, then close the connection.
    Close,
}

/// `BODY=` on MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// The envelope being built between MAIL and the end of the data.
#[derive(Debug)]
struct Envelope {
    reverse_path: String,
    recipients: Vec<Recipient>,
    smtputf8: bool,
    body: BodyType,
    /// A BDAT chunk was accepted: no DATA in this transaction (RFC 3030 2).
    chunking: bool,
}

/// A SASL exchange waiting for the client's next response line.
#[derive(Debug)]
enum Sasl {
    Plain,
    LoginUser,
    LoginPassword { username: String },
}

#[derive(Debug)]
enum State {
    /// Reading commands.
    Command,
    /// Reading a SASL response line (RFC 4954 4).
    Sasl(Sasl),
    /// Reading a DATA body up to CRLF.CRLF.
    Data,
    /// Reading a BDAT chunk of `size` octets; `refused` holds the reply for
    /// a chunk that is read only to be thrown away (RFC 3030 2: the octets
    /// are consumed even when the command fails).
    Chunk {
        size: u64,
        last: bool,
        refused: Option<Reply>,
    },
    WaitDelivery,
    WaitAuth {
        username: String,
    },
    WaitTls,
    Closed,
}

/// One reply, possibly multi-line.
#[derive(Debug)]
struct Reply {
    code: u16,
    /// RFC 3463 code, or "" (greeting-like replies: EHLO, 334, 354).
    enhanced: &'static str,
    lines: Vec<String>,
    /// Counts towards `MAX_ERRORS`.
    counts: bool,
}

impl Reply {
    fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
            counts: code >= 500,
        }
    }

    /// A 5xx that is not the client's protocol error (e.g. a refused
    /// message): not counted.
    fn uncounted(mut self) -> Reply {
        self.counts = false;
        self
    }

    fn write(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, text) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let line = if self.enhanced.is_empty() {
                format!("{}{sep}{text}\r\n", self.code)
            } else {
                format!("{}{sep}{} {text}\r\n", self.code, self.enhanced)
            };
            out.extend_from_slice(line.as_bytes());
        }
    }
}

/// Handlers return `Err(reply)` to refuse early with `?`.
type Handled = Result<Option<Reply>, Reply>;

fn syntax(usage: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("Syntax: {usage}"))
}

fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, "5.5.1", format!("Error: {text}"))
}

/// `s` without the case-insensitive ASCII `prefix`.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Text from the driver, made safe for a reply line.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[derive(Debug, Default)]
struct MailParams {
    size: Option<u64>,
    body: BodyType,
    smtputf8: bool,
}

/// RFC 5321 4.1.2 Mail-parameters, the ones our EHLO advertises.
fn parse_mail_params(text: &str) -> Result<MailParams, Reply> {
    let mut params = MailParams::default();
    let mut seen: Vec<String> = Vec::new();
    for param in text.split(' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let key = key.to_ascii_uppercase();
        if seen.contains(&key) {
            return Err(Reply::new(
                501,
                "5.5.4",
                format!("Error: duplicate parameter {key}"),
            ));
        }
        match (key.as_str(), value) {
            // RFC 1870: SIZE=1*20DIGIT.
            ("SIZE", Some(v))
                if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                params.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => params.body = BodyType::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                params.body = BodyType::EightBitMime
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("BINARYMIME") => {
                params.body = BodyType::BinaryMime
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            // RFC 4954 5: AUTH=<> or AUTH=xtext; we trust our own AUTH
            // state only, so the value is ignored.
            ("AUTH", Some(_)) => {}
            ("SIZE" | "BODY" | "SMTPUTF8" | "AUTH", _) => {
                return Err(Reply::new(
                    501,
                    "5.5.4",
                    format!("Error: bad value for {key}"),
                ));
            }
            _ => {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    "Error: unsupported MAIL parameter",
                ))
            }
        }
        seen.push(key);
    }
    Ok(params)
}

/// Reply for a refused path; `enhanced` is 5.1.7 (sender) or 5.1.3
/// (recipient), RFC 3463.
fn address_error(err: AddrError, enhanced: &'static str) -> Reply {
    match err {
        AddrError::Syntax(t) | AddrError::TooLong(t) => {
            Reply::new(501, enhanced, format!("Bad address syntax: {t}"))
        }
        AddrError::Forbidden(t) => Reply::new(553, enhanced, format!("Address not allowed: {t}")),
    }
}

/// RFC 6531 3.7.4.2 style refusal of UTF-8 without SMTPUTF8.
fn utf8_refused() -> Reply {
    Reply::new(553, "5.6.7", "Error: UTF-8 address requires SMTPUTF8")
}

#[derive(Debug)]
pub struct SmtpSession {
    params: SessionParams,
    state: State,
    framer: Framer,
    body: Body,
    /// Input received while waiting for the driver; processed on resume.
    held: Vec<u8>,
    helo: Option<String>,
    /// The client said EHLO (not HELO).
    esmtp: bool,
    tls_active: bool,
    auth_user: Option<String>,
    /// NOOP/RSET/VRFY/EXPN/HELP so far, counted before AUTH.
    junk_commands: u32,
    envelope: Option<Envelope>,
    errors: u32,
    auth_failures: u32,
    /// `shutting_down()` came while waiting: close after that reply.
    shutdown_pending: bool,
}

impl SmtpSession {
    pub fn new(params: SessionParams) -> Self {
        SmtpSession {
            tls_active: params.tls_active,
            params,
            state: State::Command,
            framer: Framer::new(),
            body: Body::default(),
            held: Vec::new(),
            helo: None,
            esmtp: false,
            auth_user: None,
            junk_commands: 0,
            envelope: None,
            errors: 0,
            auth_failures: 0,
            shutdown_pending: false,
        }
    }

    /// The 220 greeting (RFC 5321 4.2).
    pub fn greeting(&mut self, out: &mut Vec<u8>) {
        Reply::new(220, "", format!("{} ESMTP mailgate", self.params.hostname)).write(out);
    }

    /// Bytes from the client.
    pub fn receive(
        &mut self,
        input: &[u8],
        rcpts: &dyn Recipients,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        match self.state {
            // Plaintext sent before the TLS handshake is thrown away
            // (RFC 3207 4.2, the STARTTLS command injection fix).
            State::Closed | State::WaitTls => {}
            State::WaitDelivery | State::WaitAuth { .. } => self.held.extend_from_slice(input),
            _ => self.process(input, rcpts, out, events),
        }
    }

    /// The answer to `Event::Deliver`: writes the reply to the end of the
    /// data, resets the transaction, and reads on in held input.
    pub fn delivered(
        &mut self,
        outcome: DeliveryOutcome,
        rcpts: &dyn Recipients,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        if !matches!(self.state, State::WaitDelivery) {
            return;
        }
        self.state = State::Command;
        let reply = match outcome {
            DeliveryOutcome::Accepted { queue_id } => Reply::new(
                250,
                "2.0.0",
                format!("Ok: queued as {}", sanitize(&queue_id)),
            ),
            DeliveryOutcome::TempFail {
                code,
                enhanced,
                text,
            } => {
                let code = if (400..500).contains(&code) {
                    code
                } else {
                    451
                };
                Reply::new(code, enhanced, sanitize(&text))
            }
            DeliveryOutcome::PermFail {
                code,
                enhanced,
                text,
            } => {
                let code = if (500..600).contains(&code) {
                    code
                } else {
                    554
                };
                Reply::new(code, enhanced, sanitize(&text))
            }
        };
        reply.uncounted().write(out);
        self.resume(rcpts, out, events);
    }

    /// The answer to `Event::Authenticate`.
    pub fn auth_result(
        &mut self,
        ok: bool,
        rcpts: &dyn Recipients,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        if !matches!(self.state, State::WaitAuth { .. }) {
            return;
        }
        let State::WaitAuth { username } = std::mem::replace(&mut self.state, State::Command)
        else {
            return;
        };
        if ok {
            self.auth_user = Some(username);
            Reply::new(235, "2.7.0", "Authentication successful").write(out);
        } else {
            self.auth_failed(out, events);
        }
        self.resume(rcpts, out, events);
    }

    /// The TLS handshake after STARTTLS is done. RFC 3207 4.2: forget
    /// everything learnt from the client before it (EHLO, AUTH, the
    /// envelope) and anything it pipelined in plaintext.
    pub fn tls_started(&mut self, _out: &mut Vec<u8>, _events: &mut Vec<Event>) {
        if !matches!(self.state, State::WaitTls) {
            return;
        }
        self.tls_active = true;
        self.helo = None;
        self.esmtp = false;
        self.auth_user = None;
        self.envelope = None;
        self.held = Vec::new();
        self.framer = Framer::new();
        self.body = Body::default();
        self.state = State::Command;
    }

    /// The client was silent too long (RFC 5321 4.5.3.2). Not meant for
    /// a session waiting on the driver (that silence is ours).
    pub fn timed_out(&mut self, out: &mut Vec<u8>) {
        if matches!(self.state, State::Closed) {
            return;
        }
        Reply::new(
            421,
            "4.4.2",
            format!("{} Error: timeout exceeded", self.params.hostname),
        )
        .write(out);
        self.state = State::Closed;
        self.held = Vec::new();
    }

    /// The server is stopping. While a delivery or an authentication is
    /// pending, its reply is written first and the 421 follows it (then a
    /// `Close` event comes from `delivered()` / `auth_result()`). A client
    /// in the middle of DATA is cut off at once: to let transactions
    /// finish, call this when `in_transaction()` is false or the grace
    /// period is over.
    pub fn shutting_down(&mut self, out: &mut Vec<u8>) {
        match self.state {
            State::Closed => {}
            State::WaitDelivery | State::WaitAuth { .. } => self.shutdown_pending = true,
            _ => {
                self.shutdown_reply(out);
                self.state = State::Closed;
                self.held = Vec::new();
            }
        }
    }

    /// False while waiting for the driver (delivery, password check) with
    /// input already held, and once closed: the driver stops reading
    /// (backpressure), so held input is bounded by one read. During the
    /// TLS handshake nothing is held (plaintext is dropped), so this stays
    /// true; the driver reads for rustls then, not for the session.
    pub fn wants_input(&self) -> bool {
        match self.state {
            State::Closed => false,
            State::WaitDelivery | State::WaitAuth { .. } | State::WaitTls => self.held.is_empty(),
            _ => true,
        }
    }

    /// Between MAIL and the reply to the end of its data.
    pub fn in_transaction(&self) -> bool {
        self.envelope.is_some()
            || matches!(
                self.state,
                State::Data | State::Chunk { .. } | State::WaitDelivery
            )
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    // ---- input loop ----

    fn process(
        &mut self,
        input: &[u8],
        rcpts: &dyn Recipients,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        let mut rest = input;
        while !rest.is_empty() {
            match self.state {
                State::Closed | State::WaitTls => return,
                State::WaitDelivery | State::WaitAuth { .. } => {
                    self.held.extend_from_slice(rest);
                    return;
                }
                State::Sasl(_) => self.framer.set_line_limit(MAX_SASL_LINE),
                _ => self.framer.set_line_limit(MAX_COMMAND_LINE),
            }
            let (used, frame) = self.framer.feed(rest, &mut self.body);
            rest = rest.get(used..).unwrap_or_default();
            if let Some(frame) = frame {
                self.on_frame(frame, rcpts, out, events);
            }
        }
    }

    /// After the driver answered: a pending shutdown, or the held input.
    fn resume(&mut self, rcpts: &dyn Recipients, out: &mut Vec<u8>, events: &mut Vec<Event>) {
        if self.shutdown_pending && !self.is_closed() {
            self.shutdown_reply(out);
            self.close(events);
            return;
        }
        let held = std::mem::take(&mut self.held);
        self.process(&held, rcpts, out, events);
    }

    fn shutdown_reply(&self, out: &mut Vec<u8>) {
        Reply::new(
            421,
            "4.3.2",
            format!("{} Service shutting down", self.params.hostname),
        )
        .write(out);
    }

    fn close(&mut self, events: &mut Vec<Event>) {
        if !self.is_closed() {
            self.state = State::Closed;
            self.held = Vec::new();
            events.push(Event::Close);
        }
    }

    /// Writes a reply and applies the error cap. Every refusal (4xx/5xx)
    /// gets one log line, so an operator can see why mail was turned away.
    fn send(&mut self, reply: Reply, out: &mut Vec<u8>, events: &mut Vec<Event>) {
        if reply.code >= 400 {
            log::info!(
                "smtp [{}]: rejected: {} {} {}",
                self.params.peer,
                reply.code,
                reply.enhanced,
                reply.lines.first().map(String::as_str).unwrap_or("")
            );
        }
        reply.write(out);
        if reply.counts && !self.is_closed() {
            self.errors += 1;
            if self.errors >= MAX_ERRORS {
                Reply::new(
                    421,
                    "4.7.0",
                    format!("{} Error: too many errors", self.params.hostname),
                )
                .write(out);
                self.close(events);
            }
        }
    }

    fn on_frame(
        &mut self,
        frame: Frame,
        rcpts: &dyn Recipients,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) {
        let in_sasl = matches!(self.state, State::Sasl(_));
        if in_sasl && !matches!(frame, Frame::Line(_)) {
            // A broken SASL line ends the exchange (RFC 4954 4).
            self.state = State::Command;
        }
        let reply = match frame {
            Frame::Line(line) => {
                let handled =
                    if let State::Sasl(step) = std::mem::replace(&mut self.state, State::Command) {
                        self.sasl_response(step, &line, out, events)
                    } else {
                        self.command(&line, rcpts, out, events)
                    };
                handled.unwrap_or_else(Some)
            }
            Frame::TooLong if in_sasl => Some(Reply::new(
                500,
                "5.5.6",
                "Authentication exchange line is too long",
            )),
            Frame::TooLong => Some(Reply::new(500, "5.5.2", "Error: line too long")),
            Frame::BareLf => Some(Reply::new(
                500,
                "5.5.2",
                "Error: bare LF received; lines must end in CRLF",
            )),
            Frame::BareCr => Some(Reply::new(500, "5.5.2", "Error: bare CR received")),
            Frame::DataEnd => {
                self.state = State::Command;
                self.message_end(events)
            }
            Frame::ChunkEnd => match std::mem::replace(&mut self.state, State::Command) {
                State::Chunk {
                    size,
                    last,
                    refused,
                } => self.chunk_end(size, last, refused, events),
                other => {
                    self.state = other;
                    None
                }
            },
        };
        if let Some(reply) = reply {
            self.send(reply, out, events);
        }
    }

    // ---- commands ----

    fn command(
        &mut self,
        line: &[u8],
        rcpts: &dyn Recipients,
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Handled {
        let (verb, args) = match line.iter().position(|&b| b == b' ') {
            Some(sp) => (
                line.get(..sp).unwrap_or_default(),
                line.get(sp + 1..).unwrap_or_default(),
            ),
            None => (line, &[][..]),
        };
        let verb = verb.to_ascii_uppercase();
        const KNOWN: [&[u8]; 14] = [
            b"EHLO",
            b"HELO",
            b"MAIL",
            b"RCPT",
            b"DATA",
            b"BDAT",
            b"RSET",
            b"NOOP",
            b"VRFY",
            b"EXPN",
            b"HELP",
            b"QUIT",
            b"STARTTLS",
            b"AUTH",
        ];
        if !KNOWN.contains(&verb.as_slice()) {
            return Err(Reply::new(500, "5.5.2", "Error: command not recognized"));
        }
        let Ok(args) = std::str::from_utf8(args) else {
            return Err(Reply::new(
                501,
                "5.5.4",
                "Error: invalid characters in arguments",
            ));
        };
        if matches!(
            verb.as_slice(),
            b"RSET" | b"NOOP" | b"VRFY" | b"EXPN" | b"HELP"
        ) && self.auth_user.is_none()
        {
            self.junk_commands += 1;
            if self.junk_commands > MAX_JUNK_COMMANDS {
                self.close(events);
                return Ok(Some(Reply::new(
                    421,
                    "4.7.0",
                    format!("{} Error: too many junk commands", self.params.hostname),
                )));
            }
        }
        match verb.as_slice() {
            b"EHLO" => self.hello(args, true),
            b"HELO" => self.hello(args, false),
            b"MAIL" => self.mail(args),
            b"RCPT" => self.rcpt(args, rcpts),
            b"DATA" => self.data(args),
            b"BDAT" => self.bdat(args, events),
            b"RSET" => {
                if !args.trim_matches(' ').is_empty() {
                    return Err(syntax("RSET"));
                }
                self.envelope = None;
                Ok(Some(Reply::new(250, "2.0.0", "Ok")))
            }
            b"NOOP" => Ok(Some(Reply::new(250, "2.0.0", "Ok"))),
            b"VRFY" => {
                if args.trim_matches(' ').is_empty() {
                    return Err(syntax("VRFY address"));
                }
                // RFC 5321 3.5.3: 252, so as not to reveal users.
                Ok(Some(Reply::new(
                    252,
                    "2.5.0",
                    "Cannot VRFY user, but will accept message and attempt delivery",
                )))
            }
            b"EXPN" => Err(Reply::new(502, "5.5.1", "Error: command not implemented")),
            b"HELP" => Ok(Some(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT STARTTLS AUTH",
            ))),
            b"QUIT" => {
                self.close(events);
                Ok(Some(Reply::new(
                    221,
                    "2.0.0",
                    format!("{} closing connection", self.params.hostname),
                )))
            }
            b"STARTTLS" => self.starttls(args, events),
            b"AUTH" => self.auth(args, out, events),
            _ => Err(Reply::new(500, "5.5.2", "Error: command not recognized")),
        }
    }

    /// EHLO / HELO (RFC 5321 4.1.1.1): resets the transaction (4.1.4).
    fn hello(&mut self, args: &str, extended: bool) -> Handled {
        let name = args.trim_matches(' ');
        let usage = if extended {
            "EHLO hostname"
        } else {
            "HELO hostname"
        };
        if name.is_empty() {
            return Err(syntax(usage));
        }
        // It goes into Received: headers: one token, no control characters.
        if name.len() > address::MAX_DOMAIN || name.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Reply::new(501, "5.5.4", "Error: invalid hostname"));
        }
        self.helo = Some(name.to_string());
        self.esmtp = extended;
        self.envelope = None;
        let host = self.params.hostname.clone();
        if !extended {
            return Ok(Some(Reply::new(250, "", host)));
        }
        let mut lines = vec![
            host,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.params.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "SMTPUTF8".to_string(),
            "CHUNKING".to_string(),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        Ok(Some(Reply {
            code: 250,
            enhanced: "",
            lines,
            counts: false,
        }))
    }

    fn starttls_offered(&self) -> bool {
        self.params.starttls_available && !self.tls_active
    }

    /// RFC 4954 4 / RFC 8314: no passwords in cleartext, except where the
    /// admin allowed it (or on loopback).
    fn auth_offered(&self) -> bool {
        self.tls_active || self.params.plaintext_auth_allowed
    }

    /// MAIL FROM:<reverse-path> [params] (RFC 5321 4.1.1.2).
    fn mail(&mut self, args: &str) -> Handled {
        if self.helo.is_none() {
            return Err(bad_sequence("send HELO/EHLO first"));
        }
        if self.envelope.is_some() {
            return Err(bad_sequence("nested MAIL command"));
        }
        if self.params.role != Role::Mx && self.auth_user.is_none() {
            return Err(Reply::new(530, "5.7.0", "Authentication required"));
        }
        let usage = "MAIL FROM:<address>";
        let rest = strip_prefix_ci(args, "FROM:").ok_or_else(|| syntax(usage))?;
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        if !rest.starts_with('<') {
            return Err(syntax(usage));
        }
        let (path, params) = address::parse_path(rest).map_err(|e| address_error(e, "5.1.7"))?;
        if !params.is_empty() && !params.starts_with(' ') {
            return Err(syntax(usage));
        }
        if !self.esmtp && !params.trim_matches(' ').is_empty() {
            // RFC 5321 4.1.1.2: parameters only for extensions from EHLO.
            return Err(Reply::new(
                555,
                "5.5.4",
                "Error: MAIL parameters require EHLO",
            ));
        }
        let params = parse_mail_params(params)?;
        if params
            .size
            .is_some_and(|s| s > self.params.max_message_size)
        {
            // RFC 1870 6.
            return Err(Reply::new(
                552,
                "5.3.4",
                "Error: message size exceeds fixed maximum message size",
            ));
        }
        let reverse_path = match path {
            Path::Null => String::new(),
            Path::Postmaster => {
                return Err(address_error(
                    AddrError::Syntax("address has no domain"),
                    "5.1.7",
                ))
            }
            Path::Mailbox(m) => {
                if !m.is_ascii() && !params.smtputf8 {
                    return Err(utf8_refused());
                }
                m.address()
            }
        };
        self.envelope = Some(Envelope {
            reverse_path,
            recipients: Vec::new(),
            smtputf8: params.smtputf8,
            body: params.body,
            chunking: false,
        });
        Ok(Some(Reply::new(250, "2.1.0", "Ok")))
    }

    /// RCPT TO:<forward-path> (RFC 5321 4.1.1.3).
    fn rcpt(&mut self, args: &str, rcpts: &dyn Recipients) -> Handled {
        let authenticated = self.auth_user.is_some();
        let relay_allowed = self.params.relay_allowed || authenticated;
        let max = self.params.max_recipients;
        let hostname = self.params.hostname.to_ascii_lowercase();
        let Some(env) = self.envelope.as_mut() else {
            return Err(bad_sequence("need MAIL command"));
        };
        let usage = "RCPT TO:<address>";
        let rest = strip_prefix_ci(args, "TO:").ok_or_else(|| syntax(usage))?;
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        if !rest.starts_with('<') {
            return Err(syntax(usage));
        }
        let (path, params) = address::parse_path(rest).map_err(|e| address_error(e, "5.1.3"))?;
        if !params.is_empty() && !params.starts_with(' ') {
            return Err(syntax(usage));
        }
        if !params.trim_matches(' ').is_empty() {
            return Err(Reply::new(
                555,
                "5.5.4",
                "Error: unsupported RCPT parameter",
            ));
        }
        let mailbox = match path {
            Path::Null => {
                return Err(address_error(
                    AddrError::Syntax("null forward-path"),
                    "5.1.3",
                ))
            }
            Path::Postmaster => {
                let domain = rcpts
                    .postmaster_domain()
                    .or_else(|| rcpts.is_local_domain(&hostname).then_some(hostname));
                let Some(domain) = domain else {
                    return Err(Reply::new(
                        550,
                        "5.1.1",
                        "<postmaster>: Recipient address rejected: no local domain",
                    ));
                };
                Mailbox {
                    local: "postmaster".to_string(),
                    domain: domain.to_lowercase(),
                }
            }
            Path::Mailbox(m) => m,
        };
        if !mailbox.is_ascii() && !env.smtputf8 {
            return Err(utf8_refused());
        }
        let address = mailbox.address();
        if env.recipients.iter().any(|r| r.address == address) {
            return Ok(Some(Reply::new(250, "2.1.5", "Ok")));
        }
        if env.recipients.len() >= max {
            // RFC 5321 4.5.3.1.10.
            return Ok(Some(Reply::new(452, "4.5.3", "Error: too many recipients")));
        }
        if rcpts.is_local_domain(&mailbox.domain) {
            if mailbox.has_routing_chars() {
                return Err(Reply::new(
                    553,
                    "5.1.3",
                    format!("<{address}>: '%' and '!' not allowed in local part"),
                ));
            }
        } else if !relay_allowed {
            return Err(Reply::new(
                554,
                "5.7.1",
                format!("<{address}>: Relay access denied"),
            ));
        }
        let Some(resolution) = rcpts.resolve(&address) else {
            return Err(Reply::new(
                550,
                "5.1.1",
                format!("<{address}>: Recipient address rejected: User unknown"),
            ));
        };
        env.recipients.push(Recipient {
            address,
            resolution,
        });
        Ok(Some(Reply::new(250, "2.1.5", "Ok")))
    }

    /// DATA (RFC 5321 4.1.1.4).
    fn data(&mut self, args: &str) -> Handled {
        if !args.trim_matches(' ').is_empty() {
            return Err(syntax("DATA"));
        }
        let Some(env) = &self.envelope else {
            return Err(bad_sequence("need MAIL command"));
        };
        if env.chunking {
            // RFC 3030 2: no mixing DATA and BDAT in one transaction.
            return Err(bad_sequence("DATA after BDAT"));
        }
        if env.body == BodyType::BinaryMime {
            // RFC 3030 3: BINARYMIME needs BDAT.
            return Err(bad_sequence("BODY=BINARYMIME requires BDAT"));
        }
        if env.recipients.is_empty() {
            return Err(Reply::new(554, "5.5.1", "Error: no valid recipients"));
        }
        self.body = Body::new(self.params.max_message_size);
        self.framer.start_data();
        self.state = State::Data;
        Ok(Some(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")))
    }

    /// BDAT size [LAST] (RFC 3030 2). The chunk is always read, even when
    /// the command is refused, so its octets are never taken as commands.
    fn bdat(&mut self, args: &str, events: &mut Vec<Event>) -> Handled {
        let mut words = args.split(' ');
        let size = words
            .next()
            .filter(|w| !w.is_empty() && w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|w| w.parse::<u64>().ok());
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("LAST") => true,
            Some(_) => return Err(syntax("BDAT size [LAST]")),
        };
        let (Some(size), None) = (size, words.next()) else {
            return Err(syntax("BDAT size [LAST]"));
        };
        let refused = match &mut self.envelope {
            None => Some(bad_sequence("need MAIL command")),
            Some(env) if env.recipients.is_empty() => {
                Some(Reply::new(554, "5.5.1", "Error: no valid recipients"))
            }
            Some(env) => {
                if !env.chunking {
                    env.chunking = true;
                    self.body = Body::new(self.params.max_message_size);
                }
                None
            }
        };
        if refused.is_some() {
            self.body = Body::new(0);
        }
        if size == 0 {
            return Ok(self.chunk_end(0, last, refused, events));
        }
        self.framer.start_chunk(size);
        self.state = State::Chunk {
            size,
            last,
            refused,
        };
        Ok(None)
    }

    /// A BDAT chunk was read.
    fn chunk_end(
        &mut self,
        size: u64,
        last: bool,
        refused: Option<Reply>,
        events: &mut Vec<Event>,
    ) -> Option<Reply> {
        if let Some(reply) = refused {
            self.envelope = None;
            return Some(reply);
        }
        if !last {
            if self.body.overflowed() {
                self.envelope = None;
                self.body = Body::default();
                return Some(Reply::new(552, "5.3.4", "Error: message too big").uncounted());
            }
            return Some(Reply::new(250, "2.0.0", format!("{size} octets received")));
        }
        self.message_end(events)
    }

    /// The whole message is in: refuse it if too big, else hand it over.
    fn message_end(&mut self, events: &mut Vec<Event>) -> Option<Reply> {
        let Some(env) = self.envelope.take() else {
            return Some(bad_sequence("need MAIL command"));
        };
        if self.body.overflowed() {
            self.body = Body::default();
            // RFC 5321 4.5.3.1.10 / RFC 1870.
            return Some(Reply::new(552, "5.3.4", "Error: message too big").uncounted());
        }
        let transaction = Transaction {
            reverse_path: env.reverse_path,
            recipients: env.recipients,
            data: self.body.take(),
            helo: self.helo.clone().unwrap_or_default(),
            peer: self.params.peer,
            protocol: self.protocol(),
            auth_user: self.auth_user.clone(),
            smtputf8: env.smtputf8,
            body_8bitmime: env.body != BodyType::SevenBit,
        };
        self.body = Body::default();
        self.state = State::WaitDelivery;
        events.push(Event::Deliver(transaction));
        None
    }

    /// RFC 3848 `with` protocol names.
    fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls_active, self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// STARTTLS (RFC 3207 4).
    fn starttls(&mut self, args: &str, events: &mut Vec<Event>) -> Handled {
        if !args.trim_matches(' ').is_empty() {
            return Err(syntax("STARTTLS"));
        }
        if self.tls_active {
            return Err(bad_sequence("TLS already active"));
        }
        if !self.params.starttls_available {
            return Ok(Some(Reply::new(454, "4.7.0", "TLS not available")));
        }
        // Everything after this line in the current read, and anything
        // held, is plaintext the client sent before the handshake: gone.
        self.state = State::WaitTls;
        self.held = Vec::new();
        events.push(Event::StartTls);
        Ok(Some(Reply::new(220, "2.0.0", "Ready to start TLS")))
    }

    /// AUTH mechanism [initial-response] (RFC 4954 4).
    fn auth(&mut self, args: &str, out: &mut Vec<u8>, events: &mut Vec<Event>) -> Handled {
        if self.auth_user.is_some() {
            return Err(bad_sequence("already authenticated"));
        }
        if !self.esmtp {
            return Err(bad_sequence("send EHLO first"));
        }
        if self.envelope.is_some() {
            return Err(bad_sequence("AUTH not allowed during a mail transaction"));
        }
        if !self.auth_offered() {
            // RFC 4954 6.
            return Err(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        let mut words = args.split(' ');
        let mechanism = words.next().unwrap_or_default();
        let initial = words.next();
        if mechanism.is_empty() || words.next().is_some() {
            return Err(syntax("AUTH mechanism [initial-response]"));
        }
        // RFC 4954 4: "=" is an empty initial response.
        let initial = match initial {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(text) => Some(decode_sasl(text.as_bytes())?),
        };
        if mechanism.eq_ignore_ascii_case("PLAIN") {
            match initial {
                None => {
                    self.state = State::Sasl(Sasl::Plain);
                    Ok(Some(Reply::new(334, "", "")))
                }
                Some(response) => self.auth_plain(&response, out, events),
            }
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            match initial {
                None => {
                    self.state = State::Sasl(Sasl::LoginUser);
                    Ok(Some(Reply::new(334, "", "VXNlcm5hbWU6")))
                }
                Some(response) => self.login_username(&response),
            }
        } else {
            Err(Reply::new(504, "5.5.4", "Unrecognized authentication type"))
        }
    }

    /// A line during a SASL exchange.
    fn sasl_response(
        &mut self,
        step: Sasl,
        line: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Handled {
        if line == b"*" {
            return Ok(Some(
                Reply::new(501, "5.0.0", "Authentication cancelled").uncounted(),
            ));
        }
        let response = decode_sasl(line)?;
        match step {
            Sasl::Plain => self.auth_plain(&response, out, events),
            Sasl::LoginUser => self.login_username(&response),
            Sasl::LoginPassword { username } => {
                let password = String::from_utf8(response).map_err(|_| bad_encoding())?;
                if password.contains('\0') {
                    return Err(bad_encoding());
                }
                Ok(self.authenticate(username, password, events))
            }
        }
    }

    /// RFC 4616: [authzid] NUL authcid NUL passwd.
    fn auth_plain(
        &mut self,
        response: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<Event>,
    ) -> Handled {
        match sasl::parse_plain(response) {
            Ok(plain) => Ok(self.authenticate(plain.authcid, plain.password, events)),
            Err(PlainError::Malformed) => Err(bad_encoding()),
            Err(PlainError::ForeignAuthzid) => {
                // No proxy authorization: acting as someone else is refused.
                self.auth_failed(out, events);
                Ok(None)
            }
        }
    }

    fn login_username(&mut self, response: &[u8]) -> Handled {
        let username = String::from_utf8(response.to_vec()).map_err(|_| bad_encoding())?;
        if username.is_empty() || username.contains('\0') {
            return Err(bad_encoding());
        }
        self.state = State::Sasl(Sasl::LoginPassword { username });
        Ok(Some(Reply::new(334, "", "UGFzc3dvcmQ6")))
    }

    fn authenticate(
        &mut self,
        username: String,
        password: String,
        events: &mut Vec<Event>,
    ) -> Option<Reply> {
        self.state = State::WaitAuth {
            username: username.clone(),
        };
        events.push(Event::Authenticate { username, password });
        None
    }

    /// 535, and after `MAX_AUTH_FAILURES` of them 421 and close.
    fn auth_failed(&mut self, out: &mut Vec<u8>, events: &mut Vec<Event>) {
        self.auth_failures += 1;
        Reply::new(535, "5.7.8", "Authentication credentials invalid").write(out);
        if self.auth_failures >= MAX_AUTH_FAILURES {
            Reply::new(
                421,
                "4.7.0",
                format!(
                    "{} Error: too many authentication failures",
                    self.params.hostname
                ),
            )
            .write(out);
            self.close(events);
        }
    }
}

fn bad_encoding() -> Reply {
    Reply::new(501, "5.5.2", "Error: invalid SASL response")
}

fn decode_sasl(text: &[u8]) -> Result<Vec<u8>, Reply> {
    SASL_BASE64
        .decode(text)
        .map_err(|_| Reply::new(501, "5.5.2", "Error: invalid base64"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// Local domains example.test and other.test; users bob, alice and
    /// postmaster; everything else is remote.
    struct TestRcpts;

    impl Recipients for TestRcpts {
        fn is_local_domain(&self, domain: &str) -> bool {
            domain == "example.test" || domain == "other.test"
        }
        fn resolve(&self, address: &str) -> Option<Resolution> {
            let (local, domain) = address.rsplit_once('@')?;
            if !self.is_local_domain(domain) {
                return Some(Resolution {
                    local: vec![],
                    remote: vec![address.to_string()],
                });
            }
            let local = local.to_ascii_lowercase();
            ["bob", "alice", "postmaster"]
                .contains(&local.as_str())
                .then(|| Resolution {
                    local: vec![format!("{local}@{domain}")],
                    remote: vec![],
                })
        }
        fn postmaster_domain(&self) -> Option<String> {
            Some("example.test".to_string())
        }
    }

    const HOST: &str = "mx.example.test";

    fn params(role: Role) -> SessionParams {
        SessionParams {
            hostname: HOST.to_string(),
            peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
            role,
            max_message_size: 1000,
            max_recipients: 3,
            relay_allowed: false,
            tls_active: role == Role::Smtps,
            starttls_available: true,
            plaintext_auth_allowed: false,
        }
    }

    /// A stand-in for the connection driver: answers every event at once.
    struct Driver {
        s: SmtpSession,
        out: Vec<u8>,
        txns: Vec<Transaction>,
        closes: usize,
        tls_starts: usize,
    }

    impl Driver {
        fn new(p: SessionParams) -> Driver {
            Driver {
                s: SmtpSession::new(p),
                out: Vec::new(),
                txns: Vec::new(),
                closes: 0,
                tls_starts: 0,
            }
        }

        fn feed(&mut self, input: &[u8]) {
            let mut events = Vec::new();
            self.s
                .receive(input, &TestRcpts, &mut self.out, &mut events);
            self.drain(events);
        }

        fn drain(&mut self, mut events: Vec<Event>) {
            while !events.is_empty() {
                let mut next = Vec::new();
                for event in events {
                    match event {
                        Event::Deliver(t) => {
                            self.txns.push(t);
                            let queue_id = format!("Q{}", self.txns.len());
                            self.s.delivered(
                                DeliveryOutcome::Accepted { queue_id },
                                &TestRcpts,
                                &mut self.out,
                                &mut next,
                            );
                        }
                        Event::Authenticate { username, password } => {
                            let ok = username == "bob@example.test" && password == "secret";
                            self.s.auth_result(ok, &TestRcpts, &mut self.out, &mut next);
                        }
                        Event::StartTls => {
                            self.tls_starts += 1;
                            self.s.tls_started(&mut self.out, &mut next);
                        }
                        Event::Close => self.closes += 1,
                    }
                }
                events = next;
            }
        }

        fn take_out(&mut self) -> String {
            String::from_utf8_lossy(&std::mem::take(&mut self.out)).into_owned()
        }
    }

    fn lines(want: &[&str]) -> String {
        want.iter().map(|l| format!("{l}\r\n")).collect()
    }

    fn ehlo_lines(p: &SessionParams, tls_active: bool) -> Vec<String> {
        let mut v = vec![
            format!("250-{HOST}"),
            "250-PIPELINING".into(),
            format!("250-SIZE {}", p.max_message_size),
            "250-8BITMIME".into(),
            "250-ENHANCEDSTATUSCODES".into(),
            "250-SMTPUTF8".into(),
            "250-CHUNKING".into(),
        ];
        if p.starttls_available && !tls_active {
            v.push("250-STARTTLS".into());
        }
        if tls_active || p.plaintext_auth_allowed {
            v.push("250-AUTH PLAIN LOGIN".into());
        }
        if let Some(last) = v.last_mut() {
            *last = last.replacen("250-", "250 ", 1);
        }
        v
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    /// Runs `input` after an optional `EHLO client.test` (whose reply is
    /// dropped), whole and then byte by byte; both must give `want`.
    fn check_dialog(
        name: &str,
        p: &SessionParams,
        ehlo: bool,
        input: &[u8],
        want: &[&str],
    ) -> Driver {
        let want = lines(want);
        let splits: &[usize] = if input
            .windows(8)
            .any(|w| w.eq_ignore_ascii_case(b"STARTTLS"))
        {
            &[usize::MAX]
        } else {
            &[usize::MAX, 1, 3]
        };
        let mut last = None;
        for &step in splits {
            let mut d = Driver::new(p.clone());
            d.s.greeting(&mut d.out);
            assert_eq!(d.take_out(), format!("220 {HOST} ESMTP mailgate\r\n"));
            if ehlo {
                d.feed(b"EHLO client.test\r\n");
                d.take_out();
            }
            for piece in input.chunks(step.min(input.len().max(1))) {
                d.feed(piece);
            }
            let got = d.take_out();
            assert_eq!(got, want, "dialog {name:?}, step {step}");
            last = Some(d);
        }
        last.unwrap_or_else(|| Driver::new(p.clone()))
    }

    const MAIL_RCPT: &str = "MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.test>\r\n";

    #[test]
    fn dialogs_mx() {
        let p = params(Role::Mx);
        let ehlo = ehlo_lines(&p, false);
        let ehlo: Vec<&str> = ehlo.iter().map(String::as_str).collect();
        let long_line = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(600));
        let utf8_rcpt = "MAIL FROM:<a@remote.test>\r\nRCPT TO:<bøb@example.test>\r\n".to_string();
        let cases: Vec<(&str, bool, String, Vec<&str>)> = vec![
            ("ehlo", false, "EHLO client.test\r\n".into(), ehlo.clone()),
            ("ehlo twice", false, "EHLO a\r\nEHLO b\r\n".into(), [ehlo.clone(), ehlo.clone()].concat()),
            ("helo", false, "HELO client.test\r\n".into(), vec!["250 mx.example.test"]),
            ("ehlo no argument", false, "EHLO\r\nEHLO  \r\n".into(), vec!["501 5.5.4 Syntax: EHLO hostname"; 2]),
            ("ehlo bad name", false, "EHLO a b\r\nHELO a\x01b\r\n".into(), vec!["501 5.5.4 Error: invalid hostname"; 2]),
            (
                "full transaction",
                true,
                format!("{MAIL_RCPT}DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
                vec![
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.0.0 Ok: queued as Q1",
                    "221 2.0.0 mx.example.test closing connection",
                ],
            ),
            ("mail before helo", false, "MAIL FROM:<a@remote.test>\r\n".into(), vec!["503 5.5.1 Error: send HELO/EHLO first"]),
            ("rcpt before mail", true, "RCPT TO:<bob@example.test>\r\n".into(), vec!["503 5.5.1 Error: need MAIL command"]),
            ("data before mail", true, "DATA\r\n".into(), vec!["503 5.5.1 Error: need MAIL command"]),
            (
                "nested mail",
                true,
                "MAIL FROM:<a@remote.test>\r\nMAIL FROM:<a@remote.test>\r\n".into(),
                vec!["250 2.1.0 Ok", "503 5.5.1 Error: nested MAIL command"],
            ),
            (
                "data without recipients",
                true,
                "MAIL FROM:<a@remote.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n".into(),
                vec![
                    "250 2.1.0 Ok",
                    "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown",
                    "554 5.5.1 Error: no valid recipients",
                ],
            ),
            ("unknown command", true, "FOO bar\r\n\r\n".into(), vec!["500 5.5.2 Error: command not recognized"; 2]),
            (
                "nul and 8-bit junk",
                true,
                "\0\0\0\r\n\u{ff}\u{fe}\r\nNO\0OP\r\n".into(),
                vec!["500 5.5.2 Error: command not recognized"; 3],
            ),
            (
                "relay denied",
                true,
                "MAIL FROM:<a@remote.test>\r\nRCPT TO:<x@remote.test>\r\nRCPT TO:<x@[192.0.2.1]>\r\n".into(),
                vec![
                    "250 2.1.0 Ok",
                    "554 5.7.1 <x@remote.test>: Relay access denied",
                    "554 5.7.1 <x@[192.0.2.1]>: Relay access denied",
                ],
            ),
            (
                "too many recipients",
                true,
                "MAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@other.test>\r\nRCPT TO:<alice@other.test>\r\n".into(),
                vec!["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "452 4.5.3 Error: too many recipients"],
            ),
            (
                "duplicate recipient",
                true,
                "MAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<bob@EXAMPLE.test>\r\n".into(),
                vec!["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok"],
            ),
            (
                "size too big",
                true,
                "MAIL FROM:<a@remote.test> SIZE=1001\r\nMAIL FROM:<a@remote.test> SIZE=99999999999999999999\r\nMAIL FROM:<a@remote.test> SIZE=1000\r\n".into(),
                vec![
                    "552 5.3.4 Error: message size exceeds fixed maximum message size",
                    "552 5.3.4 Error: message size exceeds fixed maximum message size",
                    "250 2.1.0 Ok",
                ],
            ),
            (
                "mail parameters",
                true,
                "MAIL FROM:<a@remote.test> body=8bitmime SMTPUTF8 SIZE=10 AUTH=<>\r\nRSET\r\n\
                 MAIL FROM:<a@remote.test> FOO=bar\r\nMAIL FROM:<a@remote.test> BODY=9BIT\r\n\
                 MAIL FROM:<a@remote.test> SIZE=abc\r\nMAIL FROM:<a@remote.test> SIZE=1 SIZE=2\r\n\
                 MAIL FROM:<a@remote.test> SMTPUTF8=yes\r\nMAIL FROM:<a@remote.test>SIZE=1\r\n"
                    .into(),
                vec![
                    "250 2.1.0 Ok",
                    "250 2.0.0 Ok",
                    "555 5.5.4 Error: unsupported MAIL parameter",
                    "501 5.5.4 Error: bad value for BODY",
                    "501 5.5.4 Error: bad value for SIZE",
                    "501 5.5.4 Error: duplicate parameter SIZE",
                    "501 5.5.4 Error: bad value for SMTPUTF8",
                    "501 5.5.4 Syntax: MAIL FROM:<address>",
                ],
            ),
            (
                "utf-8 needs smtputf8",
                true,
                "MAIL FROM:<bø@remote.test>\r\nMAIL FROM:<bø@remote.test> SMTPUTF8\r\n".into(),
                vec!["553 5.6.7 Error: UTF-8 address requires SMTPUTF8", "250 2.1.0 Ok"],
            ),
            (
                "utf-8 rcpt needs smtputf8",
                true,
                utf8_rcpt,
                vec!["250 2.1.0 Ok", "553 5.6.7 Error: UTF-8 address requires SMTPUTF8"],
            ),
            (
                "mail syntax",
                true,
                "MAIL FROM:a@remote.test\r\nMAIL TO:<a@remote.test>\r\nMAIL FROM:<a@remote.test@example.test>\r\n\
                 MAIL FROM:<a/b@remote.test>\r\nMAIL FROM:<postmaster>\r\nMAIL FROM:  <a@remote.test>\r\n"
                    .into(),
                vec![
                    "501 5.5.4 Syntax: MAIL FROM:<address>",
                    "501 5.5.4 Syntax: MAIL FROM:<address>",
                    "501 5.1.7 Bad address syntax: invalid domain",
                    "553 5.1.7 Address not allowed: '/' or '\\' in local part not allowed",
                    "501 5.1.7 Bad address syntax: address has no domain",
                    "501 5.5.4 Syntax: MAIL FROM:<address>",
                ],
            ),
            (
                "rcpt syntax and policy",
                true,
                "MAIL FROM:<>\r\nRCPT TO:<a@remote.test@example.test>\r\nRCPT TO:<>\r\nRCPT TO:<a/b@example.test>\r\n\
                 RCPT TO:<a%remote.test@example.test>\r\nRCPT TO:<remote.test!a@example.test>\r\nRCPT TO:<\"..\"@example.test>\r\n\
                 RCPT TO:bob@example.test\r\nRCPT TO:<bob@example.test> NOTIFY=NEVER\r\n"
                    .into(),
                vec![
                    "250 2.1.0 Ok",
                    "501 5.1.3 Bad address syntax: invalid domain",
                    "501 5.1.3 Bad address syntax: null forward-path",
                    "553 5.1.3 Address not allowed: '/' or '\\' in local part not allowed",
                    "553 5.1.3 <a%remote.test@example.test>: '%' and '!' not allowed in local part",
                    "553 5.1.3 <remote.test!a@example.test>: '%' and '!' not allowed in local part",
                    "553 5.1.3 Address not allowed: local part '.' or '..' not allowed",
                    "501 5.5.4 Syntax: RCPT TO:<address>",
                    "555 5.5.4 Error: unsupported RCPT parameter",
                ],
            ),
            (
                "rcpt forms",
                true,
                "MAIL FROM:<>\r\nRCPT TO: <bob@example.test>\r\nRCPT TO:<@relay.test:alice@example.test>\r\nrcpt to:<Postmaster>\r\n".into(),
                vec!["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok"],
            ),
            (
                "rset",
                true,
                "MAIL FROM:<>\r\nRSET\r\nRCPT TO:<bob@example.test>\r\nRSET x\r\n".into(),
                vec!["250 2.1.0 Ok", "250 2.0.0 Ok", "503 5.5.1 Error: need MAIL command", "501 5.5.4 Syntax: RSET"],
            ),
            (
                "noop vrfy help expn",
                false,
                "NOOP\r\nnoop hello\r\nVRFY bob\r\nVRFY\r\nHELP\r\nEXPN list\r\n".into(),
                vec![
                    "250 2.0.0 Ok",
                    "250 2.0.0 Ok",
                    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                    "501 5.5.4 Syntax: VRFY address",
                    "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT STARTTLS AUTH",
                    "502 5.5.1 Error: command not implemented",
                ],
            ),
            ("line too long", true, long_line, vec!["500 5.5.2 Error: line too long", "250 2.0.0 Ok"]),
            (
                "bare LF and CR in commands",
                true,
                "NOOP\nNOOP\r\nNO\rOP\r\n".into(),
                vec![
                    "500 5.5.2 Error: bare LF received; lines must end in CRLF",
                    "250 2.0.0 Ok",
                    "500 5.5.2 Error: bare CR received",
                ],
            ),
            (
                "message too big",
                true,
                format!("{MAIL_RCPT}DATA\r\n{}\r\n.\r\n{MAIL_RCPT}", "x".repeat(1500)),
                vec![
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "354 End data with <CR><LF>.<CR><LF>",
                    "552 5.3.4 Error: message too big",
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                ],
            ),
            (
                "smuggling: bare LF dot does not end data",
                true,
                format!(
                    "{MAIL_RCPT}DATA\r\nhi\n.\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nevil\r\n\
                     \r\n.\nx\n.\r\ny\r.\r\nz\r\n.\r\n"
                ),
                vec!["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as Q1"],
            ),
            (
                "starttls injection",
                true,
                "STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.test>\r\n".into(),
                vec!["220 2.0.0 Ready to start TLS"],
            ),
            ("starttls with argument", true, "STARTTLS now\r\n".into(), vec!["501 5.5.4 Syntax: STARTTLS"]),
            (
                "auth needs tls",
                true,
                format!("AUTH PLAIN {}\r\n", b64("\0bob@example.test\0secret")),
                vec!["538 5.7.11 Encryption required for requested authentication mechanism"],
            ),
            ("too many errors", true, "FOO\r\n".repeat(12), {
                let mut v = vec!["500 5.5.2 Error: command not recognized"; 10];
                v.push("421 4.7.0 mx.example.test Error: too many errors");
                v
            }),
            ("a slot kept by NOOPs", true, "NOOP\r\n".repeat(105), {
                let mut v = vec!["250 2.0.0 Ok"; MAX_JUNK_COMMANDS as usize];
                v.push("421 4.7.0 mx.example.test Error: too many junk commands");
                v
            }),
            ("junk of every kind counts", true, "RSET\r\nVRFY x\r\nHELP\r\n".repeat(40), {
                let mut v = Vec::new();
                for _ in 0..33 {
                    v.extend([
                        "250 2.0.0 Ok",
                        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                        "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT STARTTLS AUTH",
                    ]);
                }
                v.push("250 2.0.0 Ok");
                v.push("421 4.7.0 mx.example.test Error: too many junk commands");
                v
            }),
        ];
        for (name, ehlo, input, want) in &cases {
            check_dialog(name, &p, *ehlo, input.as_bytes(), want);
        }
    }

    #[test]
    fn transaction_contents() {
        let p = params(Role::Mx);
        let d = check_dialog(
            "contents",
            &p,
            true,
            b"MAIL FROM:<> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<Bob@EXAMPLE.TEST>\r\nRCPT TO:<@r.test:alice@example.test>\r\n\
              RCPT TO:<postmaster>\r\nDATA\r\n..dot\r\nline\nbare\r\n.\r\n",
            &[
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.1.5 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as Q1",
            ],
        );
        let t = &d.txns[0];
        assert_eq!(t.reverse_path, "");
        let addrs: Vec<&str> = t.recipients.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(
            addrs,
            [
                "Bob@example.test",
                "alice@example.test",
                "postmaster@example.test"
            ]
        );
        assert_eq!(t.recipients[0].resolution.local, ["bob@example.test"]);
        assert_eq!(t.data, b".dot\r\nline\r\nbare\r\n");
        assert_eq!(t.helo, "client.test");
        assert_eq!(t.peer, p.peer);
        assert_eq!(t.protocol, "ESMTP");
        assert_eq!(t.auth_user, None);
        assert!(t.smtputf8 && t.body_8bitmime);

        // HELO: protocol SMTP; relay_allowed lets remote recipients through.
        let mut p2 = params(Role::Mx);
        p2.relay_allowed = true;
        let mut d = Driver::new(p2);
        d.feed(b"HELO old.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\nhi\r\n.\r\n");
        assert_eq!(d.txns.len(), 1);
        assert_eq!(d.txns[0].protocol, "SMTP");
        assert_eq!(d.txns[0].recipients[0].resolution.remote, ["x@remote.test"]);
        assert!(!d.txns[0].body_8bitmime && !d.txns[0].smtputf8);
    }

    #[test]
    fn smuggled_commands_stay_in_the_message() {
        let mut d = Driver::new(params(Role::Mx));
        d.feed(b"EHLO c\r\n");
        d.feed(MAIL_RCPT.as_bytes());
        d.feed(
            b"DATA\r\nhi\n.\nMAIL FROM:<evil@remote.test>\r\n\r\n.\nRSET\r\n\n.\r\nQUIT\r\n.\r\n",
        );
        assert_eq!(d.txns.len(), 1);
        assert_eq!(
            String::from_utf8_lossy(&d.txns[0].data),
            "hi\r\n.\r\nMAIL FROM:<evil@remote.test>\r\n\r\n.\r\nRSET\r\n\r\n.\r\nQUIT\r\n"
        );
        assert_eq!(d.closes, 0);
    }

    #[test]
    fn bdat() {
        let p = params(Role::Mx);
        // (name, input, replies, stored bodies)
        type Case<'a> = (&'a str, String, Vec<&'a str>, Vec<&'a [u8]>);
        let cases: Vec<Case> = vec![
            (
                "two chunks",
                format!("{MAIL_RCPT}BDAT 5\r\nhel\nlBDAT 3 LAST\r\n.\r\nQUIT\r\n"),
                vec!["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 5 octets received", "250 2.0.0 Ok: queued as Q1", "221 2.0.0 mx.example.test closing connection"],
                vec![b"hel\nl.\r\n"],
            ),
            (
                "bdat 0 last",
                format!("{MAIL_RCPT}BDAT 0 LAST\r\n"),
                vec!["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued as Q1"],
                vec![b""],
            ),
            (
                "bdat 0 then last",
                format!("{MAIL_RCPT}BDAT 0\r\nbdat 3 last\r\n\0\u{ff}NOOP\r\n"),
                vec!["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 0 octets received", "250 2.0.0 Ok: queued as Q1", "250 2.0.0 Ok"],
                vec![b"\0\xc3\xbf"],
            ),
            (
                "bdat without mail consumes the chunk",
                "BDAT 6\r\nQUIT\r\nNOOP\r\n".into(),
                vec!["503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"],
                vec![],
            ),
            (
                "bdat without recipients",
                "MAIL FROM:<>\r\nBDAT 4 LAST\r\nRSETNOOP\r\n".into(),
                vec!["250 2.1.0 Ok", "554 5.5.1 Error: no valid recipients", "250 2.0.0 Ok"],
                vec![],
            ),
            (
                "data after bdat",
                format!("{MAIL_RCPT}BDAT 2\r\nhiDATA\r\n"),
                vec!["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 2 octets received", "503 5.5.1 Error: DATA after BDAT"],
                vec![],
            ),
            (
                "bdat after data",
                format!("{MAIL_RCPT}DATA\r\nhi\r\n.\r\nBDAT 4 LAST\r\nMAILNOOP\r\n"),
                vec![
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.0.0 Ok: queued as Q1",
                    "503 5.5.1 Error: need MAIL command",
                    "250 2.0.0 Ok",
                ],
                vec![b"hi\r\n"],
            ),
            (
                "bdat syntax",
                "BDAT\r\nBDAT x\r\nBDAT 1 FIRST\r\nBDAT 1 LAST more\r\nBDAT -1\r\nBDAT 123456789012345678901\r\n".into(),
                vec!["501 5.5.4 Syntax: BDAT size [LAST]"; 6],
                vec![],
            ),
            (
                "bdat too big",
                format!("{MAIL_RCPT}BDAT 1500\r\n{}BDAT 2 LAST\r\nhiNOOP\r\n", "y".repeat(1500)),
                vec![
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "552 5.3.4 Error: message too big",
                    "503 5.5.1 Error: need MAIL command",
                    "250 2.0.0 Ok",
                ],
                vec![],
            ),
            (
                "bdat too big at last",
                format!("{MAIL_RCPT}BDAT 600\r\n{}BDAT 600 LAST\r\n{}NOOP\r\n", "y".repeat(600), "z".repeat(600)),
                vec![
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "250 2.0.0 600 octets received",
                    "552 5.3.4 Error: message too big",
                    "250 2.0.0 Ok",
                ],
                vec![],
            ),
            (
                "binarymime needs bdat",
                "MAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nBDAT 1 LAST\r\nx".into(),
                vec!["250 2.1.0 Ok", "250 2.1.5 Ok", "503 5.5.1 Error: BODY=BINARYMIME requires BDAT", "250 2.0.0 Ok: queued as Q1"],
                vec![b"x"],
            ),
        ];
        for (name, input, want, bodies) in cases {
            let d = check_dialog(name, &p, true, input.as_bytes(), &want);
            let got: Vec<&[u8]> = d.txns.iter().map(|t| t.data.as_slice()).collect();
            assert_eq!(got, bodies, "{name}");
        }
    }

    #[test]
    fn huge_bdat_is_discarded_without_buffering() {
        let mut d = Driver::new(params(Role::Mx));
        d.feed(b"EHLO c\r\n");
        d.feed(MAIL_RCPT.as_bytes());
        d.feed(b"BDAT 10000000 LAST\r\n");
        let junk = vec![b'j'; 64 * 1024];
        let mut left = 10_000_000usize;
        while left > 0 {
            let n = left.min(junk.len());
            d.feed(&junk[..n]);
            assert!(d.s.body.size() <= 10_000_000 && d.s.body.take().capacity() <= 1000);
            left -= n;
        }
        d.feed(b"NOOP\r\n");
        assert!(d
            .take_out()
            .ends_with("552 5.3.4 Error: message too big\r\n250 2.0.0 Ok\r\n"));
        assert!(d.txns.is_empty());
    }

    #[test]
    fn overlong_line_bounded() {
        let mut d = Driver::new(params(Role::Mx));
        d.feed(b"EHLO c\r\n");
        d.take_out();
        let junk = vec![b'A'; 100 * 1024];
        d.feed(&junk);
        assert!(d.s.framer.buffered() <= MAX_COMMAND_LINE);
        d.feed(&junk);
        d.feed(b"\r\nNOOP\r\n");
        assert_eq!(
            d.take_out(),
            lines(&["500 5.5.2 Error: line too long", "250 2.0.0 Ok"])
        );
    }

    #[test]
    fn starttls() {
        let p = params(Role::Mx);
        let mut d = check_dialog(
            "starttls injection",
            &p,
            true,
            b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n",
            &["220 2.0.0 Ready to start TLS"],
        );
        assert_eq!(d.tls_starts, 1);
        // EHLO forgotten; no STARTTLS offered any more.
        d.feed(b"MAIL FROM:<a@remote.test>\r\nSTARTTLS\r\nEHLO again\r\n");
        let mut want = vec![
            "503 5.5.1 Error: send HELO/EHLO first".to_string(),
            "503 5.5.1 Error: TLS already active".to_string(),
        ];
        want.extend(ehlo_lines(&p, true));
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        assert_eq!(d.take_out(), lines(&want));
        d.feed(MAIL_RCPT.as_bytes());
        d.feed(b"DATA\r\nx\r\n.\r\n");
        assert_eq!(d.txns[0].protocol, "ESMTPS");
        assert_eq!(d.txns[0].helo, "again");

        // Pipelined plaintext that arrives while the handshake is pending is
        // dropped too.
        let mut s = SmtpSession::new(p.clone());
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        s.receive(b"EHLO c\r\nSTARTTLS\r\n", &TestRcpts, &mut out, &mut ev);
        assert_eq!(ev, [Event::StartTls]);
        s.receive(b"RSET\r\n", &TestRcpts, &mut out, &mut ev);
        assert!(String::from_utf8_lossy(&out).ends_with("220 2.0.0 Ready to start TLS\r\n"));
        s.tls_started(&mut out, &mut ev);
        out.clear();
        s.receive(b"NOOP\r\n", &TestRcpts, &mut out, &mut ev);
        assert_eq!(out, b"250 2.0.0 Ok\r\n");

        // Not available.
        let mut p2 = params(Role::Mx);
        p2.starttls_available = false;
        check_dialog(
            "no tls",
            &p2,
            true,
            b"STARTTLS\r\n",
            &["454 4.7.0 TLS not available"],
        );
        // Already active (smtps).
        check_dialog(
            "smtps",
            &params(Role::Smtps),
            true,
            b"STARTTLS\r\n",
            &["503 5.5.1 Error: TLS already active"],
        );
    }

    #[test]
    fn auth() {
        let mut p = params(Role::Mx);
        p.plaintext_auth_allowed = true;
        let plain = b64("\0bob@example.test\0secret");
        let plain_bad = b64("\0bob@example.test\0wrong");
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            ("plain initial", format!("AUTH PLAIN {plain}\r\n"), vec!["235 2.7.0 Authentication successful"]),
            ("plain authzid same", format!("AUTH plain {}\r\n", b64("bob@example.test\0bob@example.test\0secret")), vec!["235 2.7.0 Authentication successful"]),
            (
                "plain challenge",
                format!("AUTH PLAIN\r\n{plain}\r\nAUTH PLAIN {plain}\r\n"),
                vec!["334 ", "235 2.7.0 Authentication successful", "503 5.5.1 Error: already authenticated"],
            ),
            (
                "login",
                format!("AUTH LOGIN\r\n{}\r\n{}\r\n", b64("bob@example.test"), b64("secret")),
                vec!["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"],
            ),
            (
                "login initial",
                format!("AUTH LOGIN {}\r\n{}\r\n", b64("bob@example.test"), b64("secret")),
                vec!["334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"],
            ),
            (
                "cancel",
                "AUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n*\r\n".into(),
                vec!["334 VXNlcm5hbWU6", "501 5.0.0 Authentication cancelled", "334 ", "501 5.0.0 Authentication cancelled"],
            ),
            (
                "bad base64",
                "AUTH PLAIN !!!\r\nAUTH LOGIN\r\n%%%\r\n".into(),
                vec!["501 5.5.2 Error: invalid base64", "334 VXNlcm5hbWU6", "501 5.5.2 Error: invalid base64"],
            ),
            (
                "bad plain message",
                format!("AUTH PLAIN {}\r\nAUTH PLAIN =\r\n", b64("bob\0secret")),
                vec!["501 5.5.2 Error: invalid SASL response", "501 5.5.2 Error: invalid SASL response"],
            ),
            (
                "three failures",
                format!("AUTH PLAIN {plain_bad}\r\nAUTH PLAIN {plain_bad}\r\nAUTH PLAIN {}\r\nNOOP\r\n", b64("other\0bob@example.test\0secret")),
                vec![
                    "535 5.7.8 Authentication credentials invalid",
                    "535 5.7.8 Authentication credentials invalid",
                    "535 5.7.8 Authentication credentials invalid",
                    "421 4.7.0 mx.example.test Error: too many authentication failures",
                ],
            ),
            ("unknown mechanism", "AUTH CRAM-MD5\r\nAUTH\r\n".into(), vec!["504 5.5.4 Unrecognized authentication type", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"]),
            (
                "auth in transaction",
                format!("MAIL FROM:<>\r\nAUTH PLAIN {plain}\r\n"),
                vec!["250 2.1.0 Ok", "503 5.5.1 Error: AUTH not allowed during a mail transaction"],
            ),
            (
                "sasl line too long",
                format!("AUTH PLAIN\r\n{}\r\nNOOP\r\n", "A".repeat(13000)),
                vec!["334 ", "500 5.5.6 Authentication exchange line is too long", "250 2.0.0 Ok"],
            ),
            (
                "relay after auth",
                format!("AUTH PLAIN {plain}\r\nMAIL FROM:<bob@example.test>\r\nRCPT TO:<x@remote.test>\r\nDATA\r\nhi\r\n.\r\n"),
                vec![
                    "235 2.7.0 Authentication successful",
                    "250 2.1.0 Ok",
                    "250 2.1.5 Ok",
                    "354 End data with <CR><LF>.<CR><LF>",
                    "250 2.0.0 Ok: queued as Q1",
                ],
            ),
        ];
        for (name, input, want) in &cases {
            let d = check_dialog(name, &p, true, input.as_bytes(), want);
            if *name == "relay after auth" {
                assert_eq!(d.txns[0].protocol, "ESMTPA");
                assert_eq!(d.txns[0].auth_user.as_deref(), Some("bob@example.test"));
            }
            if *name == "three failures" {
                assert_eq!(d.closes, 1);
                assert!(d.s.is_closed());
            }
        }
        // AUTH needs EHLO.
        check_dialog(
            "helo",
            &p,
            false,
            format!("HELO c\r\nAUTH PLAIN {plain}\r\n").as_bytes(),
            &["250 mx.example.test", "503 5.5.1 Error: send EHLO first"],
        );
    }

    #[test]
    fn submission_and_smtps() {
        let plain = b64("\0bob@example.test\0secret");
        let p = params(Role::Submission);
        check_dialog(
            "submission",
            &p,
            true,
            b"MAIL FROM:<bob@example.test>\r\n",
            &["530 5.7.0 Authentication required"],
        );
        let p = params(Role::Smtps);
        let ehlo = ehlo_lines(&p, true);
        assert!(ehlo.contains(&"250 AUTH PLAIN LOGIN".to_string()));
        assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")));
        let d = check_dialog(
            "smtps",
            &p,
            true,
            format!("MAIL FROM:<bob@example.test>\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<bob@example.test>\r\nRCPT TO:<x@remote.test>\r\nBDAT 2 LAST\r\nhi").as_bytes(),
            &[
                "530 5.7.0 Authentication required",
                "235 2.7.0 Authentication successful",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.0.0 Ok: queued as Q1",
            ],
        );
        assert_eq!(d.txns[0].protocol, "ESMTPSA");
    }

    #[test]
    fn pipelined_input_waits_for_the_driver() {
        let mut s = SmtpSession::new(params(Role::Mx));
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        let burst = format!(
            "EHLO c\r\n{MAIL_RCPT}DATA\r\none\r\n.\r\n{MAIL_RCPT}DATA\r\ntwo\r\n.\r\nQUIT\r\n"
        );
        s.receive(burst.as_bytes(), &TestRcpts, &mut out, &mut ev);
        assert!(String::from_utf8_lossy(&out).ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
        let Some(Event::Deliver(t)) = ev.pop() else {
            panic!("no delivery: {ev:?}")
        };
        assert_eq!(t.data, b"one\r\n");
        assert!(ev.is_empty());
        assert!(!s.wants_input());
        assert!(s.in_transaction());
        // More input while waiting is held, in order.
        s.receive(b"NOOP\r\n", &TestRcpts, &mut out, &mut ev);
        assert!(ev.is_empty());
        out.clear();
        s.delivered(
            DeliveryOutcome::TempFail {
                code: 452,
                enhanced: "4.3.1",
                text: "Insufficient\r\nstorage".into(),
            },
            &TestRcpts,
            &mut out,
            &mut ev,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            lines(&[
                "452 4.3.1 Insufficient  storage",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>"
            ])
        );
        let Some(Event::Deliver(t)) = ev.pop() else {
            panic!("no second delivery")
        };
        assert_eq!(t.data, b"two\r\n");
        assert!(!s.wants_input());
        out.clear();
        s.delivered(
            DeliveryOutcome::PermFail {
                code: 552,
                enhanced: "5.2.2",
                text: "Mailbox full".into(),
            },
            &TestRcpts,
            &mut out,
            &mut ev,
        );
        // QUIT closes; the NOOP held after it is never answered.
        assert_eq!(
            String::from_utf8_lossy(&out),
            lines(&[
                "552 5.2.2 Mailbox full",
                "221 2.0.0 mx.example.test closing connection"
            ])
        );
        assert_eq!(ev, [Event::Close]);
        assert!(s.is_closed() && !s.wants_input());
    }

    #[test]
    fn auth_waits_for_the_driver() {
        let mut p = params(Role::Mx);
        p.plaintext_auth_allowed = true;
        let mut s = SmtpSession::new(p);
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        let burst = format!("EHLO c\r\nAUTH PLAIN {}\r\nNOOP\r\n", b64("\0u\0p"));
        s.receive(burst.as_bytes(), &TestRcpts, &mut out, &mut ev);
        assert_eq!(
            ev,
            [Event::Authenticate {
                username: "u".into(),
                password: "p".into()
            }]
        );
        assert!(!s.wants_input());
        ev.clear();
        out.clear();
        s.auth_result(true, &TestRcpts, &mut out, &mut ev);
        assert_eq!(
            out,
            lines(&["235 2.7.0 Authentication successful", "250 2.0.0 Ok"]).as_bytes()
        );
        assert!(s.wants_input());
    }

    #[test]
    fn timeouts_and_shutdown() {
        let mut s = SmtpSession::new(params(Role::Mx));
        let mut out = Vec::new();
        s.timed_out(&mut out);
        assert_eq!(
            out,
            b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
        );
        assert!(s.is_closed() && !s.wants_input());
        out.clear();
        s.timed_out(&mut out);
        s.shutting_down(&mut out);
        assert!(out.is_empty());

        let mut s = SmtpSession::new(params(Role::Mx));
        s.shutting_down(&mut out);
        assert_eq!(out, b"421 4.3.2 mx.example.test Service shutting down\r\n");
        assert!(s.is_closed());

        // A delivery in flight gets its reply first.
        let mut s = SmtpSession::new(params(Role::Mx));
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        s.receive(
            format!("EHLO c\r\n{MAIL_RCPT}DATA\r\nx\r\n.\r\n").as_bytes(),
            &TestRcpts,
            &mut out,
            &mut ev,
        );
        out.clear();
        s.shutting_down(&mut out);
        assert!(out.is_empty() && !s.is_closed());
        ev.clear();
        s.delivered(
            DeliveryOutcome::Accepted {
                queue_id: "Q9".into(),
            },
            &TestRcpts,
            &mut out,
            &mut ev,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            lines(&[
                "250 2.0.0 Ok: queued as Q9",
                "421 4.3.2 mx.example.test Service shutting down"
            ])
        );
        assert_eq!(ev, [Event::Close]);
        // Stray completions are ignored.
        out.clear();
        s.delivered(
            DeliveryOutcome::Accepted {
                queue_id: "Q9".into(),
            },
            &TestRcpts,
            &mut out,
            &mut ev,
        );
        s.auth_result(true, &TestRcpts, &mut out, &mut ev);
        s.receive(b"NOOP\r\n", &TestRcpts, &mut out, &mut ev);
        assert!(out.is_empty());
    }

    #[test]
    fn error_cap_closes_and_ignores_the_rest() {
        let mut d = Driver::new(params(Role::Mx));
        d.feed(&b"\n".repeat(10));
        d.feed(b"NOOP\r\n");
        let out = d.take_out();
        assert!(
            out.ends_with("421 4.7.0 mx.example.test Error: too many errors\r\n"),
            "{out}"
        );
        assert_eq!(d.closes, 1);
        assert!(d.s.is_closed());
    }

    /// xorshift64*: deterministic, good enough to shake the parser.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn random_input_never_panics() {
        // Whole commands (mostly), fragments and junk.
        const LINES: &[&[u8]] = &[
            b"EHLO x\r\n",
            b"HELO x\r\n",
            b"MAIL FROM:<a@remote.test>\r\n",
            b"MAIL FROM:<> BODY=BINARYMIME\r\n",
            b"MAIL FROM:<> SMTPUTF8 SIZE=100\r\n",
            b"RCPT TO:<bob@example.test>\r\n",
            b"RCPT TO:<x@remote.test>\r\n",
            b"RCPT TO:<\xc3\xa9@example.test>\r\n",
            b"DATA\r\n",
            b"DATA\r\nhello\r\n.\r\n",
            b"BDAT 5 LAST\r\nhello",
            b"BDAT 3\r\n",
            b"BDAT 0 LAST\r\n",
            b"RSET\r\n",
            b"QUIT\r\n",
            b"STARTTLS\r\n",
            b"AUTH PLAIN AGJvYkBleGFtcGxlLnRlc3QAc2VjcmV0\r\n",
            b"AUTH LOGIN\r\n",
            b"AUTH PLAIN\r\n",
            b"Ym9i\r\n",
            b"*\r\n",
            b"NOOP\r\n",
            b"VRFY x\r\n",
            b".\r\n",
            b"\r\n.\r\n",
            b"line of text\r\n",
        ];
        const FRAGMENTS: &[&[u8]] = &[
            b"MAIL FROM:<",
            b"RCPT TO:<\"",
            b"BDAT ",
            b" LAST",
            b" SIZE=",
            b"\r\n",
            b"\n",
            b"\r",
            b".",
            b"<",
            b">",
            b"@",
            b"\0",
            b"\xff",
            b"\xc3\xa9",
            b"%",
            b"!",
            b"/",
            b"12345678901234567890",
            b"9",
            b" ",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut deliveries, mut auths, mut tls, mut closes) = (0, 0, 0, 0);
        for _ in 0..3000 {
            let mut p = params([Role::Mx, Role::Submission, Role::Smtps][rng.below(3)]);
            p.plaintext_auth_allowed = rng.below(2) == 0;
            p.relay_allowed = rng.below(2) == 0;
            p.max_message_size = rng.below(200) as u64;
            p.max_recipients = 1 + rng.below(3);
            // A plausible opening half of the time, so deeper states are reached.
            let mut input = Vec::new();
            if rng.below(2) == 0 {
                input.extend_from_slice(b"EHLO x\r\n");
                if rng.below(3) == 0 {
                    input.extend_from_slice(b"AUTH PLAIN AGJvYkBleGFtcGxlLnRlc3QAc2VjcmV0\r\n");
                }
                input.extend_from_slice(MAIL_RCPT.as_bytes());
            }
            for _ in 0..rng.below(40) {
                match rng.below(10) {
                    0 => (0..rng.below(20)).for_each(|_| input.push(rng.next() as u8)),
                    1 | 2 => input.extend_from_slice(FRAGMENTS[rng.below(FRAGMENTS.len())]),
                    _ => input.extend_from_slice(LINES[rng.below(LINES.len())]),
                }
            }
            let mut s = SmtpSession::new(p);
            let mut out = Vec::new();
            let mut rest = input.as_slice();
            let mut pending: Vec<Event> = Vec::new();
            while !rest.is_empty() || !pending.is_empty() {
                if !pending.is_empty() {
                    let mut next = Vec::new();
                    for event in std::mem::take(&mut pending) {
                        match event {
                            Event::Deliver(t) => {
                                assert!(!t.recipients.is_empty());
                                deliveries += 1;
                                let outcome = match rng.below(3) {
                                    0 => DeliveryOutcome::Accepted {
                                        queue_id: "q".into(),
                                    },
                                    1 => DeliveryOutcome::TempFail {
                                        code: 451,
                                        enhanced: "4.3.0",
                                        text: "t".into(),
                                    },
                                    _ => DeliveryOutcome::PermFail {
                                        code: 554,
                                        enhanced: "5.3.0",
                                        text: "p".into(),
                                    },
                                };
                                s.delivered(outcome, &TestRcpts, &mut out, &mut next);
                            }
                            Event::Authenticate { .. } => {
                                auths += 1;
                                s.auth_result(rng.below(2) == 0, &TestRcpts, &mut out, &mut next)
                            }
                            Event::StartTls => {
                                tls += 1;
                                s.tls_started(&mut out, &mut next)
                            }
                            Event::Close => {
                                closes += 1;
                                assert!(s.is_closed())
                            }
                        }
                    }
                    pending = next;
                    continue;
                }
                let n = 1 + rng.below(rest.len().min(40));
                let (piece, tail) = rest.split_at(n);
                rest = tail;
                s.receive(piece, &TestRcpts, &mut out, &mut pending);
                assert!(s.framer.buffered() <= MAX_SASL_LINE);
                assert!(s.held.len() <= input.len());
            }
            // Every reply line is well-formed.
            for line in String::from_utf8_lossy(&out).split_terminator("\r\n") {
                let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
                assert!(
                    code.is_some_and(|c| (200..600).contains(&c)),
                    "bad reply line {line:?}"
                );
            }
        }
        // The generator reaches the interesting states.
        assert!(
            deliveries > 100 && auths > 100 && tls > 100 && closes > 100,
            "{deliveries} {auths} {tls} {closes}"
        );
    }
}
