//! Connection slots of the public listener: a global cap, and optionally a cap per
//! peer so that one client cannot take every slot.
//!
//! The per-peer key is the peer's IPv4 address or its IPv6 /64 (one host usually
//! holds a whole /64). The count map holds only peers with a live connection, so it
//! is bounded by `max_connections`. Off by default: behind a CDN every connection
//! comes from a few CDN addresses, and the CDN applies its own limits.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::enrich::cidr::truncate_ip;

/// Why a connection got no slot (counted by the server as a connection error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `public.max_connections` are open.
    Global,
    /// The peer holds `public.max_connections_per_peer`.
    Peer,
}

pub struct Slots {
    global: Arc<Semaphore>,
    per_peer: usize,
    peers: DashMap<IpAddr, usize>,
}

/// A held slot; dropping it gives the slot back.
pub struct Slot {
    _global: OwnedSemaphorePermit,
    peer: Option<(Arc<Slots>, IpAddr)>,
}

impl Slots {
    /// `per_peer == 0` turns the per-peer cap off.
    pub fn new(max_connections: usize, per_peer: usize) -> Arc<Slots> {
        Arc::new(Slots {
            global: Arc::new(Semaphore::new(max_connections)),
            per_peer,
            peers: DashMap::new(),
        })
    }

    pub fn acquire(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refused> {
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Global)?;
        if self.per_peer == 0 {
            return Ok(Slot {
                _global: global,
                peer: None,
            });
        }
        let key = truncate_ip(peer, 32, 64);
        match self.peers.entry(key) {
            Entry::Occupied(held) if *held.get() >= self.per_peer => return Err(Refused::Peer),
            Entry::Occupied(mut held) => *held.get_mut() += 1,
            Entry::Vacant(free) => {
                free.insert(1);
            }
        }
        Ok(Slot {
            _global: global,
            peer: Some((self.clone(), key)),
        })
    }

    /// Peers holding at least one connection now.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((slots, key)) = self.peer.take() {
            if let Entry::Occupied(mut held) = slots.peers.entry(key) {
                *held.get_mut() -= 1;
                if *held.get() == 0 {
                    held.remove();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_peer_cannot_take_every_slot_and_slots_come_back() {
        let slots = Slots::new(10, 2);
        let a1 = slots.acquire(ip("192.0.2.1")).unwrap();
        let _a2 = slots.acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(slots.acquire(ip("192.0.2.1")).err(), Some(Refused::Peer));
        let _b = slots.acquire(ip("192.0.2.2")).unwrap();
        // One IPv6 host: any address in its /64.
        let _v6 = slots.acquire(ip("2001:db8::1")).unwrap();
        let _v6b = slots.acquire(ip("2001:db8::ffff")).unwrap();
        assert_eq!(slots.acquire(ip("2001:db8::2")).err(), Some(Refused::Peer));
        drop(a1);
        let _a3 = slots.acquire(ip("192.0.2.1")).unwrap();
        assert_eq!(slots.peers(), 3);
    }

    #[test]
    fn the_global_cap_still_applies_and_the_map_empties() {
        let slots = Slots::new(2, 5);
        let held = [
            slots.acquire(ip("192.0.2.1")).unwrap(),
            slots.acquire(ip("192.0.2.2")).unwrap(),
        ];
        assert_eq!(slots.acquire(ip("192.0.2.3")).err(), Some(Refused::Global));
        drop(held);
        assert_eq!(slots.peers(), 0, "no entry outlives its connections");
        let off = Slots::new(3, 0);
        let _all: Vec<Slot> = (0..3)
            .map(|_| off.acquire(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(off.peers(), 0);
    }
}
