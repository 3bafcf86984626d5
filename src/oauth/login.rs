//! `mailgate oauth login NAME` and `mailgate oauth status`: blocking code
//! for the command line (never the server's loop), run once from an SSH
//! session on a box without a browser.
//!
//! Owns: the device authorization grant's polling (RFC 8628 3.4-3.5: the
//! interval, `slow_down` adding 5 seconds, `authorization_pending`, the
//! code's expiry), the authorization-code flow with PKCE (RFC 7636) and a
//! loopback redirect (RFC 8252 7.3) whose final address the user pastes
//! back, one bounded HTTPS POST over rustls, and the status listing.
//! Must not: print or log a token; store anything from an answer that is
//! not a complete token answer.

use std::io::{BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{store, Account};
use crate::config::Config;
use crate::proto::http::{self, Response, ResponseParser, Url};
use crate::proto::oauth::{self, TokenError, Tokens};

/// One HTTPS exchange may take this long in all.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One POST of a form body to `url`, the answer read within the limits of
/// `proto::http` (no redirects followed, 64 KiB of body at most).
pub fn https_post(
    url: &str,
    body: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Response, String> {
    let u = Url::parse(url)?;
    let start = Instant::now();
    let addrs: Vec<_> = (u.host.as_str(), u.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", u.host))?
        .collect();
    let mut last = format!("no address for {}", u.host);
    let mut sock = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, HTTP_TIMEOUT) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => last = format!("connect to {a}: {e}"),
        }
    }
    let sock = sock.ok_or(last)?;
    let name = rustls::pki_types::ServerName::try_from(u.host.clone())
        .map_err(|e| format!("{}: {e}", u.host))?;
    let conn = rustls::ClientConnection::new(Arc::clone(tls), name)
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    let remaining = |start: Instant| {
        HTTP_TIMEOUT
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{}: no answer within 30 seconds", u.host))
    };
    s.sock
        .set_write_timeout(Some(remaining(start)?))
        .map_err(|e| e.to_string())?;
    s.write_all(&http::post_form(&u, body))
        .and_then(|()| s.flush())
        .map_err(|e| format!("{}: {e}", u.host))?;
    let mut parser = ResponseParser::new();
    let mut buf = [0u8; 8192];
    loop {
        s.sock
            .set_read_timeout(Some(remaining(start)?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return parser.finish(),
            Ok(n) => {
                if let Some(r) = parser.feed(&buf[..n])? {
                    return Ok(r);
                }
            }
            // A peer that closes without close_notify ends the body too.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return parser.finish(),
            Err(e) => return Err(format!("{}: {e}", u.host)),
        }
    }
}

fn tokens_from(
    url: &str,
    body: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Tokens, TokenError> {
    let r = https_post(url, body, tls).map_err(TokenError::Garbage)?;
    oauth::parse_tokens(r.status, r.content_type.as_deref(), &r.body)
}

/// What a finished login stores.
pub fn stored(t: &Tokens, old_refresh: Option<&str>, now: u64) -> store::Stored {
    store::Stored {
        access_token: t.access_token.clone(),
        refresh_token: t
            .refresh_token
            .clone()
            .or_else(|| old_refresh.map(str::to_string)),
        // RFC 6749 5.1 makes expires_in optional; an hour is what both
        // providers give.
        expires_at: now.saturating_add(t.expires_in.unwrap_or(3600)),
        last_error: None,
    }
}

/// Finds `name` among the config's `auth = oauth2` accounts.
pub fn account(config: &Config, name: &str) -> Result<Account, String> {
    let all = super::accounts(config);
    if let Some(a) = all.iter().find(|a| a.name == name) {
        return Ok(a.clone());
    }
    let names: Vec<_> = all.iter().map(|a| a.name.as_str()).collect();
    Err(if names.is_empty() {
        format!("no account in {} has auth = oauth2", config.path.display())
    } else {
        format!(
            "{name:?} is not an auth = oauth2 account (these are: {})",
            names.join(", ")
        )
    })
}

/// Signs `name` in and stores its tokens. `input` gives the pasted address
/// (code flow), `out` is what the user reads.
pub fn login(
    config: &Config,
    name: &str,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), String> {
    let a = account(config, name)?;
    let tls = crate::tls::client_config(a.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let e = super::endpoints(&a.oauth);
    let client = super::client(&a.oauth);
    let tokens = match &e.device_url {
        Some(device_url) => device_flow(&client, &e, device_url, &tls, out)?,
        None => code_flow(&client, &e, &tls, input, out)?,
    };
    let now = super::unix_now();
    let s = stored(&tokens, None, now);
    store::save(&config.server.data_dir, name, &s)
        .map_err(|e| format!("cannot store the tokens of {name}: {e}"))?;
    let _ = writeln!(
        out,
        "signed in: {name} ({}); tokens in {}",
        a.username,
        store::dir(&config.server.data_dir).join(name).display()
    );
    if s.refresh_token.is_none() {
        let _ = writeln!(
            out,
            "warning: the provider gave no refresh token; sign in again when the access token expires"
        );
    }
    Ok(())
}

fn device_flow(
    client: &oauth::Client,
    e: &oauth::Endpoints,
    device_url: &str,
    tls: &Arc<rustls::ClientConfig>,
    out: &mut dyn Write,
) -> Result<Tokens, String> {
    let r = https_post(device_url, &client.device_request(&e.scope), tls)
        .map_err(|m| format!("device authorization: {m}"))?;
    let d = oauth::parse_device(r.status, r.content_type.as_deref(), &r.body)
        .map_err(|m| format!("device authorization: {m}"))?;
    let _ = writeln!(
        out,
        "To sign in, open {} on any device and enter the code {}",
        d.verification_uri, d.user_code
    );
    if let Some(c) = &d.verification_uri_complete {
        let _ = writeln!(out, "(or open {c})");
    }
    let _ = writeln!(out, "waiting for the sign-in (up to {} s)...", d.expires_in);
    let _ = out.flush();
    let deadline = Instant::now() + Duration::from_secs(d.expires_in);
    let mut interval = d.interval;
    loop {
        std::thread::sleep(Duration::from_secs(interval));
        if Instant::now() >= deadline {
            return Err(TokenError::Expired.to_string());
        }
        match tokens_from(&e.token_url, &client.device_token(&d.device_code), tls) {
            Ok(t) => return Ok(t),
            Err(TokenError::Pending) => {}
            // RFC 8628 3.5: and keep the longer interval from now on.
            Err(TokenError::SlowDown) => interval += 5,
            Err(other) => return Err(other.to_string()),
        }
    }
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "no random numbers from the system".to_string())?;
    Ok(b)
}

fn code_flow(
    client: &oauth::Client,
    e: &oauth::Endpoints,
    tls: &Arc<rustls::ClientConfig>,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<Tokens, String> {
    let verifier = oauth::pkce_verifier(&random::<32>()?);
    let state = oauth::b64url(&random::<16>()?);
    // RFC 8252 7.3: any port on the loopback; nothing listens there (the
    // browser is on another device), the user copies the address instead.
    let [hi, lo] = random::<2>()?;
    let port = 49152 + (u16::from_be_bytes([hi, lo]) % 16383);
    let redirect = format!("http://127.0.0.1:{port}/");
    let url = client.authorize_url(e, &redirect, &state, &oauth::pkce_challenge(&verifier));
    let _ = writeln!(
        out,
        "To sign in, open this address on any device:\n\n{url}\n"
    );
    let _ = writeln!(
        out,
        "After signing in, the browser ends on an address starting with {redirect} \
         that does not load; copy that whole address from the address bar and paste it here:"
    );
    let _ = out.flush();
    let mut line = String::new();
    input
        .take(16 * 1024)
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the address: {e}"))?;
    let code = oauth::code_from_redirect(&line, &state)?;
    tokens_from(
        &e.token_url,
        &client.code_token(&code, &redirect, &verifier),
        tls,
    )
    .map_err(|m| m.to_string())
}

/// `mailgate oauth status`: one paragraph per account.
pub fn status(config: &Config) -> Result<String, String> {
    let all = super::accounts(config);
    if all.is_empty() {
        return Ok(format!(
            "no account in {} has auth = oauth2\n",
            config.path.display()
        ));
    }
    let now = super::unix_now();
    let mut s = String::new();
    for a in all {
        s.push_str(&format!("{} ({}):\n", a.name, a.username));
        match store::load(&config.server.data_dir, &a.name) {
            Err(e) => s.push_str(&format!("  cannot read the tokens: {e}\n")),
            Ok(None) => s.push_str(&format!(
                "  not signed in: run mailgate oauth login {}\n",
                a.name
            )),
            Ok(Some(t)) => {
                let when = if t.expires_at == 0 {
                    "unknown".to_string()
                } else if t.expires_at > now {
                    format!("in {} min", (t.expires_at - now) / 60)
                } else {
                    format!("{} min ago", (now - t.expires_at) / 60)
                };
                s.push_str(&format!(
                    "  access token expires: {} ({when})\n  refresh token: {}\n",
                    crate::store::trace::rfc5322_date(
                        std::time::UNIX_EPOCH + Duration::from_secs(t.expires_at)
                    ),
                    if t.refresh_token.is_some() {
                        "yes"
                    } else {
                        "no"
                    },
                ));
                match &t.last_error {
                    Some(e) => s.push_str(&format!("  last refresh error: {e}\n")),
                    None => s.push_str("  last refresh error: none\n"),
                }
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_old_refresh_token_only_when_none_comes() {
        let t = Tokens {
            access_token: "a2".into(),
            refresh_token: Some("r2".into()),
            expires_in: Some(100),
        };
        let s = stored(&t, Some("r1"), 1000);
        assert_eq!(
            (
                s.access_token.as_str(),
                s.refresh_token.as_deref(),
                s.expires_at
            ),
            ("a2", Some("r2"), 1100)
        );
        let t = Tokens {
            refresh_token: None,
            expires_in: None,
            ..t
        };
        let s = stored(&t, Some("r1"), 1000);
        assert_eq!(
            (s.refresh_token.as_deref(), s.expires_at),
            (Some("r1"), 4600)
        );
        assert_eq!(stored(&t, None, 0).refresh_token, None);
    }

    #[test]
    fn endpoints_take_the_overrides() {
        use crate::config::{OAuthConfig, OAuthProvider};
        let mut o = OAuthConfig {
            provider: OAuthProvider::Microsoft,
            client_id: "c".into(),
            client_secret: None,
            authorize_url: None,
            token_url: None,
            device_url: None,
            scope: None,
        };
        let e = crate::oauth::endpoints(&o);
        assert!(e.device_url.is_some_and(|d| d.ends_with("/devicecode")));
        o.provider = OAuthProvider::Google;
        assert_eq!(crate::oauth::endpoints(&o).device_url, None, "code flow");
        o.token_url = Some("https://t.example/token".into());
        o.scope = Some("s".into());
        let e = crate::oauth::endpoints(&o);
        assert_eq!(
            (e.token_url.as_str(), e.scope.as_str()),
            ("https://t.example/token", "s")
        );
    }
}
