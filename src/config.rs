//! Configuration: TOML text over the embedded default -> [`RawConfig`] (serde,
//! unknown keys refused) -> `validate` -> typed [`Config`].
//!
//! One file per TOML table under `config/`, each holding the table's raw struct, its
//! validation and its typed result side by side, so adding a key touches one file
//! (plus `config/trackedge.toml`, which documents it and gives its default). Config
//! owns every settings type; stages import them from here and config imports no
//! stage.
//!
//! Defaults live in one place: the user's file is laid over the embedded
//! [`EMBEDDED_DEFAULT`] table by table, then deserialized. Parsing works on a `&str`
//! plus explicit [`Overrides`] so tests never touch the process environment;
//! `main.rs` gathers flags and `TRACKEDGE_*` variables into the overrides. Every
//! error names the dotted key it is about (`spool.batch_delay_ms`).

mod admin;
mod classify;
mod client_ip;
mod dedup;
mod forward;
mod geoip;
mod health;
mod log;
mod memory;
mod privacy;
mod public;
mod rate_limit;
mod shutdown;
mod spool;
mod tokens;
mod user_agent;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use admin::AdminConfig;
pub use classify::ClassifyConfig;
pub use client_ip::ClientIpConfig;
pub use dedup::{DedupSettings, MAX_BURST_LINKS};
pub use forward::{FileSinkConfig, ForwardConfig, HttpSinkConfig, KafkaSinkConfig, SinkConfig};
pub use geoip::GeoipConfig;
pub use health::HealthConfig;
pub use log::{LogConfig, LogFormat};
pub use memory::MemoryConfig;
pub use privacy::{IpMode, PrivacyConfig, SignalPolicy, UaMode};
pub use public::{PublicConfig, TlsCertConfig};
pub use rate_limit::{Action, RateLimitSettings};
pub use shutdown::ShutdownConfig;
pub use spool::{Durability, FullPolicy, SpoolConfig};
pub use tokens::TokensConfig;
pub use user_agent::UserAgentConfig;

/// The default configuration, compiled in so the binary runs anywhere; every key
/// has its default here and nowhere else.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/trackedge.toml");
/// Where `serve` looks first when no `--config` is given.
pub const DEFAULT_PATH: &str = "config/trackedge.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid TOML: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Values that win over the file: command-line flags, then `TRACKEDGE_*` variables.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub public_addr: Option<String>,
    pub admin_addr: Option<String>,
    pub data_dir: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    node_id: String,
    data_dir: String,
    worker_threads: usize,
    public: public::RawPublic,
    admin: admin::RawAdmin,
    tokens: tokens::RawTokens,
    spool: spool::RawSpool,
    forward: forward::RawForward,
    privacy: privacy::RawPrivacy,
    retention: spool::RawRetention,
    log: log::RawLog,
    shutdown: shutdown::RawShutdown,
    health: health::RawHealth,
    memory: memory::RawMemory,
    client_ip: client_ip::RawClientIp,
    user_agent: user_agent::RawUserAgent,
    geoip: geoip::RawGeoip,
    classify: classify::RawClassify,
    dedup: dedup::RawDedup,
    rate_limit: rate_limit::RawRateLimit,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub data_dir: PathBuf,
    /// Async worker threads; `None`: one per core.
    pub worker_threads: Option<NonZeroUsize>,
    pub public: PublicConfig,
    pub admin: AdminConfig,
    pub tokens: TokensConfig,
    pub spool: SpoolConfig,
    pub forward: ForwardConfig,
    pub privacy: PrivacyConfig,
    pub log: LogConfig,
    pub shutdown: ShutdownConfig,
    pub health: HealthConfig,
    pub memory: MemoryConfig,
    pub client_ip: ClientIpConfig,
    pub user_agent: UserAgentConfig,
    pub geoip: GeoipConfig,
    pub classify: ClassifyConfig,
    pub dedup: DedupSettings,
    pub rate_limit: RateLimitSettings,
}

impl Config {
    /// Parses and validates config text laid over the embedded default, applying
    /// the overrides first.
    pub fn from_toml_str(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let user: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        let mut merged: toml::Table = EMBEDDED_DEFAULT
            .parse()
            .expect("the embedded default is valid TOML (a unit test parses it)");
        lay_over(&mut merged, user);
        let mut raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(merged))
            .map_err(|e| ConfigError::Invalid {
                key: e.path().to_string(),
                // The TOML error repeats the path on a line of its own.
                message: e
                    .inner()
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            })?;
        raw.apply(overrides);
        raw.validate()
    }

    /// Reads `path`, or the embedded default when `path` is `None` and
    /// [`DEFAULT_PATH`] does not exist.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => read(path)?,
            None if Path::new(DEFAULT_PATH).exists() => read(Path::new(DEFAULT_PATH))?,
            None => String::new(),
        };
        Self::from_toml_str(&text, overrides)
    }

    /// The key file `serve` and `sign` share.
    pub fn key_file(&self) -> PathBuf {
        self.tokens
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("keys.txt"))
    }

    /// True when the key file is the generated default (and may be created).
    pub fn key_file_is_generated(&self) -> bool {
        self.tokens.key_file.is_none()
    }
}

/// Lays `user` over `base`: tables merge key by key, anything else replaces.
fn lay_over(base: &mut toml::Table, user: toml::Table) {
    for (key, value) in user {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => lay_over(below, above),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

impl RawConfig {
    fn apply(&mut self, overrides: &Overrides) {
        if let Some(addr) = &overrides.public_addr {
            self.public.addr.clone_from(addr);
        }
        if let Some(addr) = &overrides.admin_addr {
            self.admin.addr.clone_from(addr);
        }
        if let Some(dir) = &overrides.data_dir {
            self.data_dir.clone_from(dir);
        }
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let node_id = if self.node_id.is_empty() {
            host_name()
        } else {
            self.node_id
        };
        if node_id.len() > 64 || node_id.chars().any(|c| c.is_control()) {
            return Err(invalid(
                "node_id",
                "must be at most 64 bytes without control characters",
            ));
        }
        if self.data_dir.is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let data_dir = PathBuf::from(&self.data_dir);
        let public = self.public.validate()?;
        let admin = self.admin.validate(public.addr)?;
        let classify = self.classify.validate()?;
        Ok(Config {
            node_id,
            worker_threads: NonZeroUsize::new(self.worker_threads),
            public,
            admin,
            tokens: self.tokens.validate()?,
            spool: self
                .spool
                .validate(&data_dir, &self.retention, classify.hold_back)?,
            forward: self.forward.validate(&data_dir)?,
            privacy: self.privacy.validate()?,
            log: self.log.validate()?,
            shutdown: self.shutdown.validate()?,
            health: self.health.validate()?,
            memory: self.memory.validate()?,
            client_ip: self.client_ip.validate()?,
            user_agent: self.user_agent.validate()?,
            geoip: self.geoip.validate()?,
            rate_limit: self.rate_limit.validate()?,
            classify,
            dedup: self.dedup.validate()?,
            data_dir,
        })
    }
}

fn in_range<T>(key: &str, value: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < min || value > max {
        return Err(invalid(key, format!("must be between {min} and {max}")));
    }
    Ok(value)
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like 127.0.0.1:8080 or [::1]:8080"),
        )
    })
}

fn millis(key: &str, value: u64, min: u64) -> Result<Duration, ConfigError> {
    if value < min {
        return Err(invalid(key, format!("must be at least {min} ms")));
    }
    Ok(Duration::from_millis(value))
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && name.len() <= 64)
        .unwrap_or_else(|| "edge".to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, &Overrides::default())
    }

    /// The error text for `text`, which must be refused.
    pub(crate) fn refused(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_embedded_default_validates_and_empty_text_is_it() {
        let config = parse("").expect("defaults validate");
        assert_eq!(config.public.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.key_file(), PathBuf::from("data/keys.txt"));
        assert!(config.key_file_is_generated());
        parse(EMBEDDED_DEFAULT).expect("the embedded default as a file validates");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_dotted_key() {
        let err = refused("[public]\nadress = \"x\"\n");
        assert!(err.contains("`public.adress`"), "{err}");
        let err = refused("bogus = 1\n");
        assert!(err.contains("`bogus`"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_dotted_key() {
        let err = refused("[spool]\nchannel_capacity = \"lots\"\n");
        assert!(err.contains("`spool.channel_capacity`"), "{err}");
        let err = refused("[public]\ntls = [{ cert_path = 1, key_path = \"k\" }]\n");
        assert!(err.contains("`public.tls[0].cert_path`"), "{err}");
    }

    #[test]
    fn unknown_enum_values_name_the_key_and_the_allowed_values() {
        let err = refused("[log]\nformat = \"xml\"\n");
        assert!(
            err.contains("`log.format`") && err.contains("`text`") && err.contains("`json`"),
            "{err}"
        );
    }

    #[test]
    fn bad_toml_is_a_parse_error() {
        assert!(matches!(parse("[public"), Err(ConfigError::Parse(_))));
    }

    #[test]
    fn tables_merge_over_the_default_key_by_key() {
        let config = parse("[spool]\nchannel_capacity = 7\n").unwrap();
        assert_eq!(config.spool.channel_capacity.get(), 7);
        assert_eq!(config.spool.max_batch_events.get(), 1024, "the rest stays");
    }

    #[test]
    fn overrides_win_over_the_file() {
        let overrides = Overrides {
            public_addr: Some("127.0.0.1:0".into()),
            admin_addr: Some("127.0.0.1:0".into()),
            data_dir: Some("/tmp/x".into()),
        };
        let config = Config::from_toml_str("data_dir = \"y\"", &overrides).unwrap();
        assert_eq!(config.public.addr.port(), 0);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    }
}
