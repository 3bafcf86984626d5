//! One TCP connection, plain or TLS, as a non-blocking byte pipe.
//!
//! Owns: the socket, the optional rustls session, the plaintext output
//! buffer, and the mio interest those imply (rustls's `tlsserver-mio`
//! pattern). Knows no protocol: drivers read plaintext from it, hand it to
//! a sans-IO core, and queue the core's replies here.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::Interest;

/// Bytes read from the socket per `read` call (and at most this much
/// plaintext is pulled out of rustls per call).
const READ_CHUNK: usize = 16 * 1024;

/// Output buffers above this size are released after they drain, so one
/// large reply (a POP3 RETR) does not pin memory for the connection's life.
const SHRINK_ABOVE: usize = 64 * 1024;

/// What a read attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// This many plaintext bytes were appended (maybe 0 during a TLS handshake).
    Data(usize),
    /// Nothing more to read now.
    WouldBlock,
    /// The peer closed its side (or the TLS session ended cleanly).
    Closed,
}

/// The byte pipe under a transport: a non-blocking TCP socket, or in
/// tests a scripted fake (partial reads and writes, WouldBlock, EOF).
pub trait Wire: Read + Write {
    fn set_nodelay(&self, on: bool) -> io::Result<()>;
    fn shutdown(&self) -> io::Result<()>;
}

impl Wire for TcpStream {
    fn set_nodelay(&self, on: bool) -> io::Result<()> {
        TcpStream::set_nodelay(self, on)
    }
    fn shutdown(&self) -> io::Result<()> {
        TcpStream::shutdown(self, std::net::Shutdown::Both)
    }
}

pub struct Transport<W: Wire = TcpStream> {
    sock: W,
    tls: Option<rustls::Connection>,
    /// Plaintext waiting to be written (into rustls or onto the socket).
    out: Vec<u8>,
    peer: SocketAddr,
}

impl<W: Wire> Transport<W> {
    pub fn new(sock: W, peer: SocketAddr) -> Transport<W> {
        // Replies are written whole, when ready; Nagle's algorithm would hold
        // the tail of one (a POP3 "+OK" line, the final ".") until the
        // peer's delayed ACK, 40 ms per command.
        let _ = sock.set_nodelay(true);
        Transport {
            sock,
            tls: None,
            out: Vec::new(),
            peer,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn socket(&mut self) -> &mut W {
        &mut self.sock
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True once a TLS session has finished its handshake.
    pub fn tls_established(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| !t.is_handshaking())
    }

    /// "TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384", for trace headers and logs.
    pub fn tls_description(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let version = tls.protocol_version()?;
        let suite = tls.negotiated_cipher_suite()?;
        let version = match version {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        };
        Some(format!("{version} with cipher {:?}", suite.suite()))
    }

    /// Starts a TLS server session (implicit TLS, or after STARTTLS/STLS once
    /// the plaintext "go ahead" reply has been flushed).
    pub fn start_tls_server(&mut self, config: &Arc<rustls::ServerConfig>) -> io::Result<()> {
        let conn = rustls::ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
        self.tls = Some(rustls::Connection::Server(conn));
        Ok(())
    }

    /// Starts a TLS client session towards `server_name`.
    pub fn start_tls_client(
        &mut self,
        config: &Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<()> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn =
            rustls::ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
        self.tls = Some(rustls::Connection::Client(conn));
        Ok(())
    }

    /// Queues plaintext for the peer; `flush` sends it.
    pub fn queue(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
    }

    /// Plaintext bytes not yet handed to the socket (or to rustls).
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// True when nothing at all waits to be written.
    pub fn is_flushed(&self) -> bool {
        self.out.is_empty() && !self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Reads what is available (at most `limit` plaintext bytes) into `input`.
    pub fn read(&mut self, input: &mut Vec<u8>, limit: usize) -> io::Result<ReadStatus> {
        match self.tls.as_mut() {
            None => read_plain(&mut self.sock, input, limit.min(READ_CHUNK)),
            Some(tls) => read_tls(tls, &mut self.sock, input, limit.min(READ_CHUNK)),
        }
    }

    /// Writes as much queued output as the socket takes.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_mut() {
            None => {
                while !self.out.is_empty() {
                    match self.sock.write(&self.out) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => {
                            self.out.drain(..n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(tls) => loop {
                if !self.out.is_empty() && !tls.is_handshaking() {
                    let n = tls.writer().write(&self.out)?;
                    self.out.drain(..n);
                }
                if !tls.wants_write() {
                    break;
                }
                match tls.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            },
        }
        if self.out.is_empty() && self.out.capacity() > SHRINK_ABOVE {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// The interest this connection needs: always readable (to see the peer
    /// close), writable while output or TLS records wait.
    pub fn interest(&self) -> Interest {
        if self.is_flushed() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// Sends a TLS close_notify (best effort) before the socket is dropped.
    pub fn close(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
        }
        let _ = self.flush();
        let _ = self.sock.shutdown();
    }
}

fn read_plain(sock: &mut impl Read, input: &mut Vec<u8>, limit: usize) -> io::Result<ReadStatus> {
    let mut buf = [0u8; READ_CHUNK];
    let want = limit.clamp(1, READ_CHUNK);
    loop {
        match sock.read(&mut buf[..want]) {
            Ok(0) => return Ok(ReadStatus::Closed),
            Ok(n) => {
                input.extend_from_slice(&buf[..n]);
                return Ok(ReadStatus::Data(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn read_tls(
    tls: &mut rustls::Connection,
    sock: &mut (impl Read + Write),
    input: &mut Vec<u8>,
    limit: usize,
) -> io::Result<ReadStatus> {
    // First hand out plaintext rustls already holds.
    if let Some(n) = take_plaintext(tls, input, limit)? {
        return Ok(n);
    }
    let mut closed = false;
    loop {
        match tls.read_tls(sock) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStatus::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if let Err(err) = tls.process_new_packets() {
        // Try to tell the peer why (the alert rustls queued) before failing.
        let _ = tls.write_tls(sock);
        return Err(io::Error::new(io::ErrorKind::InvalidData, err));
    }
    match take_plaintext(tls, input, limit)? {
        Some(status) => Ok(status),
        None if closed => Ok(ReadStatus::Closed),
        // Handshake records consumed, no application data yet.
        None => Ok(ReadStatus::Data(0)),
    }
}

/// Moves decrypted bytes out of rustls; None when it has none.
fn take_plaintext(
    tls: &mut rustls::Connection,
    input: &mut Vec<u8>,
    limit: usize,
) -> io::Result<Option<ReadStatus>> {
    let mut buf = [0u8; READ_CHUNK];
    let want = limit.clamp(1, READ_CHUNK);
    match tls.reader().read(&mut buf[..want]) {
        Ok(0) => Ok(Some(ReadStatus::Closed)),
        Ok(n) => {
            input.extend_from_slice(&buf[..n]);
            Ok(Some(ReadStatus::Data(n)))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        // The peer closed the TCP connection without close_notify.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Some(ReadStatus::Closed)),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::net::fake::{self, End};

    pub fn peer() -> SocketAddr {
        "192.0.2.7:4000".parse().unwrap()
    }

    /// A server config with a self-signed certificate made in a temp dir.
    pub fn server_tls() -> Arc<rustls::ServerConfig> {
        let dir = std::env::temp_dir().join(format!(
            "mailgate-transport-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = crate::tls::server_config(None, None, &dir, "mx.example.test").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        config
    }

    /// Moves bytes both ways until neither side makes progress.
    fn shuttle(
        a: &mut Transport<End>,
        b: &mut Transport<End>,
        got_a: &mut Vec<u8>,
        got_b: &mut Vec<u8>,
    ) {
        for _ in 0..10_000 {
            a.flush().unwrap();
            b.flush().unwrap();
            let ra = a.read(got_a, usize::MAX).unwrap();
            let rb = b.read(got_b, usize::MAX).unwrap();
            let idle = |r: &ReadStatus| matches!(r, ReadStatus::WouldBlock | ReadStatus::Closed);
            if idle(&ra) && idle(&rb) && a.is_flushed() && b.is_flushed() {
                return;
            }
        }
        panic!("no quiescence");
    }

    #[test]
    fn plain_partial_writes_and_reads_lose_nothing() {
        let (a, b) = fake::pair(7, 100);
        let mut a = Transport::new(a.stutter(), peer());
        let mut b = Transport::new(b, peer());
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        a.queue(&data);
        a.flush().unwrap();
        assert!(!a.is_flushed(), "the pipe holds only 100 bytes");
        assert!(
            a.interest().is_writable(),
            "wants to write while output waits"
        );
        let mut got = Vec::new();
        let mut none = Vec::new();
        shuttle(&mut a, &mut b, &mut none, &mut got);
        assert_eq!(got, data);
        assert_eq!(a.interest(), Interest::READABLE);
        a.close();
        assert_eq!(b.read(&mut got, usize::MAX).unwrap(), ReadStatus::Closed);
    }

    #[test]
    fn tls_over_a_congested_pipe() {
        // 5 bytes per call and every other write refused: every TLS record
        // is cut, and rustls's wants_read/wants_write decide each step.
        let (a, b) = fake::pair(5, 300);
        let mut server = Transport::new(a.stutter(), peer());
        let mut client = Transport::new(b.stutter(), peer());
        server.start_tls_server(&server_tls()).unwrap();
        client
            .start_tls_client(
                &crate::tls::opportunistic_client_config(),
                "mx.example.test",
            )
            .unwrap();
        client.queue(b"EHLO client.test\r\n");
        let message: Vec<u8> = (0..40_000u32)
            .map(|i| b"abcdefgh\r\n"[(i % 10) as usize])
            .collect();
        server.queue(&message);
        let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
        shuttle(&mut server, &mut client, &mut at_server, &mut at_client);
        assert!(server.tls_established() && client.tls_established());
        assert_eq!(at_server, b"EHLO client.test\r\n");
        assert_eq!(at_client, message);
        assert!(server
            .tls_description()
            .is_some_and(|d| d.starts_with("TLSv1.")));
        client.close();
        let mut rest = Vec::new();
        let mut status = ReadStatus::WouldBlock;
        for _ in 0..100 {
            status = server.read(&mut rest, usize::MAX).unwrap();
            if status != ReadStatus::WouldBlock && status != ReadStatus::Data(0) {
                break;
            }
        }
        assert_eq!(status, ReadStatus::Closed, "close_notify ends the session");
    }

    #[test]
    fn tls_garbage_is_an_error_not_a_panic() {
        let (a, b) = fake::pair(64, 4096);
        let mut server = Transport::new(a, peer());
        server.start_tls_server(&server_tls()).unwrap();
        let mut raw = b;
        raw.write_all(b"EHLO this is not TLS\r\n").unwrap();
        let mut input = Vec::new();
        let err = server.read(&mut input, usize::MAX);
        assert!(err.is_err(), "{err:?}");
        assert!(input.is_empty());
        let _ = server.flush();
        // The alert rustls queued went out.
        assert!(raw.unread() > 0, "an alert for the peer");
        assert_eq!(raw.drain_all()[0], 0x15, "a TLS alert record");
    }
}
