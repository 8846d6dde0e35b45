//! `[health]`: how long a stage may go without a heartbeat before the edge turns
//! unready (`/readyz` 503, `trackedge_ready` 0).

use std::time::Duration;

use serde::Deserialize;

use super::{millis, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    writer_deadline_ms: u64,
    forwarder_deadline_ms: u64,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// The spool writer loops every few milliseconds; this long without a loop is
    /// a stuck writer.
    pub writer_deadline: Duration,
    /// The forwarder's read loop (upstream failures do not count: it keeps looping
    /// while batches retry).
    pub forwarder_deadline: Duration,
}

impl RawHealth {
    pub(super) fn validate(self) -> Result<HealthConfig, ConfigError> {
        Ok(HealthConfig {
            writer_deadline: millis("health.writer_deadline_ms", self.writer_deadline_ms, 100)?,
            forwarder_deadline: millis(
                "health.forwarder_deadline_ms",
                self.forwarder_deadline_ms,
                // The read loop beats at least every 500 ms when idle.
                1000,
            )?,
        })
    }
}
