//! Wire hygiene for SMTP input, written once: a bounded framer that turns
//! the client's byte stream into command lines, DATA bodies and BDAT
//! chunks.
//!
//! Owns:
//! - command lines: only CRLF ends one; a line ending in a bare LF, or
//!   holding a bare CR, is refused; a line over its limit (RFC 5321
//!   4.5.3.1.4: 512 octets with the CRLF; RFC 4954 4: 12288 for SASL
//!   responses) is reported once, as soon as the limit is crossed, and the
//!   rest of it is skipped without being buffered;
//! - DATA (RFC 5321 4.1.1.4, 4.5.2): only CRLF "." CRLF ends it; dot
//!   unstuffing at the start of real (CRLF-ended) lines; a bare LF or a
//!   bare CR is normalised to CRLF but never ends the data (the SMTP
//!   smuggling fix, as Postfix 3.9 `smtpd_forbid_bare_newline = normalize`);
//! - BDAT chunks (RFC 3030): exactly N octets, binary-safe, untouched;
//! - the message size limit: body bytes past it are counted and dropped.
//!
//! Must not: interpret commands or reply; the session decides what a
//! frame means and switches the framer into DATA or chunk mode.

/// RFC 5321 4.5.3.1.4: command line, including the CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 4: a SASL response line, including the CRLF ("12288 octets is
/// considered to be a sufficient line length limit").
pub const MAX_SASL_LINE: usize = 12288;

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// What the framer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A command (or SASL response) line, without its CRLF.
    Line(Vec<u8>),
    /// The line went over its limit; the rest of it (up to the next LF) is
    /// skipped silently.
    TooLong,
    /// The line ended in LF without CR; it was discarded.
    BareLf,
    /// The line held a CR not followed by LF; it was discarded.
    BareCr,
    /// CRLF "." CRLF: the DATA body is complete. Back in command mode.
    DataEnd,
    /// The BDAT chunk is complete. Back in command mode.
    ChunkEnd,
}

/// The message being received: bytes up to `limit`, and the size of all
/// of it (so an oversized message can be refused after it has been read).
#[derive(Debug, Default)]
pub struct Body {
    data: Vec<u8>,
    size: u64,
    limit: u64,
}

impl Body {
    pub fn new(limit: u64) -> Body {
        Body {
            data: Vec::new(),
            size: 0,
            limit,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size <= self.limit {
            self.data.extend_from_slice(bytes);
        } else if self.data.capacity() > 0 {
            // Over the limit: keep counting, hold nothing.
            self.data = Vec::new();
        }
    }

    /// Octets received so far (after normalisation and unstuffing).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn overflowed(&self) -> bool {
        self.size > self.limit
    }

    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data)
    }
}

/// Where in the CRLF "." CRLF search the DATA reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataState {
    /// Just after a real CRLF (or at the start of the data).
    LineStart,
    /// A "." at a real line start.
    Dot,
    /// "." CR at a real line start.
    DotCr,
    /// Inside a line (or after a normalised bare LF / CR).
    Mid,
    /// After a CR inside a line.
    Cr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Command,
    Data(DataState),
    Chunk(u64),
}

#[derive(Debug)]
pub struct Framer {
    mode: Mode,
    line: Vec<u8>,
    line_limit: usize,
    /// Skipping the rest of an overlong line.
    skipping: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new()
    }
}

impl Framer {
    pub fn new() -> Framer {
        Framer {
            mode: Mode::Command,
            line: Vec::new(),
            line_limit: MAX_COMMAND_LINE,
            skipping: false,
        }
    }

    /// Sets the limit for the next command lines, including CRLF.
    pub fn set_line_limit(&mut self, limit: usize) {
        self.line_limit = limit;
    }

    /// After a 354 reply to DATA: read the body until CRLF "." CRLF.
    pub fn start_data(&mut self) {
        self.mode = Mode::Data(DataState::LineStart);
    }

    /// After a BDAT command: read exactly `size` octets (`size > 0`).
    pub fn start_chunk(&mut self, size: u64) {
        self.mode = Mode::Chunk(size);
    }

    pub fn in_command_mode(&self) -> bool {
        self.mode == Mode::Command
    }

    /// Bytes of a partial command line held (never more than the limit).
    pub fn buffered(&self) -> usize {
        self.line.len()
    }

    /// Consumes a prefix of `input`, stopping after the first complete
    /// frame. Body bytes go to `body`. Returns how many bytes were
    /// consumed (at least 1 when `input` is not empty) and the frame, if
    /// one was completed.
    pub fn feed(&mut self, input: &[u8], body: &mut Body) -> (usize, Option<Frame>) {
        match self.mode {
            Mode::Command => self.feed_command(input),
            Mode::Data(state) => self.feed_data(state, input, body),
            Mode::Chunk(remaining) => {
                let take = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
                body.push(input.get(..take).unwrap_or(input));
                let left = remaining - take as u64;
                if left == 0 {
                    self.mode = Mode::Command;
                    (take, Some(Frame::ChunkEnd))
                } else {
                    self.mode = Mode::Chunk(left);
                    (take, None)
                }
            }
        }
    }

    fn feed_command(&mut self, input: &[u8]) -> (usize, Option<Frame>) {
        let Some(lf) = input.iter().position(|&b| b == LF) else {
            if !self.skipping {
                // The line will be at least one octet (the LF) longer.
                if self.line.len() + input.len() + 1 > self.line_limit {
                    self.line = Vec::new();
                    self.skipping = true;
                    return (input.len(), Some(Frame::TooLong));
                }
                self.line.extend_from_slice(input);
            }
            return (input.len(), None);
        };
        let consumed = lf + 1;
        if self.skipping {
            self.skipping = false;
            return (consumed, None);
        }
        let part = input.get(..lf).unwrap_or_default();
        if self.line.len() + consumed > self.line_limit {
            self.line = Vec::new();
            return (consumed, Some(Frame::TooLong));
        }
        self.line.extend_from_slice(part);
        let mut line = std::mem::take(&mut self.line);
        if line.pop_if(|b| *b == CR).is_none() {
            return (consumed, Some(Frame::BareLf));
        }
        if line.contains(&CR) {
            return (consumed, Some(Frame::BareCr));
        }
        (consumed, Some(Frame::Line(line)))
    }

    fn feed_data(
        &mut self,
        mut state: DataState,
        input: &[u8],
        body: &mut Body,
    ) -> (usize, Option<Frame>) {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match state {
                DataState::Mid => {
                    // Copy the run of ordinary bytes in one go.
                    let rest = input.get(i..).unwrap_or_default();
                    let run = rest
                        .iter()
                        .position(|&c| c == CR || c == LF)
                        .unwrap_or(rest.len());
                    body.push(rest.get(..run).unwrap_or_default());
                    i += run;
                    match input.get(i) {
                        Some(&CR) => state = DataState::Cr,
                        // Bare LF: normalised, and not a line start for
                        // the end-of-data search.
                        Some(_) => body.push(b"\r\n"),
                        None => break,
                    }
                    i += 1;
                }
                DataState::Cr => {
                    body.push(b"\r\n");
                    if b == LF {
                        state = DataState::LineStart;
                        i += 1;
                    } else {
                        // Bare CR: normalised; look at `b` again mid-line.
                        state = DataState::Mid;
                    }
                }
                DataState::LineStart => {
                    if b == b'.' {
                        state = DataState::Dot;
                        i += 1;
                    } else {
                        state = DataState::Mid;
                    }
                }
                DataState::Dot => match b {
                    CR => {
                        state = DataState::DotCr;
                        i += 1;
                    }
                    LF => {
                        // "." bare-LF: not the end, not a stuffed dot.
                        body.push(b".\r\n");
                        state = DataState::Mid;
                        i += 1;
                    }
                    // A stuffed dot (RFC 5321 4.5.2): drop it.
                    _ => state = DataState::Mid,
                },
                DataState::DotCr => {
                    if b == LF {
                        self.mode = Mode::Command;
                        return (i + 1, Some(Frame::DataEnd));
                    }
                    // "." bare-CR: kept as a line of its own.
                    body.push(b".\r\n");
                    state = DataState::Mid;
                }
            }
        }
        self.mode = Mode::Data(state);
        (input.len(), None)
    }
}

/// A line from [`Lines`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The line, without its LF or CRLF.
    Text(Vec<u8>),
    /// The line went over the limit; it was skipped without being kept.
    TooLong,
}

/// The bounded line buffer for the protocols whose lines may end in a
/// bare LF (POP3 in both directions, RFC 1939 3 being read as clients
/// write it, and the replies SMTP and POP3 servers send back): bytes go
/// in, whole lines come out, and a line over its limit costs no more
/// memory than the limit, however long it runs.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    /// Inside a line already reported as too long: skip to its LF.
    discarding: bool,
}

impl Lines {
    pub fn push(&mut self, input: &[u8]) {
        self.buf.extend_from_slice(input);
    }

    /// Octets buffered and not yet taken as lines.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forgets everything buffered (after STARTTLS/STLS: what came in
    /// plaintext must not be read as if it came inside TLS).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// The next whole line whose length (line end included) is at most
    /// `limit`; None until one is complete.
    pub fn next(&mut self, limit: usize) -> Option<Line> {
        match self.buf.iter().position(|&b| b == LF) {
            Some(lf) => {
                let mut line: Vec<u8> = self.buf.drain(..=lf).collect();
                if std::mem::take(&mut self.discarding) || line.len() > limit {
                    return Some(Line::TooLong);
                }
                line.pop();
                if line.last() == Some(&CR) {
                    line.pop();
                }
                Some(Line::Text(line))
            }
            None => {
                if self.buf.len() >= limit {
                    // Cannot become a valid line: keep no more of it.
                    self.discarding = true;
                    self.buf.clear();
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes in command mode; returns
    /// the frames.
    fn commands(input: &[u8], step: usize) -> Vec<Frame> {
        let mut f = Framer::new();
        let mut body = Body::new(0);
        let mut frames = Vec::new();
        for piece in input.chunks(step) {
            let mut rest = piece;
            while !rest.is_empty() {
                let (n, frame) = f.feed(rest, &mut body);
                assert!(n > 0 || frame.is_some());
                assert!(f.buffered() <= MAX_COMMAND_LINE);
                rest = &rest[n..];
                frames.extend(frame);
            }
        }
        frames
    }

    /// Feeds a DATA body; returns (body, consumed, ended).
    fn data(input: &[u8], step: usize) -> (Vec<u8>, usize, bool) {
        let mut f = Framer::new();
        f.start_data();
        let mut body = Body::new(1 << 20);
        let mut consumed = 0;
        for piece in input.chunks(step) {
            let (n, frame) = f.feed(piece, &mut body);
            consumed += n;
            if frame == Some(Frame::DataEnd) {
                assert!(f.in_command_mode());
                return (body.take(), consumed, true);
            }
            assert_eq!(n, piece.len());
        }
        (body.take(), consumed, false)
    }

    fn line(s: &str) -> Frame {
        Frame::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn command_lines() {
        let at_limit = format!("{}\r\n", "x".repeat(MAX_COMMAND_LINE - 2));
        let over = format!("{}\r\nNOOP\r\n", "x".repeat(MAX_COMMAND_LINE - 1));
        let cases: Vec<(&[u8], Vec<Frame>)> = vec![
            (b"EHLO a\r\n", vec![line("EHLO a")]),
            (b"EHLO a\r\nNOOP\r\n", vec![line("EHLO a"), line("NOOP")]),
            (b"\r\n", vec![line("")]),
            (b"EHLO a\n", vec![Frame::BareLf]),
            (b"EHLO a\nNOOP\r\n", vec![Frame::BareLf, line("NOOP")]),
            (b"EH\rLO\r\n", vec![Frame::BareCr]),
            (b"NOOP\r\r\n", vec![Frame::BareCr]),
            (b"NO\0OP\xff\r\n", vec![Frame::Line(b"NO\0OP\xff".to_vec())]),
            (b"NOOP", vec![]),
            (
                at_limit.as_bytes(),
                vec![line(&"x".repeat(MAX_COMMAND_LINE - 2))],
            ),
            (over.as_bytes(), vec![Frame::TooLong, line("NOOP")]),
        ];
        for (input, want) in cases {
            for step in [1, 2, 3, 7, input.len().max(1)] {
                assert_eq!(
                    commands(input, step),
                    want,
                    "{:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn overlong_line_is_bounded_and_reported_once() {
        let mut input = vec![b'A'; 100 * 1024];
        input.extend_from_slice(b"\r\nQUIT\r\n");
        for step in [1, 100, 4096, input.len()] {
            assert_eq!(
                commands(&input, step),
                vec![Frame::TooLong, line("QUIT")],
                "step {step}"
            );
        }
        // Never terminated: still one report, nothing held.
        let input = vec![b'A'; 100 * 1024];
        assert_eq!(commands(&input, 1000), vec![Frame::TooLong]);
    }

    #[test]
    fn sasl_limit() {
        let mut f = Framer::new();
        f.set_line_limit(MAX_SASL_LINE);
        let long = format!("{}\r\n", "Q".repeat(4000));
        let (_, frame) = f.feed(long.as_bytes(), &mut Body::new(0));
        assert_eq!(frame, Some(line(&"Q".repeat(4000))));
    }

    #[test]
    fn data_end_and_normalisation() {
        // (input, stored body, bytes consumed or None when not ended)
        let cases: Vec<(&[u8], &[u8], Option<usize>)> = vec![
            (b".\r\n", b"", Some(3)),
            (b".\r\nNOOP\r\n", b"", Some(3)),
            (b"a\r\n.\r\n", b"a\r\n", Some(6)),
            (b"a\r\nb\r\n.\r\nQUIT\r\n", b"a\r\nb\r\n", Some(9)),
            (b"..a\r\n.\r\n", b".a\r\n", Some(8)),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", Some(10)),
            (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n", Some(11)),
            // Bare LF / CR are normalised and never end the data.
            (b"a\nb\r\n.\r\n", b"a\r\nb\r\n", Some(8)),
            (b"a\rb\r\n.\r\n", b"a\r\nb\r\n", Some(8)),
            (b"a\n.\nb", b"a\r\n.\r\nb", None),
            (b"a\r\n.\nb", b"a\r\n.\r\nb", None),
            (b"a\n.\r\nb", b"a\r\n.\r\nb", None),
            (b"a\r.\r\nb", b"a\r\n.\r\nb", None),
            (b"a\r\n.\rb", b"a\r\n.\r\nb", None),
            (b"a\r\n.\r.\r\n", b"a\r\n.\r\n.\r\n", None),
            (b"a\n..\nb", b"a\r\n..\r\nb", None),
            // CR CR LF "." CR LF does contain CRLF.CRLF literally.
            (b"a\r\r\n.\r\n", b"a\r\n\r\n", Some(7)),
            (b"\n.\r\n", b"\r\n.\r\n", None),
            (b"\r\n.\r\n", b"\r\n", Some(5)),
            // NUL and 8-bit bytes pass untouched.
            (b"\0\xff\xfe\r\n.\r\n", b"\0\xff\xfe\r\n", Some(8)),
            (b"a\r\n.", b"a\r\n", None),
            (b"a\r\n.\r", b"a\r\n", None),
        ];
        for (input, want, end) in cases {
            for step in [1, 2, 3, input.len()] {
                let (got, consumed, ended) = data(input, step);
                assert_eq!(
                    (String::from_utf8_lossy(&got), ended.then_some(consumed)),
                    (String::from_utf8_lossy(want), end),
                    "{:?} step {step}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn long_data_lines_are_fine() {
        let mut input = vec![b'x'; 50_000];
        input.extend_from_slice(b"\r\n.\r\n");
        let (got, _, ended) = data(&input, 777);
        assert!(ended);
        assert_eq!(got.len(), 50_002);
    }

    #[test]
    fn body_limit_counts_but_does_not_hold() {
        let mut f = Framer::new();
        f.start_data();
        let mut body = Body::new(10);
        let (_, frame) = f.feed(&[b'x'; 5000], &mut body);
        assert_eq!(frame, None);
        let (_, frame) = f.feed(b"\r\n.\r\n", &mut body);
        assert_eq!(frame, Some(Frame::DataEnd));
        assert!(body.overflowed());
        assert_eq!(body.size(), 5002);
        assert!(body.take().is_empty());
    }

    #[test]
    fn chunks_are_exact_and_raw() {
        let mut f = Framer::new();
        f.start_chunk(5);
        let mut body = Body::new(100);
        assert_eq!(f.feed(b"a\n", &mut body), (2, None));
        assert_eq!(
            f.feed(b".\r\nQUIT\r\n", &mut body),
            (3, Some(Frame::ChunkEnd))
        );
        assert!(f.in_command_mode());
        assert_eq!(body.take(), b"a\n.\r\n");
        assert_eq!(f.feed(b"QUIT\r\n", &mut body), (6, Some(line("QUIT"))));
    }

    #[test]
    fn lines_end_at_lf_and_overlong_ones_cost_nothing() {
        let mut l = Lines::default();
        l.push(b"one\r\ntwo\nthr");
        assert_eq!(l.next(10), Some(Line::Text(b"one".to_vec())));
        assert_eq!(l.next(10), Some(Line::Text(b"two".to_vec())));
        assert_eq!(l.next(10), None);
        l.push(b"ee\r\n");
        assert_eq!(l.next(10), Some(Line::Text(b"three".to_vec())));
        for _ in 0..1000 {
            l.push(&[b'x'; 100]);
            assert_eq!(l.next(10), None);
            assert!(l.buffered() <= 110, "an overlong line is not kept");
        }
        l.push(b"tail\r\nnext\r\n");
        assert_eq!(l.next(10), Some(Line::TooLong), "reported once, at its end");
        assert_eq!(l.next(10), Some(Line::Text(b"next".to_vec())));
        l.push(b"12345678\r\n");
        assert_eq!(
            l.next(10),
            Some(Line::Text(b"12345678".to_vec())),
            "exactly the limit"
        );
        l.push(b"123456789\r\n");
        assert_eq!(l.next(10), Some(Line::TooLong));
        l.push(b"junk");
        l.clear();
        l.push(b"\r\n");
        assert_eq!(l.next(10), Some(Line::Text(Vec::new())));
    }
}
