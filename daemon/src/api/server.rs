//! Serving the local API: the accept loop, built on hyper's HTTP/1 server.
//!
//! The API is served on a loopback TCP address (ProxyStore's
//! `EndpointConnector` and anything HTTP) and, besides, on a Unix socket
//! (the SDK's fast local path: no TCP stack, and the kernel names the
//! caller's uid with the connection). For each accepted connection, once:
//! 1. `TCP_NODELAY` is set (TCP);
//! 2. the caller is identified (the loopback connection's owner, or the
//!    Unix socket's peer credentials) and checked ([`Access`]): another
//!    user's connection is answered `403` (JSON [`ApiError`](proxymesh::api::ApiError), code
//!    `forbidden`, naming both users) and closed;
//! 3. it takes one of [`ApiOptions::max_connections`] slots (default 512).
//!    When all are taken it waits up to [`CAP_WAIT`] for one, then is
//!    answered `503` (code `internal`, "too many connections") and closed;
//!    connections already served are unaffected.
//!
//! Refusals (403 and 503) are answered by a small lane of their own
//! ([`REFUSAL_SLOTS`] at a time, one request each, [`ApiOptions::header_timeout`]
//! to send it): other users cannot take the owner's slots, and beyond that
//! lane connections are closed unanswered.
//!
//! A served connection is closed when
//! - a request's headers are not complete [`ApiOptions::header_timeout`]
//!   (10 s) after its first byte arrived (slowloris);
//! - it has no request in flight and no new request starts for
//!   [`ApiOptions::idle_timeout`] (60 s; the SDK keeps idle connections
//!   for 60 s too);
//! - it has a request in flight but not one byte moved either way for
//!   [`ApiOptions::stall_timeout`] (5 min): a client that stopped reading
//!   its answer, or a body that stopped coming.
//!
//! hyper's own `header_read_timeout` cannot express both (it also runs
//! while an idle keep-alive connection waits for its next request), so the
//! connection's reads and requests are tracked here ([`Activity`]).
//! Otherwise request bodies and long responses have no time limit: a
//! transfer in flight is never cut off for being slow, only for stopping.
//!
//! On shutdown the listener closes, idle connections close at once and
//! in-flight requests finish (the daemon gives them
//! [`SHUTDOWN_GRACE`](crate::SHUTDOWN_GRACE), then drops the rest).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use proxymesh::api::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::either::Either;

use super::peer::{Access, Verdict};
use super::{AppState, Failure};

/// Default [`ApiOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default [`ApiOptions::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ApiOptions::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`ApiOptions::stall_timeout`]: longer than any remote fetch
/// waits for its first byte, so only a stopped client trips it.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a connection beyond the cap waits for a slot before it is
/// answered 503.
pub const CAP_WAIT: Duration = Duration::from_secs(1);
/// Refusals (403, 503) answered at a time; beyond, connections are closed
/// unanswered.
pub const REFUSAL_SLOTS: usize = 64;
/// Most request-body bytes read (and dropped) before a refusal is sent, so
/// that closing does not reset the connection under the client's feet.
const REFUSAL_DRAIN: usize = 1 << 20;
/// Longest time spent reading a refused request's body.
const REFUSAL_DRAIN_TIME: Duration = Duration::from_secs(2);

/// How the local API is served, and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiOptions {
    /// Connections served at once; more wait [`CAP_WAIT`], then get 503.
    pub max_connections: usize,
    /// Time from a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// Time a connection with no request in flight is kept open.
    pub idle_timeout: Duration,
    /// Time a connection with a request in flight is kept open while no
    /// byte moves in either direction.
    pub stall_timeout: Duration,
    /// A group (name or gid) whose members may use the API besides the
    /// daemon's own user.
    pub group: Option<String>,
    /// Allow a non-loopback API address. Remote callers are still refused
    /// (they cannot be identified, and there is no authentication yet); only
    /// local users reaching the address over loopback are served.
    pub allow_remote: bool,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            group: None,
            allow_remote: false,
        }
    }
}

impl ApiOptions {
    /// Refuse an API address these options do not allow: anything but
    /// loopback unless [`allow_remote`](Self::allow_remote).
    pub fn check_addr(&self, addr: SocketAddr) -> anyhow::Result<()> {
        if addr.ip().to_canonical().is_loopback() || self.allow_remote {
            return Ok(());
        }
        anyhow::bail!(
            "refusing to serve the local API on {addr}: the local API listens on loopback only; \
             a non-loopback --api needs --api-allow-remote and authentication, which is not \
             supported yet (use --api 127.0.0.1:PORT)"
        )
    }
}

/// What every connection task shares.
struct Shared {
    router: Router,
    /// For the quick protocol on the Unix socket.
    state: Arc<AppState>,
    access: Arc<Access>,
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    limits: Limits,
    max_connections: usize,
    /// When the cap was last reported (seconds since `started`), to log it
    /// once in a while rather than per connection.
    cap_logged: AtomicU64,
    started: Instant,
}

/// Serve `router` on `listener` (and on `unix`, if given) until `stop`
/// resolves, then shut down gracefully (stop accepting, close idle
/// connections, let in-flight requests finish). Connection tasks are owned
/// by the returned future: dropping or aborting it closes them all.
pub async fn serve(
    listener: TcpListener,
    unix: Option<UnixListener>,
    router: Router,
    state: Arc<AppState>,
    access: Arc<Access>,
    options: &ApiOptions,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        router,
        state,
        access,
        slots: Arc::new(Semaphore::new(options.max_connections.max(1))),
        refusals: Arc::new(Semaphore::new(REFUSAL_SLOTS)),
        limits: Limits {
            header: options.header_timeout,
            idle: options.idle_timeout,
            stall: options.stall_timeout,
        },
        max_connections: options.max_connections.max(1),
        cap_logged: AtomicU64::new(u64::MAX),
        started: Instant::now(),
    });
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    let accept_unix = async |unix: &Option<UnixListener>| match unix {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    // The watcher is taken here, before the task runs, so a
                    // shutdown signalled meanwhile still reaches it.
                    let watcher = graceful.watcher();
                    let who = Who::Tcp(peer);
                    connections.spawn(connection(Either::Left(tcp), who, shared.clone(), watcher));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // rather than spin.
                    tracing::error!(error = %e, "cannot accept API connections; retrying in 1 s");
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
            accepted = accept_unix(&unix) => match accepted {
                Ok(stream) => {
                    let who = Who::Unix(stream.peer_cred().ok().map(|c| c.uid()));
                    let watcher = graceful.watcher();
                    connections.spawn(connection(Either::Right(stream), who, shared.clone(), watcher));
                }
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot accept API connections on the Unix socket; retrying in 1 s");
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    drop(unix);
    graceful.shutdown().await;
    Ok(())
}

/// Errors of one connection attempt, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// An accepted connection: TCP (left) or the Unix socket (right).
type Conn = Either<TcpStream, UnixStream>;

/// Who is on the other end, as far as the socket tells.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// A TCP client at this address.
    Tcp(SocketAddr),
    /// A Unix-socket client with this uid (`None`: the kernel did not say).
    Unix(Option<u32>),
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Tcp(addr) => write!(f, "{addr}"),
            Who::Unix(Some(uid)) => write!(f, "unix socket, uid {uid}"),
            Who::Unix(None) => write!(f, "unix socket, unknown uid"),
        }
    }
}

/// One accepted connection: check the caller, take a slot, serve.
async fn connection(conn: Conn, peer: Who, shared: Arc<Shared>, watcher: Watcher) {
    let checked = match (&conn, peer) {
        (Either::Left(tcp), Who::Tcp(addr)) => match tcp.local_addr() {
            Ok(local) => shared.access.check(local, addr).await,
            Err(_) => return,
        },
        (_, Who::Unix(uid)) => shared.access.check_uid(uid).await,
        (Either::Right(_), Who::Tcp(_)) => return,
    };
    // A Unix-socket client may speak the quick protocol instead of HTTP;
    // refusals are answered in the client's protocol. A refused client gets
    // the header timeout to show which, an allowed one the idle timeout.
    let quick = match &conn {
        Either::Right(s) => {
            let wait = match checked {
                Verdict::Allowed { .. } => shared.limits.idle,
                Verdict::Denied { .. } => shared.limits.header,
            };
            match speaks_quick(s, wait).await {
                Ok(quick) => quick,
                Err(_) => return,
            }
        }
        Either::Left(_) => false,
    };
    let refusal = async |conn, shared: &Shared, watcher, failure| {
        if quick {
            refuse_quick(conn, shared, failure).await
        } else {
            refuse(conn, shared, watcher, failure).await
        }
    };
    let uid = match checked {
        Verdict::Allowed { uid } => uid,
        Verdict::Denied { uid, message } => {
            tracing::debug!(%peer, ?uid, "refused a local API connection: {message}");
            let failure = (StatusCode::FORBIDDEN, ErrorCode::Forbidden, message);
            return refusal(conn, &shared, watcher, failure).await;
        }
    };
    let slot = match shared.slots.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            let waited = tokio::time::timeout(CAP_WAIT, shared.slots.clone().acquire_owned());
            match waited.await {
                Ok(Ok(slot)) => slot,
                _ => {
                    shared.log_cap(peer);
                    let message = format!(
                        "too many connections to this proxymesh daemon (all {} are in use); \
                         close idle ones or retry later",
                        shared.max_connections
                    );
                    let failure = (
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::Internal,
                        message,
                    );
                    return refusal(conn, &shared, watcher, failure).await;
                }
            }
        }
    };
    tracing::trace!(%peer, uid, quick, "serving a local API connection");
    if quick {
        if let Err(e) = serve_quick(conn, &shared).await {
            tracing::debug!(%peer, error = %e, "quick-protocol connection ended");
        }
    } else {
        serve_connection(conn, peer, &shared, watcher).await;
    }
    drop(slot);
}

/// Whether a Unix-socket client speaks the quick protocol: its first byte,
/// left in the socket, is NUL (HTTP's never is). Waits up to `limit` for it.
async fn speaks_quick(s: &UnixStream, limit: Duration) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let fd = s.as_raw_fd();
    let peek = async {
        loop {
            s.readable().await?;
            let mut first = 0u8;
            let peeked = s.try_io(tokio::io::Interest::READABLE, || {
                // SAFETY: a one-byte read into a live byte from an open
                // socket; MSG_PEEK leaves the byte queued for the reader.
                let n = unsafe { libc::recv(fd, (&raw mut first).cast(), 1, libc::MSG_PEEK) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n)
                }
            });
            match peeked {
                // Closed at once: nothing to serve either way.
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(first == 0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(limit, peek)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))?
}

/// Read the quick protocol's hello, then serve it.
async fn serve_quick(mut conn: Conn, shared: &Shared) -> io::Result<()> {
    read_hello(&mut conn, shared.limits.header).await?;
    super::quick::serve(conn, shared.state.clone(), shared.limits).await
}

async fn read_hello(conn: &mut Conn, limit: Duration) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut hello = [0u8; 4];
    tokio::time::timeout(limit, conn.read_exact(&mut hello))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no hello"))??;
    if &hello != proxymesh::api::quick::HELLO {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a quick-protocol hello (another version?)",
        ));
    }
    Ok(())
}

/// [`refuse`] for a quick-protocol client: one answer carrying the failure.
async fn refuse_quick(mut conn: Conn, shared: &Shared, failure: (StatusCode, ErrorCode, String)) {
    use tokio::io::AsyncWriteExt;
    let Ok(_lane) = shared.refusals.clone().try_acquire_owned() else {
        return;
    };
    let limit = shared.limits.header;
    let _ = tokio::time::timeout(limit, async {
        read_hello(&mut conn, limit).await?;
        let (status, code, message) = failure;
        let body = serde_json::to_vec(&proxymesh::api::ApiError {
            code,
            error: message,
        })
        .unwrap_or_default();
        let mut out =
            proxymesh::api::quick::answer_header(status.as_u16(), body.len() as u64).to_vec();
        out.extend_from_slice(&body);
        conn.write_all(&out).await?;
        conn.shutdown().await
    })
    .await;
}

impl Shared {
    fn log_cap(&self, peer: Who) {
        let now = self.started.elapsed().as_secs();
        let last = self.cap_logged.load(Ordering::Relaxed);
        if last == u64::MAX || now >= last + 10 {
            self.cap_logged.store(now, Ordering::Relaxed);
            tracing::warn!(
                %peer,
                "the local API serves {} connections at most, all in use; refusing new ones with 503",
                self.max_connections
            );
        }
    }
}

/// Serve an allowed connection until it closes, times out or the daemon
/// shuts down.
async fn serve_connection(conn: Conn, peer: Who, shared: &Shared, watcher: Watcher) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: conn,
        activity: activity.clone(),
    });
    let service = Tracking {
        inner: TowerToHyperService::new(shared.router.clone()),
        activity: activity.clone(),
    };
    let mut builder = http1::Builder::new();
    // Timeouts are kept by `Activity` (see the module docs).
    builder.header_read_timeout(None);
    let conn = watcher.watch(builder.serve_connection(io, service));
    tokio::pin!(conn);
    let limits = shared.limits;
    // The watchdog timer, armed at `armed`. It is checked whenever the task
    // wakes (every read wakes it), so moving the deadline needs no extra
    // wake-up; and it is re-armed only when the deadline comes earlier (a
    // request's first bytes; a whole request in one read never moves it).
    // A deadline that moved later is found when the timer fires early.
    let mut armed = activity.deadline(&limits);
    let watchdog = tokio::time::sleep_until(armed);
    tokio::pin!(watchdog);
    let closed = std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = conn.as_mut().poll(cx) {
            return Poll::Ready(done.err().map(|e| e.to_string()));
        }
        let deadline = activity.deadline(&limits);
        if deadline < armed {
            armed = deadline;
            watchdog.as_mut().reset(armed);
        }
        while watchdog.as_mut().poll(cx).is_ready() {
            if let Some(why) = activity.expired(&limits) {
                return Poll::Ready(Some(format!("closing it: {why}")));
            }
            armed = activity.deadline(&limits);
            watchdog.as_mut().reset(armed);
        }
        Poll::Pending
    })
    .await;
    if let Some(why) = closed {
        tracing::debug!(%peer, "API connection ended: {why}");
    }
}

/// Answer one request on `conn` with `failure` and close it; or, when
/// [`REFUSAL_SLOTS`] refusals are already under way, close it unanswered.
async fn refuse(
    conn: Conn,
    shared: &Shared,
    watcher: Watcher,
    failure: (StatusCode, ErrorCode, String),
) {
    let Ok(_lane) = shared.refusals.clone().try_acquire_owned() else {
        tracing::debug!("too many refusals under way; closing a connection unanswered");
        return;
    };
    let failure = Arc::new(failure);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let failure = failure.clone();
        async move {
            drain_refused(req.into_body()).await;
            let (status, code, message) = &*failure;
            Ok::<_, Infallible>(Failure::new(*status, *code, message.clone()).into_response())
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header)
        .keep_alive(false);
    let conn = watcher.watch(builder.serve_connection(TokioIo::new(conn), service));
    let limit = shared.limits.header + REFUSAL_DRAIN_TIME + Duration::from_secs(1);
    let _ = tokio::time::timeout(limit, conn).await;
}

/// Read and drop what a refused request sends (bounded), so the answer is
/// not lost to a reset when the connection closes with unread bytes.
async fn drain_refused(mut body: Incoming) {
    let deadline = Instant::now() + REFUSAL_DRAIN_TIME;
    let mut read = 0usize;
    while read < REFUSAL_DRAIN {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, Bytes::len),
            _ => break,
        }
    }
}

/// Marker for "no time recorded".
const NONE: u64 = u64::MAX;

/// A connection's time limits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From a request's first byte to the end of its headers.
    pub header: Duration,
    /// With no request in flight.
    pub idle: Duration,
    /// With a request in flight and no byte moving.
    pub stall: Duration,
}

/// What one connection is doing, for its timeouts: requests in flight, when
/// it went idle, when the first byte of a request not yet dispatched
/// arrived, when a byte last moved. Times are milliseconds since the
/// connection was accepted.
#[derive(Debug)]
pub struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    idle_since: AtomicU64,
    head_since: AtomicU64,
    last_io: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A connection accepted now: idle, nothing read.
    pub fn new() -> Self {
        Self {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            last_io: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    /// Bytes arrived. Without a request in flight they start the next
    /// request's headers: its header timeout runs from the first of them.
    pub fn on_read(&self) {
        self.on_io();
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == NONE
        {
            let _ = self.head_since.compare_exchange(
                NONE,
                self.now_ms(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }

    /// Bytes moved (read or written).
    pub fn on_io(&self) {
        self.last_io.store(self.now_ms(), Ordering::Release);
    }

    /// A request's headers are complete and it is being served, until the
    /// returned guard drops (with the response body).
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.on_io();
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Release);
        InFlight(self.clone())
    }

    /// When the connection expires unless something happens first.
    pub fn deadline(&self, limits: &Limits) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return self.at(self.last_io.load(Ordering::Acquire)) + limits.stall;
        }
        match self.head_since.load(Ordering::Acquire) {
            NONE => self.at(self.idle_since.load(Ordering::Acquire)) + limits.idle,
            since => self.at(since) + limits.header,
        }
    }

    /// Why the connection should close now, if it should.
    pub fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if Instant::now() < self.deadline(limits) {
            return None;
        }
        Some(if self.in_flight.load(Ordering::Acquire) > 0 {
            "a request in flight, and no byte moved for the stall timeout"
        } else if self.head_since.load(Ordering::Acquire) == NONE {
            "idle for the idle timeout"
        } else {
            "request headers incomplete after the header timeout"
        })
    }
}

/// A request in flight; dropping it (with the response body) ends it.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.idle_since.store(a.now_ms(), Ordering::Release);
        }
    }
}

/// A socket that reports reads and writes to its connection's [`Activity`].
struct Tracked {
    inner: Conn,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_io();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_io();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router, with each request counted in flight until its response body
/// is done.
#[derive(Clone)]
struct Tracking {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

type Routed = Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

impl Service<Request<Incoming>> for Tracking {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Routed;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.activity.start_request();
        let routed = self.inner.call(req);
        Box::pin(async move {
            let resp = routed.await?;
            Ok(resp.map(|body| TrackedBody {
                body,
                _in_flight: guard,
            }))
        })
    }
}

/// A response body that keeps its request [in flight](InFlight) until it
/// is dropped.
struct TrackedBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_header_and_stall_deadlines() {
        let limits = Limits {
            header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            stall: Duration::from_secs(300),
        };
        let a = Arc::new(Activity::new());
        let t0 = Instant::now();
        // Fresh and idle: closes after the idle timeout.
        assert_eq!(a.deadline(&limits), t0 + limits.idle);
        assert_eq!(a.expired(&limits), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        // A first byte: the header timeout runs from it.
        a.on_read();
        let head_deadline = a.deadline(&limits);
        assert_eq!(head_deadline, t0 + Duration::from_secs(15));
        // More bytes do not extend it (slowloris).
        tokio::time::advance(Duration::from_secs(5)).await;
        a.on_read();
        assert_eq!(a.deadline(&limits), head_deadline);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(a.expired(&limits).unwrap().contains("headers"));

        // A request in flight lives as long as bytes keep moving.
        let b = Arc::new(Activity::new());
        b.on_read();
        let req = b.start_request();
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(100)).await;
            b.on_read(); // its body
            assert_eq!(b.expired(&limits), None);
            tokio::time::advance(Duration::from_secs(100)).await;
            b.on_io(); // its answer
            assert_eq!(b.expired(&limits), None);
        }
        assert_eq!(b.deadline(&limits), Instant::now() + limits.stall);
        // Nothing moves (the client stopped reading): closed after the stall timeout.
        tokio::time::advance(limits.stall - Duration::from_secs(1)).await;
        assert_eq!(b.expired(&limits), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.expired(&limits).unwrap().contains("stall"));
        drop(req);
        // Done: idle from now.
        let done = Instant::now();
        assert_eq!(b.deadline(&limits), done + limits.idle);
        tokio::time::advance(limits.idle).await;
        assert!(b.expired(&limits).unwrap().contains("idle"));
    }

    #[test]
    fn only_loopback_addresses_unless_allowed() {
        let o = ApiOptions::default();
        for ok in [
            "127.0.0.1:7878",
            "127.1.2.3:0",
            "[::1]:7878",
            "[::ffff:127.0.0.1]:1",
        ] {
            o.check_addr(ok.parse().unwrap()).unwrap();
        }
        for bad in ["0.0.0.0:7878", "192.168.1.5:7878", "[::]:7878"] {
            let err = o.check_addr(bad.parse().unwrap()).unwrap_err().to_string();
            assert!(
                err.contains("loopback only") && err.contains("--api-allow-remote"),
                "{err}"
            );
        }
        let remote = ApiOptions {
            allow_remote: true,
            ..ApiOptions::default()
        };
        remote.check_addr("0.0.0.0:7878".parse().unwrap()).unwrap();
    }
}
