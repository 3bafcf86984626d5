//! Message authentication on the MX role: SPF, DKIM, DMARC, DNSBL and
//! greylisting decisions, plus DKIM signing for mail leaving.
//!
//! Owns: the decision logic only. Every evaluator is sans-IO: it returns
//! the DNS questions it needs ([`Query`]) and takes the answers back
//! ([`Reply`]), so the driver decides how and when to ask (the
//! non-blocking resolver, with its timeouts), and the clock is an input.
//!
//! Must not: open sockets, read the clock, spawn threads, or import any
//! part of the crate but `proto::dns` and (for the greylist and key files)
//! `store::durable`. The wiring into the SMTP driver lives elsewhere; the
//! only IO here is `keys` (key files) and `cli` (the `mailgate dkim`
//! commands), which the server does not call on its loop.

//! How a driver runs an evaluator (the SMTP driver, once wired):
//!
//! ```text
//! let mut spf = SpfCheck::new(client_ip, mail_from, helo);
//! loop {
//!     match spf.step() {
//!         SpfStep::Query(q) => {
//!             // Non-blocking: proto::dns::RecordLookup::new(&q.name, q.qtype, seed)
//!             // through the resolver; its RecordStep::Done(result) comes back as
//!             spf.answer(&q, Reply::from(result));
//!         }
//!         SpfStep::Done(outcome) => break outcome,
//!     }
//! }
//! ```
//!
//! DKIM: feed the spooled message to `dkim::Verifier` in chunks (on a
//! worker), `finish_body()`, answer its `queries()`, read `results()`.
//! DMARC: `dmarc::DmarcCheck` with the From domain and what SPF and DKIM
//! passed. Then `auth_results::header` writes the field.

pub mod auth_results;
pub mod cli;
pub mod dkim;
pub mod dmarc;
pub mod dnsbl;
pub mod greylist;
pub mod keys;
pub mod psl;
pub mod spf;

pub use crate::proto::dns::{Answer, QType};

/// One DNS question an evaluator needs answered. The name is lower-case
/// without the final dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    pub name: String,
    pub qtype: QType,
}

impl Query {
    pub fn new(name: &str, qtype: QType) -> Query {
        Query {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            qtype,
        }
    }
}

/// What the driver learnt for a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A response that answers the question (records, NODATA or NXDOMAIN).
    /// `Answer::Truncated` must not be passed: the driver retries over TCP.
    Answer(Answer),
    /// No usable answer: a timeout after the retries, SERVFAIL, another
    /// error RCODE or a malformed response. RFC 7208 2.6.6 and RFC 7489
    /// 6.6.3 call this a temporary error.
    Failed(String),
}

impl From<Result<Answer, String>> for Reply {
    /// What `proto::dns::RecordLookup` ends with.
    fn from(r: Result<Answer, String>) -> Reply {
        match r {
            Ok(a) => Reply::Answer(a),
            Err(why) => Reply::Failed(why),
        }
    }
}

impl Reply {
    /// The reply to a query for a name that cannot be a domain name: as if
    /// it did not exist (no server could hold it).
    pub fn nxdomain() -> Reply {
        Reply::Answer(Answer::NxDomain)
    }
}

/// A name the driver can ask for (`proto::dns::build_query_any`).
pub fn is_queryable(name: &str) -> bool {
    crate::proto::dns::is_query_name(name)
}
