//! Network plumbing shared by every connection driver.

pub mod resolver;
pub mod transport;
