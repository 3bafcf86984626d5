//! One accepted message body, wherever it waits: in memory in the wire
//! form (CRLF line ends; sendmail, bounces, SmartPop, small SMTP
//! messages), or in the spool in the stored form (LF line ends; SMTP
//! messages too big to keep in memory).
//!
//! Owns: the sizes a copy will have, writing the stored form into a copy,
//! and reading the header section as a stream (`HeaderScan`: the
//! `Received:` count and `Delivered-To:` loops) with bounded memory.
//! Must not: decide what a header means for delivery (`deliver` does), or
//! hold more of a spooled body than one buffer.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use crate::store::maildir;
use crate::store::spool::Spooled;

/// A header line is looked at up to this many octets (RFC 5322 2.1.1: a
/// line is at most 998 octets and CRLF). A field whose name or
/// `Delivered-To:` value runs past it is not recognised, which only lets
/// a sender hide a loop from the `Delivered-To:` check: the hop count
/// still stops it.
pub const HEADER_LINE_CAP: usize = 1000;

/// How much of a spooled body is read at a time for the header scan.
const SCAN_BUFFER: usize = 8 * 1024;

/// A message body to deliver.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// CRLF line ends (any other line ends are kept as they are).
    Wire(&'a [u8]),
    /// Already in the stored form.
    Stored(&'a Spooled),
    /// Wire form, `head` in memory (at least the whole header section,
    /// which the loop checks read) and the rest in `file` from `offset`
    /// to its end (a SmartPop message staged as it arrived).
    Tail {
        head: &'a [u8],
        file: &'a File,
        offset: u64,
    },
}

/// Octets of a `Tail` read at a time.
const TAIL_CHUNK: usize = 64 * 1024;

/// Reads `file` from `offset` to its end, a chunk at a time.
fn each_chunk(
    file: &File,
    offset: u64,
    f: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; TAIL_CHUNK];
    let mut offset = offset;
    loop {
        match file.read_at(&mut buf, offset) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                f(buf.get(..n).unwrap_or_default())?;
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

impl Message<'_> {
    /// `(S, W)`: octets as stored (LF line ends), and on the wire.
    pub fn sizes(&self) -> io::Result<(u64, u64)> {
        match self {
            Message::Wire(m) => Ok(maildir::lf_sizes(&[m])),
            Message::Stored(s) => Ok(s.sizes()),
            Message::Tail { head, file, offset } => {
                let (mut s, mut lfs) = (0u64, 0u64);
                let mut count = |b: &[u8]| {
                    s += b.len() as u64;
                    lfs += b.iter().filter(|&&c| c == b'\n').count() as u64;
                    Ok(())
                };
                let mut conv = maildir::CrlfToLf::default();
                conv.feed(head, &mut count)?;
                each_chunk(file, *offset, &mut |chunk| conv.feed(chunk, &mut count))?;
                conv.finish(&mut count)?;
                Ok((s, s + lfs))
            }
        }
    }

    /// Writes the stored form of the body after `head` (wire form, e.g.
    /// trace fields) to `w`.
    pub fn write_stored(&self, head: &[u8], w: &mut dyn Write) -> io::Result<()> {
        match self {
            Message::Wire(m) => maildir::write_lf(w, &[head, m]),
            Message::Stored(s) => {
                maildir::write_lf(w, &[head])?;
                s.copy_to(w)
            }
            Message::Tail {
                head: body_head,
                file,
                offset,
            } => {
                let mut conv = maildir::CrlfToLf::default();
                let mut emit = |b: &[u8]| w.write_all(b);
                conv.feed(head, &mut emit)?;
                conv.feed(body_head, &mut emit)?;
                each_chunk(file, *offset, &mut |chunk| conv.feed(chunk, &mut emit))?;
                conv.finish(&mut emit)
            }
        }
    }

    /// Scans the header section for the facts delivery checks, looking
    /// for `Delivered-To:` fields naming any of `mailboxes`.
    pub fn headers(&self, mailboxes: &[&str]) -> io::Result<HeaderFacts> {
        let mut scan = HeaderScan::new(mailboxes);
        match self {
            Message::Wire(m) | Message::Tail { head: m, .. } => {
                scan.feed(m);
            }
            Message::Stored(s) => {
                let mut buf = vec![0u8; SCAN_BUFFER];
                let mut offset = 0u64;
                loop {
                    let n = s.read_at(&mut buf, offset)?;
                    if n == 0 || scan.feed(buf.get(..n).unwrap_or_default()) {
                        break;
                    }
                    offset += n as u64;
                }
            }
        }
        Ok(scan.finish())
    }
}

/// What the header section says for the loop checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderFacts {
    /// `Received:` fields.
    pub received: usize,
    /// For each mailbox asked about: a `Delivered-To:` names it.
    pub delivered_to: Vec<bool>,
}

/// Which field the scan is inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Received,
    DeliveredTo,
    Other,
}

/// A field read so far (its continuation lines may follow).
#[derive(Debug)]
struct Field {
    kind: Kind,
    /// The value, for `Delivered-To:` only, up to the cap.
    value: Vec<u8>,
    /// Octets past the cap that are not white space: matches nothing.
    overlong: bool,
}

/// The header section (up to the first empty line, RFC 5322 2.1) read as
/// a stream: lines end in LF with an optional CR before it, so the wire
/// and the stored form read alike; a line starting with SP or HTAB
/// continues the field before it; a line without a colon is skipped.
#[derive(Debug)]
pub struct HeaderScan<'m> {
    mailboxes: &'m [&'m str],
    facts: HeaderFacts,
    /// The line under way, up to the cap.
    line: Vec<u8>,
    /// Octets of the line under way, all of them.
    line_len: usize,
    /// Past the cap, the line has more than white space.
    line_overlong: bool,
    field: Option<Field>,
    done: bool,
}

impl<'m> HeaderScan<'m> {
    pub fn new(mailboxes: &'m [&'m str]) -> HeaderScan<'m> {
        HeaderScan {
            mailboxes,
            facts: HeaderFacts {
                received: 0,
                delivered_to: vec![false; mailboxes.len()],
            },
            line: Vec::new(),
            line_len: 0,
            line_overlong: false,
            field: None,
            done: false,
        }
    }

    /// Feeds the next bytes; true once the header section has ended (the
    /// rest of the message need not be fed).
    pub fn feed(&mut self, mut input: &[u8]) -> bool {
        while !self.done && !input.is_empty() {
            let (part, rest, ended) = match input.iter().position(|&b| b == b'\n') {
                Some(lf) => (
                    input.get(..lf).unwrap_or_default(),
                    input.get(lf + 1..).unwrap_or_default(),
                    true,
                ),
                None => (input, &[][..], false),
            };
            self.take_part(part);
            if ended {
                self.end_line();
            }
            input = rest;
        }
        self.done
    }

    fn take_part(&mut self, part: &[u8]) {
        let room = HEADER_LINE_CAP.saturating_sub(self.line.len());
        let (kept, cut) = part.split_at(part.len().min(room));
        self.line.extend_from_slice(kept);
        if cut.iter().any(|b| !b.is_ascii_whitespace()) {
            self.line_overlong = true;
        }
        self.line_len += part.len();
    }

    /// The input ended (the message has no empty line, or no body).
    pub fn finish(mut self) -> HeaderFacts {
        if !self.done {
            if self.line_len > 0 {
                self.end_line();
            }
            self.end_field();
        }
        self.facts
    }

    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        let overlong = std::mem::take(&mut self.line_overlong);
        let len = std::mem::take(&mut self.line_len);
        if len == line.len() && line.last() == Some(&b'\r') {
            line.pop();
        }
        if len == 0 || (len == 1 && line.is_empty()) {
            // The empty line: end of the header section.
            self.end_field();
            self.done = true;
            return;
        }
        if let Some(field) = self.field.as_mut() {
            if matches!(line.first(), Some(b' ') | Some(b'\t')) {
                if field.kind == Kind::DeliveredTo {
                    let room = HEADER_LINE_CAP.saturating_sub(field.value.len());
                    let (kept, cut) = line.split_at(line.len().min(room));
                    field.value.extend_from_slice(kept);
                    field.overlong |= overlong || cut.iter().any(|b| !b.is_ascii_whitespace());
                }
                self.line = line;
                self.line.clear();
                return;
            }
        }
        self.end_field();
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // A continuation without a field, or junk: skipped.
            self.line = line;
            self.line.clear();
            return;
        };
        let name = line.get(..colon).unwrap_or_default().trim_ascii();
        let kind = if name.eq_ignore_ascii_case(b"Received") {
            Kind::Received
        } else if name.eq_ignore_ascii_case(b"Delivered-To") {
            Kind::DeliveredTo
        } else {
            Kind::Other
        };
        let value = if kind == Kind::DeliveredTo {
            line.get(colon + 1..).unwrap_or_default().to_vec()
        } else {
            Vec::new()
        };
        self.field = Some(Field {
            kind,
            value,
            overlong,
        });
        // Keep the allocation for the next line.
        self.line = line;
        self.line.clear();
    }

    fn end_field(&mut self) {
        let Some(field) = self.field.take() else {
            return;
        };
        match field.kind {
            Kind::Received => self.facts.received += 1,
            Kind::DeliveredTo if !field.overlong => {
                let v = field.value.trim_ascii();
                let v = v
                    .strip_prefix(b"<")
                    .and_then(|v| v.strip_suffix(b">"))
                    .unwrap_or(v);
                for (i, mailbox) in self.mailboxes.iter().enumerate() {
                    if v.eq_ignore_ascii_case(mailbox.as_bytes()) {
                        if let Some(hit) = self.facts.delivered_to.get_mut(i) {
                            *hit = true;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(input: &[u8], step: usize) -> HeaderFacts {
        let mailboxes = ["bob@example.test", "alice@example.test"];
        let mut s = HeaderScan::new(&mailboxes);
        for piece in input.chunks(step.max(1)) {
            if s.feed(piece) {
                break;
            }
        }
        s.finish()
    }

    #[test]
    fn header_facts_alike_in_any_pieces() {
        // (message, Received count, Delivered-To bob, alice)
        let table: &[(&[u8], usize, bool, bool)] = &[
            (b"", 0, false, false),
            (
                b"Received: a\r\nReceived: b\r\n\r\nReceived: body\r\n",
                2,
                false,
                false,
            ),
            (
                b"Received: a\nreceived : b\n\nReceived: body\n",
                2,
                false,
                false,
            ),
            (b"Received: no end of line", 1, false, false),
            (
                b"Received: a\r\n b folded\r\n\tc\r\nX: y\r\n\r\n",
                1,
                false,
                false,
            ),
            (b"Delivered-To: bob@example.test\r\n\r\n", 0, true, false),
            (
                b"delivered-to:   <BOB@Example.Test>  \r\n\r\n",
                0,
                true,
                false,
            ),
            (
                b"Delivered-To:\r\n bob@example.test\r\n\r\n",
                0,
                true,
                false,
            ),
            (b"Delivered-To: alice@example.test\n\n", 0, false, true),
            (
                b"Subject: x\r\n\r\nDelivered-To: bob@example.test\r\n",
                0,
                false,
                false,
            ),
            (b"X-Delivered-To: bob@example.test\r\n\r\n", 0, false, false),
            (
                b"Delivered-To: bob@example.test.evil\r\n\r\n",
                0,
                false,
                false,
            ),
            (
                b"\xff\xfe\0garbage no colon\r\nReceived: x\r\n",
                1,
                false,
                false,
            ),
            // White space past the cap does not matter; text does.
            (
                &[
                    b"Delivered-To: bob@example.test".as_slice(),
                    &[b' '; 3000],
                    b"\r\n\r\n",
                ]
                .concat(),
                0,
                true,
                false,
            ),
            (
                &[
                    b"Delivered-To: bob@example.test".as_slice(),
                    &[b' '; 3000],
                    b"x\r\n\r\n",
                ]
                .concat(),
                0,
                false,
                false,
            ),
        ];
        for (msg, received, bob, alice) in table {
            for step in [usize::MAX, 1, 3, 7] {
                let f = scan(msg, step.min(msg.len().max(1)));
                assert_eq!(
                    f.received,
                    *received,
                    "{:?} step {step}",
                    String::from_utf8_lossy(msg)
                );
                assert_eq!(
                    f.delivered_to,
                    [*bob, *alice],
                    "{:?} step {step}",
                    String::from_utf8_lossy(msg)
                );
            }
        }
    }

    #[test]
    fn stops_at_the_end_of_the_header_section() {
        let mailboxes = [];
        let mut s = HeaderScan::new(&mailboxes);
        assert!(!s.feed(b"Received: a\r\n"));
        assert!(s.feed(b"\r\nReceived: body\r\n"));
        assert_eq!(s.finish().received, 1);
    }
}
