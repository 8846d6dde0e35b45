//! The forwarder: reads the spool in order, batches, sends through one [`Sink`], and
//! deletes a batch from the spool only after the sink acknowledged it.
//!
//! A batch is read when a full one waits or the oldest waiting event has waited
//! `forward.linger_ms` (at once while draining). Up to `max_in_flight` batches are
//! out at once, each in its own lane that retries with capped exponential backoff
//! and full jitter until the batch is delivered or rejected; a shared [`Circuit`]
//! pauses every lane while the upstream keeps failing.
//! Rejected batches go to the dead-letter tree, counted, never silently dropped.
//! Delivery is at least once: a crash or a stop between the send and the delete sends
//! the batch again after the restart, so receivers de-duplicate on the event `id`.
//!
//! Encoding happens here, once per batch (NDJSON, and gzip when the sink wants it);
//! sinks only carry bytes.

mod file;
mod http;
#[cfg(feature = "kafka")]
mod kafka;
pub mod retry;
pub mod signing;

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::{Counter, Histogram};
use tokio::task::JoinSet;

use crate::config::{ForwardConfig, SinkConfig};
use crate::event::now_ms;
use crate::health::{Health, Heartbeat};
use crate::metrics as m;
use crate::shutdown::{self, Signal, Trigger};
use crate::spool::{Lease, Spool};
use crate::store::Seq;
pub use retry::Failure;
pub use retry::Outcome;
use retry::{backoff, Circuit, Permit};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where batches go. Implementations only move bytes.
pub trait Sink: Send + Sync + 'static {
    /// Whether [`Batch::gzip`] should be filled for this sink.
    fn wants_gzip(&self) -> bool {
        false
    }

    /// Whether batches must go out one at a time, in spool order (retries too), so
    /// the upstream sees each key's events in the order they were answered.
    fn keeps_order(&self) -> bool {
        false
    }

    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Outcome>;

    /// Every failure this sink's outcomes can carry: the failure metric's labels.
    fn failure_reasons(&self) -> &'static [Failure];
}

/// One batch of spooled records, encoded for the sinks.
pub struct Batch {
    /// Stable across retries of this batch: `<node>-<first seq>-<last seq>`.
    pub id: String,
    /// Event times (unix ms), for the forward latency metric.
    pub event_ts: Vec<u64>,
    /// One JSON event per line.
    pub ndjson: Bytes,
    pub gzip: Option<Bytes>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot open the file sink: {0}")]
    File(std::io::Error),
    #[error(transparent)]
    Http(#[from] http::HttpSinkError),
    #[cfg(feature = "kafka")]
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSinkError),
    #[error("forward.sink = \"kafka\" needs a build with `--features kafka`")]
    KafkaNotBuilt,
}

/// What `/admin/spool` shows about the sink.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SinkStatus {
    pub kind: &'static str,
    /// `idle`, `sending`, `retrying`, `circuit_open` or `disabled`.
    pub state: &'static str,
    pub in_flight_batches: usize,
    pub consecutive_failures: u32,
    pub last_error: Option<&'static str>,
}

/// Shared state the admin API reads.
pub struct ForwardStatus {
    kind: &'static str,
    enabled: bool,
    in_flight: AtomicUsize,
    circuit: Mutex<Circuit>,
    last_error: Mutex<Option<Failure>>,
}

impl ForwardStatus {
    pub fn status(&self) -> SinkStatus {
        let circuit = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let failures = circuit.consecutive_failures();
        let state = if !self.enabled {
            "disabled"
        } else if circuit.is_open(Instant::now()) {
            "circuit_open"
        } else if failures > 0 {
            "retrying"
        } else if in_flight > 0 {
            "sending"
        } else {
            "idle"
        };
        SinkStatus {
            kind: self.kind,
            state,
            in_flight_batches: in_flight,
            consecutive_failures: failures,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(Failure::as_str),
        }
    }
}

/// Builds the configured sink as [`Forwarder::start`] would (reading its files, such
/// as a CA bundle), without sending anything; the file sink's output is only opened
/// when serving.
pub fn check_sink(config: &ForwardConfig) -> Result<(), ForwardError> {
    match &config.sink {
        SinkConfig::None | SinkConfig::File(_) => Ok(()),
        SinkConfig::Http(http) => http::HttpSink::new(http).map(drop).map_err(Into::into),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(kafka) => kafka::KafkaSink::new(kafka).map(drop).map_err(Into::into),
        #[cfg(not(feature = "kafka"))]
        SinkConfig::Kafka(_) => Err(ForwardError::KafkaNotBuilt),
    }
}

/// The running forwarder.
pub struct Forwarder {
    pub status: Arc<ForwardStatus>,
    task: Option<(tokio::task::JoinHandle<()>, Trigger)>,
}

impl Forwarder {
    /// Starts forwarding from `spool` to the configured sink (`none`: nothing runs);
    /// the read loop reports to `health` within `deadline`.
    pub fn start(
        config: &ForwardConfig,
        spool: Arc<Spool>,
        node: &str,
        health: &Health,
        deadline: Duration,
    ) -> Result<Forwarder, ForwardError> {
        let sink: Option<Arc<dyn Sink>> = match &config.sink {
            SinkConfig::None => None,
            SinkConfig::File(file) => Some(Arc::new(
                file::FileSink::open(file).map_err(ForwardError::File)?,
            )),
            SinkConfig::Http(http) => Some(Arc::new(http::HttpSink::new(http)?)),
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(kafka) => Some(Arc::new(kafka::KafkaSink::new(kafka)?)),
            #[cfg(not(feature = "kafka"))]
            SinkConfig::Kafka(_) => return Err(ForwardError::KafkaNotBuilt),
        };
        let status = Arc::new(ForwardStatus {
            kind: config.sink.name(),
            enabled: sink.is_some(),
            in_flight: AtomicUsize::new(0),
            circuit: Mutex::new(Circuit::new(config.circuit_failures, config.circuit_open)),
            last_error: Mutex::new(None),
        });
        // With no sink nothing runs, so nothing registers for readiness.
        let Some(sink) = sink else {
            return Ok(Forwarder { status, task: None });
        };
        for reason in sink
            .failure_reasons()
            .iter()
            .chain(&[Failure::CorruptRecord])
        {
            reason.counter().absolute(0);
        }
        let heartbeat = health.register("forwarder", deadline);
        let (finish, finishing) = shutdown::channel();
        let pipeline = Arc::new(Pipeline {
            sink,
            spool,
            status: status.clone(),
            node: node.to_owned(),
            config: config.clone(),
            delivered_events: metrics::counter!(m::FORWARD_EVENTS_TOTAL),
            delivered_batches: metrics::counter!(m::FORWARD_BATCHES_TOTAL),
            retries: metrics::counter!(m::FORWARD_RETRIES_TOTAL),
            dead_lettered: metrics::counter!(m::FORWARD_DEAD_LETTERS_TOTAL),
            latency: metrics::histogram!(m::FORWARD_LATENCY_SECONDS),
        });
        let task = tokio::spawn(run(pipeline, heartbeat, finishing));
        Ok(Forwarder {
            status,
            task: Some((task, finish)),
        })
    }

    /// Delivers what the spool holds for up to `grace`, then stops; what is left
    /// stays in the spool for the next start.
    pub async fn finish(mut self, grace: Duration) {
        let Some((mut task, finish)) = self.task.take() else {
            return;
        };
        finish.fire();
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
            tracing::warn!(
                ?grace,
                "forwarder grace period over; undelivered events stay in the spool"
            );
        }
    }
}

struct Pipeline {
    sink: Arc<dyn Sink>,
    spool: Arc<Spool>,
    status: Arc<ForwardStatus>,
    node: String,
    config: ForwardConfig,
    delivered_events: Counter,
    delivered_batches: Counter,
    retries: Counter,
    dead_lettered: Counter,
    latency: Histogram,
}

/// How often the loop looks at the spool without a wake-up (also its heartbeat).
const IDLE_TICK: Duration = Duration::from_millis(500);

/// The read loop: keeps up to `max_in_flight` lanes busy, each delivering one batch.
///
/// A batch is read once `max_batch_events` events wait, or once the oldest waiting
/// one has waited `forward.linger_ms`, or at once while draining or when nothing
/// was appended since the last read (the rest of a backlog). Reading at every
/// group commit (every `spool.batch_delay_ms`) made small batches, and each costs
/// a spool read, a sink write and a spool delete on the blocking pool: three
/// thread wake-ups, which under load cost more than the batch's own work.
async fn run(pipeline: Arc<Pipeline>, heartbeat: Heartbeat, mut finishing: Signal) {
    let mut cursor: Seq = 0;
    let mut lanes = JoinSet::new();
    let mut draining = false;
    let max_lanes = if pipeline.sink.keeps_order() {
        1
    } else {
        pipeline.config.max_in_flight.get()
    };
    // Events in batches that lanes hold; the rest of what the spool counts waits.
    let mut in_flight_events: u64 = 0;
    let mut waiting_since: Option<Instant> = None;
    let mut appends_at_read = pipeline.spool.appends();
    let linger = pipeline.config.linger;
    let full = pipeline.config.max_batch_events.get() as u64;
    let in_flight_gauge = metrics::gauge!(m::FORWARD_IN_FLIGHT_BATCHES);
    loop {
        heartbeat.beat();
        while lanes.len() < max_lanes {
            let waiting = pipeline.spool.records().saturating_sub(in_flight_events);
            if waiting == 0 && !draining {
                waiting_since = None;
                break;
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            // Nothing appended since the last read: what waits is the rest of a
            // backlog, and waiting would only delay it.
            let appends = pipeline.spool.appends();
            let arriving = appends != appends_at_read;
            if !draining && arriving && waiting < full && since.elapsed() < linger {
                break;
            }
            waiting_since = None;
            appends_at_read = appends;
            match next_lease(&pipeline, cursor).await {
                Some((lease, next)) => {
                    cursor = next;
                    let events = lease.events();
                    in_flight_events += events;
                    let pipeline = pipeline.clone();
                    lanes.spawn(async move {
                        pipeline.deliver(lease).await;
                        events
                    });
                }
                None => break,
            }
        }
        pipeline
            .status
            .in_flight
            .store(lanes.len(), Ordering::Relaxed);
        in_flight_gauge.set(lanes.len() as f64);
        if draining && lanes.is_empty() {
            return;
        }
        let wake = waiting_since.map_or(IDLE_TICK, |since| {
            (since + linger).saturating_duration_since(Instant::now())
        });
        tokio::select! {
            Some(done) = lanes.join_next(), if !lanes.is_empty() => {
                if let Ok(events) = done {
                    in_flight_events = in_flight_events.saturating_sub(events);
                }
            }
            () = pipeline.spool.appended() => {}
            () = tokio::time::sleep(wake.min(IDLE_TICK)) => {}
            () = finishing.recv(), if !draining => {
                draining = true;
                pipeline.spool.stop_holding_back();
            }
        }
    }
}

/// Leases the next batch at or after `from`, and where the read after it starts.
async fn next_lease(pipeline: &Arc<Pipeline>, from: Seq) -> Option<(Lease, Seq)> {
    let spool = pipeline.spool.clone();
    let (max_events, max_bytes) = (
        pipeline.config.max_batch_events.get(),
        pipeline.config.max_batch_bytes,
    );
    let read = tokio::task::spawn_blocking(move || spool.lease(from, max_events, max_bytes)).await;
    match read {
        Ok(Ok(leased)) => {
            if leased.corrupt_segments > 0 {
                pipeline.dead_lettered.increment(leased.corrupt_events);
                Failure::CorruptRecord
                    .counter()
                    .increment(leased.corrupt_segments);
            }
            leased.lease.map(|lease| (lease, leased.next))
        }
        Ok(Err(err)) => {
            tracing::error!(error = %err, "cannot read the spool; forwarding paused");
            None
        }
        Err(_) => None,
    }
}

/// Runs blocking spool work on a lease; `None` if the task itself failed (the lease
/// is then released, and its segments are sent again after the next start).
async fn on_lease<T: Send + 'static>(
    lease: Lease,
    work: impl FnOnce(&mut Lease) -> T + Send + 'static,
) -> Option<(Lease, T)> {
    tokio::task::spawn_blocking(move || {
        let mut lease = lease;
        let out = work(&mut lease);
        (lease, out)
    })
    .await
    .ok()
}

impl Pipeline {
    /// Encodes what the lease holds: one JSON event per line.
    fn encode(&self, lease: &Lease) -> Batch {
        let seqs = lease.seqs();
        let id = format!(
            "{}-{}-{}",
            self.node,
            seqs.first().copied().unwrap_or_default(),
            seqs.last().copied().unwrap_or_default()
        );
        let mut ndjson = Vec::new();
        let mut event_ts = Vec::with_capacity(lease.events() as usize);
        lease.for_each_record(|record| {
            ndjson.extend_from_slice(record.json);
            ndjson.push(b'\n');
            event_ts.push(record.ts_ms);
        });
        let gzip = self.sink.wants_gzip().then(|| gzip(&ndjson));
        Batch {
            id,
            event_ts,
            ndjson: Bytes::from(ndjson),
            gzip,
        }
    }

    /// Sends one leased batch until it is delivered or refused. Every attempt holds
    /// the spool's send guard from its last look at the lease to the spool's update,
    /// so an erasure either finds the batch sent and acknowledged, or rewrites it
    /// before the attempt reads it.
    async fn deliver(self: Arc<Self>, lease: Lease) {
        let mut batch = self.encode(&lease);
        let mut lease = lease;
        let mut attempt = 0u32;
        loop {
            let permit = self
                .status
                .circuit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .permit(Instant::now());
            if let Permit::Wait(wait) = permit {
                tokio::time::sleep(wait).await;
                continue;
            }
            let sending = self.spool.sending().await;
            if lease.is_stale() {
                let refreshed = on_lease(lease, Lease::refresh).await;
                let Some((refreshed, changed)) = refreshed else {
                    self.permit_unused();
                    return;
                };
                lease = refreshed;
                match changed {
                    Ok(true) => batch = self.encode(&lease),
                    Ok(false) => {}
                    Err(err) => {
                        tracing::error!(error = %err, "cannot re-read a leased batch; it will be sent after the next start");
                        self.permit_unused();
                        return;
                    }
                }
                if lease.is_empty() {
                    // Erased or expired whole: nothing is left to send.
                    self.permit_unused();
                    return;
                }
            }
            match self.sink.send(&batch).await {
                Outcome::Delivered => {
                    self.circuit_success();
                    self.acknowledge(lease, &batch).await;
                    return;
                }
                Outcome::Rejected { reason } => {
                    // The upstream answered, so it is alive: the circuit closes.
                    self.circuit_success();
                    self.failed(reason);
                    self.dead_letter(lease, &batch).await;
                    return;
                }
                Outcome::Retry { reason, after } => {
                    drop(sending);
                    self.status
                        .circuit
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .on_failure(Instant::now());
                    self.failed(reason);
                    self.retries.increment(1);
                    let wait = after.unwrap_or_else(|| {
                        backoff(
                            attempt,
                            self.config.backoff_initial,
                            self.config.backoff_max,
                            rand::random::<f64>(),
                        )
                    });
                    attempt = attempt.saturating_add(1);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The permit this lane holds was not used for a send.
    fn permit_unused(&self) {
        self.status
            .circuit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unused();
    }

    fn circuit_success(&self) {
        self.status
            .circuit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_success();
    }

    fn failed(&self, reason: Failure) {
        reason.counter().increment(1);
        *self
            .status
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(reason);
        tracing::debug!(reason = reason.as_str(), "forward attempt failed");
    }

    async fn acknowledge(&self, lease: Lease, batch: &Batch) {
        let now = now_ms();
        for ts in &batch.event_ts {
            self.latency.record(now.saturating_sub(*ts) as f64 / 1000.0);
        }
        self.delivered_events.increment(batch.event_ts.len() as u64);
        self.delivered_batches.increment(1);
        match tokio::task::spawn_blocking(move || lease.acknowledge()).await {
            Ok(Ok(_)) => {}
            // The batch stays and will be sent again: at least once, never lost.
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot delete a delivered batch; it will be sent again")
            }
            Err(_) => tracing::error!("spool delete task failed; the batch will be sent again"),
        }
    }

    async fn dead_letter(&self, lease: Lease, batch: &Batch) {
        match tokio::task::spawn_blocking(move || lease.dead_letter()).await {
            Ok(Ok(events)) => {
                self.dead_lettered.increment(events);
                tracing::warn!(batch = %batch.id, events, "upstream rejected a batch; moved to dead letters");
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "cannot move a rejected batch to dead letters")
            }
            Err(_) => tracing::error!("dead-letter task failed"),
        }
    }
}

fn gzip(bytes: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(bytes)
        .expect("writing into a Vec cannot fail");
    Bytes::from(encoder.finish().expect("finishing into a Vec cannot fail"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_round_trips() {
        let text = b"{\"a\":1}\n{\"a\":2}\n".repeat(100);
        let packed = gzip(&text);
        assert!(packed.len() < text.len());
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, text);
    }
}
