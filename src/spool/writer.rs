//! The writer thread: drains the hand-off channel into group commits, fsyncs as the
//! durability mode says, and enforces the size and age bounds.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};

use super::relabel::Found;
use super::{DropReason, Handoff, Relabel, Spool};
use crate::config::{Durability, FullPolicy, SpoolConfig};
use crate::event::{now_ms, EventId};
use crate::health::Heartbeat;
use crate::metrics as m;
use crate::record::SegmentWriter;
use crate::store::Seq;

/// The longest the writer sleeps between looks at the stop flag and the clock.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// The shortest: below this a sleeping writer is a spinning writer.
const MIN_PAUSE: Duration = Duration::from_millis(1);
/// How often age bounds and gauges are refreshed.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// A relabel waits this long before it looks for its events, and again for those
/// not found yet: the request that recorded one may not have queued it (its click
/// was remembered a moment before its event was sent, and requests run in parallel).
const RELABEL_DELAY: Duration = Duration::from_millis(20);
/// Looks per relabel, the first included.
const RELABEL_ATTEMPTS: u8 = 3;
/// Events not found that are older than this have left (or were never stored).
const IN_TRANSIT_MS: u64 = 500;
/// Relabels waiting at once; beyond, they are done at once.
const MAX_DEFERRED: usize = 1024;
/// The most plain bytes a segment may take per stored byte it is expected to need:
/// if the events suddenly stop compressing, a segment overshoots the inline bound
/// by at most this factor, once (the next one is sized by what it measured).
const MAX_PLAIN_PER_STORED: f64 = 8.0;
/// Sizes segments a little below what the last one measured: the next batch may
/// compress worse.
const PLAIN_PER_STORED_MARGIN: f64 = 0.8;

/// A relabel waiting for its events.
struct Deferred {
    relabel: Relabel,
    due: Instant,
    attempts: u8,
    /// Found in leased segments or gone: named in one `reclassify` event at the end.
    may_have_left: Vec<EventId>,
}

/// The writer thread; [`Writer::finish`] stops it after draining the channel.
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    pub(super) fn start(
        receiver: Receiver<Handoff>,
        spool: Arc<Spool>,
        config: SpoolConfig,
        depth: Arc<AtomicUsize>,
        heartbeat: Heartbeat,
        next_seq: Seq,
    ) -> std::io::Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let task = WriterTask {
            receiver,
            spool,
            config,
            depth,
            stop: stop.clone(),
            heartbeat,
            next_seq,
            unflushed_since: None,
            last_housekeeping: Instant::now(),
            deferred: Vec::new(),
            plain_per_stored: 1.0,
            reclassified: metrics::counter!(m::CLASSIFY_RELABELLED_EVENTS_TOTAL, "outcome" => "reclassify"),
            written: metrics::counter!(m::EVENTS_WRITTEN_TOTAL),
            batches: metrics::counter!(m::SPOOL_BATCHES_WRITTEN_TOTAL),
            write_errors: metrics::counter!(m::EVENTS_WRITE_ERRORS_TOTAL),
            flush_seconds: metrics::histogram!(m::SPOOL_FLUSH_DURATION_SECONDS),
        };
        task.spool.publish_gauges();
        metrics::gauge!(m::EVENTS_QUEUE_DEPTH).set(0.0);
        task.reclassified.increment(0);
        metrics::counter!(m::CLASSIFY_RELABELLED_EVENTS_TOTAL, "outcome" => "relabelled")
            .increment(0);
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || task.run())?;
        Ok(Writer { stop, thread })
    }

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

struct WriterTask {
    receiver: Receiver<Handoff>,
    spool: Arc<Spool>,
    config: SpoolConfig,
    depth: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    heartbeat: Heartbeat,
    next_seq: Seq,
    unflushed_since: Option<Instant>,
    last_housekeeping: Instant,
    deferred: Vec<Deferred>,
    /// Plain segment bytes per stored byte, from the last full segment (with
    /// [`PLAIN_PER_STORED_MARGIN`]); 1 until measured.
    plain_per_stored: f64,
    reclassified: Counter,
    written: Counter,
    batches: Counter,
    write_errors: Counter,
    flush_seconds: Histogram,
}

impl WriterTask {
    fn run(mut self) {
        loop {
            // Never block in `recv`: a blocked receiver makes every `try_send` on the
            // request path wake this thread, a context switch per request. Sleeping
            // and draining costs one wake-up per `batch_delay` instead.
            let disconnected = self.drain();
            self.relabel_due(false);
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
        self.relabel_due(true);
        self.flush();
        self.spool.publish_gauges();
        metrics::gauge!(m::EVENTS_QUEUE_DEPTH).set(0.0);
    }

    /// Commits everything queued, in segments, then answers the barriers met on the
    /// way; true when every sender is gone.
    fn drain(&mut self) -> bool {
        let mut barriers = Vec::new();
        let disconnected = loop {
            let mut segment = SegmentWriter::new();
            let (disconnected, full) = loop {
                match self.receiver.try_recv() {
                    Ok(Handoff::Event(event)) => {
                        self.depth.fetch_sub(1, Ordering::Relaxed);
                        if let Err(err) = segment.push(&event) {
                            self.failed(&err, 1);
                            self.spool.dropped(DropReason::WriteFailed, 1);
                        }
                        if self.is_full(&segment) {
                            break (false, true);
                        }
                    }
                    Ok(Handoff::Barrier(done)) => barriers.push(done),
                    Ok(Handoff::Relabel(relabel)) => {
                        if self.deferred.len() >= MAX_DEFERRED {
                            self.relabel_due(true);
                        }
                        self.deferred.push(Deferred {
                            relabel: *relabel,
                            due: Instant::now() + RELABEL_DELAY,
                            attempts: 0,
                            may_have_left: Vec::new(),
                        });
                    }
                    Err(TryRecvError::Empty) => break (false, false),
                    Err(TryRecvError::Disconnected) => break (true, false),
                }
            };
            if !segment.is_empty() {
                self.commit(segment);
            }
            if full {
                // The segment filled, so more may be queued. The writer shares its
                // core with the request workers (pinned edges run everything on
                // one): a drain of a deep queue in one go holds a woken worker off the
                // CPU for milliseconds. Giving way after each segment bounds that wait
                // to one segment's work; with no worker waiting it returns at once.
                std::thread::yield_now();
            }
            if disconnected || !full {
                // `batch` durability: one fsync for everything this wake-up took,
                // however many segments it made.
                if self.config.durability == Durability::EveryBatch {
                    self.flush();
                }
                break disconnected;
            }
        };
        if !barriers.is_empty() {
            // A barrier's caller (an erasure) must find what the relabels write.
            self.relabel_due(true);
        }
        for done in barriers {
            // The caller may have given up waiting; nothing to tell then.
            let _ = done.send(());
        }
        disconnected
    }

    /// Runs the relabels that are due (all of them with `force`): relabels what the
    /// spool still holds, looks again a little later for events that may still be on
    /// their way, and names what may have left in one `reclassify` event each.
    fn relabel_due(&mut self, force: bool) {
        if self.deferred.is_empty() {
            return;
        }
        let now = Instant::now();
        for mut deferred in std::mem::take(&mut self.deferred) {
            if !force && deferred.due > now {
                self.deferred.push(deferred);
                continue;
            }
            deferred.attempts += 1;
            let Found { leased, missing } = match self.spool.relabel(&deferred.relabel) {
                Ok(found) => found,
                Err(err) => {
                    // Some may be rewritten, some not: the upstream hears of all.
                    self.failed(&err, 0);
                    Found {
                        leased: Vec::new(),
                        missing: deferred.relabel.ids.clone(),
                    }
                }
            };
            deferred.may_have_left.extend(leased);
            let last_look = force || deferred.attempts >= RELABEL_ATTEMPTS;
            let at = now_ms();
            let (in_transit, gone): (Vec<EventId>, Vec<EventId>) = missing
                .into_iter()
                .partition(|id| !last_look && at.saturating_sub(id.timestamp_ms()) < IN_TRANSIT_MS);
            deferred.may_have_left.extend(gone);
            if in_transit.is_empty() {
                self.reclassify(&deferred.relabel, deferred.may_have_left);
            } else {
                deferred.relabel.ids = in_transit;
                deferred.due = now + RELABEL_DELAY;
                self.deferred.push(deferred);
            }
        }
    }

    /// Queues the `reclassify` event naming `ids` (none: nothing to send).
    fn reclassify(&mut self, relabel: &Relabel, mut ids: Vec<EventId>) {
        if ids.is_empty() {
            return;
        }
        ids.sort_unstable();
        let named = ids.len() as u64;
        let mut event = relabel.reclassify.clone();
        event.ids = ids;
        let mut segment = SegmentWriter::new();
        match segment.push(&event) {
            Ok(()) => {
                self.commit(segment);
                self.reclassified.increment(named);
            }
            Err(err) => {
                self.failed(&err, 1);
                self.spool.dropped(DropReason::WriteFailed, 1);
                metrics::counter!(m::CLASSIFY_RELABELLED_EVENTS_TOTAL, "outcome" => "lost")
                    .increment(named);
            }
        }
    }

    fn is_full(&self, segment: &SegmentWriter) -> bool {
        segment.len() >= self.config.max_batch_events.get()
            || segment.bytes() >= self.max_segment_bytes()
    }

    /// A group commit is stored as segments no larger than the store keeps inline
    /// ([`crate::store::MAX_INLINE_VALUE_BYTES`]; one event may overshoot it).
    /// Segments are compressed, so this bounds their plain size by what the last
    /// full one compressed to.
    fn max_segment_bytes(&self) -> usize {
        let inline = crate::store::MAX_INLINE_VALUE_BYTES as f64 * self.plain_per_stored;
        self.config.max_batch_bytes.min(inline as usize)
    }

    /// How long to sleep: one batch delay, or less when an fsync or a relabel falls
    /// due sooner.
    fn pause(&self) -> Duration {
        let relabel = self
            .deferred
            .iter()
            .map(|d| d.due.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(STOP_CHECK);
        let pause = self
            .config
            .batch_delay
            .min(relabel)
            .clamp(MIN_PAUSE, STOP_CHECK);
        match (self.unflushed_since, self.config.durability) {
            (Some(since), Durability::Interval(every)) => every
                .saturating_sub(since.elapsed())
                .clamp(MIN_PAUSE, pause),
            _ => pause,
        }
    }

    fn commit(&mut self, mut segment: SegmentWriter) {
        let plain = segment.bytes();
        let full = plain >= self.max_segment_bytes();
        let mut stored = segment.finish();
        if full {
            self.plain_per_stored = (PLAIN_PER_STORED_MARGIN * plain as f64 / stored.len() as f64)
                .clamp(1.0, MAX_PLAIN_PER_STORED);
        }
        let held = self.spool.counts.bytes.load(Ordering::Relaxed);
        let excess = (held + stored.len() as u64).saturating_sub(self.config.max_bytes);
        if excess > 0 {
            if self.config.full_policy == FullPolicy::DropOldest {
                if let Err(err) = self.spool.evict_oldest(excess) {
                    self.failed(&err, 0);
                }
            }
            // Refuses the newest under drop_newest, and under drop_oldest whatever
            // still does not fit once nothing unleased and older is left.
            let held = self.spool.counts.bytes.load(Ordering::Relaxed);
            let room = self.config.max_bytes.saturating_sub(held) as usize;
            let refused = segment.truncate_stored_to(room);
            if refused > 0 {
                stored = segment.finish();
            }
            self.spool.dropped(DropReason::SpoolFull, refused as u64);
        }
        if segment.is_empty() {
            return;
        }
        let events = segment.len() as u64;
        let seq = self.next_seq;
        match self.spool.append(seq, stored, events) {
            Ok(()) => {
                self.next_seq += 1;
                self.written.increment(events);
                self.batches.increment(1);
                self.unflushed_since.get_or_insert_with(Instant::now);
            }
            Err(err) => {
                self.failed(&err, events);
                self.spool.dropped(DropReason::WriteFailed, events);
            }
        }
    }

    /// Drops what is past retention; refreshes gauges.
    fn housekeeping(&mut self) {
        self.last_housekeeping = Instant::now();
        if let Err(err) = self.spool.expire() {
            self.failed(&err, 0);
        }
        self.spool.publish_gauges();
        metrics::gauge!(m::EVENTS_QUEUE_DEPTH).set(self.depth.load(Ordering::Relaxed) as f64);
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

    fn failed(&mut self, err: &dyn std::fmt::Display, events: u64) {
        self.write_errors.increment(1);
        tracing::error!(error = %err, events, "spool write failed; events may be lost");
    }
}
