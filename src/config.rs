//! The INI config file, parsed into typed values.
//!
//! Owns: reading `mailgate.ini`, checking every section and key, defaults
//! (written once, here, and mirrored in `etc/mailgate.ini`), and recipient
//! resolution (see `Config::resolve`). Every problem carries `FILE:LINE`.
//! Must not: open sockets, touch `data_dir`, or exit the process.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
        write!(f, "{}:{}: {}{}", self.file.display(), self.line, level, self.message)
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
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub user: Option<String>,
    /// `None` when empty (plus-addressing off).
    pub recipient_delimiter: Option<char>,
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
}

#[derive(Debug, Clone)]
pub struct Pop3Config {
    pub listen: Vec<SocketAddr>,
    pub pop3s: Vec<SocketAddr>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
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

/// How a client connection to a remote server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte.
    Tls,
    /// Upgrade with STARTTLS / STLS.
    StartTls,
    None,
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
    /// Never empty; the last interval repeats.
    pub retry: Vec<Duration>,
    pub give_up_after: Duration,
    pub nameserver: Option<SocketAddr>,
}

/// `keep = no | yes | 7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    No,
    Yes,
    For(Duration),
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

/// Where mail for one recipient address goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    /// Local mailbox addresses (keys of `Config::mailboxes`), deduplicated, in order.
    pub local: Vec<String>,
    /// Non-local addresses (via `[alias]` members or `forward`), deduplicated.
    pub remote: Vec<String>,
}

impl Config {
    /// Reads and checks `path`. Ok carries the config and its warnings;
    /// Err carries every diagnostic (at least one error).
    pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Diagnostic {
                file: path.to_path_buf(),
                line: 0,
                severity: Severity::Error,
                message: format!("cannot read config: {e}"),
            }]
        })?;
        Config::parse(path, &text)
    }

    /// Parses config text; `path` is only used in diagnostics.
    pub fn parse(path: &Path, text: &str) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
        let _ = (path, text);
        todo!("config parser")
    }

    /// Is `domain` (any case) one of ours?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(&domain.to_ascii_lowercase())
    }

    /// Resolves a recipient address (any case). For a local domain: the
    /// mailbox, its aliases, `[alias]` fan-out (recursively, loops cut),
    /// the recipient delimiter (`bob+tag` -> `bob`), then catch-all, and the
    /// mailbox's `forward` addresses as remote. `None` means a local domain
    /// with no such user (550 5.1.1). For a non-local domain: `remote = [addr]`.
    pub fn resolve(&self, address: &str) -> Option<Resolution> {
        let _ = address;
        todo!("recipient resolution")
    }
}
