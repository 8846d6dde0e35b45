//! The admin listener: `/metrics` (Prometheus text), `/healthz` (liveness),
//! `/readyz` (readiness) and `/admin/spool` (spool and sink state as JSON).
//! Loopback by default; when a bearer token is configured, everything but the two
//! probes requires it (load balancers need no secret).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::forward::{ForwardStatus, SinkStatus};
use crate::health::Health;
use crate::metrics as m;
use crate::shutdown::Signal;
use crate::spool::{Snapshot, Spool};

pub struct Admin {
    pub prometheus: PrometheusHandle,
    pub health: Arc<Health>,
    pub bearer_token: Option<String>,
    pub spool: Arc<Spool>,
    pub forward: Arc<ForwardStatus>,
}

#[derive(serde::Serialize)]
struct SpoolReport {
    #[serde(flatten)]
    spool: Snapshot,
    sink: SinkStatus,
}

/// Serves the admin listener until `shutdown` fires.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut shutdown: Signal) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    metrics::counter!(m::ADMIN_UNAUTHORIZED_TOTAL).absolute(0);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(error = %err, "admin accept failed");
                    continue;
                }
            },
            () = shutdown.recv() => return,
        };
        let admin = admin.clone();
        let service = hyper::service::service_fn(move |request| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(answer(&admin, &request)) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(err) = result {
                    tracing::debug!(error = %err, "admin connection ended with an error");
                },
                () = stop.recv() => {}
            }
        });
    }
}

fn answer<B>(admin: &Admin, request: &Request<B>) -> Response<Full<Bytes>> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    let path = request.uri().path();
    let protected = path == "/metrics" || path.starts_with("/admin/");
    if protected && !authorized(admin, request) {
        metrics::counter!(m::ADMIN_UNAUTHORIZED_TOTAL).increment(1);
        let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n".into());
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match admin.health.check() {
            Ok(()) => {
                metrics::gauge!(m::READY).set(1.0);
                text(StatusCode::OK, "ready\n".into())
            }
            Err(why) => {
                metrics::gauge!(m::READY).set(0.0);
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                )
            }
        },
        "/admin/spool" => {
            let report = SpoolReport {
                spool: admin.spool.snapshot(),
                sink: admin.forward.status(),
            };
            match serde_json::to_string_pretty(&report) {
                Ok(json) => {
                    let mut response = text(StatusCode::OK, json + "\n");
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    response
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n".into()),
            }
        }
        "/metrics" => {
            let mut response = text(StatusCode::OK, admin.prometheus.render());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn authorized<B>(admin: &Admin, request: &Request<B>) -> bool {
    let Some(expected) = &admin.bearer_token else {
        return true;
    };
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    constant_time_eq(presented.as_bytes(), expected.as_bytes())
}

/// Compares without stopping at the first difference, so timing does not reveal
/// how much of the token a guess got right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(constant_time_eq(b"", b""));
    }
}
