//! Store behaviour: cache, metrics, batches, registry, serializers.

use std::sync::Arc;

use bytes::Bytes;
use proxymesh::{
    get_store, register_store, unregister_store, Bincode, Connector, Error, FileConnector, Json,
    LocalConnector, Op, Store, StoreConfig,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: f64,
    y: f64,
    label: String,
}

fn local_store(name: &str, cache: usize) -> (Store, LocalConnector) {
    let conn = LocalConnector::new();
    let config = StoreConfig::new(name, conn.config())
        .cache_size(cache)
        .metrics(true);
    (Store::with_connector(config, Arc::new(conn.clone())), conn)
}

#[tokio::test]
async fn put_get_exists_evict() {
    let (store, _) = local_store("store-basic", 16);
    let p = Point {
        x: 1.5,
        y: -2.0,
        label: "a".into(),
    };
    let key = store.put(&p).await.unwrap();
    assert!(store.exists(&key).await.unwrap());
    assert_eq!(store.get::<Point>(&key).await.unwrap(), Some(p));
    store.evict(&key).await.unwrap();
    assert!(!store.is_cached(&key));
    assert!(!store.exists(&key).await.unwrap());
    assert_eq!(store.get::<Point>(&key).await.unwrap(), None);
    store.evict(&key).await.unwrap();
}

#[tokio::test]
async fn wrong_type_is_a_serialization_error() {
    let (store, _) = local_store("store-wrong-type", 0);
    let key = store.put(&"a string".to_string()).await.unwrap();
    let err = store.get::<Point>(&key).await.unwrap_err();
    assert!(matches!(err, Error::Serialization(_)), "{err}");
    assert!(err.to_string().contains("Point"), "{err}");
}

#[tokio::test]
async fn cache_hits_misses_and_lru_bound() {
    let (store, conn) = local_store("store-cache", 2);
    // Puts fill the cache.
    let k1 = store.put(&1u32).await.unwrap();
    let k2 = store.put(&2u32).await.unwrap();
    assert!(store.is_cached(&k1) && store.is_cached(&k2));
    assert_eq!(store.get::<u32>(&k1).await.unwrap(), Some(1));
    let m = store.metrics().unwrap();
    assert_eq!((m.cache_hits, m.cache_misses), (1, 0));
    // A third object pushes out the least recently used (k2).
    let k3 = store.put(&3u32).await.unwrap();
    assert_eq!(store.cached_len(), 2);
    assert!(store.is_cached(&k1) && store.is_cached(&k3) && !store.is_cached(&k2));
    assert_eq!(store.get::<u32>(&k2).await.unwrap(), Some(2));
    let m = store.metrics().unwrap();
    assert_eq!((m.cache_hits, m.cache_misses), (1, 1));
    assert!(store.is_cached(&k2));
    // Cached objects are served from the cache even if gone from the connector.
    conn.evict(&k2).await.unwrap();
    assert_eq!(store.get::<u32>(&k2).await.unwrap(), Some(2));
    // Evicting through the store invalidates the cache.
    store.evict(&k2).await.unwrap();
    assert_eq!(store.get::<u32>(&k2).await.unwrap(), None);
    // A disabled cache caches nothing.
    let (nocache, _) = local_store("store-nocache", 0);
    let k = nocache.put(&1u8).await.unwrap();
    assert!(!nocache.is_cached(&k));
    nocache.get::<u8>(&k).await.unwrap();
    nocache.get::<u8>(&k).await.unwrap();
    assert_eq!(nocache.metrics().unwrap().cache_misses, 2);
}

#[tokio::test]
async fn metrics_count_operations_and_bytes() {
    let (store, _) = local_store("store-metrics", 0);
    let data = vec![7u8; 1000];
    let key = store.put(&data).await.unwrap();
    store.get::<Vec<u8>>(&key).await.unwrap();
    store.get::<Vec<u8>>(&key).await.unwrap();
    store.exists(&key).await.unwrap();
    store.evict(&key).await.unwrap();
    let keys = store.put_batch(&[1u8, 2, 3]).await.unwrap();
    store.get_batch::<u8>(&keys).await.unwrap();
    store.exists_batch(&keys).await.unwrap();
    store.evict_batch(&keys).await.unwrap();
    let p = store.proxy(&5u64).await.unwrap();
    assert_eq!(*p.resolve().await.unwrap(), 5);
    let m = store.metrics().unwrap();
    assert_eq!(m.op(Op::Put).count, 1);
    assert_eq!(m.op(Op::Get).count, 3, "two gets and one in resolve");
    assert_eq!(m.op(Op::Exists).count, 1);
    assert_eq!(m.op(Op::Evict).count, 1);
    assert_eq!(m.op(Op::PutBatch).count, 1);
    assert_eq!(m.op(Op::GetBatch).count, 1);
    assert_eq!(m.op(Op::ExistsBatch).count, 1);
    assert_eq!(m.op(Op::EvictBatch).count, 1);
    assert_eq!(m.op(Op::Proxy).count, 1);
    assert_eq!(m.op(Op::Resolve).count, 1);
    let get = m.op(Op::Get);
    assert!(get.min_ns <= get.avg_ns && get.avg_ns <= get.max_ns && get.total_ns >= get.max_ns);
    assert!(m.bytes_out >= 1000 + 3 && m.bytes_in >= 2000, "{m:?}");
    // The snapshot is serializable.
    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["ops"]["put"]["count"], 1);
    // Metrics are off by default.
    assert!(
        Store::new("store-metrics-off", Arc::new(LocalConnector::new()))
            .metrics()
            .is_none()
    );
}

#[tokio::test]
async fn batches_keep_order_and_use_the_cache() {
    let (store, _) = local_store("store-batch", 3);
    let values: Vec<String> = (0..5).map(|i| format!("value {i}")).collect();
    let keys = store.put_batch(&values).await.unwrap();
    assert_eq!(keys.len(), 5);
    let missing = proxymesh::Key::local(proxymesh::ObjectId::random());
    let ask = vec![keys[4].clone(), missing, keys[0].clone()];
    let got = store.get_batch::<String>(&ask).await.unwrap();
    assert_eq!(
        got,
        vec![Some(values[4].clone()), None, Some(values[0].clone())]
    );
    let m = store.metrics().unwrap();
    // keys[4] was cached (last three puts), the other two were not.
    assert_eq!((m.cache_hits, m.cache_misses), (1, 2));
    assert_eq!(store.exists_batch(&keys).await.unwrap(), vec![true; 5]);
    store.evict_batch(&keys[..2]).await.unwrap();
    assert_eq!(
        store.exists_batch(&keys).await.unwrap(),
        vec![false, false, true, true, true]
    );
    assert!(store.put_batch::<u8>(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn byte_vectors_are_stored_raw() {
    let (store, conn) = local_store("store-raw", 0);
    let data: Vec<u8> = (0..=255).collect();
    let key = store.put(&data).await.unwrap();
    assert_eq!(
        conn.get(&key).await.unwrap().unwrap(),
        Bytes::from(data.clone())
    );
    assert_eq!(store.get::<Vec<u8>>(&key).await.unwrap().unwrap(), data);
    let b = Bytes::from_static(b"raw bytes");
    let key = store.put(&b).await.unwrap();
    assert_eq!(conn.get(&key).await.unwrap().unwrap(), b);
    assert_eq!(store.get::<Bytes>(&key).await.unwrap().unwrap(), b);
}

#[tokio::test]
async fn json_serializer_is_pluggable() {
    let conn = LocalConnector::new();
    let store =
        Store::from_config(StoreConfig::new("store-json", conn.config()).serializer(Json)).unwrap();
    let p = Point {
        x: 0.0,
        y: 1.0,
        label: "json".into(),
    };
    let key = store.put(&p).await.unwrap();
    let raw = conn.get(&key).await.unwrap().unwrap();
    assert_eq!(serde_json::from_slice::<Point>(&raw).unwrap(), p);
    assert_eq!(store.get::<Point>(&key).await.unwrap(), Some(p));
}

#[tokio::test]
async fn registry() {
    let (store, _) = local_store("store-registry", 4);
    register_store(&store, false).unwrap();
    let err = register_store(&store, false).unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
    register_store(&store, true).unwrap();
    assert!(get_store::<Bincode>("store-registry")
        .unwrap()
        .ptr_eq(&store));
    // Typed: a store with another serializer is not returned.
    assert!(get_store::<Json>("store-registry").is_none());
    assert!(get_store::<Bincode>("store-registry-absent").is_none());
    assert!(unregister_store("store-registry"));
    assert!(!unregister_store("store-registry"));
    assert!(get_store::<Bincode>("store-registry").is_none());

    let conn = LocalConnector::new();
    let json_store =
        Store::from_config(StoreConfig::new("store-registry-json", conn.config()).serializer(Json))
            .unwrap();
    register_store(&json_store, false).unwrap();
    assert!(get_store::<Json>("store-registry-json")
        .unwrap()
        .ptr_eq(&json_store));
    assert!(get_store::<Bincode>("store-registry-json").is_none());
    unregister_store("store-registry-json");
}

#[tokio::test]
async fn config_round_trips_through_serde() {
    let dir = tempfile::tempdir().unwrap();
    let conn = FileConnector::new(dir.path()).unwrap();
    let config = StoreConfig::new("store-config", conn.config())
        .cache_size(3)
        .metrics(true)
        .serializer(Json);
    let json = serde_json::to_string(&config).unwrap();
    let back: StoreConfig<Json> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, config);
    let a = Store::from_config(config).unwrap();
    let b = Store::from_config(back).unwrap();
    let key = a.put(&vec![1u32, 2]).await.unwrap();
    assert_eq!(b.get::<Vec<u32>>(&key).await.unwrap(), Some(vec![1, 2]));
    assert_eq!(a.config().cache_size, 3);
}
