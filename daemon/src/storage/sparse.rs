//! [`SparseObject`]: an object of known size written in any order (pieces
//! fetched from several daemons at once), readable while it fills, and
//! published like any disk object once whole.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::error::{classify, join_error};
use super::index::Entry;
use super::layout::{FileGuard, FileId, Kind, Sidecar};
use super::{Inner, Location, ObjectMeta, ObjectName, Storage, StorageError};

/// A temp file of the object's final size. Dropped uncommitted, it leaves
/// nothing behind.
pub struct SparseObject {
    inner: Arc<Inner>,
    name: ObjectName,
    size: u64,
    file: Arc<File>,
    guard: FileGuard,
}

impl std::fmt::Debug for SparseObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseObject")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish()
    }
}

impl Storage {
    /// Start an object `name` of `size` bytes to be written in any order.
    pub async fn sparse(&self, name: ObjectName, size: u64) -> Result<SparseObject, StorageError> {
        if let Some(limit) = self.inner.config.max_object_size {
            if size > limit {
                return Err(StorageError::TooLarge { size, limit });
            }
        }
        let id = FileId::random();
        let guard = FileGuard::new(&self.inner.layout, id);
        let path = self.inner.layout.tmp_path(id, Kind::Data);
        let file = tokio::task::spawn_blocking(move || -> io::Result<File> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)?;
            f.set_len(size)?;
            Ok(f)
        })
        .await
        .map_err(join_error)
        .and_then(|r| r)
        .map_err(classify)?;
        Ok(SparseObject {
            inner: Arc::clone(&self.inner),
            name,
            size,
            file: Arc::new(file),
            guard,
        })
    }
}

impl SparseObject {
    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file, for reading and writing at offsets (blocking calls).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Write `data` at `offset` (blocking).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        if offset + data.len() as u64 > self.size {
            return Err(io::Error::other("a write past the end of a sparse object").into());
        }
        self.file.write_all_at(data, offset).map_err(classify)
    }

    /// Publish the whole object (its bytes verified by the caller against
    /// `hash`, its `outboard` complete) as a disk object, replacing any
    /// previous version of the name.
    pub async fn commit(
        self,
        hash: blake3::Hash,
        outboard: Vec<u8>,
    ) -> Result<ObjectMeta, StorageError> {
        let inner = Arc::clone(&self.inner);
        let meta = ObjectMeta {
            size: self.size,
            hash,
            location: Location::Disk,
        };
        let id = self.guard.id();
        let sidecar = inner
            .config
            .persist
            .then(|| Sidecar::new(&self.name, &meta));
        let layout = Arc::clone(&inner.layout);
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let file = file.try_clone()?;
            layout.publish(id, file, Some(&outboard), sidecar.as_ref())
        })
        .await
        .map_err(join_error)
        .and_then(|r| r)
        .map_err(classify)?;
        let entry = Entry {
            meta: meta.clone(),
            memory: None,
            outboard: None,
            file: Some(id),
        };
        // No await between disarming and inserting (see ObjectWriter::commit).
        self.guard.disarm();
        if let Some(old) = inner.index.insert(self.name, entry) {
            inner.discard_entry(old).await;
        }
        Ok(meta)
    }
}
