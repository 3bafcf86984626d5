//! QRESYNC resynchronisation (RFC 7162 3.2.5, 3.2.6): which UIDs a
//! client is told have vanished, and which messages it is sent again,
//! when it selects a mailbox with `(QRESYNC (uidvalidity modseq
//! [known-uids]))` or asks `UID FETCH ... (CHANGEDSINCE m VANISHED)`.
//!
//! Owns: the choice of UIDs, as ranges (a client may name `1:4294967295`
//! as its known UIDs: nothing here is proportional to a range's width,
//! only to the messages present and the expunge records kept).
//!
//! Must not: read the store; the driver hands in the messages present
//! (UID, modseq) and the expunge records it has.

use super::types::SeqSet;

/// What the store remembers of expunges after a modseq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expunges {
    /// Every UID expunged after the client's modseq (ascending).
    Known(Vec<u32>),
    /// The records do not reach back that far (a lost or trimmed
    /// `mailgate-modseq`): report every UID that is not here, which RFC
    /// 7162 3.2.5.2 allows (a client ignores UIDs it never had).
    Forgotten,
}

/// UIDs at or above this do not exist yet: nothing beyond it can have
/// vanished.
fn cap(uid_next: u32) -> u32 {
    uid_next.saturating_sub(1)
}

/// The UID ranges of `known` (or `1:uid_next-1` when the client sent
/// none), sorted and merged.
fn known_ranges(known: Option<&SeqSet>, uid_next: u32) -> Vec<(u32, u32)> {
    let top = cap(uid_next);
    let mut v: Vec<(u32, u32)> = match known {
        // `*` in a UID set is the largest UID in use (RFC 3501 9).
        Some(set) => set
            .ranges(top)
            .filter_map(|(lo, hi)| (lo <= top).then_some((lo.max(1), hi.min(top))))
            .collect(),
        None if top >= 1 => vec![(1, top)],
        None => Vec::new(),
    };
    v.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// The UIDs to report in `VANISHED (EARLIER)`, as ascending ranges.
/// `present` is the mailbox's UIDs, ascending.
pub fn vanished(
    known: Option<&SeqSet>,
    uid_next: u32,
    present: &[u32],
    expunges: &Expunges,
) -> Vec<(u32, u32)> {
    let ranges = known_ranges(known, uid_next);
    let inside = |u: u32| {
        let i = ranges.partition_point(|r| r.1 < u);
        ranges.get(i).is_some_and(|r| r.0 <= u)
    };
    match expunges {
        Expunges::Known(uids) => {
            let mut out: Vec<(u32, u32)> = Vec::new();
            for &u in uids {
                // An expunge record of a UID that is here again cannot be
                // (UIDs are not reused), but never tell a client a
                // message it can see has gone.
                if !inside(u) || present.binary_search(&u).is_ok() {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.1.checked_add(1) == Some(u) => last.1 = u,
                    Some(last) if last.1 >= u => {}
                    _ => out.push((u, u)),
                }
            }
            out
        }
        Expunges::Forgotten => {
            // The gaps between present UIDs, within the known ranges.
            let mut out = Vec::new();
            for (lo, hi) in ranges {
                let mut next = lo;
                let start = present.partition_point(|&u| u < lo);
                for &u in present.get(start..).unwrap_or(&[]) {
                    if u > hi {
                        break;
                    }
                    if u > next {
                        out.push((next, u - 1));
                    }
                    next = u.saturating_add(1);
                }
                if next <= hi && next >= lo {
                    out.push((next, hi));
                }
            }
            out
        }
    }
}

/// Whether a message is to be sent again: changed after `modseq`, and
/// among the client's known UIDs when it named them.
pub fn resend(
    known: Option<&SeqSet>,
    uid_next: u32,
    uid: u32,
    msg_modseq: u64,
    modseq: u64,
) -> bool {
    msg_modseq > modseq && known.is_none_or(|k| k.contains(uid, cap(uid_next)))
}

/// `* VANISHED (EARLIER) 3:5,9` for ranges; nothing for none.
pub fn write_vanished(out: &mut Vec<u8>, earlier: bool, ranges: &[(u32, u32)]) {
    if ranges.is_empty() {
        return;
    }
    out.extend_from_slice(if earlier {
        b"* VANISHED (EARLIER) "
    } else {
        b"* VANISHED "
    });
    for (i, (lo, hi)) in ranges.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if lo == hi {
            out.extend_from_slice(lo.to_string().as_bytes());
        } else {
            out.extend_from_slice(format!("{lo}:{hi}").as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}
