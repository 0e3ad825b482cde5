//! # proxymesh-relay
//!
//! The mesh's public meeting point. proxymesh moves objects between site
//! daemons (`proxymeshd`), which usually sit behind NATs and firewalls and so
//! cannot dial each other at first. Every daemon keeps a connection to one or
//! more relays, which gives it:
//!
//! * **reachability** — a [circuit relay v2] reservation: other daemons dial
//!   it at `<relay address>/p2p-circuit/p2p/<daemon id>`, through the relay;
//! * **direct connections** — over that relayed connection the two daemons
//!   run DCUtR and hole-punch a direct QUIC or TCP connection; objects then
//!   flow directly, and only through the relay (within its circuit limits)
//!   when punching fails;
//! * **discovery** — a [rendezvous] server: daemons register under
//!   namespaces (`proxymesh`, `proxymesh-ep-<uuid>`, any name is accepted)
//!   and look each other up with their addresses;
//! * **self-knowledge** — identify tells a daemon the address the relay sees
//!   it at, and an AutoNAT v1 server dials it back there so the daemon learns
//!   whether it is publicly reachable.
//!
//! ```text
//!   site A                         relay                        site B
//!  proxymeshd ── reservation ──►  proxymesh-relay  ◄── dial via circuit ── proxymeshd
//!      ▲                                                                      │
//!      └──────────────── hole-punched direct connection (DCUtR) ──────────────┘
//! ```
//!
//! The relay stores no objects and holds no state beyond reservations and
//! registrations; its only persistent state is its keypair (its peer ID,
//! which daemons are configured with).
//!
//! The binary is a thin wrapper: [`Args`] (flags) become a [`RelayConfig`],
//! and [`run`] starts the node and returns a [`RunningRelay`] with its
//! addresses and a shutdown handle, so tests and tools can embed a relay:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = proxymesh_relay::RelayConfig::new("127.0.0.1".parse()?, 0, "/tmp/relay.key");
//! let relay = proxymesh_relay::run(config).await?;
//! println!("{:?}", relay.addresses()); // each ends in /p2p/<peer id>
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! [circuit relay v2]: https://github.com/libp2p/specs/blob/master/relay/circuit-v2.md
//! [rendezvous]: https://github.com/libp2p/specs/blob/master/rendezvous/README.md

pub mod behaviour;
pub mod config;
pub mod node;

pub use behaviour::{RelayBehaviour, AGENT_VERSION, PROTOCOL_VERSION};
pub use config::{Args, RelayConfig, RelayLimits, RendezvousLimits};
pub use node::{run, run_with_keypair, RunningRelay, ShutdownHandle};
