//! Readiness: stages register with a deadline and beat; the edge is ready while every
//! registered stage has beaten within its deadline and no shutdown is under way.
//!
//! Liveness (`/healthz`) is separate and only says the process answers; readiness
//! (`/readyz`) tells a load balancer to move traffic away, e.g. from a stuck writer.
//! The registry keeps the `trackedge_ready` gauge equal to the same verdict by
//! itself ([`Health::publish`]), so a scrape sees it without anyone probing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock (the system clock outside a runtime) so tests can pause and
// advance time instead of sleeping.
use tokio::time::Instant;

use crate::metrics as m;
use crate::shutdown::Signal;

/// How often [`Health::publish`] re-evaluates readiness for the gauge.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Stage {
    name: &'static str,
    deadline: Duration,
    last_beat_ms: AtomicU64,
}

/// The registry every stage reports to.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    stages: Mutex<Vec<Arc<Stage>>>,
    draining: AtomicBool,
}

/// A stage's handle: call [`Heartbeat::beat`] at least once per deadline.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    started: Instant,
    stage: Arc<Stage>,
}

impl Heartbeat {
    pub fn beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.stage.last_beat_ms.store(now, Ordering::Relaxed);
    }
}

/// Why the edge is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    Draining,
    Late(Vec<&'static str>),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Draining => f.write_str("shutting down"),
            NotReady::Late(names) => write!(f, "late: {}", names.join(", ")),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            started: Instant::now(),
            stages: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
        }
    }

    /// Registers a stage that counts as having just beaten.
    pub fn register(&self, name: &'static str, deadline: Duration) -> Heartbeat {
        let stage = Arc::new(Stage {
            name,
            deadline,
            last_beat_ms: AtomicU64::new(self.started.elapsed().as_millis() as u64),
        });
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stage.clone());
        Heartbeat {
            started: self.started,
            stage,
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        metrics::gauge!(m::READY).set(0.0);
    }

    /// Keeps `trackedge_ready` equal to [`Health::check`] until `shutdown` fires.
    pub async fn publish(self: Arc<Self>, mut shutdown: Signal) {
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = self.check();
                }
                () = shutdown.recv() => return,
            }
        }
    }

    /// The verdict, also published as the `trackedge_ready` gauge.
    pub fn check(&self) -> Result<(), NotReady> {
        let verdict = self.verdict();
        metrics::gauge!(m::READY).set(if verdict.is_ok() { 1.0 } else { 0.0 });
        verdict
    }

    fn verdict(&self) -> Result<(), NotReady> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(NotReady::Draining);
        }
        let now = self.started.elapsed().as_millis() as u64;
        let late: Vec<&'static str> = self
            .stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|stage| {
                let since = now.saturating_sub(stage.last_beat_ms.load(Ordering::Relaxed));
                since > stage.deadline.as_millis() as u64
            })
            .map(|stage| stage.name)
            .collect();
        if late.is_empty() {
            Ok(())
        } else {
            Err(NotReady::Late(late))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stage_that_stops_beating_makes_the_edge_unready() {
        let health = Health::new();
        let beat = health.register("writer", Duration::from_millis(200));
        assert_eq!(health.check(), Ok(()));
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(health.check(), Err(NotReady::Late(vec!["writer"])));
        beat.beat();
        assert_eq!(health.check(), Ok(()));
        health.set_draining();
        assert_eq!(health.check(), Err(NotReady::Draining));
    }
}
