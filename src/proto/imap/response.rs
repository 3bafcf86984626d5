//! IMAP response encoding (RFC 3501 7 and 9, with the response codes and
//! untagged data of RFC 4315, 4731, 5530, 7162, 7889).
//!
//! Owns: how every value goes on the wire: quoted string or literal,
//! atom or string, NIL, flag lists, sequence sets, dates; and the lines
//! themselves: tagged and untagged status, EXISTS/RECENT/EXPUNGE/
//! VANISHED, FETCH framing, SEARCH/ESEARCH, STATUS, LIST, CAPABILITY.
//!
//! Must not: decide what to answer. The session picks the responses;
//! this only writes them, always as valid syntax whatever the data.

use super::types::{
    civil_from_unix, FetchAttr, Flag, MailboxName, SectionText, StatusItem, MONTHS,
};
use super::utf7;

/// Longest string sent quoted; longer ones go as literals, which need no
/// escaping and cannot be misread by a client with a short line buffer.
const MAX_QUOTED: usize = 1024;

/// Bytes allowed inside a quoted string (RFC 3501 9 QUOTED-CHAR, less
/// the two that need escaping, which `string` escapes).
fn quotable(c: u8) -> bool {
    (0x20..0x7f).contains(&c)
}

fn is_atom_char(c: u8) -> bool {
    c > 0x20 && c < 0x7f && !b"(){%*\"\\]".contains(&c)
}

/// A string (RFC 3501 9 `string`): quoted when it can be, else a literal.
/// Strings with `"` or `\\` go as literals too, as Dovecot sends them:
/// clients' quoted-string parsers differ on escapes, literals are exact.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    if s.len() <= MAX_QUOTED && s.iter().all(|&c| quotable(c) && c != b'"' && c != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s);
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

/// `{n}` CRLF and the bytes.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    literal_head(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// `{n}` CRLF, for data the caller streams after it.
pub fn literal_head(out: &mut Vec<u8>, len: u64) {
    out.extend_from_slice(format!("{{{len}}}\r\n").as_bytes());
}

/// `nstring`: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// `astring`: an atom when it is one (and not NIL, which a client could
/// read as nil where an nstring is also allowed), else a string.
pub fn astring(out: &mut Vec<u8>, s: &[u8]) {
    if !s.is_empty()
        && !s.eq_ignore_ascii_case(b"NIL")
        && s.iter().all(|&c| is_atom_char(c) || c == b']')
    {
        out.extend_from_slice(s);
    } else {
        string(out, s);
    }
}

/// A mailbox name, modified UTF-7 encoded. Always quoted (as Dovecot
/// does), so names with spaces or `]` read the same in every client.
pub fn mailbox(out: &mut Vec<u8>, name: &MailboxName) {
    string(out, utf7::encode(&name.0).as_bytes());
}

pub fn flag_list<'a>(out: &mut Vec<u8>, flags: impl IntoIterator<Item = &'a Flag>) {
    out.push(b'(');
    for (i, f) in flags.into_iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(f.as_str().as_bytes());
    }
    out.push(b')');
}

/// Sorted, deduplicated numbers as a compact sequence set (`1:3,7`).
pub fn seq_set(out: &mut Vec<u8>, nums: &[u32]) {
    let mut v = nums.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut i = 0;
    let mut first = true;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        if !first {
            out.push(b',');
        }
        first = false;
        if start == end {
            out.extend_from_slice(start.to_string().as_bytes());
        } else {
            out.extend_from_slice(format!("{start}:{end}").as_bytes());
        }
        i += 1;
    }
}

/// Numbers in the order given (COPYUID pairs source and destination UIDs
/// by position, RFC 4315 3, so they must not be sorted).
pub fn ordered_set(out: &mut Vec<u8>, nums: &[u32]) {
    let mut i = 0;
    while i < nums.len() {
        let start = nums[i];
        let mut end = start;
        while i + 1 < nums.len() && nums[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = nums[i];
        }
        if start == end {
            out.extend_from_slice(start.to_string().as_bytes());
        } else {
            out.extend_from_slice(format!("{start}:{end}").as_bytes());
        }
        i += 1;
        if i < nums.len() {
            out.push(b',');
        }
    }
}

/// RFC 3501 `date-time` for INTERNALDATE: `"dd-Mon-yyyy hh:mm:ss +zzzz"`,
/// the day space-padded (`date-day-fixed`).
pub fn date_time(out: &mut Vec<u8>, unix: i64, zone_minutes: i16) {
    let d = civil_from_unix(unix, zone_minutes);
    let secs = (unix + i64::from(zone_minutes) * 60).rem_euclid(86_400);
    let sign = if zone_minutes < 0 { '-' } else { '+' };
    let z = zone_minutes.unsigned_abs();
    out.extend_from_slice(
        format!(
            "\"{:>2}-{}-{:04} {:02}:{:02}:{:02} {}{:02}{:02}\"",
            d.day,
            MONTHS[usize::from(d.month.clamp(1, 12)) - 1],
            d.year,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            sign,
            z / 60,
            z % 60
        )
        .as_bytes(),
    );
}

/// Response codes (RFC 3501 7.1, RFC 4315, 5530, 7162, 7889).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code<'a> {
    Alert,
    BadCharset,
    Capability(&'a [&'a str]),
    Parse,
    PermanentFlags(&'a [Flag]),
    ReadOnly,
    ReadWrite,
    TryCreate,
    UidNext(u32),
    UidValidity(u32),
    Unseen(u32),
    AppendUid {
        uidvalidity: u32,
        uid: u32,
    },
    CopyUid {
        uidvalidity: u32,
        from: &'a [u32],
        to: &'a [u32],
    },
    HighestModSeq(u64),
    NoModSeq,
    Modified(&'a [u32]),
    Closed,
    TooBig,
    Limit,
    Nonexistent,
    AlreadyExists,
    Cannot,
    InUse,
    ServerBug,
    AuthenticationFailed,
    PrivacyRequired,
    ContactAdmin,
    OverQuota,
    Unavailable,
    ExpungeIssued,
    NoPerm,
    ClientBug,
}

fn code(out: &mut Vec<u8>, c: &Code) {
    out.push(b'[');
    let simple = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
    match c {
        Code::Alert => simple(out, "ALERT"),
        Code::BadCharset => simple(out, "BADCHARSET (UTF-8 US-ASCII)"),
        Code::Capability(caps) => {
            simple(out, "CAPABILITY");
            for cap in caps.iter() {
                out.push(b' ');
                simple(out, cap);
            }
        }
        Code::Parse => simple(out, "PARSE"),
        Code::PermanentFlags(flags) => {
            simple(out, "PERMANENTFLAGS ");
            out.push(b'(');
            for f in flags.iter() {
                simple(out, &f.as_str());
                out.push(b' ');
            }
            // RFC 3501 7.1: \* says new keywords may be created.
            simple(out, "\\*)");
        }
        Code::ReadOnly => simple(out, "READ-ONLY"),
        Code::ReadWrite => simple(out, "READ-WRITE"),
        Code::TryCreate => simple(out, "TRYCREATE"),
        Code::UidNext(n) => simple(out, &format!("UIDNEXT {n}")),
        Code::UidValidity(n) => simple(out, &format!("UIDVALIDITY {n}")),
        Code::Unseen(n) => simple(out, &format!("UNSEEN {n}")),
        Code::AppendUid { uidvalidity, uid } => {
            simple(out, &format!("APPENDUID {uidvalidity} {uid}"))
        }
        Code::CopyUid {
            uidvalidity,
            from,
            to,
        } => {
            simple(out, &format!("COPYUID {uidvalidity} "));
            ordered_set(out, from);
            out.push(b' ');
            ordered_set(out, to);
        }
        Code::HighestModSeq(n) => simple(out, &format!("HIGHESTMODSEQ {n}")),
        Code::NoModSeq => simple(out, "NOMODSEQ"),
        Code::Modified(set) => {
            simple(out, "MODIFIED ");
            seq_set(out, set);
        }
        Code::Closed => simple(out, "CLOSED"),
        Code::TooBig => simple(out, "TOOBIG"),
        Code::Limit => simple(out, "LIMIT"),
        Code::Nonexistent => simple(out, "NONEXISTENT"),
        Code::AlreadyExists => simple(out, "ALREADYEXISTS"),
        Code::Cannot => simple(out, "CANNOT"),
        Code::InUse => simple(out, "INUSE"),
        Code::ServerBug => simple(out, "SERVERBUG"),
        Code::AuthenticationFailed => simple(out, "AUTHENTICATIONFAILED"),
        Code::PrivacyRequired => simple(out, "PRIVACYREQUIRED"),
        Code::ContactAdmin => simple(out, "CONTACTADMIN"),
        Code::OverQuota => simple(out, "OVERQUOTA"),
        Code::Unavailable => simple(out, "UNAVAILABLE"),
        Code::ExpungeIssued => simple(out, "EXPUNGEISSUED"),
        Code::NoPerm => simple(out, "NOPERM"),
        Code::ClientBug => simple(out, "CLIENTBUG"),
    }
    out.extend_from_slice(b"] ");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    /// Untagged only (RFC 3501 7.1.4).
    PreAuth,
    /// Untagged only (RFC 3501 7.1.5).
    Bye,
}

/// Human-readable text: one line, printable, never starting with `[`
/// (which would read as a response code).
fn text(out: &mut Vec<u8>, t: &str) {
    let t = if t.is_empty() { "done" } else { t };
    for (i, c) in t.bytes().enumerate() {
        out.push(match c {
            b'[' if i == 0 => b'(',
            0x20..=0x7e => c,
            _ => b'?',
        });
    }
}

/// `TAG OK|NO|BAD [CODE] text` (or `*` for untagged).
pub fn status(out: &mut Vec<u8>, tag: Option<&str>, st: Status, c: Option<&Code>, t: &str) {
    out.extend_from_slice(tag.unwrap_or("*").as_bytes());
    out.extend_from_slice(match st {
        Status::Ok => b" OK ",
        Status::No => b" NO ",
        Status::Bad => b" BAD ",
        Status::PreAuth => b" PREAUTH ",
        Status::Bye => b" BYE ",
    });
    if let Some(c) = c {
        code(out, c);
    }
    text(out, t);
    out.extend_from_slice(b"\r\n");
}

/// `+ text` (RFC 3501 7.5).
pub fn continuation(out: &mut Vec<u8>, t: &str) {
    out.extend_from_slice(b"+ ");
    text(out, t);
    out.extend_from_slice(b"\r\n");
}

/// `+ base64` for a SASL challenge (empty for PLAIN).
pub fn sasl_challenge(out: &mut Vec<u8>, b64: &str) {
    out.extend_from_slice(b"+ ");
    out.extend_from_slice(b64.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn capability(out: &mut Vec<u8>, caps: &[&str]) {
    out.extend_from_slice(b"* CAPABILITY");
    for c in caps {
        out.push(b' ');
        out.extend_from_slice(c.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

pub fn exists(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(format!("* {n} EXISTS\r\n").as_bytes());
}

pub fn recent(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(format!("* {n} RECENT\r\n").as_bytes());
}

pub fn expunge(out: &mut Vec<u8>, seq: u32) {
    out.extend_from_slice(format!("* {seq} EXPUNGE\r\n").as_bytes());
}

/// `* VANISHED [(EARLIER)] uids` (RFC 7162 3.2.10); nothing for none.
pub fn vanished(out: &mut Vec<u8>, earlier: bool, uids: &[u32]) {
    if uids.is_empty() {
        return;
    }
    out.extend_from_slice(if earlier {
        b"* VANISHED (EARLIER) "
    } else {
        b"* VANISHED "
    });
    seq_set(out, uids);
    out.extend_from_slice(b"\r\n");
}

pub fn flags(out: &mut Vec<u8>, f: &[Flag]) {
    out.extend_from_slice(b"* FLAGS ");
    flag_list(out, f);
    out.extend_from_slice(b"\r\n");
}

pub fn enabled(out: &mut Vec<u8>, caps: &[&str]) {
    out.extend_from_slice(b"* ENABLED");
    for c in caps {
        out.push(b' ');
        out.extend_from_slice(c.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// `* SEARCH n...` with RFC 7162 3.1.5 `(MODSEQ n)` when asked.
pub fn search(out: &mut Vec<u8>, nums: &[u32], modseq: Option<u64>) {
    out.extend_from_slice(b"* SEARCH");
    for n in nums {
        out.extend_from_slice(format!(" {n}").as_bytes());
    }
    if let (Some(m), false) = (modseq, nums.is_empty()) {
        out.extend_from_slice(format!(" (MODSEQ {m})").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The RFC 4731 ESEARCH answer, from the matches (sorted, ascending).
pub struct Esearch<'a> {
    pub tag: &'a str,
    pub uid: bool,
    pub min: bool,
    pub max: bool,
    pub count: bool,
    pub all: bool,
    /// RFC 7162 3.1.5: highest modseq of the matches, when MODSEQ was used.
    pub modseq: Option<u64>,
}

pub fn esearch(out: &mut Vec<u8>, e: &Esearch, matches: &[u32]) {
    out.extend_from_slice(b"* ESEARCH (TAG ");
    string(out, e.tag.as_bytes());
    out.push(b')');
    if e.uid {
        out.extend_from_slice(b" UID");
    }
    if let (true, Some(m)) = (e.min, matches.first()) {
        out.extend_from_slice(format!(" MIN {m}").as_bytes());
    }
    if let (true, Some(m)) = (e.max, matches.last()) {
        out.extend_from_slice(format!(" MAX {m}").as_bytes());
    }
    if e.all && !matches.is_empty() {
        out.extend_from_slice(b" ALL ");
        seq_set(out, matches);
    }
    if e.count {
        out.extend_from_slice(format!(" COUNT {}", matches.len()).as_bytes());
    }
    if let (Some(m), false) = (e.modseq, matches.is_empty()) {
        out.extend_from_slice(format!(" MODSEQ {m}").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn status_item_name(i: StatusItem) -> &'static str {
    match i {
        StatusItem::Messages => "MESSAGES",
        StatusItem::Recent => "RECENT",
        StatusItem::UidNext => "UIDNEXT",
        StatusItem::UidValidity => "UIDVALIDITY",
        StatusItem::Unseen => "UNSEEN",
        StatusItem::HighestModSeq => "HIGHESTMODSEQ",
        StatusItem::Size => "SIZE",
        StatusItem::AppendLimit => "APPENDLIMIT",
    }
}

/// `* STATUS name (ITEM n ...)`.
pub fn status_data(out: &mut Vec<u8>, name: &MailboxName, items: &[(StatusItem, u64)]) {
    out.extend_from_slice(b"* STATUS ");
    mailbox(out, name);
    out.extend_from_slice(b" (");
    for (i, (item, v)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(format!("{} {v}", status_item_name(*item)).as_bytes());
    }
    out.extend_from_slice(b")\r\n");
}

/// `* LIST (attrs) "/" name` (or LSUB); `delimiter` None is NIL.
pub fn list(
    out: &mut Vec<u8>,
    lsub: bool,
    attrs: &[&str],
    delimiter: Option<char>,
    name: &MailboxName,
) {
    out.extend_from_slice(if lsub { b"* LSUB (" } else { b"* LIST (" });
    out.extend_from_slice(attrs.join(" ").as_bytes());
    out.extend_from_slice(b") ");
    match delimiter {
        Some(d) => string(out, d.to_string().as_bytes()),
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    mailbox(out, name);
    out.extend_from_slice(b"\r\n");
}

fn part_numbers(out: &mut String, part: &[u32]) {
    for (i, n) in part.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(&n.to_string());
    }
}

/// The name a fetch item has in the response (RFC 3501 7.4.2): BODY.PEEK
/// answers as BODY, a partial shows its origin only, header field names
/// upper-cased (as Dovecot).
pub fn fetch_attr_name(a: &FetchAttr) -> String {
    match a {
        FetchAttr::Envelope => "ENVELOPE".into(),
        FetchAttr::Flags => "FLAGS".into(),
        FetchAttr::InternalDate => "INTERNALDATE".into(),
        FetchAttr::Rfc822 => "RFC822".into(),
        FetchAttr::Rfc822Header => "RFC822.HEADER".into(),
        FetchAttr::Rfc822Size => "RFC822.SIZE".into(),
        FetchAttr::Rfc822Text => "RFC822.TEXT".into(),
        FetchAttr::Body => "BODY".into(),
        FetchAttr::BodyStructure => "BODYSTRUCTURE".into(),
        FetchAttr::Uid => "UID".into(),
        FetchAttr::ModSeq => "MODSEQ".into(),
        FetchAttr::BodySection {
            section, partial, ..
        } => {
            let mut s = String::from("BODY[");
            part_numbers(&mut s, &section.part);
            if let Some(t) = &section.text {
                if !section.part.is_empty() {
                    s.push('.');
                }
                let fields = |s: &mut String, name: &str, names: &[String]| {
                    s.push_str(name);
                    s.push_str(" (");
                    for (i, n) in names.iter().enumerate() {
                        if i > 0 {
                            s.push(' ');
                        }
                        let mut v = Vec::new();
                        astring(&mut v, n.to_ascii_uppercase().as_bytes());
                        s.push_str(&String::from_utf8_lossy(&v));
                    }
                    s.push(')');
                };
                match t {
                    SectionText::Header => s.push_str("HEADER"),
                    SectionText::Text => s.push_str("TEXT"),
                    SectionText::Mime => s.push_str("MIME"),
                    SectionText::HeaderFields(n) => fields(&mut s, "HEADER.FIELDS", n),
                    SectionText::HeaderFieldsNot(n) => fields(&mut s, "HEADER.FIELDS.NOT", n),
                }
            }
            s.push(']');
            if let Some((o, _)) = partial {
                s.push_str(&format!("<{o}>"));
            }
            s
        }
        FetchAttr::Binary { part, partial, .. } => {
            let mut s = String::from("BINARY[");
            part_numbers(&mut s, part);
            s.push(']');
            if let Some((o, _)) = partial {
                s.push_str(&format!("<{o}>"));
            }
            s
        }
        FetchAttr::BinarySize(part) => {
            let mut s = String::from("BINARY.SIZE[");
            part_numbers(&mut s, part);
            s.push(']');
            s
        }
    }
}

/// One `* n FETCH (...)` response, item by item.
pub struct Fetch<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Fetch<'a> {
    pub fn start(out: &'a mut Vec<u8>, seq: u32) -> Fetch<'a> {
        out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
        Fetch { out, first: true }
    }

    /// Goes on with a response an earlier piece began (`items`: it has
    /// at least one item already).
    pub fn resume(out: &'a mut Vec<u8>, items: bool) -> Fetch<'a> {
        Fetch { out, first: !items }
    }

    /// The response buffer, for a literal's data streamed after
    /// `literal_head`.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        self.out
    }

    /// Starts an item: `NAME ` and returns the buffer for its value.
    pub fn item(&mut self, name: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b' ');
        }
        self.first = false;
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b' ');
        self.out
    }

    pub fn uid(&mut self, uid: u32) {
        let o = self.item("UID");
        o.extend_from_slice(uid.to_string().as_bytes());
    }

    pub fn flags<'f>(&mut self, f: impl IntoIterator<Item = &'f Flag>) {
        let o = self.item("FLAGS");
        flag_list(o, f);
    }

    pub fn number(&mut self, name: &str, n: u64) {
        let o = self.item(name);
        o.extend_from_slice(n.to_string().as_bytes());
    }

    /// RFC 7162 3.1.4: `MODSEQ (n)`.
    pub fn modseq(&mut self, m: u64) {
        let o = self.item("MODSEQ");
        o.extend_from_slice(format!("({m})").as_bytes());
    }

    pub fn internal_date(&mut self, unix: i64, zone_minutes: i16) {
        let o = self.item("INTERNALDATE");
        date_time(o, unix, zone_minutes);
    }

    /// `NAME {len}` CRLF: the caller appends (or streams) exactly `len`
    /// bytes next, then goes on with the next item or `finish`.
    pub fn literal_head(&mut self, name: &str, len: u64) {
        let o = self.item(name);
        literal_head(o, len);
    }

    /// `NAME` and bytes already in IMAP syntax (ENVELOPE, BODYSTRUCTURE).
    pub fn raw(&mut self, name: &str, value: &[u8]) {
        let o = self.item(name);
        o.extend_from_slice(value);
    }

    /// Bytes after `literal_head`: the literal's data.
    pub fn append(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    pub fn finish(self) {
        self.out.extend_from_slice(b")\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn strings() {
        let rows: &[(&[u8], &str, &str)] = &[
            (b"INBOX", "\"INBOX\"", "INBOX"),
            (b"", "\"\"", "\"\""),
            (b"a b", "\"a b\"", "\"a b\""),
            (
                b"say \"hi\" \\o/",
                "{12}\r\nsay \"hi\" \\o/",
                "{12}\r\nsay \"hi\" \\o/",
            ),
            (b"NIL", "\"NIL\"", "\"NIL\""),
            (b"a]b", "\"a]b\"", "a]b"),
            (
                b"line\r\nbreak",
                "{11}\r\nline\r\nbreak",
                "{11}\r\nline\r\nbreak",
            ),
            ("Grüße".as_bytes(), "{7}\r\nGrüße", "{7}\r\nGrüße"),
            (b"(x)", "\"(x)\"", "\"(x)\""),
        ];
        for (input, as_string, as_astring) in rows {
            assert_eq!(w(|o| string(o, input)), *as_string);
            assert_eq!(w(|o| astring(o, input)), *as_astring);
        }
        let long = vec![b'a'; MAX_QUOTED + 1];
        assert!(w(|o| string(o, &long)).starts_with("{1025}\r\n"));
        assert_eq!(w(|o| nstring(o, None)), "NIL");
        assert_eq!(
            w(|o| mailbox(o, &MailboxName::new("Entwürfe".into()))),
            "\"Entw&APw-rfe\""
        );
    }

    #[test]
    fn sets_and_lines() {
        assert_eq!(w(|o| seq_set(o, &[5, 1, 2, 3, 9, 10, 3])), "1:3,5,9:10");
        assert_eq!(w(|o| ordered_set(o, &[7, 8, 9, 3, 4])), "7:9,3:4");
        assert_eq!(
            w(|o| vanished(o, true, &[41, 43, 42, 300])),
            "* VANISHED (EARLIER) 41:43,300\r\n"
        );
        assert_eq!(w(|o| vanished(o, false, &[])), "");
        assert_eq!(w(|o| exists(o, 172)), "* 172 EXISTS\r\n");
        assert_eq!(w(|o| expunge(o, 3)), "* 3 EXPUNGE\r\n");
        assert_eq!(
            w(|o| flags(o, &[Flag::Answered, Flag::Keyword("$Junk".into())])),
            "* FLAGS (\\Answered $Junk)\r\n"
        );
        assert_eq!(
            w(|o| status(
                o,
                Some("A1"),
                Status::Ok,
                Some(&Code::CopyUid {
                    uidvalidity: 38505,
                    from: &[304, 319, 320],
                    to: &[3956, 3957, 3958]
                }),
                "Done"
            )),
            "A1 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n"
        );
        assert_eq!(
            w(|o| status(
                o,
                None,
                Status::Ok,
                Some(&Code::PermanentFlags(&[Flag::Seen, Flag::Deleted])),
                "Limited"
            )),
            "* OK [PERMANENTFLAGS (\\Seen \\Deleted \\*)] Limited\r\n"
        );
        assert_eq!(
            w(|o| status(o, Some("a"), Status::Bad, None, "[x]\r\nevil")),
            "a BAD (x]??evil\r\n"
        );
        assert_eq!(
            w(|o| status(o, Some("a"), Status::No, Some(&Code::BadCharset), "no")),
            "a NO [BADCHARSET (UTF-8 US-ASCII)] no\r\n"
        );
        assert_eq!(
            w(|o| capability(o, &["IMAP4rev1", "IDLE"])),
            "* CAPABILITY IMAP4rev1 IDLE\r\n"
        );
        assert_eq!(
            w(|o| search(o, &[2, 84, 882], Some(917162500))),
            "* SEARCH 2 84 882 (MODSEQ 917162500)\r\n"
        );
        assert_eq!(w(|o| search(o, &[], Some(1))), "* SEARCH\r\n");
        let e = Esearch {
            tag: "A285",
            uid: true,
            min: true,
            max: true,
            count: true,
            all: true,
            modseq: None,
        };
        assert_eq!(
            w(|o| esearch(o, &e, &[7, 8, 9, 3800])),
            "* ESEARCH (TAG \"A285\") UID MIN 7 MAX 3800 ALL 7:9,3800 COUNT 4\r\n"
        );
        assert_eq!(
            w(|o| esearch(o, &e, &[])),
            "* ESEARCH (TAG \"A285\") UID COUNT 0\r\n"
        );
        assert_eq!(
            w(|o| status_data(
                o,
                &MailboxName::new("blurdybloop".into()),
                &[(StatusItem::Messages, 231), (StatusItem::UidNext, 44292)]
            )),
            "* STATUS \"blurdybloop\" (MESSAGES 231 UIDNEXT 44292)\r\n"
        );
        assert_eq!(
            w(|o| list(
                o,
                false,
                &["\\HasNoChildren", "\\Sent"],
                Some('/'),
                &MailboxName::new("Sent".into())
            )),
            "* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent\"\r\n"
        );
    }

    #[test]
    fn fetch_framing_and_dates() {
        let s = w(|o| {
            let mut f = Fetch::start(o, 12);
            f.uid(4827313);
            f.flags(&[Flag::Seen]);
            f.internal_date(773_400_003, -420);
            f.number("RFC822.SIZE", 44827);
            f.modseq(12121231000);
            f.literal_head("BODY[]", 5);
            o_push(&mut f, b"hello");
            f.finish();
        });
        assert_eq!(
            s,
            "* 12 FETCH (UID 4827313 FLAGS (\\Seen) INTERNALDATE \" 5-Jul-1994 02:20:03 -0700\" RFC822.SIZE 44827 MODSEQ (12121231000) BODY[] {5}\r\nhello)\r\n"
        );
        assert_eq!(w(|o| date_time(o, 0, 0)), "\" 1-Jan-1970 00:00:00 +0000\"");
        assert_eq!(
            w(|o| date_time(o, 1_709_164_800, 330)),
            "\"29-Feb-2024 05:30:00 +0530\""
        );
    }

    fn o_push(f: &mut Fetch, b: &[u8]) {
        f.out.extend_from_slice(b);
    }
}
