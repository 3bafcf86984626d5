//! Network plumbing shared by every connection driver.

pub mod transport;
