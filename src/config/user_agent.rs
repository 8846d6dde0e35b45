//! `[user_agent]`: how much of a User-Agent is kept and how many are cached parsed.

use std::num::NonZeroUsize;

use serde::Deserialize;

use super::{in_range, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUserAgent {
    max_bytes: usize,
    cache_entries: usize,
}

#[derive(Debug, Clone)]
pub struct UserAgentConfig {
    /// Longer User-Agent values are cut before parsing, caching and storage.
    pub max_bytes: usize,
    pub cache_entries: NonZeroUsize,
}

impl RawUserAgent {
    pub(super) fn validate(self) -> Result<UserAgentConfig, ConfigError> {
        let max_bytes = in_range("user_agent.max_bytes", self.max_bytes, 16, 8192)?;
        let entries = in_range(
            "user_agent.cache_entries",
            self.cache_entries,
            2,
            10_000_000,
        )?;
        Ok(UserAgentConfig {
            max_bytes,
            cache_entries: NonZeroUsize::new(entries).expect("checked to be at least 2"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::refused;

    #[test]
    fn bounds_are_checked() {
        for (text, key) in [
            ("[user_agent]\nmax_bytes = 8\n", "user_agent.max_bytes"),
            (
                "[user_agent]\ncache_entries = 0\n",
                "user_agent.cache_entries",
            ),
        ] {
            let err = refused(text);
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}
