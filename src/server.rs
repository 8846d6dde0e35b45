//! Wiring and lifecycle: open the keys, the event writer and both listeners, serve
//! until the shutdown signal, then drain in order.
//!
//! Shutdown order: readiness turns 503 -> the public listener stops accepting ->
//! in-flight requests finish (bounded by `shutdown.drain_timeout_ms`) -> the spool
//! writer drains the channel into sled and fsyncs -> the forwarder delivers what the
//! spool holds for up to `forward.shutdown_grace_ms` -> the admin listener and the
//! background tasks stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::forward::{ForwardError, Forwarder};
use crate::health::Health;
use crate::idle::Idle;
use crate::keys::{KeyFileError, Keys};
use crate::metrics as m;
use crate::privacy::{Privacy, PrivacyError};
use crate::reload;
use crate::route::{self, Edge};
use crate::shutdown::{self, Signal};
use crate::slots::{Slot, Slots};
use crate::spool::{self, SpoolError};
use crate::suppression::Suppressions;
use crate::tls::{self, TlsError};

/// `reason` labels of [`m::HTTP_CONNECTION_ERRORS_TOTAL`].
const CONNECTION_ERROR_REASONS: [&str; 11] = [
    "accept",
    "tls_handshake",
    "tls_timeout",
    "http",
    "too_many_connections",
    "too_many_connections_per_peer",
    "header_timeout",
    "header_too_large",
    "bad_request",
    "idle_timeout",
    "h2_flood",
];

/// A writer that has not looped for this long is stuck: the edge turns unready.
const WRITER_DEADLINE: Duration = Duration::from_secs(5);
/// Likewise for the forwarder's read loop (upstream failures do not count: it
/// keeps looping while lanes retry).
const FORWARDER_DEADLINE: Duration = Duration::from_secs(10);

/// hyper's HTTP/1 header count limit when none is set (`DEFAULT_MAX_HEADERS` in
/// hyper's `proto::h1::role`); also the default of `public.max_headers`.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// A TLS client that has not finished its handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
    #[error("cannot load the suppression list: {0}")]
    Suppressions(crate::store::StoreError),
    #[error(transparent)]
    Enrich(#[from] crate::enrich::EnrichError),
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The addresses actually bound (port 0 in the config becomes a real port here).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

/// Runs the edge until `shutdown` fires and everything has drained.
/// `on_listening` is called once both listeners are bound.
pub async fn run(
    config: Config,
    prometheus: PrometheusHandle,
    mut shutdown: Signal,
    on_listening: impl FnOnce(Bound),
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let keys = Arc::new(Keys::open(
        config.key_file(),
        config.key_file_is_generated(),
    )?);
    let enricher = Arc::new(crate::enrich::Enricher::new(
        &config,
        crate::event::now_ms(),
    )?);
    tls::register_metrics();
    let certs = match config.public.tls.is_empty() {
        true => None,
        false => Some(Arc::new(tls::TlsCerts::load(&config.public.tls)?)),
    };
    let tls = certs
        .as_ref()
        .map(|certs| tls::acceptor(certs.clone(), config.public.http2))
        .transpose()?;
    let health = Arc::new(Health::new());
    let (events, writer, spool) = spool::start(
        &config.spool,
        health.register("spool_writer", WRITER_DEADLINE),
    )?;
    let forwarder = Forwarder::start(
        &config.forward,
        spool.clone(),
        &config.node_id,
        &health,
        FORWARDER_DEADLINE,
    )?;

    let public = bind("public", config.public.addr).await?;
    let admin_listener = bind("admin", config.admin.addr).await?;
    let bound = Bound {
        public: local_addr("public", &public)?,
        admin: local_addr("admin", &admin_listener)?,
    };

    let suppressions = Suppressions::load(spool.store.clone()).map_err(ServeError::Suppressions)?;
    let privacy = Privacy::new(&config.privacy, &config.data_dir, suppressions)?;
    let edge = Arc::new(Edge::new(
        &config,
        keys.clone(),
        events,
        enricher.clone(),
        privacy,
    ));

    // Admin and background tasks outlive the public drain so metrics stay scrapeable.
    let (stop_background, background) = shutdown::channel();
    let admin = Arc::new(Admin {
        prometheus: prometheus.clone(),
        health: health.clone(),
        bearer_token: config.admin.bearer_token.clone(),
        spool,
        forward: forwarder.status.clone(),
        edge: edge.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin, background.clone()));
    tokio::spawn(reload::watch(
        "signing keys",
        keys,
        config.tokens.reload_interval,
        background.clone(),
    ));
    if enricher.has_databases() {
        tokio::spawn(reload::watch(
            "GeoIP databases",
            enricher,
            config.geoip.reload_interval,
            background.clone(),
        ));
    }
    if let Some(certs) = certs {
        tokio::spawn(reload::watch(
            "TLS certificates",
            certs,
            config.public.tls_reload_interval,
            background.clone(),
        ));
    }
    tokio::spawn(m::upkeep(prometheus, background));

    tracing::info!(public = %bound.public, admin = %bound.admin, tls = tls.is_some(), node = %config.node_id, "trackedge listening");
    on_listening(bound);

    let graceful = GracefulShutdown::new();
    let slots = Slots::new(
        config.public.max_connections,
        config.public.max_connections_per_peer,
    );
    accept_public(
        public,
        tls,
        edge,
        (connection_builder(&config), ConnLimits::of(&config)),
        (&graceful, slots),
        &mut shutdown,
    )
    .await;

    health.set_draining();
    tracing::info!(
        connections = graceful.count(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(config.shutdown.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout = ?config.shutdown.drain_timeout,
            "connections still open after the drain timeout; closing them"
        );
    }
    writer.finish().await;
    tracing::info!(
        grace = ?config.forward.shutdown_grace,
        "spool committed; forwarding what it holds"
    );
    forwarder.finish(config.forward.shutdown_grace).await;
    stop_background.fire();
    let _ = admin_task.await;
    tracing::info!("shutdown complete");
    Ok(())
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

fn local_addr(what: &'static str, listener: &TcpListener) -> Result<SocketAddr, ServeError> {
    listener.local_addr().map_err(|source| ServeError::Bind {
        what,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

fn connection_builder(config: &Config) -> Arc<auto::Builder<TokioExecutor>> {
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

async fn accept_public(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    edge: Arc<Edge>,
    (builder, limits): (Arc<auto::Builder<TokioExecutor>>, ConnLimits),
    (graceful, slots): (&GracefulShutdown, Arc<Slots>),
    shutdown: &mut Signal,
) {
    let accepted_total = metrics::counter!(m::HTTP_CONNECTIONS_TOTAL);
    metrics::gauge!(m::HTTP_CONNECTIONS_ACTIVE).set(0.0);
    for reason in CONNECTION_ERROR_REASONS {
        // Registered up front so dashboards see a zero rather than no series.
        metrics::counter!(m::HTTP_CONNECTION_ERRORS_TOTAL, "reason" => reason).absolute(0);
    }
    let closed_idle =
        metrics::counter!(m::HTTP_CONNECTION_ERRORS_TOTAL, "reason" => "idle_timeout");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    metrics::counter!(m::HTTP_CONNECTION_ERRORS_TOTAL, "reason" => "accept").increment(1);
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
                metrics::counter!(m::HTTP_CONNECTION_ERRORS_TOTAL, "reason" => refused.as_str())
                    .increment(1);
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
struct ConnLimits {
    /// No byte moved for this long: the connection is failed (see [`crate::idle`]).
    idle_timeout: Duration,
    /// The first request must have arrived by then, counted from accept (or from the
    /// end of the TLS handshake). hyper's own header timer only starts after the
    /// auto builder has sniffed the protocol, which a client can drag out a byte at
    /// a time; this bounds the whole first head.
    first_request: Duration,
}

impl ConnLimits {
    fn of(config: &Config) -> ConnLimits {
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
                    Some("tls_handshake")
                }
                Err(_) => Some("tls_timeout"),
            }
        }
    };
    // An idle close was counted by the wrapper, whatever error it surfaced as.
    if let Some(reason) = reason.filter(|_| !idle_fired.load(Ordering::Relaxed)) {
        metrics::counter!(m::HTTP_CONNECTION_ERRORS_TOTAL, "reason" => reason).increment(1);
    }
    active.decrement(1.0);
}

/// Serves a connection until it ends or misses its first-request deadline; the
/// reason label when it ended in an error.
async fn drive<E>(
    connection: impl std::future::Future<Output = Result<(), E>>,
    first_request: impl std::future::Future<Output = ()>,
) -> Option<&'static str>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::select! {
        result = connection => match result {
            Ok(()) => None,
            Err(err) => {
                let err: Box<dyn std::error::Error + Send + Sync> = err.into();
                let reason = error_reason(&*err);
                tracing::debug!(error = %err, reason, "connection ended with an error");
                Some(reason)
            }
        },
        // Dropping the connection future closes the socket without an answer: a
        // client this slow gets no 408 it could use to probe the limit.
        () = first_request => Some("header_timeout"),
    }
}

/// The `reason` label for a connection error: what in the chain caused it. (An idle
/// close may surface as any error; the caller leaves it to the [`Idle`] wrapper.)
fn error_reason(err: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(err) = err.downcast_ref::<hyper::Error>() {
            if err.is_timeout() {
                return "header_timeout";
            }
            if err.is_parse_too_large() {
                return "header_too_large";
            }
            if err.is_parse() || err.is_parse_status() {
                return "bad_request";
            }
        }
        if let Some(err) = err.downcast_ref::<h2::Error>() {
            // What h2 sends when a client resets or errs too many streams
            // (rapid reset, h2_max_pending_reset_streams and friends).
            if err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                return "h2_flood";
            }
        }
        cause = err.source();
    }
    "http"
}
