//! OAuth2 sign-in for SmartPop accounts and the smarthost: which accounts
//! sign in where, the token store, the CLI login and the server's
//! refresh schedule.
//!
//! Owns: `data_dir/oauth/NAME` files (`store`), `mailgate oauth login` and
//! `status` (`login`, blocking: the CLI, never the server), and the loop's
//! view of every account's token (`tokens`, no IO). Must not: log a token.
//! The HTTP and OAuth2 messages are in `proto::oauth` and `proto::http`;
//! the server's refresh exchange is the driver `conn::oauth_refresh`.

pub mod login;
pub mod store;
pub mod tokens;

use std::path::PathBuf;

use crate::config::{Config, OAuthConfig, OAuthProvider};
use crate::proto::oauth::{self, Client, Endpoints};

/// The token file name of the outbox smarthost's account.
pub const OUTBOX: &str = "outbox";

/// One account that signs in with OAuth2.
#[derive(Debug, Clone)]
pub struct Account {
    /// `[smartpop NAME]`, or [`OUTBOX`].
    pub name: String,
    pub username: String,
    pub oauth: OAuthConfig,
    /// Also verifies the token endpoint's certificate (besides web roots).
    pub ca_file: Option<PathBuf>,
    /// Who is told when the grant is revoked: the postmaster, else the
    /// SmartPop account's `deliver_to`.
    pub notify: Option<String>,
}

/// Every `auth = oauth2` account of the config.
pub fn accounts(config: &Config) -> Vec<Account> {
    let mut out = Vec::new();
    for a in &config.smartpop {
        if let Some(o) = &a.oauth {
            out.push(Account {
                name: a.name.clone(),
                username: a.username.clone(),
                oauth: o.clone(),
                ca_file: a.ca_file.clone(),
                notify: config
                    .server
                    .postmaster
                    .clone()
                    .or_else(|| Some(a.deliver_to.clone())),
            });
        }
    }
    if let (Some(o), Some(user)) = (&config.outbox.oauth, &config.outbox.username) {
        out.push(Account {
            name: OUTBOX.to_string(),
            username: user.clone(),
            oauth: o.clone(),
            ca_file: config.outbox.ca_file.clone(),
            notify: config.server.postmaster.clone(),
        });
    }
    out
}

/// The provider's built-in endpoints with the config's overrides.
pub fn endpoints(o: &OAuthConfig) -> Endpoints {
    let mut e = match o.provider {
        OAuthProvider::Microsoft => oauth::microsoft(),
        OAuthProvider::Google => oauth::google(),
        // The config insists on token_url and scope for custom.
        OAuthProvider::Custom => Endpoints {
            authorize_url: String::new(),
            token_url: String::new(),
            device_url: None,
            scope: String::new(),
        },
    };
    if let Some(u) = &o.authorize_url {
        e.authorize_url = u.clone();
    }
    if let Some(u) = &o.token_url {
        e.token_url = u.clone();
    }
    if let Some(u) = &o.device_url {
        e.device_url = Some(u.clone());
    }
    if let Some(s) = &o.scope {
        e.scope = s.clone();
    }
    e
}

pub fn client(o: &OAuthConfig) -> Client {
    Client {
        id: o.client_id.clone(),
        secret: o.client_secret.clone(),
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
