//! The good clients of the soak test: opens and clicks with valid signed tokens at a
//! steady rate over a few kept-alive HTTP/1.1 connections, plus one lane that opens a
//! fresh connection per request (it proves new clients still get in while hostile
//! ones hold many connections). Every request carries a unique message id and comes
//! from its own client network (`X-Forwarded-For` through the trusted 127.0.0.1), so
//! the per-network recording limit never applies to it. Every answer is checked:
//! a 43-byte GIF for an open, a 302 to the signed target for a click.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use tokio::time::{Instant, MissedTickBehavior};
use trackedge::{Claims, KeyRing, Kind};

/// What the good clients of one phase saw.
#[derive(Debug, Default)]
pub struct GoodReport {
    /// Request latency on the kept-alive connections (send to full body).
    pub latencies: Vec<Duration>,
    /// Connect + request latency on the fresh-connection lane.
    pub fresh_latencies: Vec<Duration>,
    /// Message ids of the requests answered as they should be.
    pub answered: Vec<String>,
    /// Requests that failed or were answered wrongly, with what went wrong.
    pub failures: Vec<String>,
}

impl GoodReport {
    fn merge(&mut self, other: GoodReport) {
        self.latencies.extend(other.latencies);
        self.fresh_latencies.extend(other.fresh_latencies);
        self.answered.extend(other.answered);
        self.failures.extend(other.failures);
    }
}

/// One phase of good load.
pub struct GoodLoad {
    pub addr: SocketAddr,
    pub keys: KeyRing,
    /// Message ids are `<prefix>-<n>`, `n` unique across phases (`next`).
    pub prefix: &'static str,
    pub next: Arc<AtomicU64>,
    /// Requests per second over all kept-alive lanes.
    pub rate: u32,
    pub keep_alive_lanes: u32,
    /// Requests per second on the fresh-connection lane (0: none).
    pub fresh_rate: u32,
    pub duration: Duration,
}

/// Runs the phase on its own thread and runtime (so hostile clients in this process
/// do not delay its timers) and returns what it saw.
pub fn run(load: GoodLoad) -> GoodReport {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("good client runtime");
    runtime.block_on(async move {
        let load = Arc::new(load);
        let until = Instant::now() + load.duration;
        let mut lanes = tokio::task::JoinSet::new();
        let period = Duration::from_secs(1) * load.keep_alive_lanes / load.rate;
        for _ in 0..load.keep_alive_lanes {
            lanes.spawn(lane(load.clone(), false, period, until));
        }
        if load.fresh_rate > 0 {
            let period = Duration::from_secs(1) / load.fresh_rate;
            lanes.spawn(lane(load.clone(), true, period, until));
        }
        let mut report = GoodReport::default();
        while let Some(lane) = lanes.join_next().await {
            report.merge(lane.expect("good lane does not panic"));
        }
        report
    })
}

/// The client network of request `n`: one of 4096 /24s, so no network comes near
/// the recording limit at the rates used here.
fn client_ip(n: u64) -> String {
    format!("10.{}.{}.1", (n / 256) % 16, n % 256)
}

async fn lane(load: Arc<GoodLoad>, fresh: bool, period: Duration, until: Instant) -> GoodReport {
    let mut report = GoodReport::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        if Instant::now() >= until {
            return report;
        }
        let n = load.next.fetch_add(1, Ordering::Relaxed);
        let message = format!("{}-{n}", load.prefix);
        let kind = if n % 2 == 0 { Kind::Open } else { Kind::Click };
        let target = format!("https://shop.example/landing?m={message}");
        let claims = Claims {
            campaign: "soak".into(),
            recipient: Some(format!("rcpt-{n}")),
            link: u32::from(kind == Kind::Click),
            target: (kind == Kind::Click).then(|| target.clone()),
            ..crate::common::claims(kind, &message)
        };
        let path = trackedge::mint_url("", &load.keys, &claims).expect("sign");
        let request =
            crate::common::request_with("GET", &path, &[("x-forwarded-for", &client_ip(n))]);
        let started = Instant::now();
        if fresh {
            sender = None;
        }
        let result = async {
            if sender.is_none() {
                sender = Some(connect(load.addr).await?);
            }
            let sender = sender.as_mut().expect("connected above");
            sender
                .ready()
                .await
                .map_err(|e| format!("not ready: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body failed: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), result).await;
        let latency = started.elapsed();
        let outcome = match answer {
            Err(_) => Err("no answer within 10 s".to_owned()),
            Ok(Err(err)) => Err(err),
            Ok(Ok((parts, body))) => check(kind, &target, &parts, &body),
        };
        match outcome {
            Ok(()) => {
                match fresh {
                    true => report.fresh_latencies.push(latency),
                    false => report.latencies.push(latency),
                }
                report.answered.push(message);
            }
            Err(err) => {
                // The connection may be broken: start over on a new one.
                sender = None;
                report.failures.push(format!("{message} ({kind:?}): {err}"));
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    crate::common::keep_alive(addr).await
}

fn check(
    kind: Kind,
    target: &str,
    parts: &http::response::Parts,
    body: &Bytes,
) -> Result<(), String> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let ok = match kind {
        Kind::Open => {
            parts.status == 200 && header("content-type") == Some("image/gif") && body.len() == 43
        }
        _ => parts.status == 302 && header("location") == Some(target),
    };
    match ok {
        true => Ok(()),
        false => Err(format!(
            "wrong answer {} location {:?} body {} bytes",
            parts.status,
            header("location"),
            body.len()
        )),
    }
}
