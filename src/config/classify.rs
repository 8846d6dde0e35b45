//! `[classify]`: the operator's rules file and the networks and timings the
//! verdict uses.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{in_range, invalid, non_empty, ConfigError};
use crate::enrich::cidr::CidrSet;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClassify {
    rules_file: String,
    apple_mpp_cidrs: Vec<String>,
    fast_click_secs: u64,
    hold_back_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ClassifyConfig {
    pub rules_file: Option<PathBuf>,
    pub apple_mpp_cidrs: CidrSet,
    pub fast_click_secs: u64,
    /// How long the spool holds events back before the forwarder may send them.
    pub hold_back: Duration,
}

impl RawClassify {
    pub(super) fn validate(self) -> Result<ClassifyConfig, ConfigError> {
        Ok(ClassifyConfig {
            rules_file: non_empty(self.rules_file).map(PathBuf::from),
            apple_mpp_cidrs: CidrSet::parse(&self.apple_mpp_cidrs)
                .map_err(|e| invalid("classify.apple_mpp_cidrs", e.to_string()))?,
            fast_click_secs: in_range("classify.fast_click_secs", self.fast_click_secs, 0, 86_400)?,
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
    use super::super::tests::refused;

    #[test]
    fn keys_are_checked_by_name() {
        for (text, key) in [
            (
                "[classify]\napple_mpp_cidrs = [\"apple\"]\n",
                "classify.apple_mpp_cidrs",
            ),
            (
                "[classify]\nfast_click_secs = 100000\n",
                "classify.fast_click_secs",
            ),
        ] {
            let err = refused(text);
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
