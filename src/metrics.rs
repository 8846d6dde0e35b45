//! Metric names (the API operators build dashboards on), their descriptions, the
//! Prometheus recorder, and pre-registered handles for the request path.
//!
//! Names follow `trackedge_<area>_<noun>_<unit>[_total]`; labels are bounded enums
//! (route, status class, reason, kind), never a path, token, user agent or address.
//! The request path uses [`RequestMetrics`], whose handles are looked up once at
//! start, so counting a request is an atomic add rather than a registry lookup.

use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::route::{HttpError, RouteName};
use crate::token::{Kind, TokenError};

pub const HTTP_REQUESTS_TOTAL: &str = "trackedge_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "trackedge_http_request_duration_seconds";
pub const HTTP_ERRORS_TOTAL: &str = "trackedge_http_errors_total";
pub const HTTP_CONNECTIONS_TOTAL: &str = "trackedge_http_connections_total";
pub const HTTP_CONNECTIONS_ACTIVE: &str = "trackedge_http_connections_active";
pub const HTTP_CONNECTION_ERRORS_TOTAL: &str = "trackedge_http_connection_errors_total";
pub const TOKEN_FAILURES_TOTAL: &str = "trackedge_token_failures_total";
pub const TOKEN_KEYS_ACTIVE: &str = "trackedge_token_keys_active";
pub const TOKEN_SIGNING_KEY_ID: &str = "trackedge_token_signing_key_id";
pub const TOKEN_KEY_RELOADS_TOTAL: &str = "trackedge_token_key_reloads_total";
pub const EVENTS_EMITTED_TOTAL: &str = "trackedge_events_emitted_total";
pub const EVENTS_DROPPED_TOTAL: &str = "trackedge_events_dropped_total";
pub const EVENTS_WRITTEN_TOTAL: &str = "trackedge_events_written_total";
pub const SPOOL_EVENTS: &str = "trackedge_spool_events";
pub const SPOOL_BYTES: &str = "trackedge_spool_bytes";
pub const SPOOL_DISK_BYTES: &str = "trackedge_spool_disk_bytes";
pub const SPOOL_OLDEST_AGE_SECONDS: &str = "trackedge_spool_oldest_age_seconds";
pub const SPOOL_DEAD_LETTERS: &str = "trackedge_spool_dead_letters";
pub const SPOOL_BATCHES_WRITTEN_TOTAL: &str = "trackedge_spool_batches_written_total";
pub const SPOOL_FLUSH_DURATION_SECONDS: &str = "trackedge_spool_flush_duration_seconds";
pub const FORWARD_EVENTS_TOTAL: &str = "trackedge_forward_events_total";
pub const FORWARD_BATCHES_TOTAL: &str = "trackedge_forward_batches_total";
pub const FORWARD_RETRIES_TOTAL: &str = "trackedge_forward_retries_total";
pub const FORWARD_FAILURES_TOTAL: &str = "trackedge_forward_failures_total";
pub const FORWARD_DEAD_LETTERS_TOTAL: &str = "trackedge_forward_dead_letters_total";
pub const FORWARD_LATENCY_SECONDS: &str = "trackedge_forward_latency_seconds";
pub const FORWARD_IN_FLIGHT_BATCHES: &str = "trackedge_forward_in_flight_batches";
pub const EVENTS_WRITE_ERRORS_TOTAL: &str = "trackedge_events_write_errors_total";
pub const EVENTS_QUEUE_DEPTH: &str = "trackedge_events_queue_depth";
pub const PRIVACY_NOT_RECORDED_TOTAL: &str = "trackedge_privacy_not_recorded_total";
pub const PRIVACY_SUPPRESSED_RECIPIENTS: &str = "trackedge_privacy_suppressed_recipients";
pub const PRIVACY_ERASED_EVENTS_TOTAL: &str = "trackedge_privacy_erased_events_total";
pub const PRIVACY_ADMIN_CALLS_TOTAL: &str = "trackedge_privacy_admin_calls_total";
pub const ENRICH_CLIENT_IP_TOTAL: &str = "trackedge_enrich_client_ip_total";
pub const ENRICH_CLIENT_IP_MALFORMED_TOTAL: &str = "trackedge_enrich_client_ip_malformed_total";
pub const ENRICH_UA_CACHE_LOOKUPS_TOTAL: &str = "trackedge_enrich_ua_cache_lookups_total";
pub const ENRICH_UA_CACHE_EVICTIONS_TOTAL: &str = "trackedge_enrich_ua_cache_evictions_total";
pub const ENRICH_CLASSIFIED_TOTAL: &str = "trackedge_enrich_classified_total";
pub const CLASSIFY_RULE_HITS_TOTAL: &str = "trackedge_classify_rule_hits_total";
pub const CLASSIFY_RELOADS_TOTAL: &str = "trackedge_classify_reloads_total";
pub const CLASSIFY_RULES: &str = "trackedge_classify_rules";
pub const CLASSIFY_NETWORK_SETS: &str = "trackedge_classify_network_sets";
pub const GEOIP_LOOKUPS_TOTAL: &str = "trackedge_geoip_lookups_total";
pub const GEOIP_RELOADS_TOTAL: &str = "trackedge_geoip_reloads_total";
pub const GEOIP_DATABASE_BUILD_TIMESTAMP_SECONDS: &str =
    "trackedge_geoip_database_build_timestamp_seconds";
pub const DEDUP_EVENTS_TOTAL: &str = "trackedge_dedup_events_total";
pub const DEDUP_EVICTIONS_TOTAL: &str = "trackedge_dedup_evictions_total";
pub const RATELIMIT_EVENTS_TOTAL: &str = "trackedge_ratelimit_events_total";
pub const RATELIMIT_EVICTIONS_TOTAL: &str = "trackedge_ratelimit_evictions_total";
pub const TLS_RELOADS_TOTAL: &str = "trackedge_tls_reloads_total";
pub const ADMIN_UNAUTHORIZED_TOTAL: &str = "trackedge_admin_unauthorized_total";
pub const READY: &str = "trackedge_ready";
pub const BUILD_INFO: &str = "trackedge_build_info";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric this build exports, with its help text. README's metric table and
/// the scrape test both follow this list.
pub const ALL: &[(&str, MetricKind, &str)] = &[
    (
        HTTP_REQUESTS_TOTAL,
        MetricKind::Counter,
        "Public requests answered, by route and status class.",
    ),
    (
        HTTP_REQUEST_DURATION_SECONDS,
        MetricKind::Histogram,
        "Time from request head parsed to response built, by route.",
    ),
    (
        HTTP_ERRORS_TOTAL,
        MetricKind::Counter,
        "Requests refused before their route ran, by reason.",
    ),
    (
        HTTP_CONNECTIONS_TOTAL,
        MetricKind::Counter,
        "Connections accepted on the public listener.",
    ),
    (
        HTTP_CONNECTIONS_ACTIVE,
        MetricKind::Gauge,
        "Connections open on the public listener.",
    ),
    (
        HTTP_CONNECTION_ERRORS_TOTAL,
        MetricKind::Counter,
        "Connections that ended in an error, by reason.",
    ),
    (
        TOKEN_FAILURES_TOTAL,
        MetricKind::Counter,
        "Tokens refused, by route and reason; nothing was recorded for them.",
    ),
    (
        TOKEN_KEYS_ACTIVE,
        MetricKind::Gauge,
        "1 for every key id that verifies tokens now, 0 for ids removed by a reload.",
    ),
    (
        TOKEN_SIGNING_KEY_ID,
        MetricKind::Gauge,
        "The key id that signs new tokens.",
    ),
    (
        TOKEN_KEY_RELOADS_TOTAL,
        MetricKind::Counter,
        "Key file reloads, by result (ok, error).",
    ),
    (
        EVENTS_EMITTED_TOTAL,
        MetricKind::Counter,
        "Events handed to the writer, by kind.",
    ),
    (
        EVENTS_DROPPED_TOTAL,
        MetricKind::Counter,
        "Events lost before the writer, by reason.",
    ),
    (
        EVENTS_WRITTEN_TOTAL,
        MetricKind::Counter,
        "Events written to the event output.",
    ),
    (
        EVENTS_WRITE_ERRORS_TOTAL,
        MetricKind::Counter,
        "Failed writes to the event output.",
    ),
    (
        EVENTS_QUEUE_DEPTH,
        MetricKind::Gauge,
        "Events waiting between the request path and the writer.",
    ),
    (
        ENRICH_CLIENT_IP_TOTAL,
        MetricKind::Counter,
        "Recorded hits by where the client address came from (peer, header).",
    ),
    (
        ENRICH_CLIENT_IP_MALFORMED_TOTAL,
        MetricKind::Counter,
        "Client-address headers from trusted proxies that held a malformed value.",
    ),
    (
        ENRICH_UA_CACHE_LOOKUPS_TOTAL,
        MetricKind::Counter,
        "User-agent cache lookups, by result (hit, miss).",
    ),
    (
        ENRICH_UA_CACHE_EVICTIONS_TOTAL,
        MetricKind::Counter,
        "User agents dropped from the full cache.",
    ),
    (
        ENRICH_CLASSIFIED_TOTAL,
        MetricKind::Counter,
        "Recorded hits by class family (human, proxy_open, prefetch, link_scanner, bot) and certainty (certain, probable).",
    ),
    (
        CLASSIFY_RULE_HITS_TOTAL,
        MetricKind::Counter,
        "Recorded hits by the reason that decided their class: a rule's name or the engine's own reason.",
    ),
    (
        CLASSIFY_RELOADS_TOTAL,
        MetricKind::Counter,
        "Reloads of the operator's rules file and network directory, by result (ok, error: the rules in force stay).",
    ),
    (
        CLASSIFY_RULES,
        MetricKind::Gauge,
        "Classification rules in force, by source (operator, shipped).",
    ),
    (
        CLASSIFY_NETWORK_SETS,
        MetricKind::Gauge,
        "Named network sets in force, by source (operator, shipped).",
    ),
    (
        GEOIP_LOOKUPS_TOTAL,
        MetricKind::Counter,
        "GeoIP lookups, by database (city, asn) and result (found, not_found, error).",
    ),
    (
        GEOIP_RELOADS_TOTAL,
        MetricKind::Counter,
        "GeoIP database reloads, by database and result (ok or the error).",
    ),
    (
        GEOIP_DATABASE_BUILD_TIMESTAMP_SECONDS,
        MetricKind::Gauge,
        "Build time (unix seconds) of the GeoIP database in force; 0 when none.",
    ),
    (
        DEDUP_EVENTS_TOTAL,
        MetricKind::Counter,
        "Recorded hits by first/duplicate result.",
    ),
    (
        DEDUP_EVICTIONS_TOTAL,
        MetricKind::Counter,
        "First-seen entries dropped before their window ended (memory cap).",
    ),
    (
        RATELIMIT_EVENTS_TOTAL,
        MetricKind::Counter,
        "Events checked by the per-network recording limit, by result (allowed, marked, dropped).",
    ),
    (
        RATELIMIT_EVICTIONS_TOTAL,
        MetricKind::Counter,
        "Rate-limit buckets forgotten early because rate_limit.max_prefixes was reached.",
    ),
    (
        TLS_RELOADS_TOTAL,
        MetricKind::Counter,
        "TLS certificate reloads, by result (ok, error: the previous certificates stay).",
    ),
    (
        ADMIN_UNAUTHORIZED_TOTAL,
        MetricKind::Counter,
        "Admin calls refused for a missing or wrong bearer token.",
    ),
    (
        READY,
        MetricKind::Gauge,
        "1 when every registered stage reported in time, else 0.",
    ),
    (
        BUILD_INFO,
        MetricKind::Gauge,
        "Always 1; the version label names the build.",
    ),
];

const FLUSH_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

const DURATION_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot set histogram buckets: {0}")]
    Buckets(String),
    #[error("a metrics recorder is already installed in this process")]
    AlreadyInstalled,
}

/// Installs the Prometheus recorder for the process and describes every metric.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.into()),
            DURATION_BUCKETS,
        )
        .map_err(|e| MetricsError::Buckets(e.to_string()))?
        .set_buckets_for_metric(
            Matcher::Full(SPOOL_FLUSH_DURATION_SECONDS.into()),
            FLUSH_BUCKETS,
        )
        .map_err(|e| MetricsError::Buckets(e.to_string()))?
        .set_buckets_for_metric(
            Matcher::Full(FORWARD_LATENCY_SECONDS.into()),
            LATENCY_BUCKETS,
        )
        .map_err(|e| MetricsError::Buckets(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
    for &(name, kind, help) in ALL {
        match kind {
            MetricKind::Counter => metrics::describe_counter!(name, help),
            MetricKind::Gauge => metrics::describe_gauge!(name, help),
            MetricKind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Keeps histogram memory bounded between scrapes.
pub async fn upkeep(handle: PrometheusHandle, mut shutdown: crate::shutdown::Signal) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            () = shutdown.recv() => return,
        }
    }
}

/// HTTP status classes used as the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl StatusClass {
    const ALL: [StatusClass; 4] = [
        StatusClass::Success,
        StatusClass::Redirect,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    pub fn of(status: http::StatusCode) -> StatusClass {
        match status.as_u16() {
            300..=399 => StatusClass::Redirect,
            400..=499 => StatusClass::ClientError,
            500.. => StatusClass::ServerError,
            _ => StatusClass::Success,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

struct RouteMetrics {
    by_status: [Counter; 4],
    duration: Histogram,
    token_failures: [Counter; TokenError::ALL.len()],
}

/// Handles for everything the request path counts, registered once.
pub struct RequestMetrics {
    routes: Vec<RouteMetrics>,
    emitted: [Counter; Kind::ALL.len()],
    refused: [Counter; HttpError::ALL.len()],
}

impl RequestMetrics {
    /// Registers (and so exports at zero) every series the request path can touch.
    pub fn register() -> RequestMetrics {
        let routes = RouteName::ALL
            .iter()
            .map(|route| RouteMetrics {
                by_status: StatusClass::ALL.map(|class| {
                    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.as_str(), "status" => class.as_str())
                }),
                duration: metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route.as_str()),
                token_failures: TokenError::ALL.map(|reason| {
                    metrics::counter!(TOKEN_FAILURES_TOTAL, "route" => route.as_str(), "reason" => reason.as_str())
                }),
            })
            .collect();
        RequestMetrics {
            routes,
            emitted: Kind::ALL
                .map(|kind| metrics::counter!(EVENTS_EMITTED_TOTAL, "kind" => kind.as_str())),
            refused: HttpError::ALL
                .map(|error| metrics::counter!(HTTP_ERRORS_TOTAL, "reason" => error.as_str())),
        }
    }

    pub fn refused(&self, error: HttpError) {
        self.refused[error.index()].increment(1);
    }

    pub fn answered(&self, route: RouteName, status: http::StatusCode, elapsed: Duration) {
        let route = &self.routes[route.index()];
        route.by_status[StatusClass::of(status).index()].increment(1);
        route.duration.record(elapsed.as_secs_f64());
    }

    pub fn token_failed(&self, route: RouteName, reason: TokenError) {
        let index = TokenError::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("ALL lists every reason");
        self.routes[route.index()].token_failures[index].increment(1);
    }

    pub fn emitted(&self, kind: Kind) {
        let index = Kind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("ALL lists every kind");
        self.emitted[index].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, help) in ALL {
            assert!(name.starts_with("trackedge_"), "{name}");
            assert!(seen.insert(name), "{name} twice");
            assert!(!help.is_empty());
            assert_eq!(
                name.ends_with("_total"),
                kind == MetricKind::Counter,
                "{name}: counters and only counters end in _total"
            );
        }
    }

    #[test]
    fn http_error_indexes_match_their_list() {
        for (index, error) in HttpError::ALL.iter().enumerate() {
            assert_eq!(error.index(), index);
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(http::StatusCode::OK).as_str(), "2xx");
        assert_eq!(StatusClass::of(http::StatusCode::FOUND).as_str(), "3xx");
        assert_eq!(StatusClass::of(http::StatusCode::NOT_FOUND).as_str(), "4xx");
        assert_eq!(
            StatusClass::of(http::StatusCode::SERVICE_UNAVAILABLE).as_str(),
            "5xx"
        );
    }
}
