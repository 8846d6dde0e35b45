//! The `http` sink: POSTs each batch as NDJSON (gzip by default) to the upstream URL
//! over HTTP/1.1, plain or TLS (rustls; the system's roots or a configured CA file).
//!
//! Each request carries `Idempotency-Key: <batch id>` (the same on every retry of the
//! batch), the configured bearer token and extra headers, and with a signing secret
//! file the Standard Webhooks headers ([`super::signing`]). Connections are kept alive
//! in a small pool, one per lane in flight. The status decides the outcome
//! ([`classify_status`]); connection errors and timeouts are retried.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::retry::{classify_status, parse_retry_after, Failure, Outcome};
use super::signing::{Signer, SigningError};
use super::{Batch, BoxFuture, Sink};
use crate::config::HttpSinkConfig;
use crate::event::now_ms;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// The most of an upstream's answer body read (to reuse the connection).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// What [`classify_status`] gives (`STATUS_FAILURES`), and the connection's failures.
const FAILURES: [Failure; 8] = [
    Failure::Status408,
    Failure::Status429,
    Failure::Status5xx,
    Failure::Status3xx,
    Failure::Status4xx,
    Failure::Connect,
    Failure::Timeout,
    Failure::Io,
];
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum HttpSinkError {
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error("forward.http.ca_file {path}: {message}")]
    CaFile {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("forward.http.url: {0}")]
    Url(String),
}

pub struct HttpSink {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    authority: HeaderValue,
    path: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    gzip: bool,
    signer: Option<Signer>,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl HttpSink {
    pub fn new(config: &HttpSinkConfig) -> Result<HttpSink, HttpSinkError> {
        let url = &config.url;
        let https = url.scheme_str() == Some("https");
        let host = url
            .host()
            .ok_or_else(|| HttpSinkError::Url("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = url
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or_else(|| HttpSinkError::Url("no authority".into()))?;
        let path = url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .map_err(|_| HttpSinkError::Url("bad path".into()))?;
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| HttpSinkError::Url(format!("{host:?} is not a TLS server name")))?;
            Some((connector(config)?, name))
        } else {
            None
        };
        let mut headers = config.headers.clone();
        if let Some(token) = &config.bearer_token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| HttpSinkError::Url("bearer token is not a header value".into()))?;
            headers.push((AUTHORIZATION, value));
        }
        Ok(HttpSink {
            host,
            port,
            tls,
            authority,
            path,
            headers,
            timeout: config.timeout,
            gzip: config.gzip,
            signer: config
                .signing_secret_file
                .as_deref()
                .map(Signer::open)
                .transpose()?,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        loop {
            let cached = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match cached {
                Some(sender) if sender.is_ready() => return Ok(sender),
                Some(_) => continue,
                None => break,
            }
        }
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|_| Failure::Connect)?;
                handshake(TokioIo::new(stream)).await
            }
        }
    }

    async fn attempt(&self, batch: &Batch) -> Outcome {
        let retry = |reason| Outcome::Retry {
            reason,
            after: None,
        };
        let mut sender = match tokio::time::timeout(self.timeout, self.connection()).await {
            Ok(Ok(sender)) => sender,
            Ok(Err(reason)) => return retry(reason),
            Err(_) => return retry(Failure::Timeout),
        };
        let body = match (&batch.gzip, self.gzip) {
            (Some(gzip), true) => gzip.clone(),
            _ => batch.ndjson.clone(),
        };
        let signature = self.signer.as_ref().map(|signer| {
            let timestamp = now_ms() / 1000;
            (timestamp, signer.sign(&batch.id, timestamp, &body))
        });
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.authority.clone());
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        if self.gzip && batch.gzip.is_some() {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("trackedge/", env!("CARGO_PKG_VERSION"))),
        );
        if let Ok(key) = HeaderValue::from_str(&batch.id) {
            if signature.is_some() {
                headers.insert(WEBHOOK_ID, key.clone());
            }
            headers.insert(IDEMPOTENCY_KEY, key);
        }
        if let Some((timestamp, signature)) = signature {
            headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
            if let Ok(value) = HeaderValue::from_str(&signature) {
                headers.insert(WEBHOOK_SIGNATURE, value);
            }
        }
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let response = match tokio::time::timeout(self.timeout, sender.send_request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => return retry(Failure::Io),
            Err(_) => return retry(Failure::Timeout),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v.as_bytes(), MAX_RETRY_AFTER));
        // Reading the answer lets the connection serve the next batch.
        let drained = tokio::time::timeout(
            self.timeout,
            Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect(),
        )
        .await;
        if matches!(drained, Ok(Ok(_))) && sender.is_ready() {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(sender);
        }
        classify_status(status, retry_after)
    }
}

async fn handshake<I>(io: I) -> Result<SendRequest<Full<Bytes>>, Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| Failure::Connect)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "upstream connection closed");
        }
    });
    Ok(sender)
}

fn connector(config: &HttpSinkConfig) -> Result<TlsConnector, HttpSinkError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let ca_err = |message: String| HttpSinkError::CaFile {
                path: path.clone(),
                message,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no CERTIFICATE section found".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system store can hold certificates rustls cannot use; skip those.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                tracing::warn!("no system CA certificates found; https upstreams will fail (set forward.http.ca_file)");
            }
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| HttpSinkError::Url(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(tls)))
}

impl Sink for HttpSink {
    fn wants_gzip(&self) -> bool {
        self.gzip
    }

    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Outcome> {
        Box::pin(self.attempt(batch))
    }

    fn failure_reasons(&self) -> &'static [Failure] {
        &FAILURES
    }
}

#[cfg(test)]
mod tests {
    use super::super::retry::STATUS_FAILURES;
    use super::*;

    #[test]
    fn every_status_reason_is_a_failure_reason() {
        for reason in STATUS_FAILURES {
            assert!(FAILURES.contains(&reason), "{reason:?}");
        }
    }
}
