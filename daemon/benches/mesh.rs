//! Mesh benchmark: remote gets through two real daemons and a real relay on
//! loopback, next to a raw QUIC (quinn) transfer of the same bytes between
//! two processes and the same over one libp2p stream (the transport
//! proxymesh runs on), measured in the same run.
//!
//! ```sh
//! cargo bench -p proxymesh-daemon --bench mesh            # 100 MiB and 1 GiB
//! cargo bench -p proxymesh-daemon --bench mesh -- --quick # 100 MiB only, fewer rounds
//! ```
//!
//! Remote get = the SDK at site B asks daemon B for a key of daemon A; B
//! fetches it from A over the mesh (direct QUIC after hole punching on
//! loopback), verifies and caches it, and streams it to the SDK.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use proxymesh::{ByteStream, Connector, DaemonConnector, Key};
use proxymesh_suite::DaemonProcess;

#[path = "common/raw_libp2p.rs"]
mod raw_libp2p;
#[path = "common/raw_quic.rs"]
mod raw_quic;

fn stream_of(size: u64, seed: u8) -> ByteStream {
    let chunk = Bytes::from(vec![seed; 1 << 20]);
    let n = size / chunk.len() as u64;
    futures::stream::iter((0..n).map(move |_| Ok(chunk.clone()))).boxed()
}

async fn drain(conn: &DaemonConnector, key: &Key) -> (u64, Duration) {
    let t = Instant::now();
    let mut s = conn.get_stream(key).await.unwrap().expect("object exists");
    let mut n = 0u64;
    while let Some(c) = s.try_next().await.unwrap() {
        n += c.len() as u64;
    }
    (n, t.elapsed())
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The relay, on its own thread and runtime in this process (after the hole
/// punch it carries no data). Returns its addresses.
fn start_relay(
    identity: std::path::PathBuf,
    mesh: proxymesh::membership::MeshId,
) -> Vec<libp2p::Multiaddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let relay = proxymesh_relay::run(proxymesh_relay::RelayConfig::new(
                [127, 0, 0, 1].into(),
                0,
                identity,
                proxymesh::membership::Policy::Meshes(vec![mesh]),
            ))
            .await
            .unwrap();
            tx.send(relay.addresses().to_vec()).unwrap();
            relay.wait().await.unwrap();
        })
    });
    rx.recv().unwrap()
}

/// A daemon admitted to `mesh`, joined through `relay`.
fn mesh_daemon(relay: &[libp2p::Multiaddr], mesh: &proxymesh_suite::TestMesh) -> DaemonProcess {
    let dir = tempfile::tempdir().unwrap();
    let mut flags: Vec<String> = vec!["--credential".into(), mesh.admit_dir(dir.path())];
    for a in relay {
        flags.extend(["--relay".into(), a.to_string()]);
    }
    flags.extend(["--listen-host", "127.0.0.1", "--listen-port", "0"].map(String::from));
    // Extra daemon flags for experiments, e.g. PROXYMESH_BENCH_DAEMON_ARGS="--cache-cap 0".
    if let Ok(extra) = std::env::var("PROXYMESH_BENCH_DAEMON_ARGS") {
        flags.extend(extra.split_whitespace().map(String::from));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let d = DaemonProcess::start_in(dir.path(), &flags).keep_dir(dir);
    proxymesh_suite::wait_until(Duration::from_secs(30), || {
        let s = proxymesh_suite::http(&d.api, "GET", "/v1/status", &[], b"").json();
        s["mesh"]["relays"]
            .as_array()?
            .iter()
            .any(|r| r["reserved"] == true)
            .then_some(())
    })
    .expect("reservation");
    d
}

fn main() {
    raw_quic::serve_if_asked();
    raw_libp2p::serve_if_asked();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(quick));
}

async fn bench(quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mesh = proxymesh_suite::TestMesh::new();
    let relay = start_relay(dir.path().join("relay.key"), mesh.authority.mesh_id());
    let a = mesh_daemon(&relay, &mesh);
    let b = mesh_daemon(&relay, &mesh);
    let at_a = DaemonConnector::new(&a.api).unwrap();
    let at_b = DaemonConnector::new(&b.api).unwrap();
    // The raw QUIC baseline, with libp2p-quic's windows: the engine we run on.
    let server = raw_quic::Server::start(&[], "127.0.0.1:0", raw_quic::Tuning::LIBP2P);
    let quinn = server
        .connect(
            ([127, 0, 0, 1], server.port).into(),
            raw_quic::Tuning::LIBP2P,
        )
        .await;
    // The same bytes over one libp2p-stream stream (libp2p's QUIC and TLS):
    // what the transport proxymesh runs on costs, before proxymesh's part.
    let mut libp2p = raw_libp2p::Server::start().await;
    println!(
        "proxymesh mesh benchmark: SDK at B <- daemon B <- daemon A (relay {})",
        relay[0]
    );

    println!("-- latency, 1 KiB remote get --");
    // With connection set-up: the first get from A (dial via relay, hole punch).
    let key = at_a.put(Bytes::from(vec![1u8; 1024])).await.unwrap();
    let t = Instant::now();
    assert_eq!(at_b.get(&key).await.unwrap().unwrap().len(), 1024);
    println!(
        "{:<46} {:>9.1} ms",
        "first get (dial + hole punch + fetch)",
        t.elapsed().as_secs_f64() * 1e3
    );
    // Warm: B is connected to A; each get is a fresh key (so not a cache hit).
    let iters = if quick { 50 } else { 300 };
    let keys: Vec<Key> = at_a
        .put_batch(vec![Bytes::from(vec![2u8; 1024]); iters])
        .await
        .unwrap();
    let mut samples = Vec::new();
    for k in &keys {
        let t = Instant::now();
        assert_eq!(at_b.get(k).await.unwrap().unwrap().len(), 1024);
        samples.push(t.elapsed());
    }
    // The same through B's Unix socket (fresh keys again), when B serves one.
    let mut over_socket = Vec::new();
    if let Some(socket) = &b.socket {
        let unix_b = DaemonConnector::new(socket).unwrap();
        let fresh: Vec<Key> = at_a
            .put_batch(vec![Bytes::from(vec![3u8; 1024]); iters])
            .await
            .unwrap();
        for k in &fresh {
            let t = Instant::now();
            assert_eq!(unix_b.get(k).await.unwrap().unwrap().len(), 1024);
            over_socket.push(t.elapsed());
        }
    }
    let mut local = Vec::new();
    for k in &keys {
        let t = Instant::now();
        at_a.get(k).await.unwrap().unwrap();
        local.push(t.elapsed());
    }
    let mut cached = Vec::new();
    for k in &keys {
        let t = Instant::now();
        at_b.get(k).await.unwrap().unwrap();
        cached.push(t.elapsed());
    }
    println!(
        "{:<46} {:>9.1} µs",
        "warm remote get, median",
        median(samples).as_secs_f64() * 1e6
    );
    if !over_socket.is_empty() {
        println!(
            "{:<46} {:>9.1} µs",
            "warm remote get via B's Unix socket, median",
            median(over_socket).as_secs_f64() * 1e6
        );
    }
    println!(
        "{:<46} {:>9.1} µs",
        "  same object, local get at A (baseline)",
        median(local).as_secs_f64() * 1e6
    );
    println!(
        "{:<46} {:>9.1} µs",
        "  same object again at B (cached)",
        median(cached).as_secs_f64() * 1e6
    );

    println!("-- throughput (MiB/s), medians of rounds --");
    let sizes: &[u64] = if quick {
        &[100 << 20]
    } else {
        &[100 << 20, 1 << 30]
    };
    let rounds = if quick { 2 } else { 3 };
    for &size in sizes {
        let (mut raw, mut stream, mut remote, mut cache) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            raw.push(raw_quic::fetch(&quinn, size).await);
            stream.push(libp2p.fetch(size).await);
            let key = at_a
                .put_stream_with_len(stream_of(size, round as u8), size)
                .await
                .unwrap();
            let (n, d) = drain(&at_b, &key).await;
            assert_eq!(n, size);
            remote.push(d);
            let (n, d) = drain(&at_b, &key).await;
            assert_eq!(n, size);
            cache.push(d);
            at_b.evict(&key).await.unwrap();
        }
        let (raw, stream, remote, cache) =
            (median(raw), median(stream), median(remote), median(cache));
        let label = if size >= 1 << 30 {
            format!("{} GiB", size >> 30)
        } else {
            format!("{} MiB", size >> 20)
        };
        println!(
            "{label:>8}: raw quinn {:>6.0}   libp2p stream {:>6.0} ({:.2}x raw)   remote get {:>6.0} ({:.2}x raw, {:.2}x libp2p)   cached re-get {:>6.0}",
            mibps(size, raw),
            mibps(size, stream),
            raw.as_secs_f64() / stream.as_secs_f64(),
            mibps(size, remote),
            raw.as_secs_f64() / remote.as_secs_f64(),
            stream.as_secs_f64() / remote.as_secs_f64(),
            mibps(size, cache)
        );
    }
    println!(
        "peak RSS: daemon A {} MiB, daemon B {} MiB",
        a.peak_rss() >> 20,
        b.peak_rss() >> 20
    );

    // Many sites want one object at once: each fetches from every site that
    // has segments of it, and the producer sends it about once.
    let sites = 6;
    let size: u64 = if quick { 64 << 20 } else { 256 << 20 };
    println!(
        "-- fan-out: {sites} sites fetch one {} MiB object from A at once --",
        size >> 20
    );
    let others: Vec<DaemonProcess> = (0..sites).map(|_| mesh_daemon(&relay, &mesh)).collect();
    let served = |d: &DaemonProcess| -> u64 {
        proxymesh_suite::http(&d.api, "GET", "/v1/status", &[], b"").json()["mesh"]["traffic"]
            .as_array()
            .map_or(0, |t| {
                t.iter()
                    .map(|p| p["served_bytes"].as_u64().unwrap_or(0))
                    .sum()
            })
    };
    let before = served(&a);
    let key = at_a
        .put_stream_with_len(stream_of(size, 9), size)
        .await
        .unwrap();
    let t = Instant::now();
    let gets: Vec<_> = others
        .iter()
        .map(|d| {
            let conn = DaemonConnector::new(&d.api).unwrap();
            let key = key.clone();
            tokio::spawn(async move { drain(&conn, &key).await })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for g in gets {
        let (n, d) = g.await.unwrap();
        assert_eq!(n, size);
        slowest = slowest.max(d);
    }
    let wall = t.elapsed();
    let uploaded = served(&a) - before;
    let among: u64 = others.iter().map(served).sum();
    println!(
        "producer uploaded {:.2}x the object (one fetch each from A alone: {sites}x); sites served each other {:.2}x",
        uploaded as f64 / size as f64,
        among as f64 / size as f64
    );
    println!(
        "all {sites} done in {:.2} s ({:.0} MiB/s delivered in all, slowest site {:.2} s); peak RSS: A {} MiB, sites max {} MiB",
        wall.as_secs_f64(),
        mibps(size * sites as u64, wall),
        slowest.as_secs_f64(),
        a.peak_rss() >> 20,
        others.iter().map(|d| d.peak_rss()).max().unwrap_or(0) >> 20
    );
}
