//! The idle limit of a public connection: an IO wrapper that fails the connection
//! once no byte has moved in either direction for `idle_timeout`.
//!
//! Why a wrapper: hyper has no idle timeout of its own. Its HTTP/1
//! `header_read_timeout` also covers the wait for the next request on a kept-alive
//! connection (hyper 1.12 starts that timer when the connection goes idle), but
//! nothing bounds an HTTP/2 connection without streams, the protocol sniffing that
//! hyper-util's auto builder does before either (a client that connects and sends
//! nothing), or a client that stops reading its response. This wrapper covers all of
//! them with one rule, below TLS so a stalled handshake counts too.
//!
//! Cost per read or write that moved bytes: one `Instant::now()`. The timer is only re-armed when it
//! fires while there was activity, so a busy connection does not touch the timer
//! wheel per packet. Invariant: a connection that moved a byte within the last
//! `idle_timeout` is never failed by this wrapper.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error inside the `io::ErrorKind::TimedOut` an idle connection fails with.
#[derive(Debug, thiserror::Error)]
#[error("connection idle for too long")]
pub struct IdleTimeout;

pub struct Idle<S> {
    inner: S,
    timeout: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    /// Counted here, once, because hyper ends a kept-alive HTTP/1 connection whose
    /// read fails between requests without reporting an error.
    closed_idle: Counter,
    fired: Arc<AtomicBool>,
}

impl<S> Idle<S> {
    pub fn new(inner: S, timeout: Duration, closed_idle: Counter) -> Idle<S> {
        let now = Instant::now();
        Idle {
            inner,
            timeout,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            closed_idle,
            fired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Turns true once this connection was failed for idleness (and counted). The
    /// owner checks it rather than the error: h2 keeps only the kind and text of an
    /// IO error, so an idle HTTP/2 close surfaces as a generic one.
    pub fn fired(&self) -> Arc<AtomicBool> {
        self.fired.clone()
    }

    /// Called when the inner IO would wait: fails once the idle deadline passed.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last_activity + self.timeout;
            if deadline <= Instant::now() {
                if !self.fired.swap(true, Ordering::Relaxed) {
                    self.closed_idle.increment(1);
                }
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, IdleTimeout));
            }
            // There was activity since the timer was armed: re-arm lazily and poll
            // again so the new deadline registers this task's waker.
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.check(cx).map(Err),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silent_peer_is_failed_after_the_timeout() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut idle = Idle::new(ours, Duration::from_secs(5), Counter::noop());
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.get_ref().is_some_and(|inner| inner.is::<IdleTimeout>()));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_pushes_the_deadline_back() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut idle = Idle::new(ours, Duration::from_secs(5), Counter::noop());
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                theirs.write_all(b"x").await.unwrap();
            }
            theirs
        });
        let started = Instant::now();
        let mut buf = [0u8; 1];
        for _ in 0..4 {
            idle.read_exact(&mut buf).await.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::from_secs(12));
        let _theirs = writer.await.unwrap();
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(17));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_failed_too() {
        let (ours, _theirs) = tokio::io::duplex(16);
        let mut idle = Idle::new(ours, Duration::from_secs(5), Counter::noop());
        let err = idle.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
