//! Builds the relay's swarm and runs it in a task of its own.
//!
//! [`run`] returns once the relay listens on both QUIC and TCP, with a
//! [`RunningRelay`] that knows the relay's peer ID and dialable addresses and
//! can stop it. Exactly one task owns the [`Swarm`]; everything else talks to
//! it through the shutdown handle.
//!
//! # External addresses
//!
//! The relay v2 server grants no reservation until the node has a confirmed
//! external address (one it is sure peers can reach). With
//! `--external-address`, those addresses are confirmed at start. Without, each
//! concrete listen address is confirmed as it appears (for a `0.0.0.0` or
//! `::` listener, every per-interface address) and withdrawn when it goes
//! away, so a relay on loopback, a LAN or a host with a public IP works out of
//! the box. Behind a NAT, pass the public address explicitly. AutoNAT may
//! also confirm addresses that peers observe, and identify tells peers about
//! them.
//!
//! # Members only
//!
//! Besides the swarm task, a relay runs the member-protocol server
//! (in [`crate::members`]) and, with revocation files, a task polling
//! them ([`crate::revocations`]). Both send their verdicts to the swarm
//! task over a channel: it closes the connections of refused
//! and revoked peers. The swarm task also forgets a peer when its last
//! connection closes, and closes the connections of peers that have not
//! proven membership within the hello deadline of connecting (30 s,
//! [`crate::config::MembershipConfig::hello_deadline`]; or whose
//! credential expired). Reservations and circuits are refused to
//! non-members by the relay behaviour itself ([`crate::behaviour`]).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ListenError, SwarmEvent};
use libp2p::{
    autonat, identify, noise, relay, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use proxymesh::membership::{wire, Policy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::behaviour::{RelayBehaviour, RelayBehaviourEvent};
use crate::config::RelayConfig;
use crate::members::{self, Members};
use crate::revocations::{self, RevocationFiles};

/// How long to wait for both listeners before giving up on starting.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// After both listeners on a wildcard address have reported an address, how
/// long to wait for the remaining per-interface addresses before reporting.
const WILDCARD_SETTLE: Duration = Duration::from_millis(300);
/// How long a connection without active protocols stays open; long enough
/// for a daemon to say hello and reserve without redialing.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// At most how long between checks of connected peers against the hello
/// deadline ([`crate::config::MembershipConfig::hello_deadline`]).
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Each peer's refused reservations and circuits are logged at most once
/// per this interval (the rest are counted).
const DENIAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the member server and the revocation watcher ask of the swarm task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Close every connection of this peer (refused or revoked).
    Disconnect(PeerId),
    /// This peer was just admitted; forget it again if it has meanwhile
    /// disconnected (its hello raced with the close).
    Admitted(PeerId),
}

/// Lets one log line per key through per interval and counts the rest.
#[derive(Debug)]
pub(crate) struct LogLimiter<K> {
    every: Duration,
    last: HashMap<K, (Instant, u64)>,
}

impl<K: Hash + Eq> LogLimiter<K> {
    /// At most one line per key and `every`.
    pub(crate) fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: HashMap::new(),
        }
    }

    /// Whether to log for `key` now: `Some(lines suppressed since the last
    /// one)`, or `None` to stay quiet.
    pub(crate) fn allow(&mut self, key: K, now: Instant) -> Option<u64> {
        if self.last.len() >= 4096 {
            let every = self.every;
            self.last
                .retain(|_, (at, _)| now.duration_since(*at) < every);
        }
        match self.last.entry(key) {
            Entry::Occupied(mut e) => {
                let (at, suppressed) = e.get_mut();
                if now.duration_since(*at) < self.every {
                    *suppressed += 1;
                    None
                } else {
                    let n = *suppressed;
                    *e.get_mut() = (now, 0);
                    Some(n)
                }
            }
            Entry::Vacant(e) => {
                e.insert((now, 0));
                Some(0)
            }
        }
    }
}

/// Aborts the relay's helper tasks when the swarm task ends.
struct Helpers(Vec<JoinHandle<()>>);

impl Drop for Helpers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A relay running in a background task.
#[derive(Debug)]
pub struct RunningRelay {
    peer_id: PeerId,
    addresses: Vec<Multiaddr>,
    members: Arc<Members>,
    shutdown: ShutdownHandle,
    task: JoinHandle<Result<()>>,
}

/// Stops a [`RunningRelay`] from anywhere; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Ask the relay to stop; its connections are closed. Idempotent.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

impl RunningRelay {
    /// The relay's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Dialable addresses, each ending in `/p2p/<peer id>`: the external
    /// addresses if configured, else the listen addresses (QUIC first).
    pub fn addresses(&self) -> &[Multiaddr] {
        &self.addresses
    }

    /// The first dialable QUIC address.
    pub fn quic_address(&self) -> Option<&Multiaddr> {
        self.addresses
            .iter()
            .find(|a| a.iter().any(|p| p == Protocol::QuicV1))
    }

    /// The first dialable TCP address.
    pub fn tcp_address(&self) -> Option<&Multiaddr> {
        self.addresses
            .iter()
            .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
    }

    /// The relay's gate and member directories (read-only use: who is a
    /// member, who is listed).
    pub fn members(&self) -> &Arc<Members> {
        &self.members
    }

    /// A handle that stops the relay.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Run until the relay stops (through a [`ShutdownHandle`], or because
    /// every listener failed); the error says why it stopped on its own.
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| anyhow!("relay task failed: {e}"))?
    }

    /// Stop the relay and wait until it has.
    pub async fn shutdown(self) -> Result<()> {
        self.shutdown.shutdown();
        self.wait().await
    }
}

/// Load (or create) the identity in `config.identity` and start the relay.
/// Must be called within a Tokio runtime.
pub async fn run(config: RelayConfig) -> Result<RunningRelay> {
    config.validate()?;
    let keypair = proxymesh::keyfile::load_or_create(&config.identity).map_err(|e| anyhow!(e))?;
    run_with_keypair(config, keypair).await
}

/// Start the relay with `keypair` as its identity (`config.identity` is not
/// read). Returns once it listens on both QUIC and TCP; by then the
/// revocation files have been read once.
pub async fn run_with_keypair(config: RelayConfig, keypair: Keypair) -> Result<RunningRelay> {
    config.validate()?;
    let peer_id = keypair.public().to_peer_id();
    let external = config
        .external_addresses
        .iter()
        .map(|a| without_own_p2p(a, peer_id))
        .collect::<Result<Vec<_>>>()?;

    let membership = &config.membership;
    match &membership.policy {
        Policy::Open => tracing::warn!(
            "--open-mesh: this relay serves ANYONE who can reach it, without credentials: \
             anyone may reserve, relay traffic through it and list every peer. \
             Use it only in a lab; pass --mesh MESH_ID to serve a closed mesh"
        ),
        Policy::Meshes(meshes) => {
            for mesh in meshes {
                tracing::info!(%mesh, "serving the members of mesh");
            }
        }
    }
    let members = Arc::new(Members::new(
        membership.policy.clone(),
        membership.max_members,
    ));
    let mut revocation_files = RevocationFiles::new(membership.revocation_files.clone());
    // Before anyone is served, so a revoked peer never slips in at start.
    revocation_files.poll(&members);

    let metrics = Arc::new(crate::metrics::RelayMetrics::new());
    let mut swarm = build_swarm(keypair, &config, members.clone(), &metrics)?;
    let metrics_server = match config.metrics {
        Some(addr) => {
            let (bound, task) = crate::metrics::serve(addr, metrics.clone()).await?;
            tracing::info!(addr = %bound, "serving metrics at /metrics");
            Some(task)
        }
        None => None,
    };
    let incoming = swarm
        .behaviour()
        .stream
        .new_control()
        .accept(StreamProtocol::new(wire::PROTOCOL))
        .map_err(|e| anyhow!("cannot serve the member protocol: {e}"))?;
    let (command_tx, commands) = mpsc::unbounded_channel();
    let mut helpers = vec![tokio::spawn(members::serve(
        incoming,
        members.clone(),
        command_tx.clone(),
        membership.max_streams,
    ))];
    if !revocation_files.is_empty() {
        helpers.push(tokio::spawn(watch_revocations(
            revocation_files,
            members.clone(),
            command_tx,
        )));
    }
    let helpers = Helpers(helpers);

    let (tcp_addr, quic_addr) = listen_addresses(config.host, config.port);
    // TCP listeners share ports (SO_REUSEPORT, for hole punching), so a port
    // taken by another libp2p node shows up as the QUIC bind failing.
    let tcp_listener = swarm.listen_on(tcp_addr).map_err(|e| {
        anyhow!(
            "cannot listen on TCP {}:{}: {}",
            config.host,
            config.port,
            innermost(&e)
        )
    })?;
    let quic_listener = swarm.listen_on(quic_addr).map_err(|e| {
        anyhow!(
            "cannot listen on UDP (QUIC) {}:{}: {}",
            config.host,
            config.port,
            innermost(&e)
        )
    })?;
    for address in &external {
        swarm.add_external_address(address.clone());
        tracing::info!(%address, "external address");
    }

    let (ready_tx, ready_rx) = oneshot::channel();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let driver = Driver {
        swarm,
        members: members.clone(),
        commands,
        connected: HashMap::new(),
        connections: HashMap::new(),
        hello_deadline: membership.hello_deadline,
        denials: LogLimiter::new(DENIAL_LOG_INTERVAL),
        limit_log: LogLimiter::new(DENIAL_LOG_INTERVAL),
        _helpers: helpers,
        peer_id,
        tcp_listener,
        quic_listener,
        tcp_addrs: Vec::new(),
        quic_addrs: Vec::new(),
        external,
        wildcard: config.host.is_unspecified(),
        ready: Some(ready_tx),
        metrics,
        _metrics_server: metrics_server.map(AbortOnDrop),
    };
    let task = tokio::spawn(driver.run(shutdown_rx));
    let shutdown = ShutdownHandle(Arc::new(shutdown_tx));
    match ready_rx.await {
        Ok(addresses) => Ok(RunningRelay {
            peer_id,
            addresses,
            members,
            shutdown,
            task,
        }),
        // The task ended before it was ready: its result says why.
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => bail!("relay stopped while starting"),
            Err(e) => bail!("relay task failed while starting: {e}"),
        },
    }
}

/// Poll the revocation files every [`revocations::POLL_INTERVAL`]; revoked
/// peers are disconnected.
async fn watch_revocations(
    mut files: RevocationFiles,
    members: Arc<Members>,
    commands: mpsc::UnboundedSender<Command>,
) {
    loop {
        tokio::time::sleep(revocations::POLL_INTERVAL).await;
        let m = members.clone();
        // Reading and verifying a long list is blocking work.
        let Ok((back, revoked)) = tokio::task::spawn_blocking(move || {
            let revoked = files.poll(&m);
            (files, revoked)
        })
        .await
        else {
            return;
        };
        files = back;
        for peer in revoked {
            if commands.send(Command::Disconnect(peer)).is_err() {
                return;
            }
        }
    }
}

fn build_swarm(
    keypair: Keypair,
    config: &RelayConfig,
    members: Arc<Members>,
    metrics: &crate::metrics::RelayMetrics,
) -> Result<Swarm<RelayBehaviour>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .context("cannot set up the TCP transport")?
        .with_quic()
        .with_dns()
        .context("cannot set up DNS resolution (is /etc/resolv.conf readable?)")?
        // Bytes in and out (relayed bytes count twice), on --metrics.
        .with_bandwidth_metrics(
            metrics
                .registry()
                .sub_registry_with_prefix("proxymesh_relay"),
        )
        .with_behaviour(|key| RelayBehaviour::new(key, config, members))
        .map_err(|e| anyhow!("cannot set up the relay protocols: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

/// The TCP and QUIC listen multiaddrs for `host:port`.
fn listen_addresses(host: IpAddr, port: u16) -> (Multiaddr, Multiaddr) {
    let ip = Multiaddr::empty().with(Protocol::from(host));
    (
        ip.clone().with(Protocol::Tcp(port)),
        ip.with(Protocol::Udp(port)).with(Protocol::QuicV1),
    )
}

/// The innermost cause of `error`, which transport errors wrap several times.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}

/// `address` without a trailing `/p2p/<id>`, which must name `peer_id`.
fn without_own_p2p(address: &Multiaddr, peer_id: PeerId) -> Result<Multiaddr> {
    let mut address = address.clone();
    match address.iter().last() {
        Some(Protocol::P2p(id)) if id == peer_id => {
            address.pop();
            Ok(address)
        }
        Some(Protocol::P2p(id)) => {
            bail!("--external-address {address} names peer {id}, but this relay is {peer_id}")
        }
        _ => Ok(address),
    }
}

/// `address` with `/p2p/<peer_id>` appended.
fn with_p2p(address: &Multiaddr, peer_id: PeerId) -> Multiaddr {
    address.clone().with(Protocol::P2p(peer_id))
}

/// The task that owns the swarm.
struct Driver {
    swarm: Swarm<RelayBehaviour>,
    members: Arc<Members>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Connected peers, with when their first current connection opened.
    connected: HashMap<PeerId, Instant>,
    /// Each connected peer's connections, oldest first.
    connections: HashMap<PeerId, Vec<libp2p::swarm::ConnectionId>>,
    /// How long a connected peer has to prove membership.
    hello_deadline: Duration,
    /// Rate-limits the logging of refused reservations and circuits.
    denials: LogLimiter<(PeerId, &'static str)>,
    /// Rate-limits the logging of connections refused by the limits.
    limit_log: LogLimiter<String>,
    _helpers: Helpers,
    peer_id: PeerId,
    tcp_listener: ListenerId,
    quic_listener: ListenerId,
    tcp_addrs: Vec<Multiaddr>,
    quic_addrs: Vec<Multiaddr>,
    /// Configured external addresses; empty means "use the listen addresses".
    external: Vec<Multiaddr>,
    /// Listening on 0.0.0.0 / ::, so several addresses per listener arrive.
    wildcard: bool,
    /// Receives the dialable addresses once both listeners are up.
    ready: Option<oneshot::Sender<Vec<Multiaddr>>>,
    metrics: Arc<crate::metrics::RelayMetrics>,
    _metrics_server: Option<AbortOnDrop>,
}

/// Aborts the task when dropped (the relay stopped).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Driver {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let startup_deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut settle_deadline: Option<Instant> = None;
        let every = SWEEP_INTERVAL
            .min(self.hello_deadline / 2)
            .max(Duration::from_millis(100));
        let mut sweep = tokio::time::interval(every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let closed_mesh = !self.members.gate().policy().is_open();
        loop {
            let report_at = if self.ready.is_none() {
                None
            } else if self.tcp_addrs.is_empty() || self.quic_addrs.is_empty() {
                Some(startup_deadline)
            } else {
                let settle = settle_deadline.get_or_insert_with(|| {
                    if self.wildcard {
                        Instant::now() + WILDCARD_SETTLE
                    } else {
                        Instant::now()
                    }
                });
                Some(*settle)
            };
            let timer = async {
                match report_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!("relay shutting down");
                        return Ok(());
                    }
                }
                () = timer => {
                    if self.tcp_addrs.is_empty() || self.quic_addrs.is_empty() {
                        bail!(
                            "not listening on both QUIC and TCP after {} s (QUIC: {:?}, TCP: {:?})",
                            STARTUP_TIMEOUT.as_secs(),
                            self.quic_addrs,
                            self.tcp_addrs
                        );
                    }
                    self.report_ready();
                }
                event = self.swarm.select_next_some() => {
                    self.on_event(event)?;
                    self.metrics.peers.set(self.connected.len() as i64);
                    self.metrics.members.set(self.members.listed() as i64);
                }
                Some(command) = self.commands.recv() => self.on_command(command),
                _ = sweep.tick(), if closed_mesh => self.sweep(),
            }
        }
    }

    fn report_ready(&mut self) {
        let Some(ready) = self.ready.take() else {
            return;
        };
        let announced = if self.external.is_empty() {
            self.quic_addrs
                .iter()
                .chain(&self.tcp_addrs)
                .collect::<Vec<_>>()
        } else {
            self.external.iter().collect()
        };
        let addresses = announced
            .into_iter()
            .map(|a| with_p2p(a, self.peer_id))
            .collect::<Vec<_>>();
        tracing::info!(peer_id = %self.peer_id, addresses = ?addresses, "relay ready");
        // The caller may have given up waiting; then nobody needs the list.
        let _ = ready.send(addresses);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Disconnect(peer) => {
                if self.swarm.disconnect_peer_id(peer).is_ok() {
                    tracing::debug!(%peer, "closing the connections of a refused peer");
                }
            }
            Command::Admitted(peer) => {
                if !self.swarm.is_connected(&peer) {
                    self.members.forget(&peer);
                }
            }
        }
    }

    /// Close the connections of peers that did not prove membership within
    /// the hello deadline, or whose membership ran out.
    fn sweep(&mut self) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let overdue: Vec<PeerId> = self
            .connected
            .iter()
            .filter(|(peer, since)| {
                now.duration_since(**since) >= self.hello_deadline
                    && !self.members.is_member(peer, wall)
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in overdue {
            tracing::warn!(
                %peer,
                "no valid membership (no accepted hello within {} s of connecting, or the credential expired); disconnecting",
                self.hello_deadline.as_secs_f64()
            );
            // Not again before another deadline has passed.
            self.connected.insert(peer, now);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn listener_addrs(&mut self, listener: ListenerId) -> Option<&mut Vec<Multiaddr>> {
        if listener == self.tcp_listener {
            Some(&mut self.tcp_addrs)
        } else if listener == self.quic_listener {
            Some(&mut self.quic_addrs)
        } else {
            None
        }
    }

    fn on_event(&mut self, event: SwarmEvent<RelayBehaviourEvent>) -> Result<()> {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(%address, "listening");
                if let Some(addrs) = self.listener_addrs(listener_id) {
                    addrs.push(address.clone());
                }
                if self.external.is_empty() {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::ExpiredListenAddr {
                listener_id,
                address,
            } => {
                tracing::warn!(%address, "no longer listening");
                if let Some(addrs) = self.listener_addrs(listener_id) {
                    addrs.retain(|a| *a != address);
                }
                if self.external.is_empty() {
                    self.swarm.remove_external_address(&address);
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                for address in &addresses {
                    if self.external.is_empty() {
                        self.swarm.remove_external_address(address);
                    }
                }
                if let Some(addrs) = self.listener_addrs(listener_id) {
                    addrs.clear();
                }
                let transport = if listener_id == self.tcp_listener {
                    "TCP"
                } else {
                    "QUIC"
                };
                let reason = match reason {
                    Ok(()) => "closed".to_string(),
                    Err(e) => e.to_string(),
                };
                if self.ready.is_some() {
                    bail!("the {transport} listener failed while starting: {reason}");
                }
                tracing::error!(transport, %reason, "listener closed");
                if self.tcp_addrs.is_empty() && self.quic_addrs.is_empty() {
                    bail!("every listener has closed (last: {transport}: {reason})");
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                let transport = if listener_id == self.tcp_listener {
                    "TCP"
                } else {
                    "QUIC"
                };
                tracing::warn!(transport, %error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                tracing::debug!(%peer_id, address = %endpoint.get_remote_address(), num_established, "connected");
                self.connected.entry(peer_id).or_insert_with(Instant::now);
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push(connection_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                num_established,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, num_established, "disconnected");
                if let Some(c) = self.connections.get_mut(&peer_id) {
                    c.retain(|id| *id != connection_id);
                    if c.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    self.connected.remove(&peer_id);
                    if self.members.forget(&peer_id) {
                        tracing::info!(peer = %peer_id, "member left");
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error: ListenError::Denied { cause },
                ..
            } => {
                let reason = innermost(&cause);
                if let Some(suppressed) = self.limit_log.allow(reason.clone(), Instant::now()) {
                    tracing::warn!(%send_back_addr, %reason, suppressed, "connection refused");
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(%send_back_addr, %error, "incoming connection failed");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::debug!(%address, "external address candidate");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
            }
            _ => {}
        }
        Ok(())
    }
}

impl Driver {
    fn on_behaviour_event(&mut self, event: RelayBehaviourEvent) {
        match event {
            RelayBehaviourEvent::Relay(event) => self.on_relay_event(event),
            RelayBehaviourEvent::Autonat(event) => on_autonat_event(event),
            RelayBehaviourEvent::Identify(event) => match event {
                identify::Event::Received { peer_id, info, .. } => {
                    tracing::debug!(
                        %peer_id,
                        agent = %info.agent_version,
                        protocol = %info.protocol_version,
                        observed_addr = %info.observed_addr,
                        "identified peer"
                    );
                }
                identify::Event::Error { peer_id, error, .. } => {
                    tracing::debug!(%peer_id, %error, "identify failed");
                }
                _ => {}
            },
            RelayBehaviourEvent::Ping(event) => {
                if let Err(error) = event.result {
                    tracing::debug!(peer_id = %event.peer, %error, "ping failed");
                }
            }
            RelayBehaviourEvent::Stream(()) => {}
            RelayBehaviourEvent::Limits(never) => match never {},
        }
    }

    /// Count a relay event in the metrics.
    #[allow(deprecated)]
    fn count(&self, event: &relay::Event) {
        use crate::metrics::RelayMetrics as M;
        use relay::Event::*;
        let m = &self.metrics;
        let reason = |peer: &PeerId| {
            if self.members.is_member(peer, SystemTime::now()) {
                "limit"
            } else {
                "not_member"
            }
        };
        match event {
            ReservationReqAccepted { renewed, .. } => {
                if *renewed {
                    M::event(&m.reservation_events, "renewed");
                } else {
                    m.reservations.inc();
                    M::event(&m.reservation_events, "accepted");
                }
            }
            ReservationReqDenied { src_peer_id, .. } => {
                M::event(&m.reservation_events, "refused");
                m.refused("reservation", reason(src_peer_id));
            }
            ReservationReqAcceptFailed { .. } => M::event(&m.reservation_events, "failed"),
            ReservationClosed { .. } => {
                m.reservations.dec();
                M::event(&m.reservation_events, "closed");
            }
            ReservationTimedOut { .. } => {
                m.reservations.dec();
                M::event(&m.reservation_events, "timed_out");
            }
            CircuitReqAccepted { .. } => {
                m.circuits.inc();
                M::event(&m.circuit_events, "accepted");
            }
            CircuitReqDenied { src_peer_id, .. } => {
                M::event(&m.circuit_events, "refused");
                m.refused("circuit", reason(src_peer_id));
            }
            CircuitReqOutboundConnectFailed { .. } => M::event(&m.circuit_events, "failed"),
            CircuitClosed { .. } => {
                m.circuits.dec();
                M::event(&m.circuit_events, "closed");
            }
            _ => {}
        }
    }

    /// Why a peer's reservation or circuit was refused, for the log.
    fn refusal(&self, peer: &PeerId) -> &'static str {
        if self.members.is_member(peer, SystemTime::now()) {
            "limit reached"
        } else {
            "not a member of a mesh served here"
        }
    }

    #[allow(deprecated)] // the deprecated variants still occur and are worth logging
    fn on_relay_event(&mut self, event: relay::Event) {
        use relay::Event::*;
        self.count(&event);
        match event {
            ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                const KIND: &str = "reservation";
                if let Some(suppressed) = self.denials.allow((src_peer_id, KIND), Instant::now()) {
                    let reason = self.refusal(&src_peer_id);
                    tracing::warn!(peer_id = %src_peer_id, reason, ?status, suppressed, "reservation refused");
                }
            }
            CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                const KIND: &str = "circuit";
                if let Some(suppressed) = self.denials.allow((src_peer_id, KIND), Instant::now()) {
                    let reason = self.refusal(&src_peer_id);
                    tracing::warn!(src = %src_peer_id, dst = %dst_peer_id, reason, ?status, suppressed, "circuit refused");
                }
            }
            ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            } => {
                self.supersede(src_peer_id);
                on_relay_event(ReservationReqAccepted {
                    src_peer_id,
                    renewed: false,
                });
            }
            event => on_relay_event(event),
        }
    }

    /// A peer made a new reservation: its older connections belong to an
    /// earlier run of it (a daemon that restarted leaves a dead QUIC
    /// connection behind until it times out), and circuits must not be
    /// routed over them. Close them.
    fn supersede(&mut self, peer: PeerId) {
        let Some(conns) = self.connections.get(&peer) else {
            return;
        };
        let Some((newest, older)) = conns.split_last() else {
            return;
        };
        if older.is_empty() {
            return;
        }
        tracing::info!(%peer, older = older.len(), newest = ?newest, "a new reservation supersedes the peer's older connections; closing them");
        for &id in older {
            self.swarm.close_connection(id);
        }
    }
}

#[allow(deprecated)] // the deprecated variants still occur and are worth logging
fn on_relay_event(event: relay::Event) {
    use relay::Event::*;
    match event {
        ReservationReqAccepted {
            src_peer_id,
            renewed,
        } => {
            tracing::info!(peer_id = %src_peer_id, renewed, "reservation accepted");
        }
        // Logged by the driver, which knows about membership.
        ReservationReqDenied { .. } | CircuitReqDenied { .. } => {}
        ReservationReqAcceptFailed { src_peer_id, error } => {
            tracing::warn!(peer_id = %src_peer_id, %error, "accepting a reservation failed");
        }
        ReservationReqDenyFailed { src_peer_id, error } => {
            tracing::warn!(peer_id = %src_peer_id, %error, "refusing a reservation failed");
        }
        ReservationClosed { src_peer_id } => {
            tracing::info!(peer_id = %src_peer_id, "reservation closed");
        }
        ReservationTimedOut { src_peer_id } => {
            tracing::info!(peer_id = %src_peer_id, "reservation timed out");
        }
        CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => {
            tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "circuit opened");
        }
        CircuitReqDenyFailed {
            src_peer_id,
            dst_peer_id,
            error,
        } => {
            tracing::warn!(src = %src_peer_id, dst = %dst_peer_id, %error, "refusing a circuit failed");
        }
        CircuitReqOutboundConnectFailed {
            src_peer_id,
            dst_peer_id,
            error,
        } => {
            tracing::warn!(src = %src_peer_id, dst = %dst_peer_id, %error, "circuit refused: destination unreachable");
        }
        CircuitReqAcceptFailed {
            src_peer_id,
            dst_peer_id,
            error,
        } => {
            tracing::warn!(src = %src_peer_id, dst = %dst_peer_id, %error, "accepting a circuit failed");
        }
        CircuitClosed {
            src_peer_id,
            dst_peer_id,
            error,
        } => match error {
            None => tracing::info!(src = %src_peer_id, dst = %dst_peer_id, "circuit closed"),
            Some(error) => {
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, %error, "circuit closed")
            }
        },
        StatusChanged { status } => tracing::info!(?status, "relay service status"),
    }
}

fn on_autonat_event(event: autonat::Event) {
    match event {
        autonat::Event::InboundProbe(probe) => match probe {
            autonat::InboundProbeEvent::Request {
                peer, addresses, ..
            } => {
                tracing::info!(peer_id = %peer, ?addresses, "AutoNAT probe: dialing back");
            }
            autonat::InboundProbeEvent::Response { peer, address, .. } => {
                tracing::info!(peer_id = %peer, %address, "AutoNAT probe: peer reachable");
            }
            autonat::InboundProbeEvent::Error { peer, error, .. } => {
                tracing::info!(peer_id = %peer, ?error, "AutoNAT probe: peer not reachable or refused");
            }
        },
        autonat::Event::OutboundProbe(probe) => tracing::debug!(?probe, "own AutoNAT probe"),
        autonat::Event::StatusChanged { old, new } => {
            tracing::info!(?old, ?new, "own reachability (AutoNAT)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_p2p_suffix_is_stripped_and_a_foreign_one_refused() {
        let me = Keypair::generate_ed25519().public().to_peer_id();
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let base: Multiaddr = "/ip4/203.0.113.7/udp/4001/quic-v1".parse().unwrap();
        assert_eq!(without_own_p2p(&base, me).unwrap(), base);
        assert_eq!(without_own_p2p(&with_p2p(&base, me), me).unwrap(), base);
        assert!(without_own_p2p(&with_p2p(&base, other), me)
            .unwrap_err()
            .to_string()
            .contains("names peer"));
    }

    #[test]
    fn listen_addresses_share_the_port() {
        let (tcp, quic) = listen_addresses("::1".parse().unwrap(), 4001);
        assert_eq!(tcp.to_string(), "/ip6/::1/tcp/4001");
        assert_eq!(quic.to_string(), "/ip6/::1/udp/4001/quic-v1");
    }
}
