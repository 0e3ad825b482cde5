//! Serving and issuing single requests of the fetch protocol over bulk
//! streams (see [`protocol`](super::protocol) for the wire format).
//!
//! Server: [`serve`] accepts streams of members and answers each in its
//! own task from [`LocalObjects`], which decides what a member may do: a
//! get streams the requested range from memory or the file in
//! [`CHUNK`]-sized pieces (one buffer per stream), a put streams into an
//! [`ObjectWriter`](crate::storage::ObjectWriter) that is committed only
//! once every announced byte arrived. Reading the request has a timeout, and
//! so has every write (a consumer that stops reading for that long is
//! dropped).
//!
//! Client: [`get`], [`exists`], [`evict`] and [`put`] each take a freshly
//! opened stream and perform one request. [`get`] returns a [`Body`] that
//! yields the range as it arrives, enforces an idle timeout and, for a whole
//! object, checks size and BLAKE3 before handing out the last chunk.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use proxymesh::membership::Gate;
use proxymesh::OwnerCap;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt};

use super::members::Dropper;
use super::protocol::{
    read_request, read_response, write_request, write_response, FrameError, RemoteName, Request,
    Response,
};
use super::MeshError;
use crate::service::{Caller, Error as ServiceError, LocalObjects};
use crate::storage::{ChunkStream, ObjectReader, StorageError};

/// Size of the pieces bytes are read, sent and handed out in.
pub const CHUNK: usize = 256 * 1024;

/// Server limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Longest wait for a request's header after the stream opened.
    pub request_timeout: Duration,
    /// Longest a single write to, or read from, the requester may stall.
    pub stall_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// The fetch-protocol server: the objects it offers, and to whom.
pub struct Server {
    /// This daemon's objects; what a member may do with them is decided there.
    pub objects: Arc<LocalObjects>,
    /// Who is served (members of our mesh).
    pub gate: Arc<Gate>,
    /// Where refused peers go to be dropped.
    pub dropper: Dropper,
    /// Limits.
    pub config: ServeConfig,
}

impl Server {
    /// A server of `objects` to the members of `gate`.
    pub fn new(
        objects: Arc<LocalObjects>,
        gate: Arc<Gate>,
        dropper: Dropper,
        config: ServeConfig,
    ) -> Self {
        Self {
            objects,
            gate,
            dropper,
            config,
        }
    }
}

/// Serve inbound fetch-protocol streams with `server`, until `incoming` ends.
/// A stream from a peer that has not proved membership is answered
/// `Refused`, and the peer is handed to the dropper. Requests are answered
/// in tasks owned by this future: when it is dropped (the daemon stops),
/// every transfer it serves stops too.
pub async fn serve(mut incoming: libp2p_stream::IncomingStreams, server: Arc<Server>) {
    let config = server.config;
    let mut handlers = tokio::task::JoinSet::new();
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            // Reap finished handlers so the set stays small.
            Some(_) = handlers.join_next(), if !handlers.is_empty() => continue,
        };
        let Some((peer, mut stream)) = next else {
            break;
        };
        if !server.gate.is_member(&peer, SystemTime::now()) {
            let reason =
                "not a member of this mesh: present a credential on the member protocol first";
            tracing::warn!(%peer, "refused a fetch-protocol request: {reason}");
            let dropper = server.dropper.clone();
            handlers.spawn(async move {
                let _ = tokio::time::timeout(config.request_timeout, async {
                    let _ = read_request(&mut stream).await;
                    let _ =
                        send_answer(&mut stream, &Response::Refused(reason.into()), config).await;
                    let _ = stream.close().await;
                    super::members::linger(&mut stream).await;
                })
                .await;
                let _ = dropper.send((peer, reason.into()));
            });
            continue;
        }
        let server = Arc::clone(&server);
        handlers.spawn(async move {
            if let Err(e) = handle(peer, stream, &server).await {
                tracing::debug!(%peer, error = %e, "fetch-protocol request failed");
            }
        });
    }
    tracing::debug!("no longer accepting fetch-protocol streams");
    while handlers.join_next().await.is_some() {}
}

/// Answer one request of member `peer` on `stream`. Public so other
/// transports (and tests) can reuse the server side.
pub async fn handle<S>(peer: PeerId, mut stream: S, server: &Server) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = server.config;
    let request =
        match tokio::time::timeout(config.request_timeout, read_request(&mut stream)).await {
            Err(_) => return Err(timed_out("waiting for the request")),
            Ok(Err(FrameError::Io(e))) => return Err(e),
            Ok(Err(e @ (FrameError::Closed | FrameError::Truncated))) => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e.to_string()))
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "malformed fetch-protocol request");
                let answer = Response::Refused(format!("malformed request: {e}"));
                let _ = send_answer(&mut stream, &answer, config).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
            }
            Ok(Ok(r)) => r,
        };
    let (objects, caller) = (&*server.objects, Caller::Member(peer));
    match request {
        Request::Get { name, offset, len } => {
            let reader = match objects.read(caller, &name).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%peer, %name, error = %e, "get refused or missing");
                    return send_answer(&mut stream, &refusal(e), config).await;
                }
            };
            serve_get(peer, &mut stream, reader, &name, offset, len, config).await
        }
        Request::Exists { name } => {
            let answer = match objects.exists(caller, &name) {
                Ok(found) => Response::Exists(found),
                Err(e) => refusal(e),
            };
            tracing::debug!(%peer, %name, ?answer, "exists");
            send_answer(&mut stream, &answer, config).await
        }
        Request::Evict { name } => {
            let answer = evicted(objects.evict(caller, &name, None).await);
            send_answer(&mut stream, &answer, config).await
        }
        Request::EvictOwned { name, owner } => {
            let answer = evicted(objects.evict(caller, &name, Some(OwnerCap(owner))).await);
            send_answer(&mut stream, &answer, config).await
        }
        Request::Put { name, size } => serve_put(peer, &mut stream, server, name, size).await,
    }
}

/// The answer to a failed or refused operation.
fn refusal(e: ServiceError) -> Response {
    match e {
        ServiceError::NotFound(_) => Response::NotFound,
        e => Response::Refused(e.to_string()),
    }
}

fn evicted(result: Result<bool, ServiceError>) -> Response {
    match result {
        Ok(evicted) => Response::Evicted(evicted),
        Err(e) => Response::Refused(e.to_string()),
    }
}

async fn serve_get<S>(
    peer: PeerId,
    stream: &mut S,
    reader: ObjectReader,
    name: &RemoteName,
    offset: u64,
    len: Option<u64>,
    config: ServeConfig,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let meta = reader.meta().clone();
    let size = meta.size;
    let fits = match len {
        _ if offset > size => None,
        None => Some(size - offset),
        Some(l) if l <= size - offset => Some(l),
        Some(_) => None,
    };
    let Some(len) = fits else {
        let asked = len.map_or("the rest".to_string(), |l| format!("{l} bytes"));
        let why =
            format!("range of {asked} from byte {offset} is outside the object's {size} bytes");
        return send_answer(stream, &Response::Refused(why), config).await;
    };
    let header = Response::Object {
        size,
        hash: *meta.hash.as_bytes(),
        offset,
        len,
    };
    write_frame(stream, &header, config).await?;
    let started = std::time::Instant::now();
    match reader {
        ObjectReader::Memory { data, .. } => {
            let range = data.slice(offset as usize..(offset + len) as usize);
            for piece in range.chunks(CHUNK) {
                send(stream, piece, config).await?;
            }
        }
        ObjectReader::File { mut file, .. } => {
            file.seek(io::SeekFrom::Start(offset)).await?;
            let mut buf = vec![0u8; CHUNK.min(len as usize).max(1)];
            let mut left = len;
            while left > 0 {
                let want = buf.len().min(left as usize);
                let n = file.read(&mut buf[..want]).await?;
                if n == 0 {
                    // Drop the stream unfinished: the requester sees a short body.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the data file of {name} is {left} bytes short"),
                    ));
                }
                send(stream, &buf[..n], config).await?;
                left -= n as u64;
            }
        }
    }
    finish(stream, config).await?;
    tracing::debug!(%peer, %name, offset, len, elapsed = ?started.elapsed(), "served");
    Ok(())
}

async fn serve_put<S>(
    peer: PeerId,
    stream: &mut S,
    server: &Server,
    name: RemoteName,
    size: u64,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = server.config;
    let mut writer = match server
        .objects
        .writer(Caller::Member(peer), &name, Some(size))
    {
        Ok(w) => w,
        Err(e) => return send_answer(stream, &Response::Refused(e.to_string()), config).await,
    };
    let mut buf = BytesMut::new();
    let mut left = size;
    while left > 0 {
        let want = CHUNK.min(left as usize);
        let n = match tokio::time::timeout(config.stall_timeout, read_into(stream, &mut buf, want))
            .await
        {
            Err(_) => return Err(timed_out("receiving a put")),
            Ok(r) => r?,
        };
        if n == 0 {
            // The writer is dropped: nothing becomes visible.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("put of {name} ended {left} bytes short of {size}"),
            ));
        }
        left -= n as u64;
        if let Err(e) = writer.write(buf.split().freeze()).await {
            return send_answer(stream, &Response::Refused(e.to_string()), config).await;
        }
    }
    let answer = match writer.commit().await {
        Ok(meta) => {
            tracing::debug!(%peer, %name, size, "put served");
            Response::Stored {
                size: meta.size,
                hash: *meta.hash.as_bytes(),
            }
        }
        Err(e) => Response::Refused(e.to_string()),
    };
    send_answer(stream, &answer, config).await
}

async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &Response,
    config: ServeConfig,
) -> io::Result<()> {
    match tokio::time::timeout(config.stall_timeout, write_response(stream, msg)).await {
        Err(_) => Err(timed_out("sending an answer")),
        Ok(Err(FrameError::Io(e))) => Err(e),
        Ok(Err(e)) => Err(io::Error::other(e.to_string())),
        Ok(Ok(())) => Ok(()),
    }
}

async fn send_answer<S: AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &Response,
    config: ServeConfig,
) -> io::Result<()> {
    write_frame(stream, msg, config).await?;
    finish(stream, config).await
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    config: ServeConfig,
) -> io::Result<()> {
    tokio::time::timeout(config.stall_timeout, stream.write_all(bytes))
        .await
        .map_err(|_| timed_out("sending object bytes"))?
}

async fn finish<S: AsyncWrite + Unpin>(stream: &mut S, config: ServeConfig) -> io::Result<()> {
    tokio::time::timeout(config.stall_timeout, stream.close())
        .await
        .map_err(|_| timed_out("closing the stream"))?
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}"))
}

/// Read what is available now (at least one byte, waiting if none is), up
/// to `want` bytes, appending to `buf`. `Ok(0)` only at the end of the
/// stream.
pub(crate) async fn read_into<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    let start = buf.len();
    if buf.capacity() - start < want {
        // A fresh region shared by the next few chunks.
        buf.reserve(want.max(4 * CHUNK));
    }
    buf.resize(start + want, 0);
    let mut filled = 0;
    let res = std::future::poll_fn(|cx| {
        loop {
            if filled == want {
                return Poll::Ready(Ok(filled));
            }
            match Pin::new(&mut *r).poll_read(cx, &mut buf[start + filled..start + want]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(filled)),
                Poll::Ready(Ok(n)) => filled += n,
                Poll::Ready(Err(e)) if filled == 0 => return Poll::Ready(Err(e)),
                // Hand out what arrived; the error comes again on the next read.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(filled)),
                Poll::Pending if filled > 0 => return Poll::Ready(Ok(filled)),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    let n = *res.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    res
}

// ---------------------------------------------------------------- client

/// Client limits for one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Longest wait from sending the request to the answer's header (and,
    /// for a put, from the last byte sent to the answer).
    pub header: Duration,
    /// Longest time without progress while bytes flow.
    pub idle: Duration,
    /// The slowest a transfer may run for long.
    pub floor: RateFloor,
}

/// The slowest rate a transfer may keep: over every `window` spent waiting
/// for the peer, at least `bytes_per_sec` on average. A peer that sends a
/// byte now and then never trips the idle timeout, but trips this. Only time
/// spent waiting on the network counts, so a slow reader of the body (our
/// own back-pressure) never fails a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFloor {
    /// Least average rate, bytes per second (0: no floor).
    pub bytes_per_sec: u64,
    /// Span the average is taken over.
    pub window: Duration,
}

impl Default for RateFloor {
    fn default() -> Self {
        Self {
            bytes_per_sec: 16 * 1024,
            window: Duration::from_secs(30),
        }
    }
}

/// The arriving bytes of a [`get`].
pub struct Body<S> {
    stream: S,
    peer: PeerId,
    name: RemoteName,
    size: u64,
    hash: blake3::Hash,
    offset: u64,
    len: u64,
    received: u64,
    /// Hashing the bytes, when the range is the whole object.
    hasher: Option<blake3::Hasher>,
    verified: bool,
    idle: Duration,
    floor: RateFloor,
    /// Time spent waiting for the peer in the current rate window, and the
    /// bytes received in it.
    window: (Duration, u64),
    buf: BytesMut,
}

impl<S: AsyncRead + Unpin> Body<S> {
    /// Size of the whole object.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// BLAKE3 of the whole object, as announced by the peer.
    pub fn hash(&self) -> blake3::Hash {
        self.hash
    }

    /// First byte of the range.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes in the range.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next chunk (up to [`CHUNK`] bytes), `Ok(None)` once the whole
    /// range arrived. A whole object is checked against the announced hash
    /// before its last chunk is returned, so no caller ever holds all the
    /// bytes of a corrupt object without an error. Errors: `TimedOut` after
    /// `idle` without a byte, `Corrupt` on truncation or hash mismatch,
    /// `Unreachable` if the stream breaks.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, MeshError> {
        if self.received == self.len {
            if let Some(e) = self.verify() {
                return Err(e);
            }
            return Ok(None);
        }
        let want = CHUNK.min((self.len - self.received) as usize);
        let waiting = Instant::now();
        let read =
            tokio::time::timeout(self.idle, read_into(&mut self.stream, &mut self.buf, want)).await;
        let waited = waiting.elapsed();
        let n = match read {
            Err(_) => {
                return Err(MeshError::TimedOut {
                    peer: self.peer,
                    id: Some(self.name.clone()),
                    phase: "transfer (no bytes arrived)",
                    after: self.idle,
                })
            }
            Ok(Err(e)) => {
                return Err(MeshError::Unreachable {
                    peer: self.peer,
                    reason: format!(
                        "the stream broke after {} of {} bytes of object {}: {e}",
                        self.received, self.len, self.name
                    ),
                })
            }
            Ok(Ok(0)) => {
                return Err(self.corrupt(format!(
                    "truncated: the stream ended after {} of {} bytes",
                    self.received, self.len
                )))
            }
            Ok(Ok(n)) => n,
        };
        let chunk = self.buf.split().freeze();
        self.received += n as u64;
        if let Some(e) = self.below_floor(n as u64, waited) {
            return Err(e);
        }
        if let Some(h) = &mut self.hasher {
            h.update(&chunk);
        }
        if self.received == self.len {
            if let Some(e) = self.verify() {
                return Err(e);
            }
        }
        Ok(Some(chunk))
    }

    /// Count `n` new bytes into the rate window: the error if a whole
    /// window passed below the floor.
    fn below_floor(&mut self, n: u64, waited: Duration) -> Option<MeshError> {
        let (wait, bytes) = &mut self.window;
        *bytes += n;
        *wait += waited;
        if self.floor.bytes_per_sec == 0 || *wait < self.floor.window {
            return None;
        }
        let rate = *bytes as f64 / wait.as_secs_f64();
        if rate < self.floor.bytes_per_sec as f64 {
            return Some(MeshError::TimedOut {
                peer: self.peer,
                id: Some(self.name.clone()),
                phase: "transfer (slower than the rate floor)",
                after: *wait,
            });
        }
        self.window = (Duration::ZERO, 0);
        None
    }

    /// Check the hash once the whole object arrived: the error, if any.
    fn verify(&mut self) -> Option<MeshError> {
        if self.verified {
            return None;
        }
        if let Some(h) = &self.hasher {
            let got = h.finalize();
            if got != self.hash {
                return Some(self.corrupt(format!(
                    "BLAKE3 of the bytes received is {got}, the peer announced {}",
                    self.hash
                )));
            }
        }
        self.verified = true;
        None
    }

    fn corrupt(&self, reason: String) -> MeshError {
        MeshError::Corrupt {
            peer: self.peer,
            id: self.name.clone(),
            reason,
        }
    }
}

fn frame_error(peer: PeerId, e: FrameError) -> MeshError {
    match e {
        FrameError::Io(e) => MeshError::Unreachable {
            peer,
            reason: format!("the stream broke: {e}"),
        },
        FrameError::Closed | FrameError::Truncated => MeshError::Protocol {
            peer,
            reason: format!("no answer: {e}"),
        },
        e => MeshError::Protocol {
            peer,
            reason: e.to_string(),
        },
    }
}

fn unexpected(peer: PeerId, request: &str, answer: &Response) -> MeshError {
    let shown = match answer {
        Response::Object { .. } => "an object".to_string(),
        other => format!("{other:?}"),
    };
    MeshError::Protocol {
        peer,
        reason: format!("unexpected answer to {request}: {shown}"),
    }
}

/// Send `req` and wait for the answer's header, within `timeout`.
async fn ask<S>(
    stream: &mut S,
    peer: PeerId,
    req: &Request,
    name: &RemoteName,
    timeout: Duration,
) -> Result<Response, MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        write_request(stream, req).await?;
        read_response(stream).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| MeshError::TimedOut {
            peer,
            id: Some(name.clone()),
            phase: "request",
            after: timeout,
        })?
        .map_err(|e| frame_error(peer, e))
}

fn common(peer: PeerId, name: &RemoteName, request: &str, answer: Response) -> MeshError {
    match answer {
        Response::NotFound => MeshError::NotFound {
            peer,
            id: name.clone(),
        },
        Response::Refused(reason) => MeshError::Refused { peer, reason },
        other => unexpected(peer, request, &other),
    }
}

/// Ask `peer` for bytes `offset..offset + len` (`None` = to the end) of
/// `name`. Returns once the answer's header arrived; the bytes follow
/// through the [`Body`]. A whole-object range is verified against the hash.
pub async fn get<S>(
    mut stream: S,
    peer: PeerId,
    name: &RemoteName,
    offset: u64,
    len: Option<u64>,
    timeouts: Timeouts,
) -> Result<Body<S>, MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = Request::Get {
        name: name.clone(),
        offset,
        len,
    };
    match ask(&mut stream, peer, &req, name, timeouts.header).await? {
        Response::Object {
            size,
            hash,
            offset: o,
            len: l,
        } => {
            let sane = o == offset
                && len.is_none_or(|want| want == l)
                && o.checked_add(l).is_some_and(|end| end <= size)
                && (len.is_some() || o + l == size);
            if !sane {
                return Err(MeshError::Protocol {
                    peer,
                    reason: format!(
                        "asked for {offset}+{len:?} of {name}, got {o}+{l} of {size} bytes"
                    ),
                });
            }
            Ok(Body {
                stream,
                peer,
                name: name.clone(),
                size,
                hash: blake3::Hash::from_bytes(hash),
                offset: o,
                len: l,
                received: 0,
                hasher: (o == 0 && l == size).then(blake3::Hasher::new),
                verified: false,
                idle: timeouts.idle,
                floor: timeouts.floor,
                window: (Duration::ZERO, 0),
                buf: BytesMut::new(),
            })
        }
        other => Err(common(peer, name, "get", other)),
    }
}

/// Whether `peer` has `name`.
pub async fn exists<S>(
    mut stream: S,
    peer: PeerId,
    name: &RemoteName,
    timeouts: Timeouts,
) -> Result<bool, MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = Request::Exists { name: name.clone() };
    match ask(&mut stream, peer, &req, name, timeouts.header).await? {
        Response::Exists(b) => Ok(b),
        other => Err(common(peer, name, "exists", other)),
    }
}

/// Make `peer` remove `name`; whether it had it.
pub async fn evict<S>(
    mut stream: S,
    peer: PeerId,
    name: &RemoteName,
    owner: Option<OwnerCap>,
    timeouts: Timeouts,
) -> Result<bool, MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = match owner {
        Some(cap) => Request::EvictOwned {
            name: name.clone(),
            owner: cap.0,
        },
        None => Request::Evict { name: name.clone() },
    };
    match ask(&mut stream, peer, &req, name, timeouts.header).await? {
        Response::Evicted(b) => Ok(b),
        other => Err(common(peer, name, "evict", other)),
    }
}

/// Store `body` (exactly `size` bytes) as `name` at `peer`. Returns the
/// stored size and hash, checked against the bytes sent.
pub async fn put<S>(
    mut stream: S,
    peer: PeerId,
    name: &RemoteName,
    mut body: ChunkStream,
    size: u64,
    timeouts: Timeouts,
) -> Result<(u64, blake3::Hash), MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = Request::Put {
        name: name.clone(),
        size,
    };
    let stalled = |phase| MeshError::TimedOut {
        peer,
        id: Some(name.clone()),
        phase,
        after: timeouts.idle,
    };
    tokio::time::timeout(timeouts.header, write_request(&mut stream, &req))
        .await
        .map_err(|_| stalled("request"))?
        .map_err(|e| frame_error(peer, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut sent = 0u64;
    let local = |msg: String| MeshError::Storage(StorageError::Io(io::Error::other(msg)));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| local(format!("reading the object to send: {e}")))?;
        sent += chunk.len() as u64;
        if sent > size {
            return Err(local(format!(
                "the object to send is longer than its declared {size} bytes"
            )));
        }
        hasher.update(&chunk);
        let wrote = tokio::time::timeout(timeouts.idle, stream.write_all(&chunk))
            .await
            .map_err(|_| stalled("put (the peer stopped reading)"))?;
        if let Err(e) = wrote {
            // The peer may have refused and closed: show its reason if it did.
            let answer =
                tokio::time::timeout(Duration::from_secs(1), read_response(&mut stream)).await;
            if let Ok(Ok(Response::Refused(reason))) = answer {
                return Err(MeshError::Refused { peer, reason });
            }
            return Err(MeshError::Unreachable {
                peer,
                reason: format!("the stream broke after {sent} of {size} bytes: {e}"),
            });
        }
    }
    if sent < size {
        return Err(local(format!(
            "the object to send ended after {sent} of its declared {size} bytes"
        )));
    }
    let answer = tokio::time::timeout(timeouts.header, async {
        stream.flush().await.map_err(FrameError::Io)?;
        read_response(&mut stream).await
    })
    .await
    .map_err(|_| MeshError::TimedOut {
        peer,
        id: Some(name.clone()),
        phase: "put (waiting for the peer to store it)",
        after: timeouts.header,
    })?
    .map_err(|e| frame_error(peer, e))?;
    match answer {
        Response::Stored { size: s, hash } => {
            let hash = blake3::Hash::from_bytes(hash);
            if s != size || hash != hasher.finalize() {
                return Err(MeshError::Corrupt {
                    peer,
                    id: name.clone(),
                    reason: format!(
                        "the peer stored {s} bytes with BLAKE3 {hash}, sent {size} bytes with BLAKE3 {}",
                        hasher.finalize()
                    ),
                });
            }
            Ok((s, hash))
        }
        other => Err(common(peer, name, "put", other)),
    }
}
