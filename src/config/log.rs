//! `[log]`: the log format and level.

use serde::Deserialize;

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    format: LogFormat,
    level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl RawLog {
    /// The level is a level, or comma-separated `level` / `target=level` directives.
    /// A bare word that is not a level would be read by the log filter as a target
    /// name and silence everything else, so it is refused here.
    pub(super) fn validate(self) -> Result<LogConfig, ConfigError> {
        let is_level = |word: &str| {
            LOG_LEVELS
                .iter()
                .any(|l| l.eq_ignore_ascii_case(word.trim()))
        };
        let valid = !self.level.trim().is_empty()
            && self
                .level
                .split(',')
                .all(|directive| match directive.split_once('=') {
                    Some((target, level)) => !target.trim().is_empty() && is_level(level),
                    None => is_level(directive),
                });
        if !valid {
            return Err(invalid(
                "log.level",
                format!(
                    "{:?} is not a level ({}) or a list of target=level directives",
                    self.level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        Ok(LogConfig {
            format: self.format,
            level: self.level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};

    #[test]
    fn log_levels_are_levels_or_target_directives() {
        for good in [
            "info",
            "WARN",
            "off",
            "info,trackedge=debug",
            "hyper=warn, info",
        ] {
            parse(&format!("[log]\nlevel = \"{good}\"\n")).expect(good);
        }
        for bad in [
            "warning",
            "",
            "trackedge",
            "info,verbose",
            "=debug",
            "x=loud",
        ] {
            let err = refused(&format!("[log]\nlevel = \"{bad}\"\n"));
            assert!(err.contains("log.level"), "{bad}: {err}");
        }
    }
}
