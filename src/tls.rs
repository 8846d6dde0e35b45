//! TLS for the public listener: rustls (ring provider), TLS 1.2 and 1.3 only, ALPN
//! h2 and http/1.1, several certificates chosen by SNI.
//!
//! The first configured certificate answers clients that send no SNI or an unknown
//! name; the others answer their `server_names` (exact, or `*.example.com` for one
//! label). A PEM that cannot be read, or a key that does not match its certificate,
//! stops the start with a message naming the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsCertConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate file {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    #[error("TLS key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Builds the acceptor for the configured certificates (at least one).
pub fn acceptor(certs: &[TlsCertConfig], http2: bool) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut resolver = SniResolver::default();
    for (index, cert) in certs.iter().enumerate() {
        let key = Arc::new(load(cert, &provider)?);
        if index == 0 {
            resolver.default = Some(key.clone());
        }
        for name in &cert.server_names {
            match name.strip_prefix("*.") {
                Some(parent) => resolver.wildcard.insert(parent.to_owned(), key.clone()),
                None => resolver.exact.insert(name.clone(), key.clone()),
            };
        }
    }
    if resolver.default.is_none() {
        return Err(TlsError::Setup("no certificate configured".into()));
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load(cert: &TlsCertConfig, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_err = |path: &Path, message: String| TlsError::Certificate {
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
        path: cert.key_path.clone(),
        message: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Key {
        path: cert.key_path.clone(),
        message: format!("does not fit certificate {}: {e}", cert.cert_path.display()),
    })
}

#[derive(Debug, Default)]
struct SniResolver {
    default: Option<Arc<CertifiedKey>>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain of `*.parent`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
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

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.for_name(hello.server_name())
    }
}
