//! OAuth2 sign-in for SmartPop accounts and the smarthost: the token store.
//!
//! Owns: `data_dir/oauth/NAME` files. Must not: log a token. The HTTP
//! messages are in `proto::oauth` and `proto::http`.

pub mod store;
