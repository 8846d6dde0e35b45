//! `h2load` (nghttp2) as the client of the TLS keep-alive and HTTP/2 phases: a C
//! client over OpenSSL, so both servers are measured by the same client and the
//! client is not the bottleneck. HTTP/1.1 over TLS (`--h1`), HTTP/2 over TLS (ALPN
//! h2) and h2c (prior knowledge on a plain port). It does not verify certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// `h2load` from PATH or the usual places (Debian: nghttp2-client).
pub fn locate() -> Option<PathBuf> {
    crate::process::find_program("h2load")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// HTTP/1.1 over TLS, keep-alive.
    H1Tls,
    /// HTTP/2 over TLS (ALPN h2).
    H2Tls,
    /// HTTP/2 over plain TCP by prior knowledge.
    H2c,
}

#[derive(Debug, Clone)]
pub struct H2loadSpec {
    pub protocol: Protocol,
    pub target: SocketAddr,
    pub path: String,
    pub clients: usize,
    /// Concurrent streams per connection (HTTP/2); 1 for HTTP/1.1.
    pub streams: usize,
    pub duration: Duration,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct H2loadOutcome {
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub status_2xx: u64,
    pub elapsed_s: f64,
    pub rps: f64,
}

/// Runs h2load to completion (blocking; call it from a blocking thread).
pub fn run(bin: &Path, spec: &H2loadSpec) -> anyhow::Result<H2loadOutcome> {
    anyhow::ensure!(
        spec.target.ip().is_loopback(),
        "load goes to loopback addresses only"
    );
    let mut cmd = Command::new(bin);
    cmd.args(["-t", "1"])
        .arg("-c")
        .arg(spec.clients.max(1).to_string())
        .arg("-D")
        .arg(spec.duration.as_secs().max(1).to_string());
    let scheme = match spec.protocol {
        Protocol::H1Tls => {
            cmd.args(["--h1", "-m", "1"]);
            "https"
        }
        Protocol::H2Tls => {
            cmd.args(["--npn-list", "h2", "-m"])
                .arg(spec.streams.max(1).to_string());
            "https"
        }
        Protocol::H2c => {
            cmd.arg("-m").arg(spec.streams.max(1).to_string());
            "http"
        }
    };
    for (name, value) in &spec.headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    cmd.arg(format!("{scheme}://{}{}", spec.target, spec.path));
    let text = crate::process::client_output(&mut cmd, "h2load")?;
    parse(&text).with_context(|| format!("unexpected h2load output:\n{text}"))
}

fn number(field: &str) -> Option<f64> {
    field.trim_end_matches([',', 's']).parse().ok()
}

fn parse(text: &str) -> Option<H2loadOutcome> {
    let mut out = H2loadOutcome::default();
    let mut seen = false;
    for line in text.lines().map(str::trim) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["finished", "in", secs, rps, "req/s,", ..] => {
                out.elapsed_s = number(secs)?;
                out.rps = number(rps)?;
            }
            ["requests:", rest @ ..] => {
                seen = true;
                for pair in rest.chunks(2) {
                    if let [count, what] = pair {
                        let count = count.parse().ok()?;
                        match what.trim_end_matches(',') {
                            "done" => out.done = count,
                            "succeeded" => out.succeeded = count,
                            "failed" => out.failed = count,
                            "errored" => out.errored = count,
                            _ => {}
                        }
                    }
                }
            }
            ["status", "codes:", count, "2xx,", ..] => out.status_2xx = count.parse().ok()?,
            _ => {}
        }
    }
    seen.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 5s of main duration for measurements.
Warm-up phase is over for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 5.00s, 61234.40 req/s, 5.21MB/s
requests: 306172 total, 306300 started, 306172 done, 306170 succeeded, 2 failed, 0 errored, 0 timeout
status codes: 306170 2xx, 0 3xx, 2 4xx, 0 5xx
traffic: 26.05MB (27312345) total, 10.00MB (10485760) headers (space savings 90.00%), 12.56MB (13164000) data
";

    #[test]
    fn output_is_parsed() {
        let out = parse(OUTPUT).unwrap();
        assert_eq!(out.done, 306_172);
        assert_eq!(out.succeeded, 306_170);
        assert_eq!(out.failed, 2);
        assert_eq!(out.status_2xx, 306_170);
        assert!((out.elapsed_s - 5.0).abs() < 1e-9);
        assert!((out.rps - 61_234.4).abs() < 1e-6);
        assert!(parse("connect: refused").is_none());
    }
}
