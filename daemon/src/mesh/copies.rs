//! Copies of other daemons' objects that this daemon is fetching, kept so
//! they can be served to others while they arrive, and who holds what.
//!
//! - [`Partial`]: an object being fetched in [`SEGMENT`]s (from several
//!   daemons at once, see [`fetcher`](super::fetcher)) into a sparse file, with
//!   the bitfields of the segments it has verified and is fetching, and the
//!   hash pairs that arrived with them. Every segment it has can be served
//!   as a verified range: the pairs that proved it are the pairs that prove
//!   it again.
//! - [`Copies`]: the partial copies of this daemon, by producer and ID.
//! - [`Holders`]: at a producer, the daemons that recently asked for each
//!   object, handed to the next requesters as sources.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bao_tree::{BaoTree, TreeNode};
use dashmap::DashMap;
use libp2p::PeerId;
use proxymesh::ObjectId;

use super::protocol::SEGMENT;
use crate::storage::outboard::{tree, Outboard};

/// Number of segments of an object of `size` bytes.
pub fn segments(size: u64) -> u64 {
    size.div_ceil(SEGMENT)
}

/// Byte range (offset, length) of segment `i` of an object of `size` bytes.
pub fn segment_range(size: u64, i: u64) -> (u64, u64) {
    let offset = i * SEGMENT;
    (offset, SEGMENT.min(size - offset))
}

/// A bitfield over segments (bit `i` of byte `i / 8`, least significant first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bits(Vec<u8>);

impl Bits {
    /// `n` bits, all clear.
    pub fn new(n: u64) -> Self {
        Self(vec![0; n.div_ceil(8) as usize])
    }

    /// `n` bits, all set.
    pub fn full(n: u64) -> Self {
        let mut b = Self::new(n);
        for i in 0..n {
            b.set(i, true);
        }
        b
    }

    /// From the wire; `None` if it is not `n` bits long.
    pub fn from_bytes(bytes: Vec<u8>, n: u64) -> Option<Self> {
        (bytes.len() as u64 == n.div_ceil(8)).then_some(Self(bytes))
    }

    /// For the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Bit `i`.
    pub fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 8) as usize)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Set bit `i` to `on`.
    pub fn set(&mut self, i: u64, on: bool) {
        if let Some(b) = self.0.get_mut((i / 8) as usize) {
            if on {
                *b |= 1 << (i % 8);
            } else {
                *b &= !(1 << (i % 8));
            }
        }
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|b| b.count_ones() as u64).sum()
    }
}

/// An object being fetched, servable segment by segment as it arrives.
#[derive(Debug)]
pub struct Partial {
    /// Size of the object.
    pub size: u64,
    /// Its BLAKE3 hash.
    pub hash: blake3::Hash,
    /// The sparse file the segments are written into.
    pub file: Arc<File>,
    tree: BaoTree,
    bits: Mutex<(Bits, Bits)>,
    pairs: Arc<RwLock<Vec<u8>>>,
}

impl Partial {
    /// A copy of an object of `size` bytes hashing to `hash`, written into `file`.
    pub fn new(size: u64, hash: blake3::Hash, file: Arc<File>) -> Self {
        let tree = tree(size);
        let n = segments(size);
        Self {
            size,
            hash,
            file,
            tree,
            bits: Mutex::new((Bits::new(n), Bits::new(n))),
            pairs: Arc::new(RwLock::new(vec![0; tree.outboard_size() as usize])),
        }
    }

    /// Number of segments.
    pub fn segments(&self) -> u64 {
        segments(self.size)
    }

    /// Whether segment `i` is here, verified.
    pub fn has(&self, i: u64) -> bool {
        self.bits.lock().expect("bits").0.get(i)
    }

    /// Whether every segment touching bytes `offset..offset + len` is here.
    pub fn holds(&self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let bits = self.bits.lock().expect("bits");
        (offset / SEGMENT..=(offset + len - 1) / SEGMENT).all(|i| bits.0.get(i))
    }

    /// Segment `i` is verified and written.
    pub fn mark_have(&self, i: u64) {
        let mut bits = self.bits.lock().expect("bits");
        bits.0.set(i, true);
        bits.1.set(i, false);
    }

    /// Segment `i` is (or is no longer) being fetched.
    pub fn mark_fetching(&self, i: u64, on: bool) {
        self.bits.lock().expect("bits").1.set(i, on);
    }

    /// Nothing is being fetched any more (a failed fetch's copy, kept
    /// for the next).
    pub fn clear_fetching(&self) {
        let mut bits = self.bits.lock().expect("bits");
        bits.1 = Bits::new(self.segments());
    }

    /// The segments here and the segments being fetched.
    pub fn bits(&self) -> (Bits, Bits) {
        self.bits.lock().expect("bits").clone()
    }

    /// Keep a hash pair that arrived proving some segment.
    pub fn save_pair(&self, node: TreeNode, pair: &[u8; 64]) {
        if let Some(at) = self.tree.post_order_offset(node) {
            let at = at.value() as usize * 64;
            let mut pairs = self.pairs.write().expect("pairs");
            if let Some(slot) = pairs.get_mut(at..at + 64) {
                slot.copy_from_slice(pair);
            }
        }
    }

    /// The outboard as far as it arrived: it proves every segment here.
    pub fn outboard(&self) -> Outboard {
        Outboard::shared(self.hash, self.size, Arc::clone(&self.pairs))
    }

    /// The whole outboard, once every segment is here.
    pub fn pairs(&self) -> Vec<u8> {
        self.pairs.read().expect("pairs").clone()
    }
}

/// This daemon's partial copies, by producer and object ID.
pub type Copies = DashMap<(PeerId, ObjectId), Arc<Partial>>;

/// How long a requester counts as a holder of an object.
const HOLDER_TTL: Duration = Duration::from_secs(600);
/// Most holders kept (and handed out) per object.
const MAX_HOLDERS: usize = 16;
/// Most objects whose holders are kept.
const MAX_OBJECTS: usize = 4096;

/// At a producer: who asked for each object lately.
#[derive(Debug, Default)]
pub struct Holders {
    by_object: Mutex<HashMap<ObjectId, Vec<(PeerId, Instant)>>>,
}

impl Holders {
    /// `peer` is fetching `id`: the other recent holders.
    pub fn record(&self, id: ObjectId, peer: PeerId) -> Vec<PeerId> {
        let now = Instant::now();
        let mut map = self.by_object.lock().expect("holders");
        if map.len() >= MAX_OBJECTS && !map.contains_key(&id) {
            map.retain(|_, v| v.iter().any(|(_, t)| now.duration_since(*t) < HOLDER_TTL));
            if map.len() >= MAX_OBJECTS {
                map.clear();
            }
        }
        let list = map.entry(id).or_default();
        list.retain(|(p, t)| *p != peer && now.duration_since(*t) < HOLDER_TTL);
        let others: Vec<PeerId> = list.iter().rev().map(|(p, _)| *p).collect();
        list.push((peer, now));
        if list.len() > MAX_HOLDERS {
            list.remove(0);
        }
        others
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_segments() {
        let mut b = Bits::new(10);
        assert_eq!(b.as_bytes().len(), 2);
        b.set(3, true);
        b.set(9, true);
        assert!(b.get(3) && b.get(9) && !b.get(4) && !b.get(100));
        assert_eq!(b.count(), 2);
        b.set(3, false);
        assert_eq!(b.count(), 1);
        assert_eq!(Bits::full(10).count(), 10);
        assert!(Bits::from_bytes(vec![0; 3], 10).is_none());
        assert_eq!(segments(0), 0);
        assert_eq!(segments(SEGMENT), 1);
        assert_eq!(segments(SEGMENT + 1), 2);
        assert_eq!(segment_range(SEGMENT + 5, 1), (SEGMENT, 5));
    }

    #[test]
    fn holders_are_the_others_newest_first_and_bounded() {
        let h = Holders::default();
        let id = ObjectId::random();
        let peers: Vec<_> = (0..20).map(|_| PeerId::random()).collect();
        assert!(h.record(id, peers[0]).is_empty());
        assert_eq!(h.record(id, peers[1]), vec![peers[0]]);
        // Asking again does not list yourself.
        assert_eq!(h.record(id, peers[0]), vec![peers[1]]);
        for p in &peers[2..] {
            h.record(id, *p);
        }
        let got = h.record(id, PeerId::random());
        assert_eq!(got.len(), MAX_HOLDERS);
        assert_eq!(got[0], peers[19]);
    }

    #[test]
    fn a_partial_holds_only_whole_verified_segments() {
        let f = tempfile::tempfile().unwrap();
        let p = Partial::new(3 * SEGMENT + 10, blake3::hash(b""), Arc::new(f));
        assert_eq!(p.segments(), 4);
        p.mark_fetching(1, true);
        assert!(!p.holds(SEGMENT, 1));
        p.mark_have(1);
        assert!(p.holds(SEGMENT, SEGMENT) && !p.holds(SEGMENT, SEGMENT + 1));
        let (have, fetching) = p.bits();
        assert!(have.get(1) && !fetching.get(1));
        assert!(p.holds(0, 0));
    }
}
