//! The fetch protocol `/proxymesh/fetch/2`: requests and answers on a stream.
//!
//! Every message is a frame: a `u32` big-endian length, then that many bytes
//! of bincode 2 (serde, `bincode::config::standard()`). Frames are at most
//! [`MAX_HEADER`] bytes; a longer announced length is refused before any of
//! it is read.
//!
//! | request                | answer                                        |
//! |------------------------|-----------------------------------------------|
//! | `Get { name, offset, len }` | `Object { size, hash, offset, len }` + the range's verified encoding, or `NotFound` / `Refused` |
//! | `Exists { name }`      | `Exists(bool)`                                |
//! | `Evict { name }`       | `Evicted(bool)`, or `Refused` for a native object (evicting one needs its owner capability) |
//! | `Put { name, size }` + `size` raw bytes | `Stored { size, hash }` or `Refused` |
//! | `EvictOwned { name, owner }` | `Evicted(bool)`, or `Refused` if `owner` is not the object's owner capability |
//! | `Open { name, max }`   | `Opened { size, hash, len, holders }` + the verified encoding of bytes `0..len`: the first request of a fetch |
//! | `Have { name }`        | `Have { size, hash, have, fetching, holders }`: bitfields over the object's [`SEGMENT`]s |
//!
//! A name is a native object, a ProxyStore key, or `Copy { producer, id }`:
//! the serving daemon's copy of another daemon's object (cached, or still
//! arriving, segment by segment; read-only). A stream from a peer that has
//! not proved its membership is answered `NotMember` (it proves it and asks
//! again).
//!
//! A get's bytes are BLAKE3 verified streaming (bao, in `bao-tree`'s
//! format, 16 KiB chunk groups): the chunk groups covering the range, each
//! preceded in pre-order by the parent hash pairs that link it to the
//! object's hash, so the requester checks every group as it arrives (see
//! [`verified`](super::verified)); version 1 sent raw bytes, checked only
//! at the end.
//!
//! The server answers only members of its mesh (others get `Refused` and are
//! dropped). A ticket lets a member read (`Get`, `Exists`); evicting a
//! native object needs its owner capability. ProxyStore endpoint keys keep
//! ProxyStore's contract (whoever holds the key may evict it); a `Put` may
//! not overwrite another writer's key and is bounded by a per-peer quota.
//!
//! After answering a `Get` (header and every byte of the range) or an
//! `Exists`, the server keeps the stream open and reads the next request
//! from it, so a requester can reuse it (one round trip per small object,
//! instead of opening a stream and negotiating the protocol each time); an
//! idle stream is closed after a while. Any other request is the stream's
//! last: the server closes it after the answer. Everything here is pure
//! framing over futures' `AsyncRead`/`AsyncWrite` (which `libp2p::Stream`
//! implements); no sockets.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use proxymesh::ObjectId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::storage::ObjectName;

/// The fetch protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/proxymesh/fetch/2");

/// Largest accepted frame (request or answer header), in bytes.
pub const MAX_HEADER: usize = 64 * 1024;

/// An object at another daemon, as that daemon names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemoteName {
    /// A proxymesh object ID.
    Native(ObjectId),
    /// A ProxyStore endpoint key.
    Endpoint(String),
    /// The serving daemon's copy (cached, or still arriving) of native
    /// object `id` of daemon `producer`. (Appended last.)
    Copy {
        /// The daemon that made the object.
        producer: PeerId,
        /// Its ID there.
        id: ObjectId,
    },
}

impl RemoteName {
    /// The name the serving daemon stores this object under.
    pub fn object_name(&self) -> ObjectName {
        match self {
            RemoteName::Native(id) => ObjectName::Native(*id),
            RemoteName::Endpoint(key) => ObjectName::Endpoint(key.clone()),
            RemoteName::Copy { producer, id } => ObjectName::Remote {
                peer: *producer,
                id: *id,
            },
        }
    }
}

impl fmt::Display for RemoteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteName::Native(id) => write!(f, "{id}"),
            RemoteName::Endpoint(key) => write!(f, "with ProxyStore key {key:?}"),
            RemoteName::Copy { producer, id } => write!(f, "{id} (a copy of {producer}'s)"),
        }
    }
}

/// A request, the first frame of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Bytes `offset..offset + len` of an object (`len: None` = to the end).
    Get {
        /// The object.
        name: RemoteName,
        /// First byte.
        offset: u64,
        /// Number of bytes; `None` = the rest of the object.
        len: Option<u64>,
    },
    /// Whether the object exists.
    Exists {
        /// The object.
        name: RemoteName,
    },
    /// Remove the object.
    Evict {
        /// The object.
        name: RemoteName,
    },
    /// Store an object; `size` raw bytes follow the frame.
    Put {
        /// The object.
        name: RemoteName,
        /// Number of bytes that follow.
        size: u64,
    },
    /// Remove the object, presenting its owner capability. (Appended last,
    /// so the earlier requests keep their encoding.)
    EvictOwned {
        /// The object.
        name: RemoteName,
        /// Its owner capability.
        owner: [u8; 16],
    },
    /// The first request of a fetch: like `Get` from byte 0 for at most
    /// `max` bytes, answered with `Opened` (which also names the other
    /// daemons fetching or holding the object).
    Open {
        /// The object.
        name: RemoteName,
        /// Most bytes wanted now.
        max: u64,
    },
    /// Which segments ([`SEGMENT`] bytes each) of the object the server can
    /// send now, and which it is fetching.
    Have {
        /// The object.
        name: RemoteName,
    },
}

/// An answer, the first frame the server writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The object's size and BLAKE3 hash; the verified encoding of the
    /// `len` bytes from `offset` follows the frame.
    Object {
        /// Size of the whole object.
        size: u64,
        /// BLAKE3 of the whole object.
        hash: [u8; 32],
        /// First byte sent.
        offset: u64,
        /// Number of bytes sent.
        len: u64,
    },
    /// Answer to `Exists`.
    Exists(bool),
    /// Answer to `Evict`: whether there was something to evict.
    Evicted(bool),
    /// Answer to `Put`: what was stored.
    Stored {
        /// Bytes stored.
        size: u64,
        /// Their BLAKE3 hash.
        hash: [u8; 32],
    },
    /// No such object.
    NotFound,
    /// The request cannot be served; why.
    Refused(String),
    /// The requester has not proved membership of the server's mesh (on
    /// this connection, or since the server restarted): prove it on the
    /// member protocol and ask again. (Appended last, so the earlier
    /// answers keep their encoding.)
    NotMember(String),
    /// Answer to `Open`: the object, and the verified encoding of its first
    /// `len` bytes after the frame.
    Opened {
        /// Size of the whole object.
        size: u64,
        /// BLAKE3 of the whole object.
        hash: [u8; 32],
        /// Bytes from 0 sent.
        len: u64,
        /// Other daemons that fetched the object recently (from its
        /// producer): sources of its segments.
        holders: Vec<PeerId>,
    },
    /// Answer to `Have`: bitfields over the object's segments (bit `i` of
    /// byte `i / 8`, least significant first).
    Have {
        /// Size of the whole object.
        size: u64,
        /// BLAKE3 of the whole object.
        hash: [u8; 32],
        /// Segments the server can send now.
        have: Vec<u8>,
        /// Segments it is fetching now.
        fetching: Vec<u8>,
        /// Other daemons that fetched the object recently (from its producer).
        holders: Vec<PeerId>,
    },
}

/// Size of the segments a large object is fetched in, from one or several
/// daemons at once.
pub const SEGMENT: u64 = 1 << 20;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly before any byte of the frame.
    #[error("the stream closed before a message")]
    Closed,
    /// The stream ended inside the frame.
    #[error("the stream closed in the middle of a message")]
    Truncated,
    /// The frame is longer than [`MAX_HEADER`].
    #[error("message of {0} bytes exceeds the limit of {MAX_HEADER} bytes")]
    TooLarge(u64),
    /// The frame's bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The stream failed.
    #[error("stream error: {0}")]
    Io(#[from] io::Error),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_HEADER>()
}

/// Encode `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    bincode::serde::encode_into_std_write(msg, &mut out, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_HEADER {
        return Err(FrameError::TooLarge(len as u64));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Decode a frame's body (without the length prefix); every byte must be used.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// Write `msg` as one frame and flush.
pub async fn write_message<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Read one frame and decode it. Reads exactly the frame, nothing after it.
pub async fn read_message<R, T>(r: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut prefix[got..]).await? {
            0 if got == 0 => return Err(FrameError::Closed),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_HEADER {
        return Err(FrameError::TooLarge(len as u64));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode(&body)
}

/// Read a request.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<Request, FrameError> {
    read_message(r).await
}

/// Write a request.
pub async fn write_request<W: AsyncWrite + Unpin>(
    w: &mut W,
    req: &Request,
) -> Result<(), FrameError> {
    write_message(w, req).await
}

/// Read an answer.
pub async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> Result<Response, FrameError> {
    read_message(r).await
}

/// Write an answer.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    resp: &Response,
) -> Result<(), FrameError> {
    write_message(w, resp).await
}

/// Size of the pieces object bytes are read, sent and handed out in.
pub const CHUNK: usize = 256 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    fn requests() -> Vec<Request> {
        let id = ObjectId::random();
        vec![
            Request::Get {
                name: RemoteName::Native(id),
                offset: 0,
                len: None,
            },
            Request::Get {
                name: RemoteName::Endpoint("k".into()),
                offset: u64::MAX,
                len: Some(7),
            },
            Request::Exists {
                name: RemoteName::Endpoint("ünï\0code/../x".into()),
            },
            Request::Evict {
                name: RemoteName::Native(id),
            },
            Request::Put {
                name: RemoteName::Endpoint("k".into()),
                size: 1 << 40,
            },
        ]
    }

    fn responses() -> Vec<Response> {
        vec![
            Response::Object {
                size: 10,
                hash: *blake3::hash(b"x").as_bytes(),
                offset: 2,
                len: 8,
            },
            Response::Exists(true),
            Response::Evicted(false),
            Response::Stored {
                size: 0,
                hash: [7; 32],
            },
            Response::NotFound,
            Response::Refused("disk full".into()),
        ]
    }

    #[tokio::test]
    async fn messages_round_trip_back_to_back() {
        let (reqs, resps) = (requests(), responses());
        let mut buf = Cursor::new(Vec::new());
        for r in &reqs {
            write_request(&mut buf, r).await.unwrap();
        }
        for r in &resps {
            write_response(&mut buf, r).await.unwrap();
        }
        let mut rd = Cursor::new(buf.into_inner());
        for r in reqs {
            assert_eq!(read_request(&mut rd).await.unwrap(), r);
        }
        for r in resps {
            assert_eq!(read_response(&mut rd).await.unwrap(), r);
        }
        assert!(matches!(
            read_response(&mut rd).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn frame_is_read_exactly_leaving_the_body() {
        let mut bytes = encode(&Response::Object {
            size: 3,
            hash: [0; 32],
            offset: 0,
            len: 3,
        })
        .unwrap();
        bytes.extend_from_slice(b"abc");
        let mut rd = Cursor::new(bytes);
        read_response(&mut rd).await.unwrap();
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"abc");
    }

    #[tokio::test]
    async fn oversized_header_is_refused_unread() {
        let mut bytes = ((MAX_HEADER + 1) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let err = read_request(&mut Cursor::new(bytes)).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(n) if n == MAX_HEADER as u64 + 1));
        let err = read_request(&mut Cursor::new(u32::MAX.to_be_bytes().to_vec()))
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
        // Writing one is refused too.
        let huge = Request::Exists {
            name: RemoteName::Endpoint("x".repeat(MAX_HEADER)),
        };
        assert!(matches!(encode(&huge), Err(FrameError::TooLarge(_))));
    }

    #[tokio::test]
    async fn truncated_frames_are_reported() {
        let frame = encode(&requests()[1]).unwrap();
        for cut in [1, 3, 4, frame.len() - 1] {
            let err = read_request(&mut Cursor::new(frame[..cut].to_vec()))
                .await
                .unwrap_err();
            assert!(matches!(err, FrameError::Truncated), "cut {cut}: {err}");
        }
        let err = read_request(&mut Cursor::new(Vec::new()))
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0xff; 12],
            b"GET / HTTP/1.1\r\n".to_vec(),
            vec![],
            // A string claiming to be far longer than the frame.
            vec![2, 0xfc, 0xff, 0xff, 0xff, 0x7f],
        ];
        for body in cases {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            let err = read_request(&mut Cursor::new(frame)).await.unwrap_err();
            assert!(matches!(err, FrameError::Malformed(_)), "{body:?}: {err}");
        }
        // A valid message with trailing bytes inside its frame.
        let good = encode(&Response::NotFound).unwrap();
        let mut body = good[4..].to_vec();
        body.push(0);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let err = read_response(&mut Cursor::new(frame)).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
        // A request is not an answer and vice versa only by shape; an
        // out-of-range variant index is garbage.
        let frame = encode(&99u32).unwrap();
        assert!(matches!(
            read_response(&mut Cursor::new(frame)).await,
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn remote_names_map_to_storage_names() {
        let id = ObjectId::random();
        assert_eq!(RemoteName::Native(id).object_name(), ObjectName::Native(id));
        assert_eq!(
            RemoteName::Endpoint("k".into()).object_name(),
            ObjectName::Endpoint("k".into())
        );
        assert_eq!(RemoteName::Native(id).to_string(), id.to_string());
    }
}
