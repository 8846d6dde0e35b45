//! Drives load: open loop at a fixed rate (paced by [`schedule::Pacer`], latency
//! from the scheduled time) or closed loop (each connection sends as soon as its
//! previous answer arrived), over many keep-alive connections, bounded by duration
//! and request count. Each task records into its own histogram and counters, merged
//! once at the end, so nothing is shared on the hot path but two atomic counters
//! for the progress line.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Connection;
use crate::histogram::{Latencies, Summary};
use crate::procstat;
use crate::schedule::{Pacer, Schedule};
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

/// Counts for one kind of request, split by whether its token was good.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct KindCounts {
    pub sent_good: u64,
    pub sent_bad: u64,
    /// Good-token requests answered with the route's success status (200 / 302).
    pub answered_good: u64,
    /// Bad-token requests answered (pixel 200, click 404 or fallback 302).
    pub answered_bad: u64,
    /// Answered with a status the route should not give (5xx, 4xx for a good token).
    pub unexpected_status: u64,
    /// No answer: connection error or timeout. Whether the server recorded it is unknown.
    pub unanswered: u64,
}

impl KindCounts {
    fn add(&mut self, other: &KindCounts) {
        self.sent_good += other.sent_good;
        self.sent_bad += other.sent_bad;
        self.answered_good += other.answered_good;
        self.answered_bad += other.answered_bad;
        self.unexpected_status += other.unexpected_status;
        self.unanswered += other.unanswered;
    }
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

struct TaskResult {
    latencies: Latencies,
    kinds: [KindCounts; 3],
    status: BTreeMap<u16, u64>,
    errors: u64,
    timeouts: u64,
    first_error: Option<String>,
}

fn kind_index(kind: trackedge::Kind) -> usize {
    match kind {
        trackedge::Kind::Open => 0,
        trackedge::Kind::Click => 1,
        // Unsubscribe, sender and trap links are not in the load mix; counted with
        // downloads if they ever are.
        trackedge::Kind::Download
        | trackedge::Kind::Unsubscribe
        | trackedge::Kind::Sender
        | trackedge::Kind::Trap => 2,
    }
}
const KIND_NAMES: [&str; 3] = ["open", "click", "download"];

/// Whether `status` is the right answer for this request.
fn expected(prepared: &Prepared, status: http::StatusCode) -> bool {
    match (prepared.kind, prepared.bad) {
        (trackedge::Kind::Open, _) => status == http::StatusCode::OK,
        (_, false) => status == http::StatusCode::FOUND,
        (_, true) => status == http::StatusCode::NOT_FOUND || status == http::StatusCode::FOUND,
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
    let mut latencies = Latencies::new();
    let mut kinds = [KindCounts::default(); 3];
    let mut status = BTreeMap::new();
    let (mut errors, mut timeouts, mut first_error) = (0, 0, None);
    while let Some(joined) = tasks.join_next().await {
        let result = joined?;
        latencies.merge(&result.latencies);
        for (total, part) in kinds.iter_mut().zip(&result.kinds) {
            total.add(part);
        }
        for (code, count) in result.status {
            *status.entry(code).or_insert(0) += count;
        }
        errors += result.errors;
        timeouts += result.timeouts;
        if first_error.is_none() {
            first_error = result.first_error;
        }
    }
    let elapsed = start.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        eprintln!();
    }
    let client_cpu_share = match (cpu_before, procstat::cpu(0).ok()) {
        (Some(before), Some(after)) => {
            after.since(&before).total.as_secs_f64() / elapsed.as_secs_f64()
        }
        _ => f64::NAN,
    };
    let sent = shared.sent.load(Ordering::Relaxed);
    let answered = shared.answered.load(Ordering::Relaxed);
    Ok(Outcome {
        mode: if schedule.is_some() { "open" } else { "closed" },
        http: if spec.http2 { "h2c" } else { "http/1.1" },
        connections: spec.connections,
        target_rate: spec.rate,
        elapsed_s: elapsed.as_secs_f64(),
        sent,
        answered,
        errors,
        timeouts,
        missed_slots: released.saturating_sub(sent),
        achieved_rps: answered as f64 / elapsed.as_secs_f64(),
        status,
        kinds: KIND_NAMES.iter().copied().zip(kinds).collect(),
        latency: latencies.corrected(),
        service_time: latencies.service(),
        client_cpu_share,
        curve: latencies.curve(),
        first_error,
    })
}

async fn worker(
    shared: Arc<Shared>,
    mut connection: Connection,
    permits: Option<Arc<tokio::sync::Semaphore>>,
) -> TaskResult {
    let mut result = TaskResult {
        latencies: Latencies::new(),
        kinds: [KindCounts::default(); 3],
        status: BTreeMap::new(),
        errors: 0,
        timeouts: 0,
        first_error: None,
    };
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
        let counts = &mut result.kinds[kind_index(prepared.kind)];
        if prepared.bad {
            counts.sent_bad += 1;
        } else {
            counts.sent_good += 1;
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        match tokio::time::timeout(
            shared.spec.timeout,
            connection.send(shared.spec.target, prepared),
        )
        .await
        {
            Ok(Ok(status)) => {
                let done = Instant::now();
                result.latencies.record(scheduled, sent, done);
                shared.answered.fetch_add(1, Ordering::Relaxed);
                *result.status.entry(status.as_u16()).or_insert(0) += 1;
                if !expected(prepared, status) {
                    counts.unexpected_status += 1;
                } else if prepared.bad {
                    counts.answered_bad += 1;
                } else {
                    counts.answered_good += 1;
                }
            }
            Ok(Err(err)) => {
                counts.unanswered += 1;
                result.errors += 1;
                if result.first_error.is_none() {
                    result.first_error = Some(err.to_string());
                }
                // Do not hammer a server that refuses connections.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The cancelled HTTP/1.1 sender was dropped with the future, so the next
            // request reconnects; an HTTP/2 stream is reset and the connection kept.
            Err(_) => {
                counts.unanswered += 1;
                result.timeouts += 1;
            }
        }
    }
    result
}

async fn progress(shared: Arc<Shared>) {
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0u64;
    loop {
        tick.tick().await;
        let answered = shared.answered.load(Ordering::Relaxed);
        let sent = shared.sent.load(Ordering::Relaxed);
        let line = format!(
            "[{:5.1}s] sent {sent} answered {answered} ({} req/s)",
            shared.start.elapsed().as_secs_f64(),
            answered - last
        );
        last = answered;
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r{line}   ")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}
