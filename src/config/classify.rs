//! `[classify]`: where the operator's rules and network sets are, how often they are
//! checked for changes, the heuristics' limits and the spool's hold-back.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{in_range, invalid, millis, non_empty, ConfigError};
use crate::token::Kind;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClassify {
    rules_file: String,
    networks_dir: String,
    reload_interval_ms: u64,
    fast_open_secs: u64,
    fast_click_secs: u64,
    fast_download_secs: u64,
    fast_unsubscribe_secs: u64,
    oversized_ua_bytes: usize,
    hold_back_ms: u64,
    /// Replaced by the network catalogue; kept only to say so.
    apple_mpp_cidrs: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct ClassifyConfig {
    /// The operator's rules, evaluated before everything shipped.
    pub rules_file: Option<PathBuf>,
    /// The operator's network sets (`*.toml`), added to the shipped catalogue.
    pub networks_dir: Option<PathBuf>,
    /// How often the rules file and the network directory are checked for changes.
    pub reload_interval: Duration,
    /// Per kind (`Kind::ALL` order): a hit this soon after the signed `sent_at` from a
    /// data-centre network is a machine. 0: off for that kind.
    pub fast_secs: [u64; Kind::ALL.len()],
    /// A User-Agent header longer than this is no person's client.
    pub oversized_ua_bytes: usize,
    /// How long the spool holds events back before the forwarder may send them.
    pub hold_back: Duration,
}

impl ClassifyConfig {
    /// The timing window for `kind`, if on.
    pub fn fast_secs(&self, kind: Kind) -> Option<u64> {
        let index = Kind::ALL.iter().position(|k| *k == kind)?;
        Some(self.fast_secs[index]).filter(|secs| *secs > 0)
    }
}

impl RawClassify {
    pub(super) fn validate(self) -> Result<ClassifyConfig, ConfigError> {
        if self.apple_mpp_cidrs.is_some() {
            return Err(invalid(
                "classify.apple_mpp_cidrs",
                "was replaced by the network catalogue (config/networks/, see README \"Classification\"); remove the key",
            ));
        }
        let secs = |key, value| in_range(key, value, 0, 86_400);
        let fast_secs = |kind| match kind {
            Kind::Open => secs("classify.fast_open_secs", self.fast_open_secs),
            Kind::Click => secs("classify.fast_click_secs", self.fast_click_secs),
            Kind::Download => secs("classify.fast_download_secs", self.fast_download_secs),
            Kind::Unsubscribe => secs("classify.fast_unsubscribe_secs", self.fast_unsubscribe_secs),
            // Sender hits are never recorded; a trap is a machine whatever its timing.
            Kind::Sender | Kind::Trap => Ok(0),
        };
        let mut fast = [0; Kind::ALL.len()];
        for (slot, kind) in fast.iter_mut().zip(Kind::ALL) {
            *slot = fast_secs(kind)?;
        }
        Ok(ClassifyConfig {
            rules_file: non_empty(self.rules_file).map(PathBuf::from),
            networks_dir: non_empty(self.networks_dir).map(PathBuf::from),
            reload_interval: millis("classify.reload_interval_ms", self.reload_interval_ms, 100)?,
            fast_secs: fast,
            oversized_ua_bytes: in_range(
                "classify.oversized_ua_bytes",
                self.oversized_ua_bytes,
                64,
                65_536,
            )?,
            hold_back: Duration::from_millis(in_range(
                "classify.hold_back_ms",
                self.hold_back_ms,
                0,
                600_000,
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let config = parse("").unwrap().classify;
        assert_eq!(config.rules_file, None);
        assert_eq!(config.fast_secs(Kind::Click), Some(60));
        assert_eq!(config.fast_secs(Kind::Open), Some(30));
        assert_eq!(config.fast_secs(Kind::Unsubscribe), None);
        assert_eq!(config.fast_secs(Kind::Sender), None);
        assert_eq!(config.fast_secs(Kind::Trap), None);
        let config = parse(
            "[classify]\nrules_file = \"r.toml\"\nnetworks_dir = \"nets\"\nfast_click_secs = 0\n",
        )
        .unwrap()
        .classify;
        assert_eq!(config.rules_file, Some(PathBuf::from("r.toml")));
        assert_eq!(config.networks_dir, Some(PathBuf::from("nets")));
        assert_eq!(config.fast_secs(Kind::Click), None);
    }

    #[test]
    fn keys_are_checked_by_name() {
        for (text, key) in [
            ("fast_click_secs = 100000\n", "classify.fast_click_secs"),
            ("oversized_ua_bytes = 10\n", "classify.oversized_ua_bytes"),
            ("reload_interval_ms = 5\n", "classify.reload_interval_ms"),
            ("hold_back_ms = 700000\n", "classify.hold_back_ms"),
            ("apple_mpp_cidrs = [\"17.0.0.0/8\"]\n", "network catalogue"),
        ] {
            let err = refused(&format!("[classify]\n{text}"));
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
