//! What the outbox asks of an outbound session, and what the session
//! answers: plain data between the runner (what to deliver, where) and the
//! connection driver (`conn::smtp_out`, how).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{HostPort, TlsMode};
use crate::proto::smtp_client::{Credentials, RcptResult};

/// What one session delivers, and how to reach the server.
pub struct OutboundJob {
    pub entry_id: String,
    /// `""` for the null reverse-path.
    pub reverse_path: String,
    /// The recipients this session delivers to (one destination's).
    pub recipients: Vec<String>,
    pub smtputf8: bool,
    /// The queued message (headers complete), read by the session.
    pub message_path: PathBuf,
    pub helo_name: String,
    pub route: RouteSpec,
    /// The DNS server for the MX or smarthost lookups (`Config::resolver`).
    pub nameserver: Option<SocketAddr>,
}

pub enum RouteSpec {
    /// The ISP's relay(s), tried in order.
    Smarthost {
        hosts: Vec<HostPort>,
        tls: TlsMode,
        credentials: Option<Credentials>,
        tls_config: Arc<rustls::ClientConfig>,
    },
    /// The recipient domain's MX hosts on port 25.
    Direct {
        domain: String,
        /// STARTTLS failed with this host last time: plaintext now.
        plaintext_hosts: Vec<String>,
        tls_config: Arc<rustls::ClientConfig>,
    },
}

/// The session's outcome, for the runner.
pub struct GroupReport {
    pub entry_id: String,
    pub results: Vec<RcptResult>,
    /// The server that gave the final answers ("host[addr]"), if any.
    pub relay: Option<String>,
    /// Direct mode: a host whose STARTTLS handshake failed.
    pub tls_failed_host: Option<String>,
}
