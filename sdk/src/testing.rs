//! The connector conformance suite.
//!
//! [`run_connector_suite`] exercises every [`Connector`] method and its edge
//! cases; every connector shipped with proxymesh passes it, and third-party
//! connectors should too:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! proxymesh::testing::run_connector_suite(Arc::new(proxymesh::LocalConnector::new())).await;
//! # }
//! ```

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::connector::{ByteStream, Connector};
use crate::key::Key;

/// Deterministic test data of `len` bytes, different for each `seed`.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn chunks(parts: Vec<Bytes>) -> ByteStream {
    futures::stream::iter(parts.into_iter().map(Ok)).boxed()
}

async fn collect(stream: ByteStream) -> Bytes {
    let parts: Vec<Bytes> = stream
        .try_collect()
        .await
        .expect("reading the object stream");
    Bytes::from(parts.concat())
}

/// Run the conformance suite against `connector`; panics (with the failing
/// check) on the first violation. Objects it creates are evicted at the end.
///
/// Checks: put/get/exists/evict round trip; missing keys (`None`/`false`,
/// evicting them is fine); empty and 1 MiB objects; distinct keys for equal
/// data; the batch methods (order, a missing key, empty batches); `new_key`
/// then `set` (and `set` replacing); streaming a multi-chunk object both
/// ways and a failing input stream; `config()` → `connect()` giving a
/// connector that sees the same objects; concurrent puts from several tasks.
pub async fn run_connector_suite(connector: Arc<dyn Connector>) {
    let c = connector.as_ref();
    let name = format!("{c:?}");
    let mut created: Vec<Key> = Vec::new();

    // Round trip.
    let hello = Bytes::from_static(b"hello, proxymesh");
    let key = c.put(hello.clone()).await.expect("put");
    created.push(key.clone());
    assert_eq!(
        c.get(&key).await.expect("get"),
        Some(hello.clone()),
        "{name}: get after put"
    );
    assert!(
        c.exists(&key).await.expect("exists"),
        "{name}: exists after put"
    );
    c.evict(&key).await.expect("evict");
    assert_eq!(
        c.get(&key).await.expect("get evicted"),
        None,
        "{name}: get after evict"
    );
    assert!(
        !c.exists(&key).await.expect("exists evicted"),
        "{name}: exists after evict"
    );
    c.evict(&key)
        .await
        .expect("evicting an evicted object must succeed");

    // Missing keys.
    let missing = c.new_key().await.expect("new_key");
    assert_eq!(
        c.get(&missing).await.expect("get missing"),
        None,
        "{name}: get missing"
    );
    assert!(
        !c.exists(&missing).await.expect("exists missing"),
        "{name}: exists missing"
    );
    c.evict(&missing)
        .await
        .expect("evicting a missing object must succeed");
    assert!(
        c.get_stream(&missing)
            .await
            .expect("get_stream missing")
            .is_none(),
        "{name}: get_stream missing"
    );

    // Distinct keys for equal data; empty and 1 MiB objects.
    let k1 = c.put(hello.clone()).await.expect("put");
    let k2 = c.put(hello.clone()).await.expect("put");
    created.extend([k1.clone(), k2.clone()]);
    assert_ne!(k1, k2, "{name}: two puts must give two keys");
    let empty = c.put(Bytes::new()).await.expect("put empty");
    created.push(empty.clone());
    assert_eq!(
        c.get(&empty).await.expect("get empty"),
        Some(Bytes::new()),
        "{name}: empty object"
    );
    assert!(
        c.exists(&empty).await.expect("exists empty"),
        "{name}: empty object exists"
    );
    let mib = pattern(1 << 20, 1);
    let big = c.put(mib.clone()).await.expect("put 1 MiB");
    created.push(big.clone());
    assert!(
        c.get(&big).await.expect("get 1 MiB") == Some(mib.clone()),
        "{name}: 1 MiB object differs"
    );

    // Batches.
    let items: Vec<Bytes> = vec![
        pattern(10, 2),
        Bytes::new(),
        pattern(100_000, 3),
        pattern(1, 4),
        pattern(4096, 5),
    ];
    let keys = c.put_batch(items.clone()).await.expect("put_batch");
    created.extend(keys.iter().cloned());
    assert_eq!(keys.len(), items.len(), "{name}: put_batch key count");
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b, "{name}: put_batch keys must be distinct");
        }
    }
    let ask = vec![
        keys[4].clone(),
        missing.clone(),
        keys[0].clone(),
        keys[2].clone(),
        keys[1].clone(),
    ];
    let got = c.get_batch(&ask).await.expect("get_batch");
    let want = vec![
        Some(items[4].clone()),
        None,
        Some(items[0].clone()),
        Some(items[2].clone()),
        Some(items[1].clone()),
    ];
    assert!(
        got == want,
        "{name}: get_batch must answer in order, None for missing"
    );
    let ex = c.exists_batch(&ask).await.expect("exists_batch");
    assert_eq!(
        ex,
        vec![true, false, true, true, true],
        "{name}: exists_batch"
    );
    c.evict_batch(&[keys[0].clone(), keys[1].clone(), missing.clone()])
        .await
        .expect("evict_batch (with a missing key)");
    let ex = c.exists_batch(&keys).await.expect("exists_batch");
    assert_eq!(
        ex,
        vec![false, false, true, true, true],
        "{name}: evict_batch removed the wrong objects"
    );
    assert!(c
        .put_batch(Vec::new())
        .await
        .expect("empty put_batch")
        .is_empty());
    assert!(c.get_batch(&[]).await.expect("empty get_batch").is_empty());
    assert!(c
        .exists_batch(&[])
        .await
        .expect("empty exists_batch")
        .is_empty());
    c.evict_batch(&[]).await.expect("empty evict_batch");

    // Deferred keys.
    let deferred = c.new_key().await.expect("new_key");
    created.push(deferred.clone());
    assert_ne!(
        deferred,
        c.new_key().await.expect("new_key"),
        "{name}: new_key must be fresh"
    );
    assert!(
        !c.exists(&deferred).await.expect("exists"),
        "{name}: nothing under a new key"
    );
    c.set(&deferred, Bytes::from_static(b"first"))
        .await
        .expect("set");
    assert_eq!(
        c.get(&deferred).await.expect("get"),
        Some(Bytes::from_static(b"first")),
        "{name}: set"
    );
    c.set(&deferred, Bytes::from_static(b"second, longer"))
        .await
        .expect("set again");
    assert_eq!(
        c.get(&deferred).await.expect("get"),
        Some(Bytes::from_static(b"second, longer")),
        "{name}: set must replace"
    );

    // Streams.
    let parts = vec![
        pattern(1, 6),
        pattern(64 * 1024, 7),
        Bytes::new(),
        pattern((1 << 20) + 3, 8),
        pattern(7, 9),
    ];
    let whole = Bytes::from(parts.concat());
    let streamed = c.put_stream(chunks(parts)).await.expect("put_stream");
    created.push(streamed.clone());
    let back = c
        .get_stream(&streamed)
        .await
        .expect("get_stream")
        .expect("streamed object exists");
    assert!(
        collect(back).await == whole,
        "{name}: get_stream differs from what put_stream sent"
    );
    assert!(
        c.get(&streamed).await.expect("get") == Some(whole.clone()),
        "{name}: get of a streamed object"
    );
    let back = c
        .get_stream(&big)
        .await
        .expect("get_stream")
        .expect("1 MiB object exists");
    assert!(
        collect(back).await == mib,
        "{name}: get_stream of a put object"
    );
    let no_chunks = c
        .put_stream(chunks(Vec::new()))
        .await
        .expect("put_stream of nothing");
    created.push(no_chunks.clone());
    assert_eq!(
        c.get(&no_chunks).await.expect("get"),
        Some(Bytes::new()),
        "{name}: empty stream"
    );
    let failing: ByteStream = futures::stream::iter([
        Ok(pattern(1000, 10)),
        Err(io::Error::other("source failed")),
    ])
    .boxed();
    assert!(
        c.put_stream(failing).await.is_err(),
        "{name}: a failing input stream must fail put_stream"
    );

    // Rebuilt from its configuration.
    let config = c.config();
    let again = config.connect().expect("connect from config");
    assert_eq!(
        again.config(),
        config,
        "{name}: config of a rebuilt connector"
    );
    assert!(
        again.get(&k1).await.expect("get via rebuilt") == Some(hello.clone()),
        "{name}: rebuilt connector must see the objects"
    );
    let k3 = again.put(pattern(33, 11)).await.expect("put via rebuilt");
    created.push(k3.clone());
    assert!(
        c.get(&k3).await.expect("get") == Some(pattern(33, 11)),
        "{name}: objects put via the rebuilt connector"
    );

    // Concurrent puts.
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let conn = connector.clone();
            tokio::spawn(async move {
                let mut keys = Vec::new();
                for i in 0..16u64 {
                    let data = pattern(100 + (i as usize) * 10, 1000 + t * 100 + i);
                    keys.push((conn.put(data.clone()).await.expect("concurrent put"), data));
                }
                keys
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("put task"));
    }
    let keys: Vec<Key> = all.iter().map(|(k, _)| k.clone()).collect();
    let mut unique = keys.iter().map(|k| k.id).collect::<Vec<_>>();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        all.len(),
        "{name}: concurrent puts must give distinct keys"
    );
    let got = c.get_batch(&keys).await.expect("get_batch");
    for ((_, data), got) in all.iter().zip(got) {
        assert!(
            got.as_ref() == Some(data),
            "{name}: concurrently put object differs"
        );
    }
    created.extend(keys);

    c.evict_batch(&created).await.expect("cleanup");
    assert!(
        c.exists_batch(&created)
            .await
            .expect("exists_batch")
            .iter()
            .all(|e| !e),
        "{name}: cleanup left objects behind"
    );
}
