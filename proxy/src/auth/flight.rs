//! Single flight: callers asking MLflow the same question at the same time wait for one answer.
//!
//! An entry lives exactly as long as someone waits on it. Each caller holds a `Seat`; the seat
//! that leaves last (answered, or dropped because its client went away mid-question) removes the
//! entry, so requests cut off by their clients leave nothing behind, however many there are.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

pub struct Flights<K, V> {
    map: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Hash + Eq + Copy, V: Clone> Flights<K, V> {
    pub fn new() -> Self {
        Flights {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<OnceCell<V>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A seat on the flight for `key`: the one in progress, or a new one.
    pub fn join(&self, key: K) -> Seat<'_, K, V> {
        let cell = self.lock().entry(key).or_default().clone();
        Seat {
            flights: self,
            key,
            cell: Some(cell),
        }
    }

    /// Questions in progress.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

pub struct Seat<'a, K: Hash + Eq + Copy, V: Clone> {
    flights: &'a Flights<K, V>,
    key: K,
    /// Always `Some` until dropped.
    cell: Option<Arc<OnceCell<V>>>,
}

impl<K: Hash + Eq + Copy, V: Clone> Seat<'_, K, V> {
    /// The answer: asked by this caller with `ask` if no other caller is asking already. If the
    /// caller asking is dropped, a waiting one asks instead.
    pub async fn answer<F: Future<Output = V>>(&self, ask: impl FnOnce() -> F) -> V {
        let cell = self
            .cell
            .as_ref()
            .expect("a seat holds its cell until dropped");
        cell.get_or_init(ask).await.clone()
    }
}

impl<K: Hash + Eq + Copy, V: Clone> Drop for Seat<'_, K, V> {
    fn drop(&mut self) {
        let Some(cell) = self.cell.take() else {
            return;
        };
        // Every clone of a cell is made and dropped under the lock, so the count is exact here:
        // 2 means the map's and this seat's. An answered flight goes at once (later callers read
        // the cache); an unanswered one when its last waiter leaves.
        let mut map = self.flights.lock();
        if map.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &cell))
            && (cell.initialized() || Arc::strong_count(&cell) == 2)
        {
            map.remove(&self.key);
        }
        drop(cell);
        drop(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_leave_with_their_last_waiter() {
        let flights: Flights<u32, u32> = Flights::new();
        // Waiters dropped before any answer (their clients went away).
        for key in 0..1000 {
            let seat = flights.join(key);
            let never = seat.answer(std::future::pending::<u32>);
            let _ = tokio::time::timeout(std::time::Duration::ZERO, never).await;
        }
        assert_eq!(flights.len(), 0);
        // Two waiters on one key: the first to leave keeps the entry for the other.
        let a = flights.join(7);
        let b = flights.join(7);
        drop(a);
        assert_eq!(flights.len(), 1);
        assert_eq!(b.answer(|| async { 42 }).await, 42);
        drop(b);
        assert_eq!(flights.len(), 0);
    }
}
