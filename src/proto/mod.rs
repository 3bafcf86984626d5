//! Sans-IO protocol cores: bytes and completions in, reply bytes and events out.

pub mod pop3_client;
