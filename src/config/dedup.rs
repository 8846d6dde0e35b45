//! `[dedup]`: the first-seen window, the click-burst rule and the trap window.

use serde::Deserialize;

use super::{in_range, ConfigError};

/// Distinct links remembered per message within a burst window.
pub const MAX_BURST_LINKS: usize = 8;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDedup {
    window_secs: u64,
    max_entries: usize,
    burst_links: usize,
    burst_window_ms: u64,
    trap_window_secs: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct DedupSettings {
    pub window_ms: u64,
    pub max_entries: usize,
    pub burst_links: usize,
    pub burst_window_ms: u64,
    /// Clicks of a message from the network that followed its trap link, this long
    /// before or after the trap hit, are a machine's.
    pub trap_window_ms: u64,
}

impl RawDedup {
    pub(super) fn validate(self) -> Result<DedupSettings, ConfigError> {
        let window_secs = in_range("dedup.window_secs", self.window_secs, 1, 30 * 86_400)?;
        Ok(DedupSettings {
            window_ms: window_secs * 1000,
            max_entries: in_range("dedup.max_entries", self.max_entries, 2, 100_000_000)?,
            burst_links: in_range("dedup.burst_links", self.burst_links, 2, MAX_BURST_LINKS)?,
            burst_window_ms: in_range("dedup.burst_window_ms", self.burst_window_ms, 1, 60_000)?,
            trap_window_ms: in_range("dedup.trap_window_secs", self.trap_window_secs, 1, 3600)?
                * 1000,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};

    #[test]
    fn keys_are_checked_by_name() {
        for (text, key) in [
            ("[dedup]\nwindow_secs = 0\n", "dedup.window_secs"),
            ("[dedup]\nmax_entries = 1\n", "dedup.max_entries"),
            ("[dedup]\nburst_links = 9\n", "dedup.burst_links"),
            ("[dedup]\nburst_window_ms = 0\n", "dedup.burst_window_ms"),
            ("[dedup]\ntrap_window_secs = 0\n", "dedup.trap_window_secs"),
        ] {
            let err = refused(text);
            assert!(err.contains(key), "{text}: {err}");
        }
        assert_eq!(parse("").unwrap().dedup.window_ms, 86_400_000);
    }
}
