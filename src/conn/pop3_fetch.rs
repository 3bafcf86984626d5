//! SmartPop collection over POP3: how the shared collection driver
//! (`fetch::FetchDriver`) starts a `Pop3Fetch` session for an account.
//!
//! Owns: the account's settings as the POP3 core's `FetchParams`. Must
//! not: do any of the driver's work (that is `fetch`).

use super::fetch::{Collect, FetchDriver};
use crate::config::{Config, SmartPopConfig};
use crate::proto::pop3_client::{FetchError, FetchEvent, FetchParams, FetchSummary, Pop3Fetch};
use crate::smartpop::records::Records;

pub type Pop3FetchDriver = FetchDriver<Pop3Fetch>;

impl Collect for Pop3Fetch {
    fn open(
        account: &SmartPopConfig,
        config: &Config,
        records: Option<&Records>,
        tls_active: bool,
        _watch: bool,
    ) -> Pop3Fetch {
        let params = FetchParams {
            account: account.name.clone(),
            username: account.username.clone(),
            // With auth = oauth2 the server put the access token here.
            password: account.password.clone(),
            bearer: account.oauth.is_some(),
            tls: account.tls,
            tls_active,
            keep: account.keep,
            max_message_size: config.smtp.max_message_size,
            now: crate::outbox::unix_secs(std::time::SystemTime::now()),
        };
        Pop3Fetch::new(params, records.iter().flat_map(|r| r.iter()))
    }

    fn receive(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        Pop3Fetch::receive(self, input, out, events)
    }

    fn tls_started(&mut self, out: &mut Vec<u8>) {
        Pop3Fetch::tls_started(self, out)
    }

    fn delivered(&mut self, ok: bool, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        Pop3Fetch::delivered(self, ok, out, events)
    }

    fn rejected(&mut self, out: &mut Vec<u8>, events: &mut Vec<FetchEvent>) {
        Pop3Fetch::rejected(self, out, events)
    }

    fn connection_lost(&mut self) -> FetchSummary {
        Pop3Fetch::connection_lost(self)
    }

    fn abort(&mut self, e: FetchError) -> FetchSummary {
        Pop3Fetch::abort(self, e)
    }
}
