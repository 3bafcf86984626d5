//! Driver for one inbound IMAP connection (plain with STARTTLS, or imaps).
//!
//! Owns: the socket (through the shared inbound pump), the sans-IO
//! `ImapSession`, the selected folder between commands, the APPEND
//! literal on its way in, and handing password checks and every store
//! command to the workers (`imap_jobs`). IDLE: the driver watches its
//! mailbox (`store::mailboxes`), so an SMTP delivery, a POP3 QUIT or
//! another IMAP session's change wakes it, and a worker re-syncs the
//! folder and writes the untagged updates.
//! Must not: parse IMAP itself, or touch a file on the loop thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::TcpStream;
use mio::Interest;

use super::imap_append::{self, AppendBody, AppendJob, AppendSink, AppendSpool};
use super::imap_jobs::{self, Account, Done, FetchRest, Modes, Selected};
use super::pump::{Inbound, Pumped, ServerCore};
use super::{Ctx, Driver, IdleClock, ListenerKind, Outcome};
use crate::net::canonical_ip;
use crate::proto::imap::response::{self, Code, Status};
use crate::proto::imap::session::{ImapEvent, ImapSession, SessionParams};
use crate::proto::imap::types::CommandBody;
use crate::store::mailbox::{Known, SpecialUse};
use crate::store::maildir::Maildir;

/// A failed login is answered after this pause.
const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// A FETCH continues once the socket holds less than this.
const FETCH_LOW_WATER: usize = 64 * 1024;

/// What a worker sends back to an IMAP driver.
pub enum ImapOutcome {
    Password(bool),
    /// The special-use folders are there (first login).
    Prepared(std::io::Result<()>),
    Done(Box<Done>),
    /// An APPEND chunk's write came back (None: a spool file removed).
    AppendWritten(Option<std::io::Result<AppendSpool>>),
}

impl ServerCore for ImapSession {
    type Event = ImapEvent;
    fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<ImapEvent>) {
        ImapSession::receive(self, input, out, events);
    }
    fn wants_input(&self) -> bool {
        ImapSession::wants_input(self)
    }
    fn is_closed(&self) -> bool {
        ImapSession::is_closed(self)
    }
    fn tls_started(&mut self, _out: &mut Vec<u8>, _events: &mut Vec<ImapEvent>) {
        ImapSession::tls_started(self);
    }
    fn answers(e: &ImapEvent) -> bool {
        !matches!(e, ImapEvent::AppendData(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Password(String),
    Prepare(String),
    /// A command's job; `command`: the core waits for its end (false for
    /// an IDLE update poll).
    Job {
        command: bool,
    },
    FailureDelay(Instant, String),
}

pub struct ImapIn {
    io: Inbound<ImapSession>,
    waiting: Waiting,
    mailbox: Option<String>,
    login_user: Option<String>,
    acct: Option<Account>,
    selected: Option<Selected>,
    modes: Modes,
    /// IDLE is on (its tag).
    idle_tag: Option<String>,
    /// DONE came while an update poll ran.
    idle_done: Option<String>,
    /// A change was announced while a job ran: poll after it.
    poll_due: bool,
    fetch_rest: Option<Box<FetchRest>>,
    append: Option<AppendSink>,
    login_by: Option<Instant>,
}

impl ImapIn {
    pub fn new(kind: ListenerKind, sock: TcpStream, peer: SocketAddr, cx: &mut Ctx) -> ImapIn {
        let ip = canonical_ip(peer.ip());
        let config = Arc::clone(cx.config());
        let implicit_tls = kind == ListenerKind::Imaps;
        let params = SessionParams {
            hostname: config.server.hostname.clone(),
            starttls_available: !implicit_tls,
            tls_active: implicit_tls,
            plaintext_login_allowed: implicit_tls
                || config.smtp.allow_plaintext_auth
                || ip.is_loopback(),
            append_limit: config.smtp.max_message_size,
        };
        let idle = IdleClock::new(cx.now, config.imap.timeout);
        let tls = implicit_tls.then_some(&cx.sv.tls);
        let core = ImapSession::new(params);
        let mut io = Inbound::accept(sock, peer, core, idle, kind.name(), tls);
        io.core.greeting(&mut io.out);
        info!("{} connect from {peer}", kind.name());
        ImapIn {
            io,
            waiting: Waiting::Nothing,
            mailbox: None,
            login_user: None,
            acct: None,
            selected: None,
            modes: Modes::default(),
            idle_tag: None,
            idle_done: None,
            poll_due: false,
            fetch_rest: None,
            append: None,
            login_by: Some(cx.now + config.smtp.login_timeout),
        }
    }

    fn pump(&mut self, cx: &mut Ctx) {
        loop {
            self.continue_fetch(cx);
            // An APPEND chunk on its way to disk: no more is read until
            // it is there (at most a chunk and a read held).
            let may_read = matches!(self.waiting, Waiting::Nothing)
                && self.fetch_rest.is_none()
                && !self.append_busy();
            match self.io.pump(&cx.sv.tls, may_read, cx.now) {
                Pumped::Events => self.handle_events(cx),
                // The socket took what was queued: the next FETCH piece
                // is due now, no writable event would come for it.
                Pumped::Waiting if self.fetch_due() => continue,
                Pumped::Waiting => return,
                Pumped::Closed => {
                    self.release(cx);
                    return;
                }
            }
        }
    }

    fn modes(&self) -> Modes {
        Modes {
            condstore: self.modes.condstore || self.io.core.condstore,
            qresync: self.io.core.qresync,
        }
    }

    /// A FETCH has more to send and the socket has taken most of the
    /// last piece (queued or not yet handed over: the file is read no
    /// further ahead of the socket than this).
    fn fetch_due(&self) -> bool {
        let unsent = self.io.out.len() + self.io.t.pending_output();
        self.fetch_rest.is_some() && self.waiting == Waiting::Nothing && unsent <= FETCH_LOW_WATER
    }

    /// The next piece of a long FETCH, once the socket has taken the last.
    fn continue_fetch(&mut self, cx: &mut Ctx) {
        if !self.fetch_due() {
            return;
        }
        let Some(rest) = self.fetch_rest.take() else {
            return;
        };
        let Some(sel) = self.selected.take() else {
            return;
        };
        let modes = self.modes();
        self.waiting = Waiting::Job { command: true };
        cx.submit_quick(move || {
            Outcome::Imap(Box::new(ImapOutcome::Done(Box::new(
                imap_jobs::fetch_continue(sel, modes, rest),
            ))))
        });
    }

    fn handle_events(&mut self, cx: &mut Ctx) {
        // Carrying out one event can let the core go on and make more.
        while !self.io.events.is_empty() {
            self.handle_some_events(cx);
        }
    }

    fn handle_some_events(&mut self, cx: &mut Ctx) {
        for event in std::mem::take(&mut self.io.events) {
            match event {
                ImapEvent::Login {
                    tag,
                    user,
                    password,
                } => {
                    let ip = canonical_ip(self.io.t.peer().ip());
                    if !cx.begin_login(ip) {
                        info!(
                            "imap {}: login refused for {user:?}: too many failed logins",
                            self.io.t.peer()
                        );
                        self.io.core.login_done(&tag, false, &mut self.io.out);
                        self.io.core.close(&mut Vec::new());
                        self.io.closing = true;
                        continue;
                    }
                    let config = Arc::clone(cx.config());
                    self.mailbox = config.find_login(&user).map(|m| m.address.clone());
                    self.login_user = Some(user.clone());
                    self.waiting = Waiting::Password(tag);
                    cx.submit_quick(move || {
                        let ok = super::check_login(&config, &user, &password);
                        Outcome::Imap(Box::new(ImapOutcome::Password(ok)))
                    });
                }
                ImapEvent::StartTls => self.io.start_tls_after_flush(),
                ImapEvent::Run(cmd) => {
                    if cmd.body == CommandBody::Idle {
                        self.idle_tag = Some(cmd.tag);
                        self.submit_poll(cx);
                        continue;
                    }
                    let (Some(acct), false) = (self.acct.clone(), self.waiting != Waiting::Nothing)
                    else {
                        response::status(
                            &mut self.io.out,
                            Some(&cmd.tag),
                            Status::No,
                            Some(&Code::ServerBug),
                            "Busy",
                        );
                        self.io.core.command_done(self.io.core.state());
                        continue;
                    };
                    let sel = self.selected.take();
                    let modes = self.modes();
                    self.waiting = Waiting::Job { command: true };
                    let quick = matches!(
                        cmd.body,
                        CommandBody::Fetch { .. }
                            | CommandBody::Search { .. }
                            | CommandBody::List(_)
                            | CommandBody::Lsub { .. }
                            | CommandBody::Status { .. }
                            | CommandBody::Noop
                            | CommandBody::Check
                            | CommandBody::Unselect
                            | CommandBody::Examine { .. }
                    );
                    // A few Arc clones: what other sessions hold of this
                    // account's folders, so a SELECT may skip its scan.
                    let known = match cmd.body {
                        CommandBody::Select { .. } | CommandBody::Examine { .. } => {
                            cx.sv.imap_snapshots.under(&acct.root)
                        }
                        _ => Known::default(),
                    };
                    let job = move || {
                        Outcome::Imap(Box::new(ImapOutcome::Done(Box::new(imap_jobs::run(
                            &acct, sel, modes, cmd, &known,
                        )))))
                    };
                    if quick {
                        cx.submit_quick(job);
                    } else {
                        cx.submit(job);
                    }
                }
                ImapEvent::AppendStart(head) => {
                    let limit = cx.config().smtp.max_message_size;
                    if u64::from(head.size) > limit {
                        self.io.core.append_reject();
                        response::status(
                            &mut self.io.out,
                            Some(&head.tag),
                            Status::No,
                            Some(&Code::TooBig),
                            "Message too large",
                        );
                    } else {
                        self.io.core.append_accept();
                        if head.sync {
                            response::continuation(&mut self.io.out, "Ready for literal data");
                        }
                        let root = self.acct.as_ref().map(|a| a.root.clone());
                        self.append = Some(AppendSink::new(head, root.unwrap_or_default()));
                    }
                    self.resume(cx);
                }
                ImapEvent::AppendData(d) => {
                    if let Some(a) = &mut self.append {
                        let next = a.data(&d);
                        self.append_next(next, cx);
                    }
                }
                ImapEvent::AppendDone { tag } => {
                    if tag.is_empty() {
                        // The command line after the literal was bad.
                        if let Some(job) = self.append.as_mut().and_then(AppendSink::close) {
                            self.submit_append(job, cx);
                        }
                        self.io.core.command_done(self.io.core.state());
                        continue;
                    }
                    // Carried on in `store_append` (now, or once the
                    // chunk being written is back).
                    self.waiting = Waiting::Job { command: true };
                    if let Some(a) = &mut self.append {
                        let next = a.end();
                        self.append_next(next, cx);
                    }
                }
                ImapEvent::IdleDone { tag } => {
                    self.idle_tag = None;
                    if matches!(self.waiting, Waiting::Job { .. }) {
                        self.idle_done = Some(tag);
                    } else {
                        self.end_idle(&tag);
                    }
                }
                ImapEvent::Close => self.io.closing = true,
            }
        }
    }

    fn end_idle(&mut self, tag: &str) {
        response::status(
            &mut self.io.out,
            Some(tag),
            Status::Ok,
            None,
            "IDLE terminated",
        );
        let st = self.io.core.state();
        self.io.core.command_done(st);
        self.io.core.run(&mut self.io.out, &mut self.io.events);
    }

    /// Feeds the core what it has buffered, now that it may go on.
    fn resume(&mut self, _cx: &mut Ctx) {
        self.io.core.run(&mut self.io.out, &mut self.io.events);
    }

    /// IDLE: a worker re-syncs the folder and writes what changed.
    fn submit_poll(&mut self, cx: &mut Ctx) {
        if self.waiting != Waiting::Nothing {
            self.poll_due = true;
            return;
        }
        let Some(sel) = self.selected.take() else {
            return;
        };
        self.poll_due = false;
        let modes = self.modes();
        self.waiting = Waiting::Job { command: false };
        cx.submit_quick(move || {
            Outcome::Imap(Box::new(ImapOutcome::Done(Box::new(imap_jobs::poll(
                sel, modes,
            )))))
        });
    }

    fn release(&mut self, cx: &mut Ctx) {
        cx.sv.mailboxes.unwatch(cx.token.0);
        // Gone mid-APPEND: the spool file goes (now, or when its write
        // is back: the sink stays until then).
        if let Some(job) = self.append.as_mut().and_then(AppendSink::close) {
            self.submit_append(job, cx);
        }
    }

    fn append_busy(&self) -> bool {
        self.append.as_ref().is_some_and(AppendSink::busy)
    }

    /// Runs an APPEND's disk work on a worker.
    fn submit_append(&mut self, job: AppendJob, cx: &mut Ctx) {
        cx.submit(move || Outcome::Imap(Box::new(ImapOutcome::AppendWritten(job.run()))));
    }

    fn append_next(&mut self, next: imap_append::Next, cx: &mut Ctx) {
        match next {
            imap_append::Next::Nothing => {}
            imap_append::Next::Job(job) => self.submit_append(job, cx),
            imap_append::Next::Store(body) => {
                self.append = None;
                self.store_append(body, cx);
            }
        }
    }

    /// The whole literal is in: the store appends it (the tagged answer
    /// comes with the job's end, `waiting` is already set).
    fn store_append(&mut self, body: AppendBody, cx: &mut Ctx) {
        let Some(acct) = self.acct.clone() else {
            if let Some(s) = body.spool {
                self.submit_append(AppendJob::Remove(s), cx);
            }
            return;
        };
        let sel = self.selected.take();
        let modes = self.modes();
        let tag = body.head.tag.clone();
        cx.submit(move || {
            Outcome::Imap(Box::new(ImapOutcome::Done(Box::new(imap_jobs::append(
                &acct, sel, modes, &tag, body,
            )))))
        });
    }

    fn job_done(&mut self, done: Done, command: bool, cx: &mut Ctx) {
        self.io.out.extend_from_slice(&done.out);
        self.selected = done.selected;
        if let Some(sel) = &mut self.selected {
            let snap = std::sync::Arc::clone(&sel.snap);
            sel.snap = cx.sv.imap_snapshots.share(sel.folder.dir(), snap);
        }
        self.modes.condstore |= done.modes.condstore;
        if done.changed {
            if let Some(m) = &self.mailbox {
                cx.sv.mailboxes.changed(m, Some(cx.token.0));
            }
        }
        if done.close {
            self.io.core.close(&mut self.io.events);
            self.io.closing = true;
            return;
        }
        if let Some(rest) = done.more {
            self.fetch_rest = Some(rest);
            return;
        }
        if command {
            self.io.core.command_done(done.state);
            self.io.core.run(&mut self.io.out, &mut self.io.events);
        } else if let Some(tag) = self.idle_done.take() {
            self.end_idle(&tag);
        }
        if self.poll_due && self.idle_tag.is_some() {
            self.submit_poll(cx);
        }
    }
}

impl Driver for ImapIn {
    fn ready(&mut self, cx: &mut Ctx) {
        // Woken by a change to the mailbox (or the socket) while in IDLE.
        if self.idle_tag.is_some() {
            self.poll_due = true;
            if self.waiting == Waiting::Nothing {
                self.submit_poll(cx);
            }
        }
        self.pump(cx);
    }

    fn complete(&mut self, done: Outcome, cx: &mut Ctx) {
        let Outcome::Imap(answer) = done else {
            return;
        };
        if let ImapOutcome::AppendWritten(r) = *answer {
            // Not a command's job: `waiting` is left as it is.
            if let (Some(r), Some(a)) = (r, &mut self.append) {
                let next = a.written(r);
                self.append_next(next, cx);
            }
            if self.append.as_ref().is_some_and(AppendSink::closed) && !self.append_busy() {
                self.append = None;
            }
            if !self.io.is_done() {
                self.handle_events(cx);
                self.pump(cx);
            }
            return;
        }
        let waiting = std::mem::replace(&mut self.waiting, Waiting::Nothing);
        if self.io.is_done() {
            return;
        }
        match (*answer, waiting) {
            (ImapOutcome::Password(ok), Waiting::Password(tag)) => {
                let user = self.login_user.take().unwrap_or_default();
                let ip = canonical_ip(self.io.t.peer().ip());
                cx.end_login(ip, ok && self.mailbox.is_some());
                let config = Arc::clone(cx.config());
                let acct = match (ok, &self.mailbox) {
                    (true, Some(m)) => match Maildir::for_mailbox(&config.server.data_dir, m) {
                        Ok(md) => Some(Account {
                            root: md.root().to_path_buf(),
                            special: SpecialUse::ALL
                                .iter()
                                .zip(config.imap.special.iter())
                                .map(|(u, n)| (*u, n.clone()))
                                .collect(),
                            append_limit: config.smtp.max_message_size,
                            locks: Arc::clone(&cx.sv.mailbox_locks),
                        }),
                        Err(e) => {
                            warn!("imap {}: bad mailbox {m}: {e}", self.io.t.peer());
                            None
                        }
                    },
                    _ => None,
                };
                match acct {
                    Some(acct) => {
                        self.acct = Some(acct.clone());
                        self.waiting = Waiting::Prepare(tag);
                        cx.submit(move || {
                            Outcome::Imap(Box::new(ImapOutcome::Prepared(imap_jobs::prepare(
                                &acct,
                            ))))
                        });
                    }
                    None => {
                        info!("imap {}: login failed for {user:?}", self.io.t.peer());
                        self.waiting = Waiting::FailureDelay(cx.now + LOGIN_FAILURE_DELAY, tag);
                        return;
                    }
                }
            }
            (ImapOutcome::Prepared(r), Waiting::Prepare(tag)) => {
                if let Err(e) = &r {
                    warn!("imap {}: cannot prepare the mailbox: {e}", self.io.t.peer());
                }
                let mailbox = self.mailbox.clone().unwrap_or_default();
                info!("imap {}: {mailbox} logged in", self.io.t.peer());
                self.login_by = None;
                cx.sv.mailboxes.watch(&mailbox, cx.token.0);
                self.io.core.login_done(&tag, true, &mut self.io.out);
                self.io.core.run(&mut self.io.out, &mut self.io.events);
            }
            (ImapOutcome::Done(done), Waiting::Job { command }) => {
                self.job_done(*done, command, cx);
            }
            _ => {}
        }
        self.handle_events(cx);
        self.pump(cx);
    }

    fn timer(&mut self, cx: &mut Ctx) {
        if let Waiting::FailureDelay(at, tag) = &self.waiting {
            if *at <= cx.now {
                let tag = tag.clone();
                self.waiting = Waiting::Nothing;
                self.io.core.login_done(&tag, false, &mut self.io.out);
                if cx.login_blocked(canonical_ip(self.io.t.peer().ip())) {
                    self.io.closing = true;
                }
                self.io.core.run(&mut self.io.out, &mut self.io.events);
                self.handle_events(cx);
                self.pump(cx);
                return;
            }
        }
        let login_late = self.login_by.is_some_and(|t| t <= cx.now);
        if (self.io.idle.expired(cx.now) || login_late) && self.waiting == Waiting::Nothing {
            info!("imap {}: timeout, closing", self.io.t.peer());
            response::status(
                &mut self.io.out,
                None,
                Status::Bye,
                None,
                "Autologout; idle too long",
            );
            self.io.closing = true;
            self.pump(cx);
            self.io.finish();
            self.release(cx);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        if self.io.is_done() {
            return None;
        }
        let idle = self.io.idle.deadline();
        let idle = self.login_by.map_or(idle, |t| t.min(idle));
        match &self.waiting {
            Waiting::FailureDelay(at, _) => Some((*at).min(idle)),
            Waiting::Nothing => Some(idle),
            _ => None,
        }
    }

    fn stop(&mut self, cx: &mut Ctx) {
        if self.waiting == Waiting::Nothing {
            response::status(
                &mut self.io.out,
                None,
                Status::Bye,
                None,
                "Server shutting down",
            );
            self.io.finish();
            self.release(cx);
        }
    }

    fn is_done(&self) -> bool {
        self.io.is_done()
    }

    fn is_idle(&self) -> bool {
        // A write of an APPEND chunk out: its completion must come back
        // here, even after the socket is gone, to remove the file.
        matches!(self.waiting, Waiting::Nothing | Waiting::FailureDelay(..)) && !self.append_busy()
    }

    fn interest(&self) -> Interest {
        self.io.t.interest()
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        Some(self.io.t.socket())
    }
}
