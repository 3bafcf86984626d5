//! `mailgate serve`: puts the pieces together and runs the loop.
//!
//! The composition root: the only module that knows every subsystem, and
//! the one nothing imports (but `main`). Owns: start-up order (config,
//! bind, privilege drop, data_dir, TLS, pid file, workers, loop; see
//! `serve`), and the `Host` the loop calls: the outbox's and SmartPop's
//! schedules, what drivers report (`Effect`), the server's own worker jobs
//! (recording attempts, reading the queue, control requests, reloads) and
//! the signals.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use log::{error, info, warn};

use crate::config::Config;
use crate::conn::{self, Effect, HostOutcome, Job, ListenerKind, Outcome, Reload, Services, HOST};
use crate::event_loop::{EventLoop, Host, Signal};
use crate::oauth::tokens::Tokens;
use crate::outbox::runner::Outbox;
use crate::privileges;
use crate::smartpop::runner::SmartPop;
use crate::workers::Workers;

/// Threads doing durable writes. An fsync mostly waits on the disk, and
/// a journaling file system commits the fsyncs in flight together, so
/// more writers in flight mean fewer commits per message. On a journaled
/// ext4 (`make bench`, 50 sessions) 4 writers took 1491 msg/s, 8 took
/// 2291, 16 took 2719; later, in one run of alternating rounds, 16 took
/// 3120, 32 took 3652, 48 3550 and 64 3611 (the two cores were full by
/// then). At 10 sessions only 10 messages can be in flight and the count
/// makes no difference. Each costs a 512 KiB stack reserved and a few KiB
/// of it touched.
const WRITE_THREADS: usize = 32;

/// Threads for quick work (message reads, folder listings, password
/// hashes), so a slow disk's fsyncs never hold up a session that reads.
const QUICK_THREADS: usize = 2;

/// The outbox and SmartPop schedules, and what is in flight for them.
struct Server {
    outbox: Outbox,
    smartpop: SmartPop,
    /// OAuth2 accounts' tokens and refresh schedule.
    tokens: Tokens,
    /// A SIGHUP's re-read is on a worker; a second SIGHUP meanwhile waits.
    reloading: bool,
    reload_again: bool,
    pickup: Pickup,
}

/// The maildrop scans: one at a time (two would deliver a file twice),
/// at start, at every ring or SIGUSR1, and every `pickup::SCAN_INTERVAL`.
struct Pickup {
    running: bool,
    /// Asked for while one runs (or not yet started).
    wanted: bool,
    next_scan: Instant,
}

impl Host for Server {
    fn effect(&mut self, effect: Effect, sv: &mut Services, now: Instant) {
        match effect {
            Effect::Queued(entry) => self.outbox.add(entry, now),
            Effect::OutboundDone(report) => self.outbox.report(report),
            Effect::FetchDone { account, broken } => {
                self.smartpop.finished(&account);
                if broken {
                    self.smartpop.broken(&account, now);
                }
            }
            Effect::WatchDone {
                account,
                folder,
                unsupported,
            } => self
                .smartpop
                .watch_done(&account, &folder, unsupported, now),
            Effect::NewMail { account } => self.smartpop.request(Some(&account), now),
            Effect::MailboxesChanged(mailboxes) => {
                for m in &mailboxes {
                    sv.mailboxes.changed(m, None);
                }
            }
            Effect::OAuthRefreshed { account, result } => {
                self.tokens
                    .refreshed(&account, result, crate::oauth::unix_now())
            }
        }
    }

    fn complete(&mut self, outcome: Outcome, sv: &mut Services, now: Instant) {
        let Outcome::Host(outcome) = outcome else {
            return;
        };
        match outcome {
            HostOutcome::OutboxRecorded(recorded) => self.outbox.recorded(recorded, now),
            HostOutcome::OutboxScanned(loaded) => self.outbox.scanned(loaded, now),
            HostOutcome::OutboxFlushed => self.outbox.flushed(now),
            HostOutcome::FlushAsked(true) => {
                info!("flush requested: retrying the whole outbox");
                self.outbox.request_flush();
            }
            // `sendmail` queued something: look at the queue again.
            HostOutcome::FlushAsked(false) => self.outbox.rescan(now),
            HostOutcome::FetchAsked(account) => {
                info!(
                    "fetch requested: {}",
                    account.as_deref().unwrap_or("all accounts")
                );
                self.tokens.reload_soon();
                self.smartpop.request(account.as_deref(), now);
            }
            HostOutcome::OAuthLoaded(files) => {
                let unix = crate::oauth::unix_now();
                for (name, got) in files {
                    self.tokens.loaded(&name, got, unix);
                }
            }
            HostOutcome::PickedUp(picked) => {
                self.pickup.running = false;
                for entry in picked.queued {
                    self.outbox.add(entry, now);
                }
                for m in &picked.mailboxes {
                    sv.mailboxes.changed(m, None);
                }
            }
            HostOutcome::Reloaded(reload) => {
                self.reloading = false;
                self.apply_reload(*reload, sv, now);
                if std::mem::take(&mut self.reload_again) {
                    self.signal(Signal::Reload, sv, now);
                }
            }
        }
    }

    fn signal(&mut self, signal: Signal, sv: &mut Services, _now: Instant) {
        let data_dir = sv.config.server.data_dir.clone();
        match signal {
            Signal::Reload => {
                if self.reloading {
                    self.reload_again = true;
                    return;
                }
                self.reloading = true;
                let path = sv.config.path.clone();
                let maildrop = sv.config.server.maildrop.clone();
                sv.submit_for(HOST, move || {
                    Outcome::Host(HostOutcome::Reloaded(Box::new(read_config_again(
                        &path, &data_dir, &maildrop,
                    ))))
                });
            }
            Signal::Flush => {
                // Also the maildrop's bell (see `pickup::start_bell`).
                self.pickup.wanted = true;
                sv.submit_for(HOST, move || {
                    Outcome::Host(HostOutcome::FlushAsked(crate::control::take_flush_request(
                        &data_dir,
                    )))
                })
            }
            Signal::Fetch => sv.submit_for(HOST, move || {
                Outcome::Host(HostOutcome::FetchAsked(
                    crate::control::take_fetch_request(&data_dir).flatten(),
                ))
            }),
        }
    }

    fn tick(&mut self, sv: &mut Services, now: Instant) -> Vec<Box<dyn conn::Driver>> {
        let data_dir = sv.config.server.data_dir.clone();
        if self.outbox.wants_full_scan(now) {
            let data_dir = data_dir.clone();
            sv.submit_for(HOST, move || {
                let loaded = crate::store::queue::Queue::at(&data_dir).load_all();
                Outcome::Host(HostOutcome::OutboxScanned(loaded))
            });
        }
        if self.outbox.take_flush() {
            let data_dir = data_dir.clone();
            let unix_now = crate::store::unix_secs(SystemTime::now());
            sv.submit_for(HOST, move || {
                crate::store::queue::make_all_due(&data_dir, unix_now);
                Outcome::Host(HostOutcome::OutboxFlushed)
            });
        }
        for (entry, reports) in self.outbox.take_ready() {
            let config = Arc::clone(&sv.config);
            sv.submit_for(HOST, move || {
                Outcome::Host(HostOutcome::OutboxRecorded(crate::outbox::runner::record(
                    &config, entry, reports,
                )))
            });
        }
        let stopping = sv.stopping;
        if !self.pickup.running && !stopping && (self.pickup.wanted || now >= self.pickup.next_scan)
        {
            self.pickup.running = true;
            self.pickup.wanted = false;
            self.pickup.next_scan = now + crate::pickup::SCAN_INTERVAL;
            let config = Arc::clone(&sv.config);
            sv.submit_for(HOST, move || {
                Outcome::Host(HostOutcome::PickedUp(crate::pickup::pick_up(&config)))
            });
        }
        let unix = crate::oauth::unix_now();
        let refreshes = self.oauth_jobs(sv, unix, stopping);
        self.outbox
            .set_bearer(self.tokens.access(crate::oauth::OUTBOX, unix));
        let outbound = self.outbox.tick(&sv.config, now, stopping);
        let mut fetches = self.smartpop.tick(&sv.config, now, stopping);
        // An auth = oauth2 account runs with the access token in place of
        // the password, or not at all (not signed in, revoked, or its
        // refresh still under way: the next interval tries again).
        fetches.retain_mut(|job| {
            if job.account.oauth.is_none() {
                return true;
            }
            match self.tokens.access(&job.account.name, unix) {
                Some(token) => {
                    job.account.password = token;
                    true
                }
                None => {
                    log::debug!("smartpop {}: no OAuth2 access token now", job.account.name);
                    self.smartpop.finished(&job.account.name);
                    false
                }
            }
        });
        outbound
            .into_iter()
            .map(Job::Outbound)
            .chain(fetches.into_iter().map(Job::Fetch))
            .chain(refreshes.into_iter().map(Job::OAuthRefresh))
            .map(conn::start)
            .collect()
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let outbox = self.outbox.next_wakeup();
        let smartpop = self.smartpop.next_wakeup();
        let pickup = (!self.pickup.running).then_some(self.pickup.next_scan);
        let unix = crate::oauth::unix_now();
        let tokens = self
            .tokens
            .next_wakeup(unix)
            .map(|at| Instant::now() + std::time::Duration::from_secs(at.saturating_sub(unix)));
        [outbox, smartpop, pickup, tokens]
            .into_iter()
            .flatten()
            .min()
    }
}

impl Server {
    /// Token files to read again, and the refreshes due now.
    fn oauth_jobs(
        &mut self,
        sv: &mut Services,
        unix: u64,
        stopping: bool,
    ) -> Vec<conn::oauth_refresh::RefreshJob> {
        let loads = self.tokens.take_loads(unix);
        if !loads.is_empty() {
            let data_dir = sv.config.server.data_dir.clone();
            sv.submit_for(HOST, move || {
                Outcome::Host(HostOutcome::OAuthLoaded(load_tokens(&data_dir, loads)))
            });
        }
        if stopping {
            self.tokens.halt();
            return Vec::new();
        }
        let due = self.tokens.take_due(unix);
        if due.is_empty() {
            return Vec::new();
        }
        let accounts = crate::oauth::accounts(&sv.config);
        let mut jobs = Vec::new();
        for (name, refresh_token) in due {
            match accounts.iter().find(|a| a.name == name) {
                Some(a) => jobs.push(conn::oauth_refresh::RefreshJob {
                    account: a.clone(),
                    refresh_token,
                    config: Arc::clone(&sv.config),
                }),
                // Gone from the config since (the next reload drops it).
                None => self.tokens.refreshed(
                    &name,
                    crate::oauth::tokens::Refreshed::Failed("account not configured".into()),
                    unix,
                ),
            }
        }
        jobs
    }

    /// SIGHUP's result: the new config, or the old one kept.
    fn apply_reload(&mut self, reload: Reload, sv: &mut Services, now: Instant) {
        let path = sv.config.path.clone();
        match reload {
            Reload::Ok {
                config,
                warnings,
                tls,
                outbox_tls,
            } => {
                for w in &warnings {
                    warn!("{w}");
                }
                if listeners(&config) != listeners(&sv.config) {
                    warn!("reload: listen addresses changed; they take effect at the next restart");
                }
                if config.server.user != sv.config.server.user {
                    warn!("reload: [server] user changed; it takes effect at the next restart");
                }
                // New connections get the new certificate (a renewed one, or
                // other [tls] files); ones already open keep theirs.
                match tls {
                    Ok(tls) => sv.tls = tls,
                    Err(e) => error!("reload: {e}; keeping the running certificate"),
                }
                sv.config = Arc::from(config);
                self.outbox.reload(outbox_tls);
                self.smartpop.reload(&sv.config, now);
                self.tokens.reload(&sv.config);
                info!("reloaded {}", path.display());
            }
            Reload::Failed(diags) => {
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

/// On a worker: the config file and the files it names (certificate,
/// outbox CA bundle), read again for SIGHUP. The running `data_dir` stays:
/// the pid file, the queue this process knows and the mailboxes open now
/// all live there. So does the maildrop: its bell is bound, and `serve`
/// made it as root.
fn read_config_again(path: &Path, running_data_dir: &Path, running_maildrop: &Path) -> Reload {
    match Config::load(path) {
        Ok((mut config, warnings)) => {
            let mut warnings: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
            if config.server.data_dir != running_data_dir {
                warnings.push(
                    "reload: [server] data_dir changed; it takes effect at the next restart".into(),
                );
                config.server.data_dir = running_data_dir.to_path_buf();
            }
            if config.server.maildrop != running_maildrop {
                warnings.push(
                    "reload: [server] maildrop changed; it takes effect at the next restart".into(),
                );
                config.server.maildrop = running_maildrop.to_path_buf();
            }
            let tls = crate::tls::server_config(
                config.tls.cert.as_deref(),
                config.tls.key.as_deref(),
                &config.server.data_dir,
                &config.server.hostname,
            )
            .map_err(|e| e.to_string());
            let outbox_tls =
                crate::tls::outbox_client_config(&config.outbox).map_err(|e| e.to_string());
            Reload::Ok {
                warnings,
                config: Box::new(config),
                tls,
                outbox_tls,
            }
        }
        Err(diags) => Reload::Failed(diags.iter().map(|d| d.to_string()).collect()),
    }
}

/// On a worker (or at start): the token files of `names`.
fn load_tokens(
    data_dir: &Path,
    names: Vec<String>,
) -> Vec<(String, Result<Option<crate::oauth::store::Stored>, String>)> {
    names
        .into_iter()
        .map(|n| {
            let got = crate::oauth::store::load(data_dir, &n).map_err(|e| e.to_string());
            (n, got)
        })
        .collect()
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
        (&config.imap.listen, ListenerKind::Imap),
        (&config.imap.imaps, ListenerKind::Imaps),
    ];
    groups
        .iter()
        .flat_map(|(addrs, kind)| addrs.iter().map(move |a| (*a, *kind)))
        .collect()
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

/// The maildrop is made (as root, for the user) before the drop: its
/// parent, /var/spool/mailgate by default, is root's. Without it only
/// root and the server's user can send with `sendmail`: a warning, not a
/// refusal to serve.
fn prepare_maildrop(config: &Config, owner: Option<(u32, u32)>) {
    if let Err(e) = crate::pickup::prepare(&config.server.maildrop, owner) {
        warn!("{e}; other local users cannot use sendmail");
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
    crate::control::ignore_requests_until_ready();
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
            prepare_maildrop(&config, None);
            // Durably: a power cut must not take the new data_dir (and the
            // mail soon in it) away with its unsynced name.
            crate::store::durable::create_dir_all_durable(&data_dir)
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
            prepare_maildrop(&config, Some((account.uid, account.gid)));
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
    // As the user, before any connection: bodies a crash left in the
    // spool were never answered 250; their clients send them again.
    match crate::store::spool::prepare(&data_dir) {
        Ok(0) => {}
        Ok(n) => info!("spool: removed {n} unfinished message bodies"),
        Err(e) => {
            return Err(format!(
                "cannot prepare {}: {e}",
                crate::store::spool::dir(&data_dir).display()
            ))
        }
    }
    let (workers, done_rx) = Workers::with_lanes(WRITE_THREADS, QUICK_THREADS, waker);
    let registry = ev
        .registry()
        .map_err(|e| format!("cannot clone the poll registry: {e}"))?;
    // Read before the first tick (as the queue is), so the first runs of
    // OAuth2 accounts already have their tokens.
    let mut tokens = Tokens::new(&config);
    let unix = crate::oauth::unix_now();
    for (name, got) in load_tokens(&data_dir, tokens.take_loads(unix)) {
        tokens.loaded(&name, got, unix);
    }
    let mut server = Server {
        outbox,
        tokens,
        smartpop: SmartPop::new(&config, Instant::now()),
        reloading: false,
        reload_again: false,
        pickup: Pickup {
            running: false,
            wanted: true,
            next_scan: Instant::now(),
        },
    };
    // After the workers: the bell is a thread of its own.
    if let Err(e) = crate::pickup::start_bell(&config.server.maildrop) {
        warn!("{e}; the maildrop is still scanned every minute");
    }
    let mut sv = Services::new(Arc::new(config), tls, workers, registry);
    info!(
        "mailgate {} serving {}",
        env!("CARGO_PKG_VERSION"),
        config_path.display()
    );
    ev.run(&mut sv, &mut server, done_rx)
        .map_err(|e| format!("event loop failed: {e}"))
}
