//! DMARC (RFC 7489): does the From domain's owner stand behind this
//! message, and what does it ask us to do when not?
//!
//! Owns: policy record discovery (6.6.3: `_dmarc.` of the From domain,
//! then of its organizational domain, 3.2, found with the Public Suffix
//! List in `psl`), the record's tags (6.3: `v`, `p`, `sp`, `pct`, `adkim`, `aspf`),
//! identifier alignment (3.1: relaxed and strict, for SPF and DKIM), the
//! result and the disposition (6.6.4, with `pct` sampling, 6.6.4 / 8.1).
//!
//! Must not: do IO or pick random numbers: [`DmarcCheck`] asks for TXT
//! records ([`DmarcCheck::step`], [`DmarcCheck::answer`]), and the `pct`
//! sample is an input. Reporting (`rua`, `ruf`) is not done.

use std::fmt;

use super::{Answer, QType, Query, Reply};

/// RFC 7489 6.3: `pct` is 0 to 100.
const MAX_PCT: u8 = 100;
/// Longest record we read (a record is a few dozen characters; a 64 KB
/// TXT answer is refused rather than parsed).
const MAX_RECORD: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    None,
    Quarantine,
    Reject,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }

    fn parse(s: &str) -> Option<Policy> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(Policy::None),
            "quarantine" => Some(Policy::Quarantine),
            "reject" => Some(Policy::Reject),
            _ => None,
        }
    }

    /// RFC 7489 6.6.4: outside the `pct` sample the next milder policy.
    fn milder(self) -> Policy {
        match self {
            Policy::Reject => Policy::Quarantine,
            Policy::Quarantine | Policy::None => Policy::None,
        }
    }
}

/// RFC 8601 2.7.7 / RFC 7489 11.2 `dmarc=` results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcResult {
    /// No policy published.
    None,
    Pass,
    Fail,
    /// DNS trouble while looking for the policy: try again later.
    TempError,
    PermError,
}

impl DmarcResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcResult::None => "none",
            DmarcResult::Pass => "pass",
            DmarcResult::Fail => "fail",
            DmarcResult::TempError => "temperror",
            DmarcResult::PermError => "permerror",
        }
    }
}

impl fmt::Display for DmarcResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    Relaxed,
    Strict,
}

/// A policy record (RFC 7489 6.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub p: Policy,
    pub sp: Option<Policy>,
    pub pct: u8,
    pub adkim: Alignment,
    pub aspf: Alignment,
}

/// What authenticated the message, from the SPF and DKIM checks.
#[derive(Debug, Clone, Default)]
pub struct Authenticated {
    /// The domain SPF passed for (the MAIL FROM domain, or the HELO name
    /// when MAIL FROM was `<>`, RFC 7489 3.1.2); `None` when SPF did not pass.
    pub spf_pass: Option<String>,
    /// `d=` of every DKIM signature that passed.
    pub dkim_pass: Vec<String>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcOutcome {
    pub result: DmarcResult,
    /// The RFC5322.From domain.
    pub from_domain: String,
    /// The policy that applied (`p`, or `sp` for a subdomain), if any.
    pub policy: Option<Policy>,
    /// What the policy asks for this message (after `pct`).
    pub disposition: Policy,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmarcStep {
    Query(Query),
    Done(DmarcOutcome),
}

/// RFC 7489 3.2: the organizational domain: the public suffix of
/// `domain` plus one label (the Public Suffix List decides what a public
/// suffix is; a name that is itself a suffix is its own).
pub fn organizational_domain(domain: &str) -> String {
    super::psl::organizational_domain(domain)
}

/// RFC 7489 3.1.1 and 3.1.2.
pub fn aligned(a: &str, b: &str, mode: Alignment) -> bool {
    let a = a.trim_end_matches('.').to_ascii_lowercase();
    let b = b.trim_end_matches('.').to_ascii_lowercase();
    match mode {
        Alignment::Strict => a == b,
        Alignment::Relaxed => organizational_domain(&a) == organizational_domain(&b),
    }
}

/// RFC 7489 6.3 / 6.6.3: reads one record. `Ok(None)`: not a DMARC record
/// (another TXT at the name); `Err`: a DMARC record we must not apply.
pub fn parse_record(text: &[u8]) -> Result<Option<Record>, String> {
    if text.len() > MAX_RECORD {
        return Err("DMARC record too long".into());
    }
    let text = String::from_utf8_lossy(text);
    let mut parts = text.split(';').map(str::trim);
    let first = parts.next().unwrap_or("");
    // 6.6.3: a record starts with v=DMARC1 (exactly, then ; or its end).
    let is_dmarc = first
        .split_once('=')
        .is_some_and(|(k, v)| k.trim() == "v" && v.trim() == "DMARC1");
    if !is_dmarc {
        return Ok(None);
    }
    let mut p = None;
    let mut p_seen = false;
    let mut sp = None;
    let mut sp_bad = false;
    let mut pct = MAX_PCT;
    let mut adkim = Alignment::Relaxed;
    let mut aspf = Alignment::Relaxed;
    let mut rua = false;
    for part in parts.filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "p" => {
                p_seen = true;
                p = Policy::parse(v);
            }
            "sp" => {
                sp = Policy::parse(v);
                sp_bad = sp.is_none();
            }
            "pct" => {
                // 6.3: an integer 0..100; out of range is ignored (default).
                if let Ok(n) = v.parse::<u8>() {
                    if n <= MAX_PCT {
                        pct = n;
                    }
                }
            }
            "adkim" | "aspf" => {
                let mode = match v.to_ascii_lowercase().as_str() {
                    "s" => Alignment::Strict,
                    _ => Alignment::Relaxed,
                };
                if k == "adkim" {
                    adkim = mode;
                } else {
                    aspf = mode;
                }
            }
            "rua" => rua = v.split(',').any(|u| u.trim().contains(':')),
            // fo, rf, ri, ruf and unknown tags: 6.3 says ignore unknown.
            _ => {}
        }
    }
    let p = match p {
        Some(p) if !sp_bad => p,
        // 6.6.3: a bad or missing p (or bad sp) with a valid rua acts as
        // p=none; without one, no DMARC processing at all.
        _ if rua => {
            sp = None;
            Policy::None
        }
        _ if !p_seen => return Err("DMARC record without p=".into()),
        _ => return Err("DMARC record with an invalid p= or sp=".into()),
    };
    Ok(Some(Record {
        p,
        sp,
        pct,
        adkim,
        aspf,
    }))
}

/// One DMARC evaluation.
#[derive(Debug)]
pub struct DmarcCheck {
    from_domain: String,
    org_domain: String,
    auth: Authenticated,
    /// 0..=99, uniformly drawn by the caller, for `pct`.
    sample: u8,
    replies: Vec<(Query, Reply)>,
}

impl DmarcCheck {
    /// `from_domain`: the RFC5322.From domain ([`from_domain`] finds it).
    /// `sample`: a random number in 0..100 for `pct` sampling.
    pub fn new(from_domain: &str, auth: Authenticated, sample: u8) -> DmarcCheck {
        let from_domain = from_domain.trim_end_matches('.').to_ascii_lowercase();
        DmarcCheck {
            org_domain: organizational_domain(&from_domain),
            from_domain,
            auth,
            sample: sample % MAX_PCT,
            replies: Vec::new(),
        }
    }

    fn reply(&self, q: &Query) -> Option<&Reply> {
        self.replies.iter().find(|(k, _)| k == q).map(|(_, r)| r)
    }

    pub fn answer(&mut self, query: &Query, reply: Reply) {
        self.replies.push((query.clone(), reply));
    }

    /// The next question, or the verdict.
    pub fn step(&self) -> DmarcStep {
        let done = |result, policy, disposition, reason: String| {
            DmarcStep::Done(DmarcOutcome {
                result,
                from_domain: self.from_domain.clone(),
                policy,
                disposition,
                reason,
            })
        };
        if !super::is_queryable(&self.from_domain) || !self.from_domain.contains('.') {
            return done(
                DmarcResult::PermError,
                None,
                Policy::None,
                format!("From domain {:?} is not a domain", self.from_domain),
            );
        }
        let mut names = vec![self.from_domain.clone()];
        if self.org_domain != self.from_domain {
            names.push(self.org_domain.clone());
        }
        for (i, name) in names.iter().enumerate() {
            let q = Query::new(&format!("_dmarc.{name}"), QType::Txt);
            let records = match self.reply(&q) {
                None => return DmarcStep::Query(q),
                Some(Reply::Failed(why)) => {
                    // 6.6.3 / 11.2: temperror; the caller decides (accept
                    // with temperror, or 451).
                    return done(
                        DmarcResult::TempError,
                        None,
                        Policy::None,
                        format!("DMARC lookup of {} failed: {why}", q.name),
                    );
                }
                Some(Reply::Answer(Answer::Txt(r))) => r,
                Some(Reply::Answer(_)) => continue,
            };
            let mut found = Vec::new();
            for r in records {
                match parse_record(r) {
                    Ok(Some(rec)) => found.push(rec),
                    Ok(None) => {}
                    Err(why) => {
                        return done(
                            DmarcResult::PermError,
                            None,
                            Policy::None,
                            format!("{}: {why}", q.name),
                        )
                    }
                }
            }
            match found.as_slice() {
                [] => continue,
                [rec] => return self.evaluate(rec, i > 0),
                // 6.6.3: more than one record: no DMARC processing.
                _ => {
                    return done(
                        DmarcResult::None,
                        None,
                        Policy::None,
                        format!("more than one DMARC record at {}", q.name),
                    )
                }
            }
        }
        done(
            DmarcResult::None,
            None,
            Policy::None,
            format!("no DMARC record for {}", self.from_domain),
        )
    }

    fn evaluate(&self, rec: &Record, from_org: bool) -> DmarcStep {
        let from = &self.from_domain;
        let dkim = self
            .auth
            .dkim_pass
            .iter()
            .find(|d| aligned(d, from, rec.adkim));
        let spf = self
            .auth
            .spf_pass
            .as_deref()
            .filter(|d| aligned(d, from, rec.aspf));
        // 6.6.2: pass when either identifier passes aligned.
        let (result, reason) = match (dkim, spf) {
            (Some(d), _) => (DmarcResult::Pass, format!("DKIM d={d} aligned with {from}")),
            (None, Some(s)) => (DmarcResult::Pass, format!("SPF {s} aligned with {from}")),
            (None, None) => (
                DmarcResult::Fail,
                format!("neither SPF nor DKIM passed aligned with {from}"),
            ),
        };
        // 6.3: sp applies to subdomains of the organizational domain whose
        // policy was found there.
        let policy = if from_org {
            rec.sp.unwrap_or(rec.p)
        } else {
            rec.p
        };
        let disposition = if result == DmarcResult::Pass {
            Policy::None
        } else if self.sample < rec.pct {
            policy
        } else {
            policy.milder()
        };
        DmarcStep::Done(DmarcOutcome {
            result,
            from_domain: from.clone(),
            policy: Some(policy),
            disposition,
            reason,
        })
    }
}

/// RFC 7489 6.6.1: the RFC5322.From domain of a From header value. A
/// header naming several domains (or none) is an error: 6.6.1 lets the
/// receiver reject it, and there is no one policy to apply.
pub fn from_domain(header_value: &str) -> Result<String, String> {
    let list = mailparse::addrparse(header_value).map_err(|e| format!("unreadable From: {e}"))?;
    let mut domains: Vec<String> = Vec::new();
    for addr in list.iter() {
        let singles: Vec<&mailparse::SingleInfo> = match addr {
            mailparse::MailAddr::Single(s) => vec![s],
            mailparse::MailAddr::Group(g) => g.addrs.iter().collect(),
        };
        for s in singles {
            let domain = s
                .addr
                .rsplit_once('@')
                .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
                .ok_or_else(|| format!("From address {:?} has no domain", s.addr))?;
            if !domains.contains(&domain) {
                domains.push(domain);
            }
        }
    }
    match domains.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("From names no address".into()),
        _ => Err("From names more than one domain".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(from: &str, auth: Authenticated, sample: u8, zone: &[(&str, &str)]) -> DmarcOutcome {
        let mut c = DmarcCheck::new(from, auth, sample);
        loop {
            match c.step() {
                DmarcStep::Query(q) => {
                    let recs: Vec<Vec<u8>> = zone
                        .iter()
                        .filter(|(n, _)| *n == q.name)
                        .map(|(_, t)| t.as_bytes().to_vec())
                        .collect();
                    let reply = if zone.iter().any(|(n, t)| *n == q.name && *t == "TIMEOUT") {
                        Reply::Failed("timeout".into())
                    } else if recs.is_empty() {
                        Reply::nxdomain()
                    } else {
                        Reply::Answer(Answer::Txt(recs))
                    };
                    c.answer(&q, reply);
                }
                DmarcStep::Done(o) => return o,
            }
        }
    }

    fn spf(d: &str) -> Authenticated {
        Authenticated {
            spf_pass: Some(d.into()),
            dkim_pass: vec![],
        }
    }

    fn dkim(d: &str) -> Authenticated {
        Authenticated {
            spf_pass: None,
            dkim_pass: vec![d.into()],
        }
    }

    #[test]
    fn organizational_domains_from_the_psl() {
        assert_eq!(organizational_domain("mail.example.com"), "example.com");
        assert_eq!(organizational_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(organizational_domain("Example.COM."), "example.com");
        assert!(aligned(
            "bounce.example.com",
            "example.com",
            Alignment::Relaxed
        ));
        assert!(!aligned(
            "bounce.example.com",
            "example.com",
            Alignment::Strict
        ));
        assert!(!aligned("example.co.uk", "other.co.uk", Alignment::Relaxed));
    }

    #[test]
    fn records() {
        let r = parse_record(b"v=DMARC1; p=reject; sp=none; pct=20; adkim=s; aspf=r")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.p, r.sp, r.pct, r.adkim, r.aspf),
            (
                Policy::Reject,
                Some(Policy::None),
                20,
                Alignment::Strict,
                Alignment::Relaxed
            )
        );
        assert_eq!(parse_record(b"v=spf1 -all").unwrap(), None);
        assert_eq!(
            parse_record(b"v=DMARC1 ; p = quarantine")
                .unwrap()
                .unwrap()
                .p,
            Policy::Quarantine
        );
        assert!(parse_record(b"v=DMARC1; p=bogus").is_err());
        // A bad p with a valid rua acts as p=none (6.6.3).
        let r = parse_record(b"v=DMARC1; p=bogus; rua=mailto:d@example.com")
            .unwrap()
            .unwrap();
        assert_eq!(r.p, Policy::None);
        assert_eq!(
            parse_record(b"v=DMARC1; p=none; pct=300")
                .unwrap()
                .unwrap()
                .pct,
            100
        );
        assert!(parse_record(&vec![b'x'; 70_000]).is_err());
    }

    #[test]
    fn discovery_alignment_and_disposition() {
        let zone = [
            ("_dmarc.example.com", "v=DMARC1; p=reject; sp=quarantine"),
            ("_dmarc.example.com", "some other text"),
            (
                "_dmarc.strict.example",
                "v=DMARC1; p=reject; aspf=s; adkim=s",
            ),
            ("_dmarc.half.example", "v=DMARC1; p=reject; pct=50"),
            ("_dmarc.two.example", "v=DMARC1; p=reject"),
            ("_dmarc.two.example", "v=DMARC1; p=none"),
            ("_dmarc.slow.example", "TIMEOUT"),
        ];
        // Aligned SPF (relaxed: a subdomain of the same organization).
        let o = run("example.com", spf("bounces.example.com"), 0, &zone);
        assert_eq!((o.result, o.disposition), (DmarcResult::Pass, Policy::None));
        // Aligned DKIM alone is enough.
        let o = run("example.com", dkim("example.com"), 0, &zone);
        assert_eq!(o.result, DmarcResult::Pass);
        // Unaligned: fail, p=reject.
        let o = run("example.com", spf("evil.example"), 0, &zone);
        assert_eq!(
            (o.result, o.policy, o.disposition),
            (DmarcResult::Fail, Some(Policy::Reject), Policy::Reject)
        );
        // A subdomain without its own record gets sp from the org domain.
        let o = run("news.example.com", dkim("other.example"), 0, &zone);
        assert_eq!(
            (o.result, o.disposition),
            (DmarcResult::Fail, Policy::Quarantine)
        );
        // Strict alignment refuses the subdomain.
        let o = run("strict.example", spf("mail.strict.example"), 0, &zone);
        assert_eq!(o.result, DmarcResult::Fail);
        // pct=50: half the failures get the milder policy.
        assert_eq!(
            run("half.example", Authenticated::default(), 10, &zone).disposition,
            Policy::Reject
        );
        assert_eq!(
            run("half.example", Authenticated::default(), 70, &zone).disposition,
            Policy::Quarantine
        );
        // Two records, none published, DNS failure.
        assert_eq!(
            run("two.example", Authenticated::default(), 0, &zone).result,
            DmarcResult::None
        );
        assert_eq!(
            run("none.example", Authenticated::default(), 0, &zone).result,
            DmarcResult::None
        );
        assert_eq!(
            run("slow.example", Authenticated::default(), 0, &zone).result,
            DmarcResult::TempError
        );
    }

    #[test]
    fn from_header_domains() {
        assert_eq!(
            from_domain("Alice <alice@Example.COM>").unwrap(),
            "example.com"
        );
        assert_eq!(
            from_domain("a@x.example, b@x.example").unwrap(),
            "x.example"
        );
        assert!(from_domain("a@x.example, b@y.example").is_err());
        assert!(from_domain("undisclosed").is_err());
    }
}
