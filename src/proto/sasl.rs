//! SASL PLAIN (RFC 4616), shared by the SMTP AUTH and POP3 AUTH cores,
//! and the client side of the OAuth2 bearer mechanisms XOAUTH2 (Google's
//! and Microsoft's) and OAUTHBEARER (RFC 7628) for the SMTP and POP3
//! clients.
//!
//! Owns: splitting a decoded PLAIN response into its identities and
//! password, and the rule that nobody may act as someone else; the bearer
//! mechanisms' client messages. Must not: check passwords (the drivers do,
//! on a worker), or log a token.

use base64::Engine as _;

/// A SASL mechanism that carries an OAuth2 access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerMech {
    /// RFC 7628, the standard one (Gmail offers it; Microsoft does not).
    OAuthBearer,
    /// Google's and Microsoft's pre-standard mechanism.
    XOAuth2,
}

impl BearerMech {
    /// OAUTHBEARER when the server offers it, else XOAUTH2; `None` when it
    /// offers neither. `offered` are the mechanism names the server lists.
    pub fn choose<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<BearerMech> {
        let mut best = None;
        for m in offered {
            if m.eq_ignore_ascii_case("OAUTHBEARER") {
                return Some(BearerMech::OAuthBearer);
            }
            if m.eq_ignore_ascii_case("XOAUTH2") {
                best = Some(BearerMech::XOAuth2);
            }
        }
        best
    }

    pub fn name(self) -> &'static str {
        match self {
            BearerMech::OAuthBearer => "OAUTHBEARER",
            BearerMech::XOAuth2 => "XOAUTH2",
        }
    }

    /// The client's first message, base64-encoded, or `None` when the user
    /// or token cannot be carried (a control character in either, or a
    /// token outside RFC 6750 2.1's b64token alphabet).
    pub fn initial_response(self, user: &str, token: &str) -> Option<String> {
        let b64token = |t: &str| {
            !t.is_empty()
                && t.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
                })
        };
        if user.is_empty() || user.bytes().any(|b| b < 0x20 || b == 0x7f) || !b64token(token) {
            return None;
        }
        let raw = match self {
            // https://developers.google.com/gmail/imap/xoauth2-protocol
            BearerMech::XOAuth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
            // RFC 7628 3.1: gs2-header with the authzid (RFC 5801 saslname
            // escaping of ',' and '='), then kvpairs.
            BearerMech::OAuthBearer => {
                let name = user.replace('=', "=3D").replace(',', "=2C");
                format!("n,a={name},\x01auth=Bearer {token}\x01\x01")
            }
        };
        Some(base64::engine::general_purpose::STANDARD.encode(raw))
    }

    /// What the client answers to a server challenge after its initial
    /// response, which is always a failure report: XOAUTH2 wants an empty
    /// line, RFC 7628 3.2.3 a single %x01 (base64 "AQ==").
    pub fn abort_response(self) -> &'static str {
        match self {
            BearerMech::XOAuth2 => "",
            BearerMech::OAuthBearer => "AQ==",
        }
    }
}

/// The server's failure report in a challenge (base64 JSON such as
/// `{"status":"invalid_token",...}`, RFC 7628 3.2.2), made printable and
/// short for a log line. It never holds the token.
pub fn bearer_failure(challenge: &str) -> String {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(challenge.trim())
        .unwrap_or_else(|_| challenge.as_bytes().to_vec());
    let mut s: String = decoded
        .iter()
        .take(200)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    if decoded.len() > 200 {
        s.push_str("...");
    }
    s
}

/// A PLAIN response: `[authzid] NUL authcid NUL passwd` (RFC 4616 2).
#[derive(Debug, PartialEq, Eq)]
pub struct Plain {
    pub authcid: String,
    pub password: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum PlainError {
    /// Not three NUL-separated UTF-8 parts, or an empty authcid.
    Malformed,
    /// An authorization identity other than the login itself: proxy
    /// authorization is not offered.
    ForeignAuthzid,
}

/// Parses the base64-decoded PLAIN response.
pub fn parse_plain(decoded: &[u8]) -> Result<Plain, PlainError> {
    let text = std::str::from_utf8(decoded).map_err(|_| PlainError::Malformed)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed);
    };
    if authcid.is_empty() {
        return Err(PlainError::Malformed);
    }
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(authcid) {
        return Err(PlainError::ForeignAuthzid);
    }
    Ok(Plain {
        authcid: authcid.to_string(),
        password: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = |c: &str, p: &str| {
            Ok(Plain {
                authcid: c.into(),
                password: p.into(),
            })
        };
        let rows: &[(&[u8], Result<Plain, PlainError>)] = &[
            (b"\0bob\0secret", ok("bob", "secret")),
            (b"bob\0bob\0secret", ok("bob", "secret")),
            (b"BOB\0bob\0", ok("bob", "")),
            (b"alice\0bob\0secret", Err(PlainError::ForeignAuthzid)),
            (b"\0\0secret", Err(PlainError::Malformed)),
            (b"bob\0secret", Err(PlainError::Malformed)),
            (b"\0bob\0secret\0more", Err(PlainError::Malformed)),
            (b"\0b\xffob\0secret", Err(PlainError::Malformed)),
            (b"", Err(PlainError::Malformed)),
        ];
        for (input, want) in rows {
            assert_eq!(&parse_plain(input), want, "{input:?}");
        }
    }

    fn unb64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    #[test]
    fn bearer_messages() {
        // Google's documented example (xoauth2-protocol page).
        let x = BearerMech::XOAuth2
            .initial_response(
                "someuser@example.com",
                "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
            )
            .unwrap();
        assert_eq!(
            x,
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
        let o = BearerMech::OAuthBearer
            .initial_response("a,b=c@x", "tok")
            .unwrap();
        assert_eq!(unb64(&o), b"n,a=a=2Cb=3Dc@x,\x01auth=Bearer tok\x01\x01");
        for (u, t) in [
            ("", "t"),
            ("u", ""),
            ("u\x01", "t"),
            ("u", "t\x01"),
            ("u", "a b"),
            ("u\r\n", "t"),
        ] {
            assert_eq!(
                BearerMech::XOAuth2.initial_response(u, t),
                None,
                "{u:?} {t:?}"
            );
            assert_eq!(BearerMech::OAuthBearer.initial_response(u, t), None);
        }
    }

    #[test]
    fn bearer_choice_and_failure() {
        assert_eq!(
            BearerMech::choose(["PLAIN", "XOAUTH2"]),
            Some(BearerMech::XOAuth2)
        );
        assert_eq!(
            BearerMech::choose(["xoauth2", "oauthbearer"]),
            Some(BearerMech::OAuthBearer)
        );
        assert_eq!(BearerMech::choose(["PLAIN", "LOGIN"]), None);
        let c = "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIG1hYyIsInNjb3BlIjoiaHR0cHM6Ly9tYWlsLmdvb2dsZS5jb20vIn0K";
        assert_eq!(
            bearer_failure(c),
            r#"{"status":"401","schemes":"bearer mac","scope":"https://mail.google.com/"}?"#
        );
        assert_eq!(bearer_failure("not base64!\x07"), "not base64!?");
    }
}
