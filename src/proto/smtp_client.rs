//! The outbox's SMTP client, sans-IO: one session delivering one message to
//! one server (a smarthost or an MX host).
//!
//! Owns: the client side of RFC 5321 (greeting, EHLO with HELO fallback,
//! STARTTLS (RFC 3207), AUTH PLAIN/LOGIN (RFC 4954), MAIL/RCPT/DATA with
//! PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152) and SMTPUTF8
//! (RFC 6531)), reply parsing with enhanced status codes (RFC 3463), the
//! LF-to-CRLF conversion and dot-stuffing of the message as the driver
//! streams it in (`proto::dotstuff`), and classifying every recipient as
//! delivered, transient (retry) or permanent (bounce).
//!
//! Modelled on OpenSMTPD's `smtp_client.c`: the state is the command in
//! flight and the reply decides the next state. With PIPELINING several
//! commands are in flight at once; they are kept in order in a queue.
//!
//! Must not: touch sockets, TLS sessions, clocks or files. The driver feeds
//! the server's bytes to [`SmtpClient::receive`], writes what the client
//! appends to `out`, runs the TLS handshake on [`ClientEvent::StartTls`],
//! streams the message on [`ClientEvent::SendBody`] (chunks of the stored
//! file into [`SmtpClient::body_chunk`] as the socket takes them, then
//! [`SmtpClient::body_end`]), owns the timers (see
//! [`SmtpClient::reply_timeout`]) and closes the connection on
//! [`ClientEvent::Done`]. The message itself is never held here: what MAIL
//! FROM needs to know of it (its size, 8-bit octets) comes in the
//! [`Envelope`], measured by the driver with [`WireScan`].

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use base64::Engine;

use super::dotstuff::DotStuffer;
pub use super::dotstuff::WireScan;
use super::sasl::BearerMech;

/// Longest reply line accepted, CRLF included. RFC 5321 4.5.3.1.5 sets 512
/// octets; real servers exceed it, so we are lenient up to this bound and
/// call anything longer a protocol error.
pub const MAX_REPLY_LINE: usize = 2048;
/// Most lines in one multiline reply (our own bound; EHLO replies have ~20).
pub const MAX_REPLY_LINES: usize = 128;
/// Bytes of a remote reply kept for the bounce's Diagnostic-Code (RFC 3464
/// 2.3.6) and the queue's last error.
pub const MAX_KEPT_REPLY: usize = 1000;

/// RFC 5321 4.5.3.2.1: initial 220 message, 5 minutes.
const TIMEOUT_GREETING: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 4.5.3.2.2 (MAIL) and 4.5.3.2.3 (RCPT): 5 minutes. Also used for
/// EHLO, STARTTLS and AUTH, for which the RFC names no value.
const TIMEOUT_COMMAND: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 4.5.3.2.4: DATA initiation (the 354), 2 minutes.
const TIMEOUT_DATA_INIT: Duration = Duration::from_secs(2 * 60);
/// RFC 5321 4.5.3.2.5: data block, 3 minutes for each chunk of the message
/// the server's side of the connection takes (the driver restarts the timer
/// whenever a chunk goes out).
const TIMEOUT_DATA_BLOCK: Duration = Duration::from_secs(3 * 60);
/// RFC 5321 4.5.3.2.6: DATA termination (the reply to the final dot), 10 minutes.
const TIMEOUT_DATA_TERM: Duration = Duration::from_secs(10 * 60);

/// How the connection to the remote server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS must succeed before anything else (smarthost with `tls = starttls`).
    Required,
    /// STARTTLS when offered, else plaintext (direct delivery to an MX).
    Opportunistic,
    /// Never STARTTLS, even when offered (`tls = none`).
    None,
    /// The driver has already done the TLS handshake (`tls = tls`, port 465).
    Implicit,
}

/// AUTH credentials for the smarthost. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    /// The password, or with `bearer` an OAuth2 access token.
    pub password: String,
    /// `auth = oauth2`: SASL OAUTHBEARER or XOAUTH2, as EHLO offers.
    pub bearer: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("bearer", &self.bearer)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct ClientParams {
    /// Our name in EHLO/HELO (`[server] hostname`).
    pub helo_name: String,
    pub tls: TlsPolicy,
    /// AUTH only when set.
    pub auth: Option<Credentials>,
    /// Refuse to send credentials over a connection that is not TLS.
    pub auth_requires_tls: bool,
}

/// One message and the recipients this session tries to deliver it to.
/// The message's text is streamed by the driver after
/// [`ClientEvent::SendBody`]: as stored, LF line ends (CRLF and lone CR
/// are also taken as line ends), not dot-stuffed.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The reverse-path without angle brackets; empty for the null
    /// reverse-path of a bounce (`MAIL FROM:<>`).
    pub reverse_path: String,
    /// Forward-paths without angle brackets.
    pub recipients: Vec<String>,
    /// The message's RFC 1870 size (what [`WireScan::size`] says of it).
    pub size: u64,
    /// The message has octets with the high bit set ([`WireScan::eight_bit`]).
    pub eight_bit: bool,
    /// The message was submitted with SMTPUTF8 (RFC 6531): its headers may
    /// hold UTF-8, so it needs a server that offers SMTPUTF8.
    pub smtputf8: bool,
}

/// What the driver must do besides writing `out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Flush `out`, run the TLS handshake, then call
    /// [`SmtpClient::tls_started`] (or [`SmtpClient::tls_failed`]).
    StartTls,
    /// The server said 354: hand the stored message over in chunks with
    /// [`SmtpClient::body_chunk`] (as fast as the socket takes them), then
    /// call [`SmtpClient::body_end`].
    SendBody,
    /// Flush `out` (it may hold QUIT), then close. The session is over.
    Done(SessionResult),
}

/// The fate of one recipient in this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server took responsibility (250 to the final dot).
    Delivered { reply: String },
    /// Retry later (4xx, connection trouble, local policy that an operator can fix).
    Transient {
        reply: String,
        enhanced: Option<String>,
    },
    /// Bounce (5xx, or a local refusal no retry can fix).
    Permanent { reply: String, enhanced: String },
}

impl Outcome {
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }
    pub fn is_permanent(&self) -> bool {
        matches!(self, Outcome::Permanent { .. })
    }
    pub fn is_transient(&self) -> bool {
        matches!(self, Outcome::Transient { .. })
    }
    /// The words kept for logs, the queue's last error and the bounce.
    pub fn reply(&self) -> &str {
        match self {
            Outcome::Delivered { reply }
            | Outcome::Transient { reply, .. }
            | Outcome::Permanent { reply, .. } => reply,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    pub recipient: String,
    pub outcome: Outcome,
    /// True when `outcome`'s reply is the remote server's answer verbatim
    /// (bounded): the bounce writes it as `Diagnostic-Code: smtp; ...` and
    /// names the Remote-MTA. False for reasons found locally.
    pub remote: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionResult {
    /// One per envelope recipient, in envelope order.
    pub recipients: Vec<RcptResult>,
    /// The server's 220 greeting (bounded), for logs.
    pub greeting: Option<String>,
    /// The session was encrypted (implicit TLS or STARTTLS) when it ended.
    pub tls: bool,
    /// The failure was about this server or connection, before any recipient
    /// got its own answer: in direct mode, try the next MX host with the same
    /// recipients before acting on the outcomes (RFC 5321 5.1).
    pub try_next_host: bool,
    /// The message has 8-bit bytes and the server did not offer 8BITMIME; it
    /// was sent anyway (recorded for logs).
    pub sent_8bit_without_8bitmime: bool,
}

/// One complete server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The RFC 3463 code from the first line, when its class matches the reply's.
    pub enhanced: Option<String>,
    /// The text of each line, after `NNN-` / `NNN `, sanitized.
    pub lines: Vec<String>,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }

    /// `"550 5.1.1 first line second line"`, bounded to [`MAX_KEPT_REPLY`].
    pub fn text(&self) -> String {
        let mut s = self.code.to_string();
        for line in &self.lines {
            if !line.is_empty() {
                s.push(' ');
                s.push_str(line);
            }
        }
        truncate_chars(s, MAX_KEPT_REPLY)
    }
}

fn truncate_chars(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Reply text as kept: lossy UTF-8, control characters replaced.
fn sanitize(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// RFC 3463 2: `class "." subject "." detail`, class 2/4/5 matching the
/// reply code (RFC 2034 says it must), subject and detail 1 to 3 digits.
fn parse_enhanced(class: u16, text: &str) -> Option<String> {
    let token = text.split(' ').next()?;
    let mut parts = token.split('.');
    let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || c != class.to_string() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    let digits = |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    (digits(s) && digits(d)).then(|| token.to_string())
}

/// Parses one reply line (line end removed): `(code, is_last, text)`.
/// RFC 5321 4.2: `Reply-code [ SP / "-" textstring ]`, with the code's
/// first digit 2-5 and second 0-5.
fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, String), String> {
    let (digits, last, text): (&[u8], bool, &[u8]) = match line {
        [a, b, c] => (&[*a, *b, *c][..], true, &[][..]),
        [a, b, c, b' ', rest @ ..] => (&[*a, *b, *c][..], true, rest),
        [a, b, c, b'-', rest @ ..] => (&[*a, *b, *c][..], false, rest),
        _ => return Err(format!("malformed reply line {:?}", bounded_sample(line))),
    };
    let ok = match digits {
        [a, b, c] => (b'2'..=b'5').contains(a) && (b'0'..=b'5').contains(b) && c.is_ascii_digit(),
        _ => false,
    };
    if !ok {
        return Err(format!("malformed reply line {:?}", bounded_sample(line)));
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    Ok((code, last, sanitize(text)))
}

fn bounded_sample(line: &[u8]) -> String {
    truncate_chars(sanitize(line), 80)
}

/// Splits the server's byte stream into replies, enforcing the line bounds.
#[derive(Debug, Default)]
struct ReplyReader {
    buf: Vec<u8>,
    /// Code and lines of a multiline reply still being read.
    partial: Option<(u16, Vec<String>)>,
}

impl ReplyReader {
    fn push(&mut self, input: &[u8]) {
        self.buf.extend_from_slice(input);
    }

    /// Bytes received that are not yet part of a complete reply.
    fn has_pending(&self) -> bool {
        !self.buf.is_empty() || self.partial.is_some()
    }

    fn next_reply(&mut self) -> Result<Option<Reply>, String> {
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(format!("reply line longer than {MAX_REPLY_LINE} bytes"));
                }
                return Ok(None);
            };
            if nl + 1 > MAX_REPLY_LINE {
                return Err(format!("reply line longer than {MAX_REPLY_LINE} bytes"));
            }
            let raw: Vec<u8> = self.buf.drain(..=nl).collect();
            // Servers are meant to end lines with CRLF; a bare LF is taken
            // too (as OpenSMTPD's reader does), the CR is not part of the text.
            let line = match raw.as_slice() {
                [l @ .., b'\r', b'\n'] | [l @ .., b'\n'] => l,
                l => l,
            };
            let (code, last, text) = parse_reply_line(line)?;
            match &mut self.partial {
                Some((c, lines)) => {
                    if *c != code {
                        return Err(format!("multiline reply changes code from {c} to {code}"));
                    }
                    lines.push(text);
                    if lines.len() > MAX_REPLY_LINES {
                        return Err(format!("reply longer than {MAX_REPLY_LINES} lines"));
                    }
                }
                None => self.partial = Some((code, vec![text])),
            }
            if last {
                let Some((code, lines)) = self.partial.take() else {
                    continue;
                };
                let enhanced = lines.first().and_then(|l| parse_enhanced(code / 100, l));
                return Ok(Some(Reply {
                    code,
                    enhanced,
                    lines,
                }));
            }
        }
    }
}

/// What the server's EHLO reply offered (RFC 5321 4.1.1.1).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Caps {
    pipelining: bool,
    /// RFC 1870: `Some(0)` offered without a limit.
    size: Option<u64>,
    eightbitmime: bool,
    smtputf8: bool,
    starttls: bool,
    auth_offered: bool,
    auth_plain: bool,
    auth_login: bool,
    auth_xoauth2: bool,
    auth_oauthbearer: bool,
}

impl Caps {
    fn from_ehlo(reply: &Reply) -> Caps {
        let mut caps = Caps::default();
        // The first line is the server's name and greeting, not a keyword.
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let keyword = keyword.to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                _ => {
                    // `AUTH PLAIN LOGIN`, or the pre-RFC 4954 `AUTH=PLAIN LOGIN`.
                    let first = match keyword.strip_prefix("AUTH") {
                        Some("") => None,
                        Some(rest) => match rest.strip_prefix('=') {
                            Some(mech) => Some(mech.to_string()),
                            None => continue,
                        },
                        None => continue,
                    };
                    caps.auth_offered = true;
                    for mech in first.into_iter().chain(words.map(str::to_ascii_uppercase)) {
                        match mech.as_str() {
                            "PLAIN" => caps.auth_plain = true,
                            "LOGIN" => caps.auth_login = true,
                            "XOAUTH2" => caps.auth_xoauth2 = true,
                            "OAUTHBEARER" => caps.auth_oauthbearer = true,
                            _ => {}
                        }
                    }
                }
            }
        }
        caps
    }
}

/// The command whose reply is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Banner,
    Ehlo,
    Helo,
    StartTls,
    /// `AUTH PLAIN <initial response>`.
    AuthPlain,
    /// The initial response sent after a 334 to a bare AUTH PLAIN.
    AuthPlainResponse,
    AuthLogin,
    AuthLoginUser,
    AuthLoginPass,
    /// `AUTH mech <initial response>` with an OAuth2 token.
    AuthBearer(BearerMech),
    /// The failure challenge acknowledged; the 5xx follows.
    AuthBearerAbort,
    Mail,
    Rcpt(usize),
    Data,
    /// The message and its final dot.
    Body,
    /// A lone dot after a 354 with no accepted recipient (RFC 2920 3.1).
    EmptyBody,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Banner => "the greeting",
            Cmd::Ehlo => "EHLO",
            Cmd::Helo => "HELO",
            Cmd::StartTls => "STARTTLS",
            Cmd::AuthPlain
            | Cmd::AuthPlainResponse
            | Cmd::AuthLogin
            | Cmd::AuthLoginUser
            | Cmd::AuthLoginPass
            | Cmd::AuthBearer(_)
            | Cmd::AuthBearerAbort => "AUTH",
            Cmd::Mail => "MAIL FROM",
            Cmd::Rcpt(_) => "RCPT TO",
            Cmd::Data => "DATA",
            Cmd::Body | Cmd::EmptyBody => "end of DATA",
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Cmd::Banner => TIMEOUT_GREETING,
            Cmd::Data => TIMEOUT_DATA_INIT,
            Cmd::Body | Cmd::EmptyBody => TIMEOUT_DATA_TERM,
            _ => TIMEOUT_COMMAND,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// 354 received; the driver streams the message in.
    Body,
    /// STARTTLS accepted; waiting for the driver's handshake.
    TlsHandshake,
    Done,
}

/// One SMTP client session. See the module doc for the driver's part.
#[derive(Debug)]
pub struct SmtpClient {
    params: ClientParams,
    env: Envelope,
    reader: ReplyReader,
    /// Commands sent whose replies are awaited, oldest first.
    in_flight: VecDeque<Cmd>,
    phase: Phase,
    caps: Caps,
    tls_active: bool,
    /// STARTTLS was sent once; never again in this session.
    starttls_tried: bool,
    authed: bool,
    /// MAIL, RCPTs and DATA went out in one write (RFC 2920).
    pipelined: bool,
    /// Recipient indexes sent (or to send) in RCPT TO, in order.
    to_send: Vec<usize>,
    /// Next index into `to_send` (without pipelining).
    next_rcpt: usize,
    /// Recipients with a 2xx to RCPT, awaiting the end of DATA.
    accepted: Vec<usize>,
    /// Final outcome per recipient, and whether it is the remote's words.
    outcomes: Vec<Option<(Outcome, bool)>>,
    any_rcpt_answered: bool,
    body_sent: bool,
    try_next_host: bool,
    greeting: Option<String>,
    sent_8bit_without_8bitmime: bool,
    final_result: Option<SessionResult>,
    /// Stuffs the message's chunks as they come (RFC 5321 4.5.2).
    stuffer: DotStuffer,
}

impl SmtpClient {
    /// A session that waits for the server's greeting; nothing to send yet.
    pub fn new(mut params: ClientParams, env: Envelope) -> SmtpClient {
        // The name goes into a command line: keep it one line.
        params.helo_name.retain(|c| !c.is_control() && c != ' ');
        if params.helo_name.is_empty() {
            params.helo_name = "localhost".to_string();
        }
        let tls_active = params.tls == TlsPolicy::Implicit;
        let outcomes = vec![None; env.recipients.len()];
        SmtpClient {
            params,
            env,
            reader: ReplyReader::default(),
            in_flight: VecDeque::from([Cmd::Banner]),
            phase: Phase::Running,
            caps: Caps::default(),
            tls_active,
            starttls_tried: false,
            authed: false,
            pipelined: false,
            to_send: Vec::new(),
            next_rcpt: 0,
            accepted: Vec::new(),
            outcomes,
            any_rcpt_answered: false,
            body_sent: false,
            try_next_host: false,
            greeting: None,
            sent_8bit_without_8bitmime: false,
            final_result: None,
            stuffer: DotStuffer::new(),
        }
    }

    /// Where the session is, for logs ("RCPT TO", "TLS handshake", "done").
    pub fn state(&self) -> &'static str {
        match self.phase {
            Phase::Done => "done",
            Phase::TlsHandshake => "TLS handshake",
            Phase::Body => "the message",
            Phase::Running => self.in_flight.front().map_or("idle", |c| c.name()),
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// How long the driver waits for the next reply before calling
    /// [`SmtpClient::timed_out`] (RFC 5321 4.5.3.2). Re-read after each call.
    pub fn reply_timeout(&self) -> Duration {
        if self.phase == Phase::Body {
            return TIMEOUT_DATA_BLOCK;
        }
        self.in_flight
            .front()
            .map_or(TIMEOUT_COMMAND, |c| c.timeout())
    }

    /// True between [`ClientEvent::SendBody`] and [`SmtpClient::body_end`].
    pub fn wants_body(&self) -> bool {
        self.phase == Phase::Body
    }

    /// The next chunk of the stored message (any size, cut anywhere):
    /// appends its wire form to `out`. Ignored unless [`SmtpClient::wants_body`].
    pub fn body_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.phase == Phase::Body {
            self.stuffer.encode(chunk, out);
        }
    }

    /// The whole message went through [`SmtpClient::body_chunk`]: ends it
    /// with the final dot and waits for the server's verdict. Replies that
    /// came in the same read as the 354 are read now, so the event is what
    /// `receive` would have returned for them.
    pub fn body_end(&mut self, out: &mut Vec<u8>) -> Option<ClientEvent> {
        if self.phase != Phase::Body {
            return None;
        }
        self.stuffer.finish(out);
        self.phase = Phase::Running;
        self.in_flight.push_back(Cmd::Body);
        self.receive(&[], out)
    }

    /// The stored message could not be read while it was being sent: the
    /// data is cut short, so the driver closes without the final dot (the
    /// server then discards the partial message) and every recipient still
    /// open is retried later.
    pub fn body_failed(&mut self, reason: &str) -> SessionResult {
        let reason = format!(
            "cannot read the queued message: {}",
            truncate_chars(reason.to_string(), 200)
        );
        self.abort(&reason, "4.3.0")
    }

    /// Feeds bytes from the server; appends the client's commands to `out`.
    pub fn receive(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<ClientEvent> {
        match self.phase {
            Phase::Done => return None,
            Phase::TlsHandshake => {
                if input.is_empty() {
                    return None;
                }
                // The driver feeds plaintext only; bytes now would be plaintext
                // injected before the handshake (RFC 3207 6).
                return Some(self.malformed("plaintext received during the TLS handshake"));
            }
            Phase::Body => {
                // No reply is due before the final dot; a whole one now is
                // the server out of step (or closing, which the driver sees).
                self.reader.push(input);
                return match self.reader.next_reply() {
                    Ok(None) => None,
                    Ok(Some(reply)) => Some(self.malformed(&format!(
                        "reply before the end of the message: {}",
                        reply.text()
                    ))),
                    Err(e) => Some(self.malformed(&e)),
                };
            }
            Phase::Running => {}
        }
        self.reader.push(input);
        loop {
            let reply = match self.reader.next_reply() {
                Ok(Some(reply)) => reply,
                Ok(None) => return None,
                Err(e) => return Some(self.malformed(&e)),
            };
            let Some(cmd) = self.in_flight.pop_front() else {
                return Some(self.malformed(&format!(
                    "unexpected reply with no command in flight: {}",
                    reply.text()
                )));
            };
            if let Some(event) = self.handle(cmd, reply, out) {
                return Some(event);
            }
        }
    }

    /// The TLS handshake after STARTTLS succeeded: start over with EHLO
    /// (RFC 3207 4.2: forget everything learnt before TLS).
    pub fn tls_started(&mut self, out: &mut Vec<u8>) {
        if self.phase != Phase::TlsHandshake {
            return;
        }
        self.phase = Phase::Running;
        self.tls_active = true;
        self.caps = Caps::default();
        self.send_ehlo(out);
    }

    /// The TLS handshake failed: every unfinished recipient is transient.
    pub fn tls_failed(&mut self, reason: &str) -> SessionResult {
        let reason = format!(
            "TLS handshake failed: {}",
            truncate_chars(reason.to_string(), 200)
        );
        self.abort(&reason, "4.7.5")
    }

    /// The connection closed or failed. Unfinished recipients become
    /// transient; a session already done keeps its result.
    pub fn connection_lost(&mut self) -> SessionResult {
        let reason = format!("connection lost {}", self.waiting_for());
        self.abort(&reason, "4.4.2")
    }

    /// [`SmtpClient::reply_timeout`] passed without a reply.
    pub fn timed_out(&mut self) -> SessionResult {
        let reason = format!("timeout {}", self.waiting_for());
        self.abort(&reason, "4.4.2")
    }

    fn waiting_for(&self) -> String {
        match self.phase {
            Phase::TlsHandshake => "during the TLS handshake".to_string(),
            Phase::Body => "while sending the message".to_string(),
            _ => match self.in_flight.front() {
                Some(cmd) => format!("while waiting for the reply to {}", cmd.name()),
                None => "after the session ended".to_string(),
            },
        }
    }

    fn abort(&mut self, reason: &str, enhanced: &str) -> SessionResult {
        if let Some(result) = &self.final_result {
            return result.clone();
        }
        self.mark_session_failure();
        self.fail_local(false, enhanced, reason);
        self.finish()
    }

    // ---- the dispatch: the reply to `cmd` decides what comes next ----

    fn handle(&mut self, cmd: Cmd, reply: Reply, out: &mut Vec<u8>) -> Option<ClientEvent> {
        // RFC 5321 3.8: 421 means the server is closing the channel; any
        // command may get it. No QUIT.
        if reply.code == 421 {
            self.mark_session_failure();
            self.fail_remote(&reply);
            return Some(ClientEvent::Done(self.finish()));
        }
        let class = reply.class();
        match (cmd, class) {
            (Cmd::Banner, 2) => {
                self.greeting = Some(reply.text());
                self.send_ehlo(out);
                None
            }
            (Cmd::Banner, 4 | 5) => {
                // A 554 greeting is about this server, not the recipients.
                self.mark_session_failure();
                self.fail_remote(&reply);
                Some(self.quit(out))
            }
            (Cmd::Ehlo, 2) => {
                self.caps = Caps::from_ehlo(&reply);
                self.after_hello(out)
            }
            (Cmd::Ehlo, 5) => {
                // RFC 5321 3.2: a server that does not know EHLO gets HELO.
                out.extend_from_slice(format!("HELO {}\r\n", self.params.helo_name).as_bytes());
                self.in_flight.push_back(Cmd::Helo);
                None
            }
            (Cmd::Helo, 2) => {
                self.caps = Caps::default();
                self.after_hello(out)
            }
            (Cmd::Ehlo | Cmd::Helo, 4 | 5) | (Cmd::Mail, 4) => {
                self.mark_session_failure();
                self.fail_remote(&reply);
                self.after_mail_failure(out)
            }
            (Cmd::StartTls, 2) => {
                if self.reader.has_pending() {
                    // RFC 3207 6 / CVE-2011-0411: anything after the 220 is
                    // plaintext a man in the middle could have injected.
                    return Some(self.malformed("server sent data after its reply to STARTTLS"));
                }
                self.phase = Phase::TlsHandshake;
                Some(ClientEvent::StartTls)
            }
            (Cmd::StartTls, 4 | 5) => {
                if self.params.tls == TlsPolicy::Required {
                    self.mark_session_failure();
                    let reason = format!(
                        "remote server refused STARTTLS, which the config requires: {}",
                        reply.text()
                    );
                    self.fail_local(false, "4.7.0", &reason);
                    Some(self.quit(out))
                } else {
                    // Opportunistic: go on in plaintext, as Postfix does.
                    self.after_hello(out)
                }
            }
            (Cmd::AuthBearer(mech), 3) => {
                // RFC 7628 3.2.3 (and XOAUTH2 alike): a challenge here is the
                // failure report; acknowledge it and the 5xx follows.
                let report = reply.lines.first().map(String::as_str).unwrap_or("");
                log::info!(
                    "smarthost refused the OAuth2 token: {}",
                    super::sasl::bearer_failure(report)
                );
                out.extend_from_slice(mech.abort_response().as_bytes());
                out.extend_from_slice(b"\r\n");
                self.in_flight.push_back(Cmd::AuthBearerAbort);
                None
            }
            (
                Cmd::AuthPlain
                | Cmd::AuthLoginPass
                | Cmd::AuthPlainResponse
                | Cmd::AuthLogin
                | Cmd::AuthBearer(_),
                2,
            ) => {
                self.authed = true;
                self.after_hello(out)
            }
            (Cmd::AuthPlain, 3) => {
                // The server ignored the initial response form; send it now.
                let response = self.plain_response();
                out.extend_from_slice(format!("{response}\r\n").as_bytes());
                self.in_flight.push_back(Cmd::AuthPlainResponse);
                None
            }
            (Cmd::AuthLogin, 3) => {
                let user = b64(self.creds().username.as_bytes());
                out.extend_from_slice(format!("{user}\r\n").as_bytes());
                self.in_flight.push_back(Cmd::AuthLoginUser);
                None
            }
            (Cmd::AuthLoginUser, 3) => {
                let pass = b64(self.creds().password.as_bytes());
                out.extend_from_slice(format!("{pass}\r\n").as_bytes());
                self.in_flight.push_back(Cmd::AuthLoginPass);
                None
            }
            (
                Cmd::AuthPlain
                | Cmd::AuthPlainResponse
                | Cmd::AuthLogin
                | Cmd::AuthLoginUser
                | Cmd::AuthLoginPass
                | Cmd::AuthBearer(_)
                | Cmd::AuthBearerAbort,
                _,
            ) => {
                // 535 and friends: wrong credentials at the smarthost are an
                // operator problem, not the recipients'. Transient, so mail
                // waits in the queue until the admin fixes the config,
                // instead of bouncing everything.
                let reason = format!("authentication failed at the smarthost: {}", reply.text());
                self.fail_local(false, "4.7.8", &reason);
                Some(self.quit(out))
            }
            (Cmd::Mail, 2) => {
                if self.pipelined {
                    None
                } else {
                    self.send_next_rcpt(out)
                }
            }
            (Cmd::Mail, 5) => {
                self.fail_remote(&reply);
                self.after_mail_failure(out)
            }
            (Cmd::Rcpt(i), 2 | 4 | 5) => {
                self.any_rcpt_answered = true;
                // With PIPELINING the RCPT replies after a failed MAIL are
                // noise: those recipients already carry MAIL's answer.
                if matches!(self.outcomes.get(i), Some(None)) {
                    if class == 2 {
                        self.accepted.push(i);
                    } else if let Some(slot) = self.outcomes.get_mut(i) {
                        *slot = Some((remote_outcome(&reply), true));
                    }
                }
                if self.pipelined {
                    None
                } else {
                    self.send_next_rcpt(out)
                }
            }
            (Cmd::Data, 3) => {
                if self.accepted.is_empty() {
                    // RFC 2920 3.1: a 354 with no valid recipient; end the
                    // empty content with a lone dot, then leave.
                    out.extend_from_slice(b".\r\n");
                    self.in_flight.push_back(Cmd::EmptyBody);
                    None
                } else {
                    self.body_sent = true;
                    self.stuffer = DotStuffer::new();
                    self.phase = Phase::Body;
                    Some(ClientEvent::SendBody)
                }
            }
            (Cmd::Data, 4 | 5) => {
                self.fail_accepted(&reply);
                Some(self.quit(out))
            }
            (Cmd::Body, 2) => {
                let reply = reply.text();
                for &i in &self.accepted {
                    if let Some(slot @ None) = self.outcomes.get_mut(i) {
                        *slot = Some((
                            Outcome::Delivered {
                                reply: reply.clone(),
                            },
                            true,
                        ));
                    }
                }
                Some(self.quit(out))
            }
            (Cmd::Body, 4 | 5) => {
                self.fail_accepted(&reply);
                Some(self.quit(out))
            }
            (Cmd::EmptyBody, _) => Some(self.quit(out)),
            (cmd, _) => {
                let reason = format!("unexpected reply to {}: {}", cmd.name(), reply.text());
                self.mark_session_failure();
                self.fail_local(false, "4.5.0", &reason);
                Some(self.quit(out))
            }
        }
    }

    fn send_ehlo(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("EHLO {}\r\n", self.params.helo_name).as_bytes());
        self.in_flight.push_back(Cmd::Ehlo);
    }

    /// After EHLO/HELO (or a step of TLS/AUTH): the next step of the
    /// session's set-up, or the mail transaction.
    fn after_hello(&mut self, out: &mut Vec<u8>) -> Option<ClientEvent> {
        let wants_tls = matches!(
            self.params.tls,
            TlsPolicy::Required | TlsPolicy::Opportunistic
        );
        if wants_tls && !self.tls_active && !self.starttls_tried {
            if self.caps.starttls {
                self.starttls_tried = true;
                out.extend_from_slice(b"STARTTLS\r\n");
                self.in_flight.push_back(Cmd::StartTls);
                return None;
            }
            if self.params.tls == TlsPolicy::Required {
                self.mark_session_failure();
                self.fail_local(
                    false,
                    "4.7.0",
                    "remote server does not offer STARTTLS, which the config requires (tls = starttls)",
                );
                return Some(self.quit(out));
            }
        }
        if self.params.auth.is_some() && !self.authed {
            return self.start_auth(out);
        }
        self.start_transaction(out)
    }

    fn creds(&self) -> Credentials {
        self.params.auth.clone().unwrap_or(Credentials {
            username: String::new(),
            password: String::new(),
            bearer: false,
        })
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`, empty authzid.
    fn plain_response(&self) -> String {
        let creds = self.creds();
        let mut raw = Vec::with_capacity(creds.username.len() + creds.password.len() + 2);
        raw.push(0);
        raw.extend_from_slice(creds.username.as_bytes());
        raw.push(0);
        raw.extend_from_slice(creds.password.as_bytes());
        b64(&raw)
    }

    fn start_auth(&mut self, out: &mut Vec<u8>) -> Option<ClientEvent> {
        if self.params.auth_requires_tls && !self.tls_active {
            // Never put the password on a plaintext wire.
            self.fail_local(
                false,
                "4.7.0",
                "refusing AUTH over plaintext: the connection to the smarthost is not encrypted",
            );
            return Some(self.quit(out));
        }
        if self.creds().bearer {
            return self.start_bearer(out);
        }
        if self.caps.auth_plain {
            let response = self.plain_response();
            out.extend_from_slice(format!("AUTH PLAIN {response}\r\n").as_bytes());
            self.in_flight.push_back(Cmd::AuthPlain);
            None
        } else if self.caps.auth_login {
            out.extend_from_slice(b"AUTH LOGIN\r\n");
            self.in_flight.push_back(Cmd::AuthLogin);
            None
        } else {
            // Credentials are configured, so the operator expects AUTH;
            // sending without it would most likely be refused as relaying.
            let reason = if self.caps.auth_offered {
                "smarthost offers neither AUTH PLAIN nor AUTH LOGIN"
            } else {
                "smarthost does not offer AUTH, but credentials are configured"
            };
            self.fail_local(false, "4.7.0", reason);
            Some(self.quit(out))
        }
    }

    /// `auth = oauth2`: the initial response on the AUTH line (RFC 4954 4
    /// allows it up to 12288 octets, which Gmail and Exchange Online use).
    fn start_bearer(&mut self, out: &mut Vec<u8>) -> Option<ClientEvent> {
        let offered = [
            (self.caps.auth_oauthbearer, "OAUTHBEARER"),
            (self.caps.auth_xoauth2, "XOAUTH2"),
        ];
        let Some(mech) = BearerMech::choose(offered.iter().filter(|o| o.0).map(|o| o.1)) else {
            self.fail_local(
                false,
                "4.7.0",
                "smarthost offers neither AUTH XOAUTH2 nor OAUTHBEARER (auth = oauth2)",
            );
            return Some(self.quit(out));
        };
        let creds = self.creds();
        let Some(response) = mech.initial_response(&creds.username, &creds.password) else {
            self.fail_local(
                false,
                "4.7.0",
                "username or OAuth2 access token unusable (empty or bad characters)",
            );
            return Some(self.quit(out));
        };
        out.extend_from_slice(format!("AUTH {} {response}\r\n", mech.name()).as_bytes());
        self.in_flight.push_back(Cmd::AuthBearer(mech));
        None
    }

    /// Local checks, then MAIL FROM (with RCPTs and DATA when pipelining).
    fn start_transaction(&mut self, out: &mut Vec<u8>) -> Option<ClientEvent> {
        let rp = self.env.reverse_path.clone();
        if !is_safe_path(&rp) {
            self.fail_local(true, "5.1.7", "invalid characters in the reverse-path");
            return Some(self.quit(out));
        }
        for i in 0..self.env.recipients.len() {
            let bad = self
                .env
                .recipients
                .get(i)
                .is_some_and(|r| !is_safe_path(r) || r.is_empty());
            if bad {
                self.set_local(
                    i,
                    true,
                    "5.1.3",
                    "invalid characters in the recipient address",
                );
            }
        }

        // RFC 6531 3.2: without SMTPUTF8 at the server, what needs it
        // cannot go; no downgrade is attempted.
        let needs_utf8_all = self.env.smtputf8 || !rp.is_ascii();
        let mut needs_utf8_any = needs_utf8_all;
        const NO_UTF8: &str =
            "the address needs SMTPUTF8 (RFC 6531) and the remote server does not offer it";
        for i in 0..self.env.recipients.len() {
            let ascii = self.env.recipients.get(i).is_none_or(|r| r.is_ascii());
            if !ascii && matches!(self.outcomes.get(i), Some(None)) {
                needs_utf8_any = true;
                if !self.caps.smtputf8 {
                    self.set_local(i, true, "5.6.7", NO_UTF8);
                }
            }
        }
        if needs_utf8_all && !self.caps.smtputf8 {
            self.fail_local(
                true,
                "5.6.7",
                "the message needs SMTPUTF8 (RFC 6531) and the remote server does not offer it",
            );
            return Some(self.quit(out));
        }

        let size = self.env.size;
        if let Some(limit) = self.caps.size {
            if limit > 0 && size > limit {
                let reason = format!(
                    "message size {size} exceeds the remote server's limit of {limit} (RFC 1870)"
                );
                self.fail_local(true, "5.3.4", &reason);
                return Some(self.quit(out));
            }
        }

        self.to_send = (0..self.outcomes.len())
            .filter(|&i| matches!(self.outcomes.get(i), Some(None)))
            .collect();
        if self.to_send.is_empty() {
            return Some(self.quit(out));
        }

        let mut mail = format!("MAIL FROM:<{rp}>");
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if self.env.eight_bit {
            if self.caps.eightbitmime {
                mail.push_str(" BODY=8BITMIME");
            } else {
                // Sent as is, like most MTAs do today; recorded for the logs.
                self.sent_8bit_without_8bitmime = true;
            }
        }
        if needs_utf8_any && self.caps.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        out.extend_from_slice(mail.as_bytes());
        self.in_flight.push_back(Cmd::Mail);

        if self.caps.pipelining {
            // RFC 2920 3.1: MAIL, every RCPT and DATA in one group; DATA last.
            self.pipelined = true;
            for &i in &self.to_send {
                let rcpt = self.env.recipients.get(i).map_or("", String::as_str);
                out.extend_from_slice(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
                self.in_flight.push_back(Cmd::Rcpt(i));
            }
            out.extend_from_slice(b"DATA\r\n");
            self.in_flight.push_back(Cmd::Data);
            self.next_rcpt = self.to_send.len();
        }
        None
    }

    /// Without PIPELINING: the next RCPT, else DATA, else QUIT.
    fn send_next_rcpt(&mut self, out: &mut Vec<u8>) -> Option<ClientEvent> {
        if let Some(&i) = self.to_send.get(self.next_rcpt) {
            self.next_rcpt += 1;
            let rcpt = self.env.recipients.get(i).map_or("", String::as_str);
            out.extend_from_slice(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
            self.in_flight.push_back(Cmd::Rcpt(i));
            None
        } else if !self.accepted.is_empty() {
            out.extend_from_slice(b"DATA\r\n");
            self.in_flight.push_back(Cmd::Data);
            None
        } else {
            // No recipient accepted: no DATA, just leave.
            Some(self.quit(out))
        }
    }

    /// After MAIL (or EHLO) failed: with PIPELINING the RCPT and DATA
    /// replies are still to come and must be read; otherwise leave.
    fn after_mail_failure(&mut self, out: &mut Vec<u8>) -> Option<ClientEvent> {
        if self.pipelined && !self.in_flight.is_empty() {
            None
        } else {
            Some(self.quit(out))
        }
    }

    fn mark_session_failure(&mut self) {
        if !self.any_rcpt_answered && !self.body_sent {
            self.try_next_host = true;
        }
    }

    fn set_local(&mut self, i: usize, permanent: bool, enhanced: &str, reason: &str) {
        if let Some(slot @ None) = self.outcomes.get_mut(i) {
            *slot = Some((local_outcome(permanent, enhanced, reason), false));
        }
    }

    /// Every recipient without an outcome yet gets this local reason.
    fn fail_local(&mut self, permanent: bool, enhanced: &str, reason: &str) {
        for i in 0..self.outcomes.len() {
            self.set_local(i, permanent, enhanced, reason);
        }
    }

    /// Every recipient without an outcome yet gets the server's reply.
    fn fail_remote(&mut self, reply: &Reply) {
        for slot in self.outcomes.iter_mut().filter(|s| s.is_none()) {
            *slot = Some((remote_outcome(reply), true));
        }
    }

    /// The recipients accepted at RCPT get the reply to DATA or the final dot.
    fn fail_accepted(&mut self, reply: &Reply) {
        for &i in &self.accepted {
            if let Some(slot @ None) = self.outcomes.get_mut(i) {
                *slot = Some((remote_outcome(reply), true));
            }
        }
    }

    /// The reply stream itself is broken: no QUIT, just close.
    fn malformed(&mut self, what: &str) -> ClientEvent {
        let reason = format!("protocol error {}: {what}", self.waiting_for());
        ClientEvent::Done(self.abort(&reason, "4.5.0"))
    }

    fn quit(&mut self, out: &mut Vec<u8>) -> ClientEvent {
        out.extend_from_slice(b"QUIT\r\n");
        ClientEvent::Done(self.finish())
    }

    fn finish(&mut self) -> SessionResult {
        if let Some(result) = &self.final_result {
            return result.clone();
        }
        self.phase = Phase::Done;
        self.in_flight.clear();
        let recipients = self
            .env
            .recipients
            .iter()
            .zip(&self.outcomes)
            .map(|(rcpt, outcome)| {
                let (outcome, remote) = outcome.clone().unwrap_or_else(|| {
                    // Unreachable by construction; a safe answer if not.
                    (
                        local_outcome(false, "4.0.0", "session ended without an answer"),
                        false,
                    )
                });
                RcptResult {
                    recipient: rcpt.clone(),
                    outcome,
                    remote,
                }
            })
            .collect();
        let result = SessionResult {
            recipients,
            greeting: self.greeting.clone(),
            tls: self.tls_active,
            try_next_host: self.try_next_host,
            sent_8bit_without_8bitmime: self.sent_8bit_without_8bitmime,
        };
        self.final_result = Some(result.clone());
        result
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A path must stay inside its `<...>` on one command line.
fn is_safe_path(path: &str) -> bool {
    !path
        .chars()
        .any(|c| c.is_control() || matches!(c, '<' | '>' | ' '))
}

fn local_outcome(permanent: bool, enhanced: &str, reason: &str) -> Outcome {
    if permanent {
        Outcome::Permanent {
            reply: reason.to_string(),
            enhanced: enhanced.to_string(),
        }
    } else {
        Outcome::Transient {
            reply: reason.to_string(),
            enhanced: Some(enhanced.to_string()),
        }
    }
}

/// 5xx is permanent, anything else that is a failure is transient.
fn remote_outcome(reply: &Reply) -> Outcome {
    if reply.class() == 5 {
        Outcome::Permanent {
            reply: reply.text(),
            // RFC 3463 3.1: X.0.0 when the server gave no detail.
            enhanced: reply
                .enhanced
                .clone()
                .unwrap_or_else(|| "5.0.0".to_string()),
        }
    } else {
        Outcome::Transient {
            reply: reply.text(),
            enhanced: reply.enhanced.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(tls: TlsPolicy, auth: bool) -> ClientParams {
        ClientParams {
            helo_name: "gw.example.test".into(),
            tls,
            auth: auth.then(|| Credentials {
                username: "bob".into(),
                password: "secret".into(),
                bearer: false,
            }),
            auth_requires_tls: true,
        }
    }

    thread_local! {
        /// The text of the test's message, streamed on `SendBody` as the
        /// driver would stream the queued file (each test is one thread).
        static MESSAGE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn envelope(rcpts: &[&str], msg: &[u8]) -> Envelope {
        MESSAGE.with(|m| *m.borrow_mut() = msg.to_vec());
        let mut scan = WireScan::new();
        scan.feed(msg);
        Envelope {
            reverse_path: "alice@example.test".into(),
            recipients: rcpts.iter().map(|s| s.to_string()).collect(),
            size: scan.size(),
            eight_bit: scan.eight_bit(),
            smtputf8: false,
        }
    }

    /// Streams the test's message `chunk` octets at a time, as the driver
    /// does with file chunks, and ends it.
    fn send_body(client: &mut SmtpClient, chunk: usize, out: &mut Vec<u8>) -> Option<ClientEvent> {
        assert!(client.wants_body());
        let msg = MESSAGE.with(|m| m.borrow().clone());
        for piece in msg.chunks(chunk.max(1)) {
            client.body_chunk(piece, out);
        }
        let ev = client.body_end(out);
        assert!(!client.wants_body());
        ev
    }

    /// `receive` as the driver sees it: on `SendBody` the message is
    /// streamed (whole chunks) and ended.
    fn feed(client: &mut SmtpClient, input: &[u8], out: &mut Vec<u8>) -> Option<ClientEvent> {
        match client.receive(input, out) {
            Some(ClientEvent::SendBody) => send_body(client, usize::MAX, out),
            other => other,
        }
    }

    const MSG: &[u8] = b"Subject: hi\n\nhello\n";
    const BODY: &str = "Subject: hi\r\n\r\nhello\r\n.\r\n";

    /// A dialogue step: the server says `.0`, the client must answer `.1`.
    type Step<'a> = (&'a str, &'a str);
    /// Marker in a script: the client asked for TLS; complete the handshake.
    const TLS: &str = "<tls>";

    /// Runs a script; returns the last event and the concatenated output.
    fn run(client: &mut SmtpClient, script: &[Step]) -> Option<ClientEvent> {
        let mut last = None;
        for (n, (server, expect)) in script.iter().enumerate() {
            let mut out = Vec::new();
            if *server == TLS {
                client.tls_started(&mut out);
            } else {
                last = feed(client, server.as_bytes(), &mut out);
            }
            assert_eq!(
                String::from_utf8_lossy(&out),
                *expect,
                "step {n}: server said {server:?}"
            );
        }
        last
    }

    fn done(ev: Option<ClientEvent>) -> SessionResult {
        match ev {
            Some(ClientEvent::Done(r)) => r,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn kinds(r: &SessionResult) -> Vec<char> {
        r.recipients
            .iter()
            .map(|r| match r.outcome {
                Outcome::Delivered { .. } => 'D',
                Outcome::Transient { .. } => 'T',
                Outcome::Permanent { .. } => 'P',
            })
            .collect()
    }

    const EHLO_PIPE: &str = "250-mx.example.net hi\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
    const EHLO_PLAIN: &str = "250-mx.example.net hi\r\n250 8BITMIME\r\n";

    fn direct_plain_script() -> Vec<Step<'static>> {
        vec![
            ("220 mx.example.net ESMTP\r\n", "EHLO gw.example.test\r\n"),
            (EHLO_PLAIN, "MAIL FROM:<alice@example.test>\r\n"),
            ("250 2.1.0 ok\r\n", "RCPT TO:<a@example.net>\r\n"),
            ("250 2.1.5 ok\r\n", "RCPT TO:<b@example.net>\r\n"),
            ("550 5.1.1 no such user\r\n", "DATA\r\n"),
            ("354 go ahead\r\n", BODY),
            ("250 2.0.0 queued as X\r\n", "QUIT\r\n"),
        ]
    }

    #[test]
    fn plain_dialogue_mixed_recipients() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::Opportunistic, false),
            envelope(&["a@example.net", "b@example.net"], MSG),
        );
        let r = done(run(&mut c, &direct_plain_script()));
        assert_eq!(kinds(&r), vec!['D', 'P']);
        assert_eq!(
            r.recipients[1].outcome,
            Outcome::Permanent {
                reply: "550 5.1.1 no such user".into(),
                enhanced: "5.1.1".into()
            }
        );
        assert!(r.recipients[1].remote);
        assert_eq!(r.recipients[0].outcome.reply(), "250 2.0.0 queued as X");
        assert!(!r.try_next_host && !r.tls);
        assert_eq!(r.greeting.as_deref(), Some("220 mx.example.net ESMTP"));
        assert!(c.is_done());
        let mut out = Vec::new();
        assert_eq!(c.receive(b"221 bye\r\n", &mut out), None);
        assert!(out.is_empty());
    }

    #[test]
    fn pipelining_sends_one_group() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::None, false),
            envelope(&["a@example.net", "b@example.net", "c@example.net"], MSG),
        );
        let script = [
            ("220 mx ESMTP\r\n", "EHLO gw.example.test\r\n"),
            (
                EHLO_PIPE,
                "MAIL FROM:<alice@example.test> SIZE=22\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n",
            ),
            ("250 ok\r\n250 ok\r\n450 4.2.1 try later\r\n", ""),
            ("250 ok\r\n354 go\r\n", BODY),
            ("250 2.0.0 ok\r\n", "QUIT\r\n"),
        ];
        let r = done(run(&mut c, &script));
        assert_eq!(kinds(&r), vec!['D', 'T', 'D']);
        assert_eq!(
            r.recipients[1].outcome,
            Outcome::Transient {
                reply: "450 4.2.1 try later".into(),
                enhanced: Some("4.2.1".into())
            }
        );
    }

    #[test]
    fn pipelining_mail_refused_reads_all_replies() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::None, false),
            envelope(&["a@example.net", "b@example.net"], MSG),
        );
        let ev = run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                (EHLO_PIPE, "MAIL FROM:<alice@example.test> SIZE=22\r\nRCPT TO:<a@example.net>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"),
                ("451 4.3.0 greylisted\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n", ""),
                ("554 5.5.1 no valid recipients\r\n", "QUIT\r\n"),
            ],
        );
        let r = done(ev);
        assert_eq!(kinds(&r), vec!['T', 'T']);
        assert!(r
            .recipients
            .iter()
            .all(|x| x.outcome.reply() == "451 4.3.0 greylisted"));
        assert!(r.try_next_host);
    }

    #[test]
    fn pipelining_all_rcpt_refused_but_354() {
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                (
                    EHLO_PIPE,
                    "MAIL FROM:<alice@example.test> SIZE=22\r\nRCPT TO:<a@x.net>\r\nDATA\r\n",
                ),
                ("250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n", ".\r\n"),
                ("554 5.5.1 no recipients\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['P']);
        assert_eq!(r.recipients[0].outcome.reply(), "550 5.1.1 unknown");
    }

    #[test]
    fn no_rcpt_accepted_quits_without_data() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::None, false),
            envelope(&["a@x.net", "b@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250 mx\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                ("250 ok\r\n", "RCPT TO:<a@x.net>\r\n"),
                ("550 no\r\n", "RCPT TO:<b@x.net>\r\n"),
                ("451 later\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['P', 'T']);
        assert_eq!(
            r.recipients[0].outcome,
            Outcome::Permanent {
                reply: "550 no".into(),
                enhanced: "5.0.0".into()
            }
        );
        assert!(!r.try_next_host);
    }

    #[test]
    fn ehlo_5xx_falls_back_to_helo() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::Opportunistic, false),
            envelope(&["a@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 old smtp\r\n", "EHLO gw.example.test\r\n"),
                ("502 what?\r\n", "HELO gw.example.test\r\n"),
                ("250 hello\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                ("250 ok\r\n", "RCPT TO:<a@x.net>\r\n"),
                ("250 ok\r\n", "DATA\r\n"),
                ("354 go\r\n", BODY),
                ("250 ok\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['D']);
    }

    #[test]
    fn helo_refused_too_is_permanent() {
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("500 no\r\n", "HELO gw.example.test\r\n"),
                ("550 go away\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['P']);
    }

    #[test]
    fn session_level_replies() {
        // (server lines after the banner exchange, expected kinds, try next host)
        let cases: &[(&str, &str, char, bool)] = &[
            ("554 no service\r\n", "QUIT\r\n", 'P', true),
            ("421 busy\r\n", "", 'T', true),
            ("450 later\r\n", "QUIT\r\n", 'T', true),
        ];
        for (banner, out_expect, kind, next) in cases {
            let mut c =
                SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
            let r = done(run(&mut c, &[(banner, out_expect)]));
            assert_eq!(kinds(&r), vec![*kind], "{banner}");
            assert_eq!(r.try_next_host, *next, "{banner}");
        }
        // 4xx to EHLO, MAIL; 5xx to MAIL; 4xx/5xx to DATA.
        let cases: &[(&[Step], char)] = &[
            (
                &[
                    ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                    ("451 later\r\n", "QUIT\r\n"),
                ],
                'T',
            ),
            (
                &[
                    ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                    ("250 mx\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                    ("553 5.7.1 sender rejected\r\n", "QUIT\r\n"),
                ],
                'P',
            ),
            (
                &[
                    ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                    ("250 mx\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                    ("250 ok\r\n", "RCPT TO:<a@x.net>\r\n"),
                    ("250 ok\r\n", "DATA\r\n"),
                    ("451 4.3.0 no\r\n", "QUIT\r\n"),
                ],
                'T',
            ),
            (
                &[
                    ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                    ("250 mx\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                    ("250 ok\r\n", "RCPT TO:<a@x.net>\r\n"),
                    ("421 4.4.2 closing\r\n", ""),
                ],
                'T',
            ),
        ];
        for (script, kind) in cases {
            let mut c =
                SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
            let r = done(run(&mut c, script));
            assert_eq!(kinds(&r), vec![*kind], "{script:?}");
        }
    }

    #[test]
    fn size_552_at_end_of_data() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::None, false),
            envelope(&["a@x.net", "b@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                (EHLO_PIPE, "MAIL FROM:<alice@example.test> SIZE=22\r\nRCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n"),
                ("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", BODY),
                ("552-5.3.4 message too big\r\n552 5.3.4 for this mailbox\r\n", "QUIT\r\n"),
            ],
        ));
        for rcpt in &r.recipients {
            assert_eq!(
                rcpt.outcome,
                Outcome::Permanent {
                    reply: "552 5.3.4 message too big 5.3.4 for this mailbox".into(),
                    enhanced: "5.3.4".into()
                }
            );
        }
        assert!(!r.try_next_host);
    }

    #[test]
    fn size_limit_refused_locally() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::None, false),
            envelope(&["a@x.net"], &[b'x'; 200]),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250-mx\r\n250 SIZE 100\r\n", "QUIT\r\n"),
            ],
        ));
        match &r.recipients[0].outcome {
            Outcome::Permanent { enhanced, reply } => {
                assert_eq!(enhanced, "5.3.4");
                assert!(reply.contains("202"), "{reply}");
            }
            o => panic!("{o:?}"),
        }
        assert!(!r.recipients[0].remote);
    }

    #[test]
    fn eightbit_and_smtputf8() {
        let msg = "Subject: caf\u{e9}\n\nhi\n".as_bytes();
        // 8BITMIME offered.
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], msg));
        run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                (
                    "250-mx\r\n250 8BITMIME\r\n",
                    "MAIL FROM:<alice@example.test> BODY=8BITMIME\r\n",
                ),
            ],
        );
        // Not offered: sent anyway, recorded.
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], msg));
        run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250 mx\r\n", "MAIL FROM:<alice@example.test>\r\n"),
            ],
        );
        let r = c.connection_lost();
        assert!(r.sent_8bit_without_8bitmime);

        // A UTF-8 recipient without SMTPUTF8 at the server: that one fails
        // 5.6.7, the other goes on.
        let mut c = SmtpClient::new(
            params(TlsPolicy::None, false),
            envelope(&["j\u{f6}rg@x.net", "a@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250 mx\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                ("250 ok\r\n", "RCPT TO:<a@x.net>\r\n"),
                ("250 ok\r\n", "DATA\r\n"),
                ("354 go\r\n", BODY),
                ("250 ok\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['P', 'D']);
        assert!(
            matches!(&r.recipients[0].outcome, Outcome::Permanent { enhanced, .. } if enhanced == "5.6.7")
        );

        // Offered: SMTPUTF8 on MAIL.
        let mut c = SmtpClient::new(
            params(TlsPolicy::None, false),
            envelope(&["j\u{f6}rg@x.net"], MSG),
        );
        run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                (
                    "250-mx\r\n250 SMTPUTF8\r\n",
                    "MAIL FROM:<alice@example.test> SMTPUTF8\r\n",
                ),
            ],
        );

        // The message itself needs it: every recipient fails.
        let mut env = envelope(&["a@x.net", "b@x.net"], MSG);
        env.smtputf8 = true;
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), env);
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250 mx\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['P', 'P']);
    }

    #[test]
    fn hostile_addresses_never_reach_the_wire() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::None, false),
            envelope(&["a@x.net>\r\nRSET", "b@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250 mx\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                ("250 ok\r\n", "RCPT TO:<b@x.net>\r\n"),
                ("250 ok\r\n", "DATA\r\n"),
                ("354 go\r\n", BODY),
                ("250 ok\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['P', 'D']);
        let mut env = envelope(&["a@x.net"], MSG);
        env.reverse_path = "x\r\nDATA".into();
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), env);
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250 mx\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['P']);
    }

    #[test]
    fn null_reverse_path() {
        let mut env = envelope(&["a@x.net"], MSG);
        env.reverse_path = String::new();
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), env);
        run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250 mx\r\n", "MAIL FROM:<>\r\n"),
            ],
        );
    }

    const EHLO_TLS: &str = "250-smtp.isp.example\r\n250-STARTTLS\r\n250 PIPELINING\r\n";
    const EHLO_AFTER_TLS: &str = "250-smtp.isp.example\r\n250-AUTH LOGIN PLAIN\r\n250 8BITMIME\r\n";

    fn bearer_params(user: &str, token: &str) -> ClientParams {
        let mut p = params(TlsPolicy::Implicit, false);
        p.auth = Some(Credentials {
            username: user.into(),
            password: token.into(),
            bearer: true,
        });
        p
    }

    /// Gmail's documented SMTP exchange (xoauth2-protocol page): the
    /// initial response on the AUTH line, 235.
    #[test]
    fn gmail_smtp_xoauth2() {
        let mut c = SmtpClient::new(
            bearer_params(
                "someuser@example.com",
                "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
            ),
            envelope(&["a@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 mx.google.com ESMTP\r\n", "EHLO gw.example.test\r\n"),
                (
                    "250-mx.google.com at your service\r\n250-AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH\r\n250 8BITMIME\r\n",
                    "AUTH OAUTHBEARER bixhPXNvbWV1c2VyQGV4YW1wbGUuY29tLAFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==\r\n",
                ),
                ("235 2.7.0 Accepted\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                ("250 ok\r\n", "RCPT TO:<a@x.net>\r\n"),
                ("250 ok\r\n", "DATA\r\n"),
                ("354 go\r\n", BODY),
                ("250 ok\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['D']);
        // XOAUTH2 only (Exchange Online's offer): Google's exact example line.
        let mut c = SmtpClient::new(
            bearer_params(
                "someuser@example.com",
                "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
            ),
            envelope(&["a@x.net"], MSG),
        );
        run(
            &mut c,
            &[
                ("220 smtp.office365.com\r\n", "EHLO gw.example.test\r\n"),
                (
                    "250-outlook.office365.com\r\n250-AUTH LOGIN XOAUTH2\r\n250 8BITMIME\r\n",
                    "AUTH XOAUTH2 dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==\r\n",
                ),
                ("235 2.7.0 Authentication successful\r\n", "MAIL FROM:<alice@example.test>\r\n"),
            ],
        );
    }

    /// Gmail's refusal: 334 with the JSON report, an empty line from the
    /// client, then 535; the mail waits (transient), the token is in no reason.
    #[test]
    fn bearer_refused_and_not_offered() {
        let mut c = SmtpClient::new(
            bearer_params("bob@gmail.com", "ya29.secrettoken"),
            envelope(&["a@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 mx.google.com ESMTP\r\n", "EHLO gw.example.test\r\n"),
                ("250-mx.google.com\r\n250 AUTH XOAUTH2\r\n", &format!("AUTH XOAUTH2 {}\r\n", BearerMech::XOAuth2.initial_response("bob@gmail.com", "ya29.secrettoken").unwrap())),
                ("334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIG1hYyIsInNjb3BlIjoiaHR0cHM6Ly9tYWlsLmdvb2dsZS5jb20vIn0K\r\n", "\r\n"),
                ("535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 https://support.google.com/mail/?p=BadCredentials\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['T']);
        assert!(!format!("{r:?}").contains("secrettoken"));
        // Offered only PLAIN: the token is not sent as a password.
        let mut c = SmtpClient::new(
            bearer_params("bob@gmail.com", "ya29.secrettoken"),
            envelope(&["a@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250-mx\r\n250 AUTH PLAIN LOGIN\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['T']);
        assert!(format!("{r:?}").contains("neither AUTH XOAUTH2 nor OAUTHBEARER"));
    }

    #[test]
    fn starttls_then_auth_plain() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::Required, true),
            envelope(&["a@x.net"], MSG),
        );
        let ev = run(
            &mut c,
            &[
                ("220 smtp.isp.example\r\n", "EHLO gw.example.test\r\n"),
                (EHLO_TLS, "STARTTLS\r\n"),
            ],
        );
        let mut out = Vec::new();
        assert_eq!(ev, None);
        assert_eq!(
            c.receive(b"220 go ahead\r\n", &mut out),
            Some(ClientEvent::StartTls)
        );
        assert_eq!(c.state(), "TLS handshake");
        let r = done(run(
            &mut c,
            &[
                (TLS, "EHLO gw.example.test\r\n"),
                (EHLO_AFTER_TLS, "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"),
                ("235 2.7.0 ok\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                ("250 ok\r\n", "RCPT TO:<a@x.net>\r\n"),
                ("250 ok\r\n", "DATA\r\n"),
                ("354 go\r\n", BODY),
                ("250 ok\r\n", "QUIT\r\n"),
            ],
        ));
        assert_eq!(kinds(&r), vec!['D']);
        assert!(r.tls);
    }

    #[test]
    fn auth_login_steps_and_535() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::Implicit, true),
            envelope(&["a@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 smtp.isp.example\r\n", "EHLO gw.example.test\r\n"),
                ("250-smtp\r\n250 AUTH=LOGIN\r\n", "AUTH LOGIN\r\n"),
                ("334 VXNlcm5hbWU6\r\n", "Ym9i\r\n"),
                ("334 UGFzc3dvcmQ6\r\n", "c2VjcmV0\r\n"),
                ("535 5.7.8 bad credentials\r\n", "QUIT\r\n"),
            ],
        ));
        match &r.recipients[0].outcome {
            Outcome::Transient { reply, enhanced } => {
                assert!(reply.contains("535 5.7.8 bad credentials"), "{reply}");
                assert_eq!(enhanced.as_deref(), Some("4.7.8"));
            }
            o => panic!("{o:?}"),
        }
        // And LOGIN succeeding.
        let mut c = SmtpClient::new(
            params(TlsPolicy::Implicit, true),
            envelope(&["a@x.net"], MSG),
        );
        run(
            &mut c,
            &[
                ("220 smtp.isp.example\r\n", "EHLO gw.example.test\r\n"),
                ("250-smtp\r\n250 AUTH LOGIN\r\n", "AUTH LOGIN\r\n"),
                ("334 VXNlcm5hbWU6\r\n", "Ym9i\r\n"),
                ("334 UGFzc3dvcmQ6\r\n", "c2VjcmV0\r\n"),
                ("235 ok\r\n", "MAIL FROM:<alice@example.test>\r\n"),
            ],
        );
        // AUTH PLAIN whose server wants the response after a 334.
        let mut c = SmtpClient::new(
            params(TlsPolicy::Implicit, true),
            envelope(&["a@x.net"], MSG),
        );
        run(
            &mut c,
            &[
                ("220 s\r\n", "EHLO gw.example.test\r\n"),
                (
                    "250-s\r\n250 AUTH PLAIN\r\n",
                    "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n",
                ),
                ("334 \r\n", "AGJvYgBzZWNyZXQ=\r\n"),
                ("235 ok\r\n", "MAIL FROM:<alice@example.test>\r\n"),
            ],
        );
    }

    #[test]
    fn tls_and_auth_policy_failures() {
        // (policy, auth, EHLO reply, expected output, reason fragment)
        let cases: &[(TlsPolicy, bool, &str, &str, &str)] = &[
            (
                TlsPolicy::Required,
                false,
                "250 smtp\r\n",
                "QUIT\r\n",
                "does not offer STARTTLS",
            ),
            // Plaintext with credentials: never AUTH.
            (
                TlsPolicy::None,
                true,
                "250-smtp\r\n250 AUTH PLAIN\r\n",
                "QUIT\r\n",
                "refusing AUTH over plaintext",
            ),
            (
                TlsPolicy::Implicit,
                true,
                "250 smtp\r\n",
                "QUIT\r\n",
                "does not offer AUTH",
            ),
            (
                TlsPolicy::Implicit,
                true,
                "250-smtp\r\n250 AUTH CRAM-MD5\r\n",
                "QUIT\r\n",
                "neither AUTH PLAIN nor AUTH LOGIN",
            ),
        ];
        for (tls, auth, ehlo, expect, why) in cases {
            let mut c = SmtpClient::new(params(*tls, *auth), envelope(&["a@x.net"], MSG));
            let r = done(run(
                &mut c,
                &[("220 smtp\r\n", "EHLO gw.example.test\r\n"), (ehlo, expect)],
            ));
            assert_eq!(kinds(&r), vec!['T'], "{why}");
            assert!(
                r.recipients[0].outcome.reply().contains(why),
                "{:?}",
                r.recipients[0]
            );
        }
        // STARTTLS refused: Required fails, Opportunistic goes on in plaintext.
        let mut c = SmtpClient::new(
            params(TlsPolicy::Required, false),
            envelope(&["a@x.net"], MSG),
        );
        let r = done(run(
            &mut c,
            &[
                ("220 s\r\n", "EHLO gw.example.test\r\n"),
                ("250-s\r\n250 STARTTLS\r\n", "STARTTLS\r\n"),
                ("454 4.7.0 TLS not available\r\n", "QUIT\r\n"),
            ],
        ));
        assert!(r.recipients[0]
            .outcome
            .reply()
            .contains("454 4.7.0 TLS not available"));
        let mut c = SmtpClient::new(
            params(TlsPolicy::Opportunistic, false),
            envelope(&["a@x.net"], MSG),
        );
        run(
            &mut c,
            &[
                ("220 s\r\n", "EHLO gw.example.test\r\n"),
                ("250-s\r\n250 STARTTLS\r\n", "STARTTLS\r\n"),
                (
                    "454 4.7.0 TLS not available\r\n",
                    "MAIL FROM:<alice@example.test>\r\n",
                ),
            ],
        );
        // Opportunistic and not offered: plaintext.
        let mut c = SmtpClient::new(
            params(TlsPolicy::Opportunistic, false),
            envelope(&["a@x.net"], MSG),
        );
        run(
            &mut c,
            &[
                ("220 s\r\n", "EHLO gw.example.test\r\n"),
                ("250 s\r\n", "MAIL FROM:<alice@example.test>\r\n"),
            ],
        );
        // None: STARTTLS offered but not used.
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        run(
            &mut c,
            &[
                ("220 s\r\n", "EHLO gw.example.test\r\n"),
                (
                    "250-s\r\n250 STARTTLS\r\n",
                    "MAIL FROM:<alice@example.test>\r\n",
                ),
            ],
        );
    }

    #[test]
    fn starttls_injection_is_refused() {
        let mut c = SmtpClient::new(
            params(TlsPolicy::Required, false),
            envelope(&["a@x.net"], MSG),
        );
        run(
            &mut c,
            &[
                ("220 s\r\n", "EHLO gw.example.test\r\n"),
                ("250-s\r\n250 STARTTLS\r\n", "STARTTLS\r\n"),
            ],
        );
        let mut out = Vec::new();
        let r = done(c.receive(b"220 go\r\n250 injected\r\n", &mut out));
        assert!(out.is_empty());
        assert_eq!(kinds(&r), vec!['T']);
        // And plaintext during the handshake.
        let mut c = SmtpClient::new(
            params(TlsPolicy::Required, false),
            envelope(&["a@x.net"], MSG),
        );
        run(
            &mut c,
            &[
                ("220 s\r\n", "EHLO gw.example.test\r\n"),
                ("250-s\r\n250 STARTTLS\r\n", "STARTTLS\r\n"),
            ],
        );
        assert_eq!(
            c.receive(b"220 go\r\n", &mut out),
            Some(ClientEvent::StartTls)
        );
        assert!(matches!(
            c.receive(b"x", &mut out),
            Some(ClientEvent::Done(_))
        ));
        // tls_failed after StartTls.
        let mut c = SmtpClient::new(
            params(TlsPolicy::Required, false),
            envelope(&["a@x.net"], MSG),
        );
        run(
            &mut c,
            &[
                ("220 s\r\n", "EHLO gw.example.test\r\n"),
                ("250-s\r\n250 STARTTLS\r\n", "STARTTLS\r\n"),
            ],
        );
        assert_eq!(
            c.receive(b"220 go\r\n", &mut out),
            Some(ClientEvent::StartTls)
        );
        let r = c.tls_failed("bad certificate");
        assert!(r.recipients[0].outcome.reply().contains("bad certificate"));
        assert!(r.try_next_host);
    }

    #[test]
    fn connection_lost_in_every_state() {
        let script = direct_plain_script();
        for k in 0..=script.len() {
            let mut c = SmtpClient::new(
                params(TlsPolicy::Opportunistic, false),
                envelope(&["a@example.net", "b@example.net"], MSG),
            );
            let state_before = c.state();
            run(&mut c, &script[..k]);
            let state = c.state();
            let r = c.connection_lost();
            let expect: &[char] = match k {
                0..=4 => &['T', 'T'],
                5 | 6 => &['T', 'P'],
                _ => &['D', 'P'],
            };
            assert_eq!(
                kinds(&r),
                expect,
                "after {k} steps ({state_before} -> {state})"
            );
            if k < script.len() {
                let reply = r.recipients[0].outcome.reply();
                assert!(reply.starts_with("connection lost"), "{reply}");
                assert!(reply.contains(state), "{reply} / {state}");
                assert_eq!(r.try_next_host, k <= 3, "k={k}");
            }
            // Idempotent.
            assert_eq!(c.connection_lost(), r);
            assert_eq!(c.timed_out(), r);
        }
    }

    #[test]
    fn timeouts_follow_rfc_5321() {
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        assert_eq!(c.reply_timeout(), TIMEOUT_GREETING);
        run(
            &mut c,
            &[
                ("220 mx\r\n", "EHLO gw.example.test\r\n"),
                ("250 mx\r\n", "MAIL FROM:<alice@example.test>\r\n"),
                ("250 ok\r\n", "RCPT TO:<a@x.net>\r\n"),
                ("250 ok\r\n", "DATA\r\n"),
            ],
        );
        assert_eq!(c.reply_timeout(), TIMEOUT_DATA_INIT);
        run(&mut c, &[("354 go\r\n", BODY)]);
        assert_eq!(c.reply_timeout(), TIMEOUT_DATA_TERM);
        let r = c.timed_out();
        assert!(r.recipients[0]
            .outcome
            .reply()
            .starts_with("timeout while waiting for the reply to end of DATA"));
        assert!(!r.try_next_host);
    }

    /// The whole server side of a dialogue, fed split at every byte
    /// boundary, must produce the same output and result.
    #[test]
    fn replies_split_at_every_byte() {
        let script = [
            ("220-mx.example.net\r\n220 ESMTP\r\n", "EHLO gw.example.test\r\n"),
            (EHLO_PIPE, "MAIL FROM:<alice@example.test> SIZE=22\r\nRCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n"),
            ("250 ok\r\n250-2.1.5 one\r\n250 2.1.5 two\r\n550-5.1.1 no\r\n550 5.1.1 such user\r\n354 go\r\n", BODY),
            ("250 2.0.0 ok\r\n", "QUIT\r\n"),
        ];
        let make = || {
            SmtpClient::new(
                params(TlsPolicy::None, false),
                envelope(&["a@x.net", "b@x.net"], MSG),
            )
        };
        let mut reference = make();
        let expect_result = done(run(&mut reference, &script));
        let expect_out: String = script.iter().map(|s| s.1).collect();
        let all: Vec<u8> = script.iter().flat_map(|s| s.0.bytes()).collect();
        for split in 0..=all.len() {
            let mut c = make();
            let mut out = Vec::new();
            let mut last = None;
            for chunk in [&all[..split], &all[split..]] {
                if let Some(ev) = feed(&mut c, chunk, &mut out) {
                    last = Some(ev);
                }
            }
            assert_eq!(String::from_utf8_lossy(&out), expect_out, "split {split}");
            assert_eq!(done(last), expect_result, "split {split}");
        }
        // One byte at a time.
        let mut c = make();
        let mut out = Vec::new();
        let mut last = None;
        for b in &all {
            match c.receive(std::slice::from_ref(b), &mut out) {
                // And the message, one byte at a time too.
                Some(ClientEvent::SendBody) => assert_eq!(send_body(&mut c, 1, &mut out), None),
                Some(ev) => last = Some(ev),
                None => {}
            }
        }
        assert_eq!(String::from_utf8_lossy(&out), expect_out);
        assert_eq!(done(last), expect_result);
        assert_eq!(kinds(&expect_result), vec!['D', 'P']);
    }

    #[test]
    fn garbage_replies_are_protocol_errors() {
        let long = format!("220 {}\r\n", "x".repeat(MAX_REPLY_LINE));
        let long_unterminated = "2".repeat(MAX_REPLY_LINE + 1);
        let many_lines = "220-x\r\n".repeat(MAX_REPLY_LINES + 1);
        let cases: Vec<&str> = vec![
            "HTTP/1.1 400 Bad Request\r\n",
            "22\r\n",
            "2200 hi\r\n",
            "220x\r\n",
            "620 hi\r\n",
            "190 hi\r\n",
            "260 hi\r\n",
            "\r\n",
            "\0\0\0\r\n",
            "\u{ff}\u{fe}\r\n",
            "220-a\r\n250 b\r\n",
            &long,
            &long_unterminated,
            &many_lines,
        ];
        for input in cases {
            let mut c =
                SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
            let mut out = Vec::new();
            let ev = c.receive(input.as_bytes(), &mut out);
            assert!(out.is_empty(), "{input:?}");
            let r = match ev {
                Some(ClientEvent::Done(r)) => r,
                other => panic!("{input:?}: {other:?}"),
            };
            assert_eq!(kinds(&r), vec!['T'], "{input:?}");
            assert!(
                r.recipients[0].outcome.reply().contains("protocol error"),
                "{input:?}"
            );
            assert!(r.try_next_host);
        }
        // A well-formed reply of the wrong kind: QUIT, transient.
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        let r = done(run(&mut c, &[("354 what\r\n", "QUIT\r\n")]));
        assert!(r.recipients[0]
            .outcome
            .reply()
            .contains("unexpected reply to the greeting"));
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_fine() {
        let text = "x".repeat(MAX_REPLY_LINE - 6);
        let line = format!("220 {text}\r\n");
        assert_eq!(line.len(), MAX_REPLY_LINE);
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        let mut out = Vec::new();
        assert_eq!(c.receive(line.as_bytes(), &mut out), None);
        assert_eq!(out, b"EHLO gw.example.test\r\n");
    }

    #[test]
    fn reply_parsing_table() {
        // (input, code, enhanced, text)
        let cases: &[(&str, u16, Option<&str>, &str)] = &[
            ("250 ok\r\n", 250, None, "250 ok"),
            ("250\r\n", 250, None, "250"),
            ("250 2.1.0 ok\n", 250, Some("2.1.0"), "250 2.1.0 ok"),
            ("550 5.1.1\r\n", 550, Some("5.1.1"), "550 5.1.1"),
            (
                "550 4.1.1 mismatched class\r\n",
                550,
                None,
                "550 4.1.1 mismatched class",
            ),
            (
                "550 5.1234.1 too long\r\n",
                550,
                None,
                "550 5.1234.1 too long",
            ),
            (
                "550 5.1.1.1 too many\r\n",
                550,
                None,
                "550 5.1.1.1 too many",
            ),
            (
                "451-4.3.0 a\r\n451-b\r\n451 c\r\n",
                451,
                Some("4.3.0"),
                "451 4.3.0 a b c",
            ),
            ("250 a\tb\0c\r\n", 250, None, "250 a?b?c"),
            ("250 a\rb\r\n", 250, None, "250 a?b"),
        ];
        for (input, code, enhanced, text) in cases {
            let mut r = ReplyReader::default();
            r.push(input.as_bytes());
            let reply = r.next_reply().unwrap().unwrap();
            assert_eq!(reply.code, *code, "{input:?}");
            assert_eq!(reply.enhanced.as_deref(), *enhanced, "{input:?}");
            assert_eq!(reply.text(), *text, "{input:?}");
            assert!(!r.has_pending());
        }
        let mut r = ReplyReader::default();
        r.push(format!("250 {}\r\n", "\u{e9}".repeat(900)).as_bytes());
        let text = r.next_reply().unwrap().unwrap().text();
        assert!(text.len() <= MAX_KEPT_REPLY + 3 && text.ends_with("..."));
    }

    #[test]
    fn ehlo_capabilities() {
        let mut r = ReplyReader::default();
        r.push(b"250-mx.example.net greets you\r\n250-pipelining\r\n250-SIZE\r\n250-AUTH=LOGIN\r\n250-AUTH plain cram-md5\r\n250-smtputf8\r\n250-STARTTLS\r\n250 8BITMIME\r\n");
        let caps = Caps::from_ehlo(&r.next_reply().unwrap().unwrap());
        assert_eq!(
            caps,
            Caps {
                pipelining: true,
                size: Some(0),
                eightbitmime: true,
                smtputf8: true,
                starttls: true,
                auth_offered: true,
                auth_plain: true,
                auth_login: true,
                auth_xoauth2: false,
                auth_oauthbearer: false,
            }
        );
        // The greeting line is not a keyword; AUTHX is not AUTH.
        let mut r = ReplyReader::default();
        r.push(b"250-PIPELINING\r\n250 AUTHX PLAIN\r\n");
        let caps = Caps::from_ehlo(&r.next_reply().unwrap().unwrap());
        assert_eq!(caps, Caps::default());
    }

    #[test]
    fn dot_stuffing_and_crlf() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".\n", b"..\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b"a\n.\nb\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"..x\n", b"...x\r\n.\r\n"),
            (b"a.b\n.c\n", b"a.b\r\n..c\r\n.\r\n"),
            (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
            (b"a\rb\n", b"a\r\nb\r\n.\r\n"),
            (b"\n\n", b"\r\n\r\n.\r\n"),
            (b"\r\n.\r\n", b"\r\n..\r\n.\r\n"),
            (b"x\n.\r.\n", b"x\r\n..\r\n..\r\n.\r\n"),
            (b"\xff\x00\n", b"\xff\x00\r\n.\r\n"),
        ];
        for (input, expect) in cases {
            // The session's body, the message fed whole and byte by byte.
            for chunk in [usize::MAX, 1, 2, 3] {
                let mut c = SmtpClient::new(
                    params(TlsPolicy::None, false),
                    envelope(&["a@x.net"], input),
                );
                let ehlo = "250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n";
                let mut out = Vec::new();
                c.receive(b"220 mx\r\n", &mut out);
                c.receive(ehlo.as_bytes(), &mut out);
                let mail = String::from_utf8_lossy(&out).into_owned();
                out.clear();
                assert_eq!(
                    c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n", &mut out),
                    Some(ClientEvent::SendBody)
                );
                assert!(out.is_empty());
                assert_eq!(c.reply_timeout(), TIMEOUT_DATA_BLOCK);
                assert_eq!(send_body(&mut c, chunk, &mut out), None);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(expect),
                    "{:?} in chunks of {chunk}",
                    String::from_utf8_lossy(input)
                );
                // SIZE counts CRLF but neither stuffing nor the final dot.
                let dots = out.windows(3).filter(|w| w == b"\n..").count()
                    + usize::from(out.starts_with(b".."));
                let size = format!(" SIZE={}\r\n", out.len() - 3 - dots);
                assert!(mail.contains(&size), "{mail:?} for {input:?}");
                assert_eq!(c.reply_timeout(), TIMEOUT_DATA_TERM);
                assert_eq!(kinds(&done(c.receive(b"250 ok\r\n", &mut out))), ['D']);
            }
        }
    }

    #[test]
    fn body_phase_accepts_no_reply_and_reports_read_failures() {
        let to_354 = |c: &mut SmtpClient| {
            let mut out = Vec::new();
            for step in ["220 mx\r\n", EHLO_PIPE] {
                c.receive(step.as_bytes(), &mut out);
            }
            let ev = c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n", &mut out);
            assert_eq!(ev, Some(ClientEvent::SendBody));
            assert!(c.wants_body());
            assert_eq!(c.state(), "the message");
        };
        // A reply before the final dot: the server is out of step.
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        to_354(&mut c);
        let mut out = Vec::new();
        c.body_chunk(b"Subject: hi\n", &mut out);
        assert_eq!(
            c.receive(b"554 5.0.0 no", &mut out),
            None,
            "a partial line waits"
        );
        let r = done(c.receive(b"\r\n", &mut out));
        assert_eq!(kinds(&r), ['T']);
        assert!(r.recipients[0]
            .outcome
            .reply()
            .contains("reply before the end"));
        assert!(!r.try_next_host, "the message was being sent");
        // The file could not be read half way: transient, no next host.
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        to_354(&mut c);
        c.body_chunk(b"Subject: hi\n", &mut out);
        let r = c.body_failed("Input/output error");
        assert_eq!(kinds(&r), ['T']);
        assert!(r.recipients[0]
            .outcome
            .reply()
            .contains("cannot read the queued message: Input/output error"));
        assert!(!r.try_next_host);
        // The connection drops while the message is sent.
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        to_354(&mut c);
        let r = c.connection_lost();
        assert!(r.recipients[0]
            .outcome
            .reply()
            .contains("connection lost while sending the message"));
        // Chunks outside the body phase are ignored.
        let mut c = SmtpClient::new(params(TlsPolicy::None, false), envelope(&["a@x.net"], MSG));
        let mut out = Vec::new();
        c.body_chunk(b"stray", &mut out);
        assert_eq!(c.body_end(&mut out), None);
        assert!(out.is_empty() && !c.wants_body());
    }

    #[test]
    fn credentials_debug_hides_password() {
        let p = params(TlsPolicy::Required, true);
        let s = format!("{p:?}");
        assert!(!s.contains("secret") && s.contains("bob"));
    }
}
