//! First/duplicate flags and scanner bursts, from one edge's own stream.
//!
//! Input: the verified claims of each recorded hit and the time. Output: [`Seen`]:
//! whether this is the first hit for its (tenant, message, kind[, link]) within
//! `dedup.window_secs`, and whether it completes a burst (`dedup.burst_links`
//! distinct links of one message clicked within `dedup.burst_window_ms`), which
//! marks it `link_scanner:burst`. Invariants: memory is bounded by
//! `dedup.max_entries` per set ([`TwoGen`], keyed by a 64-bit keyed hash, never the
//! ids themselves); entries dropped before their window ended are counted as
//! evictions (an evicted key may be reported `first` again); a window starts at the
//! first hit and is not extended by duplicates. Flags are per edge node: a receiver
//! combining several nodes de-duplicates again.

use std::hash::BuildHasher;

use metrics::Counter;

use super::twogen::TwoGen;
use crate::config::{DedupSettings, MAX_BURST_LINKS};
use crate::metrics as m;
use crate::token::{Claims, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub first: bool,
    pub burst: bool,
}

#[derive(Debug, Clone, Copy)]
struct Burst {
    started_ms: u64,
    links: [u32; MAX_BURST_LINKS],
    count: u8,
}

pub struct Dedup {
    seen: TwoGen<u64, u64>,
    bursts: TwoGen<u64, Burst>,
    settings: DedupSettings,
    hasher: foldhash::quality::RandomState,
    evictions: Counter,
    first: Counter,
    duplicate: Counter,
}

impl Dedup {
    pub fn new(settings: DedupSettings, now_ms: u64) -> Dedup {
        let evictions = metrics::counter!(m::DEDUP_EVICTIONS_TOTAL);
        evictions.absolute(0);
        let result = |r: &'static str| {
            let counter = metrics::counter!(m::DEDUP_EVENTS_TOTAL, "result" => r);
            counter.absolute(0);
            counter
        };
        Dedup {
            seen: TwoGen::new(settings.max_entries, Some(settings.window_ms), now_ms),
            bursts: TwoGen::new(settings.max_entries, Some(settings.burst_window_ms), now_ms),
            settings,
            hasher: foldhash::quality::RandomState::default(),
            evictions,
            first: result("first"),
            duplicate: result("duplicate"),
        }
    }

    pub fn observe(&self, claims: &Claims, now_ms: u64) -> Seen {
        let is_link = matches!(claims.kind, Kind::Click | Kind::Download);
        let link = if is_link { claims.link } else { 0 };
        let key = self.hasher.hash_one((
            claims.tenant.as_str(),
            claims.message.as_str(),
            claims.kind.as_str(),
            link,
        ));
        let window = self.settings.window_ms;
        let first = self.seen.update(key, |old| match old {
            Some(&at) if now_ms.saturating_sub(at) < window => (at, false),
            _ => (now_ms, true),
        });
        self.rotated(self.seen.maybe_rotate(now_ms));
        if first {
            self.first.increment(1);
        } else {
            self.duplicate.increment(1);
        }
        let burst = is_link && self.burst(claims, now_ms);
        Seen { first, burst }
    }

    fn burst(&self, claims: &Claims, now_ms: u64) -> bool {
        let key = self
            .hasher
            .hash_one((claims.tenant.as_str(), claims.message.as_str()));
        let (window, needed) = (self.settings.burst_window_ms, self.settings.burst_links);
        let link = claims.link;
        let burst = self.bursts.update(key, |old| {
            let mut state = match old {
                Some(state) if now_ms.saturating_sub(state.started_ms) < window => *state,
                _ => Burst {
                    started_ms: now_ms,
                    links: [0; MAX_BURST_LINKS],
                    count: 0,
                },
            };
            let seen = &state.links[..usize::from(state.count)];
            if !seen.contains(&link) && usize::from(state.count) < MAX_BURST_LINKS {
                state.links[usize::from(state.count)] = link;
                state.count += 1;
            }
            (state, usize::from(state.count) >= needed)
        });
        self.rotated(self.bursts.maybe_rotate(now_ms));
        burst
    }

    fn rotated(&self, rotated: Option<super::twogen::Rotated>) {
        if let Some(rotated) = rotated.filter(|r| !r.by_age) {
            self.evictions.increment(rotated.dropped as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(kind: Kind, message: &str, link: u32) -> Claims {
        Claims {
            kind,
            tenant: "acme".into(),
            campaign: "c".into(),
            message: message.into(),
            recipient: None,
            link,
            target: kind.has_target().then(|| "https://x.example/".into()),
            expires_at: None,
            sent_at: None,
        }
    }

    fn dedup() -> Dedup {
        Dedup::new(
            DedupSettings {
                window_ms: 60_000,
                max_entries: 1000,
                burst_links: 3,
                burst_window_ms: 1000,
            },
            0,
        )
    }

    #[test]
    fn first_then_duplicates_within_the_window() {
        let d = dedup();
        let open = claims(Kind::Open, "m1", 0);
        assert!(d.observe(&open, 1_000).first);
        assert!(!d.observe(&open, 2_000).first);
        assert!(
            !d.observe(&open, 60_999).first,
            "duplicates do not extend the window"
        );
        assert!(d.observe(&open, 61_000).first, "a new window");
        assert!(d.observe(&claims(Kind::Open, "m2", 0), 61_000).first);
        assert!(d.observe(&claims(Kind::Click, "m1", 1), 61_000).first);
        assert!(
            d.observe(&claims(Kind::Click, "m1", 2), 61_000).first,
            "per link"
        );
        assert!(!d.observe(&claims(Kind::Click, "m1", 2), 61_500).first);
    }

    #[test]
    fn several_links_within_a_second_are_a_burst() {
        let d = dedup();
        assert!(!d.observe(&claims(Kind::Click, "m", 1), 10_000).burst);
        assert!(
            !d.observe(&claims(Kind::Click, "m", 1), 10_100).burst,
            "same link"
        );
        assert!(!d.observe(&claims(Kind::Click, "m", 2), 10_200).burst);
        assert!(d.observe(&claims(Kind::Click, "m", 3), 10_300).burst);
        assert!(d.observe(&claims(Kind::Click, "m", 4), 10_400).burst);
        // A person clicking three links over minutes is not a burst.
        for (n, at) in [(1, 20_000), (2, 40_000), (3, 60_000)] {
            assert!(!d.observe(&claims(Kind::Click, "p", n), at).burst);
        }
        assert!(!d.observe(&claims(Kind::Open, "m", 0), 10_500).burst);
    }

    #[test]
    fn memory_stays_bounded_under_many_messages() {
        let d = dedup();
        for n in 0..20_000 {
            d.observe(&claims(Kind::Open, &format!("m{n}"), 0), 5_000);
        }
        assert!(d.seen.len() <= 1002, "{}", d.seen.len());
        // m0 was evicted long ago: best effort says first again.
        assert!(d.observe(&claims(Kind::Open, "m0", 0), 5_000).first);
    }
}
