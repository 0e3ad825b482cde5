//! # proxymesh SDK
//!
//! Transparent, lazy proxies for moving large objects between processes and
//! sites, in the model of [ProxyStore](https://docs.proxystore.dev): instead
//! of shipping a large value through your control plane (a task queue, an
//! RPC, a workflow engine), put it in a [`Store`] and ship a small
//! [`Proxy`] — its key plus the store's configuration. The first time the
//! consumer uses the proxy, it fetches the value, wherever it is.
//!
//! ```text
//!  producer process                                   consumer process
//!  app ── SDK ── proxymeshd (site A) ══ mesh ══ proxymeshd (site B) ── SDK ── app
//!   │ store.proxy(&big) ─► key + proxy                                    ▲
//!   └──────────── proxy (a few hundred bytes) travels by any means ───────┘
//!                                            first *proxy ─► fetched via B's daemon
//! ```
//!
//! The SDK talks to objects through a [`Connector`]:
//!
//! * [`DaemonConnector`] — the local `proxymeshd` over its local API
//!   ([`api`]): HTTP on its TCP address or Unix socket, and small gets in
//!   the socket's quick protocol ([`api::quick`]). Objects stay in the producer's daemon; keys name that
//!   daemon's peer ID, and a consumer anywhere in the mesh resolves through
//!   its *own* local daemon, which fetches from the producer's.
//! * [`FileConnector`] — a directory every party can see.
//! * [`LocalConnector`] — this process's memory (tests, threads and tasks).
//!
//! On top, a [`Store`] serializes values ([`Bincode`] by default, [`Json`],
//! or your own [`Serializer`]), caches recent objects, keeps
//! [metrics](Store::metrics), and makes proxies: [`Proxy`] (lazy,
//! `Deref`s to the target), [`LockedProxy`] (cannot be dereferenced until
//! unlocked) and [`OwnedProxy`] (evicts its object when the last owner
//! drops). A proxy serializes as its [`Factory`]; deserialized in another
//! process, it rebuilds the store from its [`StoreConfig`] (or uses the one
//! [registered](register_store) under that name) and resolves there.
//!
//! ```
//! use std::sync::Arc;
//! use proxymesh::{LocalConnector, Proxy, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> proxymesh::Result<()> {
//! let store = Store::new("example", Arc::new(LocalConnector::new()));
//! proxymesh::register_store(&store, false)?;
//!
//! // Put a value; get a key back, or a proxy.
//! let key = store.put(&vec![1u64, 2, 3]).await?;
//! assert_eq!(store.get::<Vec<u64>>(&key).await?, Some(vec![1, 2, 3]));
//!
//! let proxy: Proxy<String> = store.proxy(&"a large value".to_string()).await?;
//! // The proxy is small and travels as JSON, bincode, ...
//! let wire = serde_json::to_string(&proxy).unwrap();
//! let received: Proxy<String> = serde_json::from_str(&wire).unwrap();
//! assert!(!received.is_resolved());
//! // ... and resolves on first use.
//! assert_eq!(received.resolve().await?.len(), 13);
//! assert!(received.starts_with("a large")); // Deref
//! # proxymesh::unregister_store("example");
//! # Ok(())
//! # }
//! ```
//!
//! All async methods must run inside a tokio runtime. Synchronous proxy
//! resolution uses the SDK's own small background [`runtime`] and works
//! anywhere.
#![warn(missing_docs)]
// `Error` carries whole `Key`s (peer ID included) so messages can name them;
// its size is irrelevant next to the I/O every fallible call does.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod cache;
pub mod connector;
mod error;
pub mod factory;
mod key;
pub mod keyfile;
pub mod localpeer;
pub mod membership;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod serialize;
pub mod store;
pub mod testing;
pub mod units;

pub use connector::{
    ByteStream, Connector, ConnectorConfig, DaemonConnector, FileConnector, LocalConnector,
};
pub use error::{Error, Result};
pub use factory::Factory;
pub use key::{Key, KeyError, ObjectId, OwnerCap, OWNER_TICKET_PREFIX, TICKET_PREFIX};
pub use metrics::{MetricsSnapshot, Op, OpStats};
pub use proxy::{LockedProxy, OwnedProxy, Proxy};
pub use serialize::{Bincode, Json, Serializer};
pub use store::{
    get_store, register_store, unregister_store, Store, StoreConfig, DEFAULT_CACHE_SIZE,
};
