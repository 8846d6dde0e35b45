//! Spool and forwarder throughput: group-commit append rate, the rate a backlog
//! drains to a local HTTP receiver, and bytes on disk per event.
//!
//! Run: `cargo bench --bench spool`. Each iteration moves a fixed number of events
//! through the real writer thread or forwarder, so criterion's "time" is per
//! iteration and its "thrpt" line is events per second.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use trackedge::config::{
    Durability, ForwardConfig, FullPolicy, HttpSinkConfig, SinkConfig, SpoolConfig,
};
use trackedge::event::{now_ms, Event, EventId};
use trackedge::forward::Forwarder;
use trackedge::health::Health;
use trackedge::{Claims, Kind};

const EVENTS: u64 = 20_000;

/// A realistic click: about the size of a real event on the wire.
fn event(n: u64) -> Event {
    let claims = Claims {
        recipient: Some("r-8f14e45f".into()),
        link: 3,
        target: Some("https://shop.example.com/spring/sale?utm_source=email".into()),
        ..Claims::new(
            Kind::Click,
            "acme",
            "spring-2026",
            format!("01J9Z3W6Q8K2M4N6P8R{n:07}"),
        )
    };
    let mut event = Event::of_claims(
        claims,
        EventId(u128::from(n)),
        now_ms(),
        "no_signal".into(),
        "bench".into(),
    );
    event.ip = Some("203.0.113.0".into());
    event.ua = Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148".into());
    event.first = true;
    event
}

fn spool_config(dir: &std::path::Path, durability: Durability) -> SpoolConfig {
    SpoolConfig {
        dir: dir.join("spool"),
        channel_capacity: NonZeroUsize::new(1 << 17).expect("non-zero"),
        max_batch_events: NonZeroUsize::new(1024).expect("non-zero"),
        max_batch_bytes: 1 << 20,
        batch_delay: Duration::from_millis(5),
        durability,
        max_bytes: 1 << 34,
        max_age: Duration::from_secs(3600),
        full_policy: FullPolicy::DropOldest,
        cache_bytes: 64 << 20,
        hold_back: Duration::ZERO,
    }
}

/// Queues `EVENTS` events and waits until the writer committed them all.
fn append_run(runtime: &tokio::runtime::Runtime, durability: Durability) -> (Duration, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let health = Health::new();
    let (sender, writer, spool) = trackedge::spool::start(
        &spool_config(dir.path(), durability),
        health.register("w", Duration::from_secs(3600)),
    )
    .expect("spool");
    let events: Vec<Event> = (0..EVENTS).map(event).collect();
    let started = Instant::now();
    for event in events {
        sender.send(event).expect("channel has room");
    }
    while spool.records() < EVENTS {
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed();
    runtime.block_on(writer.finish());
    let disk = spool.snapshot().disk_bytes;
    (elapsed, disk)
}

async fn receiver(received: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let received = received.clone();
                        async move {
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            // Gzip is decoded by real receivers; counting batches is enough here.
                            received.fetch_add(body.len() as u64, Ordering::Relaxed);
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Fills a spool with `EVENTS` events, then times the forwarder draining it (each
/// batch signed with one Standard Webhooks secret when `signed`).
fn forward_run(runtime: &tokio::runtime::Runtime, gzip: bool, signed: bool) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(
        &secret_file,
        "whsec_c2lnbmluZy1zZWNyZXQtb2YtMzItYnl0ZXMtLS0tLS0=\n",
    )
    .expect("secret file");
    let health = Health::new();
    let (sender, writer, spool) = trackedge::spool::start(
        &spool_config(dir.path(), Durability::Interval(Duration::from_millis(100))),
        health.register("w", Duration::from_secs(3600)),
    )
    .expect("spool");
    for n in 0..EVENTS {
        sender.send(event(n)).expect("channel has room");
    }
    runtime.block_on(writer.finish());
    let received = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let addr = receiver(received).await;
        let config = ForwardConfig {
            sink: SinkConfig::Http(HttpSinkConfig {
                url: format!("http://{addr}/ingest").parse().expect("url"),
                bearer_token: None,
                headers: Vec::new(),
                timeout: Duration::from_secs(10),
                ca_file: None,
                gzip,
                signing_secret_file: signed.then(|| secret_file.clone()),
            }),
            max_batch_events: NonZeroUsize::new(1000).expect("non-zero"),
            max_batch_bytes: 1 << 20,
            max_in_flight: NonZeroUsize::new(4).expect("non-zero"),
            linger: Duration::from_millis(50),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            circuit_failures: 5,
            circuit_open: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        };
        let started = Instant::now();
        let forwarder = Forwarder::start(
            &config,
            spool.clone(),
            "bench",
            &health,
            Duration::from_secs(3600),
        )
        .expect("forwarder");
        while spool.records() > 0 {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let elapsed = started.elapsed();
        forwarder.finish(Duration::from_secs(1)).await;
        elapsed
    })
}

fn spool(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("spool");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("append_interval_fsync", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| append_run(&runtime, Durability::Interval(Duration::from_millis(100))).0)
                .sum()
        })
    });
    group.bench_function("append_fsync_every_batch", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| append_run(&runtime, Durability::EveryBatch).0)
                .sum()
        })
    });
    group.bench_function("forward_http_gzip", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| forward_run(&runtime, true, false)).sum())
    });
    group.bench_function("forward_http_plain", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| forward_run(&runtime, false, false))
                .sum()
        })
    });
    group.bench_function("forward_http_plain_signed", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| forward_run(&runtime, false, true)).sum())
    });
    group.finish();
    let (_, disk) = append_run(&runtime, Durability::Interval(Duration::from_millis(100)));
    let json = serde_json::to_vec(&event(1)).expect("encode").len();
    eprintln!(
        "spool/disk: {EVENTS} events of {json} B of JSON each use {disk} B on disk ({} B per event)",
        disk / EVENTS
    );
}

criterion_group!(benches, spool);
criterion_main!(benches);
