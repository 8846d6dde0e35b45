//! Hostile input against the real server: bounded, counted, and a real recipient
//! still served. (The first slice of the hardening work: URI, header and
//! connection limits.)

mod common;

use std::time::Duration;

use common::{claims, get, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trackedge::Kind;

/// Sends raw bytes and returns what came back before the server closed or 5 s passed.
async fn raw(server: &TestServer, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.public).await.unwrap();
    // The server may answer and close before all of a huge request is written.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_and_a_recipient_is_still_served() {
    let mut server = TestServer::start("[public]\nmax_uri_bytes = 1024\n");
    let long_uri = format!(
        "GET /o/{}.gif HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "A".repeat(2000)
    );
    assert!(raw(&server, long_uri.as_bytes())
        .await
        .starts_with("HTTP/1.1 414"));
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Junk: {}\r\n\r\n",
        "j".repeat(1 << 20)
    );
    assert!(raw(&server, huge_header.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for n in 0..500 {
        many.push_str(&format!("X-H{n}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(raw(&server, many.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    for garbage in [
        &b"\x00\x01\x02 garbage\r\n\r\n"[..],
        b"GET /o/\xff\xfe.gif HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let answer = raw(&server, garbage).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer:?}"
        );
    }
    let open = get(server.public, &server.path_for(&claims(Kind::Open, "real"))).await;
    assert_eq!(open.status(), 200, "a real recipient is served");
    assert_eq!(
        server
            .metric("trackedge_http_errors_total{reason=\"uri_too_long\"}")
            .await,
        1.0
    );
    assert!(server.terminate().success());
    assert_eq!(server.events().len(), 1, "nothing hostile was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    let server = TestServer::start("[public]\nmax_connections = 2\n");
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(server.public).await.unwrap(),
        TcpStream::connect(server.public).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(server.public).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection was not closed: {read:?}"
    );
    assert_eq!(
        server
            .metric("trackedge_http_connection_errors_total{reason=\"too_many_connections\"}")
            .await,
        1.0
    );
    drop(held);
    let released = common::eventually(Duration::from_secs(5), || async {
        server.metric("trackedge_http_connections_active").await == 0.0
    })
    .await;
    assert!(released, "closed connections give their slots back");
    let open = get(
        server.public,
        &server.path_for(&claims(Kind::Open, "after")),
    )
    .await;
    assert_eq!(open.status(), 200, "slots come back when connections close");
}
