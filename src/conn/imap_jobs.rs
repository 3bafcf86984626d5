//! IMAP commands carried out on a worker: everything that reads or
//! writes the store (SELECT's snapshot, LIST, STATUS, FETCH reading
//! message files, STORE, EXPUNGE, COPY, MOVE, APPEND, CREATE, DELETE,
//! RENAME, SUBSCRIBE, SEARCH) and the untagged updates a session owes its
//! client after someone else changed its folder.
//!
//! A job gets the session's selected folder and the snapshot its client
//! last heard of, and hands back the response bytes and the snapshot the
//! client now knows. Every write is durable (the store fsyncs) before its
//! tagged OK is written.
//!
//! Must not: run on the event loop thread, or keep state between jobs.

use std::io;

use log::warn;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::imap_append::{self, AppendBody};
use super::imap_body;
use crate::proto::imap::mime;
use crate::proto::imap::qresync;
use crate::proto::imap::recent::RecentSet;
use crate::proto::imap::response::{self, Code, Fetch, Status};
use crate::proto::imap::search::{self, MessageMeta};
use crate::proto::imap::session::State;
use crate::proto::imap::types::{
    Command, CommandBody, FetchAttr, Flag, MailboxName, Qresync, SearchReturn, Section,
    SectionText, SeqSet, StatusItem, StoreMode,
};
use crate::proto::imap::view::UidValidityChanged;
use crate::store::mailbox::flags::{self, Flags};
use crate::store::mailbox::{
    FlagOp, Folder, FolderName, Known, LockTable, Mailbox, NewMessage, Snapshot, SpecialUse,
};

/// A FETCH answer is handed to the loop in pieces about this large, so
/// a FETCH of the whole mailbox does not pile up in memory.
pub const FETCH_PIECE: usize = 256 * 1024;

/// The folder a session has selected, and what its client knows of it.
#[derive(Debug, Clone)]
pub struct Selected {
    pub folder: Folder,
    /// The state the client was last told: sequence numbers are
    /// positions here. Shared (Arc) with the store's other users.
    pub snap: Arc<Snapshot>,
    pub read_only: bool,
    /// The UIDs that are \Recent for this session (claimed by it).
    pub recent: RecentSet,
}

/// Where the session's mailbox is and how it is configured.
#[derive(Debug, Clone)]
pub struct Account {
    pub root: PathBuf,
    pub special: Vec<(SpecialUse, String)>,
    pub append_limit: u64,
    /// The server's uidlist/subscriptions lock table.
    pub locks: Arc<LockTable>,
}

impl Account {
    fn tree(&self) -> Mailbox {
        let m = Mailbox::new(
            &self.root,
            crate::store::mailbox::Separator::Dot,
            &self.locks,
        );
        let names: Vec<(SpecialUse, &str)> =
            self.special.iter().map(|(u, n)| (*u, n.as_str())).collect();
        match m.clone().with_special_names(&names) {
            Ok(m) => m,
            Err(_) => m,
        }
    }
}

/// What the session enabled (RFC 5161).
#[derive(Debug, Clone, Copy, Default)]
pub struct Modes {
    pub condstore: bool,
    pub qresync: bool,
}

/// A job's answer for the loop.
#[derive(Debug)]
pub struct Done {
    pub out: Vec<u8>,
    pub selected: Option<Selected>,
    pub state: State,
    /// The folder's contents changed: wake the mailbox's other sessions.
    pub changed: bool,
    /// The session cannot go on (UIDVALIDITY changed under it).
    pub close: bool,
    /// FETCH not finished: the rest, for another job once this is sent.
    pub more: Option<Box<FetchRest>>,
    /// Modes as the command left them (SELECT with CONDSTORE enables it).
    pub modes: Modes,
}

/// The messages a FETCH has still to answer.
#[derive(Debug)]
pub struct FetchRest {
    pub tag: String,
    pub uid: bool,
    pub seqs: Vec<u32>,
    pub next: usize,
    pub attrs: Vec<FetchAttr>,
    pub changed_since: Option<u64>,
    /// The message whose response the last piece stopped inside.
    pub cur: Option<Box<MessageCursor>>,
    /// RFC822.SIZEs this FETCH had to count from the files (UID, size):
    /// kept in the uidlist at its end, so no later FETCH counts again.
    pub counted: Vec<(u32, u64)>,
}

/// One message's FETCH response, part written.
#[derive(Debug)]
pub struct MessageCursor {
    seq: u32,
    /// Its place in the snapshot the FETCH resolved against.
    index: usize,
    /// The open file and its structure, when an item needs them.
    body: Option<(std::fs::File, mime::Structure)>,
    flags: Vec<Flag>,
    /// \Seen is set by this FETCH: FLAGS go out even if not asked for.
    add_seen: bool,
    flags_sent: bool,
    /// `* n FETCH (` is out; `items`: and at least one item.
    opened: bool,
    items: bool,
    /// The next of the FETCH's items to write.
    attr: usize,
    /// The literal being streamed (its item's head is out).
    literal: Option<imap_body::Literal>,
}

/// The store names folders as the wire does (modified UTF-7); the
/// parser hands the session UTF-8.
fn wire(m: &MailboxName) -> String {
    crate::proto::imap::utf7::encode(&m.0)
}

/// A store (modified UTF-7) name for a response, which encodes it again.
fn utf8_name(store: &str) -> MailboxName {
    match crate::proto::imap::utf7::decode(store.as_bytes()) {
        Ok(s) => MailboxName::new(s),
        Err(_) => MailboxName::new(store.to_string()),
    }
}

fn err_text(e: &io::Error) -> String {
    e.to_string()
}

fn no(out: &mut Vec<u8>, tag: &str, e: &io::Error) {
    let code = match e.kind() {
        io::ErrorKind::NotFound => Some(Code::Nonexistent),
        io::ErrorKind::AlreadyExists => Some(Code::AlreadyExists),
        io::ErrorKind::InvalidInput => Some(Code::Cannot),
        io::ErrorKind::QuotaExceeded => Some(Code::Limit),
        _ => Some(Code::ServerBug),
    };
    response::status(out, Some(tag), Status::No, code.as_ref(), &err_text(e));
}

/// IMAP flags of a stored message.
pub fn flag_list(snap: &Snapshot, f: Flags, recent: bool) -> Vec<Flag> {
    let mut v = Vec::new();
    for (bit, fl) in [
        (flags::SEEN, Flag::Seen),
        (flags::ANSWERED, Flag::Answered),
        (flags::FLAGGED, Flag::Flagged),
        (flags::DELETED, Flag::Deleted),
        (flags::DRAFT, Flag::Draft),
    ] {
        if f.has(bit) {
            v.push(fl);
        }
    }
    if recent {
        v.push(Flag::Recent);
    }
    for k in snap.keyword_names(f) {
        v.push(Flag::Keyword(k.to_string()));
    }
    v
}

/// System bits and keyword names of a client's flag list.
fn split_flags(list: &[Flag]) -> (u8, Vec<String>) {
    let mut sys = 0;
    let mut kw = Vec::new();
    for f in list {
        match f {
            Flag::Seen => sys |= flags::SEEN,
            Flag::Answered => sys |= flags::ANSWERED,
            Flag::Flagged => sys |= flags::FLAGGED,
            Flag::Deleted => sys |= flags::DELETED,
            Flag::Draft => sys |= flags::DRAFT,
            Flag::Keyword(k) => kw.push(k.clone()),
            Flag::Recent | Flag::Extension(_) => {}
        }
    }
    (sys, kw)
}

/// Tells the client how `new` differs from `old` (what it knows) and
/// returns what it knows afterwards: `new`, or with `no_expunge` (during
/// FETCH, STORE, SEARCH: RFC 3501 7.4.1) `old` when messages went away.
pub fn report(
    sel: &Selected,
    new: Arc<Snapshot>,
    modes: Modes,
    no_expunge: bool,
    out: &mut Vec<u8>,
) -> Result<Arc<Snapshot>, UidValidityChanged> {
    let old = &sel.snap;
    if Arc::ptr_eq(old, &new) {
        return Ok(new);
    }
    let d = new.diff(old);
    if d.uidvalidity_changed {
        return Err(UidValidityChanged);
    }
    announce_keywords(old, &new, sel.read_only, out);
    if no_expunge && !d.expunged.is_empty() {
        // Only flag changes of messages still there, numbered as known.
        for uid in &d.flags {
            if let (Some(seq), Some(m)) = (old.position(*uid), new.find(*uid)) {
                fetch_flags(out, &new, seq as u32 + 1, m, sel, modes);
            }
        }
        return Ok(Arc::clone(old));
    }
    if !d.expunged.is_empty() {
        let mut gone: Vec<u32> = Vec::new();
        // Highest first: lower numbers stay valid.
        let mut positions: Vec<usize> =
            d.expunged.iter().filter_map(|u| old.position(*u)).collect();
        positions.sort_unstable();
        if modes.qresync {
            gone.extend(d.expunged.iter().copied());
            response::vanished(out, false, &gone);
        } else {
            for p in positions.iter().rev() {
                response::expunge(out, *p as u32 + 1);
            }
        }
    }
    // VANISHED says how many are left (RFC 7162 3.2.10): no EXISTS for it.
    if !d.added.is_empty() {
        response::exists(out, new.messages.len() as u32);
        let recent = new
            .messages
            .iter()
            .filter(|m| sel.recent.contains(m.uid))
            .count();
        response::recent(out, recent as u32);
    }
    for uid in &d.flags {
        if let (Some(seq), Some(m)) = (new.position(*uid), new.find(*uid)) {
            fetch_flags(out, &new, seq as u32 + 1, m, sel, modes);
        }
    }
    Ok(new)
}

/// RFC 3501 7.2.6: a keyword new to the mailbox is announced in FLAGS
/// (and PERMANENTFLAGS) before a FETCH uses it.
fn announce_keywords(old: &Snapshot, new: &Snapshot, read_only: bool, out: &mut Vec<u8>) {
    if old.keywords == new.keywords {
        return;
    }
    let mut all: Vec<Flag> = PERMANENT.to_vec();
    for k in new.keywords.names() {
        all.push(Flag::Keyword(k.to_string()));
    }
    response::flags(out, &all);
    if !read_only {
        response::status(
            out,
            None,
            Status::Ok,
            Some(&Code::PermanentFlags(&all)),
            "Limited",
        );
    }
}

fn fetch_flags(
    out: &mut Vec<u8>,
    snap: &Snapshot,
    seq: u32,
    m: &crate::store::mailbox::Message,
    sel: &Selected,
    modes: Modes,
) {
    let fl = flag_list(snap, m.flags, sel.recent.contains(m.uid));
    let mut f = Fetch::start(out, seq);
    if modes.qresync {
        f.uid(m.uid);
    }
    f.flags(&fl);
    if modes.condstore {
        f.modseq(m.modseq);
    }
    f.finish();
}

/// NOOP, IDLE wake-ups, CHECK: sync and report.
pub fn poll(sel: Selected, modes: Modes) -> Done {
    let mut out = Vec::new();
    let mut sel = sel;
    let mut close = false;
    match sel.folder.sync_from(&sel.snap) {
        Ok(new) => match report(claim_new(&mut sel, &new), new, modes, false, &mut out) {
            Ok(s) => sel.snap = s,
            Err(UidValidityChanged) => close = true,
        },
        Err(e) => log::warn!("imap: sync of {:?} failed: {e}", sel.folder.dir()),
    }
    if close {
        response::status(
            &mut out,
            None,
            Status::Bye,
            None,
            "Mailbox UIDVALIDITY changed",
        );
    }
    Done {
        out,
        selected: Some(sel),
        state: State::Selected,
        changed: false,
        close,
        more: None,
        modes,
    }
}

/// Carries out one command for a logged-in session. `known`: snapshots
/// other sessions hold of this account's folders (SELECT and EXAMINE
/// start from them).
pub fn run(
    acct: &Account,
    selected: Option<Selected>,
    modes: Modes,
    cmd: Command,
    known: &Known,
) -> Done {
    let mut out = Vec::new();
    let tag = cmd.tag.clone();
    let t = Some(tag.as_str());
    let tree = acct.tree();
    let mut done = Done {
        out: Vec::new(),
        state: if selected.is_some() {
            State::Selected
        } else {
            State::Authenticated
        },
        selected,
        changed: false,
        close: false,
        more: None,
        modes,
    };
    use CommandBody as C;
    let read_only = matches!(cmd.body, C::Examine { .. });
    match cmd.body {
        C::Select { mailbox, params } | C::Examine { mailbox, params } => {
            let how = Open {
                read_only,
                modes: modes_with(modes, params.condstore || params.qresync.is_some()),
                qresync: params.qresync.as_ref().filter(|_| modes.qresync),
                known,
            };
            select(&tree, &mailbox, how, &tag, &mut done, &mut out);
        }
        C::Create { mailbox, .. } => match tree.create(&wire(&mailbox)) {
            Ok(_) => response::status(&mut out, t, Status::Ok, None, "CREATE completed"),
            Err(e) => no(&mut out, &tag, &e),
        },
        C::Delete(mailbox) => {
            if mailbox.is_inbox() {
                response::status(
                    &mut out,
                    t,
                    Status::No,
                    Some(&Code::Cannot),
                    "INBOX cannot be deleted",
                );
            } else {
                match tree.delete(&wire(&mailbox)) {
                    Ok(()) => response::status(&mut out, t, Status::Ok, None, "DELETE completed"),
                    Err(e) => no(&mut out, &tag, &e),
                }
            }
        }
        C::Rename { from, to } => match tree.rename(&wire(&from), &wire(&to)) {
            Ok(_) => response::status(&mut out, t, Status::Ok, None, "RENAME completed"),
            Err(e) => no(&mut out, &tag, &e),
        },
        C::Subscribe(m) => match tree.subscribe(&wire(&m), true) {
            Ok(_) => response::status(&mut out, t, Status::Ok, None, "SUBSCRIBE completed"),
            Err(e) => no(&mut out, &tag, &e),
        },
        C::Unsubscribe(m) => match tree.subscribe(&wire(&m), false) {
            Ok(_) => response::status(&mut out, t, Status::Ok, None, "UNSUBSCRIBE completed"),
            Err(e) => no(&mut out, &tag, &e),
        },
        C::List(l) => {
            let pats = if l.patterns.is_empty() {
                vec![String::new()]
            } else {
                l.patterns.clone()
            };
            list(&tree, acct, &l.reference, &pats, &l, &mut out);
            response::status(&mut out, t, Status::Ok, None, "LIST completed");
        }
        C::Lsub { reference, pattern } => {
            lsub(&tree, &reference, &pattern, &mut out);
            response::status(&mut out, t, Status::Ok, None, "LSUB completed");
        }
        C::Status { mailbox, items } => match status(&tree, &mailbox, &items, acct) {
            Ok(vals) => {
                response::status_data(&mut out, &mailbox, &vals);
                response::status(&mut out, t, Status::Ok, None, "STATUS completed");
            }
            Err(e) => no(&mut out, &tag, &e),
        },
        C::Check | C::Noop => {
            if let Some(sel) = done.selected.take() {
                let p = poll(sel, modes);
                out.extend_from_slice(&p.out);
                done.selected = p.selected;
                done.close = p.close;
            }
            response::status(&mut out, t, Status::Ok, None, "completed");
        }
        C::Close | C::Unselect => {
            if let (Some(sel), C::Close) = (&done.selected, &cmd.body) {
                if !sel.read_only {
                    // RFC 3501 6.4.2: CLOSE expunges silently.
                    if sel.folder.expunge(None).is_ok() {
                        done.changed = true;
                    }
                }
            }
            done.selected = None;
            done.state = State::Authenticated;
            response::status(&mut out, t, Status::Ok, None, "completed");
        }
        C::Expunge | C::UidExpunge(_) => {
            let uids = if let C::UidExpunge(set) = &cmd.body {
                Some(set.clone())
            } else {
                None
            };
            expunge(&mut done, uids, &tag, &mut out);
        }
        C::Fetch {
            uid,
            set,
            items,
            changed_since,
            vanished,
        } => {
            if let (true, Some(since)) = (vanished && uid && modes.qresync, changed_since) {
                fetch_vanished(&mut done, &set, since, &mut out);
            }
            fetch_start(
                &mut done,
                uid,
                &set,
                items.expand(),
                changed_since,
                &tag,
                &mut out,
            )
        }
        C::Store {
            uid,
            set,
            unchanged_since,
            mode,
            silent,
            flags,
        } => store(
            &mut done,
            uid,
            &set,
            unchanged_since,
            mode,
            silent,
            &flags,
            &tag,
            &mut out,
        ),
        C::Copy { uid, set, mailbox } => {
            copy_move(&tree, &mut done, uid, &set, &mailbox, false, &tag, &mut out)
        }
        C::Move { uid, set, mailbox } => {
            copy_move(&tree, &mut done, uid, &set, &mailbox, true, &tag, &mut out)
        }
        C::Search {
            uid,
            ret,
            charset,
            key,
        } => search_cmd(&mut done, uid, ret, charset, &key, &tag, &mut out),
        _ => response::status(&mut out, t, Status::Bad, None, "Command not allowed now"),
    }
    done.out = out;
    done
}

fn modes_with(m: Modes, condstore: bool) -> Modes {
    Modes {
        condstore: m.condstore || condstore,
        qresync: m.qresync,
    }
}

const PERMANENT: [Flag; 5] = [
    Flag::Answered,
    Flag::Flagged,
    Flag::Deleted,
    Flag::Seen,
    Flag::Draft,
];

/// How SELECT or EXAMINE opens a folder.
struct Open<'a> {
    read_only: bool,
    modes: Modes,
    qresync: Option<&'a Qresync>,
    known: &'a Known,
}

fn select(
    tree: &Mailbox,
    name: &MailboxName,
    how: Open<'_>,
    tag: &str,
    done: &mut Done,
    out: &mut Vec<u8>,
) {
    let Open {
        read_only,
        modes,
        qresync,
        known,
    } = how;
    // RFC 7162 3.2.11: leaving a mailbox is announced once QRESYNC or
    // CONDSTORE is on.
    if done.selected.take().is_some() && modes.condstore {
        response::status(
            out,
            None,
            Status::Ok,
            Some(&Code::Closed),
            "Previous mailbox closed",
        );
    }
    done.state = State::Authenticated;
    let fname = match tree.parse(&wire(name)) {
        Ok(n) => n,
        Err(e) => return no(out, tag, &e),
    };
    let folder = tree.folder(&fname);
    let known = known.of(folder.dir());
    let got = if read_only {
        // EXAMINE claims no \Recent, but shows what is (RFC 3501 6.3.2).
        match known {
            Some(k) if folder.exists() => folder.sync_from(k),
            _ => folder.sync(),
        }
        .map(|s| {
            let r = RecentSet::examined(s.first_recent);
            (s, r)
        })
    } else {
        folder
            .select(known)
            .map(|(s, first)| (Arc::clone(&s), RecentSet::selected(first, s.uid_next)))
    };
    let (snap, recent) = match got {
        Ok(x) => x,
        Err(e) => return no(out, tag, &e),
    };
    let mut flags_all: Vec<Flag> = PERMANENT.to_vec();
    for k in snap.keywords.names() {
        flags_all.push(Flag::Keyword(k.to_string()));
    }
    response::flags(out, &flags_all);
    response::exists(out, snap.messages.len() as u32);
    let n_recent = snap
        .messages
        .iter()
        .filter(|m| recent.contains(m.uid))
        .count();
    response::recent(out, n_recent as u32);
    if let Some(u) = snap.first_unseen() {
        response::status(
            out,
            None,
            Status::Ok,
            Some(&Code::Unseen(u as u32)),
            "First unseen",
        );
    }
    response::status(
        out,
        None,
        Status::Ok,
        Some(&Code::UidValidity(snap.uidvalidity)),
        "UIDs valid",
    );
    response::status(
        out,
        None,
        Status::Ok,
        Some(&Code::UidNext(snap.uid_next)),
        "Predicted next UID",
    );
    if read_only {
        // Nothing may be changed: no flags, and no `\*` either.
        out.extend_from_slice(b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
    } else {
        response::status(
            out,
            None,
            Status::Ok,
            Some(&Code::PermanentFlags(&flags_all)),
            "Limited",
        );
    }
    response::status(
        out,
        None,
        Status::Ok,
        Some(&Code::HighestModSeq(snap.highest_modseq.max(1))),
        "Highest",
    );
    if let Some(q) = qresync.filter(|q| q.uidvalidity == snap.uidvalidity) {
        resync(
            &folder,
            &snap,
            q.known_uids.as_ref(),
            q.modseq,
            &recent,
            out,
        );
    }
    let code = if read_only {
        Code::ReadOnly
    } else {
        Code::ReadWrite
    };
    response::status(out, Some(tag), Status::Ok, Some(&code), "SELECT completed");
    done.modes = modes;
    done.state = State::Selected;
    done.selected = Some(Selected {
        folder,
        snap,
        read_only,
        recent,
    });
}

/// RFC 7162 3.2.5.2: what changed since the client's `modseq`, as
/// `VANISHED (EARLIER)` and then `FETCH (UID FLAGS MODSEQ)`. With another
/// UIDVALIDITY the client's state is void and nothing is sent.
fn resync(
    folder: &Folder,
    snap: &Snapshot,
    known: Option<&SeqSet>,
    modseq: u64,
    recent: &RecentSet,
    out: &mut Vec<u8>,
) {
    let present: Vec<u32> = snap.messages.iter().map(|m| m.uid).collect();
    let expunges = match folder.vanished_since(snap.uidvalidity, modseq) {
        Ok(Some(uids)) => qresync::Expunges::Known(uids),
        // A modseq file that cannot be read: say more, never less.
        Ok(None) | Err(_) => qresync::Expunges::Forgotten,
    };
    let gone = qresync::vanished(known, snap.uid_next, &present, &expunges);
    qresync::write_vanished(out, true, &gone);
    for (i, m) in snap.messages.iter().enumerate() {
        if qresync::resend(known, snap.uid_next, m.uid, m.modseq, modseq) {
            let fl = flag_list(snap, m.flags, recent.contains(m.uid));
            let mut f = Fetch::start(out, i as u32 + 1);
            f.uid(m.uid);
            f.flags(&fl);
            f.modseq(m.modseq);
            f.finish();
        }
    }
}

/// RFC 7162 3.2.6: `UID FETCH set (...) (CHANGEDSINCE m VANISHED)`
/// first names the UIDs of `set` expunged after `m`.
fn fetch_vanished(done: &mut Done, set: &SeqSet, since: u64, out: &mut Vec<u8>) {
    // Expunges made elsewhere are told here, not as VANISHED before it.
    if !refresh(done, false, out) {
        return;
    }
    let Some(sel) = done.selected.as_ref() else {
        return;
    };
    let snap = &sel.snap;
    let present: Vec<u32> = snap.messages.iter().map(|m| m.uid).collect();
    let expunges = match sel.folder.vanished_since(snap.uidvalidity, since) {
        Ok(Some(uids)) => qresync::Expunges::Known(uids),
        Ok(None) | Err(_) => qresync::Expunges::Forgotten,
    };
    let gone = qresync::vanished(Some(set), snap.uid_next, &present, &expunges);
    qresync::write_vanished(out, true, &gone);
}

/// RFC 3501 6.3.8 wildcard match: `*` anything, `%` anything but the
/// hierarchy delimiter.
fn wild(pat: &[u8], name: &[u8]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some(b'*') => (0..=name.len()).any(|i| wild(&pat[1..], &name[i..])),
        Some(b'%') => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != b'.')
            .any(|i| wild(&pat[1..], &name[i..])),
        Some(&c) => name.first().is_some_and(|&n| {
            (n == c || (n.is_ascii_alphabetic() && n.eq_ignore_ascii_case(&c)))
                && wild(&pat[1..], &name[1..])
        }),
    }
}

fn matches_pattern(reference: &str, pat: &str, name: &str) -> bool {
    let full = format!("{reference}{pat}");
    if name.eq_ignore_ascii_case("INBOX") {
        return wild(full.to_ascii_uppercase().as_bytes(), b"INBOX");
    }
    wild(full.as_bytes(), name.as_bytes())
}

fn list(
    tree: &Mailbox,
    acct: &Account,
    reference: &str,
    pats: &[String],
    opts: &crate::proto::imap::types::ListCommand,
    out: &mut Vec<u8>,
) {
    if pats.len() == 1 && pats[0].is_empty() {
        out.extend_from_slice(b"* LIST (\\Noselect) \".\" \"\"\r\n");
        return;
    }
    let Ok(all) = tree.list() else {
        return;
    };
    let subs = tree.subscriptions().unwrap_or_default();
    let subscribed_only = opts.select_subscribed;
    let show_subscribed = opts.select_subscribed || opts.return_subscribed;
    // (name, special use, subscribed, exists): folders, then the parents
    // of `.Lists.Family` that have no directory of their own, listed
    // \Noselect so a client browsing with `%` finds the way down
    // (RFC 3501 6.3.8), as Dovecot does.
    let mut entries: Vec<(String, Option<SpecialUse>, bool, bool)> = all
        .iter()
        .map(|l| {
            (
                l.name.imap(tree.separator()),
                l.special_use,
                subs.contains(&l.name),
                true,
            )
        })
        .collect();
    let mut parents = Vec::new();
    for (name, ..) in &entries {
        let mut at = 0;
        while let Some(i) = name[at..].find('.') {
            let parent = &name[..at + i];
            if !entries.iter().any(|e| e.0 == parent) && !parents.iter().any(|p| p == parent) {
                parents.push(parent.to_string());
            }
            at += i + 1;
        }
    }
    let sub_names: Vec<String> = subs.iter().map(|s| s.imap(tree.separator())).collect();
    for p in &mut parents {
        let subscribed = sub_names.iter().any(|s| s == p);
        entries.push((std::mem::take(p), None, subscribed, false));
    }
    let names: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
    if subscribed_only {
        // RFC 5258 3: a subscribed name with no mailbox is listed
        // \NonExistent (which implies \Noselect).
        for s in &sub_names {
            if !entries.iter().any(|e| &e.0 == s) {
                entries.push((s.clone(), None, true, false));
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let matches = |name: &str| {
        let utf8 = utf8_name(name).0;
        pats.iter().any(|p| matches_pattern(reference, p, &utf8))
    };
    for (name, special, subscribed, exists) in &entries {
        // The parser hands patterns over in UTF-8; names are stored in
        // modified UTF-7: match in UTF-8 (`p&AOQA5A-` is `pää`).
        if !matches(name) {
            continue;
        }
        let prefix = format!("{name}.");
        // RFC 5258 4 RECURSIVEMATCH: a name whose own entry does not
        // qualify is listed with CHILDINFO when a descendant the patterns
        // do not reach is subscribed.
        let childinfo = opts.select_recursive
            && subscribed_only
            && sub_names
                .iter()
                .any(|s| s.starts_with(&prefix) && !matches(s));
        if subscribed_only && !subscribed && !childinfo {
            continue;
        }
        let children = names.iter().any(|n| n.starts_with(&prefix));
        let nonexistent = !exists && !names.iter().any(|n| n == name);
        let mut attrs: Vec<&str> = Vec::new();
        if nonexistent {
            attrs.push("\\NonExistent");
        } else if !exists {
            attrs.push("\\Noselect");
        }
        attrs.push(if children {
            "\\HasChildren"
        } else {
            "\\HasNoChildren"
        });
        if let Some(u) = special {
            attrs.push(u.attribute());
        }
        if show_subscribed && *subscribed {
            attrs.push("\\Subscribed");
        }
        out.extend_from_slice(b"* LIST (");
        out.extend_from_slice(attrs.join(" ").as_bytes());
        out.extend_from_slice(b") \".\" ");
        response::mailbox(out, &utf8_name(name));
        if childinfo {
            out.extend_from_slice(b" (CHILDINFO (\"SUBSCRIBED\"))");
        }
        out.extend_from_slice(b"\r\n");
        // RFC 5819 LIST-STATUS: STATUS after each selectable mailbox's
        // LIST; one that cannot be read is left out (5819 2).
        if let (Some(items), true) = (&opts.return_status, *exists) {
            let mbox = utf8_name(name);
            if let Ok(vals) = status(tree, &mbox, items, acct) {
                response::status_data(out, &mbox, &vals);
            }
        }
    }
}

fn lsub(tree: &Mailbox, reference: &str, pat: &str, out: &mut Vec<u8>) {
    let subs = tree.subscriptions().unwrap_or_default();
    let names: Vec<String> = subs.iter().map(|s| s.imap(tree.separator())).collect();
    for (name, noselect) in lsub_entries(&names, reference, pat) {
        out.extend_from_slice(if noselect {
            b"* LSUB (\\Noselect) \".\" "
        } else {
            b"* LSUB () \".\" "
        });
        response::mailbox(out, &utf8_name(&name));
        out.extend_from_slice(b"\r\n");
    }
}

/// RFC 3501 6.3.9: the subscribed names matching the pattern; with `%`,
/// also an unsubscribed parent of a subscribed name that the pattern
/// matches (`Lists` for `Lists.Family` and `%`), marked \Noselect, so
/// a client browsing level by level finds the way down. `(name,
/// noselect)`, each name once.
fn lsub_entries(subs: &[String], reference: &str, pat: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for name in subs {
        if matches_pattern(reference, pat, &utf8_name(name).0) && !out.iter().any(|e| &e.0 == name)
        {
            out.push((name.clone(), false));
        }
    }
    if !format!("{reference}{pat}").contains('%') {
        return out;
    }
    for name in subs {
        for (i, _) in name.match_indices('.') {
            let parent = &name[..i];
            if subs.iter().any(|s| s == parent) || out.iter().any(|e| e.0 == parent) {
                continue;
            }
            if matches_pattern(reference, pat, &utf8_name(parent).0) {
                out.push((parent.to_string(), true));
            }
        }
    }
    out
}

fn status(
    tree: &Mailbox,
    name: &MailboxName,
    items: &[StatusItem],
    acct: &Account,
) -> io::Result<Vec<(StatusItem, u64)>> {
    let fname: FolderName = tree.parse(&wire(name))?;
    let snap = tree.folder(&fname).sync()?;
    Ok(items
        .iter()
        .map(|i| {
            let v = match i {
                StatusItem::Messages => snap.messages.len() as u64,
                StatusItem::Recent => snap
                    .messages
                    .iter()
                    .filter(|m| m.uid >= snap.first_recent)
                    .count() as u64,
                StatusItem::UidNext => u64::from(snap.uid_next),
                StatusItem::UidValidity => u64::from(snap.uidvalidity),
                StatusItem::Unseen => snap.unseen() as u64,
                StatusItem::HighestModSeq => snap.highest_modseq.max(1),
                StatusItem::Size => snap
                    .messages
                    .iter()
                    .map(|m| m.vsize.or(m.size).unwrap_or(0))
                    .sum(),
                StatusItem::AppendLimit => acct.append_limit,
            };
            (*i, v)
        })
        .collect())
}

/// Before a session is told of new messages, it claims their \Recent
/// (the first session told of a message gets it, RFC 3501 2.3.2). A
/// failed claim costs the hint only: the messages show without it.
fn claim_new<'a>(sel: &'a mut Selected, new: &Snapshot) -> &'a Selected {
    if sel.recent.wants(new.uid_next) {
        match sel.folder.claim_recent() {
            Ok((lo, hi)) => sel.recent.claim(lo, hi),
            Err(e) => log::warn!("imap: claiming \\Recent in {:?}: {e}", sel.folder.dir()),
        }
    }
    sel
}

/// Brings the selected view up to date before a command (and tells the
/// client), unless the command may not see expunges.
fn refresh(done: &mut Done, no_expunge: bool, out: &mut Vec<u8>) -> bool {
    let Some(sel) = done.selected.as_mut() else {
        return false;
    };
    match sel.folder.sync_from(&sel.snap) {
        Ok(new) => match report(claim_new(sel, &new), new, done.modes, no_expunge, out) {
            Ok(s) => sel.snap = s,
            Err(UidValidityChanged) => {
                done.close = true;
                response::status(out, None, Status::Bye, None, "Mailbox UIDVALIDITY changed");
                return false;
            }
        },
        Err(e) => log::warn!("imap: sync failed: {e}"),
    }
    true
}

/// Sequence numbers (1-based) a set names, or a BAD for numbers beyond
/// EXISTS (RFC 3501 6.4.8 leaves UIDs free).
/// The UIDs of the messages at these sequence numbers.
fn uids_of(snap: &Snapshot, seqs: &[u32]) -> Vec<u32> {
    seqs.iter()
        .filter_map(|&s| {
            (s as usize)
                .checked_sub(1)
                .and_then(|i| snap.messages.get(i))
        })
        .map(|m| m.uid)
        .collect()
}

fn read_only(out: &mut Vec<u8>, t: Option<&str>) {
    response::status(
        out,
        t,
        Status::No,
        Some(&Code::ReadOnly),
        "Mailbox is read-only",
    );
}

fn bad_sequence(out: &mut Vec<u8>, t: Option<&str>) {
    response::status(out, t, Status::Bad, None, "Invalid message sequence number");
}

fn resolve(snap: &Snapshot, set: &SeqSet, uid: bool) -> Result<Vec<u32>, ()> {
    let n = snap.messages.len() as u32;
    let mut v = Vec::new();
    if uid {
        let max = snap.messages.last().map_or(0, |m| m.uid);
        for (lo, hi) in set.ranges(max) {
            let s = snap.messages.partition_point(|m| m.uid < lo);
            let e = snap.messages.partition_point(|m| m.uid <= hi);
            v.extend((s..e).map(|i| i as u32 + 1));
        }
    } else {
        for (lo, hi) in set.ranges(n) {
            if hi > n || lo == 0 {
                return Err(());
            }
            v.extend(lo..=hi);
        }
    }
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

fn expunge(done: &mut Done, uids: Option<SeqSet>, tag: &str, out: &mut Vec<u8>) {
    let t = Some(tag);
    let Some(sel) = done.selected.as_ref() else {
        return;
    };
    if sel.read_only {
        return read_only(out, t);
    }
    let list: Option<Vec<u32>> = uids.map(|set| {
        let seqs = resolve(&sel.snap, &set, true).unwrap_or_default();
        uids_of(&sel.snap, &seqs)
    });
    match sel.folder.expunge(list.as_deref()) {
        Ok((gone, new)) => {
            done.changed = !gone.is_empty();
            let sel = done.selected.as_mut().map(|s| {
                let r = report(s, new, done.modes, false, out);
                (s, r)
            });
            if let Some((s, Ok(n))) = sel {
                s.snap = n;
            }
            response::status(out, t, Status::Ok, None, "EXPUNGE completed");
        }
        Err(e) => no(out, tag, &e),
    }
}

#[allow(clippy::too_many_arguments)]
fn store(
    done: &mut Done,
    uid: bool,
    set: &SeqSet,
    unchanged_since: Option<u64>,
    mode: StoreMode,
    silent: bool,
    list: &[Flag],
    tag: &str,
    out: &mut Vec<u8>,
) {
    let t = Some(tag);
    if !refresh(done, !uid, out) {
        return;
    }
    let modes = done.modes;
    let Some(sel) = done.selected.as_mut() else {
        return;
    };
    if sel.read_only {
        return read_only(out, t);
    }
    let Ok(seqs) = resolve(&sel.snap, set, uid) else {
        return bad_sequence(out, t);
    };
    let uids = uids_of(&sel.snap, &seqs);
    let (sys, kw) = split_flags(list);
    let kwr: Vec<&str> = kw.iter().map(String::as_str).collect();
    let op = match mode {
        StoreMode::Replace => FlagOp::Set,
        StoreMode::Add => FlagOp::Add,
        StoreMode::Remove => FlagOp::Remove,
    };
    match sel.folder.store(&uids, op, sys, &kwr, unchanged_since) {
        Ok(st) => {
            done.changed = !st.changed.is_empty();
            let new = st.snapshot;
            // Our own changes: FETCH unless .SILENT (RFC 3501 6.4.6); with
            // CONDSTORE, MODSEQ even when silent (RFC 7162 3.1.3).
            let old = Arc::clone(&sel.snap);
            announce_keywords(&old, &new, false, out);
            for u in &uids {
                let (Some(p), Some(m)) = (old.position(*u), new.find(*u)) else {
                    continue;
                };
                if silent && !(modes.condstore && st.changed.iter().any(|c| c.0 == *u)) {
                    continue;
                }
                let fl = flag_list(&new, m.flags, sel.recent.contains(m.uid));
                let mut f = Fetch::start(out, p as u32 + 1);
                if uid || modes.qresync {
                    f.uid(m.uid);
                }
                if !silent {
                    f.flags(&fl);
                }
                if modes.condstore {
                    f.modseq(m.modseq);
                }
                f.finish();
            }
            // Adopt the new state when no expunge hides in it.
            if new.diff(&old).expunged.is_empty() || uid {
                if let Some(n) = report_quiet(&old, &new) {
                    sel.snap = n;
                }
            }
            if st.modified.is_empty() {
                response::status(out, t, Status::Ok, None, "STORE completed");
            } else {
                let mut m: Vec<u32> = if uid {
                    st.modified.clone()
                } else {
                    st.modified
                        .iter()
                        .filter_map(|u| old.position(*u).map(|p| p as u32 + 1))
                        .collect()
                };
                m.sort_unstable();
                response::status(
                    out,
                    t,
                    Status::Ok,
                    Some(&Code::Modified(&m)),
                    "Conditional STORE failed",
                );
            }
        }
        Err(e) => no(out, tag, &e),
    }
}

/// The new snapshot, when only flag changes separate it from `old` that
/// the client was just told.
fn report_quiet(old: &Arc<Snapshot>, new: &Arc<Snapshot>) -> Option<Arc<Snapshot>> {
    let d = new.diff(old);
    if d.uidvalidity_changed || !d.added.is_empty() || !d.expunged.is_empty() {
        return None;
    }
    Some(Arc::clone(new))
}

#[allow(clippy::too_many_arguments)]
fn copy_move(
    tree: &Mailbox,
    done: &mut Done,
    uid: bool,
    set: &SeqSet,
    target: &MailboxName,
    is_move: bool,
    tag: &str,
    out: &mut Vec<u8>,
) {
    let t = Some(tag);
    let Some(sel) = done.selected.as_ref() else {
        return;
    };
    if is_move && sel.read_only {
        return read_only(out, t);
    }
    let Ok(seqs) = resolve(&sel.snap, set, uid) else {
        return bad_sequence(out, t);
    };
    let uids = uids_of(&sel.snap, &seqs);
    let dest = match tree.parse(&wire(target)) {
        Ok(n) => tree.folder(&n),
        Err(e) => return no(out, tag, &e),
    };
    if !dest.exists() {
        response::status(
            out,
            t,
            Status::No,
            Some(&Code::TryCreate),
            "No such mailbox",
        );
        return;
    }
    let same = dest.dir() == sel.folder.dir();
    let res = if is_move {
        sel.folder
            .move_to(&uids, &dest)
            .map(|m| (m.uids, m.target, Some(m.source)))
    } else {
        sel.folder
            .copy_to(&uids, &dest)
            .map(|c| (c.uids, c.target, None))
    };
    match res {
        Ok((map, target, source)) => {
            done.changed = true;
            let from: Vec<u32> = map.iter().map(|p| p.0).collect();
            let to: Vec<u32> = map.iter().map(|p| p.1).collect();
            let code = Code::CopyUid {
                uidvalidity: target.uidvalidity,
                from: &from,
                to: &to,
            };
            if is_move {
                // RFC 6851 4.3: COPYUID in an untagged OK, then EXPUNGEs.
                if !map.is_empty() {
                    response::status(out, None, Status::Ok, Some(&code), "Moved");
                }
                if let (Some(src), Some(sel)) = (source, done.selected.as_mut()) {
                    if let Ok(n) = report(sel, src, done.modes, false, out) {
                        sel.snap = n;
                    }
                }
                response::status(out, t, Status::Ok, None, "MOVE completed");
            } else if map.is_empty() {
                response::status(out, t, Status::Ok, None, "COPY completed");
            } else if same {
                // Into the selected folder: EXISTS for the copies now, as
                // Dovecot does, rather than at the next command.
                refresh(done, false, out);
                response::status(out, t, Status::Ok, Some(&code), "COPY completed");
            } else {
                response::status(out, t, Status::Ok, Some(&code), "COPY completed");
            }
        }
        Err(e) => no(out, tag, &e),
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(_) => 0,
    }
}

fn needs_file(a: &FetchAttr) -> bool {
    !matches!(
        a,
        FetchAttr::Flags | FetchAttr::Uid | FetchAttr::ModSeq | FetchAttr::InternalDate
    ) && !matches!(a, FetchAttr::Rfc822Size)
}

fn fetch_start(
    done: &mut Done,
    uid: bool,
    set: &SeqSet,
    mut attrs: Vec<FetchAttr>,
    changed_since: Option<u64>,
    tag: &str,
    out: &mut Vec<u8>,
) {
    if !refresh(done, !uid, out) {
        return;
    }
    let Some(sel) = done.selected.as_ref() else {
        return;
    };
    let Ok(seqs) = resolve(&sel.snap, set, uid) else {
        response::status(
            out,
            Some(tag),
            Status::Bad,
            None,
            "Invalid message sequence number",
        );
        return;
    };
    // RFC 7162 3.1: FETCH MODSEQ or CHANGEDSINCE enables CONDSTORE, and
    // the first enabling command is told HIGHESTMODSEQ.
    if (changed_since.is_some() || attrs.contains(&FetchAttr::ModSeq)) && !done.modes.condstore {
        done.modes.condstore = true;
        let h = sel.snap.highest_modseq.max(1);
        response::status(
            out,
            None,
            Status::Ok,
            Some(&Code::HighestModSeq(h)),
            "Highest",
        );
    }
    if uid && !attrs.contains(&FetchAttr::Uid) {
        attrs.insert(0, FetchAttr::Uid);
    }
    if done.modes.condstore && changed_since.is_some() && !attrs.contains(&FetchAttr::ModSeq) {
        attrs.push(FetchAttr::ModSeq);
    }
    let rest = FetchRest {
        tag: tag.to_string(),
        uid,
        seqs,
        next: 0,
        attrs,
        changed_since,
        cur: None,
        counted: Vec::new(),
    };
    fetch_more(done, Box::new(rest), out);
}

/// Answers FETCH for messages until about [`FETCH_PIECE`] octets are out;
/// a big literal is cut there and carried on by the next piece.
pub fn fetch_more(done: &mut Done, mut rest: Box<FetchRest>, out: &mut Vec<u8>) {
    let Some(sel) = done.selected.as_mut() else {
        return;
    };
    let sets_seen = !sel.read_only && rest.attrs.iter().any(FetchAttr::sets_seen);
    let mut seen_uids = Vec::new();
    let snap = Arc::clone(&sel.snap);
    while out.len() < FETCH_PIECE {
        let mut cur = match rest.cur.take() {
            Some(c) => c,
            None => {
                let Some(&seq) = rest.seqs.get(rest.next) else {
                    break;
                };
                rest.next += 1;
                let Some(m) = snap.messages.get(seq as usize - 1) else {
                    continue;
                };
                if rest.changed_since.is_some_and(|c| m.modseq <= c) {
                    continue;
                }
                let body = if rest.attrs.iter().any(needs_file) {
                    match sel.folder.open(m).and_then(|f| {
                        let st = imap_body::structure_of(&f)?;
                        Ok((f, st))
                    }) {
                        Ok(b) => Some(b),
                        // Expunged meanwhile (RFC 2180 4.1.2): leave it out.
                        Err(_) => continue,
                    }
                } else {
                    None
                };
                let mut fl = m.flags;
                let mut add_seen = false;
                if sets_seen && !fl.has(flags::SEEN) {
                    seen_uids.push(m.uid);
                    fl.system |= flags::SEEN;
                    add_seen = true;
                }
                Box::new(MessageCursor {
                    seq,
                    index: seq as usize - 1,
                    body,
                    flags: flag_list(&snap, fl, sel.recent.contains(m.uid)),
                    add_seen,
                    flags_sent: false,
                    opened: false,
                    items: false,
                    attr: 0,
                    literal: None,
                })
            }
        };
        match fetch_message(&mut cur, sel, &snap, &rest.attrs, &mut rest.counted, out) {
            Ok(true) => {}
            Ok(false) => {
                rest.cur = Some(cur);
                break;
            }
            Err(e) => {
                // Part of a literal is out and its length announced: the
                // only way on is to end the session (RFC 3501 7.1.5).
                warn!("imap: reading {:?} mid-FETCH failed: {e}", sel.folder.dir());
                response::status(out, None, Status::Bye, None, "Message vanished mid-FETCH");
                done.close = true;
                return;
            }
        }
    }
    if !seen_uids.is_empty() {
        if let Ok(st) = sel
            .folder
            .store(&seen_uids, FlagOp::Add, flags::SEEN, &[], None)
        {
            done.changed = true;
            if let Some(n) = report_quiet(&sel.snap, &st.snapshot) {
                sel.snap = n;
            }
        }
    }
    if rest.next < rest.seqs.len() || rest.cur.is_some() {
        done.more = Some(rest);
    } else {
        // A cache: a failed write only means counting again next time.
        if let Err(e) = sel.folder.remember_sizes(&rest.counted) {
            log::debug!("imap: keeping counted sizes in {:?}: {e}", sel.folder.dir());
        }
        response::status(out, Some(&rest.tag), Status::Ok, None, "FETCH completed");
    }
}

/// Writes one message's `* n FETCH (...)` from where `cur` left off;
/// false when the piece filled up inside a literal.
fn fetch_message(
    cur: &mut MessageCursor,
    sel: &Selected,
    snap: &Snapshot,
    attrs: &[FetchAttr],
    counted: &mut Vec<(u32, u64)>,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    let Some(m) = snap.messages.get(cur.index) else {
        return Ok(true);
    };
    let mut f = if cur.opened {
        Fetch::resume(out, cur.items)
    } else {
        cur.opened = true;
        Fetch::start(out, cur.seq)
    };
    loop {
        if let (Some(lit), Some((file, _))) = (&mut cur.literal, &cur.body) {
            if !lit.write(file, f.buffer(), FETCH_PIECE)? {
                cur.items = true;
                return Ok(false);
            }
            cur.literal = None;
        }
        let Some(a) = attrs.get(cur.attr) else {
            break;
        };
        cur.attr += 1;
        let structure = cur.body.as_ref().map(|(_, st)| st);
        match a {
            FetchAttr::Uid => f.uid(m.uid),
            FetchAttr::Flags => {
                f.flags(&cur.flags);
                cur.flags_sent = true;
            }
            FetchAttr::ModSeq => f.modseq(m.modseq.max(1)),
            FetchAttr::InternalDate => {
                let d = sel.folder.internal_date(m).map(unix).unwrap_or(0);
                f.internal_date(d, 0);
            }
            FetchAttr::Rfc822Size => {
                let s = match (m.vsize, structure) {
                    (Some(w), _) => w,
                    (None, Some(st)) => st.size(),
                    (None, None) => sel.folder.rfc822_size(m).unwrap_or(0),
                };
                if m.vsize.is_none() {
                    counted.push((m.uid, s));
                }
                f.number("RFC822.SIZE", s);
            }
            FetchAttr::Envelope => {
                if let Some(st) = structure {
                    let mut v = Vec::new();
                    st.envelope(&mut v, 0);
                    f.raw("ENVELOPE", &v);
                }
            }
            FetchAttr::Body | FetchAttr::BodyStructure => {
                if let Some(st) = structure {
                    let mut v = Vec::new();
                    st.body_structure(&mut v, matches!(a, FetchAttr::BodyStructure));
                    let name = if matches!(a, FetchAttr::Body) {
                        "BODY"
                    } else {
                        "BODYSTRUCTURE"
                    };
                    f.raw(name, &v);
                }
            }
            FetchAttr::Rfc822
            | FetchAttr::Rfc822Header
            | FetchAttr::Rfc822Text
            | FetchAttr::BodySection { .. } => {
                let Some((file, st)) = &cur.body else {
                    continue;
                };
                let (section, partial) = section_of(a);
                let mut name = response::fetch_attr_name(a);
                if let Some((o, _)) = partial {
                    // RFC 3501 7.4.2: the origin, not the length.
                    if let Some(i) = name.rfind('<') {
                        name.truncate(i);
                        name.push_str(&format!("<{o}>"));
                    }
                }
                match st.section(&section) {
                    Some(range) => {
                        let (lit, len) = imap_body::Literal::new(file, &range, partial)?;
                        f.literal_head(&name, len);
                        cur.literal = Some(lit);
                    }
                    None => f.literal_head(&name, 0),
                }
            }
            FetchAttr::Binary { .. } | FetchAttr::BinarySize(_) => {}
        }
    }
    if cur.add_seen && !cur.flags_sent {
        f.flags(&cur.flags);
    }
    f.finish();
    Ok(true)
}

/// The section and `<partial>` a body item asks for.
fn section_of(a: &FetchAttr) -> (Section, Option<(u32, u32)>) {
    match a {
        FetchAttr::BodySection {
            section, partial, ..
        } => (section.clone(), *partial),
        FetchAttr::Rfc822Header => (
            Section {
                part: vec![],
                text: Some(SectionText::Header),
            },
            None,
        ),
        FetchAttr::Rfc822Text => (
            Section {
                part: vec![],
                text: Some(SectionText::Text),
            },
            None,
        ),
        _ => (Section::default(), None),
    }
}

/// Continues a FETCH that did not fit in one piece.
pub fn fetch_continue(selected: Selected, modes: Modes, rest: Box<FetchRest>) -> Done {
    let mut done = Done {
        out: Vec::new(),
        selected: Some(selected),
        state: State::Selected,
        changed: false,
        close: false,
        more: None,
        modes,
    };
    let mut out = Vec::new();
    fetch_more(&mut done, rest, &mut out);
    done.out = out;
    done
}

fn search_cmd(
    done: &mut Done,
    uid: bool,
    ret: Option<Vec<SearchReturn>>,
    charset: Option<String>,
    key: &crate::proto::imap::types::SearchKey,
    tag: &str,
    out: &mut Vec<u8>,
) {
    let t = Some(tag);
    if let Some(c) = &charset {
        if !c.eq_ignore_ascii_case("UTF-8") && !c.eq_ignore_ascii_case("US-ASCII") {
            response::status(
                out,
                t,
                Status::No,
                Some(&Code::BadCharset),
                "Unsupported charset",
            );
            return;
        }
    }
    if !refresh(done, !uid, out) {
        return;
    }
    let Some(sel) = done.selected.as_ref() else {
        return;
    };
    let snap = &sel.snap;
    let max_seq = snap.messages.len() as u32;
    let max_uid = snap.messages.last().map_or(0, |m| m.uid);
    let content = search::needs_content(key);
    let mut hits = Vec::new();
    let mut top_modseq = 0;
    // In message order, as `hits`: MIN is the first, MAX the last.
    let mut hit_modseqs = Vec::new();
    for (i, m) in snap.messages.iter().enumerate() {
        let fl = flag_list(snap, m.flags, sel.recent.contains(m.uid));
        let meta = MessageMeta {
            seq: i as u32 + 1,
            uid: m.uid,
            max_seq,
            max_uid,
            flags: &fl,
            recent: sel.recent.contains(m.uid),
            size: m
                .vsize
                .unwrap_or_else(|| sel.folder.rfc822_size(m).unwrap_or(0)),
            internal_date: sel.folder.internal_date(m).map(unix).unwrap_or(0),
            zone_minutes: 0,
            modseq: m.modseq,
        };
        let facts = if content {
            let Ok(facts) = sel.folder.open(m).and_then(|f| imap_body::scan_of(&f, key)) else {
                continue;
            };
            Some(facts)
        } else {
            None
        };
        if search::matches(key, &meta, facts.as_ref()) {
            hits.push(if uid { m.uid } else { i as u32 + 1 });
            hit_modseqs.push(m.modseq);
            top_modseq = top_modseq.max(m.modseq);
        }
    }
    let modseq = search::uses_modseq(key).then_some(top_modseq);
    match ret {
        None => response::search(out, &hits, modseq.filter(|_| !hits.is_empty())),
        Some(r) => {
            if r.contains(&SearchReturn::Save) {
                response::status(out, t, Status::Bad, None, "SEARCHRES is not supported");
                return;
            }
            let (min, max) = (
                r.contains(&SearchReturn::Min),
                r.contains(&SearchReturn::Max),
            );
            let all = r.contains(&SearchReturn::All) || r.is_empty();
            let count = r.contains(&SearchReturn::Count);
            // RFC 7162 3.1.5: with MIN or MAX alone, MODSEQ is that
            // message's; otherwise the highest of all matches.
            let modseq = match (min, max, all || count) {
                (true, false, false) => modseq.and(hit_modseqs.first().copied()),
                (false, true, false) => modseq.and(hit_modseqs.last().copied()),
                _ => modseq,
            };
            let e = response::Esearch {
                tag,
                uid,
                min,
                max,
                all,
                count,
                modseq,
            };
            response::esearch(out, &e, &hits);
        }
    }
    response::status(out, t, Status::Ok, None, "SEARCH completed");
}

/// APPEND: the literal is in a spool file in the mailbox's `tmp/` and
/// `tail` (what came after its last chunk); stored durably by the
/// folder, then the spool file goes, stored or not.
pub fn append(
    acct: &Account,
    selected: Option<Selected>,
    modes: Modes,
    tag: &str,
    body: AppendBody,
) -> Done {
    let mut out = Vec::new();
    let mut done = Done {
        out: Vec::new(),
        state: if selected.is_some() {
            State::Selected
        } else {
            State::Authenticated
        },
        selected,
        changed: false,
        close: false,
        more: None,
        modes,
    };
    let tree = acct.tree();
    let AppendBody {
        head,
        spool,
        tail,
        failed,
    } = body;
    let list = &head.flags;
    let date = head.date.map(|d| d.unix());
    let mut spool_left = None;
    let r = (|| -> io::Result<(u32, u32)> {
        if let Some(e) = failed {
            if let Some(s) = spool {
                s.remove();
            }
            return Err(e);
        }
        let spool = spool_left.insert(imap_append::write_to(spool, &acct.root, &tail)?);
        let name = tree.parse(&wire(&head.mailbox))?;
        let folder = tree.folder(&name);
        if !folder.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "[TRYCREATE] No such mailbox",
            ));
        }
        let spool = spool.path().to_path_buf();
        let (sys, kw) = split_flags(list);
        let kwr: Vec<&str> = kw.iter().map(String::as_str).collect();
        let nm = NewMessage {
            spool: &spool,
            system: sys,
            keywords: &kwr,
            internal_date: date
                .map(|d| UNIX_EPOCH + std::time::Duration::from_secs(d.max(0) as u64)),
        };
        let (uids, snap) = folder.append(&[nm])?;
        Ok((snap.uidvalidity, uids.first().copied().unwrap_or(0)))
    })();
    match r {
        Ok((uidvalidity, uid)) => {
            done.changed = true;
            // A message appended to the selected folder shows at once.
            if done.selected.is_some() {
                refresh(&mut done, false, &mut out);
            }
            response::status(
                &mut out,
                Some(tag),
                Status::Ok,
                Some(&Code::AppendUid { uidvalidity, uid }),
                "APPEND completed",
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => response::status(
            &mut out,
            Some(tag),
            Status::No,
            Some(&Code::TryCreate),
            "No such mailbox",
        ),
        Err(e) => no(&mut out, tag, &e),
    }
    if let Some(s) = spool_left {
        s.remove();
    }
    done.out = out;
    done
}

/// First login: the special-use folders exist and are subscribed.
pub fn prepare(acct: &Account) -> io::Result<()> {
    let tree = acct.tree();
    std::fs::create_dir_all(&acct.root)?;
    tree.ensure_defaults().map(|_| ())
}
