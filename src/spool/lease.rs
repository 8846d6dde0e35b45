//! Leases: the segments of one in-flight batch, held for the forwarder from the read
//! until the sink acknowledged or refused them.
//!
//! While leased, a segment is out of reach of the size and age bounds, so an event
//! counted as dropped can never be one that is being sent. The lease enforces the
//! age bound itself ([`Lease::refresh`], before every send) and re-reads its segments
//! when an erasure rewrote them. Dropping a lease without acknowledging it (a
//! cancelled send) releases the segments for the next run, which sends them again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{DropReason, Spool};
use crate::event::now_ms;
use crate::record::{self, RecordRef};
use crate::store::{Bytes, Seq, StoreError};

/// Spool segments read at once when leasing: enough for a full batch
/// (`forward.max_batch_events`, 1000 by default) of the small segments the store
/// keeps inline (about 10 events each if they do not compress, see
/// `store::MAX_INLINE_VALUE_BYTES`).
const SEGMENTS_PER_READ: usize = 256;

/// The outcome of [`Spool::lease`].
#[derive(Default)]
pub struct Leased {
    /// The next batch, if the spool holds one.
    pub lease: Option<Lease>,
    /// Where the next read starts.
    pub next: Seq,
    /// Unreadable segments met on the way, moved to the dead letters, and the
    /// events their headers claimed.
    pub corrupt_segments: u64,
    pub corrupt_events: u64,
}

/// The segments of one in-flight batch, as they are stored now.
pub struct Lease {
    spool: Arc<Spool>,
    seqs: Vec<Seq>,
    segments: Vec<Bytes>,
    events: u64,
    oldest_ts: u64,
    epoch: u64,
}

impl Spool {
    /// Leases whole segments from `from` on until they hold `max_events` events or
    /// about `max_bytes` (at least one segment). Records past retention are dropped
    /// on the way, unreadable segments moved to the dead letters.
    pub fn lease(
        self: &Arc<Self>,
        mut from: Seq,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Leased, StoreError> {
        let mut leased = Leased::default();
        let cutoff = self.cutoff_ms();
        // Held back: segments with events younger than this wait (a burst or trap
        // found meanwhile relabels them first).
        let now = now_ms();
        let young_after = now.saturating_sub(self.hold_back.as_millis() as u64);
        let hold_back = self.holding.load(Ordering::Relaxed);
        let mut guard = self.guard();
        loop {
            let segments = self.store.read_from(from, SEGMENTS_PER_READ, max_bytes)?;
            if segments.is_empty() {
                leased.next = from;
                return Ok(leased);
            }
            let mut taken: Vec<(Seq, Bytes)> = Vec::new();
            let mut events = 0;
            // `max_bytes` bounds the batch as sent: plain bytes, not stored ones.
            let mut plain_bytes = 0;
            let mut corrupt = Vec::new();
            let mut too_young = false;
            for (seq, bytes) in segments {
                if !taken.is_empty() && events >= max_events as u64 {
                    break;
                }
                let plain_len = record::decode(&bytes).map_or(bytes.len(), |s| s.plain_len());
                if !taken.is_empty() && plain_bytes + plain_len > max_bytes {
                    break;
                }
                // A segment from the future (the clock stepped back) is not held: it
                // would stall everything behind it for the size of the step.
                let young = |newest: u64| newest > young_after && newest <= now;
                if hold_back && record::decode(&bytes).is_ok_and(|s| young(s.newest_ts)) {
                    // Later segments are younger still: forward in order.
                    too_young = true;
                    break;
                }
                from = seq + 1;
                if guard.leased.contains(&seq) {
                    continue;
                }
                match record::filter(&bytes, |r| r.ts_ms >= cutoff) {
                    Err(err) => {
                        tracing::error!(seq, error = %err, "unreadable spool segment moved to dead letters");
                        leased.corrupt_events += record::count_of(&bytes);
                        corrupt.push(seq);
                    }
                    Ok(filtered) => {
                        let expired = super::sweep::removed_by(&filtered);
                        let kept = self.apply(&guard, seq, &bytes, filtered)?;
                        self.dropped(DropReason::Retention, expired);
                        if let Some(kept) = kept {
                            events += record::count_of(&kept);
                            plain_bytes += plain_len;
                            taken.push((seq, kept));
                        }
                    }
                }
            }
            if !corrupt.is_empty() {
                self.move_to_dead_letters(&guard, &corrupt)?;
                leased.corrupt_segments += corrupt.len() as u64;
            }
            if taken.is_empty() && too_young {
                leased.next = from;
                return Ok(leased);
            }
            if !taken.is_empty() {
                guard.leased.extend(taken.iter().map(|(seq, _)| *seq));
                let mut lease = Lease {
                    spool: self.clone(),
                    seqs: Vec::new(),
                    segments: Vec::new(),
                    events: 0,
                    oldest_ts: 0,
                    epoch: self.epoch.load(Ordering::Acquire),
                };
                lease.hold(taken);
                leased.lease = Some(lease);
                leased.next = from;
                return Ok(leased);
            }
        }
    }
}

impl Lease {
    pub fn seqs(&self) -> &[Seq] {
        &self.seqs
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Hands every record of the leased segments to `visit`, in order.
    pub fn for_each_record(&self, mut visit: impl FnMut(RecordRef<'_>)) {
        for bytes in &self.segments {
            let Ok(segment) = record::decode(bytes) else {
                continue;
            };
            // Checked readable when leased; a lease holds only what it read.
            for record in segment.records().unwrap_or_default() {
                visit(record);
            }
        }
    }

    /// Whether [`Lease::refresh`] would change anything: cheap, no I/O.
    pub fn is_stale(&self) -> bool {
        self.epoch != self.spool.epoch.load(Ordering::Acquire)
            || self.oldest_ts < self.spool.cutoff_ms()
    }

    /// Brings the lease up to date before a send: re-reads segments an erasure
    /// rewrote (or removed) and drops records past retention, counted. Returns
    /// whether what the lease holds changed. Blocking I/O.
    pub fn refresh(&mut self) -> Result<bool, StoreError> {
        if !self.is_stale() {
            return Ok(false);
        }
        let spool = self.spool.clone();
        let cutoff = spool.cutoff_ms();
        let mut guard = spool.guard();
        let epoch = spool.epoch.load(Ordering::Acquire);
        let mut kept = Vec::with_capacity(self.seqs.len());
        let mut gone = Vec::new();
        for &seq in &self.seqs {
            let Some(bytes) = spool.store.get(seq)? else {
                gone.push(seq);
                continue;
            };
            // Readable when leased, and only rewritten by filters since.
            let Ok(filtered) = record::filter(&bytes, |r| r.ts_ms >= cutoff) else {
                kept.push((seq, bytes));
                continue;
            };
            let expired = super::sweep::removed_by(&filtered);
            match spool.apply(&guard, seq, &bytes, filtered)? {
                Some(bytes) => kept.push((seq, bytes)),
                None => gone.push(seq),
            }
            spool.dropped(DropReason::Retention, expired);
        }
        for seq in &gone {
            guard.leased.remove(seq);
        }
        drop(guard);
        let before = (self.events, self.segments.clone());
        self.epoch = epoch;
        self.hold(kept);
        Ok(before.0 != self.events
            || before.1.len() != self.segments.len()
            || before.1.iter().zip(&self.segments).any(|(a, b)| a != b))
    }

    /// The sink has the batch: its segments leave the spool. Returns the events
    /// removed. Blocking I/O.
    pub fn acknowledge(mut self) -> Result<u64, StoreError> {
        let spool = self.spool.clone();
        let seqs = std::mem::take(&mut self.seqs);
        let mut guard = spool.guard();
        for seq in &seqs {
            guard.leased.remove(seq);
        }
        let removed = spool.store.remove(&seqs)?;
        Ok(spool.removed(&removed))
    }

    /// The sink refused the batch for good: its segments move to the dead letters.
    /// Returns the events moved. Blocking I/O.
    pub fn dead_letter(mut self) -> Result<u64, StoreError> {
        let spool = self.spool.clone();
        let seqs = std::mem::take(&mut self.seqs);
        let mut guard = spool.guard();
        for seq in &seqs {
            guard.leased.remove(seq);
        }
        spool.move_to_dead_letters(&guard, &seqs)
    }

    fn hold(&mut self, segments: Vec<(Seq, Bytes)>) {
        self.events = 0;
        self.oldest_ts = u64::MAX;
        self.seqs.clear();
        self.segments.clear();
        for (seq, bytes) in segments {
            if let Ok(segment) = record::decode(&bytes) {
                self.events += u64::from(segment.count);
                self.oldest_ts = self.oldest_ts.min(segment.oldest_ts);
            }
            self.seqs.push(seq);
            self.segments.push(bytes);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.seqs.is_empty() {
            return;
        }
        let mut guard = self.spool.guard();
        for seq in &self.seqs {
            guard.leased.remove(seq);
        }
    }
}
