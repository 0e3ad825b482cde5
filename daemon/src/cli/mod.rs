//! The `proxymesh` client command line: put, get, exists, evict and status
//! against the local daemon, through the SDK's [`DaemonConnector`]; and the
//! mesh operator's `mesh` commands ([`mesh`]), which need no daemon.
//!
//! Exit codes: 0 success; 1 `exists` found nothing or `get` found no object;
//! 2 bad usage or input; 3 the daemon refused or could not be reached.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use proxymesh::{ByteStream, Connector, DaemonConnector, Key};
use tokio::io::AsyncWriteExt;

mod doctor;
pub mod mesh;
mod progress;

use progress::Progress;

/// proxymesh client: move objects through the local proxymesh daemon.
///
/// `put` prints a ticket — one copy-pasteable string naming the daemon that
/// holds the object and the object's key. Anyone can `get` with it.
#[derive(Debug, Parser)]
#[command(name = "proxymesh", version, about, long_about)]
pub struct Cli {
    /// The local daemon's API: `unix:PATH` (its socket) or `host:port`
    /// [default: the default data directory's api.sock if it exists, else
    /// 127.0.0.1:7878].
    #[arg(long, global = true, env = "PROXYMESH_API", value_name = "ADDR")]
    api: Option<String>,
    /// Never show progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store a file (or stdin with `-`) and print its ticket.
    Put {
        /// The file to store; `-` reads standard input.
        file: PathBuf,
        /// Print the full JSON answer (ticket, size, BLAKE3) instead of the ticket alone.
        #[arg(long)]
        json: bool,
    },
    /// Fetch an object by ticket.
    Get {
        /// The ticket printed by `put`.
        ticket: String,
        /// Where to write the bytes; `-` (the default) is standard output.
        /// A file is written whole or not at all.
        #[arg(short, long, value_name = "FILE", default_value = "-")]
        output: PathBuf,
    },
    /// Say whether an object exists (exit code 0 if it does, 1 if not).
    Exists {
        /// The ticket.
        ticket: String,
    },
    /// Remove objects (missing ones are not an error).
    Evict {
        /// One or more tickets.
        #[arg(required = true)]
        tickets: Vec<String>,
    },
    /// Show the daemon's identity and storage totals.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Say what works at this site and what does not, and what to do:
    /// the daemon, its credential, each relay over QUIC and TCP, the NAT,
    /// a second daemon with the same identity; with a ticket or peer ID,
    /// also a connection to that site. Exit code 0 only if this site can
    /// serve and fetch.
    Doctor {
        /// A ticket or a peer ID of another site to try a connection to.
        target: Option<String>,
        /// Seconds to wait for each relay probe.
        #[arg(long, default_value_t = 5, value_name = "SECS")]
        timeout: u64,
    },
    /// Run a mesh: create its authority, admit and revoke sites.
    #[command(subcommand)]
    Mesh(mesh::MeshCommand),
}

/// Transfers larger than this show a progress bar (on a terminal).
const PROGRESS_THRESHOLD: u64 = 4 << 20;

/// Parse arguments from the command line and run.
pub fn main() -> ExitCode {
    // Like other command-line tools, end quietly when the reader of our
    // output goes away (`proxymesh status | head -3`) instead of panicking
    // on the broken pipe.
    // SAFETY: restoring the default disposition of one signal at start,
    // before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proxymesh: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// A CLI failure: message and exit code.
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    pub(crate) fn usage(m: impl Into<String>) -> Self {
        Self {
            message: m.into(),
            code: 2,
        }
    }
}

impl From<proxymesh::Error> for CliError {
    fn from(e: proxymesh::Error) -> Self {
        let code = match e {
            proxymesh::Error::Key(_) => 2,
            _ => 3,
        };
        Self {
            message: e.to_string(),
            code,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self {
            message: e.to_string(),
            code: 2,
        }
    }
}

fn parse_ticket(t: &str) -> Result<Key, CliError> {
    t.parse::<Key>()
        .map_err(|e| CliError::usage(format!("{e}")))
}

/// Run one command.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let command = match cli.command {
        Command::Mesh(cmd) => return mesh::run(cmd),
        other => other,
    };
    let conn = match &cli.api {
        Some(a) => DaemonConnector::new(a)?,
        None => DaemonConnector::from_env()?,
    };
    let show_progress = !cli.quiet && std::io::stderr().is_terminal();
    match command {
        Command::Mesh(_) => unreachable!("handled above"),
        Command::Doctor { target, timeout } => {
            doctor::run(
                &conn,
                target.as_deref(),
                std::time::Duration::from_secs(timeout.max(1)),
            )
            .await
        }
        Command::Put { file, json } => {
            let started = Instant::now();
            let (stream, len): (ByteStream, Option<u64>) = if file.as_os_str() == "-" {
                (
                    Box::pin(tokio_util::io::ReaderStream::with_capacity(
                        tokio::io::stdin(),
                        1 << 20,
                    )),
                    None,
                )
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .map_err(|e| CliError::usage(format!("cannot open {}: {e}", file.display())))?;
                let len = f.metadata().await?.len();
                (
                    Box::pin(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)),
                    Some(len),
                )
            };
            let bar = Progress::new(
                show_progress && len.is_none_or(|l| l > PROGRESS_THRESHOLD),
                len,
                "put",
            );
            // Count and hash what is sent, for the summary and `--json`.
            let tally = std::sync::Arc::new(std::sync::Mutex::new((0u64, blake3::Hasher::new())));
            let counted = {
                let (bar, tally) = (bar.clone(), tally.clone());
                stream.inspect_ok(move |c| {
                    bar.inc(c.len() as u64);
                    let mut t = tally.lock().expect("tally");
                    t.0 += c.len() as u64;
                    t.1.update(c);
                })
            };
            let key = match len {
                Some(len) => conn.put_stream_with_len(Box::pin(counted), len).await?,
                None => conn.put_stream(Box::pin(counted)).await?,
            };
            bar.finish();
            let (size, hash) = {
                let t = tally.lock().expect("tally");
                (t.0, t.1.finalize())
            };
            if json {
                let answer = proxymesh::api::PutResponse {
                    ticket: Some(key.ticket()),
                    key,
                    size,
                    blake3: hash.to_hex().to_string(),
                };
                println!("{}", serde_json::to_string_pretty(&answer).expect("json"));
            } else {
                println!("{key}");
            }
            if show_progress && size > PROGRESS_THRESHOLD {
                eprintln!(
                    "stored {} in {}",
                    progress::human(size),
                    progress::rate(size, started.elapsed())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { ticket, output } => {
            let key = parse_ticket(&ticket)?;
            let Some(stream) = conn.get_stream(&key).await? else {
                eprintln!("proxymesh: no object {key} (evicted, or never stored)");
                return Ok(ExitCode::from(1));
            };
            let bar = Progress::new(show_progress, None, "get");
            write_output(stream, &output, &bar).await?;
            bar.finish();
            Ok(ExitCode::SUCCESS)
        }
        Command::Exists { ticket } => {
            let key = parse_ticket(&ticket)?;
            let exists = conn.exists(&key).await?;
            println!("{exists}");
            Ok(if exists {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Evict { tickets } => {
            let keys = tickets
                .iter()
                .map(|t| parse_ticket(t))
                .collect::<Result<Vec<_>, _>>()?;
            conn.evict_batch(&keys).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let s = conn.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).expect("json"));
            } else {
                println!("peer id:    {}", s.peer_id);
                println!("endpoint:   {}", s.uuid);
                println!("version:    {}", s.version);
                println!("api:        http://{}", s.api);
                if let Some(socket) = &s.api_socket {
                    println!("socket:     {socket}");
                }
                println!("data dir:   {}", s.data_dir);
                println!(
                    "objects:    {} ({}; {} in memory of {} cap, {} on disk)",
                    s.objects,
                    progress::human(s.bytes),
                    progress::human(s.memory_bytes),
                    progress::human(s.memory_cap),
                    progress::human(s.disk_bytes)
                );
                println!(
                    "max object: {}",
                    s.max_object_size
                        .map_or("unlimited".to_string(), progress::human)
                );
                println!("persist:    {}", s.persist);
                println!("uptime:     {}s", s.uptime_secs);
                match &s.mesh {
                    None => println!("mesh:       off (start proxymeshd with --relay to join one)"),
                    Some(m) => print_mesh(m),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Write a stream to stdout, or to a file atomically (temp file + rename).
async fn write_output(
    mut stream: ByteStream,
    output: &Path,
    bar: &Progress,
) -> Result<(), CliError> {
    if output.as_os_str() == "-" {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| CliError {
                message: format!("transfer failed: {e}"),
                code: 3,
            })?;
            bar.inc(chunk.len() as u64);
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        return Ok(());
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".proxymesh-get-")
        .tempfile_in(dir)
        .map_err(|e| CliError::usage(format!("cannot write to {}: {e}", dir.display())))?;
    let mut file = tokio::fs::File::from_std(tmp.reopen()?);
    while let Some(chunk) = stream.next().await {
        // On failure `tmp` is dropped and removed: no half-written output.
        let chunk = chunk.map_err(|e| CliError {
            message: format!("transfer failed: {e}; {} not written", output.display()),
            code: 3,
        })?;
        bar.inc(chunk.len() as u64);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    tmp.persist(output)
        .map_err(|e| CliError::usage(format!("cannot write {}: {}", output.display(), e.error)))?;
    Ok(())
}

fn print_mesh(m: &proxymesh::api::MeshStatus) {
    println!("mesh:");
    match (&m.mesh_id, m.open_mesh) {
        (_, true) => {
            println!("  mesh      OPEN (no credentials; every peer is served — labs only)")
        }
        (Some(id), false) => {
            let expires = m
                .credential_expires
                .map(|t| format!(" (credential expires at unix {t})"))
                .unwrap_or_default();
            println!("  mesh      {id}{expires}");
        }
        (None, false) => {}
    }
    for a in &m.listen_addrs {
        println!("  listen    {a}");
    }
    for a in &m.external_addrs {
        println!("  external  {a}");
    }
    for r in &m.relays {
        let state = match (r.joined, r.reserved) {
            (_, true) => "member, reserved",
            (true, false) => "member, no reservation (retrying)",
            (false, _) => "not admitted yet (retrying)",
        };
        println!("  relay     {} [{state}]", r.addr);
    }
    for p in &m.peers {
        for c in &p.connections {
            let path = match c.path {
                proxymesh::api::Path::Direct => "direct",
                proxymesh::api::Path::Relayed => "relayed",
            };
            let transport = match c.transport {
                proxymesh::api::Transport::Quic => "quic",
                proxymesh::api::Transport::Tcp => "tcp",
            };
            println!(
                "  peer      {} {path}/{transport} {}",
                p.peer_id, c.remote_addr
            );
        }
    }
    for d in &m.discovered {
        println!(
            "  known     {}{}",
            d.peer_id,
            d.uuid
                .as_ref()
                .map(|u| format!(" (endpoint {u})"))
                .unwrap_or_default()
        );
    }
    println!("  transfers {}", m.transfers);
}
