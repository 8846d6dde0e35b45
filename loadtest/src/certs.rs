//! The one certificate every TLS server under test uses: ECDSA P-256 (the
//! signature most sites serve now, and the cheapest full handshake for a server),
//! self-signed for `t.example`, written as PEM into the run's temp dir.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where the PEM files are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub const SERVER_NAME: &str = "t.example";

pub fn generate(dir: &Path) -> anyhow::Result<TlsFiles> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("cannot generate a P-256 key")?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
        .context("certificate parameters")?;
    let cert = params.self_signed(&key).context("cannot sign")?;
    let files = TlsFiles {
        cert: dir.join("tls-cert.pem"),
        key: dir.join("tls-key.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).context("write the certificate")?;
    std::fs::write(&files.key, key.serialize_pem()).context("write the key")?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_p256_pair_is_written_that_rustls_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path()).unwrap();
        let certs = trackedge::tls::TlsCerts::load(&[trackedge::config::TlsCertConfig {
            cert_path: files.cert.clone(),
            key_path: files.key.clone(),
            server_names: vec![],
        }]);
        assert!(certs.is_ok());
        let pem = std::fs::read_to_string(&files.key).unwrap();
        assert!(pem.contains("PRIVATE KEY"));
    }
}
