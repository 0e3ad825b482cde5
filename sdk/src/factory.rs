//! [`Factory`]: the serializable recipe a proxy resolves its target with.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::key::Key;
use crate::serialize::{Bincode, Serializer};
use crate::store::{get_or_register_store, Store, StoreConfig};

/// Everything needed to fetch a proxy's target anywhere: the object's key,
/// the configuration of the store it was put in, and whether to evict the
/// object once resolved. This is what a [`Proxy`](crate::Proxy) serializes as.
///
/// Resolution uses the store that created the factory while still in its
/// process; a deserialized factory uses the store registered under the
/// configuration's name in this process, or, if there is none, builds that
/// store from the configuration and registers it (so later proxies share its
/// cache), as ProxyStore does.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "S: Serialize", deserialize = "S: DeserializeOwned"))]
pub struct Factory<T, S = Bincode> {
    key: Key,
    store: StoreConfig<S>,
    evict: bool,
    /// The store that made this factory, when in its process (not serialized).
    #[serde(skip)]
    origin: Option<Store<S>>,
    #[serde(skip)]
    _target: PhantomData<fn() -> T>,
}

impl<T, S: Serializer> Clone for Factory<T, S> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            store: self.store.clone(),
            evict: self.evict,
            origin: self.origin.clone(),
            _target: PhantomData,
        }
    }
}

impl<T, S: fmt::Debug> fmt::Debug for Factory<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Factory")
            .field("target", &std::any::type_name::<T>())
            .field("key", &self.key)
            .field("store", &self.store.name)
            .field("evict", &self.evict)
            .finish()
    }
}

impl<T, S: Serializer> Factory<T, S> {
    /// A factory for the object under `key` in the store described by `store`.
    pub fn new(key: Key, store: StoreConfig<S>, evict_on_resolve: bool) -> Self {
        Self {
            key,
            store,
            evict: evict_on_resolve,
            origin: None,
            _target: PhantomData,
        }
    }

    /// Resolve through `store` while in this process (the store's handle is
    /// not serialized).
    pub fn with_origin(mut self, store: Store<S>) -> Self {
        self.origin = Some(store);
        self
    }

    /// The target object's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The configuration of the store holding the target.
    pub fn store_config(&self) -> &StoreConfig<S> {
        &self.store
    }

    /// Whether resolving evicts the object.
    pub fn evict_on_resolve(&self) -> bool {
        self.evict
    }

    /// The store to resolve through: the store that made this factory if
    /// this is its process, else the registered store of that name, else a
    /// new one built from the configuration (and registered).
    pub fn store(&self) -> Result<Store<S>> {
        if let Some(store) = &self.origin {
            return Ok(store.clone());
        }
        get_or_register_store(&self.store)
    }

    /// Fetch and decode the target (asynchronously, on the caller's runtime).
    /// A missing object is [`Error::NotFound`](crate::Error::NotFound).
    pub async fn resolve_async(&self) -> Result<T>
    where
        T: DeserializeOwned + 'static,
    {
        self.store()?.resolve(&self.key, self.evict).await
    }

    /// Fetch and decode the target, blocking the calling thread; works from
    /// any context (see [`runtime`](crate::runtime)).
    pub fn resolve(&self) -> Result<T>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let factory = self.clone();
        crate::runtime::block_on(async move { factory.resolve_async().await })
    }
}
