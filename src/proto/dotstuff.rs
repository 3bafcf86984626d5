//! Streaming dot-stuffing for multi-line data: POP3 RETR/TOP responses
//! (RFC 1939 3) and the SMTP DATA body (RFC 5321 4.5.2), and its reverse
//! for the RETR responses SmartPop collects.
//!
//! Owns: turning stored message text, whose lines end in LF (Maildir files),
//! CRLF, or a stray CR, into the wire form: every line ends in CRLF, a line
//! starting with "." gets a second "." ("byte-stuffing"), and `finish()`
//! appends the terminating ".CRLF". Optionally cuts the text the way TOP
//! wants it: the header, the blank line, then the first n body lines.
//! [`WireScan`] measures that wire form without making it (the SMTP client's
//! RFC 1870 SIZE). [`DotUnstuffer`] decodes a POP3 multi-line body back.
//!
//! Must not: read files or sockets, or hold a message: state is a few flags,
//! so memory stays bounded whatever the chunking (the POP3 driver feeds 64 KiB
//! file chunks; chunk boundaries may fall anywhere, even between CR and LF).
//!
//! A stray CR (not followed by LF) is ended as a line of its own. Passing it
//! through would let stored text carry `<CR>.<CR>`-style sequences that some
//! receivers take as the end of data (SMTP smuggling); the wire form we emit
//! has CR and LF only as CRLF pairs.

/// The line that ends a multi-line response or DATA (RFC 1939 3, RFC 5321 4.1.1.4).
const TERMINATOR: &[u8] = b".\r\n";
/// The only line end on the wire (RFC 1939 3, RFC 5321 2.3.8).
const CRLF: &[u8] = b"\r\n";

/// A streaming dot-stuffer; feed it with [`DotStuffer::encode`], end with
/// [`DotStuffer::finish`].
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// Nothing of the current line emitted yet (so a "." here gets doubled).
    at_line_start: bool,
    /// The previous chunk ended in CR: its line end depends on the next byte.
    pending_cr: bool,
    /// TOP: number of body lines wanted after the header (RFC 1939 7).
    body_line_limit: Option<usize>,
    /// Still inside the header (before the first empty line).
    in_header: bool,
    /// Body lines emitted so far.
    body_lines: usize,
    /// The TOP cut is reached: the rest of the input is dropped.
    saturated: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer that passes the whole text (RETR, SMTP DATA).
    pub fn new() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
            body_line_limit: None,
            in_header: true,
            body_lines: 0,
            saturated: false,
        }
    }

    /// A stuffer that keeps the header, the empty line after it, and the
    /// first `body_lines` lines of the body (POP3 TOP, RFC 1939 7).
    /// `None` passes everything.
    pub fn with_body_line_limit(body_lines: Option<usize>) -> Self {
        DotStuffer {
            body_line_limit: body_lines,
            ..Self::new()
        }
    }

    /// True once a TOP cut is reached: further input would be discarded, so
    /// the caller may stop reading and call [`DotStuffer::finish`].
    pub fn is_saturated(&self) -> bool {
        self.saturated
    }

    /// Encodes one chunk of text, appending the wire form to `out`.
    /// Output is at most twice the input plus 2 bytes.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // A line end becomes CRLF: room for one more octet per ~32 up
        // front spares most growth steps on a message of short lines.
        out.reserve(input.len() + input.len() / 32 + 4);
        let mut rest = input;
        while !self.saturated {
            if self.pending_cr {
                if rest.is_empty() {
                    // The byte after the CR is still to come.
                    break;
                }
                self.pending_cr = false;
                // CRLF split across chunks, or a stray CR: both end the line.
                if let Some(after_lf) = rest.strip_prefix(b"\n") {
                    rest = after_lf;
                }
                self.end_line(out);
                continue;
            }
            if rest.is_empty() {
                break;
            }
            let split = find_cr_or_lf(rest);
            let (run, tail) = rest.split_at(split.unwrap_or(rest.len()));
            if let Some(&first) = run.first() {
                if self.at_line_start && first == b'.' {
                    // RFC 1939 3 / RFC 5321 4.5.2: double a leading period.
                    out.push(b'.');
                }
                out.extend_from_slice(run);
                self.at_line_start = false;
            }
            match tail.split_first() {
                None => break,
                Some((&b'\n', after)) => {
                    rest = after;
                    self.end_line(out);
                }
                Some((_, after)) => {
                    // CR: wait for the next byte, which may be in the next chunk.
                    rest = after;
                    self.pending_cr = true;
                }
            }
        }
    }

    /// Ends an unterminated last line with CRLF and appends ".CRLF". The
    /// stuffer is then ready for another text with the same line limit.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.saturated && (self.pending_cr || !self.at_line_start) {
            out.extend_from_slice(CRLF);
        }
        out.extend_from_slice(TERMINATOR);
        *self = Self::with_body_line_limit(self.body_line_limit);
    }

    /// Emits CRLF and advances the TOP cut.
    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(CRLF);
        let was_empty = self.at_line_start;
        self.at_line_start = true;
        let Some(limit) = self.body_line_limit else {
            return;
        };
        if self.in_header {
            // RFC 5322 2.1: the first empty line separates header and body.
            if was_empty {
                self.in_header = false;
                self.saturated = limit == 0;
            }
        } else {
            self.body_lines = self.body_lines.saturating_add(1);
            self.saturated = self.body_lines >= limit;
        }
    }
}

/// Encodes a whole text at once, terminator included (bounces, tests).
pub fn stuff(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 16 + 8);
    let mut stuffer = DotStuffer::new();
    stuffer.encode(input, &mut out);
    stuffer.finish(&mut out);
    out
}

/// Measures a stored text the way [`DotStuffer`] sends it, fed in chunks:
/// the RFC 1870 3 message size (CRLF line ends, the line end added to an
/// unterminated last line, neither stuffing nor the final ".CRLF"), and
/// whether any octet has the high bit set (RFC 6152 8BITMIME).
#[derive(Debug, Clone, Default)]
pub struct WireScan {
    size: u64,
    /// The last byte was a CR: an LF right after it is the same line end.
    pending_cr: bool,
    /// Some of the current line is counted and its line end is not.
    mid_line: bool,
    eight_bit: bool,
}

impl WireScan {
    pub fn new() -> WireScan {
        WireScan::default()
    }

    pub fn feed(&mut self, input: &[u8]) {
        let mut rest = input;
        if self.pending_cr {
            if let Some((&first, after)) = rest.split_first() {
                self.pending_cr = false;
                if first == b'\n' {
                    rest = after;
                }
            }
        }
        self.eight_bit |= rest.iter().any(|&b| b >= 0x80);
        let mut i = 0;
        while i < rest.len() {
            match rest.get(i) {
                Some(b'\r') => {
                    // CR, CRLF: one line end, two octets on the wire.
                    self.size += 2;
                    self.mid_line = false;
                    match rest.get(i + 1) {
                        Some(b'\n') => i += 2,
                        Some(_) => i += 1,
                        None => {
                            self.pending_cr = true;
                            i += 1;
                        }
                    }
                }
                Some(b'\n') => {
                    self.size += 2;
                    self.mid_line = false;
                    i += 1;
                }
                _ => {
                    let run = rest
                        .get(i..)
                        .and_then(|r| r.iter().position(|&b| b == b'\r' || b == b'\n'))
                        .unwrap_or(rest.len() - i);
                    self.size += run as u64;
                    self.mid_line = true;
                    i += run;
                }
            }
        }
    }

    /// The RFC 1870 size of what was fed.
    pub fn size(&self) -> u64 {
        self.size + if self.mid_line { 2 } else { 0 }
    }

    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }
}

/// Where the decoder stands within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnstuffAt {
    /// After CRLF (or at the start): a "." here is stuffing or the end.
    LineStart,
    /// "." at line start.
    Dot,
    /// ".\r" at line start.
    DotCr,
    /// Inside a line.
    Mid,
    /// "\r" inside a line (not yet emitted).
    MidCr,
}

/// Un-dot-stuffs a POP3 multi-line body (RFC 1939 3) byte by byte as it
/// arrives, so neither a line nor the message needs a buffer of its own.
///
/// Lines end only at CRLF: a bare LF or CR is content and passes through
/// unchanged, and a lone "." ends the body only as a whole CRLF line
/// (treating a bare LF as a line end could end the body early and
/// deliver half a message).
#[derive(Debug, Clone)]
pub struct DotUnstuffer {
    at: UnstuffAt,
}

impl Default for DotUnstuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotUnstuffer {
    pub fn new() -> DotUnstuffer {
        DotUnstuffer {
            at: UnstuffAt::LineStart,
        }
    }

    /// Decodes from `input`, appending content to `out`; returns (octets
    /// used, terminator seen). Stops right after the terminator; what
    /// follows it is not consumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match self.at {
                UnstuffAt::LineStart => {
                    i += 1;
                    if b == b'.' {
                        self.at = UnstuffAt::Dot;
                    } else {
                        self.at = UnstuffAt::Mid;
                        self.mid_byte(b, out);
                    }
                }
                UnstuffAt::Dot => {
                    i += 1;
                    if b == b'\r' {
                        self.at = UnstuffAt::DotCr;
                    } else {
                        // Stuffed: the leading "." is dropped, the rest kept.
                        self.at = UnstuffAt::Mid;
                        self.mid_byte(b, out);
                    }
                }
                UnstuffAt::DotCr => {
                    i += 1;
                    if b == b'\n' {
                        self.at = UnstuffAt::LineStart;
                        return (i, true);
                    }
                    // ".\r" then not LF: a stuffed line starting with a bare CR.
                    self.at = UnstuffAt::MidCr;
                    self.mid_byte(b, out);
                }
                UnstuffAt::Mid => {
                    // Fast path: copy the run up to the next CR.
                    let rest = input.get(i..).unwrap_or_default();
                    let run = rest.iter().position(|&c| c == b'\r').unwrap_or(rest.len());
                    out.extend_from_slice(rest.get(..run).unwrap_or_default());
                    i += run;
                    if i < input.len() {
                        i += 1;
                        self.at = UnstuffAt::MidCr;
                    }
                }
                UnstuffAt::MidCr => {
                    i += 1;
                    self.mid_byte(b, out);
                }
            }
        }
        (i, false)
    }

    /// One byte in `Mid` or `MidCr` (the pending CR not yet emitted).
    fn mid_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        let pending_cr = self.at == UnstuffAt::MidCr;
        match (pending_cr, b) {
            (true, b'\n') => {
                out.extend_from_slice(CRLF);
                self.at = UnstuffAt::LineStart;
            }
            (true, b'\r') => {
                out.push(b'\r');
                self.at = UnstuffAt::MidCr;
            }
            (true, _) => {
                out.extend_from_slice(&[b'\r', b]);
                self.at = UnstuffAt::Mid;
            }
            (false, b'\r') => self.at = UnstuffAt::MidCr,
            (false, _) => {
                out.push(b);
                self.at = UnstuffAt::Mid;
            }
        }
    }
}

/// The first CR or LF in `s`: eight octets at a time (RETR sends every
/// message through here, and the size-optimised build does not vectorise
/// a byte loop; it was 13% of the server's CPU under pipelined RETR).
fn find_cr_or_lf(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The zero-byte test: its lowest set bit marks the first zero octet
    // (later ones may be marked falsely, the first never).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for chunk in chunks.by_ref() {
        let mut octets = [0u8; 8];
        octets.copy_from_slice(chunk);
        let word = u64::from_le_bytes(octets);
        let found = zero(word ^ (ONES * u64::from(b'\n'))) | zero(word ^ (ONES * u64::from(b'\r')));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map(|p| at + p)
}

#[cfg(test)]
mod tests {
    use super::find_cr_or_lf;

    #[test]
    fn the_word_scan_finds_the_first_line_end_like_a_byte_scan() {
        let slow = |s: &[u8]| s.iter().position(|&b| b == b'\r' || b == b'\n');
        let mut cases: Vec<Vec<u8>> = vec![vec![], b"\n".to_vec(), b"abc".to_vec()];
        // Every position in and around a word, with neighbours that trip a
        // borrow (0x00, 0x0b, 0x0c, 0x0e, 0x80, 0xff) before and after it.
        for len in 0..20 {
            for pos in 0..len {
                for fill in [b'a', 0x00, 0x0b, 0x0c, 0x0e, 0x80, 0xff, b'\r' + 1] {
                    for end in [b'\r', b'\n'] {
                        let mut v = vec![fill; len];
                        v[pos] = end;
                        cases.push(v.clone());
                        if pos + 1 < len {
                            v[pos + 1] = if end == b'\r' { b'\n' } else { b'\r' };
                            cases.push(v);
                        }
                    }
                }
            }
        }
        for c in &cases {
            assert_eq!(find_cr_or_lf(c), slow(c), "{c:?}");
        }
    }

    use super::*;

    /// (input, TOP body line limit, expected wire form)
    const CASES: &[(&[u8], Option<usize>, &[u8])] = &[
        (b"", None, b".\r\n"),
        (b"a\n", None, b"a\r\n.\r\n"),
        (b"a", None, b"a\r\n.\r\n"),
        (b"a\r\n", None, b"a\r\n.\r\n"),
        (b"a\nb\n", None, b"a\r\nb\r\n.\r\n"),
        (b".\n", None, b"..\r\n.\r\n"),
        (b".", None, b"..\r\n.\r\n"),
        (b"..x\n.y\r\n", None, b"...x\r\n..y\r\n.\r\n"),
        (b"a.b\n.\n", None, b"a.b\r\n..\r\n.\r\n"),
        (b"\n\n", None, b"\r\n\r\n.\r\n"),
        (b"a\rb\n", None, b"a\r\nb\r\n.\r\n"),
        (b"a\r", None, b"a\r\n.\r\n"),
        (b"\r.\r\n", None, b"\r\n..\r\n.\r\n"),
        (b"a\r\r\n", None, b"a\r\n\r\n.\r\n"),
        (b"x\n.\r\n.\n", None, b"x\r\n..\r\n..\r\n.\r\n"),
        (b"\0\xff\n", None, b"\0\xff\r\n.\r\n"),
        // TOP: header, blank line, n body lines.
        (
            b"H: 1\nG: 2\n\nb1\nb2\nb3\n",
            Some(0),
            b"H: 1\r\nG: 2\r\n\r\n.\r\n",
        ),
        (
            b"H: 1\n\n.b1\nb2\nb3\n",
            Some(2),
            b"H: 1\r\n\r\n..b1\r\nb2\r\n.\r\n",
        ),
        (b"H: 1\n\nb1", Some(5), b"H: 1\r\n\r\nb1\r\n.\r\n"),
        (b"H: 1\nG: 2", Some(0), b"H: 1\r\nG: 2\r\n.\r\n"),
        (b"H: 1\r\n\r\nb1\r\nb2", Some(1), b"H: 1\r\n\r\nb1\r\n.\r\n"),
        (b"\nb1\nb2\n", Some(1), b"\r\nb1\r\n.\r\n"),
        (b"H: 1\n\n", Some(3), b"H: 1\r\n\r\n.\r\n"),
    ];

    fn run(chunks: &[&[u8]], limit: Option<usize>) -> Vec<u8> {
        let mut s = DotStuffer::with_body_line_limit(limit);
        let mut out = Vec::new();
        for c in chunks {
            s.encode(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    fn show(b: &[u8]) -> String {
        String::from_utf8_lossy(b).escape_debug().to_string()
    }

    #[test]
    fn table_whole_and_every_split() {
        for &(input, limit, want) in CASES {
            assert_eq!(run(&[input], limit), want, "input {}", show(input));
            for i in 0..=input.len() {
                let (a, b) = input.split_at(i);
                assert_eq!(run(&[a, b], limit), want, "split {i} of {}", show(input));
                for j in i..=input.len() {
                    let (b1, b2) = b.split_at(j - i);
                    assert_eq!(run(&[a, b1, b2], limit), want, "splits {i},{j}");
                }
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(run(&bytes, limit), want, "bytewise {}", show(input));
        }
    }

    /// A plain, whole-text model of the encoder to compare against.
    fn model(input: &[u8]) -> Vec<u8> {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut cur = Vec::new();
        let mut i = 0;
        while i < input.len() {
            match input[i] {
                b'\r' => {
                    lines.push(std::mem::take(&mut cur));
                    if input.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                }
                b'\n' => lines.push(std::mem::take(&mut cur)),
                b => cur.push(b),
            }
            i += 1;
        }
        if !cur.is_empty() {
            lines.push(cur);
        }
        let mut out = Vec::new();
        for l in lines {
            if l.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(&l);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn random_texts_match_model_under_random_chunking() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const ALPHABET: &[u8] = b".\r\na \0\xff";
        for _ in 0..2000 {
            let len = (next() % 40) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let mut chunks = Vec::new();
            let mut rest = &input[..];
            while !rest.is_empty() {
                let n = 1 + (next() % 5) as usize;
                let (a, b) = rest.split_at(n.min(rest.len()));
                chunks.push(a);
                rest = b;
            }
            let got = run(&chunks, None);
            assert_eq!(got, model(&input), "input {}", show(&input));
            // The wire form never has a bare CR or LF.
            for (k, &b) in got.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(got.get(k + 1), Some(&b'\n'));
                }
                if b == b'\n' {
                    assert_eq!(k.checked_sub(1).and_then(|p| got.get(p)), Some(&b'\r'));
                }
            }
        }
    }

    #[test]
    fn saturation_and_reuse() {
        let mut s = DotStuffer::with_body_line_limit(Some(1));
        let mut out = Vec::new();
        s.encode(b"H: x\n\nbody\nmore\n", &mut out);
        assert!(s.is_saturated());
        s.encode(b"ignored\n", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"H: x\r\n\r\nbody\r\n.\r\n");
        // After finish the same stuffer serves the next text.
        out.clear();
        assert!(!s.is_saturated());
        s.encode(b".a\n\nb\nc", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"..a\r\n\r\nb\r\n.\r\n");
    }

    #[test]
    fn large_chunks_stay_proportional() {
        let chunk = vec![b'.'; 64 * 1024];
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        s.encode(&chunk, &mut out);
        assert_eq!(out.len(), chunk.len() + 1);
        assert_eq!(stuff(b"x\n"), b"x\r\n.\r\n");
    }

    #[test]
    fn wire_scan_matches_the_encoder() {
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        const ALPHABET: &[u8] = b".\r\na \xff";
        for _ in 0..2000 {
            let len = (next() % 30) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let wire = stuff(&input);
            // The size counts CRLF but neither stuffing nor the final dot.
            let dots = wire.windows(3).filter(|w| w == b"\n..").count()
                + usize::from(wire.starts_with(b".."));
            let want = (wire.len() - 3 - dots) as u64;
            let mut whole = WireScan::new();
            whole.feed(&input);
            assert_eq!(whole.size(), want, "input {}", show(&input));
            assert_eq!(whole.eight_bit(), input.contains(&0xff));
            let mut bytewise = WireScan::new();
            for b in input.chunks(1) {
                bytewise.feed(b);
            }
            assert_eq!(bytewise.size(), want, "bytewise {}", show(&input));
        }
        let mut s = WireScan::new();
        s.feed(b"Subject: hi\n\nhello\n");
        assert_eq!((s.size(), s.eight_bit()), (22, false));
    }

    fn unstuff(chunks: &[&[u8]]) -> (Vec<u8>, usize, bool) {
        let mut d = DotUnstuffer::new();
        let mut out = Vec::new();
        let (mut used, mut done) = (0, false);
        for c in chunks {
            assert!(!done, "fed after the end");
            let (u, end) = d.decode(c, &mut out);
            used += u;
            done = end;
        }
        (out, used, done)
    }

    #[test]
    fn unstuffing_table_in_every_chunking() {
        // (wire body after +OK, content)
        let cases: &[(&[u8], &[u8])] = &[
            (b".\r\n", b""),
            (b"a\r\n.\r\n", b"a\r\n"),
            (b"..\r\n.\r\n", b".\r\n"),
            (b"...\r\n.\r\n", b"..\r\n"),
            (b"..x\r\n.y\r\n.\r\n", b".x\r\ny\r\n"),
            (b"a.\r\n.\r\n", b"a.\r\n"),
            (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n"),
            (b"a\r.\r\n.\r\n", b"a\r.\r\n"),
            (b".\rx\r\n.\r\n", b"\rx\r\n"),
            (b".\r\rx\r\n.\r\n", b"\r\rx\r\n"),
            (b"a\r\r\n.\r\n", b"a\r\r\n"),
            (b".\n\r\n.\r\n", b"\n\r\n"),
            (b"\x00\xff\r\n.\r\n", b"\x00\xff\r\n"),
            (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
        ];
        for (wire, want) in cases {
            for chunk in 1..=wire.len() {
                let pieces: Vec<&[u8]> = wire.chunks(chunk).collect();
                let (out, used, done) = unstuff(&pieces);
                assert!(done, "{wire:?} chunk {chunk}");
                assert_eq!(used, wire.len());
                assert_eq!(&out[..], *want, "{wire:?} chunk {chunk}");
            }
        }
        // Only CRLF "." CRLF ends a body.
        for open in [&b"a\n.\n"[..], b"a\r.\r", b"a\r\n. \r\n", b"a\r\n.\n"] {
            let (_, used, done) = unstuff(&[open]);
            assert_eq!((used, done), (open.len(), false), "{open:?}");
        }
        // Stops exactly after the terminator.
        let (out, used, done) = unstuff(&[b"x\r\n.\r\n+OK\r\n"]);
        assert_eq!((&out[..], used, done), (&b"x\r\n"[..], 6, true));
    }

    #[test]
    fn unstuffing_reverses_stuffing() {
        // CRLF texts come back exactly from their wire form.
        for text in [
            &b"a\r\n.b\r\n..\r\n\r\n"[..],
            b"",
            b".\r\n",
            b"x\r\n.\r\ny\r\n",
        ] {
            let wire = stuff(text);
            let bytes: Vec<&[u8]> = wire.chunks(1).collect();
            let (out, used, done) = unstuff(&bytes);
            assert!(done);
            assert_eq!(used, wire.len());
            assert_eq!(out, text);
        }
    }
}
