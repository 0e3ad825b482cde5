//! A 2 GiB object put and got through the daemon, streamed end to end, while
//! the daemon's peak RSS stays far below the object's size.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use proxymesh::{ByteStream, Connector, DaemonConnector};
use proxymesh_suite::DaemonProcess;

const SIZE: u64 = 2 << 30;
const CHUNK: usize = 1 << 20;
/// "Far below" 2 GiB: the daemon may use at most this much memory in all.
const RSS_LIMIT: u64 = 256 << 20;

/// A deterministic stream of `SIZE` bytes, hashed as it is produced.
fn source(hasher: Arc<Mutex<blake3::Hasher>>) -> ByteStream {
    let chunks = SIZE / CHUNK as u64;
    futures::stream::iter(0..chunks)
        .map(move |i| {
            let mut chunk = vec![0u8; CHUNK];
            for (j, word) in chunk.chunks_exact_mut(8).enumerate() {
                word.copy_from_slice(&(i * 1_000_003 + j as u64).to_le_bytes());
            }
            hasher.lock().unwrap().update(&chunk);
            Ok(Bytes::from(chunk))
        })
        .boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gib_roundtrip_with_bounded_daemon_memory() {
    let d = DaemonProcess::start(&[]);
    let conn = DaemonConnector::new(&d.api).unwrap();
    let sent = Arc::new(Mutex::new(blake3::Hasher::new()));
    let key = conn
        .put_stream_with_len(source(sent.clone()), SIZE)
        .await
        .unwrap();
    let sent = sent.lock().unwrap().finalize();

    let mut got = blake3::Hasher::new();
    let mut n = 0u64;
    let mut stream = conn.get_stream(&key).await.unwrap().expect("object exists");
    while let Some(chunk) = stream.try_next().await.unwrap() {
        n += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!(n, SIZE);
    assert_eq!(got.finalize(), sent, "bytes differ after the round trip");

    let peak = d.peak_rss();
    eprintln!("daemon peak RSS while moving 2 GiB: {} MiB", peak >> 20);
    assert!(
        peak < RSS_LIMIT,
        "daemon peak RSS {} MiB >= {} MiB",
        peak >> 20,
        RSS_LIMIT >> 20
    );
    conn.evict(&key).await.unwrap();
}

/// Batch routes stream too: 2 × 256 MiB put in one batch and 4 × 256 MiB got
/// in one batch by a daemon capped at 64 MiB of object memory. (They once
/// buffered whole batches: 1 GiB RSS for the put, 1.3 GiB for the get.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_large_objects_stay_within_the_memory_cap() {
    const OBJ: usize = 256 << 20;
    let d = DaemonProcess::start(&["--memory-cap", "64MiB"]);
    let conn = DaemonConnector::new(&d.api).unwrap();
    let objects: Vec<Bytes> = (0..2u8)
        .map(|i| Bytes::from(proxymesh::testing::pattern(OBJ, u64::from(i)).to_vec()))
        .collect();
    let mut keys = conn.put_batch(objects.clone()).await.unwrap();
    keys.extend(conn.put_batch(objects.clone()).await.unwrap());
    assert_eq!(keys.len(), 4);
    let got = conn.get_batch(&keys).await.unwrap();
    for (i, g) in got.iter().enumerate() {
        assert!(g.as_ref() == Some(&objects[i % 2]), "object {i} differs");
    }
    drop(got);
    let peak = d.peak_rss();
    eprintln!(
        "daemon peak RSS, batch put 2 x 256 MiB twice and batch get 4 x 256 MiB: {} MiB",
        peak >> 20
    );
    assert!(
        peak < RSS_LIMIT,
        "daemon peak RSS {} MiB >= {} MiB",
        peak >> 20,
        RSS_LIMIT >> 20
    );
}
