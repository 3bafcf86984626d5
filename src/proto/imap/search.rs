//! SEARCH matching (RFC 3501 6.4.4, RFC 7162 3.1.5) for one message.
//!
//! Owns: deciding whether a message matches a [`SearchKey`], from what
//! the session knows without reading the message ([`MessageMeta`]: flags,
//! size, dates, UID, modseq) and, only when the key needs it, from one
//! streaming pass over the stored bytes ([`ContentScan`]: header fields,
//! Date, BODY and TEXT substrings). Memory is bounded by the key, not the
//! message.
//!
//! Matching is case-insensitive (Unicode lower case for header values,
//! which are RFC 2047-decoded first; ASCII case for bodies), on the
//! message as presented (CRLF line ends). Bodies are searched as stored: base64 or quoted-printable parts are not decoded
//! (Dovecot decodes them; this is a known gap).
//!
//! Must not: read files or know the mailbox; the caller feeds bytes.

use super::mime::{parse_addresses, Presenter};
use super::types::{civil_from_unix, days_from_civil, Date, Flag, SearchKey, MONTHS};

/// Longest unfolded header field searched; the rest of a longer field is
/// not looked at (bounded memory on hostile headers).
const MAX_SEARCH_FIELD: usize = 16 * 1024;

/// What the session knows about a message.
#[derive(Debug, Clone)]
pub struct MessageMeta<'a> {
    pub seq: u32,
    pub uid: u32,
    /// The largest sequence number and UID in the mailbox (`*`).
    pub max_seq: u32,
    pub max_uid: u32,
    pub flags: &'a [Flag],
    pub recent: bool,
    /// RFC822.SIZE.
    pub size: u64,
    /// INTERNALDATE as a UNIX time, and the server's zone for the
    /// date-only comparisons of BEFORE/ON/SINCE (RFC 3501 6.4.4).
    pub internal_date: i64,
    pub zone_minutes: i16,
    pub modseq: u64,
}

impl MessageMeta<'_> {
    fn has(&self, f: &Flag) -> bool {
        self.flags.iter().any(|g| g.same(f))
    }
}

/// Whether the key needs the message's content (header or body).
pub fn needs_content(key: &SearchKey) -> bool {
    use SearchKey as K;
    match key {
        K::Bcc(_)
        | K::Body(_)
        | K::Cc(_)
        | K::From(_)
        | K::Header(..)
        | K::Subject(_)
        | K::Text(_)
        | K::To(_)
        | K::SentBefore(_)
        | K::SentOn(_)
        | K::SentSince(_) => true,
        K::Not(k) => needs_content(k),
        K::Or(a, b) => needs_content(a) || needs_content(b),
        K::And(v) => v.iter().any(needs_content),
        _ => false,
    }
}

/// Whether the key uses MODSEQ (then the response carries the highest
/// modseq, RFC 7162 3.1.5).
pub fn uses_modseq(key: &SearchKey) -> bool {
    match key {
        SearchKey::ModSeq(_) => true,
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::And(v) => v.iter().any(uses_modseq),
        _ => false,
    }
}

/// One thing to look for in the content, in key order.
#[derive(Debug, Clone)]
enum Needle {
    /// A header field (lower-case name) containing a lower-case string.
    Header(String, String),
    /// In the body only, or in the whole message.
    Bytes { text: Vec<u8>, whole: bool },
    /// The Date header's date.
    SentDate,
}

fn collect(key: &SearchKey, out: &mut Vec<Needle>) {
    use SearchKey as K;
    let header = |out: &mut Vec<Needle>, name: &str, s: &str| {
        out.push(Needle::Header(name.to_ascii_lowercase(), s.to_lowercase()))
    };
    match key {
        K::Bcc(s) => header(out, "bcc", s),
        K::Cc(s) => header(out, "cc", s),
        K::From(s) => header(out, "from", s),
        K::To(s) => header(out, "to", s),
        K::Subject(s) => header(out, "subject", s),
        K::Header(n, s) => header(out, n, s),
        K::Body(s) => out.push(Needle::Bytes {
            text: s.as_bytes().to_ascii_lowercase(),
            whole: false,
        }),
        K::Text(s) => out.push(Needle::Bytes {
            text: s.as_bytes().to_ascii_lowercase(),
            whole: true,
        }),
        K::SentBefore(_) | K::SentOn(_) | K::SentSince(_) => out.push(Needle::SentDate),
        K::Not(k) => collect(k, out),
        K::Or(a, b) => {
            collect(a, out);
            collect(b, out);
        }
        K::And(v) => v.iter().for_each(|k| collect(k, out)),
        _ => {}
    }
}

/// A substring search over a stream, with the last `len - 1` bytes kept
/// so a match across chunks is found.
#[derive(Debug, Clone)]
struct Stream {
    needle: Vec<u8>,
    carry: Vec<u8>,
    found: bool,
}

impl Stream {
    fn new(needle: Vec<u8>) -> Stream {
        Stream {
            found: needle.is_empty(),
            needle,
            carry: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        if self.found {
            return;
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend(chunk.iter().map(u8::to_ascii_lowercase));
        let n = self.needle.len();
        if buf.len() >= n && buf.windows(n).any(|w| w == self.needle.as_slice()) {
            self.found = true;
            return;
        }
        let keep = buf.len().min(n - 1);
        self.carry = buf[buf.len() - keep..].to_vec();
    }
}

/// What the content pass found, one answer per needle in key order.
#[derive(Debug, Clone, Default)]
pub struct ContentFacts {
    found: Vec<bool>,
    sent: Option<Date>,
}

/// One streaming pass over a stored message for the key's content tests.
#[derive(Debug)]
pub struct ContentScan {
    needles: Vec<Needle>,
    /// Per needle: a stream for byte needles, or a header verdict.
    streams: Vec<Option<Stream>>,
    headers_found: Vec<bool>,
    in_header: bool,
    /// The header line being read (for the header part only), and the
    /// unfolded field it belongs to.
    line: Vec<u8>,
    field: Vec<u8>,
    sent: Option<Date>,
    date_seen: bool,
    /// Bytes are searched as presented (CRLF), like a client sees them.
    whole_view: Presenter,
    body_view: Presenter,
}

impl ContentScan {
    pub fn new(key: &SearchKey) -> ContentScan {
        let mut needles = Vec::new();
        collect(key, &mut needles);
        let streams = needles
            .iter()
            .map(|n| match n {
                Needle::Bytes { text, .. } => Some(Stream::new(text.clone())),
                _ => None,
            })
            .collect();
        ContentScan {
            headers_found: vec![false; needles.len()],
            needles,
            streams,
            in_header: true,
            line: Vec::new(),
            field: Vec::new(),
            sent: None,
            date_seen: false,
            whole_view: Presenter::new(None),
            body_view: Presenter::new(None),
        }
    }

    /// Feeds the next stored bytes.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut view = Vec::with_capacity(chunk.len() + chunk.len() / 32);
        self.whole_view.feed(&mut view, chunk);
        for (n, s) in self.needles.iter().zip(self.streams.iter_mut()) {
            if let (Needle::Bytes { whole: true, .. }, Some(s)) = (n, s) {
                s.feed(&view);
            }
        }
        let mut rest = chunk;
        while self.in_header && !rest.is_empty() {
            let (part, nl) = match rest.iter().position(|&c| c == b'\n') {
                Some(p) => (&rest[..p], true),
                None => (rest, false),
            };
            rest = if nl { &rest[part.len() + 1..] } else { &[] };
            let room = MAX_SEARCH_FIELD.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            if nl {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.header_line(&line);
            }
        }
        if !self.in_header && !rest.is_empty() {
            view.clear();
            self.body_view.feed(&mut view, rest);
            for (n, s) in self.needles.iter().zip(self.streams.iter_mut()) {
                if let (Needle::Bytes { whole: false, .. }, Some(s)) = (n, s) {
                    s.feed(&view);
                }
            }
        }
    }

    fn header_line(&mut self, line: &[u8]) {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            let room = MAX_SEARCH_FIELD.saturating_sub(self.field.len());
            self.field.extend_from_slice(&line[..line.len().min(room)]);
            return;
        }
        self.end_field();
        if line.is_empty() {
            self.in_header = false;
        } else {
            self.field = line.to_vec();
        }
    }

    fn end_field(&mut self) {
        let field = std::mem::take(&mut self.field);
        let Some(colon) = field.iter().position(|&c| c == b':') else {
            return;
        };
        let name = String::from_utf8_lossy(&field[..colon])
            .trim()
            .to_ascii_lowercase();
        let mut value: Option<String> = None;
        let mut addresses: Option<String> = None;
        let is_address = ADDRESS_FIELDS.contains(&name.as_str());
        for (i, n) in self.needles.iter().enumerate() {
            if let Needle::Header(want, s) = n {
                if *want == name && !self.headers_found[i] {
                    let v = value.get_or_insert_with(|| decoded_value(&field).to_lowercase());
                    self.headers_found[i] = v.contains(s.as_str())
                        || (is_address
                            && addresses
                                .get_or_insert_with(|| addresses_text(v))
                                .contains(s.as_str()));
                }
            }
        }
        if name == "date" && !self.date_seen {
            self.date_seen = true;
            self.sent = parse_rfc5322_date(&field[colon + 1..]);
        }
    }

    /// Ends the pass (also for a message without a body).
    pub fn finish(mut self) -> ContentFacts {
        if self.in_header {
            let line = std::mem::take(&mut self.line);
            if !line.is_empty() {
                self.header_line(&line);
            }
            self.end_field();
        }
        let found = self
            .needles
            .iter()
            .enumerate()
            .map(|(i, n)| match n {
                Needle::Header(..) => self.headers_found[i],
                Needle::Bytes { .. } => self.streams[i].as_ref().is_some_and(|s| s.found),
                Needle::SentDate => false,
            })
            .collect();
        ContentFacts {
            found,
            sent: self.sent,
        }
    }
}

/// A header field's value, RFC 2047 words decoded (mailparse), unfolded.
/// Fields whose value is an address list: SEARCH FROM etc. also match
/// the addresses with comments and white space taken out, as Dovecot does
/// (`<user (c)@ (c) domain.org>` is found by `FROM user@domain.org`).
const ADDRESS_FIELDS: &[&str] = &["from", "to", "cc", "bcc", "sender", "reply-to"];

/// An address list written back plainly: `name <mailbox@host>, ...`.
fn addresses_text(value: &str) -> String {
    let mut out = String::new();
    fn part(b: &Option<Vec<u8>>) -> Option<std::borrow::Cow<'_, str>> {
        b.as_deref().map(String::from_utf8_lossy)
    }
    for a in parse_addresses(value.as_bytes()) {
        if !out.is_empty() {
            out.push_str(", ");
        }
        if let Some(n) = part(&a.name) {
            out.push_str(&n);
            out.push(' ');
        }
        match (part(&a.mailbox), part(&a.host)) {
            (Some(m), Some(h)) => {
                out.push('<');
                out.push_str(&m);
                out.push('@');
                out.push_str(&h);
                out.push('>');
            }
            (Some(m), None) => out.push_str(&m),
            _ => {}
        }
    }
    out
}

fn decoded_value(field: &[u8]) -> String {
    match mailparse::parse_header(field) {
        Ok((h, _)) => h.get_value(),
        Err(_) => String::from_utf8_lossy(field).into_owned(),
    }
}

/// The date part of an RFC 5322 Date (time and zone disregarded, as
/// RFC 3501 6.4.4 says for SENT*): `[Day,] DD Mon YYYY ...`.
pub fn parse_rfc5322_date(v: &[u8]) -> Option<Date> {
    let s = String::from_utf8_lossy(v);
    let s = match s.find(',') {
        Some(c) => s[c + 1..].to_string(),
        None => s.into_owned(),
    };
    let mut it = s.split_whitespace();
    let day: u8 = it.next()?.parse().ok()?;
    let mon = it.next()?.get(..3)?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(mon))? as u8 + 1;
    let y: u16 = it.next()?.parse().ok()?;
    // RFC 5322 4.3: two-digit years.
    let year = match y {
        0..=49 => 2000 + y,
        50..=999 => 1900 + y,
        _ => y,
    };
    if day == 0 || day > 31 {
        return None;
    }
    Some(Date { year, month, day })
}

/// Whether the message matches. `facts` must come from a [`ContentScan`]
/// of this key when [`needs_content`] says so (else content keys fail).
pub fn matches(key: &SearchKey, meta: &MessageMeta, facts: Option<&ContentFacts>) -> bool {
    let mut idx = 0;
    let empty = ContentFacts::default();
    eval(key, meta, facts.unwrap_or(&empty), &mut idx)
}

fn eval(key: &SearchKey, m: &MessageMeta, f: &ContentFacts, idx: &mut usize) -> bool {
    use SearchKey as K;
    let internal = || civil_from_unix(m.internal_date, m.zone_minutes);
    let mut next = || {
        let v = f.found.get(*idx).copied().unwrap_or(false);
        *idx += 1;
        v
    };
    // Without a valid Date header, the internal date stands in (Dovecot).
    let sent = || f.sent.unwrap_or_else(internal);
    let day = |d: Date| days_from_civil(d);
    match key {
        K::All => true,
        K::Answered => m.has(&Flag::Answered),
        K::Deleted => m.has(&Flag::Deleted),
        K::Draft => m.has(&Flag::Draft),
        K::Flagged => m.has(&Flag::Flagged),
        K::Seen => m.has(&Flag::Seen),
        K::Recent => m.recent,
        K::New => m.recent && !m.has(&Flag::Seen),
        K::Old => !m.recent,
        K::Unanswered => !m.has(&Flag::Answered),
        K::Undeleted => !m.has(&Flag::Deleted),
        K::Undraft => !m.has(&Flag::Draft),
        K::Unflagged => !m.has(&Flag::Flagged),
        K::Unseen => !m.has(&Flag::Seen),
        K::Keyword(k) => m.has(&Flag::from_atom(false, k)),
        K::Unkeyword(k) => !m.has(&Flag::from_atom(false, k)),
        K::Larger(n) => m.size > u64::from(*n),
        K::Smaller(n) => m.size < u64::from(*n),
        K::Before(d) => day(internal()) < day(*d),
        K::On(d) => day(internal()) == day(*d),
        K::Since(d) => day(internal()) >= day(*d),
        K::SentBefore(d) => {
            next();
            day(sent()) < day(*d)
        }
        K::SentOn(d) => {
            next();
            day(sent()) == day(*d)
        }
        K::SentSince(d) => {
            next();
            day(sent()) >= day(*d)
        }
        K::Bcc(_) | K::Cc(_) | K::From(_) | K::To(_) | K::Subject(_) | K::Header(..) => next(),
        K::Body(_) | K::Text(_) => next(),
        K::Uid(set) => set.contains(m.uid, m.max_uid),
        K::SeqSet(set) => set.contains(m.seq, m.max_seq),
        K::ModSeq(n) => m.modseq >= *n,
        K::Not(k) => !eval(k, m, f, idx),
        K::Or(a, b) => {
            // Both sides are evaluated so the needle order stays in step.
            let x = eval(a, m, f, idx);
            let y = eval(b, m, f, idx);
            x || y
        }
        K::And(v) => {
            // No short cut: every needle must be stepped over.
            let mut all = true;
            for k in v {
                all &= eval(k, m, f, idx);
            }
            all
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::imap::parser::parse_command;
    use crate::proto::imap::types::CommandBody;

    const MSG: &[u8] = b"From: \"Smith, Bob\" <bob@example.test>\n\
To: alice@example.test\n\
Subject: =?ISO-8859-1?Q?Gr=FC=DFe?= aus\n Berlin\n\
Date: Tue, 1 Dec 2026 23:59:58 -0800\n\
X-Spam: yes\n\
\n\
Hello World, the quick brown\nfox jumps.\n";

    fn key(s: &str) -> SearchKey {
        match parse_command(format!("t SEARCH {s}").as_bytes())
            .expect("parses")
            .body
        {
            CommandBody::Search { key, .. } => key,
            other => panic!("{other:?}"),
        }
    }

    fn run(k: &str, chunk: usize) -> bool {
        let flags = [Flag::Seen, Flag::Keyword("$Forwarded".into())];
        let meta = MessageMeta {
            seq: 3,
            uid: 30,
            max_seq: 5,
            max_uid: 50,
            flags: &flags,
            recent: true,
            size: MSG.len() as u64 + 8,
            // 2026-12-02 10:00:00 UTC
            internal_date: 1_796_205_600,
            zone_minutes: 0,
            modseq: 77,
        };
        let key = key(k);
        let facts = needs_content(&key).then(|| {
            let mut scan = ContentScan::new(&key);
            for c in MSG.chunks(chunk) {
                scan.feed(c);
            }
            scan.finish()
        });
        matches(&key, &meta, facts.as_ref())
    }

    /// imaptest search-addresses (imap-findings F9): comments and white
    /// space inside an address do not hide it from FROM/TO/CC/BCC.
    #[test]
    fn address_with_comments_is_found() {
        let msg: &[u8] = b"From: <user-from (comment)@ (comment) domain.org>\n\
To: Some One <one@to.example> (x), \"Two\" <two (c) @ to.example>\n\
Subject: user-from@domain.org is not here\n\
\n\
body\n";
        let found = |k: &str| {
            let key = key(k);
            let meta = MessageMeta {
                seq: 1,
                uid: 1,
                max_seq: 1,
                max_uid: 1,
                flags: &[],
                recent: false,
                size: msg.len() as u64,
                internal_date: 0,
                zone_minutes: 0,
                modseq: 1,
            };
            let mut scan = ContentScan::new(&key);
            for c in msg.chunks(7) {
                scan.feed(c);
            }
            matches(&key, &meta, Some(&scan.finish()))
        };
        assert!(found("FROM user-from@domain.org"));
        assert!(found("FROM \"<user-from@domain.org>\""));
        assert!(found("FROM \"(comment)\""), "the raw text still matches");
        assert!(found("TO two@to.example"));
        assert!(found("TO \"Some One <one@to.example>\""));
        assert!(!found("FROM two@to.example"));
        assert!(!found("CC user-from@domain.org"));
        // Only address fields are normalised.
        assert!(!found("SUBJECT \"user-from@domain.org is here\""));
    }

    #[test]
    fn table() {
        let rows: &[(&str, bool)] = &[
            ("ALL", true),
            ("SEEN", true),
            ("UNSEEN", false),
            ("RECENT", true),
            ("NEW", false),
            ("OLD", false),
            ("FLAGGED", false),
            ("UNFLAGGED", true),
            ("KEYWORD $forwarded", true),
            ("UNKEYWORD $Forwarded", false),
            ("KEYWORD $Junk", false),
            ("3", true),
            ("1:2,4:*", false),
            ("*", false),
            ("3:*", true),
            ("UID 30", true),
            ("UID 31:*", false),
            ("UID *", false),
            ("LARGER 10", true),
            ("SMALLER 10", false),
            ("MODSEQ 77", true),
            ("MODSEQ 78", false),
            ("FROM smith", true),
            ("FROM \"bob@EXAMPLE\"", true),
            ("FROM alice", false),
            ("TO alice", true),
            ("CC alice", false),
            ("BCC x", false),
            // RFC 2047 decoded, folded lines joined.
            ("CHARSET UTF-8 SUBJECT {7}\r\ngrüße", true),
            ("SUBJECT \"aus Berlin\"", true),
            ("SUBJECT Gr=FC", false),
            ("HEADER X-Spam YES", true),
            ("HEADER x-spam \"\"", true),
            ("HEADER X-Other \"\"", false),
            ("BODY \"quick BROWN\"", true),
            ("BODY {10}\r\nbrown\r\nfox", true),
            ("BODY smith", false),
            ("TEXT smith", true),
            ("TEXT FOX", true),
            ("TEXT wolf", false),
            // Date: header date, zone disregarded: 1 Dec 2026.
            ("SENTON 1-Dec-2026", true),
            ("SENTSINCE 2-Dec-2026", false),
            ("SENTBEFORE 2-Dec-2026", true),
            // INTERNALDATE: 2 Dec 2026.
            ("ON 2-Dec-2026", true),
            ("SINCE 3-Dec-2026", false),
            ("BEFORE 3-Dec-2026", true),
            ("NOT SEEN", false),
            ("OR UNSEEN FROM bob", true),
            ("OR FROM alice BODY wolf", false),
            ("(SEEN FROM bob) NOT TO carol", true),
            ("NOT (SEEN TEXT wolf)", true),
            ("OR NOT BODY fox SUBJECT berlin", true),
        ];
        for (k, want) in rows {
            for chunk in [1, 3, 1000] {
                assert_eq!(run(k, chunk), *want, "{k} (chunks of {chunk})");
            }
        }
    }

    #[test]
    fn dates() {
        let d = |s: &str| parse_rfc5322_date(s.as_bytes());
        assert_eq!(
            d(" Tue, 1 Dec 2026 09:59:58 +0100"),
            Some(Date {
                year: 2026,
                month: 12,
                day: 1
            })
        );
        assert_eq!(
            d("1 jan 99 00:00 GMT"),
            Some(Date {
                year: 1999,
                month: 1,
                day: 1
            })
        );
        assert_eq!(d("garbage"), None);
        assert_eq!(d("Mon, 40 Jan 2020"), None);
    }
}
