//! Proxies: laziness, serde, resolution contexts, locked and owned proxies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use proxymesh::{
    get_store, register_store, unregister_store, Bincode, Connector, ConnectorConfig, Error,
    FileConnector, Json, Key, LocalConnector, LockedProxy, OwnedProxy, Proxy, Store, StoreConfig,
};

/// A local connector that counts gets.
#[derive(Debug, Default)]
struct Counting {
    inner: LocalConnector,
    gets: AtomicUsize,
}

#[async_trait::async_trait]
impl Connector for Counting {
    async fn put(&self, data: Bytes) -> proxymesh::Result<Key> {
        self.inner.put(data).await
    }
    async fn get(&self, key: &Key) -> proxymesh::Result<Option<Bytes>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(key).await
    }
    async fn exists(&self, key: &Key) -> proxymesh::Result<bool> {
        self.inner.exists(key).await
    }
    async fn evict(&self, key: &Key) -> proxymesh::Result<()> {
        self.inner.evict(key).await
    }
    async fn new_key(&self) -> proxymesh::Result<Key> {
        self.inner.new_key().await
    }
    async fn set(&self, key: &Key, data: Bytes) -> proxymesh::Result<()> {
        self.inner.set(key, data).await
    }
    fn config(&self) -> ConnectorConfig {
        self.inner.config()
    }
}

fn counting_store(name: &str) -> (Store, Arc<Counting>) {
    let conn = Arc::new(Counting::default());
    let config = StoreConfig::new(name, conn.config())
        .cache_size(0)
        .metrics(true);
    (Store::with_connector(config, conn.clone()), conn)
}

fn local_store(name: &str) -> Store {
    Store::new(name, Arc::new(LocalConnector::new()))
}

#[tokio::test]
async fn proxies_are_lazy_and_resolve_once() {
    let (store, conn) = counting_store("proxy-lazy");
    let p: Proxy<String> = store.proxy(&"hello".to_string()).await.unwrap();
    let copy = p.clone();
    let _json = serde_json::to_string(&p).unwrap();
    assert!(!p.is_resolved());
    assert_eq!(
        conn.gets.load(Ordering::SeqCst),
        0,
        "nothing fetched before first use"
    );
    assert_eq!(p.len(), 5); // Deref
    assert!(p.is_resolved());
    assert_eq!(conn.gets.load(Ordering::SeqCst), 1);
    assert_eq!(*p, "hello");
    assert_eq!(p.to_uppercase(), "HELLO");
    assert_eq!(conn.gets.load(Ordering::SeqCst), 1, "the target is kept");
    assert!(!copy.is_resolved(), "clones are unresolved");
    assert_eq!(copy.resolve().await.unwrap(), "hello");
    assert_eq!(conn.gets.load(Ordering::SeqCst), 2);
    assert_eq!(p, "hello".to_string());
    assert_eq!(format!("{p}"), "hello");
    assert_eq!(p.into_inner().as_deref(), Some("hello"));
    assert_eq!(copy.extract().unwrap(), "hello");
}

#[tokio::test]
async fn proxies_serialize_small() {
    let store = local_store("proxy-small");
    let big = vec![42u8; 10 * 1024 * 1024];
    let p = store.proxy(&big).await.unwrap();
    let json = serde_json::to_vec(&p).unwrap();
    assert!(json.len() < 1024, "JSON proxy is {} bytes", json.len());
    let bin = bincode::serde::encode_to_vec(&p, bincode::config::standard()).unwrap();
    assert!(bin.len() < 1024, "bincode proxy is {} bytes", bin.len());
    p.resolve().await.unwrap();
    assert_eq!(
        serde_json::to_vec(&p).unwrap(),
        json,
        "resolving does not change the serialized form"
    );
    let (back, _): (Proxy<Vec<u8>>, usize) =
        bincode::serde::decode_from_slice(&bin, bincode::config::standard()).unwrap();
    assert!(!back.is_resolved());
    assert_eq!(back.len(), big.len());
}

#[tokio::test]
async fn proxies_of_proxies() {
    // A proxy stored (with bincode) inside another object, for every connector kind.
    let dir = tempfile::tempdir().unwrap();
    let stores = [
        local_store("proxy-nested-local"),
        Store::new(
            "proxy-nested-file",
            Arc::new(FileConnector::new(dir.path()).unwrap()),
        ),
    ];
    for store in stores {
        let inner = store.proxy(&"inner".to_string()).await.unwrap();
        let outer = store.proxy(&vec![inner]).await.unwrap();
        let back: Proxy<Vec<Proxy<String>>> =
            serde_json::from_str(&serde_json::to_string(&outer).unwrap()).unwrap();
        assert_eq!(*back[0], "inner");
    }
    for cfg in [
        ConnectorConfig::Daemon,
        ConnectorConfig::File { dir: "/x".into() },
    ] {
        let config = StoreConfig::new("proxy-nested-cfg", cfg);
        let bin = bincode::serde::encode_to_vec(&config, bincode::config::standard()).unwrap();
        let (back, _): (StoreConfig, usize) =
            bincode::serde::decode_from_slice(&bin, bincode::config::standard()).unwrap();
        assert_eq!(back, config);
    }
    unregister_store("proxy-nested-local");
    unregister_store("proxy-nested-file");
}

#[tokio::test]
async fn deserialized_proxy_resolves_through_the_registry() {
    let (store, conn) = counting_store("proxy-registry");
    register_store(&store, false).unwrap();
    let p = store.proxy(&vec![1u32, 2, 3]).await.unwrap();
    let json = serde_json::to_string(&p).unwrap();
    let back: Proxy<Vec<u32>> = serde_json::from_str(&json).unwrap();
    assert!(!back.is_resolved());
    assert_eq!(back.key(), p.key());
    assert_eq!(*back.resolve().await.unwrap(), vec![1, 2, 3]);
    assert_eq!(
        conn.gets.load(Ordering::SeqCst),
        1,
        "resolved through the registered store's connector"
    );
    assert!(back.factory().store().unwrap().ptr_eq(&store));
    assert_eq!(store.metrics().unwrap().op(proxymesh::Op::Resolve).count, 1);
    unregister_store("proxy-registry");
}

#[tokio::test]
async fn deserialized_proxy_rebuilds_an_unregistered_store() {
    let dir = tempfile::tempdir().unwrap();
    let name = "proxy-rebuild";
    let store = Store::new(name, Arc::new(FileConnector::new(dir.path()).unwrap()));
    let p = store.proxy(&"on disk".to_string()).await.unwrap();
    let json = serde_json::to_string(&p).unwrap();
    drop((p, store));
    assert!(get_store::<Bincode>(name).is_none());
    let back: Proxy<String> = serde_json::from_str(&json).unwrap();
    assert_eq!(*back.resolve().await.unwrap(), "on disk");
    let rebuilt = get_store::<Bincode>(name).expect("the rebuilt store is registered");
    assert_eq!(
        rebuilt.config().connector,
        ConnectorConfig::File {
            dir: std::path::absolute(dir.path()).unwrap()
        }
    );
    unregister_store(name);
}

#[tokio::test]
async fn json_serializer_proxies() {
    let conn = LocalConnector::new();
    let store =
        Store::from_config(StoreConfig::new("proxy-json", conn.config()).serializer(Json)).unwrap();
    let p: Proxy<Vec<String>, Json> = store.proxy(&vec!["a".to_string()]).await.unwrap();
    let back: Proxy<Vec<String>, Json> =
        serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    // Not registered: rebuilt from the (in-process) local connector's config.
    assert_eq!(back.resolve().await.unwrap(), &vec!["a".to_string()]);
    unregister_store("proxy-json");
}

#[test]
fn deref_from_a_plain_thread() {
    let store = local_store("proxy-thread");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p: Proxy<u64> = rt.block_on(store.proxy(&7u64)).unwrap();
    drop(rt);
    let handle = std::thread::spawn(move || *p + 1);
    assert_eq!(handle.join().unwrap(), 8);
}

#[tokio::test(flavor = "current_thread")]
async fn deref_inside_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(
        "proxy-current-thread",
        Arc::new(FileConnector::new(dir.path()).unwrap()),
    );
    let p = store.proxy(&vec![1.5f64, 2.5]).await.unwrap();
    assert_eq!(p.iter().sum::<f64>(), 4.0);
    // A deserialized proxy, rebuilt from the config, also resolves synchronously.
    let back: Proxy<Vec<f64>> = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back.len(), 2);
    unregister_store("proxy-current-thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deref_inside_a_multi_thread_runtime() {
    let store = local_store("proxy-multi-thread");
    let p = store.proxy(&"multi".to_string()).await.unwrap();
    assert_eq!(p.len(), 5);
    // Also from spawned tasks and from many at once.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move { p.len() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 5);
    }
}

#[tokio::test]
async fn missing_object_is_a_clear_error() {
    let store = local_store("proxy-missing");
    let key = Key::local(proxymesh::ObjectId::random());
    let p: Proxy<u32> = store.proxy_from_key(key.clone());
    let err = p.try_resolve().unwrap_err();
    assert!(matches!(&err, Error::NotFound(k) if *k == key), "{err}");
    assert!(err.to_string().contains(&key.ticket()), "{err}");
    assert!(matches!(p.resolve().await, Err(Error::NotFound(_))));
    assert!(!p.is_resolved());
}

#[test]
#[should_panic(expected = "cannot resolve proxy")]
fn deref_of_a_missing_object_panics_naming_the_key() {
    let store = local_store("proxy-missing-panic");
    let p: Proxy<u32> = store.proxy_from_key(Key::local(proxymesh::ObjectId::random()));
    let _ = *p;
}

#[tokio::test]
async fn evict_on_resolve() {
    let store = local_store("proxy-evict");
    let p = store.proxy_with(&99u16, true).await.unwrap();
    let key = p.key().clone();
    assert!(store.exists(&key).await.unwrap());
    assert_eq!(*p.resolve().await.unwrap(), 99);
    assert!(!store.exists(&key).await.unwrap());
}

#[tokio::test]
async fn proxy_batch_and_from_key() {
    let store = local_store("proxy-batch");
    let proxies = store
        .proxy_batch(&["a".to_string(), "b".to_string()])
        .await
        .unwrap();
    assert_eq!(proxies.len(), 2);
    assert_eq!(*proxies[1].resolve().await.unwrap(), "b");
    let key = store.put(&3i8).await.unwrap();
    let p: Proxy<i8> = store.proxy_from_key(key);
    assert_eq!(*p.resolve().await.unwrap(), 3);
}

#[tokio::test]
async fn locked_proxy_travels_and_unlocks() {
    let store = local_store("proxy-locked");
    register_store(&store, false).unwrap();
    let locked: LockedProxy<String> = store.locked_proxy(&"secret".to_string()).await.unwrap();
    let json = serde_json::to_string(&locked).unwrap();
    let back: LockedProxy<String> = serde_json::from_str(&json).unwrap();
    assert_eq!(back.key(), locked.key());
    let p = back.unlock();
    assert!(!p.is_resolved());
    assert_eq!(*p.resolve().await.unwrap(), "secret");
    // The same JSON also deserializes as a plain proxy.
    let plain: Proxy<String> = serde_json::from_str(&json).unwrap();
    assert_eq!(plain.resolve().await.unwrap(), "secret");
    unregister_store("proxy-locked");
}

#[tokio::test(flavor = "current_thread")]
async fn owned_proxy_evicts_on_last_drop() {
    let store = local_store("proxy-owned");
    let a: OwnedProxy<Vec<u8>> = store.owned_proxy(&vec![1u8, 2, 3]).await.unwrap();
    let key = a.key().clone();
    let b = a.clone();
    assert_eq!(a.owners(), 2);
    assert_eq!(b.len(), 3);
    assert!(a.is_resolved(), "clones share the resolved value");
    drop(a);
    assert!(
        store.exists(&key).await.unwrap(),
        "evicted while an owner remains"
    );
    drop(b);
    assert!(
        !store.exists(&key).await.unwrap(),
        "not evicted after the last owner dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn owned_proxy_into_proxy_keeps_the_object() {
    let store = local_store("proxy-owned-release");
    let a = store.owned_proxy(&5u32).await.unwrap();
    let key = a.key().clone();
    let b = a.clone();
    let p = a.into_proxy();
    drop(b);
    assert!(store.exists(&key).await.unwrap());
    assert_eq!(*p.resolve().await.unwrap(), 5);
    // Sole owner: the resolved value is kept.
    let owned = store.owned_proxy(&6u32).await.unwrap();
    assert_eq!(*owned, 6);
    let p = owned.into_proxy();
    assert!(p.is_resolved());
    assert!(store.exists(p.key()).await.unwrap());
    // And an explicit proxy can be turned into an owned one.
    let owned = p.into_owned();
    let key = owned.key().clone();
    drop(owned);
    assert!(!store.exists(&key).await.unwrap());
}

#[test]
fn owned_proxy_drop_from_a_plain_thread() {
    let store = local_store("proxy-owned-thread");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let owned = rt.block_on(store.owned_proxy(&1u8)).unwrap();
    let key = owned.key().clone();
    std::thread::spawn(move || drop(owned)).join().unwrap();
    assert!(!rt.block_on(store.exists(&key)).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deref_inside_spawn_blocking_and_sdk_runtime_tasks() {
    let store = local_store("proxy-blocking");
    let p = store.proxy(&11u32).await.unwrap();
    let q = p.clone();
    assert_eq!(tokio::task::spawn_blocking(move || *q).await.unwrap(), 11);
    let q = p.clone();
    assert_eq!(
        proxymesh::runtime::handle()
            .spawn(async move { *q })
            .await
            .unwrap(),
        11
    );
}

#[test]
fn one_proxy_shared_by_many_threads() {
    let (store, conn) = counting_store("proxy-shared");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let p = Arc::new(rt.block_on(store.proxy(&"shared".to_string())).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let p = p.clone();
            std::thread::spawn(move || p.len())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 6);
    }
    assert!(p.is_resolved());
    assert!(conn.gets.load(Ordering::SeqCst) <= 8);
}
