//! The durable spool: requests hand events over here, a writer thread commits them to
//! the [`Store`] in group commits, and the forwarder takes them from there.
//!
//! Requests push [`Event`]s into a bounded channel with [`EventSender::send`], which
//! never waits: a full channel drops the event and counts it. The writer thread (disk
//! I/O never runs on the async workers) wakes every `batch_delay`, takes what has
//! arrived in segments of up to `max_batch_events` events or `max_batch_bytes`
//! (and at most [`crate::store::MAX_INLINE_VALUE_BYTES`], what the store keeps
//! inline),
//! encodes each ([`crate::record`]) and appends it under the next sequence number:
//! one engine write per segment, and no wake-up per request.
//!
//! Durability: in `interval` mode the writer fsyncs at most `flush_every` after a
//! write, in `batch` mode after every batch. Loss on a crash (kill -9, power loss) is
//! therefore bounded by `batch_delay + flush_every` (plus what was queued in the
//! channel if the writer had fallen behind); on a graceful stop [`Writer::finish`]
//! drains the channel, commits and fsyncs, so nothing is lost.
//!
//! Bounds: past `max_bytes` of segments the full policy drops the oldest segments or
//! refuses the newest events; segments (and dead letters) whose newest event is older
//! than `max_age` (`retention.max_age_secs`) are dropped. Every drop is counted
//! in `trackedge_events_dropped_total{reason}` and logged at most every 10 s.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};

use crate::config::{Durability, FullPolicy, SpoolConfig};
use crate::event::{now_ms, Event};
use crate::health::Heartbeat;
use crate::metrics as m;
use crate::record::{self, SegmentWriter};
use crate::store::{Bytes, Seq, Store, StoreError};

/// The longest the writer sleeps between looks at the stop flag and the clock.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// The shortest: below this a sleeping writer is a spinning writer.
const MIN_PAUSE: Duration = Duration::from_millis(1);
/// How often age bounds and gauges are refreshed.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Segments looked at per step when enforcing a bound.
const EVICT_STEP: usize = 64;

/// Why an event was not kept. `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    ChannelFull,
    WriterStopped,
    SpoolFull,
    Retention,
    RetentionDeadLetter,
    WriteFailed,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::ChannelFull,
        DropReason::WriterStopped,
        DropReason::SpoolFull,
        DropReason::Retention,
        DropReason::RetentionDeadLetter,
        DropReason::WriteFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::ChannelFull => "channel_full",
            DropReason::WriterStopped => "writer_stopped",
            DropReason::SpoolFull => "spool_full",
            DropReason::Retention => "retention",
            DropReason::RetentionDeadLetter => "retention_dead_letter",
            DropReason::WriteFailed => "write_failed",
        }
    }

    fn counter(self) -> Counter {
        metrics::counter!(m::EVENTS_DROPPED_TOTAL, "reason" => self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot open the spool in {dir}: {source}")]
    Open {
        dir: std::path::PathBuf,
        source: StoreError,
    },
    #[error("cannot start the spool writer thread: {0}")]
    Thread(std::io::Error),
}

/// What the spool holds, kept in memory so the request path, the forwarder and the
/// admin API never scan the store to know it.
#[derive(Debug, Default)]
pub struct Counts {
    records: AtomicU64,
    bytes: AtomicU64,
    dead_letters: AtomicU64,
}

/// A point-in-time view for `/admin/spool` and the gauges.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    pub events: u64,
    pub bytes: u64,
    pub disk_bytes: u64,
    pub oldest_age_seconds: f64,
    pub dead_letters: u64,
}

/// The shared spool: the store, its counts, and the wake-up for the forwarder.
pub struct Spool {
    pub store: Store,
    counts: Counts,
    appended: tokio::sync::Notify,
}

impl Spool {
    /// Resolves when new records were appended since the last call.
    pub async fn appended(&self) {
        self.appended.notified().await;
    }

    /// Segments that left the store (acknowledged, evicted, erased); returns the
    /// number of events they held.
    pub fn note_removed(&self, segments: &[Bytes]) -> u64 {
        let (events, bytes) = totals(segments);
        self.counts.records.fetch_sub(events, Ordering::Relaxed);
        self.counts.bytes.fetch_sub(bytes, Ordering::Relaxed);
        events
    }

    /// Segments moved to the dead-letter tree; returns their events.
    pub fn note_dead_lettered(&self, segments: &[Bytes]) -> u64 {
        let events = self.note_removed(segments);
        self.counts
            .dead_letters
            .fetch_add(events, Ordering::Relaxed);
        events
    }

    /// A segment rewritten in place (erasure): `old` replaced by `new`.
    pub fn note_rewritten(&self, old: &[u8], new: &[u8]) {
        let removed = record::count_of(old).saturating_sub(record::count_of(new));
        self.counts.records.fetch_sub(removed, Ordering::Relaxed);
        self.counts.bytes.fetch_sub(
            old.len().saturating_sub(new.len()) as u64,
            Ordering::Relaxed,
        );
    }

    /// Dead-letter events removed (erasure, retention).
    pub fn note_dead_letters_removed(&self, events: u64) {
        self.counts
            .dead_letters
            .fetch_sub(events, Ordering::Relaxed);
    }

    pub fn records(&self) -> u64 {
        self.counts.records.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        let oldest_age_seconds = match self.store.first() {
            Ok(Some((_, bytes))) => record::decode(&bytes).map_or(0.0, |segment| {
                now_ms().saturating_sub(segment.oldest_ts) as f64 / 1000.0
            }),
            _ => 0.0,
        };
        Snapshot {
            events: self.records(),
            bytes: self.counts.bytes.load(Ordering::Relaxed),
            disk_bytes: self.store.size_on_disk(),
            oldest_age_seconds,
            dead_letters: self.counts.dead_letters.load(Ordering::Relaxed),
        }
    }

    fn publish_gauges(&self) {
        let snapshot = self.snapshot();
        metrics::gauge!(m::SPOOL_EVENTS).set(snapshot.events as f64);
        metrics::gauge!(m::SPOOL_BYTES).set(snapshot.bytes as f64);
        metrics::gauge!(m::SPOOL_DISK_BYTES).set(snapshot.disk_bytes as f64);
        metrics::gauge!(m::SPOOL_OLDEST_AGE_SECONDS).set(snapshot.oldest_age_seconds);
        metrics::gauge!(m::SPOOL_DEAD_LETTERS).set(snapshot.dead_letters as f64);
    }
}

/// The request path's end of the channel.
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
    /// Drains what is queued into the store, fsyncs, then returns.
    pub async fn finish(self) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("spool writer thread panicked; queued events may be lost");
        }
    }
}

/// Opens the store and starts the writer thread.
pub fn start(
    config: &SpoolConfig,
    heartbeat: Heartbeat,
) -> Result<(EventSender, Writer, Arc<Spool>), SpoolError> {
    let open_err = |source| SpoolError::Open {
        dir: config.dir.clone(),
        source,
    };
    let store = Store::open(&config.dir, config.cache_bytes).map_err(open_err)?;
    let held: Vec<Bytes> = store
        .iter()
        .map(|entry| entry.map(|(_, value)| value))
        .collect::<Result<_, _>>()
        .map_err(open_err)?;
    let dead: Vec<Bytes> = store
        .dead_letters()
        .map(|entry| entry.map(|(_, value)| value))
        .collect::<Result<_, _>>()
        .map_err(open_err)?;
    let (events, bytes) = totals(&held);
    let (dead_events, _) = totals(&dead);
    drop((held, dead));
    let next_seq = store.next_seq().map_err(open_err)?;
    if events > 0 {
        tracing::info!(
            events,
            bytes,
            "spool holds events from an earlier run; they will be forwarded"
        );
    }
    let spool = Arc::new(Spool {
        store,
        counts: Counts {
            records: AtomicU64::new(events),
            bytes: AtomicU64::new(bytes),
            dead_letters: AtomicU64::new(dead_events),
        },
        appended: tokio::sync::Notify::new(),
    });
    let (channel, receiver) = sync_channel(config.channel_capacity.get());
    let depth = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = DropReason::ALL.map(DropReason::counter);
    let task = WriterTask {
        receiver,
        spool: spool.clone(),
        config: config.clone(),
        depth: depth.clone(),
        stop: stop.clone(),
        heartbeat,
        next_seq,
        unflushed_since: None,
        last_housekeeping: Instant::now(),
        written: metrics::counter!(m::EVENTS_WRITTEN_TOTAL),
        batches: metrics::counter!(m::SPOOL_BATCHES_WRITTEN_TOTAL),
        write_errors: metrics::counter!(m::EVENTS_WRITE_ERRORS_TOTAL),
        flush_seconds: metrics::histogram!(m::SPOOL_FLUSH_DURATION_SECONDS),
        dropped: dropped.clone(),
        drop_log: RateLimitedLog::default(),
    };
    spool.publish_gauges();
    metrics::gauge!(m::EVENTS_QUEUE_DEPTH).set(0.0);
    let thread = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || task.run())
        .map_err(SpoolError::Thread)?;
    let [dropped_full, dropped_stopped, ..] = dropped;
    let sender = EventSender {
        channel,
        depth,
        dropped_full,
        dropped_stopped,
    };
    Ok((sender, Writer { stop, thread }, spool))
}

/// Events and bytes in stored segments.
fn totals(segments: &[Bytes]) -> (u64, u64) {
    segments.iter().fold((0, 0), |(events, bytes), segment| {
        (
            events + record::count_of(segment),
            bytes + segment.len() as u64,
        )
    })
}

struct WriterTask {
    receiver: Receiver<Event>,
    spool: Arc<Spool>,
    config: SpoolConfig,
    depth: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    heartbeat: Heartbeat,
    next_seq: Seq,
    unflushed_since: Option<Instant>,
    last_housekeeping: Instant,
    written: Counter,
    batches: Counter,
    write_errors: Counter,
    flush_seconds: Histogram,
    dropped: [Counter; DropReason::ALL.len()],
    drop_log: RateLimitedLog,
}

impl WriterTask {
    fn run(mut self) {
        loop {
            // Never block in `recv`: a blocked receiver makes every `try_send` on the
            // request path wake this thread, a context switch per request. Sleeping
            // and draining costs one wake-up per `batch_delay` instead.
            let disconnected = self.drain();
            self.heartbeat.beat();
            self.flush_if_due();
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                self.housekeeping();
            }
            if disconnected || self.stop.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(self.pause());
        }
        // Whatever is still queued was answered: it goes to disk before we exit.
        self.drain();
        self.flush();
        self.spool.publish_gauges();
        metrics::gauge!(m::EVENTS_QUEUE_DEPTH).set(0.0);
    }

    /// Commits everything queued, in segments; true when every sender is gone.
    fn drain(&mut self) -> bool {
        loop {
            let mut segment = SegmentWriter::new();
            let disconnected = loop {
                match self.receiver.try_recv() {
                    Ok(event) => {
                        self.depth.fetch_sub(1, Ordering::Relaxed);
                        if let Err(err) = segment.push(&event) {
                            self.failed(&err, 1);
                            self.dropped(DropReason::WriteFailed, 1);
                        }
                        if segment.len() >= self.config.max_batch_events.get()
                            || segment.bytes() >= self.max_segment_bytes()
                        {
                            break false;
                        }
                    }
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            let full = segment.len() >= self.config.max_batch_events.get()
                || segment.bytes() >= self.max_segment_bytes();
            if !segment.is_empty() {
                self.commit(segment);
            }
            if disconnected || !full {
                // `batch` durability: one fsync for everything this wake-up took,
                // however many segments it made.
                if self.config.durability == Durability::EveryBatch {
                    self.flush();
                }
                return disconnected;
            }
        }
    }

    /// A group commit is stored as segments no larger than the store keeps inline
    /// ([`crate::store::MAX_INLINE_VALUE_BYTES`]; one event may overshoot it).
    fn max_segment_bytes(&self) -> usize {
        self.config
            .max_batch_bytes
            .min(crate::store::MAX_INLINE_VALUE_BYTES)
    }

    /// How long to sleep: one batch delay, or less when an fsync falls due sooner.
    fn pause(&self) -> Duration {
        let pause = self.config.batch_delay.clamp(MIN_PAUSE, STOP_CHECK);
        match (self.unflushed_since, self.config.durability) {
            (Some(since), Durability::Interval(every)) => every
                .saturating_sub(since.elapsed())
                .clamp(MIN_PAUSE, pause),
            _ => pause,
        }
    }

    fn commit(&mut self, mut segment: SegmentWriter) {
        let held = self.spool.counts.bytes.load(Ordering::Relaxed);
        let excess = (held + segment.bytes() as u64).saturating_sub(self.config.max_bytes);
        if excess > 0 {
            if self.config.full_policy == FullPolicy::DropOldest {
                self.evict_oldest(excess);
            }
            // Refuses the newest under drop_newest, and under drop_oldest whatever
            // still does not fit once nothing older is left.
            let held = self.spool.counts.bytes.load(Ordering::Relaxed);
            let room = self.config.max_bytes.saturating_sub(held) as usize;
            let refused = segment.truncate_to(room);
            self.dropped(DropReason::SpoolFull, refused as u64);
        }
        if segment.is_empty() {
            return;
        }
        let events = segment.len() as u64;
        let bytes = segment.finish();
        let size = bytes.len() as u64;
        let seq = self.next_seq;
        match self.spool.store.append(seq, bytes) {
            Ok(()) => {
                self.next_seq += 1;
                self.spool
                    .counts
                    .records
                    .fetch_add(events, Ordering::Relaxed);
                self.spool.counts.bytes.fetch_add(size, Ordering::Relaxed);
                self.written.increment(events);
                self.batches.increment(1);
                self.unflushed_since.get_or_insert_with(Instant::now);
                self.spool.appended.notify_one();
            }
            Err(err) => {
                self.failed(&err, events);
                self.dropped(DropReason::WriteFailed, events);
            }
        }
    }

    /// Removes the oldest segments until at least `bytes` are freed.
    fn evict_oldest(&mut self, bytes: u64) {
        let mut freed = 0;
        while freed < bytes {
            let oldest = match self.spool.store.read_from(0, EVICT_STEP, usize::MAX) {
                Ok(oldest) if !oldest.is_empty() => oldest,
                Ok(_) => return,
                Err(err) => return self.failed(&err, 0),
            };
            let mut seqs = Vec::with_capacity(oldest.len());
            for (seq, segment) in &oldest {
                seqs.push(*seq);
                freed += segment.len() as u64;
                if freed >= bytes {
                    break;
                }
            }
            match self.spool.store.remove(&seqs) {
                Ok(removed) => {
                    let events = self.spool.note_removed(&removed);
                    self.dropped(DropReason::SpoolFull, events);
                }
                Err(err) => return self.failed(&err, 0),
            }
        }
    }

    /// Drops segments whose newest event is older than `max_age`; refreshes gauges.
    fn housekeeping(&mut self) {
        self.last_housekeeping = Instant::now();
        let cutoff = now_ms().saturating_sub(self.config.max_age.as_millis() as u64);
        loop {
            let oldest = match self.spool.store.read_from(0, EVICT_STEP, usize::MAX) {
                Ok(oldest) => oldest,
                Err(err) => {
                    self.failed(&err, 0);
                    break;
                }
            };
            let expired: Vec<Seq> = oldest
                .iter()
                .take_while(|(_, bytes)| {
                    record::decode(bytes).is_ok_and(|segment| segment.newest_ts < cutoff)
                })
                .map(|(seq, _)| *seq)
                .collect();
            if expired.is_empty() {
                break;
            }
            match self.spool.store.remove(&expired) {
                Ok(removed) => {
                    let events = self.spool.note_removed(&removed);
                    self.dropped(DropReason::Retention, events);
                }
                Err(err) => {
                    self.failed(&err, 0);
                    break;
                }
            }
            if expired.len() < oldest.len() {
                break;
            }
        }
        self.expire_dead_letters(cutoff);
        self.spool.publish_gauges();
        metrics::gauge!(m::EVENTS_QUEUE_DEPTH).set(self.depth.load(Ordering::Relaxed) as f64);
    }

    /// Dead letters fall under the same retention as everything else.
    fn expire_dead_letters(&mut self, cutoff: u64) {
        let expired: Result<Vec<Seq>, StoreError> = self
            .spool
            .store
            .dead_letters()
            .take(EVICT_STEP)
            .take_while(|entry| {
                entry.as_ref().map_or(true, |(_, bytes)| {
                    record::decode(bytes).is_ok_and(|segment| segment.newest_ts < cutoff)
                })
            })
            .map(|entry| entry.map(|(seq, _)| seq))
            .collect();
        let removed = expired.and_then(|seqs| self.spool.store.remove_dead_letters(&seqs));
        match removed {
            Ok(removed) => {
                let events: u64 = removed.iter().map(|v| record::count_of(v)).sum();
                self.spool.note_dead_letters_removed(events);
                self.dropped(DropReason::RetentionDeadLetter, events);
            }
            Err(err) => self.failed(&err, 0),
        }
    }

    fn flush_if_due(&mut self) {
        if let (Some(since), Durability::Interval(every)) =
            (self.unflushed_since, self.config.durability)
        {
            if since.elapsed() >= every {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.unflushed_since.is_none() {
            return;
        }
        let started = Instant::now();
        match self.spool.store.flush() {
            Ok(()) => {
                self.flush_seconds.record(started.elapsed().as_secs_f64());
                self.unflushed_since = None;
            }
            Err(err) => self.failed(&err, 0),
        }
    }

    fn dropped(&mut self, reason: DropReason, count: u64) {
        if count == 0 {
            return;
        }
        let index = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("ALL lists every reason");
        self.dropped[index].increment(count);
        if let Some(total) = self.drop_log.add(count) {
            tracing::warn!(
                reason = reason.as_str(),
                dropped = total,
                "spool bound reached: events dropped"
            );
        }
    }

    fn failed(&mut self, err: &dyn std::fmt::Display, events: u64) {
        self.write_errors.increment(1);
        tracing::error!(error = %err, events, "spool write failed; events may be lost");
    }
}

/// Logs at most once per interval, reporting how many happened in between.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    pending: u64,
}

impl RateLimitedLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn add(&mut self, count: u64) -> Option<u64> {
        self.pending += count;
        if self.last.is_some_and(|at| at.elapsed() < Self::EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, SCHEMA_VERSION};
    use crate::health::Health;
    use crate::token::Kind;
    use std::num::NonZeroUsize;
    use std::path::Path;

    fn event(n: u128, ts: u64) -> Event {
        Event {
            v: SCHEMA_VERSION,
            id: EventId(n),
            ts,
            kind: crate::event::EventKind::Tracked(Kind::Open),
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
            self_open: false,
            rate_limited: false,
            node: "n".into(),
        }
    }

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.join("spool"),
            channel_capacity: NonZeroUsize::new(10_000).unwrap(),
            max_batch_events: NonZeroUsize::new(100).unwrap(),
            max_batch_bytes: 1 << 20,
            batch_delay: Duration::from_millis(1),
            durability: Durability::Interval(Duration::from_millis(20)),
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            full_policy: FullPolicy::DropOldest,
            cache_bytes: 8 << 20,
        }
    }

    /// Bytes of a segment of `n` test events (all the same size).
    fn segment_size(n: u128) -> u64 {
        let mut segment = SegmentWriter::new();
        for i in 0..n {
            segment.push(&event(10 + i, now_ms())).unwrap();
        }
        segment.finish().len() as u64
    }

    fn messages(spool: &Spool) -> Vec<String> {
        let mut out = Vec::new();
        for entry in spool.store.iter() {
            let (_, bytes) = entry.unwrap();
            for record in record::decode(&bytes).unwrap().records().unwrap() {
                let json: serde_json::Value = serde_json::from_slice(record.json).unwrap();
                out.push(json["message"].as_str().unwrap().to_owned());
            }
        }
        out
    }

    async fn run(config: &SpoolConfig, events: impl IntoIterator<Item = Event>) -> Arc<Spool> {
        let health = Health::new();
        // A reopen may find sled still letting go of the directory lock: wait a bit.
        let deadline = Instant::now() + Duration::from_secs(10);
        let (sender, writer, spool) = loop {
            match start(config, health.register("w", Duration::from_secs(5))) {
                Ok(started) => break started,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(err) => panic!("cannot start the spool: {err}"),
            }
        };
        for event in events {
            sender.send(event).unwrap();
        }
        writer.finish().await;
        assert_eq!(sender.send(event(0, 0)), Err(DropReason::WriterStopped));
        spool
    }

    #[tokio::test]
    async fn finish_commits_every_queued_event_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let now = now_ms();
        let spool = run(&config, (0..1000).map(|n| event(n, now))).await;
        assert_eq!(spool.records(), 1000);
        let kept = messages(&spool);
        assert_eq!(kept.len(), 1000);
        assert_eq!(kept[0], "m0");
        assert_eq!(kept[999], "m999");
        let segments = spool.store.iter().count();
        assert!(
            segments < 200,
            "group commits: {segments} segments for 1000 events"
        );
        drop(spool);
        // Reopened, the counts are found again and the numbering continues.
        let spool = run(&config, [event(5000, now)]).await;
        assert_eq!(spool.records(), 1001);
        assert_eq!(messages(&spool).last().unwrap(), "m5000");
    }

    #[tokio::test]
    async fn drop_newest_refuses_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.full_policy = FullPolicy::DropNewest;
        config.max_bytes = segment_size(10) + 10;
        let spool = run(&config, (0..25).map(|n| event(n, now_ms()))).await;
        assert_eq!(spool.records(), 10);
        assert_eq!(messages(&spool)[0], "m0", "the oldest are kept");
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.max_batch_events = NonZeroUsize::new(1).unwrap();
        config.max_bytes = segment_size(1) * 10 + 10;
        let spool = run(&config, (0..25).map(|n| event(n, now_ms()))).await;
        assert_eq!(spool.records(), 10);
        assert!(spool.snapshot().bytes <= config.max_bytes);
        assert_eq!(messages(&spool)[0], "m15", "the newest are kept");
    }

    #[tokio::test]
    async fn events_older_than_max_age_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.max_age = Duration::from_secs(60);
        let now = now_ms();
        let health = Health::new();
        let (sender, writer, spool) =
            start(&config, health.register("w", Duration::from_secs(5))).unwrap();
        for n in 0..5 {
            sender.send(event(n, now - 3_600_000)).unwrap();
        }
        // A segment goes when its newest event is too old: keep the fresh ones apart.
        let deadline = Instant::now() + Duration::from_secs(10);
        while spool.store.iter().count() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for n in 5..8 {
            sender.send(event(n, now)).unwrap();
        }
        // Housekeeping runs once a second; wait for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(10);
        while spool.records() != 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        writer.finish().await;
        assert_eq!(spool.records(), 3);
    }

    #[test]
    fn rate_limited_log_reports_the_count_in_between() {
        let mut log = RateLimitedLog::default();
        assert_eq!(log.add(3), Some(3));
        assert_eq!(log.add(2), None);
        assert_eq!(log.add(4), None);
        log.last = Some(Instant::now() - Duration::from_secs(11));
        assert_eq!(log.add(1), Some(7));
    }

    #[test]
    fn a_full_channel_drops_instead_of_waiting() {
        let (channel, _receiver) = sync_channel(1);
        let sender = EventSender {
            channel,
            depth: Arc::new(AtomicUsize::new(0)),
            dropped_full: Counter::noop(),
            dropped_stopped: Counter::noop(),
        };
        assert_eq!(sender.send(event(1, 0)), Ok(()));
        assert_eq!(sender.send(event(2, 0)), Err(DropReason::ChannelFull));
        assert_eq!(sender.depth.load(Ordering::Relaxed), 1);
    }
}
