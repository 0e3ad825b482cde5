//! The data plane over real libp2p: two (or three) swarms in this process,
//! each driven by its own task, QUIC on 127.0.0.1, streams opened with
//! `libp2p_stream::Control`. Adversarial producers are hand-written servers
//! on the same real streams.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::StreamProtocol;
use proxymesh::api::{Path, Transport};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use super::*;
use crate::identity::OwnerSecret;
use crate::mesh::client::RateFloor;
use crate::mesh::protocol::CHUNK;
use crate::mesh::protocol::{self, Response, PROTOCOL};
use crate::mesh::serve::{self, ServeConfig};
use crate::service::LocalObjects;
use crate::storage::{Location, StorageConfig};
use proxymesh::membership::{Authority, Gate, Policy};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Deterministic, position-dependent bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

/// Aborts the task (and so drops the swarm or server) when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A swarm with only the stream behaviour, listening on QUIC, driven by a task.
struct Node {
    peer: PeerId,
    addr: Multiaddr,
    control: libp2p_stream::Control,
    _driver: Task,
}

impl Node {
    /// Start a node; if `dial` is given, connect to it before returning.
    async fn start(dial: Option<&Node>) -> Node {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_quic()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        swarm
            .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        if let Some(other) = dial {
            swarm
                .dial(other.addr.clone().with(Protocol::P2p(other.peer)))
                .unwrap();
            let connected = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match swarm.select_next_some().await {
                        SwarmEvent::ConnectionEstablished { peer_id, .. }
                            if peer_id == other.peer =>
                        {
                            break
                        }
                        SwarmEvent::OutgoingConnectionError { error, .. } => {
                            panic!("dial failed: {error}")
                        }
                        _ => {}
                    }
                }
            });
            connected.await.expect("connecting timed out");
        }
        let peer = *swarm.local_peer_id();
        let control = swarm.behaviour().new_control();
        let driver = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        Node {
            peer,
            addr,
            control,
            _driver: Task(driver),
        }
    }

    /// Run `handler` on every inbound fetch-protocol stream.
    fn accept<F, Fut>(&self, handler: F) -> Task
    where
        F: Fn(libp2p::Stream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut incoming = self.control.clone().accept(PROTOCOL).unwrap();
        Task(tokio::spawn(async move {
            while let Some((_, stream)) = incoming.next().await {
                tokio::spawn(handler(stream));
            }
        }))
    }
}

/// The test's [`StreamOpener`]: a stream straight from libp2p-stream.
#[derive(Clone)]
struct Opener {
    control: libp2p_stream::Control,
    /// Streams opened.
    opens: Arc<AtomicU64>,
}

impl Opener {
    fn new(control: libp2p_stream::Control) -> Self {
        Self {
            control,
            opens: Arc::default(),
        }
    }
}

const DIRECT_QUIC: PathInfo = PathInfo {
    path: Path::Direct,
    transport: Transport::Quic,
};

#[async_trait::async_trait]
impl StreamOpener for Opener {
    async fn open(
        &self,
        peer: PeerId,
        _addrs: &[Multiaddr],
    ) -> Result<(libp2p::Stream, PathInfo), MeshError> {
        self.opens.fetch_add(1, Ordering::Relaxed);
        let stream = self
            .control
            .clone()
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(|e| MeshError::Unreachable {
                peer,
                reason: e.to_string(),
            })?;
        Ok((stream, DIRECT_QUIC))
    }

    fn path_now(&self, _peer: &PeerId) -> Option<PathInfo> {
        Some(DIRECT_QUIC)
    }
}

async fn storage(memory_cap: usize, inline_limit: usize) -> (Arc<Storage>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(StorageConfig {
        dir: dir.path().to_path_buf(),
        memory_cap: memory_cap as u64,
        inline_limit: inline_limit as u64,
        max_object_size: None,
        persist: false,
    })
    .await
    .unwrap();
    (Arc::new(s), dir)
}

/// A producer daemon's data plane: storage served over the fetch protocol.
struct Producer {
    node: Node,
    storage: Arc<Storage>,
    /// Peers the server refused and asked to drop.
    drops: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<(PeerId, String)>>,
    /// Derives its objects' owner capabilities.
    owners: Arc<OwnerSecret>,
    /// Whom it serves.
    gate: Arc<Gate>,
    _server: Task,
    _dir: TempDir,
}

impl Producer {
    async fn start(memory_cap: usize, inline_limit: usize) -> Producer {
        Self::start_gated(memory_cap, inline_limit, Policy::Open).await
    }

    async fn start_gated(memory_cap: usize, inline_limit: usize, policy: Policy) -> Producer {
        Self::start_configured(memory_cap, inline_limit, policy, Duration::from_secs(30)).await
    }

    /// A producer that keeps a stream open for `keep_alive` after an answer.
    async fn start_configured(
        memory_cap: usize,
        inline_limit: usize,
        policy: Policy,
        keep_alive: Duration,
    ) -> Producer {
        let node = Node::start(None).await;
        let (storage, dir) = storage(memory_cap, inline_limit).await;
        let incoming = node.control.clone().accept(PROTOCOL).unwrap();
        let config = ServeConfig {
            request_timeout: Duration::from_secs(2),
            stall_timeout: Duration::from_secs(5),
            keep_alive,
        };
        let (dropper, drops) = tokio::sync::mpsc::unbounded_channel();
        let owners = Arc::new(OwnerSecret::from_bytes(rand::random()));
        let objects = LocalObjects::new(storage.clone(), owners.clone(), 8 * MIB as u64);
        let gate = Arc::new(Gate::new(policy));
        let server = serve::Server::new(Arc::new(objects), gate.clone(), dropper, config);
        let server = tokio::spawn(serve::serve(incoming, Arc::new(server)));
        Producer {
            node,
            storage,
            owners,
            gate,
            drops: tokio::sync::Mutex::new(drops),
            _server: Task(server),
            _dir: dir,
        }
    }

    async fn put(&self, name: ObjectName, data: &[u8]) -> blake3::Hash {
        let mut w = self.storage.writer(name, Some(data.len() as u64)).unwrap();
        for piece in data.chunks(MIB) {
            w.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        w.commit().await.unwrap().hash
    }

    async fn put_native(&self, data: &[u8]) -> ObjectId {
        let id = ObjectId::random();
        self.put(ObjectName::Native(id), data).await;
        id
    }
}

/// A consumer daemon's data plane: a fetcher caching into its own storage.
struct Consumer {
    node: Node,
    storage: Arc<Storage>,
    fetcher: Fetcher,
    /// The fetcher's opener (shares its count of streams opened).
    opener: Opener,
    _dir: TempDir,
}

fn test_config() -> FetchConfig {
    FetchConfig {
        header_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_millis(700),
        floor: RateFloor::default(),
        cache_cap: 256 * MIB as u64,
    }
}

impl Consumer {
    async fn start(of: &Node, config: FetchConfig) -> Consumer {
        Self::start_with(of, config, 4 * MIB, 256 * KIB).await
    }

    async fn start_with(
        of: &Node,
        config: FetchConfig,
        memory_cap: usize,
        inline_limit: usize,
    ) -> Consumer {
        let node = Node::start(Some(of)).await;
        let (storage, dir) = storage(memory_cap, inline_limit).await;
        let opener = Opener::new(node.control.clone());
        let fetcher = Fetcher::new(storage.clone(), Arc::new(opener.clone()), config);
        Consumer {
            node,
            storage,
            fetcher,
            opener,
            _dir: dir,
        }
    }

    fn opener(&self) -> Opener {
        self.opener.clone()
    }

    async fn stream_to(&self, peer: PeerId) -> libp2p::Stream {
        self.opener().open(peer, &[]).await.unwrap().0
    }

    fn cached(&self, peer: PeerId, id: ObjectId) -> bool {
        self.storage.contains(&ObjectName::Remote { peer, id })
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        header: Duration::from_secs(2),
        idle: Duration::from_millis(700),
        floor: RateFloor::default(),
    }
}

/// All bytes of a fetched object.
async fn read_fetched(f: Fetched) -> io::Result<Vec<u8>> {
    match f {
        Fetched::Cached { reader } => Ok(reader.read_all().await?.to_vec()),
        Fetched::Streaming { mut body, .. } => {
            let mut out = Vec::new();
            while let Some(chunk) = body.next().await {
                out.extend_from_slice(&chunk?);
            }
            Ok(out)
        }
    }
}

fn is_streaming(f: &Fetched) -> bool {
    matches!(f, Fetched::Streaming { .. })
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn small_object_streams_then_is_served_from_the_cache() {
    let producer = Producer::start(8 * MIB, MIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let data = pattern(100 * KIB + 7, 1);
    let id = producer.put_native(&data).await;
    let peer = producer.node.peer;

    let first = consumer
        .fetcher
        .get(peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let Fetched::Streaming {
        size, hash, path, ..
    } = &first
    else {
        panic!("first get must stream: {first:?}")
    };
    assert_eq!(*size, data.len() as u64);
    assert_eq!(*hash, blake3::hash(&data));
    assert_eq!(path.to_string(), "direct/quic");
    assert_eq!(read_fetched(first).await.unwrap(), data);
    assert_eq!(consumer.fetcher.transfers(), 1);
    assert!(consumer.cached(peer, id), "committed before the body ended");

    let second = consumer
        .fetcher
        .get(peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let Fetched::Cached { reader } = second else {
        panic!("second get must hit the cache: {second:?}")
    };
    assert_eq!(reader.meta().hash, blake3::hash(&data));
    assert_eq!(reader.meta().location, Location::Memory);
    assert_eq!(reader.read_all().await.unwrap(), data);
    assert_eq!(
        consumer.fetcher.transfers(),
        1,
        "a cache hit makes no transfer"
    );
    assert_eq!(consumer.fetcher.cached_bytes(), data.len() as u64);
}

#[tokio::test]
async fn warm_requests_reuse_one_stream() {
    let producer = Producer::start(8 * MIB, MIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let peer = producer.node.peer;
    let mut objects = Vec::new();
    for seed in 0..4 {
        let data = pattern(KIB + seed as usize, seed);
        objects.push((producer.put_native(&data).await, data));
    }
    for (id, data) in &objects {
        let got = consumer.fetcher.get(peer, RemoteName::Native(*id), &[]);
        assert_eq!(read_fetched(got.await.unwrap()).await.unwrap(), *data);
        let name = RemoteName::Native(ObjectId::random());
        assert!(!consumer.fetcher.exists(peer, name, &[]).await.unwrap());
    }
    assert!(consumer
        .fetcher
        .exists(peer, RemoteName::Native(objects[0].0), &[])
        .await
        .unwrap());
    assert_eq!(
        consumer.opener.opens.load(Ordering::Relaxed),
        1,
        "every request after the first goes out on the same stream"
    );
    assert_eq!(consumer.fetcher.transfers(), 4);
    // A request that fails drops its stream (even a plain "not found"),
    // and the next one opens another.
    let missing = consumer
        .fetcher
        .get(peer, RemoteName::Native(ObjectId::random()), &[]);
    assert!(matches!(missing.await, Err(MeshError::NotFound { .. })));
    assert!(consumer
        .fetcher
        .exists(peer, RemoteName::Native(objects[1].0), &[])
        .await
        .unwrap());
    assert_eq!(consumer.opener.opens.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_stream_the_server_closed_is_replaced_within_the_request() {
    // The server closes idle streams at once (as after its keep-alive, or
    // as a daemon that answers one request per stream would).
    let producer =
        Producer::start_configured(8 * MIB, MIB, Policy::Open, Duration::from_millis(1)).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let peer = producer.node.peer;
    for seed in 0..3 {
        let data = pattern(KIB, seed);
        let id = producer.put_native(&data).await;
        let got = consumer.fetcher.get(peer, RemoteName::Native(id), &[]);
        assert_eq!(read_fetched(got.await.unwrap()).await.unwrap(), data);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consumer.opener.opens.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn empty_object_round_trips() {
    let producer = Producer::start(MIB, 64 * KIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let id = producer.put_native(&[]).await;
    let peer = producer.node.peer;
    let f = consumer
        .fetcher
        .get(peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    assert!(is_streaming(&f));
    assert!(read_fetched(f).await.unwrap().is_empty());
    let f = consumer
        .fetcher
        .get(peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    assert!(!is_streaming(&f), "cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_disk_object_streams_verified_and_is_cached_on_disk() {
    let size = 64 * MIB;
    // Small memory caps: the object lives on disk at both ends.
    let producer = Producer::start(MIB, 64 * KIB).await;
    let consumer = Consumer::start_with(&producer.node, test_config(), MIB, 64 * KIB).await;
    let data = pattern(size, 2);
    let want = blake3::hash(&data);
    let id = producer.put_native(&data).await;
    assert_eq!(
        producer
            .storage
            .meta(&ObjectName::Native(id))
            .unwrap()
            .location,
        Location::Disk
    );
    let peer = producer.node.peer;

    let t = Instant::now();
    let f = consumer
        .fetcher
        .get(peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let Fetched::Streaming { mut body, hash, .. } = f else {
        panic!("must stream")
    };
    assert_eq!(hash, want);
    let (mut got, mut hasher, mut biggest) = (0usize, blake3::Hasher::new(), 0usize);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= CHUNK);
        biggest = biggest.max(chunk.len());
        got += chunk.len();
        hasher.update(&chunk);
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, size);
    assert_eq!(hasher.finalize(), want);
    println!(
        "loopback QUIC get of {} MiB (disk → network → disk cache + reader): {:.2} s, {:.0} MiB/s, chunks up to {} KiB",
        size / MIB,
        secs,
        (size / MIB) as f64 / secs,
        biggest / KIB
    );
    // Bounded memory: the consumer's memory budget never held the object.
    assert!(consumer.storage.memory_reserved() <= MIB as u64);

    let f = consumer
        .fetcher
        .get(peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let Fetched::Cached { reader } = f else {
        panic!("second get must hit the cache")
    };
    assert_eq!(reader.meta().location, Location::Disk);
    assert_eq!(reader.meta().hash, want);
    let mut s = reader.into_stream(CHUNK);
    let mut h = blake3::Hasher::new();
    while let Some(c) = s.next().await {
        h.update(&c.unwrap());
    }
    assert_eq!(h.finalize(), want);
    assert_eq!(consumer.fetcher.transfers(), 1);
}

#[tokio::test]
async fn ranges_of_memory_and_disk_objects() {
    let producer = Producer::start(MIB, 64 * KIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let peer = producer.node.peer;
    for (len, location) in [
        (50 * KIB, Location::Memory),
        (700 * KIB + 3, Location::Disk),
    ] {
        let data = pattern(len, 3);
        let id = producer.put_native(&data).await;
        assert_eq!(
            producer
                .storage
                .meta(&ObjectName::Native(id))
                .unwrap()
                .location,
            location
        );
        let name = RemoteName::Native(id);
        let n = len as u64;
        for (offset, want) in [
            (0, Some(10)),
            (1, None),
            (n - 5, None),
            (100, Some(0)),
            (n, None),
            (12_345, Some((300 * KIB as u64).min(n - 12_345))),
            (0, Some(n)),
        ] {
            let stream = consumer.stream_to(peer).await;
            let mut body = client::get(stream, peer, &name, offset, want, timeouts())
                .await
                .unwrap();
            let expect_len = want.unwrap_or(n - offset);
            assert_eq!(
                (body.size(), body.offset(), body.len()),
                (n, offset, expect_len)
            );
            assert_eq!(body.hash(), blake3::hash(&data));
            let mut got = Vec::new();
            while let Some(c) = body.next_chunk().await.unwrap() {
                got.extend_from_slice(&c);
            }
            let (a, b) = (offset as usize, (offset + expect_len) as usize);
            assert!(got == data[a..b], "range {offset}+{want:?} of {location:?}");
        }
        for (offset, want) in [(n + 1, None), (n - 1, Some(2)), (u64::MAX, Some(1))] {
            let stream = consumer.stream_to(peer).await;
            let err = client::get(stream, peer, &name, offset, want, timeouts())
                .await
                .err()
                .unwrap();
            assert!(
                matches!(err, MeshError::Refused { .. }),
                "{offset}+{want:?}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn exists_and_evict_reach_the_producer_and_drop_the_cached_copy() {
    let producer = Producer::start(8 * MIB, MIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let peer = producer.node.peer;
    let data = pattern(10 * KIB, 4);
    let id = producer.put_native(&data).await;
    let name = RemoteName::Native(id);
    let f = &consumer.fetcher;

    assert!(f.exists(peer, name.clone(), &[]).await.unwrap());
    assert!(!f
        .exists(peer, RemoteName::Native(ObjectId::random()), &[])
        .await
        .unwrap());
    read_fetched(f.get(peer, name.clone(), &[]).await.unwrap())
        .await
        .unwrap();
    assert!(consumer.cached(peer, id));

    // A ticket only reads: evicting without the owner capability, or with
    // another object's, is refused and changes nothing at the producer.
    let err = f.evict(peer, name.clone(), &[], None).await.unwrap_err();
    assert!(matches!(err, MeshError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("owner capability"), "{err}");
    let other = producer.owners.cap(&ObjectId::random());
    assert!(f.evict(peer, name.clone(), &[], Some(other)).await.is_err());
    assert!(producer.storage.contains(&ObjectName::Native(id)));
    read_fetched(f.get(peer, name.clone(), &[]).await.unwrap())
        .await
        .unwrap();

    let cap = Some(producer.owners.cap(&id));
    assert!(f.evict(peer, name.clone(), &[], cap).await.unwrap());
    assert!(!producer.storage.contains(&ObjectName::Native(id)));
    assert!(!consumer.cached(peer, id), "the cached copy went too");
    assert_eq!(f.cached_bytes(), 0);
    assert!(!f.exists(peer, name.clone(), &[]).await.unwrap());
    assert!(!f.evict(peer, name.clone(), &[], cap).await.unwrap());
    let err = f.get(peer, name, &[]).await.unwrap_err();
    assert!(matches!(err, MeshError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn the_bytes_must_be_what_the_ticket_promised() {
    let producer = Producer::start(MIB, 64 * KIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let peer = producer.node.peer;
    let data = pattern(200 * KIB, 12);
    let id = producer.put_native(&data).await;
    let name = RemoteName::Native(id);
    // A ticket promising other bytes: refused before any byte is handed out.
    let wrong = Some(blake3::hash(b"something else"));
    let err = consumer
        .fetcher
        .get_checked(peer, name.clone(), &[], wrong)
        .await
        .unwrap_err();
    assert!(matches!(err, MeshError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("promises"), "{err}");
    assert!(!consumer.cached(peer, id));
    // The right promise streams, is cached, and the cached copy is checked too.
    let right = Some(blake3::hash(&data));
    for _ in 0..2 {
        let f = consumer
            .fetcher
            .get_checked(peer, name.clone(), &[], right)
            .await
            .unwrap();
        assert_eq!(read_fetched(f).await.unwrap(), data);
    }
    assert!(consumer.cached(peer, id));
    assert!(consumer
        .fetcher
        .get_checked(peer, name, &[], wrong)
        .await
        .is_err());
}

#[tokio::test]
async fn forwarded_sets_replace_only_their_own_keys_within_a_quota() {
    // The producer's quota is 8 MiB per peer (see Producer::start_gated).
    let producer = Producer::start(16 * MIB, 64 * KIB).await;
    let peer = producer.node.peer;
    let alice = Consumer::start(&producer.node, test_config()).await;
    let mallory = Consumer::start(&producer.node, test_config()).await;
    let body =
        |d: Vec<u8>| -> ChunkStream { Box::pin(futures::stream::iter([Ok(Bytes::from(d))])) };
    let put = |c: &Consumer, key: &str, d: Vec<u8>| {
        let (f, key, len) = (
            c.fetcher.clone(),
            RemoteName::Endpoint(key.into()),
            d.len() as u64,
        );
        let b = body(d);
        async move { f.put(peer, key, &[], b, len).await }
    };
    let stored = |key: &str| {
        producer
            .storage
            .meta(&ObjectName::Endpoint(key.into()))
            .map(|m| m.hash)
    };
    put(&alice, "alices", pattern(1000, 1)).await.unwrap();
    // Alice may replace her own key; Mallory may not.
    put(&alice, "alices", pattern(2000, 2)).await.unwrap();
    let err = put(&mallory, "alices", pattern(10, 3)).await.unwrap_err();
    assert!(matches!(err, MeshError::Refused { .. }), "{err}");
    assert_eq!(stored("alices"), Some(blake3::hash(&pattern(2000, 2))));
    // A key this site stored itself is not anybody else's to replace.
    producer
        .put(ObjectName::Endpoint("local".into()), &pattern(100, 4))
        .await;
    assert!(put(&alice, "local", pattern(10, 5)).await.is_err());
    assert_eq!(stored("local"), Some(blake3::hash(&pattern(100, 4))));
    // The quota counts what a peer keeps here, replacements included.
    put(&mallory, "m1", pattern(5 * MIB, 6)).await.unwrap();
    let err = put(&mallory, "m2", pattern(4 * MIB, 7)).await.unwrap_err();
    assert!(err.to_string().contains("quota"), "{err}");
    assert!(stored("m2").is_none());
    put(&mallory, "m1", pattern(7 * MIB, 8)).await.unwrap();
    // An absurd announced size is refused, not wrapped around the quota.
    let mut stream = mallory.stream_to(peer).await;
    let req = protocol::Request::Put {
        name: RemoteName::Endpoint("huge".into()),
        size: u64::MAX,
    };
    protocol::write_request(&mut stream, &req).await.unwrap();
    match protocol::read_response(&mut stream).await.unwrap() {
        Response::Refused(why) => assert!(why.contains("quota"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Once evicted, the room is free again; Alice's quota is her own.
    let m1 = RemoteName::Endpoint("m1".into());
    assert!(mallory.fetcher.evict(peer, m1, &[], None).await.unwrap());
    put(&mallory, "m2", pattern(4 * MIB, 9)).await.unwrap();
    put(&alice, "a2", pattern(6 * MIB, 10)).await.unwrap();
}

#[tokio::test]
async fn put_stores_endpoint_keys_and_refuses_native_names() {
    let producer = Producer::start(8 * MIB, 64 * KIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let peer = producer.node.peer;
    let data = pattern(900 * KIB + 1, 5);
    let body = |d: &[u8]| -> ChunkStream {
        let chunks: Vec<io::Result<Bytes>> = d
            .chunks(100 * KIB)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures::stream::iter(chunks))
    };
    let key = RemoteName::Endpoint("proxystore-key".into());
    consumer
        .fetcher
        .put(peer, key.clone(), &[], body(&data), data.len() as u64)
        .await
        .unwrap();
    let meta = producer
        .storage
        .meta(&ObjectName::Endpoint("proxystore-key".into()))
        .unwrap();
    assert_eq!(
        (meta.size, meta.hash),
        (data.len() as u64, blake3::hash(&data))
    );

    // Endpoint keys are fetched, verified, and never cached (they can change).
    for round in 1..=2 {
        let f = consumer.fetcher.get(peer, key.clone(), &[]).await.unwrap();
        assert!(is_streaming(&f), "round {round}");
        assert_eq!(read_fetched(f).await.unwrap(), data);
    }
    assert_eq!(consumer.fetcher.transfers(), 2);
    assert_eq!(consumer.storage.stats().objects, 0);

    // A set replaces the value.
    let other = pattern(1000, 6);
    consumer
        .fetcher
        .put(peer, key.clone(), &[], body(&other), other.len() as u64)
        .await
        .unwrap();
    let f = consumer.fetcher.get(peer, key, &[]).await.unwrap();
    assert_eq!(read_fetched(f).await.unwrap(), other);

    let err = consumer
        .fetcher
        .put(
            peer,
            RemoteName::Native(ObjectId::random()),
            &[],
            body(&data),
            data.len() as u64,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MeshError::Refused { .. }), "{err}");

    // A body shorter than announced is never stored.
    let short = RemoteName::Endpoint("short".into());
    let err = consumer
        .fetcher
        .put(peer, short, &[], body(&data[..10]), 20)
        .await
        .unwrap_err();
    assert!(matches!(err, MeshError::Storage(_)), "{err}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!producer
        .storage
        .contains(&ObjectName::Endpoint("short".into())));
}

#[tokio::test]
async fn missing_object_is_not_found_and_nothing_is_cached() {
    let producer = Producer::start(MIB, 64 * KIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let peer = producer.node.peer;
    let id = ObjectId::random();
    let err = consumer
        .fetcher
        .get(peer, RemoteName::Native(id), &[])
        .await
        .unwrap_err();
    match &err {
        MeshError::NotFound { peer: p, id: i } => {
            assert_eq!((*p, i), (peer, &RemoteName::Native(id)));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains(&peer.to_string()));
    assert!(err.to_string().contains(&id.to_string()));
    let err = consumer
        .fetcher
        .get(peer, RemoteName::Endpoint("nope".into()), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, MeshError::NotFound { .. }), "{err}");
    assert_eq!(consumer.storage.stats().objects, 0);
}

#[tokio::test]
async fn unknown_peer_is_unreachable() {
    let producer = Producer::start(MIB, 64 * KIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let t = Instant::now();
    let err = consumer
        .fetcher
        .get(stranger, RemoteName::Native(ObjectId::random()), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, MeshError::Unreachable { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gets_make_one_transfer() {
    let producer = Producer::start(MIB, 64 * KIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let peer = producer.node.peer;
    let data = Arc::new(pattern(8 * MIB + 3, 7));
    let id = producer.put_native(&data).await;

    let gets: Vec<_> = (0..8)
        .map(|_| {
            let (f, data) = (consumer.fetcher.clone(), data.clone());
            tokio::spawn(async move {
                let fetched = f.get(peer, RemoteName::Native(id), &[]).await.unwrap();
                let streamed = is_streaming(&fetched);
                assert!(read_fetched(fetched).await.unwrap() == *data, "wrong bytes");
                streamed
            })
        })
        .collect();
    let mut streamed = 0;
    for g in gets {
        streamed += g.await.unwrap() as usize;
    }
    assert_eq!(
        consumer.fetcher.transfers(),
        1,
        "coalesced into one transfer"
    );
    assert_eq!(streamed, 1, "one leader streams, the others read the cache");

    // Concurrent gets of a missing object: one request, every caller gets NotFound.
    let missing = ObjectId::random();
    let gets: Vec<_> = (0..5)
        .map(|_| {
            let f = consumer.fetcher.clone();
            tokio::spawn(async move { f.get(peer, RemoteName::Native(missing), &[]).await })
        })
        .collect();
    for g in gets {
        let err = g.await.unwrap().unwrap_err();
        assert!(matches!(err, MeshError::NotFound { .. }), "{err}");
    }
}

#[tokio::test]
async fn cache_is_bounded_and_evicts_least_recently_used() {
    let producer = Producer::start(8 * MIB, MIB).await;
    let obj = 100 * KIB;
    let config = FetchConfig {
        cache_cap: (3 * obj + obj / 2) as u64,
        ..test_config()
    };
    let consumer = Consumer::start(&producer.node, config).await;
    let peer = producer.node.peer;
    let mut ids = Vec::new();
    for seed in 0..4u8 {
        ids.push(producer.put_native(&pattern(obj, seed)).await);
    }
    let get = |id: ObjectId| {
        let f = consumer.fetcher.clone();
        async move {
            let fetched = f.get(peer, RemoteName::Native(id), &[]).await.unwrap();
            let streamed = is_streaming(&fetched);
            read_fetched(fetched).await.unwrap();
            streamed
        }
    };
    let (a, b, c, d) = (ids[0], ids[1], ids[2], ids[3]);
    assert!(get(a).await && get(b).await && get(c).await);
    assert!(!get(a).await, "a is cached, and now most recently used");
    assert!(get(d).await);
    // b was least recently used.
    assert!(!consumer.cached(peer, b), "b evicted");
    for id in [a, c, d] {
        assert!(consumer.cached(peer, id));
    }
    assert_eq!(consumer.fetcher.cached_bytes(), 3 * obj as u64);
    assert_eq!(consumer.storage.stats().bytes, 3 * obj as u64);
    assert!(get(b).await, "b is fetched again");
    assert_eq!(consumer.fetcher.transfers(), 5);
    assert!(!consumer.cached(peer, c), "then c was least recently used");

    // An object larger than the whole cache is streamed but never cached.
    let big = producer.put_native(&pattern(MIB, 9)).await;
    assert!(get(big).await && get(big).await);
    assert!(!consumer.cached(peer, big));
    assert!(consumer.fetcher.cached_bytes() <= 3 * obj as u64);
}

/// A producer that answers every get with `header` and then runs `body`.
fn adversary<F, Fut>(node: &Node, respond: F) -> Task
where
    F: Fn(libp2p::Stream, Option<protocol::Request>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    node.accept(move |mut stream| {
        let respond = respond.clone();
        async move {
            let req = protocol::read_request(&mut stream).await.ok();
            respond(stream, req).await;
        }
    })
}

/// The verified encoding of `data[offset..end]`, as a server sends it.
fn encoded(data: &[u8], offset: usize, end: usize) -> Vec<u8> {
    use crate::storage::outboard::{encode_range, reference, Data, Outboard};
    let (root, pairs) = reference(data);
    let ob = Outboard::memory(root, data.len() as u64, pairs.into());
    let mut out = Vec::new();
    encode_range(
        Data::Memory(data),
        &ob,
        offset as u64,
        (end - offset) as u64,
        &mut out,
    )
    .unwrap();
    out
}

/// How many bytes of the whole object's encoding prove its first `bytes`.
fn proving(data: &[u8], bytes: usize) -> usize {
    use crate::mesh::verified::{RangeDecoder, Step};
    let enc = encoded(data, 0, data.len());
    let mut dec = RangeDecoder::new(blake3::hash(data), data.len() as u64, 0, data.len() as u64);
    let mut buf = bytes::BytesMut::from(&enc[..]);
    let mut got = 0;
    while got < bytes {
        match dec.next(&mut buf).unwrap() {
            Step::Data(_, d) => got += d.len(),
            Step::Parent(..) => {}
            other => panic!("{other:?}"),
        }
    }
    dec.consumed() as usize
}

/// The header of a whole object of `data_len` bytes hashing like
/// `announced`, as the answer to `req` (an open, or a get).
async fn send_header(
    stream: &mut libp2p::Stream,
    req: &Option<protocol::Request>,
    data_len: usize,
    announced: &[u8],
) {
    assert!(
        data_len as u64 <= SEGMENT,
        "adversaries answer single-segment objects"
    );
    let hash = *blake3::hash(announced).as_bytes();
    let size = data_len as u64;
    let header = match req {
        Some(protocol::Request::Open { .. }) => Response::Opened {
            size,
            hash,
            len: size,
            holders: Vec::new(),
        },
        _ => Response::Object {
            size,
            hash,
            offset: 0,
            len: size,
        },
    };
    protocol::write_response(stream, &header).await.unwrap();
}

/// Consume a fetched body, expecting it to fail: (bytes received, error).
async fn expect_broken(f: Fetched) -> (usize, io::Error) {
    let Fetched::Streaming { mut body, .. } = f else {
        panic!("expected a transfer")
    };
    let mut got = 0;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(c) => got += c.len(),
            Err(e) => {
                assert!(body.next().await.is_none(), "nothing after the error");
                return (got, e);
            }
        }
    }
    panic!("the body ended cleanly after {got} bytes")
}

#[tokio::test]
async fn wrong_hash_is_corrupt_and_nothing_is_cached() {
    let evil = Node::start(None).await;
    let len = 600 * KIB;
    let _server = adversary(&evil, move |mut s, req| async move {
        // Announces the hash of one object, sends another of the same size
        // (after a moment, so a follower joins the transfer).
        send_header(&mut s, &req, len, &pattern(len, 1)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let other = pattern(len, 2);
        let _ = s.write_all(&encoded(&other, 0, len)).await;
        let _ = s.close().await;
    });
    let consumer = Consumer::start(&evil, test_config()).await;
    let id = ObjectId::random();
    let name = RemoteName::Native(id);

    // A leader streaming, and a follower waiting for it.
    let leader = consumer
        .fetcher
        .get(evil.peer, name.clone(), &[])
        .await
        .unwrap();
    let f2 = consumer.fetcher.clone();
    let n2 = name.clone();
    let peer = evil.peer;
    let follower = tokio::spawn(async move { f2.get(peer, n2, &[]).await });
    let (got, err) = expect_broken(leader).await;
    assert_eq!(
        got, 0,
        "no byte of a chunk group that does not verify is handed out"
    );
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let msg = err.to_string();
    assert!(
        msg.contains(&evil.peer.to_string()) && msg.contains(&id.to_string()),
        "{msg}"
    );
    let err = follower.await.unwrap().unwrap_err();
    assert!(
        matches!(err, MeshError::Corrupt { .. }),
        "follower got {err}"
    );
    assert_eq!(consumer.fetcher.transfers(), 1);
    assert!(!consumer.cached(evil.peer, id));
    assert_eq!(consumer.storage.stats().objects, 0);
    assert_eq!(consumer.storage.memory_reserved(), 0);
    assert_eq!(consumer.fetcher.cached_bytes(), 0);
}

#[tokio::test]
async fn truncated_transfer_is_corrupt_and_nothing_is_cached() {
    let evil = Node::start(None).await;
    let len = MIB;
    let _server = adversary(&evil, move |mut s, req| async move {
        let data = pattern(len, 3);
        send_header(&mut s, &req, len, &data).await;
        let _ = s
            .write_all(&encoded(&data, 0, len)[..proving(&data, len / 2)])
            .await;
        let _ = s.close().await;
    });
    let consumer = Consumer::start(&evil, test_config()).await;
    let id = ObjectId::random();
    let f = consumer
        .fetcher
        .get(evil.peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let (got, err) = expect_broken(f).await;
    assert_eq!(got, len / 2);
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(!consumer.cached(evil.peer, id));
    assert_eq!(consumer.storage.stats().objects, 0);

    // A bare client::get reports the same as a typed error.
    let stream = consumer.stream_to(evil.peer).await;
    let mut body = client::get(
        stream,
        evil.peer,
        &RemoteName::Native(id),
        0,
        None,
        timeouts(),
    )
    .await
    .unwrap();
    let err = loop {
        match body.next_chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("ended cleanly"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, MeshError::Corrupt { .. }), "{err}");
}

/// A producer of `data` whose first stream asked for bytes breaks halfway
/// through its answer (as a relayed connection closed for a direct one
/// does); the others answer gets and opens honestly. Also: how many
/// streams asked for bytes, and each request's (offset, length).
#[allow(clippy::type_complexity)]
fn flaky_server(
    node: &Node,
    data: Arc<Vec<u8>>,
) -> (Task, Arc<AtomicU64>, Arc<Mutex<Vec<(u64, Option<u64>)>>>) {
    let streams = Arc::new(AtomicU64::new(0));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let task = {
        let (streams, asked) = (streams.clone(), asked.clone());
        node.accept(move |mut s| {
            let (data, streams, asked) = (data.clone(), streams.clone(), asked.clone());
            async move {
                let (offset, want, open) = match protocol::read_request(&mut s).await {
                    Ok(protocol::Request::Get {
                        offset, len: want, ..
                    }) => (offset, want, false),
                    Ok(protocol::Request::Open { max, .. }) => (0, Some(max), true),
                    _ => return,
                };
                asked.lock().unwrap().push((offset, want));
                let offset = offset as usize;
                let end = want.map_or(data.len(), |l| offset + l as usize);
                let header = if open {
                    Response::Opened {
                        size: data.len() as u64,
                        hash: *blake3::hash(&data).as_bytes(),
                        len: (end - offset) as u64,
                        holders: Vec::new(),
                    }
                } else {
                    Response::Object {
                        size: data.len() as u64,
                        hash: *blake3::hash(&data).as_bytes(),
                        offset: offset as u64,
                        len: (end - offset) as u64,
                    }
                };
                protocol::write_response(&mut s, &header).await.unwrap();
                let enc = encoded(&data, offset, end);
                if end > offset && streams.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = s.write_all(&enc[..enc.len() / 2]).await;
                    let _ = s.flush().await;
                    drop(s); // broken, not finished
                    return;
                }
                let _ = s.write_all(&enc).await;
                let _ = s.close().await;
            }
        })
    };
    (task, streams, asked)
}

#[tokio::test]
async fn a_broken_stream_resumes_from_the_first_byte_not_received() {
    // The first stream breaks halfway (as a relayed connection closed for a
    // direct one does); the next answers ranged gets honestly.
    // (One segment: larger objects are fetched in segments, each retried
    // whole; see the swarm tests.)
    let flaky = Node::start(None).await;
    let len = MIB;
    let data = Arc::new(pattern(len, 9));
    let (_server, streams, asked) = flaky_server(&flaky, data.clone());
    let consumer = Consumer::start(&flaky, test_config()).await;
    let id = ObjectId::random();
    let f = consumer
        .fetcher
        .get(flaky.peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let got = read_fetched(f)
        .await
        .expect("the transfer resumed and finished");
    assert!(got == *data, "the resumed bytes differ");
    assert_eq!(streams.load(Ordering::SeqCst), 2, "one resume");
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked[0], (0, Some(SEGMENT)));
    let (at, rest) = asked[1];
    assert!(at > 0 && at <= (len / 2) as u64, "resumed from {at}");
    assert_eq!(rest, Some(len as u64 - at), "asked for exactly the rest");
    assert!(
        consumer.cached(flaky.peer, id),
        "the verified whole is cached"
    );
    let recent = consumer.fetcher.recent();
    let t = recent.last().expect("the transfer is listed");
    assert_eq!(
        (t.state.as_str(), t.received, t.size),
        ("done", len as u64, len as u64)
    );
}

#[tokio::test]
async fn a_range_whose_stream_breaks_resumes_from_the_first_byte_not_received() {
    let flaky = Node::start(None).await;
    let data = Arc::new(pattern(MIB, 10));
    let (_server, streams, asked) = flaky_server(&flaky, data.clone());
    let consumer = Consumer::start(&flaky, test_config()).await;
    let (first, last) = (100_000u64, 899_999u64);
    let range = crate::service::range::ByteRange::From {
        first,
        last: Some(last),
    };
    let id = ObjectId::random();
    let name = RemoteName::Native(id);
    let Ranged::Streaming {
        size,
        offset,
        len,
        mut body,
    } = consumer
        .fetcher
        .get_range(flaky.peer, name, &[], None, range)
        .await
        .unwrap()
    else {
        panic!("expected the range to stream from the peer")
    };
    assert_eq!((size, offset, len), (MIB as u64, first, last + 1 - first));
    let mut got = Vec::new();
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.expect("the range resumed and finished"));
    }
    assert!(
        got == data[first as usize..=last as usize],
        "{} bytes, not the range's {len}",
        got.len()
    );
    assert_eq!(streams.load(Ordering::SeqCst), 2, "one resume");
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked[0], (0, Some(0)), "the probe for size and hash");
    assert_eq!(asked[1], (first, Some(len)));
    let (at, rest) = asked[2];
    assert!(
        at > first && at <= first + len / 2,
        "resumed from {at}, not from the verified prefix"
    );
    assert_eq!(rest, Some(first + len - at), "asked for exactly the rest");
    assert!(!consumer.cached(flaky.peer, id), "a range is not cached");
}

#[tokio::test]
async fn stalled_producer_times_out_within_the_idle_timeout() {
    let evil = Node::start(None).await;
    let len = MIB;
    let _server = adversary(&evil, move |mut s, req| async move {
        let data = pattern(len, 4);
        send_header(&mut s, &req, len, &data).await;
        // One chunk group and a bit of the next.
        let _ = s
            .write_all(&encoded(&data, 0, len)[..proving(&data, 1) + 1000])
            .await;
        let _ = s.flush().await;
        // Then nothing, with the stream and connection open.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
    let config = test_config();
    let idle = config.idle_timeout;
    let consumer = Consumer::start(&evil, config).await;
    let id = ObjectId::random();
    let t = Instant::now();
    let f = consumer
        .fetcher
        .get(evil.peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let (got, err) = expect_broken(f).await;
    let took = t.elapsed();
    assert_eq!(
        got,
        crate::storage::outboard::BLOCK_BYTES,
        "the verified group"
    );
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(
        took >= idle && took < idle + Duration::from_secs(1),
        "took {took:?}"
    );
    assert!(!consumer.cached(evil.peer, id));
    // A follower of a timed-out fetch gets the typed error.
    let f = consumer.fetcher.clone();
    let peer = evil.peer;
    let a = tokio::spawn(async move {
        read_fetched(f.get(peer, RemoteName::Native(id), &[]).await.unwrap()).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = consumer
        .fetcher
        .get(peer, RemoteName::Native(id), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, MeshError::TimedOut { .. }), "{err}");
    assert!(a.await.unwrap().is_err());
}

#[tokio::test]
async fn dripping_producer_fails_on_the_rate_floor() {
    // A byte every 100 ms never trips a 700 ms idle timeout; the floor
    // (64 KiB/s averaged over 1.5 s of waiting) catches it.
    let evil = Node::start(None).await;
    let len = MIB;
    let _server = adversary(&evil, move |mut s, req| async move {
        let data = pattern(len, 9);
        send_header(&mut s, &req, len, &data).await;
        for b in &encoded(&data, 0, len) {
            if s.write_all(std::slice::from_ref(b)).await.is_err() || s.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let config = FetchConfig {
        floor: RateFloor {
            bytes_per_sec: 64 * KIB as u64,
            window: Duration::from_millis(1500),
        },
        ..test_config()
    };
    let consumer = Consumer::start(&evil, config).await;
    let id = ObjectId::random();
    let t = Instant::now();
    let f = consumer
        .fetcher
        .get(evil.peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let (got, err) = expect_broken(f).await;
    assert_eq!(got, 0, "no chunk group completed");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("rate floor"), "{err}");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "failed before a whole window: {:?}",
        t.elapsed()
    );
    assert!(!consumer.cached(evil.peer, id));
}

#[tokio::test]
async fn a_slow_reader_does_not_trip_the_rate_floor() {
    // Our own back-pressure is not the peer's slowness: only time spent
    // waiting for the network counts.
    let producer = Producer::start(MIB, 64 * KIB).await;
    let data = pattern(4 * MIB, 6);
    let id = producer.put_native(&data).await;
    let config = FetchConfig {
        floor: RateFloor {
            bytes_per_sec: 64 * MIB as u64,
            window: Duration::from_millis(300),
        },
        ..test_config()
    };
    let consumer = Consumer::start(&producer.node, config).await;
    let f = consumer
        .fetcher
        .get(producer.node.peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let Fetched::Streaming { mut body, .. } = f else {
        panic!("expected a transfer")
    };
    let mut got = Vec::new();
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.unwrap());
        // Far slower than the floor, but it is us who are slow.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(got, data);
}

#[tokio::test]
async fn a_member_revoked_meanwhile_is_refused_on_a_kept_stream() {
    let authority = Authority::generate();
    let producer =
        Producer::start_gated(MIB, 64 * KIB, Policy::Meshes(vec![authority.mesh_id()])).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let now = std::time::SystemTime::now();
    let credential = authority.admit(consumer.node.peer, now, now + Duration::from_secs(3600));
    producer
        .gate
        .admit(consumer.node.peer, Some(&credential), now)
        .unwrap();
    let (a, b) = (pattern(1000, 4), pattern(1000, 5));
    let (id_a, id_b) = (producer.put_native(&a).await, producer.put_native(&b).await);
    let peer = producer.node.peer;
    let got = consumer.fetcher.get(peer, RemoteName::Native(id_a), &[]);
    assert_eq!(read_fetched(got.await.unwrap()).await.unwrap(), a);
    // Its membership ends while its stream is kept: the next request on
    // that stream is refused, not served.
    producer.gate.forget(&consumer.node.peer);
    let err = consumer
        .fetcher
        .get(peer, RemoteName::Native(id_b), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, MeshError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("not a member"), "{err}");
    assert_eq!(
        consumer.opener.opens.load(Ordering::Relaxed),
        1,
        "the kept stream was used"
    );
}

#[tokio::test]
async fn non_members_are_refused_and_dropped() {
    let authority = Authority::generate();
    let producer =
        Producer::start_gated(MIB, 64 * KIB, Policy::Meshes(vec![authority.mesh_id()])).await;
    let id = producer.put_native(&pattern(1000, 3)).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let err = consumer
        .fetcher
        .get(producer.node.peer, RemoteName::Native(id), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, MeshError::NotMember { .. }), "{err}");
    assert!(err.to_string().contains("not a member"), "{err}");
    let (dropped, _) =
        tokio::time::timeout(Duration::from_secs(10), producer.drops.lock().await.recv())
            .await
            .expect("the refused peer is handed over to be dropped")
            .unwrap();
    assert_eq!(dropped, consumer.node.peer);
    // Exists and evict are refused the same way, and the object stays.
    assert!(consumer
        .fetcher
        .evict(
            producer.node.peer,
            RemoteName::Native(id),
            &[],
            Some(producer.owners.cap(&id))
        )
        .await
        .is_err());
    assert!(producer.storage.contains(&ObjectName::Native(id)));
}

#[tokio::test]
async fn silent_producer_times_out_waiting_for_the_header() {
    let evil = Node::start(None).await;
    let _server = evil.accept(|s| async move {
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    });
    let config = test_config();
    let limit = config.header_timeout;
    let consumer = Consumer::start(&evil, config).await;
    let t = Instant::now();
    let err = consumer
        .fetcher
        .get(evil.peer, RemoteName::Native(ObjectId::random()), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MeshError::TimedOut {
                phase: "request",
                ..
            }
        ),
        "{err}"
    );
    assert!(t.elapsed() < limit + Duration::from_secs(1));
}

#[tokio::test]
async fn garbage_answer_is_a_protocol_error() {
    let evil = Node::start(None).await;
    let _server = adversary(&evil, |mut s, _| async move {
        let _ = s.write_all(b"\x00\x00\x00\x05HTTP/").await;
        let _ = s.close().await;
    });
    let consumer = Consumer::start(&evil, test_config()).await;
    let err = consumer
        .fetcher
        .get(evil.peer, RemoteName::Native(ObjectId::random()), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, MeshError::Protocol { .. }), "{err}");
}

#[tokio::test]
async fn server_refuses_garbage_and_oversized_requests() {
    let producer = Producer::start(MIB, 64 * KIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    for frame in [
        b"\x00\x00\x00\x03abc".to_vec(),
        (1u32 << 31).to_be_bytes().to_vec(),
    ] {
        let mut s = consumer.stream_to(producer.node.peer).await;
        s.write_all(&frame).await.unwrap();
        s.flush().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(3), protocol::read_response(&mut s))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(answer, Response::Refused(_)), "{answer:?}");
    }
    // A requester that never sends a request is dropped after the timeout.
    let mut s = consumer.stream_to(producer.node.peer).await;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn producer_dying_mid_transfer_fails_promptly() {
    let producer = Producer::start(MIB, 64 * KIB).await;
    let consumer = Consumer::start(&producer.node, test_config()).await;
    let peer = producer.node.peer;
    let id = producer.put_native(&pattern(64 * MIB, 5)).await;
    let f = consumer
        .fetcher
        .get(peer, RemoteName::Native(id), &[])
        .await
        .unwrap();
    let Fetched::Streaming { mut body, .. } = f else {
        panic!()
    };
    // A slow reader: one chunk, then the producer's swarm and server vanish.
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(producer);
    let t = Instant::now();
    let mut got = first.len();
    let err = loop {
        match body.next().await {
            Some(Ok(c)) => got += c.len(),
            Some(Err(e)) => break e,
            None => panic!("the whole object arrived although the producer died"),
        }
    };
    assert!(got < 64 * MIB);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "noticed after {:?}",
        t.elapsed()
    );
    assert!(err.to_string().contains(&peer.to_string()), "{err}");
    assert!(!consumer.cached(peer, id));
}

#[tokio::test]
async fn unused_protocol_name_is_stable() {
    // The protocol string is part of the wire contract between daemons.
    assert_eq!(PROTOCOL, StreamProtocol::new("/proxymesh/fetch/2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn raw_stream_baseline() {
    let a = Node::start(None).await;
    let _server = a.accept(|mut s| async move {
        let buf = vec![7u8; CHUNK];
        for _ in 0..(64 * MIB / CHUNK) {
            s.write_all(&buf).await.unwrap();
        }
        s.close().await.unwrap();
    });
    let b = Node::start(Some(&a)).await;
    let opener = Opener::new(b.control.clone());
    let (mut s, _) = opener.open(a.peer, &[]).await.unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, 64 * MIB);
    println!(
        "raw libp2p QUIC stream, 64 MiB memory to memory: {secs:.2} s, {:.0} MiB/s",
        64.0 / secs
    );
}
