//! Greylisting: the first delivery attempt of an unknown (client network,
//! sender, recipient) triplet is deferred with 451 4.7.1; a real MTA
//! retries after the delay and is let in, and remembered.
//!
//! Owns: the triplet table (client /24 for IPv4, /64 for IPv6, so a
//! sender's pool of neighbouring addresses counts as one), the delay
//! (default 5 minutes) and the memory (36 days after the last pass, a
//! month of monthly newsletters plus slack), the skip rule (below), the
//! bounds on size, and the file format with its load and save.
//!
//! Skip rule: once mail from a domain has passed greylisting with SPF
//! `pass` for that domain, later mail that passes SPF for the same domain
//! is not greylisted, from whichever address: SPF says that address is
//! one of the domain's servers, which have shown that they retry (large
//! senders retry from another address of their pool, which would
//! otherwise restart the delay).
//!
//! Must not: read the clock (time is an input, seconds since the epoch)
//! or write files except through `store::durable` (one durable write
//! helper for the whole program). Saving is the caller's choice of when
//! (e.g. after each change, on a worker).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use crate::store::durable;

/// postgrey's and most greylisters' default delay.
pub const DEFAULT_DELAY_SECS: u64 = 5 * 60;
/// How long a passed triplet (or an SPF domain) is remembered after it
/// was last seen (postgrey's `--max-age` default is 35 days).
pub const MEMORY_SECS: u64 = 36 * 24 * 3600;
/// How long an unconfirmed triplet waits for its retry (RFC 5321 4.5.4.1
/// says give up after 4-5 days; most retries come within hours).
pub const PENDING_SECS: u64 = 2 * 24 * 3600;
/// Most triplets kept (about 100 bytes each in memory and on disk: a few
/// MB at most, fine for a router).
pub const MAX_TRIPLETS: usize = 20_000;
/// Most SPF domains kept for the skip rule.
pub const MAX_DOMAINS: usize = 5_000;
/// RFC 5321 4.5.3.1.3: a path is at most 256 octets; longer addresses are
/// cut (they still key a triplet).
const MAX_ADDRESS: usize = 256;
/// The first line of the file.
const MAGIC: &str = "mailgate-greylist 1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through (known triplet, or a domain that passed SPF before).
    Pass(&'static str),
    /// 451 4.7.1: try again in `retry_in` seconds or more.
    Defer { retry_in: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    first_seen: u64,
    /// When the retry came after the delay (then the triplet is known).
    passed: Option<u64>,
    last_seen: u64,
}

type Triplet = (String, String, String);

/// The table.
#[derive(Debug, Clone)]
pub struct Greylist {
    delay: u64,
    triplets: HashMap<Triplet, Entry>,
    /// SPF domain -> last seen.
    domains: HashMap<String, u64>,
    /// Something changed since the last save.
    dirty: bool,
}

/// The client network of a triplet: /24 for IPv4, /64 for IPv6.
pub fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        IpAddr::V6(v6) => network_of(IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        )),
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
    }
}

fn address_key(a: &str) -> String {
    let mut a = a.to_ascii_lowercase();
    if a.len() > MAX_ADDRESS {
        let mut cut = MAX_ADDRESS;
        while !a.is_char_boundary(cut) {
            cut -= 1;
        }
        a.truncate(cut);
    }
    a
}

/// File fields are space-separated: `%`, spaces and controls are escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Greylist {
    /// An empty table with `delay` seconds ([`DEFAULT_DELAY_SECS`]).
    pub fn new(delay: u64) -> Greylist {
        Greylist {
            delay,
            triplets: HashMap::new(),
            domains: HashMap::new(),
            dirty: false,
        }
    }

    pub fn len(&self) -> usize {
        self.triplets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.triplets.is_empty()
    }

    /// Whether the table changed since it was loaded or saved.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The decision for one recipient of a transaction. `spf_pass_domain`:
    /// the MAIL FROM domain when SPF passed for it.
    pub fn check(
        &mut self,
        now: u64,
        client: IpAddr,
        sender: &str,
        recipient: &str,
        spf_pass_domain: Option<&str>,
    ) -> Decision {
        let spf_domain = spf_pass_domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
        if let Some(d) = &spf_domain {
            if let Some(seen) = self.domains.get_mut(d) {
                if now.saturating_sub(*seen) <= MEMORY_SECS {
                    *seen = now.max(*seen);
                    self.dirty = true;
                    return Decision::Pass("SPF pass for a domain that passed greylisting before");
                }
            }
        }
        let key = (
            network_of(client),
            address_key(sender),
            address_key(recipient),
        );
        let delay = self.delay;
        let decision = match self.triplets.get_mut(&key) {
            Some(e) if e.passed.is_some() && now.saturating_sub(e.last_seen) <= MEMORY_SECS => {
                e.last_seen = now.max(e.last_seen);
                Decision::Pass("known triplet")
            }
            Some(e) if e.passed.is_none() && now.saturating_sub(e.first_seen) <= PENDING_SECS => {
                let waited = now.saturating_sub(e.first_seen);
                if waited >= delay {
                    e.passed = Some(now);
                    e.last_seen = now;
                    Decision::Pass("retried after the delay")
                } else {
                    e.last_seen = now.max(e.last_seen);
                    Decision::Defer {
                        retry_in: delay - waited,
                    }
                }
            }
            // Unknown, or forgotten: start again.
            _ => {
                self.make_room(now);
                self.triplets.insert(
                    key,
                    Entry {
                        first_seen: now,
                        passed: None,
                        last_seen: now,
                    },
                );
                Decision::Defer { retry_in: delay }
            }
        };
        if let (Decision::Pass(_), Some(d)) = (&decision, spf_domain) {
            if self.domains.len() >= MAX_DOMAINS && !self.domains.contains_key(&d) {
                self.evict_oldest_domain();
            }
            self.domains.insert(d, now);
        }
        self.dirty = true;
        decision
    }

    /// Forgets what has expired; if still full, the oldest pending
    /// triplets go first, then the least recently seen known ones.
    fn make_room(&mut self, now: u64) {
        if self.triplets.len() < MAX_TRIPLETS {
            return;
        }
        self.expire(now);
        while self.triplets.len() >= MAX_TRIPLETS {
            let victim = self
                .triplets
                .iter()
                .min_by_key(|(_, e)| (e.passed.is_some(), e.last_seen))
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => {
                    self.triplets.remove(&k);
                }
                None => break,
            }
        }
    }

    fn evict_oldest_domain(&mut self) {
        let victim = self
            .domains
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(d, _)| d.clone());
        if let Some(d) = victim {
            self.domains.remove(&d);
        }
    }

    /// Drops expired entries (call now and then, e.g. before saving).
    pub fn expire(&mut self, now: u64) {
        let before = (self.triplets.len(), self.domains.len());
        self.triplets.retain(|_, e| match e.passed {
            Some(_) => now.saturating_sub(e.last_seen) <= MEMORY_SECS,
            None => now.saturating_sub(e.first_seen) <= PENDING_SECS,
        });
        self.domains
            .retain(|_, t| now.saturating_sub(*t) <= MEMORY_SECS);
        if before != (self.triplets.len(), self.domains.len()) {
            self.dirty = true;
        }
    }

    /// The file's text: a magic line, then `T NET FIRST PASSED|- LAST
    /// SENDER RECIPIENT` and `D DOMAIN LAST` lines (sorted, so equal
    /// tables give equal files).
    pub fn to_text(&self) -> String {
        let mut lines: Vec<String> = self
            .triplets
            .iter()
            .map(|((net, s, r), e)| {
                let passed = e.passed.map_or("-".to_string(), |p| p.to_string());
                format!(
                    "T {net} {} {passed} {} {} {}",
                    e.first_seen,
                    e.last_seen,
                    escape(s),
                    escape(r)
                )
            })
            .collect();
        lines.extend(
            self.domains
                .iter()
                .map(|(d, t)| format!("D {} {t}", escape(d))),
        );
        lines.sort();
        let mut text = format!("{MAGIC}\n");
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        text
    }

    /// Reads a table from its text; lines that do not parse are skipped and
    /// counted (a damaged line costs one delay, never the whole table).
    /// Beyond the bounds, the rest is dropped.
    pub fn from_text(text: &str, delay: u64) -> Result<(Greylist, usize), String> {
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(format!("not a greylist file (no {MAGIC:?} line)"));
        }
        let mut g = Greylist::new(delay);
        let mut skipped = 0;
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            let ok = match f.as_slice() {
                ["T", net, first, passed, last, s, r] if g.triplets.len() < MAX_TRIPLETS => {
                    (|| {
                        let entry = Entry {
                            first_seen: first.parse().ok()?,
                            passed: match *passed {
                                "-" => None,
                                p => Some(p.parse().ok()?),
                            },
                            last_seen: last.parse().ok()?,
                        };
                        g.triplets
                            .insert(((*net).to_string(), unescape(s)?, unescape(r)?), entry);
                        Some(())
                    })()
                    .is_some()
                }
                ["D", d, t] if g.domains.len() < MAX_DOMAINS => (|| {
                    g.domains.insert(unescape(d)?, t.parse().ok()?);
                    Some(())
                })()
                .is_some(),
                [""] => true,
                _ => false,
            };
            if !ok {
                skipped += 1;
            }
        }
        Ok((g, skipped))
    }

    /// Reads `path`; a missing file is an empty table.
    pub fn load(path: &Path, delay: u64) -> Result<(Greylist, usize), String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                Greylist::from_text(&text, delay).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((Greylist::new(delay), 0)),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The caller saved `to_text()` itself (on a worker thread).
    pub fn mark_clean(&mut self) {
        self.dirty = false;
    }

    /// Writes the table to `path` durably (temporary file beside it,
    /// fsync, rename, fsync of the folder). `tmp_path` must not exist.
    pub fn save(&mut self, path: &Path, tmp_path: &Path) -> io::Result<()> {
        durable::write_durable(tmp_path, path, &[self.to_text().as_bytes()])?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defer_then_pass_after_the_delay_and_remember() {
        let mut g = Greylist::new(DEFAULT_DELAY_SECS);
        let c = ip("192.0.2.10");
        assert_eq!(
            g.check(T0, c, "a@x.example", "b@y.example", None),
            Decision::Defer { retry_in: 300 }
        );
        assert_eq!(
            g.check(T0 + 60, c, "a@x.example", "b@y.example", None),
            Decision::Defer { retry_in: 240 }
        );
        // Another address of the same /24 is the same client.
        assert!(matches!(
            g.check(
                T0 + 301,
                ip("192.0.2.77"),
                "A@X.example",
                "b@y.example",
                None
            ),
            Decision::Pass(_)
        ));
        assert!(matches!(
            g.check(T0 + 86_400, c, "a@x.example", "b@y.example", None),
            Decision::Pass(_)
        ));
        // Another recipient is another triplet.
        assert!(matches!(
            g.check(T0 + 400, c, "a@x.example", "c@y.example", None),
            Decision::Defer { .. }
        ));
        // 36 days after the last pass it is forgotten.
        assert!(matches!(
            g.check(
                T0 + 86_400 + MEMORY_SECS + 1,
                c,
                "a@x.example",
                "b@y.example",
                None
            ),
            Decision::Defer { .. }
        ));
        // A pending triplet that never retried is forgotten after PENDING_SECS.
        let mut g = Greylist::new(DEFAULT_DELAY_SECS);
        g.check(T0, c, "p@x.example", "b@y.example", None);
        assert_eq!(
            g.check(T0 + PENDING_SECS + 1, c, "p@x.example", "b@y.example", None),
            Decision::Defer { retry_in: 300 }
        );
    }

    #[test]
    fn ipv6_slash_64_and_mapped_addresses() {
        assert_eq!(network_of(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(network_of(ip("::ffff:198.51.100.7")), "198.51.100.0/24");
        let mut g = Greylist::new(10);
        g.check(T0, ip("2001:db8:1:2::1"), "a@x", "b@y", None);
        assert!(matches!(
            g.check(T0 + 10, ip("2001:db8:1:2::99"), "a@x", "b@y", None),
            Decision::Pass(_)
        ));
        assert!(matches!(
            g.check(T0 + 10, ip("2001:db8:1:3::1"), "a@x", "b@y", None),
            Decision::Defer { .. }
        ));
    }

    #[test]
    fn spf_pass_skip_rule() {
        let mut g = Greylist::new(300);
        let spf = Some("big.example");
        // SPF pass alone is not enough the first time.
        assert!(matches!(
            g.check(T0, ip("192.0.2.1"), "n@big.example", "b@y", spf),
            Decision::Defer { .. }
        ));
        assert!(matches!(
            g.check(T0 + 300, ip("192.0.2.1"), "n@big.example", "b@y", spf),
            Decision::Pass(_)
        ));
        // Now any SPF-passing server of big.example skips, for anyone.
        assert_eq!(
            g.check(T0 + 400, ip("203.0.113.9"), "other@big.example", "c@y", spf),
            Decision::Pass("SPF pass for a domain that passed greylisting before")
        );
        // Without SPF pass the skip does not apply.
        assert!(matches!(
            g.check(
                T0 + 400,
                ip("203.0.113.9"),
                "other@big.example",
                "c@y",
                None
            ),
            Decision::Defer { .. }
        ));
    }

    #[test]
    fn bounded_and_durable() {
        let mut g = Greylist::new(300);
        for i in 0..(MAX_TRIPLETS + 500) {
            g.check(
                T0 + i as u64,
                ip("192.0.2.1"),
                &format!("s{i}@x"),
                "r@y",
                None,
            );
        }
        assert!(g.len() <= MAX_TRIPLETS);
        let dir = std::env::temp_dir().join(format!("mailgate-greylist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("greylist");
        let mut g = Greylist::new(300);
        g.check(T0, ip("192.0.2.1"), "odd sender%@x", "r@y", Some("x"));
        g.check(T0 + 300, ip("192.0.2.1"), "odd sender%@x", "r@y", Some("x"));
        g.check(T0, ip("2001:db8::1"), "a@b", "c@d", None);
        g.save(&path, &dir.join(".greylist.tmp")).unwrap();
        assert!(!g.is_dirty());
        let (mut back, skipped) = Greylist::load(&path, 300).unwrap();
        assert_eq!(skipped, 0);
        assert_eq!(back.to_text(), g.to_text());
        assert!(matches!(
            back.check(T0 + 500, ip("192.0.2.1"), "odd sender%@x", "r@y", None),
            Decision::Pass(_)
        ));
        // A damaged line is skipped, the rest kept.
        let text = format!("{}T broken\n", g.to_text());
        let (_, skipped) = Greylist::from_text(&text, 300).unwrap();
        assert_eq!(skipped, 1);
        assert!(Greylist::from_text("something else\n", 300).is_err());
        assert_eq!(
            Greylist::load(&dir.join("missing"), 300).unwrap().0.len(),
            0
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
