//! Object storage for one site: objects in memory up to a cap, larger objects
//! and overflow spilled to files in the data directory, every object with its
//! size and BLAKE3 hash. Writes and reads stream; nothing here needs a socket.
//!
//! - **Memory accounting**: one atomic memory budget counts every byte of
//!   object data held in memory — by writers still receiving and by
//!   committed memory objects — and never lets it exceed `memory_cap`.
//!   A writer reserves each chunk as it arrives; when the object outgrows
//!   `inline_limit` or the budget refuses, it spills to a temp file and
//!   releases its reservation. Committed memory objects keep theirs until
//!   evicted or replaced.
//! - **Files**: `objects/<random id>.data` per object version (plus a
//!   `.meta` JSON sidecar in persist mode), written as `tmp/<id>.*.part` and
//!   renamed in. A fresh id per version lets readers of a replaced or evicted
//!   version keep reading it. Object names never appear in file names.
//! - **Persist**: data is fsynced before the rename; at open every object is
//!   re-hashed and anything that does not verify is deleted. Without
//!   persist, object files are removed at open and at [`Storage::shutdown`].
//! - **Errors**: ENOSPC/EDQUOT anywhere become [`StorageError::Full`]; a
//!   failed or dropped writer leaves no file and no reservation behind.

mod budget;
mod error;
mod index;
mod layout;
mod name;
pub mod outboard;
mod persist;
mod reader;
mod sparse;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use proxymesh::ObjectId;

use budget::MemoryBudget;
use error::{classify, join_error};
use index::{Entry, Index};
use layout::{clear_dir, Layout};

pub use name::BadObjectName;
pub use sparse::SparseObject;
pub use writer::ObjectWriter;

/// The name an object is stored under. Native objects use 128-bit IDs;
/// ProxyStore endpoint clients use their own string keys, kept in a separate
/// namespace so the two never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectName {
    /// A proxymesh object ID.
    Native(ObjectId),
    /// A ProxyStore endpoint key (arbitrary non-empty string).
    Endpoint(String),
    /// This daemon's cached copy of native object `id` fetched from `peer`.
    Remote {
        /// The producer daemon.
        peer: libp2p::PeerId,
        /// The object's ID there.
        id: ObjectId,
    },
    /// A body held only while it is forwarded to another daemon (a
    /// ProxyStore set of the mesh): no request can name it, and it is not
    /// kept across restarts.
    Staging(ObjectId),
}

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Directory for spilled and persisted objects.
    pub dir: PathBuf,
    /// Total bytes of objects kept in memory.
    pub memory_cap: u64,
    /// Objects larger than this go to disk even when memory is free.
    pub inline_limit: u64,
    /// Largest accepted object; `None` = unlimited.
    pub max_object_size: Option<u64>,
    /// Keep objects across restarts (verified against their hash on load).
    pub persist: bool,
}

/// Where an object's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// In memory.
    Memory,
    /// In a file in the data directory.
    Disk,
}

/// What is known about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 hash of the bytes.
    pub hash: blake3::Hash,
    /// Where the bytes are.
    pub location: Location,
}

/// Storage totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Number of objects.
    pub objects: u64,
    /// Total bytes.
    pub bytes: u64,
    /// Bytes in memory.
    pub memory_bytes: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
}

/// Storage failures. Cheap to clone (I/O errors are shared), so one
/// failure can be handed to every waiter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The object exceeds `max_object_size`.
    #[error("object of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes seen so far (or declared).
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The disk is full (ENOSPC / EDQUOT).
    #[error("the daemon's disk is full ({0}); free space in the data directory or evict objects")]
    Full(Arc<io::Error>),
    /// Any other I/O failure.
    #[error("storage I/O error: {0}")]
    Io(Arc<io::Error>),
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        StorageError::Io(Arc::new(e))
    }
}

/// The store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Storage {
    inner: Arc<Inner>,
}

/// State shared by the store and its writers.
pub(crate) struct Inner {
    config: StorageConfig,
    layout: Arc<Layout>,
    budget: Arc<MemoryBudget>,
    index: Index,
    /// Holds the data directory's `flock`.
    _lock: File,
}

/// A stored object, ready to read.
#[derive(Debug)]
pub enum ObjectReader {
    /// In-memory bytes.
    Memory {
        /// The bytes.
        data: Bytes,
        /// Metadata.
        meta: ObjectMeta,
        /// The BLAKE3 outboard's hash pairs ([`outboard`]).
        outboard: Bytes,
    },
    /// An open file. Its bytes are checked against the recorded BLAKE3 as
    /// they are read ([`ObjectReader::into_stream`], [`ObjectReader::read_all`]):
    /// a file damaged at rest fails the read and is dropped from the store.
    File {
        /// The open file (stays readable after an evict).
        file: tokio::fs::File,
        /// Metadata.
        meta: ObjectMeta,
        /// Drops this version from the store if its bytes turn out corrupt.
        quarantine: Box<reader::Quarantine>,
        /// The `.obao` file beside it.
        outboard: PathBuf,
    },
}

/// Chunks of an object.
pub type ChunkStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

impl Storage {
    /// Open (creating) the store in `config.dir`. Fails if another store has
    /// the directory open. Removes leftover temp files; without `persist`
    /// also leftover objects, with `persist` loads and verifies them.
    pub async fn open(config: StorageConfig) -> Result<Self, StorageError> {
        let layout = Arc::new(Layout::new(&config.dir));
        let persist = config.persist;
        let l = Arc::clone(&layout);
        let lock = tokio::task::spawn_blocking(move || -> io::Result<File> {
            let lock = l.create_and_lock()?;
            let stale = clear_dir(&l.tmp)?;
            if stale > 0 {
                tracing::info!(files = stale, "removed leftover temp files");
            }
            if !persist {
                let old = clear_dir(&l.objects)?;
                if old > 0 {
                    tracing::info!(files = old, "removed object files of a previous run");
                }
            }
            Ok(lock)
        })
        .await
        .map_err(join_error)
        .and_then(|r| r)
        .map_err(classify)?;
        let inner = Inner {
            budget: MemoryBudget::new(config.memory_cap),
            config,
            layout,
            index: Index::default(),
            _lock: lock,
        };
        if persist {
            persist::load(&inner).await?;
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Start writing `name`. `declared_len` (e.g. Content-Length) lets an
    /// oversized object be refused before any byte is read, and sends an
    /// object known to exceed `inline_limit` straight to disk.
    pub fn writer(
        &self,
        name: ObjectName,
        declared_len: Option<u64>,
    ) -> Result<ObjectWriter, StorageError> {
        let cfg = &self.inner.config;
        if let (Some(len), Some(limit)) = (declared_len, cfg.max_object_size) {
            if len > limit {
                return Err(StorageError::TooLarge { size: len, limit });
            }
        }
        let to_disk = declared_len.is_some_and(|len| len > cfg.inline_limit);
        Ok(ObjectWriter::new(Arc::clone(&self.inner), name, to_disk))
    }

    /// Open `name` for reading. A disk object's reader keeps reading that
    /// version even if it is replaced or evicted meanwhile.
    pub async fn open_reader(
        &self,
        name: &ObjectName,
    ) -> Result<Option<ObjectReader>, StorageError> {
        Inner::open_reader(&self.inner, name).await
    }

    /// Metadata of `name`.
    pub fn meta(&self, name: &ObjectName) -> Option<ObjectMeta> {
        self.inner.index.meta(name)
    }

    /// Whether `name` exists.
    pub fn contains(&self, name: &ObjectName) -> bool {
        self.inner.index.contains(name)
    }

    /// Remove `name` and its files; `Ok(false)` if it was not there.
    pub async fn evict(&self, name: &ObjectName) -> Result<bool, StorageError> {
        match self.inner.index.remove(name) {
            Some(entry) => {
                self.inner.discard_entry(entry).await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Totals (O(1)). `memory_bytes` and `disk_bytes` count objects by
    /// [`Location`]; a persisted memory object counts as memory.
    pub fn stats(&self) -> StorageStats {
        self.inner.index.stats()
    }

    /// How many of the objects in [`stats`](Self::stats) are on disk.
    pub fn disk_objects(&self) -> u64 {
        self.inner.index.disk_objects()
    }

    /// The configuration.
    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// Bytes of the memory budget in use (committed memory objects plus
    /// writers still buffering).
    pub fn memory_reserved(&self) -> u64 {
        self.inner.budget.used()
    }

    /// Clean up at exit: without `persist`, remove every object file (disk
    /// objects leave the index; writers still in progress lose their temp
    /// files and fail at commit). With `persist`, nothing to do.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        if self.inner.config.persist {
            return Ok(());
        }
        for (name, id) in self.inner.index.with_files() {
            // Non-persist entries with files are disk objects: no memory to keep.
            let _ = self.inner.index.remove_version(&name, id);
        }
        let layout = Arc::clone(&self.inner.layout);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            clear_dir(&layout.objects)?;
            clear_dir(&layout.tmp)?;
            Ok(())
        })
        .await
        .map_err(join_error)
        .and_then(|r| r)
        .map_err(classify)
    }
}

impl Inner {
    /// Delete the files of an entry removed from the index (logging, not
    /// failing: the entry is already gone). Runs to completion even if the
    /// caller is cancelled.
    async fn discard_entry(&self, entry: Entry) {
        let Some(id) = entry.file else { return };
        drop(entry);
        let layout = Arc::clone(&self.layout);
        let res = tokio::task::spawn_blocking(move || layout.remove_all(id)).await;
        match res.map_err(join_error).and_then(|r| r) {
            Ok(()) => {}
            Err(e) => tracing::warn!(file = %id, error = %e, "could not delete object files"),
        }
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .field("memory_reserved", &self.memory_reserved())
            .finish()
    }
}
