//! [`Store`]: typed objects over a [`Connector`], with a cache, metrics, and
//! proxies; plus the process-wide store registry.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::connector::{Connector, ConnectorConfig};
use crate::error::{Error, Result};
use crate::factory::Factory;
use crate::key::Key;
use crate::metrics::{Metrics, MetricsSnapshot, Op, Timer};
use crate::proxy::{LockedProxy, OwnedProxy, Proxy};
use crate::serialize::{Bincode, Serializer};

/// Default number of objects a store caches.
pub const DEFAULT_CACHE_SIZE: usize = 16;

/// Everything needed to rebuild a [`Store`] in another process: it travels
/// inside every proxy. Doubles as a builder:
///
/// ```
/// use proxymesh::{Connector, Json, LocalConnector, Store, StoreConfig};
/// let connector = LocalConnector::new();
/// let config = StoreConfig::new("results", connector.config())
///     .cache_size(64)
///     .metrics(true)
///     .serializer(Json);
/// let store = Store::from_config(config).unwrap();
/// assert_eq!(store.name(), "results");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig<S = Bincode> {
    /// The store's name, unique within a process's registry.
    pub name: String,
    /// How to build the store's connector.
    #[serde(with = "connector_serde")]
    pub connector: ConnectorConfig,
    /// Maximum number of cached objects; `0` disables the cache.
    pub cache_size: usize,
    /// How values are encoded.
    pub serializer: S,
    /// Whether to collect [metrics](Store::metrics).
    pub metrics: bool,
}

/// [`ConnectorConfig`] is internally tagged (`{"kind": ...}`), which only
/// self-describing formats can decode. In compact binary formats (bincode),
/// store configurations, hence proxies, encode it as a plain enum instead.
mod connector_serde {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::connector::ConnectorConfig;

    #[derive(Serialize, Deserialize)]
    enum Compact {
        Local(uuid::Uuid),
        File(PathBuf),
        Daemon,
    }

    pub(super) fn serialize<S: Serializer>(c: &ConnectorConfig, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return c.serialize(s);
        }
        match c {
            ConnectorConfig::Local { instance } => Compact::Local(*instance),
            ConnectorConfig::File { dir } => Compact::File(dir.clone()),
            ConnectorConfig::Daemon => Compact::Daemon,
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<ConnectorConfig, D::Error> {
        if d.is_human_readable() {
            return ConnectorConfig::deserialize(d);
        }
        Ok(match Compact::deserialize(d)? {
            Compact::Local(instance) => ConnectorConfig::Local { instance },
            Compact::File(dir) => ConnectorConfig::File { dir },
            Compact::Daemon => ConnectorConfig::Daemon,
        })
    }
}

impl StoreConfig<Bincode> {
    /// A configuration with the defaults: [`Bincode`], a
    /// [`DEFAULT_CACHE_SIZE`]-entry cache, no metrics.
    pub fn new(name: impl Into<String>, connector: ConnectorConfig) -> Self {
        Self {
            name: name.into(),
            connector,
            cache_size: DEFAULT_CACHE_SIZE,
            serializer: Bincode,
            metrics: false,
        }
    }
}

impl<S> StoreConfig<S> {
    /// Set the cache size (`0` disables the cache).
    pub fn cache_size(mut self, entries: usize) -> Self {
        self.cache_size = entries;
        self
    }

    /// Turn metrics on or off.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Use another serializer.
    pub fn serializer<S2: Serializer>(self, serializer: S2) -> StoreConfig<S2> {
        StoreConfig {
            name: self.name,
            connector: self.connector,
            cache_size: self.cache_size,
            serializer,
            metrics: self.metrics,
        }
    }
}

struct Inner<S> {
    config: StoreConfig<S>,
    connector: Arc<dyn Connector>,
    cache: Cache,
    metrics: Option<Metrics>,
}

/// Typed object storage: values are serialized with `S` and stored through a
/// [`Connector`]; reads go through a bounded LRU cache of serialized objects
/// (objects over [`MAX_CACHED_OBJECT`](crate::cache::MAX_CACHED_OBJECT) are
/// not cached). Stores create [proxies](Proxy) of values.
///
/// Cheap to clone: clones share connector, cache and metrics. Methods must be
/// called within a tokio runtime.
pub struct Store<S = Bincode> {
    inner: Arc<Inner<S>>,
}

impl<S: Serializer> Clone for Store<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Serializer> fmt::Debug for Store<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.inner.config.name)
            .field("connector", &self.inner.connector)
            .field("serializer", &self.inner.config.serializer)
            .field("cache_size", &self.inner.config.cache_size)
            .field("metrics", &self.inner.config.metrics)
            .finish()
    }
}

impl Store<Bincode> {
    /// A store named `name` on `connector`, with the default configuration
    /// (see [`StoreConfig::new`]). It is not registered; see [`register_store`].
    pub fn new(name: impl Into<String>, connector: Arc<dyn Connector>) -> Self {
        let config = StoreConfig::new(name, connector.config());
        Self::with_connector(config, connector)
    }
}

impl<S: Serializer> Store<S> {
    /// Build a store from its configuration, connecting its connector.
    pub fn from_config(config: StoreConfig<S>) -> Result<Self> {
        let connector = config.connector.connect()?;
        Ok(Self::with_connector(config, connector))
    }

    /// Build a store on an existing connector; `config.connector` is
    /// replaced by the connector's own configuration.
    pub fn with_connector(mut config: StoreConfig<S>, connector: Arc<dyn Connector>) -> Self {
        config.connector = connector.config();
        Self {
            inner: Arc::new(Inner {
                cache: Cache::new(config.cache_size),
                metrics: config.metrics.then(Metrics::default),
                config,
                connector,
            }),
        }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The store's configuration.
    pub fn config(&self) -> &StoreConfig<S> {
        &self.inner.config
    }

    /// The store's connector.
    pub fn connector(&self) -> &Arc<dyn Connector> {
        &self.inner.connector
    }

    /// The store's serializer.
    pub fn serializer(&self) -> &S {
        &self.inner.config.serializer
    }

    /// A snapshot of the store's metrics, or `None` if metrics are off.
    pub fn metrics(&self) -> Option<MetricsSnapshot> {
        self.inner.metrics.as_ref().map(Metrics::snapshot)
    }

    /// Whether the object under `key` is in this store's cache.
    pub fn is_cached(&self, key: &Key) -> bool {
        self.inner.cache.contains(&key.id)
    }

    /// Number of cached objects.
    pub fn cached_len(&self) -> usize {
        self.inner.cache.len()
    }

    /// Whether `self` and `other` are handles to the same store.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn timer(&self, op: Op) -> Timer<'_> {
        Timer::start(self.inner.metrics.as_ref(), op)
    }

    fn metrics_ref(&self) -> Option<&Metrics> {
        self.inner.metrics.as_ref()
    }

    fn encode<T: Serialize + 'static>(&self, value: &T) -> Result<Bytes> {
        self.inner.config.serializer.encode(value)
    }

    fn decode<T: DeserializeOwned + 'static>(&self, data: Bytes) -> Result<T> {
        self.inner.config.serializer.decode(data)
    }

    /// Serialized bytes of `key`: from the cache, else from the connector
    /// (then cached).
    async fn get_bytes(&self, key: &Key) -> Result<Option<Bytes>> {
        if let Some(b) = self.inner.cache.get(&key.id) {
            if let Some(m) = self.metrics_ref() {
                m.cache_hit();
            }
            return Ok(Some(b));
        }
        if let Some(m) = self.metrics_ref() {
            m.cache_miss();
        }
        let data = self.inner.connector.get(key).await?;
        if let Some(d) = &data {
            if let Some(m) = self.metrics_ref() {
                m.bytes_in(d.len());
            }
            self.inner.cache.insert(key.id, d);
        }
        Ok(data)
    }

    async fn put_bytes(&self, data: Bytes) -> Result<Key> {
        let len = data.len();
        let key = self.inner.connector.put(data.clone()).await?;
        if let Some(m) = self.metrics_ref() {
            m.bytes_out(len);
        }
        self.inner.cache.insert(key.id, &data);
        Ok(key)
    }

    /// Serialize and store `value`; returns its key.
    pub async fn put<T: Serialize + 'static>(&self, value: &T) -> Result<Key> {
        let t = self.timer(Op::Put);
        let key = self.put_bytes(self.encode(value)?).await?;
        t.finish();
        Ok(key)
    }

    /// The value under `key`, or `None` if there is no such object.
    pub async fn get<T: DeserializeOwned + 'static>(&self, key: &Key) -> Result<Option<T>> {
        let t = self.timer(Op::Get);
        let value = match self.get_bytes(key).await? {
            Some(b) => Some(self.decode(b)?),
            None => None,
        };
        t.finish();
        Ok(value)
    }

    /// Whether an object exists under `key` (always asks the connector).
    pub async fn exists(&self, key: &Key) -> Result<bool> {
        let t = self.timer(Op::Exists);
        let exists = self.inner.connector.exists(key).await?;
        t.finish();
        Ok(exists)
    }

    /// Remove the object under `key` from the connector and the cache.
    /// Evicting a missing object is not an error.
    pub async fn evict(&self, key: &Key) -> Result<()> {
        let t = self.timer(Op::Evict);
        self.inner.cache.remove(&key.id);
        self.inner.connector.evict(key).await?;
        t.finish();
        Ok(())
    }

    /// Serialize and store several values in one connector call; keys come
    /// back in order.
    pub async fn put_batch<T: Serialize + 'static>(&self, values: &[T]) -> Result<Vec<Key>> {
        let t = self.timer(Op::PutBatch);
        let data = values
            .iter()
            .map(|v| self.encode(v))
            .collect::<Result<Vec<_>>>()?;
        let total: usize = data.iter().map(Bytes::len).sum();
        let keys = self.inner.connector.put_batch(data.clone()).await?;
        if keys.len() != data.len() {
            return Err(Error::Config(format!(
                "connector {:?} returned {} keys for {} objects",
                self.inner.connector,
                keys.len(),
                data.len()
            )));
        }
        for (k, d) in keys.iter().zip(&data) {
            self.inner.cache.insert(k.id, d);
        }
        if let Some(m) = self.metrics_ref() {
            m.bytes_out(total);
        }
        t.finish();
        Ok(keys)
    }

    /// Several values, in order (`None` for missing objects). Cached objects
    /// are served from the cache; the rest are fetched in one connector call.
    pub async fn get_batch<T: DeserializeOwned + 'static>(
        &self,
        keys: &[Key],
    ) -> Result<Vec<Option<T>>> {
        let t = self.timer(Op::GetBatch);
        let mut raw: Vec<Option<Bytes>> = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        let mut missing_keys = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let cached = self.inner.cache.get(&k.id);
            if let Some(m) = self.metrics_ref() {
                if cached.is_some() {
                    m.cache_hit()
                } else {
                    m.cache_miss()
                }
            }
            if cached.is_none() {
                missing.push(i);
                missing_keys.push(k.clone());
            }
            raw.push(cached);
        }
        if !missing_keys.is_empty() {
            let fetched = self.inner.connector.get_batch(&missing_keys).await?;
            if fetched.len() != missing_keys.len() {
                return Err(Error::Config(format!(
                    "connector {:?} returned {} objects for {} keys",
                    self.inner.connector,
                    fetched.len(),
                    missing_keys.len()
                )));
            }
            for (i, data) in missing.into_iter().zip(fetched) {
                if let Some(d) = &data {
                    if let Some(m) = self.metrics_ref() {
                        m.bytes_in(d.len());
                    }
                    self.inner.cache.insert(keys[i].id, d);
                }
                raw[i] = data;
            }
        }
        let out = raw
            .into_iter()
            .map(|d| d.map(|d| self.decode(d)).transpose())
            .collect::<Result<Vec<_>>>()?;
        t.finish();
        Ok(out)
    }

    /// Existence of several objects, in order.
    pub async fn exists_batch(&self, keys: &[Key]) -> Result<Vec<bool>> {
        let t = self.timer(Op::ExistsBatch);
        let out = self.inner.connector.exists_batch(keys).await?;
        t.finish();
        Ok(out)
    }

    /// Remove several objects.
    pub async fn evict_batch(&self, keys: &[Key]) -> Result<()> {
        let t = self.timer(Op::EvictBatch);
        for k in keys {
            self.inner.cache.remove(&k.id);
        }
        self.inner.connector.evict_batch(keys).await?;
        t.finish();
        Ok(())
    }

    /// A factory that resolves `key` through this store: directly while in
    /// this process, else (once deserialized) through the registered store of
    /// this name or one rebuilt from this store's configuration.
    pub fn factory<T>(&self, key: Key, evict_on_resolve: bool) -> Factory<T, S> {
        Factory::new(key, self.inner.config.clone(), evict_on_resolve).with_origin(self.clone())
    }

    /// Store `value` and return a [`Proxy`] of it. The proxy can read the
    /// object, not evict or overwrite it: its key is [read-only](Key::read_only).
    pub async fn proxy<T: Serialize + 'static>(&self, value: &T) -> Result<Proxy<T, S>> {
        self.proxy_with(value, false).await
    }

    /// Like [`proxy`](Self::proxy); with `evict_on_resolve`, the object is
    /// evicted as soon as a proxy resolves it (single-consumer hand-off), so
    /// the proxy carries the owner capability.
    pub async fn proxy_with<T: Serialize + 'static>(
        &self,
        value: &T,
        evict_on_resolve: bool,
    ) -> Result<Proxy<T, S>> {
        let t = self.timer(Op::Proxy);
        let key = self.put_bytes(self.encode(value)?).await?;
        t.finish();
        let key = if evict_on_resolve {
            key
        } else {
            key.read_only()
        };
        Ok(Proxy::new(self.factory(key, evict_on_resolve)))
    }

    /// Store several values in one connector call and return proxies, in order.
    pub async fn proxy_batch<T: Serialize + 'static>(
        &self,
        values: &[T],
    ) -> Result<Vec<Proxy<T, S>>> {
        let t = self.timer(Op::ProxyBatch);
        let keys = self.put_batch(values).await?;
        t.finish();
        Ok(keys
            .into_iter()
            .map(|k| self.proxy_from_key(k.read_only()))
            .collect())
    }

    /// A proxy of an object already stored under `key` (no I/O). It carries
    /// whatever `key` carries: pass [`Key::read_only`] to hand out reading only.
    pub fn proxy_from_key<T>(&self, key: Key) -> Proxy<T, S> {
        Proxy::new(self.factory(key, false))
    }

    /// Store `value` and return a [`LockedProxy`] of it.
    pub async fn locked_proxy<T: Serialize + 'static>(
        &self,
        value: &T,
    ) -> Result<LockedProxy<T, S>> {
        Ok(LockedProxy::new(self.proxy(value).await?))
    }

    /// Store `value` and return an [`OwnedProxy`] of it: the object is
    /// evicted when the last owner is dropped, wherever that is (the proxy
    /// carries the owner capability; keep it among owners).
    pub async fn owned_proxy<T: Serialize + 'static>(&self, value: &T) -> Result<OwnedProxy<T, S>> {
        let t = self.timer(Op::Proxy);
        let key = self.put_bytes(self.encode(value)?).await?;
        t.finish();
        Ok(OwnedProxy::new(Proxy::new(self.factory(key, false))))
    }

    /// Resolve a proxy's target: get and decode (a missing object is
    /// [`Error::NotFound`]), then evict if asked to.
    pub(crate) async fn resolve<T: DeserializeOwned + 'static>(
        &self,
        key: &Key,
        evict: bool,
    ) -> Result<T> {
        let t = self.timer(Op::Resolve);
        let value = self
            .get::<T>(key)
            .await?
            .ok_or_else(|| Error::NotFound(key.clone()))?;
        if evict {
            self.evict(key).await?;
        }
        t.finish();
        Ok(value)
    }
}

type Registry = HashMap<String, Box<dyn Any + Send + Sync>>;

/// The process-wide store registry, by name.
static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Register `store` under its name, so that proxies of it resolving in this
/// process use it (its cache, its connector) instead of building a new one.
/// Fails if a store of that name is registered, unless `exist_ok`, in which
/// case the old registration is replaced.
pub fn register_store<S: Serializer>(store: &Store<S>, exist_ok: bool) -> Result<()> {
    let mut reg = registry();
    if !exist_ok && reg.contains_key(store.name()) {
        return Err(Error::Config(format!(
            "a store named {:?} is already registered in this process (unregister it first, or pass exist_ok)",
            store.name()
        )));
    }
    reg.insert(store.name().to_owned(), Box::new(store.clone()));
    Ok(())
}

/// The registered store named `name`, if there is one with serializer `S`.
pub fn get_store<S: Serializer>(name: &str) -> Option<Store<S>> {
    registry().get(name)?.downcast_ref::<Store<S>>().cloned()
}

/// Remove the store named `name` from the registry; returns whether one was
/// registered.
pub fn unregister_store(name: &str) -> bool {
    registry().remove(name).is_some()
}

/// The registered store named like `config`, else a new store built from
/// `config` and registered (ProxyStore semantics). If the name is taken by a
/// store with another serializer type, a new, unregistered store is built.
pub(crate) fn get_or_register_store<S: Serializer>(config: &StoreConfig<S>) -> Result<Store<S>> {
    let mut reg = registry();
    match reg.get(&config.name) {
        Some(s) => match s.downcast_ref::<Store<S>>() {
            Some(s) => Ok(s.clone()),
            None => {
                drop(reg);
                tracing::debug!(
                    store = %config.name,
                    "registered store has another serializer type; building an unregistered store"
                );
                Store::from_config(config.clone())
            }
        },
        None => {
            let store = Store::from_config(config.clone())?;
            reg.insert(config.name.clone(), Box::new(store.clone()));
            Ok(store)
        }
    }
}
