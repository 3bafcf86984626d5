//! The Authentication-Results header field (RFC 8601) that records what
//! this host found, put on top of each accepted message.
//!
//! Owns: the text of the field from the SPF, DKIM and DMARC outcomes
//! (RFC 8601 2.2 syntax, 2.7 methods and properties, RFC 7489 11.2 for
//! dmarc), with values quoted where they are not tokens.
//!
//! Must not: decide anything; it only writes down results.

use super::dkim::SignatureOutcome;
use super::dmarc::DmarcOutcome;
use super::spf::{Identity, SpfOutcome};

/// RFC 5322 2.1.1: fold before lines get longer than this.
const FOLD_AT: usize = 78;

/// RFC 2045 5.1 token characters (RFC 8601 2.2 `value`): anything else
/// is written as a quoted-string.
fn value(v: &str) -> String {
    let token = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b));
    // Domain names and addresses are the usual values; `@` and `/` need
    // quoting in a token, so a dot-atom-ish value with them is quoted too.
    if token {
        v.to_string()
    } else {
        let escaped: String = v
            .chars()
            .filter(|c| !c.is_control())
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }
}

/// A comment (RFC 5322 3.2.2) with nothing that could end it early.
fn comment(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '\\'))
        .take(120)
        .collect();
    format!("({clean})")
}

/// The whole field, `Authentication-Results: ...\r\n`, folded. `authserv_id`
/// is this host's name. No results at all gives `none` (RFC 8601 2.2).
pub fn header(
    authserv_id: &str,
    spf: Option<&SpfOutcome>,
    dkim: &[SignatureOutcome],
    dmarc: Option<&DmarcOutcome>,
) -> String {
    let mut results: Vec<String> = Vec::new();
    if let Some(s) = spf {
        // RFC 8601 2.7.2: smtp.mailfrom, or smtp.helo for the HELO identity.
        let prop = match s.identity {
            Identity::MailFrom => "smtp.mailfrom",
            Identity::Helo => "smtp.helo",
        };
        results.push(format!(
            "spf={} {} {prop}={}",
            s.result,
            comment(&s.reason),
            value(&s.domain)
        ));
    }
    for d in dkim {
        let mut r = format!("dkim={}", d.result);
        if d.testing {
            r.push_str(" (key in testing mode)");
        } else if d.result != super::dkim::DkimResult::Pass {
            r.push(' ');
            r.push_str(&comment(&d.reason));
        }
        if !d.domain.is_empty() {
            r.push_str(&format!(" header.d={}", value(&d.domain)));
        }
        if !d.selector.is_empty() {
            r.push_str(&format!(" header.s={}", value(&d.selector)));
        }
        if !d.algorithm.is_empty() {
            r.push_str(&format!(" header.a={}", value(&d.algorithm)));
        }
        if !d.b_prefix.is_empty() {
            // RFC 6008: the first 8 characters tell the signatures apart.
            r.push_str(&format!(" header.b={}", value(&d.b_prefix)));
        }
        results.push(r);
    }
    if let Some(m) = dmarc {
        let policy = m
            .policy
            .map(|p| format!(" (p={} dis={})", p.as_str(), m.disposition.as_str()))
            .unwrap_or_default();
        results.push(format!(
            "dmarc={}{policy} header.from={}",
            m.result,
            value(&m.from_domain)
        ));
    }
    let mut text = format!("Authentication-Results: {}", value(authserv_id));
    if results.is_empty() {
        text.push_str("; none");
    }
    let mut line_len = text.len();
    for r in results {
        text.push(';');
        // One result a line once it would not fit.
        if line_len + r.len() + 2 > FOLD_AT {
            text.push_str("\r\n\t");
            line_len = 8;
        } else {
            text.push(' ');
            line_len += 2;
        }
        text.push_str(&r);
        line_len += r.len();
    }
    text.push_str("\r\n");
    text
}

#[cfg(test)]
mod tests {
    use super::super::dkim::DkimResult;
    use super::super::dmarc::{DmarcResult, Policy};
    use super::super::spf::SpfResult;
    use super::*;

    #[test]
    fn one_field_with_every_method() {
        let spf = SpfOutcome {
            result: SpfResult::Pass,
            identity: Identity::MailFrom,
            domain: "example.org".into(),
            reason: "ip4:192.0.2.0/24 matched".into(),
        };
        let dkim = vec![
            SignatureOutcome {
                result: DkimResult::Pass,
                domain: "example.org".into(),
                selector: "mg-rsa".into(),
                algorithm: "rsa-sha256".into(),
                testing: false,
                b_prefix: "abc+/123".into(),
                reason: "signature verified".into(),
            },
            SignatureOutcome {
                result: DkimResult::Fail,
                domain: "list.example".into(),
                selector: "s".into(),
                algorithm: "ed25519-sha256".into(),
                testing: false,
                b_prefix: "zzzzzzzz".into(),
                reason: "body hash mismatch".into(),
            },
        ];
        let dmarc = DmarcOutcome {
            result: DmarcResult::Pass,
            from_domain: "example.org".into(),
            policy: Some(Policy::Reject),
            disposition: Policy::None,
            reason: String::new(),
        };
        let h = header("mx.example.test", Some(&spf), &dkim, Some(&dmarc));
        assert!(
            h.starts_with("Authentication-Results: mx.example.test;"),
            "{h}"
        );
        assert!(
            h.contains("spf=pass (ip4:192.0.2.0/24 matched) smtp.mailfrom=example.org"),
            "{h}"
        );
        assert!(h.contains("dkim=pass header.d=example.org header.s=mg-rsa header.a=rsa-sha256 header.b=\"abc+/123\""), "{h}");
        assert!(
            h.contains("dkim=fail (body hash mismatch) header.d=list.example"),
            "{h}"
        );
        assert!(
            h.contains("dmarc=pass (p=reject dis=none) header.from=example.org"),
            "{h}"
        );
        assert!(h.ends_with("\r\n"));
        for line in h.split("\r\n") {
            assert!(line.len() <= 120, "{line}");
        }
        assert_eq!(
            header("mx.example.test", None, &[], None),
            "Authentication-Results: mx.example.test; none\r\n"
        );
        // A hostile reason cannot end the comment or the field.
        let evil = SpfOutcome {
            reason: "x) dkim=pass (\r\nX-Evil: 1".into(),
            ..spf
        };
        let h = header("mx", Some(&evil), &[], None);
        assert!(
            !h.contains("\r\nX-Evil") && h.matches('(').count() == 1,
            "{h}"
        );
    }
}
