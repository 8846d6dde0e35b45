//! IP networks in CIDR notation and sets of them, for trusted proxies and
//! classification rules.
//!
//! Input: config and rules-file text (`203.0.113.0/24`, `2001:db8::/32`, a bare
//! address). Output: [`CidrSet::contains`] answers for client addresses.
//! Invariant: IPv4 lives inside IPv6 as `::ffff:a.b.c.d`, so an IPv4 network matches
//! both the plain and the IPv4-mapped form of an address. Written here rather than
//! taken from a crate because the set needs only parse + mask + a hashed lookup per
//! prefix length (a handful of lookups whatever the list size).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// `::ffff:0:0/96`, where IPv4 addresses live in the IPv6 space.
const V4_MAPPED: u128 = 0xffff_0000_0000;

/// One network: the masked address (IPv6 space) and its prefix length (0-128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a network like 203.0.113.0/24 or 2001:db8::/32")]
pub struct CidrError(pub String);

/// An address as a 128-bit number in the IPv6 space (IPv4 mapped).
pub fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => V4_MAPPED | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        key(ip) & mask(self.prefix) == self.network
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let fail = || CidrError(text.to_owned());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| fail())?;
        let (max, offset) = match ip {
            IpAddr::V4(_) => (32u8, 96u8),
            IpAddr::V6(_) => (128, 0),
        };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(fail)?,
        } + offset;
        Ok(Cidr {
            network: key(ip) & mask(prefix),
            prefix,
        })
    }
}

/// Many networks, answered with one hash lookup per distinct prefix length.
#[derive(Debug, Clone, Default)]
pub struct CidrSet {
    /// Longest prefix first; each set holds masked networks of that length.
    by_prefix: Vec<(u8, HashSet<u128, foldhash::fast::RandomState>)>,
    len: usize,
}

impl CidrSet {
    pub fn new(networks: impl IntoIterator<Item = Cidr>) -> CidrSet {
        let mut set = CidrSet::default();
        for cidr in networks {
            set.len += 1;
            match set.by_prefix.iter_mut().find(|(p, _)| *p == cidr.prefix) {
                Some((_, networks)) => {
                    networks.insert(cidr.network);
                }
                None => set
                    .by_prefix
                    .push((cidr.prefix, HashSet::from_iter([cidr.network]))),
            }
        }
        set.by_prefix
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(*prefix));
        set
    }

    /// Parses every entry; the error names the first bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<CidrSet, CidrError> {
        let networks = entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<Vec<Cidr>, _>>()?;
        Ok(CidrSet::new(networks))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let key = key(ip);
        self.by_prefix
            .iter()
            .any(|(prefix, networks)| networks.contains(&(key & mask(*prefix))))
    }
}

/// Keeps only the network part of `ip` (IPv4-mapped addresses count as IPv4).
pub fn truncate_ip(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(ipv4_prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv4_networks_match_plain_and_mapped_addresses() {
        let set = CidrSet::parse(&["203.0.113.0/24", "10.0.0.0/8"]).unwrap();
        assert!(set.contains(ip("203.0.113.77")));
        assert!(set.contains(ip("::ffff:203.0.113.77")));
        assert!(set.contains(ip("10.255.0.1")));
        assert!(!set.contains(ip("203.0.114.1")));
        assert!(!set.contains(ip("2001:db8::1")));
    }

    #[test]
    fn ipv6_networks_and_bare_addresses() {
        let set = CidrSet::parse(&["2001:db8::/32", "192.0.2.5", "::1"]).unwrap();
        assert!(set.contains(ip("2001:db8:ffff::1")));
        assert!(!set.contains(ip("2001:db9::1")));
        assert!(set.contains(ip("192.0.2.5")));
        assert!(!set.contains(ip("192.0.2.6")));
        assert!(set.contains(ip("::1")));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn zero_prefixes_match_everything_of_their_family() {
        let v4 = CidrSet::parse(&["0.0.0.0/0"]).unwrap();
        assert!(v4.contains(ip("8.8.8.8")));
        assert!(!v4.contains(ip("2001:db8::1")));
        let all = CidrSet::parse(&["::/0"]).unwrap();
        assert!(all.contains(ip("8.8.8.8")) && all.contains(ip("2001:db8::1")));
    }

    #[test]
    fn malformed_networks_are_refused_by_name() {
        for bad in [
            "",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0/8",
            "x/1",
            "10.0.0.0/-1",
        ] {
            let err = CidrSet::parse(&[bad]).unwrap_err();
            assert_eq!(err.0, bad);
        }
        assert!(CidrSet::default().is_empty());
    }
}
