//! One driver per connection role; each owns a socket and a sans-IO core.

pub mod pop3_fetch;
pub mod pop3_in;
pub mod smtp_in;
pub mod smtp_out;

/// An idle timeout is for awaiting the next command (RFC 5321 4.5.3.2.7,
/// RFC 1939 3), so only progress moves it: a complete command (the session
/// answers or asks for work) or, inside message data or an overlong line,
/// this many octets. A client trickling a byte at a time without ever
/// ending a line (slow loris) is cut off like a silent one, while a slow
/// uplink that moves 4 KiB per timeout keeps its connection.
pub const MIN_PROGRESS_BYTES: usize = 4096;
