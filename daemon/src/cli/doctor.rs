//! `proxymesh doctor`: what works at this site and what does not, in plain
//! sentences, with what to do. Exit code 0 only when the site can serve
//! and fetch.
//!
//! Checks, in order: the local daemon answers and is this user's (the
//! SDK's connector checks that); it is in a mesh; its credential is valid
//! (and for how long); each relay answers over QUIC and over TCP (probed
//! from this process with a throw-away libp2p identity), and holds this
//! daemon's reservation; what the NAT lets through (AutoNAT's verdict and
//! the confirmed external addresses); that no other daemon runs with this
//! identity (the relay's directory lists this peer at addresses that are
//! not this daemon's: the same data directory started on two login
//! nodes); and, given a ticket or peer ID, a connection to that site,
//! whether a direct (hole-punched) path came up and how long it took.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use proxymesh::api::{Path, Status};
use proxymesh::{Connector, DaemonConnector, Key, ObjectId};

use super::CliError;

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// Works, with a caveat.
    Warn,
    /// The site cannot serve or fetch because of this.
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn say(&mut self, v: Verdict, what: impl AsRef<str>) {
        let tag = match v {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        println!("{tag}  {}", what.as_ref());
    }
}

/// Run the checks; `target` is a ticket or a peer ID to try a connection to.
pub async fn run(
    conn: &DaemonConnector,
    target: Option<&str>,
    probe_timeout: Duration,
) -> Result<ExitCode, CliError> {
    let mut r = Report { failed: false };
    // A target that does not parse is a usage error, before any check.
    let target = match target {
        None => None,
        Some(t) => Some(parse_target(t)?),
    };

    // 1. The daemon.
    let status = match conn.status().await {
        Ok(s) => s,
        Err(e) => {
            r.say(
                Verdict::Fail,
                format!(
                    "no usable daemon: {e}. Start proxymeshd (or point --api / PROXYMESH_API at your daemon)."
                ),
            );
            return Ok(ExitCode::from(1));
        }
    };
    r.say(
        Verdict::Ok,
        format!(
            "proxymeshd {} is up and yours: peer {}, API {}{}, data in {}",
            status.version,
            status.peer_id,
            status.api,
            status
                .api_socket
                .as_deref()
                .map(|s| format!(" and {s}"))
                .unwrap_or_default(),
            status.data_dir
        ),
    );

    // 2. The mesh.
    let Some(mesh) = status.mesh.clone() else {
        r.say(
            Verdict::Fail,
            "the daemon is in no mesh: it serves this host only and cannot fetch from other sites. Start it with --relay RELAY_ADDR and --credential CRED.",
        );
        return Ok(ExitCode::from(1));
    };

    // 3. Membership.
    if mesh.open_mesh {
        r.say(
            Verdict::Warn,
            "open mesh: every peer that connects is served (labs only; use proxymesh mesh init / admit for real sites)",
        );
    } else {
        match (mesh.mesh_id.as_deref(), mesh.credential_expires) {
            (Some(id), Some(expires)) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if expires <= now {
                    r.say(
                        Verdict::Fail,
                        format!("the credential for mesh {id} expired {} ago: relays and peers refuse this daemon. Ask the mesh operator for a new one (proxymesh mesh admit) and restart with it.", human_secs(now - expires)),
                    );
                } else if mesh.credential_expires_soon {
                    r.say(
                        Verdict::Warn,
                        format!("member of mesh {id}; the credential expires in {}: ask the mesh operator for a new one soon", human_secs(expires - now)),
                    );
                } else {
                    r.say(
                        Verdict::Ok,
                        format!(
                            "member of mesh {id}; the credential is valid for {} more",
                            human_secs(expires - now)
                        ),
                    );
                }
            }
            _ => r.say(
                Verdict::Fail,
                "the daemon has no credential: start it with --credential CRED (from proxymesh mesh admit)",
            ),
        }
    }

    // 4. The relays: reachable over each transport, and our reservation.
    if mesh.relays.is_empty() {
        r.say(
            Verdict::Warn,
            "no relays configured: only peers with public addresses can be reached",
        );
    }
    let mut reserved_anywhere = false;
    for relay in &mesh.relays {
        let Ok(addr) = relay.addr.parse::<Multiaddr>() else {
            r.say(
                Verdict::Warn,
                format!("cannot read the relay address {}", relay.addr),
            );
            continue;
        };
        let (quic, tcp) = both_transports(&addr);
        let (q, t) = futures::join!(
            probe(quic.clone(), probe_timeout),
            probe(tcp.clone(), probe_timeout)
        );
        let name = relay_name(&addr);
        match (&q, &t) {
            (Ok(qt), Ok(tt)) => r.say(
                Verdict::Ok,
                format!(
                    "relay {name} answers over QUIC ({} ms) and TCP ({} ms)",
                    qt.as_millis(),
                    tt.as_millis()
                ),
            ),
            (Err(qe), Ok(_)) => r.say(
                Verdict::Warn,
                format!("relay {name}: QUIC (UDP) gets no answer ({qe}) but TCP does: UDP is blocked on this network (or at the relay). The mesh runs over TCP: it works, slower, and hole punching over QUIC is impossible. Open outbound UDP to the relay's port for better paths."),
            ),
            (Ok(_), Err(te)) => r.say(
                Verdict::Warn,
                format!("relay {name}: QUIC answers but TCP does not ({te}); sites without UDP cannot reach it"),
            ),
            (Err(qe), Err(te)) => r.say(
                Verdict::Fail,
                format!("relay {name} answers neither QUIC ({qe}) nor TCP ({te}): it is down or unreachable from here. Check that proxymesh-relay runs there and that a firewall lets this host reach its port."),
            ),
        }
        if relay.reserved {
            reserved_anywhere = true;
            r.say(
                Verdict::Ok,
                format!(
                    "holding a reservation at relay {name}: other sites can reach this one through it{}",
                    relay
                        .circuit_addr
                        .as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default()
                ),
            );
        } else if relay.joined {
            r.say(
                Verdict::Warn,
                format!("relay {name} knows this daemon as a member but holds no reservation yet (retrying)"),
            );
        } else {
            r.say(
                Verdict::Warn,
                format!(
                    "no reservation at relay {name} yet: the daemon keeps retrying (see its log)"
                ),
            );
        }
    }
    let public = mesh
        .external_addrs
        .iter()
        .any(|a| !a.contains("/p2p-circuit"));
    if !mesh.relays.is_empty() && !reserved_anywhere && !public {
        r.say(
            Verdict::Fail,
            "no relay holds a reservation for this daemon and it has no public address: other sites cannot reach it",
        );
    }

    // 5. The NAT.
    let direct: Vec<&String> = mesh
        .external_addrs
        .iter()
        .filter(|a| !a.contains("/p2p-circuit"))
        .collect();
    match mesh.nat.as_deref() {
        Some("public") => r.say(
            Verdict::Ok,
            format!(
                "AutoNAT: publicly reachable{}",
                direct
                    .first()
                    .map(|a| format!(" at {a}"))
                    .unwrap_or_default()
            ),
        ),
        Some("private") => r.say(
            Verdict::Ok,
            "AutoNAT: behind a NAT or firewall (not dialable from outside): other sites come through the relay, and a direct path needs a hole punch",
        ),
        _ => r.say(
            Verdict::Ok,
            format!(
                "AutoNAT has no verdict yet{}",
                if direct.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; confirmed external addresses: {}",
                        direct
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
        ),
    }

    // 6. Another daemon with this identity: the relay keeps the newest
    // reservation of a peer ID, so two daemons with one identity keep
    // taking each other's place.
    if mesh.reservations_lost >= 3 {
        r.say(
            Verdict::Fail,
            format!("the relays closed this daemon's reserved connection {} times in the last 5 minutes: most likely another daemon runs with this identity (peer {}; the same data directory started on another host, e.g. a second login node), and the two take each other's place at the relay. Stop one of them. (A very unstable path to the relay does this too.)", mesh.reservations_lost, status.peer_id),
        );
    }

    // 7. A connection to another site.
    if let Some((key, peer)) = target {
        try_peer(conn, &mut r, key, peer).await;
    }

    Ok(if r.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// A ticket (its daemon) or a bare peer ID (a made-up object of it).
fn parse_target(t: &str) -> Result<(Key, PeerId), CliError> {
    if let Ok(key) = t.parse::<Key>() {
        let peer = key
            .peer
            .ok_or_else(|| CliError::usage("the ticket names no daemon"))?;
        return Ok((key, peer));
    }
    match t.parse::<PeerId>() {
        Ok(peer) => Ok((Key::on_peer(ObjectId::random(), peer), peer)),
        Err(_) => Err(CliError::usage(format!(
            "{t:?} is neither a ticket (pm1...) nor a peer ID (12D3Koo...)"
        ))),
    }
}

async fn try_peer(conn: &DaemonConnector, r: &mut Report, key: Key, peer: PeerId) {
    let started = Instant::now();
    match conn.exists(&key).await {
        Ok(found) => r.say(
            Verdict::Ok,
            format!(
                "reached {peer} in {} ms{}",
                started.elapsed().as_millis(),
                if key.peer.is_some() && found {
                    ""
                } else {
                    " (it answered the request)"
                }
            ),
        ),
        Err(e) => {
            r.say(Verdict::Fail, format!("cannot reach {peer}: {e}"));
            return;
        }
    }
    // A direct path: look at the connections the daemon holds to it.
    let deadline = started + Duration::from_secs(12);
    loop {
        let paths = match conn.status().await {
            Ok(s) => connection_paths(&s, &peer),
            Err(_) => Vec::new(),
        };
        if paths.contains(&Path::Direct) {
            r.say(
                Verdict::Ok,
                format!(
                    "a direct path to {peer} is up (within {} ms of the first request): bulk transfers run on it",
                    started.elapsed().as_millis()
                ),
            );
            return;
        }
        if Instant::now() >= deadline {
            let how = if paths.is_empty() {
                "no connection left open".to_string()
            } else {
                "only the relayed connection".to_string()
            };
            r.say(
                Verdict::Warn,
                format!("no direct path to {peer} after {} s ({how}): hole punching did not succeed (a symmetric NAT or a firewall on either side). Transfers work over the relay, limited by its bandwidth.", deadline.duration_since(started).as_secs()),
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn connection_paths(s: &Status, peer: &PeerId) -> Vec<Path> {
    let peer = peer.to_string();
    s.mesh
        .as_ref()
        .and_then(|m| m.peers.iter().find(|p| p.peer_id == peer))
        .map(|p| p.connections.iter().map(|c| c.path).collect())
        .unwrap_or_default()
}

/// `addr` over QUIC and over TCP (a proxymesh relay listens on one port
/// for both).
fn both_transports(addr: &Multiaddr) -> (Multiaddr, Multiaddr) {
    let mut quic = Multiaddr::empty();
    let mut tcp = Multiaddr::empty();
    let mut iter = addr.iter().peekable();
    while let Some(p) = iter.next() {
        match p {
            Protocol::Udp(port) => {
                if matches!(iter.peek(), Some(Protocol::QuicV1)) {
                    iter.next();
                }
                quic.push(Protocol::Udp(port));
                quic.push(Protocol::QuicV1);
                tcp.push(Protocol::Tcp(port));
            }
            Protocol::Tcp(port) => {
                quic.push(Protocol::Udp(port));
                quic.push(Protocol::QuicV1);
                tcp.push(Protocol::Tcp(port));
            }
            other => {
                quic.push(other.clone());
                tcp.push(other);
            }
        }
    }
    (quic, tcp)
}

/// `host:port (…last 6 of its peer ID)`, for the report.
fn relay_name(addr: &Multiaddr) -> String {
    let mut host = String::new();
    for p in addr.iter() {
        match p {
            Protocol::Ip4(ip) => host = ip.to_string(),
            Protocol::Ip6(ip) => host = ip.to_string(),
            Protocol::Dns(d) | Protocol::Dns4(d) | Protocol::Dns6(d) => host = d.to_string(),
            Protocol::Udp(port) | Protocol::Tcp(port) => host = format!("{host}:{port}"),
            _ => {}
        }
    }
    match crate::mesh::addr::peer_of(addr) {
        Some(id) => {
            let id = id.to_string();
            format!("{host} (…{})", &id[id.len().saturating_sub(6)..])
        }
        None => host,
    }
}

/// Dial `addr` from a throw-away identity; how long the connection took.
async fn probe(addr: Multiaddr, limit: Duration) -> Result<Duration, String> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_quic()
        .with_behaviour(|_| libp2p::swarm::dummy::Behaviour)
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(1)))
        .build();
    let started = Instant::now();
    swarm.dial(addr).map_err(|e| e.to_string())?;
    let outcome = tokio::time::timeout(limit, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => return Ok(started.elapsed()),
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(crate::mesh::event_loop::describe_dial_error(&error))
                }
                _ => {}
            }
        }
    })
    .await;
    match outcome {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

fn human_secs(s: u64) -> String {
    match s {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s if s >= 120 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_address_is_probed_over_both_transports() {
        let id = PeerId::random();
        let quic: Multiaddr = format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{id}")
            .parse()
            .unwrap();
        let tcp: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{id}").parse().unwrap();
        assert_eq!(both_transports(&quic), (quic.clone(), tcp.clone()));
        assert_eq!(both_transports(&tcp), (quic, tcp));
    }

    #[test]
    fn targets_are_tickets_or_peer_ids() {
        let peer = PeerId::random();
        let (_, p) = parse_target(&peer.to_string()).unwrap();
        assert_eq!(p, peer);
        let ticket = Key::on_peer(ObjectId::random(), peer).to_string();
        assert_eq!(parse_target(&ticket).unwrap().1, peer);
        assert!(parse_target("nonsense").is_err());
    }
}
