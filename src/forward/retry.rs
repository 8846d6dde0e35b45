//! Retry policy: what a send attempt's result means, how long to wait before the
//! next, and the circuit that stops every lane from hammering a dead upstream.
//!
//! All pure: time and randomness come in as arguments so the rules are unit-tested.
//! (Only [`Failure::counter`] names a metric.)

use std::time::{Duration, Instant};

/// The result of one attempt to deliver a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sink acknowledged: the batch may leave the spool.
    Delivered,
    /// Try again later (after `after` if the upstream said so).
    Retry {
        reason: Failure,
        after: Option<Duration>,
    },
    /// The upstream will never take this batch: dead-letter it.
    Rejected { reason: Failure },
}

/// Why an attempt failed (or a segment could not be sent at all); `as_str` is the
/// `reason` label of `trackedge_forward_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Status408,
    Status429,
    Status5xx,
    Status3xx,
    Status4xx,
    Connect,
    Timeout,
    Io,
    CorruptRecord,
    KafkaRejected,
    KafkaError,
}

impl Failure {
    pub const ALL: [Failure; 11] = [
        Failure::Status408,
        Failure::Status429,
        Failure::Status5xx,
        Failure::Status3xx,
        Failure::Status4xx,
        Failure::Connect,
        Failure::Timeout,
        Failure::Io,
        Failure::CorruptRecord,
        Failure::KafkaRejected,
        Failure::KafkaError,
    ];

    /// The counter of this reason.
    pub fn counter(self) -> metrics::Counter {
        metrics::counter!(crate::metrics::FORWARD_FAILURES_TOTAL, "reason" => self.as_str())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Status408 => "status_408",
            Failure::Status429 => "status_429",
            Failure::Status5xx => "status_5xx",
            Failure::Status3xx => "status_3xx",
            Failure::Status4xx => "status_4xx",
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Io => "io",
            Failure::CorruptRecord => "corrupt_record",
            Failure::KafkaRejected => "kafka_rejected",
            Failure::KafkaError => "kafka_error",
        }
    }
}

/// Maps an upstream HTTP answer to an outcome: 2xx delivered; 408, 429 and 5xx
/// retried (honouring `Retry-After`); every other status rejected.
pub fn classify_status(status: http::StatusCode, retry_after: Option<Duration>) -> Outcome {
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        408 => Outcome::Retry {
            reason: Failure::Status408,
            after: retry_after,
        },
        429 => Outcome::Retry {
            reason: Failure::Status429,
            after: retry_after,
        },
        500..=599 => Outcome::Retry {
            reason: Failure::Status5xx,
            after: retry_after,
        },
        300..=399 => Outcome::Rejected {
            reason: Failure::Status3xx,
        },
        _ => Outcome::Rejected {
            reason: Failure::Status4xx,
        },
    }
}

/// Every failure [`classify_status`] gives.
pub const STATUS_FAILURES: [Failure; 5] = [
    Failure::Status408,
    Failure::Status429,
    Failure::Status5xx,
    Failure::Status3xx,
    Failure::Status4xx,
];

/// `Retry-After` in delta-seconds (HTTP dates are rare from APIs and ignored),
/// capped so a confused upstream cannot park the forwarder for a day.
pub fn parse_retry_after(value: &[u8], cap: Duration) -> Option<Duration> {
    let seconds: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(cap))
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, initial * 2^attempt))`.
/// `unit` is a random number in `[0, 1)`.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let ceiling = initial
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// Whether a lane may send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Go,
    Wait(Duration),
}

/// Closed -> (after `threshold` failures in a row) open for `open_for` -> half open:
/// one probe goes, the others wait; its success closes, its failure re-opens.
#[derive(Debug)]
pub struct Circuit {
    threshold: u32,
    open_for: Duration,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

/// How often lanes waiting on a half-open circuit look again.
const PROBE_WAIT: Duration = Duration::from_millis(100);

impl Circuit {
    pub fn new(threshold: u32, open_for: Duration) -> Circuit {
        Circuit {
            threshold: threshold.max(1),
            open_for,
            consecutive_failures: 0,
            open_until: None,
            probing: false,
        }
    }

    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.open_until {
            None => Permit::Go,
            Some(until) if now < until => Permit::Wait(until - now),
            Some(_) if self.probing => Permit::Wait(PROBE_WAIT),
            Some(_) => {
                self.probing = true;
                Permit::Go
            }
        }
    }

    /// A permit that was not used (nothing was left to send): another lane may probe.
    pub fn unused(&mut self) {
        self.probing = false;
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.open_until = None;
        self.probing = false;
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.probing || self.consecutive_failures >= self.threshold {
            self.open_until = Some(now + self.open_for);
            self.probing = false;
        }
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reason_is_listed() {
        for code in 100..=599 {
            let status = http::StatusCode::from_u16(code).unwrap();
            match classify_status(status, None) {
                Outcome::Delivered => {}
                Outcome::Retry { reason, .. } | Outcome::Rejected { reason } => {
                    assert!(STATUS_FAILURES.contains(&reason), "{code}: {reason:?}")
                }
            }
        }
    }
    use http::StatusCode;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify_status(StatusCode::OK, None), Outcome::Delivered);
        assert_eq!(
            classify_status(StatusCode::ACCEPTED, None),
            Outcome::Delivered
        );
        let after = Some(Duration::from_secs(3));
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, after),
            Outcome::Retry {
                reason: Failure::Status429,
                after
            }
        );
        assert!(matches!(
            classify_status(StatusCode::SERVICE_UNAVAILABLE, None),
            Outcome::Retry {
                reason: Failure::Status5xx,
                ..
            }
        ));
        assert!(matches!(
            classify_status(StatusCode::REQUEST_TIMEOUT, None),
            Outcome::Retry { .. }
        ));
        for status in [400, 401, 403, 404, 413, 422] {
            assert_eq!(
                classify_status(StatusCode::from_u16(status).unwrap(), None),
                Outcome::Rejected {
                    reason: Failure::Status4xx
                },
                "{status}"
            );
        }
        assert!(matches!(
            classify_status(StatusCode::MOVED_PERMANENTLY, None),
            Outcome::Rejected { .. }
        ));
    }

    #[test]
    fn retry_after_is_seconds_and_capped() {
        let cap = Duration::from_secs(60);
        assert_eq!(parse_retry_after(b"7", cap), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(b" 7 ", cap), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(b"86400", cap), Some(cap));
        assert_eq!(
            parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT", cap),
            None
        );
        assert_eq!(parse_retry_after(b"-1", cap), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        assert_eq!(backoff(0, initial, max, 0.999_999).as_millis(), 99);
        assert_eq!(backoff(3, initial, max, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(20, initial, max, 0.5), Duration::from_secs(15));
        assert_eq!(backoff(u32::MAX, initial, max, 1.0), max);
        assert_eq!(backoff(5, initial, max, 0.0), Duration::ZERO);
    }

    #[test]
    fn circuit_opens_after_the_threshold_and_probes_once() {
        let start = Instant::now();
        let open_for = Duration::from_secs(10);
        let mut circuit = Circuit::new(3, open_for);
        assert_eq!(circuit.permit(start), Permit::Go);
        circuit.on_failure(start);
        circuit.on_failure(start);
        assert_eq!(circuit.permit(start), Permit::Go, "below the threshold");
        circuit.on_failure(start);
        assert!(circuit.is_open(start));
        assert_eq!(circuit.permit(start), Permit::Wait(open_for));
        let later = start + open_for;
        assert_eq!(circuit.permit(later), Permit::Go, "one probe");
        assert_eq!(circuit.permit(later), Permit::Wait(PROBE_WAIT), "only one");
        circuit.unused();
        assert_eq!(
            circuit.permit(later),
            Permit::Go,
            "an unused probe passes on"
        );
        circuit.on_failure(later);
        assert_eq!(
            circuit.permit(later),
            Permit::Wait(open_for),
            "failed probe re-opens"
        );
        let again = later + open_for;
        assert_eq!(circuit.permit(again), Permit::Go);
        circuit.on_success();
        assert_eq!(circuit.permit(again), Permit::Go);
        assert_eq!(circuit.permit(again), Permit::Go, "closed: everyone goes");
        assert_eq!(circuit.consecutive_failures(), 0);
    }
}
