//! Modified UTF-7 mailbox names (RFC 3501 5.1.3), both ways.
//!
//! Owns: encoding a UTF-8 name for the wire and decoding a wire name to
//! UTF-8, refusing every form the RFC does not allow (so one name has one
//! spelling and two names never map onto one folder). Must not: know
//! about hierarchy separators or the Maildir layout.

/// The modified base64 alphabet: RFC 2152's with ',' for '/'.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Why a wire name is not valid modified UTF-7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Utf7Error {
    /// A byte outside printable US-ASCII appears unencoded.
    RawNonAscii,
    /// `&` without its closing `-`.
    Unterminated,
    /// A character outside the modified base64 alphabet inside `&...-`.
    BadBase64,
    /// Leftover bits that are not zero, or half a UTF-16 unit.
    BadPadding,
    /// A lone or reversed UTF-16 surrogate.
    BadSurrogate,
    /// A printable ASCII character that had to be written as itself
    /// (RFC 3501 5.1.3: "MUST represent themselves").
    NeedlessEncoding,
    /// Two encoded runs side by side (`&AOQ-&APY-`): the RFC requires one.
    SplitRun,
}

impl Utf7Error {
    pub fn reason(self) -> &'static str {
        match self {
            Utf7Error::RawNonAscii => {
                "mailbox name has 8-bit or control characters (use modified UTF-7)"
            }
            Utf7Error::Unterminated => "mailbox name has an unterminated &-sequence",
            Utf7Error::BadBase64 => "mailbox name has an invalid character in a &-sequence",
            Utf7Error::BadPadding => "mailbox name has a truncated &-sequence",
            Utf7Error::BadSurrogate => "mailbox name has an invalid UTF-16 surrogate",
            Utf7Error::NeedlessEncoding => "mailbox name encodes printable ASCII in a &-sequence",
            Utf7Error::SplitRun => "mailbox name has two adjacent &-sequences",
        }
    }
}

/// Whether a parse error's reason is one of [`Utf7Error::reason`]'s: the
/// command named a mailbox that is not modified UTF-7.
pub fn is_name_error(reason: &str) -> bool {
    use Utf7Error::*;
    [
        RawNonAscii,
        Unterminated,
        BadBase64,
        BadPadding,
        BadSurrogate,
        NeedlessEncoding,
        SplitRun,
    ]
    .iter()
    .any(|e| e.reason() == reason)
}

fn printable(c: u32) -> bool {
    (0x20..=0x7e).contains(&c)
}

/// UTF-8 to modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    let flush = |run: &mut Vec<u16>, out: &mut String| {
        if run.is_empty() {
            return;
        }
        out.push('&');
        let mut bits: u32 = 0;
        let mut n = 0;
        for unit in run.drain(..) {
            bits = (bits << 16) | u32::from(unit);
            n += 16;
            while n >= 6 {
                n -= 6;
                out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
            }
        }
        if n > 0 {
            out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
        }
        out.push('-');
    };
    for ch in name.chars() {
        if printable(ch as u32) {
            flush(&mut run, &mut out);
            out.push(ch);
            if ch == '&' {
                out.push('-');
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(ch.encode_utf16(&mut buf));
        }
    }
    flush(&mut run, &mut out);
    out
}

fn sextet(b: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == b).map(|p| p as u32)
}

/// Modified UTF-7 to UTF-8, strictly.
pub fn decode(wire: &[u8]) -> Result<String, Utf7Error> {
    let mut out = String::with_capacity(wire.len());
    let mut i = 0;
    let mut last_run_end = usize::MAX;
    while i < wire.len() {
        let b = wire[i];
        if !printable(u32::from(b)) {
            return Err(Utf7Error::RawNonAscii);
        }
        if b != b'&' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let start = i + 1;
        let Some(len) = wire[start..].iter().position(|&c| c == b'-') else {
            return Err(Utf7Error::Unterminated);
        };
        let body = &wire[start..start + len];
        i = start + len + 1;
        if body.is_empty() {
            out.push('&');
            continue;
        }
        if last_run_end == start - 1 {
            return Err(Utf7Error::SplitRun);
        }
        last_run_end = i;
        let mut bits: u32 = 0;
        let mut n = 0;
        let mut units: Vec<u16> = Vec::with_capacity(body.len() * 6 / 16);
        for &c in body {
            let v = sextet(c).ok_or(Utf7Error::BadBase64)?;
            bits = ((bits << 6) | v) & 0x3f_ffff;
            n += 6;
            if n >= 16 {
                n -= 16;
                units.push(((bits >> n) & 0xffff) as u16);
            }
        }
        // At most 5 bits may remain, and they must be zero (RFC 2152).
        if n >= 6 || (bits & ((1 << n) - 1)) != 0 {
            return Err(Utf7Error::BadPadding);
        }
        let mut it = units.into_iter().peekable();
        while let Some(u) = it.next() {
            let c = match u {
                0xd800..=0xdbff => {
                    let Some(lo @ 0xdc00..=0xdfff) = it.next() else {
                        return Err(Utf7Error::BadSurrogate);
                    };
                    0x10000 + ((u32::from(u) - 0xd800) << 10) + (u32::from(lo) - 0xdc00)
                }
                0xdc00..=0xdfff => return Err(Utf7Error::BadSurrogate),
                _ => u32::from(u),
            };
            if printable(c) {
                return Err(Utf7Error::NeedlessEncoding);
            }
            out.push(char::from_u32(c).ok_or(Utf7Error::BadSurrogate)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let rows: &[(&str, &str)] = &[
            ("INBOX", "INBOX"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("Tom & Jerry", "Tom &- Jerry"),
            ("&", "&-"),
            ("Gelöschte Elemente", "Gel&APY-schte Elemente"),
            ("😀", "&2D3eAA-"),
            ("a\u{7f}b", "a&AH8-b"),
            ("Ünïcödé", "&ANw-n&AO8-c&APY-d&AOk-"),
            ("", ""),
        ];
        for (utf8, wire) in rows {
            assert_eq!(encode(utf8), *wire, "encode {utf8}");
            assert_eq!(
                decode(wire.as_bytes()).as_deref(),
                Ok(*utf8),
                "decode {wire}"
            );
        }
    }

    #[test]
    fn refuses_invalid() {
        use Utf7Error::*;
        let rows: &[(&[u8], Utf7Error)] = &[
            (b"Entw\xc3\xbcrfe", RawNonAscii),
            (b"a\tb", RawNonAscii),
            (b"&APw", Unterminated),
            (b"&AP/-", BadBase64),
            (b"&APw=-", BadBase64),
            (b"&APx-", BadPadding),
            (b"&AP-", BadPadding),
            (b"&A-", BadPadding),
            (b"&2D0-", BadSurrogate),
            (b"&3gA-", BadSurrogate),
            (b"&AEE-", NeedlessEncoding),
            (b"&AOQ-&APY-", SplitRun),
        ];
        for (wire, err) in rows {
            assert_eq!(
                decode(wire),
                Err(*err),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        // Encoded runs separated by a direct character are fine.
        assert_eq!(decode(b"&AOQ-x&APY-").as_deref(), Ok("äxö"));
    }
}
