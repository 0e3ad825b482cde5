//! The serving side of the fetch protocol (see [`protocol`](super::protocol)
//! for the wire format): [`serve`] accepts streams of members and answers
//! each in its own task from [`LocalObjects`], which decides what a member
//! may do. A get streams the requested range from memory or the file in
//! [`CHUNK`]-sized pieces (one buffer per stream); a put streams into a
//! storage writer that is committed only once every announced byte arrived.
//! Reading the request has a timeout, and so has every write (a consumer
//! that stops reading for that long is dropped). After a get or an exists
//! the stream stays open for the requester's next request (it keeps idle
//! streams in its [`pool`](super::pool)), for up to
//! [`ServeConfig::keep_alive`].

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use proxymesh::membership::Gate;
use proxymesh::OwnerCap;

use super::copies::{self, Bits, Copies, Holders, Partial};
use super::members::Dropper;
use super::protocol::{
    read_into, read_request, write_response, FrameError, RemoteName, Request, Response, CHUNK,
};
use super::traffic::Traffic;
use crate::metrics::Door;
use crate::service::{Caller, Error as ServiceError, LocalObjects};
use crate::storage::outboard::{encode_range, Data};
use crate::storage::ObjectReader;

/// Server limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// Longest wait for a request's header after the stream opened.
    pub request_timeout: Duration,
    /// Longest a single write to, or read from, the requester may stall.
    pub stall_timeout: Duration,
    /// How long a stream stays open for another request after an answer
    /// (longer than the requesters' [`pool::MAX_IDLE`](super::pool::MAX_IDLE)).
    pub keep_alive: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(30),
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
    /// Bytes served per peer (shared with the fetcher, for `status`).
    pub traffic: Arc<Traffic>,
    /// The copies this daemon is fetching (shared with the fetcher), served
    /// segment by segment as they arrive.
    pub copies: Arc<Copies>,
    /// Who asked for each of our objects lately.
    pub holders: Holders,
    /// Where requests are counted (door `mesh`).
    pub metrics: Arc<crate::metrics::Metrics>,
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
            traffic: Arc::default(),
            copies: Arc::default(),
            holders: Holders::default(),
            metrics: Arc::default(),
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
            let reason = if server.gate.is_revoked(&peer) {
                "not a member of this mesh: its membership was revoked by the mesh authority"
            } else {
                "not a member of this mesh: present a credential on the member protocol first"
            };
            tracing::warn!(%peer, "refused a fetch-protocol request: {reason}");
            let dropper = server.dropper.clone();
            handlers.spawn(async move {
                let _ = tokio::time::timeout(config.request_timeout, async {
                    let _ = read_request(&mut stream).await;
                    let _ =
                        send_answer(&mut stream, &Response::NotMember(reason.into()), config).await;
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

/// What a request left the stream fit for.
enum Next {
    /// Another request may follow (the answer was written in full).
    Request,
    /// The stream was closed.
    Closed,
}

/// Answer the requests of member `peer` on `stream`: after a `Get` or
/// `Exists` the stream stays open for the next request (until
/// [`ServeConfig::keep_alive`] passes without one); any other request
/// closes it. Public so other transports (and tests) can reuse the server
/// side.
pub async fn handle<S>(peer: PeerId, mut stream: S, server: &Server) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = server.config;
    let (mut wait, mut served) = (config.request_timeout, false);
    loop {
        let request = match tokio::time::timeout(wait, read_request(&mut stream)).await {
            // An idle kept-open stream: the requester is done with it.
            Err(_) if served => return finish(&mut stream, config).await,
            Err(_) => return Err(timed_out("waiting for the request")),
            Ok(Err(FrameError::Closed)) if served => return Ok(()),
            Ok(Err(FrameError::Io(e))) if served && is_reset(&e) => return Ok(()),
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
        // The first request's membership was checked when the stream
        // came in; a later one's is checked again (a revocation may have
        // arrived meanwhile).
        if served && !server.gate.is_member(&peer, SystemTime::now()) {
            let reason =
                "not a member of this mesh (any more): its membership was revoked or expired";
            tracing::warn!(%peer, "refused a fetch-protocol request: {reason}");
            let _ = send_answer(&mut stream, &Response::Refused(reason.into()), config).await;
            let _ = server.dropper.send((peer, reason.into()));
            return Ok(());
        }
        let op = op_name(&request);
        let started = std::time::Instant::now();
        let (answered, outcome) = OUTCOME
            .scope(std::cell::Cell::new("ok"), async {
                let answered = answer(peer, &mut stream, server, request).await;
                (answered, OUTCOME.with(std::cell::Cell::get))
            })
            .await;
        let outcome = if answered.is_err() { "error" } else { outcome };
        server
            .metrics
            .request(Door::Mesh, op, outcome, started.elapsed());
        match answered? {
            Next::Request => (wait, served) = (config.keep_alive, true),
            Next::Closed => return Ok(()),
        }
    }
}

/// Whether a read failed because the requester dropped the stream.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

/// Answer one request.
async fn answer<S>(
    peer: PeerId,
    stream: &mut S,
    server: &Server,
    request: Request,
) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = server.config;
    let (objects, caller) = (&*server.objects, Caller::Member(peer));
    match request {
        Request::Get {
            name: name @ RemoteName::Copy { .. },
            offset,
            len,
        } if partial(server, &name).is_some() => {
            let p = partial(server, &name).expect("checked");
            if let Err(e) = objects.may_read(caller, &name) {
                write_frame(stream, &refusal(e), config).await?;
                return flushed(stream, config).await;
            }
            let Some(len) = fits(p.size, offset, len) else {
                write_frame(stream, &out_of_range(p.size, offset, len), config).await?;
                return flushed(stream, config).await;
            };
            if !p.holds(offset, len) {
                // Not here yet: the requester looks elsewhere.
                write_frame(stream, &Response::NotFound, config).await?;
                return flushed(stream, config).await;
            }
            let header = Response::Object {
                size: p.size,
                hash: *p.hash.as_bytes(),
                offset,
                len,
            };
            write_frame(stream, &header, config).await?;
            send_encoded(peer, stream, Source::Partial(p), &name, offset, len, server).await?;
            flushed(stream, config).await
        }
        Request::Open { name, max } => {
            let reader = match objects.read(caller, &name).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%peer, %name, error = %e, "open refused or missing");
                    write_frame(stream, &refusal(e), config).await?;
                    return flushed(stream, config).await;
                }
            };
            let meta = reader.meta().clone();
            let holders = match &name {
                RemoteName::Native(id) => server.holders.record(*id, peer),
                _ => Vec::new(),
            };
            let len = max.min(meta.size);
            let header = Response::Opened {
                size: meta.size,
                hash: *meta.hash.as_bytes(),
                len,
                holders,
            };
            write_frame(stream, &header, config).await?;
            send_encoded(peer, stream, Source::Stored(reader), &name, 0, len, server).await?;
            flushed(stream, config).await
        }
        Request::Have { name } => {
            let copy = partial(server, &name).filter(|_| objects.may_read(caller, &name).is_ok());
            let answer = if let Some(p) = copy {
                let (have, fetching) = p.bits();
                Response::Have {
                    size: p.size,
                    hash: *p.hash.as_bytes(),
                    have: have.as_bytes().to_vec(),
                    fetching: fetching.as_bytes().to_vec(),
                    holders: Vec::new(),
                }
            } else {
                match objects.meta(caller, &name) {
                    Ok(Some(meta)) => {
                        let n = copies::segments(meta.size);
                        Response::Have {
                            size: meta.size,
                            hash: *meta.hash.as_bytes(),
                            have: Bits::full(n).as_bytes().to_vec(),
                            fetching: Bits::new(n).as_bytes().to_vec(),
                            holders: match &name {
                                RemoteName::Native(id) => server.holders.record(*id, peer),
                                _ => Vec::new(),
                            },
                        }
                    }
                    Ok(None) => Response::NotFound,
                    Err(e) => refusal(e),
                }
            };
            write_frame(stream, &answer, config).await?;
            flushed(stream, config).await
        }
        Request::Get { name, offset, len } => {
            let reader = match objects.read(caller, &name).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(%peer, %name, error = %e, "get refused or missing");
                    write_frame(stream, &refusal(e), config).await?;
                    return flushed(stream, config).await;
                }
            };
            serve_get(peer, stream, reader, &name, offset, len, server).await?;
            flushed(stream, config).await
        }
        Request::Exists { name } => {
            let answer = match objects.exists(caller, &name) {
                Ok(found) => Response::Exists(found),
                Err(e) => refusal(e),
            };
            tracing::debug!(%peer, %name, ?answer, "exists");
            write_frame(stream, &answer, config).await?;
            flushed(stream, config).await
        }
        Request::Evict { name } => {
            let answer = evicted(objects.evict(caller, &name, None).await);
            send_answer(stream, &answer, config).await?;
            Ok(Next::Closed)
        }
        Request::EvictOwned { name, owner } => {
            let answer = evicted(objects.evict(caller, &name, Some(OwnerCap(owner))).await);
            send_answer(stream, &answer, config).await?;
            Ok(Next::Closed)
        }
        Request::Put { name, size } => {
            serve_put(peer, stream, server, name, size).await?;
            Ok(Next::Closed)
        }
    }
}

/// Flush what was written; the stream stays open for another request.
async fn flushed<S: AsyncWrite + Unpin>(stream: &mut S, config: ServeConfig) -> io::Result<Next> {
    tokio::time::timeout(config.stall_timeout, stream.flush())
        .await
        .map_err(|_| timed_out("sending an answer"))??;
    Ok(Next::Request)
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

/// Bytes `offset..offset + len` (`len: None` = to the end) of an object of
/// `size` bytes, if they are in it: the length.
fn fits(size: u64, offset: u64, len: Option<u64>) -> Option<u64> {
    match len {
        _ if offset > size => None,
        None => Some(size - offset),
        Some(l) if l <= size - offset => Some(l),
        Some(_) => None,
    }
}

fn out_of_range(size: u64, offset: u64, len: Option<u64>) -> Response {
    let asked = len.map_or("the rest".to_string(), |l| format!("{l} bytes"));
    Response::Refused(format!(
        "range of {asked} from byte {offset} is outside the object's {size} bytes"
    ))
}

/// This daemon's partial copy that `name` names, if it is fetching one.
fn partial(server: &Server, name: &RemoteName) -> Option<Arc<Partial>> {
    let RemoteName::Copy { producer, id } = name else {
        return None;
    };
    server.copies.get(&(*producer, *id)).map(|p| Arc::clone(&p))
}

/// Where a range is sent from.
enum Source {
    /// A stored object (ours, or a whole cached copy).
    Stored(ObjectReader),
    /// A copy still arriving (only segments it holds are asked for).
    Partial(Arc<Partial>),
}

async fn serve_get<S>(
    peer: PeerId,
    stream: &mut S,
    reader: ObjectReader,
    name: &RemoteName,
    offset: u64,
    len: Option<u64>,
    server: &Server,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = server.config;
    let meta = reader.meta().clone();
    let size = meta.size;
    let Some(len) = fits(size, offset, len) else {
        return write_frame(stream, &out_of_range(size, offset, len), config).await;
    };
    let header = Response::Object {
        size,
        hash: *meta.hash.as_bytes(),
        offset,
        len,
    };
    write_frame(stream, &header, config).await?;
    send_encoded(
        peer,
        stream,
        Source::Stored(reader),
        name,
        offset,
        len,
        server,
    )
    .await
}

/// Send the verified encoding of bytes `offset..offset + len` from `source`.
async fn send_encoded<S>(
    peer: PeerId,
    stream: &mut S,
    source: Source,
    name: &RemoteName,
    offset: u64,
    len: u64,
    server: &Server,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = server.config;
    let started = std::time::Instant::now();
    if let Source::Stored(ObjectReader::Memory { ref data, .. }) = source {
        if len <= ENCODE_INLINE {
            // Small: encoded here, no task hand-off.
            let Source::Stored(reader) = &source else {
                unreachable!()
            };
            let mut out = Vec::with_capacity(len as usize + 1024);
            let outboard = reader.outboard()?;
            encode_range(Data::Memory(data), &outboard, offset, len, &mut out)?;
            send(stream, &out, config).await?;
            server.traffic.served(peer, out.len() as u64);
            tracing::debug!(%peer, %name, offset, len, sent = out.len(), elapsed = ?started.elapsed(), "served");
            return Ok(());
        }
    }
    // Encoded by a blocking task (file reads; no hashing: the requester
    // checks), a few chunks ahead of the network.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(ENCODE_AHEAD);
    let what = name.clone();
    let encoder = tokio::task::spawn_blocking(move || -> io::Result<()> {
        let mut out = ChunkSender::new(tx);
        match source {
            Source::Stored(reader) => {
                let outboard = reader.outboard()?;
                match reader {
                    ObjectReader::Memory { data, .. } => {
                        encode_range(Data::Memory(&data), &outboard, offset, len, &mut out)?
                    }
                    ObjectReader::File { file, .. } => {
                        let file = tokio::runtime::Handle::current().block_on(file.into_std());
                        encode_range(Data::File(&file), &outboard, offset, len, &mut out).map_err(
                            |e| io::Error::new(e.kind(), format!("reading {what} to send it: {e}")),
                        )?
                    }
                }
            }
            Source::Partial(p) => {
                encode_range(Data::File(&p.file), &p.outboard(), offset, len, &mut out)?
            }
        }
        io::Write::flush(&mut out)
    });
    let mut sent = 0u64;
    while let Some(piece) = rx.recv().await {
        send(stream, &piece, config).await?;
        sent += piece.len() as u64;
        server.traffic.served(peer, piece.len() as u64);
    }
    // The encoder's error, if it stopped early (the requester sees a short
    // body and resumes or fails).
    encoder.await.map_err(io::Error::other)??;
    tracing::debug!(%peer, %name, offset, len, sent, elapsed = ?started.elapsed(), "served");
    Ok(())
}

/// Ranges up to this size of memory objects are encoded by the serving task.
const ENCODE_INLINE: u64 = 256 * 1024;
/// Encoded chunks the encoder may run ahead of the network.
const ENCODE_AHEAD: usize = 4;

/// A blocking `Write` that hands [`CHUNK`]-sized pieces to an async task.
struct ChunkSender {
    buf: BytesMut,
    tx: tokio::sync::mpsc::Sender<Bytes>,
}

impl ChunkSender {
    fn new(tx: tokio::sync::mpsc::Sender<Bytes>) -> Self {
        Self {
            buf: BytesMut::with_capacity(CHUNK),
            tx,
        }
    }

    fn push(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the requester went away"))
    }
}

impl io::Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == CHUNK {
            self.push()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
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

tokio::task_local! {
    /// The outcome of the request being answered, as its answer says.
    static OUTCOME: std::cell::Cell<&'static str>;
}

/// A request's operation, for the metrics.
fn op_name(request: &Request) -> &'static str {
    match request {
        Request::Get { .. } | Request::Open { .. } => "get",
        Request::Have { .. } => "have",
        Request::Exists { .. } => "exists",
        Request::Evict { .. } | Request::EvictOwned { .. } => "evict",
        Request::Put { .. } => "put",
    }
}

async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    msg: &Response,
    config: ServeConfig,
) -> io::Result<()> {
    let outcome = match msg {
        Response::NotFound => "not_found",
        Response::Refused(_) | Response::NotMember(_) => "refused",
        _ => "ok",
    };
    let _ = OUTCOME.try_with(|o| o.set(outcome));
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
