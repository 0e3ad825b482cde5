//! # proxymesh-relay
//!
//! The mesh's public meeting point: site daemons (`proxymeshd`) behind NATs
//! reserve circuits here, find each other, and hole-punch direct connections.
//!
//! This version is a placeholder: single-site proxymesh needs no relay, and
//! the relay service (libp2p relay v2, identify, AutoNAT, discovery) arrives
//! with the mesh. It parses its future flags so scripts can be written now.

use clap::Parser;

/// proxymesh relay (placeholder: the relay service arrives with the mesh).
#[derive(Debug, Parser)]
#[command(name = "proxymesh-relay", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// UDP (QUIC) and TCP port to listen on.
    #[arg(long, default_value_t = 4001)]
    port: u16,
}

fn main() {
    let args = Args::parse();
    eprintln!(
        "proxymesh-relay {}: not implemented yet (would listen on {}:{}); \
         single-site proxymesh needs no relay",
        env!("CARGO_PKG_VERSION"),
        args.host,
        args.port
    );
}
