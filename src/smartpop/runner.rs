//! SmartPop's schedule: each account is polled every `interval`, or at
//! once on `mailgate fetch`; one run per account at a time, accounts
//! independent of each other.
//!
//! Lives on the loop thread and touches no file: it returns one
//! `FetchJob` per run due, which the server turns into a collection
//! driver.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;

use crate::config::{Config, SmartPopConfig};

/// A run that fails to start (bad CA file) is tried again after this.
const RETRY_BROKEN: Duration = Duration::from_secs(300);

/// One collection run to make.
pub struct FetchJob {
    pub account: SmartPopConfig,
    pub config: Arc<Config>,
}

struct Account {
    next_poll: Instant,
    running: bool,
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
            self.accounts.entry(a.name.clone()).or_insert(Account {
                next_poll: now,
                running: false,
            });
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
        self.accounts
            .values()
            .filter(|a| !a.running)
            .map(|a| a.next_poll)
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
            });
        }
        jobs
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
