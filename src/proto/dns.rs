//! DNS messages for direct delivery and for mail authentication: MX, A,
//! AAAA, TXT and PTR queries and answers, sans-IO.
//!
//! Owns: building queries (RFC 1035 4.1, recursion desired), checking and
//! classifying responses (id and question match, rcode, TC bit, CNAME
//! chains, null MX of RFC 7505, TXT strings joined), ordering MX hosts
//! (RFC 5321 5.1), reverse names (RFC 1035 3.5, RFC 3596 2.5), TCP
//! framing (RFC 1035 4.2.2, RFC 7766), the first `nameserver` of
//! `/etc/resolv.conf`, [`MxLookup`], the resolution of one domain into
//! the addresses to try, in order, and [`RecordLookup`], one question with
//! retries (for SPF, DKIM, DMARC and DNSBL).
//!
//! Must not: open sockets, read files, keep time or pick random numbers
//! itself: the driver sends the packets, reads resolv.conf, runs the
//! timers ([`DNS_TIMEOUT`]) and gives a seed. Never panics on any packet.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

/// RFC 1035 4.2: the DNS port.
pub const DNS_PORT: u16 = 53;
/// RFC 1035 4.2.1: without EDNS a UDP response is at most 512 bytes (a
/// larger answer comes with TC set and is fetched over TCP).
pub const MAX_UDP_RESPONSE: usize = 512;
/// How long to wait for one answer before [`MxLookup::on_timeout`]
/// (resolv.conf(5) default `timeout:5`).
pub const DNS_TIMEOUT_SECS: u64 = 5;
/// Tries per query, the first included (resolv.conf(5) `attempts:2`, plus one).
pub const MAX_TRIES: u32 = 3;
/// Most CNAMEs followed inside one answer section (our own bound; RFC 1034
/// 3.6.2 says chains should not be used at all for MX targets).
pub const MAX_CNAME_CHAIN: usize = 8;
/// Most MX hosts resolved for one domain (our own bound; Postfix's
/// `smtp_mx_address_limit` is 5 addresses).
pub const MAX_MX_HOSTS: usize = 5;
/// RFC 1035 2.3.4: a label is 1 to 63 octets.
const MAX_LABEL: usize = 63;
/// RFC 1035 2.3.4: 255 octets on the wire, i.e. 253 characters as text.
const MAX_NAME_TEXT: usize = 253;
/// RFC 1035 4.1.1: the fixed header.
const HEADER_LEN: usize = 12;
/// RFC 1035 4.1.2: smallest question (root name, type, class).
const MIN_QUESTION_LEN: usize = 5;
/// RFC 1035 4.1.3: smallest resource record (root name, type, class, TTL, rdlength).
const MIN_RR_LEN: usize = 11;

/// The suggested [`DNS_TIMEOUT_SECS`] as a `Duration`.
pub const DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(DNS_TIMEOUT_SECS);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    Mx,
    A,
    Aaaa,
    /// SPF policies (RFC 7208 3), DKIM keys (RFC 6376 3.6.2), DMARC
    /// policies (RFC 7489 6.1).
    Txt,
    /// Reverse names, for SPF `ptr` and `%{p}` (RFC 7208 5.5).
    Ptr,
}

impl QType {
    fn to_type(self) -> TYPE {
        match self {
            QType::Mx => TYPE::MX,
            QType::A => TYPE::A,
            QType::Aaaa => TYPE::AAAA,
            QType::Txt => TYPE::TXT,
            QType::Ptr => TYPE::PTR,
        }
    }
}

/// A response that answers the question asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `(preference, host)`, hosts lower-case without the final dot. Empty
    /// when MX records exist but none names a usable host.
    Mx(Vec<(u16, String)>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
    /// A or AAAA addresses (CNAMEs followed), deduplicated, in answer order.
    Addrs(Vec<IpAddr>),
    /// TXT records in answer order, each one's character-strings joined
    /// with nothing between them (RFC 7208 3.3, RFC 6376 3.6.2.2).
    Txt(Vec<Vec<u8>>),
    /// PTR targets, lower-case without the final dot (names that are not
    /// host names dropped).
    Names(Vec<String>),
    /// The name exists but has no record of this type.
    NoData,
    /// RCODE 3: the name does not exist.
    NxDomain,
    /// TC set: ask again over TCP (RFC 7766 5).
    Truncated,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name cannot be a domain name (so no lookup can succeed).
    InvalidName(String),
    /// A message longer than a TCP length prefix can carry.
    TooLong,
    /// Not a DNS message we can read.
    Malformed,
    /// Another query's answer, or a spoofing attempt: keep waiting.
    WrongId { expected: u16, got: u16 },
    /// QR not set, or not a standard query.
    NotAResponse,
    /// The question section does not repeat ours: keep waiting.
    WrongQuestion,
    /// RCODE 2: the resolver could not get an answer.
    ServFail,
    /// Any other error RCODE (FORMERR 1, NOTIMP 4, REFUSED 5, ...).
    Rcode(u16),
}

impl DnsError {
    /// Only a malformed name can never resolve; every other error may pass.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DnsError::InvalidName(_))
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::InvalidName(n) => write!(f, "invalid domain name {n:?}"),
            DnsError::TooLong => write!(f, "DNS message too long"),
            DnsError::Malformed => write!(f, "malformed DNS response"),
            DnsError::WrongId { expected, got } => {
                write!(
                    f,
                    "DNS response id {got} does not match query id {expected}"
                )
            }
            DnsError::NotAResponse => write!(f, "DNS message is not a response to a query"),
            DnsError::WrongQuestion => write!(f, "DNS response answers another question"),
            DnsError::ServFail => write!(f, "DNS server failure (SERVFAIL)"),
            DnsError::Rcode(c) => write!(f, "DNS error response (RCODE {c})"),
        }
    }
}

impl std::error::Error for DnsError {}

/// Checks a domain name as text and returns it lower-case without the final
/// dot. Letters, digits, hyphen and underscore only: an internationalized
/// domain must already be in its A-label (`xn--`) form.
fn normalize_name(name: &str) -> Result<String, DnsError> {
    let invalid = || DnsError::InvalidName(name.chars().take(80).collect());
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME_TEXT {
        return Err(invalid());
    }
    for label in trimmed.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty() || label.len() > MAX_LABEL || !ok_chars {
            return Err(invalid());
        }
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// RFC 2181 11: a label may hold any octets. Names built from SPF macros
/// (RFC 7208 7.1: any visible character) and DNSBL zones are asked as they
/// are, so this accepts printable ASCII except the backslash (simple-dns
/// would read it as an escape) with the RFC 1035 2.3.4 lengths, and returns
/// it lower-case without the final dot.
fn normalize_any_name(name: &str) -> Result<String, DnsError> {
    let invalid = || DnsError::InvalidName(name.chars().take(80).collect());
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME_TEXT {
        return Err(invalid());
    }
    for label in trimmed.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'\\');
        if label.is_empty() || label.len() > MAX_LABEL || !ok_chars {
            return Err(invalid());
        }
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// Whether [`build_query_any`] can ask for `name`.
pub fn is_query_name(name: &str) -> bool {
    normalize_any_name(name).is_ok()
}

/// Like [`build_query`], for any name [`is_query_name`] accepts (not only
/// host names): TXT and A queries of SPF, DKIM, DMARC and DNSBLs.
pub fn build_query_any(id: u16, name: &str, qtype: QType) -> Result<Vec<u8>, DnsError> {
    let name = normalize_any_name(name)?;
    query_packet(id, name, qtype)
}

/// A standard query for `name`, class IN, with RD set (we ask a recursive
/// resolver). No EDNS: answers over 512 bytes come back truncated and go
/// over TCP.
pub fn build_query(id: u16, name: &str, qtype: QType) -> Result<Vec<u8>, DnsError> {
    let name = normalize_name(name)?;
    query_packet(id, name, qtype)
}

fn query_packet(id: u16, name: String, qtype: QType) -> Result<Vec<u8>, DnsError> {
    let qname = Name::new(&name).map_err(|_| DnsError::InvalidName(name.clone()))?;
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    packet.questions.push(Question::new(
        qname,
        QTYPE::TYPE(qtype.to_type()),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet
        .build_bytes_vec()
        .map_err(|_| DnsError::InvalidName(name.clone()))
}

/// The host named by an MX exchange, lower-case; `Some("")` for the root
/// (null MX). `None` when it is not a host name we could look up.
fn host_of(name: &Name) -> Option<String> {
    let mut host = String::new();
    for label in name.get_labels() {
        let bytes: &[u8] = label.as_ref();
        let ok = !bytes.is_empty()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        if !ok {
            return None;
        }
        if !host.is_empty() {
            host.push('.');
        }
        host.push_str(&String::from_utf8_lossy(bytes).to_ascii_lowercase());
    }
    Some(host)
}

/// Checks `packet` against the query `(id, name, qtype)` and classifies it.
pub fn parse_response(
    id: u16,
    name: &str,
    qtype: QType,
    packet: &[u8],
) -> Result<Answer, DnsError> {
    let Some(&[id_hi, id_lo, f_hi, f_lo, qd_hi, qd_lo, an_hi, an_lo, ns_hi, ns_lo, ar_hi, ar_lo]) =
        packet.first_chunk::<HEADER_LEN>()
    else {
        return Err(DnsError::Malformed);
    };
    let got = u16::from_be_bytes([id_hi, id_lo]);
    if got != id {
        return Err(DnsError::WrongId { expected: id, got });
    }
    let flags = u16::from_be_bytes([f_hi, f_lo]);
    let opcode = (flags >> 11) & 0xf;
    if flags & PacketFlag::RESPONSE.bits() == 0 || opcode != 0 {
        return Err(DnsError::NotAResponse);
    }
    // RFC 1035 4.1.1: TC set; the rest may be cut anywhere, so read no further.
    if flags & PacketFlag::TRUNCATION.bits() != 0 {
        return Ok(Answer::Truncated);
    }
    // The counts must fit in the bytes present; this also bounds what the
    // parser allocates for hostile counts.
    let count = |hi, lo| usize::from(u16::from_be_bytes([hi, lo]));
    let records = count(an_hi, an_lo) + count(ns_hi, ns_lo) + count(ar_hi, ar_lo);
    let least = count(qd_hi, qd_lo) * MIN_QUESTION_LEN + records * MIN_RR_LEN;
    if least > packet.len() - HEADER_LEN {
        return Err(DnsError::Malformed);
    }

    let parsed = Packet::parse(packet).map_err(|_| DnsError::Malformed)?;
    // Compared with the question we asked, which either builder made.
    let wanted = normalize_any_name(name)?;
    let wanted_name = Name::new(&wanted).map_err(|_| DnsError::InvalidName(wanted.clone()))?;
    let question_ok = match parsed.questions.as_slice() {
        [q] => {
            q.qname == wanted_name
                && q.qtype == QTYPE::TYPE(qtype.to_type())
                && q.qclass == QCLASS::CLASS(CLASS::IN)
        }
        _ => false,
    };
    if !question_ok {
        return Err(DnsError::WrongQuestion);
    }

    match parsed.rcode() {
        RCODE::NoError => {}
        // RFC 6604: with CNAMEs the rcode is about the end of the chain;
        // either way, nothing to deliver to.
        RCODE::NameError => return Ok(Answer::NxDomain),
        RCODE::ServerFailure => return Err(DnsError::ServFail),
        other => return Err(DnsError::Rcode(other as u16)),
    }

    // Follow CNAMEs from the name asked (RFC 1034 3.6.2): the resolver puts
    // the chain and the final records in the answer section.
    let mut target = wanted_name;
    for _ in 0..MAX_CNAME_CHAIN {
        let next = parsed.answers.iter().find_map(|rr| match &rr.rdata {
            RData::CNAME(c) if rr.name == target && rr.class == CLASS::IN => Some(c.0.clone()),
            _ => None,
        });
        match next {
            Some(n) => target = n,
            None => break,
        }
    }
    let records = parsed
        .answers
        .iter()
        .filter(|rr| rr.name == target && rr.class == CLASS::IN);

    match qtype {
        QType::Mx => {
            let mut mx = Vec::new();
            let mut null = false;
            let mut any = false;
            for rr in records {
                if let RData::MX(m) = &rr.rdata {
                    any = true;
                    match host_of(&m.exchange) {
                        Some(h) if h.is_empty() => null = true,
                        Some(h) => mx.push((m.preference, h)),
                        None => {}
                    }
                }
            }
            if !any {
                Ok(Answer::NoData)
            } else if null && mx.is_empty() {
                // RFC 7505 3: a lone MX of "." (preference 0 is specified;
                // any preference means the same thing).
                Ok(Answer::NullMx)
            } else {
                // A "." beside real MX hosts is a misconfiguration: use the
                // real ones.
                Ok(Answer::Mx(mx))
            }
        }
        QType::A | QType::Aaaa => {
            let mut addrs: Vec<IpAddr> = Vec::new();
            for rr in records {
                let addr = match (&rr.rdata, qtype) {
                    (RData::A(a), QType::A) => IpAddr::V4(Ipv4Addr::from(a.address)),
                    (RData::AAAA(a), QType::Aaaa) => IpAddr::V6(Ipv6Addr::from(a.address)),
                    _ => continue,
                };
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                }
            }
            if addrs.is_empty() {
                Ok(Answer::NoData)
            } else {
                Ok(Answer::Addrs(addrs))
            }
        }
        QType::Txt => {
            let mut txt = Vec::new();
            for rr in records {
                if let RData::TXT(t) = &rr.rdata {
                    // The bytes are wanted, UTF-8 or not: the error gives them back.
                    let bytes = match String::try_from(t.clone()) {
                        Ok(s) => s.into_bytes(),
                        Err(e) => e.into_bytes(),
                    };
                    txt.push(bytes);
                }
            }
            if txt.is_empty() {
                Ok(Answer::NoData)
            } else {
                Ok(Answer::Txt(txt))
            }
        }
        QType::Ptr => {
            let mut names: Vec<String> = Vec::new();
            let mut any = false;
            for rr in records {
                if let RData::PTR(p) = &rr.rdata {
                    any = true;
                    if let Some(h) = host_of(&p.0) {
                        if !h.is_empty() && !names.contains(&h) {
                            names.push(h);
                        }
                    }
                }
            }
            if any {
                Ok(Answer::Names(names))
            } else {
                Ok(Answer::NoData)
            }
        }
    }
}

/// The reverse-lookup name of `ip` without a suffix: `4.3.2.1` for
/// 1.2.3.4, 32 nibbles for IPv6 (RFC 1035 3.5, RFC 3596 2.5). DNSBLs
/// (RFC 5782 2.1, 2.4) put their zone after it; PTR uses `in-addr.arpa`
/// / `ip6.arpa` ([`reverse_name`]).
pub fn reversed_labels(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(63);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0xf, byte >> 4] {
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

/// The PTR query name of `ip` (RFC 1035 3.5, RFC 3596 2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    let zone = if ip.is_ipv4() {
        "in-addr.arpa"
    } else {
        "ip6.arpa"
    };
    format!("{}.{zone}", reversed_labels(ip))
}

/// SplitMix64: tiny deterministic PRNG for MX shuffling and query ids; the
/// driver seeds it (e.g. from the clock and the pid).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for shuffling a handful of hosts; `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// RFC 5321 5.1: MX hosts by preference, lowest first, hosts of equal
/// preference in random order; each host once (case-insensitively), null
/// MX entries dropped.
pub fn order_mx(records: Vec<(u16, String)>, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64(seed);
    let mut records = records;
    // Fisher-Yates, then a stable sort: equal preferences stay shuffled.
    for i in (1..records.len()).rev() {
        records.swap(i, rng.below(i + 1));
    }
    records.sort_by_key(|(pref, _)| *pref);
    let mut hosts: Vec<String> = Vec::new();
    for (_, host) in records {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if !host.is_empty() && !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

/// RFC 1035 4.2.2: over TCP a message is preceded by its length (2 bytes).
pub fn tcp_frame(message: &[u8]) -> Result<Vec<u8>, DnsError> {
    let len = u16::try_from(message.len()).map_err(|_| DnsError::TooLong)?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Ok(framed)
}

/// Takes one complete length-prefixed message off the front of a TCP
/// stream buffer; `None` until all of it has arrived.
pub fn tcp_take(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let &[hi, lo] = buf.first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if buf.len() < 2 + len {
        return None;
    }
    let message = buf.get(2..2 + len)?.to_vec();
    buf.drain(..2 + len);
    Some(message)
}

/// The first usable `nameserver` line of resolv.conf(5) text, port 53.
/// Link-local IPv6 with a `%zone` is skipped (we cannot map the zone name
/// to an interface index without the OS).
pub fn resolv_conf_nameserver(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|line| {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_ascii_whitespace();
        if words.next() != Some("nameserver") {
            return None;
        }
        let ip: IpAddr = words.next()?.parse().ok()?;
        Some(SocketAddr::new(ip, DNS_PORT))
    })
}

/// A query for the driver to send to the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    pub id: u16,
    pub name: String,
    pub qtype: QType,
    /// The message; over TCP, send `tcp_frame(&packet)`.
    pub packet: Vec<u8>,
    /// Send over TCP (the UDP answer was truncated).
    pub tcp: bool,
}

/// One MX host (or the domain itself, for the implicit MX) and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub host: String,
    pub addrs: Vec<IpAddr>,
}

/// Why a domain cannot be delivered to now (or ever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupFailure {
    /// Bounce (true) or retry later (false).
    pub permanent: bool,
    /// RFC 3463 code for the bounce or the queue's last error.
    pub enhanced: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupStep {
    /// Send this, start the [`DNS_TIMEOUT`] timer, feed the answer to
    /// [`MxLookup::on_response`] (or call [`MxLookup::on_timeout`]).
    Query(DnsQuery),
    /// Hosts in the order to try, each with at least one address.
    Done(Result<Vec<MxHost>, LookupFailure>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Mx,
    Addr { host: usize, qtype: QType },
    Done,
}

/// Resolves one recipient domain: MX first, then A (and AAAA) of each MX
/// host, or of the domain itself when it has no MX (the implicit MX of
/// RFC 5321 5.1).
#[derive(Debug)]
pub struct MxLookup {
    domain: String,
    want_ipv6: bool,
    seed: u64,
    rng: SplitMix64,
    stage: Stage,
    hosts: Vec<String>,
    implicit: bool,
    /// Addresses found for the host being resolved.
    addrs: Vec<IpAddr>,
    results: Vec<MxHost>,
    current: Option<DnsQuery>,
    tries: u32,
    /// The last transient failure of a host lookup, if any.
    host_error: Option<String>,
    /// Only A/AAAA of `domain` (see `addresses_of`).
    addresses_only: bool,
}

impl MxLookup {
    /// `want_ipv6`: also ask AAAA (off when the box has no IPv6 route).
    /// `seed`: randomness for query ids and MX shuffling.
    pub fn new(domain: &str, want_ipv6: bool, seed: u64) -> MxLookup {
        MxLookup {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            want_ipv6,
            seed,
            rng: SplitMix64(seed ^ 0x5eed),
            stage: Stage::Mx,
            hosts: Vec::new(),
            implicit: false,
            addrs: Vec::new(),
            results: Vec::new(),
            current: None,
            tries: 0,
            host_error: None,
            addresses_only: false,
        }
    }

    /// Resolves `host` itself (A, then AAAA), without asking for MX: for a
    /// smarthost name, where an MX record would be beside the point.
    pub fn addresses_of(host: &str, want_ipv6: bool, seed: u64) -> MxLookup {
        let mut lookup = MxLookup::new(host, want_ipv6, seed);
        lookup.implicit = true;
        lookup.hosts = vec![lookup.domain.clone()];
        lookup.addresses_only = true;
        lookup
    }

    /// The first query (MX of the domain), or an immediate failure.
    pub fn start(&mut self) -> LookupStep {
        if self.addresses_only {
            return self.resolve_host(0);
        }
        self.stage = Stage::Mx;
        let domain = self.domain.clone();
        self.query(domain, QType::Mx, false)
    }

    /// A packet from the resolver. `None`: not the answer awaited (another
    /// id or question; ignore it and keep waiting).
    pub fn on_response(&mut self, packet: &[u8]) -> Option<LookupStep> {
        let q = self.current.clone()?;
        match parse_response(q.id, &q.name, q.qtype, packet) {
            Err(DnsError::WrongId { .. } | DnsError::WrongQuestion | DnsError::NotAResponse) => {
                None
            }
            Err(DnsError::Malformed) => Some(self.retry_or_fail("malformed DNS response")),
            Ok(Answer::Truncated) if q.tcp => {
                Some(self.retry_or_fail("truncated DNS response over TCP"))
            }
            Ok(Answer::Truncated) => {
                self.tries = 0;
                Some(self.query(q.name, q.qtype, true))
            }
            Err(e) => Some(self.query_failed(&q, &e.to_string(), e.is_permanent())),
            Ok(answer) => Some(self.advance(answer)),
        }
    }

    /// No answer within [`DNS_TIMEOUT`]: ask again, or give up (transient).
    pub fn on_timeout(&mut self) -> LookupStep {
        self.retry_or_fail("DNS timeout")
    }

    fn retry_or_fail(&mut self, why: &str) -> LookupStep {
        let Some(q) = self.current.clone() else {
            return self.finish();
        };
        self.tries += 1;
        if self.tries < MAX_TRIES {
            // A fresh id for every try (RFC 5452 9.2).
            self.query(q.name, q.qtype, q.tcp)
        } else {
            self.query_failed(&q, why, false)
        }
    }

    fn query(&mut self, name: String, qtype: QType, tcp: bool) -> LookupStep {
        let id = (self.rng.next_u64() & 0xffff) as u16;
        match build_query(id, &name, qtype) {
            Ok(packet) => {
                let q = DnsQuery {
                    id,
                    name,
                    qtype,
                    packet,
                    tcp,
                };
                self.current = Some(q.clone());
                LookupStep::Query(q)
            }
            Err(e) => {
                let q = DnsQuery {
                    id,
                    name,
                    qtype,
                    packet: Vec::new(),
                    tcp,
                };
                self.query_failed(&q, &e.to_string(), true)
            }
        }
    }

    fn fail(&mut self, permanent: bool, enhanced: &'static str, reason: String) -> LookupStep {
        self.stage = Stage::Done;
        self.current = None;
        LookupStep::Done(Err(LookupFailure {
            permanent,
            enhanced,
            reason,
        }))
    }

    fn query_failed(&mut self, q: &DnsQuery, why: &str, permanent: bool) -> LookupStep {
        match self.stage {
            Stage::Mx => {
                let reason = format!("MX lookup for {} failed: {why}", self.domain);
                if permanent {
                    // RFC 3463: X.1.2 bad destination system address.
                    self.fail(true, "5.1.2", reason)
                } else {
                    // RFC 3463: X.4.3 directory server failure.
                    self.fail(false, "4.4.3", reason)
                }
            }
            Stage::Addr { .. } => {
                if !permanent {
                    self.host_error = Some(format!("lookup of {} failed: {why}", q.name));
                }
                self.next_addr_step()
            }
            Stage::Done => self.finish(),
        }
    }

    fn advance(&mut self, answer: Answer) -> LookupStep {
        self.tries = 0;
        match self.stage {
            Stage::Mx => match answer {
                Answer::Mx(records) if records.is_empty() => self.fail(
                    true,
                    "5.4.4",
                    format!("the MX records of {} name no usable host", self.domain),
                ),
                Answer::Mx(records) => {
                    self.hosts = order_mx(records, self.seed);
                    self.hosts.truncate(MAX_MX_HOSTS);
                    self.resolve_host(0)
                }
                Answer::NullMx => self.fail(
                    true,
                    "5.1.10",
                    format!("{} does not accept mail (null MX, RFC 7505)", self.domain),
                ),
                Answer::NxDomain => self.fail(
                    true,
                    "5.1.2",
                    format!("domain {} does not exist", self.domain),
                ),
                Answer::NoData
                | Answer::Addrs(_)
                | Answer::Txt(_)
                | Answer::Names(_)
                | Answer::Truncated => {
                    // RFC 5321 5.1: no MX, so the domain is its own implicit MX.
                    self.implicit = true;
                    self.hosts = vec![self.domain.clone()];
                    self.resolve_host(0)
                }
            },
            Stage::Addr { .. } => {
                if let Answer::Addrs(addrs) = answer {
                    let known: Vec<IpAddr> =
                        self.results.iter().flat_map(|h| h.addrs.clone()).collect();
                    for a in addrs {
                        if !self.addrs.contains(&a) && !known.contains(&a) {
                            self.addrs.push(a);
                        }
                    }
                }
                self.next_addr_step()
            }
            Stage::Done => self.finish(),
        }
    }

    fn resolve_host(&mut self, host: usize) -> LookupStep {
        let Some(name) = self.hosts.get(host).cloned() else {
            return self.finish();
        };
        self.addrs.clear();
        self.tries = 0;
        self.stage = Stage::Addr {
            host,
            qtype: QType::A,
        };
        self.query(name, QType::A, false)
    }

    /// After the A (then AAAA) answer of a host: its next query or the next host.
    fn next_addr_step(&mut self) -> LookupStep {
        let Stage::Addr { host, qtype } = self.stage else {
            return self.finish();
        };
        self.tries = 0;
        if qtype == QType::A && self.want_ipv6 {
            if let Some(name) = self.hosts.get(host).cloned() {
                self.stage = Stage::Addr {
                    host,
                    qtype: QType::Aaaa,
                };
                return self.query(name, QType::Aaaa, false);
            }
        }
        if !self.addrs.is_empty() {
            if let Some(name) = self.hosts.get(host).cloned() {
                self.results.push(MxHost {
                    host: name,
                    addrs: std::mem::take(&mut self.addrs),
                });
            }
        }
        self.resolve_host(host + 1)
    }

    fn finish(&mut self) -> LookupStep {
        self.stage = Stage::Done;
        self.current = None;
        if !self.results.is_empty() {
            return LookupStep::Done(Ok(std::mem::take(&mut self.results)));
        }
        if let Some(err) = self.host_error.take() {
            return self.fail(false, "4.4.3", err);
        }
        if self.implicit {
            let reason = format!("{} has no MX and no address records", self.domain);
            self.fail(true, "5.1.2", reason)
        } else {
            // RFC 3463: X.4.4 unable to route.
            let reason = format!("no MX host of {} has an address", self.domain);
            self.fail(true, "5.4.4", reason)
        }
    }
}

/// What [`RecordLookup`] needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordStep {
    /// Send this, start the [`DNS_TIMEOUT`] timer, feed the answer to
    /// [`RecordLookup::on_response`] (or call [`RecordLookup::on_timeout`]).
    Query(DnsQuery),
    /// The answer (never `Truncated`: that is retried over TCP), or why
    /// there is none after the retries (a temporary failure).
    Done(Result<Answer, String>),
}

/// One question of any type ([`build_query_any`] names), with the same
/// retries and TCP fallback as [`MxLookup`]: the SPF, DKIM, DMARC and
/// DNSBL evaluators ask through this, one question at a time.
#[derive(Debug)]
pub struct RecordLookup {
    name: String,
    qtype: QType,
    rng: SplitMix64,
    current: Option<DnsQuery>,
    tries: u32,
}

impl RecordLookup {
    /// `seed`: randomness for query ids.
    pub fn new(name: &str, qtype: QType, seed: u64) -> RecordLookup {
        RecordLookup {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            qtype,
            rng: SplitMix64(seed ^ 0x7e57),
            current: None,
            tries: 0,
        }
    }

    pub fn start(&mut self) -> RecordStep {
        self.tries = 0;
        self.query(false)
    }

    fn query(&mut self, tcp: bool) -> RecordStep {
        let id = (self.rng.next_u64() & 0xffff) as u16;
        match build_query_any(id, &self.name, self.qtype) {
            Ok(packet) => {
                let q = DnsQuery {
                    id,
                    name: self.name.clone(),
                    qtype: self.qtype,
                    packet,
                    tcp,
                };
                self.current = Some(q.clone());
                RecordStep::Query(q)
            }
            // No server can hold such a name.
            Err(DnsError::InvalidName(_)) => RecordStep::Done(Ok(Answer::NxDomain)),
            Err(e) => RecordStep::Done(Err(e.to_string())),
        }
    }

    /// A packet from the resolver. `None`: not the answer awaited.
    pub fn on_response(&mut self, packet: &[u8]) -> Option<RecordStep> {
        let q = self.current.clone()?;
        match parse_response(q.id, &q.name, q.qtype, packet) {
            Err(DnsError::WrongId { .. } | DnsError::WrongQuestion | DnsError::NotAResponse) => {
                None
            }
            Err(DnsError::Malformed) => Some(self.retry_or_fail("malformed DNS response")),
            Ok(Answer::Truncated) if q.tcp => {
                Some(self.retry_or_fail("truncated DNS response over TCP"))
            }
            Ok(Answer::Truncated) => {
                self.tries = 0;
                Some(self.query(true))
            }
            Err(e) => {
                self.current = None;
                Some(RecordStep::Done(Err(e.to_string())))
            }
            Ok(answer) => {
                self.current = None;
                Some(RecordStep::Done(Ok(answer)))
            }
        }
    }

    /// No answer within [`DNS_TIMEOUT`]: ask again, or give up.
    pub fn on_timeout(&mut self) -> RecordStep {
        self.retry_or_fail("DNS timeout")
    }

    fn retry_or_fail(&mut self, why: &str) -> RecordStep {
        let Some(q) = self.current.clone() else {
            return RecordStep::Done(Err(why.to_string()));
        };
        self.tries += 1;
        if self.tries < MAX_TRIES {
            // A fresh id for every try (RFC 5452 9.2).
            self.query(q.tcp)
        } else {
            self.current = None;
            RecordStep::Done(Err(format!("{why} for {} after {MAX_TRIES} tries", q.name)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::{A, AAAA, CNAME, MX, SOA};
    use simple_dns::ResourceRecord;

    fn name(s: &str) -> Name<'_> {
        Name::new_unchecked(s)
    }

    /// A response to `(id, qname, qtype)` built with simple-dns itself.
    fn response(
        id: u16,
        qname: &str,
        qtype: QType,
        rcode: RCODE,
        answers: Vec<ResourceRecord<'static>>,
    ) -> Vec<u8> {
        let owned = qname.to_string();
        let mut p = Packet::new_reply(id);
        p.set_flags(PacketFlag::RECURSION_DESIRED | PacketFlag::RECURSION_AVAILABLE);
        *p.rcode_mut() = rcode;
        p.questions.push(Question::new(
            Name::new_unchecked(&owned).into_owned(),
            QTYPE::TYPE(qtype.to_type()),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        p.answers = answers;
        p.build_bytes_vec_compressed().unwrap()
    }

    fn rr(owner: &str, rdata: RData<'static>) -> ResourceRecord<'static> {
        ResourceRecord::new(name(owner).into_owned(), CLASS::IN, 300, rdata)
    }

    fn mx(owner: &str, pref: u16, host: &str) -> ResourceRecord<'static> {
        rr(
            owner,
            RData::MX(MX {
                preference: pref,
                exchange: name(host).into_owned(),
            }),
        )
    }

    fn a(owner: &str, ip: [u8; 4]) -> ResourceRecord<'static> {
        rr(
            owner,
            RData::A(A {
                address: u32::from(Ipv4Addr::from(ip)),
            }),
        )
    }

    fn aaaa(owner: &str, ip: &str) -> ResourceRecord<'static> {
        let ip: Ipv6Addr = ip.parse().unwrap();
        rr(
            owner,
            RData::AAAA(AAAA {
                address: u128::from(ip),
            }),
        )
    }

    fn cname(owner: &str, target: &str) -> ResourceRecord<'static> {
        rr(owner, RData::CNAME(CNAME(name(target).into_owned())))
    }

    #[test]
    fn query_roundtrip() {
        for (qt, ty) in [
            (QType::Mx, TYPE::MX),
            (QType::A, TYPE::A),
            (QType::Aaaa, TYPE::AAAA),
        ] {
            let bytes = build_query(0xbeef, "Example.NET.", qt).unwrap();
            let p = Packet::parse(&bytes).unwrap();
            assert_eq!(p.id(), 0xbeef);
            assert!(p.has_flags(PacketFlag::RECURSION_DESIRED));
            assert!(!p.has_flags(PacketFlag::RESPONSE));
            assert_eq!(p.questions.len(), 1);
            assert_eq!(p.questions[0].qname.to_string(), "example.net");
            assert_eq!(p.questions[0].qtype, QTYPE::TYPE(ty));
            assert_eq!(p.questions[0].qclass, QCLASS::CLASS(CLASS::IN));
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        for bad in [
            "",
            ".",
            "a..b",
            "a b.com",
            "caf\u{e9}.com",
            "a\\.b",
            &long_label,
            &long_name,
            "x/y",
        ] {
            let e = build_query(1, bad, QType::Mx).unwrap_err();
            assert!(e.is_permanent(), "{bad:?}");
        }
        assert!(build_query(1, &format!("{}.com", "a".repeat(63)), QType::A).is_ok());
        assert!(build_query(1, "_dmarc.example.com", QType::A).is_ok());
    }

    #[test]
    fn mx_answers() {
        let pkt = response(
            7,
            "example.net",
            QType::Mx,
            RCODE::NoError,
            vec![
                mx("example.net", 20, "MX2.example.net"),
                mx("example.net", 10, "mx1.example.net"),
                mx("other.net", 5, "evil.example"),
            ],
        );
        assert_eq!(
            parse_response(7, "EXAMPLE.net.", QType::Mx, &pkt),
            Ok(Answer::Mx(vec![
                (20, "mx2.example.net".into()),
                (10, "mx1.example.net".into())
            ]))
        );
        // Null MX, alone, preference 0.
        let pkt = response(
            7,
            "example.net",
            QType::Mx,
            RCODE::NoError,
            vec![mx("example.net", 0, ".")],
        );
        assert_eq!(
            parse_response(7, "example.net", QType::Mx, &pkt),
            Ok(Answer::NullMx)
        );
        // A "." beside a real MX is ignored.
        let pkt = response(
            7,
            "example.net",
            QType::Mx,
            RCODE::NoError,
            vec![
                mx("example.net", 0, "."),
                mx("example.net", 10, "mx.example.net"),
            ],
        );
        assert_eq!(
            parse_response(7, "example.net", QType::Mx, &pkt),
            Ok(Answer::Mx(vec![(10, "mx.example.net".into())]))
        );
        // NODATA with an SOA in the authority section.
        let mut p = Packet::new_reply(7);
        p.questions.push(Question::new(
            name("example.net"),
            QTYPE::TYPE(TYPE::MX),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        p.name_servers.push(ResourceRecord::new(
            name("example.net"),
            CLASS::IN,
            60,
            RData::SOA(SOA {
                mname: name("ns.example.net"),
                rname: name("hostmaster.example.net"),
                serial: 1,
                refresh: 2,
                retry: 3,
                expire: 4,
                minimum: 5,
            }),
        ));
        let pkt = p.build_bytes_vec().unwrap();
        assert_eq!(
            parse_response(7, "example.net", QType::Mx, &pkt),
            Ok(Answer::NoData)
        );
    }

    #[test]
    fn rcodes_and_checks() {
        let pkt = response(9, "nx.example", QType::Mx, RCODE::NameError, vec![]);
        assert_eq!(
            parse_response(9, "nx.example", QType::Mx, &pkt),
            Ok(Answer::NxDomain)
        );
        let pkt = response(9, "x.example", QType::A, RCODE::ServerFailure, vec![]);
        assert_eq!(
            parse_response(9, "x.example", QType::A, &pkt),
            Err(DnsError::ServFail)
        );
        let pkt = response(9, "x.example", QType::A, RCODE::Refused, vec![]);
        assert_eq!(
            parse_response(9, "x.example", QType::A, &pkt),
            Err(DnsError::Rcode(5))
        );
        let pkt = response(
            9,
            "x.example",
            QType::A,
            RCODE::NoError,
            vec![a("x.example", [192, 0, 2, 1])],
        );
        assert_eq!(
            parse_response(10, "x.example", QType::A, &pkt),
            Err(DnsError::WrongId {
                expected: 10,
                got: 9
            })
        );
        assert_eq!(
            parse_response(9, "y.example", QType::A, &pkt),
            Err(DnsError::WrongQuestion)
        );
        assert_eq!(
            parse_response(9, "x.example", QType::Aaaa, &pkt),
            Err(DnsError::WrongQuestion)
        );
        // Our own query is not a response.
        let q = build_query(9, "x.example", QType::A).unwrap();
        assert_eq!(
            parse_response(9, "x.example", QType::A, &q),
            Err(DnsError::NotAResponse)
        );
        // TC: truncated, whatever follows.
        let mut t = pkt.clone();
        t[2] |= 0x02;
        t.truncate(20);
        assert_eq!(
            parse_response(9, "x.example", QType::A, &t),
            Ok(Answer::Truncated)
        );
        // Short and lying counts.
        assert_eq!(
            parse_response(9, "x.example", QType::A, &pkt[..11]),
            Err(DnsError::Malformed)
        );
        let mut lying = pkt.clone();
        lying[6] = 0xff;
        assert_eq!(
            parse_response(9, "x.example", QType::A, &lying),
            Err(DnsError::Malformed)
        );
        assert_eq!(
            parse_response(9, "x.example", QType::A, &pkt[..pkt.len() - 1]),
            Err(DnsError::Malformed)
        );
    }

    #[test]
    fn addresses_and_cname_chains() {
        let pkt = response(
            3,
            "mail.example.org",
            QType::A,
            RCODE::NoError,
            vec![
                cname("mail.example.org", "a.example.net"),
                cname("a.example.net", "b.example.com"),
                a("b.example.com", [192, 0, 2, 7]),
                a("b.example.com", [192, 0, 2, 8]),
                a("b.example.com", [192, 0, 2, 7]),
                a("unrelated.example", [203, 0, 113, 1]),
            ],
        );
        assert_eq!(
            parse_response(3, "mail.example.org", QType::A, &pkt),
            Ok(Answer::Addrs(vec![
                "192.0.2.7".parse().unwrap(),
                "192.0.2.8".parse().unwrap()
            ]))
        );
        let pkt = response(
            3,
            "h.example",
            QType::Aaaa,
            RCODE::NoError,
            vec![
                aaaa("h.example", "2001:db8::25"),
                a("h.example", [1, 2, 3, 4]),
            ],
        );
        assert_eq!(
            parse_response(3, "h.example", QType::Aaaa, &pkt),
            Ok(Answer::Addrs(vec!["2001:db8::25".parse().unwrap()]))
        );
        // A CNAME loop ends in NoData, not a hang.
        let pkt = response(
            3,
            "l.example",
            QType::A,
            RCODE::NoError,
            vec![
                cname("l.example", "m.example"),
                cname("m.example", "l.example"),
            ],
        );
        assert_eq!(
            parse_response(3, "l.example", QType::A, &pkt),
            Ok(Answer::NoData)
        );
        // A chain pointing nowhere.
        let pkt = response(
            3,
            "c.example",
            QType::A,
            RCODE::NoError,
            vec![cname("c.example", "d.example")],
        );
        assert_eq!(
            parse_response(3, "c.example", QType::A, &pkt),
            Ok(Answer::NoData)
        );
    }

    /// A hand-written packet as a resolver sends it: compressed names.
    #[test]
    fn txt_and_ptr_answers() {
        use simple_dns::rdata::{PTR, TXT};
        use simple_dns::CharacterString;
        // Two character-strings are one record, joined with nothing between.
        let joined = TXT::new()
            .with_char_string(CharacterString::new(b"v=spf1 ").unwrap())
            .with_char_string(CharacterString::new(b"-all").unwrap());
        let binary = TXT::new().with_char_string(CharacterString::new(&[0xff, b'x']).unwrap());
        let packet = response(
            7,
            "Example.COM",
            QType::Txt,
            RCODE::NoError,
            vec![
                rr("example.com", RData::TXT(joined.into_owned())),
                rr("example.com", RData::TXT(binary.into_owned())),
                a("example.com", [1, 2, 3, 4]),
            ],
        );
        assert_eq!(
            parse_response(7, "example.com.", QType::Txt, &packet),
            Ok(Answer::Txt(vec![b"v=spf1 -all".to_vec(), vec![0xff, b'x']]))
        );
        let none = response(8, "example.com", QType::Txt, RCODE::NoError, vec![]);
        assert_eq!(
            parse_response(8, "example.com", QType::Txt, &none),
            Ok(Answer::NoData)
        );

        let rev = reverse_name("192.0.2.1".parse().unwrap());
        assert_eq!(rev, "1.2.0.192.in-addr.arpa");
        let ptr = |host: &str| rr(&rev, RData::PTR(PTR(name(host).into_owned())));
        let packet = response(
            9,
            &rev,
            QType::Ptr,
            RCODE::NoError,
            vec![
                ptr("Mail.Example.com"),
                ptr("mail.example.com"),
                ptr("b.example"),
            ],
        );
        assert_eq!(
            parse_response(9, &rev, QType::Ptr, &packet),
            Ok(Answer::Names(vec![
                "mail.example.com".to_string(),
                "b.example".to_string()
            ]))
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
        assert_eq!(reversed_labels("127.0.0.2".parse().unwrap()), "2.0.0.127");
    }

    #[test]
    fn record_lookup_retries_and_falls_back_to_tcp() {
        use simple_dns::rdata::TXT;
        let mut l = RecordLookup::new("_dmarc.Example.com.", QType::Txt, 42);
        let RecordStep::Query(q1) = l.start() else {
            panic!("no query")
        };
        assert!(!q1.tcp);
        assert_eq!(q1.name, "_dmarc.example.com");
        // Another id: not ours, keep waiting.
        let other = response(
            q1.id.wrapping_add(1),
            &q1.name,
            QType::Txt,
            RCODE::NoError,
            vec![],
        );
        assert_eq!(l.on_response(&other), None);
        // Truncated: the same question over TCP.
        let mut tc = Packet::new_reply(q1.id);
        tc.set_flags(PacketFlag::TRUNCATION);
        let tc = tc.build_bytes_vec().unwrap();
        let Some(RecordStep::Query(q2)) = l.on_response(&tc) else {
            panic!("no TCP retry")
        };
        assert!(q2.tcp);
        // Timeouts retry, then give up.
        let RecordStep::Query(q3) = l.on_timeout() else {
            panic!("no retry")
        };
        assert!(q3.tcp);
        let txt = TXT::new().with_string("v=DMARC1; p=reject").unwrap();
        let answer = response(
            q3.id,
            &q3.name,
            QType::Txt,
            RCODE::NoError,
            vec![rr("_dmarc.example.com", RData::TXT(txt.into_owned()))],
        );
        assert_eq!(
            l.on_response(&answer),
            Some(RecordStep::Done(Ok(Answer::Txt(vec![
                b"v=DMARC1; p=reject".to_vec()
            ]))))
        );
        let mut l = RecordLookup::new("slow.example", QType::A, 1);
        l.start();
        assert!(matches!(l.on_timeout(), RecordStep::Query(_)));
        assert!(matches!(l.on_timeout(), RecordStep::Query(_)));
        assert!(matches!(l.on_timeout(), RecordStep::Done(Err(_))));
        // SERVFAIL is a failure at once; a name no server holds is NXDOMAIN.
        let mut l = RecordLookup::new("sf.example", QType::A, 2);
        let RecordStep::Query(q) = l.start() else {
            panic!("no query")
        };
        let sf = response(q.id, &q.name, QType::A, RCODE::ServerFailure, vec![]);
        assert!(matches!(l.on_response(&sf), Some(RecordStep::Done(Err(_)))));
        let mut l = RecordLookup::new(&"x".repeat(70), QType::Txt, 3);
        assert_eq!(l.start(), RecordStep::Done(Ok(Answer::NxDomain)));
        // SPF macros may make names with any visible character.
        let mut l = RecordLookup::new("foo:bar/baz.example.com", QType::A, 4);
        assert!(matches!(l.start(), RecordStep::Query(_)));
    }

    #[test]
    fn real_world_packet() {
        #[rustfmt::skip]
        let pkt: &[u8] = &[
            0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0,
            // question: gmail.com MX IN
            5, b'g', b'm', b'a', b'i', b'l', 3, b'c', b'o', b'm', 0, 0, 15, 0, 1,
            // answer 1: ptr to name at 12, MX, IN, ttl, rdlength 9, pref 5, "mx1" + ptr 12
            0xc0, 12, 0, 15, 0, 1, 0, 0, 0x0e, 0x10, 0, 8, 0, 5, 3, b'm', b'x', b'1', 0xc0, 12,
            // answer 2: pref 10, "alt1" + ptr
            0xc0, 12, 0, 15, 0, 1, 0, 0, 0x0e, 0x10, 0, 9, 0, 10, 4, b'a', b'l', b't', b'1', 0xc0, 12,
        ];
        assert_eq!(
            parse_response(0x1234, "gmail.com", QType::Mx, pkt),
            Ok(Answer::Mx(vec![
                (5, "mx1.gmail.com".into()),
                (10, "alt1.gmail.com".into())
            ]))
        );
        // A compression pointer to itself must not hang or panic.
        let mut evil = pkt.to_vec();
        evil[27] = 0xc0;
        evil[28] = 27;
        assert!(parse_response(0x1234, "gmail.com", QType::Mx, &evil).is_err());
    }

    #[test]
    fn mx_ordering() {
        let recs = vec![
            (20, "c.example".to_string()),
            (10, "a.example".to_string()),
            (10, "b.example".to_string()),
            (10, "A.example.".to_string()),
            (30, "a.example".to_string()),
            (5, String::new()),
        ];
        let mut seen_first = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let order = order_mx(recs.clone(), seed);
            assert_eq!(order.len(), 3, "{order:?}");
            assert_eq!(order[2], "c.example");
            assert!(order[..2].contains(&"a.example".to_string()));
            assert!(order[..2].contains(&"b.example".to_string()));
            seen_first.insert(order[0].clone());
            assert_eq!(order, order_mx(recs.clone(), seed), "deterministic");
        }
        assert_eq!(seen_first.len(), 2, "equal preferences are shuffled");
        assert!(order_mx(vec![], 1).is_empty());
    }

    #[test]
    fn tcp_framing() {
        let q = build_query(5, "example.com", QType::Mx).unwrap();
        let framed = tcp_frame(&q).unwrap();
        assert_eq!(framed.len(), q.len() + 2);
        assert!(tcp_frame(&vec![0; 70_000]).is_err());
        // Fed one byte at a time, then two messages at once.
        let mut buf = Vec::new();
        for (i, b) in framed.iter().enumerate() {
            assert_eq!(tcp_take(&mut buf), None);
            buf.push(*b);
            if i + 1 < framed.len() {
                assert_eq!(tcp_take(&mut buf), None);
            }
        }
        assert_eq!(tcp_take(&mut buf), Some(q.clone()));
        assert!(buf.is_empty());
        let mut buf = [framed.clone(), framed.clone(), vec![0]].concat();
        assert_eq!(tcp_take(&mut buf), Some(q.clone()));
        assert_eq!(tcp_take(&mut buf), Some(q.clone()));
        assert_eq!(tcp_take(&mut buf), None);
        assert_eq!(buf, vec![0]);
        let mut empty = vec![0, 0];
        assert_eq!(tcp_take(&mut empty), Some(vec![]));
    }

    #[test]
    fn resolv_conf() {
        let cases: &[(&str, Option<&str>)] = &[
            ("nameserver 192.0.2.53\n", Some("192.0.2.53:53")),
            (
                "# comment\nsearch lan\n  nameserver\t10.0.0.1 # router\nnameserver 10.0.0.2\n",
                Some("10.0.0.1:53"),
            ),
            ("nameserver 2001:db8::53\n", Some("[2001:db8::53]:53")),
            (
                "nameserver fe80::1%eth0\nnameserver 127.0.0.53\n",
                Some("127.0.0.53:53"),
            ),
            ("; nameserver 1.1.1.1\nnameservers 1.2.3.4\n", None),
            ("nameserver\nnameserver bogus\n", None),
            ("", None),
            ("\0\u{ff}nameserver 1.2.3.4", None),
        ];
        for (text, expect) in cases {
            let got = resolv_conf_nameserver(text).map(|a| a.to_string());
            assert_eq!(got.as_deref(), *expect, "{text:?}");
        }
    }

    /// Deterministic fuzzing: random packets and mutations of valid ones
    /// must never panic, in the parser or in the lookup.
    #[test]
    fn never_panics_on_hostile_packets() {
        let mut rng = SplitMix64(42);
        let valid = [
            response(
                1,
                "example.net",
                QType::Mx,
                RCODE::NoError,
                vec![
                    mx("example.net", 10, "mx.example.net"),
                    mx("example.net", 0, "."),
                ],
            ),
            response(
                1,
                "example.net",
                QType::A,
                RCODE::NoError,
                vec![
                    cname("example.net", "x.example.org"),
                    a("x.example.org", [192, 0, 2, 1]),
                ],
            ),
            response(
                1,
                "example.net",
                QType::Aaaa,
                RCODE::NoError,
                vec![aaaa("example.net", "2001:db8::1")],
            ),
            response(1, "example.net", QType::Mx, RCODE::NameError, vec![]),
        ];
        let qtypes = [QType::Mx, QType::A, QType::Aaaa];
        for i in 0..6000 {
            let mut pkt = if i % 3 == 0 {
                let len = rng.below(600);
                let mut p: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                if p.len() >= 2 {
                    p[0] = 0;
                    p[1] = 1;
                }
                p
            } else {
                valid[rng.below(valid.len())].clone()
            };
            let mutations = 1 + rng.below(4);
            for _ in 0..mutations {
                if pkt.is_empty() {
                    break;
                }
                let at = rng.below(pkt.len());
                match rng.below(4) {
                    0 => pkt[at] = rng.next_u64() as u8,
                    1 => pkt[at] ^= 1 << rng.below(8),
                    2 => pkt.truncate(at),
                    _ => pkt.insert(at, rng.next_u64() as u8),
                }
            }
            // Keep the id so the parser goes past the first check.
            if pkt.len() >= 2 && i % 2 == 0 {
                pkt[0] = 0;
                pkt[1] = 1;
            }
            let _ = parse_response(1, "example.net", qtypes[i % 3], &pkt);
            let mut lookup = MxLookup::new("example.net", true, i as u64);
            if let LookupStep::Query(q) = lookup.start() {
                let mut p = pkt.clone();
                if p.len() >= 2 {
                    p[..2].copy_from_slice(&q.id.to_be_bytes());
                }
                let _ = lookup.on_response(&p);
            }
            let mut buf = pkt.clone();
            while tcp_take(&mut buf).is_some() {}
        }
    }

    /// What the fake resolver answers: rcode, answer records, TC bit; `None`: silence.
    type ZoneReply = Option<(RCODE, Vec<ResourceRecord<'static>>, bool)>;
    type Zone<'a> = &'a dyn Fn(&str, QType, bool) -> ZoneReply;
    /// The queries asked: name, type, over TCP.
    type Asked = Vec<(String, QType, bool)>;

    /// Plays a resolver for `MxLookup`: `zone` maps (name, qtype) to a reply.
    fn resolve(
        domain: &str,
        want_ipv6: bool,
        zone: Zone,
    ) -> (Result<Vec<MxHost>, LookupFailure>, Asked) {
        let mut lookup = MxLookup::new(domain, want_ipv6, 7);
        let mut asked = Vec::new();
        let mut step = lookup.start();
        for _ in 0..100 {
            match step {
                LookupStep::Done(r) => return (r, asked),
                LookupStep::Query(q) => {
                    asked.push((q.name.clone(), q.qtype, q.tcp));
                    match zone(&q.name, q.qtype, q.tcp) {
                        None => step = lookup.on_timeout(),
                        Some((rcode, answers, truncate)) => {
                            let mut pkt = response(q.id, &q.name, q.qtype, rcode, answers);
                            if truncate {
                                pkt[2] |= 0x02;
                            }
                            // A stray answer first: ignored.
                            let mut stray = pkt.clone();
                            stray[0] ^= 0xff;
                            assert_eq!(lookup.on_response(&stray), None);
                            step = lookup.on_response(&pkt).expect("our answer");
                        }
                    }
                }
            }
        }
        panic!("lookup did not finish");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lookup_mx_hosts_in_order() {
        let zone = |name: &str, qt: QType, _tcp: bool| {
            let ok = RCODE::NoError;
            Some(match (name, qt) {
                ("example.net", QType::Mx) => (
                    ok,
                    vec![
                        mx("example.net", 20, "mx2.example.net"),
                        mx("example.net", 10, "mx1.example.net"),
                        mx("example.net", 30, "gone.example.net"),
                    ],
                    false,
                ),
                ("mx1.example.net", QType::A) => {
                    (ok, vec![a("mx1.example.net", [192, 0, 2, 1])], false)
                }
                ("mx1.example.net", QType::Aaaa) => {
                    (ok, vec![aaaa("mx1.example.net", "2001:db8::1")], false)
                }
                ("mx2.example.net", QType::A) => (
                    ok,
                    vec![
                        cname("mx2.example.net", "real.example.org"),
                        a("real.example.org", [192, 0, 2, 2]),
                    ],
                    false,
                ),
                ("mx2.example.net", QType::Aaaa) => (ok, vec![], false),
                ("gone.example.net", _) => (RCODE::NameError, vec![], false),
                _ => return None,
            })
        };
        let (r, asked) = resolve("example.net", true, &zone);
        assert_eq!(
            r.unwrap(),
            vec![
                MxHost {
                    host: "mx1.example.net".into(),
                    addrs: vec![ip("192.0.2.1"), ip("2001:db8::1")]
                },
                MxHost {
                    host: "mx2.example.net".into(),
                    addrs: vec![ip("192.0.2.2")]
                },
            ]
        );
        assert_eq!(asked.len(), 7);
        // Without IPv6: no AAAA queries.
        let (r, asked) = resolve("example.net", false, &zone);
        assert_eq!(r.unwrap()[0].addrs, vec![ip("192.0.2.1")]);
        assert!(asked.iter().all(|(_, qt, _)| *qt != QType::Aaaa));
    }

    #[test]
    fn lookup_failures_are_classified() {
        type ZoneFn = fn(&str, QType, bool) -> ZoneReply;
        let cases: &[(&str, ZoneFn, bool, &str)] = &[
            (
                "nx",
                |_, _, _| Some((RCODE::NameError, vec![], false)),
                true,
                "5.1.2",
            ),
            (
                "null",
                |n, _, _| Some((RCODE::NoError, vec![mx(n, 0, ".")], false)),
                true,
                "5.1.10",
            ),
            (
                "servfail",
                |_, _, _| Some((RCODE::ServerFailure, vec![], false)),
                false,
                "4.4.3",
            ),
            ("timeout", |_, _, _| None, false, "4.4.3"),
            // No MX and no address: not a mail domain.
            (
                "bare",
                |_, _, _| Some((RCODE::NoError, vec![], false)),
                true,
                "5.1.2",
            ),
            // MX hosts that do not exist.
            (
                "dangling",
                |n, qt, _| match qt {
                    QType::Mx => Some((RCODE::NoError, vec![mx(n, 10, "nowhere.example")], false)),
                    _ => Some((RCODE::NameError, vec![], false)),
                },
                true,
                "5.4.4",
            ),
            // MX hosts whose lookups fail: retry later.
            (
                "flaky",
                |n, qt, _| match qt {
                    QType::Mx => Some((RCODE::NoError, vec![mx(n, 10, "flaky-mx.example")], false)),
                    _ => Some((RCODE::ServerFailure, vec![], false)),
                },
                false,
                "4.4.3",
            ),
        ];
        for (domain, zone, permanent, enhanced) in cases {
            let domain = format!("{domain}.example");
            let (r, _) = resolve(&domain, true, zone);
            let f = r.unwrap_err();
            assert_eq!(
                (f.permanent, f.enhanced),
                (*permanent, *enhanced),
                "{domain}: {}",
                f.reason
            );
        }
        // A timeout asks MAX_TRIES times, each with a fresh id.
        let (_, asked) = resolve("t.example", true, &|_, _, _| None);
        assert_eq!(asked.len(), MAX_TRIES as usize);
        // An invalid domain fails at once.
        let mut l = MxLookup::new("bad domain", true, 1);
        assert!(matches!(
            l.start(),
            LookupStep::Done(Err(LookupFailure {
                permanent: true,
                ..
            }))
        ));
        assert_eq!(l.on_response(&[0; 40]), None);
    }

    #[test]
    fn lookup_implicit_mx_and_tcp_retry() {
        let zone = |name: &str, qt: QType, tcp: bool| {
            Some(match (name, qt) {
                ("small.example", QType::Mx) => (RCODE::NoError, vec![], false),
                // The A answer is "too big" over UDP.
                ("small.example", QType::A) if !tcp => (RCODE::NoError, vec![], true),
                ("small.example", QType::A) => (
                    RCODE::NoError,
                    vec![a("small.example", [198, 51, 100, 1])],
                    false,
                ),
                ("small.example", QType::Aaaa) => (RCODE::NoError, vec![], false),
                _ => return None,
            })
        };
        let (r, asked) = resolve("small.example", true, &zone);
        assert_eq!(
            r.unwrap(),
            vec![MxHost {
                host: "small.example".into(),
                addrs: vec![ip("198.51.100.1")]
            }]
        );
        assert_eq!(
            asked,
            vec![
                ("small.example".into(), QType::Mx, false),
                ("small.example".into(), QType::A, false),
                ("small.example".into(), QType::A, true),
                ("small.example".into(), QType::Aaaa, false),
            ]
        );
    }
}
