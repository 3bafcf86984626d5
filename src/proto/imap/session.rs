//! The IMAP session core (RFC 3501 3: Not Authenticated, Authenticated,
//! Selected, Logout), sans-IO.
//!
//! Owns: the greeting, the state every command is allowed in, the
//! commands that need nothing from the store (CAPABILITY, NOOP outside a
//! mailbox, LOGOUT, ID, STARTTLS, ENABLE, NAMESPACE), the login exchange
//! (LOGIN, AUTHENTICATE PLAIN with SASL-IR, RFC 4959), IDLE's `DONE`, the
//! rule that three BADs in a row end the session, and handing every other
//! command to the driver as an event (the driver answers it from the
//! store and tells the core when it is done).
//!
//! Must not: touch sockets, files or clocks, or import anything of the
//! crate outside `proto`.

use base64::Engine as _;

use super::capability::{capabilities, CapabilityContext};
use super::parser::{AppendHead, CommandReader, Input, RawLine};
use super::response::{self, Code, Status};
use super::types::{Command, CommandBody};
use crate::proto::sasl;

/// Issue 13: three BADs in a row end the session (a client that speaks
/// something else, or a fuzzer). Only lines that are no IMAP command at
/// all count (no tag, an unknown command): an IMAP client trying
/// options the server lacks gets BAD for each and stays (imaptest's
/// `listext` sends four such in a row; Dovecot allows them).
pub const MAX_BADS_IN_A_ROW: u32 = 3;

/// Whether a parse error is of a line that is no IMAP command.
fn not_imap(tag: Option<&str>, reason: &str) -> bool {
    tag.is_none() || reason.starts_with("unknown command") || reason == "expected a command"
}

/// What the connection allows; the driver decides.
#[derive(Debug, Clone)]
pub struct SessionParams {
    pub hostname: String,
    pub starttls_available: bool,
    pub tls_active: bool,
    pub plaintext_login_allowed: bool,
    pub append_limit: u64,
}

/// Work for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum ImapEvent {
    /// Check this password (on a worker), then call `login_done`.
    Login {
        tag: String,
        user: String,
        password: String,
    },
    /// The OK to STARTTLS is queued: start TLS once it is sent.
    StartTls,
    /// A command for the store: answer it, then call `command_done`.
    Run(Command),
    /// An APPEND's message: accept or reject it with `append_accept` /
    /// `append_reject`, then take data until `AppendDone`.
    AppendStart(AppendHead),
    AppendData(Vec<u8>),
    AppendDone {
        tag: String,
    },
    /// The client said `DONE` to IDLE: send the tagged OK (after the
    /// pending updates) and call `command_done`.
    IdleDone {
        tag: String,
    },
    /// Flush and close.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    NotAuthenticated,
    Authenticated,
    Selected,
    Logout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Wait {
    /// Reading commands.
    Nothing,
    /// The driver carries out a command.
    Driver,
    /// AUTHENTICATE PLAIN sent `+ `: the response line is due.
    Sasl { tag: String },
    /// IDLE: `DONE` is due.
    Idle { tag: String },
    /// An APPEND's literal is being handed out.
    Append,
}

pub struct ImapSession {
    reader: CommandReader,
    params: SessionParams,
    state: State,
    wait: Wait,
    bads: u32,
    /// RFC 5161 ENABLE: CONDSTORE, QRESYNC.
    pub condstore: bool,
    pub qresync: bool,
}

impl ImapSession {
    pub fn new(params: SessionParams) -> ImapSession {
        ImapSession {
            reader: CommandReader::new(),
            params,
            state: State::NotAuthenticated,
            wait: Wait::Nothing,
            bads: 0,
            condstore: false,
            qresync: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    fn caps(&self) -> Vec<String> {
        capabilities(&CapabilityContext {
            authenticated: self.state != State::NotAuthenticated,
            tls_active: self.params.tls_active,
            starttls_available: self.params.starttls_available,
            plaintext_login_allowed: self.params.plaintext_login_allowed,
            append_limit: self.params.append_limit,
        })
    }

    /// RFC 3501 7.1.1: `* OK [CAPABILITY ...] ready`.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        let caps = self.caps();
        let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
        let text = format!("{} mailgate IMAP ready", self.params.hostname);
        response::status(out, None, Status::Ok, Some(&Code::Capability(&refs)), &text);
    }

    pub fn wants_input(&self) -> bool {
        !matches!(self.wait, Wait::Driver) && self.state != State::Logout
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Logout
    }

    pub fn is_idling(&self) -> bool {
        matches!(self.wait, Wait::Idle { .. })
    }

    pub fn tls_started(&mut self) {
        self.params.tls_active = true;
        self.params.plaintext_login_allowed = true;
    }

    /// Bytes from the client.
    pub fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        self.reader.feed(input);
        self.run(out, events);
    }

    /// Works through buffered input until the core must wait.
    pub fn run(&mut self, out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        while self.state != State::Logout {
            match self.wait.clone() {
                Wait::Driver => return,
                Wait::Sasl { tag } => match self.reader.next_line() {
                    RawLine::NeedMore => return,
                    RawLine::TooLong => {
                        self.wait = Wait::Nothing;
                        response::status(out, Some(&tag), Status::Bad, None, "Response too long");
                    }
                    RawLine::Line(line) => {
                        self.wait = Wait::Nothing;
                        if line == b"*" {
                            response::status(
                                out,
                                Some(&tag),
                                Status::Bad,
                                None,
                                "AUTHENTICATE cancelled",
                            );
                        } else {
                            self.plain_response(tag, &line, out, events);
                        }
                    }
                },
                Wait::Idle { tag } => match self.reader.next_line() {
                    RawLine::NeedMore => return,
                    RawLine::Line(l) if l.eq_ignore_ascii_case(b"DONE") => {
                        self.wait = Wait::Driver;
                        events.push(ImapEvent::IdleDone { tag });
                        return;
                    }
                    RawLine::Line(_) | RawLine::TooLong => {
                        // RFC 2177 3: anything but DONE ends IDLE with BAD.
                        self.wait = Wait::Driver;
                        events.push(ImapEvent::IdleDone { tag: tag.clone() });
                        return;
                    }
                },
                Wait::Append => match self.reader.next_input() {
                    Input::NeedMore => return,
                    Input::AppendData(d) => events.push(ImapEvent::AppendData(d)),
                    Input::AppendDone { tag } => {
                        self.wait = Wait::Driver;
                        events.push(ImapEvent::AppendDone { tag });
                        return;
                    }
                    Input::Bad { tag, reason, close } => {
                        // The message literal was not followed by CRLF.
                        self.wait = Wait::Driver;
                        events.push(ImapEvent::AppendDone { tag: String::new() });
                        self.bad(tag.as_deref(), &reason, close, out, events);
                        return;
                    }
                    _ => return,
                },
                Wait::Nothing => match self.reader.next_input() {
                    Input::NeedMore => return,
                    Input::Continue => response::continuation(out, "Ready for literal data"),
                    Input::Bad { tag, reason, close } => {
                        self.bad(tag.as_deref(), &reason, close, out, events)
                    }
                    Input::No { tag, reason } => {
                        self.bads = 0;
                        // No code: Dovecot gives none (the name is not
                        // one that could exist).
                        if self.state == State::NotAuthenticated {
                            response::status(out, Some(&tag), Status::Bad, None, "Log in first");
                        } else {
                            response::status(out, Some(&tag), Status::No, None, &reason);
                        }
                    }
                    Input::Command(cmd) => {
                        self.bads = 0;
                        self.command(cmd, out, events);
                    }
                    Input::AppendStart(head) => {
                        self.bads = 0;
                        if self.state == State::NotAuthenticated {
                            self.reader.reject_append();
                            response::status(
                                out,
                                Some(&head.tag),
                                Status::Bad,
                                None,
                                "Log in first",
                            );
                            continue;
                        }
                        self.wait = Wait::Driver;
                        events.push(ImapEvent::AppendStart(head));
                        return;
                    }
                    Input::AppendData(_) | Input::AppendDone { .. } => return,
                },
            }
        }
    }

    fn bad(
        &mut self,
        tag: Option<&str>,
        reason: &str,
        close: bool,
        out: &mut Vec<u8>,
        events: &mut Vec<ImapEvent>,
    ) {
        response::status(out, tag, Status::Bad, None, reason);
        if !not_imap(tag, reason) && !close {
            return;
        }
        self.bads += 1;
        if close || self.bads >= MAX_BADS_IN_A_ROW {
            response::status(out, None, Status::Bye, None, "Too many errors");
            self.logout(events);
        }
    }

    fn logout(&mut self, events: &mut Vec<ImapEvent>) {
        self.state = State::Logout;
        self.wait = Wait::Nothing;
        events.push(ImapEvent::Close);
    }

    fn command(&mut self, cmd: Command, out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        let tag = cmd.tag.clone();
        let t = Some(tag.as_str());
        use CommandBody as C;
        match (&cmd.body, self.state) {
            (C::Capability, _) => {
                let caps = self.caps();
                let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
                response::capability(out, &refs);
                response::status(out, t, Status::Ok, None, "CAPABILITY completed");
            }
            (C::Logout, _) => {
                response::status(out, None, Status::Bye, None, "Logging out");
                response::status(out, t, Status::Ok, None, "LOGOUT completed");
                self.logout(events);
            }
            (C::Noop, State::NotAuthenticated | State::Authenticated) => {
                response::status(out, t, Status::Ok, None, "NOOP completed");
            }
            (C::Id(_), _) => {
                out.extend_from_slice(b"* ID (\"name\" \"mailgate\")\r\n");
                response::status(out, t, Status::Ok, None, "ID completed");
            }
            (C::StartTls, State::NotAuthenticated) => {
                if self.params.tls_active || !self.params.starttls_available {
                    response::status(out, t, Status::Bad, None, "TLS is not available here");
                } else {
                    response::status(out, t, Status::Ok, None, "Begin TLS negotiation now");
                    events.push(ImapEvent::StartTls);
                }
            }
            (C::Login { user, password }, State::NotAuthenticated) => {
                if !self.params.plaintext_login_allowed {
                    response::status(
                        out,
                        t,
                        Status::No,
                        Some(&Code::PrivacyRequired),
                        "Use STARTTLS first",
                    );
                } else {
                    self.wait = Wait::Driver;
                    events.push(ImapEvent::Login {
                        tag,
                        user: user.clone(),
                        password: password.clone(),
                    });
                }
            }
            (C::Authenticate { mechanism, initial }, State::NotAuthenticated) => {
                if !mechanism.eq_ignore_ascii_case("PLAIN") {
                    response::status(out, t, Status::No, None, "Unsupported mechanism");
                } else if !self.params.plaintext_login_allowed {
                    response::status(
                        out,
                        t,
                        Status::No,
                        Some(&Code::PrivacyRequired),
                        "Use STARTTLS first",
                    );
                } else if let Some(ir) = initial {
                    let ir = ir.clone();
                    self.plain_response(tag, ir.as_bytes(), out, events);
                } else {
                    response::sasl_challenge(out, "");
                    self.wait = Wait::Sasl { tag };
                }
            }
            (C::StartTls | C::Login { .. } | C::Authenticate { .. }, _) => {
                response::status(out, t, Status::Bad, None, "Already authenticated");
            }
            (_, State::NotAuthenticated) => {
                response::status(out, t, Status::Bad, None, "Log in first");
            }
            (C::Enable(caps), _) => {
                let mut on = Vec::new();
                for c in caps {
                    if c.eq_ignore_ascii_case("CONDSTORE") && !self.condstore {
                        self.condstore = true;
                        on.push("CONDSTORE");
                    } else if c.eq_ignore_ascii_case("QRESYNC") && !self.qresync {
                        // RFC 7162 3.2.3: QRESYNC implies CONDSTORE.
                        self.qresync = true;
                        self.condstore = true;
                        on.push("QRESYNC");
                    }
                }
                response::enabled(out, &on);
                response::status(out, t, Status::Ok, None, "ENABLE completed");
            }
            (C::Namespace, _) => {
                out.extend_from_slice(b"* NAMESPACE ((\"\" \".\")) NIL NIL\r\n");
                response::status(out, t, Status::Ok, None, "NAMESPACE completed");
            }
            (
                C::Check
                | C::Close
                | C::Unselect
                | C::Expunge
                | C::UidExpunge(_)
                | C::Search { .. }
                | C::Fetch { .. }
                | C::Store { .. }
                | C::Copy { .. }
                | C::Move { .. },
                State::Authenticated,
            ) => {
                response::status(out, t, Status::Bad, None, "No mailbox selected");
            }
            // RFC 7162 3.2.5, 3.2.6: QRESYNC's SELECT parameter and
            // UID FETCH's VANISHED are BAD until ENABLE QRESYNC.
            (C::Select { params, .. } | C::Examine { params, .. }, _)
                if params.qresync.is_some() && !self.qresync =>
            {
                response::status(out, t, Status::Bad, None, "QRESYNC is not enabled");
            }
            (C::Fetch { vanished: true, .. }, _) if !self.qresync => {
                response::status(out, t, Status::Bad, None, "QRESYNC is not enabled");
            }
            (C::Idle, _) => {
                response::continuation(out, "idling");
                self.wait = Wait::Idle { tag };
                // The driver learns from `is_idling`; it sends updates as
                // they come.
                events.push(ImapEvent::Run(cmd));
            }
            _ => {
                self.wait = Wait::Driver;
                events.push(ImapEvent::Run(cmd));
            }
        }
    }

    fn plain_response(
        &mut self,
        tag: String,
        b64: &[u8],
        out: &mut Vec<u8>,
        events: &mut Vec<ImapEvent>,
    ) {
        let decoded = if b64 == b"=" {
            Ok(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(b64)
        };
        let plain = match decoded {
            Ok(d) => sasl::parse_plain(&d),
            Err(_) => {
                response::status(out, Some(&tag), Status::Bad, None, "Invalid base64");
                return;
            }
        };
        match plain {
            Ok(p) => {
                self.wait = Wait::Driver;
                events.push(ImapEvent::Login {
                    tag,
                    user: p.authcid,
                    password: p.password,
                });
            }
            Err(_) => response::status(
                out,
                Some(&tag),
                Status::No,
                Some(&Code::AuthenticationFailed),
                "Invalid PLAIN response",
            ),
        }
    }

    /// The password check of `Login` came back.
    pub fn login_done(&mut self, tag: &str, ok: bool, out: &mut Vec<u8>) {
        self.wait = Wait::Nothing;
        if ok {
            self.state = State::Authenticated;
            let caps = self.caps();
            let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
            response::status(
                out,
                Some(tag),
                Status::Ok,
                Some(&Code::Capability(&refs)),
                "Logged in",
            );
        } else {
            response::status(
                out,
                Some(tag),
                Status::No,
                Some(&Code::AuthenticationFailed),
                "Authentication failed",
            );
        }
    }

    /// The driver answered the command; `state` is the state it left
    /// (Selected after a good SELECT, Authenticated after CLOSE).
    pub fn command_done(&mut self, state: State) {
        if self.state != State::Logout {
            self.state = state;
            self.wait = Wait::Nothing;
        }
    }

    /// Ends the session from the driver's side (UIDVALIDITY changed, a
    /// read failed mid-response, shutdown).
    pub fn close(&mut self, events: &mut Vec<ImapEvent>) {
        self.logout(events);
    }

    pub fn append_accept(&mut self) {
        self.reader.accept_append();
        self.wait = Wait::Append;
    }

    pub fn append_reject(&mut self) {
        self.reader.reject_append();
        self.wait = Wait::Nothing;
    }

    pub fn append_abort(&mut self) {
        self.reader.abort_append();
        self.wait = Wait::Nothing;
    }

    /// Octets buffered and not yet parsed.
    pub fn buffered(&self) -> usize {
        self.reader.buffered()
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
