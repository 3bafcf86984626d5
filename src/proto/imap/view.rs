//! The session's view of its selected mailbox (RFC 3501 2.3.1): message
//! sequence numbers, UIDs, flags, modseqs and `\Recent`, and how it moves
//! to the store's newer state with the untagged responses that tell the
//! client (EXISTS, RECENT, EXPUNGE or VANISHED, FETCH FLAGS [MODSEQ]).
//!
//! Owns: the numbering rules (sequence numbers are positions in UID
//! order; `*`; ranges in either order; UIDs not in the mailbox ignored,
//! RFC 3501 6.4.8), the rule that expunges wait while a FETCH, STORE or
//! SEARCH runs (RFC 3501 7.4.1), and diffing one state against the next.
//!
//! Must not: read the store. The store hands a [`Snapshot`] (from the
//! uidlist and a directory listing) through the driver; this is plain data.

use super::response::{self, Fetch};
use super::types::{Flag, SeqSet};

/// One message as the store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    pub uid: u32,
    pub flags: Vec<Flag>,
    /// RFC 7162 mod-sequence of its last change.
    pub modseq: u64,
    /// `\Recent` for this session (the store gives each new message to
    /// exactly one session: RFC 3501 2.3.2).
    pub recent: bool,
}

/// The store's state of a mailbox, messages in UID order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub uidvalidity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    pub messages: Vec<MessageState>,
}

/// What the client has enabled, and whether expunges may be told now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateMode {
    /// RFC 7162: FETCH responses carry MODSEQ.
    pub condstore: bool,
    /// RFC 7162 3.2.10: VANISHED instead of EXPUNGE, and UID in FETCH.
    pub qresync: bool,
    /// False during FETCH, STORE and SEARCH (RFC 3501 7.4.1): expunged
    /// messages stay (as ghosts) until a command that allows it.
    pub expunges_allowed: bool,
}

/// The store's mailbox is not the one selected any more: its
/// UIDVALIDITY changed (RFC 3501 2.3.1.1). The session must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidValidityChanged;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    state: MessageState,
    /// Gone from the store, not yet told to the client.
    expunged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxView {
    pub uidvalidity: u32,
    pub uid_next: u32,
    pub highest_modseq: u64,
    entries: Vec<Entry>,
}

fn same_flags(a: &[Flag], b: &[Flag]) -> bool {
    a.len() == b.len() && a.iter().all(|f| b.iter().any(|g| g.same(f)))
}

impl MailboxView {
    pub fn new(s: Snapshot) -> MailboxView {
        MailboxView {
            uidvalidity: s.uidvalidity,
            uid_next: s.uid_next,
            highest_modseq: s.highest_modseq,
            entries: s
                .messages
                .into_iter()
                .map(|state| Entry {
                    state,
                    expunged: false,
                })
                .collect(),
        }
    }

    /// The EXISTS count: messages the client knows, ghosts included.
    pub fn exists(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn recent(&self) -> u32 {
        self.entries.iter().filter(|e| e.state.recent).count() as u32
    }

    /// The first message without `\Seen` (SELECT's `[UNSEEN n]`).
    pub fn first_unseen(&self) -> Option<u32> {
        self.entries
            .iter()
            .position(|e| !e.state.flags.contains(&Flag::Seen))
            .map(|i| i as u32 + 1)
    }

    pub fn message(&self, seq: u32) -> Option<&MessageState> {
        self.entries
            .get((seq as usize).checked_sub(1)?)
            .map(|e| &e.state)
    }

    /// Whether the message at `seq` is gone from the store (RFC 2180 4.1).
    pub fn is_expunged(&self, seq: u32) -> bool {
        self.entries
            .get((seq as usize).wrapping_sub(1))
            .is_some_and(|e| e.expunged)
    }

    pub fn seq_of(&self, uid: u32) -> Option<u32> {
        self.entries
            .binary_search_by_key(&uid, |e| e.state.uid)
            .ok()
            .map(|i| i as u32 + 1)
    }

    fn max_uid(&self) -> u32 {
        self.entries.last().map_or(0, |e| e.state.uid)
    }

    /// The sequence numbers a set names, ascending, each once. A sequence
    /// set beyond EXISTS is the caller's BAD (RFC 3501 6.4.8 allows
    /// either); this just leaves such numbers out. For UIDs, `*` is the
    /// highest UID, and UIDs not in the mailbox are ignored.
    pub fn resolve(&self, set: &SeqSet, uid: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if self.entries.is_empty() {
            return out;
        }
        if uid {
            for (lo, hi) in set.ranges(self.max_uid()) {
                let start = self.entries.partition_point(|e| e.state.uid < lo);
                let end = self.entries.partition_point(|e| e.state.uid <= hi);
                out.extend((start..end).map(|i| i as u32 + 1));
            }
        } else {
            let n = self.exists();
            for (lo, hi) in set.ranges(n) {
                out.extend(lo.max(1)..=hi.min(n));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether a sequence set names a number beyond EXISTS (`*` aside).
    pub fn out_of_range(&self, set: &SeqSet) -> bool {
        let n = self.exists();
        set.ranges(n).any(|(_, hi)| hi > n)
    }

    /// Moves to the store's newer state and writes what the client must
    /// be told: EXPUNGE/VANISHED (if allowed), EXISTS and RECENT for new
    /// messages, FETCH for changed flags. A new UIDVALIDITY cannot be
    /// told in a session: the caller must close it.
    pub fn update(
        &mut self,
        s: Snapshot,
        mode: UpdateMode,
        out: &mut Vec<u8>,
    ) -> Result<(), UidValidityChanged> {
        if s.uidvalidity != self.uidvalidity {
            return Err(UidValidityChanged);
        }
        // Expunged: in the view, not in the snapshot.
        let mut gone = Vec::new();
        let mut j = 0;
        for e in &mut self.entries {
            while j < s.messages.len() && s.messages[j].uid < e.state.uid {
                j += 1;
            }
            if j >= s.messages.len() || s.messages[j].uid != e.state.uid {
                e.expunged = true;
            }
        }
        if mode.expunges_allowed {
            // Highest first: the lower numbers stay valid as we go.
            for i in (0..self.entries.len()).rev() {
                if self.entries[i].expunged {
                    gone.push(self.entries[i].state.uid);
                    if !mode.qresync {
                        response::expunge(out, i as u32 + 1);
                    }
                    self.entries.remove(i);
                }
            }
            if mode.qresync {
                response::vanished(out, false, &gone);
            }
        }
        // Changed flags of messages both sides have.
        let mut k = 0;
        for (i, e) in self.entries.iter_mut().enumerate() {
            while k < s.messages.len() && s.messages[k].uid < e.state.uid {
                k += 1;
            }
            let Some(m) = s.messages.get(k).filter(|m| m.uid == e.state.uid) else {
                continue;
            };
            let changed = !same_flags(&m.flags, &e.state.flags)
                || (mode.condstore && m.modseq != e.state.modseq);
            e.state.flags.clone_from(&m.flags);
            e.state.modseq = m.modseq;
            e.state.recent |= m.recent;
            if changed {
                let mut f = Fetch::start(out, i as u32 + 1);
                if mode.qresync {
                    f.uid(m.uid);
                }
                f.flags(m.flags.iter());
                if mode.condstore || mode.qresync {
                    f.modseq(m.modseq);
                }
                f.finish();
            }
        }
        // New messages: UIDs above the highest known.
        let top = self.max_uid();
        let before = self.entries.len();
        let recent_before = self.recent();
        for m in s.messages.into_iter().filter(|m| m.uid > top) {
            self.entries.push(Entry {
                state: m,
                expunged: false,
            });
        }
        // After EXPUNGEs the client counts down itself (RFC 3501 7.4.1).
        if self.entries.len() != before {
            response::exists(out, self.exists());
        }
        if self.recent() != recent_before {
            response::recent(out, self.recent());
        }
        self.uid_next = s.uid_next;
        self.highest_modseq = self.highest_modseq.max(s.highest_modseq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::imap::parser::parse_command;
    use crate::proto::imap::types::CommandBody;

    fn msg(uid: u32, flags: &[Flag], modseq: u64) -> MessageState {
        MessageState {
            uid,
            flags: flags.to_vec(),
            modseq,
            recent: false,
        }
    }

    fn snap(messages: Vec<MessageState>) -> Snapshot {
        let uid_next = messages.last().map_or(1, |m| m.uid + 1);
        let highest_modseq = messages.iter().map(|m| m.modseq).max().unwrap_or(1);
        Snapshot {
            uidvalidity: 42,
            uid_next,
            highest_modseq,
            messages,
        }
    }

    fn set(s: &str) -> SeqSet {
        match parse_command(format!("t FETCH {s} FLAGS").as_bytes())
            .unwrap()
            .body
        {
            CommandBody::Fetch { set, .. } => set,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbering() {
        let v = MailboxView::new(snap(vec![
            msg(3, &[Flag::Seen], 1),
            msg(7, &[], 1),
            msg(8, &[], 1),
            msg(20, &[Flag::Seen], 1),
        ]));
        assert_eq!(v.exists(), 4);
        assert_eq!(v.first_unseen(), Some(2));
        assert_eq!(v.seq_of(8), Some(3));
        assert_eq!(v.seq_of(9), None);
        let rows: &[(&str, bool, &[u32])] = &[
            ("1:*", false, &[1, 2, 3, 4]),
            ("*", false, &[4]),
            ("3:2", false, &[2, 3]),
            ("2,2,1:2", false, &[1, 2]),
            ("4:9", false, &[4]),
            ("1:*", true, &[1, 2, 3, 4]),
            ("7:8", true, &[2, 3]),
            ("8:7", true, &[2, 3]),
            ("4:6", true, &[]),
            ("*", true, &[4]),
            // RFC 3501 6.4.8: UID n:* with n above the highest is the highest.
            ("100:*", true, &[4]),
            ("21:4294967295", true, &[]),
        ];
        for (s, uid, want) in rows {
            assert_eq!(v.resolve(&set(s), *uid), *want, "{s} uid={uid}");
        }
        assert!(v.out_of_range(&set("5")));
        assert!(!v.out_of_range(&set("1:*")));
    }

    fn text(out: &[u8]) -> String {
        String::from_utf8_lossy(out).into_owned()
    }

    #[test]
    fn updates() {
        let mut v = MailboxView::new(snap(vec![
            msg(1, &[], 1),
            msg(2, &[], 1),
            msg(3, &[], 1),
            msg(4, &[], 1),
        ]));
        let mut out = Vec::new();
        // Another session expunged 2 and 4, flagged 3, and 5 arrived.
        let mut new = msg(5, &[], 4);
        new.recent = true;
        let next = snap(vec![
            msg(1, &[], 1),
            msg(3, &[Flag::Flagged], 3),
            new.clone(),
        ]);
        // During FETCH: no expunges yet, the rest is told.
        let during = UpdateMode {
            condstore: false,
            qresync: false,
            expunges_allowed: false,
        };
        v.update(next.clone(), during, &mut out).unwrap();
        assert_eq!(
            text(&out),
            "* 3 FETCH (FLAGS (\\Flagged))\r\n* 5 EXISTS\r\n* 1 RECENT\r\n"
        );
        assert!(v.is_expunged(2) && v.is_expunged(4) && !v.is_expunged(5));
        out.clear();
        // At NOOP: the expunges, highest first, then the new count.
        v.update(
            next.clone(),
            UpdateMode {
                expunges_allowed: true,
                ..during
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(text(&out), "* 4 EXPUNGE\r\n* 2 EXPUNGE\r\n");
        assert_eq!(v.seq_of(5), Some(3));
        out.clear();
        // Nothing changed: nothing said.
        v.update(
            next,
            UpdateMode {
                expunges_allowed: true,
                ..during
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(text(&out), "");
    }

    #[test]
    fn qresync_updates() {
        let mut v = MailboxView::new(snap(vec![
            msg(10, &[], 5),
            msg(11, &[], 5),
            msg(12, &[], 5),
        ]));
        let mut out = Vec::new();
        let mode = UpdateMode {
            condstore: true,
            qresync: true,
            expunges_allowed: true,
        };
        v.update(
            snap(vec![msg(
                12,
                &[Flag::Seen, Flag::Keyword("$Junk".into())],
                9,
            )]),
            mode,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            text(&out),
            "* VANISHED 10:11\r\n* 1 FETCH (UID 12 FLAGS (\\Seen $Junk) MODSEQ (9))\r\n"
        );
        assert_eq!(v.highest_modseq, 9);
        // A new UIDVALIDITY cannot be told: the session must end.
        let mut other = snap(vec![]);
        other.uidvalidity = 43;
        assert!(v.update(other, mode, &mut out).is_err());
    }
}
