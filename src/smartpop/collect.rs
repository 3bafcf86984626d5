//! Worker side of SmartPop: staging a RETR body on disk as it arrives,
//! then delivering it from there into local mailboxes and recording its
//! UIDL, in that order (the no-loss rule: the core sends DELE only after
//! both are durable).
//!
//! The staging file (`data_dir/smartpop/.NAME.retr`, one per account, as
//! one run fetches one message at a time) is scratch: it is never durable
//! and never counts as delivered; a crash leaves the message on the server
//! and the file is removed at the next run. Only its header is read into
//! memory (routing, `Return-Path:`, the loop check); each copy is written
//! from the file in chunks.
//!
//! Collected mail never goes through the outbox and is never bounced to
//! its header sender: a failure leaves it on the ISP's server.

use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use log::{error, info, warn};

use crate::config::{Config, SmartPopConfig};
use crate::outbox::unix_secs;
use crate::smartpop::records::{records_path, Fingerprint, Records};
use crate::smartpop::route::{self, Route};
use crate::store::deliver::{self, LocalDelivery, LocalRecipient};
use crate::store::message::Message;
use crate::store::trace::{self, TraceInfo};

/// Most of a collected message's header read into memory (for routing,
/// `Return-Path:` and the loop check). RFC 5322 sets no bound; real
/// headers take a few KiB, and a longer one is read in its first MiB
/// (cut at a line end), the rest copied as it is.
const MAX_HEADER: usize = 1024 * 1024;
/// Octets of the staging file read at a time while looking for the header's end.
const HEAD_CHUNK: usize = 64 * 1024;

/// Where account `name`'s RETR body is staged: next to its records, a
/// name no account can have (account names never start with `.`).
pub fn staging_path(data_dir: &Path, name: &str) -> Option<PathBuf> {
    let records = records_path(data_dir, name).ok()?;
    Some(records.with_file_name(format!(".{name}.retr")))
}

/// Worker side: appends `data` to the staging file, creating (or
/// emptying) it for the first chunk of a message (`file` None). The file
/// comes back for the next write.
pub fn write_stage(file: Option<File>, path: &Path, data: &[u8]) -> io::Result<File> {
    let mut file = match file {
        Some(f) => f,
        // Read and write: the delivery reads it back through this handle.
        None => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?,
    };
    file.write_all(data)?;
    Ok(file)
}

/// Worker side: the staging file is no longer needed (best effort).
pub fn remove_stage(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            warn!("smartpop: cannot remove {}: {e}", path.display());
        }
    }
}

/// The header section of the staged message, up to and including the
/// empty line that ends it (RFC 5322 2.1), or all of a message without
/// one; at most [`MAX_HEADER`], cut after a line end.
fn read_head(file: &File) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = vec![0u8; HEAD_CHUNK];
    let mut scanned = 0;
    loop {
        let n = loop {
            match file.read_at(&mut buf, head.len() as u64) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Ok(head);
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        // Line starts from `scanned` on; the first empty line ends it.
        let mut start = scanned;
        while let Some(lf) = head
            .get(start..)
            .and_then(|r| r.iter().position(|&b| b == b'\n'))
        {
            let line = head.get(start..start + lf + 1).unwrap_or_default();
            if line == b"\n" || line == b"\r\n" {
                head.truncate(start + lf + 1);
                return Ok(head);
            }
            start += lf + 1;
        }
        scanned = start;
        if head.len() >= MAX_HEADER {
            // Whole lines only: the rest follows from the file.
            if scanned > 0 {
                head.truncate(scanned);
            }
            return Ok(head);
        }
    }
}

/// Before a run, on a worker: the account's records (finishing the
/// renames a crash cut short), their folder, and the TLS client config
/// (which reads `ca_file`). Err says why the run cannot start.
pub fn prepare(
    config: &Config,
    account: &SmartPopConfig,
) -> Result<(Records, Arc<rustls::ClientConfig>), String> {
    let tls = crate::tls::client_config(account.ca_file.as_deref()).map_err(|e| e.to_string())?;
    let path = records_path(&config.server.data_dir, &account.name)
        .map_err(|e| format!("bad account name: {e}"))?;
    let records = match Records::load(path.clone()) {
        Ok(mut r) => {
            // Renames cut by a crash (only then is there work).
            r.finish_staged(&config.server.data_dir)
                .map_err(|e| format!("cannot finish staged deliveries: {e}"))?;
            r
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Records::empty(path),
        // Without the records we could fetch twice: wait.
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if let Some(dir) = records.path().parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            warn!("smartpop: cannot create {}: {e}", dir.display());
        }
    }
    // A body staged when the last run was cut short is still on the server.
    if let Some(stage) = staging_path(&config.server.data_dir, &account.name) {
        remove_stage(&stage);
    }
    Ok((records, tls))
}

/// Before an IMAP push watcher starts, on a worker: only the TLS client
/// config. A watcher leaves the records and the staging file alone (a
/// collection run of the account may be using them), so it gets empty
/// records that are never saved.
pub fn prepare_watch(
    _config: &Config,
    account: &SmartPopConfig,
) -> Result<(Records, Arc<rustls::ClientConfig>), String> {
    let tls = crate::tls::client_config(account.ca_file.as_deref()).map_err(|e| e.to_string())?;
    Ok((Records::empty(PathBuf::new()), tls))
}

/// One message a collection core (POP3 or IMAP) fetched.
pub struct Fetched {
    pub config: Arc<Config>,
    pub account: SmartPopConfig,
    pub server: String,
    pub peer: IpAddr,
    /// "TLSv1.3 with cipher ..." when the session was encrypted.
    pub tls: Option<String>,
    pub uidl: Option<String>,
    /// The staged body and where it is; None for a body within one
    /// chunk, which is in `data` (or empty).
    pub staged: Option<File>,
    pub staged_path: Option<PathBuf>,
    pub data: Vec<u8>,
}

impl Fetched {
    /// Delivers from the staging file, then records the UIDL; true only
    /// when both are durable. On false, `records` marks the UIDL
    /// `rejected` when the delivery refused the message for good (and that
    /// mark is durable). The staging file is removed either way. Also the
    /// mailboxes the message reached (none on failure): their IMAP IDLE
    /// sessions are to be woken, as for an SMTP delivery.
    pub fn deliver(mut self, records: Option<Records>) -> (bool, Option<Records>, Vec<String>) {
        let staged = self.staged.take();
        let data = std::mem::take(&mut self.data);
        let result = match &staged {
            Some(file) => read_head(file).map(|head| (head, Some(file))),
            None => Ok((data, None)),
        };
        let delivered = match result {
            Ok((head, file)) => self.deliver_staged(&head, file, records),
            Err(e) => {
                warn!(
                    "smartpop {}: cannot read the staged message, left on the server: {e}",
                    self.account.name
                );
                (false, records, Vec::new())
            }
        };
        drop(staged);
        if let Some(path) = &self.staged_path {
            remove_stage(path);
        }
        delivered
    }

    /// `head` is the message's header (see `read_head`); the rest of it
    /// follows in `file`.
    fn deliver_staged(
        &self,
        head: &[u8],
        file: Option<&File>,
        records: Option<Records>,
    ) -> (bool, Option<Records>, Vec<String>) {
        let mut records = records;
        let (mailboxes, how) = self.mailboxes(head);
        if mailboxes.is_empty() {
            warn!(
                "smartpop {}: deliver_to {} reaches no local mailbox; message left on the server",
                self.account.name, self.account.deliver_to
            );
            return (false, records, Vec::new());
        }
        let (reverse_path, message) = take_return_path(head);
        let reverse_path = reverse_path.unwrap_or_else(|| sender_of(&message));
        let now = SystemTime::now();
        let trace_info = TraceInfo {
            hostname: self.config.server.hostname.clone(),
            helo: self.server.clone(),
            peer: self.peer,
            // RFC 3848's names, for the protocol the message came by.
            protocol: match (self.account.imap, self.tls.is_some()) {
                (true, true) => "IMAPS",
                (true, false) => "IMAP",
                (false, true) => "POP3S",
                (false, false) => "POP3",
            },
            tls: self.tls.clone(),
            auth_user: None,
            via: Some(format!("smartpop {}", self.account.name)),
            id: trace::new_id(now),
        };
        let request = LocalDelivery {
            reverse_path,
            recipients: mailboxes
                .iter()
                .map(|m| LocalRecipient {
                    mailbox: m.clone(),
                    original: m.clone(),
                    quota: self.config.mailboxes.get(m).and_then(|c| c.quota),
                })
                .collect(),
            trace: trace_info,
            message: match file {
                Some(file) => Message::Tail {
                    head: &message,
                    file,
                    offset: head.len() as u64,
                },
                None => Message::Wire(&message),
            },
            extra_headers: format!(
                "X-Mailgate-Routed: smartpop {} from {}:{}, {how}\r\n",
                self.account.name, self.account.host.host, self.account.host.port
            ),
            delivered_to_check: false,
        };
        // The UIDL is recorded between writing the copies to tmp/ and
        // renaming them into new/, with their names: a crash in between is
        // finished at the next start (`Records::finish_staged`), so the
        // message is neither lost nor fetched twice.
        let now_secs = unix_secs(now);
        let mut recorded = false;
        let size = file
            .and_then(|f| f.metadata().ok())
            .map_or(head.len() as u64, |m| m.len());
        // IMAP: what finds the message again if the folder's UIDVALIDITY
        // changes (the size is the body literal's, RFC822.SIZE).
        let fingerprint = if self.account.imap {
            Fingerprint::of(head, size)
        } else {
            None
        };
        // Deliveries of several accounts into one mailbox may run at once:
        // the copies are published as links (`Maildir::publish_linked`),
        // so another's sync of tmp/ (`sync_staged`) cannot make a copy's
        // removal from tmp/ durable before its name in new/ is (found by
        // tests/test_powercut.py, test_two_accounts_into_one_mailbox_lose_nothing).
        let result = deliver::deliver_local_with(
            &self.config.server.data_dir,
            &request,
            &mut |staged| match (&self.uidl, records.as_mut()) {
                (Some(uidl), Some(r)) => {
                    // The record names the copies in tmp/: their names
                    // must be durable before it is.
                    Records::sync_staged(&self.config.server.data_dir, staged)?;
                    r.record_staged(uidl, now_secs, staged, fingerprint)?;
                    recorded = true;
                    Ok(())
                }
                _ => Ok(()),
            },
        );
        if let Err(e) = result {
            if recorded {
                // Recorded, then the renames failed and were undone: take
                // the record back, or the message would be deleted unread.
                if let (Some(uidl), Some(r)) = (&self.uidl, records.as_mut()) {
                    if let Err(io) = r.forget(uidl) {
                        error!(
                            "smartpop {}: cannot take back uidl {uidl}: {io}",
                            self.account.name
                        );
                    }
                }
            }
            // A permanent refusal (too many hops) would stop every run at
            // this message: record it as rejected, so the driver skips it
            // now (`Pop3Fetch::rejected`) and later runs leave it alone.
            if let (true, Some(uidl), Some(r)) = (e.is_permanent(), &self.uidl, records.as_mut()) {
                match r.record_rejected(uidl, now_secs) {
                    Ok(()) => warn!(
                        "smartpop {}: message uidl={uidl} cannot be stored ({e}); left on the server, not fetched again",
                        self.account.name
                    ),
                    Err(io) => warn!(
                        "smartpop {}: message uidl={uidl} cannot be stored ({e}) nor recorded: {io}",
                        self.account.name
                    ),
                }
                return (false, records, Vec::new());
            }
            warn!(
                "smartpop {}: delivery failed, left on the server: {e}",
                self.account.name
            );
            return (false, records, Vec::new());
        }
        info!(
            "smartpop {}: delivered uidl={} to {} ({how}) size={size}",
            self.account.name,
            self.uidl.as_deref().unwrap_or("-"),
            mailboxes.join(","),
        );
        (true, records, mailboxes)
    }

    /// The local mailboxes and a description of how they were chosen.
    fn mailboxes(&self, head: &[u8]) -> (Vec<String>, String) {
        let local_of = |addr: &str| {
            self.config
                .resolve(addr)
                .map(|r| r.local)
                .filter(|l| !l.is_empty())
        };
        if self.account.multidrop {
            let resolver = |addr: &str| -> Option<Vec<String>> {
                // Only local domains count: a remote address resolves to
                // itself as "remote", which multi-drop must ignore.
                local_of(addr)
            };
            if let Route::Routed { mailboxes, by } = route::route(head, &resolver) {
                return (mailboxes, format!("multidrop by {by}"));
            }
            let fallback = local_of(&self.account.deliver_to).unwrap_or_default();
            return (
                fallback,
                format!("multidrop unmatched, to {}", self.account.deliver_to),
            );
        }
        let to = local_of(&self.account.deliver_to).unwrap_or_default();
        (to, format!("single-drop to {}", self.account.deliver_to))
    }
}

/// Removes `Return-Path:` fields from the header section (the delivery
/// writes its own on top) and returns the address the first one named:
/// `None` when there was none, `Some("")` for the null path `<>`.
fn take_return_path(message: &[u8]) -> (Option<String>, Vec<u8>) {
    let mut kept = Vec::with_capacity(message.len());
    let mut path = None;
    let mut skipping = false;
    let mut rest = message;
    while !rest.is_empty() {
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |p| p + 1);
        let (line, tail) = rest.split_at(len);
        if line == b"\r\n" || line == b"\n" {
            // The empty line ending the header section (RFC 5322 2.1).
            break;
        }
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            skipping = line.len() >= 12 && line[..12].eq_ignore_ascii_case(b"return-path:");
            if skipping && path.is_none() {
                let value = String::from_utf8_lossy(&line[12..]);
                path = Some(
                    value
                        .trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .trim()
                        .to_string(),
                );
            }
        }
        if !skipping {
            kept.extend_from_slice(line);
        }
        rest = tail;
    }
    kept.extend_from_slice(rest);
    (path, kept)
}

/// The reverse-path for a collected message without `Return-Path:`: the
/// first `From:` address (as fetchmail does), or the null path when there
/// is none. Never `<>` by default: that would dress the message as a bounce.
fn sender_of(message: &[u8]) -> String {
    let Ok((headers, _)) = mailparse::parse_headers(message) else {
        return String::new();
    };
    let from = headers
        .iter()
        .find(|h| h.get_key_ref().trim().eq_ignore_ascii_case("From"));
    let Some(list) = from.and_then(|h| mailparse::addrparse_header(h).ok()) else {
        return String::new();
    };
    let first = list.iter().find_map(|a| match a {
        mailparse::MailAddr::Single(s) => Some(s.addr.clone()),
        mailparse::MailAddr::Group(g) => g.addrs.first().map(|s| s.addr.clone()),
    });
    first
        .filter(|a| a.contains('@') && !a.chars().any(|c| c.is_control() || c.is_whitespace()))
        .unwrap_or_default()
}

/// A job that tells the owner of `deliver_to` about a message too big to
/// collect (once per message: the caller records that it did).
pub fn oversize_notice(
    config: &Arc<Config>,
    account: &SmartPopConfig,
    size: u64,
) -> impl FnOnce() + Send {
    let config = Arc::clone(config);
    let account = account.clone();
    move || {
        let Some(resolution) = config.resolve(&account.deliver_to) else {
            return;
        };
        let now = SystemTime::now();
        let hostname = &config.server.hostname;
        let text = format!(
            "From: MAILER-DAEMON@{hostname}\r\nTo: {to}\r\nSubject: SmartPop: a message too large to collect\r\n\
             Date: {date}\r\nMessage-ID: <{id}@{hostname}>\r\nAuto-Submitted: auto-generated\r\n\r\n\
             SmartPop account {name} found a message of {size} bytes on {server},\r\n\
             larger than max_message_size ({max} bytes). It was left on the server;\r\n\
             read it with your ISP's webmail, or raise max_message_size.\r\n",
            to = account.deliver_to,
            date = trace::rfc5322_date(now),
            id = trace::new_id(now),
            name = account.name,
            server = account.host.host,
            max = config.smtp.max_message_size,
        );
        let request = LocalDelivery {
            reverse_path: String::new(),
            recipients: resolution
                .local
                .iter()
                .map(|m| LocalRecipient {
                    mailbox: m.clone(),
                    original: account.deliver_to.clone(),
                    quota: None,
                })
                .collect(),
            trace: TraceInfo {
                hostname: hostname.clone(),
                helo: hostname.clone(),
                peer: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                protocol: "local",
                tls: None,
                auth_user: None,
                via: None,
                id: trace::new_id(now),
            },
            message: Message::Wire(text.as_bytes()),
            extra_headers: String::new(),
            delivered_to_check: true,
        };
        if let Err(e) = deliver::deliver_local(&config.server.data_dir, &request) {
            warn!(
                "smartpop {}: cannot deliver the oversize notice: {e}",
                account.name
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_path_taken_out() {
        let cases: &[(&[u8], Option<&str>, &[u8])] = &[
            (
                b"Return-Path: <a@b.example>\r\nSubject: x\r\n\r\nReturn-Path: body\r\n",
                Some("a@b.example"),
                b"Subject: x\r\n\r\nReturn-Path: body\r\n",
            ),
            (b"Subject: y\r\n\r\nbody", None, b"Subject: y\r\n\r\nbody"),
            (b"Return-Path: <>\r\n\r\n", Some(""), b"\r\n"),
            (
                b"RETURN-PATH: <x@y>\r\n\tfolded\r\nReturn-Path: <z@w>\r\nA: b\r\n\r\n",
                Some("x@y"),
                b"A: b\r\n\r\n",
            ),
            // No header section: body lines are never taken for fields.
            (
                b"\r\nReturn-Path: <body@x>\r\n\r\n",
                None,
                b"\r\nReturn-Path: <body@x>\r\n\r\n",
            ),
            (b"", None, b""),
            (b"Return-Path: <trunc", Some("trunc"), b""),
        ];
        for (input, path, kept) in cases {
            let (p, m) = take_return_path(input);
            assert_eq!(p.as_deref(), *path, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(m, kept.to_vec(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn head_is_read_to_the_empty_line() {
        let t = crate::store::durable::tests::TempDir::new("collect-head");
        let path = t.path().join("m");
        let long_line = format!("X: {}\r\n", "y".repeat(100));
        let huge: String = std::iter::repeat_n(long_line.as_str(), MAX_HEADER / 100 + 10).collect();
        let cases: Vec<(Vec<u8>, usize)> = vec![
            (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore".to_vec(), 14),
            (b"A: 1\nB: 2\n\nbody\n".to_vec(), 11),
            (b"\r\nbody".to_vec(), 2),
            (b"A: 1\r\nno body".to_vec(), 13),
            (b"".to_vec(), 0),
            // Longer than MAX_HEADER: whole lines up to about the bound.
            (huge.clone().into_bytes(), 0),
        ];
        for (text, want) in cases {
            std::fs::write(&path, &text).unwrap();
            let head = read_head(&File::open(&path).unwrap()).unwrap();
            if want == 0 && !text.is_empty() {
                assert!(head.len() > MAX_HEADER - 200 && head.len() < MAX_HEADER + HEAD_CHUNK);
                assert!(head.ends_with(b"\r\n") && text.starts_with(&head));
            } else {
                assert_eq!(head, &text[..want], "{:?}", String::from_utf8_lossy(&text));
            }
        }
        assert_eq!(
            staging_path(t.path(), "isp"),
            Some(t.path().join("smartpop/.isp.retr"))
        );
        assert_eq!(staging_path(t.path(), "../x"), None);
    }

    #[test]
    fn sender_from_header() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"From: Carol <carol@remote.example>\r\n\r\n",
                "carol@remote.example",
            ),
            (b"from: a@b.example, c@d.example\r\n\r\n", "a@b.example"),
            (b"Subject: none\r\n\r\nFrom: body@x.example\r\n", ""),
            (b"From: not an address\r\n\r\n", ""),
            (b"From: \xff\xfe\r\n\r\n", ""),
            (b"", ""),
        ];
        for (input, want) in cases {
            assert_eq!(
                sender_of(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
