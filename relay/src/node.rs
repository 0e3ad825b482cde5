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

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{autonat, identify, noise, relay, rendezvous, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::behaviour::{RelayBehaviour, RelayBehaviourEvent};
use crate::config::RelayConfig;

/// How long to wait for both listeners before giving up on starting.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// After both listeners on a wildcard address have reported an address, how
/// long to wait for the remaining per-interface addresses before reporting.
const WILDCARD_SETTLE: Duration = Duration::from_millis(300);
/// How long a connection without active protocols stays open; long enough
/// for a daemon to register and discover without redialing.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// A relay running in a background task.
#[derive(Debug)]
pub struct RunningRelay {
    peer_id: PeerId,
    addresses: Vec<Multiaddr>,
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
/// read). Returns once it listens on both QUIC and TCP.
pub async fn run_with_keypair(config: RelayConfig, keypair: Keypair) -> Result<RunningRelay> {
    config.validate()?;
    let peer_id = keypair.public().to_peer_id();
    let external = config
        .external_addresses
        .iter()
        .map(|a| without_own_p2p(a, peer_id))
        .collect::<Result<Vec<_>>>()?;

    let mut swarm = build_swarm(keypair, &config)?;
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
        peer_id,
        tcp_listener,
        quic_listener,
        tcp_addrs: Vec::new(),
        quic_addrs: Vec::new(),
        external,
        wildcard: config.host.is_unspecified(),
        ready: Some(ready_tx),
    };
    let task = tokio::spawn(driver.run(shutdown_rx));
    let shutdown = ShutdownHandle(Arc::new(shutdown_tx));
    match ready_rx.await {
        Ok(addresses) => Ok(RunningRelay {
            peer_id,
            addresses,
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

fn build_swarm(keypair: Keypair, config: &RelayConfig) -> Result<Swarm<RelayBehaviour>> {
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
        .with_behaviour(|key| RelayBehaviour::new(key, config))
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
}

impl Driver {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let startup_deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut settle_deadline: Option<Instant> = None;
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
                event = self.swarm.select_next_some() => self.on_event(event)?,
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
            SwarmEvent::Behaviour(event) => on_behaviour_event(event),
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
                endpoint,
                num_established,
                ..
            } => {
                tracing::debug!(%peer_id, address = %endpoint.get_remote_address(), num_established, "connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => {
                tracing::debug!(%peer_id, ?cause, num_established, "disconnected");
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

fn on_behaviour_event(event: RelayBehaviourEvent) {
    match event {
        RelayBehaviourEvent::Relay(event) => on_relay_event(event),
        RelayBehaviourEvent::Rendezvous(event) => on_rendezvous_event(event),
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
        ReservationReqDenied {
            src_peer_id,
            status,
        } => {
            tracing::warn!(peer_id = %src_peer_id, ?status, "reservation refused");
        }
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
        CircuitReqDenied {
            src_peer_id,
            dst_peer_id,
            status,
        } => {
            tracing::warn!(src = %src_peer_id, dst = %dst_peer_id, ?status, "circuit refused");
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

fn on_rendezvous_event(event: rendezvous::server::Event) {
    use rendezvous::server::Event::*;
    match event {
        PeerRegistered { peer, registration } => {
            tracing::info!(
                peer_id = %peer,
                namespace = %registration.namespace,
                ttl = registration.ttl,
                addresses = ?registration.record.addresses(),
                "rendezvous registration"
            );
        }
        PeerNotRegistered {
            peer,
            namespace,
            error,
        } => {
            tracing::warn!(peer_id = %peer, %namespace, ?error, "rendezvous registration refused");
        }
        PeerUnregistered { peer, namespace } => {
            tracing::info!(peer_id = %peer, %namespace, "rendezvous unregistration");
        }
        RegistrationExpired(registration) => {
            tracing::info!(
                peer_id = %registration.record.peer_id(),
                namespace = %registration.namespace,
                "rendezvous registration expired"
            );
        }
        DiscoverServed {
            enquirer,
            registrations,
        } => {
            tracing::debug!(peer_id = %enquirer, found = registrations.len(), "rendezvous discovery served");
        }
        DiscoverNotServed { enquirer, error } => {
            tracing::warn!(peer_id = %enquirer, ?error, "rendezvous discovery refused");
        }
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
