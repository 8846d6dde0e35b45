//! IP networks in CIDR notation and sets of them, for trusted proxies and
//! classification rules.
//!
//! Input: config and rules-file text (`203.0.113.0/24`, `2001:db8::/32`, a bare
//! address). Output: [`CidrSet::contains`] answers for client addresses.
//! Invariant: IPv4 lives inside IPv6 as `::ffff:a.b.c.d`, so an IPv4 network matches
//! both the plain and the IPv4-mapped form of an address. Written here rather than
//! taken from a crate because the set needs only parse + mask + one binary search
//! over merged ranges (about 12 steps for the largest shipped list).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// `::ffff:0:0/96`, where IPv4 addresses live in the IPv6 space.
pub(crate) const V4_MAPPED: u128 = 0xffff_0000_0000;

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

    /// The first and last address as [`key`]s, both inclusive.
    pub fn range(&self) -> (u128, u128) {
        (self.network, self.network | !mask(self.prefix))
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

/// Many networks, answered with one binary search over their merged ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    /// Inclusive `(first, last)` keys, sorted, disjoint and not adjacent: the
    /// networks' union. Provider lists mix a dozen or more prefix lengths, so a
    /// lookup per length cost more than this one search.
    ranges: Vec<(u128, u128)>,
    len: usize,
}

impl CidrSet {
    pub fn new(networks: impl IntoIterator<Item = Cidr>) -> CidrSet {
        let mut ranges: Vec<(u128, u128)> = networks.into_iter().map(|c| c.range()).collect();
        let len = ranges.len();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (first, last) in ranges {
            match merged.last_mut() {
                Some((_, end)) if first <= end.saturating_add(1) => *end = (*end).max(last),
                _ => merged.push((first, last)),
            }
        }
        merged.shrink_to_fit();
        CidrSet {
            ranges: merged,
            len,
        }
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
        let after = self.ranges.partition_point(|(first, _)| *first <= key);
        after > 0 && self.ranges[after - 1].1 >= key
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
    fn ranges_are_inclusive_in_the_ipv6_space() {
        let v4: Cidr = "192.0.2.0/24".parse().unwrap();
        assert_eq!(v4.range(), (key(ip("192.0.2.0")), key(ip("192.0.2.255"))));
        let all: Cidr = "::/0".parse().unwrap();
        assert_eq!(all.range(), (0, u128::MAX));
        let host: Cidr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            host.range(),
            (key(ip("2001:db8::1")), key(ip("2001:db8::1")))
        );
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
    fn nested_overlapping_and_adjacent_networks_answer_like_each_network() {
        let entries = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.255.255.255",
            "11.0.0.0/8",
            "192.0.2.0/25",
            "192.0.2.128/25",
            "198.51.100.7",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "2001:db9::/48",
            "::/0",
        ];
        let networks: Vec<Cidr> = entries.iter().map(|e| e.parse().unwrap()).collect();
        for taken in 0..=networks.len() {
            let set = CidrSet::new(networks[..taken].iter().copied());
            assert_eq!(set.len(), taken);
            let probe = |ip: IpAddr| {
                let expected = networks[..taken].iter().any(|n| n.contains(ip));
                assert_eq!(set.contains(ip), expected, "{ip} in the first {taken}");
            };
            for text in [
                "9.255.255.255",
                "10.0.0.0",
                "10.1.2.3",
                "11.255.255.255",
                "12.0.0.0",
                "192.0.1.255",
                "192.0.2.127",
                "192.0.2.128",
                "192.0.3.0",
                "198.51.100.6",
                "198.51.100.7",
                "198.51.100.8",
                "2001:db8::",
                "2001:db8:ffff::1",
                "2001:db9::1",
                "2001:db9:1::",
                "::",
                "::1",
            ] {
                probe(ip(text));
            }
            for _ in 0..2000 {
                let v4 = Ipv4Addr::from(rand::random::<u32>() & 0x0fff_ffff | 0x0800_0000);
                probe(IpAddr::V4(v4));
                let v6 = Ipv6Addr::from(
                    0x2001_0db8_u128 << 96 | u128::from(rand::random::<u32>()) << 64,
                );
                probe(IpAddr::V6(v6));
            }
        }
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
