//! Prometheus metrics of the daemon, served at `GET /metrics` on the local
//! API (the API's access rules: this daemon's user, or its API group).
//!
//! Two kinds: events counted as they happen (requests by door and outcome,
//! remote fetches by path, hole punches, cache hits, refusals, latency
//! histograms), kept in [`Metrics`]; and state read at scrape time (objects
//! and bytes by tier, bytes per peer, relay reservations, connections),
//! rendered by [`render`] from the daemon's status. Names follow
//! Prometheus' conventions: a `proxymesh_` prefix, the unit in the name,
//! `_total` on counters. The mesh's transport byte counts come from
//! libp2p's own bandwidth metrics (`proxymesh_libp2p_bandwidth_bytes_total`).

use std::sync::RwLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// Through which door a request came.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Door {
    /// The native `/v1` API (HTTP or the Unix socket's quick protocol).
    Native,
    /// ProxyStore's endpoint routes.
    Proxystore,
    /// Another daemon, through the mesh's fetch protocol.
    Mesh,
}

impl Door {
    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Native => "native",
            Door::Proxystore => "proxystore",
            Door::Mesh => "mesh",
        }
    }
}

impl EncodeLabelValue for Door {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// `door`, `op` and `outcome` of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Which door.
    pub door: Door,
    /// `put`, `get`, `exists`, `evict`, `set`, `new_key`, `batch_put`, ...
    pub op: &'static str,
    /// `ok`, `not_found`, `refused`, `bad_request`, `error`.
    pub outcome: &'static str,
}

/// `door` and `op` of a request (latency).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// Which door.
    pub door: Door,
    /// Which operation.
    pub op: &'static str,
}

/// A remote fetch's path, and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// `direct` or `relayed` (the last path the transfer took).
    pub path: &'static str,
    /// `quic` or `tcp`.
    pub transport: &'static str,
    /// `ok`, or the error kind: `corrupt`, `timed_out`, `unreachable`,
    /// `not_found`, `refused`, `storage`, `protocol`.
    pub outcome: &'static str,
}

/// A path (bytes and durations of fetches).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// `direct` or `relayed`.
    pub path: &'static str,
    /// `quic` or `tcp`.
    pub transport: &'static str,
}

/// One label: `outcome` or `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The outcome.
    pub outcome: &'static str,
}

/// The daemon's event metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: RwLock<Registry>,
    /// Requests by door, operation and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to the answer's head (the body may stream on), by door and op.
    pub request_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    /// Remote fetches (transfers from another daemon), by path and outcome.
    pub fetches: Family<FetchLabels, Counter>,
    /// Duration of remote fetches that completed, by path.
    pub fetch_seconds: Family<PathLabels, Histogram, fn() -> Histogram>,
    /// Object bytes received by remote fetches, by path.
    pub fetched_bytes: Family<PathLabels, Counter>,
    /// Gets of another daemon's object served from this daemon's cache
    /// (`hit`) or fetched (`miss`).
    pub cache: Family<OutcomeLabel, Counter>,
    /// Hole punches (DCUtR) by outcome: `succeeded`, `failed`.
    pub hole_punches: Family<OutcomeLabel, Counter>,
    /// From the first connection to a peer to a direct one.
    pub time_to_direct: Histogram,
    /// Connections from peers refused as non-members, or dropped for
    /// failing to prove membership.
    pub refused_peers: Counter,
}

fn request_histogram() -> Histogram {
    // 50 µs .. ~13 s
    Histogram::new(exponential_buckets(50e-6, 4.0, 10))
}

fn fetch_histogram() -> Histogram {
    // 1 ms .. ~4 min
    Histogram::new(exponential_buckets(1e-3, 4.0, 10))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `proxymesh_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: RwLock::new(Registry::default()),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            fetches: Family::default(),
            fetch_seconds: Family::new_with_constructor(fetch_histogram as fn() -> Histogram),
            fetched_bytes: Family::default(),
            cache: Family::default(),
            hole_punches: Family::default(),
            time_to_direct: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            refused_peers: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("proxymesh");
        r.register(
            "requests",
            "Requests by door (native, proxystore, mesh), operation and outcome",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request to its answer's head, by door and operation",
            Unit::Seconds,
            m.request_seconds.clone(),
        );
        r.register(
            "remote_fetches",
            "Fetches of another daemon's object by the path they ended on (direct/relayed, quic/tcp) and outcome (ok or the error kind)",
            m.fetches.clone(),
        );
        r.register_with_unit(
            "remote_fetch_duration",
            "Duration of completed remote fetches, by path",
            Unit::Seconds,
            m.fetch_seconds.clone(),
        );
        r.register_with_unit(
            "remote_fetched",
            "Object bytes received by remote fetches, by the path each fetch ended on",
            Unit::Bytes,
            m.fetched_bytes.clone(),
        );
        r.register(
            "cache_lookups",
            "Gets of other daemons' objects: served from the cache (hit) or fetched (miss)",
            m.cache.clone(),
        );
        r.register(
            "hole_punches",
            "Hole punches (DCUtR) by outcome",
            m.hole_punches.clone(),
        );
        r.register_with_unit(
            "time_to_direct",
            "Time from the first connection to a peer to a direct (hole-punched) one",
            Unit::Seconds,
            m.time_to_direct.clone(),
        );
        r.register(
            "refused_peers",
            "Peer connections refused or dropped for not being members of the mesh",
            m.refused_peers.clone(),
        );
        *m.registry.write().expect("metrics registry") = registry;
        m
    }

    /// The registry, to add metrics to (e.g. libp2p's bandwidth meters).
    pub fn registry(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().expect("metrics registry")
    }

    /// Count a request.
    pub fn request(&self, door: Door, op: &'static str, outcome: &'static str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { door, op, outcome })
            .inc();
        self.request_seconds
            .get_or_create(&OpLabels { door, op })
            .observe(took.as_secs_f64());
    }

    /// Count a remote fetch that ended, with the path it ended on.
    pub fn fetch(
        &self,
        path: proxymesh::api::Path,
        transport: proxymesh::api::Transport,
        outcome: &'static str,
        bytes: u64,
        took: Duration,
    ) {
        let (path, transport) = path_labels(path, transport);
        self.fetches
            .get_or_create(&FetchLabels {
                path,
                transport,
                outcome,
            })
            .inc();
        let p = PathLabels { path, transport };
        self.fetched_bytes.get_or_create(&p).inc_by(bytes);
        if outcome == "ok" {
            self.fetch_seconds
                .get_or_create(&p)
                .observe(took.as_secs_f64());
        }
    }

    /// The event metrics in OpenMetrics text, without the final `# EOF`.
    fn encode_events(&self, out: &mut String) {
        let registry = self.registry.read().expect("metrics registry");
        prometheus_client::encoding::text::encode_registry(out, &registry)
            .expect("writing to a String");
    }
}

fn path_labels(
    path: proxymesh::api::Path,
    transport: proxymesh::api::Transport,
) -> (&'static str, &'static str) {
    let path = match path {
        proxymesh::api::Path::Direct => "direct",
        proxymesh::api::Path::Relayed => "relayed",
    };
    let transport = match transport {
        proxymesh::api::Transport::Quic => "quic",
        proxymesh::api::Transport::Tcp => "tcp",
    };
    (path, transport)
}

/// What state the scrape reports besides the event metrics.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Objects stored (this daemon's and cached copies), by tier.
    pub objects_memory: u64,
    /// Objects on disk.
    pub objects_disk: u64,
    /// Bytes in memory.
    pub bytes_memory: u64,
    /// Bytes on disk.
    pub bytes_disk: u64,
    /// Memory cap for objects.
    pub memory_cap: u64,
    /// Bytes of other daemons' objects cached here.
    pub cache_bytes: u64,
    /// The mesh's view, when in a mesh.
    pub mesh: Option<proxymesh::api::MeshStatus>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabel {
    relay: String,
}

/// The whole scrape: event metrics, then `snap`, in OpenMetrics text.
pub fn render(metrics: &Metrics, snap: &Snapshot) -> String {
    let mut out = String::new();
    metrics.encode_events(&mut out);
    let mut registry = Registry::with_prefix("proxymesh");
    let objects = Family::<TierLabel, Gauge>::default();
    let bytes = Family::<TierLabel, Gauge>::default();
    let set = |f: &Family<TierLabel, Gauge>, tier, v: u64| {
        f.get_or_create(&TierLabel { tier }).set(v as i64);
    };
    set(&objects, "memory", snap.objects_memory);
    set(&objects, "disk", snap.objects_disk);
    set(&bytes, "memory", snap.bytes_memory);
    set(&bytes, "disk", snap.bytes_disk);
    registry.register("objects", "Objects stored, by tier", objects);
    registry.register_with_unit("stored", "Bytes stored, by tier", Unit::Bytes, bytes);
    let cap = Gauge::<i64>::default();
    cap.set(snap.memory_cap as i64);
    registry.register_with_unit("memory_cap", "Memory cap for objects", Unit::Bytes, cap);
    let cache = Gauge::<i64>::default();
    cache.set(snap.cache_bytes as i64);
    registry.register_with_unit(
        "cache",
        "Bytes of other daemons' objects cached here",
        Unit::Bytes,
        cache,
    );
    if let Some(mesh) = &snap.mesh {
        let served = Family::<PeerLabel, Counter>::default();
        let fetched = Family::<PeerLabel, Counter>::default();
        for t in &mesh.traffic {
            let peer = PeerLabel {
                peer: t.peer_id.clone(),
            };
            served.get_or_create(&peer).inc_by(t.served_bytes);
            fetched.get_or_create(&peer).inc_by(t.fetched_bytes);
        }
        registry.register_with_unit(
            "peer_served",
            "Object bytes served to each peer",
            Unit::Bytes,
            served,
        );
        registry.register_with_unit(
            "peer_fetched",
            "Object bytes fetched from each peer",
            Unit::Bytes,
            fetched,
        );
        let reserved = Family::<RelayLabel, Gauge>::default();
        for r in &mesh.relays {
            reserved
                .get_or_create(&RelayLabel {
                    relay: r.addr.clone(),
                })
                .set(i64::from(r.reserved));
        }
        registry.register(
            "relay_reserved",
            "Whether this daemon holds a reservation at each relay (1) or not (0)",
            reserved,
        );
        let conns = Family::<PathLabels, Gauge>::default();
        for p in &mesh.peers {
            for c in &p.connections {
                let (path, transport) = path_labels(c.path, c.transport);
                conns.get_or_create(&PathLabels { path, transport }).inc();
            }
        }
        registry.register(
            "connections",
            "Open connections to other daemons, by path",
            conns,
        );
        let peers = Gauge::<i64>::default();
        peers.set(mesh.peers.len() as i64);
        registry.register("peers", "Daemons connected", peers);
    }
    prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
    out
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_openmetrics_text_with_one_eof() {
        let m = Metrics::new();
        m.request(Door::Native, "get", "ok", Duration::from_millis(2));
        m.fetch(
            proxymesh::api::Path::Direct,
            proxymesh::api::Transport::Quic,
            "ok",
            1234,
            Duration::from_millis(30),
        );
        let text = render(&m, &Snapshot::default());
        assert!(
            text.contains("proxymesh_requests_total{door=\"native\",op=\"get\",outcome=\"ok\"} 1")
        );
        assert!(text.contains(
            "proxymesh_remote_fetched_bytes_total{path=\"direct\",transport=\"quic\"} 1234"
        ));
        assert!(text.contains("proxymesh_request_duration_seconds_bucket"));
        assert!(text.contains("proxymesh_objects{tier=\"disk\"} 0"));
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
