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
//!
//! A store that cannot be opened because it is damaged (sled reports corruption, a
//! bug, or a truncated or malformed file) is moved aside whole to
//! `<dir>.damaged-<unix ms>` and a fresh one is started in its place
//! ([`Store::open_or_set_aside`]): one ERROR line, one count in
//! `trackedge_spool_store_set_aside_total`, and the edge keeps serving instead of
//! crash-looping. Other failures (permissions, the directory lock held by another
//! process, a full disk) are returned: moving the store would not fix them.

use std::path::{Path, PathBuf};

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
pub enum StoreError {
    #[error("spool storage: {0}")]
    Engine(#[from] sled::Error),
    /// sled holds an exclusive lock on the directory while it is open.
    #[error("the directory is locked: another trackedge may be using it (stop that one, or give this one its own data_dir or spool.dir)")]
    Locked,
    /// A storage task on the blocking pool panicked or was cancelled.
    #[error("spool storage task failed")]
    TaskFailed,
}

/// sled 0.34 reports a lock held by another process only in the message of an
/// `ErrorKind::Other` I/O error (a unit test pins it).
fn is_lock_conflict(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

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
            .open()
            .map_err(|err| {
                if is_lock_conflict(&err) {
                    StoreError::Locked
                } else {
                    StoreError::Engine(err)
                }
            })?;
        Ok(Store {
            events: db.open_tree("events")?,
            dead: db.open_tree("dead_letters")?,
            suppressed: db.open_tree("suppressed")?,
            db,
        })
    }

    /// Opens the store and reads every key and value once; if sled finds it damaged,
    /// moves the directory aside, logs an ERROR, counts it and opens a fresh one.
    pub fn open_or_set_aside(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let set_aside = metrics::counter!(crate::metrics::SPOOL_STORE_SET_ASIDE_TOTAL);
        let error = match Store::open(dir, cache_bytes).and_then(|store| {
            store.check()?;
            Ok(store)
        }) {
            Ok(store) => {
                set_aside.increment(0);
                return Ok(store);
            }
            Err(StoreError::Engine(error)) if is_damage(&error) => StoreError::Engine(error),
            Err(error) => return Err(error),
        };
        let aside = aside_path(dir, crate::event::now_ms());
        std::fs::rename(dir, &aside).map_err(|rename| {
            tracing::error!(
                dir = %dir.display(), error = %error, rename_error = %rename,
                "the spool store is damaged and cannot be moved aside"
            );
            error_clone(&error)
        })?;
        set_aside.increment(1);
        tracing::error!(
            dir = %dir.display(), moved_to = %aside.display(), error = %error,
            "the spool store is damaged: moved aside and started empty; events held in it are not forwarded"
        );
        let store = Store::open(dir, cache_bytes)?;
        store.check()?;
        Ok(store)
    }

    /// Reads every key and value of every tree, so damage shows at open rather than
    /// in the middle of forwarding.
    fn check(&self) -> Result<(), StoreError> {
        for tree in [&self.events, &self.dead, &self.suppressed] {
            for entry in tree.iter() {
                let _ = entry?;
            }
        }
        Ok(())
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

    /// The value under `seq`, if it is still there.
    pub fn get(&self, seq: Seq) -> Result<Option<Bytes>, StoreError> {
        Ok(self.events.get(key(seq))?)
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

    /// Every value still held, newest first (recent events are found fastest).
    pub fn iter_newest_first(&self) -> impl Iterator<Item = Result<(Seq, Bytes), StoreError>> + '_ {
        self.events.iter().rev().map(|entry| {
            let (key, value) = entry?;
            Ok((seq_of(&key).unwrap_or_default(), value))
        })
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

/// Whether an open failed because of what is in the files (moving them aside
/// helps), rather than the system around them (it would not).
fn is_damage(error: &sled::Error) -> bool {
    match error {
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => true,
        sled::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        sled::Error::CollectionNotFound(_) | sled::Error::Unsupported(_) => false,
    }
}

/// `<dir>.damaged-<ms>`, with a counter if that exists (two set-asides in one ms).
fn aside_path(dir: &Path, now_ms: u64) -> PathBuf {
    let name = dir.file_name().map_or_else(
        || "spool".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let mut candidate = dir.with_file_name(format!("{name}.damaged-{now_ms}"));
    let mut n = 1;
    while candidate.exists() {
        candidate = dir.with_file_name(format!("{name}.damaged-{now_ms}-{n}"));
        n += 1;
    }
    candidate
}

/// sled's error is not `Clone`; what the caller needs is its text.
fn error_clone(error: &StoreError) -> StoreError {
    StoreError::Engine(sled::Error::Io(std::io::Error::other(error.to_string())))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_a_held_directory_says_it_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = open(dir.path());
        let err = match Store::open(dir.path(), 8 << 20) {
            Ok(_) => panic!("opened a directory another handle holds"),
            Err(err) => err,
        };
        assert!(matches!(err, StoreError::Locked), "{err:?}");
        assert!(err
            .to_string()
            .contains("another trackedge may be using it"));
    }

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
    fn a_damaged_store_is_moved_aside_and_a_fresh_one_opens() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        {
            let store = open(&dir);
            for n in 0..50 {
                store.append(n, vec![7; 100]).unwrap();
            }
            store.flush().unwrap();
        }
        // A damaged configuration block, as a failing disk might leave it. (Damage in
        // the middle of sled's log is not reported at all: sled takes the first bad
        // record for the torn end of the log and opens what comes before it.)
        let conf = dir.join("conf");
        let mut bytes = std::fs::read(&conf).unwrap();
        for byte in &mut bytes[8..24] {
            *byte ^= 0x5a;
        }
        std::fs::write(&conf, bytes).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open_or_set_aside(&dir, 8 << 20) {
                Ok(store) => break store,
                // The earlier handle may still hold the lock for a moment.
                Err(err) if std::time::Instant::now() < deadline => {
                    let _ = err;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => panic!("a damaged store must not stop the edge: {err}"),
            }
        };
        let aside: Vec<_> = std::fs::read_dir(parent.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("spool.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "the damaged store is kept for inspection");
        assert_eq!(store.next_seq().unwrap(), 0, "the new store starts empty");
        store.append(0, vec![1]).unwrap();
        assert_eq!(store.iter().count(), 1);
    }

    #[test]
    fn only_damage_moves_a_store_aside() {
        use std::io::{Error, ErrorKind};
        assert!(is_damage(&sled::Error::Corruption { at: None, bt: () }));
        assert!(is_damage(&sled::Error::Io(Error::from(
            ErrorKind::UnexpectedEof
        ))));
        // The lock held by another process, permissions, a full disk: not damage.
        assert!(!is_damage(&sled::Error::Io(Error::other(
            "could not acquire lock"
        ))));
        assert!(!is_damage(&sled::Error::Io(Error::from(
            ErrorKind::PermissionDenied
        ))));
        assert!(!is_damage(&sled::Error::Unsupported("config".into())));
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("spool");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(parent.path().join("spool.damaged-5")).unwrap();
        assert_eq!(aside_path(&dir, 5), parent.path().join("spool.damaged-5-1"));
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
