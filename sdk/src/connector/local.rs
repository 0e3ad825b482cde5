//! [`LocalConnector`]: objects in this process's memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use bytes::Bytes;
use dashmap::DashMap;
use uuid::Uuid;

use super::{Connector, ConnectorConfig};
use crate::error::{Error, Result};
use crate::key::{Key, ObjectId};

/// Live local connectors of this process, by instance ID (weak: a connector
/// whose last handle is dropped disappears, with its data).
static INSTANCES: LazyLock<Mutex<HashMap<Uuid, Weak<Inner>>>> = LazyLock::new(Default::default);

struct Inner {
    id: Uuid,
    objects: DashMap<ObjectId, Bytes>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut map = INSTANCES.lock().unwrap_or_else(|e| e.into_inner());
        // Only remove our own entry (a dead weak), never a live one.
        if map.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
            map.remove(&self.id);
        }
    }
}

/// In-process object storage: a concurrent map from object ID to bytes.
///
/// Useful for tests and for passing proxies between threads or tasks of one
/// process. Clones share the same objects. Its [`ConnectorConfig::Local`]
/// names the instance, so a proxy deserialized in the same process finds the
/// same objects; in another process [`ConnectorConfig::connect`] fails with
/// [`Error::Config`].
#[derive(Clone)]
pub struct LocalConnector {
    inner: Arc<Inner>,
}

impl LocalConnector {
    /// A new, empty in-process connector.
    pub fn new() -> Self {
        let inner = Arc::new(Inner {
            id: Uuid::new_v4(),
            objects: DashMap::new(),
        });
        INSTANCES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(inner.id, Arc::downgrade(&inner));
        Self { inner }
    }

    /// This instance's ID (as in its [`ConnectorConfig::Local`]).
    pub fn instance(&self) -> Uuid {
        self.inner.id
    }

    /// Number of stored objects.
    pub fn len(&self) -> usize {
        self.inner.objects.len()
    }

    /// Whether no objects are stored.
    pub fn is_empty(&self) -> bool {
        self.inner.objects.is_empty()
    }

    /// The live local connector `instance` of this process.
    pub fn lookup(instance: Uuid) -> Result<Self> {
        let map = INSTANCES.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&instance).and_then(Weak::upgrade) {
            Some(inner) => Ok(Self { inner }),
            None => Err(Error::Config(format!(
                "in-process connector {instance} does not exist in this process: a LocalConnector's \
                 objects live only in the process that created it (and only while it is alive); \
                 use a FileConnector or DaemonConnector to share objects between processes"
            ))),
        }
    }

    fn check(key: &Key) -> Result<ObjectId> {
        super::peerless_id(key, "an in-process LocalConnector")
    }
}

impl Default for LocalConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LocalConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalConnector")
            .field("instance", &self.inner.id)
            .field("objects", &self.inner.objects.len())
            .finish()
    }
}

#[async_trait::async_trait]
impl Connector for LocalConnector {
    async fn put(&self, data: Bytes) -> Result<Key> {
        let id = ObjectId::random();
        self.inner.objects.insert(id, data);
        Ok(Key::local(id))
    }

    async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        let id = Self::check(key)?;
        Ok(self.inner.objects.get(&id).map(|b| b.value().clone()))
    }

    async fn exists(&self, key: &Key) -> Result<bool> {
        let id = Self::check(key)?;
        Ok(self.inner.objects.contains_key(&id))
    }

    async fn evict(&self, key: &Key) -> Result<()> {
        let id = Self::check(key)?;
        self.inner.objects.remove(&id);
        Ok(())
    }

    async fn new_key(&self) -> Result<Key> {
        Ok(Key::local(ObjectId::random()))
    }

    async fn set(&self, key: &Key, data: Bytes) -> Result<()> {
        let id = Self::check(key)?;
        self.inner.objects.insert(id, data);
        Ok(())
    }

    fn config(&self) -> ConnectorConfig {
        ConnectorConfig::Local {
            instance: self.inner.id,
        }
    }

    async fn put_batch(&self, data: Vec<Bytes>) -> Result<Vec<Key>> {
        Ok(data
            .into_iter()
            .map(|d| {
                let id = ObjectId::random();
                self.inner.objects.insert(id, d);
                Key::local(id)
            })
            .collect())
    }

    async fn get_batch(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        keys.iter()
            .map(|k| {
                Ok(self
                    .inner
                    .objects
                    .get(&Self::check(k)?)
                    .map(|b| b.value().clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_live_instances_only() {
        let c = LocalConnector::new();
        let id = c.instance();
        assert_eq!(LocalConnector::lookup(id).unwrap().instance(), id);
        drop(c);
        let err = LocalConnector::lookup(id).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(err.to_string().contains("only in the process"), "{err}");
    }

    #[tokio::test]
    async fn rejects_peer_keys() {
        let c = LocalConnector::new();
        let peer = libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let key = Key::on_peer(ObjectId::random(), peer);
        assert!(matches!(
            c.get(&key).await,
            Err(Error::WrongConnector { .. })
        ));
        assert!(matches!(
            c.set(&key, Bytes::new()).await,
            Err(Error::WrongConnector { .. })
        ));
    }
}
