//! DKIM (RFC 6376, RFC 8463): verification of every signature of a
//! message, and signing of mail leaving.
//!
//! Owns: the DKIM-Signature and key record tag lists (3.2, 3.5, 3.6.1),
//! simple and relaxed canonicalisation of header and body (3.4), `l=`,
//! `x=`, `t=`, key flags `t=y`/`t=s`, `s=`, `h=`, `k=`, rsa-sha256 (keys of
//! 1024 bits and up, RFC 8301) and ed25519-sha256 (RFC 8463) through
//! `ring`, the bounds on work, and building the signature header for our
//! own mail.
//!
//! Must not: do IO or keep the whole message. [`Verifier`] takes the
//! message in chunks: it keeps the header block (bounded,
//! [`MAX_HEADER_BYTES`]) and streams the body through one hash per distinct
//! (canonicalisation, `l=`) of the signatures, in constant memory. Key
//! records come in as DNS answers ([`Verifier::step`] asks,
//! [`Verifier::answer`] takes them). The clock is an input (`now`).

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::digest;
use ring::signature::{self, KeyPair as _};

use super::{Answer, QType, Query, Reply};

/// Most signatures of one message that we verify (RFC 6376 6.1 lets a
/// verifier limit the signatures it checks; 500 signatures must not cost
/// 500 key lookups). The rest get [`DkimResult::Policy`].
pub const MAX_SIGNATURES: usize = 10;
/// Most bytes of header block kept for verification (RFC 5322 sets no
/// limit; real headers are a few KB; the message is refused or left
/// unverified beyond this).
pub const MAX_HEADER_BYTES: usize = 256 * 1024;
/// RFC 8301 3.2: verifiers must accept 1024-bit RSA keys and may refuse
/// smaller ones.
pub const MIN_RSA_BITS: usize = 1024;
/// RSA keys larger than this are refused unverified (RFC 6376 3.3.3
/// expects 512 to 2048 bits; a 16384-bit key would cost seconds of CPU per
/// signature). `ring` verifies up to 8192 bits.
pub const MAX_RSA_BITS: usize = 8192;
/// Most characters of one key record we parse (a 4096-bit RSA key is about
/// 740; a TXT answer may be 64 KB).
pub const MAX_KEY_RECORD: usize = 4096;
/// RFC 6376 3.5 / RFC 5321 4.5.3.1.2 keep `l=` and times in 76 bits and
/// 40 bits; we take them as u64 and refuse more than 20 digits.
const MAX_DIGITS: usize = 20;

/// RFC 8601 2.7.1 keywords for one signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimResult {
    Pass,
    Fail,
    /// Syntax errors or an algorithm we do not implement.
    Neutral,
    Policy,
    TempError,
    PermError,
}

impl DkimResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimResult::Pass => "pass",
            DkimResult::Fail => "fail",
            DkimResult::Neutral => "neutral",
            DkimResult::Policy => "policy",
            DkimResult::TempError => "temperror",
            DkimResult::PermError => "permerror",
        }
    }
}

impl fmt::Display for DkimResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one DKIM-Signature header, in header order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureOutcome {
    pub result: DkimResult,
    /// `d=` (lower-case), empty when the header could not be read.
    pub domain: String,
    pub selector: String,
    /// `a=` as written.
    pub algorithm: String,
    /// The key is in testing mode (`t=y`, RFC 6376 3.6.1).
    pub testing: bool,
    /// The first 8 characters of `b=` (RFC 8601 `header.b`, RFC 6008).
    pub b_prefix: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RsaSha256,
    Ed25519Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    fn key_type(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa",
            Algorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Canon {
    Simple,
    Relaxed,
}

/// RFC 6376 3.2: `tag=value` pairs separated by `;`, FWS around both.
/// Duplicate tags are an error.
fn parse_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut tags: Vec<(String, String)> = Vec::new();
    for part in text.split(';') {
        let part = part.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
        if part.is_empty() {
            continue;
        }
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("tag without '=': {:?}", short(part)))?;
        let name = name.trim_matches(|c: char| c.is_ascii_whitespace());
        let valid = name
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphabetic() || (i > 0 && (b.is_ascii_digit() || b == b'_')));
        if name.is_empty() || !valid {
            return Err(format!("bad tag name {:?}", short(name)));
        }
        if tags.iter().any(|(n, _)| n == name) {
            return Err(format!("tag {name}= appears twice"));
        }
        let value = value.trim_matches(|c: char| c.is_ascii_whitespace());
        tags.push((name.to_string(), value.to_string()));
    }
    Ok(tags)
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

fn tag<'a>(tags: &'a [(String, String)], name: &str) -> Option<&'a str> {
    tags.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Base64 with FWS inside (RFC 6376 2.11: whitespace is ignored).
fn base64_fws(value: &str) -> Result<Vec<u8>, String> {
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64
        .decode(compact.as_bytes())
        .map_err(|_| "bad base64".to_string())
}

fn number(value: &str, what: &str) -> Result<u64, String> {
    if value.is_empty() || value.len() > MAX_DIGITS || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad {what}= value"));
    }
    value.parse().map_err(|_| format!("bad {what}= value"))
}

/// One DKIM-Signature header, read (RFC 6376 3.5).
#[derive(Debug, Clone)]
struct Signature {
    algorithm: Algorithm,
    signature: Vec<u8>,
    body_hash: Vec<u8>,
    header_canon: Canon,
    body_canon: Canon,
    domain: String,
    /// `h=`, lower-case.
    headers: Vec<String>,
    /// The domain of `i=` (the AUID), lower-case.
    auid_domain: String,
    length: Option<u64>,
    selector: String,
    /// Index of this header in the header list.
    index: usize,
}

/// What is known of a header we could not read fully: for the outcome.
#[derive(Debug, Clone, Default)]
struct Known {
    domain: String,
    selector: String,
    algorithm: String,
    b_prefix: String,
}

fn parse_signature(value: &str, index: usize, now: u64) -> Result<Signature, (DkimResult, String)> {
    let neutral = |why: String| (DkimResult::Neutral, why);
    let tags = parse_tags(value).map_err(neutral)?;
    let get = |name: &str| tag(&tags, name);
    let need = |name: &str| get(name).ok_or_else(|| neutral(format!("no {name}= tag")));
    if need("v")? != "1" {
        return Err(neutral("v= is not 1".into()));
    }
    let algorithm = match need("a")?.to_ascii_lowercase().as_str() {
        "rsa-sha256" => Algorithm::RsaSha256,
        "ed25519-sha256" => Algorithm::Ed25519Sha256,
        // RFC 8301 3.1: rsa-sha1 must not be considered valid.
        other => return Err(neutral(format!("unsupported algorithm {}", short(other)))),
    };
    let signature = base64_fws(need("b")?).map_err(|e| neutral(format!("b=: {e}")))?;
    let body_hash = base64_fws(need("bh")?).map_err(|e| neutral(format!("bh=: {e}")))?;
    let (header_canon, body_canon) = match get("c").map(str::to_ascii_lowercase).as_deref() {
        None => (Canon::Simple, Canon::Simple),
        Some(c) => {
            let one = |s: &str| match s {
                "simple" => Ok(Canon::Simple),
                "relaxed" => Ok(Canon::Relaxed),
                _ => Err(neutral(format!("unknown canonicalization {}", short(c)))),
            };
            match c.split_once('/') {
                Some((h, b)) => (one(h)?, one(b)?),
                None => (one(c)?, Canon::Simple),
            }
        }
    };
    let domain = need("d")?.trim_end_matches('.').to_ascii_lowercase();
    if !super::is_queryable(&domain) {
        return Err(neutral("bad d= domain".into()));
    }
    let headers: Vec<String> = need("h")?
        .split(':')
        .map(|h| {
            h.trim_matches(|c: char| c.is_ascii_whitespace())
                .to_ascii_lowercase()
        })
        .collect();
    // RFC 6376 5.4: From must be signed.
    if !headers.iter().any(|h| h == "from") {
        return Err(neutral("h= does not include From".into()));
    }
    let auid_domain = match get("i") {
        Some(i) => {
            let d = i
                .rsplit_once('@')
                .map(|(_, d)| d)
                .ok_or_else(|| neutral("i= has no @".into()))?
                .trim_end_matches('.')
                .to_ascii_lowercase();
            // RFC 6376 3.5: i= must be d= or a subdomain of it.
            if d != domain && !d.ends_with(&format!(".{domain}")) {
                return Err(neutral("i= is not within d=".into()));
            }
            d
        }
        None => domain.clone(),
    };
    let length = get("l")
        .map(|l| number(l, "l"))
        .transpose()
        .map_err(neutral)?;
    if let Some(q) = get("q") {
        if !q
            .split(':')
            .any(|m| m.trim().eq_ignore_ascii_case("dns/txt"))
        {
            return Err(neutral("q= has no dns/txt".into()));
        }
    }
    let selector = need("s")?.to_ascii_lowercase();
    let signed_at = get("t")
        .map(|t| number(t, "t"))
        .transpose()
        .map_err(neutral)?;
    let expires = get("x")
        .map(|x| number(x, "x"))
        .transpose()
        .map_err(neutral)?;
    if let (Some(t), Some(x)) = (signed_at, expires) {
        // RFC 6376 3.5: x= must be greater than t=.
        if x < t {
            return Err(neutral("x= is before t=".into()));
        }
    }
    if let Some(x) = expires {
        if x < now {
            return Err((DkimResult::Fail, "signature expired (x=)".into()));
        }
    }
    Ok(Signature {
        algorithm,
        signature,
        body_hash,
        header_canon,
        body_canon,
        domain,
        headers,
        auid_domain,
        length,
        selector,
        index,
    })
}

/// One header field of the message: its name and the raw bytes of the
/// whole field (name, colon, value, folding, final CRLF or LF).
#[derive(Debug, Clone)]
struct Field {
    name: String,
    raw: Vec<u8>,
}

/// Splits a header block (without the empty line) into fields.
fn split_fields(block: &[u8]) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < block.len() {
        let line_end = block[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(block.len(), |p| i + p + 1);
        let continuation = matches!(block.get(line_end), Some(b' ' | b'\t'));
        if !continuation {
            let raw = &block[start..line_end];
            let name_end = raw.iter().position(|&b| b == b':').unwrap_or(0);
            let name = String::from_utf8_lossy(&raw[..name_end])
                .trim()
                .to_ascii_lowercase();
            if !name.is_empty() {
                fields.push(Field {
                    name,
                    raw: raw.to_vec(),
                });
            }
            start = line_end;
        }
        i = line_end;
    }
    fields
}

/// `raw` without its final line ending, with bare LF read as CRLF.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 8);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    while out.ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}

/// RFC 6376 3.4.1 and 3.4.2: one header field, canonicalised, with CRLF.
fn canon_header(raw: &[u8], canon: Canon) -> Vec<u8> {
    let field = crlf(raw);
    let mut out = match canon {
        Canon::Simple => field,
        Canon::Relaxed => {
            let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
            let name = &field[..colon];
            let value = field.get(colon + 1..).unwrap_or(&[]);
            let mut out: Vec<u8> = name
                .iter()
                .filter(|b| !b.is_ascii_whitespace())
                .map(|b| b.to_ascii_lowercase())
                .collect();
            out.push(b':');
            // Unfold, then every WSP run to one SP, none at either end.
            let mut pending_space = false;
            let mut started = false;
            for &b in value {
                match b {
                    b'\r' | b'\n' => {}
                    b' ' | b'\t' => pending_space = true,
                    _ => {
                        if pending_space && started {
                            out.push(b' ');
                        }
                        pending_space = false;
                        started = true;
                        out.push(b);
                    }
                }
            }
            out
        }
    };
    out.extend_from_slice(b"\r\n");
    out
}

/// The DKIM-Signature field with the value of `b=` removed (RFC 6376
/// 3.7), everything else byte for byte.
fn strip_b_value(raw: &[u8]) -> Vec<u8> {
    let colon = raw
        .iter()
        .position(|&b| b == b':')
        .map_or(raw.len(), |c| c + 1);
    let mut out = raw[..colon].to_vec();
    let value = &raw[colon..];
    for (n, part) in value.split(|&b| b == b';').enumerate() {
        if n > 0 {
            out.push(b';');
        }
        let eq = part.iter().position(|&b| b == b'=');
        let is_b = eq.is_some_and(|e| {
            let name: Vec<u8> = part[..e]
                .iter()
                .filter(|b| !b.is_ascii_whitespace())
                .copied()
                .collect();
            name == b"b"
        });
        match (is_b, eq) {
            (true, Some(e)) => out.extend_from_slice(&part[..=e]),
            _ => out.extend_from_slice(part),
        }
    }
    out
}

/// RFC 6376 3.7: the header hash input for `sig` over `fields`.
fn header_data(fields: &[Field], sig_field: &Field, canon: Canon, names: &[String]) -> Vec<u8> {
    let mut used = vec![false; fields.len()];
    let mut data = Vec::new();
    for name in names {
        // 5.4.2: the last unused instance; a name with none left adds
        // nothing (that is how over-signing works).
        if let Some(i) = (0..fields.len())
            .rev()
            .find(|&i| !used[i] && fields[i].name == *name)
        {
            used[i] = true;
            data.extend(canon_header(&fields[i].raw, canon));
        }
    }
    let mut own = canon_header(&strip_b_value(&sig_field.raw), canon);
    own.truncate(own.len().saturating_sub(2));
    data.extend(own);
    data
}

/// Streams a body through one canonicalisation (RFC 6376 3.4.3, 3.4.4)
/// into SHA-256, up to an optional `l=` count. Bare LF is read as CRLF
/// (the spool may keep LF line ends).
#[derive(Clone)]
pub struct BodyHasher {
    canon: Canon,
    limit: Option<u64>,
    ctx: digest::Context,
    /// Canonical bytes produced so far (hashed or past the limit).
    length: u64,
    /// Line ends held back: trailing empty lines are not hashed.
    pending_crlf: u64,
    /// Relaxed: whitespace held back (dropped at a line end).
    pending_wsp: bool,
    /// Content since the last line end.
    line_has_content: bool,
    saw_cr: bool,
    any_content: bool,
    buf: Vec<u8>,
}

const HASH_BUFFER: usize = 4096;

impl BodyHasher {
    pub fn new(canon: Canon, limit: Option<u64>) -> BodyHasher {
        BodyHasher {
            canon,
            limit,
            ctx: digest::Context::new(&digest::SHA256),
            length: 0,
            pending_crlf: 0,
            pending_wsp: false,
            line_has_content: false,
            saw_cr: false,
            any_content: false,
            buf: Vec::with_capacity(HASH_BUFFER),
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        let take = match self.limit {
            Some(l) => {
                let left = l.saturating_sub(self.length);
                bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => bytes.len(),
        };
        self.buf.extend_from_slice(&bytes[..take]);
        self.length = self.length.saturating_add(bytes.len() as u64);
        if self.buf.len() >= HASH_BUFFER {
            self.ctx.update(&self.buf);
            self.buf.clear();
        }
    }

    fn content(&mut self, b: u8) {
        while self.pending_crlf > 0 {
            self.pending_crlf -= 1;
            self.emit(b"\r\n");
        }
        if self.pending_wsp {
            self.pending_wsp = false;
            self.emit(b" ");
        }
        self.line_has_content = true;
        self.any_content = true;
        self.emit(&[b]);
    }

    fn line_end(&mut self) {
        self.pending_wsp = false;
        if self.line_has_content {
            self.pending_crlf = 1;
        } else {
            self.pending_crlf += 1;
        }
        self.line_has_content = false;
    }

    fn byte(&mut self, b: u8) {
        match (self.canon, b) {
            (_, b'\n') => self.line_end(),
            (Canon::Relaxed, b' ' | b'\t') => self.pending_wsp = true,
            _ => self.content(b),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.saw_cr {
                self.saw_cr = false;
                if b != b'\n' {
                    // A bare CR is data.
                    self.byte(b'\r');
                }
            }
            if b == b'\r' {
                self.saw_cr = true;
            } else {
                self.byte(b);
            }
        }
    }

    /// The hash, and the length of the whole canonical body (to check
    /// `l=` against).
    pub fn finish(mut self) -> (Vec<u8>, u64) {
        if self.saw_cr {
            self.saw_cr = false;
            self.byte(b'\r');
        }
        let ends_open = self.line_has_content || self.pending_crlf > 0;
        match self.canon {
            // 3.4.3: an empty body is one CRLF; trailing empty lines go.
            Canon::Simple => self.emit(b"\r\n"),
            // 3.4.4 (errata 1384): an empty body stays empty.
            Canon::Relaxed if self.any_content && ends_open => self.emit(b"\r\n"),
            Canon::Relaxed => {}
        }
        self.ctx.update(&self.buf);
        (self.ctx.finish().as_ref().to_vec(), self.length)
    }
}

/// A key record (RFC 6376 3.6.1), read.
#[derive(Debug)]
struct Key {
    kind: Algorithm,
    /// RSAPublicKey DER, or the 32 Ed25519 bytes.
    public: Vec<u8>,
    testing: bool,
    strict: bool,
}

fn parse_key(record: &[u8], algorithm: Algorithm) -> Result<Key, (DkimResult, String)> {
    let perm = |why: String| (DkimResult::PermError, why);
    if record.len() > MAX_KEY_RECORD {
        return Err(perm("key record too long".into()));
    }
    let text = std::str::from_utf8(record).map_err(|_| perm("key record is not text".into()))?;
    let tags = parse_tags(text).map_err(perm)?;
    if let Some(v) = tag(&tags, "v") {
        if v != "DKIM1" || tags.first().map(|(n, _)| n.as_str()) != Some("v") {
            return Err(perm("key v= is not DKIM1 first".into()));
        }
    }
    if let Some(h) = tag(&tags, "h") {
        if !h
            .split(':')
            .any(|a| a.trim().eq_ignore_ascii_case("sha256"))
        {
            return Err(perm("key h= excludes sha256".into()));
        }
    }
    let k = tag(&tags, "k").unwrap_or("rsa").to_ascii_lowercase();
    if k != algorithm.key_type() {
        return Err(perm(format!(
            "key k={} does not fit {}",
            short(&k),
            algorithm.name()
        )));
    }
    if let Some(s) = tag(&tags, "s") {
        if !s.split(':').any(|t| matches!(t.trim(), "*" | "email")) {
            return Err(perm("key s= excludes email".into()));
        }
    }
    let flags: Vec<&str> = tag(&tags, "t")
        .map(|t| t.split(':').map(str::trim).collect())
        .unwrap_or_default();
    let p = tag(&tags, "p").ok_or_else(|| perm("key has no p=".into()))?;
    let p = base64_fws(p).map_err(|e| perm(format!("key p=: {e}")))?;
    if p.is_empty() {
        // RFC 6376 3.6.1: an empty p= is a revoked key.
        return Err((DkimResult::Fail, "key revoked".into()));
    }
    let public = match algorithm {
        Algorithm::RsaSha256 => {
            let der = rsa_public_key(&p).ok_or_else(|| perm("key p= is not an RSA key".into()))?;
            let bits =
                rsa_modulus_bits(&der).ok_or_else(|| perm("key p= is not an RSA key".into()))?;
            if bits < MIN_RSA_BITS {
                return Err(perm(format!("RSA key of {bits} bits is too small")));
            }
            if bits > MAX_RSA_BITS {
                return Err((
                    DkimResult::Policy,
                    format!("RSA key of {bits} bits is too large"),
                ));
            }
            der
        }
        Algorithm::Ed25519Sha256 => {
            if p.len() != 32 {
                return Err(perm("ed25519 key is not 32 bytes".into()));
            }
            p
        }
    };
    Ok(Key {
        kind: algorithm,
        public,
        testing: flags.contains(&"y"),
        strict: flags.contains(&"s"),
    })
}

/// A DER element at the start of `input`: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// RFC 6376 3.6.1: `p=` is a SubjectPublicKeyInfo (RFC 5280 4.1); some
/// publish the bare RSAPublicKey (RFC 8017 A.1.1). Returns the latter.
fn rsa_public_key(p: &[u8]) -> Option<Vec<u8>> {
    let (tag, body, _) = der(p)?;
    if tag != 0x30 {
        return None;
    }
    let (first_tag, first, rest) = der(body)?;
    match first_tag {
        // RSAPublicKey: SEQUENCE { INTEGER n, INTEGER e }.
        0x02 => Some(p.to_vec()),
        // SPKI: SEQUENCE { AlgorithmIdentifier, BIT STRING }.
        0x30 => {
            // rsaEncryption, 1.2.840.113549.1.1.1.
            const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
            let (oid_tag, oid, _) = der(first)?;
            if oid_tag != 0x06 || oid != RSA_OID {
                return None;
            }
            let (bit_tag, bits, _) = der(rest)?;
            let (&unused, key) = bits.split_first()?;
            (bit_tag == 0x03 && unused == 0).then(|| key.to_vec())
        }
        _ => None,
    }
}

fn rsa_modulus_bits(rsa_public_key: &[u8]) -> Option<usize> {
    let (_, body, _) = der(rsa_public_key)?;
    let (tag, n, _) = der(body)?;
    if tag != 0x02 {
        return None;
    }
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => &n[i..],
        None => return Some(0),
    };
    let top = n.first().map_or(0, |b| 8 - b.leading_zeros() as usize);
    Some((n.len() - 1) * 8 + top)
}

fn verify_signature(key: &Key, data: &[u8], sig: &[u8]) -> bool {
    match key.kind {
        Algorithm::RsaSha256 => {
            let alg = &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY;
            signature::UnparsedPublicKey::new(alg, &key.public)
                .verify(data, sig)
                .is_ok()
        }
        Algorithm::Ed25519Sha256 => {
            // RFC 8463 3: Ed25519 (pure) over the SHA-256 of the data.
            let hash = digest::digest(&digest::SHA256, data);
            signature::UnparsedPublicKey::new(&signature::ED25519, &key.public)
                .verify(hash.as_ref(), sig)
                .is_ok()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyStep {
    /// Ask this (a TXT query), then call [`Verifier::answer`].
    Query,
    Done,
}

enum Slot {
    /// Verdict already known.
    Decided(SignatureOutcome),
    /// Waiting for the body hash and the key.
    Pending(Box<Signature>, Known),
}

/// One body hash serves every signature with the same canonicalisation
/// and `l=`.
type BodyKey = (Canon, Option<u64>);

/// Verifies every DKIM-Signature of one message (RFC 6376 6).
pub struct Verifier {
    now: u64,
    header: Vec<u8>,
    in_body: bool,
    header_too_big: bool,
    fields: Vec<Field>,
    slots: Vec<Slot>,
    hashers: Vec<(BodyKey, BodyHasher)>,
    /// Finished body hashes: (key, hash, canonical length).
    body_done: Vec<(BodyKey, Vec<u8>, u64)>,
    keys: Vec<(Query, Reply)>,
}

impl Verifier {
    /// `now`: seconds since the epoch, for `x=`.
    pub fn new(now: u64) -> Verifier {
        Verifier {
            now,
            header: Vec::new(),
            in_body: false,
            header_too_big: false,
            fields: Vec::new(),
            slots: Vec::new(),
            hashers: Vec::new(),
            body_done: Vec::new(),
            keys: Vec::new(),
        }
    }

    /// The next piece of the message, as spooled (CRLF or LF line ends).
    pub fn feed(&mut self, mut chunk: &[u8]) {
        if !self.in_body {
            // Look for the empty line, including across chunk boundaries.
            let before = self.header.len();
            let room = MAX_HEADER_BYTES.saturating_sub(before);
            let take = chunk.len().min(room);
            self.header.extend_from_slice(&chunk[..take]);
            match find_header_end(&self.header, before.saturating_sub(3)) {
                Some((end, body_start)) => {
                    let body = self.header.split_off(body_start);
                    self.header.truncate(end);
                    self.start_body();
                    self.hash(&body);
                    chunk = &chunk[take..];
                }
                None if take < chunk.len() => {
                    // Read what we have, so the outcomes name the
                    // signatures; results() marks them all permerror.
                    self.header_too_big = true;
                    self.start_body();
                    chunk = &chunk[take..];
                }
                None => return,
            }
        }
        self.hash(chunk);
    }

    fn hash(&mut self, bytes: &[u8]) {
        for (_, h) in &mut self.hashers {
            h.update(bytes);
        }
    }

    fn start_body(&mut self) {
        self.in_body = true;
        self.fields = split_fields(&self.header);
        let mut verified = 0;
        for (index, field) in self.fields.iter().enumerate() {
            if field.name != "dkim-signature" {
                continue;
            }
            let colon = field
                .raw
                .iter()
                .position(|&b| b == b':')
                .map_or(0, |c| c + 1);
            let value = String::from_utf8_lossy(&field.raw[colon..]).into_owned();
            let known = known_of(&value);
            let outcome = |result, reason: String| SignatureOutcome {
                result,
                domain: known.domain.clone(),
                selector: known.selector.clone(),
                algorithm: known.algorithm.clone(),
                testing: false,
                b_prefix: known.b_prefix.clone(),
                reason,
            };
            if verified >= MAX_SIGNATURES {
                self.slots.push(Slot::Decided(outcome(
                    DkimResult::Policy,
                    format!("not checked: more than {MAX_SIGNATURES} signatures"),
                )));
                continue;
            }
            verified += 1;
            match parse_signature(&value, index, self.now) {
                Ok(sig) => {
                    let key = (sig.body_canon, sig.length);
                    if !self.hashers.iter().any(|(k, _)| *k == key) {
                        self.hashers
                            .push((key, BodyHasher::new(sig.body_canon, sig.length)));
                    }
                    self.slots.push(Slot::Pending(Box::new(sig), known));
                }
                Err((result, reason)) => self.slots.push(Slot::Decided(outcome(result, reason))),
            }
        }
        self.header.clear();
        self.header.shrink_to_fit();
    }

    /// The message has ended.
    pub fn finish_body(&mut self) {
        if !self.in_body {
            // No empty line: all of it is header (RFC 5322 3.5 body is optional).
            self.start_body();
        }
        for (key, h) in std::mem::take(&mut self.hashers) {
            let (hash, len) = h.finish();
            self.body_done.push((key, hash, len));
        }
        for slot in &mut self.slots {
            let Slot::Pending(sig, known) = slot else {
                continue;
            };
            let Some((_, hash, len)) = self
                .body_done
                .iter()
                .find(|(k, _, _)| *k == (sig.body_canon, sig.length))
            else {
                continue;
            };
            let fail = |result, reason: &str| {
                Slot::Decided(SignatureOutcome {
                    result,
                    domain: known.domain.clone(),
                    selector: known.selector.clone(),
                    algorithm: known.algorithm.clone(),
                    testing: false,
                    b_prefix: known.b_prefix.clone(),
                    reason: reason.to_string(),
                })
            };
            if sig.length.is_some_and(|l| l > *len) {
                *slot = fail(DkimResult::Fail, "l= is longer than the body");
            } else if *hash != sig.body_hash {
                *slot = fail(DkimResult::Fail, "body hash mismatch");
            }
        }
    }

    /// The key queries still needed, or nothing left to ask.
    pub fn queries(&self) -> Vec<Query> {
        let mut out: Vec<Query> = Vec::new();
        for slot in &self.slots {
            if let Slot::Pending(sig, _) = slot {
                let q = Query::new(
                    &format!("{}._domainkey.{}", sig.selector, sig.domain),
                    QType::Txt,
                );
                if !out.contains(&q) && !self.keys.iter().any(|(k, _)| *k == q) {
                    out.push(q);
                }
            }
        }
        out
    }

    /// [`VerifyStep::Query`] while [`Verifier::queries`] is not empty.
    pub fn step(&self) -> VerifyStep {
        if self.queries().is_empty() {
            VerifyStep::Done
        } else {
            VerifyStep::Query
        }
    }

    /// The reply to one of [`Verifier::queries`].
    pub fn answer(&mut self, query: &Query, reply: Reply) {
        if !self.keys.iter().any(|(q, _)| q == query) {
            self.keys.push((query.clone(), reply));
        }
    }

    /// The verdicts, in header order (call when [`Verifier::step`] is
    /// Done; a signature whose key never came is a temperror).
    pub fn results(&self) -> Vec<SignatureOutcome> {
        let mut out = Vec::new();
        for slot in &self.slots {
            match slot {
                Slot::Decided(o) => out.push(o.clone()),
                Slot::Pending(sig, known) => out.push(self.verify(sig, known)),
            }
        }
        if self.header_too_big {
            for o in &mut out {
                o.result = DkimResult::PermError;
                o.reason = "header block too large to verify".into();
            }
        }
        out
    }

    fn verify(&self, sig: &Signature, known: &Known) -> SignatureOutcome {
        let mut outcome = SignatureOutcome {
            result: DkimResult::TempError,
            domain: sig.domain.clone(),
            selector: sig.selector.clone(),
            algorithm: sig.algorithm.name().to_string(),
            testing: false,
            b_prefix: known.b_prefix.clone(),
            reason: String::new(),
        };
        let q = Query::new(
            &format!("{}._domainkey.{}", sig.selector, sig.domain),
            QType::Txt,
        );
        let records = match self.keys.iter().find(|(k, _)| *k == q).map(|(_, r)| r) {
            None => {
                outcome.reason = "key not looked up".into();
                return outcome;
            }
            Some(Reply::Failed(why)) => {
                outcome.reason = format!("key lookup failed: {why}");
                return outcome;
            }
            Some(Reply::Answer(Answer::Txt(records))) => records,
            Some(Reply::Answer(_)) => {
                outcome.result = DkimResult::PermError;
                outcome.reason = format!("no key at {}", q.name);
                return outcome;
            }
        };
        // RFC 6376 3.6.2.2: several records give undefined results; the
        // first that reads as a key of this type is used.
        let mut key = Err((DkimResult::PermError, "no key record".to_string()));
        for r in records {
            key = parse_key(r, sig.algorithm);
            if key.is_ok() {
                break;
            }
        }
        let key = match key {
            Ok(k) => k,
            Err((result, reason)) => {
                outcome.result = result;
                outcome.reason = reason;
                return outcome;
            }
        };
        outcome.testing = key.testing;
        if key.strict && sig.auid_domain != sig.domain {
            outcome.result = DkimResult::PermError;
            outcome.reason = "key t=s: i= must be d= exactly".into();
            return outcome;
        }
        let Some(field) = self.fields.get(sig.index) else {
            outcome.result = DkimResult::PermError;
            return outcome;
        };
        let data = header_data(&self.fields, field, sig.header_canon, &sig.headers);
        if verify_signature(&key, &data, &sig.signature) {
            outcome.result = DkimResult::Pass;
            outcome.reason = "signature verified".into();
        } else {
            outcome.result = DkimResult::Fail;
            outcome.reason = "signature did not verify".into();
        }
        outcome
    }
}

/// The end of the header block in `buf` (searching from `from`): the
/// index where the header ends (after its last line end) and where the
/// body starts.
fn find_header_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    // A message that starts with the empty line has no header at all.
    if buf.starts_with(b"\r\n") {
        return Some((0, 2));
    }
    if buf.starts_with(b"\n") {
        return Some((0, 1));
    }
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some((i + 1, i + 2)),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some((i + 1, i + 3)),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// d=, s=, a= and the start of b= of a header we may not be able to read
/// fully, for the outcome line.
fn known_of(value: &str) -> Known {
    let mut k = Known::default();
    for part in value.split(';') {
        let Some((n, v)) = part.split_once('=') else {
            continue;
        };
        let v: String = v.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        match n.trim() {
            "d" => k.domain = short(&v.to_ascii_lowercase()),
            "s" => k.selector = short(&v.to_ascii_lowercase()),
            "a" => k.algorithm = short(&v),
            "b" => k.b_prefix = v.chars().take(8).collect(),
            _ => {}
        }
    }
    k
}

/// RFC 6376 5.4.1: the header fields we sign when present (From is
/// over-signed: listed once more than it occurs, so none can be added).
pub const SIGNED_HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "resent-date",
    "resent-from",
    "resent-to",
    "resent-cc",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// A private key to sign with.
pub enum SigningKey {
    Rsa(signature::RsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
}

impl SigningKey {
    /// From PKCS#8 DER (what [`generate_ed25519`] / keygen store).
    pub fn from_pkcs8(algorithm: Algorithm, der: &[u8]) -> Result<SigningKey, String> {
        match algorithm {
            Algorithm::RsaSha256 => signature::RsaKeyPair::from_pkcs8(der)
                .map(SigningKey::Rsa)
                .map_err(|e| format!("not an RSA PKCS#8 key: {e}")),
            Algorithm::Ed25519Sha256 => signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                .map(SigningKey::Ed25519)
                .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}")),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Rsa(_) => Algorithm::RsaSha256,
            SigningKey::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            SigningKey::Rsa(k) => {
                let rng = ring::rand::SystemRandom::new();
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, data, &mut sig)
                    .map_err(|_| "RSA signing failed".to_string())?;
                Ok(sig)
            }
            SigningKey::Ed25519(k) => {
                let hash = digest::digest(&digest::SHA256, data);
                Ok(k.sign(hash.as_ref()).as_ref().to_vec())
            }
        }
    }
}

/// One domain's signing identity.
pub struct SigningIdentity {
    pub domain: String,
    pub selector: String,
    pub key: SigningKey,
}

/// Signs one message with one or more keys (rsa-sha256 and ed25519-sha256
/// side by side, RFC 8463 4), relaxed/relaxed. The body is streamed.
pub struct Signer {
    header: Vec<u8>,
    in_body: bool,
    body: BodyHasher,
}

impl Default for Signer {
    fn default() -> Self {
        Signer::new()
    }
}

impl Signer {
    pub fn new() -> Signer {
        Signer {
            header: Vec::new(),
            in_body: false,
            body: BodyHasher::new(Canon::Relaxed, None),
        }
    }

    /// The next piece of the message.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        if self.in_body {
            self.body.update(chunk);
            return Ok(());
        }
        let before = self.header.len();
        if before + chunk.len() > MAX_HEADER_BYTES + 4 {
            let room = (MAX_HEADER_BYTES + 4).saturating_sub(before);
            self.header
                .extend_from_slice(&chunk[..room.min(chunk.len())]);
        } else {
            self.header.extend_from_slice(chunk);
        }
        match find_header_end(&self.header, before.saturating_sub(3)) {
            Some((end, body_start)) => {
                let body = self.header.split_off(body_start);
                self.header.truncate(end);
                self.in_body = true;
                self.body.update(&body);
                Ok(())
            }
            None if self.header.len() > MAX_HEADER_BYTES => {
                Err("header block too large to sign".into())
            }
            None => Ok(()),
        }
    }

    /// The DKIM-Signature fields to put on top of the message, one per
    /// key, each ending in CRLF. `now`: seconds since the epoch (`t=`).
    pub fn finish(mut self, keys: &[SigningIdentity], now: u64) -> Result<Vec<String>, String> {
        if !self.in_body {
            self.in_body = true;
        }
        let (bh, _) = self.body.finish();
        let fields = split_fields(&self.header);
        let mut names: Vec<String> = Vec::new();
        for wanted in SIGNED_HEADERS {
            let count = fields.iter().filter(|f| f.name == *wanted).count();
            let times = if *wanted == "from" { count + 1 } else { count };
            names.extend(std::iter::repeat_n((*wanted).to_string(), times));
        }
        let mut out = Vec::new();
        for id in keys {
            let head = format!(
                "DKIM-Signature: v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n\tt={}; h={};\r\n\tbh={};\r\n\tb=",
                id.key.algorithm().name(),
                id.domain,
                id.selector,
                now,
                fold_list(&names),
                BASE64.encode(&bh),
            );
            let field = Field {
                name: "dkim-signature".into(),
                raw: format!("{head}\r\n").into_bytes(),
            };
            let data = header_data(&fields, &field, Canon::Relaxed, &names);
            let sig = id.key.sign(&data)?;
            let b = BASE64.encode(sig);
            let mut text = head;
            for (i, chunk) in b.as_bytes().chunks(72).enumerate() {
                if i > 0 {
                    text.push_str("\r\n\t ");
                }
                text.push_str(&String::from_utf8_lossy(chunk));
            }
            text.push_str("\r\n");
            out.push(text);
        }
        Ok(out)
    }
}

/// `h=` names joined with `:`, folded every few names.
fn fold_list(names: &[String]) -> String {
    let mut out = String::new();
    let mut line = 0;
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push(':');
            line += 1;
            if line + n.len() > 60 {
                out.push_str("\r\n\t ");
                line = 0;
            }
        }
        out.push_str(n);
        line += n.len();
    }
    out
}

/// PEM text of a PKCS#8 private key (RFC 7468 10).
pub fn pkcs8_pem(der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// The DER inside PEM text (the first PRIVATE KEY block).
pub fn pem_pkcs8(text: &str) -> Result<Vec<u8>, String> {
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    let start = text.find(begin).ok_or("no BEGIN PRIVATE KEY line")? + begin.len();
    let stop = text[start..].find(end).ok_or("no END PRIVATE KEY line")? + start;
    base64_fws(&text[start..stop]).map_err(|e| format!("PEM: {e}"))
}

/// A new Ed25519 key as PKCS#8 DER.
pub fn generate_ed25519() -> Result<Vec<u8>, String> {
    let rng = ring::rand::SystemRandom::new();
    signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| "Ed25519 key generation failed".into())
}

/// The DNS TXT record (RFC 6376 3.6.1) publishing the public half of a
/// signing key.
pub fn dns_record(key: &SigningKey) -> String {
    match key {
        SigningKey::Rsa(k) => {
            format!(
                "v=DKIM1; k=rsa; p={}",
                BASE64.encode(spki_rsa(k.public().as_ref()))
            )
        }
        SigningKey::Ed25519(k) => {
            format!(
                "v=DKIM1; k=ed25519; p={}",
                BASE64.encode(k.public_key().as_ref())
            )
        }
    }
}

fn der_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        vec![len as u8]
    } else if len < 0x100 {
        vec![0x81, len as u8]
    } else {
        vec![0x82, (len >> 8) as u8, len as u8]
    }
}

/// RFC 5280 4.1: SubjectPublicKeyInfo around an RSAPublicKey.
fn spki_rsa(rsa_public_key: &[u8]) -> Vec<u8> {
    let alg: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03];
    bits.extend(der_len(rsa_public_key.len() + 1));
    bits.push(0);
    bits.extend_from_slice(rsa_public_key);
    let mut out = vec![0x30];
    out.extend(der_len(alg.len() + bits.len()));
    out.extend_from_slice(alg);
    out.extend(bits);
    out
}

#[cfg(test)]
mod tests;
