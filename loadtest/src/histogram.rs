//! Latency recording in HDR histograms (nanoseconds, 3 significant digits).
//!
//! Two histograms per run: `corrected` measures from the slot's scheduled send time
//! (open loop; the coordinated-omission correction, what a user waiting for the
//! pixel experiences) and `service` from the moment the request was actually
//! written (what the server alone took). In closed-loop runs both start at the send,
//! so they are equal and the report says the figure is uncorrected.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Anything above a minute is recorded as a minute (runs time out long before).
const MAX_NS: u64 = 60_000_000_000;

pub struct Latencies {
    corrected: Histogram<u64>,
    service: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static bounds are valid")
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        Latencies {
            corrected: histogram(),
            service: histogram(),
        }
    }

    /// One answered request: `scheduled` is when it was due (the send time in a
    /// closed loop), `sent` when it was written, `done` when its body was read.
    pub fn record(&mut self, scheduled: Instant, sent: Instant, done: Instant) {
        self.corrected
            .saturating_record(nanos(done.saturating_duration_since(scheduled)));
        self.service
            .saturating_record(nanos(done.saturating_duration_since(sent)));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.service.add(&other.service);
    }

    pub fn count(&self) -> u64 {
        self.corrected.len()
    }

    pub fn corrected(&self) -> Summary {
        Summary::of(&self.corrected)
    }

    pub fn service(&self) -> Summary {
        Summary::of(&self.service)
    }

    /// (percentile, latency µs) points of the corrected distribution, for a plot.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        let mut points = Vec::new();
        if self.corrected.is_empty() {
            return points;
        }
        // Log-spaced toward 100%: 0, 50, 75, 87.5, ... like HdrHistogram's own plots.
        for step in 0..=60 {
            let q = 100.0 * (1.0 - 0.5f64.powf(f64::from(step) / 3.0));
            points.push((q, self.corrected.value_at_quantile(q / 100.0) as f64 / 1e3));
        }
        points.push((100.0, self.corrected.max() as f64 / 1e3));
        points
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
}

impl Summary {
    fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let at = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        Summary {
            count: h.len(),
            mean_us: h.mean() / 1e3,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            p9999_us: at(0.9999),
            max_us: h.max() as f64 / 1e3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    /// A simulated open-loop run over one connection against a server that answers
    /// in 100 µs but stalls once for 200 ms: the slots due during the stall must
    /// count their wait, which a service-time histogram would hide.
    #[test]
    fn a_stall_shows_in_corrected_latency_but_not_in_service_time() {
        let schedule = Schedule::new(1000.0).unwrap();
        let t0 = Instant::now();
        let mut latencies = Latencies::new();
        let mut free_at = t0;
        for slot in 0..10_000u64 {
            let scheduled = t0 + schedule.offset(slot);
            let sent = scheduled.max(free_at);
            let service = if slot == 5000 {
                Duration::from_millis(200)
            } else {
                Duration::from_micros(100)
            };
            let done = sent + service;
            free_at = done;
            latencies.record(scheduled, sent, done);
        }
        let corrected = latencies.corrected();
        let service = latencies.service();
        assert_eq!(corrected.count, 10_000);
        // ~200 slots waited behind the stall: 2% of the run, so p99 sees it.
        assert!(corrected.p99_us > 50_000.0, "{corrected:?}");
        assert!(corrected.max_us >= 199_000.0, "{corrected:?}");
        assert!(service.p99_us < 200.0, "{service:?}");
        assert!(service.max_us >= 199_000.0);
        assert!((corrected.p50_us - 100.0).abs() < 1.0, "{corrected:?}");
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let t = Instant::now();
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(t, t, t + Duration::from_micros(10));
        b.record(t, t, t + Duration::from_millis(3));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!(a.corrected().max_us >= 2990.0);
        let curve = a.curve();
        assert!(curve
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[0].0 <= w[1].0));
    }
}
