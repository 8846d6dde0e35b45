//! The one module that knows sled: an ordered log of records keyed by a sequence
//! number, plus a dead-letter tree. Swapping the storage engine touches this file only.
//!
//! Key layout: tree `events` and tree `dead_letters`, key = the record's sequence
//! number as 8 big-endian bytes (so byte order is append order), value = the record
//! bytes from [`crate::record`]. Sequence numbers only grow: on open, the next one is
//! one past the largest key in either tree. Records leave `events` only when the
//! forwarder's sink acknowledged them, when they are moved to `dead_letters`, or when
//! a bound (size, age) or an erasure removes them; each removal reports what it
//! actually removed so the callers' counts stay exact when two of them race.

use std::path::Path;

pub type Seq = u64;

/// Record bytes as stored; cheap to clone (reference counted).
pub type Bytes = sled::IVec;

#[derive(Debug, thiserror::Error)]
#[error("spool storage: {0}")]
pub struct StoreError(#[from] sled::Error);

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    events: sled::Tree,
    dead: sled::Tree,
}

/// What [`Store::open`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub records: u64,
    pub bytes: u64,
    pub dead_records: u64,
}

fn key(seq: Seq) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<Seq> {
    Some(Seq::from_be_bytes(key.try_into().ok()?))
}

impl Store {
    /// Opens (or creates) the store. Nothing is flushed in the background: the
    /// writer decides when writes become durable by calling [`Store::flush`].
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open()?;
        Ok(Store {
            events: db.open_tree("events")?,
            dead: db.open_tree("dead_letters")?,
            db,
        })
    }

    /// Counts what is stored (one pass; called once at start).
    pub fn totals(&self) -> Result<Totals, StoreError> {
        let mut totals = Totals::default();
        for entry in self.events.iter() {
            let (_, value) = entry?;
            totals.records += 1;
            totals.bytes += value.len() as u64;
        }
        totals.dead_records = self.dead.len() as u64;
        Ok(totals)
    }

    /// One past the largest sequence number ever stored.
    pub fn next_seq(&self) -> Result<Seq, StoreError> {
        let mut next = 0;
        for tree in [&self.events, &self.dead] {
            if let Some((key, _)) = tree.last()? {
                next = next.max(seq_of(&key).map_or(0, |seq| seq + 1));
            }
        }
        Ok(next)
    }

    /// Appends records atomically (all or none).
    pub fn append(&self, records: &[(Seq, Vec<u8>)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (seq, bytes) in records {
            batch.insert(&key(*seq), bytes.as_slice());
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    /// Makes every write so far durable (fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Up to `max_records` records (and about `max_bytes`, at least one) from `from` on.
    pub fn read_from(
        &self,
        from: Seq,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Seq, Bytes)>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in self.events.range(key(from)..) {
            let (key, value) = entry?;
            let Some(seq) = seq_of(&key) else { continue };
            if !out.is_empty() && bytes + value.len() > max_bytes {
                break;
            }
            bytes += value.len();
            out.push((seq, value));
            if out.len() >= max_records {
                break;
            }
        }
        Ok(out)
    }

    /// The oldest record, if any.
    pub fn first(&self) -> Result<Option<(Seq, Bytes)>, StoreError> {
        Ok(self
            .events
            .first()?
            .and_then(|(key, value)| Some((seq_of(&key)?, value))))
    }

    /// Removes `seqs`; returns how many records and bytes were really there.
    pub fn remove(&self, seqs: &[Seq]) -> Result<(u64, u64), StoreError> {
        let (mut records, mut bytes) = (0, 0);
        for seq in seqs {
            if let Some(old) = self.events.remove(key(*seq))? {
                records += 1;
                bytes += old.len() as u64;
            }
        }
        Ok((records, bytes))
    }

    /// Moves `seqs` to the dead-letter tree; returns records and bytes moved.
    pub fn move_to_dead_letters(&self, seqs: &[Seq]) -> Result<(u64, u64), StoreError> {
        let (mut records, mut bytes) = (0, 0);
        for seq in seqs {
            if let Some(value) = self.events.get(key(*seq))? {
                // Inserted before removal: a crash in between leaves a duplicate,
                // never a loss.
                self.dead.insert(key(*seq), value.clone())?;
                if self.events.remove(key(*seq))?.is_some() {
                    records += 1;
                    bytes += value.len() as u64;
                }
            }
        }
        Ok((records, bytes))
    }

    pub fn dead_letter_count(&self) -> u64 {
        self.dead.len() as u64
    }

    /// Every record still held, oldest first (for erasure, export and retention).
    pub fn iter(&self) -> impl Iterator<Item = Result<(Seq, Bytes), StoreError>> + '_ {
        self.events.iter().map(|entry| {
            let (key, value) = entry?;
            Ok((seq_of(&key).unwrap_or_default(), value))
        })
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> impl Iterator<Item = Result<(Seq, Bytes), StoreError>> + '_ {
        self.dead.iter().map(|entry| {
            let (key, value) = entry?;
            Ok((seq_of(&key).unwrap_or_default(), value))
        })
    }

    /// Removes dead letters by sequence number; returns how many were there.
    pub fn remove_dead_letters(&self, seqs: &[Seq]) -> Result<u64, StoreError> {
        let mut removed = 0;
        for seq in seqs {
            if self.dead.remove(key(*seq))?.is_some() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes the engine uses on disk (logs and snapshots).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Store {
        Store::open(dir, 8 << 20).unwrap()
    }

    #[test]
    fn appends_read_back_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            assert_eq!(store.next_seq().unwrap(), 0);
            let records: Vec<(Seq, Vec<u8>)> = (0..300).map(|n| (n, vec![n as u8; 10])).collect();
            store.append(&records).unwrap();
            store.flush().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.next_seq().unwrap(), 300);
        assert_eq!(
            store.totals().unwrap(),
            Totals {
                records: 300,
                bytes: 3000,
                dead_records: 0
            }
        );
        let first = store.read_from(0, 100, usize::MAX).unwrap();
        assert_eq!(first.len(), 100);
        assert_eq!(first[0].0, 0);
        assert_eq!(first[99].0, 99);
        let by_bytes = store.read_from(250, 100, 25).unwrap();
        assert_eq!(
            by_bytes.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![250, 251]
        );
        // Keys sort numerically, not as text: 256 comes after 255.
        let around = store.read_from(255, 2, usize::MAX).unwrap();
        assert_eq!(
            around.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![255, 256]
        );
    }

    #[test]
    fn removals_report_only_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append(&[(1, vec![0; 5]), (2, vec![0; 7])]).unwrap();
        assert_eq!(store.remove(&[1, 3]).unwrap(), (1, 5));
        assert_eq!(store.remove(&[1]).unwrap(), (0, 0));
        assert_eq!(store.move_to_dead_letters(&[2, 9]).unwrap(), (1, 7));
        assert_eq!(store.dead_letter_count(), 1);
        assert!(store.first().unwrap().is_none());
        assert_eq!(
            store.next_seq().unwrap(),
            3,
            "dead letters keep their numbers"
        );
        assert_eq!(store.remove_dead_letters(&[2]).unwrap(), 1);
    }
}
