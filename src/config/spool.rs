//! `[spool]` and `[retention]`: the durable log's hand-off, group commits,
//! durability and bounds.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, millis, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    dir: String,
    channel_capacity: usize,
    max_batch_events: usize,
    max_batch_bytes: usize,
    batch_delay_ms: u64,
    durability: DurabilityMode,
    flush_every_ms: u64,
    max_bytes: u64,
    full_policy: FullPolicy,
    cache_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    max_age_secs: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DurabilityMode {
    Interval,
    Batch,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub channel_capacity: NonZeroUsize,
    pub max_batch_events: NonZeroUsize,
    pub max_batch_bytes: usize,
    pub batch_delay: Duration,
    pub durability: Durability,
    pub max_bytes: u64,
    /// `retention.max_age_secs`: events and dead letters older than this go.
    pub max_age: Duration,
    pub full_policy: FullPolicy,
    pub cache_bytes: u64,
    /// `classify.hold_back_ms`: segments younger than this are not forwarded yet.
    pub hold_back: Duration,
}

/// When spooled events become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync at most this long after a write: the crash loss window.
    Interval(Duration),
    /// fsync after every batch, before the writer takes the next one.
    EveryBatch,
}

/// What happens when the spool reaches `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    DropOldest,
    DropNewest,
}

impl RawSpool {
    pub(super) fn validate(
        self,
        data_dir: &Path,
        retention: &RawRetention,
        hold_back: Duration,
    ) -> Result<SpoolConfig, ConfigError> {
        if self.dir.is_empty() {
            return Err(invalid("spool.dir", "must not be empty"));
        }
        let durability = match self.durability {
            DurabilityMode::Interval => {
                Durability::Interval(millis("spool.flush_every_ms", self.flush_every_ms, 1)?)
            }
            DurabilityMode::Batch => Durability::EveryBatch,
        };
        if self.max_batch_bytes < 1024 {
            return Err(invalid("spool.max_batch_bytes", "must be at least 1024"));
        }
        if self.max_bytes < 1 << 16 {
            return Err(invalid("spool.max_bytes", "must be at least 65536"));
        }
        if retention.max_age_secs == 0 {
            return Err(invalid("retention.max_age_secs", "must be at least 1"));
        }
        // A bound smaller than a few commits would drop whole batches at a time.
        if self.max_batch_bytes as u64 > self.max_bytes / 4 {
            return Err(invalid(
                "spool.max_batch_bytes",
                format!(
                    "must be at most a quarter of spool.max_bytes ({})",
                    self.max_bytes / 4
                ),
            ));
        }
        Ok(SpoolConfig {
            dir: data_dir.join(&self.dir),
            channel_capacity: NonZeroUsize::new(self.channel_capacity)
                .ok_or_else(|| invalid("spool.channel_capacity", "must be at least 1"))?,
            max_batch_events: NonZeroUsize::new(self.max_batch_events)
                .ok_or_else(|| invalid("spool.max_batch_events", "must be at least 1"))?,
            max_batch_bytes: self.max_batch_bytes,
            batch_delay: millis("spool.batch_delay_ms", self.batch_delay_ms, 0)?,
            durability,
            max_bytes: self.max_bytes,
            max_age: Duration::from_secs(retention.max_age_secs),
            full_policy: self.full_policy,
            cache_bytes: self.cache_bytes.max(1 << 20),
            hold_back,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};
    use super::*;

    #[test]
    fn spool_keys_are_checked_by_name() {
        for (text, key) in [
            ("[spool]\nchannel_capacity = 0\n", "spool.channel_capacity"),
            ("[spool]\nfull_policy = \"panic\"\n", "spool.full_policy"),
            ("[spool]\ndurability = \"sometimes\"\n", "spool.durability"),
            ("[spool]\nmax_bytes = 1000\n", "spool.max_bytes"),
            ("[spool]\nmax_bytes = 65536\n", "spool.max_batch_bytes"),
            ("[retention]\nmax_age_secs = 0\n", "retention.max_age_secs"),
        ] {
            let err = refused(text);
            assert!(err.contains(key), "{text}: {err}");
        }
        let config =
            parse("[spool]\ndurability = \"batch\"\nfull_policy = \"drop_newest\"\n").unwrap();
        assert_eq!(config.spool.durability, Durability::EveryBatch);
        assert_eq!(config.spool.full_policy, FullPolicy::DropNewest);
    }
}
