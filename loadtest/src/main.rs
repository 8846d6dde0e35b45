//! The `trackedge-loadtest` command; the work is in the library modules.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use trackedge_loadtest::cli::{self, LoadArgs, OutputArgs, TrafficArgs};
use trackedge_loadtest::{account, accounting, edge, floor, geodb, load, nginx, process};

#[derive(Parser)]
#[command(
    name = "trackedge-loadtest",
    about = "Load, accounting and comparison runs for trackedge (127.0.0.1 only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive load against a running trackedge (--target, --keys) or one it starts.
    Run(Box<RunArgs>),
    /// Start trackedge forwarding to a local receiver, drive load, prove nothing is lost.
    Account(Box<AccountArgs>),
    /// Floor vs trackedge vs nginx: pinned, alternating, CPU per request, ratios.
    Compare(Box<CompareArgs>),
    /// Run the bare hyper floor server (used by `compare`).
    Floor {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        worker_threads: usize,
    },
    /// Write a generated GeoIP2-City-shaped database.
    Geodb {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = geodb::DEFAULT_NETWORKS)]
        networks: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A running server's public address; without it trackedge is started here.
    #[arg(long, requires = "keys")]
    target: Option<SocketAddr>,
    /// The running server's key file (for minting).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// The trackedge binary to start [default: next to this one].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Worker threads of the started server (0: one per core).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Pin the started server to this core and the client to --client-core.
    #[arg(long)]
    server_core: Option<usize>,
    #[arg(long)]
    client_core: Option<usize>,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    traffic: TrafficArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args)]
struct AccountArgs {
    /// The trackedge binary to start [default: next to this one].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// How long the forwarder gets to deliver everything, in seconds.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    traffic: TrafficArgs,
    #[command(flatten)]
    output: OutputArgs,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(*args),
        Command::Compare(args) => compare(*args),
        Command::Account(args) => {
            let ok = account(*args)?;
            // Unexplained loss is a failed run for scripts and CI.
            std::process::exit(if ok { 0 } else { 1 });
        }
        Command::Floor {
            addr,
            worker_threads,
        } => {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "the floor listens on loopback only"
            );
            floor::run(addr, worker_threads)
        }
        Command::Geodb {
            out,
            networks,
            seed,
        } => {
            geodb::generate(&out, networks, seed)?;
            println!("wrote {} ({networks} networks)", out.display());
            Ok(())
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(core) = args.client_core {
        process::pin_self(core)?;
    }
    let (geo_path, networks) = args.traffic.geo()?;
    let temp = tempfile::tempdir().context("temp dir")?;
    let (target, keys, mut server) = match (args.target, &args.keys) {
        (Some(target), Some(keys)) => (target, trackedge::keys::load(keys, false)?, None),
        _ => {
            let bin = edge::locate(args.server_bin.as_deref())?;
            let options = edge::EdgeOptions {
                worker_threads: args.worker_threads,
                forward_url: None,
                geoip: Some(geo_path),
            };
            let setup = edge::prepare(&bin, temp.path(), &options)?;
            for note in &setup.notes {
                eprintln!("note: {note}");
            }
            let server = edge::spawn(&setup, args.server_core)?;
            let keys = trackedge::keys::load(&setup.data_dir.join("keys.txt"), false)?;
            (server.public, keys, Some(server))
        }
    };
    let requests = args.traffic.prepare(&keys, networks)?;
    let spec = args.load.spec(target, !args.output.quiet)?;
    let runtime = cli::runtime(args.load.client_threads)?;
    let outcome = runtime.block_on(load::drive(spec, requests))?;
    if let Some(server) = server.as_mut() {
        server.stop(Duration::from_secs(15))?;
    }
    args.output.print(&outcome);
    args.output.write_json(&outcome)?;
    args.output
        .write_plot("trackedge latency by percentile", &outcome)?;
    Ok(())
}

fn account(args: AccountArgs) -> anyhow::Result<bool> {
    let bin = edge::locate(args.server_bin.as_deref())?;
    let temp = tempfile::tempdir().context("temp dir")?;
    let runtime = cli::runtime(args.load.client_threads)?;
    let report = runtime.block_on(account::run(
        &bin,
        temp.path(),
        args.worker_threads,
        &args.load,
        &args.traffic,
        !args.output.quiet,
        Duration::from_secs_f64(args.drain_timeout.clamp(1.0, 600.0)),
    ))?;
    for note in &report.notes {
        println!("note: {note}");
    }
    println!("delivery checked via: {}", report.delivery);
    args.output.print(&report.load);
    print!("{}", accounting::table(&report.accounting));
    args.output.write_json(&report)?;
    args.output
        .write_plot("trackedge latency by percentile", &report.load)?;
    Ok(report.accounting.ok)
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Rounds; each runs every server once, in rotating order.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of the closed-loop max-throughput phase per server and round.
    #[arg(long, default_value_t = 5.0)]
    max_seconds: f64,
    #[arg(long)]
    server_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// Do not pin (for machines with one core).
    #[arg(long)]
    no_pin: bool,
    /// Worker threads of every server.
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
    /// Leave nginx out even when installed.
    #[arg(long)]
    no_nginx: bool,
    /// Rate of the fixed-rate phase in req/s; 0: half the floor's max rate.
    /// (--rate is not used by compare.)
    #[arg(long, default_value_t = 0.0)]
    fixed_rate: f64,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    traffic: TrafficArgs,
    #[command(flatten)]
    output: OutputArgs,
}

fn compare(mut args: CompareArgs) -> anyhow::Result<()> {
    use trackedge_loadtest::compare::{self, Server};
    if !args.no_pin {
        process::pin_self(args.client_core)?;
    }
    let temp = tempfile::tempdir().context("temp dir")?;
    let bin = edge::locate(args.server_bin.as_deref())?;
    let (geo_path, networks) = args.traffic.geo()?;
    let edge_setup = edge::prepare(
        &bin,
        temp.path(),
        &edge::EdgeOptions {
            worker_threads: args.worker_threads,
            forward_url: None,
            geoip: Some(geo_path),
        },
    )?;
    let mut notes = edge_setup.notes.clone();
    let nginx_bin = if args.no_nginx { None } else { nginx::locate() };
    if nginx_bin.is_none() && !args.no_nginx {
        notes.push("nginx is not installed: skipped (apt-get install -y nginx-light)".into());
    }
    let setup = compare::Setup {
        loadtest_bin: std::env::current_exe().context("this executable")?,
        edge: edge_setup,
        nginx: nginx_bin,
        dir: temp.path().to_owned(),
        server_core: (!args.no_pin).then_some(args.server_core),
        worker_threads: args.worker_threads,
    };
    // One start creates the edge's key file, which the traffic is signed with.
    {
        let mut first = edge::spawn(&setup.edge, None)?;
        first.stop(Duration::from_secs(15))?;
    }
    let keys = trackedge::keys::load(&setup.edge.data_dir.join("keys.txt"), false)?;
    let requests = args.traffic.prepare(&keys, networks)?;
    let runtime = cli::runtime(args.load.client_threads)?;
    let asked_rate = args.fixed_rate;
    args.load.rate = 0.0;
    let mut servers = vec![Server::Floor, Server::Trackedge];
    if setup.nginx.is_some() {
        servers.push(Server::Nginx);
    }
    let (rate, all) = runtime.block_on(async {
        let floor_max = compare::max_rate(
            &setup,
            Server::Floor,
            &args.load,
            args.max_seconds,
            requests.clone(),
        )
        .await?;
        let rate = compare::pick_rate(asked_rate, floor_max.achieved_rps);
        eprintln!(
            "floor max {:.0} req/s (client CPU {:.0}%); fixed rate {rate:.0} req/s",
            floor_max.achieved_rps,
            floor_max.client_cpu_share * 100.0
        );
        let mut all = Vec::new();
        for round in 0..args.rounds.max(1) {
            for server in compare::order(&servers, round) {
                let m = compare::measure(
                    &setup,
                    server,
                    round,
                    &args.load,
                    rate,
                    args.max_seconds,
                    requests.clone(),
                )
                .await?;
                eprintln!(
                    "round {round} {:<9} cpu {:.2} µs/req  p99 {:.0} µs  max {:.0} req/s",
                    server.as_str(),
                    m.cpu_us_per_request,
                    m.latency.p99_us,
                    m.max_rps
                );
                all.push(m);
            }
        }
        Ok::<_, anyhow::Error>((rate, all))
    })?;
    let summary = compare::summarize(rate, args.rounds.max(1), &all, notes);
    print!("{}", compare::table(&summary));
    #[derive(serde::Serialize)]
    struct Json<'a> {
        summary: &'a compare::Summary,
        measurements: &'a [compare::Measurement],
    }
    args.output.write_json(&Json {
        summary: &summary,
        measurements: &all,
    })?;
    if let Some(path) = &args.output.plot {
        compare::plot(path, &all, args.rounds.max(1))?;
    }
    Ok(())
}
