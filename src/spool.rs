//! The hand-off from the request path to storage, and the interim NDJSON writer.
//!
//! Requests push [`Event`]s into a bounded channel with [`EventSender::send`], which
//! never waits: a full channel drops the event and counts it. A dedicated writer
//! thread (disk I/O never runs on the async workers) appends one JSON line per event
//! to `<data_dir>/<events.ndjson_file>`, flushes at least every `flush_interval`, and
//! on [`Writer::finish`] drains whatever is queued, flushes and fsyncs.
//!
//! Loss window until the sled spool lands: zero on a graceful stop; on a crash, what
//! was queued or written but not yet flushed (at most one flush interval).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;

use crate::config::EventsConfig;
use crate::event::Event;
use crate::health::Heartbeat;
use crate::metrics as m;

/// The longest the writer sleeps between looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Why an event did not reach the writer. `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    ChannelFull,
    WriterStopped,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::ChannelFull => "channel_full",
            DropReason::WriterStopped => "writer_stopped",
        }
    }
}

/// The request path's end of the channel. Cheap to share behind an `Arc`.
pub struct EventSender {
    channel: SyncSender<Event>,
    depth: Arc<AtomicUsize>,
    dropped_full: Counter,
    dropped_stopped: Counter,
}

impl EventSender {
    /// Queues `event` without waiting; returns why it was dropped if it was.
    pub fn send(&self, event: Event) -> Result<(), DropReason> {
        // Counted before the send so the writer's decrement can never underflow.
        self.depth.fetch_add(1, Ordering::Relaxed);
        let reason = match self.channel.try_send(event) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(_)) => {
                self.dropped_full.increment(1);
                DropReason::ChannelFull
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped_stopped.increment(1);
                DropReason::WriterStopped
            }
        };
        self.depth.fetch_sub(1, Ordering::Relaxed);
        Err(reason)
    }
}

/// The writer thread; [`Writer::finish`] stops it after draining the channel.
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Drains what is queued, flushes and fsyncs, then returns.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("event writer thread panicked; queued events may be lost");
        }
    }
}

/// Opens the output file and starts the writer thread.
pub fn start(
    config: &EventsConfig,
    heartbeat: Heartbeat,
) -> std::io::Result<(EventSender, Writer)> {
    if let Some(dir) = config.ndjson_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = open_append(&config.ndjson_path)?;
    let (channel, receiver) = sync_channel(config.channel_capacity.get());
    let depth = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let task = WriterTask {
        receiver,
        out: BufWriter::with_capacity(64 * 1024, file),
        depth: depth.clone(),
        stop: stop.clone(),
        flush_interval: config.flush_interval,
        heartbeat,
        written: metrics::counter!(m::EVENTS_WRITTEN_TOTAL),
        write_errors: metrics::counter!(m::EVENTS_WRITE_ERRORS_TOTAL),
        last_error_log: None,
    };
    let thread = std::thread::Builder::new()
        .name("event-writer".into())
        .spawn(move || task.run())?;
    let sender = EventSender {
        channel,
        depth,
        dropped_full: metrics::counter!(m::EVENTS_DROPPED_TOTAL, "reason" => DropReason::ChannelFull.as_str()),
        dropped_stopped: metrics::counter!(m::EVENTS_DROPPED_TOTAL, "reason" => DropReason::WriterStopped.as_str()),
    };
    Ok((sender, Writer { stop, thread }))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct WriterTask {
    receiver: Receiver<Event>,
    out: BufWriter<File>,
    depth: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    flush_interval: Duration,
    heartbeat: Heartbeat,
    written: Counter,
    write_errors: Counter,
    last_error_log: Option<Instant>,
}

impl WriterTask {
    fn run(mut self) {
        let mut last_flush = Instant::now();
        let mut dirty = false;
        loop {
            // Wakes at least every STOP_CHECK so a stop or a heartbeat is never late.
            match self
                .receiver
                .recv_timeout(self.flush_interval.min(STOP_CHECK))
            {
                Ok(event) => {
                    self.write(&event);
                    dirty = true;
                    while let Ok(event) = self.receiver.try_recv() {
                        self.write(&event);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.heartbeat.beat();
            metrics::gauge!(m::EVENTS_QUEUE_DEPTH).set(self.depth.load(Ordering::Relaxed) as f64);
            if self.stop.load(Ordering::Acquire) {
                while let Ok(event) = self.receiver.try_recv() {
                    self.write(&event);
                }
                break;
            }
            if dirty && last_flush.elapsed() >= self.flush_interval {
                self.flush(false);
                dirty = false;
                last_flush = Instant::now();
            }
        }
        self.flush(true);
        metrics::gauge!(m::EVENTS_QUEUE_DEPTH).set(0.0);
    }

    fn write(&mut self, event: &Event) {
        self.depth.fetch_sub(1, Ordering::Relaxed);
        let result = serde_json::to_writer(&mut self.out, event)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        match result {
            Ok(()) => self.written.increment(1),
            Err(err) => self.failed("write", &err),
        }
    }

    fn flush(&mut self, sync: bool) {
        let result = self.out.flush().and_then(|()| {
            if sync {
                self.out.get_ref().sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(err) = result {
            self.failed("flush", &err);
        }
    }

    fn failed(&mut self, what: &'static str, err: &std::io::Error) {
        self.write_errors.increment(1);
        // One line per 10 s at most: a full disk fails every event.
        let quiet = self
            .last_error_log
            .is_some_and(|at| at.elapsed() < Duration::from_secs(10));
        if !quiet {
            self.last_error_log = Some(Instant::now());
            tracing::error!(error = %err, what, "event output failed; events are being lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, SCHEMA_VERSION};
    use crate::health::Health;
    use crate::token::Kind;
    use std::num::NonZeroUsize;

    fn event(n: u128) -> Event {
        Event {
            v: SCHEMA_VERSION,
            id: EventId(n),
            ts: 1,
            kind: Kind::Open,
            tenant: "t".into(),
            campaign: "c".into(),
            message: format!("m{n}"),
            recipient: None,
            link: 0,
            target: None,
            ip: None,
            geo: None,
            asn: None,
            ua: None,
            client: None,
            class: crate::enrich::classify::Class::HUMAN,
            class_reason: "no_signal".into(),
            first: true,
            dnt: false,
            gpc: false,
            head: false,
            node: "n".into(),
        }
    }

    fn config(dir: &Path, capacity: usize) -> EventsConfig {
        EventsConfig {
            channel_capacity: NonZeroUsize::new(capacity).unwrap(),
            ndjson_path: dir.join("out/events.ndjson"),
            flush_interval: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn finish_writes_every_queued_event() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1000);
        let health = Health::new();
        let (sender, writer) =
            start(&config, health.register("w", Duration::from_secs(5))).unwrap();
        for n in 0..500 {
            sender.send(event(n)).unwrap();
        }
        writer.finish().await;
        let text = std::fs::read_to_string(&config.ndjson_path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 500);
        assert_eq!(lines[499]["message"], "m499");
        assert_eq!(sender.send(event(1)), Err(DropReason::WriterStopped));
    }

    #[tokio::test]
    async fn a_full_channel_drops_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1);
        let (channel, _receiver) = sync_channel(1);
        let sender = EventSender {
            channel,
            depth: Arc::new(AtomicUsize::new(0)),
            dropped_full: Counter::noop(),
            dropped_stopped: Counter::noop(),
        };
        assert_eq!(sender.send(event(1)), Ok(()));
        assert_eq!(sender.send(event(2)), Err(DropReason::ChannelFull));
        assert_eq!(sender.depth.load(Ordering::Relaxed), 1);
        drop(config);
    }
}
