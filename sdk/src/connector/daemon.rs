//! [`DaemonConnector`]: objects held by the local `proxymeshd`, reached over
//! its HTTP API ([`crate::api`]), on its Unix socket or its TCP address.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::quick::{Answer, QuickClient};
use super::{ByteStream, Connector, ConnectorConfig};
use crate::api::{self, ApiError, ErrorCode};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::localpeer::{self, TrustedUid};

/// How long to wait for a TCP connection to the daemon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Largest error body read from the daemon.
const MAX_ERROR_BODY: usize = 64 * 1024;

type FrameStream = futures::stream::MapOk<ByteStream, fn(Bytes) -> Frame<Bytes>>;
type ReqBody = Either<Full<Bytes>, StreamBody<FrameStream>>;
type HttpClient = Client<CheckedConnector, ReqBody>;

fn full(data: Bytes) -> ReqBody {
    Either::Left(Full::new(data))
}

fn empty() -> ReqBody {
    Either::Left(Full::new(Bytes::new()))
}

fn streamed(stream: ByteStream) -> ReqBody {
    Either::Right(StreamBody::new(
        stream.map_ok(Frame::data as fn(Bytes) -> Frame<Bytes>),
    ))
}

fn new_client(trusted: TrustedUid, socket: Option<Arc<PathBuf>>) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(CheckedConnector {
            inner: conn,
            socket,
            trusted,
        })
}

/// Opens connections to the daemon (to its Unix socket if `socket`, else
/// TCP) and, before the client writes a byte on one, checks who accepted
/// it: the server must run as our own effective uid (or the uid in
/// [`localpeer::TRUST_UID_ENV`], besides). On TCP the kernel is asked who
/// holds the server socket ([`localpeer::check_server`], loopback only); on
/// the Unix socket it tells the server's credentials with the connection.
/// Another user's process squatting on the daemon's address is named in the
/// error and receives nothing.
#[derive(Clone)]
struct CheckedConnector {
    inner: HttpConnector,
    socket: Option<Arc<PathBuf>>,
    trusted: TrustedUid,
}

type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// A connection to the daemon: TCP (left) or its Unix socket (right).
type Stream = tokio_util::either::Either<tokio::net::TcpStream, tokio::net::UnixStream>;

/// What the HTTP client drives: a [`Stream`].
struct ApiIo(TokioIo<Stream>);

impl Connection for ApiIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for ApiIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ApiIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connect to the daemon's Unix socket at `path` and check who serves it.
async fn connect_unix(path: &std::path::Path, trusted: TrustedUid) -> io::Result<ApiIo> {
    let stream = super::quick::connect_checked(path, trusted).await?;
    Ok(ApiIo(TokioIo::new(Stream::Right(stream))))
}

impl tower_service::Service<Uri> for CheckedConnector {
    type Response = ApiIo;
    type Error = ConnectError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), ConnectError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let trusted = self.trusted;
        if let Some(path) = self.socket.clone() {
            return Box::pin(async move { Ok(connect_unix(&path, trusted).await?) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            let tcp = io.into_inner();
            let (local, server) = (tcp.local_addr()?, tcp.peer_addr()?);
            localpeer::check_server(local, server, trusted)?;
            Ok(ApiIo(TokioIo::new(Stream::Left(tcp))))
        })
    }
}

struct Inner {
    /// The API address as given (normalised to `http://host:port` or
    /// `unix:PATH`), for messages.
    api: String,
    authority: Authority,
    /// Used everywhere except on the SDK runtime.
    client: HttpClient,
    /// Used on the SDK runtime, so that synchronous proxy resolution never
    /// depends on connections driven by a (blocked) caller's runtime.
    sdk_client: HttpClient,
    /// Gets and exists checks without HTTP, on the Unix socket.
    quick: Option<QuickClient>,
}

/// Talks to the local `proxymeshd` over its HTTP API (HTTP/1.1 keep-alive),
/// on its Unix socket (`unix:PATH`, the fastest way in: a small get costs
/// about half what it costs over loopback TCP) or its TCP address
/// (`host:port`, with `TCP_NODELAY`). Objects it stores live in the daemon, and their keys name
/// the daemon's peer ID, so a proxy sent anywhere in the mesh resolves
/// through the receiver's own daemon.
///
/// Cheap to clone (clones share the connection pools). Every method must be
/// called from within a tokio runtime. Large objects should go through
/// [`put_stream`](Connector::put_stream) / [`get_stream`](Connector::get_stream),
/// which never hold the whole object in memory.
///
/// Before a request is written on a new connection, the connector asks the
/// kernel (Linux; see [`localpeer`]) whether the process that accepted it
/// runs as our own effective uid (on TCP, for loopback addresses): another user's process
/// listening on the daemon's port (started before the daemon, or after it
/// died) is refused with an [`Error::Unreachable`] naming that user, and
/// receives no data. To use another user's daemon on purpose, set
/// [`PROXYMESH_TRUST_UID`](localpeer::TRUST_UID_ENV) to that user's uid.
/// Other operating systems and non-loopback addresses are not checked.
#[derive(Clone)]
pub struct DaemonConnector {
    inner: Arc<Inner>,
}

impl fmt::Debug for DaemonConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaemonConnector")
            .field("api", &self.inner.api)
            .finish()
    }
}

impl DaemonConnector {
    /// A connector for the daemon API at `addr`: `unix:PATH` (the daemon's
    /// Unix socket, `api.sock` in its data directory), `host:port` or
    /// `http://host:port`. Nothing is contacted until the first request.
    /// Reads [`PROXYMESH_TRUST_UID`](localpeer::TRUST_UID_ENV) (whose daemon
    /// to trust besides our own user's); a value that is not a uid is a
    /// configuration error.
    ///
    /// ```
    /// use proxymesh::DaemonConnector;
    /// let fast = DaemonConnector::new("unix:/home/alice/.local/share/proxymesh/api.sock")?;
    /// let tcp = DaemonConnector::new("127.0.0.1:7878")?;
    /// assert_eq!(tcp.api_addr(), "http://127.0.0.1:7878");
    /// assert!(fast.api_addr().starts_with("unix:"));
    /// # Ok::<(), proxymesh::Error>(())
    /// ```
    pub fn new(addr: &str) -> Result<Self> {
        let trimmed = addr.trim();
        if let Some(path) = trimmed.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::Config(format!(
                    "malformed daemon API address {addr:?}: expected unix:PATH (the daemon's socket)"
                )));
            }
            let trusted = TrustedUid::from_env().map_err(Error::Config)?;
            let socket = Some(Arc::new(PathBuf::from(path)));
            return Ok(Self {
                inner: Arc::new(Inner {
                    api: format!("unix:{path}"),
                    // The API accepts only loopback `Host`s (DNS rebinding).
                    authority: Authority::from_static("localhost"),
                    client: new_client(trusted, socket.clone()),
                    sdk_client: new_client(trusted, socket),
                    quick: Some(QuickClient::new(PathBuf::from(path), trusted)),
                }),
            });
        }
        let rest = if let Some(rest) = trimmed.strip_prefix("http://") {
            rest
        } else if trimmed.starts_with("https://") {
            return Err(Error::Config(format!(
                "daemon API address {addr:?}: https is not supported; the local API is plain HTTP \
                 (use http://host:port or host:port)"
            )));
        } else {
            trimmed
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let authority: Authority = rest.parse().map_err(|_| {
            Error::Config(format!(
                "malformed daemon API address {addr:?}: expected host:port or http://host:port"
            ))
        })?;
        if authority.port_u16().is_none() || rest.contains('@') || rest.is_empty() {
            return Err(Error::Config(format!(
                "malformed daemon API address {addr:?}: expected host:port or http://host:port"
            )));
        }
        let trusted = TrustedUid::from_env().map_err(Error::Config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                api: format!("http://{authority}"),
                authority,
                client: new_client(trusted, None),
                sdk_client: new_client(trusted, None),
                quick: None,
            }),
        })
    }

    /// A connector for the daemon named by `PROXYMESH_API`
    /// ([`api::API_ENV`]); else the Unix socket of a daemon with the
    /// default data directory ([`api::default_socket`]) if one accepts a
    /// connection there (tried once, now), else [`api::DEFAULT_API_ADDR`].
    pub fn from_env() -> Result<Self> {
        match std::env::var(api::API_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::new(&v).map_err(|e| match e {
                Error::Config(m) => Error::Config(format!("{m} (from {})", api::API_ENV)),
                e => e,
            }),
            _ => {
                // A socket file left by a daemon that died answers nothing:
                // then the TCP default it is.
                let socket = api::default_socket();
                if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                    Self::new(&format!("unix:{}", socket.display()))
                } else {
                    Self::new(api::DEFAULT_API_ADDR)
                }
            }
        }
    }

    /// The daemon's API address, `http://host:port` or `unix:PATH`.
    pub fn api_addr(&self) -> &str {
        &self.inner.api
    }

    /// The daemon's status (`GET /v1/status`).
    pub async fn status(&self) -> Result<api::Status> {
        let resp = self
            .send(Method::GET, api::STATUS.into(), empty(), None)
            .await?;
        self.expect_json(resp).await
    }

    /// Bytes `range` of the object under `key` (`end` is cut to the
    /// object's size), or `None` if there is no such object. The daemon
    /// checks every 16 KiB chunk group against the object's BLAKE3 hash
    /// before it sends a byte of it, and of another site's object only the
    /// range crosses the mesh. A range that starts at or past the end is a
    /// [`Error::Daemon`] with status 416.
    ///
    /// ```no_run
    /// # async fn demo(c: proxymesh::DaemonConnector, key: proxymesh::Key) -> proxymesh::Result<()> {
    /// // The 4 KiB header of a large array, without fetching the array.
    /// let header = c.get_range(&key, 0..4096).await?.expect("exists");
    /// # Ok(()) }
    /// ```
    pub async fn get_range(&self, key: &Key, range: std::ops::Range<u64>) -> Result<Option<Bytes>> {
        if range.is_empty() {
            return Err(Error::Config(format!(
                "empty range {}..{}: ask for at least one byte",
                range.start, range.end
            )));
        }
        let value = HeaderValue::from_str(&format!("bytes={}-{}", range.start, range.end - 1))
            .expect("digits and a dash");
        let resp = self
            .send_with(
                Method::GET,
                api::object_path(key),
                empty(),
                None,
                Some((http::header::RANGE, value)),
            )
            .await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => self.collect(resp).await.map(Some),
            // A daemon that ignored the range sent it all.
            StatusCode::OK => {
                let all = self.collect(resp).await?;
                let end = (range.end.min(all.len() as u64)) as usize;
                let start = (range.start as usize).min(end);
                Ok(Some(all.slice(start..end)))
            }
            StatusCode::NOT_FOUND => {
                let _ = resp.into_body().collect().await;
                Ok(None)
            }
            _ => Err(self.error_from(resp).await),
        }
    }

    /// Like [`put_stream`](Connector::put_stream) but declares the object's
    /// length up front (`content-length`), so the daemon can refuse an
    /// oversized object before any byte is sent. The stream must yield
    /// exactly `len` bytes.
    pub async fn put_stream_with_len(&self, stream: ByteStream, len: u64) -> Result<Key> {
        self.put_streamed(stream, Some(len)).await
    }

    async fn put_streamed(&self, stream: ByteStream, len: Option<u64>) -> Result<Key> {
        // Remember a failure of the caller's stream, to report it as such
        // rather than as a broken connection.
        let failure: Arc<Mutex<Option<io::Error>>> = Arc::default();
        let slot = failure.clone();
        let stream = stream
            .map_err(move |e| {
                let msg = io::Error::new(e.kind(), e.to_string());
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                msg
            })
            .boxed();
        let result = self
            .send(Method::POST, api::OBJECTS.into(), streamed(stream), len)
            .await;
        if let Some(e) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(Error::Io(e));
        }
        let resp: api::PutResponse = self.expect_json(result?).await?;
        Ok(resp.key)
    }

    fn client(&self) -> &HttpClient {
        if crate::runtime::on_sdk_runtime() {
            &self.inner.sdk_client
        } else {
            &self.inner.client
        }
    }

    fn uri(&self, path: String) -> Result<Uri> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.inner.authority.clone());
        parts.path_and_query = Some(
            PathAndQuery::from_maybe_shared(Bytes::from(path))
                .map_err(|e| Error::Config(format!("bad request path: {e}")))?,
        );
        Uri::from_parts(parts).map_err(|e| Error::Config(format!("bad request URI: {e}")))
    }

    fn unreachable(&self, reason: String) -> Error {
        Error::Unreachable {
            api: self.inner.api.clone(),
            reason,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: String,
        body: ReqBody,
        len: Option<u64>,
    ) -> Result<Response<Incoming>> {
        self.send_with(method, path, body, len, None).await
    }

    /// [`send`](Self::send) with one more request header.
    async fn send_with(
        &self,
        method: Method,
        path: String,
        body: ReqBody,
        len: Option<u64>,
        header: Option<(http::HeaderName, HeaderValue)>,
    ) -> Result<Response<Incoming>> {
        let uri = self.uri(path)?;
        // Bodiless idempotent requests are retried once if a pooled
        // connection turns out to be dead (daemon restarted, or the runtime
        // that drove it is gone).
        let retry = matches!(method, Method::GET | Method::HEAD | Method::DELETE)
            .then(|| (method.clone(), uri.clone()));
        let retry = retry.map(|(m, u)| (m, u, header.clone()));
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        if let Some((name, value)) = header {
            req.headers_mut().insert(name, value);
        }
        if let Some(len) = len {
            req.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        let client = self.client();
        match client.request(req).await {
            Ok(resp) => Ok(resp),
            Err(e) if !e.is_connect() && retry.is_some() => {
                let (method, uri, header) = retry.expect("checked above");
                tracing::debug!(api = %self.inner.api, error = %error_chain(&e), "retrying {method} on a fresh connection");
                let mut req = Request::new(empty());
                *req.method_mut() = method;
                *req.uri_mut() = uri;
                if let Some((name, value)) = header {
                    req.headers_mut().insert(name, value);
                }
                client
                    .request(req)
                    .await
                    .map_err(|e| self.unreachable(error_chain(&e)))
            }
            Err(e) => Err(self.unreachable(error_chain(&e))),
        }
    }

    async fn send_json<B: Serialize>(&self, path: &str, body: &B) -> Result<Response<Incoming>> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Serialization(e.to_string()))?;
        let mut req = Request::new(full(Bytes::from(json)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri(path.to_owned())?;
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.client()
            .request(req)
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))
    }

    async fn collect(&self, resp: Response<Incoming>) -> Result<Bytes> {
        resp.into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| {
                self.unreachable(format!(
                    "connection failed while reading the answer: {}",
                    error_chain(&e)
                ))
            })
    }

    /// Parse a 2xx JSON answer, or turn an error answer into [`Error::Daemon`].
    async fn expect_json<T: DeserializeOwned>(&self, resp: Response<Incoming>) -> Result<T> {
        if !resp.status().is_success() {
            return Err(self.error_from(resp).await);
        }
        let body = self.collect(resp).await?;
        serde_json::from_slice(&body).map_err(|e| Error::Daemon {
            api: self.inner.api.clone(),
            status: 200,
            code: ErrorCode::Internal,
            message: format!(
                "unexpected answer from the daemon ({e}); is it the same proxymesh version?"
            ),
        })
    }

    /// Turn a non-2xx answer into [`Error::Daemon`].
    async fn error_from(&self, resp: Response<Incoming>) -> Error {
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        self.error_of(status, &body)
    }

    /// [`Error::Daemon`] from an error status and its body.
    fn error_of(&self, status: StatusCode, body: &[u8]) -> Error {
        let (code, message) = match serde_json::from_slice::<ApiError>(body) {
            Ok(e) => (e.code, e.error),
            Err(_) => {
                let text = String::from_utf8_lossy(body).trim().to_owned();
                let message = if text.is_empty() {
                    status.canonical_reason().unwrap_or("error").to_owned()
                } else {
                    text
                };
                (code_for_status(status), message)
            }
        };
        Error::Daemon {
            api: self.inner.api.clone(),
            status: status.as_u16(),
            code,
            message,
        }
    }

    async fn ask_quick(&self, quick: &QuickClient, op: u8, key: &Key) -> Result<Answer> {
        quick
            .ask(op, &key.to_string())
            .await
            .map_err(|e| self.unreachable(e.to_string()))
    }

    fn quick_error(&self, answer: Answer) -> Error {
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
        self.error_of(status, &answer.body)
    }

    fn mismatch(&self, what: &str, got: usize, want: usize) -> Error {
        Error::Daemon {
            api: self.inner.api.clone(),
            status: 200,
            code: ErrorCode::Internal,
            message: format!("{what}: the daemon answered {got} items for {want} requested"),
        }
    }
}

/// The error class implied by an HTTP status, for answers without a JSON body.
fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 | 422 => ErrorCode::BadRequest,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::WrongPeer,
        413 => ErrorCode::TooLarge,
        507 => ErrorCode::StorageFull,
        502 => ErrorCode::PeerError,
        504 => ErrorCode::TimedOut,
        _ => ErrorCode::Internal,
    }
}

/// An error and all its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_str = s.to_string();
        if !out.contains(&s_str) {
            out.push_str(": ");
            out.push_str(&s_str);
        }
        src = s.source();
    }
    out
}

/// The body of `JSON {"keys": [...]}` without cloning the keys.
#[derive(Serialize)]
struct KeysRef<'a> {
    keys: &'a [Key],
}

/// Parse a batch-get answer ([`api::write_batch_item`] items) without copying
/// the objects out of `body`.
fn parse_batch_items(
    body: Bytes,
    expected: usize,
) -> std::result::Result<Vec<Option<Bytes>>, &'static str> {
    let mut out = Vec::with_capacity(expected);
    let mut pos = 0usize;
    while pos < body.len() {
        match body[pos] {
            0 => {
                out.push(None);
                pos += 1;
            }
            1 => {
                let header = body
                    .get(pos + 1..pos + 9)
                    .ok_or("truncated batch item header")?;
                let len = u64::from_be_bytes(header.try_into().expect("8 bytes"));
                let start = pos + 9;
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|l| start.checked_add(l))
                    .filter(|&e| e <= body.len())
                    .ok_or("truncated batch item")?;
                out.push(Some(body.slice(start..end)));
                pos = end;
            }
            _ => return Err("bad batch item tag"),
        }
    }
    if out.len() != expected {
        return Err("batch answer has the wrong number of items");
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Connector for DaemonConnector {
    async fn put(&self, data: Bytes) -> Result<Key> {
        let resp = self
            .send(Method::POST, api::OBJECTS.into(), full(data), None)
            .await?;
        let resp: api::PutResponse = self.expect_json(resp).await?;
        Ok(resp.key)
    }

    async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        if let Some(quick) = &self.inner.quick {
            let answer = self.ask_quick(quick, api::quick::GET, key).await?;
            return match answer.status {
                200 => Ok(Some(answer.body)),
                404 => Ok(None),
                _ => Err(self.quick_error(answer)),
            };
        }
        let resp = self
            .send(Method::GET, api::object_path(key), empty(), None)
            .await?;
        match resp.status() {
            StatusCode::OK => self.collect(resp).await.map(Some),
            StatusCode::NOT_FOUND => {
                // Drain the small error body so the connection can be reused.
                let _ = resp.into_body().collect().await;
                Ok(None)
            }
            _ => Err(self.error_from(resp).await),
        }
    }

    async fn exists(&self, key: &Key) -> Result<bool> {
        if let Some(quick) = &self.inner.quick {
            let answer = self.ask_quick(quick, api::quick::EXISTS, key).await?;
            return match answer.status {
                200 => Ok(true),
                404 => Ok(false),
                _ => Err(self.quick_error(answer)),
            };
        }
        let resp = self
            .send(Method::HEAD, api::object_path(key), empty(), None)
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.error_from(resp).await),
        }
    }

    async fn evict(&self, key: &Key) -> Result<()> {
        let resp = self
            .send(Method::DELETE, api::owner_path(key), empty(), None)
            .await?;
        match resp.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => {
                let _ = resp.into_body().collect().await;
                Ok(())
            }
            _ => Err(self.error_from(resp).await),
        }
    }

    async fn new_key(&self) -> Result<Key> {
        let resp = self
            .send(Method::POST, api::KEYS.into(), empty(), None)
            .await?;
        let resp: api::KeyResponse = self.expect_json(resp).await?;
        Ok(resp.key)
    }

    async fn set(&self, key: &Key, data: Bytes) -> Result<()> {
        let resp = self
            .send(Method::PUT, api::object_path(key), full(data), None)
            .await?;
        let _: api::PutResponse = self.expect_json(resp).await?;
        Ok(())
    }

    fn config(&self) -> ConnectorConfig {
        ConnectorConfig::Daemon
    }

    async fn put_batch(&self, data: Vec<Bytes>) -> Result<Vec<Key>> {
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let n = data.len();
        let len: u64 = data.iter().map(|d| 8 + d.len() as u64).sum();
        // Stream the frames (header, object, header, object, ...) so the
        // objects are never copied into one buffer.
        let chunks = data.into_iter().flat_map(|d| {
            let header = Bytes::copy_from_slice(&(d.len() as u64).to_be_bytes());
            [Ok(header), Ok(d)]
        });
        let body = streamed(futures::stream::iter(chunks).boxed());
        let resp = self
            .send(Method::POST, api::BATCH_PUT.into(), body, Some(len))
            .await?;
        let resp: api::KeysResponse = self.expect_json(resp).await?;
        if resp.keys.len() != n {
            return Err(self.mismatch("batch put", resp.keys.len(), n));
        }
        Ok(resp.keys)
    }

    async fn get_batch(&self, keys: &[Key]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let resp = self.send_json(api::BATCH_GET, &KeysRef { keys }).await?;
        if !resp.status().is_success() {
            return Err(self.error_from(resp).await);
        }
        let body = self.collect(resp).await?;
        parse_batch_items(body, keys.len()).map_err(|e| Error::Daemon {
            api: self.inner.api.clone(),
            status: 200,
            code: ErrorCode::Internal,
            message: format!("malformed batch-get answer: {e}"),
        })
    }

    async fn exists_batch(&self, keys: &[Key]) -> Result<Vec<bool>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let resp = self.send_json(api::BATCH_EXISTS, &KeysRef { keys }).await?;
        let resp: api::ExistsBatchResponse = self.expect_json(resp).await?;
        if resp.exists.len() != keys.len() {
            return Err(self.mismatch("batch exists", resp.exists.len(), keys.len()));
        }
        Ok(resp.exists)
    }

    async fn evict_batch(&self, keys: &[Key]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let resp = self.send_json(api::BATCH_EVICT, &KeysRef { keys }).await?;
        let _: api::EvictBatchResponse = self.expect_json(resp).await?;
        Ok(())
    }

    async fn put_stream(&self, stream: ByteStream) -> Result<Key> {
        self.put_streamed(stream, None).await
    }

    async fn get_stream(&self, key: &Key) -> Result<Option<ByteStream>> {
        let resp = self
            .send(Method::GET, api::object_path(key), empty(), None)
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(Some(
                resp.into_body()
                    .into_data_stream()
                    .map_err(io::Error::other)
                    .boxed(),
            )),
            StatusCode::NOT_FOUND => {
                let _ = resp.into_body().collect().await;
                Ok(None)
            }
            _ => Err(self.error_from(resp).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:7878",
            "http://127.0.0.1:7878",
            "http://localhost:1/",
            " [::1]:99 ",
        ] {
            let c = DaemonConnector::new(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(c.api_addr().starts_with("http://"), "{}", c.api_addr());
        }
        let c = DaemonConnector::new("unix:/run/pm/api.sock").unwrap();
        assert_eq!(c.api_addr(), "unix:/run/pm/api.sock");
        for bad in [
            "",
            "https://x:1",
            "nohost",
            "http://a b:1",
            "user@host:1",
            "h:1/path",
            "unix:",
        ] {
            assert!(
                matches!(DaemonConnector::new(bad), Err(Error::Config(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn batch_items_zero_copy() {
        let mut body = Vec::new();
        api::write_batch_item(&mut body, Some(b"hello"));
        api::write_batch_item(&mut body, None);
        api::write_batch_item(&mut body, Some(b""));
        let body = Bytes::from(body);
        let items = parse_batch_items(body.clone(), 3).unwrap();
        assert_eq!(
            items,
            vec![Some(Bytes::from_static(b"hello")), None, Some(Bytes::new())]
        );
        assert!(parse_batch_items(body.slice(..body.len() - 3), 3).is_err());
        assert!(parse_batch_items(body.clone(), 2).is_err());
        let mut bad = body.to_vec();
        bad[0] = 7;
        assert!(parse_batch_items(Bytes::from(bad), 3).is_err());
    }
}
