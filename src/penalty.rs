//! Brute-force tracker: client addresses that fail to authenticate too
//! often are refused, at connect and at every further try, for a while.
//!
//! Owns: counting authentication tries and failures per client address
//! (IPv6 per /64) across all its sessions, in a sliding window; deciding
//! when an address is blocked; bounding its own memory.
//! Must not: read a clock (time is an input, `now: Instant`), log, or touch
//! sockets. The loop asks `is_blocked` on accept; a driver asks
//! `begin_attempt` before it checks a password (a try is refused when the
//! address is blocked, or when its failures plus the tries still being
//! checked already reach the limit, so parallel connections cannot guess
//! more than `MAX_FAILURES` times between them), then reports the result
//! with `end_attempt` and logs when it returns "newly blocked".
//!
//! A successful login neither clears the failures nor lifts a block: an
//! attacker who knows one password (a household member's own) must not
//! reset the count for guessing another's. Failures age out of the window.
//!
//! Prior art: Postfix's anvil(8) counts per client address and time unit
//! (`smtpd_client_auth_rate_limit`, `anvil_rate_time_unit = 60s`); Dovecot's
//! `auth_failure_delay` and `auth_policy_*` (weakforced) penalise by remote
//! address; fail2ban's classic defaults are `maxretry = 5 / findtime = 10m /
//! bantime = 10m`. We block a little more loosely (a household member who
//! mistypes a few times must not lock out the whole home) and for longer.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures within `FAILURE_WINDOW` that get an address blocked.
pub const MAX_FAILURES: usize = 10;
/// The sliding window in which `MAX_FAILURES` are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long a blocked address is refused at connect.
pub const BLOCK_TIME: Duration = Duration::from_secs(15 * 60);
/// Most addresses tracked at once. An attacker with an IPv6 prefix has
/// endless addresses; each entry is well under 300 bytes, so the table stays
/// under ~3 MB on a 64 MB router.
pub const MAX_ENTRIES: usize = 10_000;
/// IPv6 clients are tracked by their /64: one host (one SLAAC network) can
/// use any address in it, so per-address counting would be no limit at all
/// (RFC 4291 2.5.1: the interface identifier is the low 64 bits).
const IPV6_TRACK_PREFIX: u32 = 64;

#[derive(Debug)]
struct Entry {
    /// Times of recent failures, oldest first, at most `MAX_FAILURES`.
    failures: VecDeque<Instant>,
    /// Tries begun and not yet ended (passwords being checked).
    in_flight: usize,
    /// While `Some(t)` and `now < t`, the address is refused.
    blocked_until: Option<Instant>,
    /// Last failure; eviction order when the table is full.
    last_seen: Instant,
}

impl Entry {
    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|t| now < t)
    }

    /// Drops failures that left the window.
    fn forget_old(&mut self, now: Instant) {
        while self
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= FAILURE_WINDOW)
        {
            self.failures.pop_front();
        }
    }

    /// Nothing left to remember: no block in force, no try in flight and
    /// no failure in the window.
    fn expired(&self, now: Instant) -> bool {
        !self.blocked(now)
            && self.in_flight == 0
            && self
                .failures
                .back()
                .is_none_or(|&t| now.saturating_duration_since(t) >= FAILURE_WINDOW)
    }
}

/// The per-address failure table. One per server (shared by SMTP AUTH and
/// POP3 logins), owned by the event loop.
#[derive(Debug, Default)]
pub struct Penalty {
    table: HashMap<IpAddr, Entry>,
}

impl Penalty {
    pub fn new() -> Penalty {
        Penalty::default()
    }

    /// May `ip` try a password now? True counts the try as in flight until
    /// `end_attempt`; false: blocked, or too many failures and tries already.
    pub fn begin_attempt(&mut self, ip: IpAddr, now: Instant) -> bool {
        let entry = self.entry(ip, now);
        if entry.blocked(now) {
            return false;
        }
        entry.forget_old(now);
        if entry.failures.len() + entry.in_flight >= MAX_FAILURES {
            return false;
        }
        entry.in_flight += 1;
        true
    }

    /// The try begun with `begin_attempt` is over. Returns true when its
    /// failure got the address blocked (the caller logs it once).
    pub fn end_attempt(&mut self, ip: IpAddr, ok: bool, now: Instant) -> bool {
        if let Some(entry) = self.table.get_mut(&track_key(ip)) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
        !ok && self.record_failure(ip, now)
    }

    fn entry(&mut self, ip: IpAddr, now: Instant) -> &mut Entry {
        let key = track_key(ip);
        if !self.table.contains_key(&key) && self.table.len() >= MAX_ENTRIES {
            self.prune(now);
            if self.table.len() >= MAX_ENTRIES {
                self.evict_oldest();
            }
        }
        let entry = self.table.entry(key).or_insert_with(|| Entry {
            failures: VecDeque::with_capacity(MAX_FAILURES),
            in_flight: 0,
            blocked_until: None,
            last_seen: now,
        });
        entry.last_seen = now;
        entry
    }

    /// Counts one failed authentication from `ip`. Returns true when this
    /// failure got the address blocked (the caller logs it once).
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> bool {
        let entry = self.entry(ip, now);
        if entry.blocked(now) {
            // Already refused; failures on a connection opened before the
            // block neither extend it nor log again.
            return false;
        }
        entry.forget_old(now);
        if entry.failures.len() >= MAX_FAILURES {
            entry.failures.pop_front();
        }
        entry.failures.push_back(now);
        if entry.failures.len() >= MAX_FAILURES {
            entry.failures.clear();
            // `checked_add` fails only for an `Instant` near the end of time.
            entry.blocked_until = now.checked_add(BLOCK_TIME);
            return entry.blocked_until.is_some();
        }
        false
    }

    /// Should a new connection from `ip` be refused now?
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.table
            .get(&track_key(ip))
            .is_some_and(|e| e.blocked(now))
    }

    /// Drops entries with nothing left to remember, then the least recently
    /// seen ones beyond `MAX_ENTRIES`. Call it from a periodic timer (every
    /// minute is plenty); `record_failure` also calls it when the table is full.
    pub fn prune(&mut self, now: Instant) {
        self.table.retain(|_, e| !e.expired(now));
        while self.table.len() > MAX_ENTRIES {
            self.evict_oldest();
        }
    }

    /// Addresses currently tracked (for tests and a status line).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .table
            .iter()
            .min_by_key(|(_, e)| e.last_seen)
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            self.table.remove(&k);
        }
    }
}

/// The client an address belongs to, for every per-client limit (failed
/// logins here, connections per client in the loop): IPv4 as is (also
/// when written IPv4-mapped, `::ffff:a.b.c.d`, as a dual-stack listener
/// reports it), IPv6 cut to its /64.
pub fn client_group(ip: IpAddr) -> IpAddr {
    track_key(ip)
}

fn track_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX << (128 - IPV6_TRACK_PREFIX);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One step of a fake timeline: at `t` seconds, do `op` for `addr`, and
    /// expect `want` (newly blocked for `Fail`, blocked for `Check`).
    #[derive(Clone, Copy, Debug)]
    enum Op {
        Fail,
        /// A whole try that succeeded (begin, then end with ok).
        Success,
        Check,
        Prune,
    }
    use Op::*;

    fn run(steps: &[(u64, Op, &str, bool)]) {
        let start = Instant::now();
        let mut p = Penalty::new();
        for (i, &(t, op, addr, want)) in steps.iter().enumerate() {
            let now = start + Duration::from_secs(t);
            let got = match op {
                Fail => p.record_failure(ip(addr), now),
                Success => {
                    assert!(p.begin_attempt(ip(addr), now), "step {i}: a try refused");
                    p.end_attempt(ip(addr), true, now)
                }
                Check => p.is_blocked(ip(addr), now),
                Prune => {
                    p.prune(now);
                    false
                }
            };
            assert_eq!(got, want, "step {i}: t={t} {op:?} {addr}");
        }
    }

    fn fails(
        from: u64,
        every: u64,
        n: usize,
        addr: &'static str,
    ) -> Vec<(u64, Op, &'static str, bool)> {
        (0..n as u64)
            .map(|i| (from + i * every, Fail, addr, false))
            .collect()
    }

    #[test]
    fn ten_failures_in_ten_minutes_block_for_fifteen() {
        let a = "203.0.113.5";
        let mut steps = fails(0, 60, 9, a); // t = 0..480
        steps.push((500, Check, a, false));
        steps.push((540, Fail, a, true)); // 10th within 540 s
        steps.push((540, Check, a, true));
        steps.push((541, Fail, a, false)); // no second "newly"
        steps.push((540 + 15 * 60 - 1, Check, a, true));
        steps.push((540 + 15 * 60, Check, a, false));
        steps.push((540 + 15 * 60, Check, "203.0.113.6", false));
        steps.push((540 + 15 * 60, Prune, a, false));
        // After the block the count starts afresh.
        steps.extend(fails(540 + 15 * 60, 1, 9, a));
        steps.push((540 + 15 * 60 + 9, Check, a, false));
        steps.push((540 + 15 * 60 + 9, Fail, a, true));
        run(&steps);
    }

    #[test]
    fn slow_failures_never_block() {
        let a = "198.51.100.7";
        // One failure every 61 s... 10 of them span 549 s < 600: blocks.
        let mut steps = fails(0, 61, 9, a);
        steps.push((549, Fail, a, true));
        run(&steps);
        // One every 67 s: the 10th is 603 s after the 1st, which left the window.
        let mut steps = fails(0, 67, 30, a);
        steps.push((30 * 67, Check, a, false));
        run(&steps);
    }

    #[test]
    fn success_neither_forgets_failures_nor_lifts_a_block() {
        let a = "192.0.2.1";
        let mut steps = fails(0, 1, 9, a);
        steps.push((10, Success, a, false));
        steps.push((11, Check, a, false));
        // The 10th failure blocks: the success in between did not reset.
        steps.push((12, Fail, a, true));
        steps.push((13, Check, a, true));
        run(&steps);
        let mut p = Penalty::new();
        let now = Instant::now();
        for _ in 0..MAX_FAILURES {
            p.record_failure(ip(a), now);
        }
        assert!(
            !p.begin_attempt(ip(a), now),
            "a blocked address may not try, even rightly"
        );
    }

    #[test]
    fn parallel_tries_cannot_exceed_the_limit() {
        // Twenty connections from one address each start a try at once:
        // only MAX_FAILURES are checked; the rest are refused.
        let a = ip("203.0.113.77");
        let now = Instant::now();
        let mut p = Penalty::new();
        let begun = (0..20).filter(|_| p.begin_attempt(a, now)).count();
        assert_eq!(begun, MAX_FAILURES);
        let mut newly = 0;
        for _ in 0..begun {
            if p.end_attempt(a, false, now) {
                newly += 1;
            }
        }
        assert_eq!(newly, 1, "blocked once");
        assert!(p.is_blocked(a, now));
        assert!(!p.begin_attempt(a, now));
        // Tries that succeed free their place.
        let b = ip("203.0.113.78");
        for _ in 0..3 * MAX_FAILURES {
            assert!(p.begin_attempt(b, now));
            assert!(!p.end_attempt(b, true, now));
        }
        // IPv6: one /64 is one client.
        let mut p = Penalty::new();
        let begun = (0..200u32)
            .filter(|i| p.begin_attempt(ip(&format!("2001:db8:7:7::{:x}", i + 1)), now))
            .count();
        assert_eq!(begun, MAX_FAILURES);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let mut steps = Vec::new();
        for i in 0..9u64 {
            // Different interface identifiers in one /64.
            let addr: &'static str =
                Box::leak(format!("2001:db8:1:2::{:x}", i + 1).into_boxed_str());
            steps.push((i, Fail, addr, false));
        }
        steps.push((9, Fail, "2001:db8:1:2:ffff:ffff:ffff:ffff", true));
        steps.push((9, Check, "2001:db8:1:2::abcd", true));
        steps.push((9, Check, "2001:db8:1:3::1", false));
        // IPv4-mapped and plain IPv4 are one client.
        steps.extend(fails(10, 1, 9, "::ffff:192.0.2.9"));
        steps.push((19, Fail, "192.0.2.9", true));
        steps.push((19, Check, "::ffff:192.0.2.9", true));
        run(&steps);
    }

    #[test]
    fn prune_drops_idle_entries() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut p = Penalty::new();
        p.record_failure(ip("192.0.2.1"), at(0));
        for _ in 0..MAX_FAILURES {
            p.record_failure(ip("192.0.2.2"), at(0));
        }
        assert_eq!(p.len(), 2);
        p.prune(at(599));
        assert_eq!(p.len(), 2);
        p.prune(at(600)); // .1's failure left the window; .2 still blocked
        assert_eq!(p.len(), 1);
        assert!(p.is_blocked(ip("192.0.2.2"), at(600)));
        p.prune(at(900)); // block over
        assert!(p.is_empty());
    }

    #[test]
    fn table_is_capped_evicting_least_recent() {
        let start = Instant::now();
        let mut p = Penalty::new();
        for i in 0..MAX_ENTRIES as u32 + 50 {
            let a = IpAddr::V4((0x0a00_0000 + i).into());
            p.record_failure(a, start + Duration::from_millis(u64::from(i)));
            assert!(p.len() <= MAX_ENTRIES);
        }
        assert_eq!(p.len(), MAX_ENTRIES);
        // The first addresses were evicted, the last ones are kept.
        assert!(!p.table.contains_key(&IpAddr::V4(0x0a00_0000.into())));
        assert!(p
            .table
            .contains_key(&IpAddr::V4((0x0a00_0000 + MAX_ENTRIES as u32 + 49).into())));
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let start = Instant::now() + Duration::from_secs(3600);
        let mut p = Penalty::new();
        let a = ip("192.0.2.3");
        p.record_failure(a, start);
        p.record_failure(a, start - Duration::from_secs(1000));
        assert!(!p.is_blocked(a, start - Duration::from_secs(2000)));
        p.prune(start - Duration::from_secs(3000));
        assert_eq!(p.len(), 1);
    }
}
