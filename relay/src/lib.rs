//! # proxymesh-relay
//!
//! The public meeting point of one or more **closed meshes**. proxymesh
//! moves objects between site daemons (`proxymeshd`), which usually sit
//! behind NATs and firewalls and so cannot dial each other at first. Every
//! daemon keeps a connection to one or more relays, which gives it:
//!
//! * **membership** — right after connecting, a daemon presents the
//!   credential its mesh's authority issued for its peer ID (`proxymesh mesh
//!   admit`) on the member protocol (`/proxymesh/member/1`, see
//!   [`proxymesh::membership::wire`]). The relay checks it against the
//!   connection's authenticated peer ID, its expiry and the mesh's newest
//!   revocation list, and answers `Welcome` or `Refused`;
//! * **discovery** — the `Welcome` lists the other members of the daemon's
//!   mesh that the relay knows, each with its credential (so the daemon can
//!   verify every entry itself) and addresses, plus the mesh's revocation
//!   list. Daemons say hello again periodically and whenever their
//!   addresses change;
//! * **reachability** — a [circuit relay v2] reservation: other daemons dial
//!   it at `<relay address>/p2p-circuit/p2p/<daemon id>`, through the relay;
//! * **direct connections** — over that relayed connection the two daemons
//!   run DCUtR and hole-punch a direct QUIC or TCP connection; objects then
//!   flow directly, and only through the relay (within its circuit limits)
//!   when punching fails;
//! * **self-knowledge** — identify tells a daemon the address the relay sees
//!   it at, and an AutoNAT v1 server dials it back there so the daemon learns
//!   whether it is publicly reachable.
//!
//! ```text
//!   site A                         relay                        site B
//!  proxymeshd ── hello, reservation ──► proxymesh-relay ◄── hello, dial via circuit ── proxymeshd
//!      ▲                                                                                 │
//!      └─────────────────── hole-punched direct connection (DCUtR) ──────────────────────┘
//! ```
//!
//! ## The membership rule
//!
//! A relay serves the meshes it is started with (`--mesh MESH_ID`, one per
//! mesh; [`proxymesh::membership::Policy::Meshes`]) and nobody else:
//!
//! * reservations and circuits are granted only to peers whose hello was
//!   accepted and whose membership still holds (not expired, not revoked);
//! * a refused hello is answered with the reason, logged, and the peer is
//!   disconnected; a peer that proves no membership within 30 s of
//!   connecting ([`MembershipConfig::hello_deadline`]) is disconnected too,
//!   and so is a member whose credential expires;
//! * members of different meshes served by one relay never see each other;
//! * revocation lists (`--revocations FILE`, re-read when the file changes)
//!   disconnect the peers they name, refuse their later hellos, and reach
//!   every member in later welcomes;
//! * connections are bounded (`--max-connections`,
//!   `--max-connections-per-peer`), and so are the member streams served at
//!   once and each mesh's directory (`--max-members`).
//!
//! `--open-mesh` ([`proxymesh::membership::Policy::Open`]) serves anyone,
//! for labs only. A relay given neither refuses to start.
//!
//! The relay stores no objects; its state is reservations, the member
//! directories (forgotten when a member disconnects) and its keypair (its
//! peer ID, which daemons are configured with), the only thing persisted.
//!
//! ## Embedding
//!
//! The binary is a thin wrapper: [`Args`] (flags) become a [`RelayConfig`],
//! and [`run`] starts the node and returns a [`RunningRelay`] with its
//! addresses and a shutdown handle, so tests and tools can embed a relay:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use proxymesh::membership::{Authority, Policy};
//!
//! let authority = Authority::generate(); // normally `proxymesh mesh init DIR`
//! let config = proxymesh_relay::RelayConfig::new(
//!     "127.0.0.1".parse()?,
//!     0,
//!     "/tmp/relay.key",
//!     Policy::Meshes(vec![authority.mesh_id()]),
//! )
//! .with_revocation_file("/etc/proxymesh/mesh/revocations");
//! let relay = proxymesh_relay::run(config).await?;
//! println!("{:?}", relay.addresses()); // each ends in /p2p/<peer id>
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! [circuit relay v2]: https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md

pub mod behaviour;
pub mod config;
pub mod members;
pub mod metrics;
pub mod node;
pub mod revocations;

pub use behaviour::{RelayBehaviour, AGENT_VERSION, PROTOCOL_VERSION};
pub use config::{Args, ConnectionLimits, MembershipConfig, RelayConfig, RelayLimits};
pub use members::Members;
pub use node::{run, run_with_keypair, RunningRelay, ShutdownHandle};
pub use proxymesh::membership::{MeshId, Policy};
