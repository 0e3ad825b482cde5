//! The mesh: this daemon as a libp2p node. It listens on QUIC and TCP on
//! fixed ports, proves its membership to the relays and keeps reservations
//! there, finds the other members through the relays' directories, upgrades
//! relayed connections to direct ones (DCUtR hole punching) and serves and
//! fetches objects over bulk streams — to and from members of its mesh only.
//!
//! Membership (who is served; credentials checked on the member protocol):
//! `members`. Control plane (connections, relays, discovery, paths):
//! `behaviour`, `swarm`. Data plane (the fetch protocol, serving, fetching with
//! verification, caching and coalescing): `protocol`, `transfer`,
//! `singleflight`, `fetcher`. They meet at [`StreamOpener`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libp2p::multiaddr::Protocol;
use libp2p::{identity::Keypair, noise, tcp, yamux, Multiaddr, PeerId};
use proxymesh::api::{self as local_api, Path, Transport};
use proxymesh::membership::{Credential, Gate, Policy};
use tokio::sync::mpsc;

pub mod behaviour;
pub mod error;
pub mod members;
pub mod swarm;
// Data plane.
pub mod fetcher;
pub mod protocol;
pub mod singleflight;
pub mod transfer;

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
    /// Longest wait for a hole-punched direct connection before a transfer
    /// settles for the relayed one.
    pub hole_punch_timeout: Duration,
    /// How often the relays are asked again for the members and the
    /// newest revocation list (revocations take effect within this).
    pub directory_refresh: Duration,
    /// Fetching, verification and caching.
    pub fetch: fetcher::FetchConfig,
    /// Serving other members (timeouts, write quota).
    pub serve: transfer::ServeConfig,
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
            serve: transfer::ServeConfig::default(),
            fetch: fetcher::FetchConfig::default(),
        }
    }
}

/// This daemon's mesh node: a handle to the swarm task, the fetcher, and the
/// shared connection state. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    peer_id: PeerId,
    credential: Option<Credential>,
    gate: Arc<Gate>,
    shared: Arc<swarm::Shared>,
    commands: mpsc::UnboundedSender<swarm::Command>,
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
                if let Ok(left) = c.expires().duration_since(SystemTime::now()) {
                    if left < Duration::from_secs(7 * 86_400) {
                        tracing::warn!(left = ?left, "this daemon's credential expires soon; ask the mesh operator for a new one");
                    }
                }
                tracing::info!(mesh = %c.mesh(), "joining a closed mesh");
                Policy::Meshes(vec![c.mesh().clone()])
            }
            None => {
                tracing::warn!("OPEN MESH: no credential; every peer that connects is served and may fetch this daemon's objects. Use credentials outside labs (proxymesh mesh init / admit).");
                Policy::Open
            }
        }));
        let slots = swarm::relay_slots(&config.relays).map_err(anyhow::Error::msg)?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_quic()
            .with_dns()?
            .with_relay_client(noise::Config::new, yamux::Config::default)?
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
                    let t = swarm::transport_of(&address);
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
        let listen_addrs: Vec<Multiaddr> = swarm.listeners().cloned().collect();
        let shared = Arc::new(swarm::Shared::default());
        shared.init(|s| {
            s.relays = slots;
            s.listen_addrs = listen_addrs;
            s.external_addrs = config.external_addrs.clone();
        });
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
        let advertised = {
            let shared = shared.clone();
            move || shared.read(swarm::State::advertised)
        };
        tokio::spawn(members::serve(
            member_streams,
            gate.clone(),
            me.clone(),
            advertised,
            dropper.clone(),
        ));
        let incoming = control
            .clone()
            .accept(protocol::PROTOCOL)
            .map_err(|e| anyhow::anyhow!("cannot serve the fetch protocol: {e}"))?;
        let storage = objects.storage().clone();
        let server = transfer::Server::new(objects, gate.clone(), dropper.clone(), config.serve);
        tokio::spawn(transfer::serve(incoming, Arc::new(server)));
        let (tx, rx) = mpsc::unbounded_channel();
        let parts = swarm::DriverParts {
            shared: shared.clone(),
            commands: rx,
            gate: gate.clone(),
            me: me.clone(),
            drops,
            refresh_every: config.directory_refresh,
            // The dialer proves membership after waiting for a hole punch.
            prove_within: config.hole_punch_timeout
                + config.connect_timeout
                + members::HELLO_TIMEOUT,
        };
        tokio::spawn(swarm::Driver::new(swarm, parts).run());
        let opener = SwarmOpener {
            shared: shared.clone(),
            commands: tx.clone(),
            control,
            gate: gate.clone(),
            me,
            connect_timeout: config.connect_timeout,
            hole_punch_timeout: config.hole_punch_timeout,
        };
        let fetcher = fetcher::Fetcher::new(storage, Arc::new(opener), config.fetch.clone());
        Ok(Self {
            peer_id,
            credential: config.credential,
            gate,
            shared,
            commands: tx,
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
        // Someone is looking: refresh discovery (rate-limited by the task).
        let _ = self.commands.send(swarm::Command::Discover);
        let mut status = self.shared.read(|s| s.status());
        status.transfers = self.fetcher.transfers();
        status.open_mesh = self.gate.policy().is_open();
        status.mesh_id = self.credential.as_ref().map(|c| c.mesh().to_string());
        status.credential_expires = self.credential.as_ref().map(|c| {
            c.expires()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        status
    }

    /// Addresses to put in keys so any daemon of the mesh can dial this one:
    /// relay circuits held now, then other confirmed external addresses.
    pub fn advertised_addrs(&self) -> Vec<Multiaddr> {
        self.shared.read(swarm::State::advertised)
    }

    /// Who this daemon serves.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The member serving ProxyStore endpoint `uuid`, found through the
    /// relays' directories (asking them again if it is not known yet). A
    /// UUID is derived from its daemon's peer ID, so no other member can
    /// claim it.
    pub async fn find_endpoint(&self, uuid: &str) -> Option<(PeerId, Vec<Multiaddr>)> {
        let lookup = |s: &swarm::State| {
            s.discovered
                .iter()
                .find(|(_, d)| d.uuid == uuid)
                .map(|(p, d)| (*p, d.addrs.clone()))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(found) = self.shared.read(lookup) {
                return Some(found);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            // Ask the relays again (the task sends at most one request a second).
            let _ = self.commands.send(swarm::Command::Discover);
            let step = (tokio::time::Instant::now() + Duration::from_millis(1100)).min(deadline);
            self.shared.wait_for(step, lookup).await;
        }
    }

    /// Stop the swarm task, closing every connection.
    pub fn shutdown(&self) {
        let _ = self.commands.send(swarm::Command::Shutdown);
    }
}

/// The swarm's [`StreamOpener`]: dial if needed, prefer direct, then open.
struct SwarmOpener {
    shared: Arc<swarm::Shared>,
    commands: mpsc::UnboundedSender<swarm::Command>,
    control: libp2p_stream::Control,
    gate: Arc<Gate>,
    me: members::Me,
    connect_timeout: Duration,
    hole_punch_timeout: Duration,
}

impl SwarmOpener {
    /// Every address worth trying for `peer`: the key's, discovery's, and the
    /// key's relay circuits rebuilt on *our* addresses of the same relays (so
    /// a site without UDP reaches a relay the key names by QUIC over TCP).
    fn candidates(&self, peer: PeerId, addrs: &[Multiaddr]) -> Vec<Multiaddr> {
        self.shared.read(|s| {
            let mut out: Vec<Multiaddr> = addrs.to_vec();
            if let Some(d) = s.discovered.get(&peer) {
                out.extend(d.addrs.iter().cloned());
            }
            for a in addrs.iter().chain(
                s.discovered
                    .get(&peer)
                    .map(|d| &d.addrs)
                    .into_iter()
                    .flatten(),
            ) {
                let Some(relay) = swarm::circuit_relay(a) else {
                    continue;
                };
                if let Some(slot) = s.relays.iter().find(|r| r.peer == relay) {
                    out.extend(
                        slot.addrs
                            .iter()
                            .map(|r| r.clone().with(Protocol::P2pCircuit)),
                    );
                }
            }
            // With no hint at all, try through every relay we hold a reservation with.
            if out.is_empty() {
                out.extend(
                    s.relays
                        .iter()
                        .filter(|r| r.reserved)
                        .flat_map(|r| r.addrs.iter().map(|a| a.clone().with(Protocol::P2pCircuit))),
                );
            }
            let mut seen = std::collections::HashSet::new();
            out.retain(|a| seen.insert(a.clone()));
            out
        })
    }

    /// Present our credential to `peer` and admit it from its answer.
    async fn prove_membership(&self, peer: PeerId) -> Result<(), MeshError> {
        let mut control = self.control.clone();
        let addrs = self.shared.read(swarm::State::advertised);
        // A hello can be lost when the peer is flooded with them (its
        // streams are handed over without a buffer): try once more.
        let welcomed =
            match members::hello(&mut control, peer, &self.me, addrs.clone(), &self.gate).await {
                Err(e) if !matches!(e, MeshError::Refused { .. }) => {
                    tracing::debug!(%peer, error = %e, "membership exchange failed; trying again");
                    members::hello(&mut control, peer, &self.me, addrs, &self.gate).await?
                }
                other => other?,
            };
        if self.gate.is_member(&peer, SystemTime::now()) {
            return Ok(());
        }
        let reason = welcomed
            .rejected
            .iter()
            .find(|(p, _)| *p == peer)
            .map_or_else(
                || "it presented no credential".to_string(),
                |(_, r)| r.clone(),
            );
        let _ = self.commands.send(swarm::Command::Drop {
            peer,
            reason: reason.clone(),
        });
        Err(MeshError::Refused {
            peer,
            reason: format!("not a member of our mesh: {reason}"),
        })
    }
}

#[async_trait::async_trait]
impl StreamOpener for SwarmOpener {
    async fn open(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<(libp2p::Stream, PathInfo), MeshError> {
        // 1. A connection, any path.
        if self.shared.read(|s| !s.conns.contains_key(&peer)) {
            let candidates = self.candidates(peer, addrs);
            if candidates.is_empty() {
                return Err(MeshError::Unreachable {
                    peer,
                    reason: "no address known: the key carries none, discovery found none, and no relay is reserved".into(),
                });
            }
            let _ = self.commands.send(swarm::Command::Dial {
                peer,
                addrs: candidates,
            });
            let deadline = tokio::time::Instant::now() + self.connect_timeout;
            let outcome = self
                .shared
                .wait_for(deadline, |s| {
                    if s.conns.contains_key(&peer) {
                        Some(Ok(()))
                    } else {
                        s.dial_failed.get(&peer).map(|e| Err(e.clone()))
                    }
                })
                .await;
            match outcome {
                Some(Ok(())) => {}
                Some(Err(reason)) => return Err(MeshError::Unreachable { peer, reason }),
                None => {
                    return Err(MeshError::TimedOut {
                        peer,
                        id: None,
                        phase: "connect",
                        after: self.connect_timeout,
                    })
                }
            }
        }
        // 2. Prefer direct: wait for the hole punch (and for the relayed
        //    connection to be closed once a direct one is up), within limits.
        //    No connection at all can be a moment inside a hole punch (the
        //    peer closed the circuit, our direct connection is still coming):
        //    keep waiting then.
        let deadline = tokio::time::Instant::now() + self.hole_punch_timeout;
        self.shared
            .wait_for(deadline, |s| {
                let (direct, relayed) = s.paths(&peer);
                let punch_over = s.punch_failed.contains_key(&peer);
                ((direct && !relayed) || (!direct && relayed && punch_over)).then_some(())
            })
            .await;
        let Some((path, transport)) = self.shared.read(|s| s.best(&peer)) else {
            return Err(MeshError::Unreachable {
                peer,
                reason: "the connection closed".into(),
            });
        };
        if path == Path::Relayed {
            tracing::info!(%peer, "no direct connection; transferring over the relay");
        }
        // 3. Membership, both ways: it admits us, we admit it.
        if !self.gate.is_member(&peer, SystemTime::now()) {
            self.prove_membership(peer).await?;
        }
        // 4. The stream.
        let mut control = self.control.clone();
        let stream = tokio::time::timeout(
            self.connect_timeout,
            control.open_stream(peer, protocol::PROTOCOL),
        )
        .await
        .map_err(|_| MeshError::TimedOut {
            peer,
            id: None,
            phase: "open stream",
            after: self.connect_timeout,
        })?
        .map_err(|e| MeshError::Unreachable {
            peer,
            reason: format!("cannot open a stream: {e}"),
        })?;
        Ok((stream, PathInfo { path, transport }))
    }
}
