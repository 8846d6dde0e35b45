//! `[tokens]`: where the signing keys live and how often they are re-read.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{millis, non_empty, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    key_file: String,
    reload_interval_ms: u64,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// `None`: the generated `<data_dir>/keys.txt`.
    pub key_file: Option<PathBuf>,
    pub reload_interval: Duration,
}

impl RawTokens {
    pub(super) fn validate(self) -> Result<TokensConfig, ConfigError> {
        Ok(TokensConfig {
            key_file: non_empty(self.key_file).map(PathBuf::from),
            reload_interval: millis("tokens.reload_interval_ms", self.reload_interval_ms, 100)?,
        })
    }
}
