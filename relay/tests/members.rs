//! The member protocol against a real relay on loopback: members are
//! welcomed, reserve and find each other; non-members are refused,
//! disconnected and denied reservations; meshes stay apart; revocations
//! disconnect members; connections are bounded.

mod common;

use std::time::{Duration, SystemTime};

use common::{refused, welcomed, ClientHandle, Mesh, WAIT};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use proxymesh::membership::wire::{Member, Message};
use proxymesh::membership::{Authority, Credential, Policy};

const HOUR: Duration = Duration::from_secs(3600);

fn addrs(port: u16) -> Vec<Multiaddr> {
    vec![
        format!("/ip4/192.0.2.7/udp/{port}/quic-v1")
            .parse()
            .unwrap(),
        format!("/ip4/192.0.2.7/tcp/{port}").parse().unwrap(),
    ]
}

fn peers(members: &[Member]) -> Vec<PeerId> {
    let mut p: Vec<PeerId> = members.iter().map(|m| m.peer).collect();
    p.sort();
    p
}

#[tokio::test]
async fn members_are_welcomed_reserve_and_find_each_other() {
    // This test embeds the relay through the library API.
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let config = proxymesh_relay::RelayConfig::new(
        "127.0.0.1".parse().unwrap(),
        0,
        dir.path().join("relay.key"),
        Policy::Meshes(vec![mesh.authority.mesh_id()]),
    );
    let relay = proxymesh_relay::run(config).await.unwrap();
    let relay_addr = relay.quic_address().unwrap().clone();
    assert!(relay.tcp_address().is_some());

    // A joins first: nobody else yet. Then it gets a reservation.
    let mut a = ClientHandle::spawn();
    let others = a.join(&relay_addr, &mesh, addrs(4002)).await;
    assert!(others.is_empty(), "{others:?}");
    a.reserve_via(&relay_addr, 2).await;

    // B joins over TCP and sees A, with A's credential and addresses.
    let mut b = ClientHandle::spawn();
    let tcp = relay.tcp_address().unwrap().clone();
    let others = b.join(&tcp, &mesh, addrs(4003)).await;
    assert_eq!(peers(&others), vec![a.peer_id]);
    assert_eq!(others[0].addrs, addrs(4002));
    others[0]
        .credential
        .as_ref()
        .unwrap()
        .check(a.peer_id, &[mesh.authority.mesh_id()], SystemTime::now())
        .expect("a listed credential verifies on its own");

    // A says hello again with new addresses: still one entry, updated.
    let again = welcomed(
        a.hello(
            relay.peer_id(),
            Some(mesh.credential(a.peer_id)),
            addrs(5002),
        )
        .await,
    );
    assert_eq!(peers(&again), vec![b.peer_id]);
    assert_eq!(again[0].addrs, addrs(4003));
    let again = welcomed(
        b.hello(
            relay.peer_id(),
            Some(mesh.credential(b.peer_id)),
            addrs(4003),
        )
        .await,
    );
    assert_eq!(peers(&again), vec![a.peer_id]);
    assert_eq!(again[0].addrs, addrs(5002));
    assert_eq!(relay.members().listed(), 2);

    // A leaves: the relay forgets it, and B no longer sees it.
    let a_id = a.peer_id;
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.members().listed() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay still lists A after it disconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!relay.members().is_member(&a_id, SystemTime::now()));
    let after = welcomed(
        b.hello(
            relay.peer_id(),
            Some(mesh.credential(b.peer_id)),
            addrs(4003),
        )
        .await,
    );
    assert!(after.is_empty(), "{after:?}");
    relay.shutdown().await.unwrap();
}

/// A credential of `impostor` whose mesh field claims `mesh`: re-encoded
/// with a valid checksum, so only the signature can tell.
fn forged(impostor: &Authority, mesh: &Mesh, peer: PeerId) -> Credential {
    let now = SystemTime::now();
    let text = impostor.admit(peer, now, now + HOUR).to_string();
    let encoded = text.strip_prefix("pmc1").unwrap().to_ascii_uppercase();
    let mut raw = data_encoding::BASE32_NOPAD
        .decode(encoded.as_bytes())
        .unwrap();
    raw.truncate(raw.len() - 4); // checksum
    raw[1..33].copy_from_slice(&mesh.authority.mesh_id().public_key().to_bytes());
    let sum = blake3::hash(&raw);
    raw.extend_from_slice(&sum.as_bytes()[..4]);
    let text = format!(
        "pmc1{}",
        data_encoding::BASE32_NOPAD
            .encode(&raw)
            .to_ascii_lowercase()
    );
    text.parse().expect("a forged credential still parses")
}

#[tokio::test]
async fn non_members_are_refused_disconnected_and_denied_reservations() {
    let mesh = Mesh::new();
    let foreign = Mesh::new();
    let impostor = Authority::generate();
    let (relay, _dir) = mesh.start_relay(&[]);
    let now = SystemTime::now();
    let (m, f, imp) = (&mesh, &foreign, &impostor);
    type MakeCredential<'a> = Box<dyn Fn(PeerId) -> Option<Credential> + 'a>;
    let cases: Vec<(&str, MakeCredential, &str)> = vec![
        ("no credential", Box::new(|_| None), "no credential"),
        (
            "another peer's credential",
            Box::new(move |_| Some(m.credential(PeerId::random()))),
            "issued for peer",
        ),
        (
            "an expired credential",
            Box::new(move |p| Some(m.authority.admit(p, now - 2 * HOUR, now - HOUR))),
            "expired",
        ),
        (
            "a credential of a mesh not served here",
            Box::new(move |p| Some(f.credential(p))),
            "not served here",
        ),
        (
            "a forged credential",
            Box::new(move |p| Some(forged(imp, m, p))),
            "invalid signature",
        ),
    ];
    for (what, credential, expected) in cases {
        let mut client = ClientHandle::spawn();
        client.connect(&relay.quic()).await;
        let reason = refused(
            client
                .hello(relay.peer_id, credential(client.peer_id), addrs(4002))
                .await,
        );
        assert!(reason.contains(expected), "{what}: {reason}");
        client.disconnected(relay.peer_id, WAIT).await;
        // Asking for a reservation anyway (over a new connection) fails.
        client.reservation_denied(&relay.tcp()).await;
        let id = client.peer_id.to_string();
        relay.wait_for_line(
            &format!("{what}: the refusal, with the peer and the reason"),
            |l| l.contains("refused") && l.contains(&id) && l.contains(expected),
            WAIT,
        );
        relay.wait_for_line(
            &format!("{what}: the denied reservation"),
            |l| l.contains("reservation refused") && l.contains(&id) && l.contains("not a member"),
            WAIT,
        );
    }

    // A member is not listed with any of them, and its reservation works.
    let mut member = ClientHandle::spawn();
    let others = member.join(&relay.quic(), &mesh, addrs(4009)).await;
    assert!(
        others.is_empty(),
        "refused peers are never listed: {others:?}"
    );
    member.reserve_via(&relay.quic(), 2).await;
}

#[tokio::test]
async fn a_peer_that_never_says_hello_gets_no_reservation() {
    let mesh = Mesh::new();
    let (relay, _dir) = mesh.start_relay(&[]);
    let mut client = ClientHandle::spawn();
    client.reservation_denied(&relay.quic()).await;
    relay.wait_for_log("reservation refused", 1, WAIT);
    // And a circuit to a member is refused to it as well.
    let mut member = ClientHandle::spawn();
    member.join(&relay.tcp(), &mesh, Vec::new()).await;
    let target = member.reserve_via(&relay.tcp(), 2).await;
    let member_id = member.peer_id;
    client.with(move |s| s.dial(target).expect("dial via the relay"));
    client
        .wait_for("the circuit to be refused", WAIT, |e| match e {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if *peer_id == member_id => {
                panic!("a non-member got a circuit")
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(p), ..
            } if *p == member_id => Some(()),
            _ => None,
        })
        .await;
    let id = client.peer_id.to_string();
    relay.wait_for_line(
        "the refused circuit, with the peer",
        |l| l.contains("circuit refused") && l.contains(&id) && l.contains("not a member"),
        WAIT,
    );
}

#[tokio::test]
async fn one_relay_keeps_two_meshes_apart() {
    let (x, y) = (Mesh::new(), Mesh::new());
    let (relay, _dir) = x.start_relay(&["--mesh", &y.id()]);
    let addr = relay.quic();
    let mut x1 = ClientHandle::spawn();
    let mut y1 = ClientHandle::spawn();
    let mut x2 = ClientHandle::spawn();
    let mut y2 = ClientHandle::spawn();
    assert!(x1.join(&addr, &x, addrs(1)).await.is_empty());
    let seen = y1.join(&addr, &y, addrs(2)).await;
    assert!(
        seen.is_empty(),
        "Y's first member sees nobody of X: {seen:?}"
    );
    assert_eq!(peers(&x2.join(&addr, &x, addrs(3)).await), vec![x1.peer_id]);
    assert_eq!(peers(&y2.join(&addr, &y, addrs(4)).await), vec![y1.peer_id]);
    let again = welcomed(
        x1.hello(relay.peer_id, Some(x.credential(x1.peer_id)), addrs(1))
            .await,
    );
    assert_eq!(peers(&again), vec![x2.peer_id]);
    let again = welcomed(
        y1.hello(relay.peer_id, Some(y.credential(y1.peer_id)), addrs(2))
            .await,
    );
    assert_eq!(peers(&again), vec![y2.peer_id]);
    // Both meshes' members reserve.
    x1.reserve_via(&addr, 2).await;
    y1.reserve_via(&addr, 2).await;
}

#[tokio::test]
async fn revoked_members_are_disconnected_and_refused() {
    let mesh = Mesh::new();
    let path = mesh.revocations_path();
    assert!(!path.exists(), "no list yet when the relay starts");
    let (relay, _dir) = mesh.start_relay(&["--revocations", path.to_str().unwrap()]);
    relay.wait_for_log("does not exist", 1, WAIT);
    let addr = relay.tcp();
    let mut a = ClientHandle::spawn();
    let mut b = ClientHandle::spawn();
    a.join(&addr, &mesh, addrs(1)).await;
    a.reserve_via(&addr, 2).await;
    assert_eq!(
        peers(&b.join(&addr, &mesh, addrs(2)).await),
        vec![a.peer_id]
    );
    b.reserve_via(&addr, 2).await;

    let list = mesh.revoke(&[a.peer_id]);
    // Polled every 5 s: well within 30 s.
    a.disconnected(relay.peer_id, WAIT).await;
    relay.wait_for_log("revocation list loaded", 1, WAIT);

    // A comes back: refused, and disconnected again.
    a.connect(&addr).await;
    let reason = refused(
        a.hello(relay.peer_id, Some(mesh.credential(a.peer_id)), addrs(1))
            .await,
    );
    assert!(reason.contains("revoked"), "{reason}");
    a.disconnected(relay.peer_id, WAIT).await;

    // B stayed connected, no longer sees A, and learns the list.
    let answer = b
        .hello(relay.peer_id, Some(mesh.credential(b.peer_id)), addrs(2))
        .await;
    match answer {
        Message::Welcome {
            members,
            revocations,
        } => {
            assert!(members.is_empty(), "{members:?}");
            assert_eq!(revocations, Some(list));
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    let relay_id = relay.peer_id;
    let quiet = tokio::time::timeout(
        Duration::from_secs(3),
        b.wait_for("nothing", Duration::from_secs(60), |e| match e {
            SwarmEvent::ConnectionClosed { peer_id, .. } if *peer_id == relay_id => {
                panic!("B, not revoked, was disconnected")
            }
            _ => None::<()>,
        }),
    )
    .await;
    assert!(quiet.is_err(), "no event ends the wait");
}

#[tokio::test]
async fn connections_are_limited_in_total_and_per_peer() {
    let mesh = Mesh::new();
    let (relay, _dir) =
        mesh.start_relay(&["--max-connections", "2", "--max-connections-per-peer", "1"]);
    let addr = relay.tcp();
    let relay_id = relay.peer_id;
    let mut a = ClientHandle::spawn();
    a.join(&addr, &mesh, Vec::new()).await;

    // A second connection of A is refused.
    let second = addr.clone();
    a.with(move |s| {
        s.dial(
            DialOpts::peer_id(relay_id)
                .addresses(vec![second])
                .condition(PeerCondition::Always)
                .build(),
        )
        .unwrap()
    });
    a.wait_for("A's second connection to be refused", WAIT, |e| match e {
        SwarmEvent::ConnectionClosed {
            peer_id,
            num_established: 1,
            ..
        } if *peer_id == relay_id => Some(()),
        SwarmEvent::OutgoingConnectionError {
            peer_id: Some(p), ..
        } if *p == relay_id => Some(()),
        _ => None,
    })
    .await;
    relay.wait_for_log("established connections per peer", 1, WAIT);

    // B fills the relay; C is refused.
    let mut b = ClientHandle::spawn();
    b.join(&addr, &mesh, Vec::new()).await;
    let mut c = ClientHandle::spawn();
    let dial = addr.clone();
    c.with(move |s| s.dial(dial).unwrap());
    c.wait_for("C's connection to be refused", WAIT, |e| match e {
        SwarmEvent::ConnectionClosed { peer_id, .. } if *peer_id == relay_id => Some(()),
        SwarmEvent::OutgoingConnectionError {
            peer_id: Some(p), ..
        } if *p == relay_id => Some(()),
        _ => None,
    })
    .await;
    relay.wait_for_log("at most 2 established connections", 1, WAIT);

    // A and B are still served.
    for client in [&mut a, &mut b] {
        let credential = mesh.credential(client.peer_id);
        let others = welcomed(client.hello(relay_id, Some(credential), Vec::new()).await);
        assert_eq!(others.len(), 1);
    }
}

#[tokio::test]
async fn peers_without_valid_membership_are_closed_after_the_hello_deadline() {
    // Embedded, with a short deadline (the binary's is 30 s).
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    let mut config = proxymesh_relay::RelayConfig::new(
        "127.0.0.1".parse().unwrap(),
        0,
        dir.path().join("relay.key"),
        Policy::Meshes(vec![mesh.authority.mesh_id()]),
    );
    config.membership.hello_deadline = Duration::from_secs(2);
    let relay = proxymesh_relay::run(config).await.unwrap();
    let addr = relay.quic_address().unwrap().clone();
    let relay_id = relay.peer_id();

    // A member whose credential runs out in 4 s, a member with a long one,
    // and a peer that never says hello.
    let mut short = ClientHandle::spawn();
    short.connect(&addr).await;
    let now = SystemTime::now();
    let expiring = mesh
        .authority
        .admit(short.peer_id, now, now + Duration::from_secs(4));
    let expires = expiring.expires(); // whole seconds
    welcomed(short.hello(relay_id, Some(expiring), Vec::new()).await);
    let mut member = ClientHandle::spawn();
    member.join(&addr, &mesh, Vec::new()).await;
    let mut silent = ClientHandle::spawn();
    let connected = tokio::time::Instant::now();
    silent.connect(&addr).await;

    silent.disconnected(relay_id, WAIT).await;
    assert!(
        connected.elapsed() >= Duration::from_secs(2),
        "closed only after the deadline: {:?}",
        connected.elapsed()
    );
    short.disconnected(relay_id, WAIT).await;
    assert!(
        SystemTime::now() >= expires,
        "closed only once its credential expired"
    );
    // The member with a valid credential stays connected and served.
    let relay_peer = relay_id;
    let quiet = tokio::time::timeout(
        Duration::from_secs(3),
        member.wait_for("nothing", Duration::from_secs(60), |e| match e {
            SwarmEvent::ConnectionClosed { peer_id, .. } if *peer_id == relay_peer => {
                panic!("a valid member was disconnected")
            }
            _ => None::<()>,
        }),
    )
    .await;
    assert!(quiet.is_err(), "no event ends the wait");
    welcomed(
        member
            .hello(relay_id, Some(mesh.credential(member.peer_id)), Vec::new())
            .await,
    );
    relay.shutdown().await.unwrap();
}
