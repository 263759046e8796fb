//! A short-lived, bounded memory of MLflow's answers, so that a burst of requests on one resource
//! costs one question to MLflow. Only the allow/deny bit is kept, never a body; the expiry is
//! absolute from the moment MLflow answered (a hit never extends it), so a permission change in
//! MLflow reaches the proxy within the TTL.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the key is made of: an HMAC of the credential headers (never the credentials
/// themselves) and a digest of everything else the decision depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub credentials: [u8; 32],
    pub resource: [u8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cached {
    Allowed,
    Denied,
}

struct Entry<V> {
    value: V,
    expires: Instant,
    /// Insertion number: tells the eviction queue's stale slots from live ones.
    seq: u64,
}

struct Inner<V> {
    map: HashMap<Key, Entry<V>>,
    /// Insertion order, oldest first (may hold slots of entries already replaced or removed).
    order: VecDeque<(Key, u64)>,
    seq: u64,
}

/// Values are allow/deny bits (`Cached`), or another small answer of MLflow's that may be
/// reused exactly as long (the locations it gives for a caller: `locations`).
pub struct DecisionCache<V = Cached> {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner<V>>,
}

impl<V: Clone> DecisionCache<V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        DecisionCache {
            ttl,
            capacity,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                seq: 0,
            }),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }

    pub fn get(&self, key: &Key, now: Instant) -> Option<V> {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.inner.lock().ok()?;
        match inner.map.get(key) {
            Some(entry) if entry.expires > now => Some(entry.value.clone()),
            Some(_) => {
                inner.map.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: Key, value: V, asked_at: Instant) {
        if !self.enabled() {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.seq += 1;
        let seq = inner.seq;
        inner.map.insert(
            key,
            Entry {
                value,
                expires: asked_at + self.ttl,
                seq,
            },
        );
        inner.order.push_back((key, seq));
        // Evict the oldest entries beyond the bound (expired or not): memory is
        // capacity × (key + entry), whatever the clients send.
        while inner.map.len() > self.capacity {
            let Some((old, old_seq)) = inner.order.pop_front() else {
                break;
            };
            if inner.map.get(&old).is_some_and(|e| e.seq == old_seq) {
                inner.map.remove(&old);
            }
        }
        // The queue holds at most one live slot per entry; drop stale slots so that it stays
        // bounded too (replaced keys leave their old slot behind).
        if inner.order.len() > 2 * self.capacity.max(1) {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    /// A credential MLflow just refused: forget every decision made for it.
    pub fn forget_credentials(&self, credentials: &[u8; 32]) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.map.retain(|k, _| &k.credentials != credentials);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots in the eviction queue (for the bound test).
    pub fn queue_len(&self) -> usize {
        self.inner.lock().map(|i| i.order.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: u8, r: u8) -> Key {
        Key {
            credentials: [c; 32],
            resource: [r; 32],
        }
    }

    #[test]
    fn bounded_whatever_is_inserted() {
        let cache = DecisionCache::new(Duration::from_secs(60), 100);
        let now = Instant::now();
        for i in 0..10_000u32 {
            let bytes = i.to_le_bytes();
            let mut k = key(1, 0);
            k.resource[..4].copy_from_slice(&bytes);
            cache.insert(k, Cached::Allowed, now);
            // The same key again: replaced, not duplicated.
            cache.insert(k, Cached::Denied, now);
            assert!(cache.len() <= 100);
            assert!(cache.queue_len() <= 201);
        }
        assert_eq!(cache.len(), 100);
        // The newest survive, the oldest went.
        let mut newest = key(1, 0);
        newest.resource[..4].copy_from_slice(&9_999u32.to_le_bytes());
        assert_eq!(cache.get(&newest, now), Some(Cached::Denied));
        let mut oldest = key(1, 0);
        oldest.resource[..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(cache.get(&oldest, now), None);
    }

    #[test]
    fn entries_expire_absolutely() {
        let cache = DecisionCache::new(Duration::from_secs(5), 10);
        let t0 = Instant::now();
        cache.insert(key(1, 1), Cached::Allowed, t0);
        cache.insert(key(1, 2), Cached::Denied, t0);
        assert_eq!(
            cache.get(&key(1, 1), t0 + Duration::from_secs(4)),
            Some(Cached::Allowed)
        );
        // A hit does not extend the life of an entry.
        assert_eq!(cache.get(&key(1, 1), t0 + Duration::from_secs(5)), None);
        assert_eq!(cache.get(&key(1, 2), t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn a_refused_credential_is_forgotten() {
        let cache = DecisionCache::new(Duration::from_secs(5), 10);
        let t0 = Instant::now();
        cache.insert(key(1, 1), Cached::Allowed, t0);
        cache.insert(key(1, 2), Cached::Allowed, t0);
        cache.insert(key(2, 1), Cached::Allowed, t0);
        cache.forget_credentials(&[1; 32]);
        assert_eq!(cache.get(&key(1, 1), t0), None);
        assert_eq!(cache.get(&key(1, 2), t0), None);
        assert_eq!(cache.get(&key(2, 1), t0), Some(Cached::Allowed));
    }

    #[test]
    fn zero_ttl_keeps_nothing() {
        let cache = DecisionCache::new(Duration::ZERO, 10);
        let t0 = Instant::now();
        cache.insert(key(1, 1), Cached::Allowed, t0);
        assert_eq!(cache.get(&key(1, 1), t0), None);
        assert!(cache.is_empty());
    }
}
