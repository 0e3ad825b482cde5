//! The daemon's local HTTP API: routes, JSON bodies and the batch framing.
//!
//! This module is the single definition of the contract between `proxymeshd`
//! and the SDK's [`DaemonConnector`](crate::DaemonConnector); both sides
//! import it. Everything here is plain data, testable without sockets.
//!
//! | route | request | success |
//! |---|---|---|
//! | `GET /v1/status` | | 200 [`Status`] |
//! | `POST /v1/objects` | streamed body | 201 [`PutResponse`] |
//! | `POST /v1/keys` | | 200 [`KeyResponse`]: a fresh key for a deferred `PUT` |
//! | `PUT /v1/objects/{key}` | streamed body | 200 [`PutResponse`] (replaces) |
//! | `GET /v1/objects/{key}` | | 200 streamed bytes, headers `content-length`, [`HASH_HEADER`] |
//! | `HEAD /v1/objects/{key}` | | 200 with `content-length`, or 404 |
//! | `DELETE /v1/objects/{key}` | | 200 [`EvictResponse`] |
//! | `POST /v1/batch/put` | [`write_frame`] frames | 200 [`KeysResponse`] |
//! | `POST /v1/batch/get` | [`KeysRequest`] | 200 [`write_batch_item`] items, in order |
//! | `POST /v1/batch/exists` | [`KeysRequest`] | 200 [`ExistsBatchResponse`] |
//! | `POST /v1/batch/evict` | [`KeysRequest`] | 200 [`EvictBatchResponse`] |
//!
//! `{key}` is a ticket (see [`Key`]) or, for objects of this daemon, a bare
//! 32-hex object ID. Every error is a JSON [`ApiError`] with a 4xx/5xx status:
//! 400 malformed input, 404 missing object, 409 key of another daemon (when
//! this daemon is not in a mesh), 413 over the size limit, 502 the daemon
//! holding the object is unreachable or failed, 504 it timed out, 507 disk
//! full. Gets of another daemon's object carry [`PATH_HEADER`].

use serde::{Deserialize, Serialize};

use crate::key::{Key, ObjectId};

/// Default address of the daemon's local API.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7878";
/// Environment variable naming the local daemon's API address (`host:port`,
/// `http://host:port`, or `unix:PATH` for its Unix socket).
pub const API_ENV: &str = "PROXYMESH_API";
/// Name of the daemon's Unix socket in its data directory (the local API,
/// served besides the TCP address; the SDK's fastest way in).
pub const API_SOCKET: &str = "api.sock";

/// The daemon's default data directory: `$XDG_DATA_HOME/proxymesh` (or the
/// platform equivalent), else `./proxymesh-data`.
pub fn default_data_dir() -> std::path::PathBuf {
    dirs::data_dir()
        .map(|d| d.join("proxymesh"))
        .unwrap_or_else(|| std::path::PathBuf::from("proxymesh-data"))
}

/// Where a daemon with the default data directory serves its Unix socket.
pub fn default_socket() -> std::path::PathBuf {
    default_data_dir().join(API_SOCKET)
}
/// Response header carrying an object's BLAKE3 hash (hex).
pub const HASH_HEADER: &str = "x-proxymesh-blake3";

/// `GET /v1/status`.
pub const STATUS: &str = "/v1/status";
/// `POST /v1/objects` (put) and prefix of `/v1/objects/{key}`.
pub const OBJECTS: &str = "/v1/objects";
/// `POST /v1/keys`.
pub const KEYS: &str = "/v1/keys";
/// `POST /v1/batch/put`.
pub const BATCH_PUT: &str = "/v1/batch/put";
/// `POST /v1/batch/get`.
pub const BATCH_GET: &str = "/v1/batch/get";
/// `POST /v1/batch/exists`.
pub const BATCH_EXISTS: &str = "/v1/batch/exists";
/// `POST /v1/batch/evict`.
pub const BATCH_EVICT: &str = "/v1/batch/evict";

/// The quick protocol: small gets and exists checks without HTTP, on the
/// daemon's Unix socket only.
///
/// A connection to the socket whose first bytes are [`HELLO`](quick::HELLO)
/// speaks it instead of HTTP/1.1 (a request line never starts with a NUL
/// byte). Then, any number of times:
///
/// - request: `op: u8` ([`GET`](quick::GET) or [`EXISTS`](quick::EXISTS)),
///   `len: u16` big-endian, then `len` bytes of the object's key as in
///   `/v1/objects/{key}` (at most [`MAX_KEY`](quick::MAX_KEY));
/// - answer: `status: u16` big-endian (the HTTP status the same `GET` or
///   `HEAD /v1/objects/{key}` would get), `len: u64` big-endian, then `len`
///   bytes: the object (a `GET` answered 200), nothing (`EXISTS`: 200 or
///   404), or an [`ApiError`] as JSON (any other status; also a `GET` that
///   is not found).
///
/// The object's bytes, its hash and remote fetches are exactly the `GET`
/// route's; an object that fails midway (a remote fetch that breaks) ends
/// the connection short of `len`. The daemon's usual connection limits and
/// timeouts apply (idle between requests, a request's rest after its first
/// byte, a stalled answer).
pub mod quick {
    /// First bytes of a quick-protocol connection (protocol version 1).
    pub const HELLO: &[u8; 4] = b"\0PM1";
    /// Get an object.
    pub const GET: u8 = 1;
    /// Whether an object exists.
    pub const EXISTS: u8 = 2;
    /// Longest key accepted.
    pub const MAX_KEY: usize = 1024;
    /// Longest error body an answer may carry.
    pub const MAX_ERROR: u64 = 64 * 1024;

    /// Encode a request.
    pub fn request(op: u8, key: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + key.len());
        out.push(op);
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out
    }

    /// Encode an answer's header.
    pub fn answer_header(status: u16, len: u64) -> [u8; 10] {
        let mut out = [0u8; 10];
        out[..2].copy_from_slice(&status.to_be_bytes());
        out[2..].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Decode an answer's header: status and length.
    pub fn parse_answer_header(h: &[u8; 10]) -> (u16, u64) {
        let status = u16::from_be_bytes([h[0], h[1]]);
        let len = u64::from_be_bytes(h[2..].try_into().expect("8 bytes"));
        (status, len)
    }
}

/// The path of one object.
pub fn object_path(key: &Key) -> String {
    format!("{OBJECTS}/{key}")
}

/// `/v1/objects/{owner ticket}` when `key` carries the owner capability
/// (evict and overwrite need it for another daemon's object), else
/// [`object_path`].
pub fn owner_path(key: &Key) -> String {
    match key.owner_ticket() {
        Some(t) => format!("{OBJECTS}/{t}"),
        None => object_path(key),
    }
}

/// Daemon status, as served by `GET /v1/status` and shown by `proxymesh status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's libp2p peer ID (stable across restarts).
    pub peer_id: String,
    /// The daemon's ProxyStore endpoint UUID (stable across restarts).
    pub uuid: String,
    /// proxymesh version.
    pub version: String,
    /// Number of stored objects.
    pub objects: u64,
    /// Total bytes of stored objects.
    pub bytes: u64,
    /// Bytes held in memory.
    pub memory_bytes: u64,
    /// Bytes spilled to disk.
    pub disk_bytes: u64,
    /// The memory cap for objects.
    pub memory_cap: u64,
    /// The largest accepted object, if limited.
    pub max_object_size: Option<u64>,
    /// Whether objects survive a restart.
    pub persist: bool,
    /// The data directory.
    pub data_dir: String,
    /// The local API's listen address.
    pub api: String,
    /// The local API's Unix socket (`unix:PATH`), if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<String>,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The daemon's place in the mesh; absent when it runs without relays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshStatus>,
}

/// The daemon's view of the mesh.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// Addresses the daemon listens on.
    pub listen_addrs: Vec<String>,
    /// Addresses others can reach it at (confirmed external and relay circuits).
    pub external_addrs: Vec<String>,
    /// The relays it keeps reservations with.
    pub relays: Vec<RelayStatus>,
    /// Peers with open connections.
    pub peers: Vec<PeerStatus>,
    /// Other daemons known through the relays' discovery.
    pub discovered: Vec<DiscoveredPeer>,
    /// Transfers this daemon has started from other daemons (cache hits and
    /// coalesced requests start none).
    #[serde(default)]
    pub transfers: u64,
    /// The mesh this daemon is a member of (`None` in an open mesh).
    #[serde(default)]
    pub mesh_id: Option<String>,
    /// Whether the daemon serves every peer (`--open-mesh`; labs only).
    #[serde(default)]
    pub open_mesh: bool,
    /// How many times in the last 5 minutes a relay connection holding this
    /// daemon's reservation closed. Often: most likely another daemon runs
    /// with this identity (the relay keeps the newest reservation).
    #[serde(default)]
    pub reservations_lost: u32,
    /// What AutoNAT says of this daemon's reachability: `public`,
    /// `private` (behind a NAT or firewall), or `unknown` (no verdict yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
    /// When this daemon's credential expires (Unix seconds).
    #[serde(default)]
    pub credential_expires: Option<u64>,
    /// Whether it is time to renew the credential (its last week, or its
    /// last quarter for short-lived ones): what the daemon warns about.
    #[serde(default)]
    pub credential_expires_soon: bool,
    /// The most recent transfers from other daemons (newest last), with the
    /// paths that carried their bytes.
    #[serde(default)]
    pub recent_transfers: Vec<TransferStatus>,
    /// Bytes this daemon served to and fetched from each peer since it
    /// started (object bytes and their hashes, as they crossed the mesh).
    #[serde(default)]
    pub traffic: Vec<PeerTraffic>,
}

/// Bytes exchanged with one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTraffic {
    /// The peer ID.
    pub peer_id: String,
    /// Bytes sent to it (it fetched from us).
    pub served_bytes: u64,
    /// Bytes received from it.
    pub fetched_bytes: u64,
}

/// One transfer of an object from another daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferStatus {
    /// The daemon the bytes came from.
    pub peer_id: String,
    /// The object (its ID, or its ProxyStore key).
    pub object: String,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes received (and verified as far as they go) so far.
    pub received: u64,
    /// Every path that carried bytes, in order (`relayed/quic`,
    /// `direct/quic`, ...): more than one when the transfer moved to a
    /// hole-punched connection or resumed after a connection was lost.
    pub paths: Vec<String>,
    /// `running`, `done` or `failed: <why>`.
    pub state: String,
    /// Seconds since it started (until it ended, once it did).
    pub secs: f64,
}

impl TransferStatus {
    /// The paths as one string, e.g. `relayed/quic→direct/quic`.
    pub fn path_history(&self) -> String {
        self.paths.join("→")
    }
}

/// One relay and the daemon's reservation there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// The relay's address as configured.
    pub addr: String,
    /// Whether the relay admitted this daemon as a member of its mesh.
    #[serde(default)]
    pub joined: bool,
    /// Whether a reservation is currently held.
    pub reserved: bool,
    /// The relay circuit address others dial, when reserved.
    pub circuit_addr: Option<String>,
}

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer ID.
    pub peer_id: String,
    /// Its open connections.
    pub connections: Vec<ConnectionStatus>,
}

/// One connection to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// `direct` or `relayed`.
    pub path: Path,
    /// `quic` or `tcp` (for a relayed connection: the transport to the relay).
    pub transport: Transport,
    /// The remote address.
    pub remote_addr: String,
}

/// How a connection reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Straight to the peer (on the same network, or hole-punched).
    Direct,
    /// Through a relay circuit.
    Relayed,
}

/// The transport carrying a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TCP (Noise + Yamux).
    Tcp,
}

/// Another daemon of the mesh, found through a relay's discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredPeer {
    /// Its peer ID.
    pub peer_id: String,
    /// Its ProxyStore endpoint UUID, when it registered one.
    pub uuid: Option<String>,
    /// Addresses it registered.
    pub addrs: Vec<String>,
}

/// Response header on remote gets: how the bytes reached this daemon
/// (`direct/quic`, `relayed/tcp`, or `cache`).
pub const PATH_HEADER: &str = "x-proxymesh-path";

/// Answer to a put: the new object's key and what was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The object's key; its string form is the ticket.
    pub key: Key,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 hash, hex.
    pub blake3: String,
    /// The read-only ticket (`pm1…`): what to give readers. `key` carries
    /// the owner capability when the daemon grants it; clients that do not
    /// parse tickets (Python's) take this one for readers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

/// Answer to `POST /v1/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyResponse {
    /// A fresh key on this daemon; nothing is stored under it yet.
    pub key: Key,
}

/// Answer to `DELETE /v1/objects/{key}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictResponse {
    /// Whether an object was removed.
    pub evicted: bool,
}

/// Request body of the batch routes that take keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysRequest {
    /// The keys, in order.
    pub keys: Vec<Key>,
}

/// Answer to `POST /v1/batch/put`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysResponse {
    /// The new keys, in the order of the request's frames.
    pub keys: Vec<Key>,
    /// Their read-only tickets, in the same order (see [`PutResponse::ticket`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tickets: Vec<String>,
}

/// Answer to `POST /v1/batch/exists`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistsBatchResponse {
    /// One flag per requested key.
    pub exists: Vec<bool>,
}

/// Answer to `POST /v1/batch/evict`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvictBatchResponse {
    /// One flag per requested key: whether an object was removed.
    pub evicted: Vec<bool>,
}

/// Machine-readable error class of an [`ApiError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: bad key, bad query, bad framing, empty body.
    BadRequest,
    /// No object under that key.
    NotFound,
    /// The key names an object of another daemon, which this daemon cannot reach.
    WrongPeer,
    /// The object exceeds the daemon's size limit.
    TooLarge,
    /// The request body ended before its declared length.
    IncompleteBody,
    /// The daemon's disk is full.
    StorageFull,
    /// The daemon holding the object could not be reached.
    Unreachable,
    /// The daemon holding the object did not answer in time.
    TimedOut,
    /// The object arrived corrupt or truncated from the daemon holding it.
    Corrupt,
    /// The daemon holding the object refused or broke the request.
    PeerError,
    /// The caller may not use this daemon's local API: another Unix user's
    /// connection, a non-loopback `Host`, or a request from a web browser.
    Forbidden,
    /// Anything else (I/O failure on the daemon's side).
    Internal,
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// The error class.
    pub code: ErrorCode,
    /// A human-readable message saying what went wrong and what to do.
    pub error: String,
}

/// Frame a batch-put item: `u64` big-endian length, then the bytes.
pub fn write_frame(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u64).to_be_bytes());
    out.extend_from_slice(data);
}

/// Batch-get item header: `1` (found) or `0` (missing), then, when found, a
/// `u64` big-endian length and the bytes.
pub fn write_batch_item(out: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        Some(d) => {
            out.push(1);
            write_frame(out, d);
        }
        None => out.push(0),
    }
}

/// Incremental parser for [`write_frame`] sequences (batch put bodies).
/// Feed it bytes; it yields complete frames. `finish` errors if input ended
/// mid-frame.
#[derive(Debug, Default)]
pub struct FrameParser {
    buf: Vec<u8>,
}

impl FrameParser {
    /// Append received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.buf.len() < 8 {
            return None;
        }
        let len = u64::from_be_bytes(self.buf[..8].try_into().expect("8 bytes")) as usize;
        if self.buf.len() - 8 < len {
            return None;
        }
        let frame = self.buf[8..8 + len].to_vec();
        self.buf.drain(..8 + len);
        Some(frame)
    }

    /// The declared length of the frame being received, if its header is in.
    pub fn pending_len(&self) -> Option<u64> {
        (self.buf.len() >= 8).then(|| u64::from_be_bytes(self.buf[..8].try_into().expect("8")))
    }

    /// Check that no partial frame is left.
    pub fn finish(&self) -> Result<(), &'static str> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err("batch body ended in the middle of a frame")
        }
    }
}

/// Parse a complete batch-get answer into per-key results.
pub fn parse_batch_items(
    mut body: &[u8],
    expected: usize,
) -> Result<Vec<Option<Vec<u8>>>, &'static str> {
    let mut out = Vec::with_capacity(expected);
    while !body.is_empty() {
        match body[0] {
            0 => {
                out.push(None);
                body = &body[1..];
            }
            1 => {
                if body.len() < 9 {
                    return Err("truncated batch item header");
                }
                let len = u64::from_be_bytes(body[1..9].try_into().expect("8")) as usize;
                if body.len() - 9 < len {
                    return Err("truncated batch item");
                }
                out.push(Some(body[9..9 + len].to_vec()));
                body = &body[9 + len..];
            }
            _ => return Err("bad batch item tag"),
        }
    }
    if out.len() != expected {
        return Err("batch answer has the wrong number of items");
    }
    Ok(out)
}

/// Parse a `{key}` path segment: a ticket, or a bare object ID (meaning an
/// object of the daemon being asked).
pub fn parse_key_segment(segment: &str) -> Result<KeySegment, crate::KeyError> {
    if segment.len() == 32 {
        if let Ok(id) = segment.parse::<ObjectId>() {
            return Ok(KeySegment::Bare(id));
        }
    }
    segment.parse::<Key>().map(KeySegment::Ticket)
}

/// A parsed `{key}` path segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySegment {
    /// A full key.
    Ticket(Key),
    /// A bare object ID of the daemon being asked.
    Bare(ObjectId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_across_arbitrary_splits() {
        let items: Vec<Vec<u8>> = vec![b"".to_vec(), b"abc".to_vec(), vec![7u8; 1000]];
        let mut body = Vec::new();
        for i in &items {
            write_frame(&mut body, i);
        }
        for split in [1usize, 3, 8, 9, 100, body.len()] {
            let mut p = FrameParser::default();
            let mut got = Vec::new();
            for chunk in body.chunks(split) {
                p.push(chunk);
                while let Some(f) = p.next_frame() {
                    got.push(f);
                }
            }
            p.finish().unwrap();
            assert_eq!(got, items, "split {split}");
        }
        let mut p = FrameParser::default();
        p.push(&body[..body.len() - 1]);
        while p.next_frame().is_some() {}
        assert!(p.finish().is_err());
    }

    #[test]
    fn batch_items_roundtrip_and_reject_truncation() {
        let mut body = Vec::new();
        write_batch_item(&mut body, Some(b"hello"));
        write_batch_item(&mut body, None);
        let parsed = parse_batch_items(&body, 2).unwrap();
        assert_eq!(parsed, vec![Some(b"hello".to_vec()), None]);
        assert!(parse_batch_items(&body[..body.len() - 2], 2).is_err());
        assert!(parse_batch_items(&body, 3).is_err());
    }

    #[test]
    fn key_segments() {
        let id = ObjectId::random();
        assert_eq!(
            parse_key_segment(&id.to_string()).unwrap(),
            KeySegment::Bare(id)
        );
        let key = Key::local(id);
        assert_eq!(
            parse_key_segment(&key.ticket()).unwrap(),
            KeySegment::Ticket(key)
        );
        assert!(parse_key_segment("nope").is_err());
    }
}
