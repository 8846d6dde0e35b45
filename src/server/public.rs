//! The public listener's connections: accept under the caps, the idle wrapper,
//! TLS, hyper, the first-request deadline, and why a connection ended.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics::Counter;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::idle::Idle;
use crate::metrics as m;
use crate::route::{self, Edge};
use crate::shutdown::Signal;
use crate::slots::{Refused, Slot, Slots};

/// A TLS client that has not finished its handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper's HTTP/1 header count limit when none is set (`DEFAULT_MAX_HEADERS` in
/// hyper's `proto::h1::role`); also the default of `public.max_headers`.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Why a public connection was refused or ended in error; `as_str` is the `reason`
/// label of `trackedge_http_connection_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionError {
    Accept,
    TlsHandshake,
    TlsTimeout,
    Http,
    TooManyConnections,
    TooManyConnectionsPerPeer,
    HeaderTimeout,
    HeaderTooLarge,
    BadRequest,
    IdleTimeout,
    H2Flood,
}

impl ConnectionError {
    pub const ALL: [ConnectionError; 11] = [
        ConnectionError::Accept,
        ConnectionError::TlsHandshake,
        ConnectionError::TlsTimeout,
        ConnectionError::Http,
        ConnectionError::TooManyConnections,
        ConnectionError::TooManyConnectionsPerPeer,
        ConnectionError::HeaderTimeout,
        ConnectionError::HeaderTooLarge,
        ConnectionError::BadRequest,
        ConnectionError::IdleTimeout,
        ConnectionError::H2Flood,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionError::Accept => "accept",
            ConnectionError::TlsHandshake => "tls_handshake",
            ConnectionError::TlsTimeout => "tls_timeout",
            ConnectionError::Http => "http",
            ConnectionError::TooManyConnections => "too_many_connections",
            ConnectionError::TooManyConnectionsPerPeer => "too_many_connections_per_peer",
            ConnectionError::HeaderTimeout => "header_timeout",
            ConnectionError::HeaderTooLarge => "header_too_large",
            ConnectionError::BadRequest => "bad_request",
            ConnectionError::IdleTimeout => "idle_timeout",
            ConnectionError::H2Flood => "h2_flood",
        }
    }

    fn counter(self) -> Counter {
        metrics::counter!(m::HTTP_CONNECTION_ERRORS_TOTAL, "reason" => self.as_str())
    }
}

impl From<Refused> for ConnectionError {
    fn from(refused: Refused) -> ConnectionError {
        match refused {
            Refused::Global => ConnectionError::TooManyConnections,
            Refused::Peer => ConnectionError::TooManyConnectionsPerPeer,
        }
    }
}

/// hyper's builder with the listener's limits.
pub(super) fn connection_builder(config: &Config) -> Arc<auto::Builder<TokioExecutor>> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if !config.public.http2 {
        builder = builder.http1_only();
    }
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(config.public.header_read_timeout)
        .max_buf_size(config.public.max_header_bytes)
        .keep_alive(true);
    // hyper parses into an inline array of its default size (100) unless a limit is
    // set; a set limit, even the same number, makes it build and fill a new array of
    // that size for every request (about 1,700 instructions per request).
    if config.public.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        http1.max_headers(config.public.max_headers);
    }
    if config.public.http2 {
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.public.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(config.public.h2_max_pending_reset_streams)
            .max_local_error_reset_streams(config.public.h2_max_local_error_reset_streams)
            .max_header_list_size(config.public.max_header_bytes as u32);
    }
    Arc::new(builder)
}

/// Accepts public connections until `shutdown` fires.
pub(super) async fn accept(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    edge: Arc<Edge>,
    (builder, limits): (Arc<auto::Builder<TokioExecutor>>, ConnLimits),
    (graceful, slots): (&GracefulShutdown, Arc<Slots>),
    shutdown: &mut Signal,
) {
    let accepted_total = metrics::counter!(m::HTTP_CONNECTIONS_TOTAL);
    metrics::gauge!(m::HTTP_CONNECTIONS_ACTIVE).set(0.0);
    for reason in ConnectionError::ALL {
        // Registered up front so dashboards see a zero rather than no series.
        reason.counter().absolute(0);
    }
    let closed_idle = ConnectionError::IdleTimeout.counter();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    ConnectionError::Accept.counter().increment(1);
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.recv() => return,
        };
        accepted_total.increment(1);
        // Past a cap a connection is closed at once: cheap, and the client knows.
        let slot = match slots.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                ConnectionError::from(refused).counter().increment(1);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            slot,
            Idle::new(stream, limits.idle_timeout, closed_idle.clone()),
            peer,
            tls.clone(),
            edge.clone(),
            (builder.clone(), limits),
            graceful.watcher(),
        ));
    }
}

/// The per-connection time limits that hyper does not enforce by itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnLimits {
    /// No byte moved for this long: the connection is failed (see [`crate::idle`]).
    idle_timeout: Duration,
    /// The first request must have arrived by then, counted from accept (or from the
    /// end of the TLS handshake). hyper's own header timer only starts after the
    /// auto builder has sniffed the protocol, which a client can drag out a byte at
    /// a time; this bounds the whole first head.
    first_request: Duration,
}

impl ConnLimits {
    pub(super) fn of(config: &Config) -> ConnLimits {
        ConnLimits {
            idle_timeout: config.public.idle_timeout,
            first_request: config.public.header_read_timeout,
        }
    }
}

type PublicIo = Idle<TcpStream>;

async fn serve_connection(
    _slot: Slot,
    stream: PublicIo,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    edge: Arc<Edge>,
    (builder, limits): (Arc<auto::Builder<TokioExecutor>>, ConnLimits),
    watcher: hyper_util::server::graceful::Watcher,
) {
    let active = metrics::gauge!(m::HTTP_CONNECTIONS_ACTIVE);
    active.increment(1.0);
    let idle_fired = stream.fired();
    let peer_ip = peer.ip();
    let served = Arc::new(AtomicBool::new(false));
    let service = {
        let served = served.clone();
        hyper::service::service_fn(move |request| {
            served.store(true, Ordering::Relaxed);
            let edge = edge.clone();
            async move { Ok::<_, Infallible>(route::handle(&edge, request, peer_ip).await) }
        })
    };
    let first_request = async {
        tokio::time::sleep(limits.first_request).await;
        if served.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let reason = match tls {
        None => {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            drive(watcher.watch(connection.into_owned()), first_request).await
        }
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    drive(watcher.watch(connection.into_owned()), first_request).await
                }
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    Some(ConnectionError::TlsHandshake)
                }
                Err(_) => Some(ConnectionError::TlsTimeout),
            }
        }
    };
    // An idle close was counted by the wrapper, whatever error it surfaced as.
    if let Some(reason) = reason.filter(|_| !idle_fired.load(Ordering::Relaxed)) {
        reason.counter().increment(1);
    }
    active.decrement(1.0);
}

/// Serves a connection until it ends or misses its first-request deadline; the
/// reason label when it ended in an error.
async fn drive<E>(
    connection: impl std::future::Future<Output = Result<(), E>>,
    first_request: impl std::future::Future<Output = ()>,
) -> Option<ConnectionError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::select! {
        result = connection => match result {
            Ok(()) => None,
            Err(err) => {
                let err: Box<dyn std::error::Error + Send + Sync> = err.into();
                let reason = error_reason(&*err);
                tracing::debug!(error = %err, reason = reason.as_str(), "connection ended with an error");
                Some(reason)
            }
        },
        // Dropping the connection future closes the socket without an answer: a
        // client this slow gets no 408 it could use to probe the limit.
        () = first_request => Some(ConnectionError::HeaderTimeout),
    }
}

/// The `reason` label for a connection error: what in the chain caused it. (An idle
/// close may surface as any error; the caller leaves it to the [`Idle`] wrapper.)
fn error_reason(err: &(dyn std::error::Error + 'static)) -> ConnectionError {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(err) = err.downcast_ref::<hyper::Error>() {
            if err.is_timeout() {
                return ConnectionError::HeaderTimeout;
            }
            if err.is_parse_too_large() {
                return ConnectionError::HeaderTooLarge;
            }
            if err.is_parse() || err.is_parse_status() {
                return ConnectionError::BadRequest;
            }
        }
        if let Some(err) = err.downcast_ref::<h2::Error>() {
            // What h2 sends when a client resets or errs too many streams
            // (rapid reset, h2_max_pending_reset_streams and friends).
            if err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                return ConnectionError::H2Flood;
            }
        }
        cause = err.source();
    }
    ConnectionError::Http
}
