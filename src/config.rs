//! The INI config file, parsed into typed values.
//!
//! Owns: reading `mailgate.ini`, checking every section and key, defaults
//! (written once, here, and mirrored in `etc/mailgate.ini`), and recipient
//! resolution (see `Config::resolve`). Every problem carries `FILE:LINE`.
//! Must not: open sockets, touch `data_dir`, or exit the process.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::proto::envelope::Resolution;

/// Where the system names its DNS resolvers (used when `[outbox]
/// nameserver` is not set).
const RESOLV_CONF: &str = "/etc/resolv.conf";
pub use crate::proto::pop3_client::Keep;
pub use crate::proto::TlsMode;

mod build;
mod scan;
#[cfg(test)]
mod tests;
mod values;

pub use build::MAX_DIAGNOSTICS;
pub use values::MAX_DURATION;

// Defaults: written once, here, and mirrored (commented) in etc/mailgate.ini.
// `hostname`, domains, mailboxes, smarthosts and accounts have none: they
// name the user's own world.

pub const DEFAULT_DATA_DIR: &str = "/var/lib/mailgate";
/// Where `sendmail` run by any local user drops messages for the server
/// (outside the 0700 data_dir; see `pickup`). /var/spool is where Postfix
/// and exim keep theirs, and it survives reboots (unlike /run).
pub const DEFAULT_MAILDROP: &str = "/var/spool/mailgate/maildrop";
/// `bob+tag@` goes to `bob@`, as in most Postfix setups; `recipient_delimiter =`
/// (empty) turns it off. An exact match always wins over the split.
pub const DEFAULT_RECIPIENT_DELIMITER: Option<char> = Some('+');
/// Local parts every local domain has without a section for them, all
/// going to `[server] postmaster`: RFC 5321 4.5.1 requires `postmaster`;
/// `root` gets the box's cron and system mail (`sendmail root`); RFC 2142
/// 2 names `abuse` for reports. A mailbox, alias or `[alias]` of the same
/// name wins.
pub const IMPLICIT_POSTMASTER_NAMES: [&str; 3] = ["postmaster", "root", "abuse"];
/// RFC 5321 4.5.4.2 / IANA: the MX port.
pub const DEFAULT_SMTP_LISTEN: SocketAddr = any_v4(25);
/// RFC 6409 3.1: message submission.
pub const DEFAULT_SUBMISSION: SocketAddr = any_v4(587);
/// RFC 8314 7.3: submission over implicit TLS.
pub const DEFAULT_SMTPS: SocketAddr = any_v4(465);
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 25 << 20;
/// RFC 5321 4.5.3.1.8: a server must accept at least 100 recipients.
pub const DEFAULT_MAX_RECIPIENTS: usize = 100;
pub const DEFAULT_MAX_CONNECTIONS: usize = 200;
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 20;
/// Loopback only: the box itself (cron, `mailgate sendmail` over SMTP).
pub const DEFAULT_RELAY_NETWORKS: [IpNet; 2] = [
    IpNet {
        addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
        prefix: 8,
    },
    IpNet {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        prefix: 128,
    },
];
pub const DEFAULT_ALLOW_PLAINTEXT_AUTH: bool = false;
/// Postfix's `reject_sender_login_mismatch`, on: a logged-in user sends
/// only as their own addresses (see `Config::may_send_as`).
pub const DEFAULT_SENDER_LOGIN_MATCH: bool = true;
/// RFC 5321 4.5.3.2.7: a server should wait at least 5 minutes for a command.
pub const DEFAULT_SMTP_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Submission, smtps and POP3 sessions must log in this soon after
/// connecting: a real client needs a second or two (TLS and a slow
/// board's hash included); one that only keeps its slot is closed.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// No DNS blocklists unless named: each one is a third party's policy.
pub const DEFAULT_DNSBL: Vec<DnsblList> = Vec::new();
pub const DEFAULT_GREYLIST: bool = false;
/// The delay most greylisting implementations use (postgrey's 300 s).
pub const DEFAULT_GREYLIST_DELAY: Duration = Duration::from_secs(5 * 60);
/// What a DMARC `p=reject` failure gets: Junk, not a refusal, until the
/// admin trusts the checks (RFC 7489 6.7 lets the receiver choose).
pub const DEFAULT_DMARC: DmarcAction = DmarcAction::Quarantine;
/// Longest `dkim_selector`, so that `SELECTOR-ed25519` is one DNS label.
pub const MAX_DKIM_SELECTOR: usize = 50;
/// RFC 1939 3: the POP3 port.
pub const DEFAULT_POP3_LISTEN: SocketAddr = any_v4(DEFAULT_POP3_PORT);
/// RFC 8314 7.3: POP3 over implicit TLS.
pub const DEFAULT_POP3S: SocketAddr = any_v4(DEFAULT_POP3S_PORT);
/// RFC 1939 3: the autologout timer must be at least 10 minutes.
pub const DEFAULT_POP3_TIMEOUT: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_OUTBOX_MODE: OutboxMode = OutboxMode::Smarthost;
pub const DEFAULT_OUTBOX_TLS: TlsMode = TlsMode::StartTls;
/// RFC 6409 3.1: smarthost port when `tls` is `starttls` or `none`.
pub const DEFAULT_SMARTHOST_PORT: u16 = 587;
/// RFC 8314 3.3: smarthost port when `tls = tls` (implicit TLS).
pub const DEFAULT_SMARTHOST_TLS_PORT: u16 = 465;
/// Short at first (greylisting, a router reboot), then hourly-ish; the last repeats.
pub const DEFAULT_RETRY: [Duration; 6] = [
    Duration::from_secs(5 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(4 * 3600),
];
/// RFC 5321 4.5.4.1: give-up time generally at least 4-5 days.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(5 * 86_400);
/// RFC 1035 4.2: DNS port.
pub const DEFAULT_NAMESERVER_PORT: u16 = 53;
pub const DEFAULT_SMARTPOP_TLS: TlsMode = TlsMode::Tls;
/// RFC 8314 7.3: POP3S, the SmartPop port when `tls = tls`.
pub const DEFAULT_POP3S_PORT: u16 = 995;
/// RFC 1939 3: the SmartPop port when `tls` is `starttls` or `none`.
pub const DEFAULT_POP3_PORT: u16 = 110;
pub const DEFAULT_SMARTPOP_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_KEEP: Keep = Keep::No;
pub const DEFAULT_MULTIDROP: bool = false;

/// A config file bigger than this is surely not one (`-c /dev/zero`).
pub const MAX_CONFIG_SIZE: u64 = 4 << 20;

const fn any_v4(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
}

/// One problem found in the config, printed as `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not tied to a line (e.g. unreadable file).
    pub line: usize,
    pub severity: Severity,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning: ",
            Severity::Error => "",
        };
        write!(
            f,
            "{}:{}: {}{}",
            self.file.display(),
            self.line,
            level,
            self.message
        )
    }
}

/// An IP network in CIDR notation, e.g. `192.168.1.0/24` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (for messages and SIGHUP re-reads).
    pub path: PathBuf,
    pub server: ServerConfig,
    pub smtp: SmtpConfig,
    pub pop3: Pop3Config,
    pub tls: TlsConfig,
    /// Keyed by lower-case domain name.
    pub domains: BTreeMap<String, DomainConfig>,
    /// Keyed by lower-case full address `local@domain`.
    pub mailboxes: BTreeMap<String, MailboxConfig>,
    /// Keyed by lower-case full address `local@domain`.
    pub aliases: BTreeMap<String, AliasConfig>,
    pub outbox: OutboxConfig,
    /// In file order.
    pub smartpop: Vec<SmartPopConfig>,
    /// The DNS server outbound sessions ask: `[outbox] nameserver`, else
    /// the first of /etc/resolv.conf, read once by `load` (so no session
    /// reads a file on the loop thread).
    pub resolver: Option<SocketAddr>,
    /// What an unknown login name is checked against: the scheme and cost
    /// of the configured passwords (`auth::dummy_like`), made once here.
    pub login_dummy: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub hostname: String,
    pub data_dir: PathBuf,
    /// The folder any local user's `sendmail` drops messages into.
    pub maildrop: PathBuf,
    pub user: Option<String>,
    /// `None` when empty (plus-addressing off).
    pub recipient_delimiter: Option<char>,
    /// Lower-case address (a local mailbox or alias) that gets
    /// `IMPLICIT_POSTMASTER_NAMES` of every local domain; None: unset.
    pub postmaster: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    pub submission: Vec<SocketAddr>,
    pub smtps: Vec<SocketAddr>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub relay_networks: Vec<IpNet>,
    pub allow_plaintext_auth: bool,
    pub timeout: Duration,
    /// Time from connect to a successful login on the ports that need one
    /// (submission, smtps, POP3).
    pub login_timeout: Duration,
    /// `dnsbl`: lists asked about each MX-role client, in order.
    pub dnsbl: Vec<DnsblList>,
    pub greylist: bool,
    pub greylist_delay: Duration,
    pub dmarc: DmarcAction,
    /// `sender_login_match`: see `Config::may_send_as`.
    pub sender_login_match: bool,
}

/// One `dnsbl` entry: `zone` or `zone=CODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsblList {
    /// Lower-case, without the final dot.
    pub zone: String,
    /// Inclusive ranges of answers that count as a listing; empty: any
    /// answer in 127.0.0.0/8 (RFC 5782 2.1) except Spamhaus's
    /// 127.255.255.0/24 error codes.
    pub codes: Vec<(Ipv4Addr, Ipv4Addr)>,
}

/// `[smtp] dmarc`: what a failure of a `p=reject` policy gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcAction {
    /// 550 5.7.1 at end of data.
    Reject,
    /// Delivered to the recipient's Junk folder.
    Quarantine,
    /// Delivered, with the result in Authentication-Results only.
    Tag,
}

#[derive(Debug, Clone)]
pub struct Pop3Config {
    pub listen: Vec<SocketAddr>,
    pub pop3s: Vec<SocketAddr>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// Lower-case domain.
    pub name: String,
    /// Lower-case local part of a mailbox of this domain.
    pub catch_all: Option<String>,
    /// `dkim_selector`: sign mail from this domain with the keys of this
    /// selector (`data_dir/dkim/DOMAIN/SELECTOR-{rsa,ed25519}.pem`).
    pub dkim_selector: Option<String>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct MailboxConfig {
    /// Lower-case `local@domain`.
    pub address: String,
    pub local: String,
    pub domain: String,
    /// As written: `$6$...`, `{PLAIN}secret`, `{SHA512-CRYPT}$6$...`. None: no login.
    pub password: Option<String>,
    /// Extra lower-case local parts of the same domain.
    pub aliases: Vec<String>,
    /// Remote (or local) addresses that also get a copy.
    pub forward: Vec<String>,
    pub quota: Option<u64>,
    /// Lower-case addresses this mailbox's login may also use as
    /// reverse-path (`send_as`), besides its own (see `may_send_as`).
    pub send_as: Vec<String>,
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct AliasConfig {
    pub address: String,
    /// Lower-case addresses as written (local mailboxes, other aliases, remote).
    pub to: Vec<String>,
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxMode {
    Smarthost,
    Direct,
}

/// `host:port`, host being a name or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub mode: OutboxMode,
    /// Smarthosts, tried in order. Empty in direct mode. Default port 587.
    pub hosts: Vec<HostPort>,
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// `fingerprint`: SHA-256 of the one smarthost certificate accepted,
    /// upper-case hex pairs joined by colons (as `tls::fingerprint`).
    pub fingerprint: Option<String>,
    /// Never empty; the last interval repeats.
    pub retry: Vec<Duration>,
    pub give_up_after: Duration,
    pub nameserver: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct SmartPopConfig {
    pub name: String,
    pub host: HostPort,
    pub tls: TlsMode,
    pub username: String,
    pub password: String,
    pub ca_file: Option<PathBuf>,
    /// Lower-case address of a local mailbox (or alias).
    pub deliver_to: String,
    pub multidrop: bool,
    pub interval: Duration,
    pub keep: Keep,
    pub line: usize,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec![DEFAULT_SMTP_LISTEN],
            submission: vec![DEFAULT_SUBMISSION],
            smtps: vec![DEFAULT_SMTPS],
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            relay_networks: DEFAULT_RELAY_NETWORKS.to_vec(),
            allow_plaintext_auth: DEFAULT_ALLOW_PLAINTEXT_AUTH,
            timeout: DEFAULT_SMTP_TIMEOUT,
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            dnsbl: DEFAULT_DNSBL,
            greylist: DEFAULT_GREYLIST,
            greylist_delay: DEFAULT_GREYLIST_DELAY,
            dmarc: DEFAULT_DMARC,
            sender_login_match: DEFAULT_SENDER_LOGIN_MATCH,
        }
    }
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            listen: vec![DEFAULT_POP3_LISTEN],
            pop3s: vec![DEFAULT_POP3S],
            timeout: DEFAULT_POP3_TIMEOUT,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            mode: DEFAULT_OUTBOX_MODE,
            hosts: Vec::new(),
            tls: DEFAULT_OUTBOX_TLS,
            username: None,
            password: None,
            ca_file: None,
            fingerprint: None,
            retry: DEFAULT_RETRY.to_vec(),
            give_up_after: DEFAULT_GIVE_UP_AFTER,
            nameserver: None,
        }
    }
}

impl IpNet {
    /// Is `ip` inside this network? An IPv4-mapped IPv6 address
    /// (`::ffff:192.0.2.1`, what a dual-stack socket reports) matches IPv4
    /// networks; a plain IPv4 address matches a `::ffff:0:0/96`-style net.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(net.into(), ip.into(), 128, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                same_prefix(net.into(), ip.to_ipv6_mapped().into(), 128, self.prefix)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

/// Do the first `prefix` of `bits` bits agree? A prefix past `bits` (a
/// hand-built `IpNet`) counts as `bits`, never as a panic.
fn same_prefix(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
    let keep = u32::from(prefix).min(bits);
    keep == 0 || (a ^ b) >> (bits - keep) == 0
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What an exact local address names.
enum Target<'a> {
    /// A mailbox, by its own address or one of its `aliases`.
    Mailbox(&'a MailboxConfig),
    Alias(&'a AliasConfig),
}

impl Config {
    /// Reads and checks `path`. Ok carries the config and its warnings;
    /// Err carries every diagnostic (at least one error).
    pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        let fail = |line: usize, message: String| {
            vec![Diagnostic {
                file: path.to_path_buf(),
                line,
                severity: Severity::Error,
                message,
            }]
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CONFIG_SIZE + 1).read_to_end(&mut bytes))
            .map_err(|e| fail(0, format!("cannot read config: {e}")))?;
        if bytes.len() as u64 > MAX_CONFIG_SIZE {
            return Err(fail(
                0,
                format!("config file larger than {MAX_CONFIG_SIZE} bytes"),
            ));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            let good = e
                .as_bytes()
                .get(..e.utf8_error().valid_up_to())
                .unwrap_or_default();
            let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
            fail(line, "not valid UTF-8 text".into())
        })?;
        let (mut config, warnings) = Config::parse(path, &text)?;
        if config.resolver.is_none() {
            config.resolver = std::fs::read_to_string(RESOLV_CONF)
                .ok()
                .and_then(|t| crate::proto::dns::resolv_conf_nameserver(&t));
        }
        Ok((config, warnings))
    }

    /// Parses config text; `path` is only used in diagnostics. Every
    /// problem is reported (up to `MAX_DIAGNOSTICS`), sorted by line.
    pub fn parse(path: &Path, text: &str) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        build::build(path, text)
    }

    /// Is `domain` (any case) one of ours?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(&values::fold(domain))
    }

    /// May `ip` relay without AUTH (`[smtp] relay_networks`)?
    pub fn relay_allowed(&self, ip: IpAddr) -> bool {
        self.smtp.relay_networks.iter().any(|n| n.contains(ip))
    }

    /// The mailbox a POP3/SMTP AUTH user name logs in to: a full address
    /// (any case), or a bare local part when exactly one mailbox in all
    /// domains has it (ambiguous bare names log in nowhere).
    pub fn find_login(&self, user: &str) -> Option<&MailboxConfig> {
        let user = values::fold(user);
        if user.contains('@') {
            return self.mailboxes.get(&user);
        }
        let mut found = self.mailboxes.values().filter(|m| m.local == user);
        match (found.next(), found.next()) {
            (Some(m), None) => Some(m),
            _ => None,
        }
    }

    /// Checks a login (full address, or a bare local part naming one
    /// mailbox). An unknown user, or one without a password, costs the
    /// same hash work as a known one (`login_dummy`), so the answer time
    /// does not reveal which users exist.
    pub fn check_login(&self, user: &str, password: &str) -> bool {
        match self.find_login(user).and_then(|m| m.password.as_deref()) {
            Some(stored) => crate::auth::verify(stored, password),
            None => {
                crate::auth::verify(&self.login_dummy, password);
                false
            }
        }
    }

    /// May the user logged in as `login` use `reverse_path` in MAIL FROM?
    /// Postfix's `reject_sender_login_mismatch`: only the mailbox's own
    /// address, its `aliases`, their `+tag` forms (`recipient_delimiter`)
    /// and the addresses in its `send_as`; the null reverse-path `<>` (a
    /// bounce or an auto-reply) always. Everything when
    /// `sender_login_match = no`.
    pub fn may_send_as(&self, login: &str, reverse_path: &str) -> bool {
        if !self.smtp.sender_login_match || reverse_path.is_empty() {
            return true;
        }
        let Some(m) = self.find_login(login) else {
            return false;
        };
        let folded = values::fold(reverse_path);
        let Some((local, domain)) = folded.rsplit_once('@') else {
            return false;
        };
        let base = self
            .server
            .recipient_delimiter
            .and_then(|d| local.split_once(d))
            .map(|(b, _)| b)
            .filter(|b| !b.is_empty());
        let owned = [Some(local), base].into_iter().flatten().any(|l| {
            let address = format!("{l}@{domain}");
            address == m.address
                || (domain == m.domain && m.aliases.iter().any(|a| a == l))
                || m.send_as.contains(&address)
        });
        owned
    }

    /// Resolves a recipient address (any case). For a local domain: the
    /// mailbox, its aliases, `[alias]` fan-out (recursively, loops cut),
    /// the recipient delimiter (`bob+tag` -> `bob`), then catch-all, and the
    /// mailbox's `forward` addresses as remote. `None` means a local domain
    /// with no such user (550 5.1.1), or an address without `local@domain`.
    /// For a non-local domain: `remote = [addr]` with the domain lower-cased.
    ///
    /// A local part that could name a path (`/`, `\`, NUL, control
    /// characters, `.`, `..`) resolves to None even with a catch-all: it is
    /// never a real user, and refusing it keeps hostile names out of logs
    /// and folders.
    pub fn resolve(&self, address: &str) -> Option<Resolution> {
        let (local, domain) = address.rsplit_once('@')?;
        if local.is_empty() || domain.is_empty() {
            return None;
        }
        let domain = values::fold(domain);
        if !self.domains.contains_key(&domain) {
            return Some(Resolution {
                local: Vec::new(),
                remote: vec![format!("{local}@{domain}")],
            });
        }
        let unsafe_char = |c: char| c == '/' || c == '\\' || c.is_control();
        if local == "." || local == ".." || local.contains(unsafe_char) {
            return None;
        }
        let local = values::fold(local);
        let base = match self.server.recipient_delimiter {
            Some(d) => local
                .split_once(d)
                .map(|(base, _)| base)
                .filter(|b| !b.is_empty()),
            None => None,
        };
        let catch_all = self
            .domains
            .get(&domain)
            .and_then(|d| d.catch_all.as_deref());
        let exact = [Some(local.as_str()), base]
            .into_iter()
            .flatten()
            .find_map(|l| self.expand(&format!("{l}@{domain}")));
        // Before the catch-all: mail to postmaster must reach a person.
        let implicit = || {
            let postmaster = self.server.postmaster.as_deref()?;
            let name = base.unwrap_or(&local);
            IMPLICIT_POSTMASTER_NAMES
                .contains(&name)
                .then(|| self.expand(postmaster))
                .flatten()
        };
        exact
            .or_else(implicit)
            .or_else(|| catch_all.and_then(|l| self.expand(&format!("{l}@{domain}"))))
    }

    /// The domain of `RCPT TO:<postmaster>` without a domain (RFC 5321
    /// 4.1.1.3): the one `[server] postmaster` is in, else the hostname if
    /// it is local, else the first local domain.
    pub fn postmaster_domain(&self) -> Option<String> {
        let of_postmaster = self
            .server
            .postmaster
            .as_deref()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d)
            .filter(|d| self.domains.contains_key(*d));
        let hostname = Some(self.server.hostname.as_str()).filter(|h| self.is_local_domain(h));
        of_postmaster
            .or(hostname)
            .or_else(|| self.domains.keys().next().map(String::as_str))
            .map(values::fold)
    }

    /// Exact lookup of a lower-case local address: no delimiter, no catch-all.
    fn lookup(&self, address: &str) -> Option<Target<'_>> {
        if let Some(m) = self.mailboxes.get(address) {
            return Some(Target::Mailbox(m));
        }
        let (local, domain) = address.rsplit_once('@')?;
        // Linear, but a home config has a handful of mailboxes.
        let by_alias = self
            .mailboxes
            .values()
            .find(|m| m.domain == domain && m.aliases.iter().any(|a| a == local));
        by_alias
            .map(Target::Mailbox)
            .or_else(|| self.aliases.get(address).map(Target::Alias))
    }

    /// Does a lower-case local address name a mailbox, a mailbox alias or an `[alias]`?
    fn defines(&self, address: &str) -> bool {
        self.lookup(address).is_some()
    }

    /// Fans a lower-case address out to mailboxes and remote addresses:
    /// `[alias]` members and `forward` targets in turn, depth first in file
    /// order, each address visited once (which cuts loops). Iterative, so a
    /// long alias chain cannot overflow the stack. None when the address is
    /// in a local domain and defines nothing.
    fn expand(&self, address: &str) -> Option<Resolution> {
        let is_local = |a: &str| {
            a.rsplit_once('@')
                .is_some_and(|(_, d)| self.domains.contains_key(d))
        };
        if is_local(address) && !self.defines(address) {
            return None;
        }
        let mut out = Resolution::default();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut reached: HashSet<&str> = HashSet::new();
        let mut stack = vec![address];
        while let Some(addr) = stack.pop() {
            if !seen.insert(addr) {
                continue;
            }
            if !is_local(addr) {
                out.remote.push(addr.to_string());
                continue;
            }
            let next: &[String] = match self.lookup(addr) {
                Some(Target::Mailbox(m)) if reached.insert(&m.address) => {
                    out.local.push(m.address.clone());
                    &m.forward
                }
                Some(Target::Alias(a)) => &a.to,
                _ => &[],
            };
            stack.extend(next.iter().rev().map(String::as_str));
        }
        Some(out)
    }
}

/// A value as shown in a diagnostic: quoted, escaped, and cut short so a
/// 1 MB line does not become a 1 MB message.
fn shown(v: &str) -> String {
    const MAX_SHOWN_CHARS: usize = 60;
    let mut cut: String = v.chars().take(MAX_SHOWN_CHARS).collect();
    if cut.len() < v.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}
