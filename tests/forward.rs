//! The spool and the forwarder through the real binary, with a real upstream
//! receiver on 127.0.0.1: nothing answered is lost across upstream outages, errors,
//! slowness, restarts and crashes; bounds drop exactly what they say.

mod common;

use std::time::Duration;

use common::upstream::{Mode, Upstream};
use common::{claims, eventually, get, request, TestServer};
use trackedge::Kind;

fn forward_config(url: &str, extra: &str) -> String {
    format!(
        "[spool]\nbatch_delay_ms = 1\n{extra}\n\
         [forward]\nsink = \"http\"\nmax_batch_events = 50\nbackoff_initial_ms = 10\n\
         backoff_max_ms = 200\ncircuit_failures = 3\ncircuit_open_ms = 200\nshutdown_grace_ms = 3000\n\
         [forward.http]\nurl = \"{url}\"\nbearer_token = \"up-token\"\ntimeout_ms = 2000\n"
    )
}

/// Sends `count` opens with messages `<prefix>-<n>` on one keep-alive connection.
async fn send_opens(server: &TestServer, prefix: &str, count: usize) {
    let mut sender = common::keep_alive(server.public).await.unwrap();
    let keys = server.keys();
    for n in 0..count {
        let url =
            trackedge::mint_url("", &keys, &claims(Kind::Open, &format!("{prefix}-{n}"))).unwrap();
        sender.ready().await.unwrap();
        let response = sender.send_request(request("GET", &url)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

async fn spool_report(server: &TestServer) -> serde_json::Value {
    let response = get(server.admin, "/admin/spool").await;
    assert_eq!(response.status(), 200);
    serde_json::from_slice(response.body()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_a_hanging_up_upstream_recovers() {
    let upstream = Upstream::start(Mode::Hangup).await;
    let server = TestServer::start(&forward_config(&upstream.url(), ""));
    send_opens(&server, "m", 300).await;
    let failing = eventually(Duration::from_secs(10), || async {
        spool_report(&server).await["sink"]["consecutive_failures"].as_u64() >= Some(3)
    })
    .await;
    assert!(failing, "the sink never reported failures");
    let held = eventually(Duration::from_secs(10), || async {
        spool_report(&server).await["events"] == 300
    })
    .await;
    assert!(held, "all 300 are held while the upstream is away");
    assert!(
        server
            .metric("trackedge_forward_failures_total{reason=\"io\"}")
            .await
            + server
                .metric("trackedge_forward_failures_total{reason=\"connect\"}")
                .await
            >= 1.0
    );

    upstream.set_mode(Mode::Accept);
    let arrived = eventually(Duration::from_secs(20), || async {
        upstream.distinct_ids() == 300
    })
    .await;
    assert!(arrived, "only {} of 300 arrived", upstream.distinct_ids());
    let drained = eventually(Duration::from_secs(5), || async {
        spool_report(&server).await["events"] == 0
    })
    .await;
    assert!(drained, "acknowledged events stay in the spool");
    let received = upstream.received.lock().unwrap();
    assert!(received
        .authorization
        .iter()
        .all(|a| a == "Bearer up-token"));
    assert!(!received.idempotency_keys.is_empty());
    assert!(received.idempotency_keys.iter().all(|k| !k.is_empty()));
    let event = &received.events[0];
    assert_eq!(event["kind"], "open");
    assert_eq!(event["tenant"], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_upstream_that_comes_up_later_gets_everything() {
    let addr = Upstream::start(Mode::Accept).await.stop();
    let url = format!("http://{addr}/ingest");
    let server = TestServer::start(&forward_config(&url, ""));
    send_opens(&server, "m", 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        server
            .metric("trackedge_forward_failures_total{reason=\"connect\"}")
            .await
            >= 1.0
    );
    let upstream = Upstream::start_on(addr, Mode::Accept).await;
    let arrived = eventually(Duration::from_secs(20), || async {
        upstream.distinct_ids() == 100
    })
    .await;
    assert!(arrived, "only {} of 100 arrived", upstream.distinct_ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_500_429_and_400_answers_lose_nothing() {
    let upstream = Upstream::start(Mode::Random).await;
    let server = TestServer::start(&forward_config(&upstream.url(), ""));
    send_opens(&server, "m", 400).await;
    let settled = eventually(Duration::from_secs(30), || async {
        let report = spool_report(&server).await;
        report["events"] == 0
            && upstream.distinct_ids() as u64 + report["dead_letters"].as_u64().unwrap_or(0) == 400
    })
    .await;
    let report = spool_report(&server).await;
    assert!(
        settled,
        "delivered {} + dead letters {} != 400",
        upstream.distinct_ids(),
        report["dead_letters"]
    );
    let dead = report["dead_letters"].as_u64().unwrap();
    assert_eq!(
        server.metric("trackedge_forward_dead_letters_total").await,
        dead as f64
    );
    assert!(server.metric("trackedge_forward_retries_total").await >= 1.0);
    assert_eq!(
        server.metric("trackedge_forward_events_total").await,
        upstream.distinct_ids() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_still_gets_everything() {
    let upstream = Upstream::start(Mode::Slow).await;
    let server = TestServer::start(&forward_config(&upstream.url(), ""));
    send_opens(&server, "m", 500).await;
    let arrived = eventually(Duration::from_secs(30), || async {
        upstream.distinct_ids() == 500
    })
    .await;
    assert!(arrived, "only {} of 500 arrived", upstream.distinct_ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_stream_resends_from_the_spool() {
    let upstream = Upstream::start(Mode::Hangup).await;
    let dir = tempfile::tempdir().unwrap();
    let config = forward_config(&upstream.url(), "")
        .replace("shutdown_grace_ms = 3000", "shutdown_grace_ms = 200");
    let mut first = TestServer::start_in(dir.path(), &config);
    send_opens(&first, "before", 200).await;
    assert!(first.terminate().success(), "{}", first.stderr());
    assert_eq!(upstream.distinct_ids(), 0);

    upstream.set_mode(Mode::Accept);
    let second = TestServer::start_in(dir.path(), &config);
    send_opens(&second, "after", 100).await;
    let arrived = eventually(Duration::from_secs(20), || async {
        upstream.distinct_ids() == 300
    })
    .await;
    assert!(arrived, "only {} of 300 arrived", upstream.distinct_ids());
    let received = upstream.received.lock().unwrap();
    let messages: std::collections::HashSet<&str> = received
        .events
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages.contains("before-0")
            && messages.contains("before-199")
            && messages.contains("after-99")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_the_documented_flush_window() {
    let upstream = Upstream::start(Mode::Hangup).await;
    let dir = tempfile::tempdir().unwrap();
    // Loss bound: batch_delay_ms (1) + flush_every_ms (100).
    let config = forward_config(
        &upstream.url(),
        "durability = \"interval\"\nflush_every_ms = 100",
    );
    let mut first = TestServer::start_in(dir.path(), &config);
    send_opens(&first, "settled", 1000).await;
    // Older than the flush window by a wide margin: these must survive a crash.
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_opens(&first, "late", 100).await;
    first.signal("KILL");
    first.wait(Duration::from_secs(10));

    upstream.set_mode(Mode::Accept);
    let second = TestServer::start_in(dir.path(), &config);
    let settled = eventually(Duration::from_secs(20), || async {
        let received = upstream.received.lock().unwrap();
        received
            .events
            .iter()
            .filter(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("settled-"))
            })
            .count()
            >= 1000
    })
    .await;
    let drained = eventually(Duration::from_secs(10), || async {
        spool_report(&second).await["events"] == 0
    })
    .await;
    assert!(drained);
    let received = upstream.received.lock().unwrap();
    let count = |prefix: &str| {
        received
            .events
            .iter()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| m.starts_with(prefix))
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let (settled_count, late_count) = (count("settled-"), count("late-"));
    println!("kill -9: settled {settled_count}/1000 delivered, late {late_count}/100 delivered (lost {} inside the flush window)", 100 - late_count);
    assert!(
        settled,
        "events answered before the last flush window were lost"
    );
    assert_eq!(settled_count, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_under_a_dead_upstream_drops_exactly_and_keeps_answering() {
    let upstream = Upstream::start(Mode::Hangup).await;
    let max_bytes = 65_536;
    let server = TestServer::start(&forward_config(
        &upstream.url(),
        &format!("max_bytes = {max_bytes}\nmax_batch_bytes = 16384\nfull_policy = \"drop_newest\""),
    ));
    send_opens(&server, "m", 1000).await;
    let counted = eventually(Duration::from_secs(10), || async {
        let held = spool_report(&server).await["events"].as_u64().unwrap_or(0) as f64;
        let dropped = server
            .metric("trackedge_events_dropped_total{reason=\"spool_full\"}")
            .await;
        held + dropped == 1000.0
    })
    .await;
    let report = spool_report(&server).await;
    let dropped = server
        .metric("trackedge_events_dropped_total{reason=\"spool_full\"}")
        .await;
    assert!(
        counted,
        "held {} + dropped {dropped} != 1000",
        report["events"]
    );
    assert!(dropped > 0.0);
    assert!(report["bytes"].as_u64().unwrap() <= max_bytes);
    assert_eq!(
        server
            .metric("trackedge_events_emitted_total{kind=\"open\"}")
            .await,
        1000.0
    );
    println!(
        "spool bound {max_bytes} B: records {} B, on disk {} B",
        report["bytes"], report["disk_bytes"]
    );
    // Still answering, still counting.
    assert_eq!(
        get(server.public, &server.path_for(&claims(Kind::Open, "late")))
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_configured_ca() {
    let pki = common::TestPki::new();
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(certs.path(), "upstream", &["localhost"]);
    let ca = certs.path().join("ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let upstream = Upstream::start_tls(Mode::Accept, common::server_tls(&cert, &key)).await;
    let url = format!("https://localhost:{}/ingest", upstream.addr.port());
    let config = format!(
        "{}ca_file = {:?}\n",
        forward_config(&url, ""),
        ca.display().to_string()
    );
    let server = TestServer::start(&config);
    send_opens(&server, "tls", 50).await;
    let arrived = eventually(Duration::from_secs(20), || async {
        upstream.distinct_ids() == 50
    })
    .await;
    assert!(
        arrived,
        "only {} of 50 arrived over https",
        upstream.distinct_ids()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_none_sink_keeps_events_in_the_spool_and_the_file_sink_writes_them() {
    let mut server =
        TestServer::start("[forward]\nsink = \"none\"\n[health]\nforwarder_deadline_ms = 1000\n");
    send_opens(&server, "m", 20).await;
    let held = eventually(Duration::from_secs(5), || async {
        spool_report(&server).await["events"] == 20
    })
    .await;
    assert!(held);
    assert_eq!(spool_report(&server).await["sink"]["state"], "disabled");
    // Nothing runs for the `none` sink, so nothing can be late: still ready past
    // the forwarder's deadline.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(server.admin, "/readyz").await.status(), 200);
    assert!(server.terminate().success());
    assert!(server.events().is_empty());

    let mut server = TestServer::start("[forward.file]\nmax_file_bytes = 4096\n");
    send_opens(&server, "m", 100).await;
    assert!(server.terminate().success());
    let events = server.events();
    assert_eq!(events.len(), 100);
    let rotated = std::fs::read_dir(&server.dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("events-")
        })
        .count();
    assert!(rotated >= 2, "the file sink rotates by size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_events_wait_for_the_linger_and_a_backlog_goes_at_once() {
    let upstream = Upstream::start(Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let lingering = |linger_ms: u32| {
        forward_config(&upstream.url(), "").replace(
            "max_batch_events = 50\n",
            &format!("max_batch_events = 50\nlinger_ms = {linger_ms}\n"),
        )
    };
    // Fewer than max_batch_events: they wait up to the linger, then leave together.
    let mut first = TestServer::start_in(dir.path(), &lingering(2000));
    let started = std::time::Instant::now();
    send_opens(&first, "few", 20).await;
    if started.elapsed() < Duration::from_millis(1500) {
        let requests = upstream.requests.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(requests, 0, "a batch left before the linger");
    }
    let arrived = eventually(Duration::from_secs(10), || async {
        upstream.distinct_ids() == 20
    })
    .await;
    assert!(arrived, "only {} of 20 arrived", upstream.distinct_ids());
    let requests = upstream.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(requests, 1, "20 events in {requests} batches");

    // What a previous run left is a backlog: nothing is arriving, so it does not
    // wait for the (here 60 s) linger.
    upstream.set_mode(Mode::Hangup);
    send_opens(&first, "backlog", 20).await;
    assert!(first.terminate().success(), "{}", first.stderr());
    upstream.set_mode(Mode::Accept);
    let _second = TestServer::start_in(dir.path(), &lingering(60_000));
    let arrived = eventually(Duration::from_secs(10), || async {
        upstream.distinct_ids() == 40
    })
    .await;
    assert!(arrived, "only {} of 40 arrived", upstream.distinct_ids());
}
