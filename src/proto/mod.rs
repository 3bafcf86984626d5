//! Sans-IO protocol cores: bytes and completions in, bytes and events out.
//! No sockets, files, threads, clock or rustls in here; drivers in
//! `crate::conn` own the IO.

pub mod dns;
pub mod dotstuff;
pub mod pop3_client;
pub mod pop3_server;
pub mod smtp_client;
