//! Metric names (the API operators build dashboards on), their descriptions and the
//! Prometheus recorder. Each stage registers its own handles (the request path's in
//! `route`), looked up once at start, so counting is an atomic add rather than a
//! registry lookup.
//!
//! Names follow `trackedge_<area>_<noun>_<unit>[_total]`; labels are bounded enums
//! (route, status class, reason, kind), never a path, token, user agent or address.

use std::sync::LazyLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "trackedge_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "trackedge_http_request_duration_seconds";
pub const HTTP_ERRORS_TOTAL: &str = "trackedge_http_errors_total";
pub const HTTP_CONNECTIONS_TOTAL: &str = "trackedge_http_connections_total";
pub const HTTP_CONNECTIONS_ACTIVE: &str = "trackedge_http_connections_active";
pub const HTTP_CONNECTION_ERRORS_TOTAL: &str = "trackedge_http_connection_errors_total";
pub const TOKEN_FAILURES_TOTAL: &str = "trackedge_token_failures_total";
pub const TOKEN_KEYS_ACTIVE: &str = "trackedge_token_keys_active";
pub const TOKEN_SIGNING_KEY_INFO: &str = "trackedge_token_signing_key_info";
pub const TOKEN_KEY_RELOADS_TOTAL: &str = "trackedge_token_key_reloads_total";
pub const EVENTS_EMITTED_TOTAL: &str = "trackedge_events_emitted_total";
pub const EVENTS_DROPPED_TOTAL: &str = "trackedge_events_dropped_total";
pub const EVENTS_WRITTEN_TOTAL: &str = "trackedge_events_written_total";
pub const SPOOL_EVENTS: &str = "trackedge_spool_events";
pub const SPOOL_STORE_SET_ASIDE_TOTAL: &str = "trackedge_spool_store_set_aside_total";
pub const SPOOL_BYTES: &str = "trackedge_spool_bytes";
pub const SPOOL_DISK_BYTES: &str = "trackedge_spool_disk_bytes";
pub const SPOOL_OLDEST_AGE_SECONDS: &str = "trackedge_spool_oldest_age_seconds";
pub const SPOOL_DEAD_LETTERS: &str = "trackedge_spool_dead_letters";
pub const SPOOL_MAX_BYTES: &str = "trackedge_spool_max_bytes";
pub const SPOOL_MAX_AGE_SECONDS: &str = "trackedge_spool_max_age_seconds";
pub const SPOOL_BATCHES_WRITTEN_TOTAL: &str = "trackedge_spool_batches_written_total";
pub const SPOOL_FLUSH_DURATION_SECONDS: &str = "trackedge_spool_flush_duration_seconds";
pub const FORWARD_EVENTS_TOTAL: &str = "trackedge_forward_events_total";
pub const FORWARD_BATCHES_TOTAL: &str = "trackedge_forward_batches_total";
pub const FORWARD_RETRIES_TOTAL: &str = "trackedge_forward_retries_total";
pub const FORWARD_FAILURES_TOTAL: &str = "trackedge_forward_failures_total";
pub const FORWARD_DEAD_LETTERS_TOTAL: &str = "trackedge_forward_dead_letters_total";
pub const FORWARD_LATENCY_SECONDS: &str = "trackedge_forward_latency_seconds";
pub const FORWARD_IN_FLIGHT_BATCHES: &str = "trackedge_forward_in_flight_batches";
pub const FORWARD_SIGNING_RELOADS_TOTAL: &str = "trackedge_forward_signing_reloads_total";
pub const CLASSIFY_RELABELLED_EVENTS_TOTAL: &str = "trackedge_classify_relabelled_events_total";
pub const FORWARD_SINK_STATE_CHANGES_TOTAL: &str = "trackedge_forward_sink_state_changes_total";
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
pub const MEMORY_RELEASES_TOTAL: &str = "trackedge_memory_releases_total";
pub const MEMORY_RELEASED_BYTES_TOTAL: &str = "trackedge_memory_released_bytes_total";
pub const READY: &str = "trackedge_ready";
pub const BUILD_INFO: &str = "trackedge_build_info";
// The process metrics every Prometheus client exports, under their usual names (no
// `trackedge_` prefix) so stock dashboards and alerts find them; filled by
// `metrics-process` from /proc at each scrape.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
pub const PROCESS_VIRTUAL_MEMORY_MAX_BYTES: &str = "process_virtual_memory_max_bytes";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
pub const PROCESS_THREADS: &str = "process_threads";

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
        TOKEN_SIGNING_KEY_INFO,
        MetricKind::Gauge,
        "1 for the key id that signs new tokens; 0 for an id that signed before a key reload.",
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
        SPOOL_EVENTS,
        MetricKind::Gauge,
        "Events held in the spool (not yet acknowledged by the sink), dead letters excluded.",
    ),
    (
        SPOOL_BYTES,
        MetricKind::Gauge,
        "Bytes of the records held in the spool, the figure spool.max_bytes bounds.",
    ),
    (
        SPOOL_DISK_BYTES,
        MetricKind::Gauge,
        "Bytes of the spool's files on disk.",
    ),
    (
        SPOOL_OLDEST_AGE_SECONDS,
        MetricKind::Gauge,
        "Age of the oldest event held in the spool; 0 when it is empty.",
    ),
    (
        SPOOL_DEAD_LETTERS,
        MetricKind::Gauge,
        "Events held in the dead-letter tree (refused for good by the sink, or unreadable).",
    ),
    (
        SPOOL_MAX_BYTES,
        MetricKind::Gauge,
        "spool.max_bytes: past it full_policy drops events.",
    ),
    (
        SPOOL_MAX_AGE_SECONDS,
        MetricKind::Gauge,
        "retention.max_age_secs: events and dead letters older than this are deleted.",
    ),
    (
        SPOOL_BATCHES_WRITTEN_TOTAL,
        MetricKind::Counter,
        "Group commits written to the spool by the writer thread.",
    ),
    (
        SPOOL_FLUSH_DURATION_SECONDS,
        MetricKind::Histogram,
        "Time the spool's fsync took.",
    ),
    (
        FORWARD_EVENTS_TOTAL,
        MetricKind::Counter,
        "Events acknowledged by the sink and removed from the spool.",
    ),
    (
        FORWARD_BATCHES_TOTAL,
        MetricKind::Counter,
        "Batches acknowledged by the sink.",
    ),
    (
        FORWARD_RETRIES_TOTAL,
        MetricKind::Counter,
        "Batch sends that will be tried again after a backoff.",
    ),
    (
        FORWARD_FAILURES_TOTAL,
        MetricKind::Counter,
        "Failed batch sends, by reason (the HTTP status class, connect, timeout, io, corrupt_record, kafka_*).",
    ),
    (
        FORWARD_DEAD_LETTERS_TOTAL,
        MetricKind::Counter,
        "Events moved to the dead-letter tree: refused for good by the sink, or unreadable.",
    ),
    (
        FORWARD_LATENCY_SECONDS,
        MetricKind::Histogram,
        "Time from an event being answered to the sink acknowledging it.",
    ),
    (
        FORWARD_IN_FLIGHT_BATCHES,
        MetricKind::Gauge,
        "Batches sent and not yet acknowledged or refused.",
    ),
    (
        FORWARD_SIGNING_RELOADS_TOTAL,
        MetricKind::Counter,
        "Reloads of the http sink's batch signing secrets, by result (ok, error: the previous secrets stay).",
    ),
    (
        FORWARD_SINK_STATE_CHANGES_TOTAL,
        MetricKind::Counter,
        "State changes of the Kafka sink (ok, unreachable, error, producer_lost: the producer was rebuilt), each also logged once.",
    ),
    (
        CLASSIFY_RELABELLED_EVENTS_TOTAL,
        MetricKind::Counter,
        "Earlier events a click burst or a trap hit showed to be a machine's, by outcome (relabelled: in the spool before they left; reclassify: named in a reclassify event because they may have left).",
    ),
    (
        SPOOL_STORE_SET_ASIDE_TOTAL,
        MetricKind::Counter,
        "Damaged spool stores moved aside at start (an empty one replaces each; its events are not forwarded).",
    ),
    (
        PRIVACY_NOT_RECORDED_TOTAL,
        MetricKind::Counter,
        "Verified hits answered but not recorded, by reason (opted_out, suppressed, do_not_track, self_open).",
    ),
    (
        PRIVACY_SUPPRESSED_RECIPIENTS,
        MetricKind::Gauge,
        "Recipients on the suppression list.",
    ),
    (
        PRIVACY_ERASED_EVENTS_TOTAL,
        MetricKind::Counter,
        "Events removed from the spool and dead letters by erasure calls.",
    ),
    (
        PRIVACY_ADMIN_CALLS_TOTAL,
        MetricKind::Counter,
        "Privacy calls on the admin API, by action (suppress, unsuppress, erase, export).",
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
        MEMORY_RELEASES_TOTAL,
        MetricKind::Counter,
        "Times a quiet edge handed the heap a busy period freed back to the kernel (see [memory]).",
    ),
    (
        MEMORY_RELEASED_BYTES_TOTAL,
        MetricKind::Counter,
        "Anonymous resident bytes (the heap) those releases gave back: before minus after.",
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
    (
        PROCESS_CPU_SECONDS_TOTAL,
        MetricKind::Counter,
        "User and system CPU time the process used, in whole seconds.",
    ),
    (
        PROCESS_OPEN_FDS,
        MetricKind::Gauge,
        "File descriptors the process holds open.",
    ),
    (
        PROCESS_MAX_FDS,
        MetricKind::Gauge,
        "The process's soft limit on open file descriptors (0: unlimited).",
    ),
    (
        PROCESS_VIRTUAL_MEMORY_BYTES,
        MetricKind::Gauge,
        "Virtual memory size of the process.",
    ),
    (
        PROCESS_VIRTUAL_MEMORY_MAX_BYTES,
        MetricKind::Gauge,
        "The process's soft limit on virtual memory (0: unlimited).",
    ),
    (
        PROCESS_RESIDENT_MEMORY_BYTES,
        MetricKind::Gauge,
        "Resident memory (RSS) of the process.",
    ),
    (
        PROCESS_START_TIME_SECONDS,
        MetricKind::Gauge,
        "Start time of the process, unix seconds.",
    ),
    (
        PROCESS_THREADS,
        MetricKind::Gauge,
        "Operating-system threads of the process.",
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

/// The `/metrics` text: the process metrics read from /proc now, then every series.
pub fn render(handle: &PrometheusHandle) -> String {
    static PROCESS: LazyLock<metrics_process::Collector> =
        LazyLock::new(metrics_process::Collector::default);
    PROCESS.collect();
    handle.render()
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Keeps histogram memory bounded between scrapes.
///
/// The exporter keeps every latency sample until upkeep folds them into buckets:
/// at 50k requests a second, 5 s of samples took milliseconds to fold, and on a
/// tokio worker that held every request on it for as long (at 80% load the backlog
/// takes four times the stall to clear: the open-loop p99.9). So upkeep runs every
/// second, on the blocking pool, where the kernel time-slices it against the
/// workers instead of the workers waiting for all of it.
pub async fn upkeep(handle: PrometheusHandle, mut shutdown: crate::shutdown::Signal) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let handle = handle.clone();
                // A panic inside the exporter is its bug; the next tick tries again.
                let _ = tokio::task::spawn_blocking(move || handle.run_upkeep()).await;
            }
            () = shutdown.recv() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &(name, kind, help) in ALL {
            assert!(
                name.starts_with("trackedge_") || name.starts_with("process_"),
                "{name}"
            );
            assert!(seen.insert(name), "{name} twice");
            assert!(!help.is_empty());
            assert_eq!(
                name.ends_with("_total"),
                kind == MetricKind::Counter,
                "{name}: counters and only counters end in _total"
            );
        }
    }
}
