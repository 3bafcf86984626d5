//! Which UIDs are `\Recent` for one session (RFC 3501 2.3.2: a message
//! is recent in exactly one session, the first to be told of it).
//!
//! Owns: the UID ranges a session claimed from the folder (at SELECT,
//! and each time it learns of new messages), bounded.
//!
//! Must not: claim anything itself; the driver claims from the store
//! (which records the claim durably) and hands the range in.

/// Claims kept; a session that keeps losing races to others for new
/// messages forgets its oldest claims first (those messages then show
/// without `\Recent`, which only costs a hint, never a duplicate).
pub const MAX_CLAIMS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecentSet {
    /// Ascending, disjoint, half-open `[lo, hi)` UID ranges.
    claims: Vec<(u32, u32)>,
    /// UIDs below this were offered to this session (claimed or not):
    /// nothing below it is asked for again.
    asked: u32,
}

impl RecentSet {
    /// Claimed `[lo, hi)` at SELECT.
    pub fn selected(lo: u32, hi: u32) -> RecentSet {
        let mut r = RecentSet::default();
        r.claim(lo, hi);
        r
    }

    /// EXAMINE: claims nothing, but shows what is still unclaimed
    /// (RFC 3501 6.3.2), from `lo` on; never asks for more.
    pub fn examined(lo: u32) -> RecentSet {
        RecentSet {
            claims: vec![(lo, u32::MAX)],
            asked: u32::MAX,
        }
    }

    /// Whether messages up to `uid_next` are new to this session and
    /// must be claimed before it is told of them.
    pub fn wants(&self, uid_next: u32) -> bool {
        uid_next > self.asked
    }

    /// The store gave this session `[lo, hi)` (empty when another session
    /// claimed them first).
    pub fn claim(&mut self, lo: u32, hi: u32) {
        self.asked = self.asked.max(hi);
        if lo >= hi {
            return;
        }
        match self.claims.last_mut() {
            Some(last) if last.1 >= lo => last.1 = last.1.max(hi),
            _ => self.claims.push((lo, hi)),
        }
        if self.claims.len() > MAX_CLAIMS {
            self.claims.remove(0);
        }
    }

    pub fn contains(&self, uid: u32) -> bool {
        let i = self.claims.partition_point(|r| r.1 <= uid);
        self.claims.get(i).is_some_and(|r| r.0 <= uid)
    }
}
