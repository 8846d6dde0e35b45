//! The floor: a bare hyper server with the same connection settings as trackedge
//! (auto HTTP/1.1 + h2c, keep-alive, header read timeout, TCP_NODELAY) that answers
//! `/o/...` with trackedge's own pixel response and anything else with its own
//! 302, doing no other work. What trackedge costs above it is trackedge's work.
//!
//! It runs as its own process (`trackedge-loadtest floor`) so its CPU time can be
//! read from /proc and it can be pinned like any other server under test. With a
//! certificate it serves TLS through trackedge's own acceptor (rustls, the same
//! protocol versions, ALPN and session settings), so a TLS comparison against it
//! shows what trackedge adds over the TLS library itself.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use trackedge::route::response::{self, Body};

fn answer(request: &Request<Incoming>) -> Response<Body> {
    if request.uri().path().starts_with("/o/") {
        response::pixel()
    } else {
        response::redirect(HeaderValue::from_static(
            "https://shop.example/landing/1?utm_source=mail",
        ))
    }
}

/// Serves until SIGTERM/SIGINT; prints `floor listening public=ADDR` once bound.
/// `tls`: certificate and key PEM files; then every connection is TLS.
pub fn run(
    addr: SocketAddr,
    worker_threads: usize,
    tls: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<()> {
    let acceptor = match tls {
        Some((cert_path, key_path)) => {
            let certs = trackedge::tls::TlsCerts::load(&[trackedge::config::TlsCertConfig {
                cert_path,
                key_path,
                server_names: vec![],
            }])
            .context("floor TLS certificate")?;
            Some(trackedge::tls::acceptor(std::sync::Arc::new(certs), true).context("floor TLS")?)
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let bound = listener.local_addr().context("local address")?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "floor listening public={bound}")?;
            out.flush()?;
        }
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        let builder = std::sync::Arc::new(builder);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = term.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(answer(&request))
                });
                // A client hanging up is normal; the floor has nothing to report.
                match acceptor {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    })
}
