//! New TLS connections as fast as the server takes them: the direct-traffic case,
//! where a mail client without a CDN in front opens a connection per pixel. Each of
//! `connections` tasks loops: TCP connect, TLS 1.3 handshake (full, or resumed from a
//! session ticket the server gave earlier), one HTTP/1.1 pixel GET with
//! `Connection: close`, read the answer to its end, close.
//!
//! The client is rustls with the ring provider. It does not verify the server's
//! certificate or handshake signature: it only talks to servers it started on
//! loopback, and verification would cost the client core, not the servers measured.
//! Resumption uses rustls's in-memory ticket store (TLS 1.3 PSK with a fresh
//! (EC)DHE, the only mode rustls offers); a full-handshake run disables it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, SignatureScheme};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::procstat;

#[derive(Debug, Clone)]
pub struct TlsSpec {
    pub target: SocketAddr,
    pub server_name: String,
    pub resume: bool,
    pub connections: usize,
    pub duration: Duration,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsOutcome {
    /// Connections that completed a handshake and got a whole 2xx answer.
    pub completed: u64,
    /// Of those, how many resumed a session.
    pub resumed: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub rate: f64,
    pub client_cpu_share: f64,
    pub first_error: Option<String>,
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(resume: bool) -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resume {
        Resumption::in_memory_sessions(4096)
    } else {
        Resumption::disabled()
    };
    Ok(config)
}

struct Shared {
    connector: TlsConnector,
    name: ServerName<'static>,
    target: SocketAddr,
    request: Vec<u8>,
    stop: AtomicBool,
    completed: AtomicU64,
    resumed: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

/// One connection: handshake, request, whole answer. Returns whether it resumed.
async fn one(shared: &Shared) -> anyhow::Result<bool> {
    let tcp = TcpStream::connect(shared.target).await.context("connect")?;
    tcp.set_nodelay(true).context("nodelay")?;
    let mut tls = shared
        .connector
        .connect(shared.name.clone(), tcp)
        .await
        .context("handshake")?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(&shared.request).await.context("write")?;
    let mut answer = Vec::with_capacity(1024);
    // The server closes after a `Connection: close` answer; a missing close_notify
    // after a whole answer is not the client's business.
    match tls.read_to_end(&mut answer).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(err) => return Err(err).context("read"),
    }
    anyhow::ensure!(
        answer.starts_with(b"HTTP/1.1 2"),
        "answer {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(40)])
    );
    Ok(resumed)
}

async fn worker(shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_secs(5), one(&shared)).await {
            Ok(Ok(resumed)) => {
                shared.completed.fetch_add(1, Ordering::Relaxed);
                if resumed {
                    shared.resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            outcome => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                let text = match outcome {
                    Ok(Err(err)) => format!("{err:#}"),
                    _ => "timed out".to_owned(),
                };
                shared
                    .first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(text);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Runs `spec.connections` looping tasks for `spec.duration`.
pub async fn drive(spec: &TlsSpec) -> anyhow::Result<TlsOutcome> {
    anyhow::ensure!(
        spec.target.ip().is_loopback(),
        "load goes to loopback addresses only"
    );
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n",
        spec.path, spec.server_name
    );
    for (name, value) in &spec.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let shared = Arc::new(Shared {
        connector: TlsConnector::from(Arc::new(client_config(spec.resume)?)),
        name: ServerName::try_from(spec.server_name.clone()).context("server name")?,
        target: spec.target,
        request: request.into_bytes(),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let cpu_before = procstat::cpu(0).ok();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.connections.max(1) {
        tasks.spawn(worker(shared.clone()));
    }
    tokio::time::sleep(spec.duration).await;
    shared.stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let client_cpu_share = match (cpu_before, procstat::cpu(0).ok()) {
        (Some(before), Some(after)) => after.since(&before).total.as_secs_f64() / elapsed,
        _ => f64::NAN,
    };
    let completed = shared.completed.load(Ordering::Relaxed);
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(TlsOutcome {
        completed,
        resumed: shared.resumed.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed_s: elapsed,
        rate: completed as f64 / elapsed,
        client_cpu_share,
        first_error,
    })
}
