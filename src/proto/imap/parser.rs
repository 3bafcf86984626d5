//! IMAP command framing and grammar, incremental (RFC 3501 9 with
//! LITERAL+ RFC 7888, IDLE RFC 2177, UIDPLUS RFC 4315, MOVE RFC 6851,
//! LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819, SPECIAL-USE RFC 6154,
//! NAMESPACE RFC 2342, ENABLE RFC 5161, ID RFC 2971, SASL-IR RFC 4959,
//! UNSELECT RFC 3691, CONDSTORE/QRESYNC RFC 7162, ESEARCH RFC 4731,
//! APPENDLIMIT RFC 7889, BINARY RFC 3516 fetch items).
//!
//! Owns: cutting the byte stream into commands (lines and `{n}`/`{n+}`
//! literals), the limits that keep a hostile client from costing memory
//! (line and command length, literal size checked before any byte is
//! stored, nesting depth), when a `+` continuation is due, streaming an
//! APPEND message literal out in chunks instead of buffering it, and
//! turning a framed command into a [`Command`] or a tagged BAD with a
//! reason.
//!
//! Must not: know session state, mailboxes or the store. Whether a
//! command is allowed now, and every NO, is the session's call.

use std::borrow::Cow;
use std::num::NonZeroU32;

use super::types::*;
use super::utf7;

/// Longest command line, literals excluded. RFC 7162 4 asks servers to
/// take at least 8192 octets; QRESYNC known-UID sets and long UID lists
/// from clients run longer, so 64 KiB as Dovecot's `imap_max_line_length`.
pub const MAX_LINE: usize = 64 * 1024;
/// Longest command, lines and (non-APPEND) literals together: bounds
/// what one command can make the server hold.
pub const MAX_COMMAND: usize = 64 * 1024;
/// Deepest nesting of parentheses, NOT and OR in one command: the
/// grammar is recursive (RFC 3501 9 `search-key`) and the stack is not.
pub const MAX_DEPTH: usize = 32;
/// Longest raw line in IDLE (`DONE`) or a SASL exchange (RFC 3501 6.2.2);
/// a PLAIN response with long names fits.
pub const MAX_RAW_LINE: usize = 8 * 1024;
/// RFC 2971 3.3: at most 30 field-value pairs.
const MAX_ID_PAIRS: usize = 30;
/// Digits of a literal length: u32 has 10 (RFC 3501 9 `number`).
const MAX_LITERAL_DIGITS: usize = 10;
/// RFC 7162 3.1.1: mod-sequence-value is at most 2^63 - 1.
const MAX_MODSEQ: u64 = (1 << 63) - 1;
/// A buffer above this is shrunk after its command, so an idle session
/// costs little.
const KEEP_CAPACITY: usize = 4 * 1024;

/// What the reader has for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Feed more bytes.
    NeedMore,
    /// A synchronizing literal is due: send `+ ...` now, then call
    /// `next_input()` again (RFC 3501 7.5).
    Continue,
    Command(Command),
    /// Answer `TAG BAD reason` (`*` when no tag could be read). With
    /// `close`, send it and close the connection: the client is sending a
    /// literal too large to read (RFC 7888 4).
    Bad {
        tag: Option<String>,
        reason: Cow<'static, str>,
        close: bool,
    },
    /// Answer `TAG NO reason`: a well-formed command naming a mailbox
    /// that is not valid modified UTF-7 (it names no mailbox, as Dovecot
    /// answers, rather than breaking the grammar).
    No {
        tag: String,
        reason: Cow<'static, str>,
    },
    /// An APPEND message literal is announced. Call `accept_append()`
    /// (then, if `sync`, send `+ ...`) and take `AppendData` until
    /// `AppendDone`; or `reject_append()` and answer the tag NO.
    AppendStart(AppendHead),
    /// The next chunk of the message literal, in order.
    AppendData(Vec<u8>),
    /// The literal and its command line ended: the message is complete.
    AppendDone {
        tag: String,
    },
}

/// An APPEND command up to its message literal (RFC 3501 6.3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendHead {
    pub tag: String,
    pub mailbox: MailboxName,
    pub flags: Vec<Flag>,
    pub date: Option<DateTime>,
    pub size: u32,
    /// `{n}` (the client waits for `+`) rather than `{n+}`.
    pub sync: bool,
}

/// A raw line for IDLE's `DONE` or a SASL response.
#[derive(Debug, PartialEq, Eq)]
pub enum RawLine {
    NeedMore,
    /// Without its CRLF.
    Line(Vec<u8>),
    /// Longer than [`MAX_RAW_LINE`]; the line is dropped up to its end.
    TooLong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a line into `cmd` (or dropping it when `discard`).
    Line,
    /// Copying this many literal bytes into `cmd`.
    Literal(usize),
    /// `AppendStart` was returned; waiting for accept or reject.
    AppendDecide { tag: String, size: u32, sync: bool },
    /// Handing out this many more message bytes.
    AppendStream { tag: String, remaining: u32 },
    /// The message literal is over; its line must end now.
    AppendEnd { tag: String },
    /// Dropping this many literal bytes of a refused command.
    Skip(u32),
    /// Dropping the rest of an over-long raw line.
    RawSkip,
    /// A literal we cannot read is on its way: nothing more is read.
    Closed,
}

/// Cuts a byte stream into commands. Feed it with [`feed`](Self::feed),
/// then call [`next_input`](Self::next_input) until `NeedMore`.
#[derive(Debug)]
pub struct CommandReader {
    input: Vec<u8>,
    cmd: Vec<u8>,
    /// Where the line being read starts in `cmd`.
    line_start: usize,
    /// A BAD was already given for this command: drop the rest of it.
    discard: bool,
    state: State,
    max_command: usize,
}

impl Default for CommandReader {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandReader {
    pub fn new() -> CommandReader {
        CommandReader::with_limit(MAX_COMMAND)
    }

    /// A reader whose commands (with their small literals) are at most
    /// `max_command` bytes.
    pub fn with_limit(max_command: usize) -> CommandReader {
        CommandReader {
            input: Vec::new(),
            cmd: Vec::new(),
            line_start: 0,
            discard: false,
            state: State::Line,
            max_command,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.state != State::Closed {
            self.input.extend_from_slice(bytes);
        }
    }

    /// Bytes fed and not yet taken: the driver stops reading the socket
    /// while this is large and the session is busy.
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// Take the announced APPEND message.
    pub fn accept_append(&mut self) {
        if let State::AppendDecide { tag, size, .. } = &self.state {
            self.state = if *size == 0 {
                State::AppendEnd { tag: tag.clone() }
            } else {
                State::AppendStream {
                    tag: tag.clone(),
                    remaining: *size,
                }
            };
        }
    }

    /// Refuse the announced APPEND message (the caller answers NO). A
    /// synchronizing literal is then never sent; a non-synchronizing one
    /// is read and dropped, with the rest of its command.
    pub fn reject_append(&mut self) {
        if let State::AppendDecide { size, sync, .. } = self.state {
            self.reset();
            if !sync {
                self.discard = true;
                self.state = State::Skip(size);
            }
        }
    }

    /// Also ends an APPEND being streamed: its remaining bytes are
    /// dropped (the caller answers NO, e.g. on a full disk).
    pub fn abort_append(&mut self) {
        if let State::AppendStream { remaining, .. } = self.state {
            self.reset();
            self.discard = true;
            self.state = State::Skip(remaining);
        }
    }

    fn reset(&mut self) {
        self.cmd.clear();
        if self.cmd.capacity() > KEEP_CAPACITY {
            self.cmd.shrink_to(KEEP_CAPACITY);
        }
        self.line_start = 0;
        self.discard = false;
        self.state = State::Line;
    }

    fn bad(&mut self, reason: impl Into<Cow<'static, str>>) -> Input {
        let tag = tag_of(&self.cmd);
        Input::Bad {
            tag,
            reason: reason.into(),
            close: false,
        }
    }

    /// A raw line (IDLE `DONE`, SASL responses), read between commands.
    pub fn next_line(&mut self) -> RawLine {
        loop {
            match self.state {
                State::RawSkip => match memchr(b'\n', &self.input) {
                    Some(p) => {
                        self.input.drain(..=p);
                        self.state = State::Line;
                    }
                    None => {
                        self.input.clear();
                        return RawLine::NeedMore;
                    }
                },
                State::Line if self.cmd.is_empty() => {
                    return match memchr(b'\n', &self.input) {
                        Some(p) if p <= MAX_RAW_LINE => {
                            let mut line: Vec<u8> = self.input.drain(..=p).collect();
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                            RawLine::Line(line)
                        }
                        Some(p) => {
                            self.input.drain(..=p);
                            RawLine::TooLong
                        }
                        None if self.input.len() > MAX_RAW_LINE => {
                            self.input.clear();
                            self.state = State::RawSkip;
                            RawLine::TooLong
                        }
                        None => RawLine::NeedMore,
                    };
                }
                // Only called between commands; anything else is a caller bug
                // that must not lose bytes: report nothing.
                _ => return RawLine::NeedMore,
            }
        }
    }

    /// The next thing the caller must act on.
    pub fn next_input(&mut self) -> Input {
        loop {
            match &self.state {
                State::Closed => return Input::NeedMore,
                State::AppendDecide { .. } => return Input::NeedMore,
                State::RawSkip => {
                    // A raw line was being dropped; finish it first.
                    let Some(p) = memchr(b'\n', &self.input) else {
                        self.input.clear();
                        return Input::NeedMore;
                    };
                    self.input.drain(..=p);
                    self.state = State::Line;
                }
                State::Skip(n) => {
                    let n = *n;
                    let take = (n as usize).min(self.input.len());
                    self.input.drain(..take);
                    let left = n - take as u32;
                    if left > 0 {
                        self.state = State::Skip(left);
                        return Input::NeedMore;
                    }
                    self.state = State::Line;
                }
                State::Literal(n) => {
                    let n = *n;
                    let take = n.min(self.input.len());
                    if self.discard {
                        self.input.drain(..take);
                    } else {
                        self.cmd.extend(self.input.drain(..take));
                    }
                    if take < n {
                        self.state = State::Literal(n - take);
                        return Input::NeedMore;
                    }
                    self.line_start = self.cmd.len();
                    self.state = State::Line;
                }
                State::AppendStream { tag, remaining } => {
                    if self.input.is_empty() {
                        return Input::NeedMore;
                    }
                    let take = (*remaining as usize).min(self.input.len());
                    let left = *remaining - take as u32;
                    let chunk: Vec<u8> = self.input.drain(..take).collect();
                    self.state = if left == 0 {
                        State::AppendEnd { tag: tag.clone() }
                    } else {
                        State::AppendStream {
                            tag: tag.clone(),
                            remaining: left,
                        }
                    };
                    return Input::AppendData(chunk);
                }
                State::AppendEnd { tag } => {
                    let tag = tag.clone();
                    match self.input.first() {
                        None => return Input::NeedMore,
                        Some(b'\n') => {
                            self.input.drain(..1);
                            self.reset();
                            return Input::AppendDone { tag };
                        }
                        Some(b'\r') if self.input.len() == 1 => return Input::NeedMore,
                        Some(b'\r') if self.input[1] == b'\n' => {
                            self.input.drain(..2);
                            self.reset();
                            return Input::AppendDone { tag };
                        }
                        Some(_) => {
                            // MULTIAPPEND (RFC 3502) or CATENATE: not offered.
                            self.reset();
                            self.discard = true;
                            return Input::Bad {
                                tag: Some(tag),
                                reason: "only one message per APPEND (MULTIAPPEND is not offered)"
                                    .into(),
                                close: false,
                            };
                        }
                    }
                }
                State::Line => {
                    if let Some(out) = self.read_line() {
                        return out;
                    }
                }
            }
        }
    }

    /// One step in `State::Line`: `None` to loop again.
    fn read_line(&mut self) -> Option<Input> {
        let Some(p) = memchr(b'\n', &self.input) else {
            self.cmd.append(&mut self.input);
            let len = self.cmd.len() - self.line_start;
            if len > MAX_LINE {
                let bad = (!self.discard).then(|| self.bad("command line too long"));
                self.discard = true;
                // Keep only what a literal marker at the line's end needs.
                let keep = self.cmd.len() - (MAX_LITERAL_DIGITS + 3);
                self.cmd.drain(self.line_start..keep);
                if bad.is_some() {
                    return bad;
                }
            }
            return Some(Input::NeedMore);
        };
        self.cmd.extend(self.input.drain(..=p));
        self.cmd.pop();
        // A CR of this line, never the last byte of a literal before it.
        if self.cmd.len() > self.line_start && self.cmd.last() == Some(&b'\r') {
            self.cmd.pop();
        }
        let over_long = self.cmd.len() - self.line_start > MAX_LINE;
        let marker = literal_marker(&self.cmd[self.line_start..])
            .map(|m| m.map(|(n, sync, open)| (n, sync, self.line_start + open)));
        if over_long || self.discard {
            // The command was (or is now) refused: drop it, and a literal
            // that the client sends without waiting for `+`.
            let bad = (!self.discard).then(|| self.bad("command line too long"));
            self.reset();
            if let Some(Ok((n, false, _))) = marker {
                self.discard = true;
                self.state = State::Skip(n);
            }
            return bad;
        }
        let Some(marker) = marker else {
            // The command is complete.
            if self.cmd.is_empty() {
                return None; // an empty line: ignored
            }
            let out = match parse_command(&self.cmd) {
                Ok(c) => Input::Command(c),
                Err(ParseError {
                    tag: Some(tag),
                    reason,
                }) if utf7::is_name_error(&reason) => Input::No { tag, reason },
                Err(e) => Input::Bad {
                    tag: e.tag,
                    reason: e.reason,
                    close: false,
                },
            };
            self.reset();
            return Some(out);
        };
        let (n, sync, start) = match marker {
            Ok(m) => m,
            Err(reason) => {
                // `{` digits `}` with a length we cannot read: for `{n+}` the
                // client is already sending bytes we cannot count.
                let bad = self.bad(reason);
                let nonsync = self.cmd.ends_with(b"+}");
                self.reset();
                if nonsync {
                    self.state = State::Closed;
                    self.input = Vec::new();
                    if let Input::Bad { tag, reason, .. } = bad {
                        return Some(Input::Bad {
                            tag,
                            reason,
                            close: true,
                        });
                    }
                }
                return Some(bad);
            }
        };
        match parse_append_head(&self.cmd[..start]) {
            Ok(Some((tag, mailbox, flags, date))) => {
                self.reset();
                self.state = State::AppendDecide {
                    tag: tag.clone(),
                    size: n,
                    sync,
                };
                return Some(Input::AppendStart(AppendHead {
                    tag,
                    mailbox,
                    flags,
                    date,
                    size: n,
                    sync,
                }));
            }
            Err(e) => {
                self.reset();
                if !sync {
                    self.discard = true;
                    self.state = State::Skip(n);
                }
                return Some(Input::Bad {
                    tag: e.tag,
                    reason: e.reason,
                    close: false,
                });
            }
            Ok(None) => {}
        }
        // An ordinary literal: refused before a byte of it is stored.
        if self.cmd.len() as u64 + 2 + u64::from(n) > self.max_command as u64 {
            let mut bad = self.bad("literal too large");
            self.reset();
            if !sync {
                self.state = State::Closed;
                self.input = Vec::new();
                if let Input::Bad { close, .. } = &mut bad {
                    *close = true;
                }
            }
            return Some(bad);
        }
        self.cmd.extend_from_slice(b"\r\n");
        self.state = State::Literal(n as usize);
        if sync {
            Some(Input::Continue)
        } else {
            None
        }
    }
}

fn memchr(b: u8, s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == b)
}

/// `{n}` or `{n+}` at the end of a line: (n, synchronizing, where `{` is).
fn literal_marker(line: &[u8]) -> Option<Result<(u32, bool, usize), &'static str>> {
    let body = line.strip_suffix(b"}")?;
    let (body, sync) = match body.strip_suffix(b"+") {
        Some(b) => (b, false),
        None => (body, true),
    };
    let open = body.iter().rposition(|&c| c == b'{')?;
    let digits = &body[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > MAX_LITERAL_DIGITS {
        return Some(Err("literal length too large"));
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    match u32::try_from(n) {
        Ok(n) => Some(Ok((n, sync, open))),
        Err(_) => Some(Err("literal length too large")),
    }
}

/// The tag of a (possibly incomplete) command, if it has a valid one.
fn tag_of(cmd: &[u8]) -> Option<String> {
    let end = cmd.iter().position(|&c| c == b' ').unwrap_or(cmd.len());
    let tag = &cmd[..end];
    if !tag.is_empty() && tag.iter().all(|&c| is_astring_char(c) && c != b'+') {
        Some(String::from_utf8_lossy(tag).into_owned())
    } else {
        None
    }
}

/// A command that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub tag: Option<String>,
    pub reason: Cow<'static, str>,
}

type R<T> = Result<T, Cow<'static, str>>;

fn is_ctl(c: u8) -> bool {
    c < 0x20 || c == 0x7f
}

/// RFC 3501 ATOM-CHAR, widened to 8-bit bytes (UTF-8 user names and
/// search strings from clients that do not quote them).
fn is_atom_char(c: u8) -> bool {
    !(is_ctl(c) || b"(){ %*\"\\]".contains(&c))
}

fn is_astring_char(c: u8) -> bool {
    is_atom_char(c) || c == b']'
}

fn is_list_char(c: u8) -> bool {
    is_atom_char(c) || c == b'%' || c == b'*' || c == b']'
}

fn is_tag_char(c: u8) -> bool {
    is_astring_char(c) && c != b'+'
}

/// A recursive-descent parser over one framed command.
struct P<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
    /// An error came from running out of input (for APPEND detection).
    eof: bool,
}

impl<'a> P<'a> {
    fn new(b: &'a [u8]) -> P<'a> {
        P {
            b,
            i: 0,
            depth: 0,
            eof: false,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn at_end(&self) -> bool {
        self.i >= self.b.len()
    }

    fn need(&mut self, what: &'static str) -> R<u8> {
        match self.peek() {
            Some(c) => Ok(c),
            None => {
                self.eof = true;
                Err(Cow::Owned(format!("missing {what}")))
            }
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> R<()> {
        if self.need(what)? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Cow::Owned(format!("expected {what}")))
        }
    }

    fn sp(&mut self) -> R<()> {
        self.expect(b' ', "a space")
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Case-insensitive keyword, taken only if followed by a non-word byte.
    fn eat_word(&mut self, w: &str) -> bool {
        let end = self.i + w.len();
        if end <= self.b.len()
            && self.b[self.i..end].eq_ignore_ascii_case(w.as_bytes())
            && self
                .b
                .get(end)
                .is_none_or(|&c| !is_atom_char(c) || c == b'[')
        {
            self.i = end;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err("too deeply nested".into())
        } else {
            Ok(())
        }
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
        &self.b[start..self.i]
    }

    fn atom(&mut self, what: &'static str) -> R<&'a str> {
        self.need(what)?;
        let a = self.take_while(|c| is_atom_char(c) && c < 0x80);
        if a.is_empty() {
            return Err(Cow::Owned(format!("expected {what}")));
        }
        // ASCII only, so this cannot fail.
        std::str::from_utf8(a).map_err(|_| Cow::Borrowed("invalid atom"))
    }

    /// A word of letters, digits, '.', '-' (command and item names).
    fn word(&mut self, what: &'static str) -> R<String> {
        self.need(what)?;
        let w = self.take_while(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
        if w.is_empty() {
            return Err(Cow::Owned(format!("expected {what}")));
        }
        Ok(String::from_utf8_lossy(w).to_ascii_uppercase())
    }

    fn number64(&mut self) -> R<u64> {
        self.need("a number")?;
        let d = self.take_while(|c| c.is_ascii_digit());
        if d.is_empty() {
            return Err("expected a number".into());
        }
        let mut n: u64 = 0;
        for &c in d {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(c - b'0')))
                .ok_or("number too large")?;
        }
        Ok(n)
    }

    fn number(&mut self) -> R<u32> {
        u32::try_from(self.number64()?).map_err(|_| "number too large".into())
    }

    fn nz_number(&mut self) -> R<NonZeroU32> {
        NonZeroU32::new(self.number()?).ok_or_else(|| "zero is not a valid number here".into())
    }

    fn modseq(&mut self) -> R<u64> {
        let n = self.number64()?;
        if n == 0 || n > MAX_MODSEQ {
            return Err("invalid mod-sequence value".into());
        }
        Ok(n)
    }

    /// RFC 7162 `mod-sequence-valzer`.
    fn modseq_zero(&mut self) -> R<u64> {
        let n = self.number64()?;
        if n > MAX_MODSEQ {
            return Err("invalid mod-sequence value".into());
        }
        Ok(n)
    }

    fn quoted(&mut self) -> R<Vec<u8>> {
        self.expect(b'"', "a quoted string")?;
        let mut out = Vec::new();
        loop {
            match self.need("closing quote")? {
                b'"' => {
                    self.i += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.i += 1;
                    match self.need("a quoted character")? {
                        c @ (b'"' | b'\\') => out.push(c),
                        _ => return Err("invalid escape in quoted string".into()),
                    }
                    self.i += 1;
                }
                b'\r' | b'\n' | 0 => return Err("invalid character in quoted string".into()),
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// `{n}` / `{n+}` CRLF, then n bytes (the reader has them all).
    fn literal(&mut self) -> R<&'a [u8]> {
        self.expect(b'{', "a literal")?;
        let n = self.number()? as usize;
        self.eat(b'+');
        self.expect(b'}', "'}'")?;
        self.expect(b'\r', "CRLF after literal length")?;
        self.expect(b'\n', "CRLF after literal length")?;
        if self.b.len() - self.i < n {
            self.eof = true;
            return Err("literal shorter than announced".into());
        }
        let s = &self.b[self.i..self.i + n];
        self.i += n;
        Ok(s)
    }

    fn string(&mut self) -> R<Vec<u8>> {
        match self.need("a string")? {
            b'"' => self.quoted(),
            b'{' => Ok(self.literal()?.to_vec()),
            _ => Err("expected a string".into()),
        }
    }

    fn astring(&mut self) -> R<Vec<u8>> {
        match self.need("a string")? {
            b'"' | b'{' => self.string(),
            _ => {
                let a = self.take_while(is_astring_char);
                if a.is_empty() {
                    return Err("expected a string or atom".into());
                }
                Ok(a.to_vec())
            }
        }
    }

    fn utf8_astring(&mut self) -> R<String> {
        String::from_utf8(self.astring()?).map_err(|_| "string is not valid UTF-8".into())
    }

    fn nstring(&mut self) -> R<Option<Vec<u8>>> {
        if self.eat_word("NIL") {
            Ok(None)
        } else {
            self.string().map(Some)
        }
    }

    fn mailbox(&mut self) -> R<MailboxName> {
        let raw = self.astring()?;
        if raw.eq_ignore_ascii_case(b"INBOX") {
            return Ok(MailboxName::new("INBOX".into()));
        }
        utf7::decode(&raw)
            .map(MailboxName::new)
            .map_err(|e| e.reason().into())
    }

    fn list_mailbox(&mut self) -> R<String> {
        let raw = match self.need("a mailbox pattern")? {
            b'"' | b'{' => self.string()?,
            _ => {
                let a = self.take_while(is_list_char);
                if a.is_empty() {
                    return Err("expected a mailbox pattern".into());
                }
                a.to_vec()
            }
        };
        // A pattern that is not valid modified UTF-7 matches no name
        // (every name is stored valid); it is not an error (Dovecot
        // answers OK, imaptest `atoms`), so it is kept as it is.
        Ok(utf7::decode(&raw).unwrap_or_else(|_| String::from_utf8_lossy(&raw).into_owned()))
    }

    fn flag(&mut self) -> R<Flag> {
        let backslash = self.eat(b'\\');
        if backslash && self.eat(b'*') {
            return Err("\\* is not a flag".into());
        }
        let a = self.atom("a flag")?;
        Ok(Flag::from_atom(backslash, a))
    }

    fn flag_list(&mut self) -> R<Vec<Flag>> {
        self.expect(b'(', "'(' of a flag list")?;
        let mut flags = Vec::new();
        if self.eat(b')') {
            return Ok(flags);
        }
        loop {
            flags.push(self.flag()?);
            if self.eat(b')') {
                return Ok(flags);
            }
            self.sp()?;
        }
    }

    fn seq_num(&mut self) -> R<SeqNum> {
        if self.eat(b'*') {
            return Ok(SeqNum::Star);
        }
        if self.peek() == Some(b'$') {
            return Err("SEARCHRES ($) is not offered".into());
        }
        self.need("a sequence number")?;
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err("expected a sequence set".into());
        }
        let n = self
            .number()
            .map_err(|_| Cow::Borrowed("sequence number out of range"))?;
        NonZeroU32::new(n)
            .map(SeqNum::Value)
            .ok_or_else(|| "sequence number 0 is not valid".into())
    }

    fn seq_set(&mut self) -> R<SeqSet> {
        let mut v = Vec::new();
        loop {
            let start = self.seq_num()?;
            let end = if self.eat(b':') {
                self.seq_num()?
            } else {
                start
            };
            v.push(SeqRange { start, end });
            if !self.eat(b',') {
                return Ok(SeqSet(v));
            }
        }
    }

    fn month(&mut self) -> R<u8> {
        let end = (self.i + 3).min(self.b.len());
        let m = &self.b[self.i..end];
        let idx = MONTHS
            .iter()
            .position(|name| name.as_bytes().eq_ignore_ascii_case(m))
            .ok_or("invalid month")?;
        self.i = end;
        Ok(idx as u8 + 1)
    }

    fn digits(&mut self, min: usize, max: usize) -> R<u32> {
        let start = self.i;
        while self.i - start < max && self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.i - start < min {
            self.need("digits")?;
            return Err("expected digits".into());
        }
        Ok(self.b[start..self.i]
            .iter()
            .fold(0, |n, &c| n * 10 + u32::from(c - b'0')))
    }

    fn date_text(&mut self) -> R<Date> {
        let day = self.digits(1, 2)?;
        self.expect(b'-', "'-' in a date")?;
        let month = self.month()?;
        self.expect(b'-', "'-' in a date")?;
        let year = self.digits(4, 4)?;
        let d = Date {
            year: year as u16,
            month,
            day: day as u8,
        };
        if day == 0 || day > u32::from(days_in_month(d.year, month)) {
            return Err("invalid day of month".into());
        }
        Ok(d)
    }

    fn date(&mut self) -> R<Date> {
        if self.eat(b'"') {
            let d = self.date_text()?;
            self.expect(b'"', "closing quote of a date")?;
            Ok(d)
        } else {
            self.date_text()
        }
    }

    /// RFC 3501 `date-time`: `"dd-Mon-yyyy hh:mm:ss +zzzz"`.
    fn date_time(&mut self) -> R<DateTime> {
        self.expect(b'"', "a date-time")?;
        self.eat(b' ');
        let date = self.date_text()?;
        self.sp()?;
        let hour = self.digits(2, 2)?;
        self.expect(b':', "':' in a time")?;
        let minute = self.digits(2, 2)?;
        self.expect(b':', "':' in a time")?;
        let second = self.digits(2, 2)?;
        self.sp()?;
        let sign = match self.need("a zone")? {
            b'+' => 1,
            b'-' => -1,
            _ => return Err("expected a zone".into()),
        };
        self.i += 1;
        let zone = self.digits(4, 4)?;
        self.expect(b'"', "closing quote of a date-time")?;
        if hour > 23 || minute > 59 || second > 60 || zone % 100 > 59 || zone > 2359 {
            return Err("invalid date-time".into());
        }
        Ok(DateTime {
            date,
            hour: hour as u8,
            minute: minute as u8,
            second: second as u8,
            zone_minutes: (sign * ((zone / 100) * 60 + zone % 100) as i32) as i16,
        })
    }

    /// A search string: valid UTF-8 (CHARSET UTF-8 or US-ASCII, the ones
    /// offered; others are refused by the session with BADCHARSET).
    fn search_string(&mut self) -> R<String> {
        let s = self.astring()?;
        Ok(String::from_utf8(s)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    fn search_keys(&mut self) -> R<SearchKey> {
        let mut keys = vec![self.search_key()?];
        while self.eat(b' ') {
            keys.push(self.search_key()?);
        }
        Ok(if keys.len() == 1 {
            keys.swap_remove(0)
        } else {
            SearchKey::And(keys)
        })
    }

    fn search_key(&mut self) -> R<SearchKey> {
        self.enter()?;
        let k = self.search_key_inner();
        self.leave();
        k
    }

    fn search_key_inner(&mut self) -> R<SearchKey> {
        use SearchKey as K;
        let c = self.need("a search key")?;
        if c == b'(' {
            self.i += 1;
            let k = self.search_keys()?;
            self.expect(b')', "')' closing search keys")?;
            return Ok(match k {
                K::And(v) => K::And(v),
                k => K::And(vec![k]),
            });
        }
        if c.is_ascii_digit() || c == b'*' || c == b'$' {
            return Ok(K::SeqSet(self.seq_set()?));
        }
        let name = self.word("a search key")?;
        let arg_str = |p: &mut P| -> R<String> {
            p.sp()?;
            p.search_string()
        };
        let arg_date = |p: &mut P| -> R<Date> {
            p.sp()?;
            p.date()
        };
        Ok(match name.as_str() {
            "ALL" => K::All,
            "ANSWERED" => K::Answered,
            "BCC" => K::Bcc(arg_str(self)?),
            "BEFORE" => K::Before(arg_date(self)?),
            "BODY" => K::Body(arg_str(self)?),
            "CC" => K::Cc(arg_str(self)?),
            "DELETED" => K::Deleted,
            "DRAFT" => K::Draft,
            "FLAGGED" => K::Flagged,
            "FROM" => K::From(arg_str(self)?),
            "HEADER" => {
                self.sp()?;
                let field = self.utf8_astring()?;
                K::Header(field, arg_str(self)?)
            }
            "KEYWORD" => {
                self.sp()?;
                K::Keyword(self.atom("a keyword")?.to_string())
            }
            "LARGER" => {
                self.sp()?;
                K::Larger(self.number()?)
            }
            "NEW" => K::New,
            "NOT" => {
                self.sp()?;
                K::Not(Box::new(self.search_key()?))
            }
            "OLD" => K::Old,
            "ON" => K::On(arg_date(self)?),
            "OR" => {
                self.sp()?;
                let a = self.search_key()?;
                self.sp()?;
                let b = self.search_key()?;
                K::Or(Box::new(a), Box::new(b))
            }
            "RECENT" => K::Recent,
            "SEEN" => K::Seen,
            "SENTBEFORE" => K::SentBefore(arg_date(self)?),
            "SENTON" => K::SentOn(arg_date(self)?),
            "SENTSINCE" => K::SentSince(arg_date(self)?),
            "SINCE" => K::Since(arg_date(self)?),
            "SMALLER" => {
                self.sp()?;
                K::Smaller(self.number()?)
            }
            "SUBJECT" => K::Subject(arg_str(self)?),
            "TEXT" => K::Text(arg_str(self)?),
            "TO" => K::To(arg_str(self)?),
            "UID" => {
                self.sp()?;
                K::Uid(self.seq_set()?)
            }
            "UNANSWERED" => K::Unanswered,
            "UNDELETED" => K::Undeleted,
            "UNDRAFT" => K::Undraft,
            "UNFLAGGED" => K::Unflagged,
            "UNKEYWORD" => {
                self.sp()?;
                K::Unkeyword(self.atom("a keyword")?.to_string())
            }
            "UNSEEN" => K::Unseen,
            "MODSEQ" => {
                self.sp()?;
                // RFC 7162 3.1.5: optional entry name and entry type.
                if self.peek() == Some(b'"') {
                    self.quoted()?;
                    self.sp()?;
                    let t = self.word("an entry type")?;
                    if !matches!(t.as_str(), "PRIV" | "SHARED" | "ALL") {
                        return Err("invalid MODSEQ entry type".into());
                    }
                    self.sp()?;
                }
                K::ModSeq(self.modseq_zero()?)
            }
            _ => return Err(Cow::Owned(format!("unknown search key {name}"))),
        })
    }

    fn section_part(&mut self) -> R<Vec<u32>> {
        let mut part = Vec::new();
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            part.push(self.nz_number()?.get());
            if !(self.peek() == Some(b'.')
                && self.b.get(self.i + 1).is_some_and(|c| c.is_ascii_digit()))
            {
                break;
            }
            self.i += 1;
        }
        Ok(part)
    }

    fn header_list(&mut self) -> R<Vec<String>> {
        self.sp()?;
        self.expect(b'(', "'(' of a header list")?;
        let mut v = vec![self.utf8_astring()?];
        while self.eat(b' ') {
            v.push(self.utf8_astring()?);
        }
        self.expect(b')', "')' closing a header list")?;
        Ok(v)
    }

    /// `[` section-spec `]` (RFC 3501 9 `section`).
    fn section(&mut self) -> R<Section> {
        self.expect(b'[', "'['")?;
        let part = self.section_part()?;
        let text = if self.peek() == Some(b']') {
            None
        } else {
            if !part.is_empty() {
                self.expect(b'.', "'.' after part number")?;
            }
            let w = self.word("a section")?;
            Some(match w.as_str() {
                "HEADER" => SectionText::Header,
                "HEADER.FIELDS" => SectionText::HeaderFields(self.header_list()?),
                "HEADER.FIELDS.NOT" => SectionText::HeaderFieldsNot(self.header_list()?),
                "TEXT" => SectionText::Text,
                "MIME" if !part.is_empty() => SectionText::Mime,
                _ => return Err(Cow::Owned(format!("invalid section {w}"))),
            })
        };
        self.expect(b']', "']' closing a section")?;
        Ok(Section { part, text })
    }

    fn partial(&mut self) -> R<Option<(u32, u32)>> {
        if !self.eat(b'<') {
            return Ok(None);
        }
        let o = self.number()?;
        self.expect(b'.', "'.' in a partial")?;
        let n = self.nz_number()?.get();
        self.expect(b'>', "'>' closing a partial")?;
        Ok(Some((o, n)))
    }

    fn binary_part(&mut self) -> R<Vec<u32>> {
        self.expect(b'[', "'['")?;
        let p = self.section_part()?;
        self.expect(b']', "']'")?;
        Ok(p)
    }

    fn fetch_att(&mut self) -> R<FetchAttr> {
        use FetchAttr as A;
        let name = self.word("a fetch item")?;
        Ok(match name.as_str() {
            "ENVELOPE" => A::Envelope,
            "FLAGS" => A::Flags,
            "INTERNALDATE" => A::InternalDate,
            "RFC822" => A::Rfc822,
            "RFC822.HEADER" => A::Rfc822Header,
            "RFC822.SIZE" => A::Rfc822Size,
            "RFC822.TEXT" => A::Rfc822Text,
            "BODYSTRUCTURE" => A::BodyStructure,
            "UID" => A::Uid,
            "MODSEQ" => A::ModSeq,
            "BODY" if self.peek() != Some(b'[') => A::Body,
            "BODY" | "BODY.PEEK" => A::BodySection {
                peek: name == "BODY.PEEK",
                section: self.section()?,
                partial: self.partial()?,
            },
            "BINARY" | "BINARY.PEEK" => A::Binary {
                peek: name == "BINARY.PEEK",
                part: self.binary_part()?,
                partial: self.partial()?,
            },
            "BINARY.SIZE" => A::BinarySize(self.binary_part()?),
            _ => return Err(Cow::Owned(format!("unknown fetch item {name}"))),
        })
    }

    fn fetch_items(&mut self) -> R<FetchItems> {
        if self.eat(b'(') {
            let mut v = vec![self.fetch_att()?];
            while self.eat(b' ') {
                v.push(self.fetch_att()?);
            }
            self.expect(b')', "')' closing fetch items")?;
            return Ok(FetchItems::List(v));
        }
        if self.eat_word("ALL") {
            return Ok(FetchItems::All);
        }
        if self.eat_word("FAST") {
            return Ok(FetchItems::Fast);
        }
        if self.eat_word("FULL") {
            return Ok(FetchItems::Full);
        }
        Ok(FetchItems::List(vec![self.fetch_att()?]))
    }

    fn status_items(&mut self) -> R<Vec<StatusItem>> {
        self.expect(b'(', "'(' of status items")?;
        let mut v = Vec::new();
        loop {
            let w = self.word("a status item")?;
            v.push(match w.as_str() {
                "MESSAGES" => StatusItem::Messages,
                "RECENT" => StatusItem::Recent,
                "UIDNEXT" => StatusItem::UidNext,
                "UIDVALIDITY" => StatusItem::UidValidity,
                "UNSEEN" => StatusItem::Unseen,
                "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
                "SIZE" => StatusItem::Size,
                "APPENDLIMIT" => StatusItem::AppendLimit,
                _ => return Err(Cow::Owned(format!("unknown status item {w}"))),
            });
            if self.eat(b')') {
                return Ok(v);
            }
            self.sp()?;
        }
    }

    fn select_params(&mut self) -> R<SelectParams> {
        let mut p = SelectParams::default();
        if !self.eat(b' ') {
            return Ok(p);
        }
        self.expect(b'(', "'(' of select parameters")?;
        if self.eat(b')') {
            return Ok(p);
        }
        loop {
            let w = self.word("a select parameter")?;
            match w.as_str() {
                "CONDSTORE" => p.condstore = true,
                "QRESYNC" => {
                    self.sp()?;
                    self.expect(b'(', "'(' of QRESYNC")?;
                    let uidvalidity = self.nz_number()?.get();
                    self.sp()?;
                    let modseq = self.modseq()?;
                    let mut q = Qresync {
                        uidvalidity,
                        modseq,
                        known_uids: None,
                        seq_match: None,
                    };
                    if self.eat(b' ') {
                        if self.peek() != Some(b'(') {
                            q.known_uids = Some(self.seq_set()?);
                            self.eat(b' ');
                        }
                        if self.eat(b'(') {
                            let seqs = self.seq_set()?;
                            self.sp()?;
                            let uids = self.seq_set()?;
                            self.expect(b')', "')' of sequence match data")?;
                            q.seq_match = Some((seqs, uids));
                        }
                    }
                    self.expect(b')', "')' closing QRESYNC")?;
                    p.qresync = Some(q);
                }
                _ => return Err(Cow::Owned(format!("unknown select parameter {w}"))),
            }
            if self.eat(b')') {
                return Ok(p);
            }
            self.sp()?;
        }
    }

    fn list(&mut self) -> R<ListCommand> {
        let mut l = ListCommand::default();
        self.sp()?;
        if self.eat(b'(') {
            l.extended = true;
            while !self.eat(b')') {
                let w = self.word("a LIST selection option")?;
                match w.as_str() {
                    "SUBSCRIBED" => l.select_subscribed = true,
                    "RECURSIVEMATCH" => l.select_recursive = true,
                    "SPECIAL-USE" => l.select_special_use = true,
                    "REMOTE" => l.select_remote = true,
                    _ => return Err(Cow::Owned(format!("unknown LIST selection option {w}"))),
                }
                if self.peek() != Some(b')') {
                    self.sp()?;
                }
            }
            // RFC 5258 3: RECURSIVEMATCH needs another selection option.
            if l.select_recursive && !(l.select_subscribed || l.select_special_use) {
                return Err("RECURSIVEMATCH needs another selection option".into());
            }
            self.sp()?;
        }
        let r = self.astring()?;
        l.reference = utf7::decode(&r).map_err(|e| Cow::Borrowed(e.reason()))?;
        self.sp()?;
        if self.eat(b'(') {
            l.extended = true;
            l.patterns.push(self.list_mailbox()?);
            while self.eat(b' ') {
                l.patterns.push(self.list_mailbox()?);
            }
            self.expect(b')', "')' closing patterns")?;
        } else {
            l.patterns.push(self.list_mailbox()?);
        }
        if self.eat(b' ') {
            if !self.eat_word("RETURN") {
                return Err("expected RETURN".into());
            }
            l.extended = true;
            self.sp()?;
            self.expect(b'(', "'(' of return options")?;
            while !self.eat(b')') {
                let w = self.word("a LIST return option")?;
                match w.as_str() {
                    "SUBSCRIBED" => l.return_subscribed = true,
                    "CHILDREN" => l.return_children = true,
                    "SPECIAL-USE" => l.return_special_use = true,
                    "STATUS" => {
                        self.sp()?;
                        l.return_status = Some(self.status_items()?);
                    }
                    _ => return Err(Cow::Owned(format!("unknown LIST return option {w}"))),
                }
                if self.peek() != Some(b')') {
                    self.sp()?;
                }
            }
        }
        Ok(l)
    }

    fn search(&mut self, uid: bool) -> R<CommandBody> {
        self.sp()?;
        let mut ret = None;
        if self.eat_word("RETURN") {
            self.sp()?;
            self.expect(b'(', "'(' of return options")?;
            let mut v = Vec::new();
            while !self.eat(b')') {
                let w = self.word("a SEARCH return option")?;
                v.push(match w.as_str() {
                    "MIN" => SearchReturn::Min,
                    "MAX" => SearchReturn::Max,
                    "ALL" => SearchReturn::All,
                    "COUNT" => SearchReturn::Count,
                    "SAVE" => SearchReturn::Save,
                    _ => return Err(Cow::Owned(format!("unknown SEARCH return option {w}"))),
                });
                if self.peek() != Some(b')') {
                    self.sp()?;
                }
            }
            // RFC 4731 3.1: RETURN () means RETURN (ALL).
            if v.is_empty() {
                v.push(SearchReturn::All);
            }
            ret = Some(v);
            self.sp()?;
        }
        let mut charset = None;
        if self.eat_word("CHARSET") {
            self.sp()?;
            charset = Some(String::from_utf8_lossy(&self.astring()?).into_owned());
            self.sp()?;
        }
        let key = self.search_keys()?;
        Ok(CommandBody::Search {
            uid,
            ret,
            charset,
            key,
        })
    }

    fn fetch(&mut self, uid: bool) -> R<CommandBody> {
        self.sp()?;
        let set = self.seq_set()?;
        self.sp()?;
        let items = self.fetch_items()?;
        let mut changed_since = None;
        let mut vanished = false;
        if self.eat(b' ') {
            self.expect(b'(', "'(' of fetch modifiers")?;
            loop {
                let w = self.word("a fetch modifier")?;
                match w.as_str() {
                    "CHANGEDSINCE" => {
                        self.sp()?;
                        changed_since = Some(self.modseq()?);
                    }
                    "VANISHED" if uid => vanished = true,
                    _ => return Err(Cow::Owned(format!("unknown fetch modifier {w}"))),
                }
                if self.eat(b')') {
                    break;
                }
                self.sp()?;
            }
            // RFC 7162 3.2.6: VANISHED needs CHANGEDSINCE.
            if vanished && changed_since.is_none() {
                return Err("VANISHED needs CHANGEDSINCE".into());
            }
        }
        Ok(CommandBody::Fetch {
            uid,
            set,
            items,
            changed_since,
            vanished,
        })
    }

    fn store(&mut self, uid: bool) -> R<CommandBody> {
        self.sp()?;
        let set = self.seq_set()?;
        self.sp()?;
        let mut unchanged_since = None;
        if self.eat(b'(') {
            if !self.eat_word("UNCHANGEDSINCE") {
                return Err("expected UNCHANGEDSINCE".into());
            }
            self.sp()?;
            unchanged_since = Some(self.modseq()?);
            self.expect(b')', "')' of store modifiers")?;
            self.sp()?;
        }
        let mode = if self.eat(b'+') {
            StoreMode::Add
        } else if self.eat(b'-') {
            StoreMode::Remove
        } else {
            StoreMode::Replace
        };
        let silent = match self.word("FLAGS")?.as_str() {
            "FLAGS" => false,
            "FLAGS.SILENT" => true,
            _ => return Err("expected FLAGS or FLAGS.SILENT".into()),
        };
        self.sp()?;
        let flags = if self.peek() == Some(b'(') {
            self.flag_list()?
        } else {
            let mut v = vec![self.flag()?];
            while self.eat(b' ') {
                v.push(self.flag()?);
            }
            v
        };
        Ok(CommandBody::Store {
            uid,
            set,
            unchanged_since,
            mode,
            silent,
            flags,
        })
    }

    fn id(&mut self) -> R<CommandBody> {
        self.sp()?;
        if self.eat_word("NIL") {
            return Ok(CommandBody::Id(None));
        }
        self.expect(b'(', "'(' or NIL")?;
        let mut v = Vec::new();
        while !self.eat(b')') {
            if !v.is_empty() {
                self.sp()?;
            }
            let field = String::from_utf8_lossy(&self.string()?).into_owned();
            self.sp()?;
            let value = self
                .nstring()?
                .map(|s| String::from_utf8_lossy(&s).into_owned());
            v.push((field, value));
            if v.len() > MAX_ID_PAIRS {
                return Err("too many ID fields".into());
            }
        }
        Ok(CommandBody::Id(Some(v)))
    }

    fn command_body(&mut self) -> R<CommandBody> {
        use CommandBody as C;
        let name = self.word("a command")?;
        let body = match name.as_str() {
            "CAPABILITY" => C::Capability,
            "NOOP" => C::Noop,
            "LOGOUT" => C::Logout,
            "STARTTLS" => C::StartTls,
            "NAMESPACE" => C::Namespace,
            "CHECK" => C::Check,
            "CLOSE" => C::Close,
            "UNSELECT" => C::Unselect,
            "EXPUNGE" => C::Expunge,
            "IDLE" => C::Idle,
            "ID" => self.id()?,
            "AUTHENTICATE" => {
                self.sp()?;
                let mechanism = self.atom("a SASL mechanism")?.to_ascii_uppercase();
                let initial = if self.eat(b' ') {
                    let ir = self.take_while(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c));
                    if ir.is_empty() {
                        return Err("expected a base64 initial response".into());
                    }
                    Some(String::from_utf8_lossy(ir).into_owned())
                } else {
                    None
                };
                C::Authenticate { mechanism, initial }
            }
            "LOGIN" => {
                self.sp()?;
                let user = self.utf8_astring()?;
                self.sp()?;
                let password = self.utf8_astring()?;
                C::Login { user, password }
            }
            "ENABLE" => {
                let mut v = Vec::new();
                while self.eat(b' ') {
                    v.push(self.atom("a capability")?.to_ascii_uppercase());
                }
                if v.is_empty() {
                    return Err("ENABLE needs a capability".into());
                }
                C::Enable(v)
            }
            "SELECT" | "EXAMINE" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let params = self.select_params()?;
                if name == "SELECT" {
                    C::Select { mailbox, params }
                } else {
                    C::Examine { mailbox, params }
                }
            }
            "CREATE" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let mut special_use = Vec::new();
                if self.eat(b' ') {
                    self.expect(b'(', "'(' of CREATE parameters")?;
                    if !self.eat_word("USE") {
                        return Err("expected USE".into());
                    }
                    self.sp()?;
                    self.expect(b'(', "'(' of USE")?;
                    loop {
                        self.expect(b'\\', "a special-use attribute")?;
                        special_use.push(format!("\\{}", self.atom("a special-use attribute")?));
                        if self.eat(b')') {
                            break;
                        }
                        self.sp()?;
                    }
                    self.expect(b')', "')' of CREATE parameters")?;
                }
                C::Create {
                    mailbox,
                    special_use,
                }
            }
            "DELETE" | "SUBSCRIBE" | "UNSUBSCRIBE" => {
                self.sp()?;
                let m = self.mailbox()?;
                match name.as_str() {
                    "DELETE" => C::Delete(m),
                    "SUBSCRIBE" => C::Subscribe(m),
                    _ => C::Unsubscribe(m),
                }
            }
            "RENAME" => {
                self.sp()?;
                let from = self.mailbox()?;
                self.sp()?;
                let to = self.mailbox()?;
                C::Rename { from, to }
            }
            "LIST" => C::List(self.list()?),
            "LSUB" => {
                self.sp()?;
                let r = self.astring()?;
                let reference = utf7::decode(&r).map_err(|e| Cow::Borrowed(e.reason()))?;
                self.sp()?;
                let pattern = self.list_mailbox()?;
                C::Lsub { reference, pattern }
            }
            "STATUS" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                self.sp()?;
                let items = self.status_items()?;
                C::Status { mailbox, items }
            }
            "APPEND" => return Err("APPEND without a message literal".into()),
            "SEARCH" => self.search(false)?,
            "FETCH" => self.fetch(false)?,
            "STORE" => self.store(false)?,
            "COPY" | "MOVE" => self.copy_move(&name, false)?,
            "UID" => {
                self.sp()?;
                let sub = self.word("a UID command")?;
                match sub.as_str() {
                    "SEARCH" => self.search(true)?,
                    "FETCH" => self.fetch(true)?,
                    "STORE" => self.store(true)?,
                    "COPY" | "MOVE" => self.copy_move(&sub, true)?,
                    "EXPUNGE" => {
                        self.sp()?;
                        C::UidExpunge(self.seq_set()?)
                    }
                    _ => return Err(Cow::Owned(format!("unknown command UID {sub}"))),
                }
            }
            _ => return Err(Cow::Owned(format!("unknown command {name}"))),
        };
        Ok(body)
    }

    fn copy_move(&mut self, name: &str, uid: bool) -> R<CommandBody> {
        self.sp()?;
        let set = self.seq_set()?;
        self.sp()?;
        let mailbox = self.mailbox()?;
        Ok(if name == "COPY" {
            CommandBody::Copy { uid, set, mailbox }
        } else {
            CommandBody::Move { uid, set, mailbox }
        })
    }

    fn tag(&mut self) -> R<String> {
        let t = self.take_while(is_tag_char);
        if t.is_empty() {
            return Err("missing or invalid tag".into());
        }
        Ok(String::from_utf8_lossy(t).into_owned())
    }
}

pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Parses one framed command (its CRLF removed; literals inline as
/// `{n}\r\n` + n bytes).
pub fn parse_command(b: &[u8]) -> Result<Command, ParseError> {
    let mut p = P::new(b);
    let tag = p.tag().map_err(|reason| ParseError { tag: None, reason })?;
    let fail = |reason| ParseError {
        tag: Some(tag.clone()),
        reason,
    };
    p.sp()
        .map_err(|_| fail("expected a space after the tag".into()))?;
    let body = p.command_body().map_err(fail)?;
    if !p.at_end() {
        return Err(fail(
            "unexpected characters at the end of the command".into(),
        ));
    }
    Ok(Command { tag, body })
}

type AppendParts = (String, MailboxName, Vec<Flag>, Option<DateTime>);

/// `tag APPEND mailbox [flags] [date-time] ` before a message literal:
/// `Ok(None)` when `b` is not that (not APPEND, or the literal is still
/// inside the head, e.g. a literal mailbox name).
fn parse_append_head(b: &[u8]) -> Result<Option<AppendParts>, ParseError> {
    let mut p = P::new(b);
    let Ok(tag) = p.tag() else {
        return Ok(None);
    };
    if !(p.eat(b' ') && p.eat_word("APPEND")) {
        return Ok(None);
    }
    let head = (|| -> R<(MailboxName, Vec<Flag>, Option<DateTime>)> {
        p.sp()?;
        let mailbox = p.mailbox()?;
        p.sp()?;
        let mut flags = Vec::new();
        let mut date = None;
        if p.peek() == Some(b'(') {
            flags = p.flag_list()?;
            p.sp()?;
        }
        if p.peek() == Some(b'"') {
            date = Some(p.date_time()?);
            p.sp()?;
        }
        if !p.at_end() {
            return Err("expected the message literal".into());
        }
        Ok((mailbox, flags, date))
    })();
    match head {
        Ok((m, f, d)) => Ok(Some((tag, m, f, d))),
        Err(_) if p.eof => Ok(None),
        Err(reason) => Err(ParseError {
            tag: Some(tag),
            reason,
        }),
    }
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
