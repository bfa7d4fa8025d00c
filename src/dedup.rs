//! Inline mode's dedup: a bounded in-memory set of (route, event_id) keys, oldest evicted
//! first, and per-key locks so concurrent copies of one delivery run its handlers once.
//! (The inbox dedups in its store instead.)

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// One lock per (route, event_id) being handled: a second copy of a delivery waits for
/// the first to finish, then finds it recorded (or, if the first failed, runs it itself).
#[derive(Debug, Default)]
pub struct KeyLocks {
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key's lock; dropping it releases the key.
#[derive(Debug)]
pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    guard: tokio::sync::OwnedMutexGuard<()>,
}

impl KeyLocks {
    /// Wait until no other request handles (route, event_id), then hold it.
    pub async fn lock(&self, route: &str, event_id: &str) -> KeyGuard<'_> {
        let key = key(route, event_id);
        let lock = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        KeyGuard {
            locks: self,
            key,
            guard,
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        // The map and this guard hold two references; more means someone waits for it.
        if Arc::strong_count(tokio::sync::OwnedMutexGuard::mutex(&self.guard)) <= 2 {
            held.remove(&self.key);
        }
    }
}

/// A bounded set of recently handled (route, event_id) keys.
#[derive(Debug)]
pub struct MemoryDedup {
    capacity: usize,
    inner: Mutex<Recent>,
}

fn key(route: &str, event_id: &str) -> String {
    format!("{route}\n{event_id}")
}

/// The keys held, and their order of arrival for eviction.
type Recent = (HashSet<[u8; 16]>, VecDeque<[u8; 16]>);

/// The memory dedup keeps 16 bytes of SHA-256 per key instead of the strings: a 100,000-key
/// set then costs a few MiB, and a collision (2^-128 per pair) is out of reach.
fn digest(route: &str, event_id: &str) -> [u8; 16] {
    let full =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key(route, event_id).as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&full.as_ref()[..16]);
    out
}

impl MemoryDedup {
    /// A set holding at most `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// Whether (route, event_id) was recorded and not yet evicted.
    pub fn seen(&self, route: &str, event_id: &str) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .contains(&digest(route, event_id))
    }

    /// Record (route, event_id), evicting the oldest key when full.
    pub fn record(&self, route: &str, event_id: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        let k = digest(route, event_id);
        if set.insert(k) {
            order.push_back(k);
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_copy_waits_for_the_first() {
        let locks = KeyLocks::default();
        let first = locks.lock("/a", "e1").await;
        let other = locks.lock("/a", "e2").await;
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock("/a", "e1"))
                .await;
        assert!(waiting.is_err(), "the same key waits");
        drop((first, other));
        let _again = locks.lock("/a", "e1").await;
        assert_eq!(locks.held.lock().unwrap().len(), 1);
    }

    #[test]
    fn remembers_per_route_and_evicts_the_oldest() {
        let d = MemoryDedup::new(2);
        d.record("/a", "e1");
        assert!(d.seen("/a", "e1") && !d.seen("/b", "e1"));
        d.record("/a", "e2");
        d.record("/a", "e3");
        assert!(!d.seen("/a", "e1") && d.seen("/a", "e2") && d.seen("/a", "e3"));
    }
}
