//! `[rate_limit]`: how many events one client network may record.

use serde::Deserialize;

use super::{in_range, invalid, ConfigError};
use crate::enrich::cidr::CidrSet;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    enabled: bool,
    events_per_sec: f64,
    burst: u32,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    action: Action,
    max_prefixes: usize,
    exempt_apple_mpp: bool,
    exempt_asns: Vec<u32>,
}

/// What happens to an event over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Recorded with `rate_limited: true`.
    Mark,
    /// Not recorded.
    Drop,
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub events_per_sec: f64,
    pub burst: f64,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub action: Action,
    pub max_prefixes: usize,
    /// Networks never limited (the Apple MPP networks when `exempt_apple_mpp`).
    pub exempt: CidrSet,
    /// Autonomous systems never limited (sorted for binary search).
    pub exempt_asns: Vec<u32>,
}

impl RawRateLimit {
    /// `apple_mpp_cidrs`: `classify.apple_mpp_cidrs`, exempt when `exempt_apple_mpp`.
    pub(super) fn validate(
        self,
        apple_mpp_cidrs: &CidrSet,
    ) -> Result<RateLimitSettings, ConfigError> {
        if !(self.events_per_sec.is_finite()
            && self.events_per_sec > 0.0
            && self.events_per_sec <= 1e6)
        {
            return Err(invalid(
                "rate_limit.events_per_sec",
                "must be above 0 and at most 1000000",
            ));
        }
        let exempt = if self.exempt_apple_mpp {
            apple_mpp_cidrs.clone()
        } else {
            CidrSet::default()
        };
        let mut exempt_asns = self.exempt_asns;
        exempt_asns.sort_unstable();
        exempt_asns.dedup();
        Ok(RateLimitSettings {
            enabled: self.enabled,
            events_per_sec: self.events_per_sec,
            burst: f64::from(in_range("rate_limit.burst", self.burst, 1, 1_000_000)?),
            ipv4_prefix: in_range("rate_limit.ipv4_prefix", self.ipv4_prefix, 8, 32)?,
            ipv6_prefix: in_range("rate_limit.ipv6_prefix", self.ipv6_prefix, 16, 128)?,
            action: self.action,
            max_prefixes: in_range("rate_limit.max_prefixes", self.max_prefixes, 2, 10_000_000)?,
            exempt,
            exempt_asns,
        })
    }
}
