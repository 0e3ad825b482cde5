//! STUB (the data-plane owner replaces this): fetching with verification,
//! caching and coalescing.
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use super::protocol::RemoteName;
use super::{MeshError, PathInfo, StreamOpener};
use crate::storage::{ChunkStream, ObjectReader, Storage};

/// Fetch settings.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Longest wait for an answer's header.
    pub header_timeout: Duration,
    /// Longest time without bytes.
    pub idle_timeout: Duration,
    /// Bytes of cached copies kept.
    pub cache_cap: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
            cache_cap: 1 << 30,
        }
    }
}

/// A fetched object.
pub enum Fetched {
    /// Already here.
    Cached {
        /// The cached copy.
        reader: ObjectReader,
    },
    /// Arriving.
    Streaming {
        /// Size.
        size: u64,
        /// Announced hash.
        hash: blake3::Hash,
        /// The path it takes.
        path: PathInfo,
        /// The bytes.
        body: ChunkStream,
    },
}

/// Fetches objects from other daemons.
#[derive(Clone)]
pub struct Fetcher {}

impl Fetcher {
    /// A fetcher.
    pub fn new(
        _storage: Arc<Storage>,
        _opener: Arc<dyn StreamOpener>,
        _config: FetchConfig,
    ) -> Self {
        todo!()
    }
    /// Get.
    pub async fn get(
        &self,
        _peer: PeerId,
        _name: RemoteName,
        _addrs: &[Multiaddr],
    ) -> Result<Fetched, MeshError> {
        todo!()
    }
    /// Exists.
    pub async fn exists(
        &self,
        _peer: PeerId,
        _name: RemoteName,
        _addrs: &[Multiaddr],
    ) -> Result<bool, MeshError> {
        todo!()
    }
    /// Evict.
    pub async fn evict(
        &self,
        _peer: PeerId,
        _name: RemoteName,
        _addrs: &[Multiaddr],
    ) -> Result<bool, MeshError> {
        todo!()
    }
    /// Put.
    pub async fn put(
        &self,
        _peer: PeerId,
        _name: RemoteName,
        _addrs: &[Multiaddr],
        _body: ChunkStream,
        _size: u64,
    ) -> Result<(), MeshError> {
        todo!()
    }
    /// Network transfers started.
    pub fn transfers(&self) -> u64 {
        todo!()
    }
}
