//! Options shared by the subcommands, and the pieces they all assemble: the
//! traffic for a key ring, the client runtime, the report output.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::load::{LoadSpec, Outcome};
use crate::traffic::{self, Mix, Prepared, TrafficSpec};
use crate::{geodb, plot, report};

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Open-loop rate in requests/s; 0 runs closed-loop at the maximum.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Seconds of load (bounded).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Upper bound on requests sent.
    #[arg(long, default_value_t = 10_000_000)]
    pub requests: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// HTTP/2 (h2c, prior knowledge) instead of HTTP/1.1.
    #[arg(long)]
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Client worker threads (1 when pinned to one core).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
}

impl LoadArgs {
    pub fn spec(&self, target: std::net::SocketAddr, progress: bool) -> anyhow::Result<LoadSpec> {
        anyhow::ensure!(
            self.duration > 0.0 && self.duration <= 3600.0,
            "--duration must be in (0, 3600] s"
        );
        anyhow::ensure!(
            self.rate >= 0.0 && self.rate.is_finite(),
            "--rate must be >= 0"
        );
        anyhow::ensure!(
            target.ip().is_loopback(),
            "load goes to loopback addresses only, not {target}"
        );
        Ok(LoadSpec {
            target,
            rate: (self.rate > 0.0).then_some(self.rate),
            duration: Duration::from_secs_f64(self.duration),
            max_requests: self.requests,
            connections: self.connections,
            http2: self.http2,
            streams: self.streams,
            timeout: Duration::from_secs_f64(self.timeout.clamp(0.01, 120.0)),
            progress,
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct TrafficArgs {
    /// Shares of kinds, e.g. open=70,click=25,download=5.
    #[arg(long, default_value = "open=70,click=25,download=5")]
    pub mix: Mix,
    /// Share of requests with a tampered token (0-1).
    #[arg(long, default_value_t = 0.02)]
    pub bad_share: f64,
    /// Distinct prepared requests cycled through.
    #[arg(long, default_value_t = 8192)]
    pub distinct: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A real GeoIP2/GeoLite2 City database; otherwise one is generated.
    #[arg(long)]
    pub geoip: Option<PathBuf>,
    /// Networks in the generated GeoIP database.
    #[arg(long, default_value_t = geodb::DEFAULT_NETWORKS)]
    pub geoip_networks: usize,
}

impl TrafficArgs {
    pub fn geo(&self) -> anyhow::Result<(PathBuf, Vec<ipnet::IpNet>)> {
        geodb::ensure(self.geoip.as_deref(), self.geoip_networks, self.seed)
    }

    pub fn prepare(
        &self,
        keys: &trackedge::KeyRing,
        networks: Vec<ipnet::IpNet>,
    ) -> anyhow::Result<Arc<Vec<Prepared>>> {
        let spec = TrafficSpec {
            mix: self.mix,
            bad_share: self.bad_share,
            distinct: self.distinct,
            seed: self.seed,
            networks,
        };
        Ok(Arc::new(traffic::prepare(keys, &spec)?))
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency percentile curve into this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl OutputArgs {
    pub fn write_json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        if let Some(path) = &self.json {
            let text = serde_json::to_string_pretty(value)?;
            std::fs::write(path, text + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    pub fn write_plot(&self, title: &str, outcome: &Outcome) -> anyhow::Result<()> {
        if let Some(path) = &self.plot {
            plot::percentile_png(
                path,
                title,
                &[(outcome.http.to_owned(), outcome.curve.clone())],
            )?;
            eprintln!("plot written to {}", path.display());
        }
        Ok(())
    }

    pub fn print(&self, outcome: &Outcome) {
        print!("{}", report::outcome_table(outcome));
    }
}

/// The client's runtime: `threads` workers (1 when the client is pinned to a core).
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("loadtest-client")
        .enable_all()
        .build()
        .context("cannot start the client runtime")
}
