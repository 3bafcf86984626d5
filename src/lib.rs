//! mailgate: a small, durable mail server for home routers and NAS boxes.
//!
//! The binary (`main.rs`) is a thin CLI over this library; integration
//! tests drive the binary, unit tests drive the modules directly.

pub mod config;
pub mod proto;
