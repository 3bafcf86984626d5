//! Parsers for single config values: durations, sizes, booleans, socket
//! and CIDR lists, `host:port`, modes, addresses, password schemes.
//!
//! Owns: the syntax of one value. Each parser takes the trimmed value text
//! and returns the typed value or a reason (the caller adds `FILE:LINE` and
//! the key). Must not: know sections, defaults or other keys.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::{
    DmarcAction, DnsblList, HostPort, IpNet, Keep, OutboxMode, TlsMode, MAX_DKIM_SELECTOR,
};

/// Longest duration accepted anywhere: ten years. Keeps `Instant + d` far
/// from overflow (which would panic) while allowing any sane retention.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// RFC 1035 2.3.4: a name is at most 255 octets on the wire, 253 as text.
const MAX_DOMAIN_LEN: usize = 253;
/// RFC 1035 2.3.4: labels are 63 octets or less.
const MAX_LABEL_LEN: usize = 63;
/// RFC 5321 4.5.3.1.1: a local part is at most 64 octets.
const MAX_LOCAL_PART_LEN: usize = 64;
/// sha512-crypt (Drepper's spec): the salt is at most 16 characters.
const MAX_SHA512_SALT_LEN: usize = 16;
/// sha512-crypt: 64 hash bytes in crypt's base64 are 86 characters.
const SHA512_HASH_LEN: usize = 86;

pub type Parsed<T> = Result<T, String>;

/// `90s`, `5m`, `4h`, `5d`; the suffix is required so `timeout = 300`
/// (seconds? minutes?) is never guessed. Must be > 0.
pub fn duration(v: &str) -> Parsed<Duration> {
    const WANT: &str = "expected a duration such as 90s, 5m, 4h or 5d";
    let v = v.trim();
    let unit_at = v.len().saturating_sub(1);
    let (num, unit) = (
        v.get(..unit_at).unwrap_or(""),
        v.get(unit_at..).unwrap_or(""),
    );
    let mult: u64 = match unit {
        "s" | "S" => 1,
        "m" | "M" => 60,
        "h" | "H" => 3600,
        "d" | "D" => 86_400,
        _ => return Err(WANT.into()),
    };
    let n = digits(num).ok_or(WANT)?;
    let secs = n.checked_mul(mult).ok_or("duration too long")?;
    let d = Duration::from_secs(secs);
    if d.is_zero() {
        return Err("duration must be more than zero".into());
    }
    if d > MAX_DURATION {
        return Err("duration too long (at most 3650d)".into());
    }
    Ok(d)
}

/// Comma-separated durations, at least one.
pub fn duration_list(v: &str) -> Parsed<Vec<Duration>> {
    let list = list(v, duration)?;
    if list.is_empty() {
        return Err("expected at least one duration, such as 5m, 1h".into());
    }
    Ok(list)
}

/// Bytes, or `K`, `M`, `G` (powers of 1024). Must be > 0.
pub fn size(v: &str) -> Parsed<u64> {
    const WANT: &str = "expected a size such as 512K, 25M or 1G";
    let v = v.trim();
    let (num, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&v[..v.len() - 1], 1 << 20),
        Some('g' | 'G') => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    let n = digits(num).ok_or(WANT)?;
    let bytes = n.checked_mul(mult).ok_or("size too large")?;
    if bytes == 0 {
        return Err("size must be more than zero".into());
    }
    Ok(bytes)
}

/// A count such as `max_recipients`; must be > 0.
pub fn count(v: &str) -> Parsed<usize> {
    match digits(v.trim()).and_then(|n| usize::try_from(n).ok()) {
        Some(0) => Err("must be more than zero".into()),
        Some(n) => Ok(n),
        None => Err("expected a whole number".into()),
    }
}

pub fn boolean(v: &str) -> Parsed<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" => Ok(true),
        "no" | "false" | "off" => Ok(false),
        _ => Err("expected yes or no (or true/false, on/off)".into()),
    }
}

pub fn tls_mode(v: &str) -> Parsed<TlsMode> {
    match v.trim().to_ascii_lowercase().as_str() {
        "tls" => Ok(TlsMode::Tls),
        "starttls" => Ok(TlsMode::StartTls),
        "none" => Ok(TlsMode::None),
        _ => Err("expected tls, starttls or none".into()),
    }
}

pub fn outbox_mode(v: &str) -> Parsed<OutboxMode> {
    match v.trim().to_ascii_lowercase().as_str() {
        "smarthost" => Ok(OutboxMode::Smarthost),
        "direct" => Ok(OutboxMode::Direct),
        _ => Err("expected smarthost or direct".into()),
    }
}

/// `[smtp] dmarc = reject | quarantine | tag`.
pub fn dmarc_action(v: &str) -> Parsed<DmarcAction> {
    match v.trim().to_ascii_lowercase().as_str() {
        "reject" => Ok(DmarcAction::Reject),
        "quarantine" => Ok(DmarcAction::Quarantine),
        "tag" => Ok(DmarcAction::Tag),
        _ => Err("expected reject, quarantine or tag".into()),
    }
}

/// `[domain X] dkim_selector`: one DNS label of letters, digits and `-`
/// (RFC 6376 3.1 selectors are sub-domains; ours get `-rsa` /
/// `-ed25519` appended, so at most [`MAX_DKIM_SELECTOR`] characters).
pub fn dkim_selector(v: &str) -> Parsed<String> {
    let v = v.trim();
    if v.is_empty() || v.len() > MAX_DKIM_SELECTOR {
        return Err(format!("a selector is 1 to {MAX_DKIM_SELECTOR} characters"));
    }
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || v.starts_with('-') {
        return Err("a selector is letters, digits and '-' (one DNS label)".into());
    }
    Ok(v.to_ascii_lowercase())
}

/// `[smtp] dnsbl = zen.spamhaus.org, bl.example=127.0.0.2|127.0.0.10-127.0.0.11`:
/// zones, each optionally with the answers (addresses or ranges in
/// 127.0.0.0/8, RFC 5782 2.1) that count as a listing.
pub fn dnsbl_list(v: &str) -> Parsed<Vec<DnsblList>> {
    list(v, |item| {
        let (zone, codes) = match item.split_once('=') {
            Some((z, c)) => (z, Some(c)),
            None => (item, None),
        };
        let zone = zone.trim().trim_end_matches('.').to_ascii_lowercase();
        domain(&zone).map_err(|e| format!("dnsbl zone {zone:?}: {e}"))?;
        if !zone.contains('.') || !zone.is_ascii() {
            return Err(format!("dnsbl zone {zone:?}: not a DNS zone name"));
        }
        let mut ranges = Vec::new();
        if let Some(codes) = codes {
            for code in codes.split('|') {
                let (lo, hi) = code.split_once('-').unwrap_or((code, code));
                let parse = |s: &str| -> Parsed<Ipv4Addr> {
                    let ip: Ipv4Addr = s
                        .trim()
                        .parse()
                        .map_err(|_| format!("dnsbl code {s:?} is not an IPv4 address"))?;
                    if ip.octets()[0] != 127 {
                        return Err(format!(
                            "dnsbl code {ip} is not in 127.0.0.0/8 (RFC 5782 2.1)"
                        ));
                    }
                    Ok(ip)
                };
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if lo > hi {
                    return Err(format!("dnsbl code range {lo}-{hi} is backwards"));
                }
                ranges.push((lo, hi));
            }
        }
        Ok(DnsblList {
            zone,
            codes: ranges,
        })
    })
}

/// `keep = no | yes | 7d`.
pub fn keep(v: &str) -> Parsed<Keep> {
    match v.trim().to_ascii_lowercase().as_str() {
        "no" | "false" | "off" => Ok(Keep::No),
        "yes" | "true" | "on" => Ok(Keep::Yes),
        _ => duration(v)
            .map(Keep::For)
            .map_err(|_| "expected no, yes, or a duration such as 7d".into()),
    }
}

/// `0.0.0.0:25, [::]:25`; empty means none (the listener is off).
pub fn socket_list(v: &str) -> Parsed<Vec<SocketAddr>> {
    list(v, |item| {
        item.parse::<SocketAddr>()
            .map_err(|_| format!("{item:?} is not IP:PORT (IPv6 as [::1]:25)"))
    })
}

/// `127.0.0.0/8, ::1/128, 192.168.1.5`; a bare IP is a /32 or /128.
pub fn cidr_list(v: &str) -> Parsed<Vec<IpNet>> {
    list(v, cidr)
}

fn cidr(item: &str) -> Parsed<IpNet> {
    let bad = || format!("{item:?} is not an IP network such as 192.168.1.0/24");
    let (ip, prefix) = match item.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (item, None),
    };
    let addr: IpAddr = ip.trim().parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match digits(p.trim()) {
            Some(n) if n <= u64::from(max) => n as u8,
            _ => return Err(format!("{item:?}: prefix must be 0 to {max}")),
        },
    };
    Ok(IpNet { addr, prefix })
}

/// `IP` or `IP:PORT` (IPv6 as `[::1]:53` or bare `::1`).
pub fn nameserver(v: &str, default_port: u16) -> Parsed<SocketAddr> {
    let v = v.trim();
    if let Ok(sa) = v.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let bare = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(v);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| "expected IP or IP:PORT of a DNS resolver".into())
}

/// `host[:port]`, host a name or IP literal (IPv6 in brackets when a port
/// follows). The port is `None` when absent, for the caller's default.
pub fn host_port(item: &str) -> Parsed<(String, Option<u16>)> {
    let item = item.trim();
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Ok((ip.to_string(), None));
    }
    let (host, port) = if let Some(rest) = item.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{item:?}: missing ] after IPv6 address"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{item:?}: bad IP address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{item:?}: expected :PORT"))?,
            ),
        };
        (ip.to_string(), port)
    } else {
        match item.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (item.to_string(), None),
        }
    };
    if host.parse::<IpAddr>().is_err() {
        domain(&host).map_err(|e| format!("{item:?}: {e}"))?;
    }
    let port = match port {
        None => None,
        Some(p) => match digits(p).and_then(|n| u16::try_from(n).ok()) {
            Some(n) if n > 0 => Some(n),
            _ => return Err(format!("{item:?}: port must be 1 to 65535")),
        },
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// Comma-separated `host[:port]` list with a default port.
pub fn host_list(v: &str, default_port: u16) -> Parsed<Vec<HostPort>> {
    list(v, |item| {
        let (host, port) = host_port(item)?;
        Ok(HostPort {
            host,
            port: port.unwrap_or(default_port),
        })
    })
}

/// Splits `a, b, c`; empty value gives an empty list, an empty item
/// (`a,,b` or a trailing comma) is an error since it is usually a typo.
pub fn list<T>(v: &str, mut item: impl FnMut(&str) -> Parsed<T>) -> Parsed<Vec<T>> {
    if v.trim().is_empty() {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(|s| match s.trim() {
            "" => Err("empty item in comma-separated list".to_string()),
            s => item(s),
        })
        .collect()
}

/// A host or domain name: dot-separated labels of letters, digits, `-`,
/// `_` or non-ASCII (IDN U-labels). Refuses anything that could escape a
/// folder under `data_dir/mail/` (`/`, `..`, NUL, control characters).
pub fn domain(v: &str) -> Parsed<()> {
    if v.is_empty() {
        return Err("empty domain".into());
    }
    if v.len() > MAX_DOMAIN_LEN {
        return Err(format!("domain longer than {MAX_DOMAIN_LEN} characters"));
    }
    for label in v.split('.') {
        if label.is_empty() {
            return Err("domain has an empty label (leading, trailing or double dot)".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "domain label longer than {MAX_LABEL_LEN} characters"
            ));
        }
        if let Some(c) = label.chars().find(|&c| !domain_char(c)) {
            return Err(format!("character {c:?} not allowed in a domain"));
        }
    }
    Ok(())
}

/// A local part as a dot-atom (RFC 5322 3.2.3, plus UTF-8 per RFC 6531).
/// With `folder_safe`, also refuses `/` (a local mailbox is a folder).
/// Checks the specific dangers first so the message names them.
pub fn local_part(v: &str, folder_safe: bool) -> Parsed<()> {
    if v.is_empty() {
        return Err("empty local part".into());
    }
    if v == "." || v == ".." {
        return Err(format!("local part {v:?} is not allowed"));
    }
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(format!("control character {c:?} in local part"));
    }
    if v.contains('\\') || (folder_safe && v.contains('/')) {
        return Err("local part may not contain / or \\".into());
    }
    if v.starts_with('.') || v.ends_with('.') || v.contains("..") {
        return Err("local part may not start or end with a dot, or have two in a row".into());
    }
    if v.len() > MAX_LOCAL_PART_LEN {
        return Err(format!(
            "local part longer than {MAX_LOCAL_PART_LEN} characters"
        ));
    }
    if let Some(c) = v.chars().find(|&c| !local_char(c)) {
        return Err(format!("character {c:?} not allowed in a local part"));
    }
    Ok(())
}

/// Letters, digits, `-`, `_`, or non-ASCII that is no space or control.
fn domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || c == '-'
        || c == '_'
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

/// RFC 5322 3.2.3 atext, `.`, or non-ASCII (RFC 6531) that is no space.
fn local_char(c: char) -> bool {
    const ATEXT: &str = "!#$%&'*+-/=?^_`{|}~.";
    c.is_ascii_alphanumeric() || ATEXT.contains(c) || (!c.is_ascii() && !c.is_whitespace())
}

/// `local@domain`, lower-cased. `folder_safe` as in [`local_part`].
pub fn address(v: &str, folder_safe: bool) -> Parsed<String> {
    let v = v.trim();
    let (local, dom) = v
        .rsplit_once('@')
        .ok_or_else(|| format!("{v:?} is not an address (local@domain)"))?;
    local_part(local, folder_safe).map_err(|e| format!("{v:?}: {e}"))?;
    domain(dom).map_err(|e| format!("{v:?}: {e}"))?;
    Ok(fold(v))
}

/// Lower-cases an address or domain; used by both parsing and lookup so
/// keys and queries always agree.
pub fn fold(s: &str) -> String {
    s.to_lowercase()
}

/// What a `password` value is, by its scheme prefix.
#[derive(Debug, PartialEq, Eq)]
pub enum PasswordScheme {
    Sha512Crypt,
    Plain,
}

/// Accepts `$6$...`, `{SHA512-CRYPT}$6$...`, `{PLAIN}...`. Never echoes
/// the value: a reason must not leak a password into a log.
pub fn password(v: &str) -> Parsed<PasswordScheme> {
    if v.starts_with("{PLAIN}") {
        return Ok(PasswordScheme::Plain);
    }
    let hash = v.strip_prefix("{SHA512-CRYPT}").unwrap_or(v);
    if !hash.starts_with("$6$") {
        return Err(
            "unknown password scheme: use a $6$ hash from `mailgate passwd`, \
                    {SHA512-CRYPT}$6$... or {PLAIN}..."
                .into(),
        );
    }
    if sha512_crypt_shape(hash) {
        Ok(PasswordScheme::Sha512Crypt)
    } else {
        Err(
            "malformed $6$ hash: expected $6$[rounds=N$]SALT$HASH as printed by `mailgate passwd`"
                .into(),
        )
    }
}

/// `$6$[rounds=N$]SALT$HASH` with an 86-character crypt-base64 hash.
fn sha512_crypt_shape(h: &str) -> bool {
    let crypt64 = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    let mut parts = h.split('$').skip(2); // "" and "6"
    let mut salt = parts.next().unwrap_or("");
    if let Some(n) = salt.strip_prefix("rounds=") {
        if digits(n).is_none() {
            return false;
        }
        salt = parts.next().unwrap_or("");
    }
    let hash = parts.next().unwrap_or("");
    parts.next().is_none()
        && !salt.is_empty()
        && salt.len() <= MAX_SHA512_SALT_LEN
        && hash.len() == SHA512_HASH_LEN
        && hash.chars().all(crypt64)
}

/// ASCII digits only (no sign, no spaces), checked for overflow.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn durations() {
        let ok = [
            ("90s", 90),
            ("5m", 300),
            ("4h", 14_400),
            ("5d", 432_000),
            (" 7D ", 604_800),
            ("3650d", 3650 * 86_400),
        ];
        for (v, secs) in ok {
            assert_eq!(duration(v), Ok(Duration::from_secs(secs)), "{v}");
        }
        let bad = [
            "",
            "5",
            "m",
            "0s",
            "-5m",
            "+5m",
            "5 m",
            "5x",
            "1.5h",
            "3651d",
            "99999999999999999999s",
            "18446744073709551615d",
            "5mm",
            "é",
            "5é",
            "\u{0}s",
        ];
        for v in bad {
            assert!(duration(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn duration_lists() {
        let m = |n: u64| Duration::from_secs(60 * n);
        assert_eq!(duration_list("5m, 10m,30m"), Ok(vec![m(5), m(10), m(30)]));
        for v in ["", " ", "5m,", ",5m", "5m,,10m", "5m, x"] {
            assert!(duration_list(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn sizes() {
        let ok = [
            ("25M", 25 << 20),
            ("1g", 1 << 30),
            ("512K", 512 << 10),
            ("1000", 1000),
        ];
        for (v, n) in ok {
            assert_eq!(size(v), Ok(n), "{v}");
        }
        for v in [
            "",
            "0",
            "0M",
            "M",
            "25MB",
            "-1",
            "1.5M",
            "99999999999G",
            "25 M",
            "1T",
        ] {
            assert!(size(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(count("100"), Ok(100));
        for v in ["", "0", "-1", "1e3", "ten", "99999999999999999999999"] {
            assert!(count(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn booleans_and_modes() {
        for (v, b) in [
            ("yes", true),
            ("TRUE", true),
            ("on", true),
            ("no", false),
            ("False", false),
            ("off", false),
        ] {
            assert_eq!(boolean(v), Ok(b), "{v}");
        }
        for v in ["", "1", "0", "y", "nope"] {
            assert!(boolean(v).is_err(), "{v:?}");
        }
        assert_eq!(tls_mode("STARTTLS"), Ok(TlsMode::StartTls));
        assert_eq!(tls_mode("tls"), Ok(TlsMode::Tls));
        assert_eq!(tls_mode("none"), Ok(TlsMode::None));
        assert!(tls_mode("ssl").is_err());
        assert_eq!(outbox_mode("Direct"), Ok(OutboxMode::Direct));
        assert_eq!(outbox_mode("smarthost"), Ok(OutboxMode::Smarthost));
        assert!(outbox_mode("mx").is_err());
        assert_eq!(keep("no"), Ok(Keep::No));
        assert_eq!(keep("yes"), Ok(Keep::Yes));
        assert_eq!(keep("7d"), Ok(Keep::For(Duration::from_secs(7 * 86_400))));
        assert!(keep("forever").is_err());
        assert!(keep("0d").is_err());
    }

    #[test]
    fn sockets() {
        let v4 = |a: [u8; 4], p| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), p);
        assert_eq!(
            socket_list("0.0.0.0:25, [::]:25"),
            Ok(vec![
                v4([0, 0, 0, 0], 25),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 25)
            ])
        );
        assert_eq!(socket_list(""), Ok(vec![]));
        for v in [
            "0.0.0.0",
            "::1:25",
            "host:25",
            "0.0.0.0:99999",
            "1.2.3.4:25,",
            "[::1]",
        ] {
            assert!(socket_list(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn cidrs() {
        let net = |s: &str, p| IpNet {
            addr: s.parse().unwrap(),
            prefix: p,
        };
        assert_eq!(
            cidr_list("127.0.0.0/8, ::1/128, 192.168.1.5, fe80::1"),
            Ok(vec![
                net("127.0.0.0", 8),
                net("::1", 128),
                net("192.168.1.5", 32),
                net("fe80::1", 128)
            ])
        );
        assert_eq!(cidr_list("0.0.0.0/0"), Ok(vec![net("0.0.0.0", 0)]));
        for v in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.0/-1",
            "x/8",
            "10.0.0.0/8/8",
        ] {
            assert!(cidr_list(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn nameservers() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(nameserver("192.168.1.1", 53), Ok(sa("192.168.1.1:53")));
        assert_eq!(
            nameserver("192.168.1.1:5353", 53),
            Ok(sa("192.168.1.1:5353"))
        );
        assert_eq!(nameserver("::1", 53), Ok(sa("[::1]:53")));
        assert_eq!(nameserver("[::1]", 53), Ok(sa("[::1]:53")));
        assert_eq!(nameserver("[::1]:54", 53), Ok(sa("[::1]:54")));
        for v in ["dns.example", "1.2.3.4:x", "1.2.3.4:70000"] {
            assert!(nameserver(v, 53).is_err(), "{v:?}");
        }
    }

    #[test]
    fn host_ports() {
        let hp = |h: &str, p| HostPort {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            host_list(
                "smtp.ISP.example:25, relay.example, [2001:db8::1]:2525, 2001:db8::2, 10.0.0.1",
                587
            ),
            Ok(vec![
                hp("smtp.isp.example", 25),
                hp("relay.example", 587),
                hp("2001:db8::1", 2525),
                hp("2001:db8::2", 587),
                hp("10.0.0.1", 587),
            ])
        );
        for v in [
            "host:0",
            "host:",
            "host:x",
            "host:65536",
            "[::1",
            "[::1]x",
            "ho st",
            "a/b:25",
            "..:25",
            ":25",
        ] {
            assert!(host_list(v, 587).is_err(), "{v:?}");
        }
    }

    #[test]
    fn domains() {
        for v in [
            "example.test",
            "localhost",
            "xn--bcher-kva.example",
            "bücher.example",
            "a_b.example",
            "mail-1.example",
        ] {
            assert_eq!(domain(v), Ok(()), "{v}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["abcdefghi"; 30].join(".");
        for v in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "a/b",
            "a\\b",
            "a b",
            "a\0b",
            "a\u{7}",
            "[1.2.3.4]",
            &long_label,
            &long_name,
        ] {
            assert!(domain(v).is_err(), "{v:?}");
        }
    }

    #[test]
    fn local_parts() {
        for v in [
            "bob",
            "bob.smith",
            "b+tag",
            "o'neil",
            "x_y-z",
            "josé",
            "a=b",
        ] {
            assert_eq!(local_part(v, true), Ok(()), "{v}");
        }
        assert_eq!(local_part("a/b", false), Ok(()));
        let long = "a".repeat(65);
        for v in [
            "", ".", "..", "../x", "a/b", "a\\b", "a\0", "a\tb", "a b", ".a", "a.", "a..b", "a@b",
            "a\"b", "a,b", "<a>", &long,
        ] {
            assert!(local_part(v, true).is_err(), "{v:?}");
        }
        for v in ["a\\b", "..", "a b", "a\r"] {
            assert!(local_part(v, false).is_err(), "{v:?}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            address(" Bob@Example.TEST ", true),
            Ok("bob@example.test".into())
        );
        assert_eq!(
            address("a/b@remote.example", false),
            Ok("a/b@remote.example".into())
        );
        for v in [
            "bob",
            "@example.test",
            "bob@",
            "bob@@x",
            "a/b@x.test",
            "../x@x.test",
            "bob@x/y",
            "bob@ex ample",
        ] {
            assert!(address(v, true).is_err(), "{v:?}");
        }
    }

    #[test]
    fn passwords() {
        let hash = format!("$6$saltsalt${}", "a".repeat(86));
        let rounds = format!("$6$rounds=5000$saltsalt${}", "./0Z".repeat(21) + "ab");
        assert_eq!(password(&hash), Ok(PasswordScheme::Sha512Crypt));
        assert_eq!(password(&rounds), Ok(PasswordScheme::Sha512Crypt));
        assert_eq!(
            password(&format!("{{SHA512-CRYPT}}{hash}")),
            Ok(PasswordScheme::Sha512Crypt)
        );
        assert_eq!(password("{PLAIN}a;b#c"), Ok(PasswordScheme::Plain));
        assert_eq!(password("{PLAIN}"), Ok(PasswordScheme::Plain));
        let bad = [
            "secret".to_string(),
            "$6$...".into(),
            "$1$salt$hash".into(),
            "{MD5}x".into(),
            "{plain}x".into(),
            format!("$6$${}", "a".repeat(86)),
            format!("$6$salt${}", "a".repeat(85)),
            format!("$6$salt${}x", "a".repeat(86)),
            format!("$6$salt${}$", "a".repeat(86)),
            format!("$6$rounds=x$salt${}", "a".repeat(86)),
            format!("$6$salt${}", "!".repeat(86)),
            format!("$6${}${}", "s".repeat(17), "a".repeat(86)),
        ];
        for v in &bad {
            let e = password(v).unwrap_err();
            assert!(
                !e.contains(v.as_str()) || v.is_empty(),
                "reason echoes the password: {e}"
            );
        }
    }
}
