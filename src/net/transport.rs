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
pub const READ_CHUNK: usize = 16 * 1024;

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

pub struct Transport {
    sock: TcpStream,
    tls: Option<rustls::Connection>,
    /// Plaintext waiting to be written (into rustls or onto the socket).
    out: Vec<u8>,
    peer: SocketAddr,
}

impl Transport {
    pub fn new(sock: TcpStream, peer: SocketAddr) -> Transport {
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

    pub fn socket(&mut self) -> &mut TcpStream {
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
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

fn read_plain(sock: &mut TcpStream, input: &mut Vec<u8>, limit: usize) -> io::Result<ReadStatus> {
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
    sock: &mut TcpStream,
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
