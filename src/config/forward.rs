//! `[forward]` and its sinks (`[forward.http]`, `[forward.kafka]`, `[forward.file]`):
//! where spooled events go and how hard the forwarder tries.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, millis, non_empty, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    sink: SinkName,
    max_batch_events: usize,
    max_batch_bytes: usize,
    max_in_flight: usize,
    linger_ms: u64,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    circuit_failures: u32,
    circuit_open_ms: u64,
    shutdown_grace_ms: u64,
    http: RawHttpSink,
    file: RawFileSink,
    kafka: RawKafkaSink,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SinkName {
    None,
    File,
    Http,
    Kafka,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpSink {
    url: String,
    bearer_token: String,
    headers: BTreeMap<String, String>,
    timeout_ms: u64,
    ca_file: String,
    gzip: bool,
    signing_secret_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafkaSink {
    brokers: String,
    topic: String,
    client_id: String,
    message_timeout_ms: u64,
    properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSink {
    path: String,
    max_file_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub sink: SinkConfig,
    pub max_batch_events: NonZeroUsize,
    pub max_batch_bytes: usize,
    pub max_in_flight: NonZeroUsize,
    /// How long the oldest waiting event may wait for a fuller batch.
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
    /// Standard Webhooks secrets that sign every batch (see `forward::signing`).
    pub signing_secret_file: Option<PathBuf>,
}

impl RawForward {
    pub(super) fn validate(self, data_dir: &Path) -> Result<ForwardConfig, ConfigError> {
        let sink = match self.sink {
            SinkName::None => SinkConfig::None,
            SinkName::File => SinkConfig::File(self.file.validate(data_dir)?),
            SinkName::Http => SinkConfig::Http(self.http.validate()?),
            SinkName::Kafka => SinkConfig::Kafka(self.kafka.validate()?),
        };
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(invalid(
                "forward.backoff_max_ms",
                "must be at least forward.backoff_initial_ms",
            ));
        }
        Ok(ForwardConfig {
            sink,
            max_batch_events: NonZeroUsize::new(self.max_batch_events)
                .ok_or_else(|| invalid("forward.max_batch_events", "must be at least 1"))?,
            max_batch_bytes: self.max_batch_bytes.max(1),
            max_in_flight: NonZeroUsize::new(self.max_in_flight)
                .ok_or_else(|| invalid("forward.max_in_flight", "must be at least 1"))?,
            linger: match self.linger_ms {
                0..=60_000 => Duration::from_millis(self.linger_ms),
                _ => return Err(invalid("forward.linger_ms", "must be at most 60000 ms")),
            },
            backoff_initial: millis("forward.backoff_initial_ms", self.backoff_initial_ms, 1)?,
            backoff_max: millis("forward.backoff_max_ms", self.backoff_max_ms, 1)?,
            circuit_failures: self.circuit_failures.max(1),
            circuit_open: millis("forward.circuit_open_ms", self.circuit_open_ms, 1)?,
            shutdown_grace: millis("forward.shutdown_grace_ms", self.shutdown_grace_ms, 0)?,
        })
    }
}

impl RawFileSink {
    fn validate(self, data_dir: &Path) -> Result<FileSinkConfig, ConfigError> {
        if self.path.is_empty() {
            return Err(invalid("forward.file.path", "must not be empty"));
        }
        if self.max_file_bytes < 4096 {
            return Err(invalid(
                "forward.file.max_file_bytes",
                "must be at least 4096",
            ));
        }
        Ok(FileSinkConfig {
            path: data_dir.join(&self.path),
            max_file_bytes: self.max_file_bytes,
        })
    }
}

impl RawKafkaSink {
    fn validate(self) -> Result<KafkaSinkConfig, ConfigError> {
        if !cfg!(feature = "kafka") {
            return Err(invalid(
                "forward.sink",
                "this build has no Kafka support; build with `--features kafka`",
            ));
        }
        if self.brokers.trim().is_empty() {
            return Err(invalid(
                "forward.kafka.brokers",
                "must list at least one host:port",
            ));
        }
        if self.topic.is_empty()
            || self.topic.len() > 249
            || !self
                .topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(
                "forward.kafka.topic",
                format!("{:?} is not a Kafka topic name", self.topic),
            ));
        }
        Ok(KafkaSinkConfig {
            brokers: self.brokers,
            topic: self.topic,
            client_id: self.client_id,
            message_timeout: millis(
                "forward.kafka.message_timeout_ms",
                self.message_timeout_ms,
                1,
            )?,
            properties: self.properties.into_iter().collect(),
        })
    }
}

impl RawHttpSink {
    fn validate(self) -> Result<HttpSinkConfig, ConfigError> {
        let url: http::Uri = self
            .url
            .parse()
            .map_err(|_| invalid("forward.http.url", format!("{:?} is not a URL", self.url)))?;
        match (url.scheme_str(), url.host()) {
            (Some("http" | "https"), Some(host)) if !host.is_empty() => {}
            _ => {
                return Err(invalid(
                    "forward.http.url",
                    format!(
                        "{:?} must be an http:// or https:// URL with a host",
                        self.url
                    ),
                ))
            }
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in self.headers {
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
        let bearer_token = non_empty(self.bearer_token);
        if let Some(token) = &bearer_token {
            http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| invalid("forward.http.bearer_token", "must be visible ASCII"))?;
        }
        Ok(HttpSinkConfig {
            url,
            bearer_token,
            headers,
            timeout: millis("forward.http.timeout_ms", self.timeout_ms, 1)?,
            ca_file: non_empty(self.ca_file).map(PathBuf::from),
            gzip: self.gzip,
            signing_secret_file: non_empty(self.signing_secret_file).map(PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, refused};
    use super::*;

    #[test]
    fn sinks_are_validated() {
        let err = refused("[forward]\nsink = \"http\"\n");
        assert!(err.contains("forward.http.url"), "{err}");
        let err = refused("[forward]\nsink = \"s3\"\n");
        assert!(err.contains("forward.sink"), "{err}");
        let config = parse("[forward]\nsink = \"http\"\n[forward.http]\nurl = \"https://collector.example/ingest\"\nheaders = { x-tenant = \"acme\" }\n").unwrap();
        let SinkConfig::Http(http) = config.forward.sink else {
            panic!("http sink expected");
        };
        assert_eq!(http.headers.len(), 1);
        let err = refused("[forward]\nbackoff_initial_ms = 10\nbackoff_max_ms = 5\n");
        assert!(err.contains("forward.backoff_max_ms"), "{err}");
    }
}
