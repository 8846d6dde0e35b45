//! `compare`: the floor, trackedge and nginx side by side on the same machine, in
//! turn, in rotating order each round, each server pinned to one core with one
//! worker thread and the clients on another. Each server instance is warmed up,
//! then measured in every phase asked for ([`crate::phase`]); a TLS instance is
//! started for the TLS phases. Per server, phase and round: server CPU µs per
//! request (or per connection), the rate, latency where the client measures it,
//! memory. The verdicts are medians over rounds of per-round ratios, which cancel
//! most of the noise of a shared machine; their spread (lowest and highest round)
//! is reported with them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::certs::TlsFiles;
use crate::edge::{self, EdgeSetup};
use crate::nginx;
use crate::phase::{self, Clients, Listeners, Measurement, MemoryMb, Phase};
use crate::process::{self, Spawned};
use crate::procstat;

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
    /// The same edge with TLS on its public listener (for the TLS phases).
    pub edge_tls: Option<EdgeSetup>,
    pub nginx: Option<PathBuf>,
    pub tls: Option<TlsFiles>,
    pub dir: PathBuf,
    pub server_core: Option<usize>,
    pub worker_threads: usize,
    /// How long after its last phase a server's memory is read again.
    pub settle: Duration,
}

/// A server started for one round: its process and where it listens.
struct Instance {
    spawned: Spawned,
    at: Listeners,
}

fn start(setup: &Setup, server: Server, round: usize, tls: bool) -> anyhow::Result<Instance> {
    let plain = |spawned: Spawned| {
        let main = spawned.public;
        Instance {
            spawned,
            at: Listeners { main, h2c: main },
        }
    };
    match server {
        Server::Floor => {
            let mut cmd = process::command(&setup.loadtest_bin, setup.server_core);
            cmd.args(["floor", "--addr", "127.0.0.1:0", "--worker-threads"])
                .arg(setup.worker_threads.to_string());
            if tls {
                let files = setup.tls.as_ref().context("no certificate generated")?;
                cmd.arg("--tls-cert")
                    .arg(&files.cert)
                    .arg("--tls-key")
                    .arg(&files.key);
            }
            Spawned::start("floor", cmd, &setup.dir.join("floor.stderr.log")).map(plain)
        }
        Server::Trackedge => {
            let edge = if tls {
                setup.edge_tls.as_ref().context("no TLS edge setup")?
            } else {
                &setup.edge
            };
            edge::spawn(edge, setup.server_core).map(plain)
        }
        Server::Nginx => {
            let bin = setup.nginx.as_deref().context("nginx is not installed")?;
            let dir = setup.dir.join(format!(
                "nginx-{round}-{}",
                if tls { "tls" } else { "plain" }
            ));
            let (spawned, ports) = nginx::spawn(
                bin,
                &dir,
                setup.server_core,
                tls.then_some(setup.tls.as_ref()).flatten(),
            )?;
            let main = match (tls, ports.tls) {
                (true, Some(addr)) => addr,
                _ => ports.plain,
            };
            Ok(Instance {
                spawned,
                at: Listeners {
                    main,
                    h2c: ports.h2c,
                },
            })
        }
    }
}

/// Runs every phase of one TLS-ness against one server instance.
async fn instance_phases(
    setup: &Setup,
    clients: &Clients,
    server: Server,
    round: usize,
    (phases, tls): (&[Phase], bool),
    fixed_rate: f64,
) -> anyhow::Result<Vec<Measurement>> {
    let mut instance = start(setup, server, round, tls)?;
    let pid = instance.spawned.pid();
    phase::warm_up(clients, instance.at, tls)
        .await
        .with_context(|| format!("{} warm-up", server.as_str()))?;
    let before: MemoryMb = procstat::memory(pid).unwrap_or_default().into();
    let mut out = Vec::new();
    for &phase in phases {
        let m = phase::measure(
            clients,
            phase,
            instance.at,
            pid,
            (server.as_str(), round),
            fixed_rate,
        )
        .await
        .with_context(|| format!("{} {}", server.as_str(), phase.as_str()))?;
        eprintln!(
            "round {round} {:<9} {:<13} cpu {:7.2} µs/{:<10} {:>8.0}/s  rss {:.0} MB",
            server.as_str(),
            phase.as_str(),
            m.cpu_us,
            m.unit,
            m.rate,
            m.memory_peak.rss
        );
        out.push(m);
    }
    tokio::time::sleep(setup.settle).await;
    let after: MemoryMb = procstat::memory(pid).unwrap_or_default().into();
    for m in &mut out {
        m.memory_before = before;
        m.memory_after = after;
    }
    tokio::task::block_in_place(|| instance.spawned.stop(Duration::from_secs(15)))?;
    if server == Server::Trackedge {
        edge::remove_outputs(&setup.edge);
    }
    Ok(out)
}

/// Every server in `servers`, rotated per round, through `phases`.
pub async fn run(
    setup: &Setup,
    clients: &Clients,
    servers: &[Server],
    phases: &[Phase],
    rounds: usize,
    fixed_rate: f64,
) -> anyhow::Result<Vec<Measurement>> {
    let plain: Vec<Phase> = phases.iter().copied().filter(|p| !p.over_tls()).collect();
    let tls: Vec<Phase> = phases.iter().copied().filter(|p| p.over_tls()).collect();
    let mut all = Vec::new();
    for round in 0..rounds.max(1) {
        for server in order(servers, round) {
            for group in [(&plain[..], false), (&tls[..], true)] {
                if !group.0.is_empty() {
                    all.extend(
                        instance_phases(setup, clients, server, round, group, fixed_rate).await?,
                    );
                }
            }
        }
    }
    Ok(all)
}

/// The floor's saturation rate, to set the fixed rate at half of it.
pub async fn floor_max(setup: &Setup, clients: &Clients) -> anyhow::Result<f64> {
    let mut instance = start(setup, Server::Floor, 0, false)?;
    phase::warm_up(clients, instance.at, false).await?;
    let m = phase::measure(
        clients,
        Phase::Saturation,
        instance.at,
        instance.spawned.pid(),
        ("floor", 0),
        0.0,
    )
    .await?;
    tokio::task::block_in_place(|| instance.spawned.stop(Duration::from_secs(15)))?;
    Ok(m.rate)
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
    pub server: &'static str,
    pub cpu_us: f64,
    pub user_us: f64,
    pub system_us: f64,
    /// What one core would do at this cost: 1e6 / cpu_us.
    pub per_core: f64,
    pub rate: f64,
    pub client_cpu_share: f64,
    pub steal_share: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub errors: u64,
    pub resumed_share: Option<f64>,
    pub memory_peak: MemoryMb,
    pub memory_after: MemoryMb,
    pub threads_us: BTreeMap<String, f64>,
}

/// A per-round ratio of CPU per unit: its median and spread over rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub name: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    pub phase: Phase,
    pub unit: &'static str,
    pub client: &'static str,
    pub servers: Vec<ServerSummary>,
    pub ratios: Vec<Ratio>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rounds: usize,
    pub fixed_rate: f64,
    pub phases: Vec<PhaseSummary>,
    pub notes: Vec<String>,
}

fn summarize_server(ms: &[&Measurement]) -> Option<ServerSummary> {
    let first = ms.first()?;
    let of = |f: &dyn Fn(&Measurement) -> f64| median(&ms.iter().map(|m| f(m)).collect::<Vec<_>>());
    let opt = |f: &dyn Fn(&Measurement) -> Option<f64>| {
        let v: Vec<f64> = ms.iter().filter_map(|m| f(m)).collect();
        (!v.is_empty()).then(|| median(&v))
    };
    let mb = |f: &dyn Fn(&Measurement) -> MemoryMb| MemoryMb {
        rss: of(&|m| f(m).rss),
        anon: of(&|m| f(m).anon),
        file: of(&|m| f(m).file),
    };
    let mut names: Vec<&String> = ms.iter().flat_map(|m| m.threads_us.keys()).collect();
    names.sort();
    names.dedup();
    let threads_us = names
        .into_iter()
        .map(|name| {
            (
                name.clone(),
                of(&|m| m.threads_us.get(name).copied().unwrap_or(0.0)),
            )
        })
        .collect();
    let cpu_us = of(&|m| m.cpu_us);
    Some(ServerSummary {
        server: first.server,
        cpu_us,
        user_us: of(&|m| m.user_us),
        system_us: of(&|m| m.system_us),
        per_core: 1e6 / cpu_us,
        rate: of(&|m| m.rate),
        client_cpu_share: of(&|m| m.client_cpu_share),
        steal_share: of(&|m| m.steal_share),
        p50_us: opt(&|m| m.latency.map(|l| l.p50_us)),
        p99_us: opt(&|m| m.latency.map(|l| l.p99_us)),
        p999_us: opt(&|m| m.latency.and_then(|l| l.p999_us)),
        errors: ms.iter().map(|m| m.errors).sum(),
        resumed_share: opt(&|m| m.resumed_share),
        memory_peak: mb(&|m| m.memory_peak),
        memory_after: mb(&|m| m.memory_after),
        threads_us,
    })
}

fn ratio(all: &[&Measurement], a: Server, b: Server, rounds: usize) -> Option<Ratio> {
    let per_round: Vec<f64> = (0..rounds)
        .filter_map(|round| {
            let x = all
                .iter()
                .find(|m| m.server == a.as_str() && m.round == round)?;
            let y = all
                .iter()
                .find(|m| m.server == b.as_str() && m.round == round)?;
            Some(x.cpu_us / y.cpu_us)
        })
        .filter(|r| r.is_finite())
        .collect();
    if per_round.is_empty() {
        return None;
    }
    Some(Ratio {
        name: format!("{}/{} cpu per unit", a.as_str(), b.as_str()),
        median: median(&per_round),
        min: per_round.iter().copied().fold(f64::INFINITY, f64::min),
        max: per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        rounds: per_round.len(),
    })
}

pub fn summarize(
    fixed_rate: f64,
    rounds: usize,
    all: &[Measurement],
    notes: Vec<String>,
) -> Summary {
    let mut phases = Vec::new();
    for phase in Phase::ALL {
        let of_phase: Vec<&Measurement> = all.iter().filter(|m| m.phase == phase).collect();
        let Some(first) = of_phase.first() else {
            continue;
        };
        let servers = [Server::Floor, Server::Trackedge, Server::Nginx]
            .iter()
            .filter_map(|s| {
                let ms: Vec<&Measurement> = of_phase
                    .iter()
                    .copied()
                    .filter(|m| m.server == s.as_str())
                    .collect();
                summarize_server(&ms)
            })
            .collect();
        let ratios = [
            (Server::Trackedge, Server::Floor),
            (Server::Trackedge, Server::Nginx),
            (Server::Nginx, Server::Floor),
        ]
        .iter()
        .filter_map(|&(a, b)| ratio(&of_phase, a, b, rounds))
        .collect();
        phases.push(PhaseSummary {
            phase,
            unit: phase.unit(),
            client: first.client,
            servers,
            ratios,
        });
    }
    Summary {
        rounds,
        fixed_rate,
        phases,
        notes,
    }
}

fn opt_us(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.0}µs"))
}

pub fn table(summary: &Summary) -> String {
    let mut out = format!(
        "compare: {} rounds, medians over rounds; ratios: median [lowest, highest round]\n",
        summary.rounds
    );
    for p in &summary.phases {
        let title = match p.phase {
            Phase::Fixed => format!("fixed rate {:.0} req/s (open loop)", summary.fixed_rate),
            _ => format!("{} ({})", p.phase.as_str(), p.client),
        };
        out.push_str(&format!(
            "\n== {title}\n{:<10} {:>10} {:>7} {:>7} {:>10} {:>10} {:>7} {:>6} {:>8} {:>8} {:>8} {:>10} {:>10}\n",
            "server",
            format!("cpu µs/{}", if p.unit == "request" { "req" } else { "conn" }),
            "user",
            "sys",
            "per core/s",
            "rate/s",
            "client",
            "steal",
            "p50",
            "p99",
            "p99.9",
            "rss peak",
            "rss after"
        ));
        for s in &p.servers {
            out.push_str(&format!(
                "{:<10} {:>10.2} {:>7.2} {:>7.2} {:>10.0} {:>10.0} {:>6.0}% {:>5.1}% {:>8} {:>8} {:>8} {:>8.1}MB {:>8.1}MB\n",
                s.server,
                s.cpu_us,
                s.user_us,
                s.system_us,
                s.per_core,
                s.rate,
                s.client_cpu_share * 100.0,
                s.steal_share * 100.0,
                opt_us(s.p50_us),
                opt_us(s.p99_us),
                opt_us(s.p999_us),
                s.memory_peak.rss,
                s.memory_after.rss
            ));
            if let Some(share) = s.resumed_share {
                out.push_str(&format!("{:<10} resumed {:.0}%\n", "", share * 100.0));
            }
            if s.errors > 0 {
                out.push_str(&format!("{:<10} errors {}\n", "", s.errors));
            }
        }
        for r in &p.ratios {
            out.push_str(&format!(
                "{}: {:.3} [{:.3}, {:.3}]\n",
                r.name, r.median, r.min, r.max
            ));
        }
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

/// Writes the per-server latency curves of the fixed phase's last round into a PNG.
pub fn plot(path: &Path, all: &[Measurement], rounds: usize) -> anyhow::Result<()> {
    let last = rounds.saturating_sub(1);
    let series: Vec<(String, Vec<(f64, f64)>)> = all
        .iter()
        .filter(|m| m.round == last && m.phase == Phase::Fixed)
        .map(|m| (m.server.to_owned(), m.curve.clone()))
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

    fn m(server: Server, round: usize, phase: Phase, cpu: f64) -> Measurement {
        Measurement {
            server: server.as_str(),
            round,
            phase,
            unit: phase.unit(),
            client: "test",
            completed: 1000,
            seconds: 1.0,
            rate: 1e6 / cpu,
            target_rate: None,
            cpu_us: cpu,
            user_us: cpu / 2.0,
            system_us: cpu / 2.0,
            threads_us: BTreeMap::from([("worker".to_owned(), cpu)]),
            client_cpu_share: 0.5,
            steal_share: 0.0,
            latency: None,
            errors: 0,
            resumed_share: None,
            memory_peak: MemoryMb::default(),
            memory_before: MemoryMb::default(),
            memory_after: MemoryMb::default(),
            curve: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios_with_their_spread() {
        let s = Phase::Saturation;
        let all = vec![
            m(Server::Floor, 0, s, 8.0),
            m(Server::Trackedge, 0, s, 9.0),
            m(Server::Floor, 1, s, 16.0), // a noisy round: both slow, ratio still 1.125
            m(Server::Trackedge, 1, s, 18.0),
            m(Server::Floor, 2, s, 8.0),
            m(Server::Trackedge, 2, s, 12.0),
            m(Server::Trackedge, 0, Phase::TlsFull, 50.0),
        ];
        let summary = summarize(1000.0, 3, &all, vec![]);
        assert_eq!(summary.phases.len(), 2);
        let sat = &summary.phases[0];
        assert_eq!(sat.phase, Phase::Saturation);
        let r = &sat.ratios[0];
        assert_eq!(r.name, "trackedge/floor cpu per unit");
        assert!((r.median - 1.125).abs() < 1e-9);
        assert!((r.min - 1.125).abs() < 1e-9 && (r.max - 1.5).abs() < 1e-9);
        assert_eq!(sat.servers.len(), 2);
        assert!((sat.servers[0].cpu_us - 8.0).abs() < 1e-9);
        assert!((sat.servers[0].per_core - 125_000.0).abs() < 1e-6);
        let tls = &summary.phases[1];
        assert!(tls.ratios.is_empty(), "no pair measured");
        assert_eq!(tls.unit, "connection");
        assert!(table(&summary).contains("tls_full"));
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
