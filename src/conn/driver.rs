//! What the event loop and a connection driver say to each other.
//!
//! Owns: the `Driver` trait (one connection's state machine as the loop
//! sees it), the small context a driver is lent on each call (`Ctx`: its
//! own token, the clock, and the `Services` every driver may use), worker
//! completions (`Completion`, `Outcome`) and what a driver reports to the
//! rest of the server (`Effect`).
//! Must not: know the outbox's or SmartPop's schedules, or the loop's
//! tables; a driver reaches the rest of the server only through `Effect`s.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use log::warn;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::budget::Budget;
use crate::config::Config;
use crate::outbox::runner::Recorded;
use crate::outbox::GroupReport;
use crate::penalty::Penalty;
use crate::proto::envelope::DeliveryOutcome;
use crate::smartpop::records::Records;
use crate::store::mailboxes::Mailboxes;
use crate::store::queue::QueueEntry;
use crate::workers::Workers;

/// Jobs the server itself submits (outbox records, reloads, control
/// requests) answer to this token, not to a connection.
pub const HOST: Token = Token(3);

/// One connection's state machine as the loop sees it.
pub trait Driver {
    /// The socket is ready, or the driver may have work to resume: pump IO.
    fn ready(&mut self, cx: &mut Ctx);
    /// A worker finished a job this driver submitted.
    fn complete(&mut self, done: Outcome, cx: &mut Ctx);
    /// The deadline returned by `deadline()` has passed.
    fn timer(&mut self, cx: &mut Ctx);
    fn deadline(&self) -> Option<Instant>;
    /// The server is stopping: finish or abort politely.
    fn stop(&mut self, cx: &mut Ctx);
    /// True once the driver can be dropped (socket closed).
    fn is_done(&self) -> bool;
    /// False while a worker job for it is in flight; such a driver is not
    /// dropped by a stop until the job comes back.
    fn is_idle(&self) -> bool;
    fn interest(&self) -> Interest;
    /// The socket the loop registers for this driver; None for drivers
    /// that change sockets over their life (outbound: DNS, then TCP) and
    /// register them themselves through `Ctx::registry` under `Ctx::token`.
    fn source(&mut self) -> Option<&mut TcpStream>;
}

/// A worker's answer to the driver (token) that asked, or to the server.
pub struct Completion {
    pub token: Token,
    pub outcome: Outcome,
}

/// What a worker job produced.
pub enum Outcome {
    /// SMTP in: the reply for the client, and the outbox entry it made.
    Delivered(DeliveryOutcome, Option<QueueEntry>),
    /// SMTP in: a chunk of a message body is in its spool file, which is
    /// handed back for the next one (on error the file is gone).
    Spooled(std::io::Result<crate::store::spool::SpoolWriter>),
    /// SMTP in: a spool file that will not be delivered is removed.
    SpoolRemoved,
    /// A password check.
    Password(bool),
    /// POP3: the maildrop's listing after a good login.
    Pop3Listing(std::io::Result<Vec<crate::store::maildrop::MessageInfo>>),
    /// POP3: the next chunk of the message being sent (empty at its end),
    /// with the file handed back for the next read.
    Pop3Read(std::io::Result<(Option<std::fs::File>, Vec<u8>)>),
    /// POP3: messages read ahead of the client's RETRs.
    Pop3Ahead(super::pop3_ahead::BatchRead),
    /// POP3: the QUIT commit (deletions, `cur/` moves) is durable (true).
    Pop3Commit(bool),
    /// Outbox: the queued message a session is to deliver, measured.
    OutboundLoaded(std::io::Result<crate::conn::smtp_out::QueuedMessage>),
    /// Outbox: the next chunk of the message being sent (short at its
    /// end), with the file handed back for the next read.
    OutboundRead(std::io::Result<(std::fs::File, Vec<u8>)>),
    /// SmartPop: the account's records and TLS setup, read before a run.
    SmartPopReady(Result<(Records, Arc<rustls::ClientConfig>), String>),
    /// SmartPop: a fetched message is (true) or is not durable, with the
    /// account's records handed back, and the mailboxes it reached.
    SmartPopDelivered(bool, Option<Box<Records>>, Vec<String>),
    /// SmartPop: a chunk of a RETR body is in the staging file, which
    /// comes back for the next write.
    SmartPopStaged(std::io::Result<std::fs::File>),
    /// SmartPop bookkeeping done; nothing to report.
    SmartPopNoted,
    /// SMTP in, MX checks: the message hashed (or the reply when it could
    /// not be read).
    MailAuthHashed(Result<Box<super::mailauth_in::Hashed>, DeliveryOutcome>),
    /// SMTP in, MX checks: the DKIM signatures checked.
    MailAuthVerified(Box<super::mailauth_in::Hashed>),
    /// IMAP: a login, or a command carried out on the store.
    Imap(Box<super::imap_in::ImapOutcome>),
    /// OAuth2 refresh: the TLS setup for the token endpoint.
    OAuthTls(Result<Arc<rustls::ClientConfig>, String>),
    /// OAuth2 refresh: its result, written to the token file.
    OAuthSaved(crate::oauth::tokens::Refreshed),
    /// A job with nothing to report (closing a file off the loop thread).
    Nothing,
    /// For the server (token `HOST`): one of its own jobs.
    Host(HostOutcome),
}

/// The results of the server's own worker jobs (token `HOST`).
pub enum HostOutcome {
    /// An outbox attempt's results are written.
    OutboxRecorded(Recorded),
    /// The queue folder, read whole.
    OutboxScanned(crate::store::queue::Loaded),
    /// `mailgate flush` made every entry due.
    OutboxFlushed,
    /// SIGUSR1: true when `mailgate flush` asked (a flush request file
    /// was there), false for `sendmail`'s "look at the queue".
    FlushAsked(bool),
    /// SIGUSR2: the account `mailgate fetch` named, if any.
    FetchAsked(Option<String>),
    /// SIGHUP: the config read again, with what it needs prepared.
    Reloaded(Box<Reload>),
    /// A maildrop scan: what it delivered and queued.
    PickedUp(crate::pickup::Picked),
    /// OAuth2 token files read, by account.
    OAuthLoaded(Vec<(String, Result<Option<crate::oauth::store::Stored>, String>)>),
}

/// A config read again on a worker (files, certificate, CA bundle), for
/// the loop to take over in one step.
pub enum Reload {
    Ok {
        config: Box<Config>,
        warnings: Vec<String>,
        /// The new server certificate, or why the running one stays.
        tls: Result<Arc<rustls::ServerConfig>, String>,
        /// The outbox's verified client config, or why the old one stays.
        outbox_tls: Result<Arc<rustls::ClientConfig>, String>,
    },
    Failed(Vec<String>),
}

/// What a driver tells the rest of the server; the loop hands these on
/// after each call into a driver.
pub enum Effect {
    /// A message went into the queue (SMTP in): the outbox should know it.
    Queued(QueueEntry),
    /// An outbound session is over.
    OutboundDone(GroupReport),
    /// A SmartPop run of this account is over; `broken`: it could not
    /// even start (records unreadable, bad CA file), so wait longer.
    FetchDone { account: String, broken: bool },
    /// An IMAP push watcher of this account and folder ended;
    /// `unsupported`: the server offers no IDLE (poll instead).
    WatchDone {
        account: String,
        folder: String,
        unsupported: bool,
    },
    /// A push watcher saw new mail: run this account's collection now.
    NewMail { account: String },
    /// Mail arrived in or left these mailboxes.
    MailboxesChanged(Vec<String>),
    /// An OAuth2 refresh of this account is over (its result on disk).
    OAuthRefreshed {
        account: String,
        result: crate::oauth::tokens::Refreshed,
    },
}

/// What every driver may use, owned by the loop and lent on each call.
pub struct Services {
    pub config: Arc<Config>,
    pub tls: Arc<rustls::ServerConfig>,
    pub workers: Workers<Completion>,
    pub registry: Registry,
    pub penalty: Penalty,
    pub mailboxes: Mailboxes,
    /// Message-body bytes all connections hold in memory.
    pub budget: Budget,
    /// SIGTERM arrived: finish what is in flight, start nothing new.
    pub stopping: bool,
    /// The MX checks' DNS cache and greylist table.
    pub mailauth: super::mailauth_in::Shared,
    /// IMAP: the newest snapshot of each selected folder, so sessions
    /// that see the same state share one copy (1000 IDLE sessions on one
    /// INBOX hold one listing, not 1000).
    pub imap_snapshots: crate::store::mailbox::SharedSnapshots,
    /// The mailbox locks (uidlist, subscriptions) this process holds;
    /// one table for every worker, lent to each IMAP account.
    pub mailbox_locks: Arc<crate::store::mailbox::LockTable>,
    effects: Vec<Effect>,
}

impl Services {
    pub fn new(
        config: Arc<Config>,
        tls: Arc<rustls::ServerConfig>,
        workers: Workers<Completion>,
        registry: Registry,
    ) -> Services {
        Services {
            mailauth: super::mailauth_in::Shared::new(&config),
            config,
            tls,
            workers,
            registry,
            penalty: Penalty::new(),
            mailboxes: Mailboxes::default(),
            budget: Budget::default(),
            stopping: false,
            imap_snapshots: Default::default(),
            mailbox_locks: crate::store::mailbox::LockTable::shared(),
            effects: Vec::new(),
        }
    }

    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Runs `job` on a worker; its outcome comes back to `token`.
    pub fn submit_for(&self, token: Token, job: impl FnOnce() -> Outcome + Send + 'static) {
        self.workers.submit(move || Completion {
            token,
            outcome: job(),
        });
    }
}

/// A driver's view of the server during one call: its own token, the
/// time the loop woke, and the shared services.
pub struct Ctx<'a> {
    pub token: Token,
    pub now: Instant,
    pub sv: &'a mut Services,
}

impl Ctx<'_> {
    pub fn config(&self) -> &Arc<Config> {
        &self.sv.config
    }

    pub fn registry(&self) -> &Registry {
        &self.sv.registry
    }

    pub fn stopping(&self) -> bool {
        self.sv.stopping
    }

    /// Runs `job` (a durable write) on a worker; its outcome comes back
    /// to this driver.
    pub fn submit(&self, job: impl FnOnce() -> Outcome + Send + 'static) {
        self.sv.submit_for(self.token, job);
    }

    /// Runs a quick `job` (a read, a listing, a password hash) in the lane
    /// that never waits behind fsyncs.
    pub fn submit_quick(&self, job: impl FnOnce() -> Outcome + Send + 'static) {
        let token = self.token;
        self.sv.workers.submit_quick(move || Completion {
            token,
            outcome: job(),
        });
    }

    pub fn effect(&mut self, effect: Effect) {
        self.sv.effects.push(effect);
    }

    /// May `ip` try a password now (SMTP AUTH, POP3 login)? False when
    /// the address is blocked, or its failures and the tries being checked
    /// already reach the limit, across all its sessions (`penalty`).
    pub fn begin_login(&mut self, ip: IpAddr) -> bool {
        self.sv.penalty.begin_attempt(ip, self.now)
    }

    /// The try begun with `begin_login` came out `ok` or not; a failure
    /// counts towards the address's block (10 in 10 minutes, refused for
    /// 15), logged once.
    pub fn end_login(&mut self, ip: IpAddr, ok: bool) {
        if self.sv.penalty.end_attempt(ip, ok, self.now) {
            warn!("{ip}: 10 failed logins in 10 minutes, refusing it for 15 minutes");
        }
    }

    /// Is `ip` refused for failed logins now?
    pub fn login_blocked(&self, ip: IpAddr) -> bool {
        self.sv.penalty.is_blocked(ip, self.now)
    }
}
