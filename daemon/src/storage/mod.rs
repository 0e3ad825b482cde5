//! Object storage for one site: objects in memory up to a cap, larger objects
//! and overflow spilled to files in the data directory, every object with its
//! size and BLAKE3 hash. Writes and reads stream; nothing here needs a socket.
//!
//! STUB: signatures fixed, bodies to be written.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use proxymesh::ObjectId;

/// The name an object is stored under. Native objects use 128-bit IDs;
/// ProxyStore endpoint clients use their own string keys, kept in a separate
/// namespace so the two never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ObjectName {
    /// A proxymesh object ID.
    Native(ObjectId),
    /// A ProxyStore endpoint key (arbitrary non-empty string).
    Endpoint(String),
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

/// Storage failures.
#[derive(Debug, thiserror::Error)]
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
    Full(io::Error),
    /// Any other I/O failure.
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The store.
#[derive(Debug)]
pub struct Storage {}

/// A streaming writer for one object. Nothing is visible until [`commit`](Self::commit);
/// dropping it uncommitted discards everything written.
#[derive(Debug)]
pub struct ObjectWriter {}

/// A stored object, ready to read.
#[derive(Debug)]
pub enum ObjectReader {
    /// In-memory bytes.
    Memory {
        /// The bytes.
        data: Bytes,
        /// Metadata.
        meta: ObjectMeta,
    },
    /// An open file.
    File {
        /// The open file (stays readable after an evict).
        file: tokio::fs::File,
        /// Metadata.
        meta: ObjectMeta,
    },
}

/// Chunks of an object.
pub type ChunkStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

impl Storage {
    /// Open (creating) the store in `config.dir`.
    pub async fn open(_config: StorageConfig) -> Result<Self, StorageError> {
        todo!()
    }
    /// Start writing `name`. `declared_len` (e.g. Content-Length) lets an
    /// oversized object be refused before any byte is read.
    pub fn writer(&self, _name: ObjectName, _declared_len: Option<u64>) -> Result<ObjectWriter, StorageError> {
        todo!()
    }
    /// Open `name` for reading.
    pub async fn open_reader(&self, _name: &ObjectName) -> Result<Option<ObjectReader>, StorageError> {
        todo!()
    }
    /// Metadata of `name`.
    pub fn meta(&self, _name: &ObjectName) -> Option<ObjectMeta> {
        todo!()
    }
    /// Whether `name` exists.
    pub fn contains(&self, _name: &ObjectName) -> bool {
        todo!()
    }
    /// Remove `name`; `Ok(false)` if it was not there.
    pub async fn evict(&self, _name: &ObjectName) -> Result<bool, StorageError> {
        todo!()
    }
    /// Totals.
    pub fn stats(&self) -> StorageStats {
        todo!()
    }
    /// The configuration.
    pub fn config(&self) -> &StorageConfig {
        todo!()
    }
    /// Clean up at exit: without `persist`, remove every object file.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        todo!()
    }
}

impl ObjectWriter {
    /// Append a chunk.
    pub async fn write(&mut self, _chunk: Bytes) -> Result<(), StorageError> {
        todo!()
    }
    /// Make the object visible (replacing any previous object of that name).
    pub async fn commit(self) -> Result<ObjectMeta, StorageError> {
        todo!()
    }
}

impl ObjectReader {
    /// Metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            ObjectReader::Memory { meta, .. } | ObjectReader::File { meta, .. } => meta,
        }
    }
    /// The bytes as a stream of chunks of about `chunk_size` bytes.
    pub fn into_stream(self, _chunk_size: usize) -> ChunkStream {
        todo!()
    }
    /// All the bytes at once (for small objects).
    pub async fn read_all(self) -> io::Result<Bytes> {
        todo!()
    }
}
