//! Local delivery: one SMTP transaction (or one SmartPop message) into the
//! Maildirs of its local recipients, all or nothing.
//!
//! Each copy gets `Return-Path:`, `Delivered-To:` and one `Received:` line
//! in front of the message (RFC 5321 4.4), is staged in `tmp/` and fsynced;
//! only when every copy is staged are they renamed into `new/` and the
//! `new/` folders fsynced. If anything fails, every copy already moved is
//! removed again, so the client's retry after a 4xx does not duplicate.
//! Errors carry the SMTP reply (code, enhanced code, text) to send.
//!
//! Must not: run on the event-loop thread (it fsyncs; use `crate::workers`)
//! or decide routing (recipients arrive resolved and deduplicated).

use crate::store::maildir::{self, Maildir};
use crate::store::message::{HeaderScan, Message};
use crate::store::trace::{self, TraceInfo};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// RFC 5321 6.3 counts `Received:` fields to detect loops and suggests at
/// least 100; we stop at 30 (the outbox issue's choice, and Postfix's
/// `hopcount_limit` default is 50): a household's mail never takes 30 hops.
pub const MAX_RECEIVED: usize = 30;

/// A delivery failure, with the reply the SMTP layer sends for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// 4xx: the client keeps the message and retries.
    Temporary {
        code: u16,
        enhanced: &'static str,
        text: String,
    },
    /// 5xx: the client must not retry (and bounces).
    Permanent {
        code: u16,
        enhanced: &'static str,
        text: String,
    },
}

impl DeliveryError {
    pub fn code(&self) -> u16 {
        match self {
            DeliveryError::Temporary { code, .. } | DeliveryError::Permanent { code, .. } => *code,
        }
    }
    pub fn enhanced(&self) -> &'static str {
        match self {
            DeliveryError::Temporary { enhanced, .. }
            | DeliveryError::Permanent { enhanced, .. } => enhanced,
        }
    }
    pub fn text(&self) -> &str {
        match self {
            DeliveryError::Temporary { text, .. } | DeliveryError::Permanent { text, .. } => text,
        }
    }
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Permanent { .. })
    }

    /// 452 4.3.1 (RFC 3463 "mail system full") on ENOSPC/EDQUOT; any other
    /// IO failure is 451 4.3.0 (RFC 5321 "local error in processing").
    /// Both are temporary: the client keeps the message.
    pub fn from_io(e: &io::Error) -> DeliveryError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => DeliveryError::Temporary {
                code: 452,
                enhanced: "4.3.1",
                text: "Insufficient system storage".into(),
            },
            _ => DeliveryError::Temporary {
                code: 451,
                enhanced: "4.3.0",
                text: "Local error in processing".into(),
            },
        }
    }

    fn mailbox_full(mailbox: &str) -> DeliveryError {
        DeliveryError::Temporary {
            code: 452,
            enhanced: "4.2.2",
            text: format!(
                "Mailbox full: {}",
                trace::sanitize(mailbox, trace::MAX_PATH)
            ),
        }
    }

    fn bad_mailbox() -> DeliveryError {
        DeliveryError::Permanent {
            code: 553,
            enhanced: "5.1.3",
            text: "Bad destination mailbox address syntax".into(),
        }
    }
}

/// `452 4.3.1 Insufficient system storage`: the reply line, without CRLF.
impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code(), self.enhanced(), self.text())
    }
}

impl std::error::Error for DeliveryError {}

/// One local mailbox to receive a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRecipient {
    /// The resolved mailbox, `local@domain` (its Maildir).
    pub mailbox: String,
    /// The forward-path the client gave (alias, `+tag`, catch-all), for
    /// the `for <...>` clause.
    pub original: String,
    /// The mailbox's quota in bytes on disk (`new/` + `cur/`), if any.
    pub quota: Option<u64>,
}

/// One transaction's delivery to local mailboxes.
#[derive(Debug, Clone)]
pub struct LocalDelivery<'a> {
    /// MAIL FROM address without angle brackets; empty for the null
    /// reverse-path (bounces).
    pub reverse_path: String,
    /// Resolved, deduplicated mailboxes.
    pub recipients: Vec<LocalRecipient>,
    pub trace: TraceInfo,
    /// The message as received (dot-stuffing removed): in memory with
    /// CRLF line ends, or spooled.
    pub message: Message<'a>,
    /// Extra header lines (CRLF-terminated) placed after `Received:`,
    /// e.g. SmartPop's `X-Mailgate-Routed:`.
    pub extra_headers: String,
    /// Refuse a message already `Delivered-To:` the mailbox (a loop).
    /// Off for SmartPop, whose ISP's `Delivered-To:` legitimately names
    /// the local mailbox it is routed to.
    pub delivered_to_check: bool,
}

/// A copy now durable in a `new/` folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredCopy {
    pub mailbox: String,
    pub path: PathBuf,
    /// Size on disk (the `S=` of its name).
    pub size: u64,
}

/// Number of `Received:` fields in the header section.
pub fn count_received(message: &[u8]) -> usize {
    let mut scan = HeaderScan::new(&[]);
    scan.feed(message);
    scan.finish().received
}

fn too_many_hops() -> DeliveryError {
    DeliveryError::Permanent {
        code: 554,
        enhanced: "5.4.6",
        text: "Too many hops".into(),
    }
}

fn mail_loop() -> DeliveryError {
    DeliveryError::Permanent {
        code: 554,
        enhanced: "5.4.6",
        text: "Mail loop detected".into(),
    }
}

/// RFC 5321 6.3 loop detection by hop count: 554 5.4.6 past
/// [`MAX_RECEIVED`].
pub fn check_hops(message: &[u8]) -> Result<(), DeliveryError> {
    if count_received(message) > MAX_RECEIVED {
        Err(too_many_hops())
    } else {
        Ok(())
    }
}

/// The hop count of any message (in memory or spooled).
pub fn check_hops_of(message: &Message<'_>) -> Result<(), DeliveryError> {
    let facts = message
        .headers(&[])
        .map_err(|e| DeliveryError::from_io(&e))?;
    if facts.received > MAX_RECEIVED {
        Err(too_many_hops())
    } else {
        Ok(())
    }
}

/// A message that already carries `Delivered-To: MAILBOX` came back to the
/// mailbox it was delivered to (a forward loop): 554 5.4.6.
pub fn check_delivered_to(message: &[u8], mailbox: &str) -> Result<(), DeliveryError> {
    let mailboxes = [mailbox];
    let mut scan = HeaderScan::new(&mailboxes);
    scan.feed(message);
    if scan.finish().delivered_to.first() == Some(&true) {
        Err(mail_loop())
    } else {
        Ok(())
    }
}

/// The trace fields we put in front of one copy, CRLF line ends.
fn copy_headers(req: &LocalDelivery<'_>, r: &LocalRecipient, now: SystemTime) -> String {
    let rp = req.reverse_path.trim();
    let rp = rp
        .strip_prefix('<')
        .and_then(|p| p.strip_suffix('>'))
        .unwrap_or(rp);
    format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n{}{}",
        trace::sanitize_path(rp),
        r.mailbox,
        trace::received_line(&req.trace, Some(&r.original), now),
        req.extra_headers
    )
}

/// One copy on its way.
struct Copy {
    mailbox: String,
    md: Maildir,
    name: String,
    size: u64,
    staged: bool,
    published: bool,
    /// Published as a link: the `tmp/` name is still there.
    linked: bool,
}

/// Undo a failed transaction: remove staged and published files, then
/// fsync the `new/` folders that lost a name. Best effort; errors logged.
fn roll_back(copies: &[Copy]) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for c in copies {
        if c.linked {
            let _ = std::fs::remove_file(c.md.tmp_dir().join(&c.name));
        }
        let (path, dir) = if c.published {
            (c.md.new_dir().join(&c.name), c.md.new_dir())
        } else if c.staged {
            (c.md.tmp_dir().join(&c.name), c.md.tmp_dir())
        } else {
            continue;
        };
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::error!("delivery rollback: cannot remove {}: {e}", path.display());
            }
        }
        if c.published && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for d in dirs {
        if let Err(e) = crate::store::durable::fsync_dir(&d) {
            log::error!("delivery rollback: fsync {}: {e}", d.display());
        }
    }
}

/// Deliver one message to every local recipient, all or nothing. On `Ok`
/// every copy is durable in its `new/` and the SMTP layer may reply 250;
/// on `Err` no copy is left anywhere and the error says which reply to
/// send. Loop checks ([`check_hops`], [`check_delivered_to`]) run here too.
pub fn deliver_local(
    data_dir: &Path,
    req: &LocalDelivery<'_>,
) -> Result<Vec<DeliveredCopy>, DeliveryError> {
    deliver_into(data_dir, req, None, Publish::Rename)
}

/// A copy written and fsynced in `tmp/`, not yet in `new/`: the mailbox
/// and the unique file name (the same under `tmp/` and `new/`).
pub type StagedCopy = (String, String);

/// [`deliver_local`], calling `before_publish` once every copy is durable
/// in `tmp/` and before any is renamed into `new/`. SmartPop records there
/// which copies it staged, so that a crash during the renames is finished
/// at the next start instead of fetching the message again. An error from
/// it undoes the delivery. Copies are published as hard links, their
/// `tmp/` names removed once `new/` is synced ([`Maildir::publish_linked`]
/// says why SmartPop's records need that).
pub fn deliver_local_with(
    data_dir: &Path,
    req: &LocalDelivery<'_>,
    before_publish: &mut dyn FnMut(&[StagedCopy]) -> io::Result<()>,
) -> Result<Vec<DeliveredCopy>, DeliveryError> {
    deliver_into(data_dir, req, None, Publish::Linked(before_publish))
}

/// How staged copies move from `tmp/` to `new/`.
enum Publish<'a> {
    /// Renamed. For a delivery that is acknowledged only after `new/` is
    /// synced (SMTP, sendmail): a power cut that loses the rename loses an
    /// unacknowledged message, which its sender sends again. One link and
    /// one unlink fewer per copy than `Linked`.
    Rename,
    /// Linked, after calling the hook with the staged copies (SmartPop).
    Linked(&'a mut dyn FnMut(&[StagedCopy]) -> io::Result<()>),
}

/// The Maildir++ folder quarantined mail goes to (IMAP's `Junk`).
pub const JUNK_FOLDER: &str = ".Junk";

/// [`deliver_local`] into each recipient's Junk folder (Maildir++
/// `.Junk`, with its `maildirfolder` marker, made when missing): mail
/// that failed DMARC under a `p=quarantine` policy.
pub fn deliver_local_junk(
    data_dir: &Path,
    req: &LocalDelivery<'_>,
) -> Result<Vec<DeliveredCopy>, DeliveryError> {
    deliver_into(data_dir, req, Some(JUNK_FOLDER), Publish::Rename)
}

/// The Maildir a copy for `mailbox` goes to: its INBOX, or `folder`
/// under it (made, marker included, when it is not there yet).
fn target_maildir(data_dir: &Path, mailbox: &str, folder: Option<&str>) -> io::Result<Maildir> {
    let md = Maildir::for_mailbox(data_dir, mailbox)?;
    let Some(folder) = folder else {
        return Ok(md);
    };
    let sub = Maildir::at(md.root().join(folder));
    let marker = sub.root().join("maildirfolder");
    if !marker.exists() {
        sub.create()?;
        std::fs::File::create(&marker)?;
        crate::store::durable::fsync_dir(sub.root())?;
    }
    Ok(sub)
}

fn deliver_into(
    data_dir: &Path,
    req: &LocalDelivery<'_>,
    folder: Option<&str>,
    publish: Publish<'_>,
) -> Result<Vec<DeliveredCopy>, DeliveryError> {
    let mailboxes: Vec<&str> = req.recipients.iter().map(|r| r.mailbox.as_str()).collect();
    let facts = req
        .message
        .headers(&mailboxes)
        .map_err(|e| DeliveryError::from_io(&e))?;
    if facts.received > MAX_RECEIVED {
        return Err(too_many_hops());
    }
    let now = SystemTime::now();
    let (body_s, body_w) = req.message.sizes().map_err(|e| {
        log::error!("delivery: cannot read the message: {e}");
        DeliveryError::from_io(&e)
    })?;

    // Quota'd mailboxes are locked from their usage check until their copy
    // is published (Maildir::lock_quota), in name order so that two
    // transactions for the same mailboxes cannot deadlock.
    let mut quota_boxes: Vec<&str> = req
        .recipients
        .iter()
        .filter(|r| r.quota.is_some())
        .map(|r| r.mailbox.as_str())
        .collect();
    quota_boxes.sort_unstable();
    quota_boxes.dedup();
    let mut _quota_locks = Vec::with_capacity(quota_boxes.len());
    for mailbox in quota_boxes {
        let md = Maildir::for_mailbox(data_dir, mailbox).map_err(|e| {
            log::error!("refusing delivery to {mailbox:?}: {e}");
            DeliveryError::bad_mailbox()
        })?;
        _quota_locks.push(md.lock_quota().map_err(|e| {
            log::error!("quota lock of {}: {e}", md.root().display());
            DeliveryError::from_io(&e)
        })?);
    }

    // Prepare every copy (names, sizes, quota) before writing anything.
    let mut copies = Vec::with_capacity(req.recipients.len());
    let mut headers = Vec::with_capacity(req.recipients.len());
    for (i, r) in req.recipients.iter().enumerate() {
        let md = target_maildir(data_dir, &r.mailbox, folder).map_err(|e| {
            log::error!("refusing delivery to {:?}: {e}", r.mailbox);
            DeliveryError::bad_mailbox()
        })?;
        if req.delivered_to_check && facts.delivered_to.get(i) == Some(&true) {
            return Err(mail_loop());
        }
        let hdr = copy_headers(req, r, now);
        // The header block ends in CRLF, so sizes simply add up.
        let (hs, hw) = maildir::lf_sizes(&[hdr.as_bytes()]);
        let (size, vsize) = (hs + body_s, hw + body_w);
        if let Some(quota) = r.quota {
            let used = md.usage().map_err(|e| {
                log::error!("quota of {}: {e}", md.root().display());
                DeliveryError::from_io(&e)
            })?;
            if used.saturating_add(size) > quota {
                return Err(DeliveryError::mailbox_full(&r.mailbox));
            }
        }
        let name = maildir::unique_name(now, &req.trace.hostname, size, vsize);
        copies.push(Copy {
            mailbox: r.mailbox.clone(),
            md,
            name,
            size,
            staged: false,
            published: false,
            linked: false,
        });
        headers.push(hdr);
    }

    let result = write_all_copies(&mut copies, &headers, req.message, publish);
    match result {
        Ok(()) => Ok(copies
            .into_iter()
            .map(|c| DeliveredCopy {
                path: c.md.new_dir().join(&c.name),
                mailbox: c.mailbox,
                size: c.size,
            })
            .collect()),
        Err((path, e)) => {
            log::error!("delivery failed at {}: {e}", path.display());
            roll_back(&copies);
            Err(DeliveryError::from_io(&e))
        }
    }
}

/// Stage every copy, publish every copy, fsync every `new/`. The error
/// names the path that failed, for the log.
fn write_all_copies(
    copies: &mut [Copy],
    headers: &[String],
    message: Message<'_>,
    publish: Publish<'_>,
) -> Result<(), (PathBuf, io::Error)> {
    for (c, hdr) in copies.iter_mut().zip(headers) {
        c.md.stage(&c.name, |w| message.write_stored(hdr.as_bytes(), w))
            .map_err(|e| (c.md.tmp_dir().join(&c.name), e))?;
        c.staged = true;
    }
    let link = match publish {
        Publish::Rename => false,
        Publish::Linked(before_publish) => {
            let staged: Vec<StagedCopy> = copies
                .iter()
                .map(|c| (c.mailbox.clone(), c.name.clone()))
                .collect();
            before_publish(&staged).map_err(|e| (PathBuf::from("(before publish)"), e))?;
            true
        }
    };
    for c in copies.iter_mut() {
        let published = if link {
            c.md.publish_linked(&c.name)
        } else {
            c.md.publish(&c.name).map(|_| false)
        };
        c.linked = published.map_err(|e| (c.md.new_dir().join(&c.name), e))?;
        c.published = true;
    }
    // Group commit: one fsync per distinct new/ folder.
    let mut synced: Vec<PathBuf> = Vec::new();
    for c in copies.iter() {
        let dir = c.md.new_dir();
        if !synced.contains(&dir) {
            crate::store::durable::fsync_dir(&dir).map_err(|e| (dir.clone(), e))?;
            synced.push(dir);
        }
    }
    // Safe in new/: the tmp/ names may go (a cut that keeps one leaves a
    // second name of a delivered file, which SmartPop's restart and
    // tmp/ cleaning remove).
    for c in copies.iter_mut().filter(|c| c.linked) {
        let tmp = c.md.tmp_dir().join(&c.name);
        if let Err(e) = std::fs::remove_file(&tmp) {
            log::warn!("delivery: cannot remove {}: {e}", tmp.display());
        }
        c.linked = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durable::tests::TempDir;
    use std::fs;
    use std::fs::File;

    const MSG: &[u8] = b"From: a@example.org\r\nSubject: test\r\n\r\nHello\r\n.dot\r\n";

    fn trace_info() -> TraceInfo {
        TraceInfo {
            hostname: "mail.example.test".into(),
            helo: "client.example.org".into(),
            peer: "192.0.2.1".parse().unwrap(),
            protocol: "ESMTP",
            tls: None,
            auth_user: None,
            via: None,
            id: trace::new_id(SystemTime::now()),
        }
    }

    fn rcpt(mailbox: &str, quota: Option<u64>) -> LocalRecipient {
        LocalRecipient {
            mailbox: mailbox.into(),
            original: mailbox.into(),
            quota,
        }
    }

    fn req<'a>(rcpts: Vec<LocalRecipient>, message: &'a [u8]) -> LocalDelivery<'a> {
        LocalDelivery {
            extra_headers: String::new(),
            delivered_to_check: true,
            reverse_path: "a@example.org".into(),
            recipients: rcpts,
            trace: trace_info(),
            message: Message::Wire(message),
        }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        match fs::read_dir(dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => vec![],
        }
    }

    #[test]
    fn delivers_to_three_mailboxes() {
        let t = TempDir::new("deliver3");
        let mut r = req(
            vec![
                rcpt("alice@example.test", None),
                rcpt("bob@example.test", Some(1 << 20)),
                rcpt("carol@other.test", None),
            ],
            MSG,
        );
        r.recipients[1].original = "robert+tag@example.test".into();
        let copies = deliver_local(t.path(), &r).unwrap();
        assert_eq!(copies.len(), 3);
        for c in &copies {
            let data = fs::read(&c.path).unwrap();
            assert_eq!(data.len() as u64, c.size);
            let name = c.path.file_name().unwrap().to_str().unwrap();
            let (s, w) = maildir::parse_sizes(name);
            assert_eq!(s, Some(c.size));
            let lfs = data.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(w, Some(c.size + lfs));
            assert!(!data.contains(&b'\r'));
            let text = String::from_utf8(data).unwrap();
            let want_start = format!(
                "Return-Path: <a@example.org>\nDelivered-To: {}\nReceived: from client.example.org ([192.0.2.1])\n\tby mail.example.test (mailgate) with ESMTP id ",
                c.mailbox
            );
            assert!(text.starts_with(&want_start), "{text}");
            assert!(text.ends_with("\nFrom: a@example.org\nSubject: test\n\nHello\n.dot\n"));
            let md = Maildir::for_mailbox(t.path(), &c.mailbox).unwrap();
            assert_eq!(files(&md.tmp_dir()), Vec::<PathBuf>::new());
            assert_eq!(files(&md.new_dir()), vec![c.path.clone()]);
        }
        let bob = fs::read_to_string(&copies[1].path).unwrap();
        assert!(bob.contains("\tfor <robert+tag@example.test>; "));
    }

    #[test]
    fn delivers_from_a_file_tail_as_from_memory() {
        let t = TempDir::new("deliver-tail");
        let msg: &[u8] =
            b"From: a@example.org\r\nSubject: t\r\n\r\nline\r\n.dot\r\nbare\rCR\r\nend";
        let path = t.path().join("staged");
        fs::write(&path, msg).unwrap();
        let file = File::open(&path).unwrap();
        let whole =
            deliver_local(t.path(), &req(vec![rcpt("bob@example.test", None)], msg)).unwrap();
        let want = fs::read(&whole[0].path).unwrap();
        let want_body: &[u8] = b"From: a@example.org\nSubject: t\n\nline\n.dot\nbare\rCR\nend";
        assert!(want.ends_with(want_body));
        // Every split, even between a CR and its LF, gives the same copy.
        for split in 0..=msg.len() {
            let mut r = req(vec![rcpt("bob@example.test", None)], &msg[..split]);
            r.message = Message::Tail {
                head: &msg[..split],
                file: &file,
                offset: split as u64,
            };
            let got = deliver_local_with(t.path(), &r, &mut |_| Ok(())).unwrap();
            let data = fs::read(&got[0].path).unwrap();
            assert!(data.ends_with(want_body), "split {split}");
            assert_eq!(data.len() as u64, got[0].size, "split {split}");
            let name =
                |c: &DeliveredCopy| c.path.file_name().unwrap().to_str().unwrap().to_string();
            let sizes = maildir::parse_sizes(&name(&got[0]));
            // S= is the size on disk, W= adds one octet per LF.
            let lfs = data.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(
                sizes,
                (Some(got[0].size), Some(got[0].size + lfs)),
                "split {split}"
            );
        }
    }

    #[test]
    fn null_reverse_path_and_hostile_sender() {
        let t = TempDir::new("deliver-null");
        let mut r = req(vec![rcpt("bob@example.test", None)], MSG);
        r.reverse_path = String::new();
        let c = deliver_local(t.path(), &r).unwrap();
        assert!(fs::read_to_string(&c[0].path)
            .unwrap()
            .starts_with("Return-Path: <>\n"));
        r.reverse_path = "<x@y>\r\nX-Injected: 1".into();
        r.trace.helo = "evil\r\nX-Injected: 1".into();
        let c = deliver_local(t.path(), &r).unwrap();
        let text = fs::read_to_string(&c[0].path).unwrap();
        assert!(!text.contains("\nX-Injected"), "{text}");
    }

    #[test]
    fn failure_at_stage_leaves_nothing() {
        let t = TempDir::new("deliver-stage-fail");
        // carol's Maildir path is a file: staging her copy fails.
        let dom = t.path().join("mail/example.test");
        fs::create_dir_all(&dom).unwrap();
        fs::write(dom.join("carol"), b"not a folder").unwrap();
        let r = req(
            vec![
                rcpt("alice@example.test", None),
                rcpt("bob@example.test", None),
                rcpt("carol@example.test", None),
            ],
            MSG,
        );
        let err = deliver_local(t.path(), &r).unwrap_err();
        assert_eq!(err.to_string(), "451 4.3.0 Local error in processing");
        assert!(!err.is_permanent());
        for who in ["alice", "bob"] {
            let md = Maildir::for_mailbox(t.path(), &format!("{who}@example.test")).unwrap();
            assert_eq!(files(&md.tmp_dir()), Vec::<PathBuf>::new());
            assert_eq!(files(&md.new_dir()), Vec::<PathBuf>::new());
        }
    }

    #[test]
    fn failure_at_publish_rolls_back_published_copies() {
        let t = TempDir::new("deliver-publish-fail");
        // carol has tmp/ but her new/ is a file: staging works, the rename
        // into new/ fails after alice's and bob's copies were published.
        let carol = Maildir::for_mailbox(t.path(), "carol@example.test").unwrap();
        fs::create_dir_all(carol.tmp_dir()).unwrap();
        fs::create_dir_all(carol.cur_dir()).unwrap();
        fs::write(carol.new_dir(), b"not a folder").unwrap();
        let r = req(
            vec![
                rcpt("alice@example.test", None),
                rcpt("bob@example.test", None),
                rcpt("carol@example.test", None),
            ],
            MSG,
        );
        assert!(deliver_local(t.path(), &r).is_err());
        for who in ["alice", "bob", "carol"] {
            let md = Maildir::for_mailbox(t.path(), &format!("{who}@example.test")).unwrap();
            assert_eq!(files(&md.tmp_dir()), Vec::<PathBuf>::new(), "{who} tmp");
            if who != "carol" {
                assert_eq!(files(&md.new_dir()), Vec::<PathBuf>::new(), "{who} new");
            }
        }
        // The retry after fixing the folder delivers exactly one copy each.
        fs::remove_file(carol.new_dir()).unwrap();
        assert_eq!(deliver_local(t.path(), &r).unwrap().len(), 3);
        for who in ["alice", "bob", "carol"] {
            let md = Maildir::for_mailbox(t.path(), &format!("{who}@example.test")).unwrap();
            assert_eq!(files(&md.new_dir()).len(), 1, "{who}");
        }
    }

    #[test]
    fn quota() {
        let t = TempDir::new("deliver-quota");
        let r = req(vec![rcpt("bob@example.test", None)], MSG);
        let first = deliver_local(t.path(), &r).unwrap();
        let size = first[0].size;
        // Room for exactly one more copy (the next one is the same size,
        // give or take the id; allow a few bytes).
        let r = req(vec![rcpt("bob@example.test", Some(2 * size + 4))], MSG);
        deliver_local(t.path(), &r).unwrap();
        let err = deliver_local(t.path(), &r).unwrap_err();
        assert_eq!(err.code(), 452);
        assert_eq!(err.enhanced(), "4.2.2");
        assert!(err.text().starts_with("Mailbox full"));
        // A full mailbox fails the whole transaction, the others get nothing.
        let r = req(
            vec![
                rcpt("alice@example.test", None),
                rcpt("bob@example.test", Some(1)),
            ],
            MSG,
        );
        assert_eq!(deliver_local(t.path(), &r).unwrap_err().enhanced(), "4.2.2");
        let alice = Maildir::for_mailbox(t.path(), "alice@example.test").unwrap();
        assert_eq!(files(&alice.new_dir()), Vec::<PathBuf>::new());
    }

    #[test]
    fn quota_holds_under_concurrency() {
        let t = TempDir::new("deliver-quota-race");
        let mut big = b"Subject: big\r\n\r\n".to_vec();
        while big.len() < 60_000 {
            big.extend_from_slice(&[b'x'; 99]);
            big.extend_from_slice(b"\r\n");
        }
        let quota = 100 * 1024;
        let barrier = std::sync::Barrier::new(6);
        let results: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    scope.spawn(|| {
                        // Also the other order for a second mailbox: no deadlock.
                        let r = req(
                            vec![
                                rcpt("bob@example.test", Some(quota)),
                                rcpt("alice@example.test", Some(quota)),
                            ],
                            &big,
                        );
                        barrier.wait();
                        deliver_local(t.path(), &r).is_ok()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{results:?}");
        for mb in ["bob@example.test", "alice@example.test"] {
            let md = Maildir::for_mailbox(t.path(), mb).unwrap();
            assert!(md.usage().unwrap() <= quota);
        }
    }

    #[test]
    fn refuses_unsafe_mailboxes() {
        let t = TempDir::new("deliver-unsafe");
        for bad in [
            "../x@example.test",
            "bob@..",
            "b/b@example.test",
            "nodomain",
        ] {
            let r = req(vec![rcpt(bad, None)], MSG);
            let err = deliver_local(t.path(), &r).unwrap_err();
            assert_eq!(
                err.to_string(),
                "553 5.1.3 Bad destination mailbox address syntax"
            );
        }
        assert_eq!(files(t.path()), Vec::<PathBuf>::new());
    }

    #[test]
    fn hop_count_and_delivered_to_loops() {
        let hops = |n: usize| {
            let mut m = Vec::new();
            for _ in 0..n {
                m.extend_from_slice(b"Received: from x by y; Thu, 01 Jan 1970 00:00:00 +0000\r\n");
            }
            m.extend_from_slice(b"Subject: x\r\n\r\nReceived: in the body\r\n");
            m
        };
        assert_eq!(count_received(&hops(3)), 3);
        assert!(check_hops(&hops(MAX_RECEIVED)).is_ok());
        let err = check_hops(&hops(MAX_RECEIVED + 1)).unwrap_err();
        assert_eq!(err.to_string(), "554 5.4.6 Too many hops");
        assert!(err.is_permanent());
        let t = TempDir::new("deliver-loop");
        let big = hops(MAX_RECEIVED + 1);
        let r = req(vec![rcpt("bob@example.test", None)], &big);
        assert_eq!(deliver_local(t.path(), &r).unwrap_err().code(), 554);

        let table: &[(&[u8], bool)] = &[
            (b"Delivered-To: bob@example.test\r\n\r\n", true),
            (b"delivered-to:   <BOB@Example.Test>  \r\n\r\n", true),
            (b"Delivered-To:\r\n bob@example.test\r\n\r\n", true),
            (b"Delivered-To: bob@example.test\n\n", true),
            (b"Delivered-To: alice@example.test\r\n\r\n", false),
            (
                b"Subject: x\r\n\r\nDelivered-To: bob@example.test\r\n",
                false,
            ),
            (b"X-Delivered-To: bob@example.test\r\n\r\n", false),
            (b"Delivered-To: bob@example.test.evil\r\n\r\n", false),
            (b"", false),
            (b"\xff\xfe\0garbage no colon", false),
        ];
        for (msg, looped) in table {
            let got = check_delivered_to(msg, "bob@example.test");
            assert_eq!(got.is_err(), *looped, "{:?}", String::from_utf8_lossy(msg));
        }
        let r = req(
            vec![rcpt("bob@example.test", None)],
            b"Delivered-To: bob@example.test\r\n\r\nx\r\n",
        );
        assert_eq!(
            deliver_local(t.path(), &r).unwrap_err().to_string(),
            "554 5.4.6 Mail loop detected"
        );
    }

    #[test]
    fn io_error_classes() {
        let full = DeliveryError::from_io(&io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(full.to_string(), "452 4.3.1 Insufficient system storage");
        let quota = DeliveryError::from_io(&io::Error::from_raw_os_error(libc::EDQUOT));
        assert_eq!(quota.code(), 452);
        let eio = DeliveryError::from_io(&io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(eio.to_string(), "451 4.3.0 Local error in processing");
    }

    #[test]
    fn spooled_copies_match_in_memory_ones() {
        use crate::store::spool::{self, SpoolWriter};
        let t = TempDir::new("deliver-spooled");
        spool::prepare(t.path()).unwrap();
        let mut wire = b"Received: from a\r\nSubject: big\r\n\r\n".to_vec();
        for i in 0..5000 {
            wire.extend_from_slice(format!("line {i} with a bare\rCR\r\n").as_bytes());
        }
        wire.extend_from_slice(b"no newline at the end\r");
        let mut w = SpoolWriter::create(t.path()).unwrap();
        for piece in wire.chunks(4093) {
            w.write(piece).unwrap();
        }
        let spooled = w.finish().unwrap();
        let mem =
            deliver_local(t.path(), &req(vec![rcpt("bob@example.test", None)], &wire)).unwrap();
        let mut r = req(vec![rcpt("alice@example.test", None)], b"");
        r.message = Message::Stored(&spooled);
        let disk = deliver_local(t.path(), &r).unwrap();
        let (a, b) = (
            fs::read(&mem[0].path).unwrap(),
            fs::read(&disk[0].path).unwrap(),
        );
        let mut body = Vec::new();
        maildir::write_lf(&mut body, &[&wire]).unwrap();
        assert!(a.ends_with(&body) && b.ends_with(&body));
        for c in [&mem[0], &disk[0]] {
            let data = fs::read(&c.path).unwrap();
            assert_eq!(data.len() as u64, c.size);
            let lfs = data.iter().filter(|&&b| b == b'\n').count() as u64;
            let name = c.path.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                maildir::parse_sizes(name),
                (Some(c.size), Some(c.size + lfs))
            );
        }
        // Loop checks read the spooled header section too.
        let mut looped = SpoolWriter::create(t.path()).unwrap();
        looped
            .write(b"Delivered-To: bob@example.test\r\n\r\nx\r\n")
            .unwrap();
        let looped = looped.finish().unwrap();
        let mut r = req(vec![rcpt("bob@example.test", None)], b"");
        r.message = Message::Stored(&looped);
        assert_eq!(
            deliver_local(t.path(), &r).unwrap_err().to_string(),
            "554 5.4.6 Mail loop detected"
        );
    }

    #[test]
    fn odd_messages_sizes_match_disk() {
        let t = TempDir::new("deliver-odd");
        let table: &[&[u8]] = &[
            b"",
            b"no newline at all",
            b"bare\rCR\r\n",
            b"ends in CR\r",
            b"\r\n",
            b"\n\nbare LFs\n",
            b"8bit \xff\xfe and NUL \0\r\n",
        ];
        for msg in table {
            let r = req(vec![rcpt("bob@example.test", None)], msg);
            let c = deliver_local(t.path(), &r).unwrap();
            let data = fs::read(&c[0].path).unwrap();
            assert_eq!(data.len() as u64, c[0].size, "{msg:?}");
            let name = c[0].path.file_name().unwrap().to_str().unwrap();
            let lfs = data.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(
                maildir::parse_sizes(name),
                (Some(c[0].size), Some(c[0].size + lfs))
            );
        }
    }
}
