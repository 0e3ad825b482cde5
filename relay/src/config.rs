//! Command-line flags ([`Args`]) and the validated settings they produce
//! ([`RelayConfig`]), with the defaults documented in one place.
//!
//! Sizes accept a plain byte count or a number with a unit: `K`/`KiB`,
//! `M`/`MiB`, `G`/`GiB`, `T`/`TiB` are powers of 1024; `KB`, `MB`, `GB`,
//! `TB` are powers of 1000 (`64GiB`, `1.5G`, `1KiB`, `4096`). Durations
//! accept plain seconds or a number with `s`, `m`, `h` or `d` (`43200`,
//! `12h`, `90m`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use proxymesh::membership::{wire, MeshId, Policy};

/// Default TCP and UDP (QUIC) port.
pub const DEFAULT_PORT: u16 = 4001;
/// Default cap on the bytes one relayed connection may carry (both
/// directions together): 64 GiB, generous because proxymesh relays trusted
/// sites' object transfers when hole punching fails.
pub const DEFAULT_MAX_CIRCUIT_BYTES: u64 = 64 << 30;
/// Default cap on the lifetime of one relayed connection: 12 hours.
pub const DEFAULT_MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(12 * 3600);
/// Default number of reservations the relay holds at once.
pub const DEFAULT_MAX_RESERVATIONS: usize = 1024;
/// Default number of reservations one peer may hold at once.
pub const DEFAULT_MAX_RESERVATIONS_PER_PEER: usize = 4;
/// Default lifetime of a reservation before the client must renew it (libp2p
/// clients renew automatically).
pub const DEFAULT_RESERVATION_DURATION: Duration = Duration::from_secs(3600);
/// Default number of relayed connections open at once.
pub const DEFAULT_MAX_CIRCUITS: usize = 256;
/// Default number of relayed connections one peer may have open at once.
pub const DEFAULT_MAX_CIRCUITS_PER_PEER: usize = 16;
/// Default reservations one peer may make per hour (libp2p's default).
pub const DEFAULT_RESERVATION_RATE_PER_PEER: u32 = 30;
/// Default reservations one IP address may make per hour (libp2p's default).
pub const DEFAULT_RESERVATION_RATE_PER_IP: u32 = 60;
/// Default relayed connections one peer may open per hour: well above
/// libp2p's 30, since every new daemon-to-daemon connection starts relayed.
pub const DEFAULT_CIRCUIT_RATE_PER_PEER: u32 = 600;
/// Default relayed connections one IP address (a site's NAT) may open per hour.
pub const DEFAULT_CIRCUIT_RATE_PER_IP: u32 = 1200;
/// Default number of members one mesh's directory holds (the most one
/// [`wire::Message::Welcome`] can list).
pub const DEFAULT_MAX_MEMBERS: usize = wire::MAX_MEMBERS;
/// Default number of member-protocol streams served at once; more are
/// dropped unanswered (the daemon says hello again later).
pub const DEFAULT_MAX_MEMBER_STREAMS: usize = 256;
/// Default time a connected peer has to prove membership (its daemon says
/// hello right after connecting) before the relay closes its connections.
/// Peers whose credential expires while connected are closed the same way.
pub const DEFAULT_HELLO_DEADLINE: Duration = Duration::from_secs(30);
/// Default number of established connections (all peers together).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// Default number of established connections one peer may hold.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: u32 = 8;
/// Default number of incoming connections still in their handshake.
pub const DEFAULT_MAX_PENDING_INCOMING: u32 = 256;
/// What the relay says when told to serve nobody.
pub const NO_MESH_HINT: &str = "pass --mesh MESH_ID (printed by `proxymesh mesh init DIR`) for each mesh to serve, or --open-mesh for a lab where anyone may join";
/// Default tracing filter.
pub const DEFAULT_LOG: &str = "info";

/// proxymesh-relay: the relay, directory and AutoNAT server of closed meshes.
///
/// Site daemons (`proxymeshd`) behind NATs connect here, prove membership of
/// a mesh by presenting a credential its authority signed (`proxymesh mesh
/// admit`), and then keep reservations here, learn the other members of
/// their mesh with their addresses, and hole-punch direct connections; when
/// punching fails, their traffic is relayed within the circuit limits below.
/// Peers without a valid credential of a served mesh are refused and
/// disconnected, and get neither reservations nor circuits.
///
/// Pass --mesh MESH_ID (printed by `proxymesh mesh init DIR`) for each mesh
/// to serve, or --open-mesh for a lab where anyone may join.
///
/// On start the relay prints its dialable multiaddrs (each ending in
/// `/p2p/PEER_ID`) on stdout, one per line; logs go to stderr.
#[derive(Debug, Clone, Parser)]
#[command(name = "proxymesh-relay", version, about, long_about)]
pub struct Args {
    /// Serve the members of this mesh (repeatable): a `pmm1…` mesh ID, as
    /// printed by `proxymesh mesh init DIR`. Members of different meshes
    /// never learn about each other.
    #[arg(long = "mesh", value_name = "MESH_ID", value_parser = parse_mesh_id)]
    pub meshes: Vec<MeshId>,

    /// Serve anyone who connects, without credentials. For labs and trusted
    /// networks only: anyone who can reach the relay may reserve, relay
    /// traffic through it and list every peer.
    #[arg(long, conflicts_with = "meshes")]
    pub open_mesh: bool,

    /// A revocation list (`pmr1…`, as written by `proxymesh mesh revoke`) of
    /// a served mesh (repeatable). Re-read when it changes (checked every 5
    /// s): revoked members are disconnected and refused, and members learn
    /// the list. A file that does not exist yet counts as "nothing revoked"
    /// and is picked up when it appears; a damaged, unsigned or foreign file
    /// is logged as an error and ignored.
    #[arg(long = "revocations", value_name = "FILE")]
    pub revocation_files: Vec<PathBuf>,

    /// Most members listed in one mesh's directory (at most 4096); a new
    /// member beyond it is refused.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_MEMBERS)]
    pub max_members: usize,

    /// Most established connections, all peers together (handshakes in
    /// progress are limited to 256 on top).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: u32,

    /// Most established connections one peer may hold.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_PEER)]
    pub max_connections_per_peer: u32,

    /// Serve Prometheus metrics at http://ADDR/metrics (reservations,
    /// circuits, refusals, bytes relayed). No authentication: bind it to
    /// loopback or a private interface, e.g. 127.0.0.1:9464 [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,

    /// IP address to listen on (IPv4 or IPv6; 0.0.0.0 / :: for every interface).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    pub host: IpAddr,

    /// Port for both QUIC (UDP) and TCP. 0 picks free ports, which may then
    /// differ between QUIC and TCP.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// File holding the relay's persistent keypair (its peer ID); created on
    /// first start. [default: $XDG_DATA_HOME/proxymesh/relay.key, i.e.
    /// ~/.local/share/proxymesh/relay.key]
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,

    /// Address at which peers reach this relay (repeatable), e.g.
    /// /ip4/203.0.113.7/udp/4001/quic-v1. Without it, every concrete listen
    /// address is used, which suits loopback, LANs and hosts with a public IP.
    #[arg(long = "external-address", value_name = "MULTIADDR")]
    pub external_addresses: Vec<Multiaddr>,

    /// Most bytes one relayed connection may carry, both directions together
    /// (0 = unlimited).
    #[arg(long, value_name = "SIZE", default_value = "64GiB", value_parser = parse_size)]
    pub max_circuit_bytes: u64,

    /// Longest lifetime of one relayed connection (seconds, or 30m, 12h, ...).
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = parse_duration)]
    pub max_circuit_duration: Duration,

    /// Most reservations held at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RESERVATIONS)]
    pub max_reservations: usize,

    /// Most reservations one peer may hold at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RESERVATIONS_PER_PEER)]
    pub max_reservations_per_peer: usize,

    /// Lifetime of a reservation; clients renew before it ends (seconds, or 1h, ...).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub reservation_duration: Duration,

    /// Most relayed connections open at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CIRCUITS)]
    pub max_circuits: usize,

    /// Most relayed connections one peer may have open at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CIRCUITS_PER_PEER)]
    pub max_circuits_per_peer: usize,

    /// Reservations one peer may make per hour (a burst of this many, then
    /// one every hour/N; 0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RESERVATION_RATE_PER_PEER)]
    pub reservation_rate_per_peer: u32,

    /// Reservations one IP address may make per hour (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RESERVATION_RATE_PER_IP)]
    pub reservation_rate_per_ip: u32,

    /// Relayed connections one peer may open per hour (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CIRCUIT_RATE_PER_PEER)]
    pub circuit_rate_per_peer: u32,

    /// Relayed connections one IP address may open per hour (0 = unlimited).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CIRCUIT_RATE_PER_IP)]
    pub circuit_rate_per_ip: u32,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or
    /// `info,libp2p_relay=debug`. Logs go to stderr.
    #[arg(long, value_name = "FILTER", env = "PROXYMESH_RELAY_LOG", default_value = DEFAULT_LOG)]
    pub log: String,
}

/// Circuit and reservation limits of the relay v2 server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Most bytes one relayed connection may carry (0 = unlimited).
    pub max_circuit_bytes: u64,
    /// Longest lifetime of one relayed connection (1 s ..= u32::MAX s).
    pub max_circuit_duration: Duration,
    /// Most reservations held at once.
    pub max_reservations: usize,
    /// Most reservations one peer may hold at once.
    pub max_reservations_per_peer: usize,
    /// Lifetime of a reservation.
    pub reservation_duration: Duration,
    /// Most relayed connections open at once.
    pub max_circuits: usize,
    /// Most relayed connections one peer may have open at once.
    pub max_circuits_per_peer: usize,
    /// Reservations per peer and hour (0 = unlimited).
    pub reservation_rate_per_peer: u32,
    /// Reservations per IP address and hour (0 = unlimited).
    pub reservation_rate_per_ip: u32,
    /// Relayed connections opened per source peer and hour (0 = unlimited).
    pub circuit_rate_per_peer: u32,
    /// Relayed connections opened per source IP address and hour (0 = unlimited).
    pub circuit_rate_per_ip: u32,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_circuit_bytes: DEFAULT_MAX_CIRCUIT_BYTES,
            max_circuit_duration: DEFAULT_MAX_CIRCUIT_DURATION,
            max_reservations: DEFAULT_MAX_RESERVATIONS,
            max_reservations_per_peer: DEFAULT_MAX_RESERVATIONS_PER_PEER,
            reservation_duration: DEFAULT_RESERVATION_DURATION,
            max_circuits: DEFAULT_MAX_CIRCUITS,
            max_circuits_per_peer: DEFAULT_MAX_CIRCUITS_PER_PEER,
            reservation_rate_per_peer: DEFAULT_RESERVATION_RATE_PER_PEER,
            reservation_rate_per_ip: DEFAULT_RESERVATION_RATE_PER_IP,
            circuit_rate_per_peer: DEFAULT_CIRCUIT_RATE_PER_PEER,
            circuit_rate_per_ip: DEFAULT_CIRCUIT_RATE_PER_IP,
        }
    }
}

/// Whom the relay serves, and how big its member directories may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// The meshes served ([`Policy::Meshes`], never empty), or anyone
    /// ([`Policy::Open`]).
    pub policy: Policy,
    /// Revocation-list files (`pmr1…`), polled for changes. A missing file
    /// means "nothing revoked yet".
    pub revocation_files: Vec<PathBuf>,
    /// Most members in one mesh's directory (1 ..= [`wire::MAX_MEMBERS`]).
    pub max_members: usize,
    /// Most member-protocol streams served at once.
    pub max_streams: usize,
    /// How long a connected peer has to prove membership before its
    /// connections are closed (no flag; daemons say hello right away).
    pub hello_deadline: Duration,
}

impl MembershipConfig {
    /// Serve `policy` with the default limits and no revocation files.
    pub fn new(policy: Policy) -> Self {
        MembershipConfig {
            policy,
            revocation_files: Vec::new(),
            max_members: DEFAULT_MAX_MEMBERS,
            max_streams: DEFAULT_MAX_MEMBER_STREAMS,
            hello_deadline: DEFAULT_HELLO_DEADLINE,
        }
    }
}

/// Bounds on the connections the relay keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most established connections, all peers together.
    pub max_connections: u32,
    /// Most established connections per peer.
    pub max_connections_per_peer: u32,
    /// Most incoming connections in their handshake at once.
    pub max_pending_incoming: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_pending_incoming: DEFAULT_MAX_PENDING_INCOMING,
        }
    }
}

/// Validated settings of one relay node. [`RelayConfig::new`] gives the
/// flags' defaults; the identity file and whom to serve have to be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// IP address to listen on.
    pub host: IpAddr,
    /// Port for QUIC and TCP (0 = free ports).
    pub port: u16,
    /// Persistent keypair file.
    pub identity: PathBuf,
    /// Addresses announced to peers, without `/p2p`. Empty: the concrete
    /// listen addresses are announced as they appear.
    pub external_addresses: Vec<Multiaddr>,
    /// Relay v2 limits.
    pub relay: RelayLimits,
    /// Whom to serve (meshes or anyone), revocation files, directory size.
    pub membership: MembershipConfig,
    /// Connection limits.
    pub connections: ConnectionLimits,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

impl RelayConfig {
    /// A config with default limits listening on `host:port` with the
    /// keypair in `identity`, serving `policy`: the members of
    /// `Policy::Meshes(vec![mesh_id, ...])`, or anyone for `Policy::Open`.
    pub fn new(host: IpAddr, port: u16, identity: impl Into<PathBuf>, policy: Policy) -> Self {
        RelayConfig {
            host,
            port,
            identity: identity.into(),
            external_addresses: Vec::new(),
            relay: RelayLimits::default(),
            membership: MembershipConfig::new(policy),
            connections: ConnectionLimits::default(),
            metrics: None,
        }
    }

    /// Also watch the revocation list in `file` (see
    /// [`MembershipConfig::revocation_files`]).
    pub fn with_revocation_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.membership.revocation_files.push(file.into());
        self
    }

    /// Check limits and addresses, normalizing external addresses (a trailing
    /// `/p2p/<id>` is removed; [`crate::node`] checks it names this relay).
    pub fn validate(&self) -> Result<()> {
        let secs = self.relay.max_circuit_duration.as_secs();
        if secs == 0 || secs > u64::from(u32::MAX) {
            bail!(
                "--max-circuit-duration must be between 1 second and {} seconds",
                u32::MAX
            );
        }
        if self.relay.reservation_duration.as_secs() == 0 {
            bail!("--reservation-duration must be at least 1 second");
        }
        if self.relay.reservation_duration.as_secs() > u64::from(u32::MAX) {
            bail!(
                "--reservation-duration must be at most {} seconds",
                u32::MAX
            );
        }
        for (name, value) in [
            ("--max-reservations", self.relay.max_reservations),
            (
                "--max-reservations-per-peer",
                self.relay.max_reservations_per_peer,
            ),
            ("--max-circuits", self.relay.max_circuits),
            ("--max-circuits-per-peer", self.relay.max_circuits_per_peer),
            ("--max-members", self.membership.max_members),
            (
                "--max-connections",
                self.connections.max_connections as usize,
            ),
            (
                "--max-connections-per-peer",
                self.connections.max_connections_per_peer as usize,
            ),
            (
                "the pending incoming connection limit",
                self.connections.max_pending_incoming as usize,
            ),
            ("the member stream limit", self.membership.max_streams),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if self.membership.hello_deadline.is_zero() {
            bail!("the hello deadline must be longer than 0");
        }
        if self.membership.max_members > wire::MAX_MEMBERS {
            bail!(
                "--max-members must be at most {} (the most one welcome lists)",
                wire::MAX_MEMBERS
            );
        }
        if let Policy::Meshes(meshes) = &self.membership.policy {
            if meshes.is_empty() {
                bail!("no mesh to serve: {NO_MESH_HINT}");
            }
        }
        for addr in &self.external_addresses {
            check_external_address(addr)?;
        }
        Ok(())
    }
}

/// An external address must name a transport endpoint this relay serves
/// directly: no relay hop, and nothing after an optional final `/p2p`.
fn check_external_address(addr: &Multiaddr) -> Result<()> {
    let mut protocols = addr.iter().peekable();
    if protocols.peek().is_none() {
        bail!("--external-address must not be empty");
    }
    while let Some(p) = protocols.next() {
        match p {
            Protocol::P2pCircuit => {
                bail!("--external-address {addr} is a relayed address; give one this relay listens at")
            }
            Protocol::P2p(_) if protocols.peek().is_some() => {
                bail!("--external-address {addr}: /p2p/<id> may only come last")
            }
            _ => {}
        }
    }
    Ok(())
}

impl Args {
    /// Validate the flags into a [`RelayConfig`], resolving the default
    /// identity path.
    pub fn into_config(self) -> Result<RelayConfig> {
        let identity = match self.identity {
            Some(path) => path,
            None => default_identity_path()?,
        };
        let policy = if self.open_mesh {
            Policy::Open
        } else {
            let mut meshes = self.meshes;
            let mut seen = std::collections::HashSet::new();
            meshes.retain(|m| seen.insert(m.clone()));
            Policy::Meshes(meshes)
        };
        let config = RelayConfig {
            host: self.host,
            port: self.port,
            identity,
            external_addresses: self.external_addresses,
            relay: RelayLimits {
                max_circuit_bytes: self.max_circuit_bytes,
                max_circuit_duration: self.max_circuit_duration,
                max_reservations: self.max_reservations,
                max_reservations_per_peer: self.max_reservations_per_peer,
                reservation_duration: self.reservation_duration,
                max_circuits: self.max_circuits,
                max_circuits_per_peer: self.max_circuits_per_peer,
                reservation_rate_per_peer: self.reservation_rate_per_peer,
                reservation_rate_per_ip: self.reservation_rate_per_ip,
                circuit_rate_per_peer: self.circuit_rate_per_peer,
                circuit_rate_per_ip: self.circuit_rate_per_ip,
            },
            membership: MembershipConfig {
                policy,
                revocation_files: self.revocation_files,
                max_members: self.max_members,
                max_streams: DEFAULT_MAX_MEMBER_STREAMS,
                hello_deadline: DEFAULT_HELLO_DEADLINE,
            },
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                max_connections_per_peer: self.max_connections_per_peer,
                max_pending_incoming: DEFAULT_MAX_PENDING_INCOMING,
            },
            metrics: self.metrics,
        };
        config.validate()?;
        Ok(config)
    }
}

/// `$XDG_DATA_HOME/proxymesh/relay.key`, falling back to
/// `$HOME/.local/share/proxymesh/relay.key` as the XDG spec says.
pub fn default_identity_path() -> Result<PathBuf> {
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".local/share"))
        })
        .context("neither XDG_DATA_HOME nor HOME is set; pass --identity FILE")?;
    Ok(data_home.join("proxymesh").join("relay.key"))
}

pub use proxymesh::units::parse_size;

/// Parse a `--mesh` value: a `pmm1…` mesh ID.
pub fn parse_mesh_id(text: &str) -> Result<MeshId, String> {
    text.trim().parse().map_err(|e| {
        format!("{text:?} is not a mesh ID ({e}); a mesh ID starts with pmm1 and is printed by `proxymesh mesh init DIR`")
    })
}

/// Durations as every proxymesh tool reads them (see
/// [`proxymesh::units::parse_duration`]).
pub use proxymesh::units::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("1.5h").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("soon").is_err());
    }

    fn mesh_id() -> MeshId {
        proxymesh::membership::Authority::generate().mesh_id()
    }

    #[test]
    fn defaults_match_documented_constants() {
        let mesh = mesh_id().to_string();
        let args = Args::try_parse_from([
            "proxymesh-relay",
            "--identity",
            "/tmp/x.key",
            "--mesh",
            &mesh,
        ])
        .unwrap();
        let config = args.into_config().unwrap();
        assert_eq!(config.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(config.port, DEFAULT_PORT);
        assert_eq!(config.relay, RelayLimits::default());
        assert_eq!(config.connections, ConnectionLimits::default());
        assert_eq!(config.connections.max_connections, 4096);
        assert_eq!(config.connections.max_connections_per_peer, 8);
        assert_eq!(config.membership.max_members, 4096);
        assert_eq!(
            config.membership.policy,
            Policy::Meshes(vec![mesh.parse().unwrap()])
        );
        assert!(config.membership.revocation_files.is_empty());
        assert_eq!(config.relay.max_circuit_bytes, 64 << 30);
        // The library constructor gives the flags' defaults.
        let built = RelayConfig::new(
            config.host,
            config.port,
            "/tmp/x.key",
            Policy::Meshes(vec![mesh.parse().unwrap()]),
        );
        assert_eq!(built, config);
    }

    #[test]
    fn meshes_open_mesh_and_revocation_files() {
        let (x, y) = (mesh_id(), mesh_id());
        let parse = |extra: &[&str]| {
            let mut argv = vec!["proxymesh-relay", "--identity", "/tmp/x.key"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|a| a.into_config().map_err(|e| e.to_string()))
        };
        let (xs, ys) = (x.to_string(), y.to_string());
        let config = parse(&[
            "--mesh",
            &xs,
            "--mesh",
            &ys,
            "--mesh",
            &xs,
            "--revocations",
            "/a/revocations",
            "--revocations",
            "/b/revocations",
        ])
        .unwrap();
        assert_eq!(config.membership.policy, Policy::Meshes(vec![x, y]));
        assert_eq!(
            config.membership.revocation_files,
            vec![
                PathBuf::from("/a/revocations"),
                PathBuf::from("/b/revocations")
            ]
        );
        assert_eq!(
            parse(&["--open-mesh"]).unwrap().membership.policy,
            Policy::Open
        );
        // Neither: refused, saying how.
        let err = parse(&[]).unwrap_err();
        assert!(err.contains("--mesh MESH_ID"), "{err}");
        assert!(err.contains("--open-mesh"), "{err}");
        // Both: refused.
        assert!(parse(&["--open-mesh", "--mesh", &xs]).is_err());
        // A malformed mesh ID names the flag and the expected form.
        let err = parse(&["--mesh", "pmm1nonsense"]).unwrap_err();
        assert!(
            err.contains("--mesh") && err.contains("not a mesh ID"),
            "{err}"
        );
        // A credential is no mesh ID.
        let authority = proxymesh::membership::Authority::generate();
        let now = std::time::SystemTime::now();
        let cred = authority
            .admit(libp2p::PeerId::random(), now, now + Duration::from_secs(60))
            .to_string();
        assert!(parse(&["--mesh", &cred]).is_err());
        assert!(parse(&["--open-mesh", "--max-members", "0"]).is_err());
        assert!(parse(&["--open-mesh", "--max-members", "4097"]).is_err());
        assert!(parse(&["--open-mesh", "--max-connections", "0"]).is_err());
        assert!(parse(&["--open-mesh", "--max-connections-per-peer", "0"]).is_err());
        assert!(parse(&["--open-mesh", "--max-members", "2"]).is_ok());
        // Embedding: an empty mesh list is refused too.
        let empty = RelayConfig::new(
            "127.0.0.1".parse().unwrap(),
            0,
            "/tmp/x.key",
            Policy::Meshes(Vec::new()),
        );
        assert!(empty.validate().unwrap_err().to_string().contains("--mesh"));
    }

    #[test]
    fn invalid_settings_are_refused() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["proxymesh-relay", "--identity", "/tmp/x.key", "--open-mesh"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|a| a.into_config().map_err(|e| e.to_string()))
        };
        assert!(parse(&["--max-circuit-duration", "0"])
            .unwrap_err()
            .contains("--max-circuit-duration"));
        assert!(parse(&["--max-circuit-duration", "200000d"]).is_err());
        assert!(parse(&["--max-circuits", "0"])
            .unwrap_err()
            .contains("--max-circuits"));
        assert!(parse(&["--external-address", "/ip4/1.2.3.4/tcp/1/p2p-circuit"]).is_err());
        assert!(parse(&["--external-address", "not-an-address"]).is_err());
        assert!(parse(&["--host", "example.com"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["--external-address", "/ip4/1.2.3.4/udp/4001/quic-v1"]).is_ok());
    }
}
