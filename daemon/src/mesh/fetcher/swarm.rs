//! Fetching a large object from every daemon that has it.
//!
//! An object over one [`SEGMENT`] is fetched in segments, as many at once
//! as each source's path needs ([`Pace`]: its bandwidth-delay product,
//! measured), into a sparse file that this daemon serves
//! to others while it fills ([`Partial`]). The sources are the producer
//! and the holders it names (other daemons that asked for the object
//! lately); what each holder has and is fetching is asked with `Have`
//! every [`REFRESH`]. A segment some holder has is fetched from the
//! holder with the fewest requests in flight; the producer is asked only
//! for segments that no holder has or is fetching (chosen at random among
//! the first ones, so daemons starting together ask it for different
//! ones), so the producer sends each segment about once however many
//! daemons want the object. Every segment is a verified range: a holder
//! that sends a wrong byte is dropped as a source and the segment fetched
//! elsewhere. The bytes reach the caller in order, as soon as the segments
//! before them arrived; the whole becomes the cached copy. A transfer
//! fails when no segment arrived for the idle timeout.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId};
use proxymesh::ObjectId;
use rand::seq::IndexedRandom;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use super::pace::Pace;
use super::{Fetcher, Inner, Outcome, Transfer, PIPELINE_CHUNKS};
use crate::mesh::client::{self, Body};
use crate::mesh::copies::{segment_range, Bits, Partial};
use crate::mesh::protocol::{RemoteName, CHUNK};
use crate::mesh::singleflight::Leader;
use crate::mesh::{MeshError, PathInfo};
use crate::storage::{ChunkStream, ObjectName, SparseObject};

/// Fewest segment requests one object may have in flight (more when its
/// sources' paces allow more).
const MAX_INFLIGHT: u32 = 6;
/// Fewest in flight to one holder, and to the producer (the floors of
/// their [`Pace`]s), and the most to any source.
const PER_HOLDER: u32 = 2;
const PER_PRODUCER: u32 = 4;
const PER_SOURCE_CAP: u32 = 48;
/// How often holders are asked what they have.
const REFRESH: Duration = Duration::from_millis(60);
/// Unclaimed segments the producer is asked for are picked among this many
/// first ones.
const PICK_WINDOW: usize = 32;
/// Without progress for this long, the producer is asked even for segments
/// that a holder claims to be fetching.
const CLAIM_PATIENCE: Duration = Duration::from_secs(2);
/// Failures before a holder is no longer used.
const HOLDER_FAILURES: u32 = 3;
/// A holder gets this long to answer a segment request and between bytes
/// of it (at most the configured timeouts): a slow one is left for another
/// source rather than waited for.
const HOLDER_PATIENCE: Duration = Duration::from_secs(3);
/// A segment in flight this long, when nothing else is left to ask for,
/// is asked of the producer too (the end game: one slow source does not
/// hold up the end).
const ENDGAME_AFTER: Duration = Duration::from_millis(1500);
/// Segments from the reader's position that [`Engine::rescue_head_of_line`]
/// watches.
const HEAD_OF_LINE: u64 = 2;
/// Segments fetched ahead of the reader: a slow reader slows the transfer
/// (once it has gone, the rest is fetched for the cache at full speed).
const LOOKAHEAD: u64 = 64;

/// One source of segments.
struct Source {
    peer: PeerId,
    producer: bool,
    have: Bits,
    fetching: Bits,
    inflight: u32,
    /// How many may be in flight: the path's bandwidth-delay product.
    pace: Pace,
    failures: u32,
    dropped: bool,
    asking: bool,
    asked: Option<Instant>,
}

enum Job {
    Segment {
        source: usize,
        seg: u64,
        asked: Instant,
        /// The time to the answer's first byte, when it came.
        result: Result<Duration, MeshError>,
    },
    Have {
        source: usize,
        result: Result<client::HaveAnswer, MeshError>,
    },
}

/// What the engine and the delivery task share.
struct Shared {
    partial: Arc<Partial>,
    progress: Notify,
    failed: Mutex<Option<io::Error>>,
    reader_gone: AtomicBool,
    /// The next segment the reader gets.
    delivering: AtomicU64,
    /// Wakes the engine when the reader moved on.
    advanced: Notify,
}

/// Start fetching object `id` of `producer` (size > one segment) from
/// every source, with `first` (the producer's answer to `Open`: segment 0)
/// already arriving. Returns the bytes in order as they become available.
#[allow(clippy::too_many_arguments)]
pub(super) async fn start(
    fetcher: Fetcher,
    producer: PeerId,
    id: ObjectId,
    addrs: Vec<Multiaddr>,
    first: Body<libp2p::Stream>,
    holders: Vec<PeerId>,
    leader: Option<Leader<(PeerId, ObjectId), Outcome>>,
    record: Arc<Transfer>,
) -> Result<ChunkStream, MeshError> {
    let inner = Arc::clone(&fetcher.inner);
    let (size, hash) = (first.size(), first.hash());
    let cache = leader.is_some() && size <= inner.config.cache_cap;
    // What an earlier, failed fetch of the object verified, if anything.
    let (partial, sparse) = match inner.leftovers.take((producer, id), size, hash) {
        Some((partial, sparse)) => {
            tracing::info!(%producer, %id, verified = partial.bits().0.count(), of = partial.segments(), "continuing a failed fetch from its verified segments");
            (partial, sparse)
        }
        None => match inner
            .storage
            .sparse(ObjectName::Remote { peer: producer, id }, size)
            .await
        {
            Ok(s) => (Arc::new(Partial::new(size, hash, Arc::clone(s.file()))), s),
            Err(e) => {
                let e = MeshError::Storage(e);
                if let Some(l) = leader {
                    l.complete(Outcome::Failed(Arc::new(e.clone())));
                }
                return Err(e);
            }
        },
    };
    inner.copies.insert((producer, id), Arc::clone(&partial));
    let shared = Arc::new(Shared {
        partial,
        progress: Notify::new(),
        failed: Mutex::new(None),
        reader_gone: AtomicBool::new(false),
        delivering: AtomicU64::new(0),
        advanced: Notify::new(),
    });
    let (tx, rx) = mpsc::channel(PIPELINE_CHUNKS);
    tokio::spawn(deliver(Arc::clone(&shared), tx));
    let engine = Engine {
        fetcher,
        producer,
        id,
        addrs,
        shared,
        record,
        sources: Vec::new(),
        known: HashSet::new(),
        jobs: JoinSet::new(),
        last_progress: Instant::now(),
        started: std::collections::HashMap::new(),
        producer_failures: 0,
        producer_pause: None,
        segment_time: Duration::ZERO,
    };
    tokio::spawn(engine.run(first, holders, sparse, cache, leader));
    Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })))
}

/// Hand the segments to the reader in order, as they arrive.
async fn deliver(shared: Arc<Shared>, tx: mpsc::Sender<io::Result<Bytes>>) {
    let p = Arc::clone(&shared.partial);
    for seg in 0..p.segments() {
        shared.delivering.store(seg, Ordering::Relaxed);
        shared.advanced.notify_one();
        loop {
            let wake = shared.progress.notified();
            if p.has(seg) {
                break;
            }
            let failed = shared.failed.lock().expect("failed").take();
            if let Some(e) = failed {
                let _ = tx.send(Err(e)).await;
                return;
            }
            wake.await;
        }
        let (offset, len) = segment_range(p.size, seg);
        let file = Arc::clone(&p.file);
        let read = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r);
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                shared.reader_gone.store(true, Ordering::Relaxed);
                return;
            }
        };
        let mut at = 0;
        while at < bytes.len() {
            let piece = bytes.slice(at..(at + CHUNK).min(bytes.len()));
            at += piece.len();
            if tx.send(Ok(piece)).await.is_err() {
                shared.reader_gone.store(true, Ordering::Relaxed);
                shared.advanced.notify_one();
                return;
            }
        }
    }
    // The end: wait for the engine's verdict (the cache commit) first, so
    // a reader that sees the end finds the cached copy.
    loop {
        let wake = shared.progress.notified();
        let failed = shared.failed.lock().expect("failed").take();
        if let Some(e) = failed {
            let _ = tx.send(Err(e)).await;
            return;
        }
        if shared.reader_gone.load(Ordering::Relaxed) {
            return;
        }
        wake.await;
    }
}

struct Engine {
    fetcher: Fetcher,
    producer: PeerId,
    id: ObjectId,
    addrs: Vec<Multiaddr>,
    shared: Arc<Shared>,
    record: Arc<Transfer>,
    sources: Vec<Source>,
    known: HashSet<PeerId>,
    jobs: JoinSet<Job>,
    last_progress: Instant,
    /// Segments in flight: when started, and whether asked twice.
    started: std::collections::HashMap<u64, (Instant, bool)>,
    producer_failures: u32,
    /// After a failure, the producer is asked again from then on.
    producer_pause: Option<Instant>,
    /// Usual time of a segment from request to last byte (a moving
    /// average).
    segment_time: Duration,
}

impl Engine {
    fn partial(&self) -> &Partial {
        &self.shared.partial
    }

    fn add_source(&mut self, peer: PeerId, producer: bool) {
        if !self.known.insert(peer) {
            return;
        }
        let n = self.partial().segments();
        self.sources.push(Source {
            peer,
            producer,
            have: if producer {
                Bits::full(n)
            } else {
                Bits::new(n)
            },
            fetching: Bits::new(n),
            inflight: 0,
            pace: Pace::new(
                if producer { PER_PRODUCER } else { PER_HOLDER },
                PER_SOURCE_CAP,
            ),
            failures: 0,
            dropped: false,
            asking: false,
            asked: None,
        });
        if !producer {
            tracing::debug!(%peer, producer = %self.producer, id = %self.id, "another source of the object");
        }
    }

    async fn run(
        mut self,
        first: Body<libp2p::Stream>,
        holders: Vec<PeerId>,
        sparse: SparseObject,
        cache: bool,
        leader: Option<Leader<(PeerId, ObjectId), Outcome>>,
    ) {
        let started = Instant::now();
        self.add_source(self.producer, true);
        for h in holders {
            self.add_source(h, false);
        }
        // Segment 0 is arriving on the answer to `Open`.
        self.partial().mark_fetching(0, true);
        self.sources[0].inflight += 1;
        self.started.insert(0, (Instant::now(), false));
        let (inner, partial) = (
            Arc::clone(&self.fetcher.inner),
            Arc::clone(&self.shared.partial),
        );
        let producer = self.producer;
        let path = self.record.path();
        let asked = Instant::now();
        self.jobs.spawn(async move {
            let result = receive(&inner, producer, path, first, &partial, 0).await;
            Job::Segment {
                source: 0,
                seg: 0,
                asked,
                // Segment 0 came with `Open`: no clean time to first byte.
                result: result.map(|()| Duration::MAX),
            }
        });
        let result = self.fetch_all().await;
        let outcome = match result {
            Ok(()) => {
                let secs = started.elapsed().as_secs_f64();
                let size = self.partial().size;
                tracing::info!(
                    peer = %self.producer,
                    id = %self.id,
                    size,
                    sources = self.sources.len(),
                    secs,
                    mib_per_s = size as f64 / (1 << 20) as f64 / secs.max(1e-9),
                    "fetched from every source"
                );
                let outcome = if cache {
                    // The copy stays servable: the cached copy replaces it.
                    match sparse
                        .commit(self.partial().hash, self.partial().pairs())
                        .await
                    {
                        Ok(meta) => {
                            self.fetcher
                                .inner
                                .remember((self.producer, self.id), meta.size)
                                .await;
                            Outcome::Cached
                        }
                        Err(e) => {
                            tracing::warn!(id = %self.id, error = %e, "cannot cache the object");
                            Outcome::NotCached
                        }
                    }
                } else {
                    // The reader keeps reading the open (now unlinked) file.
                    drop(sparse);
                    Outcome::NotCached
                };
                self.record.end(Ok(()));
                outcome
            }
            Err(e) => {
                tracing::warn!(peer = %self.producer, id = %self.id, error = %e, "transfer failed");
                self.record.end(Err(&e));
                let kind = match e {
                    MeshError::TimedOut { .. } => io::ErrorKind::TimedOut,
                    MeshError::Corrupt { .. } => io::ErrorKind::InvalidData,
                    _ => io::ErrorKind::Other,
                };
                *self.shared.failed.lock().expect("failed") =
                    Some(io::Error::new(kind, e.to_string()));
                // Its verified segments stay for the next get (not those
                // of a producer that sent corrupt bytes: it would again).
                if !matches!(e, MeshError::Corrupt { .. }) {
                    self.fetcher.inner.leftovers.keep(
                        (self.producer, self.id),
                        Arc::clone(&self.shared.partial),
                        sparse,
                    );
                }
                Outcome::Failed(Arc::new(e))
            }
        };
        // Only now: until the cached copy was committed, the partial one
        // serves the other daemons.
        self.fetcher.inner.copies.remove(&(self.producer, self.id));
        if let Some(l) = leader {
            l.complete(outcome);
        }
        // Let the delivery finish (or report the failure).
        self.shared.reader_gone.store(true, Ordering::Relaxed);
        self.shared.progress.notify_waiters();
        self.jobs.abort_all();
    }

    async fn fetch_all(&mut self) -> Result<(), MeshError> {
        let n = self.partial().segments();
        let idle = self.fetcher.inner.config.idle_timeout;
        let mut tick = tokio::time::interval(REFRESH / 3);
        loop {
            if self.partial().bits().0.count() == n {
                return Ok(());
            }
            if self.shared.reader_gone.load(Ordering::Relaxed)
                && self.fetcher.inner.config.cache_cap < self.partial().size
            {
                return Err(MeshError::Unreachable {
                    peer: self.producer,
                    reason: "nobody reads the object any more".into(),
                });
            }
            if self.last_progress.elapsed() > idle {
                let (mine, fetching) = self.partial().bits();
                let sources: Vec<String> = self
                    .sources
                    .iter()
                    .map(|s| {
                        format!(
                            "{}{}: {} in flight, has {}, fetching {}{}",
                            if s.producer { "producer " } else { "" },
                            s.peer,
                            s.inflight,
                            s.have.count(),
                            s.fetching.count(),
                            if s.dropped { ", dropped" } else { "" }
                        )
                    })
                    .collect();
                tracing::warn!(
                    have = mine.count(),
                    fetching = fetching.count(),
                    of = n,
                    started = ?self.started,
                    delivering = self.shared.delivering.load(Ordering::Relaxed),
                    "stalled: {}",
                    sources.join("; ")
                );
                return Err(MeshError::TimedOut {
                    peer: self.producer,
                    id: Some(RemoteName::Native(self.id)),
                    phase: "transfer (no segment arrived from any source)",
                    after: idle,
                });
            }
            self.ask_haves();
            self.schedule();
            tokio::select! {
                Some(done) = self.jobs.join_next() => {
                    let Ok(job) = done else { continue };
                    if let Some(e) = self.finished(job) {
                        return Err(e);
                    }
                }
                _ = tick.tick() => {}
                () = self.shared.advanced.notified() => {}
            }
        }
    }

    /// Ask each holder (and the producer, for new holders) what it has,
    /// every [`REFRESH`].
    fn ask_haves(&mut self) {
        for i in 0..self.sources.len() {
            let s = &mut self.sources[i];
            if s.dropped || s.asking || s.asked.is_some_and(|t| t.elapsed() < REFRESH) {
                continue;
            }
            s.asking = true;
            s.asked = Some(Instant::now());
            let peer = s.peer;
            let name = if s.producer {
                RemoteName::Native(self.id)
            } else {
                RemoteName::Copy {
                    producer: self.producer,
                    id: self.id,
                }
            };
            let addrs = self.addrs_of(peer);
            let fetcher = self.fetcher.clone();
            self.jobs.spawn(async move {
                let timeouts = fetcher.timeouts();
                let result = fetcher
                    .reusing(peer, &addrs, |stream| {
                        let name = name.clone();
                        async move { client::have(stream, peer, &name, timeouts).await }
                    })
                    .await
                    .map(|((answer, stream), path)| {
                        fetcher.inner.pool.give(peer, stream, path);
                        answer
                    });
                Job::Have { source: i, result }
            });
        }
    }

    fn addrs_of(&self, peer: PeerId) -> Vec<Multiaddr> {
        if peer == self.producer {
            self.addrs.clone()
        } else {
            self.fetcher.inner.opener.circuits_to(peer)
        }
    }

    /// Start segment requests while there is room.
    fn schedule(&mut self) {
        let n = self.partial().segments();
        let mut inflight: u32 = self.sources.iter().map(|s| s.inflight).sum();
        let mut rng = rand::rng();
        let horizon = if self.shared.reader_gone.load(Ordering::Relaxed) {
            n
        } else {
            (self.shared.delivering.load(Ordering::Relaxed) + LOOKAHEAD).min(n)
        };
        let now = Instant::now();
        let traffic = &self.fetcher.inner.traffic;
        for s in &mut self.sources {
            s.pace.observe(now, traffic.fetched_from(&s.peer));
        }
        self.rescue_head_of_line(now);
        let most = self
            .sources
            .iter()
            .filter(|s| !s.dropped)
            .map(|s| s.pace.limit(now))
            .sum::<u32>()
            .clamp(MAX_INFLIGHT, LOOKAHEAD as u32);
        while inflight < most {
            let (mine, fetching) = self.partial().bits();
            let open: Vec<u64> = (0..horizon)
                .filter(|&i| !mine.get(i) && !fetching.get(i))
                .collect();
            // A holder that has one of them, least busy first.
            let mut pick = None;
            let mut holders: Vec<usize> = (0..self.sources.len())
                .filter(|&i| {
                    let s = &self.sources[i];
                    !s.producer && !s.dropped && s.inflight < s.pace.limit(now)
                })
                .collect();
            holders.sort_by_key(|&i| self.sources[i].inflight);
            for h in holders {
                let wanted: Vec<u64> = open
                    .iter()
                    .copied()
                    .filter(|&i| self.sources[h].have.get(i))
                    .take(PICK_WINDOW)
                    .collect();
                if let Some(&seg) = wanted.choose(&mut rng) {
                    pick = Some((h, seg));
                    break;
                }
            }
            // Else the producer, for a segment nobody else has or fetches.
            let paused = self.producer_pause.is_some_and(|t| Instant::now() < t);
            let producer_room = self.sources[0].inflight < self.sources[0].pace.limit(now);
            if pick.is_none() && !paused && producer_room {
                let patient = self.last_progress.elapsed() < CLAIM_PATIENCE;
                let unclaimed: Vec<u64> = open
                    .iter()
                    .copied()
                    .filter(|&i| {
                        !patient
                            || !self.sources.iter().any(|s| {
                                !s.producer && !s.dropped && (s.have.get(i) || s.fetching.get(i))
                            })
                    })
                    .take(PICK_WINDOW)
                    .collect();
                if let Some(&seg) = unclaimed.choose(&mut rng) {
                    pick = Some((0, seg));
                }
            }
            // The end game: a segment a slow source holds up.
            if pick.is_none() && open.is_empty() && producer_room {
                let slow = self
                    .started
                    .iter()
                    .filter(|(_, (t, twice))| !twice && t.elapsed() > ENDGAME_AFTER)
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(seg, _)| *seg);
                if let Some(seg) = slow {
                    tracing::debug!(seg, "asking the producer too for a slow segment");
                    pick = Some((0, seg));
                }
            }
            let Some((source, seg)) = pick else { return };
            self.start_segment(source, seg);
            inflight += 1;
        }
    }

    /// A segment the reader is (about to be) waiting for that is overdue
    /// is asked of the producer too, beyond its pipeline's limit: its
    /// request may be stuck on a connection that went away without an
    /// error (DCUtR's duplicate connections), and everything behind it
    /// waits. Overdue: three times the usual segment time, and at least
    /// [`ENDGAME_AFTER`].
    fn rescue_head_of_line(&mut self, now: Instant) {
        if self.producer_pause.is_some_and(|t| now < t) {
            return;
        }
        let next = self.shared.delivering.load(Ordering::Relaxed);
        let overdue = self.segment_time.saturating_mul(3).max(ENDGAME_AFTER);
        let stuck = self
            .started
            .iter()
            .filter(|(seg, (t, twice))| {
                **seg < next + HEAD_OF_LINE && !twice && now.saturating_duration_since(*t) > overdue
            })
            .map(|(seg, _)| *seg)
            .min();
        if let Some(seg) = stuck {
            tracing::debug!(
                seg,
                ?overdue,
                "a segment the reader waits for is overdue; asking the producer too"
            );
            self.start_segment(0, seg);
        }
    }

    fn start_segment(&mut self, source: usize, seg: u64) {
        let s = &mut self.sources[source];
        s.inflight += 1;
        let (peer, producer) = (s.peer, s.producer);
        let name = if producer {
            RemoteName::Native(self.id)
        } else {
            RemoteName::Copy {
                producer: self.producer,
                id: self.id,
            }
        };
        self.partial().mark_fetching(seg, true);
        self.started
            .entry(seg)
            .and_modify(|(_, twice)| *twice = true)
            .or_insert((Instant::now(), false));
        let addrs = self.addrs_of(peer);
        let fetcher = self.fetcher.clone();
        let partial = Arc::clone(&self.shared.partial);
        // The producer's paths are the transfer's (status shows them).
        let record = producer.then(|| Arc::clone(&self.record));
        let asked = Instant::now();
        self.jobs.spawn(async move {
            let result = fetch_segment(&fetcher, peer, &addrs, &name, &partial, seg, record).await;
            Job::Segment {
                source,
                seg,
                asked,
                result,
            }
        });
    }

    /// Take in a finished job: the error that ends the transfer, if any.
    fn finished(&mut self, job: Job) -> Option<MeshError> {
        match job {
            Job::Segment {
                source,
                seg,
                asked,
                result,
            } => {
                let partial = Arc::clone(&self.shared.partial);
                let s = &mut self.sources[source];
                s.inflight -= 1;
                if partial.has(seg) {
                    // Asked twice (the end game) and the other came first.
                    self.started.remove(&seg);
                    return None;
                }
                match result {
                    Ok(first_byte) => {
                        let (_, len) = segment_range(partial.size, seg);
                        if first_byte != Duration::MAX {
                            s.pace.first_byte(first_byte);
                        }
                        // A duplicate's time says nothing of the usual one.
                        if !self.started.get(&seg).is_some_and(|(_, twice)| *twice) {
                            let took = asked.elapsed();
                            self.segment_time = if self.segment_time.is_zero() {
                                took
                            } else {
                                (self.segment_time * 7 + took) / 8
                            };
                        }
                        tracing::trace!(peer = %s.peer, seg, ?first_byte, took = ?asked.elapsed(), limit = s.pace.limit(Instant::now()), inflight = s.inflight, "segment in");
                        self.started.remove(&seg);
                        s.failures = 0;
                        if s.producer {
                            self.producer_failures = 0;
                            self.producer_pause = None;
                        }
                        partial.mark_have(seg);
                        self.last_progress = Instant::now();
                        self.record.received.fetch_add(len, Ordering::Relaxed);
                        self.shared.progress.notify_waiters();
                    }
                    Err(e) => {
                        // Still in flight elsewhere if it was asked twice.
                        let twice = self.started.get(&seg).is_some_and(|(_, t)| *t);
                        if twice {
                            self.started.insert(seg, (Instant::now(), false));
                        } else {
                            self.started.remove(&seg);
                            partial.mark_fetching(seg, false);
                        }
                        if s.producer {
                            self.producer_failures += 1;
                            let pause = Duration::from_millis(100)
                                .saturating_mul(1 << self.producer_failures.min(5))
                                .min(Duration::from_secs(2));
                            self.producer_pause = Some(Instant::now() + pause);
                            tracing::info!(peer = %s.peer, seg, error = %e, "a segment from the producer failed; asking again");
                            // A verdict, not a lost stream: stop.
                            if matches!(
                                e,
                                MeshError::NotFound { .. }
                                    | MeshError::Corrupt { .. }
                                    | MeshError::Refused { .. }
                            ) {
                                return Some(e);
                            }
                        } else {
                            s.have.set(seg, false);
                            s.failures += 1;
                            if s.failures >= HOLDER_FAILURES
                                || matches!(e, MeshError::Corrupt { .. })
                            {
                                tracing::warn!(peer = %s.peer, error = %e, "no longer fetching from this holder");
                                s.dropped = true;
                            } else {
                                tracing::debug!(peer = %s.peer, seg, error = %e, "a segment from a holder failed");
                            }
                        }
                    }
                }
            }
            Job::Have { source, result } => {
                let (n, size, hash) = {
                    let p = self.partial();
                    (p.segments(), p.size, p.hash)
                };
                let mut new = Vec::new();
                let s = &mut self.sources[source];
                s.asking = false;
                match result {
                    Ok(a) if a.size == size && a.hash == hash => {
                        if !s.producer {
                            match (Bits::from_bytes(a.have, n), Bits::from_bytes(a.fetching, n)) {
                                (Some(have), Some(fetching)) => {
                                    s.have = have;
                                    s.fetching = fetching;
                                }
                                _ => s.dropped = true,
                            }
                        }
                        new = a.holders;
                    }
                    Ok(_) => {
                        tracing::warn!(peer = %s.peer, "a holder describes another object; not using it");
                        s.dropped = true;
                    }
                    Err(MeshError::NotFound { .. }) if !s.producer => {
                        // Not (or no longer) fetching it: nothing there.
                        s.have = Bits::new(n);
                        s.fetching = Bits::new(n);
                        s.failures += 1;
                        if s.failures >= HOLDER_FAILURES {
                            s.dropped = true;
                        }
                    }
                    Err(e) if !s.producer => {
                        tracing::debug!(peer = %s.peer, error = %e, "a holder did not say what it has");
                        s.failures += 1;
                        if s.failures >= HOLDER_FAILURES {
                            s.dropped = true;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "the producer did not say who holds the object")
                    }
                }
                for h in new {
                    self.add_source(h, false);
                }
            }
        }
        None
    }
}

/// Fetch segment `seg` from `peer` (the producer, or a holder of a copy)
/// into the partial copy.
async fn fetch_segment(
    fetcher: &Fetcher,
    peer: PeerId,
    addrs: &[Multiaddr],
    name: &RemoteName,
    partial: &Arc<Partial>,
    seg: u64,
    record: Option<Arc<Transfer>>,
) -> Result<Duration, MeshError> {
    let asked = Instant::now();
    let (offset, len) = segment_range(partial.size, seg);
    let mut timeouts = fetcher.timeouts();
    if !matches!(name, RemoteName::Native(_)) {
        timeouts.header = timeouts.header.min(HOLDER_PATIENCE);
        timeouts.idle = timeouts.idle.min(HOLDER_PATIENCE);
    }
    let (body, path) = fetcher
        .reusing(peer, addrs, |stream| {
            client::get(stream, peer, name, offset, Some(len), timeouts)
        })
        .await?;
    let first_byte = asked.elapsed();
    if let Some(record) = record {
        let mut paths = record.paths.lock().expect("transfer lock");
        if paths.last() != Some(&path) {
            paths.push(path);
        }
    }
    // A holder proves its bytes against the hash we trust, not its own.
    if body.hash() != partial.hash || body.size() != partial.size {
        return Err(MeshError::Corrupt {
            peer,
            id: name.clone(),
            reason: format!(
                "it describes another object ({} bytes, BLAKE3 {})",
                body.size(),
                body.hash()
            ),
        });
    }
    let mut body = body;
    receive_into(fetcher, peer, path, &mut body, partial, seg).await?;
    if let Some(stream) = body.take_reusable() {
        fetcher.inner.pool.give(peer, stream, path);
    }
    Ok(first_byte)
}

/// Receive the producer's answer to `Open` (segment `seg`).
async fn receive(
    inner: &Arc<Inner>,
    peer: PeerId,
    path: PathInfo,
    mut body: Body<libp2p::Stream>,
    partial: &Arc<Partial>,
    seg: u64,
) -> Result<(), MeshError> {
    let fetcher = Fetcher {
        inner: Arc::clone(inner),
    };
    receive_into(&fetcher, peer, path, &mut body, partial, seg).await?;
    if let Some(stream) = body.take_reusable() {
        if let Some(path) = inner.opener.path_now(&peer) {
            inner.pool.give(peer, stream, path);
        }
    }
    Ok(())
}

/// Read a segment's answer into the partial copy. A better path to the
/// peer coming up ends it (the old connection may close under it without
/// an error): the segment is asked again on the new path.
async fn receive_into(
    fetcher: &Fetcher,
    peer: PeerId,
    path: PathInfo,
    body: &mut Body<libp2p::Stream>,
    partial: &Arc<Partial>,
    seg: u64,
) -> Result<(), MeshError> {
    body.keep_pairs();
    let (mut at, _) = segment_range(partial.size, seg);
    let mut counted = 0;
    let opener = Arc::clone(&fetcher.inner.opener);
    let better = opener.better_path(peer, path);
    tokio::pin!(better);
    loop {
        let next = tokio::select! {
            next = body.next_chunk() => next,
            () = &mut better => {
                return Err(MeshError::Unreachable {
                    peer,
                    reason: "a better path came up; asking again on it".into(),
                });
            }
        };
        let wire = body.wire_bytes();
        fetcher.inner.traffic.fetched(peer, wire - counted);
        counted = wire;
        let next = match next {
            // The stream, not the bytes, failed: the segment is asked again.
            Err(e) if body.broke().is_some() => {
                return Err(MeshError::Unreachable {
                    peer,
                    reason: e.to_string(),
                })
            }
            other => other?,
        };
        let Some(chunk) = next else { break };
        for (node, pair) in body.take_pairs() {
            partial.save_pair(node, &pair);
        }
        let file = Arc::clone(&partial.file);
        let n = chunk.len() as u64;
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&chunk, at)
        })
        .await
        .map_err(|e| MeshError::Storage(io::Error::other(e).into()))?
        .map_err(|e| MeshError::Storage(e.into()))?;
        at += n;
    }
    for (node, pair) in body.take_pairs() {
        partial.save_pair(node, &pair);
    }
    Ok(())
}
