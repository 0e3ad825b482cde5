//! Partial copies of fetches that failed, kept a while so the next get of
//! the object continues from the segments already verified instead of from
//! byte 0 (a producer down for longer than a fetch's idle timeout, a
//! reader that gave up). Bounded: a few objects, for ten minutes; an
//! object whose size or hash changed is dropped, not resumed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use proxymesh::ObjectId;

use crate::mesh::copies::Partial;
use crate::storage::SparseObject;

/// How long a leftover is kept.
const KEEP: Duration = Duration::from_secs(600);
/// Most leftovers kept (the oldest goes first).
const MOST: usize = 4;

/// A failed fetch's copy, its file, and when it failed.
type Leftover = (Arc<Partial>, SparseObject, Instant);

/// Leftover partial copies, by producer and object ID.
#[derive(Debug, Default)]
pub(super) struct Leftovers {
    map: Mutex<HashMap<(PeerId, ObjectId), Leftover>>,
}

impl Leftovers {
    /// Keep what a failed fetch of `key` verified (nothing, if it verified
    /// no segment).
    pub(super) fn keep(
        &self,
        key: (PeerId, ObjectId),
        partial: Arc<Partial>,
        sparse: SparseObject,
    ) {
        if partial.bits().0.count() == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.lock().expect("leftovers");
        map.retain(|_, (_, _, at)| now.duration_since(*at) < KEEP);
        while map.len() >= MOST {
            let oldest = map
                .iter()
                .min_by_key(|(_, (_, _, at))| *at)
                .map(|(k, _)| *k)
                .expect("not empty");
            map.remove(&oldest);
        }
        tracing::info!(producer = %key.0, id = %key.1, verified = partial.bits().0.count(), of = partial.segments(), "keeping the verified segments of a failed fetch for the next get");
        map.insert(key, (partial, sparse, now));
    }

    /// What a failed fetch of `key` left, if it is still the same object
    /// (`size` bytes hashing to `hash`); nothing is being fetched in it.
    pub(super) fn take(
        &self,
        key: (PeerId, ObjectId),
        size: u64,
        hash: blake3::Hash,
    ) -> Option<(Arc<Partial>, SparseObject)> {
        let (partial, sparse, at) = self.map.lock().expect("leftovers").remove(&key)?;
        if at.elapsed() >= KEEP || partial.size != size || partial.hash != hash {
            return None;
        }
        partial.clear_fetching();
        Some((partial, sparse))
    }
}
