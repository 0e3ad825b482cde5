//! Consumer half of a two-process pair: reads proxies (one JSON line each)
//! from stdin and resolves them through *its own* local daemon on first use.
//! See `producer.rs`.

use std::io::BufRead;

use proxymesh::Proxy;

fn main() -> anyhow::Result<()> {
    for line in std::io::stdin().lock().lines() {
        let proxy: Proxy<Vec<u8>> = serde_json::from_str(&line?)?;
        let started = std::time::Instant::now();
        // First use (Deref) resolves the proxy.
        let ok = proxy.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8);
        println!(
            "consumer: {} bytes, pattern {}, resolved in {:.1} ms",
            proxy.len(),
            if ok { "ok" } else { "WRONG" },
            started.elapsed().as_secs_f64() * 1e3
        );
        anyhow::ensure!(ok, "object {} arrived damaged", proxy.key());
    }
    Ok(())
}
