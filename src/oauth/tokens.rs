//! The loop's view of every OAuth2 account's token: which access token a
//! collection run or the outbox uses now, when each is refreshed, and which
//! accounts are stopped (revoked grant). No IO: the files are read and
//! written by workers, the refresh exchange is `conn::oauth_refresh`.
//!
//! Refresh is due [`REFRESH_AHEAD`] before the access token expires; a
//! failure other than a revoked grant is tried again after a pause that
//! doubles up to an hour (never a retry storm). A revoked grant stops the
//! account until a new `mailgate oauth login`: accounts without a usable
//! token have their file read again every [`RELOAD_EVERY`] seconds, so a
//! login made while the server runs is taken up without a restart.

use std::collections::HashMap;

use log::{error, info, warn};

use super::store::{Stored, EXPIRY_MARGIN_SECS};
use crate::config::Config;

/// Seconds before expiry at which the access token is refreshed.
pub const REFRESH_AHEAD: u64 = 300;
/// Seconds between reads of the file of an account without a usable token.
pub const RELOAD_EVERY: u64 = 30;
/// Longest pause between failed refreshes.
const MAX_BACKOFF: u64 = 3600;

/// `last_error` of a revoked grant starts with this, so a restart does not
/// refresh (and notify) again.
pub const REVOKED_PREFIX: &str = "revoked: ";

/// How a refresh ended, after its worker wrote the result.
#[derive(Debug)]
pub enum Refreshed {
    /// New tokens, durably stored.
    Ok(Stored),
    /// `invalid_grant`: only a new login helps.
    Revoked(String),
    /// Anything else (unreachable, garbage, a 500): try again later.
    Failed(String),
}

#[derive(Debug, Default)]
struct Entry {
    /// The file was read at least once.
    loaded: bool,
    tokens: Option<Stored>,
    refreshing: bool,
    loading: bool,
    revoked: bool,
    /// Unix seconds before which no refresh is tried again.
    retry_at: u64,
    failures: u32,
    /// Unix seconds of the next read of the file (no usable token).
    reload_at: u64,
    /// "not signed in" was logged.
    told_missing: bool,
}

impl Entry {
    /// The file is worth reading (again): never read, or no token that
    /// works or can be refreshed.
    fn wants_file(&self, now: u64) -> bool {
        let live = !self.revoked
            && self
                .tokens
                .as_ref()
                .is_some_and(|t| usable(t, now) || t.refresh_token.is_some());
        !self.loaded || !live
    }
}

#[derive(Debug, Default)]
pub struct Tokens {
    accounts: HashMap<String, Entry>,
    /// The server is stopping: no refresh starts, so none is due.
    halted: bool,
}

impl Tokens {
    pub fn new(config: &Config) -> Tokens {
        let mut t = Tokens::default();
        t.reload(config);
        t
    }

    /// Keeps the entries of accounts still configured, adds new ones.
    pub fn reload(&mut self, config: &Config) {
        let names: Vec<String> = super::accounts(config)
            .into_iter()
            .map(|a| a.name)
            .collect();
        self.accounts.retain(|n, _| names.contains(n));
        for n in names {
            self.accounts.entry(n).or_default();
        }
    }

    /// Accounts whose file is to be read now (at start, and those without
    /// a usable token every `RELOAD_EVERY`); marks them loading.
    pub fn take_loads(&mut self, now: u64) -> Vec<String> {
        let mut out = Vec::new();
        for (name, e) in &mut self.accounts {
            if e.loading || e.refreshing || now < e.reload_at {
                continue;
            }
            if e.wants_file(now) {
                e.loading = true;
                out.push(name.clone());
            }
        }
        out
    }

    /// `mailgate fetch`: read the files of accounts without a usable
    /// token at the next tick (a login just made is taken up at once).
    pub fn reload_soon(&mut self) {
        for e in self.accounts.values_mut() {
            e.reload_at = 0;
        }
    }

    /// A worker read the file of `name`.
    pub fn loaded(&mut self, name: &str, got: Result<Option<Stored>, String>, now: u64) {
        let Some(e) = self.accounts.get_mut(name) else {
            return;
        };
        e.loading = false;
        e.reload_at = now + RELOAD_EVERY;
        match got {
            Err(err) => {
                if !e.loaded {
                    error!("oauth {name}: cannot read its tokens: {err}");
                }
            }
            Ok(None) => {
                if !e.told_missing {
                    warn!("oauth {name}: not signed in; run mailgate oauth login {name}");
                    e.told_missing = true;
                }
                e.tokens = None;
            }
            Ok(Some(t)) => {
                let revoked = t
                    .last_error
                    .as_deref()
                    .is_some_and(|l| l.starts_with(REVOKED_PREFIX));
                if e.revoked && !revoked {
                    info!("oauth {name}: signed in again");
                    e.failures = 0;
                    e.retry_at = 0;
                } else if revoked && !e.loaded {
                    warn!("oauth {name}: stopped, its grant was revoked; run mailgate oauth login {name}");
                }
                e.revoked = revoked;
                e.told_missing = false;
                e.tokens = Some(t);
            }
        }
        e.loaded = true;
    }

    /// The access token for a session starting now, if there is one that
    /// stays valid for the session.
    pub fn access(&self, name: &str, now: u64) -> Option<String> {
        let e = self.accounts.get(name)?;
        let t = e.tokens.as_ref()?;
        (!e.revoked && usable(t, now)).then(|| t.access_token.clone())
    }

    /// Is the account stopped for good (revoked, or never signed in)?
    pub fn stopped(&self, name: &str) -> bool {
        self.accounts
            .get(name)
            .is_some_and(|e| e.loaded && (e.revoked || e.tokens.is_none()))
    }

    /// The server is stopping: nothing more is due.
    pub fn halt(&mut self) {
        self.halted = true;
    }

    /// Refreshes due now, as (account, refresh token); marks them running.
    pub fn take_due(&mut self, now: u64) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.halted {
            return out;
        }
        for (name, e) in &mut self.accounts {
            if e.refreshing || e.loading || e.revoked || now < e.retry_at {
                continue;
            }
            let Some(t) = &e.tokens else { continue };
            let Some(refresh) = &t.refresh_token else {
                continue;
            };
            if t.expires_at > now.saturating_add(REFRESH_AHEAD) {
                continue;
            }
            e.refreshing = true;
            out.push((name.clone(), refresh.clone()));
        }
        out
    }

    /// A refresh of `name` ended (and its result is on disk).
    pub fn refreshed(&mut self, name: &str, r: Refreshed, now: u64) {
        let Some(e) = self.accounts.get_mut(name) else {
            return;
        };
        e.refreshing = false;
        match r {
            Refreshed::Ok(t) => {
                info!(
                    "oauth {name}: access token refreshed, valid for {} s",
                    t.expires_at.saturating_sub(now)
                );
                e.failures = 0;
                e.retry_at = 0;
                e.tokens = Some(t);
            }
            Refreshed::Revoked(why) => {
                error!("oauth {name}: stopped: {why}");
                e.revoked = true;
                e.reload_at = now + RELOAD_EVERY;
            }
            Refreshed::Failed(why) => {
                let pause = 60u64
                    .saturating_mul(1 << e.failures.min(6))
                    .min(MAX_BACKOFF);
                e.failures = e.failures.saturating_add(1);
                e.retry_at = now + pause;
                warn!("oauth {name}: refresh failed: {why}; trying again in {pause} s");
            }
        }
    }

    /// Unix seconds of the next refresh or file read.
    pub fn next_wakeup(&self, now: u64) -> Option<u64> {
        if self.halted {
            return None;
        }
        self.accounts
            .values()
            .filter(|e| !e.refreshing && !e.loading)
            .filter_map(|e| {
                let refresh = match &e.tokens {
                    Some(t) if !e.revoked && t.refresh_token.is_some() => {
                        Some(t.expires_at.saturating_sub(REFRESH_AHEAD).max(e.retry_at))
                    }
                    _ => None,
                };
                let reload = e.wants_file(now).then_some(e.reload_at);
                [refresh, reload].into_iter().flatten().min()
            })
            .min()
    }
}

fn usable(t: &Stored, now: u64) -> bool {
    !t.access_token.is_empty()
        && (t.expires_at == 0 || t.expires_at > now.saturating_add(EXPIRY_MARGIN_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(names: &[&str]) -> Tokens {
        let mut t = Tokens::default();
        for n in names {
            t.accounts.insert(n.to_string(), Entry::default());
        }
        t
    }

    fn stored(access: &str, refresh: Option<&str>, expires_at: u64) -> Stored {
        Stored {
            access_token: access.into(),
            refresh_token: refresh.map(str::to_string),
            expires_at,
            last_error: None,
        }
    }

    #[test]
    fn schedule() {
        let mut t = tokens(&["a", "b"]);
        let mut loads = t.take_loads(1000);
        loads.sort();
        assert_eq!(loads, ["a", "b"]);
        assert!(t.take_loads(1000).is_empty(), "loading already");
        t.loaded("a", Ok(Some(stored("at", Some("rt"), 5000))), 1000);
        t.loaded("b", Ok(None), 1000);
        assert_eq!(t.access("a", 1000).as_deref(), Some("at"));
        assert_eq!(t.access("b", 1000), None);
        assert!(t.stopped("b") && !t.stopped("a"));
        assert!(t.take_due(1000).is_empty());
        assert_eq!(t.next_wakeup(1000), Some(1000 + RELOAD_EVERY));
        // b is read again after RELOAD_EVERY; a is not (it has a token).
        assert_eq!(t.take_loads(1000 + RELOAD_EVERY), ["b"]);
        t.loaded("b", Ok(None), 1030);
        // a is refreshed REFRESH_AHEAD before expiry.
        assert!(t.take_due(5000 - REFRESH_AHEAD - 1).is_empty());
        assert_eq!(
            t.take_due(5000 - REFRESH_AHEAD),
            [("a".to_string(), "rt".to_string())]
        );
        assert!(t.take_due(5000).is_empty(), "one at a time");
        // A failure pauses 60 s, then 120 s.
        t.refreshed("a", Refreshed::Failed("HTTP 500".into()), 4800);
        assert!(t.take_due(4859).is_empty());
        assert_eq!(t.take_due(4860).len(), 1);
        t.refreshed("a", Refreshed::Failed("HTTP 500".into()), 4860);
        assert!(t.take_due(4979).is_empty());
        assert_eq!(t.take_due(4980).len(), 1);
        t.refreshed("a", Refreshed::Ok(stored("at2", Some("rt2"), 8600)), 5000);
        assert_eq!(t.access("a", 5000).as_deref(), Some("at2"));
        assert_eq!(t.take_due(8300), [("a".to_string(), "rt2".to_string())]);
        // Revoked: stopped, no more refreshes, the file is watched.
        t.refreshed("a", Refreshed::Revoked("invalid_grant".into()), 8300);
        assert!(t.stopped("a"));
        assert_eq!(t.access("a", 8300), None);
        assert!(t.take_due(99_999).is_empty());
        let mut loads = t.take_loads(8300 + RELOAD_EVERY);
        loads.sort();
        assert_eq!(loads, ["a", "b"]);
        // A new login (no revoked mark) brings it back.
        t.loaded("a", Ok(Some(stored("at3", Some("rt3"), 20_000))), 8330);
        assert!(!t.stopped("a"));
        assert_eq!(t.access("a", 8330).as_deref(), Some("at3"));
        // A revoked mark read at start stops it too.
        let mut r = tokens(&["c"]);
        r.take_loads(0);
        let mut s = stored("x", Some("y"), 1);
        s.last_error = Some(format!("{REVOKED_PREFIX}invalid_grant"));
        r.loaded("c", Ok(Some(s)), 0);
        assert!(r.stopped("c"));
        assert!(r.take_due(10).is_empty());
        // Stopping: nothing is due, nothing wakes the loop.
        t.halt();
        assert!(t.take_due(99_999).is_empty());
        assert_eq!(t.next_wakeup(99_999), None);
    }
}
