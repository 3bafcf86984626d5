//! Sans-IO protocol cores: bytes and completions in, bytes and events out.

pub mod dns;
pub mod smtp_client;
