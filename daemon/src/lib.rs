//! # proxymesh-daemon
//!
//! `proxymeshd` is the per-site daemon of proxymesh. Applications at a site
//! hand it objects through the SDK (crate `proxymesh`) over its local API
//! (HTTP on loopback and on a Unix socket, plus a quick protocol for small
//! gets on the socket); it keeps them in memory, spilling large objects and overflow to its
//! data directory, and answers gets by streaming them back. Each daemon has a
//! persistent libp2p identity: its peer ID is part of every key it hands out,
//! so a key says which site holds the bytes. With relays configured, daemons
//! form a mesh: a get of another site's key makes this daemon dial that
//! site's daemon (through a relay, then hole-punched direct), stream the
//! bytes straight from it, verify and cache them. The daemon also serves
//! ProxyStore 1.x's endpoint REST routes, so Python ProxyStore code can use it.
//!
//! Modules, one concern each:
//! - [`config`]: defaults, TOML file, environment and flags;
//! - [`identity`]: the persistent keypair, endpoint UUID and data-dir lock;
//! - [`storage`]: the streaming object store (no sockets);
//! - [`mesh`]: the libp2p node (relays, hole punching, discovery) and the
//!   fetch protocol that moves objects between daemons;
//! - [`service`]: the object service every door goes through, and the one
//!   table of who may do what;
//! - [`api`]: the HTTP routes (native and ProxyStore) and the socket's quick
//!   protocol, thin over [`service`];
//! - [`cli`]: the `proxymesh` client command line.
//!
//! The daemon can be embedded (the examples and tests do):
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use proxymesh_daemon::{config::Config, Daemon};
//! let daemon = Daemon::start(Config { api: "127.0.0.1:0".parse()?, ..Config::default() }).await?;
//! println!("peer {} at http://{}", daemon.peer_id(), daemon.api_addr());
//! daemon.shutdown().await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use libp2p_identity::PeerId;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod api;
pub mod cli;
pub mod config;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod service;
pub mod storage;

use api::peer::Access;
use api::server::ApiOptions;
use api::AppState;
use config::Config;
use identity::{DirLock, Identity};
use storage::Storage;

/// How long shutdown waits for in-flight requests before cutting them off.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    api_addr: SocketAddr,
    api_socket: Option<std::path::PathBuf>,
    identity: Identity,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
    /// ProxyStore's PID file beside the endpoint config, with
    /// `proxystore_name`: removed at shutdown.
    proxystore_pid: Option<api::ProxyStorePidFile>,
    _lock: DirLock,
}

impl Daemon {
    /// Start a daemon: lock the data directory, load the identity, open
    /// storage and start serving the local API, with the default
    /// [`ApiOptions`] (loopback only, the daemon's own user only).
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let api = ApiOptions {
            group: config.api_group.clone(),
            ..ApiOptions::default()
        };
        Self::start_with(config, api).await
    }

    /// [`start`](Self::start) with explicit local API options: who may use
    /// it besides the daemon's user, whether a non-loopback address is
    /// allowed, connection cap and timeouts. Refuses a non-loopback
    /// `config.api` unless `api.allow_remote`, and an unknown `api.group`.
    pub async fn start_with(config: Config, api: ApiOptions) -> anyhow::Result<Self> {
        config.validate()?;
        api.check_addr(config.api)?;
        let access = Arc::new(Access::new(api.group.as_deref())?);
        if let Some(group) = access.group() {
            tracing::info!(group = %group.name, gid = group.gid, "the local API also serves this group's members");
        }
        let lock = DirLock::acquire(&config.data_dir)?;
        let identity = Identity::load_or_create(&config.data_dir)?;
        let storage =
            Arc::new(Storage::open(config.storage()).await.with_context(|| {
                format!("cannot open storage in {}", config.data_dir.display())
            })?);
        let local = Arc::new(service::LocalObjects::new(
            storage,
            identity.owners.clone(),
            config.peer_write_quota,
        ));
        let metrics = Arc::new(metrics::Metrics::new());
        let mesh = match config.mesh()? {
            Some(mesh_config) => Some(
                mesh::Mesh::start(
                    identity.keypair.clone(),
                    local.clone(),
                    mesh_config,
                    metrics.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.api).await.with_context(|| {
            format!(
                "cannot listen on {} (is another proxymeshd running there? pick another with --api)",
                config.api
            )
        })?;
        let api_addr = listener.local_addr()?;
        let (unix, api_socket) = match config.api_socket_path() {
            Some(path) => {
                let explicit = config.api_socket.is_some();
                match bind_api_socket(&path, explicit, access.group().map(|g| g.gid))? {
                    Some(l) => (Some(l), Some(path)),
                    None => (None, None),
                }
            }
            None => (None, None),
        };
        let proxystore_pid = match &config.proxystore_name {
            Some(name) => {
                let path = api::write_proxystore_config(name, identity.uuid, api_addr)?;
                tracing::info!(path = %path.display(), "wrote ProxyStore endpoint config");
                // So `proxystore-endpoint list` shows the endpoint RUNNING.
                let dir = path.parent().unwrap_or(std::path::Path::new("."));
                Some(api::ProxyStorePidFile::write(dir)?)
            }
            None => None,
        };
        let state = Arc::new(AppState {
            objects: service::Objects::new(local, mesh, identity.peer_id(), identity.uuid),
            started: Instant::now(),
            api_addr: api_addr.to_string(),
            api_socket: api_socket.as_ref().map(|p| format!("unix:{}", p.display())),
            data_dir: config.data_dir.display().to_string(),
            metrics,
        });
        let app = api::router(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = state.clone();
        let server = tokio::spawn(async move {
            api::server::serve(listener, unix, app, served, access, &api, async move {
                let _ = stopped.await;
            })
            .await
        });
        tracing::info!(peer_id = %identity.peer_id(), api = %api_addr, "proxymeshd started");
        Ok(Self {
            api_addr,
            api_socket,
            identity,
            state,
            stop: Some(stop),
            server,
            proxystore_pid,
            _lock: lock,
        })
    }

    /// The bound local API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The local API's Unix socket, if served.
    pub fn api_socket(&self) -> Option<&std::path::Path> {
        self.api_socket.as_deref()
    }

    /// This daemon's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.identity.peer_id()
    }

    /// This daemon's ProxyStore endpoint UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.identity.uuid
    }

    /// The object store.
    pub fn storage(&self) -> &Storage {
        self.state.objects.storage()
    }

    /// The mesh node, when the daemon joined a mesh.
    pub fn mesh(&self) -> Option<&mesh::Mesh> {
        self.state.objects.mesh()
    }

    /// Stop serving (in-flight requests get [`SHUTDOWN_GRACE`]) and clean up
    /// storage (objects are removed unless `persist` is set).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(joined) => joined.context("API server task failed")??,
            Err(_) => {
                tracing::warn!(
                    "in-flight requests did not finish within {SHUTDOWN_GRACE:?}; closing them"
                );
                self.server.abort();
            }
        }
        if let Some(path) = &self.api_socket {
            let _ = std::fs::remove_file(path);
        }
        if let Some(mesh) = self.state.objects.mesh() {
            mesh.shutdown();
        }
        self.state.objects.storage().shutdown().await?;
        // Removed (if still ours) when dropped; dropped on the error paths too.
        drop(self.proxystore_pid.take());
        tracing::info!("proxymeshd stopped");
        Ok(())
    }
}

/// Longest Unix socket path the kernel takes (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Listen on the local API's Unix socket at `path`, readable and writable
/// by this user only (and by `group`, when the API serves one). A leftover
/// socket nobody answers on is replaced; one that answers is another
/// daemon's, and a file that is not a socket is never touched. A path too
/// long for a socket is an error when given (`explicit`), else the socket
/// is skipped with a warning (the TCP address still serves).
fn bind_api_socket(
    path: &std::path::Path,
    explicit: bool,
    group: Option<u32>,
) -> anyhow::Result<Option<tokio::net::UnixListener>> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        let why = format!(
            "the Unix socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH} a socket takes",
            path.display()
        );
        if explicit {
            anyhow::bail!("{why}; pick a shorter one with --api-socket");
        }
        tracing::warn!("{why}; the local API is served on TCP only (set a shorter --api-socket)");
        return Ok(None);
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; refusing to replace it (pick another --api-socket)",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another process serves the Unix socket {} (is another proxymeshd running? \
                 pick another with --api-socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the Unix socket {}", path.display()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot restrict the Unix socket {}", path.display()))?;
    if let Some(gid) = group {
        if let Err(e) = std::os::unix::fs::chown(path, None, Some(gid)) {
            tracing::warn!(path = %path.display(), gid, error = %e, "cannot give the API group the Unix socket; its members use the TCP address");
        }
    }
    Ok(Some(listener))
}
