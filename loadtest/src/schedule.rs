//! Open-loop rate scheduling: request `i` is due at `start + i / rate`, whatever
//! happened to earlier requests.
//!
//! A timer thread ([`Pacer`]) sleeps with the OS's high-resolution timer (tokio's
//! timer wheel only has millisecond resolution, which at 10k req/s would batch ten
//! requests per tick and add up to 1 ms of harness-made latency) and releases one
//! permit per due slot. Connection tasks take a permit, then the next slot index,
//! and measure latency from that slot's *scheduled* time: when the server stalls,
//! the requests that should have been sent meanwhile count their waiting time too
//! (the coordinated-omission correction). Closed-loop runs use no pacer at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// A fixed request rate from a start instant.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    interval_ns: f64,
}

impl Schedule {
    /// `rate` in requests per second; must be positive and finite.
    pub fn new(rate: f64) -> Option<Schedule> {
        (rate.is_finite() && rate > 0.0).then(|| Schedule {
            interval_ns: 1e9 / rate,
        })
    }

    /// Offset of slot `index` from the start.
    pub fn offset(&self, index: u64) -> Duration {
        Duration::from_nanos((index as f64 * self.interval_ns) as u64)
    }

    /// How many slots are due at `elapsed` (slot 0 is due at once).
    pub fn due(&self, elapsed: Duration) -> u64 {
        (elapsed.as_nanos() as f64 / self.interval_ns).floor() as u64 + 1
    }
}

/// Releases permits on schedule from a dedicated thread until stopped or `limit`
/// slots were released.
pub struct Pacer {
    pub permits: Arc<Semaphore>,
    stop: Arc<AtomicBool>,
    released: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Sleeps are capped so a stop request is seen within this time.
const MAX_NAP: Duration = Duration::from_millis(5);

impl Pacer {
    pub fn start(schedule: Schedule, start: Instant, limit: u64) -> std::io::Result<Pacer> {
        let permits = Arc::new(Semaphore::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let released = Arc::new(AtomicU64::new(0));
        let thread = {
            let (permits, stop, released) = (permits.clone(), stop.clone(), released.clone());
            std::thread::Builder::new()
                .name("pacer".into())
                .spawn(move || {
                    let mut given = 0u64;
                    while given < limit && !stop.load(Ordering::Acquire) {
                        let due = schedule.due(start.elapsed()).min(limit);
                        if due > given {
                            let add = usize::try_from(due - given).unwrap_or(usize::MAX);
                            // Semaphore::MAX_PERMITS is huge; a run never gets near it.
                            permits.add_permits(add.min(Semaphore::MAX_PERMITS / 2));
                            given = due;
                            released.store(given, Ordering::Release);
                        }
                        let next = start + schedule.offset(given);
                        let wait = next.saturating_duration_since(Instant::now());
                        std::thread::sleep(wait.min(MAX_NAP));
                    }
                })?
        };
        Ok(Pacer {
            permits,
            stop,
            released,
            thread: Some(thread),
        })
    }

    /// Slots released so far.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    /// Stops releasing and closes the semaphore so waiting tasks wake up and end.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.permits.close();
        if let Some(thread) = self.thread.take() {
            // The thread only sleeps and adds permits; it cannot panic in practice.
            let _ = thread.join();
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_evenly_spaced_from_the_start() {
        let s = Schedule::new(1000.0).unwrap();
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(1500), Duration::from_millis(1500));
        assert_eq!(s.due(Duration::ZERO), 1);
        assert_eq!(s.due(Duration::from_micros(999)), 1);
        assert_eq!(s.due(Duration::from_millis(1)), 2);
        assert_eq!(s.due(Duration::from_secs(2)), 2001);
    }

    #[test]
    fn nonsense_rates_are_refused() {
        assert!(Schedule::new(0.0).is_none());
        assert!(Schedule::new(-5.0).is_none());
        assert!(Schedule::new(f64::NAN).is_none());
        assert!(Schedule::new(f64::INFINITY).is_none());
    }

    /// Polls `check` for up to 5 s: a busy test machine may not run the pacer thread
    /// for a while, and these tests are about what it does, not how soon.
    fn eventually(check: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn a_late_pacer_releases_the_backlog_at_once_not_later() {
        // 100k/s and 20 ms late: ~2000 slots are due at the first look.
        let start = Instant::now() - Duration::from_millis(20);
        let mut pacer = Pacer::start(Schedule::new(100_000.0).unwrap(), start, 10_000).unwrap();
        assert!(
            eventually(|| pacer.released() >= 2000),
            "released {}",
            pacer.released()
        );
        pacer.stop();
    }

    #[test]
    fn the_pacer_is_never_ahead_of_schedule_and_stops_at_the_limit() {
        let schedule = Schedule::new(2000.0).unwrap();
        let start = Instant::now();
        let mut pacer = Pacer::start(schedule, start, 300).unwrap();
        for _ in 0..20 {
            let released = pacer.released();
            // Read the clock after the counter: the pacer cannot have released more
            // than was due by now.
            assert!(
                released <= schedule.due(start.elapsed()),
                "released {released}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(eventually(|| pacer.released() == 300));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(pacer.released(), 300);
        pacer.stop();
        // Closed: waiting tasks wake with an error instead of hanging.
        assert!(pacer.permits.try_acquire().is_err() || pacer.permits.is_closed());
    }
}
