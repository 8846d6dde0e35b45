//! Graceful shutdown, the command line (check-config, sign), memory handed back
//! after a burst, and the metrics token
//! (the metrics themselves: tests/metrics.rs).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{claims, get, request, send, TestServer, BIN};
use http::Version;
use trackedge::Kind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_answered_before_sigterm_is_in_the_output() {
    let mut server =
        TestServer::start("[spool]\nflush_every_ms = 60000\n[forward]\nsink = \"none\"\n");
    let path = server.path_for(&claims(Kind::Open, "m"));
    let addr = server.public;
    // Several connections in parallel, all answered before the signal.
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = common::keep_alive(addr).await.unwrap();
            for _ in 0..100 {
                sender.ready().await.unwrap();
                let response = sender.send_request(request("GET", &path)).await.unwrap();
                assert_eq!(response.status(), 200, "worker {worker}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // The fsync interval is a minute and nothing forwards: only the shutdown drain
    // can have committed them, and they must all be in the spool after the exit.
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    assert!(server.stderr().contains("shutdown complete"));
    let store = trackedge::store::Store::open(&server.dir.join("spool"), 1 << 20).unwrap();
    let held: u64 = store
        .iter()
        .map(|entry| trackedge::record::count_of(&entry.unwrap().1))
        .sum();
    assert_eq!(held, 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_off_while_draining_and_the_in_flight_request_still_finishes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start("");
    assert_eq!(get(server.admin, "/readyz").await.status(), 200);
    assert_eq!(server.metric("trackedge_ready").await, 1.0);

    // An unsubscribe POST whose body is only half sent keeps a request in flight.
    let path = server.path_for(&claims(Kind::Unsubscribe, "slow"));
    let body = b"List-Unsubscribe=One-Click";
    let mut stream = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.signal("TERM");
    let unready = common::eventually(Duration::from_secs(5), || async {
        get(server.admin, "/readyz").await.status() == 503
    })
    .await;
    assert!(unready, "readiness did not turn off while draining");
    assert_eq!(
        get(server.admin, "/healthz").await.status(),
        200,
        "liveness stays"
    );

    stream.write_all(&body[10..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(server.wait(Duration::from_secs(10)).success());
    assert_eq!(server.events().len(), 1, "the drained request was recorded");
}

#[test]
fn check_config_names_the_broken_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[public]\naddr = \"not an address\"\n", "public.addr"),
        ("[public]\nbogus_key = 1\n", "bogus_key"),
        ("[spool]\nchannel_capacity = -1\n", "channel_capacity"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[admin]\naddr = \"0.0.0.0:9090\"\n", "admin.bearer_token"),
        (
            "[memory]\nrelease_check_ms = 50\n",
            "memory.release_check_ms",
        ),
        (
            "[memory]\nrelease_min_growth_mb = -1\n",
            "release_min_growth_mb",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let output = Command::new(BIN)
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{text}: {stderr}");
    }
    let output = Command::new(BIN)
        .arg("check-config")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("config ok"));
}

/// `check-config` loads every file `serve` loads, and refuses what `serve` refuses,
/// naming the key; `serve` refuses the same configs the same way.
#[test]
fn check_config_and_serve_refuse_the_same_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let short_key = dir.path().join("short-keys.txt");
    std::fs::write(&short_key, "1:tooshort\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let tls = |cert: &std::path::Path| {
        format!(
            "[[public.tls]]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
            cert.display(),
            garbage.display()
        )
    };
    for (text, key) in [
        (tls(&missing), "public.tls[0].cert_path"),
        (tls(&garbage), "public.tls[0].cert_path"),
        (
            format!("[tokens]\nkey_file = \"{}\"\n", short_key.display()),
            "tokens.key_file",
        ),
        ("[log]\nlevel = \"warning\"\n".to_owned(), "log.level"),
    ] {
        let path = dir.path().join("broken.toml");
        std::fs::write(&path, &text).unwrap();
        let data_dir = dir.path().join("data");
        for command in ["check-config", "serve"] {
            let output = Command::new(BIN)
                .arg(command)
                .arg("--config")
                .arg(&path)
                .args([
                    "--public-addr",
                    "127.0.0.1:0",
                    "--admin-addr",
                    "127.0.0.1:0",
                ])
                .arg("--data-dir")
                .arg(&data_dir)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{command} accepted {text}");
            assert!(stderr.contains(key), "{command} {text}: {stderr}");
        }
    }
}

#[test]
fn flags_and_environment_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[public]\naddr = \"127.0.0.1:1111\"\n").unwrap();
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .env("TRACKEDGE_PUBLIC_ADDR", "127.0.0.1:2222")
        .env("TRACKEDGE_ADMIN_ADDR", "127.0.0.1:3333")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("public 127.0.0.1:2222") && stdout.contains("admin 127.0.0.1:3333"),
        "{stdout}"
    );
    let output = Command::new(BIN)
        .args([
            "check-config",
            "--public-addr",
            "127.0.0.1:4444",
            "--config",
        ])
        .arg(&path)
        .env("TRACKEDGE_PUBLIC_ADDR", "127.0.0.1:2222")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("public 127.0.0.1:4444"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_prints_a_url_the_running_server_answers() {
    let server = TestServer::start("");
    let sign = |args: &[&str]| {
        Command::new(BIN)
            .arg("sign")
            .args(args)
            .args([
                "--tenant",
                "acme",
                "--campaign",
                "c1",
                "--message",
                "m1",
                "--base-url",
                &server.base_url(),
                "--data-dir",
            ])
            .arg(&server.dir)
            .args(["--config", "/dev/null"])
            .output()
            .unwrap()
    };
    let output = sign(&[
        "click",
        "--link",
        "3",
        "--target",
        "https://shop.example/x",
        "--expires-in",
        "30d",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let path = url
        .strip_prefix(&server.base_url())
        .expect("URL under the base URL");
    let response = get(server.public, path).await;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "https://shop.example/x");

    let output = sign(&["open"]);
    let url = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(url.ends_with(".gif"));

    for bad in [
        &["click", "--target", "javascript:alert(1)"][..],
        &[
            "click",
            "--target",
            "https://x.example/\r\nLocation: https://evil.example",
        ],
        &["click"],
        &["open", "--target", "https://x.example/"],
        &["teleport"],
    ] {
        let output = sign(bad);
        assert!(!output.status.success(), "{bad:?} was signed");
        assert!(!output.stderr.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_bearer_token_is_enforced() {
    let server = TestServer::start("[admin]\nbearer_token = \"s3cret-token\"\n");
    let denied = get(server.admin, "/metrics").await;
    assert_eq!(denied.status(), 401);
    let wrong = send(
        server.admin,
        Version::HTTP_11,
        http::Request::builder()
            .uri("/metrics")
            .header("authorization", "Bearer s3cret-tokex")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let allowed = send(
        server.admin,
        Version::HTTP_11,
        http::Request::builder()
            .uri("/metrics")
            .header("authorization", "Bearer s3cret-token")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(allowed.status(), 200);
    let text = String::from_utf8_lossy(allowed.body()).to_string();
    assert_eq!(
        common::metric_value(&text, "trackedge_admin_unauthorized_total"),
        Some(2.0)
    );
    assert_eq!(
        get(server.admin, "/readyz").await.status(),
        200,
        "probes need no token"
    );
}

/// A burst of connections with large heads grows the heap; once the edge is quiet
/// again it hands what the burst freed back to the kernel, and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_edge_hands_a_bursts_freed_heap_back_to_the_kernel() {
    let server = TestServer::start(
        "[memory]\nrelease_check_ms = 2000\nrelease_min_growth_mb = 1\n[forward]\nsink = \"none\"\n",
    );
    // The first quiet look after start releases what start-up freed. Scrapes are
    // work too (a debug build renders /metrics in milliseconds): look seldom, or the
    // edge is never quiet.
    let started =
        seldom(|| async { server.metric("trackedge_memory_releases_total").await >= 1.0 }).await;
    assert!(started, "no release after start-up\n{}", server.stderr());
    let releases = server.metric("trackedge_memory_releases_total").await;
    let bytes = server.metric("trackedge_memory_released_bytes_total").await;
    let path = server.path_for(&claims(Kind::Open, "m"));
    // Each connection's read buffer grows to hold a 12 KB head; 300 of them at
    // once hold several MB that closing them frees.
    let filler = "x".repeat(12 * 1024);
    let mut senders = Vec::new();
    for _ in 0..300 {
        let mut sender = common::keep_alive(server.public).await.unwrap();
        sender.ready().await.unwrap();
        let response = sender
            .send_request(common::request_with(
                "GET",
                &path,
                &[("x-filler", filler.as_str())],
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        senders.push(sender);
    }
    drop(senders);
    let released = seldom(|| async {
        server.metric("trackedge_memory_releases_total").await > releases
            && server.metric("trackedge_memory_released_bytes_total").await
                >= bytes + f64::from(1 << 20)
    })
    .await;
    assert!(
        released,
        "releases {releases} -> {}, bytes {bytes} -> {}\n{}",
        server.metric("trackedge_memory_releases_total").await,
        server.metric("trackedge_memory_released_bytes_total").await,
        server.stderr()
    );
    // Still serving.
    let response = send(server.public, Version::HTTP_11, request("GET", &path)).await;
    assert_eq!(response.status(), 200);
}

/// Polls `check` every 2.5 s for up to 50 s.
async fn seldom<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        if check().await {
            return true;
        }
    }
    false
}
