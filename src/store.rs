//! The one module that knows sled: an ordered log of opaque values keyed by a
//! sequence number, plus a dead-letter tree. Swapping the storage engine touches this
//! file only.
//!
//! Key layout: tree `events` and tree `dead_letters`, key = the sequence number as 8
//! big-endian bytes (so byte order is append order), value = one segment from
//! [`crate::record`] (a whole group commit). Sequence numbers only grow: on open, the
//! next one is one past the largest key in either tree. Values leave `events` only
//! when the forwarder's sink acknowledged them, when they move to `dead_letters`, or
//! when a bound (size, age) or an erasure removes or rewrites them; each removal
//! returns what it actually removed, so callers' counts stay exact when two race.
//! A third tree, `suppressed`, holds suppression keys (value empty), written
//! durably at once.

use std::path::Path;

pub type Seq = u64;

/// The largest value this store keeps in the engine's log rather than in a file
/// of its own. sled writes any log message over a quarter of its 512 KiB segment
/// size as a separate "blob" file (create, write, close, later unlink), and a
/// B-tree leaf is logged whole with its up to 17 values whenever it is rewritten
/// (every 10 changes), so only values under about 7.5 KiB keep every leaf inline.
/// Blob-backed pages also count only their pointer against sled's cache limit,
/// so with big values its memory grew with the backlog instead of staying near
/// `spool.cache_bytes`. Measured in the perf branch's commit: at 1 MiB segments,
/// 2.5 blob files per 1,000 requests at saturation (about 130 µs of system time
/// each here) and RSS rising with a 600 MB backlog to 580 MB; at 7 KiB, no blob
/// files and RSS flat at 161 MB.
pub const MAX_INLINE_VALUE_BYTES: usize = 7 * 1024;

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
    suppressed: sled::Tree,
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
            suppressed: db.open_tree("suppressed")?,
            db,
        })
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

    /// Stores one value under `seq`.
    pub fn append(&self, seq: Seq, value: Vec<u8>) -> Result<(), StoreError> {
        self.events.insert(key(seq), value)?;
        Ok(())
    }

    /// Replaces the value under `seq` if it is still there; returns the old value.
    pub fn replace(&self, seq: Seq, value: Vec<u8>) -> Result<Option<Bytes>, StoreError> {
        let old = self.events.get(key(seq))?;
        if old.is_some() {
            self.events.insert(key(seq), value)?;
        }
        Ok(old)
    }

    /// Makes every write so far durable (fsync).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Up to `max_records` values (and about `max_bytes`, at least one) from `from` on.
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

    /// The oldest value, if any.
    pub fn first(&self) -> Result<Option<(Seq, Bytes)>, StoreError> {
        Ok(self
            .events
            .first()?
            .and_then(|(key, value)| Some((seq_of(&key)?, value))))
    }

    /// Removes `seqs`; returns the values that were really there.
    pub fn remove(&self, seqs: &[Seq]) -> Result<Vec<Bytes>, StoreError> {
        let mut removed = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(old) = self.events.remove(key(*seq))? {
                removed.push(old);
            }
        }
        Ok(removed)
    }

    /// Moves `seqs` to the dead-letter tree; returns the values moved.
    pub fn move_to_dead_letters(&self, seqs: &[Seq]) -> Result<Vec<Bytes>, StoreError> {
        let mut moved = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(value) = self.events.get(key(*seq))? {
                // Inserted before removal: a crash in between leaves a duplicate,
                // never a loss.
                self.dead.insert(key(*seq), value.clone())?;
                if self.events.remove(key(*seq))?.is_some() {
                    moved.push(value);
                }
            }
        }
        Ok(moved)
    }

    /// Every value still held, oldest first (for counting, erasure and export).
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

    /// Removes dead letters; returns the values that were there.
    pub fn remove_dead_letters(&self, seqs: &[Seq]) -> Result<Vec<Bytes>, StoreError> {
        let mut removed = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(old) = self.dead.remove(key(*seq))? {
                removed.push(old);
            }
        }
        Ok(removed)
    }

    /// Replaces a dead letter if it is still there; returns the old value.
    pub fn replace_dead_letter(
        &self,
        seq: Seq,
        value: Vec<u8>,
    ) -> Result<Option<Bytes>, StoreError> {
        let old = self.dead.get(key(seq))?;
        if old.is_some() {
            self.dead.insert(key(seq), value)?;
        }
        Ok(old)
    }

    /// Adds a suppression key durably; true if it was new.
    pub fn suppression_insert(&self, key: &[u8]) -> Result<bool, StoreError> {
        let new = self.suppressed.insert(key, &[])?.is_none();
        self.db.flush()?;
        Ok(new)
    }

    /// Removes a suppression key durably; true if it was there.
    pub fn suppression_remove(&self, key: &[u8]) -> Result<bool, StoreError> {
        let was = self.suppressed.remove(key)?.is_some();
        self.db.flush()?;
        Ok(was)
    }

    pub fn suppression_keys(&self) -> Result<Vec<Bytes>, StoreError> {
        self.suppressed
            .iter()
            .keys()
            .map(|key| key.map_err(StoreError::from))
            .collect()
    }

    /// Bytes the engine uses on disk (logs and snapshots).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Opens, waiting (bounded) for the previous handle's background threads to let
    /// go of the directory lock: sled releases it asynchronously after a drop.
    pub(crate) fn open(dir: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir, 8 << 20) {
                Ok(store) => return store,
                Err(err) if std::time::Instant::now() < deadline => {
                    let _ = err;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => panic!("cannot reopen the store: {err}"),
            }
        }
    }

    #[test]
    fn values_read_back_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            assert_eq!(store.next_seq().unwrap(), 0);
            for n in 0..300 {
                store.append(n, vec![n as u8; 10]).unwrap();
            }
            store.flush().unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.next_seq().unwrap(), 300);
        assert_eq!(store.iter().count(), 300);
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
    fn removals_return_only_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append(1, vec![0; 5]).unwrap();
        store.append(2, vec![0; 7]).unwrap();
        assert_eq!(store.remove(&[1, 3]).unwrap().len(), 1);
        assert!(store.remove(&[1]).unwrap().is_empty());
        assert_eq!(store.replace(1, vec![1]).unwrap(), None, "no resurrection");
        let moved = store.move_to_dead_letters(&[2, 9]).unwrap();
        assert_eq!(moved.iter().map(|v| v.len()).collect::<Vec<_>>(), vec![7]);
        assert_eq!(store.dead_letters().count(), 1);
        assert!(store.first().unwrap().is_none());
        assert_eq!(
            store.next_seq().unwrap(),
            3,
            "dead letters keep their numbers"
        );
        assert_eq!(store.remove_dead_letters(&[2]).unwrap().len(), 1);
    }
}
