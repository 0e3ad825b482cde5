//! A store's bounded LRU cache of serialized objects.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

use crate::key::ObjectId;

/// Objects larger than this are never cached.
pub const MAX_CACHED_OBJECT: usize = 64 * 1024 * 1024;

/// Bounded LRU cache from object ID to serialized bytes. Object IDs are
/// 128-bit random, so the ID alone identifies an object across connectors.
#[derive(Debug)]
pub(crate) struct Cache {
    inner: Option<Mutex<LruCache<ObjectId, Bytes>>>,
}

impl Cache {
    /// A cache of at most `size` entries; `0` disables caching.
    pub(crate) fn new(size: usize) -> Self {
        Self {
            inner: NonZeroUsize::new(size).map(|n| Mutex::new(LruCache::new(n))),
        }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, LruCache<ObjectId, Bytes>>> {
        self.inner
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn get(&self, id: &ObjectId) -> Option<Bytes> {
        self.lock()?.get(id).cloned()
    }

    pub(crate) fn contains(&self, id: &ObjectId) -> bool {
        self.lock().is_some_and(|c| c.contains(id))
    }

    pub(crate) fn insert(&self, id: ObjectId, data: &Bytes) {
        if data.len() > MAX_CACHED_OBJECT {
            return;
        }
        if let Some(mut c) = self.lock() {
            c.put(id, data.clone());
        }
    }

    pub(crate) fn remove(&self, id: &ObjectId) {
        if let Some(mut c) = self.lock() {
            c.pop(id);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().map_or(0, |c| c.len())
    }
}
