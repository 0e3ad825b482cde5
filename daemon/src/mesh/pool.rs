//! Idle fetch-protocol streams kept for the next request to the same peer.
//!
//! Opening a stream costs more than a small object's whole exchange: a
//! round trip through both swarms' tasks and a multistream-select
//! negotiation (another network round trip) before the request can go out.
//! The server keeps a stream open after it answered a `Get` or `Exists`
//! (see [`protocol`](super::protocol)), so a stream whose answer was read to
//! its end is put here and the next request to that peer goes out at once:
//! one request/response round trip. A stream whose exchange ended in an
//! error (even a plain "not found") is not reused.
//!
//! A stream is handed out again only while it is fresh ([`MAX_IDLE`], well
//! inside the server's keep-alive) and only if it runs on the path that is
//! best now: once a direct connection came up, streams on the relayed one
//! are dropped rather than reused. A pooled stream can still turn out dead
//! (the peer restarted): callers send on it with a short timeout and fall
//! back to a new stream. Pure bookkeeping, generic over the stream type.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::PathInfo;

/// Longest a stream is kept idle before it is dropped instead of reused.
pub const MAX_IDLE: Duration = Duration::from_secs(10);
/// Most idle streams kept per peer (as many requests to one peer can run at
/// once without opening streams).
pub const MAX_PER_PEER: usize = 16;

struct Idle<S> {
    stream: S,
    path: PathInfo,
    since: Instant,
}

/// Idle streams by peer.
pub struct StreamPool<S> {
    idle: Mutex<HashMap<PeerId, Vec<Idle<S>>>>,
    max_idle: Duration,
    max_per_peer: usize,
}

impl<S> Default for StreamPool<S> {
    fn default() -> Self {
        Self::new(MAX_IDLE, MAX_PER_PEER)
    }
}

impl<S> StreamPool<S> {
    /// A pool keeping up to `max_per_peer` streams per peer, each for up to
    /// `max_idle`.
    pub fn new(max_idle: Duration, max_per_peer: usize) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            max_per_peer,
        }
    }

    /// The most recently used idle stream to `peer` on path `best` (the
    /// best path to the peer now; `None`, not connected, drops them all).
    /// Stale streams and streams on other paths are dropped.
    pub fn take(&self, peer: &PeerId, best: Option<PathInfo>) -> Option<(S, PathInfo)> {
        let mut idle = self.idle.lock().expect("pool lock");
        let streams = idle.get_mut(peer)?;
        let now = Instant::now();
        streams.retain(|s| Some(s.path) == best && now.duration_since(s.since) < self.max_idle);
        let found = streams.pop().map(|s| (s.stream, s.path));
        if streams.is_empty() {
            idle.remove(peer);
        }
        found
    }

    /// Keep `stream` to `peer` (on `path`), whose last answer was read to
    /// its end, for the next request. Beyond the per-peer limit the oldest
    /// is dropped.
    pub fn give(&self, peer: PeerId, stream: S, path: PathInfo) {
        let mut idle = self.idle.lock().expect("pool lock");
        let now = Instant::now();
        let streams = idle.entry(peer).or_default();
        streams.retain(|s| now.duration_since(s.since) < self.max_idle);
        if streams.len() >= self.max_per_peer {
            streams.remove(0);
        }
        streams.push(Idle {
            stream,
            path,
            since: now,
        });
    }

    /// Drop every idle stream to `peer`.
    pub fn forget(&self, peer: &PeerId) {
        self.idle.lock().expect("pool lock").remove(peer);
    }

    /// Idle streams kept, over all peers.
    pub fn len(&self) -> usize {
        self.idle
            .lock()
            .expect("pool lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Whether no stream is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxymesh::api::{Path, Transport};

    const DIRECT: PathInfo = PathInfo {
        path: Path::Direct,
        transport: Transport::Quic,
    };
    const RELAYED: PathInfo = PathInfo {
        path: Path::Relayed,
        transport: Transport::Quic,
    };

    #[test]
    fn newest_first_and_only_to_the_same_peer() {
        let pool = StreamPool::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        pool.give(a, 1, DIRECT);
        pool.give(a, 2, DIRECT);
        assert_eq!(pool.take(&b, Some(DIRECT)), None);
        assert_eq!(pool.take(&a, Some(DIRECT)), Some((2, DIRECT)));
        assert_eq!(pool.take(&a, Some(DIRECT)), Some((1, DIRECT)));
        assert_eq!(pool.take(&a, Some(DIRECT)), None);
        assert!(pool.is_empty());
    }

    #[test]
    fn streams_on_a_worse_path_or_unconnected_peers_are_dropped() {
        let pool = StreamPool::default();
        let a = PeerId::random();
        pool.give(a, 1, RELAYED);
        pool.give(a, 2, DIRECT);
        // A direct path came up: the relayed stream is not handed out.
        assert_eq!(pool.take(&a, Some(DIRECT)), Some((2, DIRECT)));
        assert_eq!(pool.take(&a, Some(DIRECT)), None);
        assert!(pool.is_empty());
        pool.give(a, 3, DIRECT);
        assert_eq!(pool.take(&a, None), None);
        assert!(pool.is_empty());
    }

    #[test]
    fn stale_streams_are_dropped_and_the_pool_is_bounded() {
        let pool = StreamPool::new(Duration::from_millis(50), 2);
        let a = PeerId::random();
        pool.give(a, 1, DIRECT);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(pool.take(&a, Some(DIRECT)), None);
        for s in 2..=4 {
            pool.give(a, s, DIRECT);
        }
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.take(&a, Some(DIRECT)), Some((4, DIRECT)));
        assert_eq!(pool.take(&a, Some(DIRECT)), Some((3, DIRECT)));
        pool.give(a, 5, DIRECT);
        pool.forget(&a);
        assert!(pool.is_empty());
    }
}
