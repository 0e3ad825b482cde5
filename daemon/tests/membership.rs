//! Mesh membership with real processes: a relay serving a throw-away mesh,
//! member daemons, and outsiders — a daemon of another mesh, an open-mesh
//! daemon, a bare libp2p node speaking our protocols, a daemon whose
//! credential expired or was revoked — each refused at every door.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use proxymesh::membership::wire::{read_message, write_message, Message};
use proxymesh::Key;
use proxymesh_daemon::mesh::client::{self, RateFloor, Timeouts};
use proxymesh_daemon::mesh::protocol::{RemoteName, PROTOCOL as FETCH};
use proxymesh_daemon::mesh::MeshError;
use proxymesh_suite::{bin_path, http, wait_until, DaemonProcess, RelayProcess, TestMesh};

const OCTET: (&str, &str) = ("content-type", "application/octet-stream");
/// Short enough that the tests finish soon, long enough for a loaded machine.
const FAST: [&str; 4] = ["--connect-timeout", "5", "--hole-punch-timeout", "2"];

fn status(d: &DaemonProcess) -> serde_json::Value {
    http(&d.api, "GET", "/v1/status", &[], b"").json()
}

fn relay_flag(d: &DaemonProcess, flag: &str) -> bool {
    status(d)["mesh"]["relays"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r[flag] == true))
}

fn member(relay: &RelayProcess, extra: &[&str]) -> DaemonProcess {
    let mut flags: Vec<&str> = FAST.to_vec();
    flags.extend_from_slice(extra);
    let d = relay.start_daemon(&flags);
    wait_until(Duration::from_secs(30), || {
        relay_flag(&d, "reserved").then_some(())
    })
    .unwrap_or_else(|| panic!("member got no reservation: {}", status(&d)));
    d
}

fn put(d: &DaemonProcess, body: &[u8]) -> String {
    let r = http(&d.api, "POST", "/v1/objects", &[OCTET], body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["key"].as_str().unwrap().to_string()
}

fn get(d: &DaemonProcess, ticket: &str) -> proxymesh_suite::RawResponse {
    http(&d.api, "GET", &format!("/v1/objects/{ticket}"), &[], b"")
}

fn exists_locally(d: &DaemonProcess, ticket: &str) -> bool {
    http(&d.api, "HEAD", &format!("/v1/objects/{ticket}"), &[], b"").status == 200
}

/// A daemon joined to `relay` but holding `credential` (or `--open-mesh`).
fn outsider(
    relay: &RelayProcess,
    credential: Option<&dyn Fn(&std::path::Path) -> String>,
) -> DaemonProcess {
    let tmp = tempfile::tempdir().unwrap();
    let mut flags = relay.daemon_flags();
    match credential {
        Some(issue) => flags.extend(["--credential".to_string(), issue(tmp.path())]),
        None => flags.push("--open-mesh".into()),
    }
    flags.extend(FAST.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    DaemonProcess::start_in(tmp.path(), &flags).keep_dir(tmp)
}

#[test]
fn members_fetch_from_each_other_and_outsider_daemons_reach_nothing() {
    let relay = RelayProcess::start(&[]);
    let mesh = relay.mesh.as_ref().unwrap();
    let a = member(&relay, &[]);
    let b = member(&relay, &[]);
    let data = proxymesh::testing::pattern(300_000, 1).to_vec();
    let ticket = put(&a, &data);
    let r = get(&b, &ticket);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, data);
    let s = status(&a);
    assert_eq!(s["mesh"]["mesh_id"], mesh.id());
    assert_eq!(s["mesh"]["open_mesh"], false);
    // The members know each other through the relay's directory.
    let known = wait_until(Duration::from_secs(20), || {
        let d = status(&a)["mesh"]["discovered"].clone();
        d.as_array()?
            .iter()
            .any(|p| p["peer_id"] == b.peer_id.as_str() && p["uuid"] == b.uuid.as_str())
            .then_some(())
    });
    assert!(known.is_some(), "A never learned B: {}", status(&a));

    let other = TestMesh::new();
    let issue_foreign = |dir: &std::path::Path| other.admit_dir(dir);
    for (what, c) in [
        (
            "a member of another mesh",
            outsider(&relay, Some(&issue_foreign)),
        ),
        ("an open-mesh daemon", outsider(&relay, None)),
    ] {
        // The relay never admits it, so it never reserves and sees nobody.
        std::thread::sleep(Duration::from_secs(3));
        let s = status(&c);
        assert!(
            !relay_flag(&c, "joined") && !relay_flag(&c, "reserved"),
            "{what}: {s}"
        );
        assert!(
            s["mesh"]["discovered"].as_array().unwrap().is_empty(),
            "{what} discovered members: {s}"
        );
        // A ticket does not get it in.
        let r = get(&c, &ticket);
        assert!(r.status >= 500, "{what}: {} {}", r.status, r.text());
        assert_ne!(r.body, data);
        // Nor can it evict through the ticket.
        http(&c.api, "DELETE", &format!("/v1/objects/{ticket}"), &[], b"");
        assert!(exists_locally(&a, &ticket), "{what} evicted A's object");
    }
}

/// What the test's own libp2p node saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Connected,
    Closed,
}

/// A libp2p node of the test's own, connected to `addr`.
struct Outsider {
    peer: PeerId,
    control: libp2p_stream::Control,
    events: tokio::sync::mpsc::UnboundedReceiver<Seen>,
    _task: tokio::task::JoinHandle<()>,
}

impl Outsider {
    async fn connect(addr: Multiaddr) -> Outsider {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_quic()
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let peer = *swarm.local_peer_id();
        let control = swarm.behaviour().new_control();
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        swarm.dial(addr).unwrap();
        let task = tokio::spawn(async move {
            while let Some(e) = swarm.next().await {
                let seen = match e {
                    SwarmEvent::ConnectionEstablished { .. } => Seen::Connected,
                    SwarmEvent::ConnectionClosed { .. } => Seen::Closed,
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        panic!("cannot connect: {error}")
                    }
                    _ => continue,
                };
                let _ = tx.send(seen);
            }
        });
        let mut o = Outsider {
            peer,
            control,
            events,
            _task: task,
        };
        o.wait(Seen::Connected).await;
        o
    }

    async fn wait(&mut self, want: Seen) {
        let found = tokio::time::timeout(Duration::from_secs(40), async {
            while let Some(e) = self.events.recv().await {
                if e == want {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "never saw {want:?}");
    }

    async fn stream(&mut self, peer: PeerId, protocol: StreamProtocol) -> libp2p::Stream {
        self.control.open_stream(peer, protocol).await.unwrap()
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(10),
        floor: RateFloor::default(),
    }
}

#[test]
fn a_bare_libp2p_node_is_refused_every_request_and_dropped() {
    let relay = RelayProcess::start(&[]);
    let mesh = relay.mesh.as_ref().unwrap();
    let a = member(&relay, &[]);
    let b = member(&relay, &[]);
    let data = proxymesh::testing::pattern(100_000, 2).to_vec();
    let ticket = put(&a, &data);
    let id = ticket.parse::<Key>().unwrap().id;
    let a_peer: PeerId = a.peer_id.parse().unwrap();
    let b_peer: PeerId = b.peer_id.parse().unwrap();
    let quic: Multiaddr = status(&a)["mesh"]["listen_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str()?.parse::<Multiaddr>().ok())
        .find(|m| m.iter().any(|p| p == Protocol::QuicV1))
        .expect("A listens on QUIC")
        .with(Protocol::P2p(a_peer));
    let other = TestMesh::new();
    let stolen = mesh.admit(b_peer, Duration::from_secs(3600));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Fetch with a valid ticket, without proving membership: refused, dropped.
        let mut o = Outsider::connect(quic.clone()).await;
        let s = o.stream(a_peer, FETCH).await;
        let err = client::get(s, a_peer, &RemoteName::Native(id), 0, None, timeouts())
            .await
            .err()
            .expect("the fetch is refused");
        assert!(matches!(err, MeshError::NotMember { .. }), "{err}");
        assert!(err.to_string().contains("not a member"), "{err}");
        o.wait(Seen::Closed).await;

        // Evict and put: refused the same way.
        let mut o = Outsider::connect(quic.clone()).await;
        let s = o.stream(a_peer, FETCH).await;
        assert!(
            client::evict(s, a_peer, &RemoteName::Native(id), None, timeouts())
                .await
                .is_err()
        );
        let mut o = Outsider::connect(quic.clone()).await;
        let s = o.stream(a_peer, FETCH).await;
        let body: proxymesh_daemon::storage::ChunkStream = Box::pin(futures::stream::iter([Ok(
            bytes::Bytes::from_static(b"planted"),
        )]));
        let planted = RemoteName::Endpoint("planted-key".into());
        assert!(client::put(s, a_peer, &planted, body, 7, timeouts())
            .await
            .is_err());

        // Membership without, with a foreign or with a stolen credential:
        // refused, dropped.
        for what in ["no", "another mesh's", "B's stolen"] {
            let mut o = Outsider::connect(quic.clone()).await;
            let credential = match what {
                "no" => None,
                "another mesh's" => Some(other.admit(o.peer, Duration::from_secs(3600))),
                _ => Some(stolen.clone()),
            };
            let protocol = StreamProtocol::new(proxymesh::membership::wire::PROTOCOL);
            let mut s = o.stream(a_peer, protocol).await;
            let hello = Message::Hello {
                credential: credential.map(|c| c.parse().unwrap()),
                addrs: vec![],
            };
            write_message(&mut s, &hello).await.unwrap();
            match read_message(&mut s).await {
                Ok(Message::Refused(reason)) => eprintln!("{what} credential: refused: {reason}"),
                other => panic!("{what} credential: expected a refusal, got {other:?}"),
            }
            o.wait(Seen::Closed).await;
        }

        // Connecting and staying silent: dropped once the proof is overdue.
        let t = Instant::now();
        let mut o = Outsider::connect(quic).await;
        o.wait(Seen::Closed).await;
        assert!(
            t.elapsed() >= Duration::from_secs(5),
            "dropped before its grace ended"
        );
    });
    // Nothing was evicted or planted.
    assert!(exists_locally(&a, &ticket));
    let planted = http(&a.api, "GET", "/exists?key=planted-key", &[], b"").json();
    assert_eq!(planted["exists"], false);
}

#[test]
fn expired_and_revoked_credentials_are_refused() {
    let relay = RelayProcess::start(&[]);
    let mesh = relay.mesh.as_ref().unwrap();

    // An expired credential: the daemon refuses to start and says why.
    let tmp = tempfile::tempdir().unwrap();
    let peer = proxymesh_daemon::identity::Identity::load_or_create(tmp.path())
        .unwrap()
        .peer_id();
    let expired = mesh.admit(peer, Duration::ZERO);
    let out = Command::new(bin_path("proxymeshd"))
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["--api", "127.0.0.1:0", "--credential", &expired])
        .args(relay.daemon_flags())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired"), "{err}");
    // Without a credential at all it refuses too, saying how to get one.
    let out = Command::new(bin_path("proxymeshd"))
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["--api", "127.0.0.1:0"])
        .args(relay.daemon_flags())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mesh admit") && err.contains("--print-peer-id"),
        "{err}"
    );

    // Revocation: B fetches from A, then the authority revokes B; the relay
    // picks up the list, drops B and hands the list to A, which refuses B.
    let refresh = ["--directory-refresh", "1"];
    let a = member(&relay, &refresh);
    let b = member(&relay, &refresh);
    let first = put(&a, b"before");
    assert_eq!(get(&b, &first).status, 200);
    let b_peer: PeerId = b.peer_id.parse().unwrap();
    let list = mesh.authority.revoke(&mesh.dir, &[b_peer]).unwrap();
    assert_eq!(list.serial(), 1);
    let out = wait_until(Duration::from_secs(60), || {
        (!relay_flag(&b, "joined") && !relay_flag(&b, "reserved")).then_some(())
    });
    assert!(
        out.is_some(),
        "B is still admitted by the relay: {}",
        status(&b)
    );
    // A learns the list at its next directory refresh and forgets B.
    let lists_b = |d: &DaemonProcess| {
        status(d)["mesh"]["discovered"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["peer_id"] == b.peer_id.as_str())
    };
    let forgot = wait_until(Duration::from_secs(60), || (!lists_b(&a)).then_some(()));
    assert!(forgot.is_some(), "A still lists the revoked member");
    // From then on A serves B nothing, by any path.
    let second = put(&a, b"after");
    let r = get(&b, &second);
    assert!(
        r.status >= 500,
        "A served a revoked member: {} {}",
        r.status,
        r.text()
    );
    assert_ne!(r.body, b"after");
    assert!(
        r.text().contains("revoked") || r.text().contains("unreachable"),
        "{}",
        r.text()
    );
    // B's copy of the first object is its own, fetched while it was a member.
    assert_eq!(get(&b, &first).status, 200);
}
