//! The request path without the network: token verification and a whole pixel or
//! click answer through `route::handle`, including the hand-off to the writer.
//!
//! Run: `cargo bench --bench hot_path`. Compare medians against each other, not
//! against a wall-clock target; the machine is noisy.

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::Full;
use trackedge::config::{Durability, FullPolicy, SpoolConfig};
use trackedge::health::Health;
use trackedge::keys::Keys;
use trackedge::route::{self, Edge};
use trackedge::{Claims, Kind};

/// The pixel and click futures finish in one poll (no body to read), so polling
/// once with a no-op waker measures the handler without any runtime overhead.
fn run_once<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the handler waited on something"),
    }
}

fn claims(kind: Kind) -> Claims {
    Claims {
        recipient: Some("r-8f14e45f".into()),
        link: 3,
        target: kind
            .has_target()
            .then(|| "https://shop.example.com/spring/sale?utm_source=email".into()),
        sent_at: Some(1_795_000_000),
        ..Claims::new(kind, "acme", "spring-2026", "01J9Z3W6Q8K2M4N6P8R0S2T4V6")
    }
}

fn hot_path(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("keys.txt");
    std::fs::write(&key_file, "1:0123456789abcdef0123456789abcdef\n").expect("key file");
    let keys = Arc::new(Keys::open(key_file, false).expect("keys"));
    let ring = keys.ring().clone();
    let health = Health::new();
    let (events, writer, spool) = trackedge::spool::start(
        &SpoolConfig {
            dir: dir.path().join("spool"),
            channel_capacity: NonZeroUsize::new(1 << 16).expect("non-zero"),
            max_batch_events: NonZeroUsize::new(1024).expect("non-zero"),
            max_batch_bytes: 1 << 20,
            batch_delay: Duration::from_millis(5),
            durability: Durability::Interval(Duration::from_millis(100)),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            full_policy: FullPolicy::DropOldest,
            cache_bytes: 64 << 20,
            hold_back: Duration::ZERO,
        },
        health.register("writer", Duration::from_secs(3600)),
    )
    .expect("spool");
    let privacy = trackedge::privacy::Privacy::new(
        &trackedge::config::Config::from_toml_str("", &Default::default())
            .expect("default config")
            .privacy,
        dir.path(),
        spool.suppressions().expect("suppressions"),
    )
    .expect("privacy");
    let config = trackedge::config::Config::from_toml_str("", &Default::default()).expect("config");
    let edge = Edge::new(
        &config,
        keys,
        events,
        Arc::new(trackedge::enrich::Enricher::new(&config, 0).expect("enricher")),
        privacy,
    );
    let open_token = trackedge::sign(ring.signing_key(), &claims(Kind::Open)).expect("sign");
    let click_token = trackedge::sign(ring.signing_key(), &claims(Kind::Click)).expect("sign");
    let peer: IpAddr = "203.0.113.77".parse().expect("ip");
    let request = |path: String| {
        Request::builder()
            .uri(path)
            .header("host", "t.example.com")
            .header(
                "user-agent",
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            )
            .body(Full::new(Bytes::new()))
            .expect("request")
    };

    c.bench_function("token/verify_open", |b| {
        b.iter(|| trackedge::verify(&ring, &open_token, Kind::Open, 1_795_000_000, 4096))
    });
    c.bench_function("token/verify_click", |b| {
        b.iter(|| trackedge::verify(&ring, &click_token, Kind::Click, 1_795_000_000, 4096))
    });
    c.bench_function("token/sign_click", |b| {
        b.iter(|| trackedge::sign(ring.signing_key(), &claims(Kind::Click)))
    });
    let open_path = format!("/o/{open_token}.gif");
    c.bench_function("route/pixel", |b| {
        b.iter_batched(
            || request(open_path.clone()),
            |request| run_once(route::handle(&edge, request, peer)),
            criterion::BatchSize::SmallInput,
        )
    });
    let click_path = format!("/c/{click_token}");
    c.bench_function("route/click", |b| {
        b.iter_batched(
            || request(click_path.clone()),
            |request| run_once(route::handle(&edge, request, peer)),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("route/pixel_bad_token", |b| {
        b.iter_batched(
            || request("/o/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.gif".into()),
            |request| run_once(route::handle(&edge, request, peer)),
            criterion::BatchSize::SmallInput,
        )
    });
    // The recording limit alone: 10k client networks in turn, the shape of real
    // traffic (one bucket lookup and update per recorded event).
    let limiter = trackedge::ratelimit::RecordLimiter::new(config.rate_limit.clone(), 0);
    let networks: Vec<IpAddr> = (0..10_000u32)
        .map(|n| IpAddr::from((0x0a00_0000u32 + (n << 8)).to_be_bytes()))
        .collect();
    let mut next = 0usize;
    c.bench_function("ratelimit/check", |b| {
        b.iter(|| {
            next = (next + 1) % networks.len();
            limiter.check(networks[next], None, 1_000)
        })
    });
    drop(edge);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(writer.finish());
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
