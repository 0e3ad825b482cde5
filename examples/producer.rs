//! Producer half of a two-process pair: puts objects through the local
//! daemon and prints one proxy per line (JSON) on stdout.
//!
//! ```sh
//! proxymeshd &                                   # or: cargo run -p proxymesh-daemon --bin proxymeshd &
//! cargo run --example producer -- 10MiB 1KiB | cargo run --example consumer
//! ```
//! The daemon is found through `PROXYMESH_API` (default 127.0.0.1:7878).

use std::sync::Arc;

use proxymesh::{DaemonConnector, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let store = Store::new("producer", Arc::new(DaemonConnector::from_env()?));
    let sizes: Vec<String> = std::env::args().skip(1).collect();
    let sizes = if sizes.is_empty() {
        vec!["1MiB".to_string()]
    } else {
        sizes
    };
    for s in sizes {
        let size = proxymesh_daemon::config::parse_size(&s).map_err(anyhow::Error::msg)? as usize;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let proxy = store.proxy(&data).await?;
        eprintln!("producer: put {size} bytes as {}", proxy.key());
        println!("{}", serde_json::to_string(&proxy)?);
    }
    Ok(())
}
