//! The accounting run: receiver up, trackedge started to forward to it (or, on a
//! build without the forwarder, to write its interim NDJSON file), load driven,
//! the edge's counters scraped, the pipeline drained, then [`accounting::reconcile`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::accounting::{self, Accounting, EdgeCounts};
use crate::cli::{LoadArgs, TrafficArgs};
use crate::edge::{self, EdgeOptions};
use crate::load::{self, Outcome};
use crate::receiver;

#[derive(Debug, Serialize)]
pub struct AccountReport {
    /// "http_forwarder" or "interim_ndjson_file".
    pub delivery: &'static str,
    pub notes: Vec<String>,
    pub load: Outcome,
    pub edge: Option<EdgeCounts>,
    pub receiver: receiver::IngestCounts,
    pub accounting: Accounting,
}

/// GET /metrics on the admin listener (plain HTTP/1.0 so the body ends at EOF).
pub async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.take(64 << 20).read_to_string(&mut text).await?;
        Ok::<_, std::io::Error>(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("metrics scrape timed out")?
        .context("metrics scrape failed")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "metrics answered {head:?}"
    );
    Ok(body.to_owned())
}

pub async fn run(
    bin: &Path,
    dir: &Path,
    worker_threads: usize,
    load_args: &LoadArgs,
    traffic: &TrafficArgs,
    progress: bool,
    drain_timeout: Duration,
) -> anyhow::Result<AccountReport> {
    let ingest = receiver::Shared::default();
    let receiver_addr = receiver::start(ingest.clone()).await.context("receiver")?;
    let (geo_path, networks) = traffic.geo()?;
    let options = EdgeOptions {
        worker_threads,
        forward_url: Some(format!("http://{receiver_addr}/ingest")),
        geoip: Some(geo_path),
        tls: None,
    };
    let setup = edge::prepare(bin, dir, &options)?;
    let mut server = edge::spawn(&setup, None)?;
    let keys = trackedge::keys::load(&setup.data_dir.join("keys.txt"), false)?;
    let requests = traffic.prepare(&keys, networks)?;
    let outcome = load::drive(load_args.spec(server.public, progress)?, requests).await?;

    let edge = match server.admin {
        Some(admin) => Some(accounting::edge_counts(&scrape(admin).await?)),
        None => None,
    };
    let delivery = if setup.forwarding {
        // Wait until the receiver holds what the edge emitted, or stops growing.
        let target = edge.map_or(0, |e| e.events_emitted.saturating_sub(e.events_dropped));
        let deadline = Instant::now() + drain_timeout;
        while receiver::lock(&ingest).counts.unique < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A graceful stop flushes whatever the forwarder still holds.
        let graceful = tokio::task::block_in_place(|| server.stop(drain_timeout))?;
        anyhow::ensure!(graceful, "trackedge did not stop within {drain_timeout:?}");
        "http_forwarder"
    } else {
        let graceful = tokio::task::block_in_place(|| server.stop(drain_timeout))?;
        anyhow::ensure!(graceful, "trackedge did not stop within {drain_timeout:?}");
        let path = setup.data_dir.join("events.ndjson");
        let text =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        receiver::lock(&ingest).ndjson(&text);
        "interim_ndjson_file"
    };
    let counts = receiver::lock(&ingest).counts;
    let accounting = accounting::reconcile(&outcome.total(), edge.as_ref(), &counts);
    Ok(AccountReport {
        delivery,
        notes: setup.notes,
        load: outcome,
        edge,
        receiver: counts,
        accounting,
    })
}
