//! The global budget of message-body bytes held in memory: what every
//! SMTP connection together has read of its messages and not yet handed
//! to the disk (`conn::body`), owned by the loop in `Services`.
//!
//! Owns: the count (per connection and in all), whether a connection may
//! read now, and which connections to wake when that changes. A full
//! budget is back-pressure, never a failure: a connection that may not
//! read stops reading (its client waits in TCP), and is woken once bytes
//! are freed. The connections holding bytes are woken too when the budget
//! fills, so that they send what they hold to the spool even if their own
//! clients have gone quiet: the budget always frees again.
//! Must not: touch sockets or files; the loop dispatches the woken.

use std::collections::HashMap;

use mio::Token;

use crate::net::transport::READ_CHUNK;

/// Body bytes all connections together may hold in memory. Every body
/// byte counts from the read that brought it until it is on disk (a spool
/// write) or stored (a delivery from memory); a connection holds at most
/// one spool chunk plus one read (`conn::body::SPOOL_AT` + 2 reads), so
/// 4 MiB lets about 40 connections stream at full speed at once, far more
/// than 4 workers writing to one disk can serve, and costs a 128 MB
/// router 3 % of its memory instead of the 200 connections x 25 MB the
/// limits would otherwise allow.
pub const BODY_BUDGET: usize = 4 * 1024 * 1024;

/// Room a connection needs before it may read: one read is at most
/// `READ_CHUNK` octets, and DATA normalisation at most doubles them (each
/// bare LF becomes CRLF). So the budget is never overdrawn.
pub const READ_RESERVE: usize = 2 * READ_CHUNK;

/// The count, and who waits for it.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: usize,
    held: HashMap<Token, usize>,
    /// Refused a read; woken when room comes back.
    waiting: Vec<Token>,
    /// For the loop to dispatch (`ready`).
    woken: Vec<Token>,
    /// The budget filled and the holders were woken; again only after it
    /// has had room once more (so a full budget wakes each holder once).
    pressure: bool,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(BODY_BUDGET)
    }
}

impl Budget {
    /// A budget of `limit` bytes (at least one read's room).
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit: limit.max(READ_RESERVE),
            used: 0,
            held: HashMap::new(),
            waiting: Vec::new(),
            woken: Vec::new(),
            pressure: false,
        }
    }

    fn has_room(&self) -> bool {
        self.used.saturating_add(READ_RESERVE) <= self.limit
    }

    /// May `token` read now? If not, it is woken when it may.
    pub fn may_read(&mut self, token: Token) -> bool {
        if self.has_room() {
            return true;
        }
        if !self.waiting.contains(&token) {
            self.waiting.push(token);
        }
        if !self.pressure {
            self.pressure = true;
            let holders = self.held.keys().filter(|t| **t != token);
            self.woken.extend(holders);
        }
        false
    }

    /// True while the budget is full: a holder should spool what it
    /// holds rather than wait for its client.
    pub fn under_pressure(&self) -> bool {
        self.pressure
    }

    /// `token` now holds `n` more bytes.
    pub fn charge(&mut self, token: Token, n: usize) {
        if n == 0 {
            return;
        }
        self.used = self.used.saturating_add(n);
        *self.held.entry(token).or_insert(0) += n;
    }

    /// `token` let go of `n` bytes (never more than it holds).
    pub fn release(&mut self, token: Token, n: usize) {
        if n == 0 {
            return;
        }
        let freed = match self.held.get_mut(&token) {
            Some(h) => {
                let freed = n.min(*h);
                *h -= freed;
                if *h == 0 {
                    self.held.remove(&token);
                }
                freed
            }
            None => 0,
        };
        self.used = self.used.saturating_sub(freed);
        if self.has_room() {
            self.pressure = false;
            self.woken.append(&mut self.waiting);
        }
    }

    /// The connection is closing: it waits for nothing (the bytes it still
    /// has on a worker are released when they come back).
    pub fn forget_waiting(&mut self, token: Token) {
        self.waiting.retain(|t| *t != token);
    }

    /// Connections to dispatch now.
    pub fn take_woken(&mut self) -> Vec<Token> {
        let mut woken = std::mem::take(&mut self.woken);
        woken.dedup();
        woken
    }

    pub fn has_woken(&self) -> bool {
        !self.woken.is_empty()
    }

    /// Bytes held in all.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Bytes `token` holds.
    pub fn held_by(&self, token: Token) -> usize {
        self.held.get(&token).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_budget_refuses_wakes_and_frees() {
        let (a, b, c) = (Token(1), Token(2), Token(3));
        let mut budget = Budget::new(3 * READ_RESERVE);
        assert!(budget.may_read(a));
        budget.charge(a, READ_RESERVE);
        budget.charge(b, READ_RESERVE);
        assert!(budget.may_read(c), "one read's room is left");
        budget.charge(c, READ_RESERVE / 2);
        // Full: c may not read; the holders a and b are woken to spool.
        assert!(!budget.may_read(c));
        assert!(budget.under_pressure());
        let mut woken = budget.take_woken();
        woken.sort();
        assert_eq!(woken, [a, b]);
        // Asking again wakes nobody again.
        assert!(!budget.may_read(c) && !budget.may_read(a));
        assert!(budget.take_woken().is_empty());
        // a's write is done: room again, both waiters woken.
        budget.release(a, READ_RESERVE);
        assert!(!budget.under_pressure());
        let mut woken = budget.take_woken();
        woken.sort();
        assert_eq!(woken, [a, c]);
        assert!(budget.may_read(c));
        assert_eq!(budget.used(), READ_RESERVE + READ_RESERVE / 2);
        // Never below zero, never someone else's bytes.
        budget.release(a, 100);
        budget.release(b, 10 * READ_RESERVE);
        assert_eq!(budget.held_by(b), 0);
        assert_eq!(budget.used(), READ_RESERVE / 2);
        budget.release(c, READ_RESERVE / 2);
        assert_eq!(budget.used(), 0);
        budget.forget_waiting(c);
    }
}
