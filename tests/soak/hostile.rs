//! The hostile clients of the soak test, all on 127.0.0.1 and all stopped at one
//! deadline: slowloris heads, idle TCP and HTTP/2 connections, garbage and pipelined
//! garbage, oversized heads, junk / tampered / expired / wrong-kind tokens, an
//! HTTP/2 rapid-reset client, and a flood of valid open tokens from one client
//! network (which the recording limit drops). Connection holders reconnect when the
//! server closes them, so their number stays near the configured count; request
//! senders are paced, so the load is bounded in rate as well as time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use trackedge::{Claims, KeyRing, Kind};

/// How much of each attack to run.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub slowloris: u32,
    pub idle_tcp: u32,
    pub idle_h2: u32,
    /// Requests per second of valid open tokens from the flood network.
    pub flood_rate: u32,
    /// Junk-token requests per second.
    pub junk_rate: u32,
    /// Garbage connections per second.
    pub garbage_rate: u32,
    /// Oversized heads per second.
    pub huge_rate: u32,
    /// HTTP/2 streams opened and reset per second (at most).
    pub reset_rate: u32,
}

impl Mix {
    /// Connections the attack holds open at once (at most, roughly): the holders,
    /// two flood lanes, the junk lane, the rapid-reset client, and one each for the
    /// garbage and oversized-head senders.
    pub fn held_connections(&self) -> u32 {
        self.slowloris + self.idle_tcp + self.idle_h2 + 2 + 1 + 1 + 2
    }
}

/// Counts, shared by the attacking tasks.
#[derive(Debug, Default)]
pub struct Stats {
    pub slowloris_connections: AtomicU64,
    /// Slowloris and idle connections the server closed (rather than the deadline).
    pub closed_by_server: AtomicU64,
    pub idle_connections: AtomicU64,
    pub garbage_sent: AtomicU64,
    /// Garbage answered with a 4xx (the rest were closed without an answer).
    pub garbage_4xx: AtomicU64,
    pub huge_sent: AtomicU64,
    pub huge_431: AtomicU64,
    pub junk_sent: AtomicU64,
    /// Junk answers that were not the safe ones (a GIF, or a 404 without Location).
    pub junk_wrong: AtomicU64,
    pub h2_connections: AtomicU64,
    pub h2_resets: AtomicU64,
    /// Valid flood opens answered with the GIF.
    pub flood_answered: AtomicU64,
    pub flood_errors: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Runs every attack on its own thread and runtime until `until`.
pub fn run(addr: SocketAddr, keys: KeyRing, mix: Mix, until: Instant, stats: Arc<Stats>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("hostile client runtime");
    runtime.block_on(async move {
        let keys = Arc::new(keys);
        let mut tasks = tokio::task::JoinSet::new();
        // Connection holders are cut off at the deadline wherever they are.
        for n in 0..mix.slowloris {
            let stats = stats.clone();
            tasks.spawn(async move {
                // Spread the connects over the first second.
                tokio::time::sleep(Duration::from_millis(u64::from(n) * 1000 / 400)).await;
                let _ = tokio::time::timeout_at(until, slowloris(addr, &stats)).await;
            });
        }
        for n in 0..mix.idle_tcp {
            let stats = stats.clone();
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(u64::from(n) * 1000 / 200)).await;
                let _ = tokio::time::timeout_at(until, idle_tcp(addr, &stats)).await;
            });
        }
        for _ in 0..mix.idle_h2 {
            let stats = stats.clone();
            tasks.spawn(async move {
                let _ = tokio::time::timeout_at(until, idle_h2(addr, &stats)).await;
            });
        }
        let paced = |rate: u32| Duration::from_secs(1) / rate.max(1);
        let s = stats.clone();
        tasks.spawn(async move {
            let _ =
                tokio::time::timeout_at(until, garbage(addr, paced(mix.garbage_rate), &s)).await;
        });
        let s = stats.clone();
        tasks.spawn(async move {
            let _ =
                tokio::time::timeout_at(until, huge_heads(addr, paced(mix.huge_rate), &s)).await;
        });
        let s = stats.clone();
        tasks.spawn(async move {
            let _ = tokio::time::timeout_at(until, rapid_reset(addr, mix.reset_rate, &s)).await;
        });
        // Request senders finish the request in flight, so every answered flood
        // request is accounted for exactly.
        for lane in 0..2 {
            let (s, k) = (stats.clone(), keys.clone());
            let period = paced(mix.flood_rate) * 2;
            tasks.spawn(async move { flood(addr, &k, lane, period, until, &s).await });
        }
        let (s, k) = (stats.clone(), keys.clone());
        tasks.spawn(async move { junk(addr, &k, paced(mix.junk_rate), until, &s).await });
        while let Some(task) = tasks.join_next().await {
            task.expect("hostile task does not panic");
        }
    });
}

/// A connection to the edge, retried while it refuses (the attack may hold many).
async fn tcp(addr: SocketAddr) -> TcpStream {
    loop {
        match TcpStream::connect(addr).await {
            Ok(stream) => return stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A request head sent one byte every 200 ms, never finished.
async fn slowloris(addr: SocketAddr, stats: &Stats) {
    loop {
        let mut stream = tcp(addr).await;
        add(&stats.slowloris_connections, 1);
        let head = b"GET /healthz HTTP/1.1\r\nHost: t.example\r\nX-Slow: ";
        let mut sent = 0usize;
        loop {
            let byte = head.get(sent).copied().unwrap_or(b'a');
            if stream.write_all(&[byte]).await.is_err() || server_closed(&stream) {
                add(&stats.closed_by_server, 1);
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// True when the server closed (or answered and is closing) the connection.
fn server_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match stream.try_read(&mut buf) {
        Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
        Ok(_) => true,
    }
}

/// Connects and sends nothing.
async fn idle_tcp(addr: SocketAddr, stats: &Stats) {
    loop {
        let mut stream = tcp(addr).await;
        add(&stats.idle_connections, 1);
        let mut buf = [0u8; 64];
        // Returns (0 bytes or an error) once the server closes it.
        let _ = stream.read(&mut buf).await;
        add(&stats.closed_by_server, 1);
    }
}

/// An HTTP/2 connection that makes one request and then sits idle (no stream, no
/// byte): only the idle limit closes it.
async fn idle_h2(addr: SocketAddr, stats: &Stats) {
    loop {
        let Ok(stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        add(&stats.idle_connections, 1);
        if let Ok((client, connection)) = h2::client::handshake(stream).await {
            let driver = tokio::spawn(connection);
            let request = http::Request::get(format!("http://{addr}/healthz"))
                .body(())
                .expect("valid request");
            let answered = async {
                let mut client = client.ready().await.ok()?;
                let (response, _) = client.send_request(request, true).ok()?;
                response.await.ok()?;
                Some(client)
            };
            // The client handle stays alive so the connection is not closed from here.
            let _client = answered.await;
            let _ = driver.await;
        }
        add(&stats.closed_by_server, 1);
    }
}

fn garbage_payload(n: u64) -> Vec<u8> {
    match n % 7 {
        0 => (0..512).map(|_| rand::random::<u8>()).collect(),
        1 => b"\x00\x01\x02 garbage\r\n\r\n".to_vec(),
        // A good request with garbage pipelined behind it.
        2 => b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGARB\x01\x02 /?? HTTP/9.9\r\n\r\n".to_vec(),
        3 => b"POST /u/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"
            .to_vec(),
        4 => b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"
            .to_vec(),
        // The HTTP/2 preface, then a frame header announcing a huge, unsent frame.
        5 => {
            let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01]);
            bytes.extend((0..64).map(|_| rand::random::<u8>()));
            bytes
        }
        // A TLS ClientHello's start on the plain port.
        _ => vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
    }
}

async fn garbage(addr: SocketAddr, period: Duration, stats: &Stats) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    for n in 0.. {
        ticks.tick().await;
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        add(&stats.garbage_sent, 1);
        let _ = stream.write_all(&garbage_payload(n)).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        if answer.windows(10).any(|w| w.starts_with(b"HTTP/1.1 4")) {
            add(&stats.garbage_4xx, 1);
        }
    }
}

/// A 20 KiB header (over `max_header_bytes`), then 400 small headers.
async fn huge_heads(addr: SocketAddr, period: Duration, stats: &Stats) {
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Junk: {}\r\n\r\n",
        "j".repeat(20 << 10)
    );
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for n in 0..400 {
        many.push_str(&format!("X-H{n}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    for n in 0u64.. {
        ticks.tick().await;
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            continue;
        };
        add(&stats.huge_sent, 1);
        let head = if n % 2 == 0 { &big } else { &many };
        // The server may answer and close before all of it is written.
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/1.1 431") {
            add(&stats.huge_431, 1);
        }
    }
}

/// HTTP/2 streams opened and reset at once (CVE-2023-44487), reconnecting whenever
/// the server sends GOAWAY.
async fn rapid_reset(addr: SocketAddr, rate: u32, stats: &Stats) {
    const BURST: u32 = 20;
    let pause = Duration::from_secs(1) * BURST / rate.max(1);
    loop {
        let Ok(stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok((mut client, connection)) = h2::client::handshake(stream).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        add(&stats.h2_connections, 1);
        let driver = tokio::spawn(connection);
        'streams: loop {
            for _ in 0..BURST {
                client = match client.ready().await {
                    Ok(client) => client,
                    Err(_) => break 'streams,
                };
                let request = http::Request::get(format!("http://{addr}/healthz"))
                    .body(())
                    .expect("valid request");
                match client.send_request(request, false) {
                    Ok((_response, mut stream)) => {
                        stream.send_reset(h2::Reason::CANCEL);
                        add(&stats.h2_resets, 1);
                    }
                    Err(_) => break 'streams,
                }
            }
            tokio::time::sleep(pause).await;
        }
        driver.abort();
        tokio::time::sleep(pause).await;
    }
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    crate::common::keep_alive(addr).await.ok()
}

/// One request on a kept-alive connection (reconnecting when needed): status,
/// Location, body length.
async fn send(
    addr: SocketAddr,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    request: http::Request<Full<Bytes>>,
) -> Option<(http::StatusCode, Option<String>, usize)> {
    let result = async {
        if sender.is_none() {
            *sender = connect(addr).await;
        }
        let client = sender.as_mut()?;
        client.ready().await.ok()?;
        let response = client.send_request(request).await.ok()?;
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, location, body.len()))
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), result)
        .await
        .ok()
        .flatten();
    if answer.is_none() {
        *sender = None;
    }
    answer
}

fn claims(kind: Kind, message: String) -> Claims {
    Claims {
        campaign: "hostile".into(),
        recipient: None,
        link: 1,
        target: kind
            .has_target()
            .then(|| "https://evil.example/".to_owned()),
        ..crate::common::claims(kind, &message)
    }
}

/// Valid open tokens, as fast as `period` allows, from hosts of one /24 (behind the
/// trusted proxy, with a spoofed left-most hop that must not count).
async fn flood(
    addr: SocketAddr,
    keys: &KeyRing,
    lane: u64,
    period: Duration,
    until: Instant,
    stats: &Stats,
) {
    let mut sender = None;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    for n in 0u64.. {
        ticks.tick().await;
        if Instant::now() >= until {
            return;
        }
        let message = format!("flood-{lane}-{n}");
        let path = trackedge::mint_url("", keys, &claims(Kind::Open, message)).expect("sign");
        let xff = format!("198.18.0.1, 203.0.113.{}", n % 250 + 1);
        let request = crate::common::request_with("GET", &path, &[("x-forwarded-for", &xff)]);
        match send(addr, &mut sender, request).await {
            Some((status, _, 43)) if status == 200 => add(&stats.flood_answered, 1),
            _ => add(&stats.flood_errors, 1),
        }
    }
}

/// Flips one character in the middle of a token path.
fn tamper(path: &str) -> String {
    let mut bytes = path.as_bytes().to_vec();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("token paths are ASCII")
}

/// Junk, tampered, expired and wrong-kind tokens: pixels must still answer the GIF,
/// clicks a 404 without a Location; none may be recorded.
async fn junk(addr: SocketAddr, keys: &KeyRing, period: Duration, until: Instant, stats: &Stats) {
    let mut sender = None;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    for n in 0u64.. {
        ticks.tick().await;
        if Instant::now() >= until {
            return;
        }
        let mint = |kind, expired: bool| {
            let mut claims = claims(kind, format!("junk-{n}"));
            if expired {
                claims.expires_at = Some(1);
            }
            trackedge::mint_url("", keys, &claims).expect("sign")
        };
        let (path, pixel) = match n % 6 {
            0 => (format!("/o/junk{n}.gif"), true),
            1 => (format!("/c/{}", "x".repeat(64)), false),
            2 => (tamper(&mint(Kind::Open, false)), true),
            3 => (tamper(&mint(Kind::Click, false)), false),
            4 => (mint(Kind::Click, true), false),
            // An open token on the click route.
            _ => (
                mint(Kind::Open, false)
                    .replace("/o/", "/c/")
                    .replace(".gif", ""),
                false,
            ),
        };
        add(&stats.junk_sent, 1);
        let answer = send(addr, &mut sender, crate::common::request("GET", &path)).await;
        let safe = match answer {
            Some((status, None, 43)) if pixel => status == 200,
            Some((status, None, _)) if !pixel => status == 404,
            _ => false,
        };
        if !safe {
            add(&stats.junk_wrong, 1);
        }
    }
}
