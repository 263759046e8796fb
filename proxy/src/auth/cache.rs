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

/// The resource half of a key: a digest of the operation and of the artifact path (None: the
/// operation does not depend on the path, as HEAD, which MLflow allows admins only). None when
/// the path is one MLflow cannot parse, which is never cached.
///
/// Never coarser than MLflow's own decision (3.17's `_before_request`):
/// - The Flask substring rules (`_find_validator`) read the whole request path, with an order of
///   their own (`/mlflow/logged-models` and `/mlflow/webhooks` turn the `/mlflow/traces/`,
///   `/mlflow/datasets/`, `/mlflow/jobs/` and `/mlflow/issues/` denials off): any path that
///   mentions `mlflow` (any case) is keyed whole, as the route gives it, so that whatever those
///   rules make of it, one answer is never reused for another path.
/// - Otherwise the decision reads the canonical path's experiment prefix and the two segments
///   after it, with empty segments dropped (`_artifact_proxy_child_types`): the key keeps the
///   first 3 canonical segments (5 below `workspaces/`) verbatim, and a path with an empty
///   segment among them (whose later segments would move up) is keyed whole.
/// - MLflow 3.18 also drops `.` segments and takes `workspaces/` in any letter case: a path with
///   a `.` segment among the first ones, or `workspaces` spelt otherwise, is keyed whole too.
///
/// `context`: what else the caller's decision depends on (the workspace header, the release's
/// rules), digested as one field.
pub fn resource(op: u8, context: &[u8], path: Option<&str>) -> Option<[u8; 32]> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(&[op]);
    field(&mut digest, context);
    if let Some(path) = path {
        let canonical = crate::mlflow::path::validate_path_is_safe(path).ok()?;
        match prefix(path, &canonical) {
            Some(segments) => {
                digest.update(b"P");
                for segment in segments {
                    field(&mut digest, segment.as_bytes());
                }
                // The delete probes are built from the path as given, trailing `/` included.
                digest.update(&[u8::from(path.ends_with('/'))]);
            }
            None => {
                digest.update(b"W");
                field(&mut digest, path.as_bytes());
            }
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.finish().as_ref());
    Some(out)
}

/// The canonical segments that decide MLflow's answer, or None when only the whole path can.
fn prefix<'a>(path: &str, canonical: &'a str) -> Option<Vec<&'a str>> {
    if path.to_ascii_lowercase().contains("mlflow") || canonical.starts_with('/') {
        return None;
    }
    let keep = if canonical.starts_with("workspaces/") {
        5
    } else {
        3
    };
    let segments: Vec<&str> = canonical.split('/').take(keep).collect();
    if segments.iter().any(|s| s.is_empty() || *s == ".")
        || (segments[0] != "workspaces" && segments[0].eq_ignore_ascii_case("workspaces"))
    {
        return None;
    }
    Some(segments)
}

/// Length-prefixed, so that no two different sequences of fields digest alike.
fn field(digest: &mut ring::digest::Context, bytes: &[u8]) {
    digest.update(&(bytes.len() as u64).to_le_bytes());
    digest.update(bytes);
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

    /// Paths MLflow may judge differently never share a key; paths of one class share one.
    #[test]
    fn resources_follow_mlflow_classes() {
        let r = |p: &str| resource(4, b"", Some(p)).unwrap();
        // issue 20: the logged-models substring turns the traces denial off for the second path
        // only; both used to share one key.
        assert_ne!(
            r("3/x/mlflow/traces/y/t.txt"),
            r("3/x/mlflow/logged-models/mlflow/traces/z")
        );
        assert_ne!(r("3/x/mlflow/traces/a"), r("3/x/mlflow/traces/b"));
        assert_ne!(r("3/x/MLflow/traces/a"), r("3/x/MLflow/traces/b"));
        // Empty segments are dropped by MLflow: `artifacts` moves up into the tier position.
        assert_ne!(r("3/abc//artifacts/f"), r("3/abc//foo"));
        assert_ne!(r("3/abc/artifacts/f"), r("3/abc/foo"));
        assert_ne!(r("3/abc/x"), r("4/abc/x"));
        // Segment boundaries are kept: no two segment lists digest alike.
        assert_ne!(r("3/ab/c"), r("3/a/bc"));
        // 3.18 drops `.` segments and takes `workspaces/` in any case: keyed whole.
        assert_ne!(r("./3/abc/artifacts/f"), r("./3/abc/foo/f"));
        assert_ne!(r("3/./abc/artifacts/f"), r("3/./abc/foo/f"));
        assert_ne!(
            r("WORKSPACES/ws/3/abc/artifacts/f"),
            r("WORKSPACES/ws/3/abc/artifacts/g/h")
        );
        assert_ne!(r("3/a\0b/c"), r("3/a/b"));
        // One class: files of one run share one answer.
        assert_eq!(
            r("1/0123456789abcdef0123456789abcdef/artifacts/a.txt"),
            r("1/0123456789abcdef0123456789abcdef/artifacts/model/b.pkl")
        );
        // The operation is part of it; HEAD ignores the path.
        assert_ne!(
            resource(1, b"", Some("1/a/b")),
            resource(2, b"", Some("1/a/b"))
        );
        assert_eq!(resource(3, b"", None), resource(3, b"", None));
        assert_eq!(resource(3, b"", Some("a/%2E%2E/b")), None);
        // The workspace (and the release's rules) are part of the decision.
        assert_ne!(
            resource(1, b"\x00\x01team-a", Some("1/a/b")),
            resource(1, b"\x00\x01team-b", Some("1/a/b"))
        );
        assert_ne!(
            resource(1, b"\x00\x00", Some("1/a/b")),
            resource(1, b"\x01\x00", Some("1/a/b"))
        );
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
