//! First/duplicate flags, scanner bursts and trap links, from one edge's own stream.
//!
//! Input: the verified claims of each recorded hit, its event id, its client
//! network and the time. Output: [`Seen`]: whether this is the first hit for its
//! (tenant, message, kind[, link]) within `dedup.window_secs`; whether a click
//! completes a burst (`dedup.burst_links` distinct links of one message clicked
//! within `dedup.burst_window_ms`); whether it comes from a network that followed the
//! message's trap link within `classify.trap_window_secs`; and which *earlier* events
//! the hit shows to be a machine's (the first clicks of a burst, the clicks a trap
//! hit exposes), so they can be relabelled before or after they leave the edge.
//!
//! Invariants: memory is bounded: `dedup.max_entries` first-seen keys ([`TwoGen`],
//! keyed by a 64-bit keyed hash, never the ids themselves) and an eighth as many
//! messages' recent clicks (the last [`RECENT_CLICKS`] each); entries dropped before
//! their window ended are counted as evictions (an evicted key may be reported
//! `first` again, an evicted click is no longer relabelled). A window starts at the
//! first hit and is not extended by duplicates. Flags are per edge node: a receiver
//! combining several nodes de-duplicates again.

use std::hash::BuildHasher;

use metrics::Counter;

use super::twogen::TwoGen;
use crate::config::DedupSettings;
use crate::event::EventId;
use crate::metrics as m;
use crate::token::{Claims, Kind};

/// Clicks remembered per message for bursts and traps.
pub const RECENT_CLICKS: usize = 8;

/// Why earlier events are shown to be a machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelabelCause {
    /// They open a burst the current click completes.
    Burst,
    /// They came from the network that just followed the message's trap link.
    Trap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub first: bool,
    pub burst: bool,
    /// A click from a network that followed this message's trap link in the window.
    pub trapped: bool,
    /// Earlier events of the message now known to be a machine's (empty: none).
    pub relabel: Vec<EventId>,
    pub cause: RelabelCause,
}

/// One remembered click.
#[derive(Debug, Clone, Copy, Default)]
struct Click {
    id: u128,
    at_ms: u64,
    network: u64,
    link: u32,
    relabelled_burst: bool,
    relabelled_trap: bool,
}

/// A message's recent clicks (a ring) and its latest trap hit.
#[derive(Debug, Clone, Copy, Default)]
struct Recent {
    clicks: [Click; RECENT_CLICKS],
    len: u8,
    next: u8,
    trap: Option<(u64, u64)>,
}

impl Recent {
    fn remember(&mut self, click: Click) {
        self.clicks[usize::from(self.next)] = click;
        self.next = (self.next + 1) % RECENT_CLICKS as u8;
        self.len = (self.len + 1).min(RECENT_CLICKS as u8);
    }

    fn clicks(&mut self) -> &mut [Click] {
        &mut self.clicks[..usize::from(self.len)]
    }
}

pub struct Dedup {
    seen: TwoGen<u64, u64>,
    recent: TwoGen<u64, Recent>,
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
        let recent_age = settings.burst_window_ms.max(settings.trap_window_ms);
        Dedup {
            seen: TwoGen::new(settings.max_entries, Some(settings.window_ms), now_ms),
            recent: TwoGen::new((settings.max_entries / 8).max(2), Some(recent_age), now_ms),
            settings,
            hasher: foldhash::quality::RandomState::default(),
            evictions,
            first: result("first"),
            duplicate: result("duplicate"),
        }
    }

    /// Observes one recorded hit: `id` is its event's id, `network` a key of its
    /// client's network (hits from one network share it).
    pub fn observe(&self, claims: &Claims, now_ms: u64, id: EventId, network: u64) -> Seen {
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
        let mut seen = Seen {
            first,
            burst: false,
            trapped: false,
            relabel: Vec::new(),
            cause: RelabelCause::Burst,
        };
        if is_link || claims.kind == Kind::Trap {
            self.recent_clicks(claims, now_ms, id, network, &mut seen);
        }
        seen
    }

    fn recent_clicks(
        &self,
        claims: &Claims,
        now_ms: u64,
        id: EventId,
        network: u64,
        seen: &mut Seen,
    ) {
        let key = self
            .hasher
            .hash_one((claims.tenant.as_str(), claims.message.as_str()));
        let settings = self.settings;
        let burst_since = now_ms.saturating_sub(settings.burst_window_ms);
        let trap_since = now_ms.saturating_sub(settings.trap_window_ms);
        self.recent.update(key, |old| {
            let mut recent = old.copied().unwrap_or_default();
            if claims.kind == Kind::Trap {
                recent.trap = Some((network, now_ms));
                seen.cause = RelabelCause::Trap;
                for click in recent.clicks() {
                    if click.network == network
                        && click.at_ms >= trap_since
                        && !click.relabelled_trap
                    {
                        click.relabelled_trap = true;
                        seen.relabel.push(EventId(click.id));
                    }
                }
                return (recent, ());
            }
            seen.trapped = recent
                .trap
                .is_some_and(|(net, at)| net == network && at >= trap_since);
            let mut links = [claims.link; RECENT_CLICKS + 1];
            let mut distinct = 1;
            for click in recent.clicks().iter().filter(|c| c.at_ms >= burst_since) {
                if !links[..distinct].contains(&click.link) {
                    links[distinct] = click.link;
                    distinct += 1;
                }
            }
            seen.burst = distinct >= settings.burst_links;
            if seen.burst {
                for click in recent.clicks() {
                    if click.at_ms >= burst_since && !click.relabelled_burst {
                        click.relabelled_burst = true;
                        seen.relabel.push(EventId(click.id));
                    }
                }
            }
            recent.remember(Click {
                id: id.0,
                at_ms: now_ms,
                network,
                link: claims.link,
                // The hit itself is labelled by its own verdict.
                relabelled_burst: seen.burst,
                relabelled_trap: seen.trapped,
            });
            (recent, ())
        });
        self.rotated(self.recent.maybe_rotate(now_ms));
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
                trap_window_ms: 60_000,
            },
            0,
        )
    }

    /// Observes with a fresh id from the default network.
    trait Observe {
        fn observe_at(&self, claims: &Claims, at: u64) -> Seen;
    }

    impl Observe for Dedup {
        fn observe_at(&self, claims: &Claims, at: u64) -> Seen {
            self.observe(claims, at, EventId(u128::from(at)), 1)
        }
    }

    #[test]
    fn first_then_duplicates_within_the_window() {
        let d = dedup();
        let open = claims(Kind::Open, "m1", 0);
        assert!(d.observe_at(&open, 1_000).first);
        assert!(!d.observe_at(&open, 2_000).first);
        assert!(
            !d.observe_at(&open, 60_999).first,
            "duplicates do not extend the window"
        );
        assert!(d.observe_at(&open, 61_000).first, "a new window");
        assert!(d.observe_at(&claims(Kind::Open, "m2", 0), 61_000).first);
        assert!(d.observe_at(&claims(Kind::Click, "m1", 1), 61_000).first);
        assert!(
            d.observe_at(&claims(Kind::Click, "m1", 2), 61_000).first,
            "per link"
        );
        assert!(!d.observe_at(&claims(Kind::Click, "m1", 2), 61_500).first);
    }

    #[test]
    fn several_links_within_a_second_are_a_burst() {
        let d = dedup();
        assert!(!d.observe_at(&claims(Kind::Click, "m", 1), 10_000).burst);
        assert!(
            !d.observe_at(&claims(Kind::Click, "m", 1), 10_100).burst,
            "same link"
        );
        assert!(!d.observe_at(&claims(Kind::Click, "m", 2), 10_200).burst);
        assert!(d.observe_at(&claims(Kind::Click, "m", 3), 10_300).burst);
        assert!(d.observe_at(&claims(Kind::Click, "m", 4), 10_400).burst);
        // A person clicking three links over minutes is not a burst.
        for (n, at) in [(1, 20_000), (2, 40_000), (3, 60_000)] {
            assert!(!d.observe_at(&claims(Kind::Click, "p", n), at).burst);
        }
        assert!(!d.observe_at(&claims(Kind::Open, "m", 0), 10_500).burst);
    }

    #[test]
    fn memory_stays_bounded_under_many_messages() {
        let d = dedup();
        for n in 0..20_000 {
            d.observe_at(&claims(Kind::Open, &format!("m{n}"), 0), 5_000);
        }
        assert!(d.seen.len() <= 1002, "{}", d.seen.len());
        // m0 was evicted long ago: best effort says first again.
        assert!(d.observe_at(&claims(Kind::Open, "m0", 0), 5_000).first);
    }

    #[test]
    fn a_burst_relabels_the_clicks_that_opened_it() {
        let d = dedup();
        let first = d.observe(&claims(Kind::Click, "m", 1), 10_000, EventId(1), 7);
        let second = d.observe(&claims(Kind::Click, "m", 2), 10_100, EventId(2), 7);
        assert!(first.relabel.is_empty() && second.relabel.is_empty());
        let third = d.observe(&claims(Kind::Click, "m", 3), 10_200, EventId(3), 7);
        assert!(third.burst);
        assert_eq!(third.cause, RelabelCause::Burst);
        assert_eq!(third.relabel, [EventId(1), EventId(2)]);
        let fourth = d.observe(&claims(Kind::Click, "m", 4), 10_300, EventId(4), 7);
        assert!(fourth.burst);
        assert!(fourth.relabel.is_empty(), "each click is relabelled once");
    }

    #[test]
    fn a_trap_hit_exposes_its_networks_clicks_before_and_after() {
        let d = dedup();
        let ours = d.observe(&claims(Kind::Click, "m", 1), 1_000, EventId(1), 7);
        let theirs = d.observe(&claims(Kind::Click, "m", 2), 5_000, EventId(2), 9);
        assert!(!ours.trapped && !theirs.trapped);
        let trap = d.observe(&claims(Kind::Trap, "m", 0), 6_000, EventId(3), 7);
        assert_eq!(trap.cause, RelabelCause::Trap);
        assert_eq!(trap.relabel, [EventId(1)], "only the trap's network");
        let after = d.observe(&claims(Kind::Click, "m", 3), 30_000, EventId(4), 7);
        assert!(after.trapped);
        let person = d.observe(&claims(Kind::Click, "m", 3), 30_000, EventId(5), 9);
        assert!(!person.trapped, "another network is not trapped");
        let later = d.observe(&claims(Kind::Click, "m", 4), 70_000, EventId(6), 7);
        assert!(!later.trapped, "past the trap window");
        let other = d.observe(&claims(Kind::Click, "m2", 1), 30_000, EventId(7), 7);
        assert!(!other.trapped, "traps are per message");
    }
}
