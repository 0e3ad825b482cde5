//! Connectors: the byte-level storage interface a [`Store`](crate::Store)
//! sits on.
//!
//! A [`Connector`] moves opaque bytes under [`Key`]s. Three ship with the SDK:
//! [`LocalConnector`] (in-process memory), [`FileConnector`] (a shared
//! directory) and [`DaemonConnector`] (the local `proxymeshd`). Each can
//! describe itself as a serializable [`ConnectorConfig`], so a proxy that
//! travels to another process rebuilds a connector there.
//! [`testing::run_connector_suite`](crate::testing::run_connector_suite) is the
//! conformance suite every connector passes.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::key::Key;

mod daemon;
mod file;
mod local;
mod quick;

pub use daemon::DaemonConnector;
pub use file::FileConnector;
pub use local::LocalConnector;

/// A stream of byte chunks, for objects too large to hold in memory.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// Byte-level storage under [`Key`]s. Implementations must be cheap to share
/// (`Arc<dyn Connector>`) and safe to call concurrently.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// Store `data` under a fresh key.
    async fn put(&self, data: Bytes) -> Result<Key>;
    /// The bytes under `key`, or `None` if there is no such object.
    async fn get(&self, key: &Key) -> Result<Option<Bytes>>;
    /// Whether an object exists under `key`.
    async fn exists(&self, key: &Key) -> Result<bool>;
    /// Remove the object under `key`; removing a missing object is not an error.
    async fn evict(&self, key: &Key) -> Result<()>;
    /// A fresh key with nothing stored under it yet, for a later [`set`](Self::set).
    async fn new_key(&self) -> Result<Key>;
    /// Store `data` under `key` (from [`new_key`](Self::new_key)), replacing any object there.
    async fn set(&self, key: &Key, data: Bytes) -> Result<()>;
    /// The configuration that rebuilds an equivalent connector, possibly in another process.
    fn config(&self) -> ConnectorConfig;

    /// Store several objects; keys come back in order.
    async fn put_batch(&self, data: Vec<Bytes>) -> Result<Vec<Key>> {
        let mut keys = Vec::with_capacity(data.len());
        for d in data {
            keys.push(self.put(d).await?);
        }
        Ok(keys)
    }
    /// Fetch several objects, in order.
    async fn get_batch(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.get(k).await?);
        }
        Ok(out)
    }
    /// Existence of several objects, in order.
    async fn exists_batch(&self, keys: &[Key]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.exists(k).await?);
        }
        Ok(out)
    }
    /// Remove several objects.
    async fn evict_batch(&self, keys: &[Key]) -> Result<()> {
        for k in keys {
            self.evict(k).await?;
        }
        Ok(())
    }
    /// Store a stream of chunks under a fresh key. Connectors that can,
    /// stream without holding the whole object in memory.
    async fn put_stream(&self, stream: ByteStream) -> Result<Key> {
        let chunks: Vec<Bytes> = stream.try_collect().await?;
        self.put(Bytes::from(chunks.concat())).await
    }
    /// The object under `key` as a stream of chunks, or `None` if missing.
    async fn get_stream(&self, key: &Key) -> Result<Option<ByteStream>> {
        Ok(self
            .get(key)
            .await?
            .map(|b| futures::stream::once(async move { Ok(b) }).boxed()))
    }
}

/// The object ID of a key that names no daemon; connectors that store
/// objects themselves (`what`, for the message) refuse daemon keys.
fn peerless_id(key: &Key, what: &str) -> Result<crate::key::ObjectId> {
    match key.peer {
        None => Ok(key.id),
        Some(peer) => Err(crate::Error::WrongConnector {
            key: key.clone(),
            reason: format!("it names daemon {peer}; {what} only serves keys without a peer (use a DaemonConnector)"),
        }),
    }
}

/// A serializable description of a connector, from which
/// [`connect`](ConnectorConfig::connect) builds one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConnectorConfig {
    /// An in-process [`LocalConnector`]; only resolvable in the process that made it.
    Local {
        /// The instance's ID in this process's registry of local connectors.
        instance: uuid::Uuid,
    },
    /// A [`FileConnector`] on a directory all parties can see.
    File {
        /// The shared directory.
        dir: PathBuf,
    },
    /// A [`DaemonConnector`]. It names no address on purpose: rebuilt in
    /// another process, it talks to *that* process's local daemon
    /// (`PROXYMESH_API`, else the default), and the key says where the bytes live.
    Daemon,
}

impl ConnectorConfig {
    /// Build the connector this configuration describes.
    pub fn connect(&self) -> Result<Arc<dyn Connector>> {
        Ok(match self {
            ConnectorConfig::Local { instance } => Arc::new(LocalConnector::lookup(*instance)?),
            ConnectorConfig::File { dir } => Arc::new(FileConnector::new(dir)?),
            ConnectorConfig::Daemon => Arc::new(DaemonConnector::from_env()?),
        })
    }
}
