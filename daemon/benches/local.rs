//! Local-path benchmark: the SDK's `DaemonConnector` against a real
//! `proxymeshd` process, with baselines measured in the same run.
//!
//! ```sh
//! cargo bench -p proxymesh-daemon --bench local            # 1 KiB latency, 100 MiB + 1 GiB throughput
//! cargo bench -p proxymesh-daemon --bench local -- --quick # fewer iterations, no 1 GiB
//! ```
//!
//! Baselines: latency of a 1 KiB GET from a minimal HTTP server in another
//! process (axum on a single-threaded runtime, a static body: the floor of any
//! cross-process HTTP round trip here); throughput of a raw loopback TCP copy
//! of the same bytes (the floor of any socket path).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use proxymesh::{ByteStream, Connector, DaemonConnector};
use proxymesh_suite::DaemonProcess;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<44} median {:>8.1} µs   p99 {:>8.1} µs   (n={})",
        percentile(&samples, 0.5).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.len()
    );
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn stream_of(size: u64) -> ByteStream {
    let chunk = Bytes::from(vec![0xA5u8; 1 << 20]);
    let n = size / chunk.len() as u64;
    futures::stream::iter((0..n).map(move |_| Ok(chunk.clone()))).boxed()
}

async fn time_latency<F, Fut>(iters: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iters / 10 {
        f().await;
    }
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f().await;
        out.push(t.elapsed());
    }
    out
}

/// Serve every GET with the same 1 KiB body on a single-threaded runtime
/// (like the daemon's default), printing the bound address first. Runs as a
/// separate process: `local --baseline-server`.
fn baseline_server_main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let body = Bytes::from(vec![7u8; 1024]);
        let app = axum::Router::new().route(
            "/x",
            axum::routing::get(move || async move { body.clone() }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.unwrap()
    });
}

/// The baseline server as a child process (killed on drop), and its address.
struct BaselineServer(std::process::Child, String);

impl BaselineServer {
    fn start() -> Self {
        let (child, addr) = proxymesh_suite::spawn_self(&["--baseline-server"]);
        Self(child, addr)
    }
}

impl Drop for BaselineServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Raw loopback TCP: one thread writes `size` bytes, this one reads them.
fn raw_tcp_copy(size: u64) -> Duration {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let buf = vec![0xA5u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
    });
    let (mut s, _) = listener.accept().unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < size {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got += n as u64;
    }
    let d = t.elapsed();
    writer.join().unwrap();
    d
}

fn main() {
    if std::env::args().any(|a| a == "--baseline-server") {
        return baseline_server_main();
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench());
}

async fn bench() {
    let quick = std::env::args().any(|a| a == "--quick");
    let iters = if quick { 500 } else { 5000 };
    // Extra daemon flags for experiments, e.g. PROXYMESH_BENCH_DAEMON_ARGS="--threads 1".
    let extra = std::env::var("PROXYMESH_BENCH_DAEMON_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let d = DaemonProcess::start(&extra);
    let conn = Arc::new(DaemonConnector::new(&d.api).unwrap());
    let socket = d.socket.clone().expect("the daemon serves a Unix socket");
    let unix = Arc::new(DaemonConnector::new(&socket).unwrap());
    println!(
        "proxymesh local benchmark (daemon pid {}, {} iterations)",
        d.pid(),
        iters
    );
    println!("-- latency, 1 KiB --");

    let baseline = BaselineServer::start();
    let base = baseline.1.clone();
    // The same hyper client stack the DaemonConnector uses.
    let raw = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let uri: hyper::Uri = format!("http://{base}/x").parse().unwrap();
    let payload = Bytes::from(vec![1u8; 1024]);
    let key = conn.put(payload.clone()).await.unwrap();

    // Wake-up latency on a VM drifts with load, so the three measurements
    // take turns in short rounds and each sees the same conditions.
    let rounds = 10;
    let per_round = iters / rounds;
    let (mut base_s, mut get_s, mut exists_s) = (Vec::new(), Vec::new(), Vec::new());
    let (mut unix_get_s, mut unix_exists_s) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        base_s.extend(
            time_latency(per_round, || {
                let (raw, uri) = (raw.clone(), uri.clone());
                async move {
                    use http_body_util::BodyExt;
                    let resp = raw.get(uri).await.unwrap();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body.len(), 1024);
                }
            })
            .await,
        );
        get_s.extend(
            time_latency(per_round, || {
                let (conn, key) = (conn.clone(), key.clone());
                async move {
                    let b = conn.get(&key).await.unwrap().unwrap();
                    assert_eq!(b.len(), 1024);
                }
            })
            .await,
        );
        exists_s.extend(
            time_latency(per_round, || {
                let (conn, key) = (conn.clone(), key.clone());
                async move {
                    assert!(conn.exists(&key).await.unwrap());
                }
            })
            .await,
        );
        unix_get_s.extend(
            time_latency(per_round, || {
                let (conn, key) = (unix.clone(), key.clone());
                async move {
                    let b = conn.get(&key).await.unwrap().unwrap();
                    assert_eq!(b.len(), 1024);
                }
            })
            .await,
        );
        unix_exists_s.extend(
            time_latency(per_round, || {
                let (conn, key) = (unix.clone(), key.clone());
                async move {
                    assert!(conn.exists(&key).await.unwrap());
                }
            })
            .await,
        );
    }
    report("baseline: minimal HTTP server process, GET 1 KiB", base_s);
    report("proxymesh: get 1 KiB, TCP (DaemonConnector)", get_s);
    report("proxymesh: exists, TCP", exists_s);
    report("proxymesh: get 1 KiB, Unix socket", unix_get_s);
    report("proxymesh: exists, Unix socket", unix_exists_s);
    let mut put_keys = Vec::new();
    let samples = {
        let mut out = Vec::with_capacity(iters);
        for _ in 0..iters {
            let t = Instant::now();
            put_keys.push(conn.put(payload.clone()).await.unwrap());
            out.push(t.elapsed());
        }
        out
    };
    report("proxymesh: put 1 KiB", samples);
    let t = Instant::now();
    conn.evict_batch(&put_keys).await.unwrap();
    println!(
        "{:<44} {:>8.1} µs per key ({} keys in one request)",
        "proxymesh: evict_batch",
        t.elapsed().as_secs_f64() * 1e6 / put_keys.len() as f64,
        put_keys.len()
    );

    println!("-- throughput (MiB/s) --");
    let sizes: &[u64] = if quick {
        &[100 << 20]
    } else {
        &[100 << 20, 1 << 30]
    };
    for &size in sizes {
        let label = if size >= 1 << 30 {
            format!("{} GiB", size >> 30)
        } else {
            format!("{} MiB", size >> 20)
        };
        let raw = (0..3).map(|_| raw_tcp_copy(size)).min().unwrap();
        let t = Instant::now();
        let key = conn
            .put_stream_with_len(stream_of(size), size)
            .await
            .unwrap();
        let put = t.elapsed();
        let t = Instant::now();
        let mut n = 0u64;
        let mut s = conn.get_stream(&key).await.unwrap().unwrap();
        while let Some(c) = s.try_next().await.unwrap() {
            n += c.len() as u64;
        }
        let get = t.elapsed();
        assert_eq!(n, size);
        let t = Instant::now();
        let mut n = 0u64;
        let mut s = unix.get_stream(&key).await.unwrap().unwrap();
        while let Some(c) = s.try_next().await.unwrap() {
            n += c.len() as u64;
        }
        let unix_get = t.elapsed();
        assert_eq!(n, size);
        conn.evict(&key).await.unwrap();
        println!(
            "{label:>8}: raw TCP loopback {:>7.0}   proxymesh put {:>7.0}   get {:>7.0} (TCP, {:.2}x raw)   get {:>7.0} (Unix socket)",
            mibps(size, raw),
            mibps(size, put),
            mibps(size, get),
            raw.as_secs_f64() / get.as_secs_f64(),
            mibps(size, unix_get),
        );
    }
    println!("daemon peak RSS: {} MiB", d.peak_rss() >> 20);
}
