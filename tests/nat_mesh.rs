//! The mesh across real NATs: Linux network namespaces with a public segment
//! (the relay) and two sites behind their own NAT routers (see
//! `natlab/mod.rs`). Each scenario puts an object at site A, gets it at site
//! B, and asserts the bytes and the path the transfer took:
//! 1. both sites behind endpoint-independent NATs → direct (hole-punched);
//! 2. site B behind a symmetric NAT → the punch must fail → over the relay,
//!    with bytes flowing long before the punch would have given up;
//! 3. UDP blocked at site B → over TCP, likewise without waiting;
//! 4. a transfer that starts on the relay (the direct path blocked until its
//!    first bytes arrived) moves to the punched path mid-object;
//! 5. across an emulated long, thin link (100 ms between the sites,
//!    200 Mbit/s each), the lab delays what it should, the object arrives
//!    whole and the sites still punch a direct path.
//!
//! Needs root: fails in CI without it, skips with a reason elsewhere.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use proxymesh_suite::natlab::{udp_round_trips, Host, Lab, LabMesh, Link, Nat, SITE_API};
use proxymesh_suite::{http, wait_until};

const API: &str = SITE_API;
const OCTET: (&str, &str) = ("content-type", "application/octet-stream");

struct Outcome {
    path: String,
    first_byte: Duration,
    first_get: Duration,
    reserved_b: Duration,
    /// When B's status first showed only direct connections to A, from the
    /// start of the get (with `await_direct`).
    direct_after: Option<Duration>,
    /// When it first showed a direct connection to A.
    first_direct: Option<Duration>,
    consumer_status: serde_json::Value,
    /// A's status once the get completed.
    producer_status: serde_json::Value,
}

/// The hole-punch timeout the daemons run with: a transfer that waited for
/// the punch to give up would show its first byte only after it.
const HOLE_PUNCH_TIMEOUT_SECS: u64 = 15;

/// A GET read as it streams: status, `x-proxymesh-path`, time to the first
/// body byte and to the last, and the body. `first_byte` runs once, right
/// after the first body bytes arrived.
struct Timed {
    status: u16,
    path: String,
    first_byte: Duration,
    total: Duration,
    body: Vec<u8>,
}

fn timed_get(api: &str, target: &str, first_byte: impl FnOnce()) -> Timed {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection closed in the headers"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let path = header("x-proxymesh-path");
    let mut body = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let n = s.read(&mut buf).unwrap();
    let first = t.elapsed();
    body.extend_from_slice(&buf[..n]);
    first_byte();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the answer broke after {} bytes: {e}", body.len()),
        }
    }
    Timed {
        status,
        path,
        first_byte: first,
        total: t.elapsed(),
        body,
    }
}

fn reserved_in(lab: &Lab, h: Host) -> bool {
    let s = lab.within(h, || http(API, "GET", "/v1/status", &[], b"").json());
    s["mesh"]["relays"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["reserved"] == true))
}

fn run_scenario(a: Nat, b: Nat, size: usize) -> Option<Outcome> {
    let punchable = a != Nat::Symmetric && b != Nat::Symmetric && b != Nat::UdpBlocked;
    run_in(Lab::new(a, b)?, size, punchable, |_| {}, |_, _| {})
}

/// Start a relay and both sites in `lab`; `before` runs once both hold
/// reservations (shape the lab there); put `size` bytes at A and get them
/// at B, calling `on_first_byte` when B's answer starts. With
/// `await_direct`, B's status is taken once it shows a direct connection to
/// A (up to 30 s).
fn run_in(
    lab: Lab,
    size: usize,
    await_direct: bool,
    before: impl FnOnce(&Lab),
    on_first_byte: impl FnOnce(&Lab, &mut LabMesh) + Send,
) -> Option<Outcome> {
    let mut mesh = LabMesh::start(&lab);
    let punch = HOLE_PUNCH_TIMEOUT_SECS.to_string();
    let start = |h: Host, name: &str| mesh.site(&lab, h, name, &["--hole-punch-timeout", &punch]);
    let site_a = start(Host::A, "a");
    let started_b = Instant::now();
    let site_b = start(Host::B, "b");
    let mut reserved_b = None;
    for (h, d) in [(Host::B, &site_b), (Host::A, &site_a)] {
        let ok = wait_until(Duration::from_secs(60), || {
            reserved_in(&lab, h).then_some(())
        });
        assert!(ok.is_some(), "site daemon {} got no reservation", d.peer_id);
        reserved_b.get_or_insert_with(|| started_b.elapsed());
    }
    before(&lab);
    let data = proxymesh::testing::pattern(size, 7).to_vec();
    let ticket = lab.within(Host::A, || {
        let r = http(API, "POST", "/v1/objects", &[OCTET], &data);
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["key"].as_str().unwrap().to_string()
    });
    let (lab_ref, mesh_ref) = (&lab, &mut mesh);
    let get_started = Instant::now();
    let r = lab.within(Host::B, || {
        timed_get(API, &format!("/v1/objects/{ticket}"), || {
            on_first_byte(lab_ref, mesh_ref)
        })
    });
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.body.len(),
        data.len(),
        "the answer ended early: the transfer failed midway"
    );
    assert!(r.body == data, "bytes differ after crossing the NATs");
    let b_status = || lab.within(Host::B, || http(API, "GET", "/v1/status", &[], b"").json());
    let mut consumer_status = b_status();
    let (mut direct_after, mut first_direct) = (None, None);
    if await_direct {
        let direct = wait_until(Duration::from_secs(30), || {
            let s = b_status();
            let conns = to_producer(&s, &site_a.peer_id);
            if conns.iter().any(|c| c["path"] == "direct") {
                first_direct.get_or_insert_with(|| get_started.elapsed());
            }
            (!conns.is_empty() && conns.iter().all(|c| c["path"] == "direct")).then_some(s)
        });
        if let Some(s) = direct {
            direct_after = Some(get_started.elapsed());
            consumer_status = s;
        }
    }
    eprintln!(
        "{:?} / {:?}: path {}, {} MB: first byte after {:?}, all after {:?}; B reserved {:?} after its start",
        lab.nat(Host::A).unwrap(),
        lab.nat(Host::B).unwrap(),
        r.path,
        size / 1_000_000,
        r.first_byte,
        r.total,
        reserved_b
    );
    let producer_status = lab.within(Host::A, || http(API, "GET", "/v1/status", &[], b"").json());
    Some(Outcome {
        producer_status,
        path: r.path,
        first_byte: r.first_byte,
        first_get: r.total,
        reserved_b: reserved_b.unwrap(),
        direct_after,
        first_direct,
        consumer_status,
    })
}

/// The paths that carried the consumer's most recent transfer.
fn path_history(o: &Outcome) -> Vec<String> {
    o.consumer_status["mesh"]["recent_transfers"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(|t| t["paths"].as_array())
        .map(|p| {
            p.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The connections to `producer` in a daemon's status.
fn to_producer(status: &serde_json::Value, producer: &str) -> Vec<serde_json::Value> {
    status["mesh"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["peer_id"] == producer)
        .flat_map(|p| p["connections"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn endpoint_independent_nats_hole_punch_to_a_direct_connection() {
    let Some(o) = run_scenario(Nat::EndpointIndependent, Nat::EndpointIndependent, 8 << 20) else {
        return;
    };
    eprintln!(
        "time to a direct connection and 8 MiB across the NATs: {:?}",
        o.first_get
    );
    // The transfer may start on the relay; the punch brings a direct
    // connection, and the relayed one closes.
    assert!(
        o.direct_after.is_some(),
        "B got no direct-only connection to A within 30 s: {}",
        o.consumer_status
    );
    assert!(
        !path_history(&o).is_empty(),
        "no transfer in status: {}",
        o.consumer_status
    );
}

#[test]
fn symmetric_nat_starts_on_the_relay_at_once() {
    let Some(o) = run_scenario(Nat::EndpointIndependent, Nat::Symmetric, 100_000_000) else {
        return;
    };
    assert!(
        o.path.starts_with("relayed/"),
        "a symmetric NAT cannot be punched; got {}",
        o.path
    );
    assert!(
        o.first_byte < Duration::from_secs(HOLE_PUNCH_TIMEOUT_SECS),
        "the first byte came after {:?}: the transfer waited for the hole punch to give up",
        o.first_byte
    );
    let history = path_history(&o);
    assert!(
        history.iter().all(|p| p.starts_with("relayed/")),
        "{history:?}"
    );
}

#[test]
fn blocked_udp_completes_over_tcp_without_waiting() {
    let Some(o) = run_scenario(Nat::EndpointIndependent, Nat::UdpBlocked, 100_000_000) else {
        return;
    };
    assert!(
        o.path.ends_with("/tcp"),
        "with UDP blocked the transfer must use TCP; got {}",
        o.path
    );
    assert!(
        o.first_byte < Duration::from_secs(HOLE_PUNCH_TIMEOUT_SECS),
        "the first byte came after {:?}: the transfer waited for the hole punch to give up",
        o.first_byte
    );
    eprintln!(
        "UDP blocked: B held a reservation {:?} after it started",
        o.reserved_b
    );
}

/// Drop or allow (`-I` / `-D`) everything router B forwards to or from
/// router A: the direct path between the sites, not the relay's.
fn direct_path(lab: &Lab, op: &str) {
    let ns = lab.router_namespace(Host::B).unwrap();
    for dir in ["-s", "-d"] {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "iptables", "-w", op, "FORWARD"])
            .args(if op == "-I" { vec!["1"] } else { vec![] })
            .args([dir, proxymesh_suite::natlab::ROUTER_A_WAN_IP, "-j", "DROP"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "iptables {op}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_transfer_that_starts_relayed_moves_to_the_punched_path_mid_object() {
    let Some(lab) = Lab::new(Nat::EndpointIndependent, Nat::EndpointIndependent) else {
        return;
    };
    // The relay forwards at 80 Mbit/s, so 100 MB take ~10 s on it; the
    // direct path is blocked until B's first bytes arrived, so the
    // transfer starts relayed and DCUtR's next attempt (after the first
    // timed out) punches mid-object.
    let shape = |lab: &Lab| {
        let out = lab.run(Host::Relay, {
            let mut c = std::process::Command::new("tc");
            c.args([
                "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "80mbit", "burst", "256kb",
                "latency", "200ms",
            ]);
            c
        });
        assert!(
            out.status.success(),
            "tc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        direct_path(lab, "-I");
    };
    let Some(o) = run_in(lab, 100_000_000, true, shape, |lab, _| {
        direct_path(lab, "-D")
    }) else {
        return;
    };
    assert!(
        o.direct_after.is_some(),
        "no direct-only connection after the transfer: {}",
        o.consumer_status
    );
    let history = path_history(&o);
    eprintln!("path history of the transfer: {}", history.join("→"));
    assert!(
        history.first().is_some_and(|p| p.starts_with("relayed/")),
        "the transfer did not start on the relay: {history:?}"
    );
    assert!(
        history.last().is_some_and(|p| p.starts_with("direct/")),
        "the transfer did not move to the punched path: {history:?} ({})",
        o.consumer_status
    );
}

/// Measurement, not a test (run with `--ignored --nocapture`): 20 fresh
/// site pairs behind endpoint-independent NATs; for each, whether a direct
/// connection came up and how long after the first get started.
#[test]
#[ignore = "measurement: cargo test --test nat_mesh -- --ignored --nocapture punch_statistics"]
fn punch_statistics() {
    const PAIRS: usize = 20;
    let (mut direct, mut only) = (Vec::new(), Vec::new());
    for i in 0..PAIRS {
        let Some(lab) = Lab::new(Nat::EndpointIndependent, Nat::EndpointIndependent) else {
            return;
        };
        let o = run_in(lab, 1 << 20, true, |_| {}, |_, _| {}).unwrap();
        eprintln!(
            "pair {i}: first byte after {:?}, a direct connection after {:?}, the relayed one gone after {:?}",
            o.first_byte, o.first_direct, o.direct_after
        );
        direct.extend(o.first_direct);
        only.extend(o.direct_after);
    }
    direct.sort();
    only.sort();
    eprintln!(
        "{}/{PAIRS} pairs went direct; time to a direct connection from the first get: min {:?}, median {:?}, max {:?}; relayed connection gone: median {:?}, max {:?}",
        direct.len(),
        direct.first(),
        direct.get(direct.len() / 2),
        direct.last(),
        only.get(only.len() / 2),
        only.last()
    );
}

#[test]
fn a_long_thin_link_is_emulated_and_an_object_crosses_it() {
    let link = Link {
        rtt: Duration::from_millis(100),
        rate_mbit: Some(200),
    };
    let Some(lab) = Lab::with_link(Nat::EndpointIndependent, Nat::EndpointIndependent, link) else {
        return;
    };
    // A site and the relay are half the link's RTT apart (one router each
    // way). The delay line holds packets at least that long, whatever the
    // load: the lower bound is the emulation's, the upper one only a sanity
    // check.
    let rtts = udp_round_trips(
        &lab.namespace(Host::A),
        &lab.namespace(Host::Relay),
        lab.relay_ip(),
        9999,
        5,
    );
    eprintln!("UDP round trips site A -> relay over the emulated link: {rtts:?}");
    let least = *rtts.iter().min().unwrap();
    assert!(
        least >= Duration::from_millis(48) && least < Duration::from_secs(2),
        "expected about 50 ms, got {rtts:?}"
    );

    let size = 16 << 20;
    let Some(o) = run_in(lab, size, true, |_| {}, |_, _| {}) else {
        return;
    };
    // The punch works across the delay too (the transfer may have ended
    // before it, on the relay: the path history says).
    let history = path_history(&o);
    assert!(
        o.first_direct.is_some(),
        "no direct connection within 30 s across the emulated link; paths {history:?}"
    );
    eprintln!(
        "16 MiB across 100 ms RTT, 200 Mbit/s: {:.1} MB/s ({:?}; paths {history:?})",
        size as f64 / o.first_get.as_secs_f64() / 1e6,
        o.first_get
    );
}

/// Bytes `status` says its daemon sent to peer `to`.
fn served_to(status: &serde_json::Value, to: &str) -> u64 {
    status["mesh"]["traffic"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["peer_id"] == to)
        .and_then(|t| t["served_bytes"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_relay_restarted_mid_object_resumes_without_resending_the_verified_prefix() {
    // B is behind a symmetric NAT, so every byte rides the relay; a
    // 100 Mbit/s link makes 96 MiB take ~8 s.
    let link = Link {
        rtt: Duration::ZERO,
        rate_mbit: Some(100),
    };
    let Some(lab) = Lab::with_link(Nat::EndpointIndependent, Nat::Symmetric, link) else {
        return;
    };
    let size = 96 << 20;
    let (mut before_kill, mut b_id) = (0, String::new());
    let Some(o) = run_in(
        lab,
        size,
        false,
        |_| {},
        |lab, mesh| {
            let a = lab.within(Host::A, || http(API, "GET", "/v1/status", &[], b"").json());
            let a_id = a["peer_id"].as_str().unwrap_or_default().to_string();
            b_id = lab.within(Host::B, || http(API, "GET", "/v1/status", &[], b"").json())
                ["peer_id"]
                .as_str()
                .unwrap()
                .to_string();
            // Let a quarter of the object arrive, then restart the relay.
            let sent = wait_until(Duration::from_secs(60), || {
                let s = lab.within(Host::A, || http(API, "GET", "/v1/status", &[], b"").json());
                let n = served_to(&s, &b_id);
                (n >= size as u64 / 4).then_some(n)
            });
            before_kill =
                sent.unwrap_or_else(|| panic!("A ({a_id}) sent B less than a quarter in 60 s"));
            mesh.relay.kill();
            std::thread::sleep(Duration::from_millis(500));
            mesh.restart_relay(lab);
        },
    ) else {
        return;
    };
    let total = served_to(&o.producer_status, &b_id);
    let history = path_history(&o);
    eprintln!(
        "A sent {} MiB before the relay restart, {} MiB in all for a {} MiB object; paths {history:?}",
        before_kill >> 20,
        total >> 20,
        size >> 20
    );
    assert!(
        history.iter().all(|p| p.starts_with("relayed/")),
        "behind a symmetric NAT the transfer rides the relay: {history:?}"
    );
    // The verified prefix is not sent again: what was lost is at most the
    // segments in flight at the restart (the pipeline's floor is four).
    let slack = 16 << 20;
    assert!(
        total <= size as u64 + slack,
        "A sent {total} bytes for a {size}-byte object: the prefix ({before_kill} bytes) was sent again"
    );
}
