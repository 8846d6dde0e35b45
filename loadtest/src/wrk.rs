//! `wrk` as the saturation client: a closed loop over a fixed number of keep-alive
//! HTTP/1.1 connections, one request in flight on each, the same request every
//! time. It is written in C with one event loop per thread, so one client core
//! drives more requests than the servers measured here can answer, and the server
//! (not the client) is what saturates.
//!
//! The run goes to loopback only; its output is parsed for the request count, the
//! errors and the latency distribution (`--latency`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// `wrk` from PATH or the usual places.
pub fn locate() -> Option<PathBuf> {
    crate::process::find_program("wrk")
}

#[derive(Debug, Clone)]
pub struct WrkSpec {
    pub target: SocketAddr,
    pub path: String,
    pub connections: usize,
    pub duration: Duration,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WrkOutcome {
    pub requests: u64,
    pub elapsed_s: f64,
    pub non_2xx_3xx: u64,
    pub socket_errors: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
}

impl WrkOutcome {
    /// Requests answered with 2xx or 3xx.
    pub fn answered(&self) -> u64 {
        self.requests.saturating_sub(self.non_2xx_3xx)
    }
}

/// Runs wrk to completion (blocking; call it from a blocking thread).
pub fn run(bin: &Path, spec: &WrkSpec) -> anyhow::Result<WrkOutcome> {
    anyhow::ensure!(
        spec.target.ip().is_loopback(),
        "load goes to loopback addresses only"
    );
    let seconds = spec.duration.as_secs().max(1);
    let mut cmd = Command::new(bin);
    cmd.args(["-t1", "--latency", "--timeout", "5s"])
        .arg(format!("-c{}", spec.connections.max(1)))
        .arg(format!("-d{seconds}s"));
    for (name, value) in &spec.headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    cmd.arg(format!("http://{}{}", spec.target, spec.path));
    let text = crate::process::client_output(&mut cmd, "wrk")?;
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// `1.5ms`, `830.00us`, `2.01s` in microseconds.
fn micros(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(value * scale)
}

fn parse(text: &str) -> Option<WrkOutcome> {
    let mut out = WrkOutcome::default();
    let mut seen_total = false;
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [count, "requests", "in", secs, ..] => {
                out.requests = count.parse().ok()?;
                out.elapsed_s = micros(secs.trim_end_matches(','))? / 1e6;
                seen_total = true;
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                out.non_2xx_3xx = count.parse().ok()?
            }
            ["Socket", "errors:", rest @ ..] => {
                out.socket_errors = rest
                    .iter()
                    .filter_map(|f| f.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            ["50%", value] => out.p50_us = micros(value)?,
            ["90%", value] => out.p90_us = micros(value)?,
            ["99%", value] => out.p99_us = micros(value)?,
            ["Requests/sec:", value] => out.rps = value.parse().ok()?,
            _ => {}
        }
    }
    seen_total.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 10s test @ http://127.0.0.1:8080/o/x.gif
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.17ms  313.49us  12.62ms   91.09%
    Req/Sec    55.02k     2.06k   58.74k    80.00%
  Latency Distribution
     50%    1.12ms
     75%    1.20ms
     90%    1.33ms
     99%    2.49ms
  547508 requests in 10.00s, 170.05MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:  54745.15
Transfer/sec:     17.00MB
";

    #[test]
    fn output_is_parsed() {
        let out = parse(OUTPUT).unwrap();
        assert_eq!(out.requests, 547_508);
        assert_eq!(out.non_2xx_3xx, 12);
        assert_eq!(out.answered(), 547_496);
        assert_eq!(out.socket_errors, 3);
        assert!((out.elapsed_s - 10.0).abs() < 1e-9);
        assert!((out.p50_us - 1120.0).abs() < 1e-6);
        assert!((out.p99_us - 2490.0).abs() < 1e-6);
        assert!((out.rps - 54_745.15).abs() < 1e-6);
        assert_eq!(micros("830.00us"), Some(830.0));
        assert!(parse("wrk: connection refused").is_none());
    }
}
