//! Hostile input against the real server: bounded, counted, and a real recipient
//! still served at the same time; nothing hostile is recorded and memory comes back.

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

/// What one raw exchange gave: the first status code (0: none) and whether the
/// server closed the connection afterwards.
#[derive(Debug)]
struct Exchange {
    status: u16,
    closed: bool,
    text: String,
}

/// Sends `bytes`, reads one response (head plus `content-length` body), then waits
/// up to `linger` for the server to close. A server that closes early gives what it
/// sent so far.
async fn exchange(server: &TestServer, bytes: &[u8], linger: Duration) -> Exchange {
    let mut stream = TcpStream::connect(server.public).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut closed = false;
    let head_only = bytes.starts_with(b"HEAD ");
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if head_only || answer.len() >= end + 4 + length {
                break;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    if !closed && !linger.is_zero() {
        // Anything after the first answer: a second one, then the close.
        loop {
            match tokio::time::timeout(linger, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Exchange {
        status,
        closed,
        text,
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A request head with `target` and extra raw header lines.
fn head(method: &str, target: &str, extra: &str) -> Vec<u8> {
    format!("{method} {target} HTTP/1.1\r\nHost: t.example\r\n{extra}\r\n").into_bytes()
}

/// The issue's table of bad inputs: (name, bytes, expected status, must close).
fn hostile_table() -> Vec<(String, Vec<u8>, u16, bool)> {
    let mut table: Vec<(String, Vec<u8>, u16, bool)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, status: u16, closes: bool| {
        table.push((name.to_owned(), bytes, status, closes));
    };
    // Paths: bad percent-encoding, invalid UTF-8, traversal, doubled slashes. A pixel
    // always answers its GIF (a broken image tells a prober nothing either way).
    add(
        "bad percent pixel",
        head("GET", "/o/%zz%ff.gif?%zz=%00", ""),
        200,
        false,
    );
    add(
        "bad percent click",
        head("GET", "/c/%zz%00", ""),
        404,
        false,
    );
    add(
        "encoded CRLF click",
        head("GET", "/c/%0d%0aSet-Cookie:%20x=1", ""),
        404,
        false,
    );
    add(
        "invalid UTF-8 path",
        b"GET /c/\xff\xfe\xc0\xaf HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        400,
        true,
    );
    add("dot-dot", head("GET", "/../../etc/passwd", ""), 404, false);
    add(
        "dot-dot in route",
        head("GET", "/c/../admin/spool", ""),
        404,
        false,
    );
    add("double slash", head("GET", "//o//x.gif", ""), 404, false);
    add(
        "double slash click",
        head("GET", "/c//https://evil.example", ""),
        404,
        false,
    );
    // CR, LF and NUL in every place of the head.
    add(
        "NUL in method",
        b"G\x00T /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "CR in path",
        b"GET /o/a\rb.gif HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "NUL in path",
        b"GET /o/a\x00b.gif HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "NUL in query",
        b"GET /healthz?a=\x00 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "LF in version",
        b"GET /healthz HTTP/1.\n1\r\nHost: t\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "LF in header name",
        b"GET /healthz HTTP/1.1\r\nHo\nst: t\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "space in header name",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX A: b\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "CR in header value",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "NUL in header value",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "NUL in Host",
        b"GET /healthz HTTP/1.1\r\nHost: t\x00\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "bare CR line ends",
        b"GET /healthz HTTP/1.1\rHost: t\r\r".to_vec(),
        400,
        true,
    );
    add(
        "obsolete line folding",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "NUL in forwarded-for",
        head("GET", "/o/junk.gif", "X-Forwarded-For: 1.2.3.4\x00\r\n"),
        400,
        true,
    );
    // Framing.
    add("HTTP/0.9", b"GET /healthz\r\n\r\n".to_vec(), 400, true);
    add(
        "unknown version",
        b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "binary garbage",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n".to_vec(),
        400,
        true,
    );
    add(
        "pipelined garbage",
        [
            head("GET", "/healthz", ""),
            b"\x00\x01garbage\r\n\r\n".to_vec(),
        ]
        .concat(),
        200,
        true,
    );
    add(
        "huge content-length",
        head(
            "POST",
            "/optout",
            "Content-Length: 99999999999999999999\r\n",
        ),
        400,
        true,
    );
    add(
        "content-length with chunked",
        head(
            "POST",
            "/optout",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        )
        .into_iter()
        .chain(b"0\r\n\r\n".iter().copied())
        .collect(),
        200,
        true,
    );
    let many: String = (0..100_000).map(|n| format!("X{n}: v\r\n")).collect();
    add("100k headers", head("GET", "/healthz", &many), 431, true);
    // Targets and hosts: the token, not the Host, is what is trusted; nothing is
    // ever built from the Host or an absolute-form authority.
    add(
        "absolute-form pixel",
        head("GET", "http://evil.example/o/junk.gif", ""),
        200,
        false,
    );
    add(
        "absolute-form click",
        head("GET", "http://evil.example/c/junk", ""),
        404,
        false,
    );
    add(
        "CONNECT",
        head("CONNECT", "evil.example:443", ""),
        404,
        false,
    );
    add("OPTIONS *", head("OPTIONS", "*", ""), 404, false);
    add(
        "missing Host",
        b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(),
        400,
        false,
    );
    add(
        "wrong Host",
        b"GET /c/junk HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec(),
        404,
        false,
    );
    // Every method on every route: only GET and HEAD (and POST where a route takes
    // one) get past the method check; TRACE never echoes the request.
    let routes: [(&str, u16, u16); 9] = [
        ("/o/junk.gif", 200, 405),
        ("/c/junk", 404, 405),
        ("/f/junk", 404, 405),
        ("/u/junk", 404, 404),
        ("/s/junk", 404, 404),
        ("/optout", 200, 200),
        ("/optin", 405, 200),
        ("/healthz", 200, 405),
        ("/nope", 404, 404),
    ];
    for (path, get, post) in routes {
        let other = if path == "/nope" { 404 } else { 405 };
        for (method, status) in [
            ("GET", get),
            ("HEAD", get),
            ("POST", post),
            ("OPTIONS", other),
            ("TRACE", other),
            ("PUT", other),
            ("DELETE", other),
            ("PATCH", other),
        ] {
            add(
                &format!("{method} {path}"),
                head(
                    method,
                    path,
                    "Content-Length: 0\r\nX-Secret: trace-canary\r\n",
                ),
                status,
                false,
            );
        }
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_table_is_answered_as_expected_while_a_recipient_is_served() {
    let mut server = TestServer::start("");
    let recipient = {
        let public = server.public;
        let paths: Vec<String> = (0..20)
            .map(|n| server.path_for(&claims(Kind::Open, &format!("real-{n}"))))
            .collect();
        tokio::spawn(async move {
            let mut served = 0;
            for path in paths {
                if get(public, &path).await.status() == 200 {
                    served += 1;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            served
        })
    };
    // Warm up allocator and caches so the baseline is the steady state.
    for (_, bytes, _, _) in hostile_table().into_iter().take(5) {
        exchange(&server, &bytes, Duration::from_millis(50)).await;
    }
    let baseline = rss_kib(server.pid());
    let mut failures = Vec::new();
    for round in 0..3 {
        for (name, bytes, status, closes) in hostile_table() {
            // Waiting for a close only where one is expected keeps the table fast.
            let linger = Duration::from_millis(if closes { 2000 } else { 0 });
            let answer = exchange(&server, &bytes, linger).await;
            let mut wrong = answer.status != status;
            if closes && !answer.closed {
                wrong = true;
            }
            if answer.text.contains("trace-canary") {
                wrong = true;
            }
            if wrong && round == 0 {
                failures.push(format!(
                    "{name}: expected {status} (close: {closes}), got {} (closed: {}): {:?}",
                    answer.status,
                    answer.closed,
                    answer.text.lines().next().unwrap_or("")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        recipient.await.unwrap(),
        20,
        "the recipient was served throughout"
    );
    let after = rss_kib(server.pid());
    println!("RSS baseline {baseline} KiB, after 3 rounds of the table {after} KiB");
    assert!(
        after < baseline + 32 * 1024,
        "memory grew from {baseline} KiB to {after} KiB"
    );
    assert!(
        server
            .metric("trackedge_http_connection_errors_total{reason=\"bad_request\"}")
            .await
            >= 20.0
    );
    assert!(server.terminate().success());
    assert!(!server.stderr().contains("panicked"));
    let events = server.events();
    assert_eq!(events.len(), 20, "only the recipient's opens were recorded");
    assert!(events.iter().all(|e| e["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("real-"))));
}

/// Reads until the server closes or `limit` passes; true when it closed.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// Sends `bytes` one at a time every `pause` until the server closes; returns how
/// many it took (all of them: the server never closed).
async fn dribble(server: &TestServer, prefix: &[u8], bytes: &[u8], pause: Duration) -> usize {
    let mut stream = TcpStream::connect(server.public).await.unwrap();
    stream.write_all(prefix).await.unwrap();
    for (sent, byte) in bytes.iter().enumerate() {
        if stream.write_all(&[*byte]).await.is_err() {
            return sent;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(pause, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return sent + 1,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    bytes.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_are_cut_off_at_the_header_timeout() {
    let mut server = TestServer::start("[public]\nheader_read_timeout_ms = 1000\n");
    let endless =
        b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".repeat(4);
    let pause = Duration::from_millis(100);
    // 3 s worth of bytes at one per 100 ms against a 1 s limit: each must be cut
    // off well before its bytes run out. Three places to be slow: during protocol
    // sniffing (the first bytes), in the headers of a first request, and in the
    // next request on a kept-alive connection.
    let first_request = format!(
        "GET {} HTTP/1.1\r\nHost: t\r\n\r\n",
        server.path_for(&claims(Kind::Open, "before-slow"))
    );
    let request_line_then_endless = [b"GET /healthz HTTP/1.1\r\n".as_slice(), &endless].concat();
    let (sniffing, headers, kept_alive) = tokio::join!(
        dribble(&server, b"", &request_line_then_endless[..30], pause),
        dribble(
            &server,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n",
            &endless[..30],
            pause
        ),
        dribble(
            &server,
            first_request.as_bytes(),
            &request_line_then_endless[..30],
            pause
        ),
    );
    for (what, sent) in [
        ("sniffing", sniffing),
        ("headers", headers),
        ("kept alive", kept_alive),
    ] {
        assert!(sent < 30, "{what}: the server took all 30 slow bytes");
    }
    let open = get(server.public, &server.path_for(&claims(Kind::Open, "real"))).await;
    assert_eq!(open.status(), 200);
    let counted = common::eventually(Duration::from_secs(5), || async {
        server
            .metric("trackedge_http_connection_errors_total{reason=\"header_timeout\"}")
            .await
            >= 3.0
    })
    .await;
    assert!(counted, "{}", server.metrics().await);
    assert!(server.terminate().success());
    assert_eq!(
        server.events().len(),
        2,
        "the kept-alive connection's open and the real one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_on_every_protocol() {
    let server =
        TestServer::start("[public]\nidle_timeout_ms = 500\nheader_read_timeout_ms = 20000\n");
    // Connects and says nothing: only the idle limit (not the 20 s header limit) ends it.
    let mut silent = TcpStream::connect(server.public).await.unwrap();
    // HTTP/2 with prior knowledge, one request, then no streams at all.
    let tcp = TcpStream::connect(server.public).await.unwrap();
    let (mut h2, h2_connection) = h2::client::handshake(tcp).await.unwrap();
    let h2_done = tokio::spawn(h2_connection);
    let request = http::Request::get("http://t.example/healthz")
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // HTTP/1 keep-alive after an answer the client never reads.
    let mut kept = TcpStream::connect(server.public).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();

    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "silent"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)).await,
        "kept-alive"
    );
    let h2_ended = tokio::time::timeout(Duration::from_secs(5), h2_done).await;
    assert!(
        h2_ended.is_ok(),
        "the idle HTTP/2 connection was not closed"
    );
    // The client sees the close a moment before the server counts it.
    let counted = common::eventually(Duration::from_secs(5), || async {
        server
            .metric("trackedge_http_connection_errors_total{reason=\"idle_timeout\"}")
            .await
            == 3.0
    })
    .await;
    assert!(counted, "{}", server.metrics().await);
    assert_eq!(
        server
            .metric("trackedge_http_connection_errors_total{reason=\"http\"}")
            .await,
        0.0,
        "an idle close is counted once, as idle"
    );
    assert_eq!(get(server.public, "/healthz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off_and_a_recipient_is_still_served() {
    let mut server = TestServer::start("");
    let tcp = TcpStream::connect(server.public).await.unwrap();
    let (h2, h2_connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(h2_connection);
    let flood = async move {
        let mut h2 = h2;
        for sent in 0..10_000u32 {
            let Ok(ready) = h2.ready().await else {
                return sent;
            };
            h2 = ready;
            let request = http::Request::get("http://t.example/o/junk.gif")
                .body(())
                .unwrap();
            match h2.send_request(request, false) {
                Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(_) => return sent,
            }
        }
        10_000
    };
    let sent = tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    println!("rapid reset: {sent} streams opened and reset before the server stopped it");
    assert!(sent < 10_000, "the server never stopped the reset flood");
    assert!(
        matches!(ended, Ok(Ok(Err(ref e))) if e.is_go_away() || e.is_io()),
        "expected a GOAWAY, got {ended:?}"
    );
    let open = get(server.public, &server.path_for(&claims(Kind::Open, "real"))).await;
    assert_eq!(open.status(), 200);
    let counted = common::eventually(Duration::from_secs(5), || async {
        server
            .metric("trackedge_http_connection_errors_total{reason=\"h2_flood\"}")
            .await
            == 1.0
    })
    .await;
    assert!(counted, "{}", server.metrics().await);
    assert!(server.terminate().success());
    assert_eq!(server.events().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_connection_slot() {
    let server = TestServer::start("[public]\nmax_connections_per_peer = 2\n");
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(server.public).await.unwrap(),
        TcpStream::connect(server.public).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(server.public).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(5)).await,
        "the peer's third connection was kept"
    );
    // Another peer (all of 127/8 is this host) still gets in.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let other = socket.connect(server.public).await.unwrap();
    let response = common::send_on(
        hyper_util::rt::TokioIo::new(other),
        http::Version::HTTP_11,
        common::request("GET", "/healthz"),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        server
            .metric(
                "trackedge_http_connection_errors_total{reason=\"too_many_connections_per_peer\"}"
            )
            .await,
        1.0
    );
    drop(held);
    let back = common::eventually(Duration::from_secs(5), || async {
        server.metric("trackedge_http_connections_active").await == 0.0
    })
    .await;
    assert!(back);
    assert_eq!(get(server.public, "/healthz").await.status(), 200);
}
