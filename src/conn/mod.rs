//! One driver per connection role; each owns a socket and a sans-IO core.

pub mod pop3_fetch;
pub mod pop3_in;
pub mod smtp_in;
pub mod smtp_out;
