//! The upstream the forwarder delivers to in accounting runs: an HTTP endpoint on
//! 127.0.0.1:0 that takes the sink's batches (`POST /ingest`, gzip NDJSON, one
//! event per line, an `Idempotency-Key` per batch), acknowledges each with 200, and
//! counts unique event ids and duplicates. The same counting reads the interim
//! `events.ndjson` file when the server has no forwarder yet.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;

/// A batch bigger than this (compressed or not) is refused with 413.
const MAX_BATCH_BYTES: usize = 256 << 20;

/// What arrived, by event id.
#[derive(Debug, Default)]
pub struct Ingest {
    ids: HashSet<String>,
    keys: HashSet<String>,
    pub counts: IngestCounts,
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct IngestCounts {
    pub batches: u64,
    /// Batches whose Idempotency-Key was seen before (a retried delivery).
    pub replayed_batches: u64,
    pub lines: u64,
    pub unique: u64,
    pub duplicates: u64,
    /// Lines that are not JSON objects with a string `id`.
    pub bad_lines: u64,
    pub rejected_batches: u64,
}

impl Ingest {
    /// Counts the events of one NDJSON text (a batch or the whole interim file).
    pub fn ndjson(&mut self, text: &[u8]) {
        for line in text.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.counts.lines += 1;
            let id = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("id")?.as_str().map(str::to_owned));
            match id {
                Some(id) => {
                    if self.ids.insert(id) {
                        self.counts.unique += 1;
                    } else {
                        self.counts.duplicates += 1;
                    }
                }
                None => self.counts.bad_lines += 1,
            }
        }
    }

    pub fn batch(&mut self, idempotency_key: Option<&str>, text: &[u8]) {
        self.counts.batches += 1;
        if let Some(key) = idempotency_key {
            if !self.keys.insert(key.to_owned()) {
                self.counts.replayed_batches += 1;
            }
        }
        self.ndjson(text);
    }
}

pub type Shared = Arc<Mutex<Ingest>>;

pub fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Ingest> {
    // A panic while counting cannot leave the counts torn in a way that matters here.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds 127.0.0.1:0 and serves until the runtime ends; returns the address.
pub async fn start(shared: Shared) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn reply(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != http::Method::POST || request.uri().path() != "/ingest" {
        return reply(StatusCode::NOT_FOUND, "not found\n");
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let gzip = header("content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let key = header("idempotency-key");
    let body = match Limited::new(request.into_body(), MAX_BATCH_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            lock(shared).counts.rejected_batches += 1;
            return reply(StatusCode::PAYLOAD_TOO_LARGE, "batch too large\n");
        }
    };
    let text = if gzip {
        let mut out = Vec::new();
        let decoder = flate2::read::GzDecoder::new(&body[..]);
        if decoder
            .take(MAX_BATCH_BYTES as u64)
            .read_to_end(&mut out)
            .is_err()
        {
            lock(shared).counts.rejected_batches += 1;
            return reply(StatusCode::BAD_REQUEST, "bad gzip\n");
        }
        out
    } else {
        body.to_vec()
    };
    lock(shared).batch(key.as_deref(), &text);
    reply(StatusCode::OK, "ok\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ids_are_counted_once_and_repeats_are_duplicates() {
        let mut ingest = Ingest::default();
        ingest.batch(
            Some("k1"),
            b"{\"id\":\"a\",\"kind\":\"open\"}\n{\"id\":\"b\"}\n",
        );
        ingest.batch(Some("k1"), b"{\"id\":\"b\"}\n\nnot json\n{\"no_id\":1}\n");
        assert_eq!(
            ingest.counts,
            IngestCounts {
                batches: 2,
                replayed_batches: 1,
                lines: 5,
                unique: 2,
                duplicates: 1,
                bad_lines: 2,
                rejected_batches: 0,
            }
        );
    }

    #[tokio::test]
    async fn gzip_batches_are_acknowledged_and_counted() {
        let shared = Shared::default();
        let addr = start(shared.clone()).await.unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"id\":\"x1\"}\n{\"id\":\"x2\"}\n").unwrap();
        let body = gz.finish().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::post("/ingest")
            .header("host", "127.0.0.1")
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .header("idempotency-key", "batch-1")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(lock(&shared).counts.unique, 2);
    }
}
