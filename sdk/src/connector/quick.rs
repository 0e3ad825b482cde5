//! The client side of the quick protocol ([`api::quick`]): how a
//! [`DaemonConnector`](super::DaemonConnector) on the daemon's Unix socket
//! sends gets and exists checks without HTTP.
//!
//! Connections are kept for reuse, each on the tokio runtime that opened it
//! (a socket is driven by its runtime's reactor, which may not run while
//! another runtime asks). A kept connection that turns out closed before
//! any answer byte arrives (the daemon restarted, or closed it idle) is
//! replaced once; both requests are idempotent.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::{Handle, Id};

use crate::api::quick;
use crate::localpeer::{self, TrustedUid};

/// Longest a connection is kept idle (the daemon closes them after 60 s).
const MAX_IDLE: Duration = Duration::from_secs(30);
/// Most idle connections kept per runtime.
const MAX_IDLE_CONNS: usize = 8;
/// How long to wait for the daemon to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer: the HTTP status the same request would get, and its body.
#[derive(Debug)]
pub struct Answer {
    /// 200, 404, or an error status.
    pub status: u16,
    /// The object (a get answered 200), or an error as JSON.
    pub body: Bytes,
}

/// Quick-protocol connections to one daemon socket.
pub struct QuickClient {
    path: PathBuf,
    trusted: TrustedUid,
    idle: Mutex<HashMap<Id, Vec<(UnixStream, Instant)>>>,
}

/// How an exchange failed.
enum Failed {
    /// Before any byte of the answer: worth one retry on a new connection.
    Early(io::Error),
    /// Midway through the answer.
    Late(io::Error),
}

impl QuickClient {
    /// A client for the socket at `path`, whose server must run as our own
    /// uid or `trusted`.
    pub fn new(path: PathBuf, trusted: TrustedUid) -> Self {
        Self {
            path,
            trusted,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Send `op` for `key` and read the answer.
    pub async fn ask(&self, op: u8, key: &str) -> io::Result<Answer> {
        let request = quick::request(op, key);
        let runtime = Handle::current().id();
        if let Some(conn) = self.take(runtime) {
            match exchange(conn, &request, op).await {
                Ok((answer, conn)) => {
                    self.give(runtime, conn);
                    return Ok(answer);
                }
                Err(Failed::Late(e)) => return Err(e),
                Err(Failed::Early(e)) => {
                    tracing::debug!(error = %e, "a kept daemon connection was closed; opening another");
                }
            }
        }
        let conn = connect(&self.path, self.trusted).await?;
        match exchange(conn, &request, op).await {
            Ok((answer, conn)) => {
                self.give(runtime, conn);
                Ok(answer)
            }
            Err(Failed::Early(e) | Failed::Late(e)) => Err(e),
        }
    }

    fn take(&self, runtime: Id) -> Option<UnixStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(&runtime)?;
        while let Some((conn, since)) = conns.pop() {
            if since.elapsed() < MAX_IDLE {
                return Some(conn);
            }
        }
        None
    }

    fn give(&self, runtime: Id, conn: UnixStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Forget stale connections, those of runtimes gone quiet included.
        idle.retain(|_, conns| {
            conns.retain(|(_, since)| since.elapsed() < MAX_IDLE);
            !conns.is_empty()
        });
        let conns = idle.entry(runtime).or_default();
        if conns.len() < MAX_IDLE_CONNS {
            conns.push((conn, Instant::now()));
        }
    }
}

/// Connect to the daemon's socket at `path` and check, before anything is
/// sent, that its server runs as our own uid or `trusted` (for HTTP and the
/// quick protocol alike).
pub(super) async fn connect_checked(path: &Path, trusted: TrustedUid) -> io::Result<UnixStream> {
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out connecting"))?
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot connect to {}: {e}", path.display()),
            )
        })?;
    let uid = conn.peer_cred()?.uid();
    localpeer::judge_socket_server(path, uid, trusted, localpeer::effective_uid())
        .map_err(io::Error::other)?;
    Ok(conn)
}

/// Connect, check who serves the socket, say hello.
async fn connect(path: &Path, trusted: TrustedUid) -> io::Result<UnixStream> {
    let mut conn = connect_checked(path, trusted).await?;
    conn.write_all(quick::HELLO).await?;
    Ok(conn)
}

/// One request and its answer on `conn`.
async fn exchange(
    mut conn: UnixStream,
    request: &[u8],
    op: u8,
) -> Result<(Answer, UnixStream), Failed> {
    conn.write_all(request).await.map_err(Failed::Early)?;
    let mut header = [0u8; 10];
    let first = conn.read(&mut header).await.map_err(Failed::Early)?;
    if first == 0 {
        return Err(Failed::Early(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection",
        )));
    }
    conn.read_exact(&mut header[first..])
        .await
        .map_err(Failed::Late)?;
    let (status, len) = quick::parse_answer_header(&header);
    let limit = if status == 200 && op == quick::GET {
        u64::MAX
    } else {
        quick::MAX_ERROR
    };
    if len > limit {
        return Err(Failed::Late(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("an answer of {len} bytes to a request that expects at most {limit}"),
        )));
    }
    let len = usize::try_from(len).map_err(|_| {
        Failed::Late(io::Error::new(
            io::ErrorKind::OutOfMemory,
            "the object does not fit in this process's address space",
        ))
    })?;
    let mut body = BytesMut::zeroed(len);
    conn.read_exact(&mut body).await.map_err(|e| {
        Failed::Late(io::Error::new(
            e.kind(),
            format!("the connection failed while reading the answer: {e}"),
        ))
    })?;
    Ok((
        Answer {
            status,
            body: body.freeze(),
        },
        conn,
    ))
}
