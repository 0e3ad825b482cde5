//! The control plane's event loop: the one task that owns the libp2p
//! `Swarm` and every piece of state about connections, relays and members.
//! Nothing of it is shared: the rest of the daemon sends [`Command`]s
//! through a [`Network`] handle, each carrying a `oneshot` for its answer,
//! and reads [`Snapshot`]s the loop publishes on a `watch` after every
//! change (the rust-libp2p `file-sharing` pattern).
//!
//! What it does:
//! - **Relays.** Dials each configured relay over QUIC and, 250 ms later
//!   unless QUIC connected, over TCP too (happy eyeballs; whichever connects
//!   first is kept), joins
//!   its mesh directory with our credential (the member protocol, see
//!   [`super::members`]), then keeps a reservation there, re-joining and
//!   re-reserving with backoff when a relay drops or restarts.
//! - **Members.** Learns the other members from the relays' answers (each
//!   entry verified), drops peers refused membership and connected peers
//!   that do not prove it in time.
//! - **Connections.** Answers [`Command::Connect`] as soon as any connection
//!   to the peer is up (relayed or direct: transfers never wait for a hole
//!   punch), dialing every candidate address at once. A connect issued
//!   while the mesh is still coming up waits for the relays. A `fresh`
//!   connect replaces connections that stopped answering (a peer that
//!   restarted). When DCUtR brings a direct connection, the relayed ones to
//!   that peer close, so new streams run direct (`libp2p-stream` picks any
//!   connection); transfers that were on them resume on the direct one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{autonat, dcutr, identify, ping, relay, Multiaddr, PeerId, Swarm};
use proxymesh::api::{self, Path, Transport};
use proxymesh::membership::Gate;
use tokio::sync::{mpsc, oneshot, watch};

use super::addr::{circuit_relay, is_relayed, peer_of, transport_of};
use super::behaviour::{Behaviour, BehaviourEvent};
use super::members::{self, Me, Welcomed};
use super::{MeshError, PathInfo};

/// How far back lost reservations are counted (`status`, `doctor`).
pub const RESERVATIONS_LOST_WINDOW: Duration = Duration::from_secs(300);

/// A discovered member no relay listed for this many refreshes is forgotten.
const DISCOVERED_TTL_REFRESHES: u32 = 5;
/// Most discovered members kept.
pub const MAX_DISCOVERED: usize = proxymesh::membership::wire::MAX_MEMBERS;
/// Discovery requests are sent at most this often.
const DISCOVER_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// First and largest wait before re-reserving with a relay.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Head start of QUIC over TCP when dialing a relay (RFC 8305's
/// connection attempt delay).
const HAPPY_EYEBALLS: Duration = Duration::from_millis(250);
/// How long a disconnected peer stays admitted (its peer ID is proven
/// again by every new connection; its credential is checked on every use).
const FORGET_AFTER: Duration = Duration::from_secs(30);
/// How long a [`Command::FindEndpoint`] waits for the relays to list it.
pub const FIND_ENDPOINT_WAIT: Duration = Duration::from_secs(5);

/// A member found for an endpoint UUID, and its addresses.
pub type Found = Option<(PeerId, Vec<Multiaddr>)>;

/// Requests to the event loop.
#[derive(Debug)]
pub enum Command {
    /// A connection to `peer`, any path: answered at once when one is up,
    /// else when a dial through `addrs` (and every address discovery and
    /// our relays give) succeeds or fails. With `fresh`, the connections
    /// open now are considered dead: they are closed and a new one dialed.
    Connect {
        /// The peer.
        peer: PeerId,
        /// Addresses from the key.
        addrs: Vec<Multiaddr>,
        /// Replace the current connections.
        fresh: bool,
        /// The path of the connection, or why there is none.
        reply: oneshot::Sender<Result<PathInfo, MeshError>>,
    },
    /// The member serving ProxyStore endpoint `uuid`; asks the relays if it
    /// is not known, and answers `None` after [`FIND_ENDPOINT_WAIT`].
    FindEndpoint {
        /// The endpoint UUID.
        uuid: String,
        /// The member and its addresses.
        reply: oneshot::Sender<Option<(PeerId, Vec<Multiaddr>)>>,
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
    /// Stop the loop (closing every connection).
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
    /// Round-trip time, once a ping measured it.
    pub rtt: Option<Duration>,
}

/// A relay as the snapshot shows it.
#[derive(Debug, Clone)]
pub struct RelayView {
    /// The relay's peer ID.
    pub peer: PeerId,
    /// The address in use (or the first configured).
    pub addr: Multiaddr,
    /// Every configured address.
    pub addrs: Vec<Multiaddr>,
    /// Whether the relay admitted us to its directory on this connection.
    pub joined: bool,
    /// Whether a reservation is held.
    pub reserved: bool,
    /// The circuit address others dial to reach this daemon through it.
    pub circuit: Option<Multiaddr>,
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

/// What the loop publishes after every change: a read-only picture of the
/// node for status, keys and the data plane.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Open connections per peer.
    pub conns: HashMap<PeerId, HashMap<ConnectionId, ConnInfo>>,
    /// Listen addresses.
    pub listen_addrs: Vec<Multiaddr>,
    /// Confirmed external addresses (including relay circuits).
    pub external_addrs: Vec<Multiaddr>,
    /// Relays and reservations.
    pub relays: Vec<RelayView>,
    /// Members found through the relays.
    pub discovered: HashMap<PeerId, Discovered>,
    /// AutoNAT's verdict (`public`, `private`, `unknown`).
    pub nat: &'static str,
    /// Relay connections holding our reservation that closed within
    /// [`RESERVATIONS_LOST_WINDOW`].
    pub reservations_lost: u32,
}

impl Snapshot {
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

    /// The best connection's path: direct if there is one, QUIC before TCP.
    pub fn best(&self, peer: &PeerId) -> Option<PathInfo> {
        let conns = self.conns.get(peer)?;
        conns
            .values()
            .min_by_key(|c| (c.path == Path::Relayed, c.transport == Transport::Tcp))
            .map(|c| PathInfo {
                path: c.path,
                transport: c.transport,
            })
    }

    /// Whether some relay holds a reservation for us.
    pub fn reserved(&self) -> bool {
        self.relays.iter().any(|r| r.reserved)
    }

    /// Why this node cannot reach others right now, if it cannot: for
    /// error messages.
    pub fn not_ready(&self) -> Option<String> {
        if self.relays.is_empty() || self.reserved() {
            return None;
        }
        Some(if self.relays.iter().any(|r| r.joined) {
            "this daemon has joined its relays but holds no reservation yet".into()
        } else {
            format!(
                "this daemon has not reached any of its relays yet ({}); check that they run and that UDP or TCP to them is allowed",
                self.relays
                    .iter()
                    .map(|r| r.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
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
                    addr: r.addr.to_string(),
                    joined: r.joined,
                    reserved: r.reserved,
                    circuit_addr: r.circuit.as_ref().map(|c| c.to_string()),
                })
                .collect(),
            peers,
            discovered,
            nat: (!self.nat.is_empty()).then(|| self.nat.to_string()),
            reservations_lost: self.reservations_lost,
            ..Default::default()
        }
    }

    /// Every address worth dialing for `peer`: the key's, discovery's, and
    /// circuits through each relay either names, rebuilt on *our* addresses
    /// of that relay (so a site without UDP reaches a relay the key names by
    /// QUIC over TCP); with no hint at all, circuits through every relay
    /// that holds our reservation.
    pub fn candidates(&self, peer: &PeerId, addrs: &[Multiaddr]) -> Vec<Multiaddr> {
        let discovered = self.discovered.get(peer).map(|d| d.addrs.as_slice());
        let hinted: Vec<&Multiaddr> = addrs
            .iter()
            .chain(discovered.into_iter().flatten())
            .collect();
        let mut out: Vec<Multiaddr> = hinted.iter().map(|a| (*a).clone()).collect();
        for a in &hinted {
            let Some(relay) = circuit_relay(a) else {
                continue;
            };
            if let Some(r) = self.relays.iter().find(|r| r.peer == relay) {
                out.extend(r.addrs.iter().map(|a| a.clone().with(Protocol::P2pCircuit)));
            }
        }
        if out.is_empty() {
            out.extend(
                self.relays
                    .iter()
                    .filter(|r| r.reserved)
                    .flat_map(|r| r.addrs.iter().map(|a| a.clone().with(Protocol::P2pCircuit))),
            );
        }
        let mut seen = HashSet::new();
        out.retain(|a| seen.insert(a.clone()));
        out
    }
}

/// A handle to the event loop: commands in, snapshots out. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Network {
    commands: mpsc::UnboundedSender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
}

impl Network {
    /// The newest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver of snapshots, to wait for changes.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    /// A connection to `peer` (see [`Command::Connect`]), within `timeout`.
    pub async fn connect(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        fresh: bool,
        timeout: Duration,
    ) -> Result<PathInfo, MeshError> {
        let (reply, answer) = oneshot::channel();
        let cmd = Command::Connect {
            peer,
            addrs: addrs.to_vec(),
            fresh,
            reply,
        };
        if self.commands.send(cmd).is_err() {
            return Err(stopped(peer));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(stopped(peer)),
            Err(_) => Err(MeshError::TimedOut {
                peer,
                id: None,
                phase: match self.snapshot().not_ready() {
                    Some(_) => "connect (the mesh is still coming up: no relay reservation yet)",
                    None => "connect",
                },
                after: timeout,
            }),
        }
    }

    /// The member serving ProxyStore endpoint `uuid` (see [`Command::FindEndpoint`]).
    pub async fn find_endpoint(&self, uuid: &str) -> Option<(PeerId, Vec<Multiaddr>)> {
        let (reply, answer) = oneshot::channel();
        let cmd = Command::FindEndpoint {
            uuid: uuid.to_string(),
            reply,
        };
        self.commands.send(cmd).ok()?;
        answer.await.ok().flatten()
    }

    /// Ask the relays for the members now (rate-limited by the loop).
    pub fn discover(&self) {
        let _ = self.commands.send(Command::Discover);
    }

    /// Disconnect `peer`, logging `reason`.
    pub fn drop_peer(&self, peer: PeerId, reason: String) {
        let _ = self.commands.send(Command::Drop { peer, reason });
    }

    /// Stop the loop.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

fn stopped(peer: PeerId) -> MeshError {
    MeshError::Unreachable {
        peer,
        reason: "this daemon's mesh node has stopped".into(),
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
                connected: None,
                dialing: false,
                fallback: None,
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

/// One configured relay and the reservation kept with it (private to the loop).
#[derive(Debug, Clone)]
pub struct RelaySlot {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    /// The configured address whose transport the open connection uses.
    connected: Option<Multiaddr>,
    dialing: bool,
    /// When to dial the addresses QUIC gave a head start to, if still
    /// unconnected then.
    fallback: Option<(Instant, Vec<Multiaddr>)>,
    listener: Option<ListenerId>,
    joined: bool,
    joining: bool,
    reserved: bool,
    circuit: Option<Multiaddr>,
    next_attempt: Instant,
    backoff: Duration,
}

impl RelaySlot {
    fn addr(&self) -> &Multiaddr {
        self.connected.as_ref().unwrap_or(&self.addrs[0])
    }

    /// Whether the slot waits for its next attempt (nothing under way).
    fn idle(&self) -> bool {
        self.listener.is_none() && !self.joining && !self.dialing
    }

    fn back_off(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn view(&self) -> RelayView {
        RelayView {
            peer: self.peer,
            addr: self.addr().clone(),
            addrs: self.addrs.clone(),
            joined: self.joined,
            reserved: self.reserved,
            circuit: self.circuit.clone(),
        }
    }
}

/// Results of exchanges the loop started in tasks of their own.
#[derive(Debug)]
enum Internal {
    /// A member-protocol exchange with a relay ended.
    Joined {
        relay: PeerId,
        result: Result<Welcomed, MeshError>,
    },
}

/// A connect waiting for its answer.
struct PendingConnect {
    reply: oneshot::Sender<Result<PathInfo, MeshError>>,
    addrs: Vec<Multiaddr>,
    fresh: bool,
}

/// What the event loop needs besides the swarm.
pub struct Parts {
    /// The relays.
    pub relays: Vec<RelaySlot>,
    /// The membership gate.
    pub gate: Arc<Gate>,
    /// What this daemon presents.
    pub me: Me,
    /// Peers to drop (from the member and fetch servers).
    pub drops: mpsc::UnboundedReceiver<(PeerId, String)>,
    /// How often our entry at the relays (and our view of the members and
    /// the revocation list) is refreshed.
    pub refresh_every: Duration,
    /// How long a connected peer (not a relay) has to prove its membership
    /// before it is dropped.
    pub prove_within: Duration,
    /// Where hole punches, time to direct and refused peers are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The event loop.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::UnboundedReceiver<Command>,
    published: watch::Sender<Arc<Snapshot>>,
    /// Whether the state changed since it was last published.
    dirty: bool,
    conns: HashMap<PeerId, HashMap<ConnectionId, ConnInfo>>,
    listen_addrs: Vec<Multiaddr>,
    external_addrs: Vec<Multiaddr>,
    relays: Vec<RelaySlot>,
    discovered: HashMap<PeerId, Discovered>,
    gate: Arc<Gate>,
    me: Me,
    /// Opens member-protocol streams.
    control: libp2p_stream::Control,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal: mpsc::UnboundedReceiver<Internal>,
    drops: mpsc::UnboundedReceiver<(PeerId, String)>,
    refresh_every: Duration,
    prove_within: Duration,
    /// Connected peers to check for membership once `prove_within` passed.
    unproven: Vec<(Instant, PeerId)>,
    relay_peers: HashSet<PeerId>,
    last_discovery: Option<Instant>,
    /// When to refresh our entry at the relays: right after an address or
    /// reservation change.
    register_at: Option<Instant>,
    /// Connects waiting for a connection (dial under way).
    connecting: HashMap<PeerId, Vec<PendingConnect>>,
    /// Connects waiting for the mesh to come up (no usable address yet).
    waiting: Vec<(PeerId, PendingConnect)>,
    /// Endpoint lookups waiting for the relays' answers.
    finding: Vec<(String, Instant, oneshot::Sender<Found>)>,
    /// Connections being closed as dead: they answer no connect.
    stale: HashSet<ConnectionId>,
    /// Peers whose last connection closed: forgotten by the gate then,
    /// unless connected again.
    forget_at: Vec<(Instant, PeerId)>,
    metrics: Arc<crate::metrics::Metrics>,
    /// AutoNAT's latest verdict on this daemon's reachability.
    nat: &'static str,
    /// When a relay connection holding our reservation closed, lately.
    reservations_lost: Vec<Instant>,
    /// Peers reached over a relay and not (yet) directly: since when.
    relayed_since: HashMap<PeerId, Instant>,
}

impl EventLoop {
    /// The loop for `swarm` (listening already), and its handle.
    pub fn new(swarm: Swarm<Behaviour>, parts: Parts) -> (Self, Network) {
        let Parts {
            relays,
            gate,
            me,
            drops,
            refresh_every,
            prove_within,
            metrics,
        } = parts;
        let relay_peers = relays.iter().map(|r| r.peer).collect();
        let control = swarm.behaviour().stream.new_control();
        let (internal_tx, internal) = mpsc::unbounded_channel();
        let (tx, commands) = mpsc::unbounded_channel();
        let listen_addrs = swarm.listeners().cloned().collect();
        let external_addrs = swarm.external_addresses().cloned().collect();
        let (published, snapshot) = watch::channel(Arc::new(Snapshot::default()));
        let mut event_loop = Self {
            swarm,
            commands,
            published,
            dirty: true,
            conns: HashMap::new(),
            listen_addrs,
            external_addrs,
            relays,
            discovered: HashMap::new(),
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
            register_at: None,
            metrics,
            nat: "unknown",
            reservations_lost: Vec::new(),
            relayed_since: HashMap::new(),
            connecting: HashMap::new(),
            waiting: Vec::new(),
            finding: Vec::new(),
            stale: HashSet::new(),
            forget_at: Vec::new(),
        };
        event_loop.publish();
        let network = Network {
            commands: tx,
            snapshot,
        };
        (event_loop, network)
    }

    /// Run until [`Command::Shutdown`] or until every handle is gone.
    pub async fn run(mut self) {
        let mut refresh = tokio::time::interval(self.refresh_every);
        refresh.reset();
        self.retry_relays();
        loop {
            self.publish();
            let wake = self.next_wakeup();
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown) | None => break,
                    Some(cmd) => self.on_command(cmd),
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(internal) = self.internal.recv() => self.on_internal(internal),
                Some((peer, reason)) = self.drops.recv() => self.drop_peer(peer, &reason),
                _ = tokio::time::sleep_until(wake.into()) => self.on_timers(),
                _ = refresh.tick() => {
                    self.refresh_directory();
                    self.prune_discovered();
                }
            }
        }
        for (_, pending) in self.connecting.drain() {
            for p in pending {
                let _ = p.reply.send(Err(stopped(*self.swarm.local_peer_id())));
            }
        }
        tracing::debug!("mesh event loop stopped");
    }

    /// Publish the state if it changed.
    fn publish(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let snapshot = Snapshot {
            conns: self.conns.clone(),
            listen_addrs: self.listen_addrs.clone(),
            external_addrs: self.external_addrs.clone(),
            relays: self.relays.iter().map(RelaySlot::view).collect(),
            discovered: self.discovered.clone(),
            nat: self.nat,
            reservations_lost: self
                .reservations_lost
                .iter()
                .filter(|t| t.elapsed() < RESERVATIONS_LOST_WINDOW)
                .count() as u32,
        };
        self.published.send_replace(Arc::new(snapshot));
    }

    /// A snapshot of the current (unpublished) state, for decisions here.
    fn current(&mut self) -> Arc<Snapshot> {
        self.publish();
        self.published.borrow().clone()
    }

    /// The earliest time something is due.
    fn next_wakeup(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let relays = self
            .relays
            .iter()
            .filter(|r| r.idle())
            .map(|r| r.next_attempt);
        let fallbacks = self
            .relays
            .iter()
            .filter_map(|r| r.fallback.as_ref().map(|(t, _)| *t));
        let unproven = self.unproven.iter().map(|(t, _)| *t);
        let finding = self.finding.iter().map(|(_, t, _)| *t);
        let forget = self.forget_at.iter().map(|(t, _)| *t);
        relays
            .chain(fallbacks)
            .chain(unproven)
            .chain(finding)
            .chain(forget)
            .chain(self.register_at)
            .min()
            .unwrap_or(far)
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.forget_at.drain(..).partition(|(t, _)| *t <= now);
        self.forget_at = later;
        for (_, peer) in due {
            if !self.swarm.is_connected(&peer) {
                self.gate.forget(&peer);
            }
        }
        self.dial_fallbacks();
        self.retry_relays();
        self.drop_unproven();
        if self.register_at.is_some_and(|t| t <= Instant::now()) {
            self.register_at = None;
            self.refresh_directory();
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            self.finding.drain(..).partition(|(_, t, _)| *t <= now);
        self.finding = later;
        for (uuid, _, reply) in due {
            tracing::debug!(%uuid, "no member of the mesh serves this endpoint");
            let _ = reply.send(None);
        }
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
            Command::Connect {
                peer,
                addrs,
                fresh,
                reply,
            } => self.connect(
                peer,
                PendingConnect {
                    reply,
                    addrs,
                    fresh,
                },
            ),
            Command::FindEndpoint { uuid, reply } => {
                if let Some(found) = self.lookup(&uuid) {
                    let _ = reply.send(Some(found));
                    return;
                }
                self.discover();
                self.finding
                    .push((uuid, Instant::now() + FIND_ENDPOINT_WAIT, reply));
            }
            Command::Discover => self.discover(),
            Command::Drop { peer, reason } => self.drop_peer(peer, &reason),
            Command::Shutdown => {}
        }
    }

    fn lookup(&self, uuid: &str) -> Option<(PeerId, Vec<Multiaddr>)> {
        self.discovered
            .iter()
            .find(|(_, d)| d.uuid == uuid)
            .map(|(p, d)| (*p, d.addrs.clone()))
    }

    /// The live connection to `peer` with the best path.
    fn live_path(&self, peer: &PeerId) -> Option<PathInfo> {
        self.conns
            .get(peer)?
            .iter()
            .filter(|(id, _)| !self.stale.contains(id))
            .min_by_key(|(_, c)| (c.path == Path::Relayed, c.transport == Transport::Tcp))
            .map(|(_, c)| PathInfo {
                path: c.path,
                transport: c.transport,
            })
    }

    fn connect(&mut self, peer: PeerId, mut pending: PendingConnect) {
        if pending.fresh {
            // The peer's connections stopped answering: close them all.
            let dead: Vec<ConnectionId> = self
                .conns
                .get(&peer)
                .map(|c| c.keys().copied().collect())
                .unwrap_or_default();
            if !dead.is_empty() {
                tracing::info!(%peer, connections = dead.len(), "the connection to the peer stopped answering; closing it and dialing again");
            }
            for id in dead {
                self.stale.insert(id);
                self.swarm.close_connection(id);
            }
            self.gate.forget(&peer);
            pending.fresh = false;
        } else if let Some(path) = self.live_path(&peer) {
            let _ = pending.reply.send(Ok(path));
            return;
        }
        let snapshot = self.current();
        let candidates = snapshot.candidates(&peer, &pending.addrs);
        // Circuits through our relays need us joined there first; a direct
        // address can be dialed now.
        let usable: Vec<Multiaddr> = candidates
            .iter()
            .filter(|a| match circuit_relay(a) {
                Some(relay) => self
                    .relays
                    .iter()
                    .find(|r| r.peer == relay)
                    .is_none_or(|r| r.joined),
                None => true,
            })
            .cloned()
            .collect();
        if usable.is_empty() {
            if candidates.is_empty() && snapshot.not_ready().is_none() {
                let _ = pending.reply.send(Err(MeshError::Unreachable {
                    peer,
                    reason: "no address is known for it: the key carries none, the relays list none, and this daemon has no relay".into(),
                }));
            } else {
                tracing::debug!(%peer, "waiting for the mesh to come up before dialing");
                self.waiting.push((peer, pending));
            }
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(usable)
            .condition(PeerCondition::Always)
            .build();
        let dialing = self.connecting.contains_key(&peer);
        self.connecting.entry(peer).or_default().push(pending);
        if dialing {
            return;
        }
        if let Err(e) = self.swarm.dial(opts) {
            self.connect_failed(peer, &describe_dial_error(&e));
        } else {
            tracing::debug!(%peer, "dialing");
        }
    }

    /// Retry the connects that waited for the mesh.
    fn retry_waiting(&mut self) {
        for (peer, pending) in std::mem::take(&mut self.waiting) {
            if pending.reply.is_closed() {
                continue;
            }
            self.connect(peer, pending);
        }
    }

    fn connect_failed(&mut self, peer: PeerId, reason: &str) {
        for p in self.connecting.remove(&peer).unwrap_or_default() {
            let _ = p.reply.send(Err(MeshError::Unreachable {
                peer,
                reason: reason.to_string(),
            }));
        }
    }

    /// For every relay without a reservation whose backoff is over: connect
    /// (all its addresses at once), then join its directory, then reserve.
    fn retry_relays(&mut self) {
        let now = Instant::now();
        for i in 0..self.relays.len() {
            let slot = &self.relays[i];
            if !slot.idle() || slot.next_attempt > now {
                continue;
            }
            let relay = slot.peer;
            if !self.swarm.is_connected(&relay) {
                // QUIC first; the other addresses follow after a head start
                // unless QUIC connected by then (happy eyeballs).
                let (quic, others): (Vec<Multiaddr>, Vec<Multiaddr>) = slot
                    .addrs
                    .iter()
                    .cloned()
                    .partition(|a| transport_of(a) == Some(Transport::Quic));
                let (first, later) = if quic.is_empty() {
                    (others, Vec::new())
                } else {
                    (quic, others)
                };
                let opts = DialOpts::peer_id(relay)
                    .addresses(first)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        tracing::debug!(%relay, "dialing the relay");
                        self.relays[i].dialing = true;
                        if !later.is_empty() {
                            self.relays[i].fallback = Some((now + HAPPY_EYEBALLS, later));
                        }
                    }
                    Err(DialError::DialPeerConditionFalse(_)) => self.relays[i].dialing = true,
                    Err(e) => {
                        tracing::warn!(%relay, "cannot dial the relay: {}", describe_dial_error(&e));
                        self.relays[i].back_off();
                    }
                }
                self.dirty = true;
                continue;
            }
            if !slot.joined {
                self.join(i);
                continue;
            }
            let circuit = slot.addr().clone().with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit) {
                Ok(id) => {
                    tracing::info!(relay = %self.relays[i].addr(), "requesting a reservation");
                    self.relays[i].listener = Some(id);
                }
                Err(e) => {
                    tracing::warn!(relay = %self.relays[i].addr(), error = %e, "cannot listen through the relay");
                    self.relays[i].back_off();
                }
            }
            self.dirty = true;
        }
    }

    /// Dial relays' other addresses once QUIC's head start is over and
    /// it has not connected (UDP blocked, or slow).
    fn dial_fallbacks(&mut self) {
        let now = Instant::now();
        for i in 0..self.relays.len() {
            let due = self.relays[i]
                .fallback
                .as_ref()
                .is_some_and(|(t, _)| *t <= now);
            if !due {
                continue;
            }
            let Some((_, addrs)) = self.relays[i].fallback.take() else {
                continue;
            };
            let relay = self.relays[i].peer;
            if self.swarm.is_connected(&relay) {
                continue;
            }
            tracing::debug!(%relay, "no QUIC connection to the relay yet; dialing its other addresses too");
            let opts = DialOpts::peer_id(relay)
                .addresses(addrs)
                .condition(PeerCondition::Disconnected)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => self.relays[i].dialing = true,
                Err(e) => {
                    tracing::debug!(%relay, "cannot dial the relay: {}", describe_dial_error(&e))
                }
            }
        }
    }

    /// Drop connected peers that never proved membership in time.
    fn drop_unproven(&mut self) {
        let now = Instant::now();
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
        self.metrics.refused_peers.inc();
        self.gate.forget(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Present our credential to relay slot `i` (in a task of its own).
    fn join(&mut self, i: usize) {
        self.relays[i].joining = true;
        self.dirty = true;
        let relay = self.relays[i].peer;
        let addrs = self.current().advertised();
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
        let Some(i) = self.relays.iter().position(|r| r.peer == relay) else {
            return;
        };
        self.dirty = true;
        self.relays[i].joining = false;
        match result {
            Ok(welcomed) => {
                if !std::mem::replace(&mut self.relays[i].joined, true) {
                    tracing::info!(%relay, members = welcomed.members.len(), "joined the mesh directory at the relay");
                }
                self.on_welcomed(welcomed);
                self.retry_relays();
                self.retry_waiting();
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
                self.relays[i].back_off();
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
            self.discovered.remove(&peer);
        }
        let now = Instant::now();
        for (peer, addrs) in w.members {
            for a in &addrs {
                self.swarm.add_peer_address(peer, a.clone());
            }
            if !self.discovered.contains_key(&peer) && self.discovered.len() >= MAX_DISCOVERED {
                continue;
            }
            let d = self.discovered.entry(peer).or_insert_with(|| Discovered {
                addrs: Vec::new(),
                uuid: proxymesh::membership::endpoint_uuid(&peer).to_string(),
                seen: now,
            });
            d.seen = now;
            for a in addrs {
                if !d.addrs.contains(&a) && d.addrs.len() < proxymesh::membership::wire::MAX_ADDRS {
                    d.addrs.push(a);
                }
            }
        }
        self.dirty = true;
        // Endpoint lookups the answer settles.
        for (uuid, deadline, reply) in std::mem::take(&mut self.finding) {
            match self.lookup(&uuid) {
                Some(found) => {
                    let _ = reply.send(Some(found));
                }
                None => self.finding.push((uuid, deadline, reply)),
            }
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
        let joined: Vec<usize> = (0..self.relays.len())
            .filter(|&i| self.relays[i].joined && !self.relays[i].joining)
            .collect();
        for i in joined {
            self.join(i);
        }
    }

    fn prune_discovered(&mut self) {
        let ttl = self.refresh_every * DISCOVERED_TTL_REFRESHES;
        let before = self.discovered.len();
        self.discovered.retain(|_, d| d.seen.elapsed() < ttl);
        self.dirty |= self.discovered.len() != before;
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } if !self.relays.iter().any(|r| r.listener == Some(listener_id)) => {
                tracing::info!(%address, "listening");
                self.listen_addrs.push(address);
                self.dirty = true;
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.dirty = true;
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
                if !self.external_addrs.contains(&address) {
                    self.external_addrs.push(address);
                }
                self.dirty = true;
                self.register_at = Some(Instant::now());
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                let address = self.without_own_id(address);
                self.external_addrs.retain(|a| a != &address);
                self.dirty = true;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connection(peer_id, connection_id, &endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, "connection closed");
                self.stale.remove(&connection_id);
                if let Some(c) = self.conns.get_mut(&peer_id) {
                    c.remove(&connection_id);
                    if c.is_empty() {
                        self.conns.remove(&peer_id);
                        self.relayed_since.remove(&peer_id);
                    }
                }
                self.dirty = true;
                if num_established == 0 {
                    // Not at once: a connection replacing this one (the
                    // punched one, while the peer closes the relayed one
                    // first) may be a moment away, and the peer will not
                    // prove itself again on it.
                    self.forget_at
                        .push((Instant::now() + FORGET_AFTER, peer_id));
                    if self.relay_peers.contains(&peer_id) {
                        self.on_relay_lost(peer_id);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let Some(slot) = self.relays.iter_mut().find(|r| r.peer == peer) {
                    if slot.dialing && !self.swarm.is_connected(&peer) && slot.fallback.is_none() {
                        slot.dialing = false;
                        slot.back_off();
                        self.dirty = true;
                        tracing::warn!(relay = %peer, "cannot reach the relay on any of its addresses: {}", describe_dial_error(&error));
                    }
                } else if self.connecting.contains_key(&peer) && self.live_path(&peer).is_none() {
                    let reason = describe_dial_error(&error);
                    tracing::debug!(%peer, %reason, "dial failed");
                    self.connect_failed(peer, &reason);
                }
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
            // whatever transport the circuit address names.
            let relay = circuit_relay(&remote);
            let slot = self
                .relays
                .iter()
                .find(|r| r.connected.is_some() && relay.is_none_or(|p| p == r.peer));
            match (relay, slot) {
                (_, Some(slot)) => transport_of(slot.addr()),
                (Some(relay), None) => self.live_path(&relay).map(|p| p.transport),
                (None, None) => None,
            }
        }
        .unwrap_or(Transport::Tcp);
        let info = ConnInfo {
            path,
            transport,
            remote: remote.clone(),
            rtt: None,
        };
        if !self.relay_peers.contains(&peer) {
            match path {
                Path::Relayed => {
                    let first = self.conns.get(&peer).is_none_or(HashMap::is_empty);
                    if first {
                        self.relayed_since.insert(peer, Instant::now());
                    }
                }
                Path::Direct => {
                    if let Some(since) = self.relayed_since.remove(&peer) {
                        self.metrics
                            .time_to_direct
                            .observe(since.elapsed().as_secs_f64());
                    }
                }
            }
        }
        self.conns.entry(peer).or_default().insert(id, info);
        self.dirty = true;
        if let Some(i) = self.relays.iter().position(|r| r.peer == peer) {
            let slot = &mut self.relays[i];
            slot.dialing = false;
            slot.fallback = None;
            if slot.connected.is_none() || path == Path::Direct {
                // Keep whichever transport connected (happy eyeballs).
                let same = |a: &&Multiaddr| transport_of(a) == transport_of(&remote);
                slot.connected = slot.addrs.iter().find(same).cloned();
                tracing::info!(relay = %peer, %remote, "connected to the relay");
            }
            self.retry_relays();
            return;
        }
        tracing::info!(%peer, %remote, ?path, ?transport, "connected");
        if !self.gate.policy().is_open() {
            self.unproven
                .push((Instant::now() + self.prove_within, peer));
        }
        if path == Path::Direct {
            self.close_relayed(peer);
        }
        if let Some(pending) = self.connecting.remove(&peer) {
            let path = PathInfo { path, transport };
            for p in pending {
                let _ = p.reply.send(Ok(path));
            }
        }
    }

    /// A direct connection to `peer` is up: close its relayed ones, so that
    /// new streams run direct (`libp2p-stream` would pick either);
    /// transfers under way on them resume on the direct one.
    fn close_relayed(&mut self, peer: PeerId) {
        let relayed: Vec<ConnectionId> = self
            .conns
            .get(&peer)
            .into_iter()
            .flatten()
            .filter(|(_, c)| c.path == Path::Relayed)
            .map(|(id, _)| *id)
            .collect();
        if !relayed.is_empty() {
            tracing::info!(%peer, "direct connection up; closing the relayed one");
        }
        for id in relayed {
            self.swarm.close_connection(id);
        }
    }

    fn on_listener_closed(&mut self, listener: ListenerId, error: Option<String>) {
        let Some(slot) = self
            .relays
            .iter_mut()
            .find(|r| r.listener == Some(listener))
        else {
            return;
        };
        slot.listener = None;
        slot.reserved = false;
        let circuit = slot.circuit.take();
        slot.back_off();
        let addr = slot.addr().clone();
        self.dirty = true;
        if let Some(c) = &circuit {
            self.external_addrs.retain(|a| a != c);
        }
        tracing::warn!(relay = %addr, error = error.as_deref().unwrap_or("closed"), "relay reservation lost; will re-reserve");
        if let Some(c) = circuit {
            let mut own = c.clone();
            own.push(Protocol::P2p(*self.swarm.local_peer_id()));
            self.swarm.remove_external_address(&own);
        }
    }

    fn on_relay_lost(&mut self, relay: PeerId) {
        let Some(slot) = self.relays.iter_mut().find(|r| r.peer == relay) else {
            return;
        };
        if slot.reserved {
            // Often, soon after reserving: another daemon with our identity
            // reserving at the same relay (which keeps the newest).
            let now = Instant::now();
            self.reservations_lost
                .retain(|t| now.duration_since(*t) < RESERVATIONS_LOST_WINDOW);
            self.reservations_lost.push(now);
        }
        // A new connection must join again, on whichever transport works then.
        slot.joined = false;
        slot.connected = None;
        self.dirty = true;
        if let Some(l) = slot.listener {
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
                let Some(slot) = self.relays.iter_mut().find(|r| r.peer == relay_peer_id) else {
                    return;
                };
                slot.reserved = true;
                slot.backoff = BACKOFF_MIN;
                let circuit = slot.addr().clone().with(Protocol::P2pCircuit);
                slot.circuit = Some(circuit.clone());
                if !self.external_addrs.contains(&circuit) {
                    self.external_addrs.push(circuit.clone());
                }
                self.dirty = true;
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, %circuit, "reservation accepted");
                }
                // Refresh our directory entries (now with the circuit).
                self.register_at = Some(Instant::now());
                self.retry_waiting();
            }
            BehaviourEvent::Relay(event) => tracing::debug!(?event, "relay client"),
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    self.metrics
                        .hole_punches
                        .get_or_create(&crate::metrics::OutcomeLabel {
                            outcome: "succeeded",
                        })
                        .inc();
                    tracing::info!(peer = %remote_peer_id, "hole punch succeeded")
                }
                Err(error) => {
                    self.metrics
                        .hole_punches
                        .get_or_create(&crate::metrics::OutcomeLabel { outcome: "failed" })
                        .inc();
                    tracing::info!(peer = %remote_peer_id, %error, "hole punch failed; transfers with this peer stay on the relayed connection");
                }
            },
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Ok(rtt),
            }) => {
                if let Some(c) = self
                    .conns
                    .get_mut(&peer)
                    .and_then(|c| c.get_mut(&connection))
                {
                    c.rtt = Some(rtt);
                    self.dirty = true;
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                tracing::debug!(%peer_id, observed = %info.observed_addr, "identified");
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "reachability changed");
                self.nat = match new {
                    autonat::NatStatus::Public(_) => "public",
                    autonat::NatStatus::Private => "private",
                    autonat::NatStatus::Unknown => "unknown",
                };
                self.dirty = true;
            }
            _ => {}
        }
    }
}

/// A dial failure in a sentence a user understands (libp2p's own text
/// nests transport internals).
pub fn describe_dial_error(e: &DialError) -> String {
    match e {
        DialError::NoAddresses => "no address is known for it".into(),
        DialError::LocalPeerId { .. } => "that is this daemon's own peer ID".into(),
        DialError::WrongPeerId { obtained, .. } => {
            format!("the address answered as another daemon ({obtained}); the key or directory entry is stale")
        }
        DialError::Denied { cause } => format!("this daemon refused the connection ({cause})"),
        DialError::Aborted => "the dial was cancelled".into(),
        DialError::DialPeerConditionFalse(_) => "a dial is already under way".into(),
        DialError::Transport(errors) => {
            let each: Vec<String> = errors
                .iter()
                .map(|(addr, err)| {
                    let text = err.to_string();
                    let why = if is_relayed(addr) {
                        if text.contains("NO_RESERVATION") || text.contains("NoReservation") {
                            "the relay holds no reservation for it (is its daemon running?)"
                        } else if text.contains("PERMISSION_DENIED")
                            || text.contains("PermissionDenied")
                        {
                            "the relay refused the circuit (not a member of a mesh it serves?)"
                        } else {
                            "no circuit through the relay"
                        }
                    } else if text.contains("imed out") || text.contains("Timeout") {
                        "timed out (UDP or the port blocked?)"
                    } else if text.contains("refused") {
                        "connection refused"
                    } else {
                        "unreachable"
                    };
                    format!("{addr}: {why}")
                })
                .collect();
            format!(
                "none of its {} addresses answered ({})",
                errors.len(),
                each.join("; ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_group_by_peer_and_need_a_peer_id() {
        let r = PeerId::random();
        let a: Multiaddr = format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{r}")
            .parse()
            .unwrap();
        let b: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{r}").parse().unwrap();
        let slots = relay_slots(&[a.clone(), b]).unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].addrs.len(), 2);
        assert_eq!(slots[0].addr(), &a);
        assert!(relay_slots(&["/ip4/10.0.0.1/tcp/4001".parse().unwrap()]).is_err());
    }

    #[test]
    fn best_path_prefers_direct_then_quic() {
        let p = PeerId::random();
        let mut s = Snapshot::default();
        let conn = |path, transport| ConnInfo {
            path,
            transport,
            remote: Multiaddr::empty(),
            rtt: None,
        };
        let path = |path, transport| Some(PathInfo { path, transport });
        s.conns.entry(p).or_default().insert(
            ConnectionId::new_unchecked(1),
            conn(Path::Relayed, Transport::Quic),
        );
        assert_eq!(s.best(&p), path(Path::Relayed, Transport::Quic));
        s.conns.entry(p).or_default().insert(
            ConnectionId::new_unchecked(2),
            conn(Path::Direct, Transport::Tcp),
        );
        assert_eq!(s.best(&p), path(Path::Direct, Transport::Tcp));
        s.conns.entry(p).or_default().insert(
            ConnectionId::new_unchecked(3),
            conn(Path::Direct, Transport::Quic),
        );
        assert_eq!(s.best(&p), path(Path::Direct, Transport::Quic));
        assert_eq!(s.paths(&p), (true, true));
    }

    #[test]
    fn candidates_rebuild_circuits_on_our_relays() {
        let (relay, other, peer) = (PeerId::random(), PeerId::random(), PeerId::random());
        let ours: Vec<Multiaddr> = vec![
            format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{relay}")
                .parse()
                .unwrap(),
            format!("/ip4/10.0.0.1/tcp/4001/p2p/{relay}")
                .parse()
                .unwrap(),
        ];
        let mut s = Snapshot {
            relays: relay_slots(&ours)
                .unwrap()
                .iter()
                .map(RelaySlot::view)
                .collect(),
            ..Default::default()
        };
        // No hint, no reservation: nothing to dial.
        assert!(s.candidates(&peer, &[]).is_empty());
        assert!(s.not_ready().unwrap().contains("not reached"));
        // A key's circuit through our relay (over QUIC): also through its TCP address.
        let key: Multiaddr = format!("{}/p2p-circuit/p2p/{peer}", ours[0])
            .parse()
            .unwrap();
        let got = s.candidates(&peer, std::slice::from_ref(&key));
        assert!(got.contains(&key));
        assert!(got.contains(&ours[1].clone().with(Protocol::P2pCircuit)));
        // A circuit through a relay we do not use is kept as it is.
        let foreign: Multiaddr = format!("/ip4/10.9.9.9/tcp/4001/p2p/{other}/p2p-circuit")
            .parse()
            .unwrap();
        assert_eq!(
            s.candidates(&peer, std::slice::from_ref(&foreign)),
            vec![foreign]
        );
        // No hint, but a reservation: through every reserved relay.
        s.relays[0].reserved = true;
        assert_eq!(s.candidates(&peer, &[]).len(), 2);
        assert!(s.not_ready().is_none());
    }
}
