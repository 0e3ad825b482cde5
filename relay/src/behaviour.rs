//! The relay's libp2p protocols, combined into one [`NetworkBehaviour`].

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{autonat, connection_limits, identify, ping, relay, Multiaddr, PeerId};

use crate::config::RelayConfig;
use crate::members::Members;

/// Identify protocol version announced by the relay; proxymesh daemons
/// announce the same family.
pub const PROTOCOL_VERSION: &str = "/proxymesh/1";

/// Identify agent version announced by the relay.
pub const AGENT_VERSION: &str = concat!("proxymesh-relay/", env!("CARGO_PKG_VERSION"));

/// Everything the relay speaks:
///
/// * `limits` — connection limits (total, per peer, handshakes in progress),
/// * `relay` — circuit relay v2 server (reservations and relayed connections,
///   which DCUtR then upgrades to direct ones), for members only,
/// * `identify` — tells peers their observed address and our addresses,
/// * `ping` — liveness,
/// * `autonat` — AutoNAT v1 server: dials peers back so they learn whether
///   they are reachable,
/// * `stream` — raw streams, on which the relay serves the member protocol
///   (`/proxymesh/member/1`, see [`crate::members`]).
#[derive(NetworkBehaviour)]
pub struct RelayBehaviour {
    /// Connection limits.
    pub limits: connection_limits::Behaviour,
    /// Circuit relay v2 server.
    pub relay: relay::Behaviour,
    /// Identify.
    pub identify: identify::Behaviour,
    /// Ping.
    pub ping: ping::Behaviour,
    /// AutoNAT v1 (server role for peers; its client role only probes
    /// candidate addresses of the relay itself).
    pub autonat: autonat::Behaviour,
    /// Streams of the member protocol.
    pub stream: libp2p_stream::Behaviour,
}

impl RelayBehaviour {
    /// Build the behaviours with `config`'s limits for the relay whose
    /// keypair is `key`. Reservations and circuits are granted only to
    /// peers that `members` says are members.
    pub fn new(key: &Keypair, config: &RelayConfig, members: Arc<Members>) -> Self {
        let peer_id = key.public().to_peer_id();
        let limits = &config.relay;
        // libp2p's circuit limits (128 KiB / 2 min) are far too small for
        // object transfer, and its circuit rate limits too tight for a mesh in
        // which every new daemon-to-daemon connection starts relayed.
        // Membership comes first: libp2p stops at the first limiter that
        // says no, so non-members use up no one's rate budget.
        let mut relay_config = relay::Config {
            max_reservations: limits.max_reservations,
            max_reservations_per_peer: limits.max_reservations_per_peer,
            reservation_duration: limits.reservation_duration,
            reservation_rate_limiters: vec![members_only(members.clone())],
            max_circuits: limits.max_circuits,
            max_circuits_per_peer: limits.max_circuits_per_peer,
            max_circuit_duration: limits.max_circuit_duration,
            max_circuit_bytes: limits.max_circuit_bytes,
            circuit_src_rate_limiters: vec![members_only(members)],
        };
        if let Some((burst, every)) = per_hour(limits.reservation_rate_per_peer) {
            relay_config = relay_config.reservation_rate_per_peer(burst, every);
        }
        if let Some((burst, every)) = per_hour(limits.reservation_rate_per_ip) {
            relay_config = relay_config.reservation_rate_per_ip(burst, every);
        }
        if let Some((burst, every)) = per_hour(limits.circuit_rate_per_peer) {
            relay_config = relay_config.circuit_src_per_peer(burst, every);
        }
        if let Some((burst, every)) = per_hour(limits.circuit_rate_per_ip) {
            relay_config = relay_config.circuit_src_per_ip(burst, every);
        }
        let connections = &config.connections;
        let connection_limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(connections.max_connections))
            .with_max_established_per_peer(Some(connections.max_connections_per_peer))
            .with_max_pending_incoming(Some(connections.max_pending_incoming));
        RelayBehaviour {
            limits: connection_limits::Behaviour::new(connection_limits),
            relay: relay::Behaviour::new(peer_id, relay_config),
            identify: identify::Behaviour::new(
                identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                    .with_agent_version(AGENT_VERSION.to_string()),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            autonat: autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    // Sites in labs and private networks use private
                    // addresses; probing them is the point there.
                    only_global_ips: false,
                    ..autonat::Config::default()
                },
            ),
            stream: libp2p_stream::Behaviour::new(),
        }
    }
}

/// A relay "rate limiter" that admits members only (libp2p's relay has no
/// other hook to decide per peer).
fn members_only(members: Arc<Members>) -> Box<dyn relay::RateLimiter> {
    Box::new(
        move |peer: PeerId, _addr: &Multiaddr, _now: std::time::Instant| {
            members.is_member(&peer, SystemTime::now())
        },
    )
}

/// A token bucket allowing `n` per hour: a burst of `n`, then one every
/// hour/`n`. `None` for 0 (unlimited).
fn per_hour(n: u32) -> Option<(NonZeroU32, Duration)> {
    let n = NonZeroU32::new(n)?;
    Some((n, Duration::from_secs(3600) / n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_rates_become_token_buckets() {
        assert_eq!(per_hour(0), None);
        // libp2p's defaults: 30 per peer (one per 2 min), 60 per IP (one per minute).
        assert_eq!(
            per_hour(30),
            Some((NonZeroU32::new(30).unwrap(), Duration::from_secs(120)))
        );
        assert_eq!(
            per_hour(60),
            Some((NonZeroU32::new(60).unwrap(), Duration::from_secs(60)))
        );
        assert_eq!(
            per_hour(7200),
            Some((NonZeroU32::new(7200).unwrap(), Duration::from_millis(500)))
        );
    }
}
