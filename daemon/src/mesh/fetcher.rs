//! Fetching objects from other daemons: verified, cached, coalesced.
//!
//! A [`Fetcher::get`] of a native object first looks for this daemon's
//! cached copy (stored as [`ObjectName::Remote`]). Otherwise it opens a
//! stream through the [`StreamOpener`], sends `Open` (the first segment,
//! and who else fetches the object), and returns [`Fetched::Streaming`] as
//! soon as the answer's header arrives. An object over one segment is then
//! fetched from every source at once by the swarm engine (`swarm.rs`:
//! segments into a sparse file served to others as it fills, each a
//! verified range). A smaller one, or a ProxyStore key (fetched with one
//! get), is moved by a task: it reads the bytes from the network (an idle timeout on
//! every read), checks size and BLAKE3 as they arrive, writes them into a
//! storage writer for the cache and passes them through a bounded channel to
//! the returned body. The pipeline holds a few chunks at most; a slow reader
//! of the body slows the transfer down (back-pressure), and a reader that
//! goes away does not stop the transfer into the cache. Small objects (up
//! to 64 KiB) are moved the same way but by the requesting task, before
//! the body is returned: no task hand-offs on the small-object path.
//!
//! Streams are reused: a get or exists goes out on an idle stream to the
//! peer when there is one ([`pool`](super::pool)), so a warm small get is
//! one request/response round trip.
//!
//! - **Verification**: every 16 KiB chunk group is checked against the
//!   object's hash before a byte of it is released ([`verified`](super::verified)),
//!   so a corrupt or truncated transfer ends the body with an `io::Error`
//!   naming the peer and object before any wrong byte, and the cache writer
//!   is dropped (nothing visible). On success the cached copy is committed
//!   before the body ends.
//! - **Cache**: cached copies are tracked in an LRU with their sizes; when
//!   their total exceeds [`FetchConfig::cache_cap`] the least recently used
//!   are evicted from storage. Objects larger than the cap are not cached.
//!   Only native objects are cached: their bytes never change, whereas a
//!   ProxyStore key can be set again.
//! - **Coalescing**: concurrent gets of one (peer, object) make one
//!   transfer. Followers wait until the leader's transfer has finished and
//!   then read the committed copy ([`Fetched::Cached`]), or get the same
//!   typed error.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId};
use lru::LruCache;
use proxymesh::api::Path;
use proxymesh::{ObjectId, OwnerCap};
use tokio::sync::mpsc;

use super::client::{self, Body, Timeouts};
use super::copies::Copies;
use super::pool::StreamPool;
use super::protocol::RemoteName;
use super::protocol::SEGMENT;
use super::singleflight::{Join, Leader, SingleFlight};
use super::traffic::Traffic;
use super::{MeshError, PathInfo, StreamOpener};
use crate::storage::{ChunkStream, ObjectName, ObjectReader, ObjectWriter, Storage, StorageError};

mod leftover;
mod pace;
mod swarm;
#[cfg(test)]
mod tests;

/// Most times one transfer moves to a better path.
const MAX_MOVES: u32 = 3;
/// First pause before trying again to resume a transfer that could not be
/// resumed (doubling up to [`RESUME_BACKOFF_MAX`]); the attempts go on
/// until bytes have not flowed for the idle timeout.
const RESUME_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between attempts to resume.
const RESUME_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a transfer whose relayed stream ended waits for a direct path
/// to show before it resumes on whatever there is.
const DIRECT_GRACE: Duration = Duration::from_secs(2);
/// Times one request is made before its stream's failure is reported (a
/// peer that cannot be reached fails at once, when no stream opens; these
/// are streams that opened and then closed, as relayed connections do when
/// a punched one replaces them, which many at once can make happen again).
const ASK_ATTEMPTS: u32 = 6;
/// Pause before asking again after a stream failed (times the attempt).
const ASK_PAUSE: Duration = Duration::from_millis(100);
/// Transfers kept in [`Fetcher::recent`].
const RECENT_TRANSFERS: usize = 32;

/// Chunks buffered between the network task and the body handed out
/// (each up to [`CHUNK`](super::protocol::CHUNK) bytes).
const PIPELINE_CHUNKS: usize = 8;
/// Objects up to this size are fetched to their end (verified, cached) in
/// the requesting task before their body is handed out, rather than by a
/// task of their own: a small get costs no task hand-offs.
const FETCH_INLINE: u64 = 64 * 1024;

/// Fetch settings.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Longest wait from sending a request to the answer's header.
    pub header_timeout: Duration,
    /// Longest time without a byte arriving while an object streams in;
    /// then the transfer fails with [`MeshError::TimedOut`].
    pub idle_timeout: Duration,
    /// Slowest rate a transfer may keep for long (see [`client::RateFloor`]).
    pub floor: client::RateFloor,
    /// Total bytes of cached copies kept; least recently used beyond it are
    /// evicted.
    pub cache_cap: u64,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(10),
            floor: client::RateFloor::default(),
            cache_cap: 4 << 30,
        }
    }
}

/// A fetched object.
pub enum Fetched {
    /// This daemon's cached copy.
    Cached {
        /// The cached copy.
        reader: ObjectReader,
    },
    /// Arriving from the peer now.
    Streaming {
        /// Size in bytes.
        size: u64,
        /// BLAKE3 hash announced by the peer (the body fails if the bytes
        /// do not match it).
        hash: blake3::Hash,
        /// The path the transfer takes.
        path: PathInfo,
        /// The bytes, as they arrive.
        body: ChunkStream,
    },
}

/// The error when `peer`'s copy of `name` hashes to `got` but the ticket
/// promised `expect`.
fn not_promised(
    peer: PeerId,
    name: &RemoteName,
    expect: Option<blake3::Hash>,
    got: blake3::Hash,
) -> Option<MeshError> {
    match expect {
        Some(want) if want != got => Some(MeshError::Corrupt {
            peer,
            id: name.clone(),
            reason: format!("the ticket promises BLAKE3 {want}, the peer has {got}"),
        }),
        _ => None,
    }
}

/// A range of a remote object ([`Fetcher::get_range`]).
pub enum Ranged {
    /// This daemon's cached copy: read the range from it.
    Cached {
        /// The cached copy.
        reader: ObjectReader,
    },
    /// Arriving from the peer now, verified.
    Streaming {
        /// The whole object's size.
        size: u64,
        /// The range: its first byte and length.
        offset: u64,
        len: u64,
        /// Its bytes, as they arrive.
        body: ChunkStream,
    },
    /// No byte of the range is in the object, of `size` bytes.
    Unsatisfiable {
        /// The object's size.
        size: u64,
    },
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fetched::Cached { reader } => f
                .debug_struct("Cached")
                .field("meta", reader.meta())
                .finish(),
            Fetched::Streaming {
                size, hash, path, ..
            } => f
                .debug_struct("Streaming")
                .field("size", size)
                .field("hash", hash)
                .field("path", path)
                .finish_non_exhaustive(),
        }
    }
}

/// How a coalesced fetch ended, as its followers see it.
#[derive(Clone)]
enum Outcome {
    /// The object is committed to the cache.
    Cached,
    /// The transfer succeeded (or was abandoned) but left no cached copy.
    NotCached,
    /// The transfer failed.
    Failed(Arc<MeshError>),
}

type CacheKey = (PeerId, ObjectId);

/// Sizes of the cached copies, least recently used first out.
struct CacheIndex {
    lru: LruCache<CacheKey, u64>,
    bytes: u64,
}

struct Inner {
    storage: Arc<Storage>,
    opener: Arc<dyn StreamOpener>,
    config: FetchConfig,
    flights: SingleFlight<CacheKey, Outcome>,
    cache: Mutex<CacheIndex>,
    transfers: AtomicU64,
    recent: Mutex<std::collections::VecDeque<Arc<Transfer>>>,
    /// Streams whose last answer was read to its end, for the next request.
    pool: StreamPool<libp2p::Stream>,
    /// Bytes received per peer.
    traffic: Arc<Traffic>,
    /// Copies being fetched in segments, served to others as they arrive.
    copies: Arc<Copies>,
    /// What failed fetches verified, for the next get.
    leftovers: leftover::Leftovers,
    /// Where fetches and cache lookups are counted.
    metrics: Arc<crate::metrics::Metrics>,
}

/// One transfer, as status shows it.
struct Transfer {
    peer: PeerId,
    name: RemoteName,
    size: u64,
    started: Instant,
    received: AtomicU64,
    /// Every path that carried bytes, in order.
    paths: Mutex<Vec<PathInfo>>,
    /// `None` while running; then `done` or `failed: …`, and when.
    ended: Mutex<Option<(String, Instant)>>,
    /// Where its end is counted.
    metrics: Arc<crate::metrics::Metrics>,
}

impl Transfer {
    /// Record the end: done (`Ok`) or failed, in status and the metrics
    /// (by the path it ended on).
    fn end(&self, result: Result<(), &MeshError>) {
        let now = Instant::now();
        let (state, outcome) = match result {
            Ok(()) => ("done".to_string(), "ok"),
            Err(e) => (format!("failed: {e}"), error_kind(e)),
        };
        *self.ended.lock().expect("transfer lock") = Some((state, now));
        let path = self.path();
        self.metrics.fetch(
            path.path,
            path.transport,
            outcome,
            self.received.load(Ordering::Relaxed),
            now.duration_since(self.started),
        );
    }

    /// The path carrying its bytes now (the last one it took).
    fn path(&self) -> PathInfo {
        *self
            .paths
            .lock()
            .expect("transfer lock")
            .last()
            .expect("a transfer has a path")
    }

    fn status(&self) -> proxymesh::api::TransferStatus {
        let ended = self.ended.lock().expect("transfer lock").clone();
        let (state, secs) = match ended {
            Some((state, at)) => (state, at.duration_since(self.started)),
            None => ("running".to_string(), self.started.elapsed()),
        };
        proxymesh::api::TransferStatus {
            peer_id: self.peer.to_string(),
            object: match &self.name {
                RemoteName::Native(id) => id.to_string(),
                RemoteName::Endpoint(key) => key.clone(),
                RemoteName::Copy { id, .. } => id.to_string(),
            },
            size: self.size,
            received: self.received.load(Ordering::Relaxed),
            paths: history(&self.paths.lock().expect("transfer lock")),
            state,
            secs: secs.as_secs_f64(),
        }
    }
}

/// Paths as text, with consecutive repeats folded.
fn history(paths: &[PathInfo]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in paths {
        let p = p.to_string();
        if out.last() != Some(&p) {
            out.push(p);
        }
    }
    out
}

/// Fetches objects from other daemons (cheap to clone).
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("config", &self.inner.config)
            .field("transfers", &self.transfers())
            .field("cached_bytes", &self.cached_bytes())
            .finish()
    }
}

impl Fetcher {
    /// A fetcher caching into `storage` and reaching peers through `opener`.
    pub fn new(storage: Arc<Storage>, opener: Arc<dyn StreamOpener>, config: FetchConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                storage,
                opener,
                config,
                flights: SingleFlight::new(),
                cache: Mutex::new(CacheIndex {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                }),
                transfers: AtomicU64::new(0),
                recent: Mutex::new(std::collections::VecDeque::new()),
                pool: StreamPool::default(),
                traffic: Arc::default(),
                copies: Arc::default(),
                leftovers: leftover::Leftovers::default(),
                metrics: Arc::default(),
            }),
        }
    }

    /// Count fetches and cache lookups in `metrics`.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_metrics is called before the fetcher is shared"));
        inner.metrics = metrics;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Count received bytes into `traffic`, and register copies being
    /// fetched in `copies` (both shared with the server).
    pub fn with_traffic(self, traffic: Arc<Traffic>, copies: Arc<Copies>) -> Self {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_traffic is called before the fetcher is shared"));
        inner.traffic = traffic;
        inner.copies = copies;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Bytes exchanged per peer.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.inner.traffic
    }

    /// The copies being fetched (for the server, which serves them).
    pub fn copies(&self) -> &Arc<Copies> {
        &self.inner.copies
    }

    /// Object `name` of `peer` (reached through `addrs` if not connected):
    /// the cached copy, or the bytes as they arrive (see the module docs).
    pub async fn get(
        &self,
        peer: PeerId,
        name: RemoteName,
        addrs: &[Multiaddr],
    ) -> Result<Fetched, MeshError> {
        self.get_checked(peer, name, addrs, None).await
    }

    /// [`get`](Self::get), and the bytes must hash to `expect` (what the
    /// ticket promised): a producer announcing another hash fails with
    /// [`MeshError::Corrupt`] before any byte is handed out.
    pub async fn get_checked(
        &self,
        peer: PeerId,
        name: RemoteName,
        addrs: &[Multiaddr],
        expect: Option<blake3::Hash>,
    ) -> Result<Fetched, MeshError> {
        // The error, if a cached copy is not what the ticket promised.
        let broken = |got: blake3::Hash, name: &RemoteName| not_promised(peer, name, expect, got);
        let RemoteName::Native(id) = name else {
            return self.fetch(peer, name, addrs, None, expect).await;
        };
        let key = (peer, id);
        loop {
            match self.inner.flights.join(key) {
                Join::Leader(leader) => {
                    if let Some(reader) = self.cached(key).await? {
                        leader.complete(Outcome::Cached);
                        self.lookup("hit");
                        if let Some(e) = broken(reader.meta().hash, &name) {
                            return Err(e);
                        }
                        return Ok(Fetched::Cached { reader });
                    }
                    self.lookup("miss");
                    return self.fetch(peer, name, addrs, Some(leader), expect).await;
                }
                Join::Follower(follower) => match follower.wait().await {
                    Ok(Outcome::Cached) => {
                        if let Some(reader) = self.cached(key).await? {
                            if let Some(e) = broken(reader.meta().hash, &name) {
                                return Err(e);
                            }
                            return Ok(Fetched::Cached { reader });
                        }
                        // Evicted meanwhile: fetch again.
                    }
                    Ok(Outcome::Failed(e)) => return Err((*e).clone()),
                    // Nothing to read: lead (or follow) a new fetch.
                    Ok(Outcome::NotCached) | Err(_) => {}
                },
            }
        }
    }

    /// The bytes of `name` at `peer` that `range` asks for: this daemon's
    /// cached copy when it has one (the caller reads the range from it);
    /// otherwise asked of `peer` alone and not cached, every chunk group
    /// checked against the object's hash before it is handed out. The
    /// object's size and hash come first (a zero-length range: one round
    /// trip, no bytes), and must match `expect` (the ticket's hash).
    pub async fn get_range(
        &self,
        peer: PeerId,
        name: RemoteName,
        addrs: &[Multiaddr],
        expect: Option<blake3::Hash>,
        range: crate::service::range::ByteRange,
    ) -> Result<Ranged, MeshError> {
        let corrupt = |hash: blake3::Hash| not_promised(peer, &name, expect, hash);
        if let RemoteName::Native(id) = name {
            if let Some(reader) = self.cached((peer, id)).await? {
                if let Some(e) = corrupt(reader.meta().hash) {
                    return Err(e);
                }
                return Ok(Ranged::Cached { reader });
            }
        }
        let timeouts = self.timeouts();
        let (mut probe, path) = self
            .reusing(peer, addrs, |stream| {
                client::get(stream, peer, &name, 0, Some(0), timeouts)
            })
            .await?;
        let (size, hash) = (probe.size(), probe.hash());
        while probe.next_chunk().await?.is_some() {}
        if let Some(stream) = probe.take_reusable() {
            self.inner.pool.give(peer, stream, path);
        }
        if let Some(e) = corrupt(hash) {
            return Err(e);
        }
        let Some((offset, len)) = range.resolve(size) else {
            return Ok(Ranged::Unsatisfiable { size });
        };
        let (body, path) = self
            .reusing(peer, addrs, |stream| {
                client::get(stream, peer, &name, offset, Some(len), timeouts)
            })
            .await?;
        if body.hash() != hash || body.size() != size {
            return Err(MeshError::Corrupt {
                peer,
                id: name.clone(),
                reason: "it described the object differently between two requests".into(),
            });
        }
        // The same pump as a whole object's single-stream transfer, caching
        // nothing: a stream that breaks or stalls mid-range is resumed from
        // the first byte not yet handed out, and the range moves to a
        // direct path when one comes up.
        let record = self.record(peer, &name, len, path);
        let (pump, body) = Pump::new(
            Arc::clone(&self.inner),
            (peer, name, addrs.to_vec()),
            body,
            (None, None, record),
            timeouts,
            PIPELINE_CHUNKS,
        );
        tokio::spawn(pump.run());
        Ok(Ranged::Streaming {
            size,
            offset,
            len,
            body,
        })
    }

    /// Count a cache lookup of another daemon's object.
    fn lookup(&self, outcome: &'static str) {
        self.inner
            .metrics
            .cache
            .get_or_create(&crate::metrics::OutcomeLabel { outcome })
            .inc();
    }

    /// A new transfer of `bytes` of `name` from `peer`, listed among the
    /// recent ones.
    fn record(&self, peer: PeerId, name: &RemoteName, bytes: u64, path: PathInfo) -> Arc<Transfer> {
        let record = Arc::new(Transfer {
            peer,
            name: name.clone(),
            size: bytes,
            started: Instant::now(),
            received: AtomicU64::new(0),
            paths: Mutex::new(vec![path]),
            ended: Mutex::new(None),
            metrics: Arc::clone(&self.inner.metrics),
        });
        let mut recent = self.inner.recent.lock().expect("recent lock");
        if recent.len() >= RECENT_TRANSFERS {
            recent.pop_front();
        }
        recent.push_back(record.clone());
        record
    }

    /// Whether `peer` has `name`.
    pub async fn exists(
        &self,
        peer: PeerId,
        name: RemoteName,
        addrs: &[Multiaddr],
    ) -> Result<bool, MeshError> {
        let ((found, stream), path) = self
            .reusing(peer, addrs, |stream| {
                client::exists(stream, peer, &name, self.timeouts())
            })
            .await?;
        self.inner.pool.give(peer, stream, path);
        Ok(found)
    }

    /// Run a one-request exchange on a new stream; again on another (up to
    /// [`ASK_ATTEMPTS`] times) if
    /// the first stream broke (e.g. its relayed connection closed as a
    /// direct one came up).
    async fn twice<T, F, Fut>(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        exchange: F,
    ) -> Result<T, MeshError>
    where
        F: Fn(libp2p::Stream) -> Fut,
        Fut: std::future::Future<Output = Result<T, MeshError>>,
    {
        Ok(self.twice_on(peer, addrs, false, exchange).await?.0)
    }

    /// An exchange that leaves its stream fit for another request (`get`,
    /// `exists`), on an idle stream to `peer` if there is one (see
    /// [`pool`](super::pool)): one round trip, no stream to open. A pooled
    /// stream that fails, or does not answer within a few round trips (the
    /// peer restarted), is dropped and the exchange runs on a new stream as
    /// [`twice_on`](Self::twice_on) does, on a fresh connection if the old
    /// one stopped answering.
    async fn reusing<T, F, Fut>(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        exchange: F,
    ) -> Result<(T, PathInfo), MeshError>
    where
        F: Fn(libp2p::Stream) -> Fut,
        Fut: std::future::Future<Output = Result<T, MeshError>>,
    {
        let opener = &self.inner.opener;
        let mut fresh = false;
        if let Some((stream, path)) = self.inner.pool.take(&peer, opener.path_now(&peer)) {
            let quick = opener.suspect_after(&peer);
            let answered = tokio::select! {
                answered = tokio::time::timeout(quick, exchange(stream)) => answered,
                // Its relayed connection is closing for a direct one.
                () = opener.better_path(peer, path) => Ok(Err(MeshError::Unreachable {
                    peer,
                    reason: "a direct path came up".into(),
                })),
            };
            match answered {
                Ok(Ok(answer)) => return Ok((answer, path)),
                // A real answer (not found, refused, corrupt).
                Ok(Err(e)) if !is_stale(&e) => return Err(e),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "an idle stream failed; opening a new one")
                }
                Err(_) => {
                    tracing::debug!(%peer, after = ?quick, "no answer on an idle stream; the connection may be dead");
                    self.inner.pool.forget(&peer);
                    fresh = true;
                }
            }
        }
        self.twice_on(peer, addrs, fresh, exchange).await
    }

    /// [`twice`](Self::twice), with the path of the stream that answered;
    /// `fresh`: on a new connection.
    async fn twice_on<T, F, Fut>(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        fresh: bool,
        exchange: F,
    ) -> Result<(T, PathInfo), MeshError>
    where
        F: Fn(libp2p::Stream) -> Fut,
        Fut: std::future::Future<Output = Result<T, MeshError>>,
    {
        let opener = &self.inner.opener;
        let mut fresh = fresh;
        for attempt in 1.. {
            let (stream, path) = if fresh {
                opener.reopen(peer, addrs).await?
            } else {
                opener.open(peer, addrs).await?
            };
            fresh = false;
            if attempt == ASK_ATTEMPTS {
                return Ok((exchange(stream).await?, path));
            }
            // A direct path coming up closes the relayed connection under
            // the exchange (its streams may hang rather than fail): ask
            // again then.
            let answer = tokio::select! {
                answer = exchange(stream) => Some(answer),
                () = opener.better_path(peer, path) => None,
            };
            let why = match answer {
                // The stream failed (its connection closed for a punched
                // one, or a busy relay dropped it): a moment, then again.
                Some(Err(MeshError::Unreachable { reason, .. })) => {
                    tokio::time::sleep(ASK_PAUSE * attempt).await;
                    reason
                }
                // It restarted and no longer knows us: prove it, ask again.
                Some(Err(MeshError::NotMember { reason, .. })) => {
                    opener.forget_member(&peer);
                    reason
                }
                Some(other) => return Ok((other?, path)),
                None => "a direct path came up".to_string(),
            };
            tracing::debug!(%peer, %why, attempt, "asking again on a new stream");
        }
        unreachable!("the last attempt returns")
    }

    /// Make `peer` remove `name` (a native object needs its `owner`
    /// capability), and drop this daemon's cached copy of it. Whether the
    /// peer had it.
    pub async fn evict(
        &self,
        peer: PeerId,
        name: RemoteName,
        addrs: &[Multiaddr],
        owner: Option<OwnerCap>,
    ) -> Result<bool, MeshError> {
        // Our cached copy is ours to drop, whatever the peer answers.
        if let RemoteName::Native(id) = name {
            self.drop_cached((peer, id)).await?;
        }
        self.twice(peer, addrs, |stream| {
            client::evict(stream, peer, &name, owner, self.timeouts())
        })
        .await
    }

    /// Store `body` (exactly `size` bytes) as `name` at `peer` (forwarded
    /// ProxyStore sets; peers refuse native names).
    pub async fn put(
        &self,
        peer: PeerId,
        name: RemoteName,
        addrs: &[Multiaddr],
        body: ChunkStream,
        size: u64,
    ) -> Result<(), MeshError> {
        let (stream, path) = self.inner.opener.open(peer, addrs).await?;
        let started = Instant::now();
        client::put(stream, peer, &name, body, size, self.timeouts()).await?;
        tracing::info!(%peer, %name, size, %path, elapsed = ?started.elapsed(), "stored at peer");
        Ok(())
    }

    /// [`put`](Self::put) a body that can be read again: if the stream
    /// breaks midway (e.g. its relayed connection closed as a direct one
    /// came up), the put starts over once on a new stream.
    pub async fn put_again<F, Fut>(
        &self,
        peer: PeerId,
        name: RemoteName,
        addrs: &[Multiaddr],
        size: u64,
        body: F,
    ) -> Result<(), MeshError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<ChunkStream, MeshError>>,
    {
        let timeouts = self.timeouts();
        let started = Instant::now();
        let (body, name) = (&body, &name);
        let (_, path) = self
            .twice_on(peer, addrs, false, |stream| async move {
                let chunks = body().await?;
                client::put(stream, peer, name, chunks, size, timeouts).await
            })
            .await?;
        tracing::info!(%peer, %name, size, %path, elapsed = ?started.elapsed(), "stored at peer");
        Ok(())
    }

    /// Network transfers of objects started (streams opened for a get).
    pub fn transfers(&self) -> u64 {
        self.inner.transfers.load(Ordering::Relaxed)
    }

    /// The most recent transfers (newest last), with the paths that
    /// carried their bytes.
    pub fn recent(&self) -> Vec<proxymesh::api::TransferStatus> {
        let recent = self.inner.recent.lock().expect("recent lock");
        recent.iter().map(|t| t.status()).collect()
    }

    /// Bytes of cached copies tracked.
    pub fn cached_bytes(&self) -> u64 {
        self.inner.cache.lock().expect("cache lock").bytes
    }

    /// The settings.
    pub fn config(&self) -> &FetchConfig {
        &self.inner.config
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: self.inner.config.header_timeout,
            idle: self.inner.config.idle_timeout,
            floor: self.inner.config.floor,
        }
    }

    /// The cached copy of `key`, keeping the LRU in step with storage.
    async fn cached(&self, key: CacheKey) -> Result<Option<ObjectReader>, MeshError> {
        let name = remote_name(key);
        match self.inner.storage.open_reader(&name).await? {
            Some(reader) => {
                let known = self
                    .inner
                    .cache
                    .lock()
                    .expect("cache lock")
                    .lru
                    .get(&key)
                    .is_some();
                if !known {
                    // E.g. persisted by an earlier run.
                    self.inner.remember(key, reader.meta().size).await;
                }
                Ok(Some(reader))
            }
            None => {
                self.inner.forget(key);
                Ok(None)
            }
        }
    }

    async fn drop_cached(&self, key: CacheKey) -> Result<(), StorageError> {
        self.inner.forget(key);
        self.inner.storage.evict(&remote_name(key)).await.map(drop)
    }

    /// Start a transfer; `leader` is set for coalesced (native) gets.
    async fn fetch(
        &self,
        peer: PeerId,
        name: RemoteName,
        addrs: &[Multiaddr],
        leader: Option<Leader<CacheKey, Outcome>>,
        expect: Option<blake3::Hash>,
    ) -> Result<Fetched, MeshError> {
        let timeouts = self.timeouts();
        let started = async {
            // A native object is opened: its first segment (all of a small
            // one), and who else is fetching it. Larger ones continue from
            // every source.
            let ((body, holders), path) = match &name {
                RemoteName::Native(_) => {
                    self.reusing(peer, addrs, |stream| {
                        client::open(stream, peer, &name, SEGMENT, timeouts)
                    })
                    .await?
                }
                _ => {
                    let (body, path) = self
                        .reusing(peer, addrs, |stream| {
                            client::get(stream, peer, &name, 0, None, timeouts)
                        })
                        .await?;
                    ((body, Vec::new()), path)
                }
            };
            self.inner.transfers.fetch_add(1, Ordering::Relaxed);
            if let Some(want) = expect.filter(|w| *w != body.hash()) {
                return Err(MeshError::Corrupt {
                    peer,
                    id: name.clone(),
                    reason: format!(
                        "the ticket promises BLAKE3 {want}, the peer announced {}",
                        body.hash()
                    ),
                });
            }
            Ok::<_, MeshError>((body, path, holders))
        }
        .await;
        let (body, path, holders) = match started {
            Ok(x) => x,
            Err(e) => {
                if let Some(leader) = leader {
                    leader.complete(Outcome::Failed(Arc::new(e.clone())));
                }
                return Err(e);
            }
        };
        let (size, hash) = (body.size(), body.hash());
        let swarm = body.len() < size;
        let writer = match (&leader, &name) {
            _ if swarm => None,
            (Some(_), RemoteName::Native(id)) if size <= self.inner.config.cache_cap => {
                let name = remote_name((peer, *id));
                match self.inner.storage.writer(name, Some(size)) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!(%peer, id = %id, error = %e, "not caching the object");
                        None
                    }
                }
            }
            _ => None,
        };
        tracing::info!(%peer, %name, size, %path, cached = writer.is_some(), holders = holders.len(), "fetching");
        let record = self.record(peer, &name, size, path);
        if let (true, RemoteName::Native(id)) = (swarm, &name) {
            let body = swarm::start(
                self.clone(),
                peer,
                *id,
                addrs.to_vec(),
                body,
                holders,
                leader,
                record,
            )
            .await?;
            return Ok(Fetched::Streaming {
                size,
                hash,
                path,
                body,
            });
        }
        let inline = size <= FETCH_INLINE;
        // Inline, the body is read before anyone drains the channel: room
        // for every chunk (at least a byte each), so sending never waits.
        let (pump, body) = Pump::new(
            Arc::clone(&self.inner),
            (peer, name, addrs.to_vec()),
            body,
            (writer, leader, record),
            timeouts,
            if inline {
                size as usize + 2
            } else {
                PIPELINE_CHUNKS
            },
        );
        if inline {
            pump.run().await;
        } else {
            tokio::spawn(pump.run());
        }
        Ok(Fetched::Streaming {
            size,
            hash,
            path,
            body,
        })
    }
}

impl Inner {
    /// Track a committed cached copy; evict the least recently used copies
    /// while the total exceeds the cap.
    async fn remember(&self, key: CacheKey, size: u64) {
        let victims = {
            let mut c = self.cache.lock().expect("cache lock");
            if let Some(old) = c.lru.put(key, size) {
                c.bytes -= old;
            }
            c.bytes += size;
            let mut victims = Vec::new();
            while c.bytes > self.config.cache_cap {
                let Some((k, s)) = c.lru.pop_lru() else { break };
                c.bytes -= s;
                victims.push(k);
            }
            victims
        };
        for k in victims {
            match self.storage.evict(&remote_name(k)).await {
                Ok(_) => {
                    tracing::debug!(peer = %k.0, id = %k.1, "evicted cached copy (cache full)")
                }
                Err(e) => {
                    tracing::warn!(peer = %k.0, id = %k.1, error = %e, "cannot evict cached copy")
                }
            }
        }
    }

    fn forget(&self, key: CacheKey) {
        let mut c = self.cache.lock().expect("cache lock");
        if let Some(s) = c.lru.pop(&key) {
            c.bytes -= s;
        }
    }
}

/// The network side of one transfer.
struct Pump {
    inner: Arc<Inner>,
    peer: PeerId,
    name: RemoteName,
    /// Where the peer was reached (for resuming).
    addrs: Vec<Multiaddr>,
    body: Body<libp2p::Stream>,
    writer: Option<ObjectWriter>,
    /// `None` once the body's reader went away.
    tx: Option<mpsc::Sender<io::Result<Bytes>>>,
    leader: Option<Leader<CacheKey, Outcome>>,
    record: Arc<Transfer>,
    /// Since when, and at how many bytes received, the transfer has been
    /// breaking without progress, and how many attempts it made since.
    stuck: Option<(Instant, u64, u32)>,
    /// Times it moved to a better path.
    moves: u32,
    /// Encoded bytes counted into the traffic so far.
    wire: u64,
    timeouts: Timeouts,
}

/// Where a pump's bytes go: the cache writer, the coalesced readers
/// waiting on it, and its transfer record.
type Sinks = (
    Option<ObjectWriter>,
    Option<Leader<CacheKey, Outcome>>,
    Arc<Transfer>,
);

impl Pump {
    /// A pump of `body` (from `peer`, reached at `addrs`) into `sinks`, and
    /// the reader's end: a stream of up to `capacity` chunks in flight.
    fn new(
        inner: Arc<Inner>,
        (peer, name, addrs): (PeerId, RemoteName, Vec<Multiaddr>),
        body: Body<libp2p::Stream>,
        (writer, leader, record): Sinks,
        timeouts: Timeouts,
        capacity: usize,
    ) -> (Self, ChunkStream) {
        let (tx, rx) = mpsc::channel(capacity);
        let pump = Pump {
            inner,
            peer,
            name,
            addrs,
            body,
            writer,
            tx: Some(tx),
            leader,
            record,
            stuck: None,
            moves: 0,
            wire: 0,
            timeouts,
        };
        let stream: ChunkStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        (pump, stream)
    }

    async fn run(mut self) {
        let started = Instant::now();
        let outcome = loop {
            let current = self.record.path();
            let opener = Arc::clone(&self.inner.opener);
            let (peer, may_move) = (self.peer, self.moves < MAX_MOVES);
            let better = async move {
                if may_move {
                    opener.better_path(peer, current).await
                } else {
                    std::future::pending().await
                }
            };
            let next = tokio::select! {
                next = self.body.next_chunk() => {
                    let wire = self.body.wire_bytes();
                    self.inner.traffic.fetched(self.peer, wire - self.wire);
                    self.wire = wire;
                    next
                }
                () = better => {
                    self.moves += 1;
                    // Move to the direct path from the first byte not yet
                    // handed out (bytes half-read on the old stream are
                    // dropped with it).
                    if let Err(e) = self.resume("a direct path came up", false).await {
                        tracing::info!(peer = %self.peer, name = %self.name, error = %e, "cannot move the transfer to the direct path; staying");
                    }
                    continue;
                }
            };
            match next {
                Ok(Some(chunk)) => {
                    self.record
                        .received
                        .store(self.body.received(), Ordering::Relaxed);
                    if let Some(w) = &mut self.writer {
                        if let Err(e) = w.write(chunk.clone()).await {
                            tracing::warn!(peer = %self.peer, name = %self.name, error = %e, "not caching the object");
                            self.writer = None;
                        }
                    }
                    // Verified whole: commit before the reader sees the end.
                    let done = self.body.received() == self.body.len();
                    if done {
                        self.reuse_stream();
                    }
                    let outcome = if done {
                        Some(self.commit().await)
                    } else {
                        None
                    };
                    if let Some(outcome) = &outcome {
                        if let Some(leader) = self.leader.take() {
                            leader.complete(outcome.clone());
                        }
                    }
                    self.send(Ok(chunk)).await;
                    if let Some(outcome) = outcome {
                        break outcome;
                    }
                    if self.tx.is_none() && self.writer.is_none() {
                        tracing::debug!(peer = %self.peer, name = %self.name, "nobody reads the object any more; transfer stopped");
                        break Outcome::NotCached;
                    }
                }
                // Only for empty objects: everything else ends on its last chunk.
                Ok(None) => {
                    self.reuse_stream();
                    break self.commit().await;
                }
                Err(e) => {
                    // A broken or stalled stream is resumed from the first
                    // byte not yet verified, again and again while the
                    // transfer makes progress; without progress, attempts
                    // (further apart each time: the peer may be
                    // restarting) go on until bytes have not flowed for the
                    // idle timeout.
                    let received = self.body.received();
                    if !matches!(self.stuck, Some((_, at, _)) if at == received) {
                        self.stuck = Some((Instant::now(), received, 0));
                    }
                    let window = self.timeouts.idle;
                    let mut resumed = false;
                    let mut fresh = false;
                    while self.body.broke().is_some() {
                        let (since, at, n) = self.stuck.expect("set above");
                        if since.elapsed() >= window {
                            break;
                        }
                        self.stuck = Some((since, at, n + 1));
                        if n > 0 {
                            let pause = RESUME_BACKOFF
                                .saturating_mul(1 << (n - 1).min(8))
                                .min(RESUME_BACKOFF_MAX)
                                .min(window.saturating_sub(since.elapsed()));
                            tokio::time::sleep(pause).await;
                        }
                        let why = if self.body.broke() == Some(client::Break::Stalled) {
                            "the stream stalled"
                        } else {
                            "the stream broke"
                        };
                        match self.resume(why, fresh).await {
                            Ok(()) => {
                                resumed = true;
                                break;
                            }
                            // A restarted peer no longer knows we are a
                            // member: prove it again, on a new connection.
                            Err(MeshError::NotMember { .. }) if !fresh => {
                                tracing::info!(peer = %self.peer, name = %self.name, "the peer no longer knows us (restarted?); proving membership again");
                                self.inner.opener.forget_member(&self.peer);
                                fresh = true;
                            }
                            // The peer answered, and not with the object.
                            Err(again) if !is_stale(&again) => {
                                tracing::warn!(peer = %self.peer, name = %self.name, error = %again, "cannot resume the transfer");
                                break;
                            }
                            Err(again) => {
                                tracing::info!(peer = %self.peer, name = %self.name, error = %again, attempt = n + 1, "cannot resume the transfer yet")
                            }
                        }
                    }
                    if resumed {
                        continue;
                    }
                    self.writer = None;
                    tracing::warn!(paths = %self.paths(), error = %e, "transfer failed");
                    self.record.end(Err(&e));
                    let kind = match e {
                        MeshError::TimedOut { .. } => io::ErrorKind::TimedOut,
                        MeshError::Corrupt { .. } => io::ErrorKind::InvalidData,
                        _ => io::ErrorKind::Other,
                    };
                    let message = e.to_string();
                    let e = Arc::new(e);
                    if let Some(leader) = self.leader.take() {
                        leader.complete(Outcome::Failed(Arc::clone(&e)));
                    }
                    self.send(Err(io::Error::new(kind, message))).await;
                    break Outcome::Failed(e);
                }
            }
        };
        if matches!(outcome, Outcome::Cached | Outcome::NotCached)
            && self.body.received() == self.body.len()
        {
            self.record.end(Ok(()));
            let secs = started.elapsed().as_secs_f64();
            tracing::info!(
                peer = %self.peer,
                name = %self.name,
                size = self.body.size(),
                paths = %self.paths(),
                secs,
                mib_per_s = self.body.size() as f64 / (1 << 20) as f64 / secs.max(1e-9),
                "fetched"
            );
        }
        if let Some(leader) = self.leader.take() {
            leader.complete(outcome);
        }
    }

    /// Hand the stream, read to its end, back for the next request to the
    /// peer (before the reader sees the end, so its next request finds it).
    fn reuse_stream(&mut self) {
        if let Some(stream) = self.body.take_reusable() {
            self.inner.pool.give(self.peer, stream, self.record.path());
        }
    }

    fn paths(&self) -> String {
        history(&self.record.paths.lock().expect("transfer lock")).join("→")
    }

    /// Continue the transfer on a new stream from the first byte not yet
    /// received (the old stream broke: e.g. its relayed connection closed
    /// because a direct one came up, or the peer restarted). A stalled
    /// stream's connection is replaced. Bounded by the idle timeout: bytes
    /// must flow again within it, as on any stream.
    async fn resume(&mut self, why: &str, fresh: bool) -> Result<(), MeshError> {
        let idle = self.timeouts.idle;
        tokio::time::timeout(idle, self.resume_now(why, fresh))
            .await
            .map_err(|_| MeshError::TimedOut {
                peer: self.peer,
                id: Some(self.name.clone()),
                phase: "resuming the transfer",
                after: idle,
            })?
    }

    async fn resume_now(&mut self, why: &str, fresh: bool) -> Result<(), MeshError> {
        let stalled = fresh || self.body.broke() == Some(client::Break::Stalled);
        tracing::info!(peer = %self.peer, name = %self.name, received = self.body.received(), of = self.body.len(), "{why}; continuing the transfer on a new stream");
        let opener = &self.inner.opener;
        // A relayed stream that ended is most often its connection closing
        // for a direct one the peer saw first: give ours a moment to show,
        // rather than resume on the closing connection.
        let current = self.record.path();
        if self.body.broke() == Some(client::Break::Lost) && current.path == Path::Relayed {
            let _ =
                tokio::time::timeout(DIRECT_GRACE, opener.better_path(self.peer, current)).await;
        }
        let (stream, path) = if stalled {
            opener.reopen(self.peer, &self.addrs).await?
        } else {
            opener.open(self.peer, &self.addrs).await?
        };
        self.body.resume(stream, self.timeouts).await?;
        self.record.paths.lock().expect("transfer lock").push(path);
        tracing::info!(peer = %self.peer, name = %self.name, %path, from = self.body.received(), "transfer resumed");
        Ok(())
    }

    async fn send(&mut self, item: io::Result<Bytes>) {
        if let Some(tx) = &self.tx {
            if tx.send(item).await.is_err() {
                tracing::debug!(peer = %self.peer, name = %self.name, "the reader went away; the transfer continues into the cache");
                self.tx = None;
            }
        }
    }

    async fn commit(&mut self) -> Outcome {
        let Some(w) = self.writer.take() else {
            return Outcome::NotCached;
        };
        let RemoteName::Native(id) = self.name else {
            return Outcome::NotCached;
        };
        match w.commit().await {
            Ok(meta) => {
                self.inner.remember((self.peer, id), meta.size).await;
                Outcome::Cached
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, name = %self.name, error = %e, "cannot cache the object");
                Outcome::NotCached
            }
        }
    }
}

/// Whether an exchange on an idle stream failed because of the stream (it
/// died or the server closed it), not because of the answer.
fn is_stale(e: &MeshError) -> bool {
    matches!(
        e,
        MeshError::Unreachable { .. } | MeshError::Protocol { .. } | MeshError::TimedOut { .. }
    )
}

/// A fetch error's kind, as the metrics label it.
fn error_kind(e: &MeshError) -> &'static str {
    match e {
        MeshError::Unreachable { .. } => "unreachable",
        MeshError::NotFound { .. } => "not_found",
        MeshError::Refused { .. } | MeshError::NotMember { .. } => "refused",
        MeshError::Corrupt { .. } => "corrupt",
        MeshError::TimedOut { .. } => "timed_out",
        MeshError::Protocol { .. } => "protocol",
        MeshError::Storage(_) => "storage",
    }
}

fn remote_name((peer, id): CacheKey) -> ObjectName {
    ObjectName::Remote { peer, id }
}
