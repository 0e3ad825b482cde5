//! The daemon's libp2p behaviour: relay client (reservations and relayed
//! connections), DCUtR (hole punching), identify and AutoNAT (address
//! discovery), ping (liveness) and `libp2p-stream` (streams of the member
//! protocol, which also carries discovery, and of the fetch protocol).

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{autonat, connection_limits, dcutr, identify, identity::Keypair, ping, relay};

/// Most established connections in all (members, relays, and peers still
/// proving membership).
pub const MAX_CONNECTIONS: u32 = 1024;
/// Most established connections to one peer (a direct one per transport,
/// relayed ones while a hole punch settles).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 8;
/// Most incoming connections still in their handshake.
pub const MAX_PENDING_INCOMING: u32 = 128;

/// identify protocol version string of proxymesh daemons.
pub const IDENTIFY_PROTOCOL: &str = "/proxymesh/id/1";

/// Everything a daemon speaks on the mesh.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Bounds on connections (first, so refused connections cost nothing else).
    pub limits: connection_limits::Behaviour,
    /// Relay v2 client.
    pub relay: relay::client::Behaviour,
    /// Direct connection upgrade through relay.
    pub dcutr: dcutr::Behaviour,
    /// Address and protocol exchange.
    pub identify: identify::Behaviour,
    /// Reachability probes (private addresses allowed, for LANs and labs).
    pub autonat: autonat::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// Member-protocol and bulk streams.
    pub stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    /// Build the behaviour for `keypair`, with the relay client the swarm builder made.
    pub fn new(keypair: &Keypair, relay: relay::client::Behaviour) -> Self {
        let peer_id = keypair.public().to_peer_id();
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(MAX_CONNECTIONS))
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING));
        Self {
            limits: connection_limits::Behaviour::new(limits),
            relay,
            dcutr: dcutr::Behaviour::new(peer_id),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), keypair.public())
                    .with_agent_version(format!("proxymeshd/{}", env!("CARGO_PKG_VERSION"))),
            ),
            autonat: autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    only_global_ips: false,
                    boot_delay: Duration::from_secs(1),
                    retry_interval: Duration::from_secs(30),
                    ..Default::default()
                },
            ),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5))),
            stream: libp2p_stream::Behaviour::new(),
        }
    }
}
