//! DKIM signing of mail leaving through the outbox (called by `delivery`
//! where mail enters the queue): once, before the
//! message is queued, so the queue holds the signed message and every
//! retry sends the same bytes.
//!
//! Owns: which domain signs (the RFC5322.From domain, or the nearest
//! parent of it that mailgate holds, so that a bounce from
//! MAILER-DAEMON@mx.example.test is signed d=example.test and aligns
//! under relaxed DMARC), reading its keys (`data_dir/dkim/`), and the
//! `DKIM-Signature:` fields. Runs on a worker (it reads key files and
//! the spooled message). Must not: refuse mail: a message that cannot be
//! signed leaves unsigned, with a log line.

use std::time::SystemTime;

use crate::config::Config;
use crate::mailauth::dkim::Signer;
use crate::mailauth::keys;
use crate::store::message::Message;

/// Most octets of header section read for the From field.
const MAX_HEADER: usize = 256 * 1024;
/// Read size over a spooled message.
const CHUNK: usize = 64 * 1024;

/// The header section of a message read as a stream (bounded), for its
/// From field.
#[derive(Default)]
pub struct HeaderGrab {
    bytes: Vec<u8>,
    done: bool,
}

impl HeaderGrab {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        let room = MAX_HEADER.saturating_sub(self.bytes.len());
        self.bytes
            .extend_from_slice(chunk.get(..chunk.len().min(room)).unwrap_or_default());
        if let Some(end) = find_blank_line(&self.bytes) {
            self.bytes.truncate(end);
            self.done = true;
        } else if self.bytes.len() >= MAX_HEADER {
            self.done = true;
        }
    }

    /// The domain of the one From field (RFC 7489 6.6.1).
    pub fn sender_domain(&self) -> Result<String, String> {
        let text = String::from_utf8_lossy(&self.bytes);
        let mut values: Vec<String> = Vec::new();
        let mut current: Option<String> = None;
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.starts_with([' ', '\t']) {
                if let Some(v) = current.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if let Some(v) = current.take() {
                values.push(v);
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.trim_end().eq_ignore_ascii_case("from") {
                    current = Some(value.trim().to_string());
                }
            }
        }
        if let Some(v) = current.take() {
            values.push(v);
        }
        match values.as_slice() {
            [one] => crate::mailauth::dmarc::from_domain(one),
            [] => Err("no From field".into()),
            _ => Err("more than one From field".into()),
        }
    }
}

/// Offset just past the line end before the empty line ending the
/// header section (LF or CRLF line ends).
fn find_blank_line(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        if b.get(i) == Some(&b'\n') {
            let rest = b.get(i + 1..).unwrap_or_default();
            if rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n") {
                return Some(i + 1);
            }
        }
        i += 1;
    }
    None
}

/// The domain mailgate holds that signs for `from_domain`, with its
/// selector: the domain itself or its nearest parent with `dkim_selector`.
fn signing_domain(config: &Config, from_domain: &str) -> Option<(String, String)> {
    let mut d = from_domain.trim_end_matches('.').to_ascii_lowercase();
    loop {
        if let Some(sel) = config.domains.get(&d).and_then(|c| c.dkim_selector.clone()) {
            return Some((d, sel));
        }
        let (_, parent) = d.split_once('.')?;
        if !parent.contains('.') {
            // Never a bare TLD.
            return None;
        }
        d = parent.to_string();
    }
}

fn each_chunk(message: &Message<'_>, f: &mut dyn FnMut(&[u8])) -> std::io::Result<()> {
    match message {
        Message::Wire(m) => {
            for c in m.chunks(CHUNK) {
                f(c);
            }
            Ok(())
        }
        Message::Stored(s) => {
            let mut buf = vec![0u8; CHUNK];
            let mut offset = 0u64;
            loop {
                let n = s.read_at(&mut buf, offset)?;
                if n == 0 {
                    return Ok(());
                }
                f(buf.get(..n).unwrap_or_default());
                offset += n as u64;
            }
        }
        Message::Tail { head, file, offset } => {
            use std::os::unix::fs::FileExt;
            f(head);
            let mut buf = vec![0u8; CHUNK];
            let mut at = *offset;
            loop {
                let n = file.read_at(&mut buf, at)?;
                if n == 0 {
                    return Ok(());
                }
                f(buf.get(..n).unwrap_or_default());
                at += n as u64;
            }
        }
    }
}

/// The `DKIM-Signature:` fields (CRLF-terminated) to put on top of
/// `message` before it is queued; empty when its From domain does not
/// sign (or has no keys, which `mailgate check` warns about).
pub fn signatures(config: &Config, message: &Message<'_>) -> String {
    let mut grab = HeaderGrab::default();
    let mut signer = Signer::new();
    let mut error: Option<String> = None;
    // The header section first: no key, no hashing of the body.
    let read = each_chunk(message, &mut |c| {
        if !grab.done {
            grab.feed(c);
        }
    });
    if let Err(e) = read {
        log::error!("dkim: cannot read the message to sign: {e}");
        return String::new();
    }
    let Ok(from) = grab.sender_domain() else {
        return String::new();
    };
    let Some((domain, selector)) = signing_domain(config, &from) else {
        return String::new();
    };
    let ids = match keys::load(&config.server.data_dir, &domain, &selector) {
        Ok(ids) if !ids.is_empty() => ids,
        Ok(_) => {
            log::warn!("dkim: no keys for {domain} (selector {selector}): sent unsigned");
            return String::new();
        }
        Err(e) => {
            log::error!("dkim: {e}: sent unsigned");
            return String::new();
        }
    };
    let read = each_chunk(message, &mut |c| {
        if error.is_none() {
            if let Err(e) = signer.feed(c) {
                error = Some(e);
            }
        }
    });
    if let Some(e) = error.or_else(|| read.err().map(|e| e.to_string())) {
        log::error!("dkim: cannot sign for {domain}: {e}");
        return String::new();
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match signer.finish(&ids, now) {
        Ok(fields) => {
            log::info!("dkim: signed for {domain} (selector {selector})");
            fields.concat()
        }
        Err(e) => {
            log::error!("dkim: cannot sign for {domain}: {e}");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domain_of_the_header_section() {
        let mut g = HeaderGrab::default();
        g.feed(b"Subject: x\r\nFrom: A <a@Example.COM>\r\n");
        g.feed(b"To: b@c.test\r\n\r\nFrom: body@evil.test\r\n");
        assert_eq!(g.sender_domain().as_deref(), Ok("example.com"));
        let mut g = HeaderGrab::default();
        g.feed(b"From: a@x.test\nFrom: b@y.test\n\nbody\n");
        assert!(g.sender_domain().is_err());
        let mut g = HeaderGrab::default();
        g.feed(b"From:\r\n A <a@folded.test>\r\n\r\n");
        assert_eq!(g.sender_domain().as_deref(), Ok("folded.test"));
    }
}
