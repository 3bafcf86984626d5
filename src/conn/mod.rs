//! One driver per connection role; each owns a socket and a sans-IO core.
//!
//! Owns: the drivers, what the loop and a driver say to each other
//! (`driver`), and the two places connections are made: `accept` (an
//! inbound connection on a listener) and `start` (a job of the outbox or
//! SmartPop). Must not: import the server or the event loop.

pub mod body;
pub mod budget;
pub mod driver;
pub mod fetch;
pub mod imap_append;
pub mod imap_body;
pub mod imap_fetch;
pub mod imap_in;
pub mod imap_jobs;
pub mod mailauth_in;
pub mod oauth_refresh;
pub mod pop3_ahead;
pub mod pop3_fetch;
pub mod pop3_in;
pub mod pump;
pub mod smtp_in;
pub mod smtp_out;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

pub use driver::{Completion, Ctx, Driver, Effect, HostOutcome, Outcome, Reload, Services, HOST};

/// What a listening socket serves; decides which driver an accepted
/// connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    SmtpMx,
    Submission,
    Smtps,
    Pop3,
    Pop3s,
    Imap,
    Imaps,
}

impl ListenerKind {
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::SmtpMx => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::Smtps => "smtps",
            ListenerKind::Pop3 => "pop3",
            ListenerKind::Pop3s => "pop3s",
            ListenerKind::Imap => "imap",
            ListenerKind::Imaps => "imaps",
        }
    }
}

/// The driver for a connection accepted on a listener of `kind`.
pub fn accept(
    kind: ListenerKind,
    sock: TcpStream,
    peer: SocketAddr,
    cx: &mut Ctx,
) -> Box<dyn Driver> {
    match kind {
        ListenerKind::SmtpMx | ListenerKind::Submission | ListenerKind::Smtps => {
            Box::new(smtp_in::SmtpIn::new(kind, sock, peer, cx))
        }
        ListenerKind::Pop3 | ListenerKind::Pop3s => {
            Box::new(pop3_in::Pop3In::new(kind, sock, peer, cx))
        }
        ListenerKind::Imap | ListenerKind::Imaps => {
            Box::new(imap_in::ImapIn::new(kind, sock, peer, cx))
        }
    }
}

/// Work the outbox or SmartPop decided on, to be carried out by a driver.
pub enum Job {
    Outbound(crate::outbox::OutboundJob),
    Fetch(crate::smartpop::runner::FetchJob),
    /// An OAuth2 access token to refresh.
    OAuthRefresh(oauth_refresh::RefreshJob),
}

/// The one place jobs become drivers.
pub fn start(job: Job) -> Box<dyn Driver> {
    match job {
        Job::Outbound(job) => Box::new(smtp_out::SmtpOut::new(job)),
        Job::Fetch(job) if job.account.imap => Box::new(imap_fetch::ImapFetchDriver::new(job)),
        Job::Fetch(job) => Box::new(pop3_fetch::Pop3FetchDriver::new(job)),
        Job::OAuthRefresh(job) => Box::new(oauth_refresh::OAuthRefresh::new(job)),
    }
}

/// An idle timeout is for awaiting the next command (RFC 5321 4.5.3.2.7,
/// RFC 1939 3), so only progress moves it: a complete command (the session
/// answers or asks for work) or, inside message data or an overlong line,
/// this many octets. A client trickling a byte at a time without ever
/// ending a line (slow loris) is cut off like a silent one, while a slow
/// uplink that moves 4 KiB per timeout keeps its connection.
pub const MIN_PROGRESS_BYTES: usize = 4096;

/// The idle deadline of an inbound connection, moved only by progress.
pub struct IdleClock {
    deadline: Instant,
    timeout: Duration,
    /// Octets read since the deadline last moved.
    unanswered: usize,
}

impl IdleClock {
    pub fn new(now: Instant, timeout: Duration) -> IdleClock {
        IdleClock {
            deadline: now + timeout,
            timeout,
            unanswered: 0,
        }
    }

    /// `n` octets were read; `answered`: the core replied or asked for work.
    pub fn read(&mut self, n: usize, answered: bool, now: Instant) {
        self.unanswered = self.unanswered.saturating_add(n);
        if answered || self.unanswered >= MIN_PROGRESS_BYTES {
            self.touch(now);
        }
    }

    /// Progress made elsewhere (a message stored): a full timeout again.
    pub fn touch(&mut self, now: Instant) {
        self.deadline = now + self.timeout;
        self.unanswered = 0;
    }

    /// Brings the deadline forward to `at` if it is later (server stopping).
    pub fn cut_to(&mut self, at: Instant) {
        self.deadline = self.deadline.min(at);
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.deadline <= now
    }
}

/// Checks a login (full address, or a bare local part naming one mailbox);
/// runs on a worker. An unknown user costs the same hash work as a known
/// one (`Config::login_dummy`), so the answer time does not reveal which
/// users exist.
pub fn check_login(config: &crate::config::Config, user: &str, password: &str) -> bool {
    config.check_login(user, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_progress_moves_the_deadline() {
        let t0 = Instant::now();
        let mut clock = IdleClock::new(t0, Duration::from_secs(10));
        let t1 = t0 + Duration::from_secs(5);
        clock.read(1, false, t1);
        assert_eq!(
            clock.deadline(),
            t0 + Duration::from_secs(10),
            "a trickled byte"
        );
        clock.read(MIN_PROGRESS_BYTES, false, t1);
        assert_eq!(
            clock.deadline(),
            t1 + Duration::from_secs(10),
            "4 KiB of data"
        );
        let t2 = t1 + Duration::from_secs(1);
        clock.read(6, true, t2);
        assert_eq!(
            clock.deadline(),
            t2 + Duration::from_secs(10),
            "a command answered"
        );
        clock.cut_to(t2);
        assert!(clock.expired(t2));
    }
}
