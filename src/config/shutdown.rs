//! `[shutdown]`: how long in-flight requests get on a stop.

use std::time::Duration;

use serde::Deserialize;

use super::{millis, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    drain_timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub drain_timeout: Duration,
}

impl RawShutdown {
    pub(super) fn validate(self) -> Result<ShutdownConfig, ConfigError> {
        Ok(ShutdownConfig {
            drain_timeout: millis("shutdown.drain_timeout_ms", self.drain_timeout_ms, 0)?,
        })
    }
}
