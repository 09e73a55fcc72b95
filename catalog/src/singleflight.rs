//! Stampede protection: concurrent loads of one key in this process share a single load.
//!
//! A cache miss on a hot concert would otherwise send every waiting request to Postgres at once.
//! Here the first caller's load becomes a shared future; callers arriving while it runs await the
//! same future and get a clone of its result. (A local cache such as moka's `try_get_with` would
//! coalesce too, but it keeps values in this process, where another replica's write cannot
//! invalidate them; Redis stays the only cache.)

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};

/// In-flight loads by key.
pub struct SingleFlight<T: Clone> {
    in_flight: Mutex<HashMap<String, Shared<BoxFuture<'static, T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for SingleFlight<T> {
    fn default() -> Self {
        Self { in_flight: Mutex::new(HashMap::new()) }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Shared<BoxFuture<'static, T>>>> {
        // Never held across an await; a panic while holding it leaves the map usable.
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `load` unless a load for `key` is already running, in which case waits for that one.
    ///
    /// The load is owned by the shared future, not by the first caller: if that caller goes away
    /// (its request was cancelled), the others still drive it to the end.
    pub async fn run<F>(&self, key: &str, load: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
    {
        let shared = {
            let mut map = self.map();
            match map.get(key) {
                Some(running) => running.clone(),
                None => {
                    let shared = load.boxed().shared();
                    map.insert(key.to_owned(), shared.clone());
                    shared
                }
            }
        };
        let value = shared.clone().await;
        // The first waiter back removes the finished load, so the next caller loads afresh; a newer
        // load under the same key is left alone.
        let mut map = self.map();
        if map.get(key).is_some_and(|current| current.ptr_eq(&shared)) {
            map.remove(key);
        }
        value
    }

    /// Loads currently running, for tests.
    pub fn in_flight(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_for_one_key_load_once() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let callers = (0..50).map(|_| {
            let (flights, loads) = (flights.clone(), loads.clone());
            tokio::spawn(async move {
                flights
                    .run("concert:1", async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
            })
        });
        for result in futures::future::join_all(callers).await {
            assert_eq!(result.unwrap(), 7);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0, "finished loads are forgotten");
    }

    #[tokio::test]
    async fn different_keys_and_later_calls_load_again() {
        let flights = SingleFlight::<usize>::default();
        let loads = Arc::new(AtomicUsize::new(0));
        for key in ["a", "b", "a"] {
            let loads = loads.clone();
            flights.run(key, async move { loads.fetch_add(1, Ordering::SeqCst) }).await;
        }
        assert_eq!(loads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_cancelled_first_caller_does_not_strand_the_others() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            1
        };
        let first = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", slow()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", slow()).await })
        };
        first.abort();
        assert_eq!(second.await.unwrap(), 1);
        assert_eq!(flights.in_flight(), 0);
    }
}
