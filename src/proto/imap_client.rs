//! Sans-IO IMAP4rev1 client core for SmartPop collection (RFC 3501, with
//! UIDPLUS RFC 4315, MOVE RFC 6851, IDLE RFC 2177, SASL-IR RFC 4959).
//!
//! Owns: the dialogue of one collection session: CAPABILITY, STARTTLS,
//! login (LOGIN, or AUTHENTICATE XOAUTH2 / OAUTHBEARER for a bearer token),
//! then per folder SELECT, a UID listing with sizes, `UID FETCH BODY.PEEK[]`
//! of what the records do not hold, and what `keep` asks once the driver
//! says a message is durable (UID EXPUNGE, MOVE, or COPY + STORE + EXPUNGE).
//! With IDLE offered and one folder, the session then idles and rescans on
//! new mail. With several folders, one watcher session per folder
//! (`ImapParams::watch`) idles and only says when mail came. It speaks the POP3 core's events (`FetchEvent`, `FetchSummary`),
//! so the driver and the records stay the same for both protocols.
//! Must not: do IO; hold more than one line (bounded) plus one body chunk.
//!
//! Records are keyed `imap:FOLDER:UIDVALIDITY:UID` (FOLDER %-encoded to
//! printable ASCII), so a changed UIDVALIDITY never matches an old record
//! by key. When the records hold keys of the folder under another
//! UIDVALIDITY, the listing also asks for each message's Message-ID, and a
//! message whose Message-ID and size match a recorded one takes over that
//! record (`FetchSummary::rekeyed`) instead of being collected again.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use base64::Engine as _;

use super::msgid::{message_id_hash, Fingerprint};
pub use super::pop3_client::{Entry, FetchError, FetchEvent, FetchSummary, Keep};

/// Longest response line we hold (literals excluded).
pub const MAX_LINE: usize = 64 * 1024;
/// Most messages listed per folder.
pub const MAX_LISTED: usize = 500_000;
/// A non-body literal (a quoted string sent as a literal) bigger than this
/// is a protocol error.
const MAX_SMALL_LITERAL: u64 = 16 * 1024;
/// Body literal octets handed out per `Body` event at most.
const BODY_CHUNK: usize = 64 * 1024;
/// UIDs marked `\Deleted` that wait for one `UID EXPUNGE` at most: an
/// expunge per message cost Dovecot more than the rest of the collection
/// (bench: 2000 messages 3.5x slower than POP3), and the line stays short.
const EXPUNGE_BATCH: usize = 200;
/// RFC 2177: re-issue IDLE at least every 29 minutes.
pub const IDLE_REFRESH: Duration = Duration::from_secs(25 * 60);

/// How the client signs in: the seam for OAuth2 (the token source fills
/// `Bearer`).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    Password { user: String, pass: String },
    Bearer { user: String, token: String },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Password { user, .. } => write!(f, "Password({user:?}, <hidden>)"),
            Auth::Bearer { user, .. } => write!(f, "Bearer({user:?}, <hidden>)"),
        }
    }
}

/// What to do with a message once it is durably collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImapKeep {
    /// `keep = no | yes | 7d`.
    Keep(Keep),
    /// `keep = move:FOLDER`.
    Move(String),
}

#[derive(Debug, Clone)]
pub struct ImapParams {
    pub account: String,
    pub auth: Auth,
    /// STARTTLS is required before login (`tls = starttls`).
    pub starttls: bool,
    /// Implicit TLS is already up.
    pub tls_active: bool,
    pub folders: Vec<String>,
    pub keep: ImapKeep,
    pub idle: bool,
    /// A push watcher for `folders[0]`: EXAMINE it, IDLE, and say
    /// `FetchEvent::NewMail` when mail arrives; collect nothing (a
    /// collection run does that, so the records have one writer).
    pub watch: bool,
    pub max_message_size: u64,
    pub now: u64,
}

/// Why a push watcher ends at once: the server does not offer IDLE (the
/// account then polls at its interval).
pub const NO_IDLE: &str = "the server does not offer IDLE";

/// The records key of one message.
pub fn record_key(folder: &str, uidvalidity: u32, uid: u32) -> String {
    let mut s = String::from("imap:");
    for b in folder.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'%' && b != b':' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push_str(&format!(":{uidvalidity}:{uid}"));
    s
}

/// `imap:FOLDER:`, the start of every key of that folder.
fn folder_prefix(folder: &str) -> String {
    let k = record_key(folder, 0, 0);
    k[..k.len() - 3].to_string()
}

/// An IMAP astring as a quoted string (RFC 3501 section 4.3); None when
/// it cannot be one (CR, LF, NUL need a literal, which we do not send).
fn quoted(s: &str) -> Option<String> {
    if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return None;
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    Some(q)
}

/// The XOAUTH2 initial response (Google's and Microsoft's form).
pub fn xoauth2_response(user: &str, token: &str) -> String {
    let raw = format!("user={user}\x01auth=Bearer {token}\x01\x01");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The OAUTHBEARER initial response (RFC 7628 section 3.1).
pub fn oauthbearer_response(user: &str, token: &str) -> String {
    let user = user.replace('=', "=3D").replace(',', "=2C");
    let raw = format!("n,a={user},\x01auth=Bearer {token}\x01\x01");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Greeting,
    Capability,
    StartTls,
    /// Waiting for the TLS handshake (the driver).
    Handshake,
    Login,
    /// Our SASL response is in; a `+` now carries an error to acknowledge.
    Authenticate,
    Select,
    List,
    FetchBody,
    /// The driver is storing the message.
    Delivering,
    Action,
    Expunge,
    Idling,
    /// DONE sent; the tagged OK ends IDLE.
    IdleDone,
    Logout,
    Over,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Work {
    Fetch {
        uid: u32,
        size: u64,
    },
    /// Already collected: apply `keep` without fetching.
    Act {
        uid: u32,
    },
}

pub struct ImapFetch {
    p: ImapParams,
    records: HashMap<String, Entry>,
    step: Step,
    tag: u32,
    caps: Vec<String>,
    buf: Vec<u8>,
    /// The logical response line gathered so far (small literals inlined).
    line: Vec<u8>,
    /// Octets of the literal being read; streamed when `body`.
    literal: u64,
    literal_body: bool,
    /// The body literal of the message being fetched is complete.
    got_body: Option<u64>,
    body_uid: Option<u32>,
    folder: usize,
    uidvalidity: u32,
    exists: u32,
    /// UID, RFC822.SIZE and (after a UIDVALIDITY change) the Message-ID
    /// hash of each message listed.
    listed: Vec<(u32, u64, Option<u64>)>,
    /// This folder's listing asks for Message-IDs (its UIDVALIDITY is not
    /// the recorded one).
    renumbered: bool,
    work: VecDeque<Work>,
    /// The message being fetched or acted on.
    current: Option<u32>,
    /// Commands still to send for `current` (each waits for its OK).
    actions: VecDeque<String>,
    need_expunge: bool,
    /// UIDPLUS: collected UIDs marked `\Deleted`, for the next `UID
    /// EXPUNGE` (sent at the folder's end or after `EXPUNGE_BATCH`).
    expunge_uids: Vec<u32>,
    /// Those the `UID EXPUNGE` in flight names.
    expunging: Vec<u32>,
    /// After that expunge, go on with the folder's work (not its end).
    expunge_resume: bool,
    /// The current message's actions end in the expunge batch.
    batched: bool,
    /// Keys seen on the server, per folder listed to the end.
    present: Vec<String>,
    all_listed: bool,
    new_mail: bool,
    summary: FetchSummary,
    done: bool,
    authed: bool,
    /// The action command last sent (re-sent after CREATE on TRYCREATE).
    last_action: Option<String>,
    /// A CREATE of the move target is in flight / was made this session.
    creating: bool,
    created: bool,
}

impl ImapFetch {
    pub fn new<'a>(
        p: ImapParams,
        records: impl Iterator<Item = (&'a str, &'a Entry)>,
    ) -> ImapFetch {
        ImapFetch {
            p,
            records: records.map(|(k, e)| (k.to_string(), *e)).collect(),
            step: Step::Greeting,
            tag: 0,
            caps: Vec::new(),
            buf: Vec::new(),
            line: Vec::new(),
            literal: 0,
            literal_body: false,
            got_body: None,
            body_uid: None,
            folder: 0,
            uidvalidity: 0,
            exists: 0,
            listed: Vec::new(),
            renumbered: false,
            work: VecDeque::new(),
            current: None,
            actions: VecDeque::new(),
            need_expunge: false,
            expunge_uids: Vec::new(),
            expunging: Vec::new(),
            expunge_resume: false,
            batched: false,
            present: Vec::new(),
            all_listed: true,
            new_mail: false,
            summary: FetchSummary {
                committed: true,
                ..FetchSummary::default()
            },
            done: false,
            authed: false,
            last_action: None,
            creating: false,
            created: false,
        }
    }

    /// The session idles: the driver calls `refresh_idle` after
    /// `IDLE_REFRESH`, and has no reply deadline meanwhile.
    pub fn idling(&self) -> bool {
        self.step == Step::Idling
    }

    /// Ends IDLE and rescans the folder (then idles again).
    pub fn refresh_idle(&mut self, out: &mut Vec<u8>) {
        if self.step == Step::Idling {
            out.extend_from_slice(b"DONE\r\n");
            self.step = Step::IdleDone;
        }
    }

    fn send(&mut self, out: &mut Vec<u8>, cmd: &str) {
        self.tag += 1;
        out.extend_from_slice(format!("m{} {cmd}\r\n", self.tag).as_bytes());
    }

    fn has_cap(&self, cap: &str) -> bool {
        self.caps.iter().any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// Feeds octets from the server.
    pub fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        if self.done {
            return;
        }
        self.buf.extend_from_slice(input);
        let mut pos = 0;
        while !self.done && self.step != Step::Delivering && self.step != Step::Handshake {
            if self.literal > 0 {
                let n = (self.buf.len() - pos).min(self.literal as usize);
                if n == 0 {
                    break;
                }
                let chunk = &self.buf[pos..pos + n];
                if self.literal_body {
                    for c in chunk.chunks(BODY_CHUNK) {
                        events.push(FetchEvent::Body(c.to_vec()));
                    }
                } else {
                    self.line.extend_from_slice(chunk);
                }
                pos += n;
                self.literal -= n as u64;
                continue;
            }
            let Some(lf) = self.buf[pos..].iter().position(|&b| b == b'\n') else {
                if self.buf.len() - pos + self.line.len() > MAX_LINE {
                    self.fail(
                        FetchError::Protocol("response line too long".into()),
                        events,
                    );
                }
                break;
            };
            let mut part = &self.buf[pos..pos + lf];
            pos += lf + 1;
            if part.last() == Some(&b'\r') {
                part = &part[..part.len() - 1];
            }
            if self.line.len() + part.len() > MAX_LINE {
                self.fail(
                    FetchError::Protocol("response line too long".into()),
                    events,
                );
                break;
            }
            self.line.extend_from_slice(part);
            if let Some((n, at)) = literal_at_end(&self.line) {
                let body = self.step == Step::FetchBody
                    && self.line.starts_with(b"* ")
                    && contains_ci(&self.line, b"BODY[]");
                if body {
                    self.literal_body = true;
                    self.got_body = Some(n);
                    self.body_uid = fetch_uid(&self.line);
                    self.line.truncate(at);
                    self.line.extend_from_slice(b"\"\"");
                } else if n > MAX_SMALL_LITERAL {
                    self.fail(FetchError::Protocol("literal too large".into()), events);
                    break;
                } else {
                    self.literal_body = false;
                    self.line.truncate(at);
                }
                self.literal = n;
                continue;
            }
            let line = std::mem::take(&mut self.line);
            self.handle(&line, out, events);
        }
        self.buf.drain(..pos);
    }

    fn fail(&mut self, e: FetchError, events: &mut Vec<FetchEvent>) {
        let s = self.abort(e);
        events.push(FetchEvent::Done(s));
    }

    /// Ends the session with `e` (no more output).
    pub fn abort(&mut self, e: FetchError) -> FetchSummary {
        self.done = true;
        self.step = Step::Over;
        let mut s = std::mem::take(&mut self.summary);
        if s.error.is_none() {
            s.error = Some(e);
        }
        s.remaining = None;
        s
    }

    pub fn connection_lost(&mut self) -> FetchSummary {
        if self.step == Step::Logout {
            // The server closed after our LOGOUT: everything is done.
            self.done = true;
            return self.finish_summary();
        }
        self.abort(FetchError::Connection("connection lost".into()))
    }

    fn finish_summary(&mut self) -> FetchSummary {
        let mut s = std::mem::take(&mut self.summary);
        if self.all_listed && s.error.is_none() {
            s.remaining = Some(std::mem::take(&mut self.present));
        }
        s
    }

    /// The TLS handshake after STARTTLS is done.
    pub fn tls_started(&mut self, out: &mut Vec<u8>) {
        if self.step == Step::Handshake {
            self.p.tls_active = true;
            self.caps.clear();
            self.step = Step::Capability;
            self.send(out, "CAPABILITY");
        }
    }

    fn handle(&mut self, line: &[u8], out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        let text = String::from_utf8_lossy(line);
        let text = text.as_ref();
        if let Some(rest) = text.strip_prefix("* ") {
            self.untagged(rest, out, events);
            return;
        }
        if text.starts_with('+') {
            self.continuation(text, out, events);
            return;
        }
        let expected = format!("m{} ", self.tag);
        let Some(rest) = text.strip_prefix(&expected) else {
            // Some other tag: not ours to answer.
            return;
        };
        let (status, info) = rest.split_once(' ').unwrap_or((rest, ""));
        let ok = status.eq_ignore_ascii_case("OK");
        self.tagged(ok, &short(info), out, events);
    }

    fn untagged(&mut self, rest: &str, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        let upper = rest.to_ascii_uppercase();
        if self.step == Step::Greeting {
            if upper.starts_with("OK") || upper.starts_with("PREAUTH") {
                if let Some(caps) = resp_code_caps(rest) {
                    self.caps = caps;
                }
                self.step = Step::Capability;
                self.caps.clear();
                self.send(out, "CAPABILITY");
            } else {
                self.fail(FetchError::Connection(short(rest)), events);
            }
            return;
        }
        if upper.starts_with("BYE") {
            if self.step != Step::Logout {
                self.fail(FetchError::Connection(short(rest)), events);
            }
            return;
        }
        if let Some(c) = upper.strip_prefix("CAPABILITY ") {
            self.caps = c.split_ascii_whitespace().map(str::to_string).collect();
            return;
        }
        if let Some(v) = upper.strip_prefix("OK [UIDVALIDITY ") {
            self.uidvalidity = v
                .split(']')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            return;
        }
        let mut words = upper.split_ascii_whitespace();
        let (Some(num), Some(kind)) = (words.next(), words.next()) else {
            return;
        };
        let Ok(num) = num.parse::<u32>() else {
            return;
        };
        match kind {
            "EXISTS" if self.p.watch => {
                if matches!(self.step, Step::Idling | Step::IdleDone) && num > self.exists {
                    // The watcher stays in IDLE: the run collects.
                    events.push(FetchEvent::NewMail);
                }
                self.exists = num;
            }
            "EXISTS" => {
                if matches!(self.step, Step::Idling | Step::IdleDone) && num > self.exists {
                    self.new_mail = true;
                    if self.step == Step::Idling {
                        self.refresh_idle(out);
                    }
                }
                self.exists = num;
            }
            "EXPUNGE" => self.exists = self.exists.saturating_sub(1),
            "FETCH" if self.step == Step::List => {
                // The header literal (inlined) follows `BODY[HEADER...]`:
                // the items are read before it, the Message-ID after it,
                // in its own case.
                let (items, id) = match upper.find("BODY[HEADER") {
                    Some(at) => (
                        &upper[..at],
                        rest[at..].find(']').map(|e| &rest[at + e + 1..]),
                    ),
                    None => (upper.as_str(), None),
                };
                let (uid, size) = (fetch_item(items, "UID"), fetch_item(items, "RFC822.SIZE"));
                if let (Some(uid), Some(size)) = (uid, size) {
                    if self.listed.len() >= MAX_LISTED {
                        self.fail(FetchError::Protocol("folder too large".into()), events);
                        return;
                    }
                    let id = id.and_then(|h| message_id_hash(h.trim_start().as_bytes()));
                    self.listed.push((uid as u32, size, id));
                }
            }
            _ => {}
        }
    }

    fn continuation(&mut self, text: &str, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        match self.step {
            Step::Login => {
                // No SASL-IR: the initial response goes after `+`.
                let resp = self.sasl_response();
                out.extend_from_slice(resp.as_bytes());
                out.extend_from_slice(b"\r\n");
                self.step = Step::Authenticate;
            }
            Step::Authenticate => {
                // XOAUTH2/OAUTHBEARER error challenge: answer empty and
                // wait for the NO (RFC 7628 section 3.2.3).
                out.extend_from_slice(b"\r\n");
            }
            Step::Idling | Step::IdleDone => {}
            _ => self.fail(
                FetchError::Protocol(format!("unexpected continuation {}", short(text))),
                events,
            ),
        }
    }

    fn sasl_mech(&self) -> &'static str {
        if self.has_cap("AUTH=XOAUTH2") {
            "XOAUTH2"
        } else {
            "OAUTHBEARER"
        }
    }

    fn sasl_response(&self) -> String {
        match &self.p.auth {
            Auth::Bearer { user, token } if self.sasl_mech() == "XOAUTH2" => {
                xoauth2_response(user, token)
            }
            Auth::Bearer { user, token } => oauthbearer_response(user, token),
            Auth::Password { .. } => String::new(),
        }
    }

    fn login(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        if self.p.starttls && !self.p.tls_active {
            if !self.has_cap("STARTTLS") {
                self.fail(
                    FetchError::Tls("the server does not offer STARTTLS".into()),
                    events,
                );
                return;
            }
            self.step = Step::StartTls;
            self.send(out, "STARTTLS");
            return;
        }
        match self.p.auth.clone() {
            Auth::Password { user, pass } => {
                if self.has_cap("LOGINDISABLED") {
                    self.fail(FetchError::Auth("the server disables LOGIN".into()), events);
                    return;
                }
                let (Some(u), Some(p)) = (quoted(&user), quoted(&pass)) else {
                    self.fail(FetchError::Local("unusable credentials".into()), events);
                    return;
                };
                self.step = Step::Login;
                self.send(out, &format!("LOGIN {u} {p}"));
                // LOGIN answers with a tagged reply only.
                self.step = Step::Authenticate;
            }
            Auth::Bearer { .. } => {
                if !self.has_cap("AUTH=XOAUTH2") && !self.has_cap("AUTH=OAUTHBEARER") {
                    self.fail(
                        FetchError::Auth(
                            "the server offers neither XOAUTH2 nor OAUTHBEARER".into(),
                        ),
                        events,
                    );
                    return;
                }
                let mech = self.sasl_mech();
                if self.has_cap("SASL-IR") {
                    let resp = self.sasl_response();
                    self.send(out, &format!("AUTHENTICATE {mech} {resp}"));
                    self.step = Step::Authenticate;
                } else {
                    self.send(out, &format!("AUTHENTICATE {mech}"));
                    self.step = Step::Login;
                }
            }
        }
    }

    fn tagged(&mut self, ok: bool, info: &str, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        match self.step {
            Step::Capability => {
                if !ok {
                    self.fail(FetchError::Protocol(format!("CAPABILITY: {info}")), events);
                } else if self.tag > 0 && self.authenticated() {
                    self.next_folder(out, events);
                } else {
                    self.login(out, events);
                }
            }
            Step::StartTls => {
                if ok {
                    self.step = Step::Handshake;
                    events.push(FetchEvent::StartTls);
                } else {
                    self.fail(FetchError::Tls(format!("STARTTLS refused: {info}")), events);
                }
            }
            Step::Login | Step::Authenticate => {
                if ok {
                    self.authed = true;
                    self.caps.clear();
                    self.step = Step::Capability;
                    self.send(out, "CAPABILITY");
                } else {
                    self.fail(FetchError::Auth(info.to_string()), events);
                }
            }
            Step::Select => {
                if !ok {
                    self.fail(
                        FetchError::Protocol(format!(
                            "SELECT {}: {info}",
                            self.p.folders.get(self.folder).map_or("", |f| f.as_str())
                        )),
                        events,
                    );
                    return;
                }
                if self.p.watch {
                    // Mail may have come between the last run's listing
                    // and this EXAMINE: a run looks (at most one more).
                    if self.exists > 0 {
                        events.push(FetchEvent::NewMail);
                    }
                    self.watch_idle(out, events);
                    return;
                }
                self.list(out);
            }
            Step::List => {
                if !ok {
                    self.fail(FetchError::Protocol(format!("UID FETCH: {info}")), events);
                    return;
                }
                self.plan(events);
                self.next_work(out, events);
            }
            Step::FetchBody => {
                let uid = self.current.unwrap_or(0);
                match self.got_body.take() {
                    Some(size) if ok && self.body_uid.is_none_or(|u| u == uid) => {
                        self.step = Step::Delivering;
                        let key = record_key(self.folder_name(), self.uidvalidity, uid);
                        events.push(FetchEvent::Deliver {
                            uidl: Some(key),
                            number: uid,
                            size,
                        });
                    }
                    _ => {
                        // Gone meanwhile, or refused: leave it.
                        self.summary.failed += 1;
                        self.current = None;
                        self.next_work(out, events);
                    }
                }
            }
            Step::Action => {
                if self.creating {
                    // OK, or NO [ALREADYEXISTS] from a racing client: retry.
                    self.creating = false;
                    if let Some(cmd) = self.last_action.clone() {
                        self.send(out, &cmd);
                    }
                    return;
                }
                if !ok && !self.created && info.to_ascii_uppercase().contains("[TRYCREATE]") {
                    if let ImapKeep::Move(dest) = &self.p.keep {
                        if let Some(q) = quoted(dest) {
                            self.creating = true;
                            self.created = true;
                            self.send(out, &format!("CREATE {q}"));
                            return;
                        }
                    }
                }
                if !ok {
                    self.summary.failed += 1;
                    self.actions.clear();
                    self.current = None;
                    self.next_work(out, events);
                    return;
                }
                if self.actions.is_empty() {
                    if self.batched {
                        // Counted, and its record let go, once expunged.
                        self.expunge_uids.push(uid_of(self.current));
                    } else {
                        self.summary.deleted += 1;
                        let key =
                            record_key(self.folder_name(), self.uidvalidity, uid_of(self.current));
                        self.present.retain(|k| *k != key);
                    }
                    self.current = None;
                    self.next_work(out, events);
                } else {
                    self.next_action(out);
                }
            }
            Step::Expunge => {
                let batch = std::mem::take(&mut self.expunging);
                if batch.is_empty() && !ok {
                    // The plain EXPUNGE failed: what it would have removed
                    // is still there, so no record may be pruned.
                    self.all_listed = false;
                } else if ok {
                    self.summary.deleted += batch.len();
                    let folder = self.folder_name().to_string();
                    let gone: std::collections::HashSet<String> = batch
                        .iter()
                        .map(|&u| record_key(&folder, self.uidvalidity, u))
                        .collect();
                    self.present.retain(|k| !gone.contains(k));
                }
                // A refused UID EXPUNGE leaves those records: the next run
                // marks and expunges them again without fetching them.
                if std::mem::take(&mut self.expunge_resume) {
                    self.next_work(out, events);
                } else {
                    self.folder_done(out, events);
                }
            }
            Step::Idling | Step::IdleDone if self.p.watch => {
                if ok {
                    self.watch_idle(out, events);
                } else {
                    self.fail(FetchError::Protocol(format!("IDLE: {info}")), events);
                }
            }
            Step::Idling => {
                // IDLE refused or ended by the server: rescan.
                self.rescan(out);
            }
            Step::IdleDone => self.rescan(out),
            Step::Logout => {
                self.done = true;
                self.step = Step::Over;
                let s = self.finish_summary();
                events.push(FetchEvent::Done(s));
            }
            _ => {}
        }
    }

    fn authenticated(&self) -> bool {
        self.authed
    }

    fn folder_name(&self) -> &str {
        self.p
            .folders
            .get(self.folder)
            .map_or("INBOX", |f| f.as_str())
    }

    fn next_folder(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        let Some(folder) = self.p.folders.get(self.folder).cloned() else {
            self.logout(out);
            return;
        };
        let Some(q) = quoted(&folder) else {
            self.fail(
                FetchError::Local(format!("bad folder name {folder:?}")),
                events,
            );
            return;
        };
        self.uidvalidity = 0;
        self.exists = 0;
        self.step = Step::Select;
        // A watcher only looks: EXAMINE changes no flag (RFC 3501 6.3.2).
        let verb = if self.p.watch { "EXAMINE" } else { "SELECT" };
        self.send(out, &format!("{verb} {q}"));
    }

    fn list(&mut self, out: &mut Vec<u8>) {
        self.listed.clear();
        self.step = Step::List;
        self.new_mail = false;
        let prefix = folder_prefix(self.folder_name());
        let current = format!("{prefix}{}:", self.uidvalidity);
        self.renumbered = self
            .records
            .iter()
            .any(|(k, e)| e.delivered && k.starts_with(&prefix) && !k.starts_with(&current));
        if self.exists == 0 {
            // `UID FETCH 1:*` on an empty folder is an error at some servers.
            self.send(out, "NOOP");
        } else if self.renumbered {
            // One short header field per message, only after a change.
            self.send(
                out,
                "UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
            );
        } else {
            self.send(out, "UID FETCH 1:* (UID RFC822.SIZE)");
        }
    }

    fn rescan(&mut self, out: &mut Vec<u8>) {
        // Keys of this folder listed before are listed again.
        let prefix = format!("{}{}:", folder_prefix(self.folder_name()), self.uidvalidity);
        self.present.retain(|k| !k.starts_with(&prefix));
        self.list(out);
    }

    /// Decides what each listed message needs.
    fn plan(&mut self, events: &mut Vec<FetchEvent>) {
        let folder = self.folder_name().to_string();
        let mut known = if self.renumbered {
            self.collected_before(&folder)
        } else {
            HashMap::new()
        };
        let (mut matched, mut unmatched) = (0usize, 0usize);
        self.work.clear();
        for (uid, size, id) in std::mem::take(&mut self.listed) {
            let key = record_key(&folder, self.uidvalidity, uid);
            self.present.push(key.clone());
            let mut entry = self.records.get(&key).copied();
            if entry.is_none() && self.renumbered {
                let old = id.and_then(|id| {
                    let list = known.get_mut(&Fingerprint { id, size })?;
                    list.pop()
                });
                match old {
                    Some((old_key, e)) => {
                        matched += 1;
                        self.records.insert(key.clone(), e);
                        self.summary.rekeyed.push((old_key, key.clone()));
                        entry = Some(e);
                    }
                    None => unmatched += 1,
                }
            }
            match entry {
                Some(e) if e.delivered => {
                    if self.acts_on(&e) {
                        self.work.push_back(Work::Act { uid });
                    } else {
                        self.summary.kept += 1;
                    }
                }
                Some(e) if e.rejected => {}
                Some(e) if e.oversized => self.summary.skipped_oversized += 1,
                _ if size > self.p.max_message_size => {
                    self.summary.skipped_oversized += 1;
                    self.records.insert(
                        key.clone(),
                        Entry {
                            first_seen: self.p.now,
                            oversized: true,
                            ..Entry::default()
                        },
                    );
                    events.push(FetchEvent::Oversized {
                        uidl: Some(key),
                        number: uid,
                        size,
                    });
                }
                _ => self.work.push_back(Work::Fetch { uid, size }),
            }
        }
        if self.renumbered && (matched > 0 || unmatched > 0) {
            log::warn!(
                "smartpop {}: UIDVALIDITY of {folder} changed to {}: {matched} message(s) \
                 matched by Message-ID and size are not collected again, {unmatched} are \
                 collected as new",
                self.p.account,
                self.uidvalidity
            );
        }
        if self.renumbered {
            // Matched ones are known by their new keys now; the old keys
            // can never match again, so a rescan (IDLE) does not redo this.
            let prefix = folder_prefix(&folder);
            let current = format!("{prefix}{}:", self.uidvalidity);
            self.records
                .retain(|k, _| !k.starts_with(&prefix) || k.starts_with(&current));
            self.renumbered = false;
        }
    }

    /// The delivered records of `folder` under another UIDVALIDITY, by
    /// fingerprint (several when a message was in the folder twice).
    fn collected_before(&self, folder: &str) -> HashMap<Fingerprint, Vec<(String, Entry)>> {
        let prefix = folder_prefix(folder);
        let current = format!("{prefix}{}:", self.uidvalidity);
        let mut known: HashMap<Fingerprint, Vec<(String, Entry)>> = HashMap::new();
        for (k, e) in &self.records {
            if let (true, Some(fp)) = (
                e.delivered && k.starts_with(&prefix) && !k.starts_with(&current),
                e.fingerprint,
            ) {
                known.entry(fp).or_default().push((k.clone(), *e));
            }
        }
        known
    }

    fn acts_on(&self, e: &Entry) -> bool {
        match &self.p.keep {
            ImapKeep::Keep(Keep::Yes) => false,
            ImapKeep::Keep(Keep::No) | ImapKeep::Move(_) => true,
            ImapKeep::Keep(Keep::For(d)) => e.first_seen.saturating_add(d.as_secs()) <= self.p.now,
        }
    }

    fn next_work(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        if self.expunge_uids.len() >= EXPUNGE_BATCH {
            self.send_uid_expunge(true, out);
            return;
        }
        match self.work.pop_front() {
            Some(Work::Fetch { uid, .. }) => {
                self.current = Some(uid);
                self.got_body = None;
                self.body_uid = None;
                self.step = Step::FetchBody;
                self.send(out, &format!("UID FETCH {uid} (BODY.PEEK[])"));
            }
            Some(Work::Act { uid }) => self.act(uid, out, events),
            None => self.folder_done(out, events),
        }
    }

    fn act(&mut self, uid: u32, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        self.current = Some(uid);
        self.actions.clear();
        let uidplus = self.has_cap("UIDPLUS");
        self.batched = uidplus;
        let delete = |a: &mut VecDeque<String>, need: &mut bool| {
            a.push_back(format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)"));
            // With UIDPLUS the UID EXPUNGE comes in a batch.
            *need |= !uidplus;
        };
        match self.p.keep.clone() {
            ImapKeep::Move(dest) => {
                let Some(q) = quoted(&dest) else {
                    self.fail(
                        FetchError::Local(format!("bad folder name {dest:?}")),
                        events,
                    );
                    return;
                };
                if self.has_cap("MOVE") {
                    self.batched = false;
                    self.actions.push_back(format!("UID MOVE {uid} {q}"));
                } else {
                    self.actions.push_back(format!("UID COPY {uid} {q}"));
                    delete(&mut self.actions, &mut self.need_expunge);
                }
            }
            _ => delete(&mut self.actions, &mut self.need_expunge),
        }
        self.step = Step::Action;
        self.next_action(out);
    }

    fn next_action(&mut self, out: &mut Vec<u8>) {
        if let Some(cmd) = self.actions.pop_front() {
            self.send(out, &cmd);
            self.last_action = Some(cmd);
        }
    }

    /// `UID EXPUNGE` of the batch; then `resume` the folder's work, or
    /// end it.
    fn send_uid_expunge(&mut self, resume: bool, out: &mut Vec<u8>) {
        let batch = std::mem::take(&mut self.expunge_uids);
        self.step = Step::Expunge;
        self.expunge_resume = resume;
        self.send(out, &format!("UID EXPUNGE {}", uid_set(&batch)));
        self.expunging = batch;
    }

    fn folder_done(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        if !self.expunge_uids.is_empty() {
            self.send_uid_expunge(false, out);
            return;
        }
        if self.need_expunge {
            // Without UIDPLUS: EXPUNGE also removes what another client
            // marked \Deleted, which is what it asked for.
            self.need_expunge = false;
            self.step = Step::Expunge;
            self.send(out, "EXPUNGE");
            return;
        }
        let single = self.p.folders.len() == 1;
        if self.p.idle && single && self.has_cap("IDLE") {
            if self.new_mail {
                self.list(out);
                return;
            }
            self.step = Step::Idling;
            self.send(out, "IDLE");
            return;
        }
        self.folder += 1;
        self.next_folder(out, events);
    }

    /// A watcher (re-)enters IDLE, or ends when the server has none.
    fn watch_idle(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        if self.has_cap("IDLE") {
            self.step = Step::Idling;
            self.send(out, "IDLE");
        } else {
            self.fail(FetchError::Protocol(NO_IDLE.into()), events);
        }
    }

    fn logout(&mut self, out: &mut Vec<u8>) {
        self.step = Step::Logout;
        self.send(out, "LOGOUT");
    }

    /// The message is durably delivered and recorded (`ok`), or not.
    pub fn delivered(&mut self, ok: bool, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        if self.step != Step::Delivering {
            return;
        }
        let uid = self.current.take().unwrap_or(0);
        if !ok {
            self.summary.failed += 1;
            self.step = Step::FetchBody;
            self.next_work(out, events);
            return;
        }
        self.summary.fetched += 1;
        let key = record_key(self.folder_name(), self.uidvalidity, uid);
        let entry = Entry {
            first_seen: self.p.now,
            delivered: true,
            ..Entry::default()
        };
        self.records.insert(key, entry);
        if self.acts_on(&entry) {
            self.act(uid, out, events);
        } else {
            self.summary.kept += 1;
            self.step = Step::FetchBody;
            self.next_work(out, events);
        }
    }

    /// Local delivery refused the message for good: it stays.
    pub fn rejected(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        if self.step != Step::Delivering {
            return;
        }
        self.current = None;
        self.summary.failed += 1;
        self.step = Step::FetchBody;
        self.next_work(out, events);
    }
}

/// A UID set (RFC 3501 `sequence-set`) naming `uids`, runs as ranges.
fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut s = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = sorted[i];
        }
        if !s.is_empty() {
            s.push(',');
        }
        if start == end {
            s.push_str(&start.to_string());
        } else {
            s.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    s
}

fn uid_of(current: Option<u32>) -> u32 {
    current.unwrap_or(0)
}

/// `{123}` or `{123+}` ending a line: the literal's size and where it starts.
fn literal_at_end(line: &[u8]) -> Option<(u64, usize)> {
    if line.last() != Some(&b'}') {
        return None;
    }
    let open = line.iter().rposition(|&b| b == b'{')?;
    let inner = &line[open + 1..line.len() - 1];
    let inner = inner.strip_suffix(b"+").unwrap_or(inner);
    if inner.is_empty() || inner.len() > 19 || !inner.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(inner).ok()?.parse().ok()?;
    Some((n, open))
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

fn fetch_uid(line: &[u8]) -> Option<u32> {
    let upper = String::from_utf8_lossy(line).to_ascii_uppercase();
    fetch_item(&upper, "UID").and_then(|u| u32::try_from(u).ok())
}

/// The number after `NAME ` inside a FETCH response (upper-cased).
fn fetch_item(upper: &str, name: &str) -> Option<u64> {
    let open = upper.find('(')?;
    let mut words = upper[open + 1..]
        .split(|c: char| c.is_ascii_whitespace() || c == '(' || c == ')')
        .filter(|w| !w.is_empty());
    while let Some(w) = words.next() {
        if w == name {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn resp_code_caps(rest: &str) -> Option<Vec<String>> {
    let start = rest.find("[CAPABILITY ")?;
    let inner = &rest[start + 12..];
    let end = inner.find(']')?;
    Some(
        inner[..end]
            .split_ascii_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

fn short(s: &str) -> String {
    let t: String = s.chars().filter(|c| !c.is_control()).take(200).collect();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(auth: Auth, keep: ImapKeep) -> ImapParams {
        ImapParams {
            account: "isp".into(),
            auth,
            starttls: false,
            tls_active: true,
            folders: vec!["INBOX".into()],
            keep,
            idle: false,
            watch: false,
            max_message_size: 1 << 20,
            now: 1_000_000,
        }
    }

    fn gmail_user() -> Auth {
        Auth::Bearer {
            user: "someuser@example.com".into(),
            token: "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg".into(),
        }
    }

    struct Run {
        core: ImapFetch,
        events: Vec<FetchEvent>,
    }

    impl Run {
        fn new(p: ImapParams) -> Run {
            Run {
                core: ImapFetch::new(p, std::iter::empty()),
                events: Vec::new(),
            }
        }
        /// Server octets in, client octets out.
        fn say(&mut self, server: &str) -> String {
            let mut out = Vec::new();
            self.core
                .receive(server.as_bytes(), &mut out, &mut self.events);
            String::from_utf8(out).unwrap()
        }
    }

    const GMAIL_CAPS: &str = "* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE QUOTA ID XLIST CHILDREN X-GM-EXT-1 XYZZY SASL-IR AUTH=XOAUTH2 AUTH=PLAIN AUTH=PLAIN-CLIENTTOKEN AUTH=OAUTHBEARER AUTH=XOAUTH\r\n";

    /// Google's documented IMAP XOAUTH2 exchange
    /// (developers.google.com/gmail/imap/xoauth2-protocol), with SASL-IR.
    #[test]
    fn gmail_xoauth2_sasl_ir_wire_form() {
        let mut r = Run::new(params(gmail_user(), ImapKeep::Keep(Keep::Yes)));
        assert_eq!(
            r.say("* OK Gimap ready for requests from 192.0.2.1\r\n"),
            "m1 CAPABILITY\r\n"
        );
        let sent = r.say(&format!("{GMAIL_CAPS}m1 OK Thats all she wrote!\r\n"));
        assert_eq!(
            sent,
            "m2 AUTHENTICATE XOAUTH2 dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==\r\n"
        );
        assert_eq!(
            r.say("m2 OK someuser@example.com authenticated (Success)\r\n"),
            "m3 CAPABILITY\r\n"
        );
        let sent = r.say("* CAPABILITY IMAP4rev1 IDLE UIDPLUS MOVE\r\nm3 OK done\r\n");
        assert_eq!(sent, "m4 SELECT \"INBOX\"\r\n");
    }

    /// Google's failure form: a `+` with a base64 JSON error, which the
    /// client answers with an empty line, then NO.
    #[test]
    fn gmail_xoauth2_error_challenge_is_acknowledged() {
        let mut r = Run::new(params(gmail_user(), ImapKeep::Keep(Keep::Yes)));
        r.say("* OK Gimap ready\r\n");
        r.say(&format!("{GMAIL_CAPS}m1 OK\r\n"));
        let sent = r.say("+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIG1hYyIsInNjb3BlIjoiaHR0cHM6Ly9tYWlsLmdvb2dsZS5jb20vIn0K\r\n");
        assert_eq!(sent, "\r\n");
        assert_eq!(r.say("m2 NO SASL authentication failed\r\n"), "");
        match r.events.as_slice() {
            [FetchEvent::Done(s)] => {
                assert!(
                    matches!(&s.error, Some(FetchError::Auth(m)) if m.contains("SASL")),
                    "{s:?}"
                );
                assert_eq!(s.remaining, None);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Without SASL-IR and XOAUTH2, OAUTHBEARER goes after the `+`.
    #[test]
    fn oauthbearer_without_sasl_ir() {
        let mut r = Run::new(params(gmail_user(), ImapKeep::Keep(Keep::Yes)));
        r.say("* OK ready\r\n");
        let sent = r.say("* CAPABILITY IMAP4rev1 AUTH=OAUTHBEARER\r\nm1 OK\r\n");
        assert_eq!(sent, "m2 AUTHENTICATE OAUTHBEARER\r\n");
        let sent = r.say("+ \r\n");
        let b64 = sent.trim_end();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            raw,
            b"n,a=someuser@example.com,\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
        );
    }

    #[test]
    fn password_login_is_quoted_and_refused_when_disabled() {
        let auth = Auth::Password {
            user: "bob".into(),
            pass: "p\"w\\d".into(),
        };
        let mut r = Run::new(params(auth.clone(), ImapKeep::Keep(Keep::Yes)));
        r.say("* OK ready\r\n");
        assert_eq!(
            r.say("* CAPABILITY IMAP4rev1\r\nm1 OK\r\n"),
            "m2 LOGIN \"bob\" \"p\\\"w\\\\d\"\r\n"
        );
        let mut r = Run::new(params(auth, ImapKeep::Keep(Keep::Yes)));
        r.say("* OK ready\r\n");
        assert_eq!(
            r.say("* CAPABILITY IMAP4rev1 LOGINDISABLED\r\nm1 OK\r\n"),
            ""
        );
        assert!(matches!(r.events.as_slice(), [FetchEvent::Done(_)]));
    }

    fn logged_in(keep: ImapKeep, caps: &str) -> Run {
        let auth = Auth::Password {
            user: "bob".into(),
            pass: "pw".into(),
        };
        let mut r = Run::new(params(auth, keep));
        r.say("* OK ready\r\n");
        r.say("* CAPABILITY IMAP4rev1\r\nm1 OK\r\n");
        r.say("m2 OK logged in\r\n");
        assert_eq!(
            r.say(&format!("* CAPABILITY {caps}\r\nm3 OK\r\n")),
            "m4 SELECT \"INBOX\"\r\n"
        );
        r
    }

    /// The body literal arrives one octet at a time and is streamed as
    /// Body events; nothing is sent until `delivered`; then UID EXPUNGE.
    #[test]
    fn fetch_streams_literal_and_acts_only_after_delivery() {
        let mut r = logged_in(ImapKeep::Keep(Keep::No), "IMAP4rev1 UIDPLUS");
        let sent = r.say("* 1 EXISTS\r\n* OK [UIDVALIDITY 77] ok\r\nm4 OK [READ-WRITE] done\r\n");
        assert_eq!(sent, "m5 UID FETCH 1:* (UID RFC822.SIZE)\r\n");
        let sent = r.say("* 1 FETCH (UID 9 RFC822.SIZE 12)\r\nm5 OK\r\n");
        assert_eq!(sent, "m6 UID FETCH 9 (BODY.PEEK[])\r\n");
        let wire = "* 1 FETCH (UID 9 BODY[] {12}\r\nSubject: x\r\n)\r\nm6 OK\r\n";
        let mut out = String::new();
        for b in wire.as_bytes() {
            out += &r.say(std::str::from_utf8(&[*b]).unwrap());
        }
        assert_eq!(out, "");
        let body: Vec<u8> = r
            .events
            .iter()
            .filter_map(|e| match e {
                FetchEvent::Body(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(body, b"Subject: x\r\n");
        assert_eq!(
            r.events.last(),
            Some(&FetchEvent::Deliver {
                uidl: Some("imap:INBOX:77:9".into()),
                number: 9,
                size: 12
            })
        );
        let mut out = Vec::new();
        r.core.delivered(true, &mut out, &mut r.events);
        assert_eq!(out, b"m7 UID STORE 9 +FLAGS.SILENT (\\Deleted)\r\n");
        // The folder's end: its batch of one.
        assert_eq!(r.say("m7 OK\r\n"), "m8 UID EXPUNGE 9\r\n");
        assert_eq!(r.say("* 1 EXPUNGE\r\nm8 OK\r\n"), "m9 LOGOUT\r\n");
        r.say("* BYE\r\nm9 OK\r\n");
        match r.events.last() {
            Some(FetchEvent::Done(s)) => {
                assert_eq!((s.fetched, s.deleted), (1, 1));
                assert_eq!(s.remaining, Some(vec![]));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A collected message is not fetched again; MOVE without the
    /// extension is COPY + STORE, then EXPUNGE at the folder's end.
    #[test]
    fn recorded_message_is_moved_without_fetching() {
        let auth = Auth::Password {
            user: "bob".into(),
            pass: "pw".into(),
        };
        let entry = Entry {
            first_seen: 1,
            delivered: true,
            ..Entry::default()
        };
        let records = [("imap:INBOX:77:9".to_string(), entry)];
        let mut core = ImapFetch::new(
            params(auth, ImapKeep::Move("Arch ive".into())),
            records.iter().map(|(k, e)| (k.as_str(), e)),
        );
        let mut ev = Vec::new();
        let mut say = |s: &str| {
            let mut out = Vec::new();
            core.receive(s.as_bytes(), &mut out, &mut ev);
            String::from_utf8(out).unwrap()
        };
        say("* OK ready\r\n");
        say("* CAPABILITY IMAP4rev1\r\nm1 OK\r\n");
        say("m2 OK\r\n");
        say("* CAPABILITY IMAP4rev1\r\nm3 OK\r\n");
        say("* 1 EXISTS\r\n* OK [UIDVALIDITY 77]\r\nm4 OK\r\n");
        assert_eq!(
            say("* 1 FETCH (RFC822.SIZE 12 UID 9)\r\nm5 OK\r\n"),
            "m6 UID COPY 9 \"Arch ive\"\r\n"
        );
        assert_eq!(
            say("m6 OK\r\n"),
            "m7 UID STORE 9 +FLAGS.SILENT (\\Deleted)\r\n"
        );
        assert_eq!(say("m7 OK\r\n"), "m8 EXPUNGE\r\n");
        assert_eq!(say("m8 OK\r\n"), "m9 LOGOUT\r\n");
    }

    /// A new UIDVALIDITY: the listing asks for Message-IDs, and a message
    /// whose Message-ID and size match a record takes it over (not
    /// fetched, `keep = yes` keeps it); one of another size, or without a
    /// record, is fetched.
    #[test]
    fn changed_uidvalidity_matches_by_message_id_and_size() {
        let auth = Auth::Password {
            user: "bob".into(),
            pass: "pw".into(),
        };
        let known = |id: &str, size| Entry {
            first_seen: 5,
            delivered: true,
            fingerprint: Fingerprint::of(format!("Message-ID: {id}\r\n").as_bytes(), size),
            ..Entry::default()
        };
        let records = [
            ("imap:INBOX:77:1".to_string(), known("<a@x>", 100)),
            ("imap:INBOX:77:2".to_string(), known("<b@x>", 200)),
        ];
        let mut p = params(auth, ImapKeep::Keep(Keep::Yes));
        p.idle = true;
        let mut core = ImapFetch::new(p, records.iter().map(|(k, e)| (k.as_str(), e)));
        let mut ev = Vec::new();
        let mut say = |s: &str| {
            let mut out = Vec::new();
            core.receive(s.as_bytes(), &mut out, &mut ev);
            String::from_utf8(out).unwrap()
        };
        say("* OK ready\r\n");
        say("* CAPABILITY IMAP4rev1 IDLE\r\nm1 OK\r\n");
        say("m2 OK\r\n");
        say("* CAPABILITY IMAP4rev1 IDLE\r\nm3 OK\r\n");
        assert_eq!(
            say("* 3 EXISTS\r\n* OK [UIDVALIDITY 78]\r\nm4 OK\r\n"),
            "m5 UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])\r\n"
        );
        // Dovecot's form: the field as a literal; the second message has
        // b's ID but another size, the third none at all.
        let listing = "* 1 FETCH (UID 1 RFC822.SIZE 100 BODY[HEADER.FIELDS (MESSAGE-ID)] {20}\r\n\
                       Message-ID: <a@x>\r\n\r\n)\r\n\
                       * 2 FETCH (UID 2 RFC822.SIZE 201 BODY[HEADER.FIELDS (MESSAGE-ID)] {20}\r\n\
                       Message-ID: <b@x>\r\n\r\n)\r\n\
                       * 3 FETCH (UID 3 RFC822.SIZE 50 BODY[HEADER.FIELDS (MESSAGE-ID)] {2}\r\n\
                       \r\n)\r\nm5 OK\r\n";
        assert_eq!(say(listing), "m6 UID FETCH 2 (BODY.PEEK[])\r\n");
        assert_eq!(say("m6 OK\r\n"), "m7 UID FETCH 3 (BODY.PEEK[])\r\n");
        // Idling, a rescan lists without Message-IDs: done once.
        assert_eq!(say("m7 OK\r\n"), "m8 IDLE\r\n");
        assert_eq!(say("+ idling\r\n* 4 EXISTS\r\n"), "DONE\r\n");
        assert_eq!(say("m8 OK\r\n"), "m9 UID FETCH 1:* (UID RFC822.SIZE)\r\n");
        let s = core.abort(FetchError::Connection("test".into()));
        assert_eq!(
            s.rekeyed,
            vec![("imap:INBOX:77:1".to_string(), "imap:INBOX:78:1".to_string())]
        );
        assert_eq!((s.kept, s.failed), (1, 2));
    }

    /// A push watcher EXAMINEs, IDLEs, says `NewMail` on EXISTS without
    /// leaving IDLE, re-IDLEs after a refresh, and fetches nothing.
    #[test]
    fn watcher_idles_and_reports_new_mail() {
        let auth = Auth::Password {
            user: "bob".into(),
            pass: "pw".into(),
        };
        let mut p = params(auth.clone(), ImapKeep::Keep(Keep::No));
        p.folders = vec!["Lists".into()];
        p.idle = true;
        p.watch = true;
        let mut r = Run::new(p.clone());
        r.say("* OK ready\r\n");
        r.say("* CAPABILITY IMAP4rev1 IDLE\r\nm1 OK\r\n");
        r.say("m2 OK\r\n");
        assert_eq!(
            r.say("* CAPABILITY IMAP4rev1 IDLE\r\nm3 OK\r\n"),
            "m4 EXAMINE \"Lists\"\r\n"
        );
        assert_eq!(
            r.say("* 2 EXISTS\r\n* OK [UIDVALIDITY 7]\r\nm4 OK\r\n"),
            "m5 IDLE\r\n"
        );
        assert_eq!(r.events, vec![FetchEvent::NewMail]);
        r.events.clear();
        assert_eq!(r.say("+ idling\r\n* 1 EXPUNGE\r\n"), "");
        assert!(r.events.is_empty() && r.core.idling());
        assert_eq!(r.say("* 2 EXISTS\r\n"), "");
        assert_eq!(r.events, vec![FetchEvent::NewMail]);
        let mut out = Vec::new();
        r.core.refresh_idle(&mut out);
        assert_eq!(out, b"DONE\r\n");
        assert_eq!(r.say("m5 OK\r\n"), "m6 IDLE\r\n");
        // Without IDLE the watcher ends at once, saying why.
        let mut r = Run::new(p);
        r.say("* OK ready\r\n");
        r.say("* CAPABILITY IMAP4rev1\r\nm1 OK\r\n");
        r.say("m2 OK\r\n");
        r.say("* CAPABILITY IMAP4rev1\r\nm3 OK\r\n");
        assert_eq!(r.say("* 0 EXISTS\r\nm4 OK\r\n"), "");
        assert!(matches!(r.events.as_slice(),
            [FetchEvent::Done(s)] if s.error == Some(FetchError::Protocol(NO_IDLE.into()))));
    }

    #[test]
    fn idle_is_reissued_before_29_minutes() {
        // RFC 2177: servers may end an IDLE after 30 minutes of it.
        assert!(IDLE_REFRESH < Duration::from_secs(29 * 60));
    }

    #[test]
    fn uid_sets_are_ranges() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(
            uid_set(&[3, 1, 2, 2, 7, 9, 8, u32::MAX]),
            "1:3,7:9,4294967295"
        );
    }

    /// With UIDPLUS, collected messages are marked one by one and
    /// expunged in batches; only an expunge that got OK counts them and
    /// lets their records go.
    #[test]
    fn expunges_come_in_batches() {
        let mut r = logged_in(ImapKeep::Keep(Keep::No), "IMAP4rev1 UIDPLUS");
        let n = EXPUNGE_BATCH as u32 + 2;
        r.say(&format!(
            "* {n} EXISTS\r\n* OK [UIDVALIDITY 5]\r\nm4 OK\r\n"
        ));
        let listing: String = (1..=n)
            .map(|u| format!("* {u} FETCH (UID {u} RFC822.SIZE 3)\r\n"))
            .collect();
        let mut tag = 6;
        assert_eq!(
            r.say(&format!("{listing}m5 OK\r\n")),
            "m6 UID FETCH 1 (BODY.PEEK[])\r\n"
        );
        for u in 1..=n {
            r.say(&format!(
                "* {u} FETCH (UID {u} BODY[] {{3}}\r\nx\r\n)\r\nm{tag} OK\r\n"
            ));
            let mut out = Vec::new();
            r.core.delivered(true, &mut out, &mut r.events);
            tag += 1;
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("m{tag} UID STORE {u} +FLAGS.SILENT (\\Deleted)\r\n")
            );
            let next = r.say(&format!("m{tag} OK\r\n"));
            tag += 1;
            if u == EXPUNGE_BATCH as u32 {
                assert_eq!(next, format!("m{tag} UID EXPUNGE 1:{u}\r\n"));
                // Refused: those stay recorded (not in a prune's list).
                let next = r.say(&format!("m{tag} NO busy\r\n"));
                tag += 1;
                assert_eq!(
                    next,
                    format!("m{tag} UID FETCH {} (BODY.PEEK[])\r\n", u + 1)
                );
            } else if u == n {
                assert_eq!(next, format!("m{tag} UID EXPUNGE {}:{n}\r\n", n - 1));
                assert_eq!(
                    r.say(&format!("m{tag} OK\r\n")),
                    format!("m{} LOGOUT\r\n", tag + 1)
                );
            } else {
                assert_eq!(
                    next,
                    format!("m{tag} UID FETCH {} (BODY.PEEK[])\r\n", u + 1)
                );
            }
        }
        r.say("* BYE\r\n");
        let mut out = Vec::new();
        r.core.receive(
            format!("m{} OK\r\n", tag + 1).as_bytes(),
            &mut out,
            &mut r.events,
        );
        match r.events.last() {
            Some(FetchEvent::Done(s)) => {
                assert_eq!((s.fetched, s.deleted), (n as usize, 2));
                assert_eq!(s.remaining.as_ref().map(Vec::len), Some(EXPUNGE_BATCH));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn overlong_line_and_huge_small_literal_end_the_session() {
        let mut r = logged_in(ImapKeep::Keep(Keep::Yes), "IMAP4rev1");
        r.say(&"x".repeat(MAX_LINE + 10));
        assert!(
            matches!(r.events.as_slice(), [FetchEvent::Done(s)] if matches!(s.error, Some(FetchError::Protocol(_))))
        );
        let mut r = logged_in(ImapKeep::Keep(Keep::Yes), "IMAP4rev1");
        r.say("* 1 EXISTS {99999999999}\r\n");
        assert!(matches!(r.events.as_slice(), [FetchEvent::Done(_)]));
    }

    #[test]
    fn idle_rescans_on_exists() {
        let auth = Auth::Password {
            user: "bob".into(),
            pass: "pw".into(),
        };
        let mut p = params(auth, ImapKeep::Keep(Keep::Yes));
        p.idle = true;
        let mut r = Run::new(p);
        r.say("* OK ready\r\n");
        r.say("* CAPABILITY IMAP4rev1\r\nm1 OK\r\n");
        r.say("m2 OK\r\n");
        r.say("* CAPABILITY IMAP4rev1 IDLE\r\nm3 OK\r\n");
        assert_eq!(
            r.say("* 0 EXISTS\r\n* OK [UIDVALIDITY 5]\r\nm4 OK\r\n"),
            "m5 NOOP\r\n"
        );
        assert_eq!(r.say("m5 OK\r\n"), "m6 IDLE\r\n");
        assert_eq!(r.say("+ idling\r\n"), "");
        assert!(r.core.idling());
        assert_eq!(r.say("* 1 EXISTS\r\n"), "DONE\r\n");
        assert_eq!(r.say("m6 OK\r\n"), "m7 UID FETCH 1:* (UID RFC822.SIZE)\r\n");
        assert_eq!(
            r.say("* 1 FETCH (UID 3 RFC822.SIZE 5)\r\nm7 OK\r\n"),
            "m8 UID FETCH 3 (BODY.PEEK[])\r\n"
        );
    }

    #[test]
    fn record_keys_are_printable() {
        assert_eq!(
            record_key("Sent Items:x%", 1, 2),
            "imap:Sent%20Items%3Ax%25:1:2"
        );
        assert!(crate::proto::pop3_client::valid_uidl(&record_key(
            "Ünï code",
            1,
            2
        )));
    }
}
