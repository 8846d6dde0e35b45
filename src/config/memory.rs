//! `[memory]`: when heap that a busy period freed is handed back to the kernel.

use std::time::Duration;

use serde::Deserialize;

use super::{in_range, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMemory {
    release_check_ms: u64,
    release_min_growth_mb: u64,
}

#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// How often the process looks whether it is quiet and holds freed heap;
    /// `None`: never (the allocator keeps what it freed, as it does by default).
    pub release_check: Option<Duration>,
    /// Resident memory must have grown this much since the last release (or since
    /// start) before a quiet process releases again.
    pub release_min_growth_bytes: u64,
}

impl RawMemory {
    pub(super) fn validate(self) -> Result<MemoryConfig, ConfigError> {
        let check = match self.release_check_ms {
            0 => None,
            ms => Some(Duration::from_millis(in_range(
                "memory.release_check_ms",
                ms,
                // CPU time comes in 10 ms ticks: a shorter look cannot tell 5% of a
                // core from nothing.
                1000,
                3_600_000,
            )?)),
        };
        let growth_mb = in_range(
            "memory.release_min_growth_mb",
            self.release_min_growth_mb,
            // 0 would trim on every quiet look, forever.
            1,
            1 << 20,
        )?;
        Ok(MemoryConfig {
            release_check: check,
            release_min_growth_bytes: growth_mb << 20,
        })
    }
}
