//! Test support: the real `trackedge` binary on 127.0.0.1 with ephemeral ports and a
//! temp data dir, real HTTP/1.1, h2c and TLS clients, and URL minting through the
//! library API with the key file the server generated.
#![allow(dead_code)]

pub mod broker;
pub mod mmdb;
pub mod tools;
pub mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use trackedge::{Claims, Kind};

pub const BIN: &str = env!("CARGO_BIN_EXE_trackedge");

/// A running `trackedge serve`; killed on drop if the test did not stop it.
pub struct TestServer {
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts with `config` as the whole config file (addresses and data dir are set
    /// by flags: 127.0.0.1:0 and a fresh temp dir).
    pub fn start(config: &str) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_owned();
        let mut server = Self::start_in(&dir, config);
        server._temp = Some(temp);
        server
    }

    /// Starts in an existing data dir (for restarts); the caller keeps the dir alive.
    pub fn start_in(dir: &Path, config: &str) -> TestServer {
        let config_path = dir.join("trackedge.toml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args([
                "--public-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn trackedge");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = |name: &str| -> SocketAddr {
            let value = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix(name))
                .unwrap_or_else(|| {
                    panic!(
                        "server did not start: stdout {line:?}, stderr:\n{}",
                        std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
                    )
                });
            value.parse().expect("listening address")
        };
        TestServer {
            public: addr("public="),
            admin: addr("admin="),
            child,
            dir: dir.to_owned(),
            _temp: None,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.public)
    }

    /// The keys the server uses (the generated `keys.txt` unless configured).
    pub fn keys(&self) -> trackedge::KeyRing {
        trackedge::keys::load(&self.dir.join("keys.txt"), false).expect("key file")
    }

    /// The path (with token) of a URL signed with the server's signing key.
    pub fn path_for(&self, claims: &Claims) -> String {
        let url = trackedge::mint_url("http://x", &self.keys(), claims).expect("sign");
        url.trim_start_matches("http://x").to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(20))
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Every event the default `file` sink delivered so far, oldest file first.
    pub fn events(&self) -> Vec<serde_json::Value> {
        file_sink_events(&self.dir)
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = get(self.admin, "/metrics").await;
        assert_eq!(response.status(), 200);
        String::from_utf8(response.into_body().to_vec()).expect("metrics are text")
    }

    /// The value of one series (exact name with labels as Prometheus prints them).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series).unwrap_or(0.0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The events in `events.ndjson` and its rotated `events-<ms>-<n>.ndjson` files.
pub fn file_sink_events(dir: &Path) -> Vec<serde_json::Value> {
    let mut rotated: Vec<(u64, u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let path = entry.ok()?.path();
                    let name = path.file_name()?.to_str()?.to_owned();
                    let stamp = name.strip_prefix("events-")?.strip_suffix(".ndjson")?;
                    let (ms, n) = stamp.split_once('-')?;
                    Some((ms.parse().ok()?, n.parse().ok()?, path))
                })
                .collect()
        })
        .unwrap_or_default();
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, _, path)| path).collect();
    files.push(dir.join("events.ndjson"));
    files
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str(line).expect("event is JSON"))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// The claims fixture: tenant `acme`, campaign `launch`, recipient `rcpt-1`, and a
/// target for clicks and downloads. Tests change what they need with struct update.
pub fn claims(kind: Kind, message: &str) -> Claims {
    Claims {
        recipient: Some("rcpt-1".into()),
        link: if kind.has_target() { 2 } else { 0 },
        target: kind
            .has_target()
            .then(|| "https://shop.example/landing?x=1".to_owned()),
        ..Claims::new(kind, "acme", "launch", message)
    }
}

/// [`claims`] of another recipient.
pub fn claims_of(kind: Kind, recipient: &str, message: &str) -> Claims {
    Claims {
        recipient: Some(recipient.into()),
        ..claims(kind, message)
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> Response<Bytes> {
    send(addr, Version::HTTP_11, request("GET", path)).await
}

pub fn request(method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "t.example")
        .header("user-agent", "Mozilla/5.0 (test)")
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

/// A `method` request for `path` with extra headers (the defaults stay unless named).
pub fn request_with(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = request(method, path);
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    request
}

/// An HTTP/1.1 keep-alive connection to `addr`, driven in the background: send
/// requests one after another with the returned sender.
pub async fn keep_alive(
    addr: SocketAddr,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One request on a fresh plain-TCP connection: HTTP/1.1 or h2c (prior knowledge).
pub async fn send(
    addr: SocketAddr,
    version: Version,
    request: Request<Full<Bytes>>,
) -> Response<Bytes> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    send_on(TokioIo::new(stream), version, request).await
}

/// One request over `io`, which may be TLS.
pub async fn send_on<I>(
    io: I,
    version: Version,
    mut request: Request<Full<Bytes>>,
) -> Response<Bytes>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let response = if version == Version::HTTP_2 {
        let authority = request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("t.example")
            .to_owned();
        *request.uri_mut() = format!("http://{authority}{}", request.uri())
            .parse()
            .expect("absolute URI");
        request.headers_mut().remove("host");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        sender.send_request(request).await.expect("h2 request")
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(connection);
        sender.send_request(request).await.expect("h1 request")
    };
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Response::from_parts(parts, body)
}

/// A CA and leaf certificates for TLS tests, written as PEM files under `dir`.
pub struct TestPki {
    pub ca_der: rustls_pki_types::CertificateDer<'static>,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "trackedge test CA");
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA cert");
        TestPki {
            ca_der: issuer.der().clone(),
            issuer,
        }
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes `<stem>.pem` and `<stem>.key` for `names`; returns their paths.
    pub fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// A TLS client that trusts this CA and offers `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("add CA");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A rustls server config (for a test upstream) from PEM files.
pub fn server_tls(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    Arc::new(config)
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
