//! The four tracking routes through the real binary, over HTTP/1.1 and h2c.

mod common;

use bytes::Bytes;
use common::{claims, get, request, send, TestServer};
use http::{Request, Version};
use http_body_util::Full;
use trackedge::Kind;

const GIF_HEADERS: [(&str, &str); 4] = [
    ("content-type", "image/gif"),
    (
        "cache-control",
        "no-store, no-cache, must-revalidate, private",
    ),
    ("pragma", "no-cache"),
    ("expires", "0"),
];

fn one_click(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "t.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"List-Unsubscribe=One-Click")))
        .expect("request")
}

async fn round_trip(version: Version) {
    let mut server = TestServer::start("");
    let addr = server.public;

    let open = send(
        addr,
        version,
        request("GET", &server.path_for(&claims(Kind::Open, "m-open"))),
    )
    .await;
    assert_eq!(open.status(), 200);
    assert_eq!(open.version(), version);
    for (name, value) in GIF_HEADERS {
        assert_eq!(open.headers()[name], value, "{name}");
    }
    assert_eq!(open.body().len(), 43);
    assert!(open.body().starts_with(b"GIF89a"));

    let click = send(
        addr,
        version,
        request("GET", &server.path_for(&claims(Kind::Click, "m-click"))),
    )
    .await;
    assert_eq!(click.status(), 302);
    assert_eq!(
        click.headers()["location"],
        "https://shop.example/landing?x=1"
    );

    let download = send(
        addr,
        version,
        request("GET", &server.path_for(&claims(Kind::Download, "m-file"))),
    )
    .await;
    assert_eq!(download.status(), 302);
    assert_eq!(
        download.headers()["location"],
        "https://shop.example/landing?x=1"
    );

    let unsubscribe_path = server.path_for(&claims(Kind::Unsubscribe, "m-unsub"));
    let confirm = send(addr, version, request("GET", &unsubscribe_path)).await;
    assert_eq!(confirm.status(), 200);
    assert!(String::from_utf8_lossy(confirm.body()).contains("List-Unsubscribe"));
    let done = send(addr, version, one_click(&unsubscribe_path)).await;
    assert_eq!(done.status(), 200);

    assert!(server.terminate().success());
    let events = server.events();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["open", "click", "download", "unsubscribe"],
        "the GET of the confirm page records nothing"
    );
    let click = &events[1];
    assert_eq!(click["tenant"], "acme");
    assert_eq!(click["campaign"], "launch");
    assert_eq!(click["message"], "m-click");
    assert_eq!(click["recipient"], "rcpt-1");
    assert_eq!(click["link"], 2);
    assert_eq!(click["target"], "https://shop.example/landing?x=1");
    assert_eq!(
        click["ip"], "127.0.0.0",
        "the address is truncated before it is written"
    );
    assert_eq!(click["ua"], "Mozilla/5.0 (test)");
    assert_eq!(click["v"], 1);
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_round_trips_over_http1() {
    round_trip(Version::HTTP_11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_round_trips_over_h2c() {
    round_trip(Version::HTTP_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_without_a_body_and_is_flagged() {
    let mut server = TestServer::start("");
    let open = send(
        server.public,
        Version::HTTP_11,
        request("HEAD", &server.path_for(&claims(Kind::Open, "m"))),
    )
    .await;
    assert_eq!(open.status(), 200);
    assert_eq!(open.headers()["content-type"], "image/gif");
    assert!(open.body().is_empty());
    let click = send(
        server.public,
        Version::HTTP_11,
        request("HEAD", &server.path_for(&claims(Kind::Click, "m"))),
    )
    .await;
    assert_eq!(click.status(), 302);
    assert!(server.terminate().success());
    let events = server.events();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e["head"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_get_small_answers_and_record_nothing() {
    let mut server = TestServer::start("");
    let open_path = server.path_for(&claims(Kind::Open, "m"));
    let unsubscribe_path = server.path_for(&claims(Kind::Unsubscribe, "m"));
    for path in [
        "/",
        "/favicon.ico",
        "/o/",
        "/c/",
        "/o/abc",
        "/c/a/b/c",
        "/c//b",
        "/admin",
        "/metrics",
    ] {
        let response = get(server.public, path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert!(response.body().len() < 64, "{path}");
    }
    for (method, path, allow) in [
        ("POST", open_path.as_str(), "GET, HEAD"),
        ("PUT", open_path.as_str(), "GET, HEAD"),
        ("DELETE", unsubscribe_path.as_str(), "GET, HEAD, POST"),
        ("POST", "/healthz", "GET, HEAD"),
    ] {
        let response = send(server.public, Version::HTTP_11, request(method, path)).await;
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow);
    }
    assert_eq!(
        server
            .metric("trackedge_http_errors_total{reason=\"method_not_allowed\"}")
            .await,
        4.0
    );
    assert!(server.terminate().success());
    assert!(server.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_post_must_be_one_click_and_bounded() {
    let mut server = TestServer::start("[public]\nmax_body_bytes = 128\n");
    let path = server.path_for(&claims(Kind::Unsubscribe, "m"));
    let with_body = |content_type: &str, body: Vec<u8>| {
        Request::builder()
            .method("POST")
            .uri(&path)
            .header("host", "t.example")
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("request")
    };
    let wrong = send(
        server.public,
        Version::HTTP_11,
        with_body(
            "application/x-www-form-urlencoded",
            b"List-Unsubscribe=Yes".to_vec(),
        ),
    )
    .await;
    assert_eq!(wrong.status(), 400);
    let huge = send(
        server.public,
        Version::HTTP_11,
        with_body("application/x-www-form-urlencoded", vec![b'a'; 4096]),
    )
    .await;
    assert_eq!(huge.status(), 413);
    let multipart = b"--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b--\r\n".to_vec();
    let ok = send(
        server.public,
        Version::HTTP_11,
        with_body("multipart/form-data; boundary=b", multipart),
    )
    .await;
    assert_eq!(ok.status(), 200);
    assert!(server.terminate().success());
    assert_eq!(server.events().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_on_both_listeners_and_readyz_on_admin() {
    let server = TestServer::start("");
    assert_eq!(get(server.public, "/healthz").await.status(), 200);
    assert_eq!(get(server.admin, "/healthz").await.status(), 200);
    assert_eq!(get(server.admin, "/readyz").await.status(), 200);
    assert_eq!(get(server.admin, "/nothing").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let server = TestServer::start("");
    let mut sender = common::keep_alive(server.public).await.unwrap();
    let path = server.path_for(&claims(Kind::Open, "m"));
    for _ in 0..50 {
        sender.ready().await.unwrap();
        let response = sender.send_request(request("GET", &path)).await.unwrap();
        assert_eq!(response.status(), 200);
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
    }
    assert_eq!(server.metric("trackedge_http_connections_total").await, 1.0);
    assert_eq!(
        server
            .metric("trackedge_events_emitted_total{kind=\"open\"}")
            .await,
        50.0
    );
}
