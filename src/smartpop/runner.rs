//! SmartPop's schedule: each account is polled every `interval`, or at
//! once on `mailgate fetch`; one run per account at a time, accounts
//! independent of each other.
//!
//! Lives on the loop thread inside `Shared`; spawns one
//! `conn::pop3_fetch` driver per run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, warn};

use crate::config::Config;
use crate::conn::pop3_fetch::Pop3FetchDriver;
use crate::event_loop::Driver;
use crate::smartpop::records::{records_path, Records};

/// A run that fails to start (bad CA file) is tried again after this.
const RETRY_BROKEN: Duration = Duration::from_secs(300);

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

    /// Starts the runs that are due.
    pub fn tick(
        &mut self,
        config: &Arc<Config>,
        now: Instant,
        stopping: bool,
    ) -> Vec<Box<dyn Driver>> {
        let mut drivers: Vec<Box<dyn Driver>> = Vec::new();
        if stopping {
            return drivers;
        }
        for account in &config.smartpop {
            let Some(state) = self.accounts.get_mut(&account.name) else {
                continue;
            };
            if state.running || state.next_poll > now {
                continue;
            }
            state.next_poll = now + account.interval;
            let tls = match crate::tls::client_config(account.ca_file.as_deref()) {
                Ok(t) => t,
                Err(e) => {
                    error!("smartpop {}: {e}", account.name);
                    state.next_poll = now + RETRY_BROKEN;
                    continue;
                }
            };
            let records = match records_path(&config.server.data_dir, &account.name) {
                Ok(path) => match Records::load(path.clone()) {
                    Ok(mut r) => {
                        // Renames cut by a crash (only then is there work).
                        if let Err(e) = r.finish_staged(&config.server.data_dir) {
                            error!(
                                "smartpop {}: cannot finish staged deliveries: {e}",
                                account.name
                            );
                            state.next_poll = now + RETRY_BROKEN;
                            continue;
                        }
                        r
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Records::empty(path),
                    Err(e) => {
                        // Without the records we could fetch twice: wait.
                        error!(
                            "smartpop {}: cannot read {}: {e}",
                            account.name,
                            path.display()
                        );
                        state.next_poll = now + RETRY_BROKEN;
                        continue;
                    }
                },
                Err(e) => {
                    error!("smartpop {}: bad account name: {e:?}", account.name);
                    continue;
                }
            };
            if let Some(dir) = records.path().parent() {
                if let Err(e) = std::fs::create_dir_all(dir) {
                    warn!("smartpop: cannot create {}: {e}", dir.display());
                }
            }
            debug!(
                "smartpop {}: polling {}:{}",
                account.name, account.host.host, account.host.port
            );
            state.running = true;
            drivers.push(Box::new(Pop3FetchDriver::new(
                account.clone(),
                Arc::clone(config),
                tls,
                records,
            )));
        }
        drivers
    }

    /// A run ended; the next one is at its interval (set when it started).
    pub fn finished(&mut self, name: &str) {
        if let Some(a) = self.accounts.get_mut(name) {
            a.running = false;
        }
    }
}
