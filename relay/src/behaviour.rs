//! The relay's libp2p protocols, combined into one [`NetworkBehaviour`].

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{autonat, identify, ping, relay, rendezvous};

use crate::config::{RelayConfig, RENDEZVOUS_MIN_TTL};

/// Identify protocol version announced by the relay; proxymesh daemons
/// announce the same family.
pub const PROTOCOL_VERSION: &str = "/proxymesh/1";

/// Identify agent version announced by the relay.
pub const AGENT_VERSION: &str = concat!("proxymesh-relay/", env!("CARGO_PKG_VERSION"));

/// Everything the relay speaks:
///
/// * `relay` — circuit relay v2 server (reservations and relayed connections,
///   which DCUtR then upgrades to direct ones),
/// * `identify` — tells peers their observed address and our addresses,
/// * `ping` — liveness,
/// * `autonat` — AutoNAT v1 server: dials peers back so they learn whether
///   they are reachable,
/// * `rendezvous` — rendezvous server: daemons register under namespaces and
///   discover each other.
#[derive(NetworkBehaviour)]
pub struct RelayBehaviour {
    /// Circuit relay v2 server.
    pub relay: relay::Behaviour,
    /// Identify.
    pub identify: identify::Behaviour,
    /// Ping.
    pub ping: ping::Behaviour,
    /// AutoNAT v1 (server role for peers; its client role only probes
    /// candidate addresses of the relay itself).
    pub autonat: autonat::Behaviour,
    /// Rendezvous server.
    pub rendezvous: rendezvous::server::Behaviour,
}

impl RelayBehaviour {
    /// Build the behaviours with `config`'s limits for the relay whose
    /// keypair is `key`.
    pub fn new(key: &Keypair, config: &RelayConfig) -> Self {
        let peer_id = key.public().to_peer_id();
        let limits = &config.relay;
        // Keep libp2p's per-peer and per-IP rate limiters (they stop a
        // misbehaving peer from churning reservations), but replace its
        // circuit limits (128 KiB / 2 min), far too small for object transfer.
        let relay_config = relay::Config {
            max_reservations: limits.max_reservations,
            max_reservations_per_peer: limits.max_reservations_per_peer,
            reservation_duration: limits.reservation_duration,
            max_circuits: limits.max_circuits,
            max_circuits_per_peer: limits.max_circuits_per_peer,
            max_circuit_duration: limits.max_circuit_duration,
            max_circuit_bytes: limits.max_circuit_bytes,
            ..relay::Config::default()
        };
        let rendezvous_config = rendezvous::server::Config::default()
            .with_min_ttl(RENDEZVOUS_MIN_TTL.as_secs())
            .with_max_ttl(config.rendezvous.max_ttl.as_secs())
            .with_max_registration_per_peer(config.rendezvous.max_registrations_per_peer);
        RelayBehaviour {
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
            rendezvous: rendezvous::server::Behaviour::new(rendezvous_config),
        }
    }
}
