//! A message file read in bounded chunks for FETCH and SEARCH (on a
//! worker): its MIME structure in one pass, and a FETCH literal
//! (BODY[section]<partial>, RFC822, RFC822.TEXT ...) written to the
//! response a piece at a time, so a 50 MB message never sits in memory.
//!
//! A [`Literal`] keeps the open file and where it got to; the FETCH job
//! stops once its piece is full and a later job (after the socket has
//! drained, see `imap_in`) carries on from there. The file handle stays
//! open between pieces, so a rename for flags (\Seen) meanwhile does not
//! matter; message files are never rewritten (issue 13).
//!
//! Must not: run on the loop thread, or buffer more than a chunk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::proto::imap::mime::{
    HeaderFilter, Presenter, SectionRange, Structure, StructureBuilder,
};
use crate::proto::imap::search::{ContentFacts, ContentScan};
use crate::proto::imap::types::SearchKey;

/// One read from the file; presented (LF to CRLF) it is at most twice as
/// large.
pub const CHUNK: usize = 64 * 1024;

/// Reads `file` from `pos` to `end` in chunks, handing each to `f`;
/// stops early when `f` says so.
fn read_range(
    file: &File,
    mut pos: u64,
    end: u64,
    mut f: impl FnMut(&[u8]) -> bool,
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    while pos < end {
        let want = ((end - pos) as usize).min(CHUNK);
        let n = match file.read_at(&mut buf[..want], pos) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pos += n as u64;
        if !f(&buf[..n]) {
            break;
        }
    }
    Ok(pos)
}

/// The MIME structure of the whole file, one chunk at a time.
pub fn structure_of(file: &File) -> io::Result<Structure> {
    let mut b = StructureBuilder::new();
    read_range(file, 0, u64::MAX, |c| {
        b.feed(c);
        true
    })?;
    Ok(b.finish())
}

/// SEARCH's BODY/TEXT/HEADER facts of the whole file, one chunk at a time.
pub fn scan_of(file: &File, key: &SearchKey) -> io::Result<ContentFacts> {
    let mut scan = ContentScan::new(key);
    read_range(file, 0, u64::MAX, |c| {
        scan.feed(c);
        true
    })?;
    Ok(scan.finish())
}

/// How the stored bytes become the literal's bytes.
#[derive(Debug)]
enum Pipe {
    Plain,
    /// HEADER.FIELDS (NOT): filtered, then cut by the presenter.
    Fields(HeaderFilter),
}

/// One FETCH literal on its way out.
#[derive(Debug)]
pub struct Literal {
    pos: u64,
    end: u64,
    pipe: Pipe,
    presenter: Presenter,
    /// Octets still owed: exactly what `{len}` announced.
    left: u64,
    /// The source is read to its end (the filter finished).
    drained: bool,
}

impl Literal {
    /// The literal for `range` of `file` with RFC 3501 `partial`, and its
    /// length for the `{len}` that goes first. HEADER.FIELDS costs one
    /// extra pass over the header to learn the filtered length.
    pub fn new(
        file: &File,
        range: &SectionRange,
        partial: Option<(u32, u32)>,
    ) -> io::Result<(Literal, u64)> {
        let (span, pipe, size) = match range {
            SectionRange::Bytes(span) => (*span, Pipe::Plain, span.size),
            SectionRange::Fields { span, names, not } => {
                let mut filter = HeaderFilter::new(names, *not);
                let mut size = 0u64;
                let mut tmp = Vec::new();
                read_range(file, span.raw_start, span.raw_end, |c| {
                    filter.feed(&mut tmp, c);
                    size += tmp.len() as u64;
                    tmp.clear();
                    true
                })?;
                filter.finish(&mut tmp);
                size += tmp.len() as u64;
                let pipe = Pipe::Fields(HeaderFilter::new(names, *not));
                (*span, pipe, size)
            }
        };
        let len = Presenter::length(partial, size);
        let lit = Literal {
            pos: span.raw_start,
            end: span.raw_end.max(span.raw_start),
            pipe,
            presenter: Presenter::new(partial),
            left: len,
            drained: false,
        };
        Ok((lit, len))
    }

    /// Appends the literal's next bytes to `out` until `out` holds about
    /// `limit` octets; true once all of it is written.
    pub fn write(&mut self, file: &File, out: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
        let mut tmp = Vec::new();
        while self.left > 0 && out.len() < limit {
            if self.drained {
                // The file ended before its recorded structure did: it
                // changed under us, and the announced length cannot be
                // kept.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "message file shorter than its structure",
                ));
            }
            let room = (limit - out.len()).div_ceil(2).clamp(1, CHUNK) as u64;
            let stop = self.end.min(self.pos.saturating_add(room));
            let mut got = false;
            let pos = read_range(file, self.pos, stop, |c| {
                got = true;
                self.feed(&mut tmp, c);
                false
            })?;
            if !got {
                if let Pipe::Fields(f) = &mut self.pipe {
                    let mut rest = Vec::new();
                    f.finish(&mut rest);
                    self.presenter.feed(&mut tmp, &rest);
                }
                self.drained = true;
            }
            self.pos = pos;
            let n = (tmp.len() as u64).min(self.left) as usize;
            out.extend_from_slice(&tmp[..n]);
            self.left -= n as u64;
            tmp.clear();
        }
        Ok(self.left == 0)
    }

    fn feed(&mut self, tmp: &mut Vec<u8>, chunk: &[u8]) {
        match &mut self.pipe {
            Pipe::Plain => self.presenter.feed(tmp, chunk),
            Pipe::Fields(f) => {
                let mut filtered = Vec::new();
                f.feed(&mut filtered, chunk);
                self.presenter.feed(tmp, &filtered);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::imap::mime::{self, filter_header};
    use crate::proto::imap::types::{Section, SectionText};
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> File {
        let dir = std::env::temp_dir().join(format!(
            "mailgate-imap-body-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        let mut f = File::create(&dir).unwrap();
        f.write_all(bytes).unwrap();
        let f = File::open(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        f
    }

    fn message() -> Vec<u8> {
        let mut m = b"From: a@example.test\nSubject: hi\nX-Long: 1\n\n".to_vec();
        for i in 0..40_000 {
            m.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        m
    }

    /// Written in pieces of any size, the literal is exactly what the
    /// in-memory presentation gives.
    fn streamed(
        file: &File,
        range: &SectionRange,
        partial: Option<(u32, u32)>,
        limit: usize,
    ) -> Vec<u8> {
        let (mut lit, len) = Literal::new(file, range, partial).unwrap();
        let mut all = Vec::new();
        loop {
            let mut out = Vec::new();
            let done = lit.write(file, &mut out, limit).unwrap();
            assert!(out.len() <= limit + 2 * CHUNK);
            all.extend_from_slice(&out);
            if done {
                break;
            }
        }
        assert_eq!(all.len() as u64, len);
        all
    }

    #[test]
    fn pieces_match_the_whole() {
        let m = message();
        let file = file_with(&m);
        let st = structure_of(&file).unwrap();
        assert_eq!(st, mime::structure(&m));
        let whole = String::from_utf8(m.clone()).unwrap().replace('\n', "\r\n");
        let all = SectionRange::Bytes(st.parts[0].whole());
        for limit in [1, 7, 1000, CHUNK, 1 << 20] {
            assert_eq!(streamed(&file, &all, None, limit), whole.as_bytes());
        }
        let p = streamed(&file, &all, Some((100_000, 5000)), 999);
        assert_eq!(p, &whole.as_bytes()[100_000..105_000]);
        let p = streamed(&file, &all, Some((10_000_000, 5)), 999);
        assert!(p.is_empty());
        let text = st.section(&Section {
            part: vec![],
            text: Some(SectionText::Text),
        });
        let text = streamed(&file, &text.unwrap(), None, 4096);
        assert!(whole.ends_with(std::str::from_utf8(&text).unwrap()));
        assert!(text.starts_with(b"line 0\r\n"));
    }

    #[test]
    fn header_fields_stream_with_their_length() {
        let m = message();
        let file = file_with(&m);
        let st = structure_of(&file).unwrap();
        let names = vec!["subject".to_string(), "x-long".to_string()];
        for not in [false, true] {
            let r = SectionRange::Fields {
                span: st.parts[0].header,
                names: names.clone(),
                not,
            };
            let header = &m[..st.parts[0].header.raw_end as usize];
            let want = filter_header(header, &names, not);
            for limit in [1, 5, 4096] {
                assert_eq!(streamed(&file, &r, None, limit), want);
            }
            assert_eq!(streamed(&file, &r, Some((3, 4)), 2), &want[3..7]);
        }
    }

    #[test]
    fn a_file_cut_short_is_an_error_not_a_wrong_length() {
        let m = message();
        let st = mime::structure(&m);
        let file = file_with(&m[..1000]);
        let r = SectionRange::Bytes(st.parts[0].whole());
        let (mut lit, _) = Literal::new(&file, &r, None).unwrap();
        let mut out = Vec::new();
        let r = loop {
            match lit.write(&file, &mut out, 1 << 20) {
                Ok(false) => continue,
                other => break other,
            }
        };
        assert!(r.is_err());
    }
}
