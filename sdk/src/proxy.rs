//! Proxies: lazy references to stored objects that travel cheaply and
//! resolve to their target on first use.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::Result;
use crate::factory::Factory;
use crate::key::Key;
use crate::serialize::{Bincode, Serializer};

/// A lazy, transparent reference to a `T` held in a [`Store`](crate::Store).
///
/// A proxy is small: it serializes (with serde, in any format) as its
/// [`Factory`] only — key and store configuration, well under a kilobyte
/// whatever the size of the target. Send it to another task, process or
/// site; there, the first use fetches the target through the store (rebuilt
/// from its configuration if needed) and keeps it.
///
/// * `*proxy` / method calls ([`Deref`]) resolve synchronously on first use.
///   **Deref panics** if the target cannot be fetched (missing object,
///   unreachable daemon, wrong type); the message names the key. Use
///   [`try_resolve`](Self::try_resolve) or [`resolve`](Self::resolve) to
///   handle errors.
/// * Synchronous resolution runs on the SDK's background runtime and works
///   from plain threads and from inside any tokio runtime, including a
///   current-thread one (it blocks the calling thread meanwhile; in async code
///   prefer `proxy.resolve().await`).
/// * Cloning gives an *unresolved* proxy of the same object.
/// * A deserialized proxy is unresolved.
pub struct Proxy<T, S = Bincode> {
    factory: Factory<T, S>,
    value: OnceLock<T>,
}

impl<T, S: Serializer> Proxy<T, S> {
    /// An unresolved proxy resolving through `factory`.
    pub fn new(factory: Factory<T, S>) -> Self {
        Self {
            factory,
            value: OnceLock::new(),
        }
    }

    /// The target's key.
    pub fn key(&self) -> &Key {
        self.factory.key()
    }

    /// The proxy's factory.
    pub fn factory(&self) -> &Factory<T, S> {
        &self.factory
    }

    /// Whether the target has been fetched.
    pub fn is_resolved(&self) -> bool {
        self.value.get().is_some()
    }

    fn keep(&self, value: T) -> &T {
        // If another thread resolved concurrently, its value wins; ours is dropped.
        let _ = self.value.set(value);
        self.value.get().expect("value was just set")
    }

    /// The target, fetching it (blocking) if needed.
    pub fn try_resolve(&self) -> Result<&T>
    where
        T: DeserializeOwned + Send + 'static,
    {
        if let Some(v) = self.value.get() {
            return Ok(v);
        }
        let value = self.factory.resolve()?;
        Ok(self.keep(value))
    }

    /// The target, fetching it asynchronously on the caller's runtime if needed.
    pub async fn resolve(&self) -> Result<&T>
    where
        T: DeserializeOwned + 'static,
    {
        if let Some(v) = self.value.get() {
            return Ok(v);
        }
        let value = self.factory.resolve_async().await?;
        Ok(self.keep(value))
    }

    /// The target if already resolved, without any I/O.
    pub fn into_inner(self) -> Option<T> {
        self.value.into_inner()
    }

    /// The target, fetching it (blocking) if needed.
    pub fn extract(self) -> Result<T>
    where
        T: DeserializeOwned + Send + 'static,
    {
        match self.value.into_inner() {
            Some(v) => Ok(v),
            None => self.factory.resolve(),
        }
    }

    /// The target, fetching it asynchronously if needed.
    pub async fn extract_async(self) -> Result<T>
    where
        T: DeserializeOwned + 'static,
    {
        match self.value.into_inner() {
            Some(v) => Ok(v),
            None => self.factory.resolve_async().await,
        }
    }

    /// A [`LockedProxy`] of this proxy.
    pub fn lock(self) -> LockedProxy<T, S> {
        LockedProxy::new(self)
    }

    /// An [`OwnedProxy`]: the object is evicted when the last owner drops.
    pub fn into_owned(self) -> OwnedProxy<T, S> {
        OwnedProxy::new(self)
    }
}

fn resolve_or_panic<T, S>(proxy: &Proxy<T, S>) -> &T
where
    T: DeserializeOwned + Send + 'static,
    S: Serializer,
{
    match proxy.try_resolve() {
        Ok(v) => v,
        Err(e) => panic!(
            "proxymesh: cannot resolve proxy of {} (key {}): {e} \
             (use Proxy::try_resolve or Proxy::resolve to handle this error)",
            std::any::type_name::<T>(),
            proxy.key()
        ),
    }
}

impl<T, S> Deref for Proxy<T, S>
where
    T: DeserializeOwned + Send + 'static,
    S: Serializer,
{
    type Target = T;

    /// The target, resolving it on first use.
    ///
    /// # Panics
    /// If the target cannot be fetched or decoded (see [`Proxy::try_resolve`]).
    fn deref(&self) -> &T {
        resolve_or_panic(self)
    }
}

impl<T, S: Serializer> Clone for Proxy<T, S> {
    /// An unresolved proxy of the same object.
    fn clone(&self) -> Self {
        Self::new(self.factory.clone())
    }
}

impl<T, S: Serializer> fmt::Debug for Proxy<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("target", &std::any::type_name::<T>())
            .field("key", self.key())
            .field("store", &self.factory.store_config().name)
            .field("resolved", &self.is_resolved())
            .finish()
    }
}

impl<T, S> fmt::Display for Proxy<T, S>
where
    T: DeserializeOwned + Send + fmt::Display + 'static,
    S: Serializer,
{
    /// Displays the target (resolving it; panics like [`Deref`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

impl<T, S> PartialEq<T> for Proxy<T, S>
where
    T: DeserializeOwned + Send + PartialEq + 'static,
    S: Serializer,
{
    /// Compares the target (resolving it; panics like [`Deref`]).
    fn eq(&self, other: &T) -> bool {
        **self == *other
    }
}

impl<T, S: Serializer> Serialize for Proxy<T, S> {
    /// Serializes the factory only (never the target).
    fn serialize<Se: serde::Serializer>(&self, s: Se) -> std::result::Result<Se::Ok, Se::Error> {
        self.factory.serialize(s)
    }
}

impl<'de, T, S: Serializer> Deserialize<'de> for Proxy<T, S> {
    /// Deserializes an unresolved proxy.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Factory::deserialize(d).map(Self::new)
    }
}

/// A proxy that cannot be dereferenced until [unlocked](Self::unlock): for
/// passing a reference through code that must not resolve it (e.g. a
/// scheduler that would otherwise fetch the object). Serializes like a
/// [`Proxy`].
pub struct LockedProxy<T, S = Bincode> {
    proxy: Proxy<T, S>,
}

impl<T, S: Serializer> LockedProxy<T, S> {
    /// Lock `proxy`.
    pub fn new(proxy: Proxy<T, S>) -> Self {
        Self { proxy }
    }

    /// The target's key.
    pub fn key(&self) -> &Key {
        self.proxy.key()
    }

    /// The usable proxy.
    pub fn unlock(self) -> Proxy<T, S> {
        self.proxy
    }
}

impl<T, S: Serializer> Clone for LockedProxy<T, S> {
    fn clone(&self) -> Self {
        Self::new(self.proxy.clone())
    }
}

impl<T, S: Serializer> fmt::Debug for LockedProxy<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockedProxy").field(&self.proxy).finish()
    }
}

impl<T, S: Serializer> Serialize for LockedProxy<T, S> {
    fn serialize<Se: serde::Serializer>(&self, s: Se) -> std::result::Result<Se::Ok, Se::Error> {
        self.proxy.serialize(s)
    }
}

impl<'de, T, S: Serializer> Deserialize<'de> for LockedProxy<T, S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Proxy::deserialize(d).map(Self::new)
    }
}

struct Owned<T, S: Serializer> {
    /// Always `Some` until taken by [`OwnedProxy::into_proxy`].
    proxy: Option<Proxy<T, S>>,
    /// Set when ownership was given up: no eviction on drop.
    released: AtomicBool,
}

impl<T, S: Serializer> Drop for Owned<T, S> {
    fn drop(&mut self) {
        let Some(proxy) = self.proxy.take() else {
            return;
        };
        if self.released.load(Ordering::Acquire) {
            return;
        }
        let key = proxy.key().clone();
        let result = proxy.factory.store().and_then(|store| {
            let key = key.clone();
            crate::runtime::block_on(async move { store.evict(&key).await })
        });
        match result {
            Ok(()) => tracing::trace!(%key, "evicted the object of a dropped owned proxy"),
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot evict the object of a dropped owned proxy")
            }
        }
    }
}

/// A proxy that owns its object: clones share ownership, and when the last
/// one is dropped the object is evicted from its store (synchronously, on the
/// SDK runtime; failures are logged with `tracing`, never panicked).
/// [`into_proxy`](Self::into_proxy) gives up ownership without evicting.
///
/// Dereferences like a [`Proxy`] (and panics like it on failure).
pub struct OwnedProxy<T, S: Serializer = Bincode> {
    inner: Arc<Owned<T, S>>,
}

impl<T, S: Serializer> OwnedProxy<T, S> {
    /// Take ownership of `proxy`'s object.
    pub fn new(proxy: Proxy<T, S>) -> Self {
        Self {
            inner: Arc::new(Owned {
                proxy: Some(proxy),
                released: AtomicBool::new(false),
            }),
        }
    }

    /// The proxy inside.
    pub fn proxy(&self) -> &Proxy<T, S> {
        self.inner
            .proxy
            .as_ref()
            .expect("owned proxy is present until into_proxy")
    }

    /// The target's key.
    pub fn key(&self) -> &Key {
        self.proxy().key()
    }

    /// Whether the target has been fetched.
    pub fn is_resolved(&self) -> bool {
        self.proxy().is_resolved()
    }

    /// The target, fetching it (blocking) if needed.
    pub fn try_resolve(&self) -> Result<&T>
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.proxy().try_resolve()
    }

    /// The target, fetching it asynchronously if needed.
    pub async fn resolve(&self) -> Result<&T>
    where
        T: DeserializeOwned + 'static,
    {
        self.proxy().resolve().await
    }

    /// Number of owners sharing this object.
    pub fn owners(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Give up ownership, for this and every other owner: the object will not
    /// be evicted when owners drop. Returns a plain proxy (still resolved if
    /// this was the only owner and it was resolved).
    #[doc(alias = "release")]
    pub fn into_proxy(self) -> Proxy<T, S> {
        self.inner.released.store(true, Ordering::Release);
        match Arc::try_unwrap(self.inner) {
            Ok(mut owned) => owned
                .proxy
                .take()
                .expect("owned proxy is present until into_proxy"),
            Err(shared) => shared.proxy.as_ref().expect("present").clone(),
        }
    }
}

impl<T, S: Serializer> Serialize for OwnedProxy<T, S> {
    /// Serializes like a [`Proxy`], owner capability included: the receiver
    /// can evict the object when its owned proxy drops, at any site. Sending
    /// an owned proxy moves ownership: give yours up with
    /// [`into_proxy`](Self::into_proxy) once it is sent.
    fn serialize<Se: serde::Serializer>(&self, s: Se) -> std::result::Result<Se::Ok, Se::Error> {
        self.proxy().serialize(s)
    }
}

impl<'de, T, S: Serializer> Deserialize<'de> for OwnedProxy<T, S> {
    /// The receiving end of a moved owned proxy: evicts on its last drop.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Proxy::deserialize(d).map(Self::new)
    }
}

impl<T, S: Serializer> Clone for OwnedProxy<T, S> {
    /// Another owner of the same object (and the same resolved value).
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T, S> Deref for OwnedProxy<T, S>
where
    T: DeserializeOwned + Send + 'static,
    S: Serializer,
{
    type Target = T;

    /// The target, resolving it on first use.
    ///
    /// # Panics
    /// If the target cannot be fetched or decoded.
    fn deref(&self) -> &T {
        resolve_or_panic(self.proxy())
    }
}

impl<T, S: Serializer> fmt::Debug for OwnedProxy<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedProxy")
            .field("proxy", self.proxy())
            .field("owners", &self.owners())
            .finish()
    }
}
