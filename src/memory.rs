//! Handing heap back to the kernel once a busy period is over.
//!
//! glibc keeps the memory a burst freed in its arenas for reuse, so resident memory
//! stays near the burst's peak for good (measured at saturation with the City file:
//! 34 MB at start, 81 MB after 10 s of load and still 81 MB 5 s later; one
//! `malloc_trim(0)` then brought it to 44 MB). Trimming all the time costs CPU on
//! the request path (glibc's trim threshold lowered: 10-20% more CPU per request),
//! so this trims once, when the edge has gone quiet: every `memory.release_check`
//! it compares the process's CPU time and resident memory with the last look, and
//! trims when it used under [`QUIET_CPU_SHARE`] of one core meanwhile and holds at
//! least `memory.release_min_growth` more than after its last trim (the first quiet
//! look after start always trims: start-up frees memory too).
//! The trim runs on the blocking pool, so the call itself never occupies a worker;
//! a worker that allocates meanwhile still waits for the arena being trimmed, which
//! is why it only runs when the edge is quiet.
//!
//! Growth is measured on anonymous resident memory (`RssAnon`): the heap, not the
//! pages of the mapped GeoIP file, which lookups touch and the kernel can drop.

use std::time::{Duration, Instant};

use crate::config::MemoryConfig;
use crate::metrics as m;
use crate::shutdown::Signal;

/// Below this share of one core since the last look the edge is quiet.
pub const QUIET_CPU_SHARE: f64 = 0.05;

/// What the process used and holds, from /proc/self.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    cpu: Duration,
    /// Anonymous resident memory (heap and stacks).
    resident_bytes: u64,
    at: Instant,
}

/// Whether to release now: quiet since the last look, and grown enough since the
/// last release. Kept apart from the I/O so the rule is tested on its own.
fn should_release(
    cpu_share: f64,
    resident_bytes: u64,
    baseline_bytes: u64,
    min_growth_bytes: u64,
) -> bool {
    cpu_share < QUIET_CPU_SHARE && resident_bytes >= baseline_bytes.saturating_add(min_growth_bytes)
}

/// Looks every `config.release_check` until `shutdown`; returns at once when
/// releasing is off or the platform has no way to do it.
pub async fn release_when_quiet(config: MemoryConfig, mut shutdown: Signal) {
    let releases = metrics::counter!(m::MEMORY_RELEASES_TOTAL);
    let released_bytes = metrics::counter!(m::MEMORY_RELEASED_BYTES_TOTAL);
    // At zero from the start, so dashboards see the series before the first release.
    releases.absolute(0);
    released_bytes.absolute(0);
    let Some(every) = config.release_check else {
        return;
    };
    if !trim::AVAILABLE {
        tracing::info!("memory.release_check_ms is set, but this build's allocator cannot release memory; ignored");
        return;
    }
    let Some(mut last) = sample() else {
        tracing::warn!("cannot read /proc/self: memory is never released to the kernel");
        return;
    };
    // Start-up (compiling the classification rules, loading the databases) frees
    // memory too: the first quiet look releases it, whatever the growth.
    let mut baseline = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.recv() => return,
        }
        let Some(now) = sample() else { continue };
        // Over the time that really passed: a late tick, or the look after a trim,
        // must not read as busy or quiet.
        let elapsed = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
        let cpu_share = now.cpu.saturating_sub(last.cpu).as_secs_f64() / elapsed;
        last = now;
        if !should_release(
            cpu_share,
            now.resident_bytes,
            baseline,
            config.release_min_growth_bytes,
        ) {
            // A process that shrank on its own starts counting growth from there.
            baseline = baseline.min(now.resident_bytes);
            continue;
        }
        if tokio::task::spawn_blocking(trim::release).await.is_err() {
            continue;
        }
        let after = sample().map_or(now.resident_bytes, |s| s.resident_bytes);
        releases.increment(1);
        released_bytes.increment(now.resident_bytes.saturating_sub(after));
        tracing::debug!(
            before = now.resident_bytes,
            after,
            "released freed heap to the kernel"
        );
        baseline = after;
        // The trim's own CPU is not traffic.
        if let Some(s) = sample() {
            last = s;
        }
    }
}

#[cfg(target_os = "linux")]
fn sample() -> Option<Sample> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
    Some(Sample {
        cpu: Duration::from_secs_f64(ticks),
        resident_bytes: me.status().ok()?.rssanon? * 1024,
        at: Instant::now(),
    })
}

#[cfg(not(target_os = "linux"))]
fn sample() -> Option<Sample> {
    None
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod trim {
    pub const AVAILABLE: bool = true;

    /// Returns the free memory at the top of every arena and the free pages inside
    /// them to the kernel.
    #[allow(unsafe_code)]
    pub fn release() {
        // SAFETY: malloc_trim takes no pointer and touches only glibc's own arenas,
        // each under its lock; glibc documents it as callable from any thread at any
        // time (MT-Safe in its manual), and its result (whether anything was
        // released) is not needed here.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod trim {
    pub const AVAILABLE: bool = false;

    pub fn release() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn releases_only_when_quiet_and_grown() {
        assert!(should_release(0.01, 100 * MB, 80 * MB, 16 * MB));
        assert!(
            should_release(0.0, 96 * MB, 80 * MB, 16 * MB),
            "exactly the growth"
        );
        assert!(
            !should_release(0.01, 95 * MB, 80 * MB, 16 * MB),
            "not grown enough"
        );
        assert!(!should_release(0.5, 200 * MB, 80 * MB, 16 * MB), "busy");
        assert!(
            !should_release(QUIET_CPU_SHARE, 200 * MB, 80 * MB, 16 * MB),
            "at the line"
        );
        assert!(should_release(0.0, 80 * MB, 80 * MB, 0), "no growth asked");
        assert!(
            !should_release(0.0, u64::MAX - 1, u64::MAX - 1, 16 * MB),
            "the growth saturates instead of wrapping"
        );
    }

    #[test]
    fn this_process_is_sampled_from_proc() {
        let first = sample().expect("this process's /proc/self");
        assert!(first.resident_bytes > 0);
        // Spin a little: CPU time moves forward, never back.
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until {
            std::hint::black_box(0u64);
        }
        let second = sample().unwrap();
        assert!(second.cpu >= first.cpu && second.at > first.at);
    }
}
