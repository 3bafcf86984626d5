//! SPF (RFC 7208): may this client IP send mail for the MAIL FROM domain
//! (or the HELO name when MAIL FROM is `<>`)?
//!
//! Owns: record selection (4.5), term parsing (4.6, 12 ABNF), evaluation of
//! every mechanism (5: all, include, a, mx, ptr, ip4, ip6, exists) and of
//! `redirect=` (6.1), macros (7), and the processing limits (4.6.4: 10
//! DNS-querying terms, 2 void lookups, 10 MX / PTR names).
//!
//! Must not: do IO. [`SpfCheck`] is a state machine: [`SpfCheck::step`]
//! says which DNS question it needs next, [`SpfCheck::answer`] takes the
//! reply. Internally every step re-evaluates the policy from the top over
//! the answers cached so far (the evaluation is a pure function of them),
//! which keeps the recursive algorithm of RFC 7208 4.6 readable; the
//! limits bound the number of distinct questions, so the replays are
//! cheap. `exp=` is checked for syntax but never fetched: the explanation
//! text does not change the result and we do not show it to clients.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{is_queryable, Answer, QType, Query, Reply};
use crate::proto::dns;

/// RFC 7208 4.6.4: at most 10 terms that cause DNS queries (include, a,
/// mx, ptr, exists, redirect).
pub const MAX_DNS_TERMS: u32 = 10;
/// RFC 7208 4.6.4: more than 2 lookups returning no answer is permerror.
pub const MAX_VOID_LOOKUPS: u32 = 2;
/// RFC 7208 4.6.4: an `mx` term may look up at most 10 MX names
/// (more is permerror).
pub const MAX_MX_NAMES: usize = 10;
/// RFC 7208 4.6.4: a `ptr` term (or `%{p}`) validates at most 10 PTR names
/// (the rest are ignored).
pub const MAX_PTR_NAMES: usize = 10;
/// RFC 7208 4.6.4 bounds the queries of one check to roughly 10 * (1 + 10)
/// plus the `%{p}` names; this is a hard stop above that, should a bug let
/// a hostile policy escape the RFC limits.
pub const MAX_QUERIES: usize = 256;
/// RFC 7208 7.3: an expanded domain-spec is cut from the left to 253
/// characters.
const MAX_DOMAIN: usize = 253;
/// RFC 7208 4.3: a label is at most 63 octets.
const MAX_LABEL: usize = 63;

/// RFC 7208 2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    /// The RFC 8601 / RFC 7208 9.1 keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which identity was checked (RFC 7208 2.3, 2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    MailFrom,
    Helo,
}

/// The verdict of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfResult,
    pub identity: Identity,
    /// The domain whose policy was evaluated (MAIL FROM domain or HELO).
    pub domain: String,
    /// What decided it, for the log line (a mechanism, or the error).
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpfStep {
    /// Ask this, then call [`SpfCheck::answer`].
    Query(Query),
    Done(SpfOutcome),
}

/// One SPF check_host() of RFC 7208 4, as a state machine.
#[derive(Debug)]
pub struct SpfCheck {
    ip: IpAddr,
    /// `l` and `o` of RFC 7208 7.2 (the sender's local-part and domain).
    local: String,
    domain: String,
    helo: String,
    identity: Identity,
    cache: HashMap<Query, Reply>,
    done: Option<SpfOutcome>,
}

impl SpfCheck {
    /// The check for a transaction: `mail_from` is the reverse-path without
    /// brackets (empty for `<>`, then the HELO identity is checked, RFC
    /// 7208 2.4), `helo` the HELO/EHLO argument, `ip` the client.
    pub fn new(ip: IpAddr, mail_from: &str, helo: &str) -> SpfCheck {
        // RFC 7208 5: an IPv4-mapped IPv6 client is an IPv4 client.
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        let helo = helo.trim_end_matches('.').to_string();
        let (local, domain, identity) = if mail_from.is_empty() {
            ("postmaster".to_string(), helo.clone(), Identity::Helo)
        } else {
            // RFC 7208 4.3: no local-part means "postmaster"; the domain is
            // after the last `@`; a bare domain is taken as the domain.
            match mail_from.rsplit_once('@') {
                Some((l, d)) => {
                    let l = if l.is_empty() { "postmaster" } else { l };
                    (l.to_string(), d.to_string(), Identity::MailFrom)
                }
                None => (
                    "postmaster".to_string(),
                    mail_from.to_string(),
                    Identity::MailFrom,
                ),
            }
        };
        let domain = domain.trim_end_matches('.').to_string();
        SpfCheck {
            ip,
            local,
            domain,
            helo,
            identity,
            cache: HashMap::new(),
            done: None,
        }
    }

    /// The HELO identity alone (RFC 7208 2.3).
    pub fn helo(ip: IpAddr, helo: &str) -> SpfCheck {
        SpfCheck::new(ip, "", helo)
    }

    /// The next question, or the verdict.
    pub fn step(&mut self) -> SpfStep {
        if let Some(done) = &self.done {
            return SpfStep::Done(done.clone());
        }
        let mut eval = Eval {
            check: self,
            lookups: 0,
            voids: 0,
            p_macro: None,
        };
        let outcome = match eval.check_host(&self.domain, 0) {
            Ok((result, reason)) => (result, reason),
            Err(Stop::Need(q)) => {
                if self.cache.len() >= MAX_QUERIES {
                    (
                        SpfResult::PermError,
                        format!("more than {MAX_QUERIES} DNS queries"),
                    )
                } else {
                    return SpfStep::Query(q);
                }
            }
            Err(Stop::Temp(why)) => (SpfResult::TempError, why),
            Err(Stop::Perm(why)) => (SpfResult::PermError, why),
        };
        let done = SpfOutcome {
            result: outcome.0,
            identity: self.identity,
            domain: self.domain.clone(),
            reason: outcome.1,
        };
        self.done = Some(done.clone());
        SpfStep::Done(done)
    }

    /// The reply to a question [`SpfCheck::step`] asked.
    pub fn answer(&mut self, query: &Query, reply: Reply) {
        self.cache.insert(query.clone(), reply);
    }
}

/// Why an evaluation stopped early.
enum Stop {
    /// The answer is not cached yet.
    Need(Query),
    Temp(String),
    Perm(String),
}

fn perm<T>(why: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Perm(why.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mechanism {
    All,
    Include(String),
    /// domain-spec (None: the current domain), IPv4 and IPv6 prefix lengths.
    A(Option<String>, u8, u8),
    Mx(Option<String>, u8, u8),
    Ptr(Option<String>),
    Ip4(Ipv4Addr, u8),
    Ip6(Ipv6Addr, u8),
    Exists(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    qualifier: Qualifier,
    mechanism: Mechanism,
    text: String,
}

#[derive(Debug, Default)]
struct Record {
    directives: Vec<Directive>,
    redirect: Option<String>,
}

/// RFC 7208 4.5: the one TXT record that starts with `v=spf1` (then SP or
/// its end). `Ok(None)`: no SPF record.
fn select_record(records: &[Vec<u8>]) -> Result<Option<String>, Stop> {
    let mut found: Option<&[u8]> = None;
    for r in records {
        let is_spf = r.len() >= 6
            && r[..6].eq_ignore_ascii_case(b"v=spf1")
            && (r.len() == 6 || r[6] == b' ');
        if is_spf {
            if found.is_some() {
                return perm("more than one SPF record");
            }
            found = Some(r);
        }
    }
    match found {
        None => Ok(None),
        Some(r) if r.is_ascii() => Ok(Some(String::from_utf8_lossy(r).into_owned())),
        // RFC 7208 3.1: records are ASCII.
        Some(_) => perm("SPF record is not ASCII"),
    }
}

/// RFC 7208 4.6.1 and 12: the terms of a record (after `v=spf1`).
fn parse_record(text: &str) -> Result<Record, Stop> {
    let mut record = Record::default();
    let mut exp_seen = false;
    // Terms are separated by SP only (4.6.1): a tab is part of a term and
    // makes it a syntax error.
    for term in text.split(' ').skip(1).filter(|t| !t.is_empty()) {
        if let Some((name, value)) = modifier(term) {
            if name.eq_ignore_ascii_case("redirect") {
                if record.redirect.is_some() {
                    return perm("redirect= appears twice");
                }
                check_domain_spec(value)?;
                record.redirect = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("exp") {
                if exp_seen {
                    return perm("exp= appears twice");
                }
                exp_seen = true;
                check_domain_spec(value)?;
            } else {
                // 6: unknown modifiers are ignored, but must be well formed.
                check_macro_string(value, false)?;
            }
            continue;
        }
        record.directives.push(parse_directive(term)?);
    }
    Ok(record)
}

/// `name=value` with name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    let ok = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then_some((name, value))
}

/// Splits a trailing `/N` (`N` without leading zeros) off `s`.
fn split_cidr(s: &str) -> Result<(&str, Option<u8>), Stop> {
    let Some(pos) = s.rfind('/') else {
        return Ok((s, None));
    };
    let digits = &s[pos + 1..];
    let valid = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && digits.len() <= 3;
    if !valid {
        return Ok((s, None));
    }
    let n: u8 = digits
        .parse()
        .map_err(|_| Stop::Perm(format!("bad prefix length in {s}")))?;
    Ok((&s[..pos], Some(n)))
}

/// RFC 7208 5.6: `a` and `mx` take `/ip4-cidr` and `//ip6-cidr`.
fn dual_cidr(s: &str) -> Result<(&str, u8, u8), Stop> {
    let (head, v6) = match s.rfind("//") {
        Some(pos) => match split_cidr(&s[pos + 1..])? {
            ("", Some(n)) => (&s[..pos], Some(n)),
            _ => (s, None),
        },
        None => (s, None),
    };
    let (head, v4) = split_cidr(head)?;
    let v4 = v4.unwrap_or(32);
    let v6 = v6.unwrap_or(128);
    if v4 > 32 || v6 > 128 {
        return perm(format!("prefix length out of range in {s}"));
    }
    Ok((head, v4, v6))
}

/// RFC 7208 4.6.1: ip4-network = qnum "." qnum "." qnum "." qnum, no
/// leading zeros.
fn parse_ip4(s: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

fn parse_directive(term: &str) -> Result<Directive, Stop> {
    let (qualifier, rest) = match term.as_bytes().first() {
        Some(b'+') => (Qualifier::Pass, &term[1..]),
        Some(b'-') => (Qualifier::Fail, &term[1..]),
        Some(b'~') => (Qualifier::SoftFail, &term[1..]),
        Some(b'?') => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let name_end = rest.find([':', '/']).unwrap_or(rest.len());
    let name = rest[..name_end].to_ascii_lowercase();
    let tail = &rest[name_end..];
    let bad = || Stop::Perm(format!("bad mechanism {term:?}"));
    // `:domain-spec` (required or optional) before any CIDR suffix.
    let mechanism = match name.as_str() {
        "all" => {
            if !tail.is_empty() {
                return Err(bad());
            }
            Mechanism::All
        }
        "include" | "exists" => {
            let spec = tail.strip_prefix(':').ok_or_else(bad)?;
            check_domain_spec(spec)?;
            if name == "include" {
                Mechanism::Include(spec.to_string())
            } else {
                Mechanism::Exists(spec.to_string())
            }
        }
        "a" | "mx" => {
            let (rest, v4, v6) = dual_cidr(tail)?;
            let spec = match rest.strip_prefix(':') {
                Some(spec) => {
                    check_domain_spec(spec)?;
                    Some(spec.to_string())
                }
                None if rest.is_empty() => None,
                None => return Err(bad()),
            };
            if name == "a" {
                Mechanism::A(spec, v4, v6)
            } else {
                Mechanism::Mx(spec, v4, v6)
            }
        }
        "ptr" => match tail.strip_prefix(':') {
            Some(spec) => {
                check_domain_spec(spec)?;
                Mechanism::Ptr(Some(spec.to_string()))
            }
            None if tail.is_empty() => Mechanism::Ptr(None),
            None => return Err(bad()),
        },
        "ip4" => {
            let spec = tail.strip_prefix(':').ok_or_else(bad)?;
            let (addr, len) = split_cidr(spec)?;
            let len = len.unwrap_or(32);
            let ip = parse_ip4(addr).ok_or_else(bad)?;
            if len > 32 {
                return Err(bad());
            }
            Mechanism::Ip4(ip, len)
        }
        "ip6" => {
            let spec = tail.strip_prefix(':').ok_or_else(bad)?;
            let (addr, len) = split_cidr(spec)?;
            let len = len.unwrap_or(128);
            let ip: Ipv6Addr = addr.parse().map_err(|_| bad())?;
            if len > 128 {
                return Err(bad());
            }
            Mechanism::Ip6(ip, len)
        }
        _ => return Err(bad()),
    };
    Ok(Directive {
        qualifier,
        mechanism,
        text: term.to_string(),
    })
}

/// RFC 7208 7.1: macro-string syntax; `exp` allows `c`, `r`, `t`.
fn check_macro_string(s: &str, exp: bool) -> Result<(), Stop> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match b.get(i + 1) {
                Some(b'%' | b'_' | b'-') => i += 2,
                Some(b'{') => {
                    let end = s[i..]
                        .find('}')
                        .map(|e| i + e)
                        .ok_or_else(|| Stop::Perm(format!("unterminated macro in {s:?}")))?;
                    parse_macro(&s[i + 2..end], exp)?;
                    i = end + 1;
                }
                _ => return perm(format!("bad macro in {s:?}")),
            }
        } else if !(0x21..=0x7e).contains(&b[i]) {
            return perm(format!("bad character in {s:?}"));
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// One macro body (between `%{` and `}`): letter, digits, `r`, delimiters.
struct Macro {
    letter: u8,
    upper: bool,
    digits: Option<usize>,
    reverse: bool,
    delimiters: Vec<u8>,
}

fn parse_macro(body: &str, exp: bool) -> Result<Macro, Stop> {
    let bad = || Stop::Perm(format!("bad macro %{{{body}}}"));
    let b = body.as_bytes();
    let letter = *b.first().ok_or_else(bad)?;
    let lower = letter.to_ascii_lowercase();
    let allowed: &[u8] = if exp { b"slodiphvcrt" } else { b"slodiphv" };
    if !allowed.contains(&lower) {
        return Err(bad());
    }
    let mut i = 1;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let digits = if i > start {
        let n: usize = body[start..i].parse().map_err(|_| bad())?;
        // RFC 7208 7.1: zero is not a valid number of labels.
        if n == 0 {
            return Err(bad());
        }
        Some(n)
    } else {
        None
    };
    let mut reverse = false;
    if i < b.len() && (b[i] == b'r' || b[i] == b'R') {
        reverse = true;
        i += 1;
    }
    let delimiters = b[i..].to_vec();
    if !delimiters.iter().all(|d| b".-+,/_=".contains(d)) {
        return Err(bad());
    }
    Ok(Macro {
        letter: lower,
        upper: letter.is_ascii_uppercase(),
        digits,
        reverse,
        delimiters,
    })
}

/// RFC 7208 12: domain-spec = macro-string domain-end, domain-end = ( "."
/// toplabel [ "." ] ) / macro-expand.
fn check_domain_spec(spec: &str) -> Result<(), Stop> {
    check_macro_string(spec, false)?;
    let bad = || Stop::Perm(format!("bad domain-spec {spec:?}"));
    if spec.ends_with('}') || spec.ends_with("%%") || spec.ends_with("%_") || spec.ends_with("%-") {
        // Ends with a macro-expand (the syntax check above made sure the
        // `}` closes one).
        return Ok(());
    }
    let trimmed = spec.strip_suffix('.').unwrap_or(spec);
    let (_, top) = trimmed.rsplit_once('.').ok_or_else(bad)?;
    if is_toplabel(top) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum
/// / "-" ) alphanum ): not all-numeric, no hyphen at either end.
fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b.iter().any(|c| !c.is_ascii_digit())
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// RFC 7208 4.3: a domain we may evaluate: labels of 1 to 63 octets and at
/// least two of them.
fn is_valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && domain.len() <= MAX_DOMAIN
        && labels.iter().all(|l| !l.is_empty() && l.len() <= MAX_LABEL)
        && is_queryable(domain)
}

fn prefix_match(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// One evaluation pass over the cache.
struct Eval<'a> {
    check: &'a SpfCheck,
    lookups: u32,
    voids: u32,
    p_macro: Option<String>,
}

impl Eval<'_> {
    fn is_v6(&self) -> bool {
        self.check.ip.is_ipv6()
    }

    fn addr_type(&self) -> QType {
        if self.is_v6() {
            QType::Aaaa
        } else {
            QType::A
        }
    }

    /// RFC 7208 4.6.4: one more DNS-querying term.
    fn count_term(&mut self) -> Result<(), Stop> {
        self.lookups += 1;
        if self.lookups > MAX_DNS_TERMS {
            return perm(format!("more than {MAX_DNS_TERMS} DNS lookups"));
        }
        Ok(())
    }

    /// The cached answer to `(name, qtype)`, or [`Stop::Need`]. A DNS
    /// failure is a temperror (RFC 7208 5); an empty answer counts as void
    /// (4.6.4) unless `void_ok`.
    fn lookup(&mut self, name: &str, qtype: QType, void_ok: bool) -> Result<Answer, Stop> {
        let answer = if is_queryable(name) {
            let q = Query::new(name, qtype);
            match self.check.cache.get(&q) {
                None => return Err(Stop::Need(q)),
                Some(Reply::Failed(why)) => {
                    return Err(Stop::Temp(format!("DNS lookup of {name} failed: {why}")))
                }
                Some(Reply::Answer(a)) => a.clone(),
            }
        } else {
            // A name no DNS can hold has no records.
            Answer::NxDomain
        };
        let empty = match &answer {
            Answer::NoData | Answer::NxDomain => true,
            Answer::Addrs(a) => a.is_empty(),
            Answer::Txt(t) => t.is_empty(),
            Answer::Mx(m) => m.is_empty(),
            Answer::Names(n) => n.is_empty(),
            Answer::NullMx | Answer::Truncated => false,
        };
        if empty && !void_ok {
            self.voids += 1;
            if self.voids > MAX_VOID_LOOKUPS {
                return perm(format!("more than {MAX_VOID_LOOKUPS} void lookups"));
            }
        }
        Ok(answer)
    }

    fn addrs(&mut self, name: &str, qtype: QType) -> Result<Vec<IpAddr>, Stop> {
        match self.lookup(name, qtype, false)? {
            Answer::Addrs(a) => Ok(a),
            _ => Ok(Vec::new()),
        }
    }

    /// RFC 7208 4.4-4.5: the policy of `domain`. `Ok(None)`: none.
    fn record_of(&mut self, domain: &str) -> Result<Option<String>, Stop> {
        if !is_valid_domain(domain) {
            return Ok(None);
        }
        match self.lookup(domain, QType::Txt, false)? {
            Answer::Txt(records) => select_record(&records),
            _ => Ok(None),
        }
    }

    /// RFC 7208 4: check_host() for `domain`, returning the result and what
    /// decided it.
    fn check_host(&mut self, domain: &str, depth: u32) -> Result<(SpfResult, String), Stop> {
        let Some(text) = self.record_of(domain)? else {
            return Ok((SpfResult::None, format!("no SPF record for {domain}")));
        };
        let record = parse_record(&text)?;
        for d in &record.directives {
            if self.matches(&d.mechanism, domain, depth)? {
                return Ok((
                    d.qualifier.result(),
                    format!("{} matched in the policy of {domain}", d.text),
                ));
            }
        }
        if let Some(spec) = &record.redirect {
            // RFC 7208 6.1: the redirect domain's result is the result; no
            // record there is permerror.
            self.count_term()?;
            let target = self.expand(spec, domain)?;
            if self.record_of(&target)?.is_none() {
                return perm(format!("redirect={target}: no SPF record"));
            }
            return self.check_host(&target, depth + 1);
        }
        // RFC 7208 4.7: nothing matched, no redirect.
        Ok((
            SpfResult::Neutral,
            format!("no mechanism matched in the policy of {domain}"),
        ))
    }

    fn target(&mut self, spec: &Option<String>, domain: &str) -> Result<String, Stop> {
        match spec {
            Some(s) => self.expand(s, domain),
            None => Ok(domain.to_string()),
        }
    }

    fn matches(&mut self, m: &Mechanism, domain: &str, depth: u32) -> Result<bool, Stop> {
        let ip = self.check.ip;
        match m {
            Mechanism::All => Ok(true),
            Mechanism::Ip4(net, len) => Ok(prefix_match(ip, IpAddr::V4(*net), *len)),
            Mechanism::Ip6(net, len) => Ok(prefix_match(ip, IpAddr::V6(*net), *len)),
            Mechanism::Include(spec) => {
                self.count_term()?;
                let target = self.expand(spec, domain)?;
                // RFC 7208 5.2: the included policy's result decides.
                match self.check_host(&target, depth + 1)?.0 {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err(Stop::Temp(format!(
                        "include:{target} had a temporary error"
                    ))),
                    SpfResult::PermError => perm(format!("include:{target} is broken")),
                    SpfResult::None => perm(format!("include:{target} has no SPF record")),
                }
            }
            Mechanism::A(spec, v4, v6) => {
                self.count_term()?;
                let target = self.target(spec, domain)?;
                let len = if self.is_v6() { *v6 } else { *v4 };
                let qtype = self.addr_type();
                let addrs = self.addrs(&target, qtype)?;
                Ok(addrs.iter().any(|a| prefix_match(ip, *a, len)))
            }
            Mechanism::Mx(spec, v4, v6) => {
                self.count_term()?;
                let target = self.target(spec, domain)?;
                let len = if self.is_v6() { *v6 } else { *v4 };
                let mut hosts = match self.lookup(&target, QType::Mx, false)? {
                    Answer::Mx(hosts) => hosts,
                    _ => Vec::new(),
                };
                if hosts.len() > MAX_MX_NAMES {
                    return perm(format!("mx:{target}: more than {MAX_MX_NAMES} MX records"));
                }
                hosts.sort();
                let qtype = self.addr_type();
                for (_, host) in hosts {
                    let addrs = self.addrs(&host, qtype)?;
                    if addrs.iter().any(|a| prefix_match(ip, *a, len)) {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Mechanism::Ptr(spec) => {
                self.count_term()?;
                let target = self.target(spec, domain)?.to_ascii_lowercase();
                let names = self.validated_names()?;
                let suffix = format!(".{target}");
                Ok(names.iter().any(|n| *n == target || n.ends_with(&suffix)))
            }
            Mechanism::Exists(spec) => {
                self.count_term()?;
                let target = self.expand(spec, domain)?;
                // RFC 7208 5.7: always an A query, whatever the client.
                Ok(!self.addrs(&target, QType::A)?.is_empty())
            }
        }
    }

    /// RFC 7208 5.5: the PTR names of the client whose A/AAAA records lead
    /// back to it (at most [`MAX_PTR_NAMES`] tried). A DNS error on the PTR
    /// query is a temperror; on a name's address query, it skips that name.
    fn validated_names(&mut self) -> Result<Vec<String>, Stop> {
        let ip = self.check.ip;
        let names = match self.lookup(&dns::reverse_name(ip), QType::Ptr, false)? {
            Answer::Names(n) => n,
            _ => Vec::new(),
        };
        let qtype = self.addr_type();
        let mut valid = Vec::new();
        for name in names.into_iter().take(MAX_PTR_NAMES) {
            match self.addrs(&name, qtype) {
                Ok(addrs) if addrs.contains(&ip) => valid.push(name),
                Ok(_) | Err(Stop::Temp(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(valid)
    }

    /// RFC 7208 7.3: `%{p}`, the validated domain name of the client,
    /// preferring the current domain or a subdomain of it.
    fn p_value(&mut self, domain: &str) -> Result<String, Stop> {
        if let Some(p) = &self.p_macro {
            return Ok(p.clone());
        }
        let names = self.validated_names()?;
        let domain_l = domain.to_ascii_lowercase();
        let suffix = format!(".{domain_l}");
        let p = names
            .iter()
            .find(|n| **n == domain_l)
            .or_else(|| names.iter().find(|n| n.ends_with(&suffix)))
            .or_else(|| names.first())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string());
        self.p_macro = Some(p.clone());
        Ok(p)
    }

    /// RFC 7208 7.4: `i` for IPv6 is dot-separated nibbles.
    fn i_value(&self) -> String {
        match self.check.ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let mut out = String::with_capacity(63);
                for byte in v6.octets() {
                    for nibble in [byte >> 4, byte & 0xf] {
                        if !out.is_empty() {
                            out.push('.');
                        }
                        out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    }
                }
                out
            }
        }
    }

    /// Expands a domain-spec (syntax already checked) for the current
    /// `domain` (RFC 7208 7.3, 7.4), and cuts it to 253 characters.
    fn expand(&mut self, spec: &str, domain: &str) -> Result<String, Stop> {
        let b = spec.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'%' {
                let next = spec[i..].find('%').map_or(b.len(), |n| i + n);
                out.push_str(&spec[i..next]);
                i = next;
                continue;
            }
            match b.get(i + 1) {
                Some(b'%') => out.push('%'),
                Some(b'_') => out.push(' '),
                Some(b'-') => out.push_str("%20"),
                Some(b'{') => {
                    let end = spec[i..]
                        .find('}')
                        .map(|e| i + e)
                        .ok_or_else(|| Stop::Perm(format!("bad macro in {spec:?}")))?;
                    let m = parse_macro(&spec[i + 2..end], false)?;
                    let value = match m.letter {
                        b's' => format!("{}@{}", self.check.local, self.check.domain),
                        b'l' => self.check.local.clone(),
                        b'o' => self.check.domain.clone(),
                        b'd' => domain.to_string(),
                        b'i' => self.i_value(),
                        b'p' => self.p_value(domain)?,
                        b'v' => if self.is_v6() { "ip6" } else { "in-addr" }.to_string(),
                        b'h' => self.check.helo.clone(),
                        _ => return perm(format!("bad macro in {spec:?}")),
                    };
                    let value = transform(&value, &m);
                    if m.upper {
                        out.push_str(&url_escape(&value));
                    } else {
                        out.push_str(&value);
                    }
                    i = end + 1;
                    continue;
                }
                _ => return perm(format!("bad macro in {spec:?}")),
            }
            i += 2;
        }
        let mut name = out.strip_suffix('.').unwrap_or(&out).to_string();
        while name.len() > MAX_DOMAIN {
            match name.find('.') {
                Some(dot) => name = name[dot + 1..].to_string(),
                None => break,
            }
        }
        Ok(name)
    }
}

/// RFC 7208 7.3: split on the delimiters, maybe reverse, keep the right
/// `digits` parts, join with `.`.
fn transform(value: &str, m: &Macro) -> String {
    let delims: &[u8] = if m.delimiters.is_empty() {
        b"."
    } else {
        &m.delimiters
    };
    let mut parts: Vec<&str> = value
        .split(|c: char| c.is_ascii() && delims.contains(&(c as u8)))
        .collect();
    if m.reverse {
        parts.reverse();
    }
    if let Some(n) = m.digits {
        if n < parts.len() {
            parts = parts.split_off(parts.len() - n);
        }
    }
    parts.join(".")
}

/// RFC 7208 7.3: upper-case macro letters are URL-escaped (RFC 3986
/// unreserved characters kept).
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
