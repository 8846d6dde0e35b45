//! Wiring and lifecycle: open the keys, the event writer and both listeners, serve
//! until the shutdown signal, then drain in order.
//!
//! Shutdown order: readiness turns 503 -> the public listener stops accepting ->
//! in-flight requests finish (bounded by `shutdown.drain_timeout_ms`) -> the spool
//! writer drains the channel into sled and fsyncs -> the forwarder delivers what the
//! spool holds for up to `forward.shutdown_grace_ms` -> the admin listener and the
//! background tasks stop.

mod public;

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::forward::{ForwardError, Forwarder};
use crate::health::Health;
use crate::keys::{KeyFileError, Keys};
use crate::metrics as m;
use crate::privacy::{Privacy, PrivacyError};
use crate::reload;
use crate::route::Edge;
use crate::shutdown::{self, Signal};
use crate::slots::Slots;
use crate::spool::{self, SpoolError};
use crate::tls::{self, TlsError};
use public::ConnLimits;
pub use public::ConnectionError;

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

/// What `check-config` found: every file [`run`] loads, loaded the same way.
#[derive(Debug)]
pub struct Checked {
    /// `false` when the key file does not exist yet and `serve` will generate it.
    pub key_file_exists: bool,
    pub tls_certificates: usize,
    pub city_db: bool,
    pub asn_db: bool,
    /// The classification rules and network sets in force.
    pub classify: String,
}

/// Loads and validates everything [`run`] loads at start (signing keys, TLS
/// certificates and keys, GeoIP databases, classification rules, the sink's files),
/// without binding, creating or writing anything.
pub fn check(config: &Config) -> Result<Checked, ServeError> {
    let key_file = config.key_file();
    let key_file_exists = key_file.exists();
    if key_file_exists || !config.key_file_is_generated() {
        crate::keys::load(&key_file, false)?;
    }
    if !config.public.tls.is_empty() {
        let certs = Arc::new(tls::TlsCerts::load(&config.public.tls)?);
        tls::acceptor(certs, config.public.http2)?;
    }
    let enricher = crate::enrich::Enricher::new(config, crate::event::now_ms())?;
    crate::forward::check_sink(&config.forward)?;
    Ok(Checked {
        key_file_exists,
        tls_certificates: config.public.tls.len(),
        city_db: config.geoip.city_db.is_some(),
        asn_db: enricher.has_asn_db(),
        classify: enricher.rules_summary(),
    })
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
        health.register("spool_writer", config.health.writer_deadline),
    )?;
    let forwarder = Forwarder::start(
        &config.forward,
        spool.clone(),
        &config.node_id,
        &health,
        config.health.forwarder_deadline,
    )?;

    let public = bind("public", config.public.addr).await?;
    let admin_listener = bind("admin", config.admin.addr).await?;
    let bound = Bound {
        public: local_addr("public", &public)?,
        admin: local_addr("admin", &admin_listener)?,
    };

    let suppressions = spool.suppressions().map_err(ServeError::Suppressions)?;
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
    if let Some(rules) = enricher.operator_rules() {
        tokio::spawn(reload::watch(
            "classification rules",
            rules,
            config.classify.reload_interval,
            background.clone(),
        ));
    }
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
    tokio::spawn(m::upkeep(prometheus, background.clone()));
    tokio::spawn(crate::memory::release_when_quiet(
        config.memory.clone(),
        background.clone(),
    ));
    tokio::spawn(health.clone().publish(background));

    tracing::info!(public = %bound.public, admin = %bound.admin, tls = tls.is_some(), node = %config.node_id, "trackedge listening");
    on_listening(bound);

    let graceful = GracefulShutdown::new();
    let slots = Slots::new(
        config.public.max_connections,
        config.public.max_connections_per_peer,
    );
    public::accept(
        public,
        tls,
        edge,
        (public::connection_builder(&config), ConnLimits::of(&config)),
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
