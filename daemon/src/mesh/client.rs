//! The requesting side of the fetch protocol: [`get`], [`exists`],
//! [`evict`] and [`put`] each take a stream and perform one request; after
//! a `get` read to its end ([`Body::into_reusable`]) or an `exists`, the
//! stream can carry the next request. [`get`] returns a [`Body`] that yields the range as it arrives,
//! enforces an idle timeout and a rate floor, and checks every chunk group
//! against the object's BLAKE3 hash before handing out a byte of it
//! ([`verified`](super::verified)).

use std::io;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use proxymesh::OwnerCap;

use super::protocol::{
    read_into, read_response, write_request, FrameError, RemoteName, Request, Response, CHUNK,
};
use super::verified::{RangeDecoder, Step};
use super::MeshError;
use crate::storage::outboard::BLOCK_BYTES;
use crate::storage::ChunkStream;
use bao_tree::TreeNode;

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
    /// `None` once the completed range handed it back ([`Body::take_reusable`]).
    stream: Option<S>,
    peer: PeerId,
    name: RemoteName,
    size: u64,
    hash: blake3::Hash,
    offset: u64,
    len: u64,
    /// Verified bytes of the range handed out.
    received: u64,
    /// Checks the encoded range as it arrives.
    decoder: RangeDecoder,
    /// Encoded bytes read from the stream (data and hashes).
    wire: u64,
    /// The hash pairs that arrived, when kept ([`keep_pairs`](Self::keep_pairs)).
    parents: Option<Vec<(TreeNode, [u8; 64])>>,
    idle: Duration,
    floor: RateFloor,
    /// Time spent waiting for the peer in the current rate window, and the
    /// bytes received in it.
    window: (Duration, u64),
    buf: BytesMut,
    /// What stopped the last read, if the stream (not the data) failed.
    broke: Option<Break>,
}

/// How a stream stopped delivering a range midway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// The stream or its connection failed, or it ended early.
    Lost,
    /// No byte arrived for the idle timeout.
    Stalled,
}

impl<S> Body<S> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        stream: S,
        peer: PeerId,
        name: &RemoteName,
        size: u64,
        hash: [u8; 32],
        offset: u64,
        len: u64,
        timeouts: Timeouts,
    ) -> Self {
        let hash = blake3::Hash::from_bytes(hash);
        Body {
            stream: Some(stream),
            peer,
            name: name.clone(),
            size,
            hash,
            offset,
            len,
            received: 0,
            decoder: RangeDecoder::new(hash, size, offset, len),
            wire: 0,
            parents: None,
            idle: timeouts.idle,
            floor: timeouts.floor,
            window: (Duration::ZERO, 0),
            buf: BytesMut::new(),
            broke: None,
        }
    }
}

impl<S: AsyncRead + Unpin> Body<S> {
    /// Why the last [`next_chunk`](Self::next_chunk) failed, when the
    /// stream stopped delivering (rather than the bytes being wrong or the
    /// peer too slow): the transfer can [`resume`](Self::resume) on another
    /// stream.
    pub fn broke(&self) -> Option<Break> {
        self.broke
    }

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

    /// Bytes of the range received and verified so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Keep the hash pairs that prove the range as they arrive, to be taken
    /// with [`take_pairs`](Self::take_pairs) (to serve the range again).
    pub fn keep_pairs(&mut self) {
        self.parents.get_or_insert_with(Vec::new);
    }

    /// The hash pairs kept since the last call.
    pub fn take_pairs(&mut self) -> Vec<(TreeNode, [u8; 64])> {
        self.parents
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Bytes read from the network so far (the range's data and the hashes
    /// that prove it), on every stream this body used.
    pub fn wire_bytes(&self) -> u64 {
        self.wire
    }

    /// The stream, once the whole range arrived (and, for a whole object,
    /// was verified): the server waits for another request on it.
    pub fn take_reusable(&mut self) -> Option<S> {
        let done = self.received == self.len
            && self.decoder.is_done()
            && self.buf.is_empty()
            && self.broke.is_none();
        if done {
            self.stream.take()
        } else {
            None
        }
    }

    /// Continue on `stream` (a new stream to the same peer, after this
    /// one broke): ask for the rest of the range from the first byte not
    /// received yet. Bytes already received (all verified) are kept; the
    /// answer must describe the same object (size and BLAKE3), else the
    /// transfer is `Corrupt`.
    pub async fn resume(&mut self, mut stream: S, timeouts: Timeouts) -> Result<(), MeshError>
    where
        S: AsyncWrite,
    {
        let at = self.offset + self.received;
        let rest = self.len - self.received;
        let req = Request::Get {
            name: self.name.clone(),
            offset: at,
            len: Some(rest),
        };
        match ask(&mut stream, self.peer, &req, &self.name, timeouts.header).await? {
            Response::Object {
                size,
                hash,
                offset,
                len,
            } if size == self.size
                && blake3::Hash::from_bytes(hash) == self.hash
                && offset == at
                && len == rest =>
            {
                self.stream = Some(stream);
                self.buf.clear();
                self.decoder = RangeDecoder::new(self.hash, size, at, rest);
                self.window = (Duration::ZERO, 0);
                self.broke = None;
                Ok(())
            }
            Response::Object { size, hash, .. } => Err(self.corrupt(format!(
                "the object changed while it was fetched: it was {} bytes with BLAKE3 {}, the peer now has {size} bytes with BLAKE3 {}",
                self.size,
                self.hash,
                blake3::Hash::from_bytes(hash)
            ))),
            other => Err(common(self.peer, &self.name, "get", other)),
        }
    }

    /// The next verified chunk (up to about [`CHUNK`] bytes), `Ok(None)`
    /// once the whole range arrived. Every byte handed out was checked
    /// against the object's hash first; a wrong byte ends the body with
    /// `Corrupt` naming its chunk group, before anything of that group is
    /// handed out. Errors: `TimedOut` after `idle` without a byte,
    /// `Corrupt` on wrong bytes or truncation, `Unreachable` if the stream
    /// breaks.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, MeshError> {
        let mut out = BytesMut::new();
        loop {
            // Hand out what the buffer proves.
            let need = loop {
                match self.decoder.next(&mut self.buf) {
                    Ok(Step::Data(_, data)) => {
                        self.received += data.len() as u64;
                        if out.is_empty() {
                            out = BytesMut::from(data);
                        } else {
                            out.extend_from_slice(&data);
                        }
                        if out.len() >= CHUNK {
                            return Ok(Some(out.freeze()));
                        }
                    }
                    Ok(Step::Parent(node, pair)) => {
                        if let Some(keep) = &mut self.parents {
                            keep.push((node, pair));
                        }
                    }
                    Ok(Step::NeedMore(n)) => break n,
                    Ok(Step::Done) => {
                        return Ok((!out.is_empty()).then(|| out.freeze()));
                    }
                    Err(bad) => {
                        return Err(self.corrupt(format!(
                            "{bad} (chunk group of {} bytes at {}); nothing from it on was used",
                            BLOCK_BYTES, bad.offset
                        )))
                    }
                }
            };
            if !out.is_empty() {
                return Ok(Some(out.freeze()));
            }
            // Read what this answer still holds, a chunk's worth at most
            // beyond the next item.
            let want = self.decoder.ahead(CHUNK.max(need)) - self.buf.len();
            let waiting = Instant::now();
            let stream =
                (self.stream.as_mut()).expect("the stream is handed back only once complete");
            let read =
                tokio::time::timeout(self.idle, read_into(stream, &mut self.buf, want)).await;
            let waited = waiting.elapsed();
            let n = match read {
                Err(_) => {
                    self.broke = Some(Break::Stalled);
                    return Err(MeshError::TimedOut {
                        peer: self.peer,
                        id: Some(self.name.clone()),
                        phase: "transfer (no bytes arrived)",
                        after: self.idle,
                    });
                }
                Ok(Err(e)) => {
                    self.broke = Some(Break::Lost);
                    return Err(MeshError::Unreachable {
                        peer: self.peer,
                        reason: format!(
                            "the transfer of object {} broke after {} of {} bytes: {}",
                            self.name,
                            self.received,
                            self.len,
                            super::error::stream_failure(&e)
                        ),
                    });
                }
                Ok(Ok(0)) => {
                    self.broke = Some(Break::Lost);
                    return Err(self.corrupt(format!(
                        "truncated: the stream ended after {} of {} bytes",
                        self.received, self.len
                    )));
                }
                Ok(Ok(n)) => n,
            };
            self.wire += n as u64;
            if let Some(e) = self.below_floor(n as u64, waited) {
                return Err(e);
            }
        }
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
            reason: format!(
                "the request could not be completed: {}",
                super::error::stream_failure(&e)
            ),
        },
        // A server answers every well-formed request before it closes the
        // stream: one that closed unanswered went away with its connection
        // (e.g. a relayed one closed for a direct one), which is worth
        // asking again, not a protocol breach.
        FrameError::Closed | FrameError::Truncated => MeshError::Unreachable {
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
        Response::NotMember(reason) => MeshError::NotMember { peer, reason },
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
            Ok(Body::new(stream, peer, name, size, hash, o, l, timeouts))
        }
        other => Err(common(peer, name, "get", other)),
    }
}

/// The first request of a fetch of `name`: its first `max` bytes (the
/// whole object if it is no larger), and the other daemons the producer
/// knows to be fetching or holding it.
pub async fn open<S>(
    mut stream: S,
    peer: PeerId,
    name: &RemoteName,
    max: u64,
    timeouts: Timeouts,
) -> Result<(Body<S>, Vec<PeerId>), MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = Request::Open {
        name: name.clone(),
        max,
    };
    match ask(&mut stream, peer, &req, name, timeouts.header).await? {
        Response::Opened {
            size,
            hash,
            len,
            holders,
        } => {
            if len != max.min(size) {
                return Err(MeshError::Protocol {
                    peer,
                    reason: format!(
                        "asked for the first {max} bytes of {name}, got {len} of {size}"
                    ),
                });
            }
            let holders = holders.into_iter().filter(|h| *h != peer).collect();
            Ok((
                Body::new(stream, peer, name, size, hash, 0, len, timeouts),
                holders,
            ))
        }
        other => Err(common(peer, name, "open", other)),
    }
}

/// What `peer` holds of `name`: (size, hash, segments it has, segments it
/// is fetching, other holders it knows).
pub async fn have<S>(
    mut stream: S,
    peer: PeerId,
    name: &RemoteName,
    timeouts: Timeouts,
) -> Result<(HaveAnswer, S), MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = Request::Have { name: name.clone() };
    match ask(&mut stream, peer, &req, name, timeouts.header).await? {
        Response::Have {
            size,
            hash,
            have,
            fetching,
            holders,
        } => Ok((
            HaveAnswer {
                size,
                hash: blake3::Hash::from_bytes(hash),
                have,
                fetching,
                holders,
            },
            stream,
        )),
        other => Err(common(peer, name, "have", other)),
    }
}

/// An answer to [`have`].
#[derive(Debug, Clone)]
pub struct HaveAnswer {
    /// Size of the object.
    pub size: u64,
    /// Its BLAKE3 hash.
    pub hash: blake3::Hash,
    /// Bitfield of the segments the peer can send.
    pub have: Vec<u8>,
    /// Bitfield of the segments it is fetching.
    pub fetching: Vec<u8>,
    /// Other holders it knows (a producer's list).
    pub holders: Vec<PeerId>,
}

/// Whether `peer` has `name`.
pub async fn exists<S>(
    mut stream: S,
    peer: PeerId,
    name: &RemoteName,
    timeouts: Timeouts,
) -> Result<(bool, S), MeshError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = Request::Exists { name: name.clone() };
    match ask(&mut stream, peer, &req, name, timeouts.header).await? {
        // The stream is free for another request.
        Response::Exists(b) => Ok((b, stream)),
        other => Err(common(peer, name, "exists", other)),
    }
}

/// Make `peer` remove `name`; whether it had it. The stream is the
/// exchange's last.
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
    let local = |msg: String| MeshError::Storage(io::Error::other(msg).into());
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
                reason: format!(
                    "the put broke after {sent} of {size} bytes: {}",
                    super::error::stream_failure(&e)
                ),
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
