//! Drives load: open loop at a fixed rate (latency from the scheduled time) or
//! closed loop (each connection sends as soon as its previous answer arrived), over
//! many keep-alive connections, bounded by duration and request count. HTTP/1.1 at
//! a fixed rate runs on [`crate::openloop`]'s single thread; the rest runs one tokio
//! task per connection (HTTP/2 fixed-rate slots released by [`schedule::Pacer`]).
//! Each task records into its own [`Tally`], merged once at the end, so nothing is
//! shared on the hot path but two atomic counters for the progress line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Connection;
use crate::histogram::Summary;
use crate::openloop;
use crate::procstat;
use crate::progress::Progress;
use crate::schedule::{Pacer, Schedule};
use crate::tally::{KindCounts, Run, Tally, KIND_NAMES};
use crate::traffic::Prepared;

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: SocketAddr,
    /// Requests per second; `None` runs closed-loop at whatever the server allows.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub max_requests: u64,
    pub connections: usize,
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    pub streams: usize,
    /// A request that takes longer is counted as a timeout and its connection dropped.
    pub timeout: Duration,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub mode: &'static str,
    pub http: &'static str,
    pub connections: usize,
    pub target_rate: Option<f64>,
    pub elapsed_s: f64,
    pub sent: u64,
    pub answered: u64,
    pub errors: u64,
    pub timeouts: u64,
    /// Open loop: slots that came due but could not be sent before the end (the
    /// client or the server could not keep the rate).
    pub missed_slots: u64,
    pub achieved_rps: f64,
    pub status: BTreeMap<u16, u64>,
    pub kinds: BTreeMap<&'static str, KindCounts>,
    /// Open loop: from the scheduled send time. Closed loop: from the actual send.
    pub latency: Summary,
    pub service_time: Summary,
    /// Client process CPU time / wall time (1.0 = one core busy).
    pub client_cpu_share: f64,
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
    #[serde(skip)]
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn total(&self) -> KindCounts {
        let mut total = KindCounts::default();
        for counts in self.kinds.values() {
            total.add(counts);
        }
        total
    }
}

struct Shared {
    spec: LoadSpec,
    requests: Arc<Vec<Prepared>>,
    next: AtomicU64,
    sent: AtomicU64,
    answered: AtomicU64,
    start: Instant,
    deadline: Instant,
    schedule: Option<Schedule>,
    limit: u64,
}

/// Runs one load phase to completion.
pub async fn drive(spec: LoadSpec, requests: Arc<Vec<Prepared>>) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!requests.is_empty(), "no requests prepared");
    anyhow::ensure!(spec.connections > 0, "at least one connection is needed");
    let schedule = match spec.rate {
        Some(rate) => {
            Some(Schedule::new(rate).ok_or_else(|| anyhow::anyhow!("rate must be positive"))?)
        }
        None => None,
    };
    let limit = match spec.rate {
        Some(rate) => spec
            .max_requests
            .min((rate * spec.duration.as_secs_f64()).ceil() as u64),
        None => spec.max_requests,
    };
    let cpu_before = procstat::cpu(0).ok();
    let start = Instant::now();
    let driven = match schedule {
        // HTTP/1.1 at a fixed rate: the single-threaded client that keeps its own
        // time (see `openloop` for why the pacer-and-tasks design is not used).
        Some(schedule) if !spec.http2 => {
            let plan = openloop::Plan {
                target: spec.target,
                schedule,
                limit,
                duration: spec.duration,
                connections: spec.connections,
                timeout: spec.timeout,
                progress: spec.progress,
            };
            tokio::task::spawn_blocking(move || openloop::run(&plan, &requests)).await??
        }
        _ => drive_tasks(&spec, requests, schedule, limit, start).await?,
    };
    let elapsed = start.elapsed();
    let client_cpu_share = match (cpu_before, procstat::cpu(0).ok()) {
        (Some(before), Some(after)) => {
            after.since(&before).total.as_secs_f64() / elapsed.as_secs_f64()
        }
        _ => f64::NAN,
    };
    let Run {
        tally,
        sent,
        answered,
        released,
    } = driven;
    Ok(Outcome {
        mode: if schedule.is_some() { "open" } else { "closed" },
        http: if spec.http2 { "h2c" } else { "http/1.1" },
        connections: spec.connections,
        target_rate: spec.rate,
        elapsed_s: elapsed.as_secs_f64(),
        sent,
        answered,
        errors: tally.errors,
        timeouts: tally.timeouts,
        missed_slots: released.saturating_sub(sent),
        achieved_rps: answered as f64 / elapsed.as_secs_f64(),
        status: tally.status,
        kinds: KIND_NAMES.iter().copied().zip(tally.kinds).collect(),
        latency: tally.latencies.corrected(),
        service_time: tally.latencies.service(),
        client_cpu_share,
        curve: tally.latencies.curve(),
        first_error: tally.first_error,
    })
}

/// Closed loop, and HTTP/2 at a fixed rate: one tokio task per connection (per
/// stream for HTTP/2), open-loop slots released by a [`Pacer`].
async fn drive_tasks(
    spec: &LoadSpec,
    requests: Arc<Vec<Prepared>>,
    schedule: Option<Schedule>,
    limit: u64,
    start: Instant,
) -> anyhow::Result<Run> {
    let shared = Arc::new(Shared {
        requests,
        next: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        start,
        deadline: start + spec.duration,
        schedule,
        limit,
        spec: spec.clone(),
    });
    let mut pacer = match schedule {
        Some(schedule) => Some(Pacer::start(schedule, start, limit)?),
        None => None,
    };
    let permits = pacer.as_ref().map(|p| p.permits.clone());
    let streams = if spec.http2 { spec.streams.max(1) } else { 1 };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.connections {
        let connection = Connection::new(spec.http2);
        for _ in 0..streams {
            tasks.spawn(worker(shared.clone(), connection.share(), permits.clone()));
        }
    }
    let progress = spec
        .progress
        .then(|| tokio::spawn(progress(shared.clone())));

    // The run ends at the deadline or once every slot was taken; then the pacer
    // closes its semaphore, idle tasks wake and end, and in-flight requests finish
    // (each bounded by the request timeout).
    while Instant::now() < shared.deadline
        && shared.next.load(Ordering::Relaxed) < limit
        && !tasks.is_empty()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let released = pacer.as_ref().map_or(0, Pacer::released);
    if let Some(pacer) = pacer.as_mut() {
        pacer.stop();
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        tally.merge(joined?);
    }
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    Ok(Run {
        tally,
        sent: shared.sent.load(Ordering::Relaxed),
        answered: shared.answered.load(Ordering::Relaxed),
        released,
    })
}

async fn worker(
    shared: Arc<Shared>,
    mut connection: Connection,
    permits: Option<Arc<tokio::sync::Semaphore>>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        if let Some(permits) = &permits {
            match permits.acquire().await {
                Ok(permit) => permit.forget(),
                // Closed: the run is over.
                Err(_) => break,
            }
        }
        let index = shared.next.fetch_add(1, Ordering::Relaxed);
        if index >= shared.limit || Instant::now() >= shared.deadline {
            break;
        }
        let scheduled = match shared.schedule {
            Some(schedule) => shared.start + schedule.offset(index),
            None => Instant::now(),
        };
        let prepared = &shared.requests[(index % shared.requests.len() as u64) as usize];
        tally.sent(prepared);
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        match tokio::time::timeout(
            shared.spec.timeout,
            connection.send(shared.spec.target, prepared),
        )
        .await
        {
            Ok(Ok(status)) => {
                tally.latencies.record(scheduled, sent, Instant::now());
                shared.answered.fetch_add(1, Ordering::Relaxed);
                tally.answered(prepared, status);
            }
            Ok(Err(err)) => {
                tally.failed(prepared, || err.to_string());
                // Do not hammer a server that refuses connections.
                tokio::time::sleep(openloop::REST_AFTER_ERROR).await;
            }
            // The cancelled HTTP/1.1 sender was dropped with the future, so the next
            // request reconnects; an HTTP/2 stream is reset and the connection kept.
            Err(_) => tally.timed_out(prepared),
        }
    }
    tally
}

async fn progress(shared: Arc<Shared>) {
    let mut line = Progress::new(shared.start);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        line.print(
            Instant::now(),
            shared.sent.load(Ordering::Relaxed),
            shared.answered.load(Ordering::Relaxed),
        );
    }
}
