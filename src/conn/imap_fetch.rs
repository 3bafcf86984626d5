//! SmartPop collection over IMAP (`protocol = imap`): how the shared
//! collection driver (`fetch::FetchDriver`) starts an `ImapFetch` session
//! for an account, and the IDLE hooks that keep it connected for push.
//!
//! Owns: the account's settings as the IMAP core's `ImapParams` (a
//! collection run, or a push watcher of one folder). Must
//! not: do any of the driver's work (that is `fetch`).

use std::time::Duration;

use super::fetch::{Collect, FetchDriver};
use crate::config::{Config, SmartPopConfig, TlsMode};
use crate::proto::imap_client::{
    Auth, FetchError, FetchEvent, FetchSummary, ImapFetch, ImapKeep, ImapParams, IDLE_REFRESH,
    NO_IDLE,
};
use crate::smartpop::records::Records;

pub type ImapFetchDriver = FetchDriver<ImapFetch>;

impl Collect for ImapFetch {
    fn open(
        account: &SmartPopConfig,
        config: &Config,
        records: Option<&Records>,
        tls_active: bool,
        watch: bool,
    ) -> ImapFetch {
        let params = ImapParams {
            account: account.name.clone(),
            // With auth = oauth2 the server put the access token in
            // `password`.
            auth: if account.oauth.is_some() {
                Auth::Bearer {
                    user: account.username.clone(),
                    token: account.password.clone(),
                }
            } else {
                Auth::Password {
                    user: account.username.clone(),
                    pass: account.password.clone(),
                }
            },
            starttls: account.tls == TlsMode::StartTls,
            tls_active,
            folders: account.folders.clone(),
            keep: match &account.move_to {
                Some(f) => ImapKeep::Move(f.clone()),
                None => ImapKeep::Keep(account.keep),
            },
            idle: account.idle,
            watch,
            max_message_size: config.smtp.max_message_size,
            now: crate::outbox::unix_secs(std::time::SystemTime::now()),
        };
        ImapFetch::new(params, records.iter().flat_map(|r| r.iter()))
    }

    fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        ImapFetch::receive(self, input, out, events)
    }

    fn tls_started(&mut self, out: &mut Vec<u8>) {
        ImapFetch::tls_started(self, out)
    }

    fn delivered(&mut self, ok: bool, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        ImapFetch::delivered(self, ok, out, events)
    }

    fn rejected(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        ImapFetch::rejected(self, out, events)
    }

    fn connection_lost(&mut self) -> FetchSummary {
        ImapFetch::connection_lost(self)
    }

    fn abort(&mut self, e: FetchError) -> FetchSummary {
        ImapFetch::abort(self, e)
    }

    fn idling(&self) -> bool {
        ImapFetch::idling(self)
    }

    /// `IDLE_REFRESH`, or shorter with the hidden test knob
    /// `MAILGATE_TEST_IDLE_REFRESH=SECONDS` (the tests cannot wait 25
    /// minutes to see IDLE re-issued; it can never make the wait longer).
    /// Read at each IDLE, which is rare: no process-wide cache (house rule).
    fn idle_refresh(&self) -> Duration {
        std::env::var("MAILGATE_TEST_IDLE_REFRESH")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(IDLE_REFRESH, Duration::from_secs)
            .min(IDLE_REFRESH)
    }

    fn refresh_idle(&mut self, out: &mut Vec<u8>) {
        ImapFetch::refresh_idle(self, out)
    }

    fn push_unsupported(e: &FetchError) -> bool {
        matches!(e, FetchError::Protocol(why) if why == NO_IDLE)
    }
}
