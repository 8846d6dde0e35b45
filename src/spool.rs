//! The durable spool: requests hand events over here, a writer thread commits them to
//! the [`Store`] in group commits, and the forwarder takes them from there.
//!
//! Requests push [`Event`]s into a bounded channel with [`EventSender::send`], which
//! never waits: a full channel drops the event and counts it. The writer thread
//! ([`writer`]; disk I/O never runs on the async workers) wakes every `batch_delay`,
//! takes what has arrived in segments of up to `max_batch_events` events or
//! `max_batch_bytes` (and, compressed, about [`crate::store::MAX_INLINE_VALUE_BYTES`],
//! what the store keeps inline), encodes each ([`crate::record`]) and appends it under
//! the next sequence number: one engine write per segment, and no wake-up per request.
//!
//! Durability: in `interval` mode the writer fsyncs at most `flush_every` after a
//! write, in `batch` mode after every batch. Loss on a crash (kill -9, power loss) is
//! therefore bounded by `batch_delay + flush_every` (plus what was queued in the
//! channel if the writer had fallen behind); on a graceful stop [`Writer::finish`]
//! drains the channel, commits and fsyncs, so nothing is lost.
//!
//! The spool owns its log: the store is private, and every change to it happens in one
//! call here together with its count, so the counts always equal what is stored.
//! Segments handed to the forwarder are *leased* ([`Lease`]): the size bound and the
//! age bound never take a leased segment (the forwarder may be sending it, and an
//! event counted as dropped must never arrive upstream); the lease drops expired
//! records itself before every send, so nothing past its retention age leaves. An
//! erasure ([`Spool::erase_where`]) waits until no send is under way, rewrites leased
//! segments too and makes their leases re-read them, so an erased event never leaves
//! after the erasure returned.
//!
//! Bounds: past `max_bytes` of segments the full policy drops the oldest (unleased)
//! segments or refuses the newest events; records older than `max_age`
//! (`retention.max_age_secs`) are dropped, dead letters included. Every drop is
//! counted in `trackedge_events_dropped_total{reason}` and logged at most every 10 s.

mod lease;
mod relabel;
mod sweep;
mod writer;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::Counter;

use crate::config::SpoolConfig;
use crate::event::{now_ms, Event};
use crate::health::Heartbeat;
use crate::metrics as m;
use crate::record::{self, Filtered};
use crate::store::{Bytes, Seq, Store, StoreError};
use crate::suppression::Suppressions;

pub use lease::{Lease, Leased};
pub use relabel::Relabel;
pub use sweep::Erased;
pub use writer::Writer;

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

    /// The position in [`DropReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

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
struct Counts {
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

/// Held while an existing segment changes (everything but appends): the segments
/// leased to in-flight batches.
#[derive(Debug, Default)]
struct Guarded {
    leased: BTreeSet<Seq>,
}

/// The shared spool: the store, its counts, its leases and the wake-up for the
/// forwarder.
pub struct Spool {
    store: Store,
    counts: Counts,
    appended: tokio::sync::Notify,
    /// Appends since the start, so the forwarder can tell a stream that is still
    /// arriving from the rest of a backlog.
    appends: AtomicU64,
    guarded: Mutex<Guarded>,
    /// Bumped (under `guarded`) whenever an erasure rewrites a leased segment; a
    /// lease that saw an older value re-reads its segments before sending.
    epoch: AtomicU64,
    /// Sends hold it shared, an erasure exclusively: no send is under way while a
    /// subject is erased.
    sends: tokio::sync::RwLock<()>,
    max_age: Duration,
    /// Segments younger than this are not leased yet (`classify.hold_back_ms`)...
    hold_back: Duration,
    /// ...until a graceful stop ends the holding: what is there goes out.
    holding: AtomicBool,
    dropped: [Counter; DropReason::ALL.len()],
    drop_log: Mutex<RateLimitedLog>,
}

impl Spool {
    /// Resolves when new records were appended since the last call.
    pub async fn appended(&self) {
        self.appended.notified().await;
    }

    pub fn records(&self) -> u64 {
        self.counts.records.load(Ordering::Relaxed)
    }

    /// Segments appended since the spool was opened.
    pub fn appends(&self) -> u64 {
        self.appends.load(Ordering::Relaxed)
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

    /// The suppression list, kept in the same store so it shares its durability.
    pub fn suppressions(&self) -> Result<Suppressions, StoreError> {
        Suppressions::load(self.store.clone())
    }

    /// Waits until no send is under way and holds off new ones while the guard lives.
    pub async fn pause_sends(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.sends.write().await
    }

    /// A send holds this while it is under way (see [`Spool::pause_sends`]).
    pub async fn sending(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.sends.read().await
    }

    /// Stops holding events back: on a graceful stop everything held is forwarded
    /// (no later hit can relabel it any more).
    pub fn stop_holding_back(&self) {
        self.holding.store(false, Ordering::Relaxed);
    }

    /// Records older than this (unix ms) are past retention.
    fn cutoff_ms(&self) -> u64 {
        now_ms().saturating_sub(self.max_age.as_millis() as u64)
    }

    fn guard(&self) -> MutexGuard<'_, Guarded> {
        self.guarded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a new segment (new sequence numbers need no guard).
    fn append(&self, seq: Seq, bytes: Vec<u8>, events: u64) -> Result<(), StoreError> {
        let size = bytes.len() as u64;
        self.store.append(seq, bytes)?;
        self.counts.records.fetch_add(events, Ordering::Relaxed);
        self.counts.bytes.fetch_add(size, Ordering::Relaxed);
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.appended.notify_one();
        Ok(())
    }

    /// Applies a filtered segment under the guard: removes or replaces it and keeps
    /// the counts. Returns what is stored under `seq` afterwards.
    fn apply(
        &self,
        _guard: &MutexGuard<'_, Guarded>,
        seq: Seq,
        old: &Bytes,
        filtered: Filtered,
    ) -> Result<Option<Bytes>, StoreError> {
        match filtered {
            Filtered::Unchanged => Ok(Some(old.clone())),
            Filtered::Emptied { .. } => {
                self.removed(&self.store.remove(&[seq])?);
                Ok(None)
            }
            Filtered::Rewritten { bytes, removed } => {
                let new_len = bytes.len() as u64;
                let stored = Bytes::from(bytes.as_slice());
                if self.store.replace(seq, bytes)?.is_none() {
                    // Gone meanwhile (callers hold the guard, so this is defensive).
                    return Ok(None);
                }
                self.counts.records.fetch_sub(removed, Ordering::Relaxed);
                // Compressed anew, fewer records need not take fewer bytes.
                let old_len = old.len() as u64;
                if new_len <= old_len {
                    self.counts
                        .bytes
                        .fetch_sub(old_len - new_len, Ordering::Relaxed);
                } else {
                    self.counts
                        .bytes
                        .fetch_add(new_len - old_len, Ordering::Relaxed);
                }
                Ok(Some(stored))
            }
        }
    }

    /// Segments that left the store; returns the events they held.
    fn removed(&self, segments: &[Bytes]) -> u64 {
        let (events, bytes) = totals(segments);
        self.counts.records.fetch_sub(events, Ordering::Relaxed);
        self.counts.bytes.fetch_sub(bytes, Ordering::Relaxed);
        events
    }

    /// Moves segments to the dead letters; returns the events moved.
    fn move_to_dead_letters(
        &self,
        _guard: &MutexGuard<'_, Guarded>,
        seqs: &[Seq],
    ) -> Result<u64, StoreError> {
        let moved = self.store.move_to_dead_letters(seqs)?;
        let events = self.removed(&moved);
        self.counts
            .dead_letters
            .fetch_add(events, Ordering::Relaxed);
        Ok(events)
    }

    fn dropped(&self, reason: DropReason, count: u64) {
        if count == 0 {
            return;
        }
        self.dropped[reason.index()].increment(count);
        let logged = self
            .drop_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(count);
        if let Some(total) = logged {
            tracing::warn!(
                reason = reason.as_str(),
                dropped = total,
                "spool bound reached: events dropped"
            );
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

/// What travels from the request path to the writer.
enum Handoff {
    /// Boxed: the channel is a ring of `spool.channel_capacity` slots that a busy
    /// edge touches all of, so a slot's size is resident memory for good (65,536
    /// events by value held about 20 MB; boxed, the ring is 1.5 MB and an event's
    /// memory goes back to the allocator once written).
    Event(Box<Event>),
    /// Answered once everything queued before it is committed.
    Barrier(tokio::sync::oneshot::Sender<()>),
    /// Relabels events queued before it (boxed: rare, and large).
    Relabel(Box<Relabel>),
}

/// Why [`EventSender::committed`] could not confirm the hand-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BarrierError {
    #[error("the spool writer did not confirm the commit in time")]
    Timeout,
    #[error("the spool writer stopped without confirming the commit")]
    WriterFailed,
}

/// The request path's end of the channel.
pub struct EventSender {
    channel: SyncSender<Handoff>,
    depth: Arc<AtomicUsize>,
    dropped_full: Counter,
    dropped_stopped: Counter,
}

impl EventSender {
    /// Queues `event` without waiting; returns why it was dropped if it was.
    pub fn send(&self, event: Event) -> Result<(), DropReason> {
        // Counted before the send so the writer's decrement can never underflow.
        self.depth.fetch_add(1, Ordering::Relaxed);
        let reason = match self.channel.try_send(Handoff::Event(Box::new(event))) {
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

    /// Queues a relabel of earlier events without waiting; false if the channel is
    /// full or the writer has stopped (the events keep their first label).
    pub fn relabel(&self, relabel: Relabel) -> bool {
        self.channel
            .try_send(Handoff::Relabel(Box::new(relabel)))
            .is_ok()
    }

    /// Resolves once every event queued before the call is in the store (or the
    /// writer has stopped, which commits everything first). An erasure calls it so
    /// that events answered just before it cannot slip past the sweep.
    pub async fn committed(&self, wait: Duration) -> Result<(), BarrierError> {
        let deadline = tokio::time::Instant::now() + wait;
        let (done, confirmed) = tokio::sync::oneshot::channel();
        let mut barrier = Handoff::Barrier(done);
        loop {
            match self.channel.try_send(barrier) {
                Ok(()) => break,
                // The writer has finished: it drained the channel before it did.
                Err(TrySendError::Disconnected(_)) => return Ok(()),
                Err(TrySendError::Full(back)) if tokio::time::Instant::now() < deadline => {
                    barrier = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Full(_)) => return Err(BarrierError::Timeout),
            }
        }
        match tokio::time::timeout_at(deadline, confirmed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BarrierError::WriterFailed),
            Err(_) => Err(BarrierError::Timeout),
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
    let store = Store::open_or_set_aside(&config.dir, config.cache_bytes).map_err(open_err)?;
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
    let dropped = DropReason::ALL.map(DropReason::counter);
    let spool = Arc::new(Spool {
        store,
        counts: Counts {
            records: AtomicU64::new(events),
            bytes: AtomicU64::new(bytes),
            dead_letters: AtomicU64::new(dead_events),
        },
        appended: tokio::sync::Notify::new(),
        appends: AtomicU64::new(0),
        guarded: Mutex::new(Guarded::default()),
        epoch: AtomicU64::new(0),
        sends: tokio::sync::RwLock::new(()),
        max_age: config.max_age,
        hold_back: config.hold_back,
        holding: AtomicBool::new(!config.hold_back.is_zero()),
        dropped: dropped.clone(),
        drop_log: Mutex::new(RateLimitedLog::default()),
    });
    // The bounds themselves, so alerts can say how close the spool is to them.
    metrics::gauge!(m::SPOOL_MAX_BYTES).set(config.max_bytes as f64);
    metrics::gauge!(m::SPOOL_MAX_AGE_SECONDS).set(config.max_age.as_secs_f64());
    let (channel, receiver) = sync_channel(config.channel_capacity.get());
    let depth = Arc::new(AtomicUsize::new(0));
    let writer = Writer::start(
        receiver,
        spool.clone(),
        config.clone(),
        depth.clone(),
        heartbeat,
        next_seq,
    )
    .map_err(SpoolError::Thread)?;
    let [dropped_full, dropped_stopped, ..] = dropped;
    let sender = EventSender {
        channel,
        depth,
        dropped_full,
        dropped_stopped,
    };
    Ok((sender, writer, spool))
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
mod tests;
