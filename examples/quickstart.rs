//! proxymesh quickstart: the README's main command.
//!
//! ```sh
//! cargo run --release --example quickstart            # 1 KiB, a struct, 100 MiB
//! cargo run --release --example quickstart -- 1GiB    # and a 1 GiB object too
//! ```
//!
//! Starts a site daemon (in this process, on a free loopback port, with a
//! throw-away data directory), puts objects through the SDK and wraps them in
//! proxies, then hands the proxies — a few hundred bytes of JSON each — to a
//! *separate consumer process*, which resolves them through the daemon on
//! first use and checks every byte. Prints what moved and how fast.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use proxymesh::{DaemonConnector, Proxy, Store};
use proxymesh_daemon::config::{parse_size, Config};
use proxymesh_daemon::Daemon;
use serde::{Deserialize, Serialize};

/// A structured object, serialized with the default (bincode) serializer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Experiment {
    name: String,
    temperatures: Vec<f64>,
    tags: Vec<String>,
}

impl Experiment {
    fn sample() -> Self {
        Self {
            name: "run-42".into(),
            temperatures: (0..1000).map(|i| 273.15 + i as f64 / 10.0).collect(),
            tags: vec!["quickstart".into(), "proxymesh".into()],
        }
    }
}

/// What the producer sends the consumer, one JSON line per object.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
enum Shipment {
    Bytes {
        label: String,
        size: u64,
        blake3: String,
        proxy: Proxy<Vec<u8>>,
    },
    Experiment {
        proxy: Proxy<Experiment>,
    },
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--consumer") {
        return tokio::task::spawn_blocking(consumer).await?;
    }
    let mut sizes: Vec<u64> = vec![1024, 100 << 20];
    for arg in std::env::args().skip(1) {
        sizes.push(parse_size(&arg).map_err(anyhow::Error::msg)?);
    }

    // 1. A site daemon. In production this is `proxymeshd`, one per site.
    let data = tempfile::tempdir()?;
    let daemon = Daemon::start(Config {
        data_dir: data.path().to_path_buf(),
        api: "127.0.0.1:0".parse()?,
        ..Config::default()
    })
    .await?;
    let api = daemon.api_addr().to_string();
    println!("proxymesh quickstart");
    println!("  daemon    peer {} at http://{api}", daemon.peer_id());

    // 2. The producer: put objects, make proxies.
    let store = Store::new("quickstart", Arc::new(DaemonConnector::new(&api)?));
    let mut lines = Vec::new();
    println!(
        "  producer  (pid {}) puts objects and ships proxies:",
        std::process::id()
    );
    let exp = Experiment::sample();
    let proxy = store.proxy(&exp).await?;
    let line = serde_json::to_string(&Shipment::Experiment { proxy })?;
    println!(
        "    {:<12} struct          -> proxy of {} B",
        "experiment",
        line.len()
    );
    lines.push(line);
    for size in sizes {
        let data = proxymesh::testing::pattern(size as usize, 1).to_vec();
        let hash = blake3::hash(&data).to_hex().to_string();
        let started = Instant::now();
        let proxy = store.proxy(&data).await?;
        let secs = started.elapsed().as_secs_f64();
        let label = human(size);
        let line = serde_json::to_string(&Shipment::Bytes {
            label: label.clone(),
            size,
            blake3: hash,
            proxy,
        })?;
        println!(
            "    {:<12} {:>9} put in {:>7.1} ms ({:>8}/s) -> proxy of {} B",
            label,
            human(size),
            secs * 1e3,
            human((size as f64 / secs) as u64),
            line.len()
        );
        lines.push(line);
    }

    // 3. The consumer: another OS process that only gets the proxies.
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--consumer")
        .env(proxymesh::api::API_ENV, &api)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the consumer process")?;
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for l in &lines {
            writeln!(stdin, "{l}")?;
        }
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("the consumer failed ({})", out.status);
    }
    let status = DaemonConnector::new(&api)?.status().await?;
    println!(
        "  daemon    holds {} objects, {} ({} in memory, {} on disk)",
        status.objects,
        human(status.bytes),
        human(status.memory_bytes),
        human(status.disk_bytes)
    );
    daemon.shutdown().await?;
    println!("ok: every object resolved in another process and matched its BLAKE3 hash");
    Ok(())
}

/// The consumer process: read proxies, touch them (first use resolves through
/// the local daemon named by PROXYMESH_API), verify, report.
fn consumer() -> anyhow::Result<()> {
    println!(
        "  consumer  (pid {}) resolves proxies on first use:",
        std::process::id()
    );
    for line in std::io::stdin().lock().lines() {
        match serde_json::from_str::<Shipment>(&line?)? {
            Shipment::Experiment { proxy } => {
                let started = Instant::now();
                // Deref resolves: the proxy behaves like the object itself.
                let n = proxy.temperatures.len();
                let ms = started.elapsed().as_secs_f64() * 1e3;
                if *proxy != Experiment::sample() {
                    bail!("experiment differs after the trip");
                }
                println!(
                    "    {:<12} {n} temperatures, name {:?}: ok in {ms:.2} ms",
                    "experiment", proxy.name
                );
            }
            Shipment::Bytes {
                label,
                size,
                blake3: expected,
                proxy,
            } => {
                let started = Instant::now();
                let got = blake3::hash(&proxy).to_hex().to_string();
                let secs = started.elapsed().as_secs_f64();
                if got != expected || proxy.len() as u64 != size {
                    bail!("{label}: bytes differ after the trip");
                }
                println!(
                    "    {:<12} resolved + verified in {:>7.1} ms ({:>8}/s)",
                    label,
                    secs * 1e3,
                    human((size as f64 / secs) as u64)
                );
            }
        }
    }
    Ok(())
}
