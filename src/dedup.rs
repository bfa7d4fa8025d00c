//! Inline mode's in-memory dedup: a bounded set of (route, event_id) keys, oldest evicted
//! first. (The inbox dedups in its store instead.)

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// A bounded set of recently handled (route, event_id) keys.
#[derive(Debug)]
pub struct MemoryDedup {
    capacity: usize,
    inner: Mutex<(HashSet<String>, VecDeque<String>)>,
}

fn key(route: &str, event_id: &str) -> String {
    format!("{route}\n{event_id}")
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
            .contains(&key(route, event_id))
    }

    /// Record (route, event_id), evicting the oldest key when full.
    pub fn record(&self, route: &str, event_id: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *guard;
        let k = key(route, event_id);
        if set.insert(k.clone()) {
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
