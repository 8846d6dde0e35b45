//! TLS for the public listener: rustls (ring provider), TLS 1.2 and 1.3 only, ALPN
//! h2 and http/1.1, several certificates chosen by SNI, reloaded from disk without
//! a restart.
//!
//! The first configured certificate answers clients that send no SNI or an unknown
//! name; the others answer their `server_names` (exact, or `*.example.com` for one
//! label). A PEM that cannot be read, or a key that does not match its certificate,
//! stops the start with a message naming the file.
//!
//! Reload: [`crate::reload::watch`] re-reads every certificate and key when one of
//! the files changes (a new [`crate::reload::FileStamp`], polled every
//! `public.tls_reload_interval_ms`) and on SIGHUP. The whole SNI table is built first and swapped in at once
//! (`arc-swap`), so a handshake sees either the old set or the new one, never a
//! mix; a file that fails to load leaves the old set in force, logged and counted
//! (`trackedge_tls_reloads_total{result="error"}`). Connections already open keep
//! the certificate they were served.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsCertConfig;
use crate::metrics as m;
use crate::reload::{FileStamp, LastSeen, Reloadable};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("config key `public.tls[{index}].cert_path`: TLS certificate file {path}: {message}")]
    Certificate {
        index: usize,
        path: PathBuf,
        message: String,
    },
    #[error("config key `public.tls[{index}].key_path`: TLS key file {path}: {message}")]
    Key {
        index: usize,
        path: PathBuf,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// The configured certificates, the SNI table in force and what reloading needs.
pub struct TlsCerts {
    configs: Vec<TlsCertConfig>,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<SniTable>,
    /// Stamps of every cert and key file, in `configs` order, as last seen.
    last_seen: LastSeen<Vec<Option<FileStamp>>>,
}

impl TlsCerts {
    /// Loads every configured certificate (at least one); any failure is an error.
    pub fn load(configs: &[TlsCertConfig]) -> Result<TlsCerts, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Stamped before reading: a file replaced meanwhile is seen as changed.
        let last_seen = LastSeen::new(stamps(configs));
        let table = SniTable::load(configs, &provider)?;
        Ok(TlsCerts {
            last_seen,
            configs: configs.to_vec(),
            provider,
            current: ArcSwap::from_pointee(table),
        })
    }

    /// Re-reads every file; on error the certificates in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        match SniTable::load(&self.configs, &self.provider) {
            Ok(table) => {
                self.current.store(Arc::new(table));
                metrics::counter!(m::TLS_RELOADS_TOTAL, "result" => "ok").increment(1);
                tracing::info!(
                    certificates = self.configs.len(),
                    "TLS certificates reloaded"
                );
                Ok(())
            }
            Err(err) => {
                metrics::counter!(m::TLS_RELOADS_TOTAL, "result" => "error").increment(1);
                tracing::warn!(error = %err, "TLS reload failed; the previous certificates stay in force");
                Err(err)
            }
        }
    }

    fn resolve(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.current.load().for_name(name)
    }
}

/// Exports the reload counters at zero, with or without TLS, so dashboards and
/// alerts on them never see a missing series.
pub fn register_metrics() {
    for result in ["ok", "error"] {
        metrics::counter!(m::TLS_RELOADS_TOTAL, "result" => result).absolute(0);
    }
}

fn stamps(configs: &[TlsCertConfig]) -> Vec<Option<FileStamp>> {
    configs
        .iter()
        .flat_map(|c| [FileStamp::of(&c.cert_path), FileStamp::of(&c.key_path)])
        .collect()
}

/// Builds the acceptor over `certs`, whose reloads it follows.
pub fn acceptor(certs: Arc<TlsCerts>, http2: bool) -> Result<TlsAcceptor, TlsError> {
    let provider = certs.provider.clone();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certs)));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Reloadable for TlsCerts {
    /// Reloads when any cert or key file changed since last seen ([`FileStamp`]).
    fn reload_changed(&self) {
        if self.last_seen.changed(stamps(&self.configs)) {
            // Logged and counted inside; a half-written pair fails now and loads
            // on the next change.
            let _ = self.reload();
        }
    }

    fn reload_all(&self) {
        // Logged and counted inside; the previous certificates stay in force.
        let _ = self.reload();
    }
}

fn load(
    index: usize,
    cert: &TlsCertConfig,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let cert_err = |path: &Path, message: String| TlsError::Certificate {
        index,
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&cert.cert_path)
        .map_err(|e| cert_err(&cert.cert_path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(&cert.cert_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err(
            &cert.cert_path,
            "no CERTIFICATE section found".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cert.key_path).map_err(|e| TlsError::Key {
        index,
        path: cert.key_path.clone(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Key {
        index,
        path: cert.key_path.clone(),
        message: format!("does not fit certificate {}: {e}", cert.cert_path.display()),
    })
}

/// One complete set of certificates by name, swapped in whole.
#[derive(Debug, Default)]
struct SniTable {
    default: Option<Arc<CertifiedKey>>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain of `*.parent`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniTable {
    fn load(certs: &[TlsCertConfig], provider: &CryptoProvider) -> Result<SniTable, TlsError> {
        let mut table = SniTable::default();
        for (index, cert) in certs.iter().enumerate() {
            let key = Arc::new(load(index, cert, provider)?);
            if index == 0 {
                table.default = Some(key.clone());
            }
            for name in &cert.server_names {
                match name.strip_prefix("*.") {
                    Some(parent) => table.wildcard.insert(parent.to_owned(), key.clone()),
                    None => table.exact.insert(name.clone(), key.clone()),
                };
            }
        }
        if table.default.is_none() {
            return Err(TlsError::Setup("no certificate configured".into()));
        }
        Ok(table)
    }

    fn for_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        self.exact
            .get(&name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .or(self.default.as_ref())
            .cloned()
    }
}

struct SniResolver(Arc<TlsCerts>);

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.resolve(hello.server_name())
    }
}
