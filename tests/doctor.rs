//! `proxymesh doctor` in the NAT lab: real relay, real daemons behind real
//! NAT routers, the CLI run inside a site's namespace.
//! 1. both sites behind cone NATs: every check passes, the direct path to
//!    the other site comes up, exit 0;
//! 2. UDP blocked at site B: doctor names the blocked UDP (QUIC to the
//!    relay gets no answer, TCP does) and still passes (the mesh runs over
//!    TCP);
//! 3. the relay down: doctor fails with a sentence that says so.
//!
//! Needs root: fails in CI without it, skips with a reason elsewhere.

use std::process::Output;
use std::time::Duration;

use proxymesh_suite::natlab::{Host, Lab, LabMesh, Nat, SITE_API};
use proxymesh_suite::{bin_path, http, wait_until, DaemonProcess};

fn reserved(lab: &Lab, h: Host) -> bool {
    let s = lab.within(h, || http(SITE_API, "GET", "/v1/status", &[], b"").json());
    s["mesh"]["relays"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["reserved"] == true))
}

fn doctor(lab: &Lab, h: Host, args: &[&str]) -> (i32, String) {
    let out: Output = lab
        .command(h, bin_path("proxymesh"))
        .args(["--api", SITE_API, "doctor", "--timeout", "3"])
        .args(args)
        .output()
        .expect("run proxymesh doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// `proxymesh doctor` against the daemon at `api` (on this host): exit
/// code and what it printed.
fn doctor_at(api: &str) -> (i32, String) {
    let out = std::process::Command::new(bin_path("proxymesh"))
        .args(["--api", api, "doctor", "--timeout", "3"])
        .output()
        .expect("run proxymesh doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// A lab with a relay and sites A and B, both holding reservations.
fn lab_with_sites(b: Nat) -> Option<(Lab, LabMesh, DaemonProcess, DaemonProcess)> {
    let lab = Lab::new(Nat::EndpointIndependent, b)?;
    let mesh = LabMesh::start(&lab);
    let a = mesh.site(&lab, Host::A, "a", &[]);
    let site_b = mesh.site(&lab, Host::B, "b", &[]);
    for h in [Host::A, Host::B] {
        wait_until(Duration::from_secs(30), || reserved(&lab, h).then_some(()))
            .unwrap_or_else(|| panic!("site {h:?} got no reservation"));
    }
    Some((lab, mesh, a, site_b))
}

#[test]
fn doctor_passes_behind_cone_nats_and_sees_the_direct_path() {
    let Some((lab, _mesh, a, _b)) = lab_with_sites(Nat::EndpointIndependent) else {
        return;
    };
    let (code, text) = doctor(&lab, Host::B, &[&a.peer_id]);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("is up and yours"), "{text}");
    assert!(text.contains("credential is valid"), "{text}");
    assert!(
        text.contains("answers over QUIC") && text.contains("and TCP"),
        "{text}"
    );
    assert!(text.contains("holding a reservation"), "{text}");
    assert!(text.contains(&format!("reached {}", a.peer_id)), "{text}");
    assert!(text.contains("a direct path to"), "{text}");
}

#[test]
fn doctor_names_blocked_udp() {
    let Some((lab, _mesh, _a, _b)) = lab_with_sites(Nat::UdpBlocked) else {
        return;
    };
    let (code, text) = doctor(&lab, Host::B, &[]);
    assert!(text.contains("UDP is blocked"), "{text}");
    assert!(text.contains("QUIC (UDP) gets no answer"), "{text}");
    assert_eq!(code, 0, "the site works over TCP: {text}");
    // Site A, whose UDP is fine, sees QUIC and TCP.
    let (code, text) = doctor(&lab, Host::A, &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("answers over QUIC"), "{text}");
}

#[test]
fn doctor_fails_with_a_clear_sentence_when_the_relay_is_down() {
    let Some((lab, mut mesh, _a, _b)) = lab_with_sites(Nat::EndpointIndependent) else {
        return;
    };
    mesh.relay.kill();
    let (code, text) = doctor(&lab, Host::A, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("answers neither QUIC") && text.contains("it is down or unreachable"),
        "{text}"
    );
}

#[test]
fn doctor_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin_path("proxymesh"))
        .arg("--api")
        .arg(format!("unix:{}", dir.path().join("none.sock").display()))
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL") && text.contains("Start proxymeshd"),
        "{text}"
    );
}

#[test]
fn doctor_names_a_second_daemon_with_the_same_identity() {
    let relay = proxymesh_suite::RelayProcess::start(&[]);
    let first = tempfile::tempdir().unwrap();
    let a = proxymesh_suite::DaemonProcess::start_in(
        first.path(),
        &relay
            .member_flags(first.path())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    // The same identity started from a copy of the data directory (the
    // login-node problem): both reserve at the relay, which keeps the newest.
    let second = tempfile::tempdir().unwrap();
    std::fs::copy(
        first.path().join("identity.key"),
        second.path().join("identity.key"),
    )
    .unwrap();
    let twin = proxymesh_suite::DaemonProcess::start_in(
        second.path(),
        &relay
            .member_flags(second.path())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(twin.peer_id, a.peer_id);
    let lost = || {
        http(&a.api, "GET", "/v1/status", &[], b"").json()["mesh"]["reservations_lost"]
            .as_u64()
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(60), || (lost() >= 3).then_some(()))
        .unwrap_or_else(|| panic!("the twins did not displace each other: {} losses", lost()));
    let (code, text) = doctor_at(&a.api);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("another daemon runs with this identity"),
        "{text}"
    );
    // Alone again, a daemon is not accused (a relay restart loses one
    // reservation, not three): the test's other half, on a fresh pair.
    drop(twin);
    let alone = relay.start_daemon(&[]);
    wait_until(Duration::from_secs(30), || {
        http(&alone.api, "GET", "/v1/status", &[], b"").json()["mesh"]["relays"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["reserved"] == true))
            .then_some(())
    })
    .expect("a reservation");
    let (code, text) = doctor_at(&alone.api);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("another daemon"), "{text}");
}
