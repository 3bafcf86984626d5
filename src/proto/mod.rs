//! Sans-IO protocol cores: plain structs fed with bytes and completions,
//! giving back reply bytes and events. No sockets, files, threads, clock
//! or TLS in here; the drivers in `conn/` own all IO.

pub mod address;
pub mod dns;
pub mod dotstuff;
pub mod imap;
pub mod line;
pub mod pop3_client;
pub mod pop3_server;
pub mod sasl;
pub mod smtp_client;
pub mod smtp_server;
