//! Changes that sweep over stored segments: the size bound, the age bound, erasure
//! and export. Each takes the spool's guard per segment, so it never races a lease
//! being taken, and none takes a leased segment except erasure, which first waits
//! until no send is under way and then makes the lease re-read what it holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{DropReason, Spool};
use crate::record::{self, Filtered, RecordRef};
use crate::store::{Seq, StoreError};

/// Segments looked at per step when enforcing a bound.
const STEP: usize = 64;

/// What an erasure removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub events: u64,
    pub dead_letters: u64,
}

impl Spool {
    /// Removes the oldest unleased segments until at least `bytes` are freed (or
    /// nothing unleased is left); counts them as dropped for `spool_full`.
    pub(super) fn evict_oldest(&self, bytes: u64) -> Result<(), StoreError> {
        let guard = self.guard();
        let mut freed = 0;
        let mut victims = Vec::new();
        for entry in self.store.iter() {
            let (seq, segment) = entry?;
            if guard.leased.contains(&seq) {
                continue;
            }
            victims.push(seq);
            freed += segment.len() as u64;
            if freed >= bytes {
                break;
            }
        }
        let events = self.removed(&self.store.remove(&victims)?);
        self.dropped(DropReason::SpoolFull, events);
        Ok(())
    }

    /// Drops every unleased record older than retention, in the spool and the dead
    /// letters. (Leases drop their own expired records before each send.)
    pub(super) fn expire(&self) -> Result<(), StoreError> {
        let cutoff = self.cutoff_ms();
        let mut from: Seq = 0;
        'steps: loop {
            let guard = self.guard();
            let segments = self.store.read_from(from, STEP, usize::MAX)?;
            let Some(&(last, _)) = segments.last() else {
                break;
            };
            for (seq, bytes) in &segments {
                if guard.leased.contains(seq) {
                    continue;
                }
                let Ok(segment) = record::decode(bytes) else {
                    // The forwarder moves unreadable segments aside when it meets them.
                    continue;
                };
                // Segments are appended in time order: the first young one ends it.
                if segment.oldest_ts >= cutoff {
                    break 'steps;
                }
                if let Ok(filtered) = record::filter(bytes, |r| r.ts_ms >= cutoff) {
                    let removed = removed_by(&filtered);
                    self.apply(&guard, *seq, bytes, filtered)?;
                    self.dropped(DropReason::Retention, removed);
                }
            }
            if segments.len() < STEP {
                break;
            }
            from = last + 1;
        }
        self.expire_dead_letters(cutoff)
    }

    fn expire_dead_letters(&self, cutoff: u64) -> Result<(), StoreError> {
        let _guard = self.guard();
        let expired: Vec<Seq> = self
            .store
            .dead_letters()
            .take(STEP)
            .take_while(|entry| {
                entry.as_ref().map_or(true, |(_, bytes)| {
                    record::decode(bytes).is_ok_and(|segment| segment.newest_ts < cutoff)
                })
            })
            .map(|entry| entry.map(|(seq, _)| seq))
            .collect::<Result<_, _>>()?;
        let removed = self.store.remove_dead_letters(&expired)?;
        let events: u64 = removed.iter().map(|v| record::count_of(v)).sum();
        self.counts
            .dead_letters
            .fetch_sub(events, Ordering::Relaxed);
        self.dropped(DropReason::RetentionDeadLetter, events);
        Ok(())
    }

    /// Removes every record whose JSON line `matches` from the spool (leased
    /// segments included) and the dead letters, after any send under way has
    /// finished; no send starts until it is done.
    pub async fn erase_where<F>(self: &Arc<Self>, matches: F) -> Result<Erased, StoreError>
    where
        F: Fn(&[u8]) -> bool + Send + 'static,
    {
        let _no_sends = self.pause_sends().await;
        let spool = self.clone();
        tokio::task::spawn_blocking(move || spool.erase_blocking(&matches))
            .await
            .unwrap_or(Err(StoreError::TaskFailed))
    }

    fn erase_blocking(&self, matches: &dyn Fn(&[u8]) -> bool) -> Result<Erased, StoreError> {
        let keep = |r: &RecordRef<'_>| !matches(r.json);
        let mut erased = Erased::default();
        for entry in self.store.iter() {
            let (seq, bytes) = entry?;
            if !matches!(
                record::filter(&bytes, keep),
                Ok(Filtered::Rewritten { .. } | Filtered::Emptied { .. })
            ) {
                continue;
            }
            let guard = self.guard();
            // Read again under the guard: the segment may have changed meanwhile.
            let Some(current) = self.store.get(seq)? else {
                continue;
            };
            let Ok(filtered) = record::filter(&current, keep) else {
                continue;
            };
            erased.events += removed_by(&filtered);
            self.apply(&guard, seq, &current, filtered)?;
            if guard.leased.contains(&seq) {
                self.epoch.fetch_add(1, Ordering::Release);
            }
        }
        for entry in self.store.dead_letters() {
            let (seq, bytes) = entry?;
            let _guard = self.guard();
            // Counted only if the letter was still there (retention may have won).
            let removed = match record::filter(&bytes, keep) {
                Ok(Filtered::Emptied { removed }) => {
                    let gone = self.store.remove_dead_letters(&[seq])?;
                    if gone.is_empty() {
                        0
                    } else {
                        removed
                    }
                }
                Ok(Filtered::Rewritten { bytes, removed }) => {
                    match self.store.replace_dead_letter(seq, bytes)? {
                        Some(_) => removed,
                        None => 0,
                    }
                }
                Ok(Filtered::Unchanged) | Err(_) => continue,
            };
            self.counts
                .dead_letters
                .fetch_sub(removed, Ordering::Relaxed);
            erased.dead_letters += removed;
        }
        self.store.flush()?;
        Ok(erased)
    }

    /// Hands every record whose JSON line `matches`, as NDJSON chunks, to `emit`
    /// (oldest first, spool then dead letters); stops early when `emit` returns
    /// false. Returns the number of records handed over.
    pub fn export_where(
        &self,
        matches: impl Fn(&[u8]) -> bool,
        mut emit: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, StoreError> {
        let mut exported = 0;
        for entry in self.store.iter().chain(self.store.dead_letters()) {
            let (_, segment) = entry?;
            let Ok(segment) = record::decode(&segment) else {
                continue;
            };
            let Ok(records) = segment.records() else {
                continue;
            };
            let mut chunk = Vec::new();
            for record in records.iter().filter(|r| matches(r.json)) {
                chunk.extend_from_slice(record.json);
                chunk.push(b'\n');
                exported += 1;
            }
            if !chunk.is_empty() && !emit(chunk) {
                break;
            }
        }
        Ok(exported)
    }
}

pub(super) fn removed_by(filtered: &Filtered) -> u64 {
    match filtered {
        Filtered::Unchanged => 0,
        Filtered::Emptied { removed } | Filtered::Rewritten { removed, .. } => *removed,
    }
}
