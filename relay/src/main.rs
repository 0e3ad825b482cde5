//! `proxymesh-relay`: parse flags, log to stderr, print the dialable
//! addresses on stdout, run until SIGINT or SIGTERM.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use proxymesh_relay::{run, Args};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match EnvFilter::try_new(&args.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!(
                "proxymesh-relay: error: invalid --log filter {:?}: {e}",
                args.log
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxymesh-relay: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxymesh-relay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<()> {
    let config = args.into_config()?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let relay = run(config).await?;

    let mut stdout = std::io::stdout().lock();
    for address in relay.addresses() {
        writeln!(stdout, "{address}").context("cannot write to stdout")?;
    }
    stdout.flush().context("cannot write to stdout")?;
    drop(stdout);

    let shutdown = relay.shutdown_handle();
    let mut running = tokio::spawn(relay.wait());
    tokio::select! {
        result = &mut running => return result.context("relay task failed")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = sigterm.recv() => tracing::info!("SIGTERM received"),
    }
    shutdown.shutdown();
    running.await.context("relay task failed")?
}
