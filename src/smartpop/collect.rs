//! Worker side of SmartPop: delivering one fetched message into local
//! mailboxes and recording its UIDL, in that order (the no-loss rule:
//! the core sends DELE only after both are durable).
//!
//! Collected mail never goes through the outbox and is never bounced to
//! its header sender: a failure leaves it on the ISP's server.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use log::{error, info, warn};

use crate::config::{Config, SmartPopConfig};
use crate::outbox::unix_secs;
use crate::smartpop::records::{records_path, Records};
use crate::smartpop::route::{self, Route};
use crate::store::deliver::{self, LocalDelivery, LocalRecipient};
use crate::store::trace::{self, TraceInfo};

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
    Ok((records, tls))
}

/// One message the POP3 core fetched.
pub struct Fetched {
    pub config: Arc<Config>,
    pub account: SmartPopConfig,
    pub server: String,
    pub peer: IpAddr,
    /// "TLSv1.3 with cipher ..." when the session was encrypted.
    pub tls: Option<String>,
    pub uidl: Option<String>,
    pub data: Vec<u8>,
}

impl Fetched {
    /// Delivers, then records the UIDL; true only when both are durable.
    /// On false, `records` marks the UIDL `rejected` when the delivery
    /// refused the message for good (and that mark is durable).
    pub fn deliver(self, records: Option<Records>) -> (bool, Option<Records>) {
        let mut records = records;
        let (mailboxes, how) = self.mailboxes();
        if mailboxes.is_empty() {
            warn!(
                "smartpop {}: deliver_to {} reaches no local mailbox; message left on the server",
                self.account.name, self.account.deliver_to
            );
            return (false, records);
        }
        let (reverse_path, message) = take_return_path(&self.data);
        let reverse_path = reverse_path.unwrap_or_else(|| sender_of(&message));
        let now = SystemTime::now();
        let trace_info = TraceInfo {
            hostname: self.config.server.hostname.clone(),
            helo: self.server.clone(),
            peer: self.peer,
            protocol: if self.tls.is_some() { "POP3S" } else { "POP3" },
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
            message: &message,
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
        // One SmartPop delivery at a time in the process: another's tmp/
        // sync (`sync_staged`) between this one's rename into new/ and its
        // new/ sync would make the copy's removal from tmp/ durable first,
        // and a power cut then would leave a record naming a copy that is
        // nowhere (found by tests/test_powercut.py,
        // test_two_accounts_into_one_mailbox_lose_nothing). Deliveries of
        // one account are sequential anyway; this orders accounts.
        static DELIVERING: Mutex<()> = Mutex::new(());
        let _one = DELIVERING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = deliver::deliver_local_with(
            &self.config.server.data_dir,
            &request,
            &mut |staged| match (&self.uidl, records.as_mut()) {
                (Some(uidl), Some(r)) => {
                    // The record names the copies in tmp/: their names
                    // must be durable before it is.
                    Records::sync_staged(&self.config.server.data_dir, staged)?;
                    r.record_staged(uidl, now_secs, staged)?;
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
                return (false, records);
            }
            warn!(
                "smartpop {}: delivery failed, left on the server: {e}",
                self.account.name
            );
            return (false, records);
        }
        info!(
            "smartpop {}: delivered uidl={} to {} ({how}) size={}",
            self.account.name,
            self.uidl.as_deref().unwrap_or("-"),
            mailboxes.join(","),
            message.len()
        );
        (true, records)
    }

    /// The local mailboxes and a description of how they were chosen.
    fn mailboxes(&self) -> (Vec<String>, String) {
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
            if let Route::Routed { mailboxes, by } = route::route(&self.data, &resolver) {
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
            message: text.as_bytes(),
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
