//! Allocations per hit, counted by a global allocator wrapper: the realistic pixel
//! request (iPhone Mail's user agent and image `Accept`, `X-Forwarded-For` from a
//! trusted proxy) through `route::handle` on the default pipeline (privacy, enrich,
//! rate limit, dedup, hand-off), then the spool writer committing what it got.
//!
//! Run: `cargo bench --bench alloc_per_hit` (set `TRACKEDGE_BENCH_GEOIP` to a real
//! GeoLite2-City file; otherwise the test fixture database is used). Prints
//! allocations (and bytes) per hit on the request path alone, and with the writer
//! thread's share; the count is exact, so unlike a timing it does not depend on how
//! busy the machine is.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use trackedge::config::{Config, Overrides};
use trackedge::health::Health;
use trackedge::keys::Keys;
use trackedge::route::{self, Edge};
use trackedge::{Claims, Kind};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
    static THREAD_BYTES: Cell<u64> = const { Cell::new(0) };
}

fn count(size: usize) {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    // `try_with`: the thread-local may already be gone while a thread exits.
    let _ = THREAD_ALLOCS.try_with(|n| n.set(n.get() + 1));
    let _ = THREAD_BYTES.try_with(|n| n.set(n.get() + size as u64));
}

// SAFETY: every call is passed unchanged to the system allocator; the wrapper only
// counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The handler finishes in one poll for a pixel (no body to read).
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

/// Below `spool.channel_capacity`: every hit fits in the channel even if the writer
/// is slower than this loop, so every hit is committed and counted.
const HITS: u64 = 50_000;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let city = match std::env::var_os("TRACKEDGE_BENCH_GEOIP") {
        Some(path) => std::path::PathBuf::from(path),
        None => trackedge::mmdb_fixtures::write_city(dir.path(), "a"),
    };
    let text = format!(
        "data_dir = {:?}\n[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[geoip]\ncity_db = {:?}\n",
        dir.path().display().to_string(),
        city.display().to_string()
    );
    let config = Config::from_toml_str(&text, &Overrides::default()).expect("bench config");
    let key_file = dir.path().join("keys.txt");
    std::fs::write(&key_file, "1:0123456789abcdef0123456789abcdef\n").expect("key file");
    let keys = Arc::new(Keys::open(key_file, false).expect("keys"));
    let ring = keys.ring().clone();
    let health = Health::new();
    let (events, writer, spool) = trackedge::spool::start(
        &config.spool,
        health.register("writer", std::time::Duration::from_secs(3600)),
    )
    .expect("spool");
    let privacy = trackedge::privacy::Privacy::new(
        &config.privacy,
        dir.path(),
        spool.suppressions().expect("suppressions"),
    )
    .expect("privacy");
    let edge = Edge::new(
        &config,
        keys,
        events,
        Arc::new(trackedge::enrich::Enricher::new(&config, 0).expect("enricher")),
        privacy,
    );
    let claims = Claims {
        recipient: Some("rcpt-4242".into()),
        ..Claims::new(Kind::Open, "acme", "spring-sale", "msg-00042")
    };
    let token = trackedge::sign(ring.signing_key(), &claims).expect("sign");
    let path = format!("/o/{token}.gif");
    let peer: IpAddr = "127.0.0.1".parse().expect("ip");
    let request = || {
        Request::builder()
            .uri(path.as_str())
            .header("host", "t.example")
            .header(
                "user-agent",
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            )
            .header(
                "accept",
                "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
            )
            .header("accept-language", "en-GB,en;q=0.9")
            .header("accept-encoding", "gzip, deflate")
            .header("x-forwarded-for", "81.2.69.142")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    // Warm: the user agent and GeoIP caches, the first-seen set, the writer.
    for _ in 0..1000 {
        run_once(route::handle(&edge, request(), peer));
    }
    // Requests are built before counting: hyper builds them in the server, and what
    // the edge allocates is the question.
    let requests: Vec<_> = (0..HITS).map(|_| request()).collect();
    let (all0, bytes0, own0, own_bytes0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
        THREAD_ALLOCS.with(Cell::get),
        THREAD_BYTES.with(Cell::get),
    );
    let started = Instant::now();
    for request in requests {
        let response = run_once(route::handle(&edge, request, peer));
        assert_eq!(response.status(), http::StatusCode::OK);
    }
    let elapsed = started.elapsed();
    let own = THREAD_ALLOCS.with(Cell::get) - own0;
    let own_bytes = THREAD_BYTES.with(Cell::get) - own_bytes0;
    drop(edge);
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(writer.finish());
    let all = ALLOCS.load(Ordering::Relaxed) - all0;
    let bytes = BYTES.load(Ordering::Relaxed) - bytes0;
    assert!(spool.records() >= HITS, "every hit was recorded");
    let per = |n: u64| n as f64 / HITS as f64;
    println!(
        "alloc_per_hit/pixel: {:.2} allocations ({:.0} bytes) per hit on the request path; {:.2} ({:.0} bytes) with the writer thread; {:.2} µs per hit (wall, informational)",
        per(own),
        per(own_bytes),
        per(all),
        per(bytes),
        elapsed.as_secs_f64() * 1e6 / HITS as f64
    );
}
