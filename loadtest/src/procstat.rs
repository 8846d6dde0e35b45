//! CPU time and memory of a process from /proc (Linux).
//!
//! CPU is read two ways: the sum of `/proc/PID/task/*/schedstat` (nanoseconds on
//! the CPU, per thread; precise enough for a few seconds of load) and utime+stime
//! from `/proc/PID/stat` (clock ticks, usually 10 ms, but split into user and
//! kernel time). A thread that exits between two readings takes its schedstat time
//! with it; the servers measured here keep their threads for the whole run.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected format in {0}")]
    Format(PathBuf),
}

/// Clock ticks per second for /proc/PID/stat; 100 on every mainstream Linux build
/// (USER_HZ is fixed by the kernel ABI regardless of CONFIG_HZ).
const TICKS_PER_SECOND: u64 = 100;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSample {
    pub user: Duration,
    pub system: Duration,
    /// Sum of on-CPU time of all threads, nanosecond resolution.
    pub scheduled: Duration,
}

/// CPU used between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuDelta {
    pub user: Duration,
    pub system: Duration,
    /// Best total: schedstat's when available, else user+system.
    pub total: Duration,
}

impl CpuSample {
    pub fn since(&self, before: &CpuSample) -> CpuDelta {
        let user = self.user.saturating_sub(before.user);
        let system = self.system.saturating_sub(before.system);
        let scheduled = self.scheduled.saturating_sub(before.scheduled);
        CpuDelta {
            user,
            system,
            total: if scheduled.is_zero() {
                user + system
            } else {
                scheduled
            },
        }
    }
}

fn read(path: PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

/// `pid` 0 means this process.
fn dir(pid: u32) -> PathBuf {
    if pid == 0 {
        PathBuf::from("/proc/self")
    } else {
        PathBuf::from(format!("/proc/{pid}"))
    }
}

pub fn cpu(pid: u32) -> Result<CpuSample, ProcError> {
    let stat_path = dir(pid).join("stat");
    let (user, system) =
        parse_stat(&read(stat_path.clone())?).ok_or(ProcError::Format(stat_path))?;
    let mut scheduled = Duration::ZERO;
    if let Ok(tasks) = std::fs::read_dir(dir(pid).join("task")) {
        for task in tasks.flatten() {
            // A thread may exit while we look; its time is simply not counted.
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                if let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse().ok()) {
                    scheduled += Duration::from_nanos(ns);
                }
            }
        }
    }
    Ok(CpuSample {
        user,
        system,
        scheduled,
    })
}

/// utime and stime from a `/proc/PID/stat` line. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after the last ')'.
fn parse_stat(text: &str) -> Option<(Duration, Duration)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let ticks = |index: usize| -> Option<Duration> {
        let value: u64 = fields.get(index - 3)?.parse().ok()?;
        Some(Duration::from_micros(value * 1_000_000 / TICKS_PER_SECOND))
    };
    Some((ticks(14)?, ticks(15)?))
}

/// CPU time of this process's children that have exited and been waited for
/// (cutime + cstime of /proc/self/stat): what a client run as a child used.
pub fn children_cpu() -> Result<Duration, ProcError> {
    let path = dir(0).join("stat");
    let text = read(path.clone())?;
    let rest = &text[text.rfind(')').ok_or(ProcError::Format(path.clone()))? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> Option<u64> { fields.get(index - 3)?.parse().ok() };
    let (Some(user), Some(system)) = (ticks(16), ticks(17)) else {
        return Err(ProcError::Format(path));
    };
    Ok(Duration::from_micros(
        (user + system) * 1_000_000 / TICKS_PER_SECOND,
    ))
}

/// Time the hypervisor ran something else while this machine's CPUs wanted to run
/// (the `steal` column of /proc/stat's `cpu` line, summed over CPUs). A virtual
/// machine loses its CPUs in slices of milliseconds: every request due meanwhile
/// waits, whatever the server, so a latency tail is read beside this figure.
pub fn steal() -> Result<Duration, ProcError> {
    let path = PathBuf::from("/proc/stat");
    let text = read(path.clone())?;
    parse_steal(&text).ok_or(ProcError::Format(path))
}

fn parse_steal(text: &str) -> Option<Duration> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(Duration::from_micros(ticks * 1_000_000 / TICKS_PER_SECOND))
}

/// Resident memory in bytes: all of it (VmRSS), and its private anonymous part
/// (heap, stacks) apart from file pages (a memory-mapped file that the page cache
/// shares with every other reader and can drop under pressure).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Memory {
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
}

impl Memory {
    /// The larger of each part.
    pub fn max(self, other: Memory) -> Memory {
        Memory {
            rss: self.rss.max(other.rss),
            anon: self.anon.max(other.anon),
            file: self.file.max(other.file),
        }
    }
}

pub fn memory(pid: u32) -> Result<Memory, ProcError> {
    let path = dir(pid).join("status");
    let text = read(path.clone())?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:").ok_or_else(|| ProcError::Format(path.clone()))?,
        anon: field("RssAnon:").unwrap_or(0),
        file: field("RssFile:").unwrap_or(0),
    })
}

/// On-CPU time (schedstat) per thread name, numbered threads of one pool summed
/// under the name without its number (`sled-io-3` -> `sled-io`).
pub fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, Duration> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(dir(pid).join("task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        let name = comm
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches('-')
            .to_owned();
        *out.entry(name).or_insert(Duration::ZERO) += Duration::from_nanos(ns);
    }
    out
}

/// Resident set size in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Result<u64, ProcError> {
    let path = dir(pid).join("status");
    let text = read(path.clone())?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or(ProcError::Format(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 3 0 100 1000 200";
        let (user, system) = parse_stat(line).unwrap();
        assert_eq!(user, Duration::from_millis(2500));
        assert_eq!(system, Duration::from_millis(750));
    }

    #[test]
    fn own_process_is_readable_and_time_only_grows() {
        let before = cpu(0).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = cpu(0).unwrap();
        let delta = after.since(&before);
        assert!(delta.total > Duration::ZERO);
        assert!(rss_bytes(0).unwrap() > 1024 * 1024);
        let memory = memory(0).unwrap();
        assert!(memory.rss >= memory.anon && memory.anon > 0);
        assert!(cpu_by_thread(0).values().any(|t| *t > Duration::ZERO));
    }

    #[test]
    fn steal_is_read_from_the_summed_cpu_line() {
        let text =
            "cpu  3961756 0 733782 1496891 18405 0 145837 19125 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(parse_steal(text), Some(Duration::from_millis(191_250)));
        assert_eq!(parse_steal("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_steal("cpu  1 2 3\n"), None);
        assert!(
            steal().is_ok(),
            "this machine's /proc/stat has a steal column"
        );
    }
}
