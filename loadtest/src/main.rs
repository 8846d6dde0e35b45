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
    /// Floor vs trackedge vs nginx: pinned, alternating, CPU per request, ratios;
    /// fixed rate, saturation, TLS handshakes and keep-alive, HTTP/2.
    Compare(Box<CompareArgs>),
    /// Run the bare hyper floor server (used by `compare`).
    Floor {
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        worker_threads: usize,
        /// Serve TLS with this certificate (PEM) and --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
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
            tls_cert,
            tls_key,
        } => {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "the floor listens on loopback only"
            );
            floor::run(addr, worker_threads, tls_cert.zip(tls_key))
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
                tls: None,
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
    /// What to measure: fixed, saturation, tls_full, tls_resume, tls_keepalive,
    /// h2c, h2; `tls` = the three TLS modes, `h2` = h2c and h2, `all` = every mode.
    #[arg(long, default_value = "fixed,saturation")]
    modes: String,
    /// `pixel`: one realistic pixel request (iPhone Mail, image Accept, a client
    /// address from the trusted proxy) for every mode; `mix`: the realistic mix of
    /// --mix for the built-in client (then saturation uses the built-in client).
    #[arg(long, default_value = "pixel")]
    traffic: TrafficKind,
    /// Seconds of each closed-loop mode (saturation, TLS, HTTP/2) per server and round.
    #[arg(long, default_value_t = 5.0)]
    max_seconds: f64,
    /// Seconds after a server's last phase before its memory is read again ("rss
    /// after"): long enough for trackedge's default [memory] looks (every 5 s) to
    /// see it quiet and release.
    #[arg(long, default_value_t = 12.0)]
    settle_seconds: f64,
    /// Concurrent new-connection clients of tls_full and tls_resume.
    #[arg(long, default_value_t = 16)]
    tls_connections: usize,
    /// HTTP/2 connections of h2c and h2, and concurrent streams on each.
    #[arg(long, default_value_t = 16)]
    h2_connections: usize,
    #[arg(long, default_value_t = 8)]
    h2_streams: usize,
    /// Use the built-in client for saturation even when wrk is installed.
    #[arg(long)]
    no_wrk: bool,
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
    /// Rate of the fixed-rate mode in req/s; 0: half the floor's saturation rate.
    /// (--rate is not used by compare.)
    #[arg(long, default_value_t = 0.0)]
    fixed_rate: f64,
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    traffic_args: TrafficArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TrafficKind {
    Pixel,
    Mix,
}

fn compare(args: CompareArgs) -> anyhow::Result<()> {
    use trackedge_loadtest::compare::{self, Server};
    use trackedge_loadtest::phase::{Clients, Phase};
    use trackedge_loadtest::{certs, h2load, traffic, wrk};
    let phases = Phase::parse_list(&args.modes)?;
    if !args.no_pin {
        process::pin_self(args.client_core)?;
    }
    let temp = tempfile::tempdir().context("temp dir")?;
    let bin = edge::locate(args.server_bin.as_deref())?;
    let (geo_path, networks) = args.traffic_args.geo()?;
    let any_tls = phases.iter().any(|p| p.over_tls());
    let tls = any_tls.then(|| certs::generate(temp.path())).transpose()?;
    let options = edge::EdgeOptions {
        worker_threads: args.worker_threads,
        forward_url: None,
        geoip: Some(geo_path),
        tls: None,
    };
    let edge_setup = edge::prepare(&bin, temp.path(), &options)?;
    let edge_tls = match &tls {
        Some(files) => Some(edge::prepare(
            &bin,
            temp.path(),
            &edge::EdgeOptions {
                tls: Some(files.clone()),
                ..options.clone()
            },
        )?),
        None => None,
    };
    let mut notes = edge_setup.notes.clone();
    let nginx_bin = if args.no_nginx { None } else { nginx::locate() };
    if nginx_bin.is_none() && !args.no_nginx {
        notes.push("nginx is not installed: skipped (apt-get install -y nginx-light)".into());
    }
    let setup = compare::Setup {
        loadtest_bin: std::env::current_exe().context("this executable")?,
        edge: edge_setup,
        edge_tls,
        nginx: nginx_bin,
        tls,
        dir: temp.path().to_owned(),
        server_core: (!args.no_pin).then_some(args.server_core),
        worker_threads: args.worker_threads,
        settle: Duration::from_secs_f64(args.settle_seconds.clamp(0.0, 600.0)),
    };
    // One start creates the edge's key file, which the traffic is signed with.
    {
        let mut first = edge::spawn(&setup.edge, None)?;
        first.stop(Duration::from_secs(15))?;
    }
    let keys = trackedge::keys::load(&setup.edge.data_dir.join("keys.txt"), false)?;
    let pixel = traffic::pixel(&keys)?;
    let requests = match args.traffic {
        TrafficKind::Pixel => std::sync::Arc::new(vec![pixel.clone()]),
        TrafficKind::Mix => args.traffic_args.prepare(&keys, networks)?,
    };
    let wrk_bin = if args.no_wrk { None } else { wrk::locate() };
    let h2load_bin = h2load::locate();
    let clients = Clients {
        wrk: wrk_bin,
        h2load: h2load_bin,
        load: args.load.clone(),
        requests,
        path: pixel.uri_h1.to_string(),
        headers: traffic::PIXEL_HEADERS
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        wrk_allowed: args.traffic == TrafficKind::Pixel,
        seconds: args.max_seconds,
        tls_connections: args.tls_connections,
        h2_connections: args.h2_connections,
        h2_streams: args.h2_streams,
        server_name: certs::SERVER_NAME.to_owned(),
    };
    if phases.contains(&Phase::Saturation) {
        notes.push(format!(
            "saturation client: {} over {} keep-alive connections",
            clients.saturation_client(),
            args.load.connections
        ));
    }
    let needs_h2load = phases
        .iter()
        .any(|p| matches!(p, Phase::TlsKeepalive | Phase::H2c | Phase::H2));
    anyhow::ensure!(
        !needs_h2load || clients.h2load.is_some(),
        "the TLS keep-alive and HTTP/2 modes need h2load (apt-get install -y nghttp2-client)"
    );
    let runtime = cli::runtime(args.load.client_threads)?;
    let mut servers = vec![Server::Floor, Server::Trackedge];
    if setup.nginx.is_some() {
        servers.push(Server::Nginx);
    }
    let rounds = args.rounds.max(1);
    let (rate, all) = runtime.block_on(async {
        let rate = if phases.contains(&Phase::Fixed) {
            let asked = args.fixed_rate;
            let rate = if asked > 0.0 {
                asked
            } else {
                let max = compare::floor_max(&setup, &clients).await?;
                eprintln!("floor saturation {max:.0} req/s");
                compare::pick_rate(0.0, max)
            };
            eprintln!("fixed rate {rate:.0} req/s");
            rate
        } else {
            0.0
        };
        let all = compare::run(&setup, &clients, &servers, &phases, rounds, rate).await?;
        Ok::<_, anyhow::Error>((rate, all))
    })?;
    let summary = compare::summarize(rate, rounds, &all, notes);
    print!("{}", compare::table(&summary));
    #[derive(serde::Serialize)]
    struct Json<'a> {
        summary: &'a compare::Summary,
        measurements: &'a [trackedge_loadtest::phase::Measurement],
    }
    args.output.write_json(&Json {
        summary: &summary,
        measurements: &all,
    })?;
    if let Some(path) = &args.output.plot {
        compare::plot(path, &all, rounds)?;
    }
    Ok(())
}
