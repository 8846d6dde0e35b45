//! A bounded concurrent map in two generations, the memory bound behind the user
//! agent cache and the first/duplicate sets.
//!
//! New entries go into the current generation; a lookup that finds an entry only in
//! the previous one copies it forward, so what is in use survives. When the current
//! generation has taken `capacity / 2` inserts, or (with a maximum age) has been
//! current for that long, it becomes the previous one and the old previous
//! generation is dropped whole: an approximate LRU without per-entry bookkeeping.
//! Invariants: at most about `capacity` entries live at once; readers never block on
//! a rotation (the pair of maps is swapped with `arc-swap`); only one thread rotates.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

struct Generations<K, V> {
    current: Arc<Map<K, V>>,
    previous: Arc<Map<K, V>>,
    inserted: AtomicUsize,
    started_ms: u64,
}

/// What a rotation dropped, for the caller's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    /// Entries of the dropped generation.
    pub dropped: usize,
    /// True when the rotation was for age (every dropped entry had expired).
    pub by_age: bool,
}

pub struct TwoGen<K, V> {
    generations: ArcSwap<Generations<K, V>>,
    half: usize,
    max_age_ms: Option<u64>,
    rotating: Mutex<()>,
}

fn new_map<K: Hash + Eq, V>() -> Arc<Map<K, V>> {
    Arc::new(DashMap::with_hasher(foldhash::fast::RandomState::default()))
}

impl<K: Hash + Eq, V: Clone> TwoGen<K, V> {
    /// `capacity` entries at most (at least 2); `max_age_ms` rotates by time too.
    pub fn new(capacity: usize, max_age_ms: Option<u64>, now_ms: u64) -> TwoGen<K, V> {
        TwoGen {
            generations: ArcSwap::from_pointee(Generations {
                current: new_map(),
                previous: new_map(),
                inserted: AtomicUsize::new(0),
                started_ms: now_ms,
            }),
            half: (capacity / 2).max(1),
            max_age_ms,
            rotating: Mutex::new(()),
        }
    }

    /// The value for `key`, copying it forward from the previous generation. A copy
    /// fills the current generation like an insert: call `maybe_rotate` after both.
    pub fn get<Q>(&self, key: &Q, to_owned: impl FnOnce(&Q) -> K) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let generations = self.generations.load();
        if let Some(value) = generations.current.get(key) {
            return Some(value.value().clone());
        }
        let value = generations.previous.get(key)?.value().clone();
        if generations
            .current
            .insert(to_owned(key), value.clone())
            .is_none()
        {
            generations.inserted.fetch_add(1, Ordering::Relaxed);
        }
        Some(value)
    }

    /// Inserts into the current generation.
    pub fn insert(&self, key: K, value: V) {
        let generations = self.generations.load();
        if generations.current.insert(key, value).is_none() {
            generations.inserted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Read-modify-write under the key's shard lock: `f` sees the value from either
    /// generation and returns the value to store and what to hand back. Not exact
    /// across a rotation: a writer still holding the old pair can update the entry
    /// another writer is copying forward, and one of the two writes is lost. The
    /// rate limiter can then let through one event more per such race; that is the
    /// price of never locking the whole map.
    pub fn update<R>(&self, key: K, f: impl FnOnce(Option<&V>) -> (V, R)) -> R {
        let generations = self.generations.load();
        let result = match generations.current.entry(key) {
            Entry::Occupied(mut occupied) => {
                let (value, result) = f(Some(occupied.get()));
                *occupied.get_mut() = value;
                result
            }
            Entry::Vacant(vacant) => {
                let old = generations
                    .previous
                    .get(vacant.key())
                    .map(|r| r.value().clone());
                let (value, result) = f(old.as_ref());
                vacant.insert(value);
                generations.inserted.fetch_add(1, Ordering::Relaxed);
                result
            }
        };
        result
    }

    /// Rotates when the current generation is full or too old. Cheap when not.
    pub fn maybe_rotate(&self, now_ms: u64) -> Option<Rotated> {
        let generations = self.generations.load();
        let full = generations.inserted.load(Ordering::Relaxed) >= self.half;
        let old = self
            .max_age_ms
            .is_some_and(|age| now_ms.saturating_sub(generations.started_ms) >= age);
        if !full && !old {
            return None;
        }
        // Another thread rotating right now does the job for both of us.
        let _rotating = self.rotating.try_lock().ok()?;
        let latest = self.generations.load();
        if !Arc::ptr_eq(&latest, &generations) {
            return None;
        }
        self.generations.store(Arc::new(Generations {
            current: new_map(),
            previous: latest.current.clone(),
            inserted: AtomicUsize::new(0),
            started_ms: now_ms,
        }));
        Some(Rotated {
            dropped: latest.previous.len(),
            by_age: old && !full,
        })
    }

    /// Entries held now (both generations; an entry copied forward counts twice).
    pub fn len(&self) -> usize {
        let generations = self.generations.load();
        generations.current.len() + generations.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_stays_bounded_and_used_entries_survive() {
        let map: TwoGen<u32, u32> = TwoGen::new(100, None, 0);
        let mut dropped = 0;
        for n in 0..10_000u32 {
            // Key 7 is used all the time and must never fall out.
            assert_eq!(map.get(&7, |k| *k).is_some(), n > 0, "at {n}");
            if n == 0 {
                map.insert(7, 7);
            }
            map.insert(n + 1000, n);
            if let Some(rotated) = map.maybe_rotate(0) {
                assert!(!rotated.by_age);
                dropped += rotated.dropped;
            }
            assert!(map.len() <= 102, "{} entries at {n}", map.len());
        }
        assert!(dropped > 9_000, "{dropped}");
    }

    #[test]
    fn age_rotation_drops_only_expired_generations() {
        let map: TwoGen<u32, u64> = TwoGen::new(1000, Some(10), 0);
        map.insert(1, 0);
        assert_eq!(map.maybe_rotate(5), None);
        let first = map.maybe_rotate(10).unwrap();
        assert_eq!(
            first,
            Rotated {
                dropped: 0,
                by_age: true
            }
        );
        assert_eq!(
            map.get(&1, |k| *k),
            Some(0),
            "still in the previous generation"
        );
        map.maybe_rotate(20).unwrap();
        map.maybe_rotate(30).unwrap();
        assert_eq!(map.get(&1, |k| *k), None);
    }

    #[test]
    fn update_sees_the_previous_generation() {
        let map: TwoGen<u32, u32> = TwoGen::new(4, None, 0);
        map.update(1, |old| (old.copied().unwrap_or(0) + 1, ()));
        map.insert(2, 0);
        map.maybe_rotate(0).unwrap();
        let seen = map.update(1, |old| (old.copied().unwrap_or(0) + 1, old.copied()));
        assert_eq!(seen, Some(1));
        assert_eq!(map.get(&1, |k| *k), Some(2));
    }

    #[test]
    fn concurrent_use_with_rotations_stays_bounded() {
        let map: Arc<TwoGen<u64, u64>> = Arc::new(TwoGen::new(256, Some(5), 0));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let map = map.clone();
                std::thread::spawn(move || {
                    for n in 0..20_000u64 {
                        let key = (n * 7 + t) % 1000;
                        map.update(key, |old| (old.copied().unwrap_or(0) + 1, ()));
                        map.get(&(key ^ 1), |k| *k);
                        map.maybe_rotate(n / 100);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        // Racing inserts may overshoot a generation by a few per thread.
        assert!(map.len() <= 256 + 64, "{}", map.len());
    }
}
