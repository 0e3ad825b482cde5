//! Real libp2p clients, members of a throw-away mesh, against a real relay
//! on loopback: reservations over QUIC and TCP, relayed transfers and
//! circuit limits.

mod common;

use std::time::{Duration, Instant};

use common::{
    payload, serve_transfers, transfer, ClientEvent, ClientHandle, Mesh, RelayProcess, WAIT,
};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{ping, Multiaddr, PeerId};

#[tokio::test]
async fn reservations_are_accepted_over_quic_and_tcp() {
    let mesh = Mesh::new();
    let (relay, _dir) = mesh.start_relay(&[]);
    for (address, quic) in [(relay.quic(), true), (relay.tcp(), false)] {
        let mut client = ClientHandle::spawn();
        // The member's connection, and so its reservation, uses the
        // transport of `address`.
        let remote = client.connect(&address).await;
        assert_eq!(common::is_quic(&remote), quic, "{remote}");
        let credential = mesh.credential(client.peer_id);
        common::welcomed(
            client
                .hello(relay.peer_id, Some(credential), Vec::new())
                .await,
        );
        // Whichever transport the reservation used, the relay announces all
        // its addresses, and the client listens through each.
        let mut relayed = client.reserve(&address, 2).await;
        relayed.sort();
        let mut expected: Vec<Multiaddr> = relay
            .addresses
            .iter()
            .map(|a| {
                a.clone()
                    .with(Protocol::P2pCircuit)
                    .with(Protocol::P2p(client.peer_id))
            })
            .collect();
        expected.sort();
        assert_eq!(relayed, expected);
    }
    relay.wait_for_log("reservation accepted", 2, Duration::from_secs(10));
}

/// A and B join `mesh` at the relay over TCP; A reserves and serves
/// transfers; B dials A through the relay. Returns both once the relayed
/// connection is up.
async fn relayed_pair(relay: &RelayProcess, mesh: &Mesh) -> (ClientHandle, ClientHandle) {
    let mut a = ClientHandle::spawn();
    serve_transfers(&mut a.control);
    a.join(&relay.tcp(), mesh, Vec::new()).await;
    let target = a.reserve_via(&relay.tcp(), 2).await;
    let mut b = ClientHandle::spawn();
    b.join(&relay.tcp(), mesh, Vec::new()).await;
    let a_id = a.peer_id;
    b.with(move |s| s.dial(target).expect("dial A via the relay"));
    b.wait_for("relayed connection to A", WAIT, |e| match e {
        SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } if *peer_id == a_id => {
            assert!(
                endpoint.is_relayed(),
                "connection to A goes through the relay: {endpoint:?}"
            );
            Some(())
        }
        SwarmEvent::OutgoingConnectionError {
            peer_id: Some(p),
            error,
            ..
        } if *p == a_id => {
            panic!("dialing A via the relay failed: {error}")
        }
        _ => None,
    })
    .await;
    (a, b)
}

/// Wait until B's connection to `peer` closes; returns when.
async fn closed(b: &mut ClientHandle, peer: PeerId, within: Duration) -> Instant {
    b.wait_for("the relayed connection to close", within, |e| match e {
        SwarmEvent::ConnectionClosed { peer_id, .. } if *peer_id == peer => Some(Instant::now()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn default_limits_carry_megabytes_and_outlive_short_circuits() {
    let mesh = Mesh::new();
    let (relay, _dir) = mesh.start_relay(&[]);
    let (a, mut b) = relayed_pair(&relay, &mesh).await;
    let data = payload(4 << 20);
    let started = Instant::now();
    transfer(&mut b.control, a.peer_id, &data)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "4 MiB over the relay failed: {e}; relay logs:\n{}",
                relay.logs()
            )
        });
    eprintln!("4 MiB relayed in {:?}", started.elapsed());

    // The connection stays up well past what a short duration limit allows
    // (see the next test), with pings flowing over it.
    let mut pings = 0;
    let quiet = tokio::time::timeout(
        Duration::from_secs(5),
        b.wait_for("nothing", Duration::from_secs(60), |e| match e {
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } if *peer_id == a.peer_id => {
                panic!("relayed connection closed under default limits: {cause:?}")
            }
            SwarmEvent::Behaviour(ClientEvent::Ping(ping::Event {
                peer,
                result: Ok(_),
                ..
            })) if *peer == a.peer_id => {
                pings += 1;
                None::<()>
            }
            _ => None,
        }),
    )
    .await;
    assert!(quiet.is_err(), "no event ends the wait");
    assert!(pings >= 3, "pings over the relayed connection: {pings}");
    transfer(&mut b.control, a.peer_id, &data[..1000])
        .await
        .expect("still usable");
}

#[tokio::test]
async fn circuit_byte_limit_cuts_the_relayed_connection() {
    let mesh = Mesh::new();
    let (relay, _dir) = mesh.start_relay(&["--max-circuit-bytes", "64KiB"]);
    let (a, mut b) = relayed_pair(&relay, &mesh).await;
    let result = transfer(&mut b.control, a.peer_id, &payload(1 << 20)).await;
    assert!(result.is_err(), "1 MiB passed a 64 KiB circuit limit");
    closed(&mut b, a.peer_id, WAIT).await;
    let logs = relay.wait_for_log("circuit closed", 1, Duration::from_secs(10));
    assert!(logs.contains("Max circuit bytes"), "relay logs:\n{logs}");
}

#[tokio::test]
async fn circuit_duration_limit_cuts_the_relayed_connection() {
    let mesh = Mesh::new();
    let (relay, _dir) = mesh.start_relay(&["--max-circuit-duration", "3"]);
    let (a, mut b) = relayed_pair(&relay, &mesh).await;
    let opened = Instant::now();
    // Pings keep flowing, so only the limit can end the connection.
    let at = closed(&mut b, a.peer_id, WAIT).await;
    let lifetime = at - opened;
    assert!(
        lifetime >= Duration::from_secs(2) && lifetime < Duration::from_secs(15),
        "relayed connection lived {lifetime:?} under a 3 s limit"
    );
}

#[tokio::test]
async fn circuit_rate_limit_refuses_a_second_circuit() {
    let mesh = Mesh::new();
    let (relay, _dir) = mesh.start_relay(&["--circuit-rate-per-peer", "1"]);
    let (a, mut b) = relayed_pair(&relay, &mesh).await;
    let a_id = a.peer_id;
    b.with(move |s| {
        s.disconnect_peer_id(a_id).unwrap();
    });
    closed(&mut b, a_id, WAIT).await;
    let target = relay
        .tcp()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(a_id));
    b.with(move |s| s.dial(target).expect("dial A via the relay"));
    b.wait_for("the second circuit to be refused", WAIT, |e| match e {
        SwarmEvent::ConnectionEstablished { peer_id, .. } if *peer_id == a_id => {
            panic!("a second circuit within the hour was allowed")
        }
        SwarmEvent::OutgoingConnectionError {
            peer_id: Some(p), ..
        } if *p == a_id => Some(()),
        _ => None,
    })
    .await;
    relay.wait_for_log("circuit refused", 1, Duration::from_secs(10));
}
