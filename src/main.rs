//! The `mailgate` command line; the only place that exits the process.
//!
//! `-c FILE` may stand before or after the subcommand; without it,
//! `MAILGATE_CONFIG`, else `/etc/mailgate/mailgate.ini`. Invoked under the
//! name `sendmail`, the binary is `mailgate sendmail`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mailgate::config::{Config, Severity};
use mailgate::control;

const DEFAULT_CONFIG: &str = "/etc/mailgate/mailgate.ini";

const USAGE: &str = "usage: mailgate [-c FILE] COMMAND
commands:
  serve                 run the server in the foreground
  check                 check the config file
  passwd                hash a password for the config
  queue                 list the outbox
  flush                 make the running server retry the outbox now
  fetch [ACCOUNT]       make the running server run SmartPop now
  oauth login NAME      sign an auth = oauth2 account in (NAME: a
                        [smartpop NAME], or outbox for the smarthost)
  oauth status          list OAuth2 accounts, token expiry, last error
  sendmail [-t] [-f FROM] [-i] [RCPT...]
                        inject a message from stdin
  dkim keygen DOMAIN [--selector S]
                        make DOMAIN's DKIM keys, print the DNS records
  --version             print the version";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rest: Vec<OsString> = args.into_iter().skip(1).collect();
    if invoked_as == "sendmail" {
        init_logging("warn");
        return run_sendmail(None, rest);
    }
    match run(rest) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("mailgate: {message}");
            ExitCode::from(2)
        }
    }
}

/// One line per event with its level. Where stderr goes decides the rest:
///
/// - the systemd journal (`JOURNAL_STREAM` names our stderr): `<N>LEVEL
///   message`, the sd-daemon(3) prefix, so journald records the syslog
///   priority and adds time, host and pid itself;
/// - a pipe or socket (OpenWrt's procd feeding logd, runit, s6, docker):
///   `LEVEL message`, since the reader stamps each line itself;
/// - a terminal or a file (`serve 2>>mailgate.log`): env_logger's usual
///   `[2026-11-25T02:02:20Z INFO ] message`.
///
/// Control characters in a message (a peer's HELO, a file name) are
/// escaped, so an event can never span lines or forge a second one.
fn init_logging(default_level: &str) {
    use std::io::Write;

    let style = log_style();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format(move |buf, record| {
            let level = record.level();
            let text = record.args().to_string();
            let message = one_line(&text);
            match style {
                LogStyle::Journal => {
                    writeln!(buf, "<{}>{level:<5} {message}", syslog_priority(level))
                }
                LogStyle::Bare => writeln!(buf, "{level:<5} {message}"),
                LogStyle::Stamped => {
                    let color = buf.default_level_style(level);
                    let ts = buf.timestamp_seconds();
                    writeln!(buf, "[{ts} {color}{level:<5}{color:#}] {message}")
                }
            }
        })
        .init();
}

#[derive(Clone, Copy)]
enum LogStyle {
    Journal,
    Bare,
    Stamped,
}

fn log_style() -> LogStyle {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        return LogStyle::Stamped;
    }
    // SAFETY: fstat(2) on descriptor 2 fills the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return LogStyle::Stamped;
    }
    // systemd.exec(5): JOURNAL_STREAM is "DEVICE:INODE" of the stream
    // connected to the journal; it is inherited, so compare it with ours.
    let journal = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (dev, ino) = v.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    if journal == Some((st.st_dev as u64, st.st_ino as u64)) {
        return LogStyle::Journal;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO | libc::S_IFSOCK => LogStyle::Bare,
        _ => LogStyle::Stamped,
    }
}

/// RFC 5424 6.2.1 severities, as sd-daemon(3) prefixes carry them.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// `text` with control characters (except tab) escaped as `\n`, `\u{1b}`...
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The command line with `-c FILE` taken out, wherever it stood.
struct Args {
    config: Option<PathBuf>,
    command: Option<String>,
    rest: Vec<OsString>,
}

fn split_args(args: Vec<OsString>) -> Result<Args, String> {
    let mut config = None;
    let mut command = None;
    let mut rest = Vec::new();
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if command.as_deref() != Some("sendmail") || rest.is_empty() {
            if text == "-c" || text == "--config" {
                let file = iter.next().ok_or("-c needs a FILE")?;
                config = Some(PathBuf::from(file));
                continue;
            }
            if let Some(file) = text.strip_prefix("--config=") {
                config = Some(PathBuf::from(file));
                continue;
            }
        }
        if command.is_none() {
            command = Some(text.into_owned());
        } else {
            rest.push(arg);
        }
    }
    Ok(Args {
        config,
        command,
        rest,
    })
}

fn config_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit
        .or_else(|| std::env::var_os("MAILGATE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

fn run(args: Vec<OsString>) -> Result<ExitCode, String> {
    let Args {
        config,
        command,
        rest,
    } = split_args(args)?;
    let command = command.unwrap_or_default();
    match command.as_str() {
        "--version" | "-V" | "version" => {
            println!("mailgate {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        "--help" | "-h" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "serve" => {
            no_extra(&rest)?;
            one_malloc_arena();
            init_logging("info");
            mailgate::server::serve(&config_path(config))?;
            Ok(ExitCode::SUCCESS)
        }
        "check" => {
            no_extra(&rest)?;
            Ok(check(&config_path(config)))
        }
        "passwd" => {
            no_extra(&rest)?;
            let password = mailgate::auth::read_password_for_passwd_command()
                .map_err(|e| format!("cannot read the password: {e}"))?;
            if password.is_empty() {
                return Err("empty password".into());
            }
            let hash = mailgate::auth::hash(&password).map_err(|e| format!("cannot hash: {e}"))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
        "queue" => {
            no_extra(&rest)?;
            let config = load_as_user(&config_path(config))?;
            print!("{}", mailgate::outbox::listing(&config)?);
            Ok(ExitCode::SUCCESS)
        }
        "flush" => {
            no_extra(&rest)?;
            let config = load_as_user(&config_path(config))?;
            control::request(&config.server.data_dir, control::Request::Flush)?;
            println!("flush requested");
            Ok(ExitCode::SUCCESS)
        }
        "oauth" => {
            let args: Vec<String> = rest
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let config = load_as_user(&config_path(config))?;
            match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["login", name] => {
                    let stdin = std::io::stdin();
                    let mut input = stdin.lock();
                    let mut out = std::io::stdout();
                    mailgate::oauth::login::login(&config, name, &mut input, &mut out)
                        .map_err(|e| format!("oauth login {name}: {e}; nothing stored"))?;
                }
                ["status"] => print!("{}", mailgate::oauth::login::status(&config)?),
                _ => return Err(format!("oauth takes login NAME or status\n{USAGE}")),
            }
            Ok(ExitCode::SUCCESS)
        }
        "fetch" => {
            if rest.len() > 1 {
                return Err(format!("fetch takes at most one ACCOUNT\n{USAGE}"));
            }
            let config = load_as_user(&config_path(config))?;
            let account = rest.first().map(|a| a.to_string_lossy().into_owned());
            if config.smartpop.is_empty() {
                return Err(format!(
                    "no [smartpop NAME] accounts in {}: nothing to fetch",
                    config.path.display()
                ));
            }
            if let Some(name) = &account {
                if !config.smartpop.iter().any(|a| &a.name == name) {
                    return Err(format!("no [smartpop {name}] in the config"));
                }
            }
            control::request(&config.server.data_dir, control::Request::Fetch(account))?;
            println!("fetch requested");
            Ok(ExitCode::SUCCESS)
        }
        "sendmail" => {
            init_logging("warn");
            Ok(run_sendmail(config, rest))
        }
        "dkim" => run_dkim(config, rest),
        "" => Err(format!("no command given\n{USAGE}")),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// `mailgate dkim keygen` (and the internal `dkim sign` / `dkim verify`
/// that the interoperability tests drive; see src/mailauth/cli.rs).
fn run_dkim(config: Option<PathBuf>, rest: Vec<OsString>) -> Result<ExitCode, String> {
    use mailgate::mailauth::cli;
    let args: Vec<String> = rest
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some((sub, args)) = args.split_first() else {
        return Err(format!("dkim needs a subcommand\n{USAGE}"));
    };
    if sub == "verify" {
        print!("{}", cli::verify(args, &mut std::io::stdin().lock())?);
        return Ok(ExitCode::SUCCESS);
    }
    let config = load_as_user(&config_path(config))?;
    let domain = args.iter().find(|a| !a.starts_with('-'));
    let default_selector = domain.and_then(|d| {
        config
            .domains
            .get(&d.to_ascii_lowercase())
            .and_then(|x| x.dkim_selector.clone())
    });
    let data_dir = &config.server.data_dir;
    match sub.as_str() {
        "keygen" => {
            print!(
                "{}",
                cli::keygen(data_dir, args, default_selector.as_deref())?
            );
            Ok(ExitCode::SUCCESS)
        }
        "sign" => {
            cli::sign(
                data_dir,
                args,
                default_selector.as_deref(),
                &mut std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        other => Err(format!("unknown dkim subcommand {other:?}\n{USAGE}")),
    }
}

fn no_extra(rest: &[OsString]) -> Result<(), String> {
    match rest.first() {
        None => Ok(()),
        Some(arg) => Err(format!(
            "unexpected argument {:?}\n{USAGE}",
            arg.to_string_lossy()
        )),
    }
}

/// `mailgate check`: every diagnostic as FILE:LINE: message; 1 on errors.
fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok((config, warnings)) => {
            for w in &warnings {
                println!("{w}");
            }
            for w in dkim_key_warnings(&config) {
                println!("{w}");
            }
            for w in dnsbl_warnings(&config) {
                println!("{w}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(diags) => {
            for d in &diags {
                println!("{d}");
            }
            let errors = diags
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            println!("{}: {errors} error(s)", path.display());
            ExitCode::FAILURE
        }
    }
}

/// `[domain X] dkim_selector` without its key files: mail from X would
/// leave unsigned (and Gmail refuses unauthenticated direct delivery).
fn dkim_key_warnings(config: &Config) -> Vec<mailgate::config::Diagnostic> {
    use mailgate::mailauth::{dkim::Algorithm, keys};
    let mut out = Vec::new();
    for d in config.domains.values() {
        let Some(selector) = &d.dkim_selector else {
            continue;
        };
        for alg in [Algorithm::RsaSha256, Algorithm::Ed25519Sha256] {
            let path = keys::key_path(&config.server.data_dir, &d.name, selector, alg);
            if !path.exists() {
                out.push(mailgate::config::Diagnostic {
                    file: config.path.clone(),
                    line: d.line,
                    severity: Severity::Warning,
                    message: format!(
                        "[domain {}] dkim_selector = {selector}, but {} is missing: mail from {} leaves unsigned (run `mailgate dkim keygen {}`)",
                        d.name,
                        path.display(),
                        d.name,
                        d.name
                    ),
                });
            }
        }
    }
    out
}

/// Asks each `dnsbl` list about its test entry 127.0.0.2 (RFC 5782 5:
/// every list lists it): an error answer (Spamhaus's 127.255.255.x, "query
/// refused", e.g. through a public resolver), no answer, or no listing
/// means the list does not work from here. One blocking query per list
/// (this is the CLI, not the server's loop).
fn dnsbl_warnings(config: &Config) -> Vec<mailgate::config::Diagnostic> {
    use mailgate::mailauth::{dnsbl, Reply};
    let mut out = Vec::new();
    if !config.smtp.mail_auth || config.smtp.dnsbl.is_empty() {
        return out;
    }
    // The line of the `dnsbl` key, for FILE:LINE.
    let line = std::fs::read_to_string(&config.path)
        .ok()
        .and_then(|t| {
            t.lines()
                .position(|l| l.trim_start().starts_with("dnsbl") && l.contains('='))
        })
        .map_or(0, |i| i + 1);
    let test_ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    for list in &config.smtp.dnsbl {
        let q = dnsbl::query(test_ip, &list.zone);
        let reply = match config.resolver {
            Some(ns) => blocking_lookup(ns, &q),
            None => Reply::Failed("no nameserver ([outbox] nameserver, /etc/resolv.conf)".into()),
        };
        let problem = match dnsbl::classify(&reply, &list.codes) {
            dnsbl::Verdict::Listed(_) => continue,
            dnsbl::Verdict::NotListed => {
                "does not list its test entry 127.0.0.2: is the zone name right?".to_string()
            }
            dnsbl::Verdict::Error(why) => format!("cannot be used from here: {why}"),
        };
        out.push(mailgate::config::Diagnostic {
            file: config.path.clone(),
            line,
            severity: Severity::Warning,
            message: format!(
                "dnsbl {} {problem}; its answers never refuse mail",
                list.zone
            ),
        });
    }
    out
}

/// One DNS question, blocking, with the resolver's retries and timeouts.
fn blocking_lookup(
    ns: std::net::SocketAddr,
    q: &mailgate::mailauth::Query,
) -> mailgate::mailauth::Reply {
    use mailgate::mailauth::Reply;
    use mailgate::proto::dns::{RecordLookup, RecordStep, DNS_TIMEOUT};
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut lookup = RecordLookup::new(&q.name, q.qtype, seed);
    let mut step = lookup.start();
    loop {
        let query = match step {
            RecordStep::Done(r) => return Reply::from(r),
            RecordStep::Query(query) => query,
        };
        if query.tcp {
            return Reply::Failed("truncated answer (TCP not tried here)".into());
        }
        let local: std::net::SocketAddr = if ns.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = match std::net::UdpSocket::bind(local)
            .and_then(|s| s.connect(ns).map(|_| s))
            .and_then(|s| s.set_read_timeout(Some(DNS_TIMEOUT)).map(|_| s))
            .and_then(|s| s.send(&query.packet).map(|_| s))
        {
            Ok(s) => s,
            Err(e) => return Reply::Failed(format!("{ns}: {e}")),
        };
        let mut buf = [0u8; 4096];
        let mut next = None;
        while next.is_none() {
            match sock.recv(&mut buf) {
                Ok(n) => next = lookup.on_response(buf.get(..n).unwrap_or_default()),
                Err(_) => next = Some(lookup.on_timeout()),
            }
        }
        step = next.unwrap_or_else(|| lookup.on_timeout());
    }
}

/// For the one-shot commands: reads the config, then (when root and
/// `[server] user` is set) becomes that user before touching data_dir, so
/// root never writes into a folder an unprivileged user controls.
fn load_as_user(path: &Path) -> Result<Config, String> {
    let config = load_quietly(path)?;
    mailgate::privileges::become_configured_user(&config)?;
    Ok(config)
}

fn load_quietly(path: &Path) -> Result<Config, String> {
    match Config::load(path) {
        Ok((config, _)) => Ok(config),
        Err(diags) => {
            let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            Err(format!("{}\n(run `mailgate check`)", lines.join("\n")))
        }
    }
}

fn run_sendmail(config: Option<PathBuf>, args: Vec<OsString>) -> ExitCode {
    // `mailgate -c FILE sendmail`, or sendmail's own `-C FILE` (`-c FILE`).
    let explicit = config.or_else(|| mailgate::sendmail::config_arg(&args).map(PathBuf::from));
    let path = config_path(explicit);
    let unreadable =
        std::fs::File::open(&path).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
    if unreadable && mailgate::privileges::euid() != 0 {
        let mut stdin = std::io::stdin().lock();
        return match mailgate::sendmail::run_without_config(&args, &mut stdin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "sendmail: {} ({} is not readable)",
                    e.message,
                    path.display()
                );
                ExitCode::from(e.exit_code)
            }
        };
    }
    let config = match load_quietly(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sendmail: {e}");
            // EX_CONFIG from sysexits.h, what sendmail(8) callers expect.
            return ExitCode::from(78);
        }
    };
    // Root becomes the server's user inside, once it knows it writes the
    // queue itself; other users drop the message into the maildrop.
    match mailgate::sendmail::run(&config, &args, &mut std::io::stdin().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sendmail: {}", e.message);
            ExitCode::from(e.exit_code)
        }
    }
}

/// glibc gives each thread that allocates an arena of its own, and memory
/// freed in one (a worker's listing, dropped by the loop thread) stays
/// there: with 6 workers the server's RSS grew by about 1 MiB per POP3
/// download of 5000 messages, to twice what one arena holds. The threads
/// allocate little, so sharing one arena costs no measurable contention.
/// musl (the static router builds) has no per-thread arenas.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_table() {
        for (text, want) in [
            ("plain", "plain"),
            ("tab\tkept", "tab\tkept"),
            ("two\nlines", "two\\nlines"),
            ("cr\r\nlf", "cr\\r\\nlf"),
            ("esc \u{1b}[31mred", "esc \\u{1b}[31mred"),
            ("nul\0", "nul\\u{0}"),
            ("8-bit é ü", "8-bit é ü"),
            ("", ""),
        ] {
            assert_eq!(one_line(text), want, "{text:?}");
        }
    }

    #[test]
    fn priorities() {
        assert_eq!(syslog_priority(log::Level::Error), 3);
        assert_eq!(syslog_priority(log::Level::Warn), 4);
        assert_eq!(syslog_priority(log::Level::Info), 6);
        assert_eq!(syslog_priority(log::Level::Trace), 7);
    }
}
