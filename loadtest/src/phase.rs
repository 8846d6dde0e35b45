//! One measured phase against one running server: the load, and what the server
//! spent on it. CPU comes from /proc before and after (schedstat of every thread,
//! so it is exact whatever else runs on the machine), divided by the requests (or,
//! for the handshake phases, the connections) the client saw answered; memory is
//! sampled every 200 ms while the phase runs.
//!
//! The phases:
//! - `fixed`: the built-in client, open loop at a fixed rate, latency from the
//!   scheduled send time (see [`crate::load`]);
//! - `saturation`: closed loop over a fixed number of keep-alive connections with
//!   `wrk` (the built-in client when wrk is missing or the traffic is a mix);
//! - `tls_full`, `tls_resume`: a new TLS 1.3 connection per request
//!   ([`crate::tlsclient`]), full handshakes or resumed from tickets;
//! - `tls_keepalive`, `h2`, `h2c`: `h2load` over keep-alive HTTP/1.1 over TLS,
//!   HTTP/2 over TLS, HTTP/2 over plain TCP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cli::LoadArgs;
use crate::h2load::{self, H2loadSpec, Protocol};
use crate::load;
use crate::procstat::{self, Memory};
use crate::tlsclient::{self, TlsSpec};
use crate::traffic::Prepared;
use crate::wrk::{self, WrkSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Fixed,
    Saturation,
    TlsFull,
    TlsResume,
    TlsKeepalive,
    H2c,
    H2,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Fixed,
        Phase::Saturation,
        Phase::TlsFull,
        Phase::TlsResume,
        Phase::TlsKeepalive,
        Phase::H2c,
        Phase::H2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Fixed => "fixed",
            Phase::Saturation => "saturation",
            Phase::TlsFull => "tls_full",
            Phase::TlsResume => "tls_resume",
            Phase::TlsKeepalive => "tls_keepalive",
            Phase::H2c => "h2c",
            Phase::H2 => "h2",
        }
    }

    /// Whether the server under test must listen with TLS.
    pub fn over_tls(self) -> bool {
        matches!(
            self,
            Phase::TlsFull | Phase::TlsResume | Phase::TlsKeepalive | Phase::H2
        )
    }

    /// What the CPU is divided by.
    pub fn unit(self) -> &'static str {
        match self {
            Phase::TlsFull | Phase::TlsResume => "connection",
            _ => "request",
        }
    }

    /// `fixed,saturation,tls,h2` (`tls` = the three TLS phases, `h2` = h2c and h2
    /// over TLS, `all` = everything), in measuring order, without repeats.
    pub fn parse_list(text: &str) -> anyhow::Result<Vec<Phase>> {
        let mut out = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let phases: &[Phase] = match word {
                "all" => &Phase::ALL,
                "tls" => &[Phase::TlsFull, Phase::TlsResume, Phase::TlsKeepalive],
                "h2" => &[Phase::H2c, Phase::H2],
                other => match Phase::ALL.iter().find(|p| p.as_str() == other) {
                    Some(phase) => std::slice::from_ref(phase),
                    None => bail!(
                        "unknown mode {other:?} (fixed, saturation, tls_full, tls_resume, tls_keepalive, h2c, h2, or tls, h2, all)"
                    ),
                },
            };
            out.extend_from_slice(phases);
        }
        out.sort();
        out.dedup();
        anyhow::ensure!(!out.is_empty(), "no mode given");
        Ok(out)
    }
}

/// How each phase drives its load.
#[derive(Debug, Clone)]
pub struct Clients {
    pub wrk: Option<PathBuf>,
    pub h2load: Option<PathBuf>,
    /// The built-in client's settings (connections, HTTP version, timeout).
    pub load: LoadArgs,
    /// Requests for the built-in client.
    pub requests: Arc<Vec<Prepared>>,
    /// wrk and the TLS clients send this one request (path and headers).
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Whether wrk may be used (the traffic is the one pixel request).
    pub wrk_allowed: bool,
    /// Seconds of every closed-loop phase.
    pub seconds: f64,
    pub tls_connections: usize,
    pub h2_connections: usize,
    pub h2_streams: usize,
    pub server_name: String,
}

impl Clients {
    pub fn saturation_client(&self) -> &'static str {
        match (&self.wrk, self.wrk_allowed) {
            (Some(_), true) => "wrk",
            _ => "built-in",
        }
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds.clamp(1.0, 3600.0))
    }
}

/// Where a running server listens for a phase.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// HTTP/1.1 (and h2c when the server sniffs), or TLS for a TLS instance.
    pub main: SocketAddr,
    /// h2c by prior knowledge.
    pub h2c: SocketAddr,
}

/// What the client saw.
#[derive(Debug, Clone, Default)]
struct Seen {
    completed: u64,
    seconds: f64,
    errors: u64,
    client_cpu_share: f64,
    latency: Option<Latency>,
    resumed: Option<u64>,
    curve: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    /// Not reported by wrk.
    pub p999_us: Option<f64>,
}

/// Memory in MiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryMb {
    pub rss: f64,
    pub anon: f64,
    pub file: f64,
}

impl From<Memory> for MemoryMb {
    fn from(m: Memory) -> MemoryMb {
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        MemoryMb {
            rss: mb(m.rss),
            anon: mb(m.anon),
            file: mb(m.file),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub server: &'static str,
    pub round: usize,
    pub phase: Phase,
    pub unit: &'static str,
    pub client: &'static str,
    /// Requests (or connections) answered as expected.
    pub completed: u64,
    pub seconds: f64,
    pub rate: f64,
    pub target_rate: Option<f64>,
    pub cpu_us: f64,
    pub user_us: f64,
    pub system_us: f64,
    /// CPU µs per unit by thread (pools summed).
    pub threads_us: BTreeMap<String, f64>,
    pub client_cpu_share: f64,
    /// CPU time the hypervisor took from this machine during the phase, per second
    /// of the phase, summed over CPUs (0.02 = 20 ms a second).
    pub steal_share: f64,
    pub latency: Option<Latency>,
    pub errors: u64,
    pub resumed_share: Option<f64>,
    pub memory_peak: MemoryMb,
    /// After the warm-up of this server instance, and `--settle-seconds` after its
    /// last phase.
    pub memory_before: MemoryMb,
    pub memory_after: MemoryMb,
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

/// Samples memory every 200 ms until stopped; keeps the largest of each part.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<Mutex<Memory>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(Mutex::new(Memory::default()));
        let (s, p) = (stop.clone(), peak.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(memory) = procstat::memory(pid) {
                    let mut peak = p.lock().unwrap_or_else(|e| e.into_inner());
                    *peak = peak.max(memory);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Sampler { stop, peak, task }
    }

    async fn finish(self, pid: u32) -> Memory {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let last = procstat::memory(pid).unwrap_or_default();
        let peak = *self.peak.lock().unwrap_or_else(|e| e.into_inner());
        peak.max(last)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("client thread panicked")?
}

/// A short closed-loop run so caches, pools and buffers are warm before measuring.
pub async fn warm_up(clients: &Clients, at: Listeners, tls: bool) -> anyhow::Result<()> {
    let mut quick = clients.clone();
    quick.seconds = 1.0;
    let phase = if tls {
        Phase::TlsKeepalive
    } else {
        Phase::Saturation
    };
    drive(&quick, phase, at, 0.0).await.map(|_| ())
}

/// Runs `phase` against the server `pid` listening at `at`.
pub async fn measure(
    clients: &Clients,
    phase: Phase,
    at: Listeners,
    pid: u32,
    (server, round): (&'static str, usize),
    fixed_rate: f64,
) -> anyhow::Result<Measurement> {
    let sampler = Sampler::start(pid);
    let threads0 = procstat::cpu_by_thread(pid);
    let cpu0 = procstat::cpu(pid)?;
    let steal0 = procstat::steal().ok();
    let (client, seen) = drive(clients, phase, at, fixed_rate).await?;
    let cpu1 = procstat::cpu(pid)?;
    let steal_share = match (steal0, procstat::steal().ok()) {
        (Some(before), Some(after)) => {
            after.saturating_sub(before).as_secs_f64() / seen.seconds.max(1e-9)
        }
        _ => f64::NAN,
    };
    let threads1 = procstat::cpu_by_thread(pid);
    let memory_peak = sampler.finish(pid).await;
    let used = cpu1.since(&cpu0);
    let units = seen.completed.max(1) as f64;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / units;
    let threads_us = threads1
        .iter()
        .map(|(name, after)| {
            let before = threads0.get(name).copied().unwrap_or_default();
            (name.clone(), per(after.saturating_sub(before)))
        })
        .filter(|(_, us)| *us > 0.0)
        .collect();
    Ok(Measurement {
        server,
        round,
        phase,
        unit: phase.unit(),
        client,
        completed: seen.completed,
        seconds: seen.seconds,
        rate: seen.completed as f64 / seen.seconds.max(1e-9),
        target_rate: (phase == Phase::Fixed).then_some(fixed_rate),
        cpu_us: per(used.total),
        user_us: per(used.user),
        system_us: per(used.system),
        threads_us,
        client_cpu_share: seen.client_cpu_share,
        steal_share,
        latency: seen.latency,
        errors: seen.errors,
        resumed_share: seen.resumed.map(|r| r as f64 / units),
        memory_peak: memory_peak.into(),
        memory_before: MemoryMb::default(),
        memory_after: MemoryMb::default(),
        curve: seen.curve,
    })
}

/// Runs a client child process on a blocking thread; its CPU share of one core.
async fn child<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    seconds: impl Fn(&T) -> f64,
) -> anyhow::Result<(T, f64)> {
    let before = procstat::children_cpu().ok();
    let out = blocking(f).await?;
    let share = match (before, procstat::children_cpu().ok()) {
        (Some(before), Some(after)) => {
            after.saturating_sub(before).as_secs_f64() / seconds(&out).max(1e-9)
        }
        _ => f64::NAN,
    };
    Ok((out, share))
}

async fn drive(
    clients: &Clients,
    phase: Phase,
    at: Listeners,
    fixed_rate: f64,
) -> anyhow::Result<(&'static str, Seen)> {
    let duration = clients.duration();
    match phase {
        Phase::Fixed => {
            let mut args = clients.load.clone();
            args.rate = fixed_rate;
            let outcome = load::drive(args.spec(at.main, false)?, clients.requests.clone()).await?;
            Ok((
                "built-in",
                Seen {
                    completed: outcome.total().answered_good + outcome.total().answered_bad,
                    seconds: outcome.elapsed_s,
                    // A slot the client could not send before the end has no latency
                    // to report; counted here so a short run cannot hide a stall.
                    errors: outcome.errors
                        + outcome.timeouts
                        + outcome.total().unexpected_status
                        + outcome.missed_slots,
                    client_cpu_share: outcome.client_cpu_share,
                    latency: Some(Latency {
                        p50_us: outcome.latency.p50_us,
                        p99_us: outcome.latency.p99_us,
                        p999_us: Some(outcome.latency.p999_us),
                    }),
                    resumed: None,
                    curve: outcome.curve,
                },
            ))
        }
        Phase::Saturation => match (&clients.wrk, clients.wrk_allowed) {
            (Some(bin), true) => {
                let spec = WrkSpec {
                    target: at.main,
                    path: clients.path.clone(),
                    connections: clients.load.connections,
                    duration,
                    headers: clients.headers.clone(),
                };
                let bin = bin.clone();
                let (out, share) = child(move || wrk::run(&bin, &spec), |o| o.elapsed_s).await?;
                Ok((
                    "wrk",
                    Seen {
                        completed: out.answered(),
                        seconds: out.elapsed_s,
                        errors: out.non_2xx_3xx + out.socket_errors,
                        client_cpu_share: share,
                        latency: Some(Latency {
                            p50_us: out.p50_us,
                            p99_us: out.p99_us,
                            p999_us: None,
                        }),
                        resumed: None,
                        curve: Vec::new(),
                    },
                ))
            }
            _ => {
                let mut args = clients.load.clone();
                args.rate = 0.0;
                args.duration = duration.as_secs_f64();
                let outcome =
                    load::drive(args.spec(at.main, false)?, clients.requests.clone()).await?;
                Ok((
                    "built-in",
                    Seen {
                        completed: outcome.total().answered_good + outcome.total().answered_bad,
                        seconds: outcome.elapsed_s,
                        errors: outcome.errors
                            + outcome.timeouts
                            + outcome.total().unexpected_status,
                        client_cpu_share: outcome.client_cpu_share,
                        latency: Some(Latency {
                            p50_us: outcome.service_time.p50_us,
                            p99_us: outcome.service_time.p99_us,
                            p999_us: Some(outcome.service_time.p999_us),
                        }),
                        resumed: None,
                        curve: Vec::new(),
                    },
                ))
            }
        },
        Phase::TlsFull | Phase::TlsResume => {
            let spec = TlsSpec {
                target: at.main,
                server_name: clients.server_name.clone(),
                resume: phase == Phase::TlsResume,
                connections: clients.tls_connections,
                duration,
                path: clients.path.clone(),
                headers: clients.headers.clone(),
            };
            let out = tlsclient::drive(&spec).await?;
            if out.completed == 0 {
                bail!(
                    "no TLS connection completed: {}",
                    out.first_error.unwrap_or_default()
                );
            }
            Ok((
                "rustls",
                Seen {
                    completed: out.completed,
                    seconds: out.elapsed_s,
                    errors: out.errors,
                    client_cpu_share: out.client_cpu_share,
                    latency: None,
                    resumed: Some(out.resumed),
                    curve: Vec::new(),
                },
            ))
        }
        Phase::TlsKeepalive | Phase::H2c | Phase::H2 => {
            let bin = clients
                .h2load
                .clone()
                .context("h2load is not installed (apt-get install -y nghttp2-client)")?;
            let (protocol, target, streams) = match phase {
                Phase::TlsKeepalive => (Protocol::H1Tls, at.main, 1),
                Phase::H2c => (Protocol::H2c, at.h2c, clients.h2_streams),
                _ => (Protocol::H2Tls, at.main, clients.h2_streams),
            };
            let connections = match phase {
                Phase::TlsKeepalive => clients.load.connections,
                _ => clients.h2_connections,
            };
            let spec = H2loadSpec {
                protocol,
                target,
                path: clients.path.clone(),
                clients: connections,
                streams,
                duration,
                headers: clients.headers.clone(),
            };
            let (out, share) = child(move || h2load::run(&bin, &spec), |o| o.elapsed_s).await?;
            Ok((
                "h2load",
                Seen {
                    completed: out.status_2xx,
                    seconds: out.elapsed_s,
                    errors: out.done.saturating_sub(out.status_2xx) + out.errored + out.failed,
                    client_cpu_share: share,
                    latency: None,
                    resumed: None,
                    curve: Vec::new(),
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_lists_expand_and_refuse_unknown_words() {
        assert_eq!(
            Phase::parse_list("saturation,fixed").unwrap(),
            vec![Phase::Fixed, Phase::Saturation]
        );
        assert_eq!(
            Phase::parse_list("tls,h2c").unwrap(),
            vec![
                Phase::TlsFull,
                Phase::TlsResume,
                Phase::TlsKeepalive,
                Phase::H2c
            ]
        );
        assert_eq!(Phase::parse_list("all").unwrap().len(), 7);
        assert!(Phase::parse_list("fast").is_err());
        assert!(Phase::parse_list("").is_err());
        assert!(Phase::H2.over_tls() && !Phase::H2c.over_tls());
        assert_eq!(Phase::TlsResume.unit(), "connection");
    }
}
