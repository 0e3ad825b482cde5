//! Per-store operation metrics: counts and durations per operation, cache
//! hits and misses, bytes moved.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The operations a [`Store`](crate::Store) times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `Store::put`.
    Put,
    /// `Store::get`.
    Get,
    /// `Store::exists`.
    Exists,
    /// `Store::evict`.
    Evict,
    /// `Store::proxy` and friends (includes the put).
    Proxy,
    /// Resolution of a proxy (the get and deserialization of its target).
    Resolve,
    /// `Store::put_batch`.
    PutBatch,
    /// `Store::get_batch`.
    GetBatch,
    /// `Store::exists_batch`.
    ExistsBatch,
    /// `Store::evict_batch`.
    EvictBatch,
    /// `Store::proxy_batch`.
    ProxyBatch,
}

impl Op {
    const ALL: [Op; 11] = [
        Op::Put,
        Op::Get,
        Op::Exists,
        Op::Evict,
        Op::Proxy,
        Op::Resolve,
        Op::PutBatch,
        Op::GetBatch,
        Op::ExistsBatch,
        Op::EvictBatch,
        Op::ProxyBatch,
    ];

    /// The operation's name in a [`MetricsSnapshot`].
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Exists => "exists",
            Op::Evict => "evict",
            Op::Proxy => "proxy",
            Op::Resolve => "resolve",
            Op::PutBatch => "put_batch",
            Op::GetBatch => "get_batch",
            Op::ExistsBatch => "exists_batch",
            Op::EvictBatch => "evict_batch",
            Op::ProxyBatch => "proxy_batch",
        }
    }
}

#[derive(Debug)]
struct OpCounter {
    count: AtomicU64,
    total_ns: AtomicU64,
    min_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for OpCounter {
    fn default() -> Self {
        Self {
            count: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            min_ns: AtomicU64::new(u64::MAX),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// Live, lock-free metrics of one store.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    ops: [OpCounter; Op::ALL.len()],
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
}

impl Metrics {
    pub(crate) fn record(&self, op: Op, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let c = &self.ops[op as usize];
        c.count.fetch_add(1, Relaxed);
        c.total_ns.fetch_add(ns, Relaxed);
        c.min_ns.fetch_min(ns, Relaxed);
        c.max_ns.fetch_max(ns, Relaxed);
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    pub(crate) fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Relaxed);
    }

    pub(crate) fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let mut ops = BTreeMap::new();
        for op in Op::ALL {
            let c = &self.ops[op as usize];
            let count = c.count.load(Relaxed);
            if count == 0 {
                continue;
            }
            let total_ns = c.total_ns.load(Relaxed);
            ops.insert(
                op.name().to_owned(),
                OpStats {
                    count,
                    total_ns,
                    min_ns: c.min_ns.load(Relaxed),
                    max_ns: c.max_ns.load(Relaxed),
                    avg_ns: total_ns / count,
                },
            );
        }
        MetricsSnapshot {
            ops,
            cache_hits: self.cache_hits.load(Relaxed),
            cache_misses: self.cache_misses.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
        }
    }
}

/// Times one operation; records on [`finish`](Timer::finish).
pub(crate) struct Timer<'a> {
    metrics: Option<&'a Metrics>,
    op: Op,
    start: Option<Instant>,
}

impl<'a> Timer<'a> {
    pub(crate) fn start(metrics: Option<&'a Metrics>, op: Op) -> Self {
        Self {
            metrics,
            op,
            start: metrics.map(|_| Instant::now()),
        }
    }

    pub(crate) fn finish(self) {
        if let (Some(m), Some(s)) = (self.metrics, self.start) {
            m.record(self.op, s.elapsed());
        }
    }
}

/// Statistics of one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStats {
    /// Number of completed operations (failed ones are not counted).
    pub count: u64,
    /// Total time, nanoseconds.
    pub total_ns: u64,
    /// Fastest, nanoseconds.
    pub min_ns: u64,
    /// Slowest, nanoseconds.
    pub max_ns: u64,
    /// Mean, nanoseconds.
    pub avg_ns: u64,
}

impl OpStats {
    /// Mean duration.
    pub fn avg(&self) -> Duration {
        Duration::from_nanos(self.avg_ns)
    }
    /// Total duration.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.total_ns)
    }
}

/// A point-in-time copy of a store's metrics (see [`Store::metrics`](crate::Store::metrics)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Per-operation statistics by name (`put`, `get`, `exists`, `evict`,
    /// `proxy`, `resolve`, `put_batch`, `get_batch`, `exists_batch`,
    /// `evict_batch`, `proxy_batch`); operations never run are absent.
    pub ops: BTreeMap<String, OpStats>,
    /// Gets served from the store's cache.
    pub cache_hits: u64,
    /// Gets that went to the connector.
    pub cache_misses: u64,
    /// Serialized bytes sent to the connector.
    pub bytes_out: u64,
    /// Serialized bytes received from the connector.
    pub bytes_in: u64,
}

impl MetricsSnapshot {
    /// The statistics of `op` (zero if it never ran).
    pub fn op(&self, op: Op) -> OpStats {
        self.ops.get(op.name()).copied().unwrap_or_default()
    }
}
