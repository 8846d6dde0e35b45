//! The `[classify]` table: where the operator's rules and network sets are, how often
//! they are checked for changes, and the heuristics' limits.
//!
//! Raw struct (serde, defaults), validation and the typed [`ClassifyConfig`] live
//! together here; `config.rs` only calls [`RawClassify::validate`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{in_range, invalid, millis, non_empty, ConfigError};
use crate::token::Kind;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClassify {
    pub rules_file: String,
    pub networks_dir: String,
    pub reload_interval_ms: u64,
    pub fast_open_secs: u64,
    pub fast_click_secs: u64,
    pub fast_download_secs: u64,
    pub fast_unsubscribe_secs: u64,
    pub oversized_ua_bytes: usize,
    /// Replaced by the network catalogue; kept only to say so.
    pub apple_mpp_cidrs: Option<Vec<String>>,
}

impl Default for RawClassify {
    fn default() -> Self {
        Self {
            rules_file: String::new(),
            networks_dir: String::new(),
            reload_interval_ms: 2000,
            fast_open_secs: 30,
            fast_click_secs: 60,
            fast_download_secs: 60,
            // RFC 8058: the mailbox provider POSTs the unsubscribe from its own
            // servers the moment the person asks, so speed says nothing here.
            fast_unsubscribe_secs: 0,
            oversized_ua_bytes: 1024,
            apple_mpp_cidrs: None,
        }
    }
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
}

impl ClassifyConfig {
    /// The timing window for `kind`, if on.
    pub fn fast_secs(&self, kind: Kind) -> Option<u64> {
        let index = Kind::ALL.iter().position(|k| *k == kind)?;
        Some(self.fast_secs[index]).filter(|secs| *secs > 0)
    }
}

impl RawClassify {
    pub fn validate(self) -> Result<ClassifyConfig, ConfigError> {
        if self.apple_mpp_cidrs.is_some() {
            return Err(invalid(
                "classify.apple_mpp_cidrs",
                "was replaced by the network catalogue (config/networks/, see README \"Classification\"); remove the key",
            ));
        }
        let secs = |key, value| in_range(key, value, 0, 86_400);
        Ok(ClassifyConfig {
            rules_file: non_empty(self.rules_file).map(PathBuf::from),
            networks_dir: non_empty(self.networks_dir).map(PathBuf::from),
            reload_interval: millis("classify.reload_interval_ms", self.reload_interval_ms, 100)?,
            fast_secs: [
                secs("classify.fast_open_secs", self.fast_open_secs)?,
                secs("classify.fast_click_secs", self.fast_click_secs)?,
                secs("classify.fast_download_secs", self.fast_download_secs)?,
                secs("classify.fast_unsubscribe_secs", self.fast_unsubscribe_secs)?,
                // Sender hits are never recorded.
                0,
            ],
            oversized_ua_bytes: in_range(
                "classify.oversized_ua_bytes",
                self.oversized_ua_bytes,
                64,
                65_536,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClassifyConfig, String> {
        let raw: RawClassify = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let config = parse("").unwrap();
        assert_eq!(config.rules_file, None);
        assert_eq!(config.fast_secs(Kind::Click), Some(60));
        assert_eq!(config.fast_secs(Kind::Open), Some(30));
        assert_eq!(config.fast_secs(Kind::Unsubscribe), None);
        assert_eq!(config.fast_secs(Kind::Sender), None);
        let config =
            parse("rules_file = \"r.toml\"\nnetworks_dir = \"nets\"\nfast_click_secs = 0\n")
                .unwrap();
        assert_eq!(config.rules_file, Some(PathBuf::from("r.toml")));
        assert_eq!(config.networks_dir, Some(PathBuf::from("nets")));
        assert_eq!(config.fast_secs(Kind::Click), None);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("fast_click_secs = 100000\n", "classify.fast_click_secs"),
            ("oversized_ua_bytes = 10\n", "classify.oversized_ua_bytes"),
            ("reload_interval_ms = 5\n", "classify.reload_interval_ms"),
            ("apple_mpp_cidrs = [\"17.0.0.0/8\"]\n", "network catalogue"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
