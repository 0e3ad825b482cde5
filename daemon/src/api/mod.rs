//! The daemon's local HTTP API: proxymesh's native `/v1` routes (contract in
//! [`proxymesh::api`]) and ProxyStore 1.x's endpoint routes, served by axum on
//! a loopback address and on a Unix socket, where [`quick`] also serves the
//! SDK's small gets without HTTP. Handlers are thin: they parse input, hand it to the
//! [object service](crate::service) (which decides what the caller may do
//! and where the bytes live), stream bodies in and out, and map failures to
//! clear 4xx/5xx answers. Every caller that got past [`server`] is the
//! daemon's user: [`Caller::Local`].
//!
//! # Who may use it
//!
//! The API belongs to the daemon's Unix user (and, optionally, one group the
//! operator names); native and ProxyStore routes alike. It is enforced in
//! three places:
//! - [`server`]: the listener is loopback only (unless explicitly allowed),
//!   the Unix socket is its user's (0600), and every accepted connection's
//!   caller is identified by the kernel ([`peer`]; `SO_PEERCRED` on the
//!   socket); other users get 403 and the connection closes. Connection
//!   count, header and idle timeouts are bounded there too.
//! - [`router`]'s first layer ([`browser_guard`]): requests whose `Host`
//!   is not a loopback address or `localhost` (DNS rebinding), or that come
//!   from a web browser (an `Origin` header, or `Sec-Fetch-Site:
//!   cross-site`/`same-site`) get 403. The SDK and ProxyStore's Python
//!   client send neither.
//! - the SDK checks the other way round that the server is the daemon of its
//!   own user ([`proxymesh::localpeer`]), so a squatter on the port gets
//!   nothing.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use proxymesh::api::{ApiError, ErrorCode};
use uuid::Uuid;

use crate::service::{self, Objects};
use crate::storage::StorageError;

#[cfg(doc)]
use crate::service::Caller;

pub mod metrics;
mod native;
pub mod peer;
mod proxystore;
pub mod quick;
pub mod server;
pub mod ui;

/// Chunk size for streaming objects out of disk files.
pub const STREAM_CHUNK: usize = 256 * 1024;
/// Largest JSON body accepted by the batch routes.
const JSON_LIMIT: usize = 16 << 20;

/// What every handler can see.
#[derive(Debug)]
pub struct AppState {
    /// Every object operation goes through here (authorization included).
    pub objects: Objects,
    /// When the daemon started.
    pub started: Instant,
    /// The API's bound address, as shown in status.
    pub api_addr: String,
    /// The API's Unix socket (`unix:PATH`), as shown in status.
    pub api_socket: Option<String>,
    /// The data directory, as shown in status.
    pub data_dir: String,
    /// Counted events, served at `/metrics` with the state of the moment.
    pub metrics: Arc<crate::metrics::Metrics>,
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
        .route("/metrics", get(metrics::scrape))
        .route("/ui", get(ui::page))
        .layer(DefaultBodyLimit::max(JSON_LIMIT));
    streaming
        .merge(small)
        .fallback(not_routed)
        .layer(axum::middleware::from_fn(browser_guard))
        // Outermost: requests the guard refuses are counted too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .with_state(state)
}

/// Refuse requests a web page could have made (see [`check_origin`]),
/// before any route sees them.
pub async fn browser_guard(req: Request, next: Next) -> Response {
    if let Err(failure) = check_origin(req.headers(), req.uri()) {
        tracing::warn!(uri = %req.uri(), "refused a request: {}", failure.message());
        let mut body = req.into_body().into_data_stream();
        drain(&mut body).await;
        return failure.into_response();
    }
    next.run(req).await
}

/// `Sec-Fetch-Site`, sent by browsers.
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Check that a request names this machine's loopback and does not come
/// from a web browser:
/// - `Host` (and an absolute request URI's authority) must be a loopback
///   literal (`127.x.y.z`, `[::1]`) or `localhost`, with any port: a page
///   that rebinds its DNS name to 127.0.0.1 still sends its own name;
/// - no `Origin` header (browsers send it on cross-origin and on all
///   non-GET requests; our clients never do);
/// - no `Sec-Fetch-Site: cross-site` or `same-site`.
///
/// A request without `Host` (HTTP/1.0) passes: browsers always send one.
pub fn check_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), Failure> {
    let mut hosts = headers.get_all(HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() {
            return Err(Failure::forbidden(
                "refused: more than one Host header".to_string(),
            ));
        }
        let host = String::from_utf8_lossy(host.as_bytes());
        if !is_loopback_host(&host) {
            return Err(Failure::forbidden(format!(
                "refused: Host {host:?} is not a loopback address or localhost; the local API \
                 answers only requests addressed to this machine's loopback (a web page using \
                 DNS rebinding would name its own host)"
            )));
        }
    }
    if let Some(authority) = uri.authority() {
        if !is_loopback_host(authority.as_str()) {
            return Err(Failure::forbidden(format!(
                "refused: request URI names {authority}, not a loopback address or localhost"
            )));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        return Err(Failure::forbidden(format!(
            "refused: a request with an Origin header ({}) comes from a web browser; the local \
             API does not serve web pages",
            String::from_utf8_lossy(origin.as_bytes())
        )));
    }
    if let Some(site) = headers.get(SEC_FETCH_SITE) {
        let site = site.as_bytes();
        if site.eq_ignore_ascii_case(b"cross-site") || site.eq_ignore_ascii_case(b"same-site") {
            return Err(Failure::forbidden(
                "refused: a cross-site request from a web browser (Sec-Fetch-Site); the local \
                 API does not serve web pages"
                    .to_string(),
            ));
        }
    }
    Ok(())
}

/// Whether `host` (a `Host` value: name or address, optional `:port`) is a
/// loopback literal or `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    let valid_port =
        |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
        return port_ok
            && ip
                .parse::<std::net::Ipv6Addr>()
                .is_ok_and(|ip| std::net::IpAddr::V6(ip).to_canonical().is_loopback());
    }
    let name = match host.split_once(':') {
        Some((name, port)) if valid_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
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

    /// 403 Forbidden: the caller may not use this daemon's API.
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, msg)
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

impl From<service::Error> for Failure {
    fn from(e: service::Error) -> Self {
        use service::Error as E;
        let (status, code) = match e {
            E::Storage(inner) => return inner.into(),
            E::Mesh(inner) => return (*inner).into(),
            E::NotFound(what) => return Self::not_found(what),
            E::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            E::Denied(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            E::WrongPeer(_) => (StatusCode::CONFLICT, ErrorCode::WrongPeer),
            E::NoRoute(_) => (StatusCode::BAD_GATEWAY, ErrorCode::Unreachable),
            E::Incomplete(_) => (StatusCode::BAD_REQUEST, ErrorCode::IncompleteBody),
            E::Corrupt(_) => (StatusCode::CONFLICT, ErrorCode::Corrupt),
            E::Unsatisfiable(_) => (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::BadRequest),
        };
        Self::new(status, code, e.to_string())
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
            M::Refused { .. } | M::NotMember { .. } | M::Protocol { .. } => {
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

/// The outcome of an operation that consumed (part of) a request body: on
/// failure, the rest of the body is [drained](drain) so the client reads the
/// error instead of a connection reset.
pub async fn settle<T, S, E>(result: Result<T, service::Error>, body: &mut S) -> Result<T, Failure>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    if result.is_err() {
        drain(body).await;
    }
    result.map_err(Failure::from)
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

/// The PID file ProxyStore 1.x looks for in an endpoint's directory, beside
/// its `config.toml` (`proxystore.endpoint.config.ENDPOINT_PID_FILE`).
pub const PROXYSTORE_PID_FILE: &str = "daemon.pid";

/// This process's PID in an endpoint directory's [`PROXYSTORE_PID_FILE`]:
/// `proxystore-endpoint list` shows an endpoint as RUNNING only while that
/// file names a live process (`psutil.pid_exists`), as STOPPED without it and
/// as HANGING when the process is gone. Written beside the config
/// [`write_proxystore_config`] wrote; removed when dropped (at the daemon's
/// clean shutdown), but only if it still holds this process's PID: another
/// daemon may have taken the endpoint name since. A daemon that crashed
/// leaves it behind, and ProxyStore then rightly says HANGING.
#[derive(Debug)]
pub struct ProxyStorePidFile {
    path: std::path::PathBuf,
    pid: u32,
}

impl ProxyStorePidFile {
    /// Write this process's PID to `dir/daemon.pid`, replacing any (a
    /// reader never sees it half written).
    pub fn write(dir: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let pid = std::process::id();
        let path = dir.join(PROXYSTORE_PID_FILE);
        let tmp = dir.join(format!(".{PROXYSTORE_PID_FILE}.{pid}"));
        std::fs::write(&tmp, format!("{pid}\n"))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("cannot write {}", path.display()));
        }
        Ok(Self { path, pid })
    }

    /// Where it is.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for ProxyStorePidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|held| held.trim().parse::<u32>() == Ok(self.pid));
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                let path = self.path.display();
                tracing::warn!(%path, "cannot remove the ProxyStore PID file: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn proxystore_pid_file_names_this_process_and_goes_only_if_still_ours() {
        let dir = tempfile::tempdir().unwrap();
        let file = ProxyStorePidFile::write(dir.path()).unwrap();
        let path = dir.path().join(PROXYSTORE_PID_FILE);
        assert_eq!(file.path(), path);
        let held = std::fs::read_to_string(&path).unwrap();
        assert_eq!(held.trim(), std::process::id().to_string());
        drop(file);
        assert!(!path.exists(), "removed when dropped");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no leftovers"
        );

        // Another daemon took the name since: its PID file stays.
        let file = ProxyStorePidFile::write(dir.path()).unwrap();
        std::fs::write(&path, "4194304\n").unwrap();
        drop(file);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4194304\n");
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:7878",
            "127.9.8.7:1",
            "localhost",
            "LocalHost:7878",
            "[::1]",
            "[::1]:7878",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7878",
            "localhost.evil.example",
            "a.localhost",
            "localhost.",
            "127.0.0.1.evil.example",
            "10.0.0.1:7878",
            "0.0.0.0:7878",
            "[::]:7878",
            "[::1",
            "[::1]7878",
            "127.0.0.1:",
            "127.0.0.1:x",
            "127.0.0.1:7878:1",
            "",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn browsers_and_foreign_hosts_are_refused() {
        let uri: Uri = "/v1/status".parse().unwrap();
        check_origin(&headers(&[("host", "127.0.0.1:7878")]), &uri).unwrap();
        check_origin(&headers(&[]), &uri).unwrap();
        check_origin(
            &headers(&[("host", "localhost:7878"), ("sec-fetch-site", "none")]),
            &uri,
        )
        .unwrap();
        let refused = |h: &[(&str, &str)], uri: &Uri| {
            let f = check_origin(&headers(h), uri).unwrap_err();
            assert_eq!(f.status(), StatusCode::FORBIDDEN);
            assert_eq!(f.body.code, ErrorCode::Forbidden);
            f.message().to_string()
        };
        assert!(refused(&[("host", "evil.example")], &uri).contains("evil.example"));
        assert!(refused(
            &[
                ("host", "127.0.0.1:7878"),
                ("origin", "http://evil.example")
            ],
            &uri
        )
        .contains("Origin"));
        assert!(refused(
            &[("host", "127.0.0.1:7878"), ("sec-fetch-site", "cross-site")],
            &uri
        )
        .contains("cross-site"));
        refused(
            &[("host", "127.0.0.1:7878"), ("sec-fetch-site", "same-site")],
            &uri,
        );
        refused(&[("host", "127.0.0.1"), ("host", "evil.example")], &uri);
        let absolute: Uri = "http://evil.example/v1/status".parse().unwrap();
        assert!(refused(&[("host", "127.0.0.1")], &absolute).contains("evil.example"));
    }
}
