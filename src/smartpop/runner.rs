//! SmartPop's schedule: each account is polled every `interval`, or at
//! once on `mailgate fetch` or when a push watcher saw new mail; one run
//! per account at a time, accounts independent of each other. An IMAP
//! account with `idle = yes` and several folders also keeps one push
//! watcher per folder (a single folder idles inside its run instead).
//!
//! Lives on the loop thread and touches no file: it returns one
//! `FetchJob` per run due, which the server turns into a collection
//! driver.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info};

use crate::config::{Config, SmartPopConfig};

/// A run that fails to start (bad CA file) is tried again after this.
const RETRY_BROKEN: Duration = Duration::from_secs(300);

/// A push watcher that ended (it could not connect or log in; a dropped
/// connection it reconnects itself) is started again after this.
const RETRY_WATCH: Duration = Duration::from_secs(60);

/// One collection run to make.
pub struct FetchJob {
    pub account: SmartPopConfig,
    pub config: Arc<Config>,
    /// A push watcher of this folder, not a collection run.
    pub watch: Option<String>,
}

struct Account {
    next_poll: Instant,
    running: bool,
    /// Folders with a push watcher running.
    watching: HashSet<String>,
    /// Watchers are (re)started from then on.
    watch_after: Instant,
    /// The server offers no IDLE: no watchers until a reload.
    push_off: bool,
    /// The folders to keep a watcher on (none unless `watched`).
    push_folders: Vec<String>,
}

impl Account {
    fn missing_watcher(&self) -> Option<&String> {
        if self.push_off {
            return None;
        }
        self.push_folders
            .iter()
            .find(|f| !self.watching.contains(*f))
    }
}

/// Push over one connection per folder (a single folder's run idles).
fn watched(a: &SmartPopConfig) -> bool {
    a.imap && a.idle && a.folders.len() > 1
}

#[derive(Default)]
pub struct SmartPop {
    accounts: HashMap<String, Account>,
}

impl SmartPop {
    /// Every account polls once soon after start, then every `interval`.
    pub fn new(config: &Config, now: Instant) -> SmartPop {
        let mut s = SmartPop::default();
        s.reload(config, now);
        s
    }

    /// Adds new accounts, forgets removed ones, keeps running ones' state.
    pub fn reload(&mut self, config: &Config, now: Instant) {
        self.accounts
            .retain(|name, _| config.smartpop.iter().any(|a| &a.name == name));
        for a in &config.smartpop {
            let state = self.accounts.entry(a.name.clone()).or_insert(Account {
                next_poll: now,
                running: false,
                watching: HashSet::new(),
                watch_after: now,
                push_off: false,
                push_folders: Vec::new(),
            });
            // A reload may have fixed the server or the folders.
            state.push_off = false;
            state.push_folders = if watched(a) {
                a.folders.clone()
            } else {
                Vec::new()
            };
        }
    }

    /// `mailgate fetch [ACCOUNT]`.
    pub fn request(&mut self, account: Option<&str>, now: Instant) {
        for (name, a) in self.accounts.iter_mut() {
            if account.is_none_or(|want| want == name) {
                a.next_poll = now;
            }
        }
    }

    pub fn next_wakeup(&self) -> Option<Instant> {
        let polls = self
            .accounts
            .values()
            .filter(|a| !a.running)
            .map(|a| a.next_poll);
        polls.chain(self.watch_due()).min()
    }

    /// When watchers not running yet are to start.
    fn watch_due(&self) -> Option<Instant> {
        self.accounts
            .values()
            .filter(|a| a.missing_watcher().is_some())
            .map(|a| a.watch_after)
            .min()
    }

    /// Jobs for the runs that are due. Each run reads its account's records
    /// (and finishes deliveries a crash cut short) on a worker first.
    pub fn tick(&mut self, config: &Arc<Config>, now: Instant, stopping: bool) -> Vec<FetchJob> {
        let mut jobs = Vec::new();
        if stopping {
            return jobs;
        }
        for account in &config.smartpop {
            let Some(state) = self.accounts.get_mut(&account.name) else {
                continue;
            };
            if state.running || state.next_poll > now {
                continue;
            }
            state.next_poll = now + account.interval;
            debug!(
                "smartpop {}: polling {}:{}",
                account.name, account.host.host, account.host.port
            );
            state.running = true;
            jobs.push(FetchJob {
                account: account.clone(),
                config: Arc::clone(config),
                watch: None,
            });
        }
        for account in &config.smartpop {
            let Some(state) = self.accounts.get_mut(&account.name) else {
                continue;
            };
            if state.watch_after > now {
                continue;
            }
            while let Some(folder) = state.missing_watcher().cloned() {
                debug!("smartpop {}: push watcher for {folder}", account.name);
                state.watching.insert(folder.clone());
                jobs.push(FetchJob {
                    account: account.clone(),
                    config: Arc::clone(config),
                    watch: Some(folder),
                });
            }
        }
        jobs
    }

    /// A push watcher ended: without IDLE at the server the account polls
    /// (its runs log out); otherwise it is started again after a pause.
    pub fn watch_done(&mut self, name: &str, folder: &str, unsupported: bool, now: Instant) {
        if let Some(a) = self.accounts.get_mut(name) {
            a.watching.remove(folder);
            if unsupported && !a.push_off {
                a.push_off = true;
                info!("smartpop {name}: the server offers no IDLE; polling every interval");
            } else {
                a.watch_after = now + RETRY_WATCH;
            }
        }
    }

    /// A run could not start (records unreadable, bad CA file): try again
    /// after a pause rather than at every interval's end.
    pub fn broken(&mut self, name: &str, now: Instant) {
        if let Some(a) = self.accounts.get_mut(name) {
            a.next_poll = a.next_poll.max(now + RETRY_BROKEN);
        }
    }

    /// A run ended; the next one is at its interval (set when it started).
    pub fn finished(&mut self, name: &str) {
        if let Some(a) = self.accounts.get_mut(name) {
            a.running = false;
        }
    }
}
