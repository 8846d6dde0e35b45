//! Recipient-level suppression: recipients (tenant + recipient id, or the message id
//! when a token carries no recipient) who are answered but never recorded.
//!
//! The set lives in memory for the request path (a concurrent set, read without
//! locks) and in the spool's `suppressed` tree so it survives restarts; every change
//! is written durably before it is applied in memory.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashSet;

use crate::store::{Store, StoreError};

pub struct Suppressions {
    set: DashSet<Box<[u8]>>,
    /// Lets the request path skip building a key while the set is empty.
    len: AtomicUsize,
    store: Store,
}

fn key(tenant: &str, recipient: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 1 + recipient.len());
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(recipient.as_bytes());
    key
}

impl Suppressions {
    /// Loads the persisted set.
    pub fn load(store: Store) -> Result<Suppressions, StoreError> {
        let set = DashSet::new();
        for key in store.suppression_keys()? {
            set.insert(Box::<[u8]>::from(&key[..]));
        }
        Ok(Suppressions {
            len: AtomicUsize::new(set.len()),
            set,
            store,
        })
    }

    pub fn contains(&self, tenant: &str, recipient: &str) -> bool {
        self.len.load(Ordering::Relaxed) > 0 && self.set.contains(key(tenant, recipient).as_slice())
    }

    /// Suppresses a recipient; true if they were not suppressed before.
    pub fn add(&self, tenant: &str, recipient: &str) -> Result<bool, StoreError> {
        let key = key(tenant, recipient);
        self.store.suppression_insert(&key)?;
        let new = self.set.insert(key.into_boxed_slice());
        if new {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(new)
    }

    /// Lifts a suppression; true if there was one.
    pub fn remove(&self, tenant: &str, recipient: &str) -> Result<bool, StoreError> {
        let key = key(tenant, recipient);
        self.store.suppression_remove(&key)?;
        let was = self.set.remove(key.as_slice()).is_some();
        if was {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(was)
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppressions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::store::tests::open(dir.path());
            let set = Suppressions::load(store).unwrap();
            assert!(!set.contains("acme", "r1"));
            assert!(set.add("acme", "r1").unwrap());
            assert!(!set.add("acme", "r1").unwrap());
            assert!(set.add("acme", "r2").unwrap());
            assert!(set.remove("acme", "r2").unwrap());
            assert!(set.contains("acme", "r1"));
            assert!(!set.contains("other", "r1"), "tenants are separate");
            assert!(
                !set.contains("acme\0r", "1"),
                "the separator keeps keys apart"
            );
        }
        let store = crate::store::tests::open(dir.path());
        let set = Suppressions::load(store).unwrap();
        assert!(set.contains("acme", "r1"));
        assert!(!set.contains("acme", "r2"));
        assert_eq!(set.len(), 1);
    }
}
