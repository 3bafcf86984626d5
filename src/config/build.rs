//! Scanned sections -> typed `Config`, with every diagnostic.
//!
//! Owns: which sections and keys exist, their defaults (the `DEFAULT_*`
//! constants of `config.rs`), required keys, and the checks that span
//! sections (domains declared, addresses defined once, aliases and
//! catch-alls that lead somewhere, listeners not shared). Collects every
//! problem instead of stopping at the first.
//! Must not: read files or print; `Config::load` and the CLI do that.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::scan::{scan, RawEntry, RawSection};
use super::values::{self, fold, Parsed, PasswordScheme};
use super::*;

/// Past this many, `mailgate check` output stops helping; a binary file fed
/// as config would otherwise print one line per junk line.
pub const MAX_DIAGNOSTICS: usize = 100;

/// Longest `[smartpop NAME]`; the name becomes a file under `data_dir/smartpop/`.
const MAX_SMARTPOP_NAME_LEN: usize = 64;

pub fn build(path: &Path, text: &str) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (sections, syntax) = scan(text);
    let mut b = Builder::default();
    for e in syntax {
        b.err(e.line, e.message);
    }
    for sec in &sections {
        b.section(sec);
    }
    let config = b.finish(path);
    let mut diags = b.diags;
    diags.sort_by_key(|d| d.0);
    let errors = diags.iter().filter(|d| d.1 == Severity::Error).count();
    let shown_errors = diags
        .iter()
        .take(MAX_DIAGNOSTICS)
        .filter(|d| d.1 == Severity::Error)
        .count();
    let hidden = diags.len().saturating_sub(MAX_DIAGNOSTICS);
    diags.truncate(MAX_DIAGNOSTICS);
    if hidden > 0 {
        let severity = if errors > shown_errors {
            Severity::Error
        } else {
            Severity::Warning
        };
        diags.push((0, severity, format!("{hidden} more problems not shown")));
    }
    let diags: Vec<Diagnostic> = diags
        .into_iter()
        .map(|(line, severity, message)| Diagnostic {
            file: path.to_path_buf(),
            line,
            severity,
            message,
        })
        .collect();
    if errors == 0 {
        Ok((config, diags))
    } else {
        Err(diags)
    }
}

/// A reference to an address made somewhere in the file, checked once all
/// sections are known.
struct Ref {
    line: usize,
    address: String,
    key: &'static str,
}

#[derive(Default)]
struct Builder {
    diags: Vec<(usize, Severity, String)>,
    /// Singleton sections seen: kind -> header line.
    singletons: HashMap<String, usize>,
    server: Option<ServerConfig>,
    smtp: SmtpConfig,
    pop3: Pop3Config,
    imap: ImapConfig,
    tls: TlsConfig,
    outbox: OutboxConfig,
    outbox_line: Option<usize>,
    /// Line of an explicit `[outbox] mode`.
    outbox_mode_line: Option<usize>,
    /// `[outbox] mode` was given but invalid (already an error).
    outbox_mode_invalid: bool,
    /// Line of `[smtp] relay_networks`.
    relay_networks_line: Option<usize>,
    /// Line of `[server] postmaster`.
    postmaster_line: Option<usize>,
    /// Line of `[server]`.
    server_line: usize,
    /// Line of each listener key set in the file (absent: default).
    listener_lines: HashMap<&'static str, usize>,
    domains: BTreeMap<String, DomainConfig>,
    catch_all_lines: HashMap<String, usize>,
    mailboxes: BTreeMap<String, MailboxConfig>,
    aliases: BTreeMap<String, AliasConfig>,
    smartpop: Vec<SmartPopConfig>,
    smartpop_names: HashMap<String, usize>,
    /// Every address a section defines: (line, address, as what).
    defs: Vec<(usize, String, String)>,
    refs: Vec<Ref>,
}

impl Builder {
    fn err(&mut self, line: usize, message: String) {
        self.diags.push((line, Severity::Error, message));
    }

    fn warn(&mut self, line: usize, message: String) {
        self.diags.push((line, Severity::Warning, message));
    }

    /// Parses `e`'s value; on failure reports `invalid KEY "VALUE": why`.
    fn value<T>(&mut self, e: &RawEntry, parse: impl FnOnce(&str) -> Parsed<T>) -> Option<T> {
        match parse(&e.value) {
            Ok(v) => Some(v),
            Err(why) => {
                self.err(
                    e.line,
                    format!("invalid {} {}: {why}", e.key, shown(&e.value)),
                );
                None
            }
        }
    }

    fn unknown_key(&mut self, sec: &RawSection, e: &RawEntry) {
        self.err(
            e.line,
            format!("unknown key {:?} in {}", e.key, header(sec)),
        );
    }

    fn missing(&mut self, sec: &RawSection, key: &str) {
        self.err(
            sec.line,
            format!("missing required key {key:?} in {}", header(sec)),
        );
    }

    /// The section's entries with repeated keys reported and dropped.
    fn entries<'s>(&mut self, sec: &'s RawSection) -> Vec<&'s RawEntry> {
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for e in &sec.entries {
            if let Some(line) = first.get(e.key.as_str()) {
                self.err(
                    e.line,
                    format!("duplicate key {:?} (first set on line {line})", e.key),
                );
            } else {
                first.insert(&e.key, e.line);
                out.push(e);
            }
        }
        out
    }

    fn section(&mut self, sec: &RawSection) {
        match sec.kind.as_str() {
            "server" | "smtp" | "pop3" | "imap" | "tls" | "outbox" => {
                if !sec.name.is_empty() {
                    self.err(sec.line, format!("section [{}] takes no name", sec.kind));
                }
                if let Some(first) = self.singletons.get(&sec.kind) {
                    let msg = format!("duplicate section [{}] (first on line {first})", sec.kind);
                    self.err(sec.line, msg);
                    return;
                }
                self.singletons.insert(sec.kind.clone(), sec.line);
                match sec.kind.as_str() {
                    "server" => self.server(sec),
                    "smtp" => self.smtp(sec),
                    "pop3" => self.pop3(sec),
                    "imap" => self.imap(sec),
                    "tls" => self.tls(sec),
                    _ => self.outbox(sec),
                }
            }
            "domain" | "mailbox" | "alias" | "smartpop" if sec.name.is_empty() => {
                let example = match sec.kind.as_str() {
                    "domain" => "example.test",
                    "smartpop" => "isp-bob",
                    _ => "bob@example.test",
                };
                self.err(
                    sec.line,
                    format!(
                        "section [{0}] needs a name, as in [{0} {example}]",
                        sec.kind
                    ),
                );
            }
            "domain" => self.domain(sec),
            "mailbox" => self.mailbox(sec),
            "alias" => self.alias(sec),
            "smartpop" => self.smartpop(sec),
            _ => self.err(
                sec.line,
                format!(
                    "unknown section [{}] (known: server, smtp, pop3, imap, tls, domain NAME, \
                     mailbox ADDRESS, alias ADDRESS, outbox, smartpop NAME)",
                    sec.kind
                ),
            ),
        }
    }

    fn server(&mut self, sec: &RawSection) {
        self.server_line = sec.line;
        let mut hostname = None;
        let mut maildrop_line = 0;
        let mut s = ServerConfig {
            hostname: String::new(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            maildrop: PathBuf::from(DEFAULT_MAILDROP),
            user: None,
            recipient_delimiter: DEFAULT_RECIPIENT_DELIMITER,
            postmaster: None,
        };
        for e in self.entries(sec) {
            match e.key.as_str() {
                "hostname" => hostname = self.value(e, |v| values::domain(v).map(|()| fold(v))),
                "data_dir" => {
                    if let Some(p) = self.value(e, required_path) {
                        s.data_dir = p;
                    }
                }
                "maildrop" => {
                    if let Some(p) = self.value(e, required_path) {
                        s.maildrop = p;
                        maildrop_line = e.line;
                    }
                }
                "user" => s.user = self.value(e, user_name).flatten(),
                "recipient_delimiter" => {
                    if let Some(d) = self.value(e, delimiter) {
                        s.recipient_delimiter = d;
                    }
                }
                "postmaster" if e.value.is_empty() => s.postmaster = None,
                "postmaster" => {
                    s.postmaster = self.value(e, |v| values::address(v, true));
                    if let Some(a) = &s.postmaster {
                        self.refer(e, std::slice::from_ref(a), "postmaster");
                    }
                    self.postmaster_line = Some(e.line);
                }
                _ => self.unknown_key(sec, e),
            }
        }
        // Other users must reach it; data_dir is 0700 (and theirs to
        // write would be the queue's).
        if s.maildrop.starts_with(&s.data_dir) {
            self.err(
                maildrop_line,
                format!(
                    "maildrop {} is inside data_dir {}: other users could not reach it; put it beside",
                    s.maildrop.display(),
                    s.data_dir.display()
                ),
            );
        }
        match hostname {
            Some(h) => s.hostname = h,
            None if !sec.entries.iter().any(|e| e.key == "hostname") => {
                self.missing(sec, "hostname")
            }
            None => {}
        }
        self.server = Some(s);
    }

    fn smtp(&mut self, sec: &RawSection) {
        let mut c = std::mem::take(&mut self.smtp);
        for e in self.entries(sec) {
            match e.key.as_str() {
                "listen" | "submission" | "smtps" => {
                    if let Some(v) = self.value(e, values::socket_list) {
                        let (key, slot) = match e.key.as_str() {
                            "listen" => ("smtp listen", &mut c.listen),
                            "submission" => ("submission", &mut c.submission),
                            _ => ("smtps", &mut c.smtps),
                        };
                        *slot = v;
                        self.listener_lines.insert(key, e.line);
                    }
                }
                "max_message_size" => set(&mut c.max_message_size, self.value(e, values::size)),
                "max_recipients" => set(&mut c.max_recipients, self.value(e, values::count)),
                "max_connections" => set(&mut c.max_connections, self.value(e, values::count)),
                "max_connections_per_ip" => {
                    set(&mut c.max_connections_per_ip, self.value(e, values::count))
                }
                "relay_networks" => {
                    self.relay_networks_line = Some(e.line);
                    if let Some(nets) = self.value(e, values::cidr_list) {
                        if let Some(open) = nets.iter().find(|n| n.prefix == 0) {
                            self.warn(e.line, format!("relay_networks includes {open}: anyone there may relay (open relay)"));
                        }
                        c.relay_networks = nets;
                    }
                }
                "allow_plaintext_auth" => {
                    set(&mut c.allow_plaintext_auth, self.value(e, values::boolean))
                }
                "timeout" => set(&mut c.timeout, self.value(e, values::duration)),
                "login_timeout" => set(&mut c.login_timeout, self.value(e, values::duration)),
                "mail_auth" => set(&mut c.mail_auth, self.value(e, values::boolean)),
                "dnsbl" => set(&mut c.dnsbl, self.value(e, values::dnsbl_list)),
                "greylist" => set(&mut c.greylist, self.value(e, values::boolean)),
                "greylist_delay" => set(&mut c.greylist_delay, self.value(e, values::duration)),
                "dmarc" => set(&mut c.dmarc, self.value(e, values::dmarc_action)),
                "sender_login_match" => {
                    set(&mut c.sender_login_match, self.value(e, values::boolean))
                }
                _ => self.unknown_key(sec, e),
            }
        }
        self.smtp = c;
    }

    fn pop3(&mut self, sec: &RawSection) {
        let mut c = std::mem::take(&mut self.pop3);
        for e in self.entries(sec) {
            match e.key.as_str() {
                "listen" | "pop3s" => {
                    if let Some(v) = self.value(e, values::socket_list) {
                        let (key, slot) = match e.key.as_str() {
                            "listen" => ("pop3 listen", &mut c.listen),
                            _ => ("pop3s", &mut c.pop3s),
                        };
                        *slot = v;
                        self.listener_lines.insert(key, e.line);
                    }
                }
                "timeout" => set(&mut c.timeout, self.value(e, values::duration)),
                _ => self.unknown_key(sec, e),
            }
        }
        self.pop3 = c;
    }

    fn imap(&mut self, sec: &RawSection) {
        let mut c = std::mem::take(&mut self.imap);
        for e in self.entries(sec) {
            match e.key.as_str() {
                "listen" | "imaps" => {
                    if let Some(v) = self.value(e, values::socket_list) {
                        let (key, slot) = match e.key.as_str() {
                            "listen" => ("imap listen", &mut c.listen),
                            _ => ("imaps", &mut c.imaps),
                        };
                        *slot = v;
                        self.listener_lines.insert(key, e.line);
                    }
                }
                "timeout" => set(&mut c.timeout, self.value(e, values::duration)),
                "sent" | "drafts" | "trash" | "junk" | "archive" => {
                    let i = ["sent", "drafts", "trash", "junk", "archive"]
                        .iter()
                        .position(|k| *k == e.key)
                        .unwrap_or(0);
                    let v = e.value.trim();
                    let bad = v.is_empty()
                        || v.eq_ignore_ascii_case("INBOX")
                        || v.starts_with('.')
                        || v.contains("..")
                        || v.contains('/')
                        || v.chars().any(|ch| ch.is_control());
                    if bad {
                        self.err(
                            e.line,
                            format!("invalid {} {v:?}: not a usable folder name", e.key),
                        );
                    } else if let Some(slot) = c.special.get_mut(i) {
                        *slot = v.to_string();
                    }
                }
                _ => self.unknown_key(sec, e),
            }
        }
        self.imap = c;
    }

    fn tls(&mut self, sec: &RawSection) {
        for e in self.entries(sec) {
            match e.key.as_str() {
                "cert" => self.tls.cert = optional_path(&e.value),
                "key" => self.tls.key = optional_path(&e.value),
                _ => self.unknown_key(sec, e),
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            self.err(
                sec.line,
                "[tls] needs both cert and key (or neither, for a self-signed pair)".into(),
            );
        }
    }

    fn outbox(&mut self, sec: &RawSection) {
        self.outbox_line = Some(sec.line);
        let mut host = None;
        let mut fingerprint_line = None;
        let mut o = std::mem::take(&mut self.outbox);
        let mut oauth = OAuthDraft::default();
        for e in self.entries(sec) {
            match e.key.as_str() {
                "mode" => {
                    // An invalid mode is an error of its own; no warning
                    // about the smarthost it then does not configure.
                    let mode = self.value(e, values::outbox_mode);
                    if mode.is_some() {
                        self.outbox_mode_line = Some(e.line);
                    } else {
                        self.outbox_mode_invalid = true;
                    }
                    set(&mut o.mode, mode);
                }
                "host" => host = Some(e),
                "tls" => set(&mut o.tls, self.value(e, values::tls_mode)),
                "username" => o.username = optional(&e.value),
                "password" => o.password = optional(&e.value),
                k if OAUTH_KEYS.contains(&k) => self.oauth_key(e, &mut oauth),
                "ca_file" => o.ca_file = optional_path(&e.value),
                "fingerprint" if e.value.is_empty() => o.fingerprint = None,
                "fingerprint" => {
                    o.fingerprint = self.value(e, values::sha256_fingerprint);
                    fingerprint_line = Some(e.line);
                }
                "retry" => set(&mut o.retry, self.value(e, values::duration_list)),
                "give_up_after" => set(&mut o.give_up_after, self.value(e, values::duration)),
                "nameserver" => {
                    o.nameserver = match e.value.as_str() {
                        "" => None,
                        v => self.value(e, |_| values::nameserver(v, DEFAULT_NAMESERVER_PORT)),
                    }
                }
                _ => self.unknown_key(sec, e),
            }
        }
        // The default port follows `tls`, whichever line comes first.
        let port = match o.tls {
            TlsMode::Tls => DEFAULT_SMARTHOST_TLS_PORT,
            _ => DEFAULT_SMARTHOST_PORT,
        };
        if let Some(e) = host {
            if let Some(hosts) = self.value(e, |v| values::host_list(v, port)) {
                o.hosts = hosts;
            }
            if o.mode == OutboxMode::Direct && !o.hosts.is_empty() {
                self.warn(e.line, "[outbox] host is ignored in direct mode".into());
                o.hosts.clear();
            }
        }
        if let Some(line) = fingerprint_line.filter(|_| o.fingerprint.is_some()) {
            if o.tls == TlsMode::None {
                self.warn(
                    line,
                    "[outbox] fingerprint is not used with tls = none".into(),
                );
            } else if o.mode == OutboxMode::Direct {
                self.warn(
                    line,
                    "[outbox] fingerprint is not used in direct mode".into(),
                );
            } else if o.ca_file.is_some() {
                self.warn(
                    line,
                    "[outbox] fingerprint pins the certificate; ca_file is not used".into(),
                );
            }
        }
        o.oauth = self.oauth_finish(sec, "[outbox]", oauth);
        if o.oauth.is_some() {
            if o.username.is_none() {
                self.err(sec.line, "[outbox] auth = oauth2 needs username".into());
            }
            if o.password.is_some() {
                self.warn(
                    sec.line,
                    "[outbox] password is not used with auth = oauth2".into(),
                );
            }
        } else if o.username.is_some() != o.password.is_some() {
            self.err(
                sec.line,
                "[outbox] username and password go together".into(),
            );
        } else if o.password.is_some() && o.tls == TlsMode::None {
            self.warn(
                sec.line,
                "[outbox] sends its password without TLS (tls = none)".into(),
            );
        }
        self.outbox = o;
    }

    fn domain(&mut self, sec: &RawSection) {
        let name = fold(&sec.name);
        if let Err(why) = values::domain(&name) {
            self.err(
                sec.line,
                format!("invalid domain {}: {why}", shown(&sec.name)),
            );
            return;
        }
        if let Some(first) = self.domains.get(&name) {
            let msg = format!(
                "duplicate section [domain {name}] (first on line {})",
                first.line
            );
            self.err(sec.line, msg);
            return;
        }
        let mut d = DomainConfig {
            name: name.clone(),
            catch_all: None,
            dkim_selector: None,
            line: sec.line,
        };
        for e in self.entries(sec) {
            match e.key.as_str() {
                "catch_all" if e.value.is_empty() => d.catch_all = None,
                "catch_all" => {
                    d.catch_all = self.value(e, |v| local_of(v, &name));
                    self.catch_all_lines.insert(name.clone(), e.line);
                }
                "dkim_selector" if e.value.is_empty() => d.dkim_selector = None,
                "dkim_selector" => d.dkim_selector = self.value(e, values::dkim_selector),
                _ => self.unknown_key(sec, e),
            }
        }
        self.domains.insert(name, d);
    }

    fn mailbox(&mut self, sec: &RawSection) {
        let address = match values::address(&sec.name, true) {
            Ok(a) => a,
            Err(why) => return self.err(sec.line, format!("invalid mailbox address: {why}")),
        };
        let Some((local, domain)) = address.rsplit_once('@') else {
            return;
        };
        let mut m = MailboxConfig {
            address: address.clone(),
            local: local.to_string(),
            domain: domain.to_string(),
            password: None,
            aliases: Vec::new(),
            forward: Vec::new(),
            quota: None,
            send_as: Vec::new(),
            line: sec.line,
        };
        self.defs
            .push((sec.line, address.clone(), "mailbox".into()));
        for e in self.entries(sec) {
            match e.key.as_str() {
                "password" => m.password = self.mailbox_password(e, &address),
                "aliases" => {
                    let aliases = self.value(e, |v| values::list(v, |a| local_of(a, domain)));
                    for a in aliases.iter().flatten() {
                        let what = format!("alias of mailbox {address}");
                        self.defs.push((e.line, format!("{a}@{domain}"), what));
                    }
                    m.aliases = aliases.unwrap_or_default();
                }
                "forward" => {
                    m.forward = self
                        .value(e, |v| values::list(v, |a| values::address(a, false)))
                        .unwrap_or_default();
                    self.refer(e, &m.forward, "forward");
                }
                "send_as" => {
                    m.send_as = self
                        .value(e, |v| values::list(v, |a| values::address(a, false)))
                        .unwrap_or_default();
                }
                "quota" if e.value.is_empty() => m.quota = None,
                "quota" => m.quota = self.value(e, values::size),
                _ => self.unknown_key(sec, e),
            }
        }
        self.mailboxes.entry(address).or_insert(m);
    }

    fn mailbox_password(&mut self, e: &RawEntry, address: &str) -> Option<String> {
        if e.value.is_empty() {
            return None;
        }
        match values::password(&e.value) {
            Ok(PasswordScheme::Sha512Crypt) => {}
            Ok(PasswordScheme::Plain) => self.warn(
                e.line,
                format!("mailbox {address} has a {{PLAIN}} password; paste a hash from `mailgate passwd` instead"),
            ),
            // Never echo the value: it may be a real password.
            Err(why) => self.err(e.line, format!("invalid password for {address}: {why}")),
        }
        Some(e.value.clone())
    }

    fn alias(&mut self, sec: &RawSection) {
        let address = match values::address(&sec.name, true) {
            Ok(a) => a,
            Err(why) => return self.err(sec.line, format!("invalid alias address: {why}")),
        };
        self.defs
            .push((sec.line, address.clone(), "[alias]".into()));
        let mut to = None;
        for e in self.entries(sec) {
            match e.key.as_str() {
                "to" => {
                    let list = self.value(e, |v| {
                        match values::list(v, |a| values::address(a, false))? {
                            l if l.is_empty() => Err("expected at least one address".into()),
                            l => Ok(l),
                        }
                    });
                    if let Some(l) = &list {
                        self.refer(e, l, "alias member");
                    }
                    to = Some(list.unwrap_or_default());
                }
                _ => self.unknown_key(sec, e),
            }
        }
        let Some(to) = to else {
            return self.missing(sec, "to");
        };
        let alias = AliasConfig {
            address: address.clone(),
            to,
            line: sec.line,
        };
        self.aliases.entry(address).or_insert(alias);
    }

    fn refer(&mut self, e: &RawEntry, addresses: &[String], key: &'static str) {
        for a in addresses {
            self.refs.push(Ref {
                line: e.line,
                address: a.clone(),
                key,
            });
        }
    }

    fn smartpop(&mut self, sec: &RawSection) {
        let name = sec.name.clone();
        if let Err(why) = smartpop_name(&name) {
            return self.err(
                sec.line,
                format!("invalid smartpop name {}: {why}", shown(&name)),
            );
        }
        if let Some(first) = self.smartpop_names.get(&name.to_ascii_lowercase()) {
            let msg = format!("duplicate section [smartpop {name}] (first on line {first})");
            return self.err(sec.line, msg);
        }
        self.smartpop_names
            .insert(name.to_ascii_lowercase(), sec.line);
        let (mut host, mut username, mut password, mut deliver_to) = (None, None, None, None);
        let mut oauth = OAuthDraft::default();
        let mut seen_host = false;
        let mut p = SmartPopConfig {
            name,
            host: HostPort {
                host: String::new(),
                port: 0,
            },
            tls: DEFAULT_SMARTPOP_TLS,
            username: String::new(),
            password: String::new(),
            oauth: None,
            ca_file: None,
            deliver_to: String::new(),
            multidrop: DEFAULT_MULTIDROP,
            interval: DEFAULT_SMARTPOP_INTERVAL,
            keep: DEFAULT_KEEP,
            line: sec.line,
            imap: false,
            folders: vec!["INBOX".to_string()],
            move_to: None,
            idle: DEFAULT_SMARTPOP_IDLE,
        };
        for e in self.entries(sec) {
            match e.key.as_str() {
                "host" => {
                    seen_host = true;
                    host = self.value(e, nonempty(values::host_port));
                }
                "tls" => set(&mut p.tls, self.value(e, values::tls_mode)),
                "username" => username = self.value(e, nonempty(|v| Ok(v.to_string()))),
                "password" => password = self.value(e, nonempty(|v| Ok(v.to_string()))),
                k if OAUTH_KEYS.contains(&k) => self.oauth_key(e, &mut oauth),
                "ca_file" => p.ca_file = optional_path(&e.value),
                "deliver_to" => {
                    deliver_to = self.value(e, nonempty(|v| values::address(v, true)));
                    if let Some(a) = &deliver_to {
                        self.refer(e, std::slice::from_ref(a), "deliver_to");
                    }
                }
                "multidrop" => set(&mut p.multidrop, self.value(e, values::boolean)),
                "interval" => set(&mut p.interval, self.value(e, values::duration)),
                "keep" => match e.value.trim().strip_prefix("move:") {
                    Some(f) if !f.trim().is_empty() => p.move_to = Some(f.trim().to_string()),
                    Some(_) => self.err(e.line, "keep = move: needs a folder name".to_string()),
                    None => set(&mut p.keep, self.value(e, values::keep)),
                },
                "protocol" => match e.value.trim().to_ascii_lowercase().as_str() {
                    "imap" => p.imap = true,
                    "pop3" => p.imap = false,
                    _ => self.err(e.line, "protocol: expected pop3 or imap".to_string()),
                },
                "folders" => {
                    let list: Vec<String> = e
                        .value
                        .split(',')
                        .map(|f| f.trim().to_string())
                        .filter(|f| !f.is_empty())
                        .collect();
                    if list.is_empty() {
                        self.err(e.line, "folders: expected a list such as INBOX".to_string());
                    } else {
                        p.folders = list;
                    }
                }
                "idle" => set(&mut p.idle, self.value(e, values::boolean)),
                _ => self.unknown_key(sec, e),
            }
        }
        let what = format!("[smartpop {}]", p.name);
        p.oauth = self.oauth_finish(sec, &what, oauth);
        if p.oauth.is_some() {
            password = Some(String::new());
            // `mailgate oauth login outbox` and data_dir/oauth/outbox are
            // the smarthost's.
            if p.name == "outbox" {
                self.err(
                    sec.line,
                    format!("{what} auth = oauth2: the name outbox is the smarthost's; rename the account"),
                );
            }
        }
        for (key, present) in [
            ("host", seen_host),
            ("username", sec.entries.iter().any(|e| e.key == "username")),
            (
                "password",
                p.oauth.is_some() || sec.entries.iter().any(|e| e.key == "password"),
            ),
            (
                "deliver_to",
                sec.entries.iter().any(|e| e.key == "deliver_to"),
            ),
        ] {
            if !present {
                self.missing(sec, key);
            }
        }
        if p.tls == TlsMode::None {
            self.warn(
                sec.line,
                format!(
                    "[smartpop {}] sends its password without TLS (tls = none)",
                    p.name
                ),
            );
        }
        let (Some((h, port)), Some(u), Some(pw), Some(d)) = (host, username, password, deliver_to)
        else {
            return;
        };
        if p.move_to.is_some() && !p.imap {
            self.err(
                sec.line,
                format!("[smartpop {}] keep = move: needs protocol = imap", p.name),
            );
        }
        let default_port = match (p.tls, p.imap) {
            (TlsMode::Tls, false) => DEFAULT_POP3S_PORT,
            (_, false) => DEFAULT_POP3_PORT,
            (TlsMode::Tls, true) => DEFAULT_IMAPS_PORT,
            (_, true) => DEFAULT_IMAP_PORT,
        };
        p.host = HostPort {
            host: h,
            port: port.unwrap_or(default_port),
        };
        (p.username, p.password, p.deliver_to) = (u, pw, d);
        self.smartpop.push(p);
    }

    /// Cross-section checks, then the config. A config built here is only
    /// handed out when no error was reported (a missing `[server]` is one).
    fn finish(&mut self, path: &Path) -> Config {
        let server = self.server.take();
        if server.is_none() {
            self.err(0, "missing [server] section (hostname is required)".into());
        }
        self.check_listeners();
        let mut config = Config {
            path: path.to_path_buf(),
            server: server.unwrap_or(ServerConfig {
                hostname: String::new(),
                data_dir: PathBuf::from(DEFAULT_DATA_DIR),
                maildrop: PathBuf::from(DEFAULT_MAILDROP),
                user: None,
                recipient_delimiter: DEFAULT_RECIPIENT_DELIMITER,
                postmaster: None,
            }),
            smtp: self.smtp.clone(),
            pop3: self.pop3.clone(),
            imap: self.imap.clone(),
            tls: self.tls.clone(),
            domains: std::mem::take(&mut self.domains),
            mailboxes: std::mem::take(&mut self.mailboxes),
            aliases: std::mem::take(&mut self.aliases),
            resolver: self.outbox.nameserver,
            outbox: self.outbox.clone(),
            smartpop: std::mem::take(&mut self.smartpop),
            login_dummy: String::new(),
        };
        config.login_dummy = crate::auth::dummy_like(
            config
                .mailboxes
                .values()
                .filter_map(|m| m.password.as_deref()),
        );
        self.check_addresses(&config);
        self.check_outbox(&config);
        self.check_postmaster(&config);
        config
    }

    /// RFC 5321 4.5.1: every domain must take mail for postmaster. Warn
    /// when some local domain would refuse it: no `[server] postmaster`,
    /// no postmaster of its own, no catch-all.
    fn check_postmaster(&mut self, c: &Config) {
        if c.server.postmaster.is_some() {
            if let Some(p) = &c.server.postmaster {
                let remote = p
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| !c.domains.contains_key(d));
                if remote {
                    let line = self.postmaster_line.unwrap_or(self.server_line);
                    self.err(line, format!("postmaster {p} is not in a local domain"));
                }
            }
            return;
        }
        let refused: Vec<&str> = c
            .domains
            .values()
            .filter(|d| d.catch_all.is_none() && !c.defines(&format!("postmaster@{}", d.name)))
            .map(|d| d.name.as_str())
            .collect();
        if !refused.is_empty() {
            self.warn(
                self.server_line,
                format!(
                    "[server] postmaster is not set: mail to postmaster@ (RFC 5321 4.5.1), \
                     root@ and abuse@ {} is refused; set postmaster = a mailbox of yours",
                    refused.join(", ")
                ),
            );
        }
    }

    /// One socket, one listener: a second bind would fail at start anyway;
    /// here it fails with a line number.
    fn check_listeners(&mut self) {
        let lists: [(&'static str, &[SocketAddr]); 7] = [
            ("smtp listen", &self.smtp.listen),
            ("submission", &self.smtp.submission),
            ("smtps", &self.smtp.smtps),
            ("pop3 listen", &self.pop3.listen),
            ("pop3s", &self.pop3.pop3s),
            ("imap listen", &self.imap.listen),
            ("imaps", &self.imap.imaps),
        ];
        let mut used: HashMap<SocketAddr, &'static str> = HashMap::new();
        let mut clashes = Vec::new();
        let mut repeated = Vec::new();
        for (key, addrs) in lists {
            for (i, a) in addrs.iter().enumerate() {
                if addrs.get(..i).is_some_and(|before| before.contains(a)) {
                    repeated.push((*a, key));
                    continue;
                }
                match used.get(a) {
                    Some(other) if *other != key => clashes.push((*a, *other, key)),
                    _ => {
                        used.insert(*a, key);
                    }
                }
            }
        }
        for (addr, key) in repeated {
            let line = self.listener_lines.get(key).copied().unwrap_or(0);
            self.warn(
                line,
                format!("{addr} is given twice in {key}; listening once"),
            );
        }
        for (addr, first, second) in clashes {
            let l1 = self.listener_lines.get(first).copied().unwrap_or(0);
            let l2 = self.listener_lines.get(second).copied().unwrap_or(0);
            let line = l1.max(l2);
            self.err(line, format!("{addr} is used by both {first} and {second}"));
        }
    }

    fn check_addresses(&mut self, c: &Config) {
        for m in c.mailboxes.values() {
            if !c.domains.contains_key(&m.domain) {
                let d = &m.domain;
                self.err(
                    m.line,
                    format!(
                        "mailbox {}: no [domain {d}] section declares {d}",
                        m.address
                    ),
                );
            }
        }
        for a in c.aliases.values() {
            let d = a.address.rsplit_once('@').map_or("", |(_, d)| d);
            if !c.domains.contains_key(d) {
                self.err(
                    a.line,
                    format!("alias {}: no [domain {d}] section declares {d}", a.address),
                );
            }
        }
        let mut defs = std::mem::take(&mut self.defs);
        defs.sort_by_key(|d| d.0);
        let mut first: HashMap<&str, (usize, &str)> = HashMap::new();
        for (line, addr, what) in &defs {
            match first.get(addr.as_str()) {
                Some((l, w)) => {
                    let msg = format!("address {addr} is already defined on line {l} ({w})");
                    self.err(*line, msg);
                }
                None => {
                    first.insert(addr, (*line, what));
                }
            }
        }
        for r in std::mem::take(&mut self.refs) {
            let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            let local = c.domains.contains_key(domain);
            if local && !c.defines(&r.address) {
                self.err(
                    r.line,
                    format!("{} {}: no such mailbox or alias", r.key, r.address),
                );
            } else if !local && r.key == "deliver_to" {
                self.err(
                    r.line,
                    format!("deliver_to {} is not in a local domain", r.address),
                );
            }
        }
        for d in c.domains.values() {
            if let Some(ca) = &d.catch_all {
                if !c.defines(&format!("{ca}@{}", d.name)) {
                    let line = self.catch_all_lines.get(&d.name).copied().unwrap_or(d.line);
                    self.err(
                        line,
                        format!("catch_all {ca:?} names no mailbox or alias of {}", d.name),
                    );
                }
            }
        }
        self.check_aliases_lead_somewhere(c);
    }

    /// An alias leads somewhere when a member is remote or a mailbox, or is
    /// an alias that leads somewhere. Worked backwards from the direct ones,
    /// so the check is linear even for a long alias chain; what is left
    /// only reaches itself (a loop) or nothing.
    fn check_aliases_lead_somewhere(&mut self, c: &Config) {
        let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut good: HashSet<&str> = HashSet::new();
        let mut todo: Vec<&str> = Vec::new();
        for a in c.aliases.values() {
            for m in &a.to {
                let local = m
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| c.domains.contains_key(d));
                if !local || matches!(c.lookup(m), Some(Target::Mailbox(_))) {
                    if good.insert(&a.address) {
                        todo.push(&a.address);
                    }
                } else {
                    parents.entry(m).or_default().push(&a.address);
                }
            }
        }
        while let Some(x) = todo.pop() {
            for &p in parents.get(x).into_iter().flatten() {
                if good.insert(p) {
                    todo.push(p);
                }
            }
        }
        for a in c
            .aliases
            .values()
            .filter(|a| !good.contains(a.address.as_str()))
        {
            self.err(
                a.line,
                format!(
                    "alias {} leads to no mailbox or address (a loop?)",
                    a.address
                ),
            );
        }
    }

    /// Warns when mail for other domains could be queued with nowhere to go:
    /// `mode = smarthost` written out, a forward / alias member that is
    /// sure to relay, or a way for a client to relay (`relay_networks`, or
    /// a login on a submission listener). A pure local install (no such
    /// key, `relay_networks =` empty, no submission login) needs no outbox.
    fn check_outbox(&mut self, c: &Config) {
        if self.outbox_mode_invalid
            || c.outbox.mode != OutboxMode::Smarthost
            || !c.outbox.hosts.is_empty()
        {
            return;
        }
        let submission = !c.smtp.submission.is_empty() || !c.smtp.smtps.is_empty();
        let login = c.mailboxes.values().any(|m| m.password.is_some());
        // relay_networks as written: the loopback default alone (cron on
        // the box itself) does not make a mail server of a local install.
        let relay_networks =
            self.relay_networks_line.is_some() && !c.smtp.relay_networks.is_empty();
        let clients_relay = relay_networks || (submission && login);
        let relays_for_sure = c
            .mailboxes
            .values()
            .flat_map(|m| &m.forward)
            .chain(c.aliases.values().flat_map(|a| &a.to))
            .any(|a| {
                let d = a.rsplit_once('@').map_or("", |(_, d)| d);
                !c.domains.contains_key(d)
            });
        if self.outbox_mode_line.is_some() || relays_for_sure || clients_relay {
            self.warn(
                self.outbox_mode_line.or(self.outbox_line).unwrap_or(0),
                "[outbox] mode = smarthost but no host: mail for other domains (from relay_networks, \
                 logged-in users, forwards) is accepted and stays queued; set host, or mode = direct"
                    .into(),
            );
        }
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn header(sec: &RawSection) -> String {
    match sec.name.as_str() {
        "" => format!("[{}]", sec.kind),
        n => format!("[{} {n}]", sec.kind),
    }
}

/// The keys of `auth = oauth2`, on `[smartpop NAME]` and `[outbox]`.
const OAUTH_KEYS: &[&str] = &[
    "auth",
    "provider",
    "client_id",
    "client_secret",
    "authorize_url",
    "token_url",
    "device_url",
    "scope",
];

#[derive(Default)]
struct OAuthDraft {
    oauth2: bool,
    provider: Option<OAuthProvider>,
    values: HashMap<&'static str, String>,
}

impl Builder {
    fn oauth_key(&mut self, e: &RawEntry, d: &mut OAuthDraft) {
        match e.key.as_str() {
            "auth" => match e.value.as_str() {
                "password" => d.oauth2 = false,
                "oauth2" => d.oauth2 = true,
                v => self.err(
                    e.line,
                    format!("auth must be password or oauth2, not {}", shown(v)),
                ),
            },
            "provider" => match e.value.as_str() {
                "" => d.provider = None,
                "microsoft" => d.provider = Some(OAuthProvider::Microsoft),
                "google" => d.provider = Some(OAuthProvider::Google),
                "custom" => d.provider = Some(OAuthProvider::Custom),
                v => self.err(
                    e.line,
                    format!(
                        "provider must be microsoft, google or custom, not {}",
                        shown(v)
                    ),
                ),
            },
            k => {
                let Some(key) = OAUTH_KEYS.iter().find(|&&x| x == k) else {
                    return;
                };
                if k.ends_with("_url") && !e.value.is_empty() && !e.value.starts_with("https://") {
                    return self.err(e.line, format!("{k} must be an https:// URL"));
                }
                if !e.value.is_empty() {
                    d.values.insert(key, e.value.clone());
                }
            }
        }
    }

    fn oauth_finish(
        &mut self,
        sec: &RawSection,
        what: &str,
        mut d: OAuthDraft,
    ) -> Option<OAuthConfig> {
        if !d.oauth2 {
            if d.provider.is_some() || !d.values.is_empty() {
                self.warn(
                    sec.line,
                    format!("{what} OAuth2 keys are not used without auth = oauth2"),
                );
            }
            return None;
        }
        let Some(provider) = d.provider else {
            self.err(
                sec.line,
                format!("{what} auth = oauth2 needs provider = microsoft, google or custom"),
            );
            return None;
        };
        let Some(client_id) = d.values.remove("client_id") else {
            self.err(sec.line, format!("{what} auth = oauth2 needs client_id"));
            return None;
        };
        let c = OAuthConfig {
            provider,
            client_id,
            client_secret: d.values.remove("client_secret"),
            authorize_url: d.values.remove("authorize_url"),
            token_url: d.values.remove("token_url"),
            device_url: d.values.remove("device_url"),
            scope: d.values.remove("scope"),
        };
        if provider == OAuthProvider::Custom
            && (c.token_url.is_none()
                || c.scope.is_none()
                || (c.device_url.is_none() && c.authorize_url.is_none()))
        {
            self.err(
                sec.line,
                format!("{what} provider = custom needs token_url, scope and device_url or authorize_url"),
            );
            return None;
        }
        Some(c)
    }
}

fn optional(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn optional_path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

fn required_path(v: &str) -> Parsed<PathBuf> {
    optional_path(v).ok_or_else(|| "expected a path".into())
}

fn nonempty<T>(f: impl FnOnce(&str) -> Parsed<T>) -> impl FnOnce(&str) -> Parsed<T> {
    move |v| {
        if v.is_empty() {
            Err("must not be empty".into())
        } else {
            f(v)
        }
    }
}

/// A login name for dropping privileges; empty means stay as started.
fn user_name(v: &str) -> Parsed<Option<String>> {
    if v.is_empty() {
        return Ok(None);
    }
    let ok = !v.starts_with('-')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(Some(v.to_string()))
    } else {
        Err("expected a user name from /etc/passwd".into())
    }
}

/// One character, or empty for off.
fn delimiter(v: &str) -> Parsed<Option<char>> {
    let mut chars = v.chars();
    match (chars.next(), chars.next()) {
        (None, _) => Ok(None),
        (Some(c), None) if c != '@' && c != '.' && !c.is_whitespace() && !c.is_control() => {
            Ok(Some(c))
        }
        _ => Err("expected one character such as + or - (empty: off)".into()),
    }
}

/// A local part of `domain`, written bare (`bob`) or in full (`bob@domain`).
fn local_of(v: &str, domain: &str) -> Parsed<String> {
    if v.contains('@') {
        let a = values::address(v, true)?;
        match a.rsplit_once('@') {
            Some((l, d)) if d == domain => Ok(l.to_string()),
            _ => Err(format!("{v:?} is not in {domain}")),
        }
    } else {
        values::local_part(v, true)?;
        Ok(fold(v))
    }
}

/// Becomes a file name under `data_dir/smartpop/`: keep it plain.
fn smartpop_name(v: &str) -> Parsed<()> {
    let ok = !v.starts_with('.')
        && v.len() <= MAX_SMARTPOP_NAME_LEN
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("use up to {MAX_SMARTPOP_NAME_LEN} letters, digits, '.', '_' or '-', not starting with '.'"))
    }
}
