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
