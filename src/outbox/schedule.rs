//! The outbox retry schedule: when to try a recipient again, and when to
//! give up on it.
//!
//! Owns: the arithmetic of `[outbox] retry` and `give_up_after`. Must not:
//! read the clock, touch files, or know SMTP; time comes in as unix seconds.

use std::time::Duration;

/// Shortest wait between two attempts whatever the config says, so that a
/// `0s` interval cannot turn into a tight reconnect loop.
pub const MIN_RETRY_INTERVAL_SECS: u64 = 1;

/// Used only if the retry list is empty, which the config module already
/// refuses; this keeps the function total instead of panicking.
const EMPTY_LIST_INTERVAL_SECS: u64 = 300;

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at this unix time.
    RetryAt(u64),
    /// The message has been queued for `give_up_after`: fail the recipient
    /// and bounce.
    GiveUp,
}

/// When to try a recipient next.
///
/// `attempts` is the number of attempts already made (counting the one that
/// just failed); with 0 the first attempt is due at once. After attempt `n`
/// the wait is `retry[n - 1]`, and the last interval repeats once the list
/// runs out.
///
/// The give-up time is `created + give_up_after`. If the next try would fall
/// after it, the recipient is tried once more exactly at the give-up time and
/// given up only when that attempt fails too. This is how Postfix treats
/// `maximal_queue_lifetime`: a message is returned after the first failed
/// attempt past its lifetime, so every message gets a try at the very end of
/// its life (and at least one try, however old it is when first seen).
pub fn next_attempt(
    created: u64,
    attempts: u32,
    now: u64,
    retry: &[Duration],
    give_up_after: Duration,
) -> Next {
    if attempts == 0 {
        return Next::RetryAt(now);
    }
    let give_up_at = created.saturating_add(give_up_after.as_secs());
    if now >= give_up_at {
        return Next::GiveUp;
    }
    let index = usize::try_from(attempts - 1).unwrap_or(usize::MAX);
    let interval = retry
        .get(index)
        .or_else(|| retry.last())
        .map_or(EMPTY_LIST_INTERVAL_SECS, Duration::as_secs)
        .max(MIN_RETRY_INTERVAL_SECS);
    Next::RetryAt(now.saturating_add(interval).min(give_up_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mins(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|m| Duration::from_secs(m * 60)).collect()
    }

    #[test]
    fn table() {
        const T0: u64 = 1_700_000_000;
        const M: u64 = 60;
        const H: u64 = 3600;
        const D: u64 = 86_400;
        let standard = mins(&[5, 10, 30, 60, 120, 240]);
        let five_days = Duration::from_secs(5 * D);
        // (name, created, attempts, now, retry, give_up_after, expected)
        type Case<'a> = (&'a str, u64, u32, u64, &'a [Duration], Duration, Next);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("first try at once", T0, 0, T0, &standard, five_days, Next::RetryAt(T0)),
            ("first try even when old", T0, 0, T0 + 9 * D, &standard, five_days, Next::RetryAt(T0 + 9 * D)),
            ("after 1st: 5m", T0, 1, T0, &standard, five_days, Next::RetryAt(T0 + 5 * M)),
            ("after 2nd: 10m", T0, 2, T0 + 5 * M, &standard, five_days, Next::RetryAt(T0 + 15 * M)),
            ("after 6th: 4h", T0, 6, T0 + H, &standard, five_days, Next::RetryAt(T0 + 5 * H)),
            ("after 7th: last repeats", T0, 7, T0 + 5 * H, &standard, five_days, Next::RetryAt(T0 + 9 * H)),
            ("after 500th: last repeats", T0, 500, T0 + 2 * D, &standard, five_days, Next::RetryAt(T0 + 2 * D + 4 * H)),
            ("interval from now, not from created", T0, 1, T0 + 3 * H, &standard, five_days, Next::RetryAt(T0 + 3 * H + 5 * M)),
            ("clamped to give-up time", T0, 40, T0 + 5 * D - H, &standard, five_days, Next::RetryAt(T0 + 5 * D)),
            ("exactly at give-up time: give up", T0, 41, T0 + 5 * D, &standard, five_days, Next::GiveUp),
            ("past give-up time: give up", T0, 41, T0 + 6 * D, &standard, five_days, Next::GiveUp),
            ("lands exactly on give-up time", T0, 1, T0 + 5 * D - 5 * M, &standard, five_days, Next::RetryAt(T0 + 5 * D)),
            ("give_up_after 0", T0, 1, T0, &standard, Duration::ZERO, Next::GiveUp),
            ("single interval repeats", T0, 3, T0 + 100, &mins(&[15]), five_days, Next::RetryAt(T0 + 100 + 15 * M)),
            ("zero interval clamped", T0, 1, T0, &[Duration::ZERO], five_days, Next::RetryAt(T0 + MIN_RETRY_INTERVAL_SECS)),
            ("sub-second interval clamped", T0, 1, T0, &[Duration::from_millis(300)], five_days, Next::RetryAt(T0 + 1)),
            ("empty list does not panic", T0, 1, T0, &[], five_days, Next::RetryAt(T0 + EMPTY_LIST_INTERVAL_SECS)),
            ("huge created saturates", u64::MAX - 10, 1, u64::MAX - 10, &standard, five_days, Next::RetryAt(u64::MAX)),
            ("huge give_up_after", T0, 1, T0, &standard, Duration::MAX, Next::RetryAt(T0 + 5 * M)),
            ("u32::MAX attempts", T0, u32::MAX, T0, &standard, five_days, Next::RetryAt(T0 + 4 * H)),
            ("clock went backwards", T0, 1, T0 - H, &standard, five_days, Next::RetryAt(T0 - H + 5 * M)),
        ];
        for (name, created, attempts, now, retry, give_up, want) in cases {
            assert_eq!(
                next_attempt(*created, *attempts, *now, retry, *give_up),
                *want,
                "{name}"
            );
        }
    }

    /// Walks a whole life: the schedule is monotonic, ends with one try at
    /// the give-up time, then gives up.
    #[test]
    fn whole_life() {
        let t0 = 1_000_000;
        let retry = mins(&[5, 10, 30, 60, 120, 240]);
        let give_up = Duration::from_secs(86_400);
        let mut now = t0;
        let mut attempts = 0;
        let mut tries = Vec::new();
        while let Next::RetryAt(at) = next_attempt(t0, attempts, now, &retry, give_up) {
            assert!(at >= now);
            tries.push(at - t0);
            now = at;
            attempts += 1;
            assert!(attempts < 1000, "never gives up");
        }
        assert_eq!(tries.first(), Some(&0));
        assert_eq!(tries.last(), Some(&86_400));
        // 0, 5m, 15m, 45m, 1h45m, 3h45m, 7h45m, then every 4h to 23h45m, then 24h.
        assert_eq!(tries.len(), 7 + 4 + 1);
    }
}
