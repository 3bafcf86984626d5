//! The POP3 client core of SmartPop: one collection session against an
//! ISP's maildrop (RFC 1939, CAPA RFC 2449, STLS RFC 2595, AUTH PLAIN
//! RFC 5034), sans-IO.
//!
//! Owns: the dialogue, as a state machine whose state is the command in
//! flight and whose reply picks the next command (OpenSMTPD's
//! `smtp_client.c`): greeting, CAPA, STLS, login (APOP / AUTH PLAIN /
//! USER+PASS), UIDL, LIST, then per message RETR, (wait for the driver's
//! durable delivery), DELE, and finally QUIT. It also owns reply framing:
//! every reply line is bounded and must start with `+OK` or `-ERR`, and the
//! RETR body is un-dot-stuffed here (by `proto::dotstuff::DotUnstuffer`).
//! Must not: touch sockets, TLS, files or the clock. Time is `FetchParams::now`;
//! what is already known comes in as a `Records` snapshot; deliveries go out
//! as events and come back through `delivered`.
//!
//! The no-loss rule: DELE for a message is sent only after the driver calls
//! `delivered(true)` for it, which it does only once the message is durably
//! in the Maildir AND its UIDL is durably in the records. A message already
//! recorded as delivered is never RETRieved again; if the keep policy says
//! so it is only DELEd (this finishes the work of a session cut between
//! delivery and DELE). QUIT's +OK is what makes the server commit the DELEs
//! (RFC 1939 section 6, UPDATE state); a session cut earlier deletes nothing.
//!
//! Choices made here:
//! - The RETR body is handed out as it arrives, in `FetchEvent::Body`
//!   chunks (one per `receive` call, the size of its input), and the
//!   driver stages it on disk: memory stays bounded whatever the message's
//!   size. `FetchEvent::Deliver` then says the body is complete. A body that
//!   grows past `max_message_size + RETR_SLACK` (the server's LIST size
//!   lied) gets no more chunks, is read to its end, and is reported as
//!   oversized; the driver drops what it staged.
//! - Body lines end only at CRLF (RFC 1939 section 3). A bare LF or CR is
//!   message content and passes through unchanged; a lone `.` only ends the
//!   body when it is a whole CRLF line. Treating a bare LF as a line end
//!   could end the body early and deliver half a message.
//! - Body lines have no length bound of their own (real mail breaks the
//!   RFC 5322 998-octet rule) and need no buffer: the decoder works byte by
//!   byte. Status
//!   lines and CAPA/UIDL/LIST lines are bounded by `MAX_REPLY_LINE`.
//! - Login: under TLS, AUTH PLAIN when CAPA offers `SASL PLAIN`, else
//!   USER/PASS. With `tls = none`, APOP when the greeting carries a
//!   timestamp (the password then never crosses the wire), else USER/PASS in
//!   plaintext with a warning; if APOP is refused we fall back to USER/PASS
//!   (an attacker able to exploit that could as well strip the timestamp).
//! - No UIDL on the server: with `keep = no` messages are fetched by number
//!   and deleted at once (nothing to remember); with `keep = yes` or a
//!   duration we refuse, since message numbers are not stable across
//!   sessions and every message would be fetched again each time.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use base64::Engine as _;

use super::dotstuff::DotUnstuffer;
use super::msgid::Fingerprint;
use super::sasl::BearerMech;
use super::TlsMode;

/// `keep = no | yes | 7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    No,
    Yes,
    For(Duration),
}

/// RFC 1939 section 7 limits a unique-id to 70 octets. Some servers send
/// longer ones; we accept up to this many rather than refuse to collect.
pub const MAX_UIDL_LEN: usize = 255;

/// Is `s` a unique-id as RFC 1939 section 7 defines it (printable ASCII
/// 0x21..0x7E), within our length bound?
pub fn valid_uidl(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_UIDL_LEN && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// What is known about one UIDL (SmartPop keeps these in its records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry {
    /// Unix seconds when this UIDL was first recorded; `keep = 7d` counts from here.
    pub first_seen: u64,
    /// The message is durably in the local Maildir: never fetch it again.
    pub delivered: bool,
    /// The "message too big" report was made: do not repeat it every interval.
    pub oversized: bool,
    /// Local delivery refused it permanently: leave it, do not RETR again.
    pub rejected: bool,
    /// IMAP: what recognizes the message after a UIDVALIDITY change.
    pub fingerprint: Option<Fingerprint>,
}

/// Longest reply line we accept, CRLF excluded. RFC 2449 section 4 limits
/// responses to 512 octets; real servers stretch that, so we allow four times.
pub const MAX_REPLY_LINE: usize = 2048;

/// Most lines in one UIDL or LIST listing. A maildrop left to grow with
/// `keep = yes` may hold tens of thousands; more than this is taken as a
/// hostile server, since every entry costs memory on a small router.
pub const MAX_LISTING: usize = 100_000;

/// Most lines in a CAPA listing (RFC 2449 defines a dozen capabilities).
pub const MAX_CAPA_LINES: usize = 256;

/// How far a RETR body may exceed `max_message_size` before we stop
/// collecting it: LIST sizes are "exact" per RFC 1939 section 5, but some
/// servers count LF line ends, and the difference is harmless.
pub const RETR_SLACK: u64 = 64 * 1024;

/// Longest APOP timestamp (`<pid.clock@host>`, RFC 1939 section 7) we use.
pub const MAX_APOP_TIMESTAMP: usize = 256;

/// How much of a server's reply text we keep in errors and logs.
const MAX_ERROR_TEXT: usize = 200;

/// What the driver knows for this session. `Debug` hides the password.
#[derive(Clone)]
pub struct FetchParams {
    /// The account's name, for log lines (`smartpop NAME: ...`).
    pub account: String,
    pub username: String,
    /// The password, or with `bearer` an OAuth2 access token.
    pub password: String,
    /// `auth = oauth2`: log in with SASL OAUTHBEARER or XOAUTH2 (whichever
    /// CAPA offers; XOAUTH2 when CAPA lists no SASL), never USER/PASS.
    pub bearer: bool,
    pub tls: TlsMode,
    /// Implicit TLS (`tls = tls`) is already up when the greeting arrives.
    pub tls_active: bool,
    pub keep: Keep,
    /// Messages larger than this (by LIST) are left on the server.
    pub max_message_size: u64,
    /// Unix seconds at the start of the session; first-seen time of new UIDLs.
    pub now: u64,
}

impl fmt::Debug for FetchParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchParams")
            .field("account", &self.account)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("bearer", &self.bearer)
            .field("tls", &self.tls)
            .field("tls_active", &self.tls_active)
            .field("keep", &self.keep)
            .field("max_message_size", &self.max_message_size)
            .field("now", &self.now)
            .finish()
    }
}

/// What the core asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// STLS got +OK: flush output, run the TLS handshake on this connection,
    /// then call `tls_started` (or `abort` with `FetchError::Tls`).
    StartTls,
    /// The next part of the RETR body (CRLF line ends, un-dot-stuffed,
    /// exactly as the server holds it), in order. Never empty.
    Body(Vec<u8>),
    /// The message that the `Body` events since the last `Deliver` or
    /// `Oversized` carried is complete (`size` octets): deliver it durably,
    /// record `uidl` durably, then call `delivered`. `uidl` is `None` only
    /// when the server lacks UIDL and `keep = no`. Nothing is sent to the
    /// server until `delivered` is called.
    Deliver {
        uidl: Option<String>,
        number: u32,
        size: u64,
    },
    /// Message `number` is over the size limit and stays on the server;
    /// any `Body` chunks given for it are to be dropped. Emitted once per
    /// UIDL (record it with `Records::record_oversized`).
    Oversized {
        uidl: Option<String>,
        number: u32,
        size: u64,
    },
    /// The session is over: the driver closes the connection (after writing
    /// any output) and prunes the records if `remaining` is `Some`.
    Done(FetchSummary),
    /// IMAP push watcher (`ImapParams::watch`): the folder it idles on has
    /// mail: a collection run of the account is due.
    NewMail,
}

/// How a session went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchSummary {
    /// Messages delivered this session.
    pub fetched: usize,
    /// DELE commands answered +OK (committed only if `remaining` is `Some`).
    pub deleted: usize,
    /// Delivered messages left on the server by the keep policy.
    pub kept: usize,
    /// Messages left on the server for being over the size limit.
    pub skipped_oversized: usize,
    /// Messages left on the server after RETR/DELE -ERR or without a UIDL.
    pub failed: usize,
    /// Why the session stopped early; `None` when it went to the end.
    pub error: Option<FetchError>,
    /// The server's UIDLs still present after QUIT got +OK (the listing
    /// minus what we deleted): prune the records to this. `None` when the
    /// session did not end with a committed QUIT or had no UIDL listing.
    pub remaining: Option<Vec<String>>,
    /// QUIT got +OK: the server removed what `deleted` counts (RFC 1939
    /// section 6). False: no deletion of this session took effect.
    pub committed: bool,
    /// IMAP, after a UIDVALIDITY change: (old key, new key) of each
    /// recorded message found again by its fingerprint. The driver copies
    /// each old entry to its new key before pruning, so the message is
    /// not collected again (in this run or the next).
    pub rekeyed: Vec<(String, String)>,
}

/// Why a session failed. All are worth retrying at the next interval;
/// `Auth` and `Local` usually need the user's attention first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// Login refused (wrong password, account locked, `[IN-USE]`).
    Auth(String),
    /// The server broke RFC 1939, or cannot do what the config needs.
    Protocol(String),
    /// STLS refused or TLS not up when required.
    Tls(String),
    /// Connection lost, or the server refused the session.
    Connection(String),
    /// Our side: delivery failed, unusable credentials.
    Local(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Auth(s) => write!(f, "login failed: {s}"),
            FetchError::Protocol(s) => write!(f, "protocol error: {s}"),
            FetchError::Tls(s) => write!(f, "TLS: {s}"),
            FetchError::Connection(s) => write!(f, "connection: {s}"),
            FetchError::Local(s) => write!(f, "local: {s}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// The command in flight (or what we wait for).
#[derive(Debug)]
enum State {
    Greeting,
    Capa,
    CapaLines,
    Stls,
    /// STLS +OK'd; the driver runs the handshake.
    AwaitTls,
    Apop,
    User,
    Pass,
    AuthPlain,
    /// `AUTH mech` sent; waiting for the empty `+` continuation.
    AuthBearer(BearerMech),
    /// The token sent; `+OK`, or a `+ challenge` reporting the failure.
    AuthBearerToken(BearerMech),
    /// The failure acknowledged; waiting for the `-ERR`.
    AuthBearerAbort(String),
    Uidl,
    UidlLines,
    List,
    ListLines,
    Retr,
    RetrBody(Body),
    /// Deliver emitted; the driver writes the Maildir and the records.
    AwaitDelivery,
    Dele,
    Quit,
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Greeting => "greeting",
            State::Capa | State::CapaLines => "CAPA",
            State::Stls | State::AwaitTls => "STLS",
            State::Apop => "APOP",
            State::User => "USER",
            State::Pass => "PASS",
            State::AuthPlain
            | State::AuthBearer(_)
            | State::AuthBearerToken(_)
            | State::AuthBearerAbort(_) => "AUTH",
            State::Uidl | State::UidlLines => "UIDL",
            State::List | State::ListLines => "LIST",
            State::Retr | State::RetrBody(_) => "RETR",
            State::AwaitDelivery => "delivery",
            State::Dele => "DELE",
            State::Quit => "QUIT",
            State::Done => "done",
        }
    }
}

/// Capabilities from CAPA (RFC 2449 section 6) that change what we send.
#[derive(Debug, Default, Clone, Copy)]
struct Caps {
    sasl_plain: bool,
    /// A SASL line was listed (then its mechanisms are all there is).
    sasl_listed: bool,
    sasl_xoauth2: bool,
    sasl_oauthbearer: bool,
    lines: usize,
}

/// One message from LIST, joined with its UIDL.
#[derive(Debug)]
struct Msg {
    number: u32,
    size: u64,
    uidl: Option<String>,
    deleted: bool,
}

/// One collection session. See the module doc for the sequence.
pub struct Pop3Fetch {
    params: FetchParams,
    known: HashMap<String, Entry>,
    state: State,
    inbuf: Vec<u8>,
    secure: bool,
    apop_timestamp: Option<String>,
    apop_refused: bool,
    caps: Caps,
    /// number -> UIDL from the UIDL listing; `None` when the server lacks UIDL.
    uidls: Option<HashMap<u32, String>>,
    uidl_listing_done: bool,
    msgs: Vec<Msg>,
    /// Message numbers seen in LIST, to refuse repeats.
    listed: HashSet<u32>,
    idx: usize,
    summary: FetchSummary,
}

enum Status<'a> {
    Ok(&'a [u8]),
    Err(&'a [u8]),
}

/// `+OK text` / `-ERR text` (RFC 1939 section 3: upper case, then a space or
/// the end of the line); anything else is not a POP3 reply.
fn status(line: &[u8]) -> Option<Status<'_>> {
    fn rest(r: &[u8]) -> Option<&[u8]> {
        match r.first() {
            None => Some(r),
            Some(b' ') => Some(&r[1..]),
            Some(_) => None,
        }
    }
    if let Some(r) = line.strip_prefix(b"+OK") {
        rest(r).map(Status::Ok)
    } else if let Some(r) = line.strip_prefix(b"-ERR") {
        rest(r).map(Status::Err)
    } else {
        None
    }
}

/// A SASL continuation (RFC 5034 4): `+`, or `+ ` and base64.
fn continuation(line: &[u8]) -> Option<&[u8]> {
    match line {
        b"+" => Some(b""),
        [b'+', b' ', rest @ ..] => Some(rest),
        _ => None,
    }
}

/// Server text made safe for logs and errors: control and 8-bit bytes
/// replaced, length bounded.
fn printable(text: &[u8]) -> String {
    let mut s: String = text
        .iter()
        .take(MAX_ERROR_TEXT)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    if text.len() > MAX_ERROR_TEXT {
        s.push_str("...");
    }
    s
}

/// The APOP timestamp in a greeting (RFC 1939 section 7): from `<` to the
/// next `>`, printable and bounded, or none.
fn apop_timestamp(text: &[u8]) -> Option<String> {
    let lt = text.iter().position(|&b| b == b'<')?;
    let len = text.get(lt..)?.iter().position(|&b| b == b'>')?;
    let ts = text.get(lt..=lt + len)?;
    let ok = ts.len() > 2
        && ts.len() <= MAX_APOP_TIMESTAMP
        && ts.iter().all(|&b| (0x21..=0x7e).contains(&b));
    if ok {
        String::from_utf8(ts.to_vec()).ok()
    } else {
        None
    }
}

/// A message number: decimal digits only, 1 or more (RFC 1939 section 5).
fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n >= 1)
}

fn parse_size(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl Pop3Fetch {
    /// Starts a session; `known` is what the account's records say of each
    /// UIDL (a copy: the core never writes them). Nothing is sent until the
    /// greeting arrives.
    pub fn new<'a>(
        params: FetchParams,
        known: impl IntoIterator<Item = (&'a str, &'a Entry)>,
    ) -> Pop3Fetch {
        Pop3Fetch {
            secure: params.tls_active,
            params,
            known: known
                .into_iter()
                .map(|(u, e)| (u.to_string(), *e))
                .collect(),
            state: State::Greeting,
            inbuf: Vec::new(),
            apop_timestamp: None,
            apop_refused: false,
            caps: Caps::default(),
            uidls: None,
            uidl_listing_done: false,
            msgs: Vec::new(),
            listed: HashSet::new(),
            idx: 0,
            summary: FetchSummary::default(),
        }
    }

    /// Has `Done` been emitted (or the session aborted)?
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Feeds bytes read from the server (after TLS decryption). Commands to
    /// send are appended to `out`; events to `events`.
    pub fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        match self.state {
            State::Done => return,
            // RFC 1939 has the server speak only in answer to a command; bytes
            // now are a desynchronized or hostile server (after STLS: an
            // attempt to inject plaintext into the TLS session, RFC 2595 sec. 4).
            State::AwaitTls | State::AwaitDelivery if !input.is_empty() => {
                let what = format!("unsolicited data while waiting for {}", self.state.name());
                return self.fail_now(FetchError::Protocol(what), events);
            }
            _ => {}
        }
        self.inbuf.extend_from_slice(input);
        let mut pos = 0;
        while pos < self.inbuf.len() {
            let rest = &self.inbuf[pos..];
            if let State::RetrBody(body) = &mut self.state {
                let (used, finished) = body.feed(rest, events);
                pos += used;
                if finished {
                    let trailing = pos < self.inbuf.len();
                    self.body_done(trailing, out, events);
                }
                continue;
            }
            if matches!(
                self.state,
                State::Done | State::AwaitTls | State::AwaitDelivery
            ) {
                if !matches!(self.state, State::Done) {
                    let what = format!("unsolicited data while waiting for {}", self.state.name());
                    self.fail_now(FetchError::Protocol(what), events);
                }
                break;
            }
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_REPLY_LINE + 1 {
                    let what = format!("reply line longer than {MAX_REPLY_LINE} octets");
                    self.fail_now(FetchError::Protocol(what), events);
                }
                break;
            };
            let line = &rest[..lf];
            let line = line.strip_suffix(b"\r").unwrap_or(line).to_vec();
            pos += lf + 1;
            if line.len() > MAX_REPLY_LINE {
                let what = format!("reply line longer than {MAX_REPLY_LINE} octets");
                self.fail_now(FetchError::Protocol(what), events);
                break;
            }
            let trailing = pos < self.inbuf.len();
            let before = out.len();
            self.on_line(&line, trailing, out, events);
            // We never pipeline (RFC 2449 PIPELINING is not used), so once a
            // reply is complete and we answer with a command, nothing may
            // follow it in what was already received: such bytes would be
            // taken as the reply to the command we are about to send.
            if trailing && out.len() > before && !matches!(self.state, State::Done) {
                out.truncate(before);
                let what = "data from the server before our next command".to_string();
                self.fail_now(FetchError::Protocol(what), events);
            }
        }
        if matches!(self.state, State::Done) {
            self.inbuf = Vec::new();
        } else {
            self.inbuf.drain(..pos.min(self.inbuf.len()));
        }
    }

    /// The driver finished the TLS handshake requested by `StartTls`.
    /// RFC 2595 section 4: forget what CAPA said before, and ask again.
    pub fn tls_started(&mut self, out: &mut Vec<u8>) {
        if matches!(self.state, State::AwaitTls) {
            self.secure = true;
            self.caps = Caps::default();
            self.send(out, "CAPA");
            self.state = State::Capa;
        }
    }

    /// The driver's answer to `Deliver`: `true` once the message is durable
    /// in the Maildir and its UIDL durable in the records. `false` stops the
    /// session (QUIT without DELE for this message). Ignored in other states.
    pub fn delivered(&mut self, ok: bool, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        if !matches!(self.state, State::AwaitDelivery) {
            return;
        }
        let Some(msg) = self.msgs.get(self.idx) else {
            return self.quit(out);
        };
        if !ok {
            let what = format!("could not store message {}; left on the server", msg.number);
            self.summary.error.get_or_insert(FetchError::Local(what));
            return self.quit(out);
        }
        self.summary.fetched += 1;
        let first_seen = match &msg.uidl {
            Some(u) => {
                let e = self.known.entry(u.clone()).or_insert(Entry {
                    first_seen: self.params.now,
                    ..Entry::default()
                });
                e.delivered = true;
                e.first_seen
            }
            None => self.params.now,
        };
        if self.should_delete(first_seen) {
            let cmd = format!("DELE {}", msg.number);
            self.send(out, &cmd);
            self.state = State::Dele;
        } else {
            self.summary.kept += 1;
            self.idx += 1;
            self.next_message(out, events);
        }
    }

    /// The driver's answer to `Deliver` when the local delivery refused the
    /// message for good (a permanent error such as too many hops) and
    /// recorded its UIDL as rejected: it stays on the server, counts as
    /// failed, and the session goes on with the next message, so one such
    /// message never blocks the maildrop. Ignored in other states.
    pub fn rejected(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        if !matches!(self.state, State::AwaitDelivery) {
            return;
        }
        let Some(msg) = self.msgs.get(self.idx) else {
            return self.quit(out);
        };
        if let Some(u) = &msg.uidl {
            self.known
                .entry(u.clone())
                .or_insert(Entry {
                    first_seen: self.params.now,
                    ..Entry::default()
                })
                .rejected = true;
        }
        self.summary.failed += 1;
        self.idx += 1;
        self.next_message(out, events);
    }

    /// The connection dropped (EOF, reset, timeout). Ends the session if it
    /// was not over and returns the summary (no `Done` event). Nothing sent
    /// since the last QUIT +OK is committed by the server.
    pub fn connection_lost(&mut self) -> FetchSummary {
        let what = format!("connection lost during {}", self.state.name());
        self.abort(FetchError::Connection(what))
    }

    /// Ends the session with `error` (e.g. the TLS handshake failed) unless
    /// it is already over; returns the summary (no `Done` event).
    pub fn abort(&mut self, error: FetchError) -> FetchSummary {
        if !matches!(self.state, State::Done) {
            self.summary.error.get_or_insert(error);
            self.summary.remaining = None;
            self.state = State::Done;
            self.inbuf = Vec::new();
        }
        self.summary.clone()
    }

    fn send(&self, out: &mut Vec<u8>, cmd: &str) {
        out.extend_from_slice(cmd.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Ends without QUIT: the stream can no longer be trusted.
    fn fail_now(&mut self, error: FetchError, events: &mut Vec<FetchEvent>) {
        // The driver logs the summary, error included, once per session.
        log::debug!("smartpop {}: {error}", self.params.account);
        self.summary.error.get_or_insert(error);
        self.summary.remaining = None;
        self.state = State::Done;
        events.push(FetchEvent::Done(self.summary.clone()));
    }

    /// Ends with QUIT: the dialogue is in step, the server just said no.
    fn fail_quit(&mut self, error: FetchError, out: &mut Vec<u8>) {
        log::debug!("smartpop {}: {error}", self.params.account);
        self.summary.error.get_or_insert(error);
        self.quit(out);
    }

    fn quit(&mut self, out: &mut Vec<u8>) {
        self.send(out, "QUIT");
        self.state = State::Quit;
    }

    fn should_delete(&self, first_seen: u64) -> bool {
        match self.params.keep {
            Keep::No => true,
            Keep::Yes => false,
            Keep::For(d) => first_seen.saturating_add(d.as_secs()) <= self.params.now,
        }
    }

    /// One complete reply line (CRLF removed) for the command in flight.
    /// `trailing`: more bytes follow it in the buffer.
    fn on_line(
        &mut self,
        line: &[u8],
        trailing: bool,
        out: &mut Vec<u8>,
        events: &mut Vec<FetchEvent>,
    ) {
        let listing = matches!(
            self.state,
            State::CapaLines | State::UidlLines | State::ListLines
        );
        if let Some(challenge) = continuation(line) {
            if matches!(self.state, State::AuthBearer(_) | State::AuthBearerToken(_)) {
                return self.bearer_continuation(challenge, out);
            }
        }
        if !listing {
            match status(line) {
                Some(st) => self.on_status(st, trailing, out, events),
                None => {
                    let what = format!(
                        "reply to {} is not +OK/-ERR: {:?}",
                        self.state.name(),
                        printable(line)
                    );
                    self.fail_now(FetchError::Protocol(what), events);
                }
            }
            return;
        }
        // Multi-line listings (RFC 1939 section 3): "." ends, a leading "." is stuffing.
        if line == b"." {
            match self.state {
                State::CapaLines => self.after_capa(out),
                State::UidlLines => self.uidl_done(out, events),
                _ => self.next_message(out, events),
            }
            return;
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        match self.state {
            State::CapaLines => self.capa_line(line, events),
            State::UidlLines => self.uidl_line(line, events),
            _ => self.list_line(line, events),
        }
    }

    fn on_status(
        &mut self,
        st: Status<'_>,
        trailing: bool,
        out: &mut Vec<u8>,
        events: &mut Vec<FetchEvent>,
    ) {
        let state = std::mem::replace(&mut self.state, State::Done);
        match (state, st) {
            (State::Greeting, Status::Ok(text)) => {
                if self.params.tls == TlsMode::Tls && !self.secure {
                    let e = FetchError::Tls("tls = tls but the connection is not encrypted".into());
                    return self.fail_quit(e, out);
                }
                self.apop_timestamp = apop_timestamp(text);
                self.send(out, "CAPA");
                self.state = State::Capa;
            }
            (State::Greeting, Status::Err(text)) => {
                let what = format!("server refused the session: {}", printable(text));
                self.fail_now(FetchError::Connection(what), events);
            }
            (State::Capa, Status::Ok(_)) => {
                self.caps = Caps::default();
                self.state = State::CapaLines;
            }
            // RFC 2449 is optional: a server without CAPA is fine.
            (State::Capa, Status::Err(_)) => self.after_capa(out),
            (State::Stls, Status::Ok(_)) => {
                if trailing {
                    let what = "data after the STLS reply (plaintext injection?)".to_string();
                    return self.fail_now(FetchError::Protocol(what), events);
                }
                self.state = State::AwaitTls;
                events.push(FetchEvent::StartTls);
            }
            (State::Stls, Status::Err(text)) => {
                let what = format!("server refused STLS: {}", printable(text));
                self.fail_quit(FetchError::Tls(what), out);
            }
            (
                State::Apop | State::Pass | State::AuthPlain | State::AuthBearerToken(_),
                Status::Ok(_),
            ) => {
                self.send(out, "UIDL");
                self.state = State::Uidl;
            }
            (State::Apop, Status::Err(text)) => {
                log::warn!(
                    "smartpop {}: APOP refused ({}); trying USER/PASS in plaintext",
                    self.params.account,
                    printable(text)
                );
                self.apop_refused = true;
                self.login(out);
            }
            (State::User, Status::Ok(_)) => {
                let cmd = format!("PASS {}", self.params.password);
                self.send(out, &cmd);
                self.state = State::Pass;
            }
            (State::User | State::Pass | State::AuthPlain, Status::Err(text)) => {
                self.fail_quit(FetchError::Auth(printable(text)), out);
            }
            (State::AuthBearer(m) | State::AuthBearerToken(m), Status::Err(text)) => {
                let what = format!("{} refused: {}", m.name(), printable(text));
                self.fail_quit(FetchError::Auth(what), out);
            }
            (State::AuthBearerAbort(report), Status::Err(text)) => {
                let what = format!("token refused: {} ({report})", printable(text));
                self.fail_quit(FetchError::Auth(what), out);
            }
            (State::AuthBearer(_) | State::AuthBearerAbort(_), Status::Ok(_)) => {
                let what = "+OK to an unfinished SASL exchange".to_string();
                self.fail_now(FetchError::Protocol(what), events);
            }
            (State::Uidl, Status::Ok(_)) => {
                self.uidls = Some(HashMap::new());
                self.state = State::UidlLines;
            }
            (State::Uidl, Status::Err(text)) => {
                if self.params.keep == Keep::No {
                    self.uidls = None;
                    self.send(out, "LIST");
                    self.state = State::List;
                } else {
                    let what = format!(
                        "server has no UIDL ({}); keep needs it to fetch each message once",
                        printable(text)
                    );
                    self.fail_quit(FetchError::Protocol(what), out);
                }
            }
            (State::List, Status::Ok(_)) => self.state = State::ListLines,
            (State::List, Status::Err(text)) => {
                let what = format!("LIST refused: {}", printable(text));
                self.fail_quit(FetchError::Protocol(what), out);
            }
            (State::Retr, Status::Ok(_)) => {
                let limit = self.params.max_message_size.saturating_add(RETR_SLACK);
                self.state = State::RetrBody(Body::new(limit));
            }
            (State::Retr, Status::Err(text)) => {
                if let Some(m) = self.msgs.get(self.idx) {
                    log::warn!(
                        "smartpop {}: RETR {} refused: {}; left on the server",
                        self.params.account,
                        m.number,
                        printable(text)
                    );
                }
                self.summary.failed += 1;
                self.idx += 1;
                self.next_message(out, events);
            }
            (State::Dele, st) => {
                match st {
                    Status::Ok(_) => {
                        self.summary.deleted += 1;
                        if let Some(m) = self.msgs.get_mut(self.idx) {
                            m.deleted = true;
                        }
                    }
                    Status::Err(text) => {
                        if let Some(m) = self.msgs.get(self.idx) {
                            log::warn!(
                                "smartpop {}: DELE {} refused: {}",
                                self.params.account,
                                m.number,
                                printable(text)
                            );
                        }
                        self.summary.failed += 1;
                    }
                }
                self.idx += 1;
                self.next_message(out, events);
            }
            (State::Quit, Status::Ok(_)) => {
                // RFC 1939 section 6: +OK means the UPDATE state removed
                // every message marked deleted.
                self.summary.committed = true;
                if self.uidl_listing_done {
                    let deleted: HashSet<u32> = self
                        .msgs
                        .iter()
                        .filter(|m| m.deleted)
                        .map(|m| m.number)
                        .collect();
                    let remaining = self
                        .uidls
                        .iter()
                        .flat_map(|u| u.iter())
                        .filter(|(n, _)| !deleted.contains(n))
                        .map(|(_, u)| u.clone())
                        .collect();
                    self.summary.remaining = Some(remaining);
                }
                self.finish(events);
            }
            (State::Quit, Status::Err(text)) => {
                let what = format!("QUIT failed, deletions not committed: {}", printable(text));
                self.summary.error.get_or_insert(FetchError::Protocol(what));
                self.finish(events);
            }
            (state, _) => {
                // Lines are only routed here in states with a command in flight.
                let what = format!("unexpected reply in state {}", state.name());
                self.fail_now(FetchError::Protocol(what), events);
            }
        }
    }

    fn finish(&mut self, events: &mut Vec<FetchEvent>) {
        self.state = State::Done;
        events.push(FetchEvent::Done(self.summary.clone()));
    }

    fn capa_line(&mut self, line: &[u8], events: &mut Vec<FetchEvent>) {
        self.caps.lines += 1;
        if self.caps.lines > MAX_CAPA_LINES {
            let what = format!("CAPA listing longer than {MAX_CAPA_LINES} lines");
            return self.fail_now(FetchError::Protocol(what), events);
        }
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_ascii_whitespace();
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("SASL")) {
            self.caps.sasl_listed = true;
            for m in words {
                if m.eq_ignore_ascii_case("PLAIN") {
                    self.caps.sasl_plain = true;
                } else if m.eq_ignore_ascii_case("XOAUTH2") {
                    self.caps.sasl_xoauth2 = true;
                } else if m.eq_ignore_ascii_case("OAUTHBEARER") {
                    self.caps.sasl_oauthbearer = true;
                }
            }
        }
    }

    fn after_capa(&mut self, out: &mut Vec<u8>) {
        if self.params.tls == TlsMode::StartTls && !self.secure {
            // Sent even when CAPA did not list STLS: never fall back to plaintext.
            self.send(out, "STLS");
            self.state = State::Stls;
        } else {
            self.login(out);
        }
    }

    /// `auth = oauth2`: RFC 5034 AUTH without an initial response, the
    /// token on its own line after the `+` (Microsoft's POP3 insists on
    /// this form, and a token is longer than the 255 octets RFC 5034 4
    /// allows an AUTH command line).
    fn login_bearer(&mut self, out: &mut Vec<u8>) {
        if !self.secure {
            let e = FetchError::Local("auth = oauth2 needs tls = tls or starttls".into());
            return self.fail_quit(e, out);
        }
        let offered = [
            (self.caps.sasl_oauthbearer, "OAUTHBEARER"),
            (self.caps.sasl_xoauth2 || !self.caps.sasl_listed, "XOAUTH2"),
        ];
        let mech = BearerMech::choose(offered.iter().filter(|o| o.0).map(|o| o.1));
        let Some(mech) = mech else {
            let e = FetchError::Auth("server offers neither OAUTHBEARER nor XOAUTH2".into());
            return self.fail_quit(e, out);
        };
        self.send(out, &format!("AUTH {}", mech.name()));
        self.state = State::AuthBearer(mech);
    }

    fn bearer_continuation(&mut self, challenge: &[u8], out: &mut Vec<u8>) {
        let state = std::mem::replace(&mut self.state, State::Done);
        match state {
            State::AuthBearer(mech) => {
                let p = &self.params;
                let Some(response) = mech.initial_response(&p.username, &p.password) else {
                    // RFC 5034 4: "*" cancels the exchange.
                    self.send(out, "*");
                    let e = "username or access token unusable (empty or bad characters)";
                    self.state = State::AuthBearerAbort(e.into());
                    return;
                };
                // Not through `send`: it would log the line.
                out.extend_from_slice(response.as_bytes());
                out.extend_from_slice(b"\r\n");
                self.state = State::AuthBearerToken(mech);
            }
            State::AuthBearerToken(mech) => {
                let report = super::sasl::bearer_failure(&String::from_utf8_lossy(challenge));
                out.extend_from_slice(mech.abort_response().as_bytes());
                out.extend_from_slice(b"\r\n");
                self.state = State::AuthBearerAbort(report);
            }
            other => self.state = other,
        }
    }

    fn login(&mut self, out: &mut Vec<u8>) {
        if self.params.bearer {
            return self.login_bearer(out);
        }
        let p = &self.params;
        let unsafe_char = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
        if p.username.is_empty() || unsafe_char(&p.username) || unsafe_char(&p.password) {
            let e = FetchError::Local("username or password empty or has CR, LF or NUL".into());
            return self.fail_quit(e, out);
        }
        if self.secure {
            if self.caps.sasl_plain {
                // RFC 5034 section 4 with the initial response; RFC 4616 message.
                let msg = format!("\0{}\0{}", p.username, p.password);
                let b64 = base64::engine::general_purpose::STANDARD.encode(msg.as_bytes());
                let cmd = format!("AUTH PLAIN {b64}");
                self.send(out, &cmd);
                self.state = State::AuthPlain;
            } else {
                let cmd = format!("USER {}", p.username);
                self.send(out, &cmd);
                self.state = State::User;
            }
            return;
        }
        match (&self.apop_timestamp, self.apop_refused) {
            (Some(ts), false) => {
                let mut input = ts.as_bytes().to_vec();
                input.extend_from_slice(p.password.as_bytes());
                let cmd = format!("APOP {} {}", p.username, md5::hex(&input));
                self.send(out, &cmd);
                self.state = State::Apop;
            }
            _ => {
                // `mailgate check` warns about tls = none once; not every poll.
                log::debug!(
                    "smartpop {}: sending the password for {} in plaintext (tls = none)",
                    p.account,
                    p.username
                );
                let cmd = format!("USER {}", p.username);
                self.send(out, &cmd);
                self.state = State::User;
            }
        }
    }

    fn uidl_line(&mut self, line: &[u8], events: &mut Vec<FetchEvent>) {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_ascii_whitespace();
        let (Some(n), Some(uidl), None) = (words.next(), words.next(), words.next()) else {
            let what = format!("bad UIDL line: {:?}", printable(line));
            return self.fail_now(FetchError::Protocol(what), events);
        };
        let Some(number) = parse_number(n).filter(|_| valid_uidl(uidl)) else {
            let what = format!("bad UIDL line: {:?}", printable(line));
            return self.fail_now(FetchError::Protocol(what), events);
        };
        let Some(map) = self.uidls.as_mut() else {
            return;
        };
        if map.len() >= MAX_LISTING {
            let what = format!("UIDL listing longer than {MAX_LISTING} lines");
            return self.fail_now(FetchError::Protocol(what), events);
        }
        if map.insert(number, uidl.to_string()).is_some() {
            let what = format!("UIDL listing repeats message {number}");
            self.fail_now(FetchError::Protocol(what), events);
        }
    }

    /// The UIDL listing ended. A unique-id given to two messages would make
    /// us DELE one we never fetched (it looks delivered already), so such
    /// a listing is refused whole (RFC 1939 section 7: ids are unique).
    fn uidl_done(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        let mut ids: Vec<&String> = self.uidls.iter().flat_map(|m| m.values()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w.first() == w.get(1)) {
            let what = "UIDL listing gives one unique-id to two messages".to_string();
            return self.fail_now(FetchError::Protocol(what), events);
        }
        self.uidl_listing_done = true;
        self.send(out, "LIST");
        self.state = State::List;
    }

    fn list_line(&mut self, line: &[u8], events: &mut Vec<FetchEvent>) {
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_ascii_whitespace();
        // RFC 1939 section 5: "n size", possibly followed by more information.
        let parsed = match (words.next(), words.next()) {
            (Some(n), Some(s)) => parse_number(n).zip(parse_size(s)),
            _ => None,
        };
        let Some((number, size)) = parsed else {
            let what = format!("bad LIST line: {:?}", printable(line));
            return self.fail_now(FetchError::Protocol(what), events);
        };
        if self.msgs.len() >= MAX_LISTING || !self.listed.insert(number) {
            let what = format!("LIST listing too long or repeats message {number}");
            return self.fail_now(FetchError::Protocol(what), events);
        }
        let uidl = self.uidls.as_ref().and_then(|m| m.get(&number).cloned());
        self.msgs.push(Msg {
            number,
            size,
            uidl,
            deleted: false,
        });
    }

    /// Walks the listing from `idx`: DELE what is already delivered (when
    /// keep says so), report what is too big, RETR the next new message;
    /// QUIT at the end.
    fn next_message(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        while let Some(m) = self.msgs.get(self.idx) {
            if self.uidls.is_some() && m.uidl.is_none() {
                log::warn!(
                    "smartpop {}: message {} has no UIDL; left on the server",
                    self.params.account,
                    m.number
                );
                self.summary.failed += 1;
                self.idx += 1;
                continue;
            }
            let known = m.uidl.as_ref().and_then(|u| self.known.get(u)).copied();
            if let Some(k) = known.filter(|k| k.delivered) {
                if self.should_delete(k.first_seen) {
                    let cmd = format!("DELE {}", m.number);
                    self.send(out, &cmd);
                    self.state = State::Dele;
                    return;
                }
                self.summary.kept += 1;
                self.idx += 1;
                continue;
            }
            if known.is_some_and(|k| k.rejected) {
                // Refused for good by the local delivery in an earlier run.
                self.summary.failed += 1;
                self.idx += 1;
                continue;
            }
            if m.size > self.params.max_message_size {
                if !known.is_some_and(|k| k.oversized) {
                    events.push(FetchEvent::Oversized {
                        uidl: m.uidl.clone(),
                        number: m.number,
                        size: m.size,
                    });
                }
                self.summary.skipped_oversized += 1;
                self.idx += 1;
                continue;
            }
            let cmd = format!("RETR {}", m.number);
            self.send(out, &cmd);
            self.state = State::Retr;
            return;
        }
        self.quit(out);
    }

    /// The RETR body ended. `trailing`: the server sent more bytes after the
    /// terminator, which it may not; then the body is not trusted either.
    fn body_done(&mut self, trailing: bool, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        let State::RetrBody(body) = std::mem::replace(&mut self.state, State::Done) else {
            return;
        };
        if trailing {
            let what = "data after the end of a RETR body".to_string();
            return self.fail_now(FetchError::Protocol(what), events);
        }
        let Some(m) = self.msgs.get(self.idx) else {
            return self.quit(out);
        };
        if body.overflow {
            let known = m.uidl.as_ref().and_then(|u| self.known.get(u));
            if !known.is_some_and(|k| k.oversized) {
                events.push(FetchEvent::Oversized {
                    uidl: m.uidl.clone(),
                    number: m.number,
                    size: body.seen,
                });
            }
            self.summary.skipped_oversized += 1;
            self.idx += 1;
            return self.next_message(out, events);
        }
        events.push(FetchEvent::Deliver {
            uidl: m.uidl.clone(),
            number: m.number,
            size: body.seen,
        });
        self.state = State::AwaitDelivery;
    }
}

/// A RETR body being received: decoded as it comes and handed out.
#[derive(Debug)]
struct Body {
    decoder: DotUnstuffer,
    limit: u64,
    /// Octets of content seen (even once past the limit).
    seen: u64,
    overflow: bool,
}

impl Body {
    fn new(limit: u64) -> Body {
        Body {
            decoder: DotUnstuffer::new(),
            limit,
            seen: 0,
            overflow: false,
        }
    }

    /// Decodes from `input`; the content goes out as one `Body` event
    /// while within the limit. Returns (octets used, terminator seen).
    fn feed(&mut self, input: &[u8], events: &mut Vec<FetchEvent>) -> (usize, bool) {
        let mut chunk = Vec::new();
        let (used, finished) = self.decoder.decode(input, &mut chunk);
        self.seen = self.seen.saturating_add(chunk.len() as u64);
        if self.seen > self.limit {
            self.overflow = true;
        }
        if !self.overflow && !chunk.is_empty() {
            events.push(FetchEvent::Body(chunk));
        }
        (used, finished)
    }
}

/// MD5 (RFC 1321), for the APOP digest only (RFC 1939 section 7). MD5 is
/// broken for signatures, but APOP is defined with it and it still keeps
/// the password off the wire.
mod md5 {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];

    /// K[i] = floor(abs(sin(i + 1)) * 2^32), RFC 1321 section 3.4, written
    /// out rather than computed so no platform's libm can change it.
    const K: [u32; 64] = [
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
        0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
        0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
        0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
        0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
        0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
        0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
        0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
        0xeb86d391,
    ];

    pub fn digest(input: &[u8]) -> [u8; 16] {
        let mut msg = input.to_vec();
        let bit_len = (input.len() as u64).wrapping_mul(8);
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&bit_len.to_le_bytes());
        let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
        for chunk in msg.chunks_exact(64) {
            let mut m = [0u32; 16];
            for (w, b) in m.iter_mut().zip(chunk.chunks_exact(4)) {
                *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            let [mut a, mut b, mut c, mut d] = h;
            for i in 0..64 {
                let (f, g) = match i / 16 {
                    0 => ((b & c) | (!b & d), i),
                    1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                    2 => (b ^ c ^ d, (3 * i + 5) % 16),
                    _ => (c ^ (b | !d), (7 * i) % 16),
                };
                let f = f.wrapping_add(a).wrapping_add(K[i]).wrapping_add(m[g]);
                a = d;
                d = c;
                c = b;
                b = b.wrapping_add(f.rotate_left(S[i]));
            }
            h[0] = h[0].wrapping_add(a);
            h[1] = h[1].wrapping_add(b);
            h[2] = h[2].wrapping_add(c);
            h[3] = h[3].wrapping_add(d);
        }
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(h) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    pub fn hex(input: &[u8]) -> String {
        digest(input).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn rfc1321_vectors() {
            let cases: &[(&str, &str)] = &[
                ("", "d41d8cd98f00b204e9800998ecf8427e"),
                ("a", "0cc175b9c0f1b6a831c399e269772661"),
                ("abc", "900150983cd24fb0d6963f7d28e17f72"),
                ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
                ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
                (
                    "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                    "57edf4a22be3c955ac49da2e2107b67a",
                ),
            ];
            for (input, want) in cases {
                assert_eq!(super::hex(input.as_bytes()), *want, "{input}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// What SmartPop's records keep, as the driver updates them (the real
    /// ones, with their file, are `smartpop::records`).
    #[derive(Default)]
    struct Records(BTreeMap<String, Entry>);

    impl Records {
        fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
            self.0.iter().map(|(u, e)| (u.as_str(), e))
        }
        fn get(&self, uidl: &str) -> Option<&Entry> {
            self.0.get(uidl)
        }
        fn is_empty(&self) -> bool {
            self.0.is_empty()
        }
        fn len(&self) -> usize {
            self.0.len()
        }
        fn mark(&mut self, uidl: &str, now: u64, set: impl FnOnce(&mut Entry)) {
            if valid_uidl(uidl) {
                set(self.0.entry(uidl.to_string()).or_insert(Entry {
                    first_seen: now,
                    ..Entry::default()
                }));
            }
        }
        fn mark_delivered(&mut self, uidl: &str, now: u64) {
            self.mark(uidl, now, |e| e.delivered = true);
        }
        fn mark_oversized(&mut self, uidl: &str, now: u64) {
            self.mark(uidl, now, |e| e.oversized = true);
        }
        fn mark_rejected(&mut self, uidl: &str, now: u64) {
            self.mark(uidl, now, |e| e.rejected = true);
        }
        fn prune<S: AsRef<str>>(&mut self, on_server: &[S]) {
            let keep: HashSet<&str> = on_server.iter().map(|s| s.as_ref()).collect();
            self.0.retain(|uidl, _| keep.contains(uidl.as_str()));
        }
    }

    const NOW: u64 = 1_700_000_000;
    const RFC_TS: &str = "<1896.697170952@dbc.mtview.ca.us>";

    /// A POP3 server as a value: answers one command line at a time.
    struct Server {
        greeting: String,
        capa: Option<Vec<&'static str>>,
        stls: bool,
        user: &'static str,
        pass: &'static str,
        apop: bool,
        uidl: bool,
        /// (unique-id, content with CRLF line ends)
        msgs: Vec<(String, Vec<u8>)>,
        marked: HashSet<usize>,
        retr_err: HashSet<u32>,
        /// verb -> raw reply used once instead of the normal one.
        inject: HashMap<&'static str, Vec<u8>>,
        tls: bool,
        authed: bool,
        log: Vec<String>,
    }

    impl Server {
        fn new(msgs: &[(&str, &str)]) -> Server {
            Server {
                greeting: "+OK POP3 ready".into(),
                capa: Some(vec!["USER", "UIDL", "TOP"]),
                stls: false,
                user: "bob123",
                pass: "secret",
                apop: false,
                uidl: true,
                msgs: msgs
                    .iter()
                    .map(|(u, c)| (u.to_string(), c.as_bytes().to_vec()))
                    .collect(),
                marked: HashSet::new(),
                retr_err: HashSet::new(),
                inject: HashMap::new(),
                tls: false,
                authed: false,
                log: Vec::new(),
            }
        }

        fn uids(&self) -> Vec<String> {
            self.msgs.iter().map(|(u, _)| u.clone()).collect()
        }

        fn reply(&mut self, cmd: &str) -> Vec<u8> {
            self.log.push(cmd.to_string());
            let (verb, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
            if let Some(raw) = self.inject.remove(verb) {
                return raw;
            }
            let ok = |s: &str| format!("+OK {s}\r\n").into_bytes();
            let err = |s: &str| format!("-ERR {s}\r\n").into_bytes();
            let msg = |n: &str, s: &Server| -> Option<usize> {
                let i = n.parse::<usize>().ok()?.checked_sub(1)?;
                (i < s.msgs.len() && !s.marked.contains(&i)).then_some(i)
            };
            match verb {
                "CAPA" => match &self.capa {
                    None => err("unknown command"),
                    Some(caps) => {
                        let mut r = ok("capabilities follow");
                        for c in caps {
                            if *c == "STLS" && self.tls {
                                continue;
                            }
                            r.extend_from_slice(format!("{c}\r\n").as_bytes());
                        }
                        r.extend_from_slice(b".\r\n");
                        r
                    }
                },
                "STLS" if self.stls && !self.tls => ok("begin TLS"),
                "USER" if arg == self.user => ok("send PASS"),
                "PASS" if arg == self.pass => {
                    self.authed = true;
                    ok("logged in")
                }
                "PASS" => err("[AUTH] invalid password"),
                "APOP" if self.apop => {
                    let ts = self.greeting.find('<').map_or("", |i| &self.greeting[i..]);
                    let want = format!(
                        "{} {}",
                        self.user,
                        md5::hex(format!("{ts}{}", self.pass).as_bytes())
                    );
                    if arg == want {
                        self.authed = true;
                        ok("maildrop locked")
                    } else {
                        err("[AUTH] bad digest")
                    }
                }
                "AUTH" => {
                    let want = base64::engine::general_purpose::STANDARD
                        .encode(format!("\0{}\0{}", self.user, self.pass));
                    if arg == format!("PLAIN {want}") {
                        self.authed = true;
                        ok("logged in")
                    } else {
                        err("[AUTH] nope")
                    }
                }
                "UIDL" if self.authed && self.uidl => {
                    let mut r = ok("");
                    for (i, (u, _)) in self.msgs.iter().enumerate() {
                        if !self.marked.contains(&i) {
                            r.extend_from_slice(format!("{} {u}\r\n", i + 1).as_bytes());
                        }
                    }
                    r.extend_from_slice(b".\r\n");
                    r
                }
                "LIST" if self.authed => {
                    let mut r = ok("");
                    for (i, (_, c)) in self.msgs.iter().enumerate() {
                        if !self.marked.contains(&i) {
                            r.extend_from_slice(format!("{} {}\r\n", i + 1, c.len()).as_bytes());
                        }
                    }
                    r.extend_from_slice(b".\r\n");
                    r
                }
                "RETR" if self.authed => match msg(arg, self) {
                    Some(i) if !self.retr_err.contains(&(i as u32 + 1)) => {
                        let mut r = ok("message follows");
                        let content = &self.msgs[i].1;
                        let mut at_start = true;
                        for (j, &b) in content.iter().enumerate() {
                            if at_start && b == b'.' {
                                r.push(b'.');
                            }
                            r.push(b);
                            at_start = b == b'\n' && j > 0 && content[j - 1] == b'\r';
                        }
                        r.extend_from_slice(b".\r\n");
                        r
                    }
                    _ => err("no such message"),
                },
                "DELE" if self.authed => match msg(arg, self) {
                    Some(i) => {
                        self.marked.insert(i);
                        ok("deleted")
                    }
                    None => err("no such message"),
                },
                "QUIT" => {
                    if self.authed {
                        // RFC 1939 UPDATE state: remove the marked messages.
                        let marked = std::mem::take(&mut self.marked);
                        let mut i = 0;
                        self.msgs.retain(|_| {
                            i += 1;
                            !marked.contains(&(i - 1))
                        });
                        self.authed = false;
                    }
                    ok("bye")
                }
                _ => err("command not allowed"),
            }
        }
    }

    fn params(keep: Keep) -> FetchParams {
        FetchParams {
            account: "isp".into(),
            username: "bob123".into(),
            password: "secret".into(),
            bearer: false,
            tls: TlsMode::Tls,
            tls_active: true,
            keep,
            max_message_size: 1000,
            now: NOW,
        }
    }

    #[derive(Default)]
    struct Outcome {
        summary: FetchSummary,
        /// (uidl, data) handed over and acknowledged with delivered(true).
        delivered: Vec<(Option<String>, Vec<u8>)>,
        /// `Body` chunks of the message being received (the staging file).
        staged: Vec<u8>,
        oversized: Vec<(Option<String>, u32)>,
        events: Vec<FetchEvent>,
    }

    /// Runs one session: the server's replies go to the core `chunk` octets
    /// at a time; the connection is cut once `cut_at` octets were delivered
    /// to the core. Deliveries update `records` as the driver would.
    fn session(
        server: &mut Server,
        p: FetchParams,
        records: &mut Records,
        chunk: usize,
        cut_at: Option<usize>,
        store_ok: &dyn Fn(u32) -> bool,
    ) -> Outcome {
        let mut core = Pop3Fetch::new(p, records.iter());
        let mut o = Outcome::default();
        let mut to_client = format!("{}\r\n", server.greeting).into_bytes();
        let mut fed = 0usize;
        loop {
            let mut out = Vec::new();
            let mut events = Vec::new();
            for piece in to_client.chunks(chunk.max(1)) {
                if let Some(cut) = cut_at {
                    let room = cut.saturating_sub(fed);
                    if room < piece.len() {
                        core.receive(&piece[..room], &mut out, &mut events);
                        handle(
                            &mut core,
                            server,
                            records,
                            &mut out,
                            &mut events,
                            &mut o,
                            store_ok,
                        );
                        o.summary = core.connection_lost();
                        assert!(core.is_done());
                        return o;
                    }
                }
                fed += piece.len();
                core.receive(piece, &mut out, &mut events);
            }
            to_client.clear();
            if let Some(s) = handle(
                &mut core,
                server,
                records,
                &mut out,
                &mut events,
                &mut o,
                store_ok,
            ) {
                o.summary = s.clone();
                if let Some(rem) = &s.remaining {
                    records.prune(rem);
                }
                // Done is final: the core ignores what comes after.
                let mut more = Vec::new();
                core.receive(b"+OK late\r\n", &mut more, &mut Vec::new());
                core.delivered(true, &mut more, &mut Vec::new());
                assert!(more.is_empty());
                assert_eq!(core.connection_lost(), s);
                return o;
            }
            assert!(!out.is_empty(), "stalled; server log {:?}", server.log);
            let text = String::from_utf8(out).unwrap();
            let lines: Vec<&str> = text.split_terminator("\r\n").collect();
            assert_eq!(lines.len(), 1, "one command at a time: {lines:?}");
            to_client = server.reply(lines[0]);
        }
    }

    /// Carries out events like a driver; returns the summary on Done.
    fn handle(
        core: &mut Pop3Fetch,
        server: &mut Server,
        records: &mut Records,
        out: &mut Vec<u8>,
        events: &mut Vec<FetchEvent>,
        o: &mut Outcome,
        store_ok: &dyn Fn(u32) -> bool,
    ) -> Option<FetchSummary> {
        let mut done = None;
        let mut i = 0;
        while i < events.len() {
            let ev = events[i].clone();
            i += 1;
            o.events.push(ev.clone());
            match ev {
                FetchEvent::StartTls => {
                    assert!(out.is_empty());
                    server.tls = true;
                    core.tls_started(out);
                }
                FetchEvent::Body(chunk) => {
                    assert!(!chunk.is_empty());
                    o.staged.extend_from_slice(&chunk);
                }
                FetchEvent::Deliver { uidl, number, size } => {
                    // Nothing goes to the server while the delivery runs.
                    assert!(out.is_empty());
                    let data = std::mem::take(&mut o.staged);
                    assert_eq!(size, data.len() as u64);
                    let ok = store_ok(number);
                    if ok {
                        if let Some(u) = &uidl {
                            records.mark_delivered(u, NOW);
                        }
                        o.delivered.push((uidl, data));
                    }
                    core.delivered(ok, out, events);
                }
                FetchEvent::Oversized { uidl, number, .. } => {
                    o.staged.clear();
                    if let Some(u) = &uidl {
                        records.mark_oversized(u, NOW);
                    }
                    o.oversized.push((uidl, number));
                }
                FetchEvent::NewMail => panic!("POP3 has no push"),
                FetchEvent::Done(s) => {
                    assert!(done.is_none(), "Done twice");
                    done = Some(s);
                }
            }
        }
        events.clear();
        done
    }

    fn all_ok(_: u32) -> bool {
        true
    }

    fn empty_records() -> Records {
        Records::default()
    }

    fn three() -> Vec<(&'static str, &'static str)> {
        vec![
            ("u1", "Subject: one\r\n\r\nhello\r\n"),
            (
                "u2",
                "Subject: two\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n",
            ),
            ("u3", "Subject: three\r\n\r\nbare\nLF and bare\rCR\r\n"),
        ]
    }

    fn verbs(server: &Server) -> Vec<String> {
        server
            .log
            .iter()
            .map(|c| c.split(' ').next().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn rejected_message_is_left_and_not_fetched_again() {
        for keep in [Keep::No, Keep::Yes] {
            let mut server = Server::new(&three());
            let mut records = empty_records();
            let mut core = Pop3Fetch::new(params(keep), records.iter());
            let mut to_client = format!("{}\r\n", server.greeting).into_bytes();
            let summary = loop {
                let (mut out, mut events) = (Vec::new(), Vec::new());
                core.receive(&to_client, &mut out, &mut events);
                let mut done = None;
                let mut i = 0;
                while i < events.len() {
                    match events[i].clone() {
                        FetchEvent::StartTls => core.tls_started(&mut out),
                        FetchEvent::Deliver { uidl, number, .. } => {
                            let u = uidl.unwrap();
                            if number == 2 {
                                records.mark_rejected(&u, NOW);
                                core.rejected(&mut out, &mut events);
                            } else {
                                records.mark_delivered(&u, NOW);
                                core.delivered(true, &mut out, &mut events);
                            }
                        }
                        FetchEvent::Oversized { .. } | FetchEvent::Body(_) => {}
                        FetchEvent::NewMail => panic!("POP3 has no push"),
                        FetchEvent::Done(s) => done = Some(s),
                    }
                    i += 1;
                }
                if let Some(s) = done {
                    break s;
                }
                let text = String::from_utf8(out).unwrap();
                to_client = server.reply(text.trim_end());
            };
            assert_eq!(summary.error, None);
            assert_eq!((summary.fetched, summary.failed), (2, 1));
            if keep == Keep::No {
                assert_eq!(server.uids(), vec!["u2"]);
            }
            records.prune(summary.remaining.as_deref().unwrap());
            assert!(records.get("u2").unwrap().rejected);
            // The next run neither fetches it nor deletes it.
            let before = server.log.len();
            let o = session(&mut server, params(keep), &mut records, 64, None, &all_ok);
            assert!(
                !server.log[before..].iter().any(|c| c.starts_with("RETR")),
                "{keep:?}"
            );
            assert_eq!((o.summary.fetched, o.summary.failed), (0, 1));
            assert!(o.delivered.is_empty());
            assert!(server.uids().contains(&"u2".to_string()));
        }
    }

    #[test]
    fn keep_no_fetches_and_deletes_everything() {
        for chunk in [1, 2, 3, 7, 64, 100_000] {
            let mut server = Server::new(&three());
            let mut records = empty_records();
            let o = session(
                &mut server,
                params(Keep::No),
                &mut records,
                chunk,
                None,
                &all_ok,
            );
            assert_eq!(o.summary.error, None, "chunk {chunk}");
            assert_eq!(
                (o.summary.fetched, o.summary.deleted, o.summary.kept),
                (3, 3, 0)
            );
            let want: Vec<_> = three()
                .iter()
                .map(|(u, c)| (Some(u.to_string()), c.as_bytes().to_vec()))
                .collect();
            assert_eq!(o.delivered, want, "chunk {chunk}");
            assert!(server.msgs.is_empty());
            assert_eq!(o.summary.remaining, Some(vec![]));
            assert!(records.is_empty(), "pruned to the empty maildrop");
            assert_eq!(
                server.log,
                [
                    "CAPA",
                    "USER bob123",
                    "PASS secret",
                    "UIDL",
                    "LIST",
                    "RETR 1",
                    "DELE 1",
                    "RETR 2",
                    "DELE 2",
                    "RETR 3",
                    "DELE 3",
                    "QUIT"
                ]
            );
        }
    }

    #[test]
    fn known_uidls_are_not_fetched_again() {
        let mut server = Server::new(&three());
        let mut records = empty_records();
        records.mark_delivered("u2", NOW - 10);
        // keep = yes: u2 known, stays; u1, u3 fetched and kept.
        let o = session(
            &mut server,
            params(Keep::Yes),
            &mut records,
            5,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert_eq!(
            (o.summary.fetched, o.summary.deleted, o.summary.kept),
            (2, 0, 3)
        );
        assert_eq!(
            verbs(&server),
            ["CAPA", "USER", "PASS", "UIDL", "LIST", "RETR", "RETR", "QUIT"]
        );
        assert!(
            server.log.contains(&"RETR 1".to_string()) && server.log.contains(&"RETR 3".into())
        );
        assert_eq!(server.msgs.len(), 3);
        // A second session fetches nothing.
        server.log.clear();
        let o = session(
            &mut server,
            params(Keep::Yes),
            &mut records,
            5,
            None,
            &all_ok,
        );
        assert_eq!((o.summary.fetched, o.summary.kept), (0, 3));
        assert_eq!(
            verbs(&server),
            ["CAPA", "USER", "PASS", "UIDL", "LIST", "QUIT"]
        );
        let mut rem = o.summary.remaining.unwrap();
        rem.sort();
        assert_eq!(rem, ["u1", "u2", "u3"]);
    }

    #[test]
    fn known_but_undeleted_is_deleted_without_refetch() {
        // A previous session delivered u1 and recorded it, then died before DELE.
        let mut server = Server::new(&three());
        let mut records = empty_records();
        records.mark_delivered("u1", NOW - 5);
        let o = session(
            &mut server,
            params(Keep::No),
            &mut records,
            100,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert_eq!(o.delivered.len(), 2);
        assert!(!server.log.contains(&"RETR 1".to_string()));
        assert!(server.log.contains(&"DELE 1".to_string()));
        assert_eq!((o.summary.fetched, o.summary.deleted), (2, 3));
        assert!(server.msgs.is_empty());
    }

    #[test]
    fn keep_for_a_duration() {
        let day = 86_400;
        let mut server = Server::new(&three());
        let mut records = empty_records();
        records.mark_delivered("u1", NOW - 8 * day); // old enough: deleted
        records.mark_delivered("u2", NOW - 6 * day); // too young: kept
        let keep = Keep::For(Duration::from_secs(7 * day));
        let o = session(&mut server, params(keep), &mut records, 100, None, &all_ok);
        assert_eq!(o.summary.error, None);
        // u3 is new: fetched, first seen now, kept.
        assert_eq!(
            (o.summary.fetched, o.summary.deleted, o.summary.kept),
            (1, 1, 2)
        );
        assert_eq!(server.uids(), ["u2", "u3"]);
        assert_eq!(records.get("u3").map(|e| e.first_seen), Some(NOW));
        assert!(records.get("u1").is_none(), "pruned after commit");
        // keep = 0s deletes even what was just fetched.
        let mut server = Server::new(&three());
        let o = session(
            &mut server,
            params(Keep::For(Duration::ZERO)),
            &mut empty_records(),
            100,
            None,
            &all_ok,
        );
        assert_eq!((o.summary.fetched, o.summary.deleted), (3, 3));
    }

    #[test]
    fn dele_only_after_delivered_true() {
        // The harness asserts nothing is written while a delivery runs; here
        // we check the order by hand.
        let mut core = Pop3Fetch::new(params(Keep::No), empty_records().iter());
        let (mut out, mut ev) = (Vec::new(), Vec::new());
        for (input, want) in [
            ("+OK hi\r\n", "CAPA\r\n"),
            ("-ERR no\r\n", "USER bob123\r\n"),
            ("+OK\r\n", "PASS secret\r\n"),
            ("+OK\r\n", "UIDL\r\n"),
            ("+OK\r\n1 abc\r\n.\r\n", "LIST\r\n"),
            ("+OK\r\n1 5\r\n.\r\n", "RETR 1\r\n"),
            ("+OK\r\nhi\r\n.\r\n", ""),
        ] {
            core.receive(input.as_bytes(), &mut out, &mut ev);
            assert_eq!(String::from_utf8_lossy(&out), want, "after {input:?}");
            out.clear();
        }
        assert_eq!(
            ev,
            [
                FetchEvent::Body(b"hi\r\n".to_vec()),
                FetchEvent::Deliver {
                    uidl: Some("abc".into()),
                    number: 1,
                    size: 4
                }
            ]
        );
        ev.clear();
        // Unsolicited bytes while waiting for the delivery are refused.
        let mut c2 = Pop3Fetch::new(params(Keep::No), empty_records().iter());
        for input in [
            "+OK\r\n",
            "-ERR\r\n",
            "+OK\r\n",
            "+OK\r\n",
            "+OK\r\n1 a\r\n.\r\n",
            "+OK\r\n1 5\r\n.\r\n",
            "+OK\r\n.\r\n",
        ] {
            c2.receive(input.as_bytes(), &mut Vec::new(), &mut Vec::new());
        }
        let mut ev2 = Vec::new();
        c2.receive(b"+OK\r\n", &mut out, &mut ev2);
        assert!(
            matches!(&ev2[..], [FetchEvent::Done(s)] if matches!(s.error, Some(FetchError::Protocol(_))))
        );
        let mut out2 = Vec::new();
        c2.delivered(true, &mut out2, &mut ev2);
        assert!(out2.is_empty(), "no DELE after the session ended");

        core.delivered(true, &mut out, &mut ev);
        assert_eq!(out, b"DELE 1\r\n");
        // A second delivered() is ignored.
        out.clear();
        core.delivered(true, &mut out, &mut ev);
        assert!(out.is_empty() && ev.is_empty());
    }

    #[test]
    fn failed_delivery_stops_without_dele() {
        let mut server = Server::new(&three());
        let mut records = empty_records();
        let o = session(
            &mut server,
            params(Keep::No),
            &mut records,
            100,
            None,
            &|n| n != 2,
        );
        assert!(matches!(o.summary.error, Some(FetchError::Local(_))));
        assert_eq!(o.delivered.len(), 1);
        assert_eq!(
            verbs(&server),
            ["CAPA", "USER", "PASS", "UIDL", "LIST", "RETR", "DELE", "RETR", "QUIT"]
        );
        // DELE 1 was committed by QUIT; 2 and 3 remain.
        assert_eq!(server.uids(), ["u2", "u3"]);
        let mut rem = o.summary.remaining.unwrap();
        rem.sort();
        assert_eq!(rem, ["u2", "u3"]);
        // The next session picks them up.
        let o = session(
            &mut server,
            params(Keep::No),
            &mut records,
            100,
            None,
            &all_ok,
        );
        assert_eq!((o.summary.fetched, o.summary.error), (2, None));
        assert!(server.msgs.is_empty());
    }

    #[test]
    fn retr_err_skips_that_message() {
        let mut server = Server::new(&three());
        server.retr_err.insert(2);
        let o = session(
            &mut server,
            params(Keep::No),
            &mut empty_records(),
            100,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert_eq!(
            (o.summary.fetched, o.summary.deleted, o.summary.failed),
            (2, 2, 1)
        );
        assert_eq!(server.uids(), ["u2"]);
    }

    #[test]
    fn oversized_reported_once_and_left() {
        let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(2000));
        let mut server = Server::new(&[("small", "a\r\n"), ("big", &big)]);
        let mut records = empty_records();
        let o = session(
            &mut server,
            params(Keep::No),
            &mut records,
            100,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert_eq!(o.oversized, [(Some("big".to_string()), 2)]);
        assert_eq!((o.summary.fetched, o.summary.skipped_oversized), (1, 1));
        assert_eq!(server.uids(), ["big"]);
        assert!(records
            .get("big")
            .is_some_and(|e| e.oversized && !e.delivered));
        let o = session(
            &mut server,
            params(Keep::No),
            &mut records,
            100,
            None,
            &all_ok,
        );
        assert!(o.oversized.is_empty(), "reported once");
        assert_eq!(o.summary.skipped_oversized, 1);
        // Raising the limit fetches it.
        let mut p = params(Keep::No);
        p.max_message_size = 10_000;
        let o = session(&mut server, p, &mut records, 100, None, &all_ok);
        assert_eq!(o.delivered.len(), 1);
        assert!(server.msgs.is_empty());
    }

    #[test]
    fn body_larger_than_listed_is_discarded() {
        let mut server = Server::new(&[("liar", "x\r\n")]);
        let mut body = b"+OK\r\n".to_vec();
        body.extend_from_slice("y".repeat(1000 + RETR_SLACK as usize + 10).as_bytes());
        body.extend_from_slice(b"\r\n.\r\n");
        server.inject.insert("RETR", body);
        let o = session(
            &mut server,
            params(Keep::No),
            &mut empty_records(),
            4096,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert!(o.delivered.is_empty());
        assert_eq!(o.oversized.len(), 1);
        assert!(!server.log.iter().any(|c| c.starts_with("DELE")));
        assert_eq!(server.uids(), ["liar"]);
    }

    #[test]
    fn retr_bodies_stream_in_every_chunking() {
        // Fed whole, in odd pieces and byte by byte, each message comes out
        // exactly as the server holds it, in chunks the size of the input.
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let mut server = Server::new(&three());
            let mut records = empty_records();
            let o = session(
                &mut server,
                params(Keep::No),
                &mut records,
                chunk,
                None,
                &all_ok,
            );
            assert_eq!(o.summary.error, None, "chunk {chunk}");
            let got: Vec<&[u8]> = o.delivered.iter().map(|(_, d)| &d[..]).collect();
            let want: Vec<&[u8]> = three().iter().map(|(_, m)| m.as_bytes()).collect();
            assert_eq!(got, want, "chunk {chunk}");
            for ev in &o.events {
                if let FetchEvent::Body(b) = ev {
                    // Its input, and a CR held back from the input before.
                    assert!(b.len() <= chunk + 1, "a Body event holds only its input");
                }
            }
        }
    }

    #[test]
    fn body_limit() {
        // Up to the limit the chunks flow; past it they stop and the
        // message is reported oversized instead of delivered.
        let mut events = Vec::new();
        let mut b = Body::new(4);
        assert_eq!(b.feed(b"ab\r\n.\r\n", &mut events), (7, true));
        assert!(!b.overflow);
        assert_eq!(events, [FetchEvent::Body(b"ab\r\n".to_vec())]);
        let mut events = Vec::new();
        let mut b = Body::new(4);
        assert!(!b.feed(b"abc", &mut events).1);
        assert_eq!(b.feed(b"\r\nlonger line\r\n.\r\n", &mut events), (18, true));
        assert!(b.overflow);
        assert_eq!(b.seen, 18);
        assert_eq!(events, [FetchEvent::Body(b"abc".to_vec())]);
    }

    /// A scripted dialog: each step is what the server sends and exactly
    /// what the client must answer; returns the events.
    fn dialog(p: FetchParams, steps: &[(&str, &str)]) -> Vec<FetchEvent> {
        let mut core = Pop3Fetch::new(p, std::iter::empty());
        let mut events = Vec::new();
        for (i, (server, want)) in steps.iter().enumerate() {
            let mut out = Vec::new();
            core.receive(server.as_bytes(), &mut out, &mut events);
            assert_eq!(
                String::from_utf8_lossy(&out),
                *want,
                "step {i}: after {server:?}"
            );
        }
        events
    }

    fn bearer_params(user: &str, token: &str) -> FetchParams {
        let mut p = params(Keep::Yes);
        p.username = user.into();
        p.password = token.into();
        p.bearer = true;
        p
    }

    /// Microsoft's documented POP3 exchange ("Authenticate an IMAP, POP or
    /// SMTP connection using OAuth"): AUTH XOAUTH2, a bare `+`, the token
    /// on its own line.
    #[test]
    fn microsoft_pop3_xoauth2() {
        let p = bearer_params(
            "test@contoso.onmicrosoft.com",
            "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA",
        );
        dialog(
            p,
            &[
                ("+OK The Microsoft Exchange POP3 service is ready.\r\n", "CAPA\r\n"),
                ("+OK\r\nTOP\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\nUSER\r\n.\r\n", "AUTH XOAUTH2\r\n"),
                ("+\r\n", "dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVyIEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0NjbFJDM0VvQUEBAQ==\r\n"),
                ("+OK User successfully authenticated.\r\n", "UIDL\r\n"),
            ],
        );
    }

    /// Gmail-style refusal: the failure report comes as a challenge, the
    /// client acknowledges it (empty line for XOAUTH2, %x01 for
    /// OAUTHBEARER), then -ERR; the error names the report, never the token.
    #[test]
    fn bearer_refused_with_challenge() {
        let report = "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==";
        for (capa, mech, ack) in [
            ("SASL XOAUTH2", "XOAUTH2", "\r\n"),
            ("SASL XOAUTH2 OAUTHBEARER", "OAUTHBEARER", "AQ==\r\n"),
        ] {
            let p = bearer_params("bob@gmail.com", "ya29.secrettoken");
            let token_line = format!(
                "{}\r\n",
                BearerMech::choose([mech])
                    .unwrap()
                    .initial_response("bob@gmail.com", "ya29.secrettoken")
                    .unwrap()
            );
            let events = dialog(
                p,
                &[
                    ("+OK Gpop ready\r\n", "CAPA\r\n"),
                    (
                        &format!("+OK\r\nUSER\r\n{capa}\r\nUIDL\r\n.\r\n"),
                        &format!("AUTH {mech}\r\n"),
                    ),
                    ("+ \r\n", &token_line),
                    (&format!("+ {report}\r\n"), ack),
                    ("-ERR [AUTH] Invalid credentials.\r\n", "QUIT\r\n"),
                    ("+OK bye\r\n", ""),
                ],
            );
            let Some(FetchEvent::Done(summary)) = events.last() else {
                panic!("{events:?}")
            };
            let Some(FetchError::Auth(e)) = &summary.error else {
                panic!("{summary:?}")
            };
            assert!(
                e.contains("Invalid credentials") && e.contains("\"status\":\"401\""),
                "{e}"
            );
            assert!(!e.contains("secrettoken") && !format!("{summary:?}").contains("secrettoken"));
        }
    }

    #[test]
    fn bearer_mechanism_choice_and_refusals() {
        // No SASL line in CAPA: try XOAUTH2.
        dialog(
            bearer_params("u@x", "tok"),
            &[
                ("+OK\r\n", "CAPA\r\n"),
                ("+OK\r\nUIDL\r\n.\r\n", "AUTH XOAUTH2\r\n"),
            ],
        );
        // SASL without a bearer mechanism: never falls back to a password.
        dialog(
            bearer_params("u@x", "tok"),
            &[
                ("+OK\r\n", "CAPA\r\n"),
                ("+OK\r\nSASL PLAIN\r\nUSER\r\n.\r\n", "QUIT\r\n"),
            ],
        );
        // Plaintext: the token is never sent.
        let mut p = bearer_params("u@x", "tok");
        p.tls = TlsMode::None;
        p.tls_active = false;
        dialog(
            p,
            &[
                ("+OK\r\n", "CAPA\r\n"),
                ("+OK\r\nSASL XOAUTH2\r\n.\r\n", "QUIT\r\n"),
            ],
        );
        // A token with a space or CR cannot be sent: "*" cancels.
        dialog(
            bearer_params("u@x", "tok\r\nDELE 1"),
            &[
                ("+OK\r\n", "CAPA\r\n"),
                ("+OK\r\nSASL XOAUTH2\r\n.\r\n", "AUTH XOAUTH2\r\n"),
                ("+\r\n", "*\r\n"),
                ("-ERR cancelled\r\n", "QUIT\r\n"),
            ],
        );
        // -ERR right after AUTH.
        dialog(
            bearer_params("u@x", "tok"),
            &[
                ("+OK\r\n", "CAPA\r\n"),
                ("+OK\r\nSASL XOAUTH2\r\n.\r\n", "AUTH XOAUTH2\r\n"),
                ("-ERR no\r\n", "QUIT\r\n"),
            ],
        );
    }

    #[test]
    fn auth_failure_quits() {
        let mut server = Server::new(&three());
        server.pass = "other";
        let o = session(
            &mut server,
            params(Keep::No),
            &mut empty_records(),
            100,
            None,
            &all_ok,
        );
        assert_eq!(
            o.summary.error,
            Some(FetchError::Auth("[AUTH] invalid password".into()))
        );
        assert_eq!(verbs(&server), ["CAPA", "USER", "PASS", "QUIT"]);
        assert_eq!(o.summary.remaining, None);
        assert_eq!(server.msgs.len(), 3);
    }

    #[test]
    fn auth_plain_when_offered_under_tls() {
        let mut server = Server::new(&three());
        server.capa = Some(vec!["USER", "SASL LOGIN PLAIN", "UIDL"]);
        let o = session(
            &mut server,
            params(Keep::No),
            &mut empty_records(),
            3,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert_eq!(server.log[1], "AUTH PLAIN AGJvYjEyMwBzZWNyZXQ=");
        assert!(!server.log.iter().any(|c| c.starts_with("PASS")));
    }

    #[test]
    fn starttls_then_capa_again() {
        let mut server = Server::new(&three());
        server.stls = true;
        server.capa = Some(vec!["STLS", "USER", "UIDL"]);
        let mut p = params(Keep::No);
        p.tls = TlsMode::StartTls;
        p.tls_active = false;
        let o = session(
            &mut server,
            p.clone(),
            &mut empty_records(),
            1,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert_eq!(o.events.first(), Some(&FetchEvent::StartTls));
        assert_eq!(
            &verbs(&server)[..5],
            ["CAPA", "STLS", "CAPA", "USER", "PASS"]
        );

        // Server refuses STLS (or never offered it): no plaintext login.
        let mut server = Server::new(&three());
        let o = session(
            &mut server,
            p.clone(),
            &mut empty_records(),
            100,
            None,
            &all_ok,
        );
        assert!(matches!(o.summary.error, Some(FetchError::Tls(_))));
        assert_eq!(server.log, ["CAPA", "STLS", "QUIT"]);

        // Bytes after the STLS +OK (plaintext injection) are refused.
        let mut server = Server::new(&three());
        server.stls = true;
        server
            .inject
            .insert("STLS", b"+OK go\r\n+OK injected\r\n".to_vec());
        let o = session(
            &mut server,
            p.clone(),
            &mut empty_records(),
            100,
            None,
            &all_ok,
        );
        assert!(matches!(o.summary.error, Some(FetchError::Protocol(_))));
        assert!(!o.events.contains(&FetchEvent::StartTls));
        assert_eq!(server.log, ["CAPA", "STLS"]);

        // tls = tls but the driver says TLS is not up.
        let mut server = Server::new(&three());
        let mut p2 = params(Keep::No);
        p2.tls_active = false;
        let o = session(&mut server, p2, &mut empty_records(), 100, None, &all_ok);
        assert!(matches!(o.summary.error, Some(FetchError::Tls(_))));
        assert_eq!(server.log, ["QUIT"]);
    }

    #[test]
    fn apop_with_plaintext() {
        let mut server = Server::new(&three());
        server.user = "mrose";
        server.pass = "tanstaaf";
        server.apop = true;
        server.greeting = format!("+OK POP3 server ready {RFC_TS}");
        let mut p = params(Keep::No);
        p.username = "mrose".into();
        p.password = "tanstaaf".into();
        p.tls = TlsMode::None;
        p.tls_active = false;
        let o = session(
            &mut server,
            p.clone(),
            &mut empty_records(),
            2,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        // RFC 1939 section 7's example digest.
        assert_eq!(server.log[1], "APOP mrose c4c9334bac560ecc979e58001b3e22fb");
        assert!(!server.log.iter().any(|c| c.starts_with("PASS")));

        // APOP refused: fall back to USER/PASS.
        let mut server = Server::new(&three());
        server.user = "mrose";
        server.pass = "tanstaaf";
        server.greeting = format!("+OK hi {RFC_TS}");
        let o = session(
            &mut server,
            p.clone(),
            &mut empty_records(),
            100,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert_eq!(&verbs(&server)[..4], ["CAPA", "APOP", "USER", "PASS"]);

        // No timestamp: USER/PASS; a broken timestamp is ignored.
        for greeting in [
            "+OK hi",
            "+OK <>",
            "+OK <a b>",
            "+OK <unterminated",
            "+OK >x<",
        ] {
            let mut server = Server::new(&three());
            server.user = "mrose";
            server.pass = "tanstaaf";
            server.greeting = greeting.into();
            let o = session(
                &mut server,
                p.clone(),
                &mut empty_records(),
                100,
                None,
                &all_ok,
            );
            assert_eq!(o.summary.error, None, "{greeting}");
            assert_eq!(&verbs(&server)[..3], ["CAPA", "USER", "PASS"], "{greeting}");
        }
    }

    #[test]
    fn no_uidl_depends_on_keep() {
        let mut server = Server::new(&three());
        server.uidl = false;
        let o = session(
            &mut server,
            params(Keep::No),
            &mut empty_records(),
            100,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert_eq!(o.delivered.len(), 3);
        assert!(o.delivered.iter().all(|(u, _)| u.is_none()));
        assert!(server.msgs.is_empty());
        assert_eq!(o.summary.remaining, None);

        for keep in [Keep::Yes, Keep::For(Duration::from_secs(60))] {
            let mut server = Server::new(&three());
            server.uidl = false;
            let o = session(
                &mut server,
                params(keep),
                &mut empty_records(),
                100,
                None,
                &all_ok,
            );
            assert!(matches!(o.summary.error, Some(FetchError::Protocol(_))));
            assert_eq!(verbs(&server), ["CAPA", "USER", "PASS", "UIDL", "QUIT"]);
        }
    }

    #[test]
    fn listing_anomalies() {
        // (verb, raw reply) -> the session stops with a protocol error, and
        // nothing was RETRieved or deleted.
        let long_line = format!("+OK {}\r\n", "x".repeat(MAX_REPLY_LINE + 10));
        let no_lf = format!("+OK {}", "x".repeat(MAX_REPLY_LINE + 10));
        let long_uid = format!("+OK\r\n1 {}\r\n.\r\n", "u".repeat(300));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("CAPA", b"HELLO\r\n".to_vec()),
            ("CAPA", b"+OKAY\r\n".to_vec()),
            ("CAPA", b"+ok\r\n".to_vec()),
            ("CAPA", b"\r\n".to_vec()),
            ("CAPA", b"\x00\xff\r\n".to_vec()),
            ("CAPA", long_line.clone().into_bytes()),
            ("CAPA", no_lf.into_bytes()),
            ("USER", b"+ go on\r\n".to_vec()),
            ("UIDL", b"+OK\r\nx abc\r\n.\r\n".to_vec()),
            ("UIDL", b"+OK\r\n1\r\n.\r\n".to_vec()),
            ("UIDL", b"+OK\r\n1 a b\r\n.\r\n".to_vec()),
            ("UIDL", b"+OK\r\n0 a\r\n.\r\n".to_vec()),
            ("UIDL", b"+OK\r\n-1 a\r\n.\r\n".to_vec()),
            ("UIDL", b"+OK\r\n1 a\x01\r\n.\r\n".to_vec()),
            ("UIDL", b"+OK\r\n1 a\r\n1 b\r\n.\r\n".to_vec()),
            ("UIDL", b"+OK\r\n1 same\r\n2 same\r\n.\r\n".to_vec()),
            ("UIDL", b"+OK\r\n99999999999 a\r\n.\r\n".to_vec()),
            ("UIDL", long_uid.into_bytes()),
            ("LIST", b"+OK\r\n1\r\n.\r\n".to_vec()),
            ("LIST", b"+OK\r\n1 big\r\n.\r\n".to_vec()),
            ("LIST", b"+OK\r\n1 10\r\n1 10\r\n.\r\n".to_vec()),
            ("LIST", b"+OK\r\n1 +10\r\n.\r\n".to_vec()),
            ("RETR", b"GARBAGE\r\n".to_vec()),
        ];
        for (verb, raw) in &cases {
            for chunk in [1, 5, 4096] {
                let mut server = Server::new(&three());
                server.inject.insert(verb, raw.clone());
                let o = session(
                    &mut server,
                    params(Keep::No),
                    &mut empty_records(),
                    chunk,
                    None,
                    &all_ok,
                );
                assert!(
                    matches!(o.summary.error, Some(FetchError::Protocol(_))),
                    "{verb} {:?}: {:?}",
                    String::from_utf8_lossy(raw),
                    o.summary
                );
                assert!(o.delivered.is_empty(), "{verb} {raw:?}");
                assert!(!server.log.iter().any(|c| c.starts_with("RETR")) || *verb == "RETR");
                assert!(!server.log.iter().any(|c| c.starts_with("DELE")), "{verb}");
                assert_eq!(server.msgs.len(), 3);
            }
        }
        // Tolerated: LIST extras after the size, CAPA -ERR, LF-only status lines,
        // a UIDL listing naming messages that LIST does not.
        let ok_cases: Vec<(&str, Vec<u8>)> = vec![
            ("LIST", b"+OK\r\n1 24 extra info\r\n.\r\n".to_vec()),
            ("CAPA", b"-ERR what\r\n".to_vec()),
            ("CAPA", b"+OK\n.TOP\nUSER\n.\n".to_vec()),
            ("USER", b"+OK\n".to_vec()),
        ];
        for (verb, raw) in &ok_cases {
            let mut server = Server::new(&three());
            server.inject.insert(verb, raw.clone());
            let o = session(
                &mut server,
                params(Keep::No),
                &mut empty_records(),
                1,
                None,
                &all_ok,
            );
            assert_eq!(o.summary.error, None, "{verb} {raw:?}");
        }
    }

    #[test]
    fn data_before_our_command() {
        // Bytes after a complete reply, in the same read, are refused before
        // the next command goes out. (Split across reads the core cannot
        // tell them from the next reply: no sans-IO client can.)
        for (verb, raw) in [
            ("LIST", &b"+OK 3 messages\r\n1 10\r\n.\r\n+OK\r\n"[..]),
            ("USER", b"+OK\r\n+OK\r\n"),
            ("CAPA", b"-ERR\r\n-ERR\r\n"),
            ("DELE", b"+OK\r\n\r\n"),
        ] {
            let mut server = Server::new(&three());
            server.inject.insert(verb, raw.to_vec());
            let o = session(
                &mut server,
                params(Keep::No),
                &mut empty_records(),
                4096,
                None,
                &all_ok,
            );
            assert!(
                matches!(o.summary.error, Some(FetchError::Protocol(_))),
                "{verb}"
            );
            assert_eq!(
                server.log.last().map(|c| c.split(' ').next()),
                Some(Some(verb))
            );
            assert!(o.delivered.len() <= 1);
            assert_eq!(server.msgs.len(), 3, "nothing committed");
        }
    }

    #[test]
    fn data_after_body_end() {
        // Seen in the same read as the terminator: the body is not trusted.
        // Seen in a later read (while the delivery runs), the body was
        // already handed over; still no DELE, and the session ends.
        for (chunk, handed_over) in [(4096, false), (1, true)] {
            let mut server = Server::new(&three());
            server
                .inject
                .insert("RETR", b"+OK\r\nbody\r\n.\r\n+OK extra\r\n".to_vec());
            let mut records = empty_records();
            let o = session(
                &mut server,
                params(Keep::No),
                &mut records,
                chunk,
                None,
                &all_ok,
            );
            assert!(matches!(o.summary.error, Some(FetchError::Protocol(_))));
            assert_eq!(!o.delivered.is_empty(), handed_over);
            assert_eq!(
                verbs(&server),
                ["CAPA", "USER", "PASS", "UIDL", "LIST", "RETR"]
            );
            assert_eq!(server.msgs.len(), 3);
        }
    }

    #[test]
    fn message_without_uidl_is_left_alone() {
        let mut server = Server::new(&three());
        server
            .inject
            .insert("UIDL", b"+OK\r\n1 u1\r\n3 u3\r\n7 ghost\r\n.\r\n".to_vec());
        let o = session(
            &mut server,
            params(Keep::No),
            &mut empty_records(),
            100,
            None,
            &all_ok,
        );
        assert_eq!(o.summary.error, None);
        assert_eq!((o.summary.fetched, o.summary.failed), (2, 1));
        assert_eq!(server.uids(), ["u2"]);
        let mut rem = o.summary.remaining.unwrap();
        rem.sort();
        assert_eq!(
            rem,
            ["ghost"],
            "only what UIDL listed and we did not delete"
        );
    }

    #[test]
    fn greeting_err_and_bad_credentials() {
        let mut server = Server::new(&three());
        server.greeting = "-ERR too busy".into();
        let o = session(
            &mut server,
            params(Keep::No),
            &mut empty_records(),
            100,
            None,
            &all_ok,
        );
        assert!(matches!(o.summary.error, Some(FetchError::Connection(_))));
        assert!(server.log.is_empty());

        for (user, pass) in [
            ("bob\r\nDELE 1", "x"),
            ("bob", "a\nb"),
            ("", "x"),
            ("bob", "nul\0"),
        ] {
            let mut server = Server::new(&three());
            let mut p = params(Keep::No);
            p.username = user.into();
            p.password = pass.into();
            let o = session(&mut server, p, &mut empty_records(), 100, None, &all_ok);
            assert!(
                matches!(o.summary.error, Some(FetchError::Local(_))),
                "{user:?}"
            );
            assert_eq!(server.log, ["CAPA", "QUIT"]);
        }
    }

    #[test]
    fn quit_err_does_not_prune() {
        let mut server = Server::new(&three());
        server.inject.insert(
            "QUIT",
            b"-ERR some deleted messages not removed\r\n".to_vec(),
        );
        let mut records = empty_records();
        let o = session(
            &mut server,
            params(Keep::No),
            &mut records,
            100,
            None,
            &all_ok,
        );
        assert!(matches!(o.summary.error, Some(FetchError::Protocol(_))));
        assert_eq!(o.summary.remaining, None);
        assert_eq!(records.len(), 3);
    }

    /// The no-loss rule under a cut connection: for every cut point in a
    /// full dialogue, a second session completes the work, and every
    /// message ends up delivered exactly once (keep = no) or kept and
    /// delivered exactly once (keep = yes).
    #[test]
    fn connection_lost_anywhere() {
        for keep in [Keep::No, Keep::Yes] {
            let total = {
                let mut server = Server::new(&three());
                let mut n = 0;
                let o = session(
                    &mut server,
                    params(keep),
                    &mut empty_records(),
                    1,
                    None,
                    &|_| true,
                );
                assert_eq!(o.summary.error, None);
                // Count the octets the full dialogue sends to the client.
                let mut s2 = Server::new(&three());
                n += s2.greeting.len() + 2;
                for c in &server.log {
                    n += s2.reply(c).len();
                }
                n
            };
            for cut in 0..total {
                let mut server = Server::new(&three());
                let mut records = empty_records();
                let first = session(
                    &mut server,
                    params(keep),
                    &mut records,
                    1,
                    Some(cut),
                    &all_ok,
                );
                assert!(
                    matches!(first.summary.error, Some(FetchError::Connection(_))),
                    "cut {cut}: {:?}",
                    first.summary
                );
                assert_eq!(first.summary.remaining, None);
                let second = session(&mut server, params(keep), &mut records, 7, None, &all_ok);
                assert_eq!(second.summary.error, None, "cut {cut}");
                let mut got: Vec<_> = first
                    .delivered
                    .iter()
                    .chain(&second.delivered)
                    .map(|(u, d)| (u.clone().unwrap_or_default(), d.clone()))
                    .collect();
                got.sort();
                let want: Vec<_> = three()
                    .iter()
                    .map(|(u, c)| (u.to_string(), c.as_bytes().to_vec()))
                    .collect();
                assert_eq!(got, want, "cut {cut}: each message exactly once");
                match keep {
                    Keep::No => assert!(server.msgs.is_empty(), "cut {cut}"),
                    _ => assert_eq!(server.msgs.len(), 3, "cut {cut}"),
                }
            }
        }
    }

    #[test]
    fn every_state_summary_on_loss() {
        // Abort in each waiting state returns a summary once, then stays done.
        let mut core = Pop3Fetch::new(params(Keep::No), empty_records().iter());
        let s = core.abort(FetchError::Tls("handshake failed".into()));
        assert_eq!(s.error, Some(FetchError::Tls("handshake failed".into())));
        assert_eq!(core.connection_lost(), s);
        let mut out = Vec::new();
        core.tls_started(&mut out);
        core.receive(b"+OK\r\n", &mut out, &mut Vec::new());
        assert!(out.is_empty());
    }

    #[test]
    fn debug_hides_password() {
        let shown = format!("{:?}", params(Keep::No));
        assert!(!shown.contains("secret") && shown.contains("<hidden>"));
    }

    #[test]
    fn status_and_timestamp_parsing() {
        assert!(matches!(status(b"+OK"), Some(Status::Ok(b""))));
        assert!(matches!(status(b"+OK hi"), Some(Status::Ok(b"hi"))));
        assert!(matches!(status(b"-ERR"), Some(Status::Err(b""))));
        for bad in [&b"+OKhi"[..], b"-ERROR", b"+ok", b" +OK", b"", b"+", b"OK"] {
            assert!(status(bad).is_none(), "{bad:?}");
        }
        assert_eq!(
            apop_timestamp(b"ready <1.2@h> x").as_deref(),
            Some("<1.2@h>")
        );
        assert_eq!(apop_timestamp(b"<a> <b>").as_deref(), Some("<a>"));
        let long = format!("<{}>", "a".repeat(MAX_APOP_TIMESTAMP));
        for bad in ["", "<>", "<a b>", "<a", "a>", long.as_str(), "<\u{e9}>"] {
            assert_eq!(apop_timestamp(bad.as_bytes()), None, "{bad}");
        }
    }
}
