//! The IMAP session core (RFC 3501 3, 6.1, 6.2), sans-IO: greeting,
//! CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN and AUTHENTICATE PLAIN
//! (with SASL-IR, RFC 4959), the not-authenticated and authenticated
//! states, and the "3 BADs in a row ends the session" rule of issue 13.
//!
//! Owns: which commands are allowed in which state, the tagged answers,
//! and the events the driver carries out (a password check, the TLS
//! switch, closing). Must not: touch sockets, files or clocks; the driver
//! says what the connection allows and how a password check ended.
//!
//! Not here yet: the mailbox commands (SELECT and after). They are
//! answered `NO [CANNOT]`, and their extensions are not advertised.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use super::super::sasl::{self, PlainError};
use super::capability::{capabilities, CapabilityContext};
use super::parser::{CommandReader, Input, RawLine};
use super::response::{self, Code, Status};
use super::types::{Command, CommandBody};

/// Three BADs in a row and the session ends (issue 13, item 8): a client
/// that sends no command we can read is not an IMAP client.
pub const MAX_BAD_IN_A_ROW: u32 = 3;

/// RFC 4648 base64; padding is optional because some clients drop it.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Extensions this core carries out today; `capability::capabilities`
/// lists the whole plan, and only these of it are advertised.
const IMPLEMENTED: &[&str] = &[
    "IMAP4rev1",
    "LITERAL+",
    "SASL-IR",
    "ID",
    "STARTTLS",
    "AUTH=PLAIN",
    "LOGINDISABLED",
];

/// What the driver knows of the connection.
#[derive(Debug, Clone)]
pub struct ImapParams {
    pub hostname: String,
    /// A TLS config exists and TLS is not on yet: STARTTLS is offered.
    pub starttls_available: bool,
    pub tls_active: bool,
    /// TLS, loopback, or `allow_plaintext_auth`.
    pub plaintext_login_allowed: bool,
    pub append_limit: u64,
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImapEvent {
    /// Check this password; answer with `login_ok` or `login_failed`.
    Authenticate { user: String, password: String },
    /// The OK to STARTTLS is queued: start TLS once it is flushed.
    StartTls,
    /// Flush, then close.
    Close,
}

/// Why a login failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    BadCredentials,
    /// The store could not be opened: try again later.
    Temporary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    NotAuthenticated,
    Authenticated { user: String },
    Logout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Wait {
    Nothing,
    /// AUTHENTICATE PLAIN sent `+ `: the next raw line is the response.
    SaslResponse {
        tag: String,
    },
    /// A password check of this tag is with the driver.
    Password {
        tag: String,
        user: String,
    },
    /// STARTTLS answered: nothing is read until the handshake starts.
    Tls,
}

pub struct ImapSession {
    params: ImapParams,
    reader: CommandReader,
    state: State,
    wait: Wait,
    bad_in_a_row: u32,
}

impl ImapSession {
    pub fn new(params: ImapParams) -> ImapSession {
        ImapSession {
            params,
            reader: CommandReader::new(),
            state: State::NotAuthenticated,
            wait: Wait::Nothing,
            bad_in_a_row: 0,
        }
    }

    pub fn greeting(&mut self, out: &mut Vec<u8>) {
        let caps = self.caps();
        let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
        let text = format!("{} mailgate IMAP ready", self.params.hostname);
        response::status(out, None, Status::Ok, Some(&Code::Capability(&caps)), &text);
    }

    /// The logged-in user, once authenticated.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            State::Authenticated { user } => Some(user),
            _ => None,
        }
    }

    pub fn wants_input(&self) -> bool {
        !matches!(self.wait, Wait::Password { .. } | Wait::Tls) && self.state != State::Logout
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Logout
    }

    fn caps(&self) -> Vec<String> {
        let ctx = CapabilityContext {
            authenticated: matches!(self.state, State::Authenticated { .. }),
            tls_active: self.params.tls_active,
            starttls_available: self.params.starttls_available,
            plaintext_login_allowed: self.params.plaintext_login_allowed,
            append_limit: self.params.append_limit,
        };
        capabilities(&ctx)
            .into_iter()
            .filter(|c| IMPLEMENTED.contains(&c.as_str()))
            .collect()
    }

    pub fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        if self.state == State::Logout || self.wait == Wait::Tls {
            return;
        }
        self.reader.feed(input);
        self.run(out, events);
    }

    fn run(&mut self, out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        loop {
            if self.state == State::Logout || !self.wants_input() {
                return;
            }
            if let Wait::SaslResponse { tag } = &self.wait {
                let tag = tag.clone();
                match self.reader.next_line() {
                    RawLine::NeedMore => return,
                    RawLine::TooLong => {
                        self.wait = Wait::Nothing;
                        self.bad(out, events, Some(&tag), "SASL response too long");
                    }
                    RawLine::Line(line) => {
                        self.wait = Wait::Nothing;
                        self.sasl_response(&tag, &line, out, events);
                    }
                }
                continue;
            }
            match self.reader.next_input() {
                Input::NeedMore => return,
                Input::Continue => response::continuation(out, "Ready for literal data"),
                Input::Command(cmd) => self.command(cmd, out, events),
                Input::Bad { tag, reason, close } => {
                    self.bad(out, events, tag.as_deref(), &reason);
                    if close {
                        self.close(out, events, "Literal too large");
                    }
                }
                Input::AppendStart(head) => {
                    self.reader.reject_append();
                    if self.user().is_none() {
                        self.bad(out, events, Some(&head.tag), "Log in first");
                    } else {
                        self.no(
                            out,
                            Some(&head.tag),
                            Code::Cannot,
                            "APPEND is not available yet",
                        );
                    }
                }
                // Never handed out after reject_append; nothing to keep.
                Input::AppendData(_) | Input::AppendDone { .. } => {}
            }
        }
    }

    fn ok(&mut self, out: &mut Vec<u8>, tag: &str, text: &str) {
        self.bad_in_a_row = 0;
        response::status(out, Some(tag), Status::Ok, None, text);
    }

    fn no(&mut self, out: &mut Vec<u8>, tag: Option<&str>, code: Code, text: &str) {
        self.bad_in_a_row = 0;
        response::status(out, tag, Status::No, Some(&code), text);
    }

    fn bad(
        &mut self,
        out: &mut Vec<u8>,
        events: &mut Vec<ImapEvent>,
        tag: Option<&str>,
        why: &str,
    ) {
        response::status(out, tag, Status::Bad, None, why);
        self.bad_in_a_row += 1;
        if self.bad_in_a_row >= MAX_BAD_IN_A_ROW && self.state != State::Logout {
            self.close(out, events, "Too many invalid commands");
        }
    }

    fn close(&mut self, out: &mut Vec<u8>, events: &mut Vec<ImapEvent>, why: &str) {
        response::status(out, None, Status::Bye, None, why);
        self.state = State::Logout;
        events.push(ImapEvent::Close);
    }

    fn command(&mut self, cmd: Command, out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        let tag = cmd.tag;
        let authed = self.user().is_some();
        match cmd.body {
            CommandBody::Capability => {
                let caps = self.caps();
                let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
                response::capability(out, &caps);
                self.ok(out, &tag, "CAPABILITY completed");
            }
            CommandBody::Noop => self.ok(out, &tag, "NOOP completed"),
            CommandBody::Logout => {
                response::status(out, None, Status::Bye, None, "Logging out");
                self.ok(out, &tag, "LOGOUT completed");
                self.state = State::Logout;
                events.push(ImapEvent::Close);
            }
            CommandBody::Id(_) => {
                out.extend_from_slice(b"* ID (\"name\" \"mailgate\")\r\n");
                self.ok(out, &tag, "ID completed");
            }
            CommandBody::StartTls if authed => {
                self.bad(out, events, Some(&tag), "Already logged in")
            }
            CommandBody::StartTls => {
                if self.params.tls_active || !self.params.starttls_available {
                    self.bad(out, events, Some(&tag), "STARTTLS not available");
                    return;
                }
                self.ok(out, &tag, "Begin TLS negotiation now");
                self.wait = Wait::Tls;
                events.push(ImapEvent::StartTls);
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. } if authed => {
                self.bad(out, events, Some(&tag), "Already logged in")
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. }
                if !self.params.plaintext_login_allowed =>
            {
                self.no(
                    out,
                    Some(&tag),
                    Code::PrivacyRequired,
                    "Use TLS (STARTTLS or IMAPS) to log in",
                );
            }
            CommandBody::Login { user, password } => self.check(tag, user, password, events),
            CommandBody::Authenticate { mechanism, initial } => {
                if !mechanism.eq_ignore_ascii_case("PLAIN") {
                    self.no(
                        out,
                        Some(&tag),
                        Code::Cannot,
                        "Only AUTHENTICATE PLAIN is offered",
                    );
                    return;
                }
                match initial {
                    Some(ir) => self.sasl_response(&tag, ir.as_bytes(), out, events),
                    None => {
                        response::sasl_challenge(out, "");
                        self.wait = Wait::SaslResponse { tag };
                    }
                }
            }
            _ if !authed => self.bad(out, events, Some(&tag), "Log in first"),
            _ => self.no(
                out,
                Some(&tag),
                Code::Cannot,
                "Not available yet in this version",
            ),
        }
    }

    /// A PLAIN response, base64 (`=` is empty, `*` cancels: RFC 3501 6.2.2).
    fn sasl_response(
        &mut self,
        tag: &str,
        b64: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<ImapEvent>,
    ) {
        if b64 == b"*" {
            self.bad(out, events, Some(tag), "AUTHENTICATE cancelled");
            return;
        }
        let decoded = if b64 == b"=" {
            Ok(Vec::new())
        } else {
            B64.decode(b64)
        };
        let Ok(decoded) = decoded else {
            self.bad(out, events, Some(tag), "Invalid base64");
            return;
        };
        match sasl::parse_plain(&decoded) {
            Ok(p) => self.check(tag.to_string(), p.authcid, p.password, events),
            Err(PlainError::Malformed) => {
                self.bad(out, events, Some(tag), "Invalid PLAIN response")
            }
            Err(_) => self.no(
                out,
                Some(tag),
                Code::AuthenticationFailed,
                "Authorization identity must be the login",
            ),
        }
    }

    fn check(&mut self, tag: String, user: String, password: String, events: &mut Vec<ImapEvent>) {
        self.bad_in_a_row = 0;
        self.wait = Wait::Password {
            tag,
            user: user.clone(),
        };
        events.push(ImapEvent::Authenticate { user, password });
    }

    /// The password was right; `mailbox` is the account logged in.
    pub fn login_ok(&mut self, mailbox: String, out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        let Wait::Password { tag, .. } = std::mem::replace(&mut self.wait, Wait::Nothing) else {
            return;
        };
        self.state = State::Authenticated { user: mailbox };
        let caps = self.caps();
        let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
        response::status(
            out,
            Some(&tag),
            Status::Ok,
            Some(&Code::Capability(&caps)),
            "Logged in",
        );
        self.run(out, events);
    }

    pub fn login_failed(
        &mut self,
        why: LoginFailure,
        out: &mut Vec<u8>,
        events: &mut Vec<ImapEvent>,
    ) {
        let Wait::Password { tag, .. } = std::mem::replace(&mut self.wait, Wait::Nothing) else {
            return;
        };
        match why {
            LoginFailure::BadCredentials => self.no(
                out,
                Some(&tag),
                Code::AuthenticationFailed,
                "Authentication failed",
            ),
            LoginFailure::Temporary => {
                self.no(out, Some(&tag), Code::Unavailable, "Try again later")
            }
        }
        self.run(out, events);
    }

    /// The TLS handshake started: what the client sent in plaintext after
    /// STARTTLS is dropped (a man in the middle could have put it there).
    pub fn tls_started(&mut self, out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        self.reader = CommandReader::new();
        self.params.tls_active = true;
        self.params.starttls_available = false;
        self.params.plaintext_login_allowed = true;
        if self.wait == Wait::Tls {
            self.wait = Wait::Nothing;
        }
        self.run(out, events);
    }

    /// The idle timer ran out (RFC 3501 5.4).
    pub fn timed_out(&mut self, out: &mut Vec<u8>) {
        if self.state != State::Logout {
            response::status(
                out,
                None,
                Status::Bye,
                None,
                "Autologout; idle for too long",
            );
            self.state = State::Logout;
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
