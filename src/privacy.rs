//! Privacy rules applied before anything is written: today, IP truncation.
//!
//! The full address is used in memory only (later: GeoIP); what reaches an event is
//! the network prefix, IPv4 /24 and IPv6 /48, with IPv4-mapped IPv6 treated as IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const IPV4_PREFIX_BITS: u8 = 24;
pub const IPV6_PREFIX_BITS: u8 = 48;

/// Keeps only the network part of `ip`.
pub fn truncate_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(truncate_v4(v4, IPV4_PREFIX_BITS)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(truncate_v4(v4, IPV4_PREFIX_BITS)),
            None => IpAddr::V6(truncate_v6(v6, IPV6_PREFIX_BITS)),
        },
    }
}

fn truncate_v4(ip: Ipv4Addr, bits: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & mask)
}

fn truncate_v6(ip: Ipv6Addr, bits: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ip: &str) -> String {
        truncate_ip(ip.parse().unwrap()).to_string()
    }

    #[test]
    fn keeps_only_the_network() {
        assert_eq!(t("203.0.113.77"), "203.0.113.0");
        assert_eq!(t("2001:db8:abcd:12:1:2:3:4"), "2001:db8:abcd::");
        assert_eq!(t("::ffff:198.51.100.9"), "198.51.100.0");
        assert_eq!(t("::1"), "::");
    }
}
