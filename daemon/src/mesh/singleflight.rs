//! Coalescing of concurrent operations by key: the first caller of a key
//! becomes its [`Leader`] and does the work; callers arriving while it is
//! in flight become [`Follower`]s and receive the leader's (cloneable)
//! outcome. The flight ends when the leader completes — possibly in another
//! task than the one that joined, e.g. the task that finishes a transfer
//! after the first caller already returned — or is dropped, which releases
//! the followers with [`Abandoned`] so one of them can take over. A caller
//! arriving after the flight ended starts a new one.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Flights<K, V> = Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>;

/// Operations in flight, by key.
pub struct SingleFlight<K, V> {
    flights: Flights<K, V>,
}

/// What [`SingleFlight::join`] made of the caller.
pub enum Join<K: Eq + Hash + Clone, V: Clone> {
    /// First: do the work, then [`Leader::complete`].
    Leader(Leader<K, V>),
    /// Someone else is doing it: [`Follower::wait`].
    Follower(Follower<V>),
}

/// The caller that does the work for a key.
pub struct Leader<K: Eq + Hash + Clone, V: Clone> {
    flights: Flights<K, V>,
    key: K,
    tx: Option<watch::Sender<Option<V>>>,
}

/// A caller waiting for a leader.
pub struct Follower<V: Clone> {
    rx: watch::Receiver<Option<V>>,
}

/// The leader went away without an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operation this one was waiting for was abandoned")]
pub struct Abandoned;

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// No flights.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lead the flight of `key`, or follow the one in progress.
    pub fn join(&self, key: K) -> Join<K, V> {
        let mut flights = self.flights.lock().expect("singleflight lock");
        if let Some(rx) = flights.get(&key) {
            return Join::Follower(Follower { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key.clone(), rx);
        Join::Leader(Leader {
            flights: Arc::clone(&self.flights),
            key,
            tx: Some(tx),
        })
    }

    /// Number of flights in progress.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().expect("singleflight lock").len()
    }

    /// Run `work` for `key` unless a flight of it is in progress, in which
    /// case wait for that one's outcome. If the leader is cancelled, a
    /// follower takes over (runs its own `work`).
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let mut work = Some(work);
        loop {
            match self.join(key.clone()) {
                Join::Leader(leader) => {
                    let work = work.take().expect("a caller leads at most once");
                    let v = work().await;
                    leader.complete(v.clone());
                    return v;
                }
                Join::Follower(f) => {
                    if let Ok(v) = f.wait().await {
                        return v;
                    }
                }
            }
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Leader<K, V> {
    /// The key led.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// End the flight with `outcome`, waking every follower.
    pub fn complete(mut self, outcome: V) {
        self.end(Some(outcome));
    }

    fn end(&mut self, outcome: Option<V>) {
        let Some(tx) = self.tx.take() else { return };
        // Remove first: whoever comes after the outcome starts afresh.
        self.flights
            .lock()
            .expect("singleflight lock")
            .remove(&self.key);
        if let Some(v) = outcome {
            tx.send_replace(Some(v));
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for Leader<K, V> {
    fn drop(&mut self) {
        self.end(None);
    }
}

impl<V: Clone> Follower<V> {
    /// The leader's outcome, or [`Abandoned`] if it was dropped without one.
    pub async fn wait(mut self) -> Result<V, Abandoned> {
        match self.rx.wait_for(Option::is_some).await {
            Ok(v) => Ok(v.clone().expect("waited for Some")),
            Err(_) => Err(Abandoned),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_execution() {
        let sf = Arc::new(SingleFlight::<u32, u64>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (sf, runs, gate) = (sf.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                sf.run(7, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    42
                })
                .await
            }));
        }
        // Let every task join, then release the leader.
        while sf.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_coalesce_and_later_callers_start_afresh() {
        let sf = SingleFlight::<u32, u32>::new();
        let runs = AtomicUsize::new(0);
        let f = |v| {
            let runs = &runs;
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                v
            }
        };
        assert_eq!(sf.run(1, f(10)).await, 10);
        assert_eq!(sf.run(2, f(20)).await, 20);
        assert_eq!(
            sf.run(1, f(11)).await,
            11,
            "a finished flight is not cached"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn followers_get_the_leaders_failure() {
        let sf = SingleFlight::<&str, Result<u8, String>>::new();
        let Join::Leader(leader) = sf.join("k") else {
            panic!("first caller must lead")
        };
        let followers: Vec<_> = (0..4)
            .map(|_| match sf.join("k") {
                Join::Follower(f) => tokio::spawn(f.wait()),
                Join::Leader(_) => panic!("second caller must follow"),
            })
            .collect();
        // Completed from another task, as a transfer task does.
        tokio::spawn(async move { leader.complete(Err("peer vanished".into())) })
            .await
            .unwrap();
        for f in followers {
            assert_eq!(f.await.unwrap(), Ok(Err("peer vanished".to_string())));
        }
        assert!(matches!(sf.join("k"), Join::Leader(_)));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers_and_one_takes_over() {
        let sf = Arc::new(SingleFlight::<u8, u8>::new());
        let Join::Leader(leader) = sf.join(1) else {
            panic!()
        };
        let Join::Follower(f) = sf.join(1) else {
            panic!()
        };
        drop(leader);
        assert_eq!(f.wait().await, Err(Abandoned));
        assert_eq!(sf.in_flight(), 0);

        // With run(): a cancelled leader's followers run the work themselves.
        let started = Arc::new(tokio::sync::Notify::new());
        let s2 = started.clone();
        let sf2 = sf.clone();
        let doomed = tokio::spawn(async move {
            sf2.run(9, || async move {
                s2.notify_one();
                std::future::pending::<u8>().await
            })
            .await
        });
        started.notified().await;
        let sf3 = sf.clone();
        let follower = tokio::spawn(async move { sf3.run(9, || async { 5 }).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        doomed.abort();
        assert_eq!(follower.await.unwrap(), 5);
    }
}
