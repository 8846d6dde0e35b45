//! The admin listener: probes, metrics, the spool's state and the privacy calls.
//!
//! - `GET /healthz` (liveness), `GET /readyz` (readiness): open, for load balancers.
//! - `GET /metrics` (Prometheus text), `GET /admin/spool` (JSON).
//! - `PUT|GET|DELETE /admin/suppressions/{tenant}/{recipient}`: the suppression list.
//! - `DELETE /admin/subjects/{tenant}/{recipient}`: erasure (spool and dead letters),
//!   suppression, and an erasure record sent upstream.
//! - `GET /admin/subjects/{tenant}/{recipient}/export`: that recipient's events still
//!   held, streamed as NDJSON.
//!
//! Loopback by default; when a bearer token is configured everything but the probes
//! requires it (config refuses a non-loopback address without one). Every privacy
//! call writes one audit log line (target `trackedge::audit`) naming the tenant and a
//! short hash of the recipient, never the recipient id itself.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Channel, Either, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::event::{now_ms, Event};
use crate::forward::{ForwardStatus, SinkStatus};
use crate::health::Health;
use crate::metrics as m;
use crate::route::Edge;
use crate::shutdown::Signal;
use crate::spool::{Snapshot, Spool};
use crate::subjects;

pub type AdminBody = Either<Full<Bytes>, Channel<Bytes>>;

/// How long an erasure waits for room in the event channel for its erasure record.
const ERASURE_RECORD_WAIT: Duration = Duration::from_secs(5);
/// How long an erasure or export waits for the writer to commit what was queued.
const HANDOFF_WAIT: Duration = Duration::from_secs(5);

pub struct Admin {
    pub prometheus: PrometheusHandle,
    pub health: Arc<Health>,
    pub bearer_token: Option<String>,
    pub spool: Arc<Spool>,
    pub forward: Arc<ForwardStatus>,
    pub edge: Arc<Edge>,
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
    for action in ["suppress", "unsuppress", "erase", "export"] {
        metrics::counter!(m::PRIVACY_ADMIN_CALLS_TOTAL, "action" => action).absolute(0);
    }
    metrics::counter!(m::PRIVACY_ERASED_EVENTS_TOTAL).absolute(0);
    publish_suppressed(&admin);
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
            async move { Ok::<_, Infallible>(answer(&admin, request).await) }
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

async fn answer<B>(admin: &Arc<Admin>, request: Request<B>) -> Response<AdminBody> {
    let path = request.uri().path().to_owned();
    let protected = path == "/metrics" || path.starts_with("/admin/");
    if protected && !authorized(admin, &request) {
        metrics::counter!(m::ADMIN_UNAUTHORIZED_TOTAL).increment(1);
        let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n".into());
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let method = request.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (segments.as_slice(), &method) {
        (["healthz"], &Method::GET | &Method::HEAD) => text(StatusCode::OK, "ok\n".into()),
        (["readyz"], &Method::GET | &Method::HEAD) => readiness(admin),
        (["metrics"], &Method::GET | &Method::HEAD) => {
            let mut response = text(StatusCode::OK, m::render(&admin.prometheus));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (["admin", "spool"], &Method::GET | &Method::HEAD) => {
            // The snapshot reads sled and walks its files: off the async workers.
            let spool = admin.spool.clone();
            match tokio::task::spawn_blocking(move || spool.snapshot()).await {
                Ok(snapshot) => json(
                    StatusCode::OK,
                    &SpoolReport {
                        spool: snapshot,
                        sink: admin.forward.status(),
                    },
                ),
                Err(err) => {
                    tracing::error!(error = %err, "spool snapshot task failed");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "spool snapshot failed\n".into(),
                    )
                }
            }
        }
        (["admin", "suppressions", tenant, recipient], _) => {
            match (decode(tenant), decode(recipient)) {
                (Some(tenant), Some(recipient)) => {
                    suppression(admin, &method, &tenant, &recipient).await
                }
                _ => text(StatusCode::BAD_REQUEST, "bad percent-encoding\n".into()),
            }
        }
        (["admin", "subjects", tenant, recipient], &Method::DELETE) => {
            match (decode(tenant), decode(recipient)) {
                (Some(tenant), Some(recipient)) => erase(admin, &tenant, &recipient).await,
                _ => text(StatusCode::BAD_REQUEST, "bad percent-encoding\n".into()),
            }
        }
        (["admin", "subjects", tenant, recipient, "export"], &Method::GET) => {
            match (decode(tenant), decode(recipient)) {
                (Some(tenant), Some(recipient)) => export(admin, tenant, recipient).await,
                _ => text(StatusCode::BAD_REQUEST, "bad percent-encoding\n".into()),
            }
        }
        (
            ["healthz" | "readyz" | "metrics"]
            | ["admin", "spool"]
            | ["admin", "subjects", _, _]
            | ["admin", "subjects", _, _, "export"],
            _,
        ) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn readiness(admin: &Admin) -> Response<AdminBody> {
    match admin.health.check() {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn suppression(
    admin: &Arc<Admin>,
    method: &Method,
    tenant: &str,
    recipient: &str,
) -> Response<AdminBody> {
    let suppressions = &admin.edge.privacy.suppressions;
    let (action, result) = match *method {
        Method::GET => {
            let suppressed = suppressions.contains(tenant, recipient);
            let status = if suppressed {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            return json(status, &serde_json::json!({ "suppressed": suppressed }));
        }
        Method::PUT => (
            "suppress",
            blocking(admin, {
                let (tenant, recipient) = (tenant.to_owned(), recipient.to_owned());
                move |admin: &Admin| admin.edge.privacy.suppressions.add(&tenant, &recipient)
            })
            .await,
        ),
        Method::DELETE => (
            "unsuppress",
            blocking(admin, {
                let (tenant, recipient) = (tenant.to_owned(), recipient.to_owned());
                move |admin: &Admin| admin.edge.privacy.suppressions.remove(&tenant, &recipient)
            })
            .await,
        ),
        _ => {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            )
        }
    };
    metrics::counter!(m::PRIVACY_ADMIN_CALLS_TOTAL, "action" => action).increment(1);
    publish_suppressed(admin);
    match result {
        Ok(changed) => {
            audit(action, tenant, recipient, &format!("changed={changed}"));
            json(StatusCode::OK, &serde_json::json!({ "changed": changed }))
        }
        Err(err) => {
            audit(action, tenant, recipient, "failed");
            tracing::error!(error = %err, "suppression list write failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n".into())
        }
    }
}

async fn erase(admin: &Arc<Admin>, tenant: &str, recipient: &str) -> Response<AdminBody> {
    metrics::counter!(m::PRIVACY_ADMIN_CALLS_TOTAL, "action" => "erase").increment(1);
    let (t, r) = (tenant.to_owned(), recipient.to_owned());
    // Suppress first so nothing new is recorded while the spool is swept; then wait
    // until what was answered before is in the spool, so the sweep finds it.
    let suppressed = blocking(admin, move |admin: &Admin| {
        admin.edge.privacy.suppressions.add(&t, &r)
    })
    .await;
    publish_suppressed(admin);
    let committed = admin.edge.events.committed(HANDOFF_WAIT).await;
    let erased = match (suppressed, committed) {
        (Ok(_), Ok(())) => subjects::erase(&admin.spool, tenant, recipient).await,
        (Err(err), _) => Err(err),
        (_, Err(err)) => {
            audit("erase", tenant, recipient, "failed");
            tracing::error!(error = %err, "erasure could not see the hand-off drained");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the spool writer is behind; repeat the call\n".into(),
            );
        }
    };
    let erased = match erased {
        Ok(erased) => erased,
        Err(err) => {
            audit("erase", tenant, recipient, "failed");
            tracing::error!(error = %err, "erasure failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "storage error\n".into());
        }
    };
    metrics::counter!(m::PRIVACY_ERASED_EVENTS_TOTAL)
        .increment(erased.events + erased.dead_letters);
    let queued = queue_erasure_record(&admin.edge, tenant, recipient).await;
    audit(
        "erase",
        tenant,
        recipient,
        &format!(
            "events={} dead_letters={} erasure_record_queued={queued}",
            erased.events, erased.dead_letters
        ),
    );
    let body = serde_json::json!({
        "removed": erased.events + erased.dead_letters,
        "spool_events": erased.events,
        "dead_letters": erased.dead_letters,
        "suppressed": true,
        "erasure_record_queued": queued,
    });
    // The local erasure is done either way; a 503 tells the caller to repeat the call
    // (it is idempotent) so the upstream hears of it too.
    let status = if queued {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

/// Queues the record that tells the upstream to erase the subject too.
async fn queue_erasure_record(edge: &Edge, tenant: &str, recipient: &str) -> bool {
    let deadline = tokio::time::Instant::now() + ERASURE_RECORD_WAIT;
    loop {
        let at_ms = now_ms();
        let id = edge.ids.next(at_ms);
        let record = Event::erasure(id, at_ms, tenant, recipient, edge.node.clone());
        match edge.events.send(record) {
            Ok(()) => return true,
            Err(crate::spool::DropReason::ChannelFull)
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return false,
        }
    }
}

async fn export(admin: &Arc<Admin>, tenant: String, recipient: String) -> Response<AdminBody> {
    metrics::counter!(m::PRIVACY_ADMIN_CALLS_TOTAL, "action" => "export").increment(1);
    // What was answered before the call is part of the export: wait until it is stored.
    if let Err(err) = admin.edge.events.committed(HANDOFF_WAIT).await {
        audit("export", &tenant, &recipient, "failed");
        tracing::error!(error = %err, "export could not see the hand-off drained");
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the spool writer is behind; repeat the call\n".into(),
        );
    }
    let (mut sender, body) = Channel::<Bytes>::new(4);
    let admin = admin.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let exported = subjects::export(&admin.spool, &tenant, &recipient, |chunk| {
            runtime
                .block_on(sender.send_data(Bytes::from(chunk)))
                .is_ok()
        });
        let outcome = match exported {
            Ok(events) => format!("events={events}"),
            Err(err) => {
                tracing::error!(error = %err, "export failed part way");
                "failed".to_owned()
            }
        };
        audit("export", &tenant, &recipient, &outcome);
    });
    let mut response = Response::new(Either::Right(body));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// Runs storage work on the blocking pool.
async fn blocking<T: Send + 'static>(
    admin: &Arc<Admin>,
    work: impl FnOnce(&Admin) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, crate::store::StoreError> {
    let admin = admin.clone();
    match tokio::task::spawn_blocking(move || work(&admin)).await {
        Ok(result) => result,
        Err(_) => Err(crate::store::StoreError::TaskFailed),
    }
}

fn publish_suppressed(admin: &Admin) {
    metrics::gauge!(m::PRIVACY_SUPPRESSED_RECIPIENTS)
        .set(admin.edge.privacy.suppressions.len() as f64);
}

/// One line per privacy call; the recipient appears only as a short hash.
fn audit(action: &str, tenant: &str, recipient: &str, outcome: &str) {
    let digest = Sha256::new()
        .chain_update(tenant.as_bytes())
        .chain_update([0])
        .chain_update(recipient.as_bytes())
        .finalize();
    let subject: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    tracing::info!(target: "trackedge::audit", action, tenant, subject, outcome, "privacy admin call");
}

/// Percent-decodes one path segment (UTF-8 required).
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = segment.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.is_empty()).then_some(text)
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

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<AdminBody> {
    match serde_json::to_string_pretty(value) {
        Ok(body) => {
            let mut response = text(status, body + "\n");
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode\n".into()),
    }
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

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(decode("r%201").as_deref(), Some("r 1"));
        assert_eq!(decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(decode("plain").as_deref(), Some("plain"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("%FF"), None, "not UTF-8");
        assert_eq!(decode(""), None);
    }
}
