//! The index of committed objects and its O(1) totals.
//!
//! Each [`Entry`] is owned by the map; whoever removes it from the map (a
//! replacing commit, an evict, shutdown) gets it back and is the only one
//! responsible for deleting its files. Its memory reservation is released
//! when the entry is dropped.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use dashmap::DashMap;

use super::budget::Reservation;
use super::layout::FileId;
use super::{Location, ObjectMeta, ObjectName, StorageStats};

/// One committed object version.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) meta: ObjectMeta,
    /// In-memory copy and the budget it holds (`meta.location == Memory`).
    pub(crate) memory: Option<(Bytes, Reservation)>,
    /// The outboard of a memory object (a disk object's is in its `.obao`).
    pub(crate) outboard: Option<Bytes>,
    /// Its files (always for disk objects; in persist mode also for memory ones).
    pub(crate) file: Option<FileId>,
}

/// What a reader needs from an entry, copied out so no map lock is held.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) meta: ObjectMeta,
    pub(crate) data: Option<Bytes>,
    pub(crate) outboard: Option<Bytes>,
    pub(crate) file: Option<FileId>,
}

/// Objects by name, with running totals.
#[derive(Debug, Default)]
pub(crate) struct Index {
    map: DashMap<ObjectName, Entry>,
    objects: AtomicU64,
    bytes: AtomicU64,
    memory_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    disk_objects: AtomicU64,
}

impl Index {
    /// Insert, returning the replaced entry (whose files the caller removes).
    pub(crate) fn insert(&self, name: ObjectName, entry: Entry) -> Option<Entry> {
        self.account(&entry.meta, true);
        let old = self.map.insert(name, entry);
        if let Some(old) = &old {
            self.account(&old.meta, false);
        }
        old
    }

    /// Remove `name`.
    pub(crate) fn remove(&self, name: &ObjectName) -> Option<Entry> {
        let (_, old) = self.map.remove(name)?;
        self.account(&old.meta, false);
        Some(old)
    }

    /// Remove `name` only if it is still the version stored in `file`.
    pub(crate) fn remove_version(&self, name: &ObjectName, file: FileId) -> Option<Entry> {
        let (_, old) = self.map.remove_if(name, |_, e| e.file == Some(file))?;
        self.account(&old.meta, false);
        Some(old)
    }

    pub(crate) fn meta(&self, name: &ObjectName) -> Option<ObjectMeta> {
        self.map.get(name).map(|e| e.meta.clone())
    }

    pub(crate) fn contains(&self, name: &ObjectName) -> bool {
        self.map.contains_key(name)
    }

    pub(crate) fn snapshot(&self, name: &ObjectName) -> Option<Snapshot> {
        self.map.get(name).map(|e| Snapshot {
            meta: e.meta.clone(),
            data: e.memory.as_ref().map(|(b, _)| b.clone()),
            outboard: e.outboard.clone(),
            file: e.file,
        })
    }

    /// Names and file ids of every entry that has files.
    pub(crate) fn with_files(&self) -> Vec<(ObjectName, FileId)> {
        self.map
            .iter()
            .filter_map(|e| e.file.map(|f| (e.key().clone(), f)))
            .collect()
    }

    /// Every name and its metadata (tests check the counters against it).
    #[cfg(test)]
    pub(crate) fn with_all(&self) -> Vec<(ObjectName, ObjectMeta)> {
        self.map
            .iter()
            .map(|e| (e.key().clone(), e.meta.clone()))
            .collect()
    }

    pub(crate) fn stats(&self) -> StorageStats {
        StorageStats {
            objects: self.objects.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            memory_bytes: self.memory_bytes.load(Ordering::Relaxed),
            disk_bytes: self.disk_bytes.load(Ordering::Relaxed),
        }
    }

    /// How many of the objects are on disk.
    pub(crate) fn disk_objects(&self) -> u64 {
        self.disk_objects.load(Ordering::Relaxed)
    }

    fn account(&self, meta: &ObjectMeta, add: bool) {
        let op = |c: &AtomicU64, n: u64| {
            if add {
                c.fetch_add(n, Ordering::Relaxed);
            } else {
                c.fetch_sub(n, Ordering::Relaxed);
            }
        };
        op(&self.objects, 1);
        op(&self.bytes, meta.size);
        match meta.location {
            Location::Memory => op(&self.memory_bytes, meta.size),
            Location::Disk => {
                op(&self.disk_bytes, meta.size);
                op(&self.disk_objects, 1);
            }
        }
    }
}
