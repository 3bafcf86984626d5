//! The data of IMAP commands as plain types: what the parser produces and
//! the session consumes (RFC 3501 9, with RFC 4315, 5161, 5258, 5819,
//! 6154, 6851, 7162, 7888, 2971, 4731).
//!
//! Owns: the shapes, and small pure helpers on them (sequence-set
//! membership, flag names). Must not: parse bytes or know mailbox state.

use std::num::NonZeroU32;

/// A mailbox name decoded from modified UTF-7 to UTF-8. `INBOX` in any
/// case is folded to `INBOX` (RFC 3501 5.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MailboxName(pub String);

impl MailboxName {
    pub fn new(utf8: String) -> MailboxName {
        if utf8.eq_ignore_ascii_case("INBOX") {
            MailboxName("INBOX".into())
        } else {
            MailboxName(utf8)
        }
    }
    pub fn is_inbox(&self) -> bool {
        self.0 == "INBOX"
    }
}

/// One end of a sequence range: a number or `*` (the largest in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNum {
    Value(NonZeroU32),
    Star,
}

impl SeqNum {
    fn resolve(self, largest: u32) -> u32 {
        match self {
            SeqNum::Value(v) => v.get(),
            SeqNum::Star => largest,
        }
    }
}

/// `a:b` (either order: RFC 3501 9 "4:2" means 2,3,4) or a single number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub start: SeqNum,
    pub end: SeqNum,
}

/// A sequence set (message numbers or UIDs by context), or `$`, the saved
/// search result (RFC 5182), which the parser does not produce since
/// SEARCHRES is not advertised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSet(pub Vec<SeqRange>);

impl SeqSet {
    /// Ranges as inclusive (low, high) pairs once `*` is `largest`
    /// (RFC 3501 6.4.8: `*` in a UID set is the highest UID, and `n:*`
    /// with n above it still matches the highest one).
    pub fn ranges(&self, largest: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.0.iter().map(move |r| {
            let a = r.start.resolve(largest);
            let b = r.end.resolve(largest);
            (a.min(b), a.max(b))
        })
    }

    pub fn contains(&self, n: u32, largest: u32) -> bool {
        self.ranges(largest).any(|(lo, hi)| lo <= n && n <= hi)
    }
}

/// A system flag or keyword (RFC 3501 2.3.2). Keywords compare
/// case-insensitively; the spelling first used is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Flag {
    Seen,
    Answered,
    Flagged,
    Deleted,
    Draft,
    /// Only in responses and searches: never stored by a client.
    Recent,
    Keyword(String),
    /// `\Foo` not defined by RFC 3501: accepted in SEARCH, refused by
    /// STORE/APPEND (the session decides).
    Extension(String),
}

impl Flag {
    pub fn from_atom(backslash: bool, atom: &str) -> Flag {
        if !backslash {
            return Flag::Keyword(atom.to_string());
        }
        match atom.to_ascii_lowercase().as_str() {
            "seen" => Flag::Seen,
            "answered" => Flag::Answered,
            "flagged" => Flag::Flagged,
            "deleted" => Flag::Deleted,
            "draft" => Flag::Draft,
            "recent" => Flag::Recent,
            _ => Flag::Extension(atom.to_string()),
        }
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Flag::Seen => Cow::Borrowed("\\Seen"),
            Flag::Answered => Cow::Borrowed("\\Answered"),
            Flag::Flagged => Cow::Borrowed("\\Flagged"),
            Flag::Deleted => Cow::Borrowed("\\Deleted"),
            Flag::Draft => Cow::Borrowed("\\Draft"),
            Flag::Recent => Cow::Borrowed("\\Recent"),
            Flag::Keyword(k) => Cow::Borrowed(k),
            Flag::Extension(e) => Cow::Owned(format!("\\{e}")),
        }
    }

    /// Same flag, keywords compared without case (RFC 3501 2.3.2).
    pub fn same(&self, other: &Flag) -> bool {
        match (self, other) {
            (Flag::Keyword(a), Flag::Keyword(b)) | (Flag::Extension(a), Flag::Extension(b)) => {
                a.eq_ignore_ascii_case(b)
            }
            _ => self == other,
        }
    }
}

/// A calendar date (RFC 3501 `date`), for SEARCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

/// RFC 3501 `date-time`: a local time and its zone offset in minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub date: Date,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub zone_minutes: i16,
}

impl DateTime {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub fn unix(&self) -> i64 {
        days_from_civil(self.date) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(self.zone_minutes) * 60
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
pub fn days_from_civil(d: Date) -> i64 {
    let y = i64::from(d.year) - i64::from(d.month <= 2);
    let m = i64::from(d.month);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d.day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a UNIX time in the zone `zone_minutes` east of UTC.
pub fn civil_from_unix(t: i64, zone_minutes: i16) -> Date {
    let z = (t + i64::from(zone_minutes) * 60).div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (y + i64::from(month <= 2)).clamp(0, 9999) as u16;
    Date { year, month, day }
}

pub const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A command: its tag and what it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    pub body: CommandBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandBody {
    // Any state (RFC 3501 6.1).
    Capability,
    Noop,
    Logout,
    /// RFC 2971; `None` for `ID NIL`.
    Id(Option<Vec<(String, Option<String>)>>),
    // Not authenticated (6.2).
    StartTls,
    /// `initial`: the SASL-IR response (RFC 4959), base64 as sent; `=` is
    /// an empty response.
    Authenticate {
        mechanism: String,
        initial: Option<String>,
    },
    Login {
        user: String,
        password: String,
    },
    // Authenticated (6.3).
    Enable(Vec<String>),
    Select {
        mailbox: MailboxName,
        params: SelectParams,
    },
    Examine {
        mailbox: MailboxName,
        params: SelectParams,
    },
    Create {
        mailbox: MailboxName,
        /// RFC 6154 5.2 `CREATE name (USE (\Sent))`.
        special_use: Vec<String>,
    },
    Delete(MailboxName),
    Rename {
        from: MailboxName,
        to: MailboxName,
    },
    Subscribe(MailboxName),
    Unsubscribe(MailboxName),
    List(ListCommand),
    Lsub {
        reference: String,
        pattern: String,
    },
    Namespace,
    Status {
        mailbox: MailboxName,
        items: Vec<StatusItem>,
    },
    // Selected (6.4).
    Check,
    Close,
    Unselect,
    Expunge,
    /// RFC 4315 2.1.
    UidExpunge(SeqSet),
    Search {
        uid: bool,
        /// RFC 4731 `RETURN (...)`: `None` is a plain SEARCH response.
        ret: Option<Vec<SearchReturn>>,
        charset: Option<String>,
        key: SearchKey,
    },
    Fetch {
        uid: bool,
        set: SeqSet,
        items: FetchItems,
        /// RFC 7162 3.1.4.1.
        changed_since: Option<u64>,
        /// RFC 7162 3.2.6 (UID FETCH only).
        vanished: bool,
    },
    Store {
        uid: bool,
        set: SeqSet,
        /// RFC 7162 3.1.3.
        unchanged_since: Option<u64>,
        mode: StoreMode,
        silent: bool,
        flags: Vec<Flag>,
    },
    Copy {
        uid: bool,
        set: SeqSet,
        mailbox: MailboxName,
    },
    /// RFC 6851.
    Move {
        uid: bool,
        set: SeqSet,
        mailbox: MailboxName,
    },
    /// RFC 2177: the reader then wants `DONE` (see `CommandReader::next_line`).
    Idle,
}

/// SELECT/EXAMINE parameters (RFC 4466 2.1, RFC 7162 3.1.8, 3.2.5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectParams {
    pub condstore: bool,
    pub qresync: Option<Qresync>,
}

/// `QRESYNC (uidvalidity modseq [known-uids [(seqs uids)]])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qresync {
    pub uidvalidity: u32,
    pub modseq: u64,
    pub known_uids: Option<SeqSet>,
    pub seq_match: Option<(SeqSet, SeqSet)>,
}

/// LIST with RFC 5258 selection and return options (and RFC 6154, 5819).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListCommand {
    pub reference: String,
    pub patterns: Vec<String>,
    pub select_subscribed: bool,
    pub select_recursive: bool,
    pub select_special_use: bool,
    pub select_remote: bool,
    pub return_subscribed: bool,
    pub return_children: bool,
    pub return_special_use: bool,
    /// RFC 5819 `RETURN (STATUS (...))`.
    pub return_status: Option<Vec<StatusItem>>,
    /// Plain RFC 3501 LIST (no extended syntax used): answers as 3501 says.
    pub extended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    /// RFC 7162 3.1.6.
    HighestModSeq,
    /// RFC 8438.
    Size,
    /// RFC 7889.
    AppendLimit,
}

/// RFC 4731 return options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchReturn {
    Min,
    Max,
    All,
    Count,
    /// RFC 5182; only parsed so it can be refused with a clear reason.
    Save,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

/// `FLAGS` vs `+FLAGS` etc. and their silent forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItems {
    All,
    Fast,
    Full,
    List(Vec<FetchAttr>),
}

impl FetchItems {
    /// The macros spelled out (RFC 3501 6.4.5).
    pub fn expand(&self) -> Vec<FetchAttr> {
        use FetchAttr::*;
        match self {
            FetchItems::All => vec![Flags, InternalDate, Rfc822Size, Envelope],
            FetchItems::Fast => vec![Flags, InternalDate, Rfc822Size],
            FetchItems::Full => vec![Flags, InternalDate, Rfc822Size, Envelope, Body],
            FetchItems::List(l) => l.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAttr {
    Envelope,
    Flags,
    InternalDate,
    /// Same as BODY[] but named RFC822 in the response; sets \Seen.
    Rfc822,
    /// BODY.PEEK[HEADER] named RFC822.HEADER.
    Rfc822Header,
    Rfc822Size,
    /// BODY[TEXT] named RFC822.TEXT; sets \Seen.
    Rfc822Text,
    /// BODYSTRUCTURE without extension data.
    Body,
    BodyStructure,
    Uid,
    /// RFC 7162 3.1.4.
    ModSeq,
    BodySection {
        peek: bool,
        section: Section,
        partial: Option<(u32, u32)>,
    },
    /// RFC 3516 BINARY[part]<partial>: the part with its
    /// content-transfer-encoding removed.
    Binary {
        peek: bool,
        part: Vec<u32>,
        partial: Option<(u32, u32)>,
    },
    BinarySize(Vec<u32>),
}

impl FetchAttr {
    /// Whether fetching this sets `\Seen` (RFC 3501 6.4.5).
    pub fn sets_seen(&self) -> bool {
        matches!(
            self,
            FetchAttr::Rfc822
                | FetchAttr::Rfc822Text
                | FetchAttr::BodySection { peek: false, .. }
                | FetchAttr::Binary { peek: false, .. }
        )
    }
}

/// `section-spec` (RFC 3501 9): part numbers, then what of that part.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: Option<SectionText>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    Header,
    /// Field names as sent (compared case-insensitively).
    HeaderFields(Vec<String>),
    HeaderFieldsNot(Vec<String>),
    Text,
    /// Only after part numbers.
    Mime,
}

/// RFC 3501 6.4.4 search keys, plus RFC 7162 MODSEQ and RFC 4315 UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    Answered,
    Bcc(String),
    Before(Date),
    Body(String),
    Cc(String),
    Deleted,
    Draft,
    Flagged,
    From(String),
    Header(String, String),
    Keyword(String),
    Larger(u32),
    New,
    Not(Box<SearchKey>),
    Old,
    On(Date),
    Or(Box<SearchKey>, Box<SearchKey>),
    Recent,
    Seen,
    SentBefore(Date),
    SentOn(Date),
    SentSince(Date),
    Since(Date),
    Smaller(u32),
    Subject(String),
    Text(String),
    To(String),
    Uid(SeqSet),
    Unanswered,
    Undeleted,
    Undraft,
    Unflagged,
    Unkeyword(String),
    Unseen,
    SeqSet(SeqSet),
    /// A parenthesised list: all must match.
    And(Vec<SearchKey>),
    /// RFC 7162 3.1.5; the entry-name/type pair is accepted and ignored
    /// (per-flag modseqs are not kept), as RFC 7162 allows.
    ModSeq(u64),
}
