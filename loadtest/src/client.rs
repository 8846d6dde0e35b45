//! Keep-alive HTTP client connections to the server under test: HTTP/1.1 (one
//! request in flight per connection) or HTTP/2 over plain TCP (h2c by prior
//! knowledge, several streams per connection). Built on hyper's connection API
//! directly so no pool, proxy logic or DNS sits between the timer and the socket.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::traffic::{self, Prepared};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("request: {0}")]
    Request(hyper::Error),
    #[error("building the request: {0}")]
    Build(http::Error),
}

type H1 = http1::SendRequest<Empty<Bytes>>;
type H2 = http2::SendRequest<Empty<Bytes>>;

/// One logical client connection; HTTP/2 ones are shared by several tasks.
pub enum Connection {
    H1(Option<H1>),
    H2(Arc<Mutex<Option<H2>>>),
}

impl Connection {
    pub fn new(http2: bool) -> Connection {
        if http2 {
            Connection::H2(Arc::new(Mutex::new(None)))
        } else {
            Connection::H1(None)
        }
    }

    /// Another task's handle on the same connection (HTTP/2), or a fresh one (HTTP/1.1).
    pub fn share(&self) -> Connection {
        match self {
            Connection::H1(_) => Connection::H1(None),
            Connection::H2(shared) => Connection::H2(shared.clone()),
        }
    }

    /// Sends `prepared` and reads the whole answer; (re)connects first when needed.
    /// On any error the connection is dropped so the next call starts a new one.
    pub async fn send(
        &mut self,
        target: SocketAddr,
        prepared: &Prepared,
    ) -> Result<StatusCode, ClientError> {
        match self {
            Connection::H1(slot) => {
                let mut sender = match slot.take() {
                    Some(sender) if !sender.is_closed() => sender,
                    _ => connect_h1(target).await?,
                };
                // A keep-alive connection may have been closed by the server between
                // requests; wait until it can take one (errors if it is gone).
                sender.ready().await.map_err(ClientError::Request)?;
                let request = build(prepared, Version::HTTP_11)?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(ClientError::Request)?;
                let status = response.status();
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(ClientError::Request)?;
                *slot = Some(sender);
                Ok(status)
            }
            Connection::H2(shared) => {
                let mut sender = {
                    let mut guard = shared.lock().await;
                    match guard.as_ref() {
                        Some(sender) if !sender.is_closed() => sender.clone(),
                        _ => {
                            let sender = connect_h2(target).await?;
                            *guard = Some(sender.clone());
                            sender
                        }
                    }
                };
                let result = async {
                    sender.ready().await.map_err(ClientError::Request)?;
                    let response = sender
                        .send_request(build(prepared, Version::HTTP_2)?)
                        .await
                        .map_err(ClientError::Request)?;
                    let status = response.status();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map_err(ClientError::Request)?;
                    Ok(status)
                }
                .await;
                if result.is_err() {
                    *shared.lock().await = None;
                }
                result
            }
        }
    }
}

fn build(prepared: &Prepared, version: Version) -> Result<Request<Empty<Bytes>>, ClientError> {
    let mut builder = Request::builder()
        .method(prepared.method.clone())
        .version(version);
    builder = if version == Version::HTTP_2 {
        builder.uri(prepared.uri_h2.clone())
    } else {
        builder
            .uri(prepared.uri_h1.clone())
            .header(http::header::HOST, traffic::host())
    };
    for (name, value) in &prepared.headers {
        builder = builder.header(name, value);
    }
    builder.body(Empty::new()).map_err(ClientError::Build)
}

async fn tcp(target: SocketAddr) -> Result<TokioIo<TcpStream>, ClientError> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(ClientError::Connect)?;
    // Small requests must leave at once, as a browser's would.
    stream.set_nodelay(true).map_err(ClientError::Connect)?;
    Ok(TokioIo::new(stream))
}

async fn connect_h1(target: SocketAddr) -> Result<H1, ClientError> {
    let (sender, connection) = http1::handshake(tcp(target).await?)
        .await
        .map_err(ClientError::Handshake)?;
    // The connection task ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn connect_h2(target: SocketAddr) -> Result<H2, ClientError> {
    let (sender, connection) = http2::handshake(TokioExecutor::new(), tcp(target).await?)
        .await
        .map_err(ClientError::Handshake)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
