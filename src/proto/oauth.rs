//! OAuth2 client messages (RFC 6749), the device authorization grant
//! (RFC 8628), PKCE (RFC 7636) and the loopback redirect (RFC 8252 7.3).
//!
//! Owns: the providers' built-in endpoints, form bodies, the authorization
//! URL, the S256 challenge, reading token, device and error answers, and
//! reading the address the user pastes back. Must not: do IO, pick random
//! numbers (the caller passes them), or put a token in an error text.

use std::fmt;

use base64::Engine as _;

use super::json::{self, Value};

/// Where a provider's endpoints are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub authorize_url: String,
    pub token_url: String,
    /// RFC 8628 3.1; `None` where the provider refuses mail scopes in the
    /// device flow (Google), which then needs the code flow.
    pub device_url: Option<String>,
    pub scope: String,
}

/// Microsoft identity platform (v2.0, the `common` tenant): POP3, IMAP and
/// SMTP of Exchange Online / Outlook.com, with a refresh token.
pub fn microsoft() -> Endpoints {
    let base = "https://login.microsoftonline.com/common/oauth2/v2.0";
    Endpoints {
        authorize_url: format!("{base}/authorize"),
        token_url: format!("{base}/token"),
        device_url: Some(format!("{base}/devicecode")),
        scope: "offline_access https://outlook.office.com/POP.AccessAsUser.All \
                https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/SMTP.Send"
            .into(),
    }
}

/// Google: the code flow only (Gmail scopes are refused in the device flow).
pub fn google() -> Endpoints {
    Endpoints {
        authorize_url: "https://accounts.google.com/o/oauth2/v2/auth".into(),
        token_url: "https://oauth2.googleapis.com/token".into(),
        device_url: None,
        scope: "https://mail.google.com/".into(),
    }
}

/// `application/x-www-form-urlencoded` (WHATWG URL 5.2; RFC 6749 B).
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_into(&mut out, k);
        out.push('=');
        encode_into(&mut out, v);
    }
    out
}

fn encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// Decodes one form/query component; `None` on a bad `%` escape or non-UTF-8.
pub fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The app's credentials at the token endpoint (RFC 6749 2.3.1, in the body).
#[derive(Clone, PartialEq, Eq)]
pub struct Client {
    pub id: String,
    pub secret: Option<String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl Client {
    fn pairs<'a>(&'a self, mut p: Vec<(&'a str, &'a str)>) -> String {
        p.push(("client_id", &self.id));
        if let Some(s) = &self.secret {
            p.push(("client_secret", s));
        }
        form(&p)
    }

    /// RFC 8628 3.1.
    pub fn device_request(&self, scope: &str) -> String {
        self.pairs(vec![("scope", scope)])
    }

    /// RFC 8628 3.4.
    pub fn device_token(&self, device_code: &str) -> String {
        self.pairs(vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
        ])
    }

    /// RFC 6749 4.1.3 with the RFC 7636 4.5 verifier.
    pub fn code_token(&self, code: &str, redirect_uri: &str, verifier: &str) -> String {
        self.pairs(vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ])
    }

    /// RFC 6749 6.
    pub fn refresh(&self, refresh_token: &str) -> String {
        self.pairs(vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
    }

    /// RFC 6749 4.1.1 with RFC 7636 4.3 (S256). `access_type=offline` and
    /// `prompt=consent` make Google hand out a refresh token.
    pub fn authorize_url(
        &self,
        e: &Endpoints,
        redirect_uri: &str,
        state: &str,
        challenge: &str,
    ) -> String {
        let q = form(&[
            ("response_type", "code"),
            ("client_id", &self.id),
            ("redirect_uri", redirect_uri),
            ("scope", &e.scope),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("access_type", "offline"),
            ("prompt", "consent"),
        ]);
        let sep = if e.authorize_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}{q}", e.authorize_url)
    }
}

/// base64url without padding (RFC 7636 appendix A).
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7636 4.1: a verifier from 32 random octets (43 characters).
pub fn pkce_verifier(random: &[u8; 32]) -> String {
    b64url(random)
}

/// RFC 7636 4.2: `BASE64URL(SHA256(ASCII(code_verifier)))`.
pub fn pkce_challenge(verifier: &str) -> String {
    b64url(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref())
}

/// A successful token answer (RFC 6749 5.1). `Debug` hides the tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    /// A new refresh token (rotation) or `None`: keep the old one.
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"<hidden>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<hidden>"),
            )
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Why the token endpoint gave no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// RFC 8628 3.5: ask again after the interval.
    Pending,
    /// RFC 8628 3.5: and add 5 seconds to the interval.
    SlowDown,
    /// RFC 8628 3.5 `expired_token`: start the login again.
    Expired,
    /// `access_denied`: the user said no.
    Denied,
    /// RFC 6749 5.2 `invalid_grant`: the refresh token was revoked or has
    /// expired; only a new `mailgate oauth login` helps.
    Revoked(String),
    /// Another OAuth2 error (`invalid_client`, ...): a configuration problem.
    Refused(String),
    /// Not an OAuth2 answer at all (HTML, garbage, a bad status).
    Garbage(String),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Pending => f.write_str("authorization pending"),
            TokenError::SlowDown => f.write_str("slow down"),
            TokenError::Expired => f.write_str("the device code expired; run the login again"),
            TokenError::Denied => f.write_str("the user denied access"),
            TokenError::Revoked(s) => write!(
                f,
                "the grant was revoked or has expired ({s}); run mailgate oauth login again"
            ),
            TokenError::Refused(s) => write!(f, "the token endpoint refused: {s}"),
            TokenError::Garbage(s) => write!(f, "the token endpoint's answer is not usable: {s}"),
        }
    }
}

/// Safe for a log line: printable ASCII, bounded.
fn printable(s: &str) -> String {
    s.chars()
        .take(160)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn json_body(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<Value, TokenError> {
    match json::parse(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(TokenError::Garbage(format!(
            "HTTP {status}: JSON but not an object"
        ))),
        Err(e) => {
            let what = match content_type {
                Some(t) if t.contains("html") => "an HTML page".to_string(),
                Some(t) => format!("{} ({e})", printable(t)),
                None => e.to_string(),
            };
            Err(TokenError::Garbage(format!("HTTP {status}: {what}")))
        }
    }
}

/// The error member of a 4xx answer (RFC 6749 5.2, RFC 8628 3.5).
fn oauth_error(status: u16, v: &Value) -> TokenError {
    let Some(code) = v.get("error").and_then(Value::as_str) else {
        return TokenError::Garbage(format!("HTTP {status} without an error code"));
    };
    let desc = v
        .get("error_description")
        .and_then(Value::as_str)
        .map(|d| format!("{}: {}", printable(code), printable(d)))
        .unwrap_or_else(|| printable(code));
    match code {
        "authorization_pending" => TokenError::Pending,
        "slow_down" => TokenError::SlowDown,
        "expired_token" => TokenError::Expired,
        "access_denied" => TokenError::Denied,
        "invalid_grant" => TokenError::Revoked(desc),
        _ => TokenError::Refused(desc),
    }
}

/// RFC 6750 2.1 b64token: what a bearer token may be made of.
fn b64token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16 * 1024
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
}

/// A token endpoint's answer.
pub fn parse_tokens(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Tokens, TokenError> {
    let v = json_body(status, content_type, body)?;
    if status != 200 {
        return Err(oauth_error(status, &v));
    }
    let access = v.get("access_token").and_then(Value::as_str);
    let Some(access) = access.filter(|a| b64token(a)) else {
        return Err(TokenError::Garbage("no usable access_token".into()));
    };
    if let Some(t) = v.get("token_type").and_then(Value::as_str) {
        if !t.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Garbage(format!(
                "token_type {} is not Bearer",
                printable(t)
            )));
        }
    }
    let refresh = match v.get("refresh_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(r))
            if b64token(r) || r.bytes().all(|b| b.is_ascii_graphic()) && !r.is_empty() =>
        {
            Some(r.clone())
        }
        Some(_) => return Err(TokenError::Garbage("unusable refresh_token".into())),
    };
    Ok(Tokens {
        access_token: access.to_string(),
        refresh_token: refresh,
        expires_in: v.get("expires_in").and_then(Value::as_u64),
    })
}

/// RFC 8628 3.2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuth {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    /// Seconds between polls; 5 when absent (RFC 8628 3.2).
    pub interval: u64,
}

pub fn parse_device(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<DeviceAuth, TokenError> {
    let v = json_body(status, content_type, body)?;
    if status != 200 {
        return Err(oauth_error(status, &v));
    }
    let text = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= 2048
                    && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            })
            .map(str::to_string)
    };
    // Microsoft's older endpoint says verification_url.
    let uri = text("verification_uri").or_else(|| text("verification_url"));
    let (Some(device_code), Some(user_code), Some(verification_uri)) =
        (text("device_code"), text("user_code"), uri)
    else {
        return Err(TokenError::Garbage(
            "device answer lacks device_code, user_code or verification_uri".into(),
        ));
    };
    let Some(expires_in) = v
        .get("expires_in")
        .and_then(Value::as_u64)
        .filter(|&e| e > 0)
    else {
        return Err(TokenError::Garbage("device answer lacks expires_in".into()));
    };
    Ok(DeviceAuth {
        device_code,
        user_code,
        verification_uri,
        verification_uri_complete: text("verification_uri_complete"),
        expires_in,
        interval: v
            .get("interval")
            .and_then(Value::as_u64)
            .unwrap_or(5)
            .clamp(1, 300),
    })
}

/// The authorization code from the address the browser ended on (RFC 6749
/// 4.1.2), checking `state` (10.12); a bare code is accepted too.
pub fn code_from_redirect(pasted: &str, state: &str) -> Result<String, String> {
    let pasted = pasted.trim();
    let Some(q) = pasted.split_once('?').map(|(_, q)| q) else {
        if !pasted.is_empty()
            && pasted
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'&' && b != b'=')
        {
            return Ok(pasted.to_string());
        }
        return Err(
            "paste the whole address the browser shows (http://127.0.0.1:.../?code=...)".into(),
        );
    };
    let q = q.split('#').next().unwrap_or("");
    let (mut code, mut got_state, mut error) = (None, None, None);
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v).ok_or("the address has a bad %-escape")?;
        match k {
            "code" => code = Some(v),
            "state" => got_state = Some(v),
            "error" => error = Some(v),
            _ => {}
        }
    }
    if let Some(e) = error {
        return Err(format!("the provider refused: {}", printable(&e)));
    }
    if got_state.as_deref() != Some(state) {
        return Err(
            "the address's state does not match this login (an old or foreign address?)".into(),
        );
    }
    code.filter(|c| !c.is_empty())
        .ok_or_else(|| "the address has no code".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_pkce() {
        assert_eq!(
            form(&[("a b", "c&d=é"), ("x", "")]),
            "a+b=c%26d%3D%C3%A9&x="
        );
        assert_eq!(decode("c%26d%3D%C3%A9+x").as_deref(), Some("c&d=é x"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(pkce_verifier(&[0; 32]).len(), 43);
        let c = Client {
            id: "app".into(),
            secret: Some("s3".into()),
        };
        assert_eq!(
            c.refresh("r/1"),
            "grant_type=refresh_token&refresh_token=r%2F1&client_id=app&client_secret=s3"
        );
        assert!(!format!("{c:?}").contains("s3"));
        let url = c.authorize_url(&google(), "http://127.0.0.1:1/", "st", "ch");
        assert!(url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?response_type=code&client_id=app&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2F&scope=https%3A%2F%2Fmail.google.com%2F&state=st&code_challenge=ch&code_challenge_method=S256"), "{url}");
    }

    #[test]
    fn token_answers() {
        let ok = br#"{"token_type":"Bearer","scope":"x","expires_in":3599,"ext_expires_in":3599,"access_token":"EwB.AA-_~+/=","refresh_token":"M.R3_BAY.-x"}"#;
        let t = parse_tokens(200, Some("application/json"), ok).unwrap();
        assert_eq!(t.access_token, "EwB.AA-_~+/=");
        assert_eq!(t.refresh_token.as_deref(), Some("M.R3_BAY.-x"));
        assert_eq!(t.expires_in, Some(3599));
        assert!(!format!("{t:?}").contains("EwB"));
        let rows: &[(u16, &str, TokenError)] = &[
            (
                400,
                r#"{"error":"authorization_pending"}"#,
                TokenError::Pending,
            ),
            (400, r#"{"error":"slow_down"}"#, TokenError::SlowDown),
            (
                400,
                r#"{"error":"expired_token","error_description":"AADSTS70020"}"#,
                TokenError::Expired,
            ),
            (400, r#"{"error":"access_denied"}"#, TokenError::Denied),
            (
                400,
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
                TokenError::Revoked("invalid_grant: Token has been expired or revoked.".into()),
            ),
            (
                401,
                r#"{"error":"invalid_client"}"#,
                TokenError::Refused("invalid_client".into()),
            ),
            (
                500,
                r#"{"oops":1}"#,
                TokenError::Garbage("HTTP 500 without an error code".into()),
            ),
            (
                200,
                r#"{"token_type":"Bearer"}"#,
                TokenError::Garbage("no usable access_token".into()),
            ),
            (
                200,
                r#"{"access_token":"a b"}"#,
                TokenError::Garbage("no usable access_token".into()),
            ),
            (
                200,
                r#"{"access_token":"ab","token_type":"mac"}"#,
                TokenError::Garbage("token_type mac is not Bearer".into()),
            ),
            (
                200,
                r#"[1]"#,
                TokenError::Garbage("HTTP 200: JSON but not an object".into()),
            ),
        ];
        for (status, body, want) in rows {
            assert_eq!(
                &parse_tokens(*status, None, body.as_bytes()).unwrap_err(),
                want,
                "{body}"
            );
        }
        let e = parse_tokens(200, Some("text/html"), b"<html>Sign in</html>").unwrap_err();
        assert_eq!(e, TokenError::Garbage("HTTP 200: an HTML page".into()));
        let e = parse_tokens(200, None, b"\x00\xffgarbage").unwrap_err();
        assert!(matches!(e, TokenError::Garbage(_)), "{e:?}");
    }

    #[test]
    fn device_answers() {
        let body = br#"{"user_code":"FAKE-CODE","device_code":"dev123","verification_uri":"https://microsoft.com/devicelogin","expires_in":900,"interval":5,"message":"To sign in..."}"#;
        let d = parse_device(200, None, body).unwrap();
        assert_eq!(
            (
                d.user_code.as_str(),
                d.device_code.as_str(),
                d.expires_in,
                d.interval
            ),
            ("FAKE-CODE", "dev123", 900, 5)
        );
        let d = parse_device(200, None, br#"{"user_code":"A","device_code":"b","verification_url":"https://x","expires_in":"60"}"#).unwrap();
        assert_eq!((d.verification_uri.as_str(), d.interval), ("https://x", 5));
        assert!(parse_device(200, None, br#"{"user_code":"A","device_code":"b"}"#).is_err());
        assert!(parse_device(200, None, br#"{"user_code":"A\n","device_code":"b","verification_uri":"https://x","expires_in":60}"#).is_err());
        assert!(parse_device(400, None, br#"{"error":"invalid_client"}"#).is_err());
    }

    #[test]
    fn redirects() {
        assert_eq!(
            code_from_redirect(
                " http://127.0.0.1:4711/?state=s%201&code=4%2F0Ab&scope=x \n",
                "s 1"
            ),
            Ok("4/0Ab".into())
        );
        assert_eq!(code_from_redirect("4/0AbCd", "s"), Ok("4/0AbCd".into()));
        for (bad, want) in [
            ("http://127.0.0.1/?code=c&state=other", "state"),
            ("http://127.0.0.1/?code=c", "state"),
            (
                "http://127.0.0.1/?error=access_denied&state=s",
                "refused: access_denied",
            ),
            ("http://127.0.0.1/?state=s", "no code"),
            ("http://127.0.0.1/?code=%zz&state=s", "escape"),
            ("", "paste"),
        ] {
            let e = code_from_redirect(bad, "s").unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
