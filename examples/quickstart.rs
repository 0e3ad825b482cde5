//! proxymesh quickstart: the README's main command.
//!
//! ```sh
//! cargo run --release --example quickstart            # 1 KiB, a struct, 100 MiB
//! cargo run --release --example quickstart -- 1GiB    # and a 1 GiB object too
//! ```
//!
//! Creates a throw-away mesh authority, starts a relay serving that mesh and
//! two site daemons it admitted, A and B (in this process, on free
//! loopback ports, with throw-away data directories). The producer puts
//! objects at site A through the SDK and wraps them in proxies, then hands
//! the proxies — a few hundred bytes of JSON each — to a *separate consumer
//! process* that only knows site B's daemon. First use of each proxy makes
//! daemon B fetch the bytes straight from daemon A over the mesh (through the
//! relay, upgraded to a direct connection), verify and cache them. Prints
//! what moved, over which path, and how fast.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use proxymesh::membership::{Authority, Policy};
use proxymesh::{DaemonConnector, Proxy, Store};
use proxymesh_daemon::config::{parse_size, Config};
use proxymesh_daemon::identity::Identity;
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

    // 1. A mesh authority, a relay serving its mesh, and two site daemons
    //    it admitted. In production: `proxymesh mesh init` on the operator's
    //    machine, `proxymesh-relay --mesh ID` on a public host, and one
    //    `proxymeshd --credential ...` per site.
    let data = tempfile::tempdir()?;
    let authority = Authority::init(&data.path().join("authority")).map_err(anyhow::Error::msg)?;
    let relay = proxymesh_relay::run(proxymesh_relay::RelayConfig::new(
        [127, 0, 0, 1].into(),
        0,
        data.path().join("relay.key"),
        Policy::Meshes(vec![authority.mesh_id()]),
    ))
    .await?;
    let relays: Vec<String> = relay.addresses().iter().map(|a| a.to_string()).collect();
    let site = |name: &str| -> anyhow::Result<Config> {
        let data_dir = data.path().join(name);
        // What `proxymeshd --print-peer-id` prints, admitted for a day.
        let peer = Identity::load_or_create(&data_dir)?.peer_id();
        let now = SystemTime::now();
        let credential = authority.admit(peer, now, now + Duration::from_secs(86_400));
        Ok(Config {
            data_dir,
            api: "127.0.0.1:0".parse().expect("addr"),
            relays: relays.clone(),
            listen_host: [127, 0, 0, 1].into(),
            listen_port: Some(0),
            credential: Some(credential.to_string()),
            ..Config::default()
        })
    };
    let site_a = Daemon::start(site("site-a")?).await?;
    let site_b = Daemon::start(site("site-b")?).await?;
    for d in [&site_a, &site_b] {
        wait_reserved(d).await?;
    }
    let api = site_a.api_addr().to_string();
    let api_b = site_b.api_addr().to_string();
    println!("proxymesh quickstart");
    println!("  mesh      {}", authority.mesh_id());
    println!("  relay     {}", relays[0]);
    println!("  site A    daemon {} at http://{api}", site_a.peer_id());
    println!("  site B    daemon {} at http://{api_b}", site_b.peer_id());

    // 2. The producer: put objects, make proxies.
    let store = Store::new("quickstart", Arc::new(DaemonConnector::new(&api)?));
    let mut lines = Vec::new();
    println!(
        "  producer  (pid {}) puts objects at site A and ships proxies:",
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
        .env(proxymesh::api::API_ENV, &api_b)
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
    let status = DaemonConnector::new(&api_b)?.status().await?;
    let mesh = status.mesh.unwrap_or_default();
    let path = mesh
        .peers
        .iter()
        .find(|p| p.peer_id == site_a.peer_id().to_string())
        .and_then(|p| p.connections.first())
        .map(|c| format!("{:?}/{:?}", c.path, c.transport).to_lowercase())
        .unwrap_or_else(|| "closed".into());
    println!(
        "  site B    fetched from site A in {} transfers over a {path} connection; caches {}",
        mesh.transfers,
        human(status.bytes)
    );
    for t in &mesh.recent_transfers {
        println!(
            "            {:>9} moved over {} ({})",
            human(t.size),
            t.path_history(),
            t.state
        );
    }
    site_b.shutdown().await?;
    site_a.shutdown().await?;
    relay.shutdown().await?;
    println!("ok: every object made at site A resolved at site B in another process and matched its BLAKE3 hash");
    Ok(())
}

/// Wait until a daemon holds a relay reservation (then its keys name a circuit).
async fn wait_reserved(d: &Daemon) -> anyhow::Result<()> {
    let mesh = d.mesh().context("mesh enabled")?;
    for _ in 0..300 {
        if mesh.status().relays.iter().any(|r| r.reserved) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("daemon {} got no relay reservation", d.peer_id())
}

/// The consumer process: read proxies, touch them (first use resolves through
/// the local daemon named by PROXYMESH_API), verify, report.
fn consumer() -> anyhow::Result<()> {
    println!(
        "  consumer  (pid {}) knows only site B; resolves proxies on first use:",
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
