//! Round-trip latency of small gets through the local daemon.
//!
//! ```text
//! PROXYMESH_API=127.0.0.1:7878 cargo run --release -p proxymesh --example get_latency [size] [count]
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use proxymesh::{Connector, DaemonConnector};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let c = DaemonConnector::from_env()?;
    let key = c.put(Bytes::from(vec![7u8; size])).await?;
    for _ in 0..1000 {
        c.get(&key).await?;
    }
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let data = c.get(&key).await?.expect("object exists");
        times.push(t.elapsed());
        assert_eq!(data.len(), size);
    }
    c.evict(&key).await?;
    times.sort();
    let mean = times.iter().sum::<Duration>() / count as u32;
    let pct = |p: f64| times[((count as f64 * p) as usize).min(count - 1)];
    println!(
        "{count} gets of {size} B via {}: mean {mean:?}, p50 {:?}, p99 {:?}, max {:?}",
        c.api_addr(),
        pct(0.5),
        pct(0.99),
        times[count - 1]
    );
    Ok(())
}
