//! `compare`: the floor, trackedge and nginx side by side on the same machine,
//! in turn, alternating order each round, each server pinned to one core with one
//! worker thread and the client on another. Per server and round: server CPU µs per
//! request at a fixed open-loop rate (from /proc before/after), latency at that
//! rate, max req/s closed-loop with the client's CPU share, RSS. The verdicts are
//! medians over rounds of per-round ratios, which cancel most of the noise of a
//! shared machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::cli::LoadArgs;
use crate::edge::{self, EdgeSetup};
use crate::load::{self, Outcome};
use crate::process::{self, Spawned};
use crate::procstat;
use crate::traffic::Prepared;
use crate::{histogram, nginx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Server {
    Floor,
    Trackedge,
    Nginx,
}

impl Server {
    pub fn as_str(self) -> &'static str {
        match self {
            Server::Floor => "floor",
            Server::Trackedge => "trackedge",
            Server::Nginx => "nginx",
        }
    }
}

pub struct Setup {
    pub loadtest_bin: PathBuf,
    pub edge: EdgeSetup,
    pub nginx: Option<PathBuf>,
    pub dir: PathBuf,
    pub server_core: Option<usize>,
    pub worker_threads: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub server: Server,
    pub round: usize,
    pub rate: f64,
    pub answered: u64,
    pub cpu_us_per_request: f64,
    pub user_us_per_request: f64,
    pub system_us_per_request: f64,
    pub latency: histogram::Summary,
    pub max_rps: f64,
    pub max_client_cpu_share: f64,
    pub max_cpu_us_per_request: f64,
    pub rss_before_mb: f64,
    pub rss_peak_mb: f64,
    pub rss_after_mb: f64,
    pub errors: u64,
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

fn start(setup: &Setup, server: Server, round: usize) -> anyhow::Result<Spawned> {
    match server {
        Server::Floor => {
            let mut cmd = process::command(&setup.loadtest_bin, setup.server_core);
            cmd.args(["floor", "--addr", "127.0.0.1:0", "--worker-threads"])
                .arg(setup.worker_threads.to_string());
            Spawned::start("floor", cmd, &setup.dir.join("floor.stderr.log"))
        }
        Server::Trackedge => edge::spawn(&setup.edge, setup.server_core),
        Server::Nginx => {
            let bin = setup.nginx.as_deref().context("nginx is not installed")?;
            nginx::spawn(
                bin,
                &setup.dir.join(format!("nginx-{round}")),
                setup.server_core,
            )
        }
    }
}

fn mb(bytes: Option<u64>) -> f64 {
    bytes.map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64)
}

/// Closed-loop max-throughput run against a server started for it.
pub async fn max_rate(
    setup: &Setup,
    server: Server,
    load: &LoadArgs,
    seconds: f64,
    requests: Arc<Vec<Prepared>>,
) -> anyhow::Result<Outcome> {
    let mut spawned = start(setup, server, 0)?;
    let mut args = load.clone();
    args.rate = 0.0;
    args.duration = seconds;
    let outcome = load::drive(args.spec(spawned.public, false)?, requests).await;
    tokio::task::block_in_place(|| spawned.stop(Duration::from_secs(15)))?;
    outcome
}

/// One server in one round: warm-up, fixed-rate phase, max phase.
pub async fn measure(
    setup: &Setup,
    server: Server,
    round: usize,
    load: &LoadArgs,
    rate: f64,
    max_seconds: f64,
    requests: Arc<Vec<Prepared>>,
) -> anyhow::Result<Measurement> {
    let mut spawned = start(setup, server, round)?;
    let pid = spawned.pid();
    let mut args = load.clone();
    args.rate = rate;
    let warm = LoadArgs {
        duration: 1.0,
        ..args.clone()
    };
    load::drive(warm.spec(spawned.public, false)?, requests.clone()).await?;
    let rss_before = procstat::rss_bytes(pid).ok();
    let cpu0 = procstat::cpu(pid)?;
    let fixed = load::drive(args.spec(spawned.public, false)?, requests.clone()).await?;
    let cpu1 = procstat::cpu(pid)?;
    let used = cpu1.since(&cpu0);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / fixed.answered.max(1) as f64;

    // Max phase, sampling RSS as it runs.
    let sampler = {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = tokio::spawn(async move {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(rss) = procstat::rss_bytes(pid) {
                    p.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (stop, peak, handle)
    };
    let max_args = LoadArgs {
        rate: 0.0,
        duration: max_seconds,
        ..args.clone()
    };
    let cpu2 = procstat::cpu(pid)?;
    let max = load::drive(max_args.spec(spawned.public, false)?, requests).await?;
    let cpu3 = procstat::cpu(pid)?;
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.2.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = procstat::rss_bytes(pid).ok();
    tokio::task::block_in_place(|| spawned.stop(Duration::from_secs(15)))?;
    Ok(Measurement {
        server,
        round,
        rate,
        answered: fixed.answered,
        cpu_us_per_request: per(used.total),
        user_us_per_request: per(used.user),
        system_us_per_request: per(used.system),
        latency: fixed.latency,
        max_rps: max.achieved_rps,
        max_client_cpu_share: max.client_cpu_share,
        max_cpu_us_per_request: cpu3.since(&cpu2).total.as_secs_f64() * 1e6
            / max.answered.max(1) as f64,
        rss_before_mb: mb(rss_before),
        rss_peak_mb: mb(Some(sampler.1.load(std::sync::atomic::Ordering::Relaxed))),
        rss_after_mb: mb(rss_after),
        errors: fixed.errors + fixed.timeouts + max.errors + max.timeouts,
        curve: fixed.curve,
    })
}

pub fn median(values: &[f64]) -> f64 {
    let mut values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    pub server: Server,
    pub cpu_us_per_request: f64,
    pub user_us_per_request: f64,
    pub system_us_per_request: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_rps: f64,
    pub max_client_cpu_share: f64,
    pub rss_peak_mb: f64,
    pub rss_after_mb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rate: f64,
    pub rounds: usize,
    pub servers: Vec<ServerSummary>,
    /// Medians over rounds of the per-round ratio.
    pub ratios: BTreeMap<&'static str, f64>,
    pub notes: Vec<String>,
}

pub fn summarize(rate: f64, rounds: usize, all: &[Measurement], notes: Vec<String>) -> Summary {
    let of = |server: Server, f: &dyn Fn(&Measurement) -> f64| -> f64 {
        let v: Vec<f64> = all.iter().filter(|m| m.server == server).map(f).collect();
        median(&v)
    };
    let mut servers = Vec::new();
    for server in [Server::Floor, Server::Trackedge, Server::Nginx] {
        if !all.iter().any(|m| m.server == server) {
            continue;
        }
        servers.push(ServerSummary {
            server,
            cpu_us_per_request: of(server, &|m| m.cpu_us_per_request),
            user_us_per_request: of(server, &|m| m.user_us_per_request),
            system_us_per_request: of(server, &|m| m.system_us_per_request),
            p50_us: of(server, &|m| m.latency.p50_us),
            p99_us: of(server, &|m| m.latency.p99_us),
            p999_us: of(server, &|m| m.latency.p999_us),
            max_rps: of(server, &|m| m.max_rps),
            max_client_cpu_share: of(server, &|m| m.max_client_cpu_share),
            rss_peak_mb: of(server, &|m| m.rss_peak_mb),
            rss_after_mb: of(server, &|m| m.rss_after_mb),
        });
    }
    let ratio = |a: Server, b: Server, f: &dyn Fn(&Measurement) -> f64| -> f64 {
        let v: Vec<f64> = (0..rounds)
            .filter_map(|round| {
                let x = all.iter().find(|m| m.server == a && m.round == round)?;
                let y = all.iter().find(|m| m.server == b && m.round == round)?;
                Some(f(x) / f(y))
            })
            .collect();
        median(&v)
    };
    let mut ratios = BTreeMap::new();
    ratios.insert(
        "trackedge/floor cpu per request",
        ratio(Server::Trackedge, Server::Floor, &|m| m.cpu_us_per_request),
    );
    ratios.insert(
        "trackedge/floor max req/s",
        ratio(Server::Trackedge, Server::Floor, &|m| m.max_rps),
    );
    if all.iter().any(|m| m.server == Server::Nginx) {
        ratios.insert(
            "trackedge/nginx cpu per request",
            ratio(Server::Trackedge, Server::Nginx, &|m| m.cpu_us_per_request),
        );
        ratios.insert(
            "trackedge/nginx max req/s",
            ratio(Server::Trackedge, Server::Nginx, &|m| m.max_rps),
        );
    }
    Summary {
        rate,
        rounds,
        servers,
        ratios,
        notes,
    }
}

pub fn table(summary: &Summary) -> String {
    let mut out = format!(
        "compare: {} rounds, fixed rate {:.0} req/s (open loop), medians over rounds\n{:<10} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}\n",
        summary.rounds, summary.rate, "server", "cpu µs/r", "user", "sys", "p50", "p99", "p99.9", "max req/s", "client cpu", "rss peak", "rss after"
    );
    for s in &summary.servers {
        out.push_str(&format!(
            "{:<10} {:>9.2} {:>8.2} {:>8.2} {:>7.0}µs {:>7.0}µs {:>7.0}µs {:>10.0} {:>9.0}% {:>7.1}MB {:>7.1}MB\n",
            s.server.as_str(),
            s.cpu_us_per_request,
            s.user_us_per_request,
            s.system_us_per_request,
            s.p50_us,
            s.p99_us,
            s.p999_us,
            s.max_rps,
            s.max_client_cpu_share * 100.0,
            s.rss_peak_mb,
            s.rss_after_mb
        ));
    }
    for (name, value) in &summary.ratios {
        out.push_str(&format!("{name}: {value:.3}\n"));
    }
    for note in &summary.notes {
        out.push_str(&format!("note: {note}\n"));
    }
    out
}

/// The fixed-rate phase's rate: what the user asked, else half the floor's max.
pub fn pick_rate(asked: f64, floor_max: f64) -> f64 {
    if asked > 0.0 {
        asked
    } else {
        (floor_max / 2.0).max(100.0)
    }
}

/// Order of servers in `round`: rotated so none always runs first (warm caches,
/// a neighbour's compile starting) or last.
pub fn order(servers: &[Server], round: usize) -> Vec<Server> {
    let mut order = servers.to_vec();
    if !order.is_empty() {
        let len = order.len();
        order.rotate_left(round % len);
    }
    order
}

/// Writes the per-server latency curves of the last round into one PNG.
pub fn plot(path: &Path, all: &[Measurement], rounds: usize) -> anyhow::Result<()> {
    let last = rounds.saturating_sub(1);
    let series: Vec<(String, Vec<(f64, f64)>)> = all
        .iter()
        .filter(|m| m.round == last)
        .map(|m| (m.server.as_str().to_owned(), m.curve.clone()))
        .collect();
    crate::plot::percentile_png(
        path,
        "latency by percentile at the fixed rate (last round)",
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(server: Server, round: usize, cpu: f64) -> Measurement {
        Measurement {
            server,
            round,
            rate: 1000.0,
            answered: 1000,
            cpu_us_per_request: cpu,
            user_us_per_request: cpu / 2.0,
            system_us_per_request: cpu / 2.0,
            latency: histogram::Summary::default(),
            max_rps: 10_000.0 / cpu,
            max_client_cpu_share: 0.5,
            max_cpu_us_per_request: cpu,
            rss_before_mb: 5.0,
            rss_peak_mb: 6.0,
            rss_after_mb: 5.5,
            errors: 0,
            curve: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios() {
        let all = vec![
            m(Server::Floor, 0, 8.0),
            m(Server::Trackedge, 0, 9.0),
            m(Server::Floor, 1, 16.0), // a noisy round: both slow, ratio still 1.125
            m(Server::Trackedge, 1, 18.0),
            m(Server::Floor, 2, 8.0),
            m(Server::Trackedge, 2, 12.0),
        ];
        let s = summarize(1000.0, 3, &all, vec![]);
        assert!((s.ratios["trackedge/floor cpu per request"] - 1.125).abs() < 1e-9);
        assert_eq!(s.servers.len(), 2);
        assert!((s.servers[0].cpu_us_per_request - 8.0).abs() < 1e-9);
    }

    #[test]
    fn order_rotates_and_rate_defaults_to_half_the_floor() {
        let all = [Server::Floor, Server::Trackedge, Server::Nginx];
        assert_eq!(
            order(&all, 1),
            vec![Server::Trackedge, Server::Nginx, Server::Floor]
        );
        assert_eq!(order(&all, 3), all.to_vec());
        assert_eq!(pick_rate(0.0, 30_000.0), 15_000.0);
        assert_eq!(pick_rate(5000.0, 30_000.0), 5000.0);
        assert!(median(&[3.0, f64::NAN, 1.0, 2.0]) == 2.0);
    }
}
