//! The one task that owns the libp2p `Swarm`, and the state it shares with
//! the rest of the daemon.
//!
//! It listens on QUIC and TCP on fixed ports (dials reuse them, which hole
//! punching needs), joins every configured relay's mesh directory with its
//! credential (the member protocol, see [`super::members`]) and then keeps a
//! reservation there (re-joining and re-reserving with backoff when a relay
//! drops or restarts), learns the other members from the relays' answers
//! (each entry verified here), drops peers refused membership, and tracks every
//! connection's path (direct or relayed) and transport. When a direct
//! connection to a peer exists, its relayed connections are closed, so bulk
//! streams — which `libp2p-stream` opens on any connection — run direct.
//! The rest of the daemon talks to it through [`Command`]s and reads
//! [`Shared`] state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{autonat, dcutr, identify, relay, Multiaddr, PeerId, Swarm};
use proxymesh::api::{self, Path, Transport};
use proxymesh::membership::Gate;
use tokio::sync::{mpsc, Notify};

use super::behaviour::{Behaviour, BehaviourEvent};
use super::members::{self, Me, Welcomed};
use super::MeshError;

/// A discovered member no relay listed for this many refreshes is forgotten.
const DISCOVERED_TTL_REFRESHES: u32 = 5;
/// Most discovered members kept.
pub const MAX_DISCOVERED: usize = proxymesh::membership::wire::MAX_MEMBERS;
/// How long a relayed connection stays open once a direct one to the same
/// peer is up. By then DCUtR's messages on the circuit are done on both
/// sides; the peer may be a moment from its own direct connection, which its
/// stream opener waits through, so the circuit can go at the next tick.
const RELAYED_GRACE: Duration = Duration::ZERO;
/// Discovery requests are sent at most this often.
const DISCOVER_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// First and largest wait before re-reserving with a relay.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Requests to the swarm task.
#[derive(Debug)]
pub enum Command {
    /// Connect to `peer` through any of `addrs` (unless already connected or dialing).
    Dial {
        /// The peer.
        peer: PeerId,
        /// Candidate addresses.
        addrs: Vec<Multiaddr>,
    },
    /// Ask every joined relay for the mesh's members now.
    Discover,
    /// Disconnect a peer that is not a member of our mesh.
    Drop {
        /// The peer.
        peer: PeerId,
        /// Why, for the log.
        reason: String,
    },
    /// Stop the task (closing every connection).
    Shutdown,
}

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Direct or relayed.
    pub path: Path,
    /// QUIC or TCP.
    pub transport: Transport,
    /// The remote address.
    pub remote: Multiaddr,
}

/// One configured relay and the reservation kept with it.
#[derive(Debug, Clone)]
pub struct RelaySlot {
    /// The relay's peer ID.
    pub peer: PeerId,
    /// Its configured addresses (each ending in `/p2p/<peer>`), tried in turn.
    pub addrs: Vec<Multiaddr>,
    next_addr: usize,
    listener: Option<ListenerId>,
    /// Whether the relay admitted us to its directory on this connection.
    pub joined: bool,
    /// Whether a member-protocol exchange with it is under way.
    joining: bool,
    /// Whether a reservation is held.
    pub reserved: bool,
    /// The circuit address others dial to reach this daemon through the relay.
    pub circuit: Option<Multiaddr>,
    next_attempt: Instant,
    backoff: Duration,
}

impl RelaySlot {
    fn current_addr(&self) -> &Multiaddr {
        &self.addrs[self.next_addr % self.addrs.len()]
    }
}

/// A member found through the relays (its credential verified here).
#[derive(Debug, Clone)]
pub struct Discovered {
    /// Addresses it announced.
    pub addrs: Vec<Multiaddr>,
    /// Its ProxyStore endpoint UUID (derived from its peer ID).
    pub uuid: String,
    /// When a relay last listed it.
    pub seen: Instant,
}

/// State the swarm task publishes.
#[derive(Debug, Default)]
pub struct State {
    /// Open connections per peer.
    pub conns: HashMap<PeerId, HashMap<ConnectionId, ConnInfo>>,
    /// Peers whose last hole punch failed, and when.
    pub punch_failed: HashMap<PeerId, Instant>,
    /// The last dial error per peer (cleared when a dial starts).
    pub dial_failed: HashMap<PeerId, String>,
    /// Listen addresses.
    pub listen_addrs: Vec<Multiaddr>,
    /// Confirmed external addresses (including relay circuits).
    pub external_addrs: Vec<Multiaddr>,
    /// Relays and reservations.
    pub relays: Vec<RelaySlot>,
    /// Members found through the relays.
    pub discovered: HashMap<PeerId, Discovered>,
}

impl State {
    /// The relays we hold a reservation with.
    pub fn reserved_relays(&self) -> Vec<PeerId> {
        self.relays
            .iter()
            .filter(|r| r.reserved)
            .map(|r| r.peer)
            .collect()
    }

    /// Whether any direct / relayed connection to `peer` is open.
    pub fn paths(&self, peer: &PeerId) -> (bool, bool) {
        let conns = self.conns.get(peer);
        let has = |p: Path| conns.is_some_and(|c| c.values().any(|i| i.path == p));
        (has(Path::Direct), has(Path::Relayed))
    }

    /// Addresses to give out so any member can dial this daemon: relay
    /// circuits held now, then other confirmed external addresses.
    pub fn advertised(&self) -> Vec<Multiaddr> {
        let mut out: Vec<Multiaddr> = self
            .relays
            .iter()
            .filter_map(|r| r.circuit.clone())
            .collect();
        for a in &self.external_addrs {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    /// The best connection's path and transport: direct if there is one.
    pub fn best(&self, peer: &PeerId) -> Option<(Path, Transport)> {
        let conns = self.conns.get(peer)?;
        conns
            .values()
            .min_by_key(|c| (c.path == Path::Relayed, c.transport == Transport::Tcp))
            .map(|c| (c.path, c.transport))
    }

    /// The status served by the API.
    pub fn status(&self) -> api::MeshStatus {
        let mut peers: Vec<api::PeerStatus> = self
            .conns
            .iter()
            .map(|(peer, conns)| api::PeerStatus {
                peer_id: peer.to_string(),
                connections: conns
                    .values()
                    .map(|c| api::ConnectionStatus {
                        path: c.path,
                        transport: c.transport,
                        remote_addr: c.remote.to_string(),
                    })
                    .collect(),
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        let mut discovered: Vec<api::DiscoveredPeer> = self
            .discovered
            .iter()
            .map(|(p, d)| api::DiscoveredPeer {
                peer_id: p.to_string(),
                uuid: Some(d.uuid.clone()),
                addrs: d.addrs.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        discovered.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        api::MeshStatus {
            listen_addrs: self.listen_addrs.iter().map(|a| a.to_string()).collect(),
            external_addrs: self.external_addrs.iter().map(|a| a.to_string()).collect(),
            relays: self
                .relays
                .iter()
                .map(|r| api::RelayStatus {
                    addr: r.current_addr().to_string(),
                    joined: r.joined,
                    reserved: r.reserved,
                    circuit_addr: r.circuit.as_ref().map(|c| c.to_string()),
                })
                .collect(),
            peers,
            discovered,
            transfers: 0,
            mesh_id: None,
            open_mesh: false,
            credential_expires: None,
        }
    }
}

/// State shared between the swarm task and the rest of the daemon, with a
/// notification on every change that can matter to a waiting dial.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    /// Read the state.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Set up the initial state (before the swarm task starts).
    pub fn init(&self, f: impl FnOnce(&mut State)) {
        self.write(f)
    }

    fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_waiters();
        r
    }

    /// Wait until `done` returns `Some`, re-checking after every change, or
    /// until `deadline` (then `None`).
    pub async fn wait_for<R>(
        &self,
        deadline: tokio::time::Instant,
        mut done: impl FnMut(&State) -> Option<R>,
    ) -> Option<R> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.read(&mut done) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.read(&mut done);
            }
        }
    }
}

/// Whether `addr` goes through a relay circuit.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The transport an address names (QUIC if it says so, TCP if it says so).
pub fn transport_of(addr: &Multiaddr) -> Option<Transport> {
    addr.iter().find_map(|p| match p {
        Protocol::QuicV1 | Protocol::Quic => Some(Transport::Quic),
        Protocol::Tcp(_) => Some(Transport::Tcp),
        _ => None,
    })
}

/// The relay peer of a circuit address (`…/p2p/<relay>/p2p-circuit…`).
pub fn circuit_relay(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// The peer ID at the end of an address, if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

/// Group configured relay addresses by relay peer.
pub fn relay_slots(addrs: &[Multiaddr]) -> Result<Vec<RelaySlot>, String> {
    let mut slots: Vec<RelaySlot> = Vec::new();
    for a in addrs {
        let peer = peer_of(a)
            .ok_or_else(|| format!("relay address {a} must end in /p2p/<relay peer id>"))?;
        match slots.iter_mut().find(|s| s.peer == peer) {
            Some(s) => s.addrs.push(a.clone()),
            None => slots.push(RelaySlot {
                peer,
                addrs: vec![a.clone()],
                next_addr: 0,
                listener: None,
                joined: false,
                joining: false,
                reserved: false,
                circuit: None,
                next_attempt: Instant::now(),
                backoff: BACKOFF_MIN,
            }),
        }
    }
    Ok(slots)
}

/// Results of exchanges the swarm task started in tasks of their own.
#[derive(Debug)]
enum Internal {
    /// A member-protocol exchange with a relay ended.
    Joined {
        relay: PeerId,
        result: Result<Welcomed, MeshError>,
    },
}

/// The swarm task.
pub struct Driver {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Who may be served; members are admitted here.
    gate: Arc<Gate>,
    /// What this daemon presents to relays.
    me: Me,
    /// Opens member-protocol streams.
    control: libp2p_stream::Control,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal: mpsc::UnboundedReceiver<Internal>,
    /// Peers refused membership (by the member or fetch server), to drop.
    drops: mpsc::UnboundedReceiver<(PeerId, String)>,
    refresh_every: Duration,
    prove_within: Duration,
    /// Connected peers to check for membership once `prove_within` passed.
    unproven: Vec<(Instant, PeerId)>,
    relay_peers: HashSet<PeerId>,
    last_discovery: Option<Instant>,
    /// Peers whose relayed connections close once the grace period ends.
    closing: Vec<(Instant, PeerId)>,
    /// When to refresh our entry at the relays: shortly after an address or
    /// reservation change, once every behaviour has seen it.
    register_at: Option<Instant>,
}

/// What the swarm task needs besides the swarm.
pub struct DriverParts {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Commands from the rest of the daemon.
    pub commands: mpsc::UnboundedReceiver<Command>,
    /// The membership gate.
    pub gate: Arc<Gate>,
    /// What this daemon presents.
    pub me: Me,
    /// Peers to drop.
    pub drops: mpsc::UnboundedReceiver<(PeerId, String)>,
    /// How often our entry at the relays (and our view of the members and
    /// the revocation list) is refreshed.
    pub refresh_every: Duration,
    /// How long a connected peer (not a relay) has to prove its membership
    /// before it is dropped.
    pub prove_within: Duration,
}

impl Driver {
    /// A driver for `swarm`, publishing into `shared`.
    pub fn new(swarm: Swarm<Behaviour>, parts: DriverParts) -> Self {
        let DriverParts {
            shared,
            commands,
            gate,
            me,
            drops,
            refresh_every,
            prove_within,
        } = parts;
        let relay_peers = shared.read(|s| s.relays.iter().map(|r| r.peer).collect());
        let control = swarm.behaviour().stream.new_control();
        let (internal_tx, internal) = mpsc::unbounded_channel();
        Self {
            swarm,
            shared,
            commands,
            gate,
            me,
            control,
            internal_tx,
            internal,
            drops,
            refresh_every,
            prove_within,
            unproven: Vec::new(),
            relay_peers,
            last_discovery: None,
            closing: Vec::new(),
            register_at: None,
        }
    }

    /// Run until [`Command::Shutdown`] or until every sender is gone.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut refresh = tokio::time::interval(self.refresh_every);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown) | None => break,
                    Some(cmd) => self.on_command(cmd),
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(internal) = self.internal.recv() => self.on_internal(internal),
                Some((peer, reason)) = self.drops.recv() => self.drop_peer(peer, &reason),
                _ = tick.tick() => {
                    self.retry_reservations();
                    self.close_superseded();
                    self.drop_unproven();
                    if self.register_at.is_some_and(|t| t <= Instant::now()) {
                        self.register_at = None;
                        self.refresh_directory();
                    }
                }
                _ = refresh.tick() => {
                    self.refresh_directory();
                    self.prune_discovered();
                }
            }
        }
        tracing::debug!("mesh task stopped");
    }

    /// `addr` without a trailing `/p2p/<our peer id>`.
    fn without_own_id(&self, mut addr: Multiaddr) -> Multiaddr {
        if peer_of(&addr) == Some(*self.swarm.local_peer_id()) {
            addr.pop();
        }
        addr
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { peer, addrs } => {
                self.shared.write(|s| s.dial_failed.remove(&peer));
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => tracing::debug!(%peer, "dialing"),
                    Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
                    Err(e) => {
                        self.shared
                            .write(|s| s.dial_failed.insert(peer, e.to_string()));
                    }
                }
            }
            Command::Discover => self.discover(),
            Command::Drop { peer, reason } => self.drop_peer(peer, &reason),
            Command::Shutdown => {}
        }
    }

    /// For every relay without a reservation whose backoff is over: connect,
    /// then join its directory, then reserve.
    fn retry_reservations(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = self.shared.read(|s| {
            s.relays
                .iter()
                .enumerate()
                .filter(|(_, r)| r.listener.is_none() && !r.joining && r.next_attempt <= now)
                .map(|(i, _)| i)
                .collect()
        });
        for i in due {
            let (relay, addr, joined) = self.shared.read(|s| {
                (
                    s.relays[i].peer,
                    s.relays[i].current_addr().clone(),
                    s.relays[i].joined,
                )
            });
            if !self.swarm.is_connected(&relay) {
                let opts = DialOpts::peer_id(relay)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => tracing::debug!(relay = %addr, "dialing relay"),
                    Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
                    Err(e) => {
                        tracing::warn!(relay = %addr, error = %e, "cannot dial relay");
                        self.shared.write(|s| back_off(&mut s.relays[i]));
                    }
                }
                continue;
            }
            if !joined {
                self.join(i);
                continue;
            }
            let circuit = addr.clone().with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit) {
                Ok(id) => {
                    tracing::info!(relay = %addr, "requesting a reservation");
                    self.shared.write(|s| s.relays[i].listener = Some(id));
                }
                Err(e) => {
                    tracing::warn!(relay = %addr, error = %e, "cannot listen through relay");
                    self.shared.write(|s| back_off(&mut s.relays[i]));
                }
            }
        }
    }

    /// Drop connected peers that never proved membership in time.
    fn drop_unproven(&mut self) {
        let now = Instant::now();
        if !self.unproven.iter().any(|(t, _)| *t <= now) {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = self.unproven.drain(..).partition(|(t, _)| *t <= now);
        self.unproven = later;
        for (_, peer) in due {
            if self.swarm.is_connected(&peer)
                && !self.gate.is_member(&peer, std::time::SystemTime::now())
            {
                let reason = format!(
                    "did not prove membership within {:?} of connecting",
                    self.prove_within
                );
                self.drop_peer(peer, &reason);
            }
        }
    }

    fn drop_peer(&mut self, peer: PeerId, reason: &str) {
        if self.relay_peers.contains(&peer) {
            tracing::warn!(%peer, %reason, "a relay asked for something only members get; keeping the relay connection");
            return;
        }
        tracing::warn!(%peer, %reason, "dropping peer");
        self.gate.forget(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Present our credential to relay slot `i` (in a task of its own).
    fn join(&mut self, i: usize) {
        let (relay, addrs) = self.shared.write(|s| {
            s.relays[i].joining = true;
            (s.relays[i].peer, s.advertised())
        });
        let (mut control, me, gate, tx) = (
            self.control.clone(),
            self.me.clone(),
            self.gate.clone(),
            self.internal_tx.clone(),
        );
        tokio::spawn(async move {
            let result = members::hello(&mut control, relay, &me, addrs, &gate).await;
            let _ = tx.send(Internal::Joined { relay, result });
        });
    }

    fn on_internal(&mut self, internal: Internal) {
        let Internal::Joined { relay, result } = internal;
        let Some(i) = self
            .shared
            .read(|s| s.relays.iter().position(|r| r.peer == relay))
        else {
            return;
        };
        match result {
            Ok(welcomed) => {
                let first = self.shared.write(|s| {
                    let slot = &mut s.relays[i];
                    slot.joining = false;
                    !std::mem::replace(&mut slot.joined, true)
                });
                if first {
                    tracing::info!(%relay, members = welcomed.members.len(), "joined the mesh directory at the relay");
                }
                self.on_welcomed(welcomed);
                self.retry_reservations();
            }
            Err(e) => {
                match &e {
                    MeshError::Refused { reason, .. } => {
                        tracing::error!(%relay, %reason, "the relay refused this daemon's membership; check the credential (proxymesh status shows the mesh)")
                    }
                    _ => {
                        tracing::warn!(%relay, error = %e, "cannot join the relay's mesh directory")
                    }
                }
                self.shared.write(|s| {
                    s.relays[i].joining = false;
                    back_off(&mut s.relays[i]);
                });
            }
        }
    }

    /// Take the members a relay vouched for (each verified already).
    fn on_welcomed(&mut self, w: Welcomed) {
        for (peer, reason) in &w.rejected {
            tracing::warn!(%peer, %reason, "ignoring a directory entry");
        }
        for peer in w.revoked {
            tracing::warn!(%peer, "membership revoked by the mesh authority; disconnecting");
            let _ = self.swarm.disconnect_peer_id(peer);
            self.shared.write(|s| s.discovered.remove(&peer));
        }
        let now = Instant::now();
        for (peer, addrs) in w.members {
            for a in &addrs {
                self.swarm.add_peer_address(peer, a.clone());
            }
            self.shared.write(|s| {
                if !s.discovered.contains_key(&peer) && s.discovered.len() >= MAX_DISCOVERED {
                    return;
                }
                let d = s.discovered.entry(peer).or_insert_with(|| Discovered {
                    addrs: Vec::new(),
                    uuid: proxymesh::membership::endpoint_uuid(&peer).to_string(),
                    seen: now,
                });
                d.seen = now;
                for a in addrs {
                    if !d.addrs.contains(&a)
                        && d.addrs.len() < proxymesh::membership::wire::MAX_ADDRS
                    {
                        d.addrs.push(a);
                    }
                }
            });
        }
    }

    fn discover(&mut self) {
        if self
            .last_discovery
            .is_some_and(|t| t.elapsed() < DISCOVER_AT_MOST_EVERY)
        {
            return;
        }
        self.last_discovery = Some(Instant::now());
        self.refresh_directory();
    }

    /// Send our entry again to every relay we joined, and take its answer.
    fn refresh_directory(&mut self) {
        let joined: Vec<usize> = self.shared.read(|s| {
            s.relays
                .iter()
                .enumerate()
                .filter(|(_, r)| r.joined && !r.joining)
                .map(|(i, _)| i)
                .collect()
        });
        for i in joined {
            self.join(i);
        }
    }

    fn prune_discovered(&mut self) {
        let ttl = self.refresh_every * DISCOVERED_TTL_REFRESHES;
        self.shared
            .write(|s| s.discovered.retain(|_, d| d.seen.elapsed() < ttl));
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                let relay_slot = self.shared.read(|s| {
                    s.relays
                        .iter()
                        .position(|r| r.listener == Some(listener_id))
                });
                if relay_slot.is_none() {
                    tracing::info!(%address, "listening");
                    self.shared.write(|s| s.listen_addrs.push(address));
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.shared
                    .write(|s| s.listen_addrs.retain(|a| a != &address));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => self.on_listener_closed(listener_id, reason.err().map(|e| e.to_string())),
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::debug!(?listener_id, %error, "listener error");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                let address = self.without_own_id(address);
                self.shared.write(|s| {
                    if !s.external_addrs.contains(&address) {
                        s.external_addrs.push(address);
                    }
                });
                self.register_at = Some(Instant::now());
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                let address = self.without_own_id(address);
                self.shared
                    .write(|s| s.external_addrs.retain(|a| a != &address));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.on_connection(peer_id, connection_id, &endpoint);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, "connection closed");
                self.shared.write(|s| {
                    if let Some(c) = s.conns.get_mut(&peer_id) {
                        c.remove(&connection_id);
                        if c.is_empty() {
                            s.conns.remove(&peer_id);
                        }
                    }
                });
                if num_established == 0 {
                    self.gate.forget(&peer_id);
                    if self.relay_peers.contains(&peer_id) {
                        self.on_relay_lost(peer_id);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if self.relay_peers.contains(&peer) && !self.swarm.is_connected(&peer) => {
                // Try the relay's next address (e.g. TCP where UDP is blocked) after a backoff.
                let addr = self.shared.write(|s| {
                    let slot = s.relays.iter_mut().find(|r| r.peer == peer)?;
                    let addr = slot.current_addr().clone();
                    back_off(slot);
                    Some(addr)
                });
                if let Some(addr) = addr {
                    tracing::warn!(relay = %addr, %error, "cannot reach relay; trying its next address");
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if self.shared.read(|s| !s.conns.contains_key(&peer)) => {
                tracing::debug!(%peer, %error, "dial failed");
                self.shared
                    .write(|s| s.dial_failed.insert(peer, error.to_string()));
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour(event),
            _ => {}
        }
    }

    fn on_connection(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint) {
        let remote = endpoint.get_remote_address().clone();
        let path = if endpoint.is_relayed() {
            Path::Relayed
        } else {
            Path::Direct
        };
        let transport = if path == Path::Direct {
            transport_of(&remote)
        } else {
            // A relayed connection rides on our connection to the relay,
            // whatever transport the circuit address names (the relay client
            // reuses the connection it has).
            self.shared.read(|s| {
                let relay = circuit_relay(&remote);
                let slot = s
                    .relays
                    .iter()
                    .find(|r| r.reserved && relay.is_none_or(|p| p == r.peer));
                match (relay, slot) {
                    (_, Some(slot)) => transport_of(slot.current_addr()),
                    (Some(relay), None) => s.best(&relay).map(|(_, t)| t),
                    (None, None) => None,
                }
            })
        }
        .unwrap_or(Transport::Tcp);
        let info = ConnInfo {
            path,
            transport,
            remote: remote.clone(),
        };
        let is_relay = self.relay_peers.contains(&peer);
        if !is_relay {
            tracing::info!(%peer, %remote, ?path, ?transport, "connected");
            if !self.gate.policy().is_open() {
                self.unproven
                    .push((Instant::now() + self.prove_within, peer));
            }
        }
        self.shared.write(|s| {
            s.conns.entry(peer).or_default().insert(id, info);
            if path == Path::Direct {
                s.punch_failed.remove(&peer);
            }
        });
        if path == Path::Direct {
            self.closing.push((Instant::now() + RELAYED_GRACE, peer));
        }
        if is_relay {
            // Join its directory now rather than at the next tick.
            self.retry_reservations();
        }
    }

    /// Close relayed connections to peers that have had a direct one for the
    /// grace period: streams must run direct, and `libp2p-stream` would pick
    /// either connection.
    fn close_superseded(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .closing
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, p)| *p)
            .collect();
        self.closing.retain(|(t, _)| *t > now);
        for peer in due {
            let relayed: Vec<ConnectionId> = self.shared.read(|s| match s.paths(&peer) {
                (true, true) => s.conns[&peer]
                    .iter()
                    .filter(|(_, c)| c.path == Path::Relayed)
                    .map(|(id, _)| *id)
                    .collect(),
                _ => Vec::new(),
            });
            if !relayed.is_empty() {
                tracing::info!(%peer, "direct connection up; closing the relayed one");
            }
            for id in relayed {
                self.swarm.close_connection(id);
            }
        }
    }

    fn on_listener_closed(&mut self, listener: ListenerId, error: Option<String>) {
        let closed = self.shared.write(|s| {
            let slot = s.relays.iter_mut().find(|r| r.listener == Some(listener))?;
            slot.listener = None;
            slot.reserved = false;
            let circuit = slot.circuit.take();
            back_off(slot);
            if let Some(c) = &circuit {
                s.external_addrs.retain(|a| a != c);
            }
            Some((slot.current_addr().clone(), circuit))
        });
        if let Some((addr, circuit)) = closed {
            tracing::warn!(relay = %addr, error = error.as_deref().unwrap_or("closed"), "relay reservation lost; will re-reserve");
            if let Some(c) = circuit {
                let mut own = c.clone();
                own.push(Protocol::P2p(*self.swarm.local_peer_id()));
                self.swarm.remove_external_address(&own);
            }
        }
    }

    fn on_relay_lost(&mut self, relay: PeerId) {
        let listener = self.shared.write(|s| {
            let slot = s.relays.iter_mut().find(|r| r.peer == relay)?;
            // A new connection must join again.
            slot.joined = false;
            slot.listener
        });
        if let Some(l) = listener {
            self.swarm.remove_listener(l);
            self.on_listener_closed(l, Some("connection to the relay closed".into()));
        }
    }

    fn on_behaviour(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Relay(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                let circuit = self.shared.write(|s| {
                    let slot = s.relays.iter_mut().find(|r| r.peer == relay_peer_id)?;
                    slot.reserved = true;
                    slot.backoff = BACKOFF_MIN;
                    let circuit = slot.current_addr().clone().with(Protocol::P2pCircuit);
                    slot.circuit = Some(circuit.clone());
                    if !s.external_addrs.contains(&circuit) {
                        s.external_addrs.push(circuit.clone());
                    }
                    Some(circuit)
                });
                if let Some(circuit) = circuit {
                    if !renewal {
                        tracing::info!(relay = %relay_peer_id, %circuit, "reservation accepted");
                    }
                    // Refresh our directory entries (now with the circuit) on the next tick.
                    self.register_at = Some(Instant::now());
                }
            }
            BehaviourEvent::Relay(event) => tracing::debug!(?event, "relay client"),
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => tracing::info!(peer = %remote_peer_id, "hole punch succeeded"),
                Err(error) => {
                    tracing::warn!(peer = %remote_peer_id, %error, "hole punch failed; transfers with this peer use the relayed connection");
                    self.shared
                        .write(|s| s.punch_failed.insert(remote_peer_id, Instant::now()));
                }
            },
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                tracing::debug!(%peer_id, observed = %info.observed_addr, "identified");
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "reachability changed");
            }
            _ => {}
        }
    }
}

fn back_off(slot: &mut RelaySlot) {
    slot.next_attempt = Instant::now() + slot.backoff;
    slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
    slot.next_addr += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn address_classification() {
        let r = peer();
        let quic: Multiaddr = format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{r}")
            .parse()
            .unwrap();
        let tcp: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{r}").parse().unwrap();
        assert_eq!(transport_of(&quic), Some(Transport::Quic));
        assert_eq!(transport_of(&tcp), Some(Transport::Tcp));
        let circuit = tcp
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(peer()));
        assert!(is_relayed(&circuit) && !is_relayed(&tcp));
        assert_eq!(circuit_relay(&circuit), Some(r));
        assert_eq!(peer_of(&quic), Some(r));
    }

    #[test]
    fn relay_addresses_group_by_peer_and_need_a_peer_id() {
        let r = peer();
        let a: Multiaddr = format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{r}")
            .parse()
            .unwrap();
        let b: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{r}").parse().unwrap();
        let slots = relay_slots(&[a, b]).unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].addrs.len(), 2);
        assert!(relay_slots(&["/ip4/10.0.0.1/tcp/4001".parse().unwrap()]).is_err());
    }

    #[test]
    fn best_path_prefers_direct_then_quic() {
        let p = peer();
        let mut s = State::default();
        let conn = |path, transport| ConnInfo {
            path,
            transport,
            remote: Multiaddr::empty(),
        };
        s.conns.entry(p).or_default().insert(
            ConnectionId::new_unchecked(1),
            conn(Path::Relayed, Transport::Quic),
        );
        assert_eq!(s.best(&p), Some((Path::Relayed, Transport::Quic)));
        s.conns.entry(p).or_default().insert(
            ConnectionId::new_unchecked(2),
            conn(Path::Direct, Transport::Tcp),
        );
        assert_eq!(s.best(&p), Some((Path::Direct, Transport::Tcp)));
        s.conns.entry(p).or_default().insert(
            ConnectionId::new_unchecked(3),
            conn(Path::Direct, Transport::Quic),
        );
        assert_eq!(s.best(&p), Some((Path::Direct, Transport::Quic)));
        assert_eq!(s.paths(&p), (true, true));
    }

    #[tokio::test]
    async fn wait_for_wakes_on_change_and_times_out() {
        let shared = Arc::new(Shared::default());
        let p = peer();
        let waiter = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                shared
                    .wait_for(deadline, |s| s.dial_failed.get(&p).cloned())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        shared.write(|s| s.dial_failed.insert(p, "nope".into()));
        assert_eq!(waiter.await.unwrap().as_deref(), Some("nope"));
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(shared
            .wait_for(deadline, |s| s.conns.get(&p).map(|_| ()))
            .await
            .is_none());
    }
}
