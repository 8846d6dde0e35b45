//! Privacy promises at the edges of the pipeline, through the real server and a real
//! receiver: erasure and retention reach batches in flight and the hand-off channel,
//! unsubscribes are recorded whatever tracking says, drop counters add up, the ready
//! gauge needs no probe, and a declared oversized body is refused at once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::upstream::{Mode, Upstream};
use common::{claims_of as claims, eventually, request_with, send, TestServer};
use http::{Request, Response, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trackedge::Kind;

async fn open(server: &TestServer, recipient: &str, message: &str) {
    let path = server.path_for(&claims(Kind::Open, recipient, message));
    let response = send(
        server.public,
        Version::HTTP_11,
        request_with("GET", &path, &[]),
    )
    .await;
    assert_eq!(response.status(), 200);
}

async fn admin(server: &TestServer, method: &str, path: &str) -> Response<Bytes> {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(server.admin, Version::HTTP_11, request).await
}

async fn admin_json(server: &TestServer, method: &str, path: &str) -> serde_json::Value {
    let response = admin(server, method, path).await;
    serde_json::from_slice(response.body()).expect("JSON answer")
}

/// An http sink at `url` that retries fast, so a returning upstream is seen quickly.
fn http_sink(url: &str, extra: &str) -> String {
    format!(
        "{extra}\n[forward]\nsink = \"http\"\nbackoff_initial_ms = 50\nbackoff_max_ms = 400\n\
         circuit_open_ms = 400\n[forward.http]\nurl = \"{url}\"\ngzip = false\n"
    )
}

/// Events the receiver got, in arrival order.
fn arrived(upstream: &Upstream) -> Vec<serde_json::Value> {
    upstream.received.lock().unwrap().events.clone()
}

fn of_recipient<'a>(
    events: &'a [serde_json::Value],
    recipient: &'a str,
) -> impl Iterator<Item = (usize, &'a serde_json::Value)> + 'a {
    events
        .iter()
        .enumerate()
        .filter(move |(_, e)| e["recipient"] == recipient)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_reaches_batches_in_flight_and_its_record_comes_after_what_was_sent() {
    // Nothing listens at the upstream's address yet: connections are refused.
    let addr = Upstream::start(Mode::Accept).await.stop();
    let server = TestServer::start(&http_sink(&format!("http://{addr}/ingest"), ""));
    for n in 0..15 {
        open(&server, "R", &format!("held-{n}")).await;
    }
    for n in 0..5 {
        open(&server, "other", &format!("other-{n}")).await;
    }
    let in_flight = eventually(Duration::from_secs(15), || async {
        admin_json(&server, "GET", "/admin/spool").await["sink"]["in_flight_batches"]
            .as_u64()
            .unwrap_or(0)
            > 0
    })
    .await;
    assert!(in_flight, "no batch went in flight");
    let erased = admin_json(&server, "DELETE", "/admin/subjects/acme/R").await;
    assert_eq!(erased["removed"], 15, "{erased}");
    let export = admin(&server, "GET", "/admin/subjects/acme/R/export").await;
    assert!(export.body().is_empty(), "export after erasure is empty");

    let upstream = Upstream::start_on(addr, Mode::Accept).await;
    let told = eventually(Duration::from_secs(30), || async {
        let events = arrived(&upstream);
        events.iter().any(|e| e["kind"] == "erasure")
            && events.iter().filter(|e| e["recipient"] == "other").count() == 5
    })
    .await;
    assert!(
        told,
        "the erasure record and the other recipient's opens arrive"
    );
    let after = arrived(&upstream);
    let leaked: Vec<_> = of_recipient(&after, "R")
        .filter(|(_, e)| e["kind"] == "open")
        .map(|(_, e)| e["message"].clone())
        .collect();
    assert!(leaked.is_empty(), "erased opens left the edge: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_erasure_record_arrives_after_the_subjects_earlier_events() {
    let upstream = Upstream::start(Mode::Accept).await;
    let server = TestServer::start(&http_sink(&upstream.url(), ""));
    for n in 0..3 {
        open(&server, "R", &format!("m-{n}")).await;
    }
    let sent = eventually(Duration::from_secs(15), || async {
        of_recipient(&arrived(&upstream), "R").count() == 3
    })
    .await;
    assert!(sent);
    admin_json(&server, "DELETE", "/admin/subjects/acme/R").await;
    let told = eventually(Duration::from_secs(15), || async {
        arrived(&upstream).iter().any(|e| e["kind"] == "erasure")
    })
    .await;
    assert!(told);
    let events = arrived(&upstream);
    let erasure_at = events.iter().position(|e| e["kind"] == "erasure").unwrap();
    let last_open = of_recipient(&events, "R")
        .filter(|(_, e)| e["kind"] == "open")
        .map(|(at, _)| at)
        .max()
        .unwrap();
    assert!(
        erasure_at > last_open,
        "erasure record at {erasure_at}, open at {last_open}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_right_after_the_answer_lets_nothing_through() {
    let upstream = Upstream::start(Mode::Accept).await;
    // A writer that wakes every 20 ms: most answered events are still in the
    // hand-off channel when the erasure comes.
    let server = TestServer::start(&http_sink(&upstream.url(), "[spool]\nbatch_delay_ms = 20"));
    let subjects = 50;
    let mut leaked = Vec::new();
    let mut arrived_before = 0;
    for n in 0..subjects {
        let recipient = format!("fast-{n}");
        open(&server, &recipient, &format!("msg-{n}")).await;
        let erased = admin(
            &server,
            "DELETE",
            &format!("/admin/subjects/acme/{recipient}"),
        )
        .await;
        assert_eq!(erased.status(), 200);
        // What arrived by now may have left before the call: that is allowed.
        let already = arrived(&upstream).len();
        leaked.push((recipient, already));
    }
    let done = eventually(Duration::from_secs(30), || async {
        arrived(&upstream)
            .iter()
            .filter(|e| e["kind"] == "erasure")
            .count()
            == subjects
    })
    .await;
    assert!(done, "every erasure record arrives");
    let events = arrived(&upstream);
    let mut late = Vec::new();
    for (recipient, seen_at_return) in &leaked {
        for (at, event) in of_recipient(&events, recipient) {
            if event["kind"] == "open" {
                if at >= *seen_at_return {
                    late.push(recipient.clone());
                } else {
                    arrived_before += 1;
                }
            }
        }
    }
    println!(
        "{subjects} subjects erased right after their open: {} opens left before the call returned, {} after",
        arrived_before,
        late.len()
    );
    assert!(
        late.is_empty(),
        "delivered after their erasure returned: {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_past_retention_leaves_even_from_a_batch_in_flight() {
    let upstream = Upstream::start(Mode::Accept).await;
    let addr = upstream.stop();
    let server = TestServer::start(&http_sink(
        &format!("http://{addr}/ingest"),
        "[retention]\nmax_age_secs = 2",
    ));
    let count = 200;
    for n in 0..count {
        open(&server, "R", &format!("old-{n}")).await;
    }
    let expired = eventually(Duration::from_secs(30), || async {
        server
            .metric("trackedge_events_dropped_total{reason=\"retention\"}")
            .await
            == f64::from(count)
    })
    .await;
    assert!(
        expired,
        "every old event is counted as dropped for retention: {}",
        server.metrics().await
    );
    let upstream = Upstream::start_on(addr, Mode::Accept).await;
    open(&server, "R", "fresh").await;
    let fresh = eventually(Duration::from_secs(30), || async {
        arrived(&upstream).iter().any(|e| e["message"] == "fresh")
    })
    .await;
    assert!(fresh, "a fresh event still goes through");
    let old: Vec<_> = arrived(&upstream)
        .into_iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with("old-")))
        .collect();
    assert!(
        old.is_empty(),
        "{} events past retention arrived",
        old.len()
    );
    assert_eq!(
        server
            .metric("trackedge_events_dropped_total{reason=\"retention\"}")
            .await,
        f64::from(count),
        "each counted once"
    );
}

/// Drives `count` opens into a 64 KiB spool while the upstream refuses, lets it come
/// back, and checks that every answered open is delivered, dropped or still spooled,
/// each exactly once.
async fn drop_accounting(policy: &str) {
    let upstream = Upstream::start(Mode::Accept).await;
    let addr = upstream.stop();
    let server = TestServer::start(&http_sink(
        &format!("http://{addr}/ingest"),
        &format!(
            "[spool]\nmax_bytes = 65536\nmax_batch_bytes = 16384\nfull_policy = \"{policy}\"\n\
             [rate_limit]\nenabled = false"
        ),
    ));
    let count = 1500;
    for n in 0..count {
        open(&server, &format!("r{}", n % 7), &format!("m-{n}")).await;
    }
    let dropped_series = "trackedge_events_dropped_total{reason=\"spool_full\"}";
    let some_dropped = eventually(Duration::from_secs(10), || async {
        server.metric(dropped_series).await > 0.0
    })
    .await;
    assert!(some_dropped, "{policy}: the bound was never reached");
    let upstream = Upstream::start_on(addr, Mode::Accept).await;
    let drained = eventually(Duration::from_secs(60), || async {
        admin_json(&server, "GET", "/admin/spool").await["events"] == 0
            && server.metric("trackedge_forward_in_flight_batches").await == 0.0
    })
    .await;
    assert!(drained, "{policy}: the spool did not drain");
    let delivered = upstream.distinct_ids() as f64;
    let dropped = server.metric(dropped_series).await;
    let forwarded = server.metric("trackedge_forward_events_total").await;
    println!("{policy}: {count} answered, {delivered} delivered, {dropped} dropped (spool_full)");
    assert_eq!(
        delivered + dropped,
        f64::from(count),
        "{policy}: every event once"
    );
    assert_eq!(forwarded, delivered, "{policy}: the delivered counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_counts_add_up_under_drop_oldest() {
    drop_accounting("drop_oldest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_counts_add_up_under_drop_newest() {
    drop_accounting("drop_newest").await;
}

async fn unsubscribe(server: &TestServer, recipient: &str, headers: &[(&str, &str)]) {
    let path = server.path_for(&claims(Kind::Unsubscribe, recipient, "u-msg"));
    let mut request = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "t.example")
        .header("user-agent", "Mozilla/5.0 (unsubscribe test)")
        .header("content-type", "application/x-www-form-urlencoded");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from_static(b"List-Unsubscribe=One-Click")))
        .unwrap();
    let response = send(server.public, Version::HTTP_11, request).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_is_recorded_whatever_tracking_says() {
    let upstream = Upstream::start(Mode::Accept).await;
    let server = TestServer::start(&http_sink(
        &upstream.url(),
        "[privacy]\ndnt_policy = \"drop\"\n[rate_limit]\nevents_per_sec = 0.001\nburst = 1\naction = \"drop\"",
    ));
    assert_eq!(
        admin(&server, "PUT", "/admin/suppressions/acme/suppressed")
            .await
            .status(),
        200
    );
    unsubscribe(&server, "opted-out", &[("cookie", "te_optout=1")]).await;
    unsubscribe(&server, "suppressed", &[]).await;
    unsubscribe(&server, "gpc", &[("sec-gpc", "1")]).await;
    // The recording limit (one event per network) marks but never drops them.
    unsubscribe(&server, "limited-1", &[]).await;
    unsubscribe(&server, "limited-2", &[]).await;
    let all = eventually(Duration::from_secs(15), || async {
        arrived(&upstream)
            .iter()
            .filter(|e| e["kind"] == "unsubscribe")
            .count()
            == 5
    })
    .await;
    assert!(
        all,
        "every unsubscribe reaches the upstream: {:?}",
        arrived(&upstream)
    );
    let events = arrived(&upstream);
    let by = |recipient: &str| {
        events
            .iter()
            .find(|e| e["recipient"] == recipient)
            .cloned()
            .unwrap()
    };
    for (recipient, reason) in [
        ("opted-out", "opted_out"),
        ("suppressed", "suppressed"),
        ("gpc", "do_not_track"),
    ] {
        let event = by(recipient);
        assert_eq!(event["not_tracked"], reason, "{event}");
        assert!(
            event["ip"].is_null() && event["ua"].is_null(),
            "minimum fields: {event}"
        );
        assert!(event.get("geo").is_none() && event.get("client").is_none());
    }
    let limited: HashSet<bool> = ["limited-1", "limited-2"]
        .iter()
        .map(|r| by(r)["rate_limited"] == true)
        .collect();
    assert!(
        limited.contains(&true),
        "the second one is over the limit, and marked"
    );
    assert!(by("limited-1").get("not_tracked").is_none());
    // Recorded, so not counted as "not recorded".
    for reason in ["opted_out", "suppressed", "do_not_track"] {
        let series = format!("trackedge_privacy_not_recorded_total{{reason=\"{reason}\"}}");
        assert_eq!(server.metric(&series).await, 0.0, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_gauge_follows_readiness_without_a_probe() {
    let server = TestServer::start("[forward]\nsink = \"none\"\n");
    let ready = eventually(Duration::from_secs(10), || async {
        server.metric("trackedge_ready").await == 1.0
    })
    .await;
    assert!(ready, "trackedge_ready is 1 without anyone calling /readyz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_at_once() {
    let server =
        TestServer::start("[public]\nmax_body_bytes = 4096\nheader_read_timeout_ms = 60000\n");
    let path = server.path_for(&claims(Kind::Unsubscribe, "r", "m"));
    let mut stream = tokio::net::TcpStream::connect(server.public).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: t.example\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // No body follows. The answer must not wait for it (the body timeout is a minute;
    // the bound here only keeps a broken server from hanging the test).
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut answer))
        .await
        .expect("an answer before the body timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..read]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}
