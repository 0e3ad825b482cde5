//! The daemon's local HTTP API: proxymesh's native `/v1` routes (contract in
//! [`proxymesh::api`]) and ProxyStore 1.x's endpoint routes, served by axum on
//! a loopback address. Handlers are thin: they parse input, stream bodies
//! into and out of [`Storage`], and map failures to clear 4xx/5xx answers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use libp2p_identity::PeerId;
use proxymesh::api::{ApiError, ErrorCode};
use uuid::Uuid;

use crate::storage::{ObjectName, ObjectWriter, Storage, StorageError};

mod native;
mod proxystore;

/// Chunk size for streaming objects out of disk files.
pub const STREAM_CHUNK: usize = 256 * 1024;
/// Largest JSON body accepted by the batch routes.
const JSON_LIMIT: usize = 16 << 20;

/// What every handler can see.
#[derive(Debug)]
pub struct AppState {
    /// The object store.
    pub storage: Arc<Storage>,
    /// The mesh node, when the daemon joined a mesh.
    pub mesh: Option<crate::mesh::Mesh>,
    /// This daemon's peer ID.
    pub peer_id: PeerId,
    /// This daemon's ProxyStore endpoint UUID.
    pub uuid: Uuid,
    /// Derives the owner capabilities of this daemon's objects.
    pub owners: Arc<crate::identity::OwnerSecret>,
    /// When the daemon started.
    pub started: Instant,
    /// The API's bound address, as shown in status.
    pub api_addr: String,
    /// The data directory, as shown in status.
    pub data_dir: String,
}

impl AppState {
    /// The mesh node, for requests already resolved to another daemon (such
    /// targets exist only when the daemon is in a mesh).
    fn mesh(&self) -> &crate::mesh::Mesh {
        self.mesh
            .as_ref()
            .expect("remote targets exist only with a mesh")
    }
}

/// The full router.
pub fn router(state: Arc<AppState>) -> Router {
    let streaming = Router::new()
        .route(proxymesh::api::OBJECTS, post(native::put))
        .route(
            "/v1/objects/{key}",
            get(native::get)
                .head(native::head)
                .put(native::set)
                .delete(native::evict),
        )
        .route(proxymesh::api::BATCH_PUT, post(native::batch_put))
        .route("/set", post(proxystore::set))
        .layer(DefaultBodyLimit::disable());
    let small = Router::new()
        .route(proxymesh::api::STATUS, get(native::status))
        .route(proxymesh::api::KEYS, post(native::new_key))
        .route(proxymesh::api::BATCH_GET, post(native::batch_get))
        .route(proxymesh::api::BATCH_EXISTS, post(native::batch_exists))
        .route(proxymesh::api::BATCH_EVICT, post(native::batch_evict))
        .route("/", get(|| async { StatusCode::OK }))
        .route("/endpoint", get(proxystore::endpoint))
        .route("/exists", get(proxystore::exists))
        .route("/get", get(proxystore::get))
        .route("/evict", post(proxystore::evict))
        .layer(DefaultBodyLimit::max(JSON_LIMIT));
    streaming
        .merge(small)
        .fallback(not_routed)
        .with_state(state)
}

async fn not_routed() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        ErrorCode::BadRequest,
        "no such route; the local API is documented in the proxymesh README (`/v1/...` and ProxyStore's `/get`, `/set`, ...)",
    )
}

/// A failed request: status, class and message, rendered as JSON [`ApiError`].
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    body: ApiError,
}

impl Failure {
    /// A failure with an explicit status.
    pub fn new(status: StatusCode, code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            body: ApiError {
                code,
                error: msg.into(),
            },
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, msg)
    }

    /// 404 for a missing object.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no object {what} on this daemon"),
        )
    }

    /// The body ended before the object was complete.
    pub fn incomplete(err: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::IncompleteBody,
            format!("request body ended early or failed ({err}); nothing was stored"),
        )
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.body.error
    }
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        let (status, code) = match &e {
            StorageError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge),
            StorageError::Full(_) => (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::StorageFull),
            StorageError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "storage failure");
        } else {
            tracing::warn!(error = %e, "request refused");
        }
        Self::new(status, code, format!("{e}; nothing was stored"))
    }
}

impl From<crate::mesh::MeshError> for Failure {
    fn from(e: crate::mesh::MeshError) -> Self {
        use crate::mesh::MeshError as M;
        let (status, code) = match &e {
            M::NotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            M::Unreachable { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::Unreachable),
            M::TimedOut { .. } => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::TimedOut),
            M::Corrupt { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::Corrupt),
            M::Refused { .. } | M::Protocol { .. } => {
                (StatusCode::BAD_GATEWAY, ErrorCode::PeerError)
            }
            M::Storage(_) => {
                let M::Storage(inner) = e else { unreachable!() };
                return inner.into();
            }
        };
        tracing::warn!(error = %e, "remote operation failed");
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// Stream a request body into a new object under `name`. On any failure the
/// writer is dropped, so nothing half-written becomes visible, and the rest
/// of the body is [drained](drain) so the client reads the error instead of a
/// connection reset.
pub async fn store_body<S, E>(
    storage: &Storage,
    name: ObjectName,
    declared_len: Option<u64>,
    mut body: S,
) -> Result<crate::storage::ObjectMeta, Failure>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let result = write_body(storage, name, declared_len, &mut body).await;
    if result.is_err() {
        drain(&mut body).await;
    }
    result
}

async fn write_body<S, E>(
    storage: &Storage,
    name: ObjectName,
    declared_len: Option<u64>,
    body: &mut S,
) -> Result<crate::storage::ObjectMeta, Failure>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut writer: ObjectWriter = storage.writer(name, declared_len)?;
    let mut received: u64 = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Failure::incomplete)?;
        received += chunk.len() as u64;
        writer.write(chunk).await?;
    }
    if let Some(len) = declared_len {
        if received != len {
            return Err(Failure::incomplete(format!(
                "got {received} of {len} declared bytes"
            )));
        }
    }
    Ok(writer.commit().await?)
}

/// Most bytes read and discarded from a refused request body.
const DRAIN_LIMIT: usize = 256 << 20;
/// Longest time spent draining a refused request body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(3);

/// Read and discard what is left of a refused request body (bounded by
/// [`DRAIN_LIMIT`] and [`DRAIN_TIME`]). Closing a connection with unread
/// request bytes makes the kernel send a reset, which destroys the error
/// answer before the client reads it; draining first lets it arrive.
pub async fn drain<S, E>(body: &mut S)
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut drained = 0usize;
    while drained < DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len(),
            _ => break,
        }
    }
}

/// The `content-length` of a request, if declared.
pub fn declared_len(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Write a ProxyStore endpoint config (`$PROXYSTORE_HOME/<name>/config.toml`,
/// else `$XDG_DATA_HOME/proxystore/<name>/config.toml`, else
/// `~/.local/share/proxystore/<name>/config.toml`) pointing at this daemon, so
/// Python ProxyStore's `EndpointConnector([uuid])` finds it. Returns the path.
pub fn write_proxystore_config(
    name: &str,
    uuid: Uuid,
    addr: std::net::SocketAddr,
) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let home = std::env::var_os("PROXYSTORE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| dirs::data_dir().map(|d| d.join("proxystore")))
        .context("cannot find a home for the ProxyStore endpoint config; set PROXYSTORE_HOME")?;
    let dir = home.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = format!(
        "name = \"{name}\"\nuuid = \"{uuid}\"\nhost = \"{}\"\nport = {}\nhost_type = \"ip\"\n",
        addr.ip(),
        addr.port()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
