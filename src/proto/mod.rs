pub mod dotstuff;
pub mod pop3_server;
