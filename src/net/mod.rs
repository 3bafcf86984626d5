//! Network plumbing shared by every connection driver.

pub mod connector;
#[cfg(test)]
pub mod fake;
pub mod resolver;
pub mod transport;

use std::net::IpAddr;

/// `::ffff:1.2.3.4` counts as `1.2.3.4` for limits and relay checks.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}
