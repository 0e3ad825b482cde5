//! The mesh: this daemon as a libp2p node. It listens on QUIC and TCP on
//! fixed ports, proves its membership to the relays and keeps reservations
//! there, finds the other members through the relays' directories, upgrades
//! relayed connections to direct ones (DCUtR hole punching) and serves and
//! fetches objects over bulk streams — to and from members of its mesh only.
//!
//! - Control plane: `event_loop` (the one task owning the swarm: relays,
//!   members, connections, paths), `behaviour` (what the swarm speaks),
//!   `members` (the member protocol: who is served), `addr`.
//! - Data plane: `protocol` (the fetch protocol's wire format), `serve`
//!   (answering members), `client` (one request to a peer), `fetcher`
//!   (verified, resumable, coalesced fetches and the cache of fetched
//!   copies), `pool` (idle streams reused for the next request),
//!   `singleflight`.
//!
//! They meet at [`StreamOpener`] (`opener`): the data plane asks for a
//! stream to a peer, the control plane finds a connection.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libp2p::multiaddr::Protocol;
use libp2p::{identity::Keypair, noise, tcp, yamux, Multiaddr, PeerId};
use proxymesh::api::{self as local_api, Path, Transport};
use proxymesh::membership::{Credential, Gate, Policy};
use tokio::sync::mpsc;

// Control plane.
/// How long a credential has left, when that is soon enough to warn: a
/// week ahead, or in the last quarter of a shorter-lived credential (a
/// daily one is not "soon" all day long).
fn expires_soon(issued: SystemTime, expires: SystemTime, now: SystemTime) -> Option<Duration> {
    let left = expires.duration_since(now).ok()?;
    let lifetime = expires.duration_since(issued).unwrap_or_default();
    (left < Duration::from_secs(7 * 86_400).min(lifetime / 4)).then_some(left)
}

/// QUIC's idle timeout on every connection (ms): see `Mesh::start`.
const QUIC_IDLE_TIMEOUT_MS: u32 = 4_000;

pub mod addr;
pub mod behaviour;
pub mod event_loop;
pub mod members;
pub mod opener;
// Data plane.
pub mod client;
pub mod copies;
pub mod fetcher;
pub mod pool;
pub mod protocol;
pub mod serve;
pub mod singleflight;
pub mod traffic;
pub mod verified;

pub mod error;
pub use error::MeshError;

/// How a bulk stream reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathInfo {
    /// Direct or relayed.
    pub path: Path,
    /// QUIC or TCP.
    pub transport: Transport,
}

impl std::fmt::Display for PathInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.path {
            Path::Direct => "direct",
            Path::Relayed => "relayed",
        };
        let t = match self.transport {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        };
        write!(f, "{p}/{t}")
    }
}

/// Opens bulk streams to peers. The swarm's implementation dials the peer if
/// needed (through `addrs`, e.g. relay circuits from a key) and prefers a
/// direct connection: it waits up to the hole-punch timeout for one before
/// settling for a relayed connection.
#[async_trait::async_trait]
pub trait StreamOpener: Send + Sync + 'static {
    /// A new stream of the fetch protocol to `peer`, and the path it takes.
    async fn open(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<(libp2p::Stream, PathInfo), MeshError>;

    /// Resolves once a better path to `peer` than `current` exists (a
    /// direct connection, for a transfer on a relayed one), so a transfer
    /// can move to it. Never resolves by default.
    async fn better_path(&self, peer: PeerId, current: PathInfo) {
        let _ = (peer, current);
        std::future::pending::<()>().await
    }

    /// Like [`open`](Self::open), after a stream to `peer` stalled: the
    /// connection may be dead although it looks open, so replace it.
    async fn reopen(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<(libp2p::Stream, PathInfo), MeshError> {
        self.open(peer, addrs).await
    }

    /// Addresses that reach `peer` through this daemon's relays (for a
    /// daemon known only by its ID, such as another holder of an object).
    /// None by default.
    fn circuits_to(&self, peer: PeerId) -> Vec<Multiaddr> {
        let _ = peer;
        Vec::new()
    }

    /// `peer` answered that it does not know us as a member (it restarted):
    /// prove membership to it again before the next stream. Nothing by
    /// default.
    fn forget_member(&self, peer: &PeerId) {
        let _ = peer;
    }

    /// The best path to `peer` now, if connected: idle streams on it may be
    /// reused (see [`pool`]). `None` by default: no stream is reused.
    fn path_now(&self, peer: &PeerId) -> Option<PathInfo> {
        let _ = peer;
        None
    }

    /// How long an answer on a reused stream to `peer` may take before the
    /// stream is suspected dead and a new one is opened.
    fn suspect_after(&self, peer: &PeerId) -> Duration {
        let _ = peer;
        opener::SUSPECT_AFTER
    }
}

/// Mesh settings.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This daemon's credential; `None` joins an open mesh (anyone served).
    pub credential: Option<Credential>,
    /// Relay addresses (each ending in `/p2p/<relay peer id>`); several
    /// addresses of one relay (QUIC and TCP) are tried in turn.
    pub relays: Vec<Multiaddr>,
    /// Address to listen on.
    pub listen_host: IpAddr,
    /// Port for QUIC (UDP) and TCP; fixed, because dials reuse it and hole
    /// punching needs that. 0 picks free ports (tests).
    pub listen_port: u16,
    /// Addresses this daemon is known to be reachable at (added as external).
    pub external_addrs: Vec<Multiaddr>,
    /// Longest wait for a first connection to a peer.
    pub connect_timeout: Duration,
    /// Longest a hole punch may take. Transfers never wait for one (they
    /// start on the relayed connection and move to the direct one when it
    /// comes); a peer connecting to us may take this plus the connect
    /// timeout before it must have proved its membership.
    pub hole_punch_timeout: Duration,
    /// How often the relays are asked again for the members and the
    /// newest revocation list (revocations take effect within this).
    pub directory_refresh: Duration,
    /// Fetching, verification and caching.
    pub fetch: fetcher::FetchConfig,
    /// Serving other members (timeouts, write quota).
    pub serve: serve::ServeConfig,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            credential: None,
            relays: Vec::new(),
            listen_host: IpAddr::from([0, 0, 0, 0]),
            listen_port: 4002,
            external_addrs: Vec::new(),
            connect_timeout: Duration::from_secs(20),
            hole_punch_timeout: Duration::from_secs(8),
            directory_refresh: Duration::from_secs(60),
            serve: serve::ServeConfig::default(),
            fetch: fetcher::FetchConfig::default(),
        }
    }
}

/// This daemon's mesh node: a handle to the event loop and the fetcher.
/// Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    peer_id: PeerId,
    credential: Option<Credential>,
    gate: Arc<Gate>,
    network: event_loop::Network,
    fetcher: fetcher::Fetcher,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl Mesh {
    /// Start the mesh node: listen on the fixed ports, then join the relays'
    /// directories and reserve there, and serve `objects` to members over
    /// the fetch protocol (fetched copies are cached in their storage).
    pub async fn start(
        keypair: Keypair,
        objects: Arc<crate::service::LocalObjects>,
        config: MeshConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let own = keypair.public().to_peer_id();
        let gate = Arc::new(Gate::new(match &config.credential {
            Some(c) => {
                if c.peer() != own {
                    anyhow::bail!(
                        "the credential was issued for peer {}, but this daemon is {own} \
                         (another data directory's identity?); ask the mesh operator to admit {own}",
                        c.peer()
                    );
                }
                c.check(own, std::slice::from_ref(c.mesh()), SystemTime::now())
                    .map_err(|e| anyhow::anyhow!("this daemon's {e}"))?;
                if let Some(left) = expires_soon(c.issued(), c.expires(), SystemTime::now()) {
                    tracing::warn!(left = ?left, "this daemon's credential expires soon; ask the mesh operator for a new one");
                }
                tracing::info!(mesh = %c.mesh(), "joining a closed mesh");
                Policy::Meshes(vec![c.mesh().clone()])
            }
            None => {
                tracing::warn!("OPEN MESH: no credential; every peer that connects is served and may fetch this daemon's objects. Use credentials outside labs (proxymesh mesh init / admit).");
                Policy::Open
            }
        }));
        let slots = event_loop::relay_slots(&config.relays).map_err(anyhow::Error::msg)?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_quic_config(|mut c| {
                // A peer silent this long is gone: a relay that restarted
                // forgets its connections without a word (no reset for a
                // keep-alive), and what rides on it (reservations, relayed
                // transfers) should move on within seconds, well inside a
                // transfer's 10 s idle timeout, not after QUIC's default
                // 10 s. Keep-alives every second keep live paths talking.
                c.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
                c.keep_alive_interval = Duration::from_secs(1);
                c
            })
            .with_dns()?
            .with_relay_client(noise::Config::new, yamux::Config::default)?
            // Bytes in and out by transport stack, on /metrics.
            .with_bandwidth_metrics(metrics.registry().sub_registry_with_prefix("proxymesh"))
            .with_behaviour(behaviour::Behaviour::new)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        let peer_id = *swarm.local_peer_id();
        let ip = match config.listen_host {
            IpAddr::V4(v4) => Protocol::Ip4(v4),
            IpAddr::V6(v6) => Protocol::Ip6(v6),
        };
        let base = Multiaddr::empty().with(ip);
        for addr in [
            base.clone()
                .with(Protocol::Udp(config.listen_port))
                .with(Protocol::QuicV1),
            base.with(Protocol::Tcp(config.listen_port)),
        ] {
            swarm.listen_on(addr.clone()).with_context(|| {
                format!("cannot listen on {addr} (port in use? pick another with --listen-port)")
            })?;
        }
        // Listen first, so that every later dial reuses these ports.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut listening = Vec::new();
        while listening.len() < 2 {
            use futures::StreamExt;
            let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
                .await
                .context("timed out starting the mesh listeners")?;
            match event {
                libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } => {
                    let t = addr::transport_of(&address);
                    if !listening.contains(&t) {
                        listening.push(t);
                    }
                    tracing::info!(%address, "listening");
                }
                libp2p::swarm::SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                    anyhow::bail!(
                        "mesh listener failed: {e} (port in use? pick another with --listen-port)"
                    )
                }
                _ => {}
            }
        }
        for a in &config.external_addrs {
            swarm.add_external_address(a.clone());
        }
        let control = swarm.behaviour().stream.new_control();
        let (dropper, drops) = mpsc::unbounded_channel();
        let me = members::Me {
            peer: peer_id,
            credential: config.credential.clone(),
        };
        let member_streams = control
            .clone()
            .accept(members::PROTOCOL)
            .map_err(|e| anyhow::anyhow!("cannot serve the member protocol: {e}"))?;
        let incoming = control
            .clone()
            .accept(protocol::PROTOCOL)
            .map_err(|e| anyhow::anyhow!("cannot serve the fetch protocol: {e}"))?;
        let (event_loop, network) = event_loop::EventLoop::new(
            swarm,
            event_loop::Parts {
                relays: slots,
                gate: gate.clone(),
                me: me.clone(),
                drops,
                refresh_every: config.directory_refresh,
                // A dialer proves membership once connected, which may take
                // a hole punch.
                prove_within: config.hole_punch_timeout
                    + config.connect_timeout
                    + members::HELLO_TIMEOUT,
                metrics: metrics.clone(),
            },
        );
        let advertised = {
            let network = network.clone();
            move || network.snapshot().advertised()
        };
        tokio::spawn(members::serve(
            member_streams,
            gate.clone(),
            me.clone(),
            advertised,
            dropper.clone(),
        ));
        let storage = objects.storage().clone();
        let traffic = Arc::new(traffic::Traffic::default());
        let copies = Arc::new(copies::Copies::default());
        let mut server = serve::Server::new(objects, gate.clone(), dropper, config.serve);
        server.traffic = traffic.clone();
        server.copies = copies.clone();
        server.metrics = metrics.clone();
        tokio::spawn(serve::serve(incoming, Arc::new(server)));
        tokio::spawn(event_loop.run());
        let opener = opener::SwarmOpener {
            network: network.clone(),
            control,
            gate: gate.clone(),
            me,
            connect_timeout: config.connect_timeout,
        };
        let fetcher = fetcher::Fetcher::new(storage, Arc::new(opener), config.fetch.clone())
            .with_traffic(traffic, copies)
            .with_metrics(metrics);
        Ok(Self {
            peer_id,
            credential: config.credential,
            gate,
            network,
            fetcher,
        })
    }

    /// This node's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The fetcher (remote get/exists/evict/put with caching).
    pub fn fetcher(&self) -> &fetcher::Fetcher {
        &self.fetcher
    }

    /// The mesh part of `proxymesh status`.
    pub fn status(&self) -> local_api::MeshStatus {
        // Someone is looking: refresh discovery (rate-limited by the loop).
        self.network.discover();
        self.view()
    }

    /// [`status`](Self::status) without refreshing discovery: for readers
    /// that poll (the metrics scrape), which should cause no traffic.
    pub fn view(&self) -> local_api::MeshStatus {
        let mut status = self.network.snapshot().status();
        status.transfers = self.fetcher.transfers();
        status.recent_transfers = self.fetcher.recent();
        status.traffic = self.fetcher.traffic().snapshot();
        status.open_mesh = self.gate.policy().is_open();
        status.mesh_id = self.credential.as_ref().map(|c| c.mesh().to_string());
        status.credential_expires = self.credential.as_ref().map(|c| {
            c.expires()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        status.credential_expires_soon = self
            .credential
            .as_ref()
            .is_some_and(|c| expires_soon(c.issued(), c.expires(), SystemTime::now()).is_some());
        status
    }

    /// Addresses to put in keys so any daemon of the mesh can dial this one:
    /// relay circuits held now, then other confirmed external addresses.
    pub fn advertised_addrs(&self) -> Vec<Multiaddr> {
        self.network.snapshot().advertised()
    }

    /// Who this daemon serves.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The event loop's handle.
    pub fn network(&self) -> &event_loop::Network {
        &self.network
    }

    /// The member serving ProxyStore endpoint `uuid`, found through the
    /// relays' directories (asking them again if it is not known yet). A
    /// UUID is derived from its daemon's peer ID, so no other member can
    /// claim it.
    pub async fn find_endpoint(&self, uuid: &str) -> Option<(PeerId, Vec<Multiaddr>)> {
        self.network.find_endpoint(uuid).await
    }

    /// Stop the event loop, closing every connection.
    pub fn shutdown(&self) {
        self.network.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_expires_soon_in_its_last_quarter_or_last_week() {
        let day = Duration::from_secs(86_400);
        let t0 = SystemTime::UNIX_EPOCH + 1000 * day;
        // A daily credential: quiet for 18 h, then a warning.
        assert_eq!(expires_soon(t0, t0 + day, t0 + day / 2), None);
        assert_eq!(expires_soon(t0, t0 + day, t0 + day * 7 / 8), Some(day / 8));
        // A yearly one: the last week.
        assert_eq!(expires_soon(t0, t0 + 365 * day, t0 + 300 * day), None);
        assert_eq!(
            expires_soon(t0, t0 + 365 * day, t0 + 360 * day),
            Some(5 * day)
        );
        // Expired: not "soon" (the check before refuses it).
        assert_eq!(expires_soon(t0, t0 + day, t0 + 2 * day), None);
    }
}
