//! Message structure from a message's bytes, streaming: ENVELOPE,
//! BODY/BODYSTRUCTURE (RFC 3501 7.4.2), section ranges for
//! BODY[section]<partial> (RFC 3501 6.4.5), RFC822.SIZE, and the LF to
//! CRLF presentation.
//!
//! Messages are stored as they arrived, usually with LF line ends; IMAP
//! presents them with CRLF (RFC 3501 2.3.4 sizes count CRLF). One pass,
//! [`StructureBuilder`], is fed the stored bytes in chunks of any size and
//! records for every MIME part where its header and body lie in the
//! stored file and how large they are as presented; it keeps only the
//! header fields BODYSTRUCTURE and ENVELOPE need, each bounded, so a
//! 50 MB message costs a few KiB. A section is then served by reading
//! its stored range through a [`Presenter`], which adds the CRs and cuts
//! the `<origin.count>` window.
//!
//! RFC 2047 encoded words and RFC 2231 parameters are passed through as
//! they are: IMAP wants them encoded.
//!
//! Must not: read files (the caller feeds bytes), or hold a body.

use super::response::{nstring, string};
use super::types::{Section, SectionText};

/// Longest unfolded header field kept for parsing (Content-Type with many
/// parameters, a long To list); beyond this the value is cut, the size
/// accounting stays exact.
const MAX_FIELD: usize = 16 * 1024;
/// Header fields kept per part: only the ones BODYSTRUCTURE and ENVELOPE
/// use are ever kept, and each once, so this is a backstop.
const MAX_FIELDS: usize = 24;
/// MIME parts per message, and nesting depth: beyond them, content is
/// counted as the body of the innermost part (Dovecot has similar caps).
pub const MAX_PARTS: usize = 2_000;
pub const MAX_MIME_DEPTH: usize = 50;
/// A boundary is 1 to 70 characters (RFC 2046 5.1.1): this much of a
/// line decides whether it is a delimiter.
const MAX_BOUNDARY_LINE: usize = 2 + 70 + 2 + 64;

/// Fields kept from headers.
const KEPT: &[&str] = &[
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "content-disposition",
    "content-language",
    "content-location",
    "content-md5",
    "date",
    "subject",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "in-reply-to",
    "message-id",
];

/// A range of the stored file and its presented (CRLF) size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub raw_start: u64,
    pub raw_end: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Leaf,
    /// Children are part indices.
    Multipart(Vec<usize>),
    /// message/rfc822: the embedded message's part index.
    Message(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Header, its blank line included.
    pub header: Span,
    pub body: Span,
    pub body_lines: u64,
    /// Kept fields, names lower-case, values unfolded and trimmed.
    pub fields: Vec<(String, Vec<u8>)>,
    pub kind: Kind,
    parent: Option<usize>,
    /// Start of the body: (raw, presented, line index).
    body_at: (u64, u64, u64),
}

impl Part {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The whole part, header and body.
    pub fn whole(&self) -> Span {
        Span {
            raw_start: self.header.raw_start,
            raw_end: self.body.raw_end,
            size: self.header.size + self.body.size,
        }
    }
}

/// The parts of one message; part 0 is the message itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structure {
    pub parts: Vec<Part>,
}

/// What a section names: a stored range, or a header to filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionRange {
    Bytes(Span),
    /// Read `span` (a header) through [`filter_header`] with these names.
    Fields {
        span: Span,
        names: Vec<String>,
        not: bool,
    },
}

impl Structure {
    /// RFC822.SIZE: the message as presented.
    pub fn size(&self) -> u64 {
        self.parts[0].whole().size
    }

    fn content(&self, message: usize, n: u32) -> Option<usize> {
        match &self.parts[message].kind {
            Kind::Multipart(children) => children.get((n as usize).checked_sub(1)?).copied(),
            _ if n == 1 => Some(message),
            _ => None,
        }
    }

    /// The part a section's numbers name (RFC 3501 6.4.5).
    pub fn find(&self, path: &[u32]) -> Option<usize> {
        let mut cur: Option<usize> = None;
        for &n in path {
            cur = Some(match cur {
                None => self.content(0, n)?,
                Some(p) => match &self.parts[p].kind {
                    Kind::Message(inner) => self.content(*inner, n)?,
                    Kind::Multipart(children) => *children.get((n as usize).checked_sub(1)?)?,
                    // Dovecot: part 1 of a leaf is the leaf itself.
                    Kind::Leaf if n == 1 && self.parts[p].parent.is_some() => p,
                    Kind::Leaf => return None,
                },
            });
        }
        cur
    }

    /// The embedded message a HEADER/TEXT section applies to.
    fn message_of(&self, path: &[u32]) -> Option<usize> {
        if path.is_empty() {
            return Some(0);
        }
        match self.parts[self.find(path)?].kind {
            Kind::Message(inner) => Some(inner),
            _ => None,
        }
    }

    /// Where BODY[section] lies; `None` for a part that does not exist
    /// (answered with an empty string, as RFC 3501 6.4.5 lets servers do).
    pub fn section(&self, s: &Section) -> Option<SectionRange> {
        Some(match &s.text {
            None if s.part.is_empty() => SectionRange::Bytes(self.parts[0].whole()),
            None => SectionRange::Bytes(self.parts[self.find(&s.part)?].body),
            Some(SectionText::Mime) => SectionRange::Bytes(self.parts[self.find(&s.part)?].header),
            Some(SectionText::Header) => {
                SectionRange::Bytes(self.parts[self.message_of(&s.part)?].header)
            }
            Some(SectionText::Text) => {
                SectionRange::Bytes(self.parts[self.message_of(&s.part)?].body)
            }
            Some(SectionText::HeaderFields(names)) => SectionRange::Fields {
                span: self.parts[self.message_of(&s.part)?].header,
                names: names.clone(),
                not: false,
            },
            Some(SectionText::HeaderFieldsNot(names)) => SectionRange::Fields {
                span: self.parts[self.message_of(&s.part)?].header,
                names: names.clone(),
                not: true,
            },
        })
    }

    /// ENVELOPE of the message (part 0) or of an embedded one.
    pub fn envelope(&self, out: &mut Vec<u8>, message: usize) {
        envelope(out, &self.parts[message]);
    }

    /// BODYSTRUCTURE (`extended`) or BODY of part `p` (0: the message).
    pub fn body_structure(&self, out: &mut Vec<u8>, extended: bool) {
        self.write_part(out, 0, extended, false, 0);
    }

    fn write_part(&self, out: &mut Vec<u8>, p: usize, ext: bool, in_digest: bool, depth: usize) {
        let part = &self.parts[p];
        let ct = ContentType::of(part, in_digest);
        out.push(b'(');
        match &part.kind {
            Kind::Multipart(children) if depth < MAX_MIME_DEPTH => {
                let digest = ct.subtype.eq_ignore_ascii_case(b"digest");
                if children.is_empty() {
                    // RFC 3501 9 needs at least one body: an empty text part.
                    out.extend_from_slice(
                        b"(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0",
                    );
                    out.extend_from_slice(if ext { b" NIL NIL NIL NIL)" } else { b")" });
                }
                for &c in children {
                    self.write_part(out, c, ext, digest, depth + 1);
                }
                out.push(b' ');
                string(out, &ct.subtype);
                if ext {
                    out.push(b' ');
                    params(out, &ct.params);
                    ext_tail(out, part);
                }
            }
            _ => {
                string(out, &ct.mtype);
                out.push(b' ');
                string(out, &ct.subtype);
                out.push(b' ');
                params(out, &ct.params);
                out.push(b' ');
                nstring(out, part.field("content-id"));
                out.push(b' ');
                nstring(out, part.field("content-description"));
                out.push(b' ');
                let enc = part
                    .field("content-transfer-encoding")
                    .map(trim)
                    .filter(|e| !e.is_empty())
                    .unwrap_or(b"7bit");
                string(out, enc);
                out.extend_from_slice(format!(" {}", part.body.size).as_bytes());
                if let Kind::Message(inner) = part.kind {
                    out.push(b' ');
                    envelope(out, &self.parts[inner]);
                    out.push(b' ');
                    self.write_part(out, inner, ext, false, depth + 1);
                    out.extend_from_slice(format!(" {}", part.body_lines).as_bytes());
                } else if ct.mtype.eq_ignore_ascii_case(b"message")
                    && ct.subtype.eq_ignore_ascii_case(b"rfc822")
                {
                    // Encoded, so not parsed: an empty message (as Dovecot).
                    out.extend_from_slice(b" (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL) (\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 0 0");
                    out.extend_from_slice(if ext { b" NIL NIL NIL NIL)" } else { b")" });
                    out.extend_from_slice(format!(" {}", part.body_lines).as_bytes());
                } else if ct.mtype.eq_ignore_ascii_case(b"text") {
                    out.extend_from_slice(format!(" {}", part.body_lines).as_bytes());
                }
                if ext {
                    out.push(b' ');
                    nstring(out, part.field("content-md5"));
                    ext_tail(out, part);
                }
            }
        }
        out.push(b')');
    }
}

/// ` disposition language location` (RFC 3501 9 body-ext-*).
fn ext_tail(out: &mut Vec<u8>, part: &Part) {
    out.push(b' ');
    match part.field("content-disposition") {
        Some(v) => {
            let (kind, ps) = parse_params(v);
            if kind.is_empty() {
                out.extend_from_slice(b"NIL");
            } else {
                out.push(b'(');
                string(out, &kind);
                out.push(b' ');
                params(out, &ps);
                out.push(b')');
            }
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    let langs: Vec<&[u8]> = part
        .field("content-language")
        .map(|v| {
            v.split(|&c| c == b',')
                .map(trim)
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default();
    match langs.as_slice() {
        [] => out.extend_from_slice(b"NIL"),
        [one] => string(out, one),
        many => {
            out.push(b'(');
            for (i, l) in many.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                string(out, l);
            }
            out.push(b')');
        }
    }
    out.push(b' ');
    // Unfolded, spaces kept (as Dovecot does).
    nstring(out, part.field("content-location"));
}

fn params(out: &mut Vec<u8>, ps: &[(Vec<u8>, Vec<u8>)]) {
    if ps.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in ps.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k);
        out.push(b' ');
        string(out, v);
    }
    out.push(b')');
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &v[s..e.max(s)]
}

/// MIME parameters: (name as given, value unquoted).
type Params = Vec<(Vec<u8>, Vec<u8>)>;

struct ContentType {
    mtype: Vec<u8>,
    subtype: Vec<u8>,
    params: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ContentType {
    fn of(part: &Part, in_digest: bool) -> ContentType {
        if let Some(v) = part.field("content-type") {
            let (t, mut params) = parse_params(v);
            let (m, s) = match t.iter().position(|&c| c == b'/') {
                Some(slash) => (trim(&t[..slash]), trim(&t[slash + 1..])),
                None => (trim(&t), &b""[..]),
            };
            if !m.is_empty() {
                // Text without a charset is us-ascii (RFC 2045 5.2); Dovecot
                // says so explicitly.
                if m.eq_ignore_ascii_case(b"text")
                    && !params
                        .iter()
                        .any(|(k, _)| k.eq_ignore_ascii_case(b"charset"))
                {
                    params.insert(0, (b"charset".to_vec(), b"us-ascii".to_vec()));
                }
                return ContentType {
                    mtype: m.to_vec(),
                    subtype: s.to_vec(),
                    params,
                };
            }
        }
        // RFC 2045 5.2 and RFC 2046 5.1.5 defaults.
        if in_digest {
            ContentType {
                mtype: b"message".to_vec(),
                subtype: b"rfc822".to_vec(),
                params: Vec::new(),
            }
        } else {
            ContentType {
                mtype: b"text".to_vec(),
                subtype: b"plain".to_vec(),
                params: vec![(b"charset".to_vec(), b"us-ascii".to_vec())],
            }
        }
    }
}

/// Skips `(comments)` (nested) and whitespace. Never returns past
/// `v.len()`, even when a comment ends in a lone backslash.
fn skip_cfws(v: &[u8], mut i: usize) -> usize {
    loop {
        while i < v.len() && v[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < v.len() && v[i] == b'(' {
            let mut depth = 0usize;
            while i < v.len() {
                match v[i] {
                    // A quoted-pair; a backslash that ends the value
                    // quotes nothing.
                    b'\\' if i + 1 < v.len() => i += 1,
                    b'(' => depth += 1,
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        return i;
    }
}

/// A quoted string at `v[i] == '"'`: its content and the index after it.
fn quoted_at(v: &[u8], mut i: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    i += 1;
    while i < v.len() {
        match v[i] {
            b'"' => return (out, i + 1),
            b'\\' if i + 1 < v.len() => {
                out.push(v[i + 1]);
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    (out, i)
}

/// `value *(; name=value)` of Content-Type and Content-Disposition
/// (RFC 2045 5.1, RFC 2183): the value lower-cased as given, names
/// lower-cased, parameter values unquoted.
fn parse_params(v: &[u8]) -> (Vec<u8>, Params) {
    let mut i = skip_cfws(v, 0);
    let start = i;
    while i < v.len() && v[i] != b';' && v[i] != b'(' && !v[i].is_ascii_whitespace() {
        i += 1;
    }
    let value = v[start..i].to_vec();
    let mut ps = Vec::new();
    loop {
        i = skip_cfws(v, i);
        if i >= v.len() {
            break;
        }
        if v[i] != b';' {
            i += 1;
            continue;
        }
        i = skip_cfws(v, i + 1);
        let ns = i;
        while i < v.len() && v[i] != b'=' && v[i] != b';' && !v[i].is_ascii_whitespace() {
            i += 1;
        }
        let name = v[ns..i].to_vec();
        i = skip_cfws(v, i);
        if i >= v.len() || v[i] != b'=' {
            continue;
        }
        i = skip_cfws(v, i + 1);
        let val = if i < v.len() && v[i] == b'"' {
            let (q, next) = quoted_at(v, i);
            i = next;
            q
        } else {
            let vs = i;
            while i < v.len() && v[i] != b';' && !v[i].is_ascii_whitespace() && v[i] != b'(' {
                i += 1;
            }
            v[vs..i].to_vec()
        };
        if !name.is_empty() {
            ps.push((name, val));
        }
    }
    (value, join_continuations(ps))
}

/// RFC 2231 3 continuations `name*0`, `name*1`... joined into `name`
/// (`name*0*`... into `name*`, still encoded), as Dovecot presents them.
fn join_continuations(ps: Params) -> Params {
    let mut out: Params = Vec::new();
    for (name, val) in ps {
        let split = name.iter().position(|&c| c == b'*').and_then(|star| {
            let rest = &name[star + 1..];
            let (digits, ext) = match rest.strip_suffix(b"*") {
                Some(d) => (d, true),
                None => (rest, false),
            };
            (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
                .then(|| (name[..star].to_vec(), ext))
        });
        match split {
            Some((base, ext)) => {
                let mut key = base;
                if ext {
                    key.push(b'*');
                }
                match out.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                    Some((_, v)) => v.extend_from_slice(&val),
                    None => out.push((key, val)),
                }
            }
            None => out.push((name, val)),
        }
    }
    out
}

/// One address of an address list, as ENVELOPE has it (RFC 3501 7.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub name: Option<Vec<u8>>,
    pub adl: Option<Vec<u8>>,
    pub mailbox: Option<Vec<u8>>,
    pub host: Option<Vec<u8>>,
}

/// A token of an address header.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(Vec<u8>),
    Special(u8),
    /// A comment's text: the display name of `addr (Name)` (Dovecot).
    Comment(Vec<u8>),
}

fn tokens(v: &[u8]) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < v.len() && v[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < v.len() && v[i] == b'(' {
            let end = skip_cfws(v, i);
            let inner = &v[i + 1..end.saturating_sub(1).max(i + 1)];
            let inner = trim(inner.strip_suffix(b")").unwrap_or(inner));
            out.push(Tok::Comment(inner.to_vec()));
            i = end;
            continue;
        }
        if i >= v.len() {
            return out;
        }
        match v[i] {
            b'"' => {
                let (q, next) = quoted_at(v, i);
                out.push(Tok::Word(q));
                i = next;
            }
            c @ (b'<' | b'>' | b'@' | b',' | b';' | b':' | b'.' | b'[' | b']') => {
                if c == b'[' {
                    // A domain literal stays one word.
                    let end = v[i..]
                        .iter()
                        .position(|&c| c == b']')
                        .map_or(v.len(), |p| i + p + 1);
                    out.push(Tok::Word(v[i..end].to_vec()));
                    i = end;
                } else {
                    out.push(Tok::Special(c));
                    i += 1;
                }
            }
            _ => {
                let s = i;
                while i < v.len() && !b"\"<>@,;:.[]() \t\r\n".contains(&v[i]) {
                    i += 1;
                }
                if i == s {
                    // A stray `)` (or other lone special): skip it.
                    i += 1;
                    continue;
                }
                out.push(Tok::Word(v[s..i].to_vec()));
            }
        }
    }
}

/// Parses an address list, groups marked as RFC 3501 7.4.2 wants
/// (a start with the group name as mailbox and NIL host, an end of NILs).
pub fn parse_addresses(v: &[u8]) -> Vec<Address> {
    let toks = tokens(v);
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_group = false;
    while i < toks.len() {
        // Collect one address: tokens up to ',' (or ';' / ':' for groups).
        let start = i;
        let mut angle = None;
        let mut colon = None;
        while i < toks.len() {
            match toks[i] {
                Tok::Special(b',') if angle.is_none() => break,
                Tok::Special(b';') if in_group && angle.is_none() => break,
                Tok::Special(b'<') if angle.is_none() => angle = Some(i),
                Tok::Special(b'>') if angle.is_some() => {
                    i += 1;
                    break;
                }
                Tok::Special(b':') if angle.is_none() && !in_group && colon.is_none() => {
                    colon = Some(i);
                    break;
                }
                _ => {}
            }
            i += 1;
        }
        if let Some(c) = colon {
            out.push(Address {
                name: None,
                adl: None,
                mailbox: Some(phrase(&toks[start..c])),
                host: None,
            });
            in_group = true;
            i = c + 1;
            continue;
        }
        let item = &toks[start..i.min(toks.len())];
        if !item.is_empty() {
            if let Some(a) = one_address(item) {
                out.push(a);
            }
        }
        if i < toks.len() {
            if toks[i] == Tok::Special(b';') && in_group {
                out.push(Address {
                    name: None,
                    adl: None,
                    mailbox: None,
                    host: None,
                });
                in_group = false;
            }
            if matches!(toks[i], Tok::Special(b',') | Tok::Special(b';')) {
                i += 1;
            }
        }
    }
    if in_group {
        out.push(Address {
            name: None,
            adl: None,
            mailbox: None,
            host: None,
        });
    }
    out
}

fn phrase(toks: &[Tok]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in toks {
        match t {
            Tok::Word(w) => {
                if !out.is_empty() && out.last() != Some(&b'.') {
                    out.push(b' ');
                }
                out.extend_from_slice(w);
            }
            Tok::Special(b'.') => out.push(b'.'),
            _ => {}
        }
    }
    out
}

/// Tokens back to text, comments dropped.
fn join(ts: &[Tok]) -> Vec<u8> {
    let mut o = Vec::new();
    for t in ts {
        match t {
            Tok::Word(w) => o.extend_from_slice(w),
            Tok::Special(c) => o.push(*c),
            Tok::Comment(_) => {}
        }
    }
    o
}

/// Joins `local@domain` tokens: (mailbox, host).
fn addr_spec(toks: &[Tok]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let at = toks.iter().rposition(|t| *t == Tok::Special(b'@'));
    match at {
        Some(a) => (Some(join(&toks[..a])), Some(join(&toks[a + 1..]))),
        None => (Some(join(toks)), None),
    }
}

fn one_address(item: &[Tok]) -> Option<Address> {
    let angle = item.contains(&Tok::Special(b'<'));
    let (name, spec, adl) = match item.iter().position(|t| *t == Tok::Special(b'<')) {
        Some(lt) => {
            let end = item
                .iter()
                .position(|t| *t == Tok::Special(b'>'))
                .unwrap_or(item.len());
            let inner = &item[(lt + 1).min(end)..end];
            // `<@route,@route:local@domain>` (RFC 5322 4.4 obs-route).
            let (adl, spec) = match inner.iter().position(|t| *t == Tok::Special(b':')) {
                Some(c) => (Some(join(&inner[..c])), &inner[c + 1..]),
                None => (None, inner),
            };
            let name = phrase(&item[..lt]);
            (if name.is_empty() { None } else { Some(name) }, spec, adl)
        }
        None => {
            let comment = item.iter().find_map(|t| match t {
                Tok::Comment(c) if !c.is_empty() => Some(c.clone()),
                _ => None,
            });
            (comment, item, None)
        }
    };
    // Nothing but comments (`group2: (foo) ;`) is no address: Dovecot and
    // imaptest's fetch-envelope want the group empty.
    let only_comments = item.iter().all(|t| matches!(t, Tok::Comment(_)));
    if !angle && (only_comments || (spec.is_empty() && name.is_none())) {
        return None;
    }
    let (mailbox, host) = addr_spec(spec);
    // Dovecot's placeholders: a NIL host would read as a group marker.
    let mailbox = mailbox
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| b"MISSING_MAILBOX".to_vec());
    let host = host
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| b"MISSING_DOMAIN".to_vec());
    Some(Address {
        name,
        adl,
        mailbox: Some(mailbox),
        host: Some(host),
    })
}

fn address_list(out: &mut Vec<u8>, v: Option<&[u8]>) {
    let list = v.map(parse_addresses).unwrap_or_default();
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in &list {
        out.push(b'(');
        nstring(out, a.name.as_deref());
        out.push(b' ');
        nstring(out, a.adl.as_deref());
        out.push(b' ');
        nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        nstring(out, a.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

/// RFC 3501 7.4.2 ENVELOPE of a message part.
fn envelope(out: &mut Vec<u8>, m: &Part) {
    out.push(b'(');
    nstring(out, m.field("date"));
    out.push(b' ');
    nstring(out, m.field("subject"));
    let from = m.field("from");
    // RFC 3501 7.4.2: Sender and Reply-To absent *or empty* are From.
    let given = |name| {
        m.field(name)
            .filter(|v| !v.iter().all(u8::is_ascii_whitespace))
    };
    for f in [
        from,
        given("sender").or(from),
        given("reply-to").or(from),
        m.field("to"),
        m.field("cc"),
        m.field("bcc"),
    ] {
        out.push(b' ');
        address_list(out, f);
    }
    out.push(b' ');
    nstring(out, m.field("in-reply-to"));
    out.push(b' ');
    nstring(out, m.field("message-id"));
    out.push(b')');
}

/// The boundary a multipart part announces, if it is one.
fn boundary_of(part: &Part) -> Option<Vec<u8>> {
    let v = part.field("content-type")?;
    let (t, ps) = parse_params(v);
    if t.len() < 10 || !t[..10].eq_ignore_ascii_case(b"multipart/") {
        return None;
    }
    ps.into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(b"boundary"))
        .map(|(_, b)| b)
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

fn is_message_rfc822(part: &Part, in_digest: bool) -> bool {
    let ct = ContentType::of(part, in_digest);
    if !(ct.mtype.eq_ignore_ascii_case(b"message") && ct.subtype.eq_ignore_ascii_case(b"rfc822")) {
        return false;
    }
    // An encoded message/rfc822 body cannot be parsed as a message.
    part.field("content-transfer-encoding")
        .map(trim)
        .is_none_or(|e| {
            e.eq_ignore_ascii_case(b"7bit")
                || e.eq_ignore_ascii_case(b"8bit")
                || e.eq_ignore_ascii_case(b"binary")
        })
}

/// Builds a [`Structure`] from the stored bytes, fed in any chunks.
#[derive(Debug)]
pub struct StructureBuilder {
    parts: Vec<Part>,
    /// The part receiving lines, and whether it is still in its header.
    cur: usize,
    in_header: bool,
    /// Open multiparts: (boundary, part), innermost last.
    frames: Vec<(Vec<u8>, usize)>,
    /// The current line: its first bytes, its full length, a CR seen last.
    line: Vec<u8>,
    line_len: u64,
    last_cr: bool,
    /// Position at the start of the current line: raw, presented, index.
    raw: u64,
    pres: u64,
    index: u64,
    /// The previous line: raw terminator length and content length.
    prev_term: u64,
    prev_content: u64,
    /// The header field being read (name, value), if kept.
    field: Option<(String, Vec<u8>)>,
    field_kept: bool,
}

impl Default for StructureBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl StructureBuilder {
    pub fn new() -> StructureBuilder {
        StructureBuilder {
            parts: vec![new_part(0, 0, None)],
            cur: 0,
            in_header: true,
            frames: Vec::new(),
            line: Vec::new(),
            line_len: 0,
            last_cr: false,
            raw: 0,
            pres: 0,
            index: 0,
            prev_term: 0,
            prev_content: 0,
            field: None,
            field_kept: false,
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            match chunk.iter().position(|&c| c == b'\n') {
                Some(p) => {
                    self.take(&chunk[..p]);
                    self.end_line(true);
                    chunk = &chunk[p + 1..];
                }
                None => {
                    self.take(chunk);
                    chunk = &[];
                }
            }
        }
    }

    fn keep_limit(&self) -> usize {
        if self.in_header {
            MAX_FIELD
        } else {
            MAX_BOUNDARY_LINE
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = self.keep_limit().saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.line_len += bytes.len() as u64;
        if let Some(&last) = bytes.last() {
            self.last_cr = last == b'\r';
        }
    }

    fn end_line(&mut self, terminated: bool) {
        let cr = terminated && self.last_cr && self.line_len > 0;
        if cr && self.line_len == self.line.len() as u64 {
            self.line.pop();
        }
        let content = self.line_len - u64::from(cr);
        let term = if terminated { 1 + u64::from(cr) } else { 0 };
        let line = std::mem::take(&mut self.line);
        self.process(&line, content, term);
        let pres_len = content + if terminated { 2 } else { 0 };
        self.raw += content + term;
        self.pres += pres_len;
        if terminated {
            self.index += 1;
        }
        self.prev_term = term;
        self.prev_content = content;
        self.line = line;
        self.line.clear();
        self.line_len = 0;
        self.last_cr = false;
    }

    /// Which open multipart, if any, this line is a delimiter of, and
    /// whether it is the close delimiter (RFC 2046 5.1.1).
    fn delimiter(&self, line: &[u8]) -> Option<(usize, bool)> {
        let rest = line.strip_prefix(b"--")?;
        for (k, (b, _)) in self.frames.iter().enumerate().rev() {
            if let Some(after) = rest.strip_prefix(b.as_slice()) {
                let (close, tail) = match after.strip_prefix(b"--") {
                    Some(t) => (true, t),
                    None => (false, after),
                };
                if tail.iter().all(|&c| c == b' ' || c == b'\t') {
                    return Some((k, close));
                }
            }
        }
        None
    }

    /// Ends part `p` just before the current line (whose preceding line
    /// break belongs to the delimiter).
    fn close_before_line(&mut self, p: usize) {
        let (raw0, pres0, idx0) = self.parts[p].body_at;
        let part = &mut self.parts[p];
        if self.index == idx0 {
            part.body = Span {
                raw_start: raw0,
                raw_end: raw0,
                size: 0,
            };
            part.body_lines = 0;
        } else {
            part.body = Span {
                raw_start: raw0,
                raw_end: self.raw - self.prev_term,
                size: self.pres - 2 - pres0,
            };
            // Dovecot's count: the line breaks inside the body.
            part.body_lines = self.index - idx0 - 1;
        }
    }

    /// Ends part `p` at the end of input.
    fn close_at_end(&mut self, p: usize) {
        let (raw0, pres0, idx0) = self.parts[p].body_at;
        let part = &mut self.parts[p];
        part.body = Span {
            raw_start: raw0,
            raw_end: self.raw,
            size: self.pres - pres0,
        };
        part.body_lines = self.index.saturating_sub(idx0);
    }

    fn finish_header(&mut self, header_end_raw: u64, header_end_pres: u64) {
        self.flush_field();
        let p = self.cur;
        let part = &mut self.parts[p];
        part.header.raw_end = header_end_raw;
        part.header.size = header_end_pres - part.header.size;
        part.body_at = (header_end_raw, header_end_pres, self.index + 1);
        self.in_header = false;
    }

    fn process(&mut self, line: &[u8], content: u64, term: u64) {
        let terminated = term > 0;
        if let Some((k, close)) = self.delimiter(line) {
            if self.in_header {
                // A part that ends inside its header: all header, no body.
                // Its last line break belongs to the delimiter, as for bodies.
                self.flush_field();
                let first_line = self.parts[self.cur].body_at.2;
                let part = &mut self.parts[self.cur];
                if self.index > first_line {
                    part.header.raw_end = self.raw - self.prev_term;
                    part.header.size = self.pres - 2 - part.header.size;
                } else {
                    part.header.raw_end = self.raw;
                    part.header.size = self.pres - part.header.size;
                }
                part.body_at = (self.raw, self.pres, self.index);
                self.in_header = false;
            }
            let multipart = self.frames[k].1;
            // Close every part from the current one up to the multipart.
            let mut p = self.cur;
            while p != multipart {
                self.close_before_line(p);
                match self.parts[p].parent {
                    Some(up) => p = up,
                    None => break,
                }
            }
            self.frames.truncate(k + 1);
            if close {
                self.frames.pop();
                self.cur = multipart;
            } else if self.parts.len() < MAX_PARTS {
                let start_raw = self.raw + content + term;
                let start_pres = self.pres + content + if terminated { 2 } else { 0 };
                let child = self.parts.len();
                let mut part = new_part(start_raw, start_pres, Some(multipart));
                part.body_at = (start_raw, start_pres, self.index + 1);
                self.parts.push(part);
                if let Kind::Multipart(children) = &mut self.parts[multipart].kind {
                    children.push(child);
                }
                self.cur = child;
                self.in_header = true;
            } else {
                self.cur = multipart;
            }
            return;
        }
        if !self.in_header {
            return;
        }
        if line.is_empty() && terminated {
            let end_raw = self.raw + content + term;
            let end_pres = self.pres + 2;
            self.finish_header(end_raw, end_pres);
            self.start_body();
            return;
        }
        // A header line: a new field, or the continuation of one.
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if self.field_kept {
                if let Some((_, v)) = &mut self.field {
                    let room = MAX_FIELD.saturating_sub(v.len());
                    v.extend_from_slice(&line[..line.len().min(room)]);
                }
            }
            return;
        }
        self.flush_field();
        if let Some(colon) = line.iter().position(|&c| c == b':') {
            let name = String::from_utf8_lossy(trim(&line[..colon])).to_ascii_lowercase();
            let part = &self.parts[self.cur];
            self.field_kept = KEPT.contains(&name.as_str())
                && part.field(&name).is_none()
                && part.fields.len() < MAX_FIELDS;
            if self.field_kept {
                self.field = Some((name, line[colon + 1..].to_vec()));
            }
        }
    }

    fn flush_field(&mut self) {
        if let Some((name, v)) = self.field.take() {
            let v = trim(&v).to_vec();
            self.parts[self.cur].fields.push((name, v));
        }
        self.field_kept = false;
    }

    /// The header of the current part just ended: set up its body.
    fn start_body(&mut self) {
        let p = self.cur;
        let depth = self.depth(p);
        let in_digest = self.parts[p].parent.is_some_and(|up| {
            self.parts[up]
                .field("content-type")
                .is_some_and(|v| parse_params(v).0.eq_ignore_ascii_case(b"multipart/digest"))
        });
        if depth >= MAX_MIME_DEPTH || self.parts.len() >= MAX_PARTS {
            return;
        }
        if let Some(b) = boundary_of(&self.parts[p]) {
            self.parts[p].kind = Kind::Multipart(Vec::new());
            self.frames.push((b, p));
        } else if is_message_rfc822(&self.parts[p], in_digest) {
            let (raw, pres, idx) = self.parts[p].body_at;
            let inner = self.parts.len();
            let mut part = new_part(raw, pres, Some(p));
            part.body_at = (raw, pres, idx);
            self.parts.push(part);
            self.parts[p].kind = Kind::Message(inner);
            self.cur = inner;
            self.in_header = true;
        }
    }

    fn depth(&self, mut p: usize) -> usize {
        let mut d = 0;
        while let Some(up) = self.parts[p].parent {
            d += 1;
            p = up;
        }
        d
    }

    /// The structure, once every byte was fed.
    pub fn finish(mut self) -> Structure {
        if self.line_len > 0 {
            self.end_line(false);
        }
        if self.in_header {
            // No blank line: all header, empty body.
            self.flush_field();
            let part = &mut self.parts[self.cur];
            part.header.raw_end = self.raw;
            part.header.size = self.pres - part.header.size;
            part.body_at = (self.raw, self.pres, self.index);
        }
        let mut p = Some(self.cur);
        while let Some(q) = p {
            self.close_at_end(q);
            p = self.parts[q].parent;
        }
        // Parts closed at a delimiter keep their values; the rest were
        // closed above (the chain from the current part up to the root).
        Structure { parts: self.parts }
    }
}

/// A part whose header starts here. `header.size` holds the presented
/// start until the header ends (then its size).
fn new_part(raw: u64, pres: u64, parent: Option<usize>) -> Part {
    Part {
        header: Span {
            raw_start: raw,
            raw_end: raw,
            size: pres,
        },
        body: Span::default(),
        body_lines: 0,
        fields: Vec::new(),
        kind: Kind::Leaf,
        parent,
        body_at: (raw, pres, 0),
    }
}

/// Presents stored bytes as IMAP sends them: every LF not after a CR
/// becomes CRLF; then only the `<origin.count>` window is passed on.
#[derive(Debug)]
pub struct Presenter {
    skip: u64,
    left: u64,
    last_cr: bool,
}

impl Presenter {
    /// `partial`: RFC 3501 `<origin.count>`; `None` for all of it.
    pub fn new(partial: Option<(u32, u32)>) -> Presenter {
        match partial {
            Some((o, n)) => Presenter {
                skip: u64::from(o),
                left: u64::from(n),
                last_cr: false,
            },
            None => Presenter {
                skip: 0,
                left: u64::MAX,
                last_cr: false,
            },
        }
    }

    /// The presented length of a section of `size` bytes.
    pub fn length(partial: Option<(u32, u32)>, size: u64) -> u64 {
        match partial {
            Some((o, n)) => size.saturating_sub(u64::from(o)).min(u64::from(n)),
            None => size,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        let mut b = bytes;
        if self.skip > 0 {
            let s = (self.skip.min(b.len() as u64)) as usize;
            self.skip -= s as u64;
            b = &b[s..];
        }
        let n = (self.left.min(b.len() as u64)) as usize;
        out.extend_from_slice(&b[..n]);
        self.left -= n as u64;
    }

    /// Adds the presented form of the next stored bytes to `out`.
    pub fn feed(&mut self, out: &mut Vec<u8>, chunk: &[u8]) {
        let mut start = 0;
        for (i, &c) in chunk.iter().enumerate() {
            if c == b'\n'
                && !(if i == 0 {
                    self.last_cr
                } else {
                    chunk[i - 1] == b'\r'
                })
            {
                self.emit(out, &chunk[start..i]);
                self.emit(out, b"\r\n");
                start = i + 1;
            }
        }
        self.emit(out, &chunk[start..]);
        if let Some(&l) = chunk.last() {
            self.last_cr = l == b'\r';
        }
    }

    pub fn done(&self) -> bool {
        self.left == 0
    }
}

/// Filters a header for HEADER.FIELDS / HEADER.FIELDS.NOT, streaming:
/// fields (with their continuation lines) whose name is (or is not) in
/// `names`, then the blank line, presented with CRLF. Feed the stored
/// header bytes; the output's length is known only at the end, so a
/// caller that must announce it first runs the filter twice.
#[derive(Debug)]
pub struct HeaderFilter {
    names: Vec<Vec<u8>>,
    not: bool,
    /// Whether the field being read is passed on.
    keep: bool,
    /// The start of the current line, until its name is known.
    pending: Vec<u8>,
    at_line_start: bool,
    ended: bool,
    kept_any: bool,
}

/// A field name is at most this long for matching; longer never match.
const MAX_FIELD_NAME: usize = 256;

impl HeaderFilter {
    pub fn new(names: &[String], not: bool) -> HeaderFilter {
        HeaderFilter {
            names: names
                .iter()
                .map(|n| n.trim().as_bytes().to_ascii_lowercase())
                .collect(),
            not,
            keep: false,
            pending: Vec::new(),
            at_line_start: true,
            ended: false,
            kept_any: false,
        }
    }

    fn decide(&mut self, name_part: &[u8]) {
        let name = trim(name_part).to_ascii_lowercase();
        let listed = self.names.contains(&name);
        self.keep = listed != self.not;
        self.kept_any |= self.keep;
    }

    /// Feeds stored header bytes; passes kept bytes to `out`, CRLF ends.
    pub fn feed(&mut self, out: &mut Vec<u8>, chunk: &[u8]) {
        for &c in chunk {
            if self.ended {
                return;
            }
            if self.at_line_start {
                // Collect the line's start until ':' or the line ends.
                if c == b'\n' {
                    let line = std::mem::take(&mut self.pending);
                    let l = line.strip_suffix(b"\r").unwrap_or(&line);
                    if l.is_empty() {
                        self.ended = true;
                        out.extend_from_slice(b"\r\n");
                        return;
                    }
                    if !matches!(l.first(), Some(b' ' | b'\t')) {
                        self.decide(l.split(|&b| b == b':').next().unwrap_or(b""));
                    }
                    if self.keep {
                        out.extend_from_slice(l);
                        out.extend_from_slice(b"\r\n");
                    }
                    continue;
                }
                self.pending.push(c);
                let continuation = matches!(self.pending.first(), Some(b' ' | b'\t'));
                if continuation || c == b':' || self.pending.len() > MAX_FIELD_NAME {
                    if !continuation {
                        let name = if c == b':' {
                            &self.pending[..self.pending.len() - 1]
                        } else {
                            &b"\0"[..]
                        };
                        let name = name.to_vec();
                        self.decide(&name);
                    }
                    if self.keep {
                        out.extend_from_slice(&self.pending);
                    }
                    self.pending.clear();
                    self.at_line_start = false;
                }
                continue;
            }
            if c == b'\n' {
                if self.keep {
                    if out.last() != Some(&b'\r') {
                        out.push(b'\r');
                    }
                    out.push(b'\n');
                }
                self.at_line_start = true;
            } else if self.keep {
                out.push(c);
            }
        }
    }

    /// Ends the filter. A header without its blank line gets one only if
    /// some field was kept (as Dovecot does).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() && !matches!(pending.first(), Some(b' ' | b'\t')) {
            self.decide(pending.split(|&b| b == b':').next().unwrap_or(b""));
        }
        if self.keep && !pending.is_empty() {
            out.extend_from_slice(&pending);
            self.kept_any = true;
        }
        if self.keep && (!self.at_line_start || !pending.is_empty()) {
            out.extend_from_slice(b"\r\n");
        }
        if self.kept_any {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Filters a whole header in memory (small headers, tests).
pub fn filter_header(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut f = HeaderFilter::new(names, not);
    let mut out = Vec::new();
    f.feed(&mut out, header);
    f.finish(&mut out);
    out
}

/// Structure of a message held in memory (tests, small messages).
pub fn structure(message: &[u8]) -> Structure {
    let mut b = StructureBuilder::new();
    b.feed(message);
    b.finish()
}

#[cfg(test)]
#[path = "mime_tests.rs"]
mod tests;
