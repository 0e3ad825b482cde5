//! The mesh across real NATs: Linux network namespaces with a public segment
//! (the relay) and two sites behind their own NAT routers (see
//! `natlab/mod.rs`). Each scenario puts an object at site A, gets it at site
//! B, and asserts the bytes and the path the transfer took:
//! 1. both sites behind endpoint-independent NATs → direct (hole-punched);
//! 2. site B behind a symmetric NAT → the punch must fail → over the relay;
//! 3. UDP blocked at site B → over TCP.
//!
//! Needs root: fails in CI without it, skips with a reason elsewhere.

mod natlab;

use std::time::{Duration, Instant};

use natlab::{Host, Lab, Nat};
use proxymesh_suite::{bin_path, http, wait_until, DaemonProcess, RelayProcess};

const API: &str = "127.0.0.1:7878";
const OCTET: (&str, &str) = ("content-type", "application/octet-stream");

struct Outcome {
    producer: String,
    path: String,
    first_get: Duration,
    consumer_status: serde_json::Value,
}

fn run_scenario(a: Nat, b: Nat) -> Option<Outcome> {
    let lab = Lab::new(a, b)?;
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_cmd(
        lab.command(Host::Relay, bin_path("proxymesh-relay")),
        lab.relay_ip(),
        &tmp.path().join("relay.key"),
        4001,
        &[],
    );
    let start = |h: Host, name: &str| {
        let dir = tmp.path().join(name);
        let mut cmd = lab.command(h, bin_path("proxymeshd"));
        cmd.arg("--data-dir").arg(&dir).args([
            "--api",
            API,
            "--listen-port",
            "4002",
            "--hole-punch-timeout",
            "15",
        ]);
        for addr in [relay.quic(), relay.tcp()] {
            cmd.args(["--relay", addr]);
        }
        let credential = relay
            .credential_for(&dir)
            .expect("the relay serves a test mesh");
        cmd.args(["--credential", &credential]);
        DaemonProcess::spawn(cmd, &[], &dir)
    };
    let site_a = start(Host::A, "a");
    let site_b = start(Host::B, "b");
    for (h, d) in [(Host::A, &site_a), (Host::B, &site_b)] {
        let ok = wait_until(Duration::from_secs(60), || {
            let s = lab.within(h, || http(API, "GET", "/v1/status", &[], b"").json());
            s["mesh"]["relays"]
                .as_array()?
                .iter()
                .any(|r| r["reserved"] == true)
                .then_some(())
        });
        assert!(ok.is_some(), "site daemon {} got no reservation", d.peer_id);
    }
    let data = proxymesh::testing::pattern(8 << 20, 7).to_vec();
    let ticket = lab.within(Host::A, || {
        let r = http(API, "POST", "/v1/objects", &[OCTET], &data);
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["key"].as_str().unwrap().to_string()
    });
    let t = Instant::now();
    let r = lab.within(Host::B, || {
        http(API, "GET", &format!("/v1/objects/{ticket}"), &[], b"")
    });
    let first_get = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == data, "bytes differ after crossing the NATs");
    let path = r.header("x-proxymesh-path").unwrap_or_default().to_string();
    let consumer_status = lab.within(Host::B, || http(API, "GET", "/v1/status", &[], b"").json());
    eprintln!("{a:?} / {b:?}: path {path}, first 8 MiB get {first_get:?}");
    Some(Outcome {
        producer: site_a.peer_id.clone(),
        path,
        first_get,
        consumer_status,
    })
}

/// The consumer's connections to the producer, from its status.
fn connections_to_a(o: &Outcome) -> Vec<serde_json::Value> {
    o.consumer_status["mesh"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["peer_id"] == o.producer.as_str())
        .flat_map(|p| p["connections"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn endpoint_independent_nats_hole_punch_to_a_direct_connection() {
    let Some(o) = run_scenario(Nat::EndpointIndependent, Nat::EndpointIndependent) else {
        return;
    };
    assert!(
        o.path.starts_with("direct/"),
        "expected a hole-punched direct transfer, got {}",
        o.path
    );
    eprintln!(
        "time to a direct connection and 8 MiB across the NATs: {:?}",
        o.first_get
    );
    assert!(
        connections_to_a(&o).iter().any(|c| c["path"] == "direct"),
        "status shows no direct connection: {}",
        o.consumer_status
    );
}

#[test]
fn symmetric_nat_falls_back_to_the_relay() {
    let Some(o) = run_scenario(Nat::EndpointIndependent, Nat::Symmetric) else {
        return;
    };
    assert!(
        o.path.starts_with("relayed/"),
        "a symmetric NAT cannot be punched; got {}",
        o.path
    );
}

#[test]
fn blocked_udp_completes_over_tcp() {
    let Some(o) = run_scenario(Nat::EndpointIndependent, Nat::UdpBlocked) else {
        return;
    };
    assert!(
        o.path.ends_with("/tcp"),
        "with UDP blocked the transfer must use TCP; got {}",
        o.path
    );
}
