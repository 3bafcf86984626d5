//! Message fingerprints: how SmartPop knows a message it collected again
//! when the server renumbered its folder (a new IMAP UIDVALIDITY makes
//! every recorded UID meaningless, RFC 3501 section 2.3.1.1).
//!
//! Owns: the fingerprint of a message, its Message-ID field (RFC 5322
//! section 3.6.4) hashed to 64 bits plus its size in octets, and finding
//! that field in a header block. The hash keeps each record one short
//! line however long the Message-ID is (bounded memory and file), and the
//! size guards against two messages that share an ID. Must not: decide
//! what to fetch (that is `imap_client`).

/// What a collected message is recognized by after a UIDVALIDITY change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// FNV-1a of the Message-ID value without whitespace.
    pub id: u64,
    /// The message's size as fetched (IMAP RFC822.SIZE).
    pub size: u64,
}

impl Fingerprint {
    /// The fingerprint of a message whose header block starts `head`;
    /// None without a Message-ID (such a message cannot be recognized).
    pub fn of(head: &[u8], size: u64) -> Option<Fingerprint> {
        message_id_hash(head).map(|id| Fingerprint { id, size })
    }

    /// The records file form, `HEX/SIZE`.
    pub fn to_field(&self) -> String {
        format!("{:016x}/{}", self.id, self.size)
    }

    pub fn parse_field(s: &str) -> Option<Fingerprint> {
        let (id, size) = s.split_once('/')?;
        if id.len() != 16 || size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Fingerprint {
            id: u64::from_str_radix(id, 16).ok()?,
            size: size.parse().ok()?,
        })
    }
}

/// The hash of the first Message-ID field in the header block `head`
/// (which may go on past the header; the blank line ends the search).
/// Folding and whitespace are dropped, so `<a@b>` hashes the same in
/// every form a server may give back.
pub fn message_id_hash(head: &[u8]) -> Option<u64> {
    let mut value: Option<Vec<u8>> = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        match &mut value {
            Some(v) if folded => v.extend_from_slice(line),
            Some(_) => break,
            None if line.is_empty() => return None,
            None if folded => {}
            None => {
                if let Some(colon) = line.iter().position(|&b| b == b':') {
                    if line[..colon]
                        .trim_ascii()
                        .eq_ignore_ascii_case(b"message-id")
                    {
                        value = Some(line[colon + 1..].to_vec());
                    }
                }
            }
        }
    }
    let value = value?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut any = false;
    for &b in value.iter().filter(|b| !b.is_ascii_whitespace()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        any = true;
    }
    any.then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_field_in_any_form() {
        let plain = message_id_hash(b"From: a\r\nMessage-ID: <x@y>\r\n\r\nbody").unwrap();
        assert_eq!(message_id_hash(b"message-id:<x@y>\n"), Some(plain));
        assert_eq!(
            message_id_hash(b"Subject: s\r\nMessage-Id:\r\n  <x@y>\r\nTo: b\r\n"),
            Some(plain)
        );
        assert_ne!(message_id_hash(b"Message-ID: <X@y>\r\n"), Some(plain));
    }

    #[test]
    fn none_without_one() {
        assert_eq!(
            message_id_hash(b"Subject: x\r\n\r\nMessage-ID: <in@body>\r\n"),
            None
        );
        assert_eq!(message_id_hash(b"Message-ID:   \r\n\r\n"), None);
        assert_eq!(message_id_hash(b""), None);
        assert_eq!(message_id_hash(b"\xff\xfe: \x00\r\n"), None);
    }

    #[test]
    fn field_roundtrip() {
        let f = Fingerprint::of(b"Message-ID: <a@b>\r\n", 4096).unwrap();
        assert_eq!(Fingerprint::parse_field(&f.to_field()), Some(f));
        for bad in [
            "",
            "/",
            "12/3",
            "zzzzzzzzzzzzzzzz/1",
            "0123456789abcdef/",
            "0123456789abcdef/-1",
        ] {
            assert_eq!(Fingerprint::parse_field(bad), None, "{bad}");
        }
    }
}
