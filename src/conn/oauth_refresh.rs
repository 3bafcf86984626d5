//! Driver for one OAuth2 refresh (RFC 6749 6) in the server: the token
//! endpoint's HTTPS exchange in the loop, the files on workers.
//!
//! Owns: the steps of one refresh: a worker builds the TLS setup (it may
//! read `ca_file`); the one outbound connector reaches the token endpoint;
//! rustls through the usual `Transport`; `proto::http` writes the POST and
//! reads the bounded answer; `proto::oauth` reads the tokens; a worker
//! stores them durably (a rotated refresh token is on disk before anything
//! uses it) or records the failure, and on a revoked grant tells the
//! postmaster once. Must not: log a token, touch a file on the loop thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Interest;

use super::{Ctx, Driver, Effect, Outcome};
use crate::config::{Config, HostPort};
use crate::net::connector::{Connect, Connector, Destination};
use crate::net::transport::{ReadStatus, Transport};
use crate::oauth::tokens::{Refreshed, REVOKED_PREFIX};
use crate::oauth::{store, Account};
use crate::proto::http::{self, ResponseParser, Url};
use crate::proto::oauth::{self, TokenError};

/// The whole exchange, connect included, may take this long.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the server asks for.
pub struct RefreshJob {
    pub account: Account,
    pub refresh_token: String,
    pub config: Arc<Config>,
}

enum Phase {
    Start,
    Preparing,
    Connecting,
    Session {
        t: Box<Transport>,
        parser: ResponseParser,
    },
    Saving,
    Done,
}

pub struct OAuthRefresh {
    job: RefreshJob,
    url: Option<Url>,
    connector: Connector,
    tls: Option<Arc<rustls::ClientConfig>>,
    phase: Phase,
    deadline: Instant,
}

impl OAuthRefresh {
    pub fn new(job: RefreshJob) -> OAuthRefresh {
        let url = Url::parse(&crate::oauth::endpoints(&job.account.oauth).token_url).ok();
        let hosts = url
            .iter()
            .map(|u| HostPort {
                host: u.host.clone(),
                port: u.port,
            })
            .collect();
        OAuthRefresh {
            connector: Connector::new(Destination::Hosts(hosts), job.config.resolver),
            url,
            job,
            tls: None,
            phase: Phase::Start,
            deadline: Instant::now() + TIMEOUT,
        }
    }

    fn name(&self) -> &str {
        &self.job.account.name
    }

    /// The exchange is over: a worker writes what it brought.
    fn conclude(&mut self, answer: Result<oauth::Tokens, TokenError>, cx: &mut Ctx) {
        if let Phase::Session { t, .. } = &mut self.phase {
            t.close();
            let _ = cx.registry().deregister(t.socket());
        }
        self.phase = Phase::Saving;
        let config = Arc::clone(&self.job.config);
        let account = self.job.account.clone();
        let old_refresh = self.job.refresh_token.clone();
        cx.submit(move || Outcome::OAuthSaved(save(&config, &account, &old_refresh, answer)));
    }

    fn fail(&mut self, why: String, cx: &mut Ctx) {
        self.conclude(Err(TokenError::Garbage(why)), cx);
    }

    fn connect_step(&mut self, step: Connect, cx: &mut Ctx) {
        match step {
            Connect::Pending => self.phase = Phase::Connecting,
            Connect::Connected(mut t) => {
                let (Some(url), Some(tls)) = (&self.url, &self.tls) else {
                    return self.fail("no token endpoint".into(), cx);
                };
                if let Err(e) = t.start_tls_client(tls, &url.host) {
                    return self.fail(format!("TLS: {e}"), cx);
                }
                let client = crate::oauth::client(&self.job.account.oauth);
                t.queue(&http::post_form(
                    url,
                    &client.refresh(&self.job.refresh_token),
                ));
                self.phase = Phase::Session {
                    t,
                    parser: ResponseParser::new(),
                };
                self.pump(cx);
            }
            Connect::Exhausted => {
                let why = if let Some(e) = self.connector.connect_error() {
                    e.to_string()
                } else if let Some((what, f)) = self.connector.lookup_failure() {
                    format!("cannot resolve {what}: {}", f.reason)
                } else {
                    "no address".to_string()
                };
                self.fail(why, cx);
            }
        }
    }

    fn pump(&mut self, cx: &mut Ctx) {
        let Phase::Session { t, parser } = &mut self.phase else {
            return;
        };
        let mut input = Vec::new();
        let result = loop {
            if let Err(e) = t.flush() {
                break Some(Err(format!("token endpoint: {e}")));
            }
            input.clear();
            match t.read(&mut input, 16 * 1024) {
                Ok(ReadStatus::Data(0)) => continue,
                Ok(ReadStatus::Data(_)) => match parser.feed(&input) {
                    Ok(Some(r)) => break Some(Ok(r)),
                    Ok(None) => {}
                    Err(e) => break Some(Err(e)),
                },
                Ok(ReadStatus::WouldBlock) => break None,
                Ok(ReadStatus::Closed) => break Some(parser.finish()),
                Err(e) if t.tls_established() && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    break Some(parser.finish())
                }
                Err(e) => break Some(Err(format!("token endpoint: {e}"))),
            }
        };
        match result {
            None => {
                let interest = t.interest();
                let _ = cx.registry().reregister(t.socket(), cx.token, interest);
            }
            Some(Ok(r)) => {
                let answer = oauth::parse_tokens(r.status, r.content_type.as_deref(), &r.body);
                self.conclude(answer, cx);
            }
            Some(Err(e)) => self.fail(e, cx),
        }
    }
}

/// On a worker: stores the new tokens, or records why there are none (the
/// tokens on disk stay). A revoked grant is marked so that neither this
/// run nor the next start tries it again, and the owner is told once.
fn save(
    config: &Config,
    account: &Account,
    old_refresh: &str,
    answer: Result<oauth::Tokens, TokenError>,
) -> Refreshed {
    let data_dir = &config.server.data_dir;
    let name = &account.name;
    match answer {
        Ok(t) => {
            let now = crate::oauth::unix_now();
            let s = crate::oauth::login::stored(&t, Some(old_refresh), now);
            match store::save(data_dir, name, &s) {
                Ok(()) => Refreshed::Ok(s),
                Err(e) => Refreshed::Failed(format!("cannot store the new tokens: {e}")),
            }
        }
        Err(e @ TokenError::Revoked(_)) => {
            let why = e.to_string();
            let _ = store::set_error(data_dir, name, Some(&format!("{REVOKED_PREFIX}{why}")));
            if let Some(to) = &account.notify {
                revoked_notice(config, account, to, &why);
            }
            Refreshed::Revoked(why)
        }
        Err(e) => {
            let why = e.to_string();
            let _ = store::set_error(data_dir, name, Some(&why));
            Refreshed::Failed(why)
        }
    }
}

/// The mail telling `to` that `account` stopped.
fn revoked_notice(config: &Config, account: &Account, to: &str, why: &str) {
    use crate::store::deliver::{self, LocalDelivery, LocalRecipient};
    use crate::store::message::Message;
    use crate::store::trace::{self, TraceInfo};
    let Some(resolution) = config.resolve(to) else {
        log::warn!(
            "oauth {}: no local mailbox for the notice to {to}",
            account.name
        );
        return;
    };
    let now = std::time::SystemTime::now();
    let hostname = &config.server.hostname;
    let what = if account.name == crate::oauth::OUTBOX {
        "The outbox can no longer sign in at its smarthost".to_string()
    } else {
        format!("SmartPop account {} no longer collects mail", account.name)
    };
    let text = format!(
        "From: MAILER-DAEMON@{hostname}\r\nTo: {to}\r\nSubject: OAuth2 sign-in of {name} revoked\r\n\
         Date: {date}\r\nMessage-ID: <{id}@{hostname}>\r\nAuto-Submitted: auto-generated\r\n\r\n\
         {what}: the provider refused its refresh token\r\n({why}).\r\n\r\n\
         Sign in again on the box with:\r\n\r\n    mailgate oauth login {name}\r\n",
        name = account.name,
        date = trace::rfc5322_date(now),
        id = trace::new_id(now),
    );
    let request = LocalDelivery {
        reverse_path: String::new(),
        recipients: resolution
            .local
            .iter()
            .map(|m| LocalRecipient {
                mailbox: m.clone(),
                original: to.to_string(),
                quota: None,
            })
            .collect(),
        trace: TraceInfo {
            hostname: hostname.clone(),
            helo: hostname.clone(),
            peer: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            protocol: "local",
            tls: None,
            auth_user: None,
            via: None,
            id: trace::new_id(now),
        },
        message: Message::Wire(text.as_bytes()),
        extra_headers: String::new(),
        delivered_to_check: true,
    };
    if let Err(e) = deliver::deliver_local(&config.server.data_dir, &request) {
        log::warn!("oauth {}: cannot deliver the notice: {e}", account.name);
    }
}

impl Driver for OAuthRefresh {
    fn ready(&mut self, cx: &mut Ctx) {
        match &self.phase {
            Phase::Start => {
                self.phase = Phase::Preparing;
                self.deadline = cx.now + TIMEOUT;
                let ca = self.job.account.ca_file.clone();
                cx.submit_quick(move || {
                    Outcome::OAuthTls(
                        crate::tls::client_config(ca.as_deref()).map_err(|e| e.to_string()),
                    )
                });
            }
            Phase::Connecting => {
                let step = self.connector.ready(cx.registry(), cx.token, cx.now);
                self.connect_step(step, cx);
            }
            Phase::Session { .. } => self.pump(cx),
            Phase::Preparing | Phase::Saving | Phase::Done => {}
        }
    }

    fn complete(&mut self, done: Outcome, cx: &mut Ctx) {
        match done {
            Outcome::OAuthTls(_) if cx.stopping() => {
                self.phase = Phase::Done;
                cx.effect(Effect::OAuthRefreshed {
                    account: self.name().to_string(),
                    result: Refreshed::Failed("mailgate is stopping".into()),
                });
            }
            Outcome::OAuthTls(Ok(tls)) => {
                self.tls = Some(tls);
                if self.url.is_none() {
                    return self.fail("token_url is not a usable https:// URL".into(), cx);
                }
                let step = self.connector.advance(cx.registry(), cx.token, cx.now);
                self.connect_step(step, cx);
            }
            Outcome::OAuthTls(Err(e)) => self.fail(e, cx),
            Outcome::OAuthSaved(r) => {
                self.phase = Phase::Done;
                cx.effect(Effect::OAuthRefreshed {
                    account: self.name().to_string(),
                    result: r,
                });
            }
            _ => {}
        }
    }

    fn timer(&mut self, cx: &mut Ctx) {
        if matches!(self.phase, Phase::Connecting | Phase::Session { .. })
            && self.deadline <= cx.now
        {
            return self.fail("the token endpoint did not answer within 60 s".into(), cx);
        }
        if let Phase::Connecting = self.phase {
            let step = self.connector.timer(cx.registry(), cx.token, cx.now);
            self.connect_step(step, cx);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Connecting => Some(
                self.connector
                    .deadline()
                    .map_or(self.deadline, |d| d.min(self.deadline)),
            ),
            Phase::Session { .. } => Some(self.deadline),
            _ => None,
        }
    }

    fn stop(&mut self, cx: &mut Ctx) {
        if matches!(
            self.phase,
            Phase::Start | Phase::Connecting | Phase::Session { .. }
        ) {
            // Nothing changes on disk: the old tokens stay for the next start.
            if let Phase::Session { t, .. } = &mut self.phase {
                t.close();
                let _ = cx.registry().deregister(t.socket());
            }
            self.phase = Phase::Done;
            cx.effect(Effect::OAuthRefreshed {
                account: self.name().to_string(),
                result: Refreshed::Failed("mailgate is stopping".into()),
            });
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    fn is_idle(&self) -> bool {
        !matches!(self.phase, Phase::Preparing | Phase::Saving)
    }

    fn interest(&self) -> Interest {
        Interest::READABLE
    }

    fn source(&mut self) -> Option<&mut TcpStream> {
        None
    }
}
