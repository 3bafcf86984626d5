//! The CAPABILITY list (RFC 3501 6.1.1, 7.2.1) the server offers, by
//! connection state.
//!
//! Owns: which extensions are named, and the two that depend on the
//! connection: STARTTLS (offered until TLS is on) and LOGINDISABLED with
//! no AUTH= mechanism while a password may not cross the wire in clear
//! (RFC 3501 6.2.3, 7.2.1: not loopback and no TLS). Must not: decide
//! the policy itself; the driver says whether plaintext login is allowed.

/// What the connection allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapabilityContext {
    pub authenticated: bool,
    pub tls_active: bool,
    /// A TLS config exists, so STARTTLS can be offered.
    pub starttls_available: bool,
    /// LOGIN / AUTHENTICATE allowed now (TLS, loopback, or configured).
    pub plaintext_login_allowed: bool,
    /// RFC 7889 APPENDLIMIT: `max_message_size`.
    pub append_limit: u64,
}

/// Extensions offered in every state (issue 13's list). BINARY and
/// STATUS=SIZE parse but are not offered (no BINARY decoding yet).
/// COMPRESS=DEFLATE
/// is not offered: mox turned it off after interoperability problems, and
/// TLS on a home network is the cost that matters.
const ALWAYS: &[&str] = &[
    "IMAP4rev1",
    "LITERAL+",
    "SASL-IR",
    "ID",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "UNSELECT",
    "UIDPLUS",
    "MOVE",
    "CHILDREN",
    "SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "CONDSTORE",
    "QRESYNC",
    "ESEARCH",
];

/// The capability atoms, in order, for the CAPABILITY response and the
/// greeting's `[CAPABILITY ...]` code.
pub fn capabilities(c: &CapabilityContext) -> Vec<String> {
    let mut v: Vec<String> = ALWAYS.iter().map(|s| s.to_string()).collect();
    v.push(format!("APPENDLIMIT={}", c.append_limit));
    if !c.authenticated {
        if c.starttls_available && !c.tls_active {
            v.push("STARTTLS".into());
        }
        if c.plaintext_login_allowed {
            v.push("AUTH=PLAIN".into());
        } else {
            v.push("LOGINDISABLED".into());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_state() {
        let base = CapabilityContext {
            authenticated: false,
            tls_active: false,
            starttls_available: true,
            plaintext_login_allowed: false,
            append_limit: 26_214_400,
        };
        let has = |c: &CapabilityContext, cap: &str| capabilities(c).iter().any(|x| x == cap);
        // Plain text off loopback: STARTTLS, no password in clear.
        assert!(has(&base, "STARTTLS") && has(&base, "LOGINDISABLED") && !has(&base, "AUTH=PLAIN"));
        assert!(has(&base, "APPENDLIMIT=26214400") && has(&base, "IMAP4rev1"));
        let tls = CapabilityContext {
            tls_active: true,
            plaintext_login_allowed: true,
            ..base
        };
        assert!(!has(&tls, "STARTTLS") && !has(&tls, "LOGINDISABLED") && has(&tls, "AUTH=PLAIN"));
        let loopback = CapabilityContext {
            plaintext_login_allowed: true,
            ..base
        };
        assert!(has(&loopback, "STARTTLS") && has(&loopback, "AUTH=PLAIN"));
        let authed = CapabilityContext {
            authenticated: true,
            ..tls
        };
        assert!(
            !has(&authed, "AUTH=PLAIN") && !has(&authed, "STARTTLS") && has(&authed, "QRESYNC")
        );
        // Every atom is a valid capability atom.
        for c in capabilities(&base) {
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b)),
                "{c}"
            );
        }
    }
}
