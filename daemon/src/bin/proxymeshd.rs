//! `proxymeshd`: the per-site proxymesh daemon. See `proxymeshd --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use proxymesh_daemon::config::{parse_size, Config};
use proxymesh_daemon::Daemon;

/// The proxymesh site daemon: keeps this site's objects (memory, spilling to
/// disk) and serves them to local applications over a loopback HTTP API
/// (proxymesh's /v1 routes and ProxyStore's endpoint routes).
///
/// Settings come from defaults, then the TOML file given by --config, then
/// environment variables, then flags (flags win).
#[derive(Debug, Parser)]
#[command(name = "proxymeshd", version, about, long_about)]
struct Args {
    /// TOML config file (keys: data_dir, api, memory_cap, inline_limit,
    /// max_object_size, persist, proxystore_name, log).
    #[arg(long, env = "PROXYMESHD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: identity, endpoint UUID, spilled and persisted objects
    /// [default: $XDG_DATA_HOME/proxymesh].
    #[arg(long, env = "PROXYMESHD_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Local API listen address (port 0 picks a free port) [default: 127.0.0.1:7878].
    #[arg(long, env = "PROXYMESH_API", value_name = "ADDR")]
    api: Option<String>,
    /// Bytes of objects kept in memory before spilling to disk, e.g. 512MiB [default: 1GiB].
    #[arg(long, env = "PROXYMESHD_MEMORY_CAP", value_name = "SIZE", value_parser = parse_size)]
    memory_cap: Option<u64>,
    /// Objects larger than this go straight to disk [default: 64MiB].
    #[arg(long, env = "PROXYMESHD_INLINE_LIMIT", value_name = "SIZE", value_parser = parse_size)]
    inline_limit: Option<u64>,
    /// Refuse objects larger than this (HTTP 413) [default: unlimited].
    #[arg(long, env = "PROXYMESHD_MAX_OBJECT_SIZE", value_name = "SIZE", value_parser = parse_size)]
    max_object_size: Option<u64>,
    /// Keep objects across restarts (verified against their BLAKE3 hash on load).
    /// Without it, the data directory's objects are removed at start and exit.
    #[arg(long, env = "PROXYMESHD_PERSIST", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    persist: Option<bool>,
    /// Also register as a ProxyStore endpoint of this name (writes
    /// $PROXYSTORE_HOME/NAME/config.toml for Python's EndpointConnector).
    #[arg(long, env = "PROXYMESHD_PROXYSTORE_NAME", value_name = "NAME")]
    proxystore_name: Option<String>,
    /// Log filter, e.g. info, debug, proxymesh_daemon=trace [default: info].
    #[arg(long, env = "PROXYMESHD_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Join the mesh through this relay (a multiaddr ending in /p2p/<relay id>).
    /// Repeatable: several relays, or one relay's QUIC and TCP addresses.
    #[arg(
        long = "relay",
        env = "PROXYMESHD_RELAYS",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    relays: Vec<String>,
    /// Mesh port for QUIC (UDP) and TCP, fixed so hole punching works; also
    /// enables the mesh without relays (direct connections only) [default: 4002].
    #[arg(long, env = "PROXYMESHD_LISTEN_PORT", value_name = "PORT")]
    listen_port: Option<u16>,
    /// Mesh listen address [default: 0.0.0.0].
    #[arg(long, env = "PROXYMESHD_LISTEN_HOST", value_name = "IP")]
    listen_host: Option<std::net::IpAddr>,
    /// An address this daemon is reachable at (repeatable), e.g. a public IP's multiaddr.
    #[arg(
        long = "external-address",
        env = "PROXYMESHD_EXTERNAL_ADDRESSES",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    external_addresses: Vec<String>,
    /// Seconds to wait for a first connection to a peer [default: 20].
    #[arg(long, env = "PROXYMESHD_CONNECT_TIMEOUT", value_name = "SECS")]
    connect_timeout: Option<f64>,
    /// Seconds to wait for a hole-punched direct connection before transferring over the relay [default: 8].
    #[arg(long, env = "PROXYMESHD_HOLE_PUNCH_TIMEOUT", value_name = "SECS")]
    hole_punch_timeout: Option<f64>,
    /// Seconds without bytes before a remote transfer is abandoned [default: 10].
    #[arg(long, env = "PROXYMESHD_IDLE_TIMEOUT", value_name = "SECS")]
    idle_timeout: Option<f64>,
    /// Bytes of fetched copies of other sites' objects kept [default: 4GiB].
    #[arg(long, env = "PROXYMESHD_CACHE_CAP", value_name = "SIZE", value_parser = parse_size)]
    cache_cap: Option<u64>,
    /// Worker threads of the async runtime (1 = single-threaded) [default: number of cores].
    #[arg(long, env = "PROXYMESHD_THREADS", value_name = "N")]
    threads: Option<usize>,
    /// This daemon's mesh credential (pmc1..., from the mesh operator's
    /// `proxymesh mesh admit`), or a file holding it. Required to join a mesh.
    #[arg(long, env = "PROXYMESHD_CREDENTIAL", value_name = "CRED|FILE")]
    credential: Option<String>,
    /// Join an open mesh without credentials: every peer that connects is
    /// served. For labs only.
    #[arg(long, env = "PROXYMESHD_OPEN_MESH", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    open_mesh: Option<bool>,
    /// Seconds between asking the relays for the members and the newest
    /// revocation list (revocations reach this daemon within it) [default: 60].
    #[arg(long, env = "PROXYMESHD_DIRECTORY_REFRESH", value_name = "SECS")]
    directory_refresh: Option<f64>,
    /// Bytes of ProxyStore objects each other member may keep stored here
    /// through forwarded sets [default: 4GiB].
    #[arg(long, env = "PROXYMESHD_PEER_WRITE_QUOTA", value_name = "SIZE", value_parser = parse_size)]
    peer_write_quota: Option<u64>,
    /// A Unix group (name or gid) whose members may use the local API besides
    /// this daemon's own user [default: none, only this user].
    #[arg(long, env = "PROXYMESHD_API_GROUP", value_name = "GROUP")]
    api_group: Option<String>,
    /// Also serve the local API on this Unix socket, or `off` [default:
    /// api.sock in the data directory]. The SDK's fastest way in.
    #[arg(long, env = "PROXYMESHD_API_SOCKET", value_name = "PATH|off")]
    api_socket: Option<String>,
    /// Create the identity in the data directory if needed, print its peer ID
    /// (what the mesh operator admits) and exit.
    #[arg(long)]
    print_peer_id: bool,
}

impl Args {
    fn into_config(self) -> anyhow::Result<(Config, Option<usize>)> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.data_dir {
            cfg.data_dir = v;
        }
        if let Some(v) = self.api {
            let v = v.trim_start_matches("http://").trim_end_matches('/');
            cfg.api = v.parse().map_err(|_| {
                anyhow::anyhow!("invalid --api {v:?}: expected IP:PORT, e.g. 127.0.0.1:7878")
            })?;
        }
        if let Some(v) = self.memory_cap {
            cfg.memory_cap = v;
        }
        if let Some(v) = self.inline_limit {
            cfg.inline_limit = v;
        }
        if let Some(v) = self.max_object_size {
            cfg.max_object_size = Some(v);
        }
        if let Some(v) = self.persist {
            cfg.persist = v;
        }
        if let Some(v) = self.proxystore_name {
            cfg.proxystore_name = Some(v);
        }
        if let Some(v) = self.log {
            cfg.log = v;
        }
        if !self.relays.is_empty() {
            cfg.relays = self.relays;
        }
        if let Some(v) = self.listen_port {
            cfg.listen_port = Some(v);
        }
        if let Some(v) = self.listen_host {
            cfg.listen_host = v;
        }
        if !self.external_addresses.is_empty() {
            cfg.external_addresses = self.external_addresses;
        }
        if let Some(v) = self.connect_timeout {
            cfg.connect_timeout = v;
        }
        if let Some(v) = self.hole_punch_timeout {
            cfg.hole_punch_timeout = v;
        }
        if let Some(v) = self.idle_timeout {
            cfg.idle_timeout = v;
        }
        if let Some(v) = self.cache_cap {
            cfg.cache_cap = v;
        }
        if let Some(v) = self.credential {
            cfg.credential = Some(v);
        }
        if let Some(v) = self.open_mesh {
            cfg.open_mesh = v;
        }
        if let Some(v) = self.directory_refresh {
            cfg.directory_refresh = v;
        }
        if let Some(v) = self.peer_write_quota {
            cfg.peer_write_quota = v;
        }
        if let Some(v) = self.api_group {
            cfg.api_group = Some(v);
        }
        if let Some(v) = self.api_socket {
            cfg.api_socket = Some(v);
        }
        if self.print_peer_id {
            return Ok((cfg, None));
        }
        cfg.validate()?;
        Ok((cfg, self.threads))
    }
}

fn main() -> ExitCode {
    // Everything the daemon writes (identity, objects, spill files) is its
    // user's alone.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let args = Args::parse();
    if args.print_peer_id {
        return print_peer_id(args);
    }
    let (config, threads) = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("proxymeshd: {e:#}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|e| {
        eprintln!(
            "proxymeshd: invalid log filter {:?} ({e}); using info",
            config.log
        );
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxymeshd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_peer_id(args: Args) -> ExitCode {
    let config = match args.into_config() {
        Ok((c, _)) => c,
        Err(e) => {
            eprintln!("proxymeshd: {e:#}");
            return ExitCode::from(2);
        }
    };
    match proxymesh_daemon::identity::Identity::load_or_create(&config.data_dir) {
        Ok(id) => {
            println!("{}", id.peer_id());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("proxymeshd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let persist = config.persist;
    let data_dir = config.data_dir.clone();
    let daemon = Daemon::start(config).await?;
    // Machine-readable start banner on stdout (logs go to stderr).
    println!("proxymeshd {}", env!("CARGO_PKG_VERSION"));
    println!("peer id:  {}", daemon.peer_id());
    println!("endpoint: {}", daemon.uuid());
    if let Some(mesh) = daemon.mesh() {
        let status = mesh.status();
        match status.mesh_id {
            Some(id) => println!("mesh id:  {id}"),
            None => println!("mesh id:  OPEN (no credentials; every peer is served)"),
        }
    }
    println!("api:      http://{}", daemon.api_addr());
    if let Some(path) = daemon.api_socket() {
        println!("socket:   unix:{}", path.display());
    }
    if let Some(mesh) = daemon.mesh() {
        for a in mesh.status().listen_addrs {
            println!("mesh:     {a}");
        }
    }
    println!(
        "data dir: {} ({})",
        data_dir.display(),
        if persist {
            "objects persist across restarts"
        } else {
            "objects removed at exit"
        }
    );
    println!("ready");
    wait_for_signal().await?;
    tracing::info!("shutting down");
    daemon.shutdown().await
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
