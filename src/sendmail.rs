//! `mailgate sendmail`: the sendmail(8) interface for scripts and cron.
//!
//! Reads one message from stdin. Root and the server's own user store it
//! the way SMTP would (local Maildirs and the outbox, durably) without
//! needing the server to run, and nudge a running server (as by `mailgate
//! flush`) so remote mail leaves at once. Every other local user drops it
//! into the maildrop (`pickup`), where the server picks it up: they may not
//! write the queue or the mailboxes. Either way sendmail exits 0 only once
//! the message is on disk. `prepare` turns what the caller gave into a
//! transaction, for both ways (the server runs it again on a dropped file,
//! which it does not trust).

use std::ffi::OsString;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use crate::config::Config;
use crate::proto::address::has_control;
use crate::proto::smtp_server::{DeliveryOutcome, Recipient, Transaction};

/// sysexits.h codes, which callers of sendmail(8) understand.
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_SOFTWARE: u8 = 70;
const EX_TEMPFAIL: u8 = 75;

pub struct SendmailError {
    pub message: String,
    pub exit_code: u8,
}

fn fail(exit_code: u8, message: impl Into<String>) -> SendmailError {
    SendmailError {
        message: message.into(),
        exit_code,
    }
}

#[derive(Debug, Default, PartialEq)]
struct Options {
    /// `-C FILE` (sendmail's) or `-c FILE`: the config to use.
    config: Option<String>,
    from: Option<String>,
    from_name: Option<String>,
    recipients_from_headers: bool,
    /// `-i`/`-oi`: a line with a single dot does not end the message.
    ignore_dots: bool,
    recipients: Vec<String>,
}

fn parse_args(args: &[OsString]) -> Result<Options, SendmailError> {
    let mut opts = Options::default();
    let mut iter = args.iter().map(|a| a.to_string_lossy().into_owned());
    let mut only_recipients = false;
    while let Some(arg) = iter.next() {
        if only_recipients || !arg.starts_with('-') || arg == "-" {
            opts.recipients.push(arg);
            continue;
        }
        match arg.as_str() {
            "--" => only_recipients = true,
            "-t" => opts.recipients_from_headers = true,
            "-i" | "-oi" => opts.ignore_dots = true,
            "-C" | "-c" => {
                opts.config = Some(
                    iter.next()
                        .ok_or_else(|| fail(EX_USAGE, "-C needs a FILE"))?,
                )
            }
            a if a.starts_with("-C") => opts.config = Some(a[2..].to_string()),
            "-f" | "-r" => {
                opts.from = Some(
                    iter.next()
                        .ok_or_else(|| fail(EX_USAGE, "-f needs an address"))?,
                )
            }
            "-F" => {
                opts.from_name = Some(
                    iter.next()
                        .ok_or_else(|| fail(EX_USAGE, "-F needs a name"))?,
                )
            }
            a if a.starts_with("-f") || a.starts_with("-r") => opts.from = Some(a[2..].to_string()),
            a if a.starts_with("-F") => opts.from_name = Some(a[2..].to_string()),
            // -odi/-odb/-oem and friends, -bm (the default mode), -v: accepted, no effect.
            a if a.starts_with("-o") || a == "-bm" || a == "-v" || a == "-U" => {}
            "-bs" | "-bp" | "-bd" | "-q" => {
                return Err(fail(
                    EX_USAGE,
                    format!("{arg} is not supported; use `mailgate serve` or `mailgate queue`"),
                ))
            }
            _ => return Err(fail(EX_USAGE, format!("unknown option {arg}"))),
        }
    }
    Ok(opts)
}

/// Reads the message; without -i a line holding a single "." ends it.
fn read_message(
    input: &mut dyn Read,
    ignore_dots: bool,
    limit: u64,
) -> Result<Vec<u8>, SendmailError> {
    let mut raw = Vec::new();
    input
        .take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|e| fail(EX_DATAERR, format!("cannot read the message: {e}")))?;
    if raw.len() as u64 > limit {
        return Err(fail(
            EX_DATAERR,
            format!("message larger than max_message_size ({limit} bytes)"),
        ));
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    for line in raw.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if !ignore_dots && text == b"." {
            break;
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// The header section (up to the first empty line), as parsed headers.
fn header_end(message: &[u8]) -> usize {
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(message.len())
}

fn has_header(headers: &[mailparse::MailHeader], name: &str) -> bool {
    headers
        .iter()
        .any(|h| h.get_key_ref().eq_ignore_ascii_case(name))
}

/// `-t`: To, Cc and Bcc recipients; Bcc lines are removed from the message.
fn recipients_from_headers(message: &mut Vec<u8>) -> Result<Vec<String>, SendmailError> {
    let end = header_end(message);
    let (headers, _) = mailparse::parse_headers(&message[..end])
        .map_err(|e| fail(EX_DATAERR, format!("cannot parse the headers: {e}")))?;
    let mut rcpts = Vec::new();
    for h in &headers {
        let key = h.get_key_ref();
        if ["to", "cc", "bcc"]
            .iter()
            .any(|k| key.eq_ignore_ascii_case(k))
        {
            let list = mailparse::addrparse_header(h)
                .map_err(|e| fail(EX_DATAERR, format!("bad address in {key}: {e}")))?;
            for addr in list.iter() {
                match addr {
                    mailparse::MailAddr::Single(s) => rcpts.push(s.addr.clone()),
                    mailparse::MailAddr::Group(g) => {
                        rcpts.extend(g.addrs.iter().map(|s| s.addr.clone()))
                    }
                }
            }
        }
    }
    // Drop Bcc and its continuation lines.
    let mut kept = Vec::with_capacity(message.len());
    let mut skipping = false;
    for line in message[..end].split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            skipping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !skipping {
            kept.extend_from_slice(line);
        }
    }
    kept.extend_from_slice(&message[end..]);
    *message = kept;
    Ok(rcpts)
}

/// The login name of `uid`, read from /etc/passwd (no NSS).
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
        })
        .next()
}

/// A bare name (`root`) means that user at our first local domain.
fn qualify(address: &str, config: &Config) -> String {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    if address.contains('@') {
        return address.to_string();
    }
    let domain = config
        .domains
        .keys()
        .next()
        .cloned()
        .unwrap_or_else(|| config.server.hostname.clone());
    format!("{address}@{domain}")
}

/// Refuses an address (or `-F` name) holding a control character: it
/// would reach `From:`, `Return-Path:` or the queue file, where a CR or LF
/// starts a forged line (`-f $'me@x\nBcc: y@z'`). Refused, not cleaned:
/// a script passing such a value is broken or hostile, and guessing what
/// it meant could send mail where nobody wanted it.
fn no_control(what: &str, value: &str, exit_code: u8) -> Result<(), SendmailError> {
    if has_control(value) {
        return Err(fail(
            exit_code,
            format!(
                "{what} {value:?} contains a control character (CR, LF, NUL, ...); \
                 nothing was sent"
            ),
        ));
    }
    Ok(())
}

pub use crate::dropfile::Submission;

/// The config file the arguments name with `-C FILE` or `-c FILE`, if any.
pub fn config_arg(args: &[OsString]) -> Option<String> {
    parse_args(args).ok().and_then(|o| o.config)
}

/// The header naming the local user who submitted a message, as Postfix's
/// "from userid N" in its Received line: the uid comes from the kernel
/// (our own, or a maildrop file's owner), never from the message.
const UID_HEADER: &str = "X-Authenticated-Uid";

/// Turns a submission by the local user `uid` (`login`) into the
/// transaction SMTP would have made: recipients resolved (an unknown local
/// one is an error), the default sender `login` at our first domain, the
/// missing From, Date and Message-ID added, the uid recorded.
pub fn prepare(
    config: &Config,
    sub: &Submission,
    uid: u32,
    login: &str,
) -> Result<Transaction, SendmailError> {
    if let Some(from) = &sub.from {
        no_control("-f", from, EX_USAGE)?;
    }
    if let Some(name) = &sub.from_name {
        no_control("-F", name, EX_USAGE)?;
    }
    for r in &sub.recipients {
        no_control("recipient", r, EX_USAGE)?;
    }
    let mut message = sub.message.clone();
    let mut wanted = sub.recipients.clone();
    if sub.from_headers {
        for r in recipients_from_headers(&mut message)? {
            // mailparse passes other C0 bytes (`To: a\x01b@x`) through.
            no_control("recipient from the headers", &r, EX_DATAERR)?;
            wanted.push(r);
        }
    }
    if wanted.is_empty() {
        return Err(fail(EX_USAGE, "no recipients (give addresses, or -t)"));
    }
    if wanted.len() > config.smtp.max_recipients {
        return Err(fail(
            EX_USAGE,
            format!("more than {} recipients", config.smtp.max_recipients),
        ));
    }
    let sender = match &sub.from {
        Some(f) if f.is_empty() || f == "<>" => String::new(),
        Some(f) => qualify(f, config),
        None => qualify(login, config),
    };
    add_missing_headers(&mut message, &sender, sub.from_name.as_deref(), config);
    let mut traced = format!("{UID_HEADER}: {uid}\r\n").into_bytes();
    traced.extend_from_slice(&message);
    let message = traced;

    let mut recipients = Vec::new();
    for addr in wanted {
        let address = qualify(&addr, config);
        match config.resolve(&address) {
            Some(resolution) => recipients.push(Recipient {
                address,
                resolution,
            }),
            None => return Err(fail(EX_NOUSER, format!("{address}: no such user here"))),
        }
    }
    let smtputf8 = !message.is_ascii() || !sender.is_ascii();
    Ok(Transaction {
        reverse_path: sender,
        recipients,
        data: message,
        helo: "localhost".to_string(),
        peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        protocol: "local",
        auth_user: Some(login.to_string()),
        smtputf8,
        body_8bitmime: smtputf8,
    })
}

/// The caller writes the queue itself when it is root (which becomes the
/// server's user first, see `privileges`) or owns data_dir (the server's
/// user, or anyone running their own server); everyone else uses the
/// maildrop.
fn writes_directly(config: &Config) -> bool {
    use std::os::unix::fs::MetadataExt;
    let euid = crate::privileges::euid();
    euid == 0 || std::fs::metadata(&config.server.data_dir).is_ok_and(|m| m.uid() == euid)
}

pub fn run(config: &Config, args: &[OsString], input: &mut dyn Read) -> Result<(), SendmailError> {
    let opts = parse_args(args)?;
    let message = read_message(input, opts.ignore_dots, config.smtp.max_message_size)?;
    let sub = Submission {
        from: opts.from,
        from_name: opts.from_name,
        from_headers: opts.recipients_from_headers,
        recipients: opts.recipients,
        message,
    };
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    let login = user_name(uid)
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| uid.to_string());
    // Checked here too, so that the caller hears of a bad recipient at once.
    let tx = prepare(config, &sub, uid, &login)?;
    if !writes_directly(config) {
        return crate::dropfile::drop_message(&config.server.maildrop, &sub)
            .map_err(|e| fail(EX_TEMPFAIL, e));
    }
    crate::privileges::become_configured_user(config).map_err(|e| fail(EX_TEMPFAIL, e))?;
    match crate::delivery::accept(config, tx, None).0 {
        DeliveryOutcome::Accepted { .. } => {
            // Remote mail leaves now if a server runs; if none does, it
            // leaves when one starts. Either way the message is safe.
            let _ =
                crate::control::request(&config.server.data_dir, crate::control::Request::Rescan);
            Ok(())
        }
        DeliveryOutcome::TempFail {
            code,
            enhanced,
            text,
        } => Err(fail(EX_TEMPFAIL, format!("{code} {enhanced} {text}"))),
        DeliveryOutcome::PermFail {
            code,
            enhanced,
            text,
        } => Err(fail(EX_SOFTWARE, format!("{code} {enhanced} {text}"))),
    }
}

/// A user who may not read the config (0640 root when it holds passwords,
/// as `make install` leaves it) still reaches the default maildrop with
/// the default size limit; the server checks everything else when it
/// picks the message up (a bad recipient is then set aside and logged,
/// since the caller has gone).
pub fn run_without_config(args: &[OsString], input: &mut dyn Read) -> Result<(), SendmailError> {
    let opts = parse_args(args)?;
    let message = read_message(
        input,
        opts.ignore_dots,
        crate::config::DEFAULT_MAX_MESSAGE_SIZE,
    )?;
    if opts.recipients.is_empty() && !opts.recipients_from_headers {
        return Err(fail(EX_USAGE, "no recipients (give addresses, or -t)"));
    }
    let sub = Submission {
        from: opts.from,
        from_name: opts.from_name,
        from_headers: opts.recipients_from_headers,
        recipients: opts.recipients,
        message,
    };
    crate::dropfile::drop_message(std::path::Path::new(crate::config::DEFAULT_MAILDROP), &sub)
        .map_err(|e| fail(EX_TEMPFAIL, e))
}

/// Scripts often send bare bodies: add From, Date and Message-ID like
/// Postfix's cleanup does for local submissions.
fn add_missing_headers(message: &mut Vec<u8>, sender: &str, name: Option<&str>, config: &Config) {
    let end = header_end(message);
    let headers = mailparse::parse_headers(&message[..end])
        .map(|(h, _)| h)
        .unwrap_or_default();
    let mut extra = String::new();
    if !has_header(&headers, "From") {
        let who = if sender.is_empty() {
            format!("MAILER-DAEMON@{}", config.server.hostname)
        } else {
            sender.to_string()
        };
        match name {
            Some(n) => extra.push_str(&format!(
                "From: {} <{who}>\r\n",
                n.replace(['\r', '\n', '<', '>'], "")
            )),
            None => extra.push_str(&format!("From: {who}\r\n")),
        }
    }
    let now = SystemTime::now();
    if !has_header(&headers, "Date") {
        extra.push_str(&format!(
            "Date: {}\r\n",
            crate::store::trace::rfc5322_date(now)
        ));
    }
    if !has_header(&headers, "Message-ID") {
        extra.push_str(&format!(
            "Message-ID: <{}@{}>\r\n",
            crate::store::trace::new_id(now),
            config.server.hostname
        ));
    }
    if headers.is_empty() && end == message.len() {
        // No header section at all: the whole input is the body.
        extra.push_str("\r\n");
    }
    let mut out = extra.into_bytes();
    out.extend_from_slice(message);
    *message = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(&args(&["-t", "-i", "-f", "a@b", "-Fname", "x@y", "-odi"])).ok();
        let o = o.unwrap_or_default();
        assert!(o.recipients_from_headers && o.ignore_dots);
        assert_eq!(o.from.as_deref(), Some("a@b"));
        assert_eq!(o.from_name.as_deref(), Some("name"));
        assert_eq!(o.recipients, vec!["x@y"]);
        assert!(parse_args(&args(&["-f"])).is_err());
        assert!(parse_args(&args(&["-Z"])).is_err());
    }

    #[test]
    fn control_characters_refused() {
        let config = crate::config::Config::parse(
            std::path::Path::new("t.ini"),
            "[server]\nhostname = mx.example.test\ndata_dir = /nonexistent/mailgate-test\n\
             [domain example.test]\n[mailbox bob@example.test]\n",
        )
        .map(|(c, _)| c);
        let Ok(config) = config else {
            panic!("test config")
        };
        let cases: &[(&[&str], &[u8], u8)] = &[
            (
                &[
                    "-f",
                    "evil@x.test\nBcc: injected@remote.test",
                    "bob@example.test",
                ],
                b"x\n",
                EX_USAGE,
            ),
            (&["-fevil@x.test\r", "bob@example.test"], b"x\n", EX_USAGE),
            (&["-F", "Eve\0", "bob@example.test"], b"x\n", EX_USAGE),
            (&["bob@example.test\nBcc: x@y.test"], b"x\n", EX_USAGE),
            (
                &["-t"],
                b"To: =?utf-8?q?bob=0D=0ABcc=3A_x?= <bob@example.test>, a\x01b@example.test\n\nx\n",
                EX_DATAERR,
            ),
        ];
        for (argv, input, code) in cases {
            match run(&config, &args(argv), &mut &input[..]) {
                Err(e) => {
                    assert_eq!(e.exit_code, *code, "{argv:?}: {}", e.message);
                    assert!(e.message.contains("control character"), "{}", e.message);
                }
                Ok(()) => panic!("{argv:?} accepted"),
            }
        }
    }

    #[test]
    fn dot_ends_message_unless_i() {
        let text = b"Subject: x\n\nline\n.\nafter\n";
        let m = read_message(&mut &text[..], false, 1000)
            .ok()
            .unwrap_or_default();
        assert_eq!(m, b"Subject: x\r\n\r\nline\r\n");
        let m = read_message(&mut &text[..], true, 1000)
            .ok()
            .unwrap_or_default();
        assert_eq!(m, b"Subject: x\r\n\r\nline\r\n.\r\nafter\r\n");
        assert!(read_message(&mut &text[..], true, 5).is_err());
    }

    #[test]
    fn bcc_removed_and_collected() {
        let mut m = b"To: a@x.test, B <b@x.test>\r\nBcc: secret@y.test,\r\n  other@y.test\r\nSubject: s\r\n\r\nBcc: body stays\r\n".to_vec();
        let r = recipients_from_headers(&mut m).ok().unwrap_or_default();
        assert_eq!(
            r,
            vec!["a@x.test", "b@x.test", "secret@y.test", "other@y.test"]
        );
        assert_eq!(
            m,
            b"To: a@x.test, B <b@x.test>\r\nSubject: s\r\n\r\nBcc: body stays\r\n".to_vec()
        );
    }
}
