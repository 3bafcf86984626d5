//! DNS blocklists (RFC 5782): is the connecting client listed?
//!
//! Owns: the query name for an IPv4 or IPv6 client (RFC 5782 2.1, 2.4),
//! reading the answer: the return codes that count as a listing, and the
//! answers that are errors, never listings: Spamhaus's 127.255.255.x
//! ("query refused": through a public or shared resolver, typo'd zone,
//! or over the free-use limit) and anything outside 127.0.0.0/8 (a
//! resolver that rewrites NXDOMAIN to an advertising server).
//!
//! Must not: do IO. The driver sends [`query`] and passes the reply to
//! [`classify`]; what a listing does (554 5.7.1 naming the list) is its
//! choice.

use std::net::{IpAddr, Ipv4Addr};

use super::{Answer, QType, Query, Reply};
use crate::proto::dns;

/// RFC 5782 2.1: answers are in 127.0.0.0/8.
const LOOPBACK_NET: u8 = 127;
/// RFC 5782 2.1: 127.0.0.1 is never a listing (some lists use it for
/// errors or tests); codes start at 127.0.0.2.
const NOT_A_LISTING: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// What one list said about one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    NotListed,
    /// Listed, with the code that matched.
    Listed(Ipv4Addr),
    /// No usable answer: the check did not happen. Never refuse on it.
    Error(String),
}

/// The A query for `ip` at `zone` (`2.0.0.127.zen.spamhaus.org` for
/// 127.0.0.2; 32 nibbles for IPv6). An IPv4-mapped address is asked as
/// IPv4.
pub fn query(ip: IpAddr, zone: &str) -> Query {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    Query::new(
        &format!(
            "{}.{}",
            dns::reversed_labels(ip),
            zone.trim_end_matches('.')
        ),
        QType::A,
    )
}

/// Spamhaus's documented error answers (not listings): 127.255.255.252
/// typo in the DNSBL name, .254 query through a public/open resolver,
/// .255 excessive number of queries.
fn spamhaus_error(a: Ipv4Addr) -> Option<&'static str> {
    let [x, y, z, w] = a.octets();
    if (x, y, z) != (127, 255, 255) {
        return None;
    }
    Some(match w {
        252 => "query refused: typing error in the DNSBL name",
        254 => "query refused: asked through a public or shared resolver (use your own)",
        255 => "query refused: too many queries (free-use limit)",
        _ => "query refused (127.255.255.x)",
    })
}

/// Reads the reply. `codes`: inclusive ranges that count (empty: any code
/// in 127.0.0.0/8 from 127.0.0.2 up).
pub fn classify(reply: &Reply, codes: &[(Ipv4Addr, Ipv4Addr)]) -> Verdict {
    let addrs = match reply {
        Reply::Failed(why) => return Verdict::Error(format!("lookup failed: {why}")),
        Reply::Answer(Answer::Addrs(a)) => a,
        // RFC 5782 2.1: no record means not listed.
        Reply::Answer(_) => return Verdict::NotListed,
    };
    let mut listed = None;
    for a in addrs {
        let IpAddr::V4(a) = *a else { continue };
        if let Some(why) = spamhaus_error(a) {
            return Verdict::Error(format!("{why}, answer {a}"));
        }
        if a.octets()[0] != LOOPBACK_NET {
            return Verdict::Error(format!(
                "answer {a} is outside 127.0.0.0/8 (a resolver rewriting NXDOMAIN?)"
            ));
        }
        let counts = if codes.is_empty() {
            a > NOT_A_LISTING
        } else {
            codes.iter().any(|(lo, hi)| *lo <= a && a <= *hi)
        };
        if counts && listed.is_none() {
            listed = Some(a);
        }
    }
    match listed {
        Some(a) => Verdict::Listed(a),
        None => Verdict::NotListed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Reply {
        Reply::Answer(Answer::Addrs(
            list.iter().map(|a| a.parse().unwrap()).collect(),
        ))
    }

    #[test]
    fn query_names() {
        let q = query("192.0.2.99".parse().unwrap(), "zen.spamhaus.org.");
        assert_eq!(q.name, "99.2.0.192.zen.spamhaus.org");
        assert_eq!(q.qtype, QType::A);
        assert_eq!(
            query("::ffff:192.0.2.99".parse().unwrap(), "bl.example").name,
            "99.2.0.192.bl.example"
        );
        // RFC 5782 2.4 example.
        assert_eq!(
            query(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com"
            )
            .name,
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
    }

    #[test]
    fn answers() {
        assert_eq!(classify(&Reply::nxdomain(), &[]), Verdict::NotListed);
        assert_eq!(
            classify(&Reply::Answer(Answer::NoData), &[]),
            Verdict::NotListed
        );
        assert_eq!(
            classify(&addrs(&["127.0.0.2"]), &[]),
            Verdict::Listed("127.0.0.2".parse().unwrap())
        );
        assert_eq!(classify(&addrs(&["127.0.0.1"]), &[]), Verdict::NotListed);
        let sbl_only = [("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap())];
        assert_eq!(
            classify(&addrs(&["127.0.0.10"]), &sbl_only),
            Verdict::NotListed
        );
        assert_eq!(
            classify(&addrs(&["127.0.0.10", "127.0.0.3"]), &sbl_only),
            Verdict::Listed("127.0.0.3".parse().unwrap())
        );
        for code in ["127.255.255.254", "127.255.255.255", "127.255.255.252"] {
            match classify(&addrs(&[code]), &[]) {
                Verdict::Error(why) => assert!(why.contains("refused"), "{why}"),
                other => panic!("{code}: {other:?}"),
            }
        }
        // Even beside a real code, a refusal makes the answer an error.
        assert!(matches!(
            classify(&addrs(&["127.0.0.2", "127.255.255.254"]), &[]),
            Verdict::Error(_)
        ));
        assert!(matches!(
            classify(&addrs(&["198.51.100.7"]), &[]),
            Verdict::Error(_)
        ));
        assert!(matches!(
            classify(&Reply::Failed("timeout".into()), &[]),
            Verdict::Error(_)
        ));
    }
}
