//! mailgate: a small, durable mail server for home routers and NAS boxes.
//!
//! The binary (`main.rs`) is a thin CLI over this library; integration
//! tests drive the binary, unit tests drive the modules directly.

pub mod auth;
pub mod config;
pub mod conn;
pub mod control;
pub mod delivery;
pub mod dropfile;
pub mod event_loop;
pub mod mailauth;
pub mod net;
pub mod oauth;
pub mod outbox;
pub mod penalty;
pub mod pickup;
pub mod privileges;
pub mod proto;
pub mod sendmail;
pub mod server;
pub mod signing;
pub mod smartpop;
pub mod store;
pub mod tls;
pub mod workers;
