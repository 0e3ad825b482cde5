//! The relay's Prometheus metrics, served at `GET /metrics` on
//! `--metrics ADDR` (off by default; bind it to loopback or a private
//! interface: the endpoint has no authentication, as is usual for
//! Prometheus targets). Reservations and circuits (held now, and requests
//! by outcome), refusals by kind and reason, members and connections, and
//! the bytes through the relay (libp2p's bandwidth meters:
//! `proxymesh_relay_libp2p_bandwidth_bytes_total`, every relayed byte
//! counted in and out).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `accepted`, `renewed`, `refused`, `closed`, `timed_out`, `failed`.
    pub outcome: &'static str,
}

/// A refusal: of what, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `reservation`, `circuit` or `connection`.
    pub kind: &'static str,
    /// `not_member`, `limit`.
    pub reason: &'static str,
}

/// The relay's metrics.
#[derive(Debug)]
pub struct RelayMetrics {
    registry: RwLock<Registry>,
    /// Reservations held now.
    pub reservations: Gauge,
    /// Reservation requests and ends, by outcome.
    pub reservation_events: Family<OutcomeLabel, Counter>,
    /// Circuits open now.
    pub circuits: Gauge,
    /// Circuit requests and ends, by outcome.
    pub circuit_events: Family<OutcomeLabel, Counter>,
    /// Refusals by kind and reason.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Members in the directory.
    pub members: Gauge,
    /// Peers connected.
    pub peers: Gauge,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayMetrics {
    /// Fresh metrics under the `proxymesh_relay_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = RelayMetrics {
            registry: RwLock::new(Registry::default()),
            reservations: Gauge::default(),
            reservation_events: Family::default(),
            circuits: Gauge::default(),
            circuit_events: Family::default(),
            refusals: Family::default(),
            members: Gauge::default(),
            peers: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("proxymesh_relay");
        r.register(
            "reservations",
            "Relay reservations held now",
            m.reservations.clone(),
        );
        r.register(
            "reservation_events",
            "Reservation requests and ends, by outcome (accepted, renewed, refused, closed, timed_out, failed)",
            m.reservation_events.clone(),
        );
        r.register("circuits", "Circuits open now", m.circuits.clone());
        r.register(
            "circuit_events",
            "Circuit requests and ends, by outcome (accepted, refused, closed, failed)",
            m.circuit_events.clone(),
        );
        r.register(
            "refusals",
            "Refused reservations, circuits and connections, by reason (not_member, limit)",
            m.refusals.clone(),
        );
        r.register(
            "members",
            "Members in the relay's directory",
            m.members.clone(),
        );
        r.register("peers", "Peers connected", m.peers.clone());
        *m.registry.write().expect("metrics registry") = registry;
        m
    }

    /// The registry (for libp2p's bandwidth meters).
    pub fn registry(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().expect("metrics registry")
    }

    /// Count an event.
    pub fn event(family: &Family<OutcomeLabel, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Count a refusal.
    pub fn refused(&self, kind: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels { kind, reason })
            .inc();
    }

    /// Everything, in OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.read().expect("metrics registry");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String");
        out
    }
}

/// Serve `GET /metrics` on `addr` until the returned task is aborted.
/// Binds before returning, so a bad address fails the start.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<RelayMetrics>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --metrics {addr}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let metrics = metrics.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics)) }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(io, service);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(60), conn).await;
            });
        }
    });
    Ok((bound, task))
}

fn answer<B>(req: &Request<B>, metrics: &RelayMetrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        ("GET", _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics here\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
