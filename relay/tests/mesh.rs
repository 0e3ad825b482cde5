//! Real libp2p clients against a real relay on loopback: reservations over
//! QUIC and TCP, rendezvous, relayed transfers and circuit limits.

mod common;

use std::time::{Duration, Instant};

use common::{
    payload, peer_of, serve_transfers, transfer, ClientEvent, ClientHandle, RelayProcess,
};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{ping, rendezvous, Multiaddr, PeerId};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn reservations_are_accepted_over_quic_and_tcp() {
    let (relay, _dir) = RelayProcess::start(&[]);
    for address in [relay.quic(), relay.tcp()] {
        let mut client = ClientHandle::spawn();
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

/// Connect `client` to the relay and wait for the connection.
async fn connect(client: &mut ClientHandle, relay_addr: &Multiaddr) {
    let relay_id = peer_of(relay_addr).unwrap();
    let addr = relay_addr.clone();
    client.with(move |s| s.dial(addr).expect("dial relay"));
    client
        .wait_for("connection to the relay", WAIT, |e| match e {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if *peer_id == relay_id => Some(()),
            SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
            _ => None,
        })
        .await;
}

#[tokio::test]
async fn embedded_relay_serves_rendezvous_registration_and_discovery() {
    // This test embeds the relay through the library API instead of the binary.
    let dir = tempfile::tempdir().unwrap();
    let config = proxymesh_relay::RelayConfig::new(
        "127.0.0.1".parse().unwrap(),
        0,
        dir.path().join("relay.key"),
    );
    let relay = proxymesh_relay::run(config).await.unwrap();
    let relay_id = relay.peer_id();
    let relay_addr = relay.quic_address().unwrap().clone();
    assert!(relay.tcp_address().is_some());

    // A registers its relayed address under two namespaces.
    let mut a = ClientHandle::spawn();
    let circuit = a.reserve_via(&relay_addr, 2).await;
    let announced = circuit.clone();
    a.with(move |s| s.add_external_address(announced));
    let namespaces = [
        "proxymesh",
        "proxymesh-ep-5d1c1b7e-6a43-4bb5-9d58-2d2f1a7c9e10",
    ];
    for ns in namespaces {
        let namespace = rendezvous::Namespace::new(ns.to_string()).unwrap();
        a.with(move |s| {
            s.behaviour_mut()
                .rendezvous
                .register(namespace, relay_id, None)
                .unwrap()
        });
        a.wait_for("registration", WAIT, |e| match e {
            SwarmEvent::Behaviour(ClientEvent::Rendezvous(
                rendezvous::client::Event::Registered { namespace, .. },
            )) if namespace.to_string().as_str() == ns => Some(()),
            SwarmEvent::Behaviour(ClientEvent::Rendezvous(
                rendezvous::client::Event::RegisterFailed { error, .. },
            )) => panic!("registration refused: {error:?}"),
            _ => None,
        })
        .await;
    }

    // B finds A, with its address, under the endpoint namespace only.
    let mut b = ClientHandle::spawn();
    connect(&mut b, &relay_addr).await;
    for (ns, expect_a) in [(namespaces[1], true), ("proxymesh-ep-unknown", false)] {
        let namespace = rendezvous::Namespace::new(ns.to_string()).unwrap();
        b.with(move |s| {
            s.behaviour_mut()
                .rendezvous
                .discover(Some(namespace), None, None, relay_id)
        });
        let registrations = b
            .wait_for("discovery", WAIT, |e| match e {
                SwarmEvent::Behaviour(ClientEvent::Rendezvous(
                    rendezvous::client::Event::Discovered { registrations, .. },
                )) => Some(registrations.clone()),
                SwarmEvent::Behaviour(ClientEvent::Rendezvous(
                    rendezvous::client::Event::DiscoverFailed { error, .. },
                )) => panic!("discovery refused: {error:?}"),
                _ => None,
            })
            .await;
        if expect_a {
            assert_eq!(registrations.len(), 1, "{registrations:?}");
            assert_eq!(registrations[0].record.peer_id(), a.peer_id);
            assert_eq!(registrations[0].namespace.to_string(), ns);
            assert_eq!(
                registrations[0].record.addresses(),
                std::slice::from_ref(&circuit)
            );
        } else {
            assert!(registrations.is_empty(), "{registrations:?}");
        }
    }
    relay.shutdown().await.unwrap();
}

/// A reserves on the relay over TCP and serves transfers; B dials A through
/// the relay. Returns both once the relayed connection is up.
async fn relayed_pair(relay: &RelayProcess) -> (ClientHandle, ClientHandle) {
    let mut a = ClientHandle::spawn();
    serve_transfers(&mut a.control);
    let target = a.reserve_via(&relay.tcp(), 2).await;
    let mut b = ClientHandle::spawn();
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
    let (relay, _dir) = RelayProcess::start(&[]);
    let (a, mut b) = relayed_pair(&relay).await;
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
    let (relay, _dir) = RelayProcess::start(&["--max-circuit-bytes", "64KiB"]);
    let (a, mut b) = relayed_pair(&relay).await;
    let result = transfer(&mut b.control, a.peer_id, &payload(1 << 20)).await;
    assert!(result.is_err(), "1 MiB passed a 64 KiB circuit limit");
    closed(&mut b, a.peer_id, WAIT).await;
    let logs = relay.wait_for_log("circuit closed", 1, Duration::from_secs(10));
    assert!(logs.contains("Max circuit bytes"), "relay logs:\n{logs}");
}

#[tokio::test]
async fn circuit_duration_limit_cuts_the_relayed_connection() {
    let (relay, _dir) = RelayProcess::start(&["--max-circuit-duration", "3"]);
    let (a, mut b) = relayed_pair(&relay).await;
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
    let (relay, _dir) = RelayProcess::start(&["--circuit-rate-per-peer", "1"]);
    let (a, mut b) = relayed_pair(&relay).await;
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
