//! SASL PLAIN (RFC 4616), shared by the SMTP AUTH and POP3 AUTH cores.
//!
//! Owns: splitting a decoded PLAIN response into its identities and
//! password, and the rule that nobody may act as someone else. Must not:
//! check passwords (the drivers do, on a worker).

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
}
