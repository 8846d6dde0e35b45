//! A real upstream receiver for forwarding tests: an HTTP/1.1 server on 127.0.0.1
//! that decodes gzip NDJSON batches, records every event id, and misbehaves on
//! demand (refuse, 500, 429, 400, random, slow).
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Accept = 0,
    /// Close every connection without answering.
    Hangup = 1,
    Status500 = 2,
    Status429 = 3,
    Status400 = 4,
    /// 500, 429, 400 or 200 at random.
    Random = 5,
    /// Answer 200 after 300 ms.
    Slow = 6,
}

#[derive(Default)]
pub struct Received {
    /// Event id -> how many times it arrived.
    pub ids: HashMap<String, u32>,
    pub events: Vec<serde_json::Value>,
    pub idempotency_keys: Vec<String>,
    pub authorization: Vec<String>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    pub received: Arc<Mutex<Received>>,
    pub requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(mode: Mode) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(listener, mode, None)
    }

    /// On a given address (to come back up where a "down" upstream was).
    pub async fn start_on(addr: SocketAddr, mode: Mode) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("rebind upstream");
        Self::serve(listener, mode, None)
    }

    /// Over TLS with the given server config.
    pub async fn start_tls(mode: Mode, tls: Arc<rustls::ServerConfig>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(listener, mode, Some(tokio_rustls::TlsAcceptor::from(tls)))
    }

    fn serve(
        listener: TcpListener,
        mode: Mode,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(mode as u8));
        let received = Arc::new(Mutex::new(Received::default()));
        let requests = Arc::new(AtomicU64::new(0));
        let (m, r, q) = (mode.clone(), received.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if m.load(Ordering::SeqCst) == Mode::Hangup as u8 {
                    drop(stream);
                    continue;
                }
                let (m, r, q) = (m.clone(), r.clone(), q.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (m, r, q) = (m.clone(), r.clone(), q.clone());
                        async move { Ok::<_, Infallible>(answer(request, &m, &r, &q).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            mode,
            received,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/ingest", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn distinct_ids(&self) -> usize {
        self.received.lock().unwrap().ids.len()
    }

    pub fn total_events(&self) -> u64 {
        self.received
            .lock()
            .unwrap()
            .ids
            .values()
            .map(|n| u64::from(*n))
            .sum()
    }

    /// Stops listening (the port is free again).
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

async fn answer(
    request: Request<Incoming>,
    mode: &AtomicU8,
    received: &Mutex<Received>,
    requests: &AtomicU64,
) -> Response<Full<Bytes>> {
    requests.fetch_add(1, Ordering::SeqCst);
    let status = match mode.load(Ordering::SeqCst) {
        // A kept-alive connection from before the switch cannot be hung up from
        // here: refuse on it instead, so nothing is accepted either way.
        m if m == Mode::Hangup as u8 => StatusCode::SERVICE_UNAVAILABLE,
        m if m == Mode::Status500 as u8 => StatusCode::INTERNAL_SERVER_ERROR,
        m if m == Mode::Status429 as u8 => StatusCode::TOO_MANY_REQUESTS,
        m if m == Mode::Status400 as u8 => StatusCode::BAD_REQUEST,
        m if m == Mode::Random as u8 => match rand::random::<u8>() % 4 {
            0 => StatusCode::INTERNAL_SERVER_ERROR,
            1 => StatusCode::TOO_MANY_REQUESTS,
            2 => StatusCode::BAD_REQUEST,
            _ => StatusCode::OK,
        },
        m if m == Mode::Slow as u8 => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            StatusCode::OK
        }
        _ => StatusCode::OK,
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await else {
        return response(StatusCode::BAD_REQUEST);
    };
    if status != StatusCode::OK {
        let mut answer = response(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            answer
                .headers_mut()
                .insert("retry-after", "0".parse().unwrap());
        }
        return answer;
    }
    let body = body.to_bytes();
    let gzip = parts
        .headers
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let text = if gzip {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .is_err()
        {
            return response(StatusCode::BAD_REQUEST);
        }
        text
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    let mut received = received.lock().unwrap();
    if let Some(key) = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
    {
        received.idempotency_keys.push(key.to_owned());
    }
    if let Some(auth) = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        received.authorization.push(auth.to_owned());
    }
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        *received.ids.entry(id).or_default() += 1;
        received.events.push(event);
    }
    response(StatusCode::OK)
}

fn response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
