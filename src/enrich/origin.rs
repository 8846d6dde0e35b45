//! Where a hit comes from, answered for every rule at once: one sorted table of
//! address ranges and one ASN map, each leading to the set of rules whose origin
//! condition the address (or ASN) meets, and whether it is a data-centre network.
//!
//! Input: at compile time, (CIDR, label) and (ASN, label) entries from
//! [`super::rulebook`], where a label is a bit set over rules plus the data-centre
//! flag. Output: per hit, borrowed [`Label`]s: no allocation, one binary search over
//! the ranges (IPv4 addresses over a copy of the IPv4 part with 32-bit keys, and only
//! over the starts inside the address's /16) and one hash lookup. Invariants: the ranges are disjoint and sorted (the
//! entries' ranges are cut where any entry starts or ends, and each piece carries the
//! union of the labels covering it); equal labels are stored once; IPv4 addresses live
//! in the IPv6 space as `::ffff:a.b.c.d` ([`super::cidr::key`]), so IPv4-mapped
//! addresses match IPv4 networks.

use std::collections::HashMap;
use std::net::IpAddr;

use super::cidr::{key, Cidr, V4_MAPPED};

/// What an address or ASN says about the rules: which rules' origin condition holds
/// (bit `i` for rule `i`) and whether it is a data-centre network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label {
    pub rules: Box<[u64]>,
    pub datacenter: bool,
}

impl Label {
    pub fn empty(words: usize) -> Label {
        Label {
            rules: vec![0; words].into(),
            datacenter: false,
        }
    }

    fn union(&mut self, other: &Label) {
        for (mine, theirs) in self.rules.iter_mut().zip(other.rules.iter()) {
            *mine |= theirs;
        }
        self.datacenter |= other.datacenter;
    }
}

const NONE: u32 = u32::MAX;

/// The compiled lookup.
#[derive(Debug)]
pub struct OriginIndex {
    /// Start of each range (as [`key`]); a range ends where the next begins.
    starts: Vec<u128>,
    /// The label index of each range, or [`NONE`].
    ranges: Vec<u32>,
    /// The same ranges inside `::ffff:0.0.0.0/96`, keyed by the IPv4 address; the
    /// first starts at 0.0.0.0.
    v4_starts: Vec<u32>,
    v4_ranges: Vec<u32>,
    /// `v4_index[b]`: how many of `v4_starts` lie below `b.0.0/16`, so an address in
    /// `b.0/16` is searched for among that /16's starts only (most /16s hold none:
    /// the search ends at once for nearly every address people browse from).
    v4_index: Box<[u32]>,
    asns: HashMap<u32, u32, foldhash::fast::RandomState>,
    labels: Vec<Label>,
}

/// The labels of one hit's address and ASN; either may be absent.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub ip: Option<&'a Label>,
    pub asn: Option<&'a Label>,
}

impl Origin<'_> {
    /// Word `w` of the rules whose origin condition holds.
    #[inline]
    pub fn word(&self, w: usize) -> u64 {
        self.ip.map_or(0, |l| l.rules[w]) | self.asn.map_or(0, |l| l.rules[w])
    }

    pub fn datacenter(&self) -> bool {
        self.ip.is_some_and(|l| l.datacenter) || self.asn.is_some_and(|l| l.datacenter)
    }
}

struct Interner {
    labels: Vec<Label>,
    index: HashMap<Label, u32>,
}

impl Interner {
    fn intern(&mut self, label: Label) -> u32 {
        if let Some(&found) = self.index.get(&label) {
            return found;
        }
        let id = u32::try_from(self.labels.len()).expect("fewer labels than ranges");
        self.labels.push(label.clone());
        self.index.insert(label, id);
        id
    }
}

impl OriginIndex {
    pub fn build(
        networks: Vec<(Cidr, Label)>,
        asns: Vec<(u32, Label)>,
        words: usize,
    ) -> OriginIndex {
        let mut interner = Interner {
            labels: Vec::new(),
            index: HashMap::new(),
        };
        let mut by_asn: HashMap<u32, Label> = HashMap::new();
        for (asn, label) in asns {
            by_asn
                .entry(asn)
                .or_insert_with(|| Label::empty(words))
                .union(&label);
        }
        let asns = by_asn
            .into_iter()
            .map(|(asn, label)| (asn, interner.intern(label)))
            .collect();

        // Cut the line at every start and every end + 1; each piece gets the union of
        // the entries covering it.
        let mut entries: Vec<(u128, u128, Label)> = networks
            .into_iter()
            .map(|(cidr, label)| {
                let (start, end) = cidr.range();
                (start, end, label)
            })
            .collect();
        entries.sort_by_key(|(start, _, _)| *start);
        let mut cuts: Vec<u128> = entries
            .iter()
            .flat_map(|(start, end, _)| [Some(*start), end.checked_add(1)])
            .flatten()
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut starts = Vec::with_capacity(cuts.len());
        let mut ranges: Vec<u32> = Vec::with_capacity(cuts.len());
        let mut active: Vec<usize> = Vec::new();
        let mut next = 0;
        for &cut in &cuts {
            active.retain(|&e| entries[e].1 >= cut);
            while next < entries.len() && entries[next].0 == cut {
                active.push(next);
                next += 1;
            }
            let id = match active.is_empty() {
                true => NONE,
                false => {
                    let mut label = Label::empty(words);
                    for &e in &active {
                        label.union(&entries[e].2);
                    }
                    interner.intern(label)
                }
            };
            if ranges.last() != Some(&id) {
                starts.push(cut);
                ranges.push(id);
            }
        }
        let (v4_starts, v4_ranges) = ipv4_part(&starts, &ranges);
        let v4_index = (0..=1u32 << 16)
            .map(|slash16| {
                let below =
                    v4_starts.partition_point(|start| u64::from(*start) < u64::from(slash16) << 16);
                u32::try_from(below).expect("fewer ranges than u32::MAX")
            })
            .collect();
        OriginIndex {
            starts,
            ranges,
            v4_starts,
            v4_ranges,
            v4_index,
            asns,
            labels: interner.labels,
        }
    }

    pub fn lookup(&self, ip: IpAddr, asn: Option<u32>) -> Origin<'_> {
        let v4 = match ip {
            IpAddr::V4(v4) => Some(u32::from(v4)),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(u32::from),
        };
        let id = match v4 {
            Some(v4) => {
                let slash16 = (v4 >> 16) as usize;
                let low = self.v4_index[slash16] as usize;
                let high = self.v4_index[slash16 + 1] as usize;
                // Every start below `low` is at most `v4`, every one from `high` on is
                // above it; v4_starts[0] is 0, so `at` is at least 1.
                let at = low + self.v4_starts[low..high].partition_point(|start| *start <= v4);
                self.v4_ranges[at - 1]
            }
            None => range_at(&self.starts, &self.ranges, key(ip)),
        };
        let ip = self.label(id);
        let asn = asn
            .and_then(|asn| self.asns.get(&asn))
            .and_then(|&id| self.label(id));
        Origin { ip, asn }
    }

    #[cfg(test)]
    fn lookup_wide(&self, ip: IpAddr) -> Option<&Label> {
        self.label(range_at(&self.starts, &self.ranges, key(ip)))
    }

    fn label(&self, id: u32) -> Option<&Label> {
        self.labels.get(id as usize)
    }

    /// Distinct ranges (for tests and the start-up log).
    pub fn ranges(&self) -> usize {
        self.ranges.iter().filter(|id| **id != NONE).count()
    }
}

/// The label id of the range holding `key`, or [`NONE`].
fn range_at(starts: &[u128], ranges: &[u32], key: u128) -> u32 {
    match starts.partition_point(|start| *start <= key) {
        0 => NONE,
        at => ranges[at - 1],
    }
}

/// The ranges inside `::ffff:0.0.0.0/96`, keyed by the IPv4 address, starting at 0.
fn ipv4_part(starts: &[u128], ranges: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let end = V4_MAPPED | u128::from(u32::MAX);
    let mut v4_starts = vec![0];
    let mut v4_ranges = vec![range_at(starts, ranges, V4_MAPPED)];
    for (start, id) in starts.iter().zip(ranges) {
        if *start > V4_MAPPED && *start <= end {
            v4_starts.push((*start - V4_MAPPED) as u32);
            v4_ranges.push(*id);
        }
    }
    (v4_starts, v4_ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(bits: u64, datacenter: bool) -> Label {
        Label {
            rules: vec![bits].into(),
            datacenter,
        }
    }

    fn rules(index: &OriginIndex, ip: &str, asn: Option<u32>) -> (u64, bool) {
        let origin = index.lookup(ip.parse().unwrap(), asn);
        (origin.word(0), origin.datacenter())
    }

    #[test]
    fn overlapping_networks_carry_every_label_that_covers_them() {
        let index = OriginIndex::build(
            vec![
                ("10.0.0.0/8".parse().unwrap(), label(0b001, false)),
                ("10.1.0.0/16".parse().unwrap(), label(0b010, true)),
                ("10.1.2.0/24".parse().unwrap(), label(0b100, false)),
                ("2001:db8::/32".parse().unwrap(), label(0b100, false)),
                ("::/0".parse().unwrap(), label(0b1000, false)),
            ],
            vec![
                (64500, label(0b1_0000, true)),
                (64500, label(0b10_0000, false)),
            ],
            1,
        );
        assert_eq!(rules(&index, "10.9.9.9", None), (0b1001, false));
        assert_eq!(rules(&index, "10.1.9.9", None), (0b1011, true));
        assert_eq!(rules(&index, "10.1.2.3", None), (0b1111, true));
        assert_eq!(
            rules(&index, "::ffff:10.1.2.3", None),
            (0b1111, true),
            "IPv4-mapped"
        );
        assert_eq!(
            rules(&index, "10.2.0.0", None),
            (0b1001, false),
            "after the /16 ends"
        );
        assert_eq!(rules(&index, "11.0.0.0", None), (0b1000, false));
        assert_eq!(rules(&index, "2001:db8:ffff::1", None), (0b1100, false));
        assert_eq!(rules(&index, "2001:db9::", None), (0b1000, false));
        assert_eq!(rules(&index, "11.0.0.0", Some(64500)), (0b11_1000, true));
        assert_eq!(rules(&index, "11.0.0.0", Some(1)), (0b1000, false));
    }

    #[test]
    fn gaps_and_the_ends_of_the_address_space() {
        let index = OriginIndex::build(
            vec![
                ("192.0.2.0/24".parse().unwrap(), label(1, false)),
                ("ffff::/16".parse().unwrap(), label(2, false)),
            ],
            Vec::new(),
            1,
        );
        assert_eq!(rules(&index, "192.0.1.255", None), (0, false));
        assert_eq!(rules(&index, "192.0.2.0", None), (1, false));
        assert_eq!(rules(&index, "192.0.2.255", None), (1, false));
        assert_eq!(rules(&index, "192.0.3.0", None), (0, false));
        assert_eq!(
            rules(&index, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
            (2, false)
        );
        assert_eq!(rules(&index, "::", None), (0, false));
        assert_eq!(index.ranges(), 2);
        let empty = OriginIndex::build(Vec::new(), Vec::new(), 1);
        assert_eq!(rules(&empty, "192.0.2.1", Some(1)), (0, false));
    }

    #[test]
    fn equal_neighbours_merge_into_one_range() {
        let index = OriginIndex::build(
            vec![
                ("192.0.2.0/25".parse().unwrap(), label(1, false)),
                ("192.0.2.128/25".parse().unwrap(), label(1, false)),
            ],
            Vec::new(),
            1,
        );
        assert_eq!(index.ranges(), 1);
        assert_eq!(index.labels.len(), 1);
    }

    #[test]
    fn ipv4_lookups_agree_with_the_wide_table() {
        let index = OriginIndex::build(
            vec![
                ("::/0".parse().unwrap(), label(1, false)),
                ("0.0.0.0/8".parse().unwrap(), label(2, false)),
                ("10.0.0.0/8".parse().unwrap(), label(4, true)),
                ("10.1.0.0/16".parse().unwrap(), label(8, false)),
                ("255.255.255.0/24".parse().unwrap(), label(16, false)),
                ("::ffff:0:0/97".parse().unwrap(), label(32, false)),
                ("10.2.128.0/17".parse().unwrap(), label(64, false)),
                ("10.3.255.255/32".parse().unwrap(), label(128, false)),
                ("10.4.0.7/32".parse().unwrap(), label(128, false)),
            ],
            Vec::new(),
            1,
        );
        let mut probes: Vec<u32> = vec![0, 1, u32::MAX, u32::MAX - 256, 0x7fff_ffff, 0x8000_0000];
        for boundary in [
            0x0a00_0000u32,
            0x0a01_0000,
            0x0a02_8000,
            0x0a03_0000,
            0x0a03_ffff,
            0x0a04_0000,
            0x0a04_0007,
            0x0a04_0008,
            0x0b00_0000,
            0x0100_0000,
            0xffff_ff00,
        ] {
            probes.extend([boundary.wrapping_sub(1), boundary, boundary + 1]);
        }
        // A fixed spread over the whole space.
        probes.extend((0..4096u32).map(|i| i.wrapping_mul(0x9E37_79B9)));
        for v4 in probes {
            let ip = IpAddr::V4(v4.into());
            let mapped = IpAddr::V6(std::net::Ipv4Addr::from(v4).to_ipv6_mapped());
            let wide = index.lookup_wide(ip);
            assert_eq!(index.lookup(ip, None).ip, wide, "{ip}");
            assert_eq!(index.lookup(mapped, None).ip, wide, "{mapped}");
        }
        assert_eq!(rules(&index, "0.0.0.1", None), (0b10_0011, false));
        assert_eq!(rules(&index, "128.0.0.1", None), (0b1, false));
        assert_eq!(rules(&index, "10.1.0.1", None), (0b10_1101, true));
        assert_eq!(rules(&index, "::1", None), (0b1, false));
        assert_eq!(rules(&index, "10.3.255.255", None), (0b1010_0101, true));
        assert_eq!(rules(&index, "10.4.0.7", None), (0b1010_0101, true));
        assert_eq!(rules(&index, "10.4.0.8", None), (0b10_0101, true));
    }
}
