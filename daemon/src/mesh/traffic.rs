//! Bytes served to and fetched from each peer, for `status`.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use libp2p::PeerId;
use proxymesh::api::PeerTraffic;

/// Running byte counts per peer (since the daemon started). Counted as they
/// cross the stream: encoded bytes, hashes included.
#[derive(Debug, Default)]
pub struct Traffic {
    peers: DashMap<PeerId, Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    served: AtomicU64,
    fetched: AtomicU64,
}

impl Traffic {
    /// `n` more bytes sent to `peer`.
    pub fn served(&self, peer: PeerId, n: u64) {
        self.peers
            .entry(peer)
            .or_default()
            .served
            .fetch_add(n, Ordering::Relaxed);
    }

    /// `n` more bytes received from `peer`.
    pub fn fetched(&self, peer: PeerId, n: u64) {
        self.peers
            .entry(peer)
            .or_default()
            .fetched
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes sent to `peer` so far.
    pub fn served_to(&self, peer: &PeerId) -> u64 {
        self.peers
            .get(peer)
            .map_or(0, |c| c.served.load(Ordering::Relaxed))
    }

    /// Bytes received from `peer` so far.
    pub fn fetched_from(&self, peer: &PeerId) -> u64 {
        self.peers
            .get(peer)
            .map_or(0, |c| c.fetched.load(Ordering::Relaxed))
    }

    /// Every peer's counts, ordered by peer ID.
    pub fn snapshot(&self) -> Vec<PeerTraffic> {
        let mut out: Vec<_> = self
            .peers
            .iter()
            .map(|e| PeerTraffic {
                peer_id: e.key().to_string(),
                served_bytes: e.served.load(Ordering::Relaxed),
                fetched_bytes: e.fetched.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_per_peer() {
        let t = Traffic::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        t.served(a, 10);
        t.served(a, 5);
        t.fetched(b, 7);
        assert_eq!(t.served_to(&a), 15);
        assert_eq!(t.served_to(&b), 0);
        let snap = t.snapshot();
        assert_eq!(snap.len(), 2);
        let sa = snap.iter().find(|p| p.peer_id == a.to_string()).unwrap();
        assert_eq!((sa.served_bytes, sa.fetched_bytes), (15, 0));
        let sb = snap.iter().find(|p| p.peer_id == b.to_string()).unwrap();
        assert_eq!((sb.served_bytes, sb.fetched_bytes), (0, 7));
    }
}
