//! Configuration: TOML text -> [`RawConfig`] (serde, unknown keys refused, defaults)
//! -> [`RawConfig::validate`] -> typed [`Config`].
//!
//! Parsing works on a `&str` plus explicit [`Overrides`] so tests never touch the
//! process environment; `main.rs` gathers flags and `TRACKEDGE_*` variables into the
//! overrides. Every validation error names the key it is about.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::enrich::cidr::CidrSet;
use crate::enrich::client_ip::{self, Source};
use crate::enrich::dedup::{DedupSettings, MAX_BURST_LINKS};
use crate::ratelimit::{Action, RateLimitSettings};

/// The default configuration, compiled in so the binary runs anywhere.
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
    #[error("config is not valid TOML for trackedge: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub node_id: String,
    pub data_dir: String,
    pub worker_threads: usize,
    pub public: RawPublic,
    pub admin: RawAdmin,
    pub tokens: RawTokens,
    pub spool: RawSpool,
    pub forward: RawForward,
    pub privacy: RawPrivacy,
    pub retention: RawRetention,
    pub log: RawLog,
    pub shutdown: RawShutdown,
    pub client_ip: RawClientIp,
    pub user_agent: RawUserAgent,
    pub geoip: RawGeoip,
    pub classify: RawClassify,
    pub dedup: RawDedup,
    pub rate_limit: RawRateLimit,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPublic {
    pub addr: String,
    pub base_url: String,
    pub http2: bool,
    pub header_read_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub max_token_bytes: usize,
    pub click_fallback_url: String,
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
    pub idle_timeout_ms: u64,
    pub tls_reload_interval_ms: u64,
    pub tls: Vec<RawTlsCert>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsCert {
    pub cert_path: String,
    pub key_path: String,
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    pub addr: String,
    pub bearer_token: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokens {
    pub key_file: String,
    pub reload_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpool {
    pub dir: String,
    pub channel_capacity: usize,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub batch_delay_ms: u64,
    pub durability: String,
    pub flush_every_ms: u64,
    pub max_bytes: u64,
    pub full_policy: String,
    pub cache_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPrivacy {
    pub ip_mode: String,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub ua_mode: String,
    pub dnt_policy: String,
    pub optout_cookie: String,
    pub optout_cookie_days: u32,
    pub cookie_secure: bool,
    pub sender_cookie: String,
    pub sender_cookie_days: u32,
    pub self_open_window_secs: u64,
    pub self_open_policy: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetention {
    pub max_age_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawForward {
    pub sink: String,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub max_in_flight: usize,
    pub linger_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub circuit_failures: u32,
    pub circuit_open_ms: u64,
    pub shutdown_grace_ms: u64,
    pub http: RawHttpSink,
    pub file: RawFileSink,
    pub kafka: RawKafkaSink,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttpSink {
    pub url: String,
    pub bearer_token: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub timeout_ms: u64,
    pub ca_file: String,
    pub gzip: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawKafkaSink {
    pub brokers: String,
    pub topic: String,
    pub client_id: String,
    pub message_timeout_ms: u64,
    pub properties: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFileSink {
    pub path: String,
    pub max_file_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub format: String,
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClientIp {
    pub trusted_proxies: Vec<String>,
    pub header: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUserAgent {
    pub max_bytes: usize,
    pub cache_entries: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGeoip {
    pub city_db: String,
    pub asn_db: String,
    pub reload_interval_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClassify {
    pub rules_file: String,
    pub apple_mpp_cidrs: Vec<String>,
    pub fast_click_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDedup {
    pub window_secs: u64,
    pub max_entries: usize,
    pub burst_links: usize,
    pub burst_window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimit {
    pub enabled: bool,
    pub events_per_sec: f64,
    pub burst: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub action: String,
    pub max_prefixes: usize,
    pub exempt_apple_mpp: bool,
    pub exempt_asns: Vec<u32>,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self {
            enabled: true,
            events_per_sec: 20.0,
            burst: 200,
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            action: "mark".into(),
            max_prefixes: 100_000,
            exempt_apple_mpp: true,
            // Google, Microsoft, Yahoo: the networks of the mail image proxies.
            exempt_asns: vec![15169, 8075, 10310, 36647, 26101],
        }
    }
}

fn validate_rate_limit(
    raw: &RawRateLimit,
    apple_mpp_cidrs: &CidrSet,
) -> Result<RateLimitSettings, ConfigError> {
    if !(raw.events_per_sec.is_finite() && raw.events_per_sec > 0.0 && raw.events_per_sec <= 1e6) {
        return Err(invalid(
            "rate_limit.events_per_sec",
            "must be above 0 and at most 1000000",
        ));
    }
    let exempt = if raw.exempt_apple_mpp {
        apple_mpp_cidrs.clone()
    } else {
        CidrSet::default()
    };
    Ok(RateLimitSettings {
        enabled: raw.enabled,
        events_per_sec: raw.events_per_sec,
        burst: f64::from(in_range("rate_limit.burst", raw.burst, 1, 1_000_000)?),
        ipv4_prefix: in_range("rate_limit.ipv4_prefix", raw.ipv4_prefix, 8, 32)?,
        ipv6_prefix: in_range("rate_limit.ipv6_prefix", raw.ipv6_prefix, 16, 128)?,
        action: Action::parse(&raw.action)
            .ok_or_else(|| invalid("rate_limit.action", "must be \"mark\" or \"drop\""))?,
        max_prefixes: in_range("rate_limit.max_prefixes", raw.max_prefixes, 2, 10_000_000)?,
        exempt,
        exempt_asns: {
            let mut asns = raw.exempt_asns.clone();
            asns.sort_unstable();
            asns.dedup();
            asns
        },
    })
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            data_dir: "data".into(),
            worker_threads: 0,
            public: RawPublic::default(),
            admin: RawAdmin::default(),
            tokens: RawTokens::default(),
            spool: RawSpool::default(),
            forward: RawForward::default(),
            privacy: RawPrivacy::default(),
            retention: RawRetention::default(),
            log: RawLog::default(),
            shutdown: RawShutdown::default(),
            client_ip: RawClientIp::default(),
            user_agent: RawUserAgent::default(),
            geoip: RawGeoip::default(),
            classify: RawClassify::default(),
            dedup: RawDedup::default(),
            rate_limit: RawRateLimit::default(),
        }
    }
}

impl Default for RawClientIp {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            header: "x-forwarded-for".into(),
        }
    }
}

impl Default for RawUserAgent {
    fn default() -> Self {
        Self {
            max_bytes: 512,
            cache_entries: 10_000,
        }
    }
}

impl Default for RawGeoip {
    fn default() -> Self {
        Self {
            city_db: String::new(),
            asn_db: String::new(),
            reload_interval_ms: 5000,
        }
    }
}

impl Default for RawClassify {
    fn default() -> Self {
        Self {
            rules_file: String::new(),
            apple_mpp_cidrs: vec!["17.0.0.0/8".into()],
            fast_click_secs: 60,
        }
    }
}

impl Default for RawDedup {
    fn default() -> Self {
        Self {
            window_secs: 86_400,
            max_entries: 1_000_000,
            burst_links: 3,
            burst_window_ms: 1000,
        }
    }
}

impl Default for RawPublic {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            base_url: "http://127.0.0.1:8080".into(),
            http2: true,
            header_read_timeout_ms: 10_000,
            max_body_bytes: 4096,
            max_token_bytes: 4096,
            click_fallback_url: String::new(),
            max_uri_bytes: 8192,
            max_header_bytes: 16_384,
            max_headers: 100,
            max_connections: 10_000,
            max_connections_per_peer: 0,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            idle_timeout_ms: 30_000,
            tls_reload_interval_ms: 5000,
            tls: Vec::new(),
        }
    }
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:9090".into(),
            bearer_token: String::new(),
        }
    }
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            key_file: String::new(),
            reload_interval_ms: 2000,
        }
    }
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            dir: "spool".into(),
            channel_capacity: 65_536,
            max_batch_events: 1024,
            max_batch_bytes: 1 << 20,
            batch_delay_ms: 5,
            durability: "interval".into(),
            flush_every_ms: 100,
            max_bytes: 1 << 30,
            full_policy: "drop_oldest".into(),
            cache_bytes: 16 << 20,
        }
    }
}

impl Default for RawPrivacy {
    fn default() -> Self {
        Self {
            ip_mode: "truncate".into(),
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            ua_mode: "full".into(),
            dnt_policy: "flag".into(),
            optout_cookie: "te_optout".into(),
            optout_cookie_days: 1825,
            cookie_secure: true,
            sender_cookie: "te_sender".into(),
            sender_cookie_days: 365,
            self_open_window_secs: 0,
            self_open_policy: "flag".into(),
        }
    }
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            max_age_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for RawForward {
    fn default() -> Self {
        Self {
            sink: "file".into(),
            max_batch_events: 1000,
            max_batch_bytes: 1 << 20,
            max_in_flight: 4,
            linger_ms: 50,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            circuit_failures: 5,
            circuit_open_ms: 10_000,
            shutdown_grace_ms: 5000,
            http: RawHttpSink::default(),
            file: RawFileSink::default(),
            kafka: RawKafkaSink::default(),
        }
    }
}

impl Default for RawHttpSink {
    fn default() -> Self {
        Self {
            url: String::new(),
            bearer_token: String::new(),
            headers: std::collections::BTreeMap::new(),
            timeout_ms: 10_000,
            ca_file: String::new(),
            gzip: true,
        }
    }
}

impl Default for RawKafkaSink {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "trackedge-events".into(),
            client_id: "trackedge".into(),
            message_timeout_ms: 30_000,
            properties: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for RawFileSink {
    fn default() -> Self {
        Self {
            path: "events.ndjson".into(),
            max_file_bytes: 64 << 20,
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self {
            drain_timeout_ms: 10_000,
        }
    }
}

/// The validated configuration the server runs on.
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
    pub client_ip: ClientIpConfig,
    pub user_agent: UserAgentConfig,
    pub geoip: GeoipConfig,
    pub classify: ClassifyConfig,
    pub dedup: DedupSettings,
    pub rate_limit: RateLimitSettings,
}

#[derive(Debug, Clone)]
pub struct ClientIpConfig {
    /// Peers whose client-address header is believed.
    pub trusted_proxies: CidrSet,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub struct UserAgentConfig {
    /// Longer User-Agent values are cut before parsing, caching and storage.
    pub max_bytes: usize,
    pub cache_entries: NonZeroUsize,
}

#[derive(Debug, Clone)]
pub struct GeoipConfig {
    pub city_db: Option<PathBuf>,
    pub asn_db: Option<PathBuf>,
    pub reload_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct ClassifyConfig {
    pub rules_file: Option<PathBuf>,
    pub apple_mpp_cidrs: CidrSet,
    pub fast_click_secs: u64,
}

#[derive(Debug, Clone)]
pub struct PublicConfig {
    pub addr: SocketAddr,
    pub base_url: String,
    pub http2: bool,
    pub header_read_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_token_bytes: usize,
    /// Already checked to be a safe http(s) URL.
    pub click_fallback_url: Option<String>,
    /// Longer request targets get 414 before any routing.
    pub max_uri_bytes: usize,
    /// HTTP/1 read buffer: a request head larger than this is refused (431).
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Connections past this are closed at once.
    pub max_connections: usize,
    /// Connections one peer (IPv4 address, IPv6 /64) may hold; 0 = no such cap.
    pub max_connections_per_peer: usize,
    pub h2_max_concurrent_streams: u32,
    /// Reset-flood protection (HTTP/2 rapid reset).
    pub h2_max_pending_reset_streams: usize,
    /// Streams the edge may reset for a client's protocol errors before it closes
    /// the connection (the other half of reset-flood protection).
    pub h2_max_local_error_reset_streams: usize,
    /// No byte moved for this long: the connection is closed (see `crate::idle`).
    pub idle_timeout: Duration,
    /// How often the certificate and key files are checked for changes.
    pub tls_reload_interval: Duration,
    pub tls: Vec<TlsCertConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsCertConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Lower-cased; may start with `*.`.
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    pub bearer_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// `None`: the generated `<data_dir>/keys.txt`.
    pub key_file: Option<PathBuf>,
    pub reload_interval: Duration,
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
}

/// What is kept of the client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpMode {
    Truncate { ipv4_prefix: u8, ipv6_prefix: u8 },
    Full,
    Hash,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UaMode {
    Full,
    ParsedOnly,
}

/// What `DNT: 1` / `Sec-GPC: 1` do, and what a self-open does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalPolicy {
    Ignore,
    Flag,
    Drop,
}

#[derive(Debug, Clone)]
pub struct PrivacyConfig {
    pub ip_mode: IpMode,
    pub ua_mode: UaMode,
    pub dnt_policy: SignalPolicy,
    pub optout_cookie: String,
    pub optout_cookie_max_age: Duration,
    pub cookie_secure: bool,
    pub sender_cookie: String,
    pub sender_cookie_max_age: Duration,
    /// `None`: self-opens are only known by the sender cookie.
    pub self_open_window: Option<Duration>,
    /// `Flag` or `Drop` (never `Ignore`).
    pub self_open_policy: SignalPolicy,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullPolicy {
    DropOldest,
    DropNewest,
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub sink: SinkConfig,
    pub max_batch_events: NonZeroUsize,
    pub max_batch_bytes: usize,
    pub max_in_flight: NonZeroUsize,
    /// How long the oldest event may wait for a fuller batch.
    pub linger: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub circuit_failures: u32,
    pub circuit_open: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    None,
    File(FileSinkConfig),
    Http(HttpSinkConfig),
    Kafka(KafkaSinkConfig),
}

impl SinkConfig {
    pub fn name(&self) -> &'static str {
        match self {
            SinkConfig::None => "none",
            SinkConfig::File(_) => "file",
            SinkConfig::Http(_) => "http",
            SinkConfig::Kafka(_) => "kafka",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    pub path: PathBuf,
    pub max_file_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub brokers: String,
    pub topic: String,
    pub client_id: String,
    pub message_timeout: Duration,
    /// Passed to librdkafka as they are (security.protocol, sasl.*, ...).
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct HttpSinkConfig {
    pub url: http::Uri,
    pub bearer_token: Option<String>,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub gzip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub drain_timeout: Duration,
}

impl Config {
    /// Parses and validates config text, applying the overrides first.
    pub fn from_toml_str(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        raw.apply(overrides);
        raw.validate()
    }

    /// Reads `path`, or the embedded default when `path` is `None` and
    /// [`DEFAULT_PATH`] does not exist.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => read(path)?,
            None if Path::new(DEFAULT_PATH).exists() => read(Path::new(DEFAULT_PATH))?,
            None => EMBEDDED_DEFAULT.to_owned(),
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

    pub fn validate(self) -> Result<Config, ConfigError> {
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
        let admin_addr = socket_addr("admin.addr", &self.admin.addr)?;
        let bearer_token = non_empty(self.admin.bearer_token);
        if bearer_token.is_none() && !admin_addr.ip().is_loopback() {
            return Err(invalid(
                "admin.bearer_token",
                format!("must be set when admin.addr ({admin_addr}) is not a loopback address"),
            ));
        }
        let public = validate_public(self.public)?;
        if public.addr == admin_addr && public.addr.port() != 0 {
            return Err(invalid("admin.addr", "must differ from public.addr"));
        }
        let classify = ClassifyConfig {
            rules_file: non_empty(self.classify.rules_file).map(PathBuf::from),
            apple_mpp_cidrs: CidrSet::parse(&self.classify.apple_mpp_cidrs)
                .map_err(|e| invalid("classify.apple_mpp_cidrs", e.to_string()))?,
            fast_click_secs: in_range(
                "classify.fast_click_secs",
                self.classify.fast_click_secs,
                0,
                86_400,
            )?,
        };
        Ok(Config {
            node_id,
            data_dir: PathBuf::from(&self.data_dir),
            worker_threads: NonZeroUsize::new(self.worker_threads),
            public,
            admin: AdminConfig {
                addr: admin_addr,
                bearer_token,
            },
            tokens: TokensConfig {
                key_file: non_empty(self.tokens.key_file).map(PathBuf::from),
                reload_interval: millis(
                    "tokens.reload_interval_ms",
                    self.tokens.reload_interval_ms,
                    100,
                )?,
            },
            spool: validate_spool(&self.data_dir, self.spool, &self.retention)?,
            forward: validate_forward(&self.data_dir, self.forward)?,
            privacy: validate_privacy(self.privacy)?,
            log: LogConfig {
                format: match self.log.format.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => {
                        return Err(invalid(
                            "log.format",
                            format!("must be \"text\" or \"json\", not {other:?}"),
                        ))
                    }
                },
                level: self.log.level,
            },
            shutdown: ShutdownConfig {
                drain_timeout: millis(
                    "shutdown.drain_timeout_ms",
                    self.shutdown.drain_timeout_ms,
                    0,
                )?,
            },
            client_ip: validate_client_ip(self.client_ip)?,
            user_agent: validate_user_agent(&self.user_agent)?,
            geoip: GeoipConfig {
                city_db: non_empty(self.geoip.city_db).map(PathBuf::from),
                asn_db: non_empty(self.geoip.asn_db).map(PathBuf::from),
                reload_interval: millis(
                    "geoip.reload_interval_ms",
                    self.geoip.reload_interval_ms,
                    100,
                )?,
            },
            rate_limit: validate_rate_limit(&self.rate_limit, &classify.apple_mpp_cidrs)?,
            classify,
            dedup: validate_dedup(&self.dedup)?,
        })
    }
}

fn in_range<T>(key: &'static str, value: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < min || value > max {
        return Err(invalid(key, format!("must be between {min} and {max}")));
    }
    Ok(value)
}

fn validate_client_ip(raw: RawClientIp) -> Result<ClientIpConfig, ConfigError> {
    let source = Source::from_header_name(&raw.header).ok_or_else(|| {
        invalid(
            "client_ip.header",
            format!(
                "{:?} is not one of {}",
                raw.header,
                client_ip::HEADERS.join(", ")
            ),
        )
    })?;
    let trusted_proxies = CidrSet::parse(&raw.trusted_proxies)
        .map_err(|e| invalid("client_ip.trusted_proxies", e.to_string()))?;
    Ok(ClientIpConfig {
        trusted_proxies,
        source,
    })
}

fn validate_user_agent(raw: &RawUserAgent) -> Result<UserAgentConfig, ConfigError> {
    let max_bytes = in_range("user_agent.max_bytes", raw.max_bytes, 16, 8192)?;
    let entries = in_range("user_agent.cache_entries", raw.cache_entries, 2, 10_000_000)?;
    Ok(UserAgentConfig {
        max_bytes,
        cache_entries: NonZeroUsize::new(entries).expect("checked to be at least 2"),
    })
}

fn validate_dedup(raw: &RawDedup) -> Result<DedupSettings, ConfigError> {
    let window_secs = in_range("dedup.window_secs", raw.window_secs, 1, 30 * 86_400)?;
    Ok(DedupSettings {
        window_ms: window_secs * 1000,
        max_entries: in_range("dedup.max_entries", raw.max_entries, 2, 100_000_000)?,
        burst_links: in_range("dedup.burst_links", raw.burst_links, 2, MAX_BURST_LINKS)?,
        burst_window_ms: in_range("dedup.burst_window_ms", raw.burst_window_ms, 1, 60_000)?,
    })
}

fn validate_public(raw: RawPublic) -> Result<PublicConfig, ConfigError> {
    let addr = socket_addr("public.addr", &raw.addr)?;
    let base_url = raw.base_url.trim_end_matches('/').to_owned();
    crate::token::check_target(&base_url)
        .map_err(|e| invalid("public.base_url", format!("{e} ({base_url:?})")))?;
    let click_fallback_url = match non_empty(raw.click_fallback_url) {
        None => None,
        Some(url) => {
            crate::token::check_target(&url)
                .map_err(|e| invalid("public.click_fallback_url", format!("{e} ({url:?})")))?;
            Some(url)
        }
    };
    if !(64..=1 << 20).contains(&raw.max_body_bytes) {
        return Err(invalid(
            "public.max_body_bytes",
            "must be between 64 and 1048576",
        ));
    }
    if !(64..=16_384).contains(&raw.max_token_bytes) {
        return Err(invalid(
            "public.max_token_bytes",
            "must be between 64 and 16384",
        ));
    }
    if !(256..=65_536).contains(&raw.max_uri_bytes) {
        return Err(invalid(
            "public.max_uri_bytes",
            "must be between 256 and 65536",
        ));
    }
    // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
    if !(8192..=1 << 20).contains(&raw.max_header_bytes) {
        return Err(invalid(
            "public.max_header_bytes",
            "must be between 8192 and 1048576",
        ));
    }
    if !(16..=1000).contains(&raw.max_headers) {
        return Err(invalid("public.max_headers", "must be between 16 and 1000"));
    }
    if raw.max_connections == 0 {
        return Err(invalid("public.max_connections", "must be at least 1"));
    }
    if raw.h2_max_concurrent_streams == 0 {
        return Err(invalid(
            "public.h2_max_concurrent_streams",
            "must be at least 1",
        ));
    }
    if raw.h2_max_local_error_reset_streams == 0 {
        return Err(invalid(
            "public.h2_max_local_error_reset_streams",
            "must be at least 1",
        ));
    }
    let mut tls = Vec::with_capacity(raw.tls.len());
    for cert in raw.tls {
        if cert.cert_path.is_empty() || cert.key_path.is_empty() {
            return Err(invalid(
                "public.tls",
                "every certificate needs cert_path and key_path",
            ));
        }
        let mut server_names = Vec::with_capacity(cert.server_names.len());
        for name in cert.server_names {
            let name = name.to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            if bare.is_empty()
                || !bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(invalid(
                    "public.tls.server_names",
                    format!("{name:?} is not a DNS name (or *.domain wildcard)"),
                ));
            }
            server_names.push(name);
        }
        tls.push(TlsCertConfig {
            cert_path: PathBuf::from(cert.cert_path),
            key_path: PathBuf::from(cert.key_path),
            server_names,
        });
    }
    Ok(PublicConfig {
        addr,
        base_url,
        http2: raw.http2,
        header_read_timeout: millis(
            "public.header_read_timeout_ms",
            raw.header_read_timeout_ms,
            1,
        )?,
        max_body_bytes: raw.max_body_bytes,
        max_token_bytes: raw.max_token_bytes,
        click_fallback_url,
        max_uri_bytes: raw.max_uri_bytes,
        max_header_bytes: raw.max_header_bytes,
        max_headers: raw.max_headers,
        max_connections: raw.max_connections,
        max_connections_per_peer: raw.max_connections_per_peer,
        h2_max_concurrent_streams: raw.h2_max_concurrent_streams,
        h2_max_pending_reset_streams: raw.h2_max_pending_reset_streams,
        h2_max_local_error_reset_streams: raw.h2_max_local_error_reset_streams,
        idle_timeout: millis("public.idle_timeout_ms", raw.idle_timeout_ms, 100)?,
        tls_reload_interval: millis(
            "public.tls_reload_interval_ms",
            raw.tls_reload_interval_ms,
            100,
        )?,
        tls,
    })
}

fn cookie_name(key: &'static str, name: &str) -> Result<String, ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(invalid(key, format!("{name:?} is not a cookie name")));
    }
    Ok(name.to_owned())
}

fn days(value: u32) -> Duration {
    Duration::from_secs(u64::from(value) * 86_400)
}

fn validate_privacy(raw: RawPrivacy) -> Result<PrivacyConfig, ConfigError> {
    let ip_mode = match raw.ip_mode.as_str() {
        "truncate" => {
            if !(8..=32).contains(&raw.ipv4_prefix) {
                return Err(invalid("privacy.ipv4_prefix", "must be between 8 and 32"));
            }
            if !(16..=128).contains(&raw.ipv6_prefix) {
                return Err(invalid("privacy.ipv6_prefix", "must be between 16 and 128"));
            }
            IpMode::Truncate {
                ipv4_prefix: raw.ipv4_prefix,
                ipv6_prefix: raw.ipv6_prefix,
            }
        }
        "full" => IpMode::Full,
        "hash" => IpMode::Hash,
        "none" => IpMode::None,
        other => {
            return Err(invalid(
                "privacy.ip_mode",
                format!("must be \"truncate\", \"full\", \"hash\" or \"none\", not {other:?}"),
            ))
        }
    };
    let ua_mode = match raw.ua_mode.as_str() {
        "full" => UaMode::Full,
        "parsed_only" => UaMode::ParsedOnly,
        other => {
            return Err(invalid(
                "privacy.ua_mode",
                format!("must be \"full\" or \"parsed_only\", not {other:?}"),
            ))
        }
    };
    let dnt_policy = match raw.dnt_policy.as_str() {
        "ignore" => SignalPolicy::Ignore,
        "flag" => SignalPolicy::Flag,
        "drop" => SignalPolicy::Drop,
        other => {
            return Err(invalid(
                "privacy.dnt_policy",
                format!("must be \"ignore\", \"flag\" or \"drop\", not {other:?}"),
            ))
        }
    };
    let self_open_policy = match raw.self_open_policy.as_str() {
        "flag" => SignalPolicy::Flag,
        "drop" => SignalPolicy::Drop,
        other => {
            return Err(invalid(
                "privacy.self_open_policy",
                format!("must be \"flag\" or \"drop\", not {other:?}"),
            ))
        }
    };
    let optout_cookie = cookie_name("privacy.optout_cookie", &raw.optout_cookie)?;
    let sender_cookie = cookie_name("privacy.sender_cookie", &raw.sender_cookie)?;
    if optout_cookie == sender_cookie {
        return Err(invalid(
            "privacy.sender_cookie",
            "must differ from privacy.optout_cookie",
        ));
    }
    Ok(PrivacyConfig {
        ip_mode,
        ua_mode,
        dnt_policy,
        optout_cookie,
        optout_cookie_max_age: days(raw.optout_cookie_days.max(1)),
        cookie_secure: raw.cookie_secure,
        sender_cookie,
        sender_cookie_max_age: days(raw.sender_cookie_days.max(1)),
        self_open_window: (raw.self_open_window_secs > 0)
            .then(|| Duration::from_secs(raw.self_open_window_secs)),
        self_open_policy,
    })
}

fn validate_spool(
    data_dir: &str,
    raw: RawSpool,
    retention: &RawRetention,
) -> Result<SpoolConfig, ConfigError> {
    if raw.dir.is_empty() {
        return Err(invalid("spool.dir", "must not be empty"));
    }
    let durability = match raw.durability.as_str() {
        "interval" => Durability::Interval(millis("spool.flush_every_ms", raw.flush_every_ms, 1)?),
        "batch" => Durability::EveryBatch,
        other => {
            return Err(invalid(
                "spool.durability",
                format!("must be \"interval\" or \"batch\", not {other:?}"),
            ))
        }
    };
    let full_policy = match raw.full_policy.as_str() {
        "drop_oldest" => FullPolicy::DropOldest,
        "drop_newest" => FullPolicy::DropNewest,
        other => {
            return Err(invalid(
                "spool.full_policy",
                format!("must be \"drop_oldest\" or \"drop_newest\", not {other:?}"),
            ))
        }
    };
    if raw.max_batch_bytes < 1024 {
        return Err(invalid("spool.max_batch_bytes", "must be at least 1024"));
    }
    if raw.max_bytes < 1 << 16 {
        return Err(invalid("spool.max_bytes", "must be at least 65536"));
    }
    if retention.max_age_secs == 0 {
        return Err(invalid("retention.max_age_secs", "must be at least 1"));
    }
    // A bound smaller than a few commits would drop whole batches at a time.
    if raw.max_batch_bytes as u64 > raw.max_bytes / 4 {
        return Err(invalid(
            "spool.max_batch_bytes",
            format!(
                "must be at most a quarter of spool.max_bytes ({})",
                raw.max_bytes / 4
            ),
        ));
    }
    Ok(SpoolConfig {
        dir: Path::new(data_dir).join(&raw.dir),
        channel_capacity: NonZeroUsize::new(raw.channel_capacity)
            .ok_or_else(|| invalid("spool.channel_capacity", "must be at least 1"))?,
        max_batch_events: NonZeroUsize::new(raw.max_batch_events)
            .ok_or_else(|| invalid("spool.max_batch_events", "must be at least 1"))?,
        max_batch_bytes: raw.max_batch_bytes,
        batch_delay: millis("spool.batch_delay_ms", raw.batch_delay_ms, 0)?,
        durability,
        max_bytes: raw.max_bytes,
        max_age: Duration::from_secs(retention.max_age_secs),
        full_policy,
        cache_bytes: raw.cache_bytes.max(1 << 20),
    })
}

fn validate_forward(data_dir: &str, raw: RawForward) -> Result<ForwardConfig, ConfigError> {
    let sink = match raw.sink.as_str() {
        "none" => SinkConfig::None,
        "file" => {
            if raw.file.path.is_empty() {
                return Err(invalid("forward.file.path", "must not be empty"));
            }
            if raw.file.max_file_bytes < 4096 {
                return Err(invalid(
                    "forward.file.max_file_bytes",
                    "must be at least 4096",
                ));
            }
            SinkConfig::File(FileSinkConfig {
                path: Path::new(data_dir).join(&raw.file.path),
                max_file_bytes: raw.file.max_file_bytes,
            })
        }
        "http" => SinkConfig::Http(validate_http_sink(raw.http)?),
        "kafka" => SinkConfig::Kafka(validate_kafka_sink(raw.kafka)?),
        other => {
            return Err(invalid(
                "forward.sink",
                format!("must be \"file\", \"http\", \"kafka\" or \"none\", not {other:?}"),
            ))
        }
    };
    if raw.backoff_max_ms < raw.backoff_initial_ms {
        return Err(invalid(
            "forward.backoff_max_ms",
            "must be at least forward.backoff_initial_ms",
        ));
    }
    Ok(ForwardConfig {
        sink,
        max_batch_events: NonZeroUsize::new(raw.max_batch_events)
            .ok_or_else(|| invalid("forward.max_batch_events", "must be at least 1"))?,
        max_batch_bytes: raw.max_batch_bytes.max(1),
        max_in_flight: NonZeroUsize::new(raw.max_in_flight)
            .ok_or_else(|| invalid("forward.max_in_flight", "must be at least 1"))?,
        linger: match raw.linger_ms {
            0..=60_000 => Duration::from_millis(raw.linger_ms),
            _ => return Err(invalid("forward.linger_ms", "must be at most 60000 ms")),
        },
        backoff_initial: millis("forward.backoff_initial_ms", raw.backoff_initial_ms, 1)?,
        backoff_max: millis("forward.backoff_max_ms", raw.backoff_max_ms, 1)?,
        circuit_failures: raw.circuit_failures.max(1),
        circuit_open: millis("forward.circuit_open_ms", raw.circuit_open_ms, 1)?,
        shutdown_grace: millis("forward.shutdown_grace_ms", raw.shutdown_grace_ms, 0)?,
    })
}

fn validate_kafka_sink(raw: RawKafkaSink) -> Result<KafkaSinkConfig, ConfigError> {
    if !cfg!(feature = "kafka") {
        return Err(invalid(
            "forward.sink",
            "this build has no Kafka support; build with `--features kafka`",
        ));
    }
    if raw.brokers.trim().is_empty() {
        return Err(invalid(
            "forward.kafka.brokers",
            "must list at least one host:port",
        ));
    }
    if raw.topic.is_empty()
        || raw.topic.len() > 249
        || !raw
            .topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "forward.kafka.topic",
            format!("{:?} is not a Kafka topic name", raw.topic),
        ));
    }
    Ok(KafkaSinkConfig {
        brokers: raw.brokers,
        topic: raw.topic,
        client_id: raw.client_id,
        message_timeout: millis(
            "forward.kafka.message_timeout_ms",
            raw.message_timeout_ms,
            1,
        )?,
        properties: raw.properties.into_iter().collect(),
    })
}

fn validate_http_sink(raw: RawHttpSink) -> Result<HttpSinkConfig, ConfigError> {
    let url: http::Uri = raw
        .url
        .parse()
        .map_err(|_| invalid("forward.http.url", format!("{:?} is not a URL", raw.url)))?;
    match (url.scheme_str(), url.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => {}
        _ => {
            return Err(invalid(
                "forward.http.url",
                format!(
                    "{:?} must be an http:// or https:// URL with a host",
                    raw.url
                ),
            ))
        }
    }
    let mut headers = Vec::with_capacity(raw.headers.len());
    for (name, value) in raw.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                "forward.http.headers",
                format!("{name:?} is not a header name"),
            )
        })?;
        let value = http::HeaderValue::from_str(&value).map_err(|_| {
            invalid(
                "forward.http.headers",
                format!("value of {name} is not a valid header value"),
            )
        })?;
        headers.push((name, value));
    }
    let bearer_token = non_empty(raw.bearer_token);
    if let Some(token) = &bearer_token {
        http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| invalid("forward.http.bearer_token", "must be visible ASCII"))?;
    }
    Ok(HttpSinkConfig {
        url,
        bearer_token,
        headers,
        timeout: millis("forward.http.timeout_ms", raw.timeout_ms, 1)?,
        ca_file: non_empty(raw.ca_file).map(PathBuf::from),
        gzip: raw.gzip,
    })
}

fn socket_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an address like 127.0.0.1:8080 or [::1]:8080"),
        )
    })
}

fn millis(key: &'static str, value: u64, min: u64) -> Result<Duration, ConfigError> {
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, &Overrides::default())
    }

    #[test]
    fn embedded_default_lists_exactly_the_code_defaults() {
        let from_file: RawConfig = toml::from_str(EMBEDDED_DEFAULT).expect("embedded parses");
        assert_eq!(from_file, RawConfig::default());
        parse(EMBEDDED_DEFAULT).expect("embedded default validates");
    }

    #[test]
    fn empty_text_is_the_default() {
        let config = parse("").expect("defaults validate");
        assert_eq!(config.public.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.key_file(), PathBuf::from("data/keys.txt"));
        assert!(config.key_file_is_generated());
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = parse("[public]\nadress = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("adress"), "{err}");
    }

    #[test]
    fn bad_address_names_the_key() {
        let err = parse("[public]\naddr = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("public.addr"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse("[spool]\nchannel_capacity = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("channel_capacity"), "{err}");
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

    #[test]
    fn public_admin_without_token_is_refused() {
        let err = parse("[admin]\naddr = \"0.0.0.0:9090\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.bearer_token"), "{err}");
        parse("[admin]\naddr = \"0.0.0.0:9090\"\nbearer_token = \"s3cret\"\n").unwrap();
    }

    #[test]
    fn fallback_url_must_be_http() {
        let err = parse("[public]\nclick_fallback_url = \"javascript:alert(1)\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("public.click_fallback_url"), "{err}");
    }

    #[test]
    fn enrichment_keys_are_checked_by_name() {
        for (text, key) in [
            (
                "[client_ip]\nheader = \"x-client-ip\"\n",
                "client_ip.header",
            ),
            (
                "[client_ip]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
                "client_ip.trusted_proxies",
            ),
            ("[user_agent]\nmax_bytes = 8\n", "user_agent.max_bytes"),
            (
                "[user_agent]\ncache_entries = 0\n",
                "user_agent.cache_entries",
            ),
            (
                "[geoip]\nreload_interval_ms = 1\n",
                "geoip.reload_interval_ms",
            ),
            (
                "[classify]\napple_mpp_cidrs = [\"apple\"]\n",
                "classify.apple_mpp_cidrs",
            ),
            (
                "[classify]\nfast_click_secs = 100000\n",
                "classify.fast_click_secs",
            ),
            ("[dedup]\nwindow_secs = 0\n", "dedup.window_secs"),
            ("[dedup]\nmax_entries = 1\n", "dedup.max_entries"),
            ("[dedup]\nburst_links = 9\n", "dedup.burst_links"),
            ("[dedup]\nburst_window_ms = 0\n", "dedup.burst_window_ms"),
            ("[geoip]\nmmap = true\n", "mmap"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let config = parse("[client_ip]\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]\nheader = \"CF-Connecting-IP\"\n[geoip]\ncity_db = \"/x/city.mmdb\"\n").unwrap();
        assert_eq!(config.client_ip.trusted_proxies.len(), 2);
        assert_eq!(config.geoip.city_db, Some(PathBuf::from("/x/city.mmdb")));
        assert_eq!(config.geoip.asn_db, None);
        assert_eq!(config.dedup.window_ms, 86_400_000);
    }

    #[test]
    fn sinks_are_validated() {
        let err = parse("[forward]\nsink = \"http\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("forward.http.url"), "{err}");
        let err = parse("[forward]\nsink = \"s3\"\n").unwrap_err().to_string();
        assert!(err.contains("forward.sink"), "{err}");
        let config = parse("[forward]\nsink = \"http\"\n[forward.http]\nurl = \"https://collector.example/ingest\"\nheaders = { x-tenant = \"acme\" }\n").unwrap();
        let SinkConfig::Http(http) = config.forward.sink else {
            panic!("http sink expected");
        };
        assert_eq!(http.headers.len(), 1);
        let err = parse("[spool]\nfull_policy = \"panic\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("spool.full_policy"), "{err}");
    }

    #[test]
    fn privacy_modes_are_validated() {
        let config = parse("[privacy]\nip_mode = \"truncate\"\nipv4_prefix = 16\n").unwrap();
        assert_eq!(
            config.privacy.ip_mode,
            IpMode::Truncate {
                ipv4_prefix: 16,
                ipv6_prefix: 48
            }
        );
        for (text, key) in [
            ("[privacy]\nip_mode = \"blur\"\n", "privacy.ip_mode"),
            ("[privacy]\nipv4_prefix = 40\n", "privacy.ipv4_prefix"),
            ("[privacy]\ndnt_policy = \"maybe\"\n", "privacy.dnt_policy"),
            (
                "[privacy]\noptout_cookie = \"a b\"\n",
                "privacy.optout_cookie",
            ),
            (
                "[privacy]\nself_open_policy = \"ignore\"\n",
                "privacy.self_open_policy",
            ),
            ("[retention]\nmax_age_secs = 0\n", "retention.max_age_secs"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn zero_capacity_is_refused() {
        let err = parse("[spool]\nchannel_capacity = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("spool.channel_capacity"), "{err}");
    }
}
