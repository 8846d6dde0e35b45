//! The open-loop HTTP/1.1 client of fixed-rate runs: one thread that both keeps
//! time and does the I/O, over non-blocking keep-alive sockets on one `mio`
//! poller, each request's bytes built once.
//!
//! Why not tokio tasks released by a pacer thread (what HTTP/2 fixed-rate runs
//! still use): on the client's one pinned core the pacer and the runtime take turns,
//! and the scheduler lets a woken thread wait its turn for milliseconds. Against
//! the bare floor, which answers ~120k req/s, that client measured its own delays:
//! p99 19 ms at 20k req/s, and at 40k req/s it sent only 31.6k/s. Here the loop that
//! sees a slot come due writes it: while the next slot is due within [`SPIN_AHEAD`]
//! the loop polls without sleeping (epoll's timeout is whole milliseconds), else it
//! sleeps in epoll until shortly before. At tens of thousands of requests a second
//! it never sleeps, so it uses its whole core, and a server's answer never has to
//! wake it: the same for every server measured.
//!
//! Latency is measured from each slot's scheduled time (the coordinated-omission
//! correction): a slot that finds every connection busy waits, and its wait counts.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::{Method, StatusCode};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::progress::Progress;
use crate::schedule::Schedule;
use crate::tally::{Run, Tally};
use crate::traffic::{self, Prepared};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: SocketAddr,
    pub schedule: Schedule,
    /// Slots after which no more are sent.
    pub limit: u64,
    pub duration: Duration,
    pub connections: usize,
    /// A request unanswered for this long counts as a timeout; its connection is closed.
    pub timeout: Duration,
    pub progress: bool,
}

/// Spin instead of sleeping when the next slot is due sooner than this: an epoll
/// sleep is rounded up to whole milliseconds and the wake-up itself can be late.
const SPIN_AHEAD: Duration = Duration::from_micros(2500);
/// Longest sleep, so timeouts and the progress line are looked at often enough.
const MAX_SLEEP: Duration = Duration::from_millis(20);
/// After a connection error, the connection rests this long (do not hammer a
/// server that refuses connections); the task-per-connection driver does the same.
pub const REST_AFTER_ERROR: Duration = Duration::from_millis(10);
/// How often in-flight requests are checked against the timeout.
const TIMEOUT_SCAN: Duration = Duration::from_millis(1);
/// Answers larger than this are refused: every answer measured is a pixel, a
/// redirect or a short error page.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const MAX_ANSWER_HEADERS: usize = 32;

struct InFlight {
    request: usize,
    scheduled: Instant,
    sent: Instant,
    /// Bytes of the request written so far (a full send buffer leaves the rest).
    written: usize,
}

#[derive(Default)]
struct Connection {
    stream: Option<TcpStream>,
    /// Registered for writable events too (a request only partly written, or a
    /// connect still under way).
    wants_writable: bool,
    in_flight: Option<InFlight>,
    /// Answer bytes read so far.
    read: Vec<u8>,
}

/// How one answer is framed, from its head.
struct Head {
    status: StatusCode,
    head_len: usize,
    body_len: usize,
    close: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum AnswerError {
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer framed without Content-Length (chunked or until close) is not supported")]
    Unframed,
    #[error("answer larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

/// Parses the answer's head once it is complete: `Ok(None)` while more bytes are
/// needed.
fn parse_head(bytes: &[u8], method: &Method) -> Result<Option<Head>, AnswerError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() > MAX_ANSWER_BYTES => {
            return Err(AnswerError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(AnswerError::Malformed(err.to_string())),
    };
    let code = response.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| AnswerError::Malformed(format!("status {code}")))?;
    let mut content_length = None;
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(header.value)
                .map_err(|_| AnswerError::Malformed("Content-Length".into()))?;
            let length = text
                .trim()
                .parse::<usize>()
                .map_err(|_| AnswerError::Malformed(format!("Content-Length {text:?}")))?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(AnswerError::Malformed("conflicting Content-Length".into()));
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(AnswerError::Unframed);
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            if value.split(',').any(|token| token.trim() == "close") {
                close = true;
            } else if value.split(',').any(|token| token.trim() == "keep-alive") {
                close = false;
            }
        }
    }
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body_len = match (bodiless, content_length) {
        (true, _) => 0,
        (false, Some(length)) => length,
        (false, None) => return Err(AnswerError::Unframed),
    };
    if head_len + body_len > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge);
    }
    Ok(Some(Head {
        status,
        head_len,
        body_len,
        close,
    }))
}

/// The bytes of `prepared` on an HTTP/1.1 connection.
fn encode(prepared: &Prepared) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(prepared.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(prepared.uri_h1.to_string().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(traffic::host().as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &prepared.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

struct Client<'a> {
    plan: &'a Plan,
    requests: &'a [Prepared],
    wire: Vec<Vec<u8>>,
    poll: Poll,
    connections: Vec<Connection>,
    /// Connections ready for a request, in the order they became ready: requests
    /// rotate over every connection, as they do over a CDN's pool, rather than
    /// keeping one socket hot.
    idle: VecDeque<usize>,
    /// Connections resting after an error, with when they may be used again.
    resting: Vec<(Instant, usize)>,
    busy: usize,
    tally: Tally,
    sent: u64,
    answered: u64,
}

/// Runs the plan to completion on this thread.
pub fn run(plan: &Plan, requests: &[Prepared]) -> anyhow::Result<Run> {
    anyhow::ensure!(!requests.is_empty(), "no requests prepared");
    anyhow::ensure!(plan.connections > 0, "at least one connection is needed");
    let mut client = Client {
        plan,
        requests,
        wire: requests.iter().map(encode).collect(),
        poll: Poll::new().context("cannot create the poller")?,
        connections: (0..plan.connections)
            .map(|_| Connection::default())
            .collect(),
        idle: (0..plan.connections).collect(),
        resting: Vec::new(),
        busy: 0,
        tally: Tally::default(),
        sent: 0,
        answered: 0,
    };
    let released = client.drive()?;
    Ok(Run {
        tally: client.tally,
        sent: client.sent,
        answered: client.answered,
        released,
    })
}

impl Client<'_> {
    /// The loop: sends every due slot it has a connection for, reads answers, and
    /// after the end waits for what is in flight (each bounded by the timeout).
    /// Returns how many slots came due.
    fn drive(&mut self) -> anyhow::Result<u64> {
        let plan = self.plan;
        let mut events = Events::with_capacity(1024);
        let start = Instant::now();
        let end = start + plan.duration;
        let mut progress = plan.progress.then(|| Progress::new(start));
        let (mut next_slot, mut released) = (0u64, 0u64);
        let mut ended = false;
        let mut last_scan = start;
        loop {
            let now = Instant::now();
            let sending = now < end && next_slot < plan.limit;
            if sending {
                released = plan.schedule.due(now - start).min(plan.limit);
                self.wake_rested(now);
                while next_slot < released {
                    let Some(index) = self.idle.pop_front() else {
                        break;
                    };
                    let scheduled = start + plan.schedule.offset(next_slot);
                    self.send(index, next_slot, scheduled);
                    next_slot += 1;
                }
            } else {
                if !ended {
                    // Every slot due before the end counts, sent or not: a slot the
                    // client was too late for is a missed slot, never a silent one.
                    ended = true;
                    let last = plan.duration.saturating_sub(Duration::from_nanos(1));
                    released = released.max(plan.schedule.due(last).min(plan.limit));
                }
                if self.busy == 0 {
                    break;
                }
            }
            let wait = if !sending {
                TIMEOUT_SCAN
            } else if next_slot < released {
                // Every connection is busy: only an answer can make progress.
                Duration::ZERO
            } else {
                let due = start + plan.schedule.offset(next_slot);
                match due.checked_duration_since(Instant::now()) {
                    Some(until) if until > SPIN_AHEAD => (until - SPIN_AHEAD).min(MAX_SLEEP),
                    _ => Duration::ZERO,
                }
            };
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err).context("polling the client's sockets"),
            }
            for event in events.iter() {
                let index = event.token().0;
                if event.is_writable() {
                    self.write_rest(index);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(index);
                }
            }
            let now = Instant::now();
            if now.duration_since(last_scan) >= TIMEOUT_SCAN {
                last_scan = now;
                self.expire(now);
                if let Some(progress) = progress.as_mut() {
                    progress.tick(now, self.sent, self.answered);
                }
            }
        }
        if let Some(progress) = progress {
            progress.finish();
        }
        Ok(released)
    }

    fn wake_rested(&mut self, now: Instant) {
        let idle = &mut self.idle;
        self.resting.retain(|&(until, index)| {
            let rested = until <= now;
            if rested {
                idle.push_back(index);
            }
            !rested
        });
    }

    fn send(&mut self, index: usize, slot: u64, scheduled: Instant) {
        let request = (slot % self.requests.len() as u64) as usize;
        let prepared = &self.requests[request];
        self.tally.sent(prepared);
        self.sent += 1;
        if self.connections[index].stream.is_none() {
            if let Err(err) = self.connect(index) {
                self.tally.failed(prepared, || format!("connect: {err}"));
                self.rest(index);
                return;
            }
        }
        let connection = &mut self.connections[index];
        connection.read.clear();
        connection.in_flight = Some(InFlight {
            request,
            scheduled,
            sent: Instant::now(),
            written: 0,
        });
        self.busy += 1;
        self.write_rest(index);
    }

    /// Starts a connection without waiting for it: the loop never blocks, and the
    /// request is written once the socket turns writable (a write before that
    /// would block, which `write_some` already waits out). A connect that never
    /// completes times out like any request.
    fn connect(&mut self, index: usize) -> std::io::Result<()> {
        let mut stream = TcpStream::connect(self.plan.target)?;
        // Small requests must leave at once, as a browser's would.
        stream.set_nodelay(true)?;
        self.poll.registry().register(
            &mut stream,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let connection = &mut self.connections[index];
        connection.stream = Some(stream);
        connection.wants_writable = true;
        Ok(())
    }

    /// Writes what is left of the connection's request.
    fn write_rest(&mut self, index: usize) {
        let connection = &mut self.connections[index];
        let (Some(stream), Some(flight)) =
            (connection.stream.as_mut(), connection.in_flight.as_mut())
        else {
            return;
        };
        let written = write_some(
            stream,
            &mut flight.written,
            &self.wire[flight.request],
            (&self.poll, Token(index)),
            &mut connection.wants_writable,
        );
        if let Err(err) = written {
            self.fail(index, err);
        }
    }

    /// Reads until the socket has nothing more, finishing the answer when complete.
    fn read(&mut self, index: usize) {
        loop {
            let connection = &mut self.connections[index];
            let Some(stream) = connection.stream.as_mut() else {
                return;
            };
            let buffer = &mut connection.read;
            let before = buffer.len();
            buffer.resize(before + 4096, 0);
            let result = stream.read(&mut buffer[before..]);
            buffer.truncate(before + *result.as_ref().unwrap_or(&0));
            match result {
                Ok(0) if connection.in_flight.is_some() => {
                    return self.fail(index, "the server closed the connection".into())
                }
                Ok(0) => return self.close(index),
                Ok(_) => {
                    if connection.in_flight.is_none() {
                        return self.fail(index, "bytes from the server with no request".into());
                    }
                    if !self.try_finish(index) {
                        return;
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return self.fail(index, format!("read: {err}")),
            }
        }
    }

    /// Completes the in-flight request if its whole answer was read. Returns whether
    /// the connection is still open for reading.
    fn try_finish(&mut self, index: usize) -> bool {
        let connection = &mut self.connections[index];
        let Some(flight) = connection.in_flight.as_ref() else {
            return true;
        };
        let prepared = &self.requests[flight.request];
        let head = match parse_head(&connection.read, &prepared.method) {
            Ok(Some(head)) => head,
            Ok(None) => return true,
            Err(err) => {
                self.fail(index, err.to_string());
                return false;
            }
        };
        let total = head.head_len + head.body_len;
        if connection.read.len() < total {
            return true;
        }
        if connection.read.len() > total {
            self.fail(index, "more bytes than the answer framed".into());
            return false;
        }
        self.tally
            .latencies
            .record(flight.scheduled, flight.sent, Instant::now());
        self.tally.answered(prepared, head.status);
        self.answered += 1;
        connection.in_flight = None;
        connection.read.clear();
        self.busy -= 1;
        if head.close {
            self.close(index);
            self.idle.push_back(index);
            return false;
        }
        self.idle.push_back(index);
        true
    }

    /// Counts timeouts and closes their connections.
    fn expire(&mut self, now: Instant) {
        for index in 0..self.connections.len() {
            let overdue = self.connections[index]
                .in_flight
                .as_ref()
                .is_some_and(|flight| now.duration_since(flight.sent) >= self.plan.timeout);
            if overdue {
                if let Some(flight) = self.connections[index].in_flight.take() {
                    self.tally.timed_out(&self.requests[flight.request]);
                    self.busy -= 1;
                }
                self.close(index);
                self.idle.push_back(index);
            }
        }
    }

    /// The in-flight request failed: counted, the connection closed and rested.
    fn fail(&mut self, index: usize, error: String) {
        if let Some(flight) = self.connections[index].in_flight.take() {
            self.tally.failed(&self.requests[flight.request], || error);
            self.busy -= 1;
            self.close(index);
            self.rest(index);
        } else {
            // An idle connection went bad: reconnect on its next use.
            self.close(index);
        }
    }

    fn rest(&mut self, index: usize) {
        self.resting
            .push((Instant::now() + REST_AFTER_ERROR, index));
    }

    fn close(&mut self, index: usize) {
        let connection = &mut self.connections[index];
        connection.wants_writable = false;
        if let Some(mut stream) = connection.stream.take() {
            // Closing the socket removes it from epoll anyway; deregistering first
            // keeps mio's bookkeeping honest.
            let _ = self.poll.registry().deregister(&mut stream);
        }
        connection.read.clear();
    }
}

/// Writes from `*written` on; when the socket cannot take more (a full send buffer,
/// a connect under way), asks the poller for a writable event and leaves the rest
/// for it. Once all is written, writable events are turned off again: each would
/// otherwise wake the loop for nothing.
fn write_some(
    stream: &mut TcpStream,
    written: &mut usize,
    bytes: &[u8],
    (poll, token): (&Poll, Token),
    wants_writable: &mut bool,
) -> Result<(), String> {
    while *written < bytes.len() {
        match stream.write(&bytes[*written..]) {
            Ok(0) => return Err("the connection took no bytes".into()),
            Ok(n) => *written += n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                if !*wants_writable {
                    poll.registry()
                        .reregister(stream, token, Interest::READABLE | Interest::WRITABLE)
                        .map_err(|err| format!("poller: {err}"))?;
                    *wants_writable = true;
                }
                return Ok(());
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) if err.kind() == ErrorKind::NotConnected => {
                // Linux answers a write during a connect with EAGAIN, others may not.
                if !*wants_writable {
                    return Err(format!("write: {err}"));
                }
                return Ok(());
            }
            Err(err) => return Err(format!("write: {err}")),
        }
    }
    if *wants_writable {
        poll.registry()
            .reregister(stream, token, Interest::READABLE)
            .map_err(|err| format!("poller: {err}"))?;
        *wants_writable = false;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<Head>, AnswerError> {
        parse_head(bytes, &Method::GET)
    }

    #[test]
    fn answers_are_framed_by_content_length() {
        let bytes = b"HTTP/1.1 200 OK\r\ncontent-type: image/gif\r\ncontent-length: 43\r\n\r\n";
        let parsed = head(bytes).unwrap().unwrap();
        assert_eq!(parsed.status, StatusCode::OK);
        assert_eq!((parsed.head_len, parsed.body_len), (bytes.len(), 43));
        assert!(!parsed.close);
        assert!(head(b"HTTP/1.1 302 Found\r\nlocation: /")
            .unwrap()
            .is_none());
        let parsed = head(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (parsed.status, parsed.body_len, parsed.close),
            (StatusCode::FOUND, 0, true)
        );
        let parsed = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 43\r\n\r\n",
            &Method::HEAD,
        )
        .unwrap()
        .unwrap();
        assert_eq!(parsed.body_len, 0);
        let http10 = head(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(http10.close);
    }

    #[test]
    fn answers_it_cannot_frame_are_errors_not_hangs() {
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").err(),
            Some(AnswerError::Unframed)
        );
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\n\r\n").err(),
            Some(AnswerError::Unframed)
        );
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"),
            Err(AnswerError::Malformed(_))
        ));
        assert!(matches!(
            head(b"NOT HTTP\r\n\r\n"),
            Err(AnswerError::Malformed(_))
        ));
        assert_eq!(
            head(b"HTTP/1.1 200 OK\r\ncontent-length: 999999\r\n\r\n").err(),
            Some(AnswerError::TooLarge)
        );
        let endless = [
            b"HTTP/1.1 200 OK\r\n".as_slice(),
            &[b'x'; MAX_ANSWER_BYTES + 1],
        ]
        .concat();
        assert_eq!(head(&endless).err(), Some(AnswerError::TooLarge));
    }

    #[derive(Clone, Copy)]
    enum Reply {
        Answer,
        AnswerAndClose,
        /// Read on, never answer (the client must time out).
        Hang,
        /// Close without answering.
        Close,
    }

    /// A loopback server answering the `request`-th request of its `connection`-th
    /// connection as `script` says; counts the connections it accepted.
    fn server(
        script: fn(connection: usize, request: usize) -> Reply,
    ) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let connection = counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut pending = Vec::new();
                    let mut request = 0;
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = stream.read(&mut chunk) else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        pending.extend_from_slice(&chunk[..n]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let body = [b'x'; 43];
                            let head = match script(connection, request) {
                                Reply::Answer => "HTTP/1.1 200 OK\r\ncontent-length: 43\r\n\r\n",
                                Reply::AnswerAndClose => {
                                    "HTTP/1.1 200 OK\r\ncontent-length: 43\r\nconnection: close\r\n\r\n"
                                }
                                Reply::Hang => {
                                    request += 1;
                                    continue;
                                }
                                Reply::Close => return,
                            };
                            let answer = [head.as_bytes(), &body].concat();
                            if stream.write_all(&answer).is_err() {
                                return;
                            }
                            if matches!(script(connection, request), Reply::AnswerAndClose) {
                                return;
                            }
                            request += 1;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn pixel() -> Vec<Prepared> {
        let keys = trackedge::KeyRing::new(vec![trackedge::Key::new(
            1,
            b"open-loop unit-test key of 32+ bytes",
        )])
        .unwrap();
        vec![traffic::pixel(&keys).unwrap()]
    }

    /// `timeout` well above what a loaded test machine takes to answer, unless the
    /// test waits for one.
    fn plan(
        target: SocketAddr,
        rate: f64,
        millis: u64,
        connections: usize,
        timeout: Duration,
    ) -> Plan {
        let duration = Duration::from_millis(millis);
        Plan {
            target,
            schedule: Schedule::new(rate).unwrap(),
            limit: (rate * duration.as_secs_f64()).ceil() as u64,
            duration,
            connections,
            timeout,
            progress: false,
        }
    }

    #[test]
    fn every_slot_is_sent_once_and_answered_over_reopened_connections() {
        // Every fourth answer on a connection closes it: the client must reopen.
        let (target, accepted) = server(|_, request| {
            if request % 4 == 3 {
                Reply::AnswerAndClose
            } else {
                Reply::Answer
            }
        });
        let run = run(
            &plan(target, 2000.0, 500, 4, Duration::from_secs(5)),
            &pixel(),
        )
        .unwrap();
        assert_eq!(run.released, 1000);
        // A busy test machine may keep the client from a slot or two before the end;
        // those are missed (released, not sent), never lost.
        assert!(run.sent >= 990, "sent {}", run.sent);
        assert_eq!(run.answered, run.sent);
        assert_eq!((run.tally.errors, run.tally.timeouts), (0, 0));
        assert_eq!(run.tally.kinds[0].answered_good, run.sent);
        assert_eq!(run.tally.status.get(&200), Some(&run.sent));
        assert_eq!(run.tally.latencies.count(), run.sent);
        let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst) as u64;
        assert!(
            (run.sent / 4..=run.sent / 4 + 4).contains(&accepted),
            "{accepted} connections"
        );
    }

    #[test]
    fn closed_and_silent_connections_count_as_errors_and_timeouts() {
        // The first connection closes on its 4th request, the second never answers
        // its 3rd; every later one answers.
        let (target, accepted) = server(|connection, request| match (connection, request) {
            (0, 3) => Reply::Close,
            (1, 2) => Reply::Hang,
            _ => Reply::Answer,
        });
        // The hang lasts one timeout; the run goes on long enough after it to reconnect.
        let run = run(
            &plan(target, 200.0, 1500, 1, Duration::from_millis(500)),
            &pixel(),
        )
        .unwrap();
        assert_eq!(run.tally.errors, 1, "{:?}", run.tally.first_error);
        assert!(run
            .tally
            .first_error
            .as_deref()
            .is_some_and(|e| e.contains("closed")));
        assert_eq!(run.tally.timeouts, 1);
        assert_eq!(run.answered + 2, run.sent);
        assert_eq!(run.tally.kinds[0].unanswered, 2);
        assert!(run.sent <= run.released && run.released <= 300);
        assert_eq!(run.tally.latencies.count(), run.answered);
        // The answered ones after the timeout prove the client reconnected.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert!(run.answered > 5 + 2);
    }

    #[test]
    fn a_refused_connection_is_an_error_and_the_connection_rests() {
        // A port that was just free: nothing listens there.
        let target = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let run = run(
            &plan(target, 1000.0, 300, 2, Duration::from_secs(5)),
            &pixel(),
        )
        .unwrap();
        assert_eq!(run.answered, 0);
        assert!(run.tally.errors >= 2, "errors {}", run.tally.errors);
        assert_eq!(run.tally.errors, run.sent);
        assert!(
            run.tally
                .first_error
                .as_deref()
                .is_some_and(|e| e.contains("refused")),
            "{:?}",
            run.tally.first_error
        );
        // Each error rests its connection 10 ms: two connections cannot fail more
        // than about 60 times in 300 ms, where 300 slots came due.
        assert!(run.sent <= 80, "sent {}", run.sent);
        assert_eq!(run.released, 300);
    }
}
