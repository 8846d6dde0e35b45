//! Per-network rate limiting of *recording*, never of answering.
//!
//! Input: the client address the enrich stage resolved (trusted proxy headers only,
//! so a client cannot pick its own bucket) and the hit's time. Output: a
//! [`Decision`] that `route::record` applies: record the event, record it marked
//! `"rate_limited": true`, or drop it (`rate_limit.action`). The answer to the
//! client is the same in every case, so a flood of valid tokens cannot tell it was
//! limited and cannot fill the spool faster than `events_per_sec` per network.
//!
//! One token bucket per network prefix (`/24` and `/48` by default: one home or
//! office router, or one hosting customer, share a bucket). Buckets live in a
//! [`TwoGen`] map with a hard cap of `max_prefixes`: past it the least recently
//! used half is dropped whole and counted as evictions. Generations also rotate
//! after the time an empty bucket takes to refill, and what that drops was full
//! anyway (a full bucket and a missing one mean the same), so it is not counted.
//! Mailbox providers' fetchers are exempt: Apple's privacy proxy
//! (`classify.apple_mpp_cidrs`) and the image proxies of Gmail, Outlook and Yahoo
//! (`exempt_asns`, which needs `geoip.asn_db`) fetch every pixel of a campaign for
//! millions of people from a few networks, so a per-network limit would mark or
//! drop real opens. Both are keyed on the resolved address, which a client cannot
//! forge through the client-IP stage; a User-Agent could be forged, so it is never
//! an exemption.

use std::net::IpAddr;

use metrics::Counter;

use crate::config::{Action, RateLimitSettings};
use crate::enrich::cidr::truncate_ip;
use crate::enrich::twogen::TwoGen;
use crate::metrics as m;

/// The limiter's answer for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Record,
    Mark,
    Drop,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Record, Decision::Mark, Decision::Drop];

    /// The `result` label of [`m::RATELIMIT_EVENTS_TOTAL`].
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Record => "allowed",
            Decision::Mark => "marked",
            Decision::Drop => "dropped",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

pub struct RecordLimiter {
    settings: RateLimitSettings,
    buckets: TwoGen<IpAddr, Bucket>,
    decisions: [Counter; 3],
    evictions: Counter,
}

impl RecordLimiter {
    pub fn new(settings: RateLimitSettings, now_ms: u64) -> RecordLimiter {
        // The time an empty bucket takes to fill up again: buckets older than that
        // are full, so a rotation by age loses nothing.
        let refill_ms = (settings.burst / settings.events_per_sec * 1000.0).ceil() as u64;
        let evictions = metrics::counter!(m::RATELIMIT_EVICTIONS_TOTAL);
        evictions.absolute(0);
        RecordLimiter {
            buckets: TwoGen::new(settings.max_prefixes, Some(refill_ms.max(1)), now_ms),
            decisions: Decision::ALL.map(|decision| {
                let counter =
                    metrics::counter!(m::RATELIMIT_EVENTS_TOTAL, "result" => decision.as_str());
                counter.absolute(0);
                counter
            }),
            evictions,
            settings,
        }
    }

    /// Takes one token from the bucket of `ip`'s network (`asn` from GeoIP, if any).
    pub fn check(&self, ip: IpAddr, asn: Option<u32>, now_ms: u64) -> Decision {
        let settings = &self.settings;
        let exempt_asn = asn.is_some_and(|asn| settings.exempt_asns.binary_search(&asn).is_ok());
        if !settings.enabled || exempt_asn || settings.exempt.contains(ip) {
            return self.count(Decision::Record);
        }
        let prefix = truncate_ip(ip, settings.ipv4_prefix, settings.ipv6_prefix);
        let allowed = self.buckets.update(prefix, |old| {
            let mut bucket = old.copied().unwrap_or(Bucket {
                tokens: settings.burst,
                at_ms: now_ms,
            });
            // A wall-clock step backwards refills nothing, and the bucket restarts
            // from the new time instead of waiting for the clock to catch up.
            let elapsed_ms = now_ms.saturating_sub(bucket.at_ms);
            bucket.tokens = (bucket.tokens + elapsed_ms as f64 * settings.events_per_sec / 1000.0)
                .min(settings.burst);
            bucket.at_ms = now_ms;
            let allowed = bucket.tokens >= 1.0;
            if allowed {
                bucket.tokens -= 1.0;
            }
            (bucket, allowed)
        });
        if let Some(rotated) = self.buckets.maybe_rotate(now_ms) {
            if !rotated.by_age {
                self.evictions.increment(rotated.dropped as u64);
            }
        }
        self.count(match (allowed, settings.action) {
            (true, _) => Decision::Record,
            (false, Action::Mark) => Decision::Mark,
            (false, Action::Drop) => Decision::Drop,
        })
    }

    fn count(&self, decision: Decision) -> Decision {
        self.decisions[decision as usize].increment(1);
        decision
    }

    /// Buckets held now (at most about `max_prefixes`).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::cidr::CidrSet;

    fn settings(action: Action) -> RateLimitSettings {
        RateLimitSettings {
            enabled: true,
            events_per_sec: 10.0,
            burst: 5.0,
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            action,
            max_prefixes: 1000,
            exempt: CidrSet::parse(&["17.0.0.0/8"]).unwrap(),
            exempt_asns: vec![15169],
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn burst_then_refill_at_the_configured_rate() {
        let limiter = RecordLimiter::new(settings(Action::Drop), 0);
        for _ in 0..5 {
            assert_eq!(limiter.check(ip("192.0.2.1"), None, 0), Decision::Record);
        }
        assert_eq!(limiter.check(ip("192.0.2.1"), None, 0), Decision::Drop);
        // 10 per second: one token back every 100 ms, never more than the burst.
        assert_eq!(limiter.check(ip("192.0.2.1"), None, 99), Decision::Drop);
        // 0.99 + 0.51 tokens by then: one event, then empty again.
        assert_eq!(limiter.check(ip("192.0.2.1"), None, 150), Decision::Record);
        assert_eq!(limiter.check(ip("192.0.2.1"), None, 150), Decision::Drop);
        let later = 60_000;
        for _ in 0..5 {
            assert_eq!(
                limiter.check(ip("192.0.2.1"), None, later),
                Decision::Record
            );
        }
        assert_eq!(limiter.check(ip("192.0.2.1"), None, later), Decision::Drop);
    }

    #[test]
    fn a_network_shares_one_bucket_and_others_are_untouched() {
        let limiter = RecordLimiter::new(settings(Action::Mark), 0);
        for n in 1..=5 {
            assert_eq!(
                limiter.check(ip(&format!("198.51.100.{n}")), None, 0),
                Decision::Record
            );
        }
        assert_eq!(limiter.check(ip("198.51.100.77"), None, 0), Decision::Mark);
        assert_eq!(limiter.check(ip("198.51.101.1"), None, 0), Decision::Record);
        for _ in 0..5 {
            assert_eq!(
                limiter.check(ip("2001:db8:1:2::1"), None, 0),
                Decision::Record,
                "v6"
            );
        }
        assert_eq!(
            limiter.check(ip("2001:db8:1:ffff::9"), None, 0),
            Decision::Mark
        );
        assert_eq!(
            limiter.check(ip("2001:db8:2::1"), None, 0),
            Decision::Record
        );
    }

    #[test]
    fn exempt_networks_and_a_disabled_limiter_never_limit() {
        let limiter = RecordLimiter::new(settings(Action::Drop), 0);
        for _ in 0..100 {
            assert_eq!(limiter.check(ip("17.1.2.3"), None, 0), Decision::Record);
            assert_eq!(
                limiter.check(ip("66.249.80.1"), Some(15169), 0),
                Decision::Record
            );
        }
        for _ in 0..5 {
            limiter.check(ip("66.249.81.1"), Some(64496), 0);
        }
        assert_eq!(
            limiter.check(ip("66.249.81.1"), Some(64496), 0),
            Decision::Drop,
            "other ASNs are limited"
        );
        let mut off = settings(Action::Drop);
        off.enabled = false;
        let limiter = RecordLimiter::new(off, 0);
        for _ in 0..100 {
            assert_eq!(limiter.check(ip("192.0.2.1"), None, 0), Decision::Record);
        }
        assert!(limiter.is_empty(), "a disabled limiter holds nothing");
    }

    #[test]
    fn memory_stays_bounded_under_a_spray_of_networks() {
        let limiter = RecordLimiter::new(settings(Action::Drop), 0);
        for n in 0..100_000u32 {
            let addr = IpAddr::from((0x0a00_0000u32 + (n << 8)).to_be_bytes());
            limiter.check(addr, None, 0);
            assert!(limiter.len() <= 1002, "{} buckets at {n}", limiter.len());
        }
    }

    #[test]
    fn a_clock_step_backwards_does_not_refill_or_panic() {
        let limiter = RecordLimiter::new(settings(Action::Drop), 0);
        for _ in 0..5 {
            limiter.check(ip("192.0.2.1"), None, 10_000);
        }
        assert_eq!(limiter.check(ip("192.0.2.1"), None, 5_000), Decision::Drop);
        // Refilling resumes from the new time: one token every 100 ms.
        assert_eq!(
            limiter.check(ip("192.0.2.1"), None, 5_100),
            Decision::Record
        );
    }
}
