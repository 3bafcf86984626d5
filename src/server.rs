//! `mailgate serve`: puts the pieces together and runs the loop.
//!
//! Owns: what every driver shares (`Shared`: config, TLS, workers, login
//! penalties, maildrop locks), the completion type workers send back,
//! config reloads, and start-up order (config, bind, privilege drop,
//! data_dir, TLS, pid file, workers, loop; see `serve`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use log::{error, info, warn};
use mio::net::TcpStream;
use mio::Token;

use crate::config::Config;
use crate::event_loop::{Driver, EventLoop, ListenerKind};
use crate::outbox::queue::QueueEntry;
use crate::outbox::runner::{Outbox, Recorded};
use crate::penalty::Penalty;
use crate::privileges;
use crate::proto::smtp_server::DeliveryOutcome;
use crate::smartpop::runner::SmartPop;
use crate::workers::Workers;

/// Threads doing fsyncs and password hashes. An fsync mostly waits on the
/// disk, and the filesystem journal commits concurrent fsyncs together, so
/// four in flight give 1.5-2x the throughput of two (measured with
/// `make bench`, 10 and 50 sessions) for 2 MiB of stacks at most.
const WORKER_THREADS: usize = 4;

/// How often expired login-failure records are dropped.
const PENALTY_PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Jobs of the outbox and SmartPop answer to this token, not a connection.
pub const MANAGER: Token = Token(3);

/// A worker's answer to the connection (token) that asked.
pub struct Completion {
    pub token: Token,
    pub outcome: Outcome,
}

pub enum Outcome {
    /// The reply for the client, and the outbox entry it made, if any.
    Delivered(DeliveryOutcome, Option<QueueEntry>),
    /// An outbox attempt's results are written.
    OutboxRecorded(Recorded),
    /// `mailgate flush` made every entry due: read the queue again.
    OutboxFlushed,
    /// SmartPop: a fetched message is (true) or is not durable, with the
    /// account's records handed back.
    SmartPopDelivered(bool, Option<Box<crate::smartpop::records::Records>>),
    /// SmartPop bookkeeping done; nothing to report.
    SmartPopNoted,
    Password(bool),
    /// The maildrop's listing after a good POP3 login.
    Pop3Listing(std::io::Result<Vec<crate::store::maildrop::MessageInfo>>),
    Pop3Commit(bool),
}

/// What the loop lends to every driver.
pub struct Shared {
    pub config: Arc<Config>,
    pub tls: Arc<rustls::ServerConfig>,
    pub workers: Workers<Completion>,
    pub penalty: Penalty,
    /// Mailboxes with a POP3 session in TRANSACTION state (RFC 1939's
    /// exclusive-access lock; one process, so a set is enough).
    pub maildrop_locks: HashSet<String>,
    pub now: Instant,
    pub stopping: bool,
    next_prune: Instant,
    /// For drivers that register their own sockets (outbound).
    pub registry: mio::Registry,
    pub outbox: Option<Outbox>,
    pub smartpop: SmartPop,
    /// The connection being dispatched; jobs it submits answer to it.
    pub current: Token,
    new_drivers: Vec<(Box<dyn Driver>, Option<Token>)>,
}

impl Shared {
    /// Runs `job` on a worker; its outcome comes back to the current connection.
    pub fn submit(&self, job: impl FnOnce() -> Outcome + Send + 'static) {
        let token = self.current;
        self.workers.submit(move || Completion {
            token,
            outcome: job(),
        });
    }

    /// Connections created outside the loop's accept (outbox, SmartPop).
    pub fn spawn(&mut self, driver: Box<dyn Driver>) {
        self.new_drivers.push((driver, None));
    }

    pub fn take_new_drivers(&mut self) -> Vec<(Box<dyn Driver>, Option<Token>)> {
        std::mem::take(&mut self.new_drivers)
    }

    /// The next moment something other than a connection needs the loop.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let outbox = self.outbox.as_ref().and_then(|o| o.next_wakeup());
        let smartpop = self.smartpop.next_wakeup();
        match (outbox, smartpop) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts what the outbox and SmartPop have due; runs every loop turn.
    pub fn tick(&mut self) {
        if self.now >= self.next_prune {
            self.penalty.prune(self.now);
            self.next_prune = self.now + PENALTY_PRUNE_EVERY;
        }
        for driver in self.smartpop.tick(&self.config, self.now, self.stopping) {
            self.new_drivers.push((driver, None));
        }
        let Some(outbox) = self.outbox.as_mut() else {
            return;
        };
        for driver in outbox.tick(&self.config, self.now, self.stopping) {
            self.new_drivers.push((driver, None));
        }
        for (entry, reports) in outbox.take_ready() {
            let config = Arc::clone(&self.config);
            self.workers.submit(move || Completion {
                token: MANAGER,
                outcome: Outcome::OutboxRecorded(crate::outbox::runner::record(
                    &config, entry, reports,
                )),
            });
        }
    }

    /// A worker finished a job of the outbox or SmartPop (not a connection's).
    pub fn manager_complete(&mut self, done: Completion) {
        let Some(outbox) = self.outbox.as_mut() else {
            return;
        };
        match done.outcome {
            Outcome::OutboxRecorded(recorded) => outbox.recorded(recorded, self.now),
            Outcome::OutboxFlushed => outbox.rescan(self.now),
            _ => {}
        }
    }

    /// An outbound session's results.
    pub fn outbox_report(&mut self, report: crate::conn::smtp_out::GroupReport) {
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.report(report);
        }
    }

    /// A message was queued by this process (SMTP in).
    pub fn outbox_add(&mut self, entry: QueueEntry) {
        let now = self.now;
        if let Some(outbox) = self.outbox.as_mut() {
            outbox.add(entry, now);
        }
    }

    /// SIGUSR1: `mailgate flush` (every queued message is due now), or
    /// `sendmail` saying it queued something (look at the queue again).
    pub fn flush_requested(&mut self) {
        if !crate::control::take_flush_request(&self.config.server.data_dir) {
            let now = self.now;
            if let Some(outbox) = self.outbox.as_mut() {
                outbox.rescan(now);
            }
            return;
        }
        info!("flush requested: retrying the whole outbox");
        let data_dir = self.config.server.data_dir.clone();
        let now = crate::outbox::unix_secs(std::time::SystemTime::now());
        // Make every pending recipient due, then scan. The envelopes are
        // rewritten on a worker so the loop never fsyncs.
        self.workers.submit(move || {
            crate::outbox::queue::make_all_due(&data_dir, now);
            Completion {
                token: MANAGER,
                outcome: Outcome::OutboxFlushed,
            }
        });
    }

    /// SIGUSR2 (`mailgate fetch`): run SmartPop now.
    pub fn fetch_requested(&mut self) {
        let account = crate::control::take_fetch_request(&self.config.server.data_dir).flatten();
        info!(
            "fetch requested: {}",
            account.as_deref().unwrap_or("all accounts")
        );
        self.smartpop.request(account.as_deref(), self.now);
    }

    /// A failed SMTP AUTH or POP3 login from `ip`: counts towards the
    /// address's block (10 in 10 minutes, refused for 15), logged once.
    pub fn login_failed(&mut self, ip: std::net::IpAddr) {
        if self.penalty.record_failure(ip, self.now) {
            warn!("{ip}: 10 failed logins in 10 minutes, refusing it for 15 minutes");
        }
    }

    /// A SmartPop run ended.
    pub fn smartpop_finished(&mut self, account: &str) {
        self.smartpop.finished(account);
    }

    /// SIGHUP: re-read the config; keep the old one if the new one is bad.
    pub fn reload(&mut self) {
        let path = self.config.path.clone();
        match Config::load(&path) {
            Ok((config, warnings)) => {
                for w in &warnings {
                    warn!("{w}");
                }
                if listeners(&config) != listeners(&self.config) {
                    warn!("reload: listen addresses changed; they take effect at the next restart");
                }
                // New connections get the new certificate (a renewed one, or
                // other [tls] files); ones already open keep theirs.
                match crate::tls::server_config(
                    config.tls.cert.as_deref(),
                    config.tls.key.as_deref(),
                    &config.server.data_dir,
                    &config.server.hostname,
                ) {
                    Ok(tls) => self.tls = tls,
                    Err(e) => error!("reload: {e}; keeping the running certificate"),
                }
                self.config = Arc::new(config);
                if let Some(outbox) = self.outbox.as_mut() {
                    outbox.reload(&self.config);
                }
                self.smartpop.reload(&self.config, self.now);
                info!("reloaded {}", path.display());
            }
            Err(diags) => {
                for d in &diags {
                    error!("{d}");
                }
                error!(
                    "reload of {} failed; keeping the running config",
                    path.display()
                );
            }
        }
    }
}

/// Checks a login (full address, or a bare local part naming one mailbox).
/// An unknown user costs the same hash work as a known one, so the answer
/// time does not reveal which users exist.
pub fn check_login(config: &Config, user: &str, password: &str) -> bool {
    config.check_login(user, password)
}

fn listeners(config: &Config) -> Vec<(SocketAddr, ListenerKind)> {
    let s = &config.smtp;
    let p = &config.pop3;
    let groups = [
        (&s.listen, ListenerKind::SmtpMx),
        (&s.submission, ListenerKind::Submission),
        (&s.smtps, ListenerKind::Smtps),
        (&p.listen, ListenerKind::Pop3),
        (&p.pop3s, ListenerKind::Pop3s),
    ];
    groups
        .iter()
        .flat_map(|(addrs, kind)| addrs.iter().map(move |a| (*a, *kind)))
        .collect()
}

fn accept(
    kind: ListenerKind,
    sock: TcpStream,
    peer: SocketAddr,
    sh: &mut Shared,
) -> Box<dyn Driver> {
    match kind {
        ListenerKind::SmtpMx | ListenerKind::Submission | ListenerKind::Smtps => {
            Box::new(crate::conn::smtp_in::SmtpIn::new(kind, sock, peer, sh))
        }
        ListenerKind::Pop3 | ListenerKind::Pop3s => {
            Box::new(crate::conn::pop3_in::Pop3In::new(kind, sock, peer, sh))
        }
    }
}

/// Every connection is a descriptor, and a queue scan or delivery opens
/// a few more: lift the soft limit (often 1024) to the hard one, so
/// `max_connections` and not the kernel decides who is turned away.
fn raise_file_limit(config: &Config) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let wanted = config.smtp.max_connections.saturating_add(64) as libc::rlim_t;
    if lim.rlim_cur < wanted {
        warn!(
            "open-file limit {} is below max_connections + 64 ({wanted}); raise it (ulimit -n, LimitNOFILE=)",
            lim.rlim_cur
        );
    }
}

/// Runs the server until SIGTERM/SIGINT. Err carries a message for the user.
///
/// Start-up order. Without `[server] user` (or when already running as
/// that user), as it always was: data_dir, TLS, pid file, queue, then the
/// ports, so a server whose ports accept connections is ready. With `user`
/// and started as root (see `privileges`): everything root must do comes
/// first and touches nothing inside a `data_dir` the user owns (config,
/// the user's lookup, a read-only look at the pid file, TLS files named in
/// `[tls]`, binding the ports, creating a missing `data_dir`); then the
/// drop; then, as the user, what writes into `data_dir` (self-signed
/// certificate, pid file, queue). Clients that connect meanwhile wait in
/// the listen backlog. Worker threads start last in both cases, so the
/// drop happens while the process has one thread.
pub fn serve(config_path: &Path) -> Result<(), String> {
    let (config, warnings) = Config::load(config_path).map_err(|diags| {
        let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        format!(
            "{}\nrefusing to start: the config has errors",
            lines.join("\n")
        )
    })?;
    for w in warnings
        .iter()
        .map(|w| w.to_string())
        .chain(privileges::config_file_warnings(&config))
    {
        warn!("{w}");
    }
    raise_file_limit(&config);
    let data_dir = config.server.data_dir.clone();
    let account = privileges::configured_account(&config)?;
    let user = account.as_ref().map(|a| a.name.as_str());
    let drop_to = match &account {
        Some(a) => privileges::must_drop(a, privileges::euid())?.then_some(a),
        None => {
            if privileges::euid() == 0 {
                info!("running as root: set [server] user to drop root after binding the ports");
            }
            None
        }
    };
    if let Some(running) = privileges::running_server(&data_dir) {
        return Err(running);
    }
    let make_tls = || {
        crate::tls::server_config(
            config.tls.cert.as_deref(),
            config.tls.key.as_deref(),
            &data_dir,
            &config.server.hostname,
        )
        .map_err(|e| e.to_string())
    };

    let (tls, _pid_file, outbox, mut ev, waker) = match drop_to {
        None => {
            std::fs::create_dir_all(&data_dir)
                .map_err(|e| format!("cannot create data_dir {}: {e}", data_dir.display()))?;
            for w in privileges::check_data_dir(&data_dir, user)? {
                warn!("{w}");
            }
            let tls = make_tls()?;
            let pid_file = crate::control::lock_pid_file(&data_dir)?;
            let outbox = Outbox::new(&config)?;
            let (ev, waker) = EventLoop::new(&listeners(&config))?;
            (tls, pid_file, outbox, ev, waker)
        }
        Some(account) => {
            // Files named in [tls] are read as root (the key may stay
            // root-only, as for other daemons); a self-signed pair is made
            // in data_dir, so only after the drop.
            let named_tls = config.tls.cert.is_some() && config.tls.key.is_some();
            let early_tls = if named_tls { Some(make_tls()?) } else { None };
            let (ev, waker) = EventLoop::new(&listeners(&config))?;
            privileges::prepare_data_dir(&data_dir, account)?;
            privileges::drop_to(account)?;
            if let Some(w) = privileges::config_readable_warning(&config, account) {
                warn!("{w}");
            }
            for w in privileges::check_data_dir(&data_dir, user)? {
                warn!("{w}");
            }
            let tls = match early_tls {
                Some(tls) => tls,
                None => make_tls()?,
            };
            let pid_file = crate::control::lock_pid_file(&data_dir)?;
            let outbox = Outbox::new(&config)?;
            (tls, pid_file, outbox, ev, waker)
        }
    };
    let (workers, done_rx) = Workers::new(WORKER_THREADS, waker);
    let registry = ev
        .registry()
        .map_err(|e| format!("cannot clone the poll registry: {e}"))?;
    let mut sh = Shared {
        registry,
        outbox: Some(outbox),
        smartpop: SmartPop::new(&config, Instant::now()),
        config: Arc::new(config),
        tls,
        workers,
        penalty: Penalty::new(),
        maildrop_locks: HashSet::new(),
        now: Instant::now(),
        stopping: false,
        next_prune: Instant::now(),
        current: Token(0),
        new_drivers: Vec::new(),
    };
    info!(
        "mailgate {} serving {}",
        env!("CARGO_PKG_VERSION"),
        config_path.display()
    );
    ev.run(&mut sh, accept, done_rx)
        .map_err(|e| format!("event loop failed: {e}"))
}
