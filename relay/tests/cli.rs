//! The `proxymesh-relay` binary: its stdout contract, persistent identity,
//! whom it serves, and error exits.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{is_quic, is_tcp, peer_of, Mesh, RelayProcess, BIN};

#[test]
fn prints_dialable_quic_and_tcp_addresses_and_exits_cleanly_on_sigterm() {
    let mesh = Mesh::new();
    let (relay, _dir) = mesh.start_relay(&[]);
    assert_eq!(
        relay.addresses.len(),
        2,
        "one QUIC and one TCP address on 127.0.0.1: {:?}",
        relay.addresses
    );
    for address in &relay.addresses {
        assert_eq!(
            peer_of(address),
            Some(relay.peer_id),
            "{address} ends in the relay's /p2p"
        );
        assert!(
            address.to_string().starts_with("/ip4/127.0.0.1/"),
            "{address}"
        );
    }
    assert!(relay.addresses.iter().any(is_quic), "{:?}", relay.addresses);
    assert!(relay.addresses.iter().any(is_tcp), "{:?}", relay.addresses);
    let logs = relay.logs();
    assert!(
        logs.contains("serving the members of mesh") && logs.contains(&mesh.id()),
        "the served mesh is logged:\n{logs}"
    );
    let status = relay.terminate();
    assert!(status.success(), "exit status {status:?}; stderr:\n{logs}");
}

#[test]
fn peer_id_survives_restarts_with_the_same_identity_file() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("nested/relay.key");
    let mesh = Mesh::new();
    let id = mesh.id();
    let args = ["--mesh", id.as_str()];
    let first = RelayProcess::start_with_identity(&identity, &args);
    let first_id = first.peer_id;
    drop(first);
    assert!(identity.exists(), "the identity file is created");
    let second = RelayProcess::start_with_identity(&identity, &args);
    assert_eq!(second.peer_id, first_id);
    let (other, _other_dir) = mesh.start_relay(&[]);
    assert_ne!(
        other.peer_id, first_id,
        "another identity file, another peer ID"
    );
}

#[test]
fn external_addresses_replace_listen_addresses_on_stdout() {
    let (relay, _dir) = Mesh::new().start_relay(&[
        "--external-address",
        "/ip4/203.0.113.7/udp/4001/quic-v1",
        "--external-address",
        "/dns4/relay.example.org/tcp/4001",
    ]);
    let printed: Vec<String> = relay.addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        printed,
        vec![
            format!("/ip4/203.0.113.7/udp/4001/quic-v1/p2p/{}", relay.peer_id),
            format!("/dns4/relay.example.org/tcp/4001/p2p/{}", relay.peer_id),
        ]
    );
}

/// Run the binary expecting it to fail quickly; returns its stderr.
fn run_failing(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("proxymesh-relay {args:?} kept running")
    });
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    (status.code().expect("exited, not killed"), stderr)
}

#[test]
fn damaged_identity_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("relay.key");
    std::fs::write(&identity, b"not a keypair").unwrap();
    let (code, stderr) = run_failing(&[
        "--open-mesh",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--identity",
        identity.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("damaged"), "{stderr}");
    assert_eq!(
        std::fs::read(&identity).unwrap(),
        b"not a keypair",
        "never overwritten"
    );
}

#[test]
fn port_in_use_is_a_clear_error() {
    let mesh = Mesh::new();
    let (relay, dir) = mesh.start_relay(&[]);
    let port = relay
        .quic()
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Udp(port) => Some(port),
            _ => None,
        })
        .unwrap()
        .to_string();
    let other_identity = dir.path().join("other.key");
    let id = mesh.id();
    let (code, stderr) = run_failing(&[
        "--mesh",
        &id,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--identity",
        other_identity.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn bad_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("relay.key");
    let identity = identity.to_str().unwrap();
    for (args, expected) in [
        (vec!["--max-circuit-bytes", "lots"], "--max-circuit-bytes"),
        (
            vec!["--max-circuit-duration", "0"],
            "--max-circuit-duration",
        ),
        (vec!["--external-address", "nowhere"], "--external-address"),
        (vec!["--host", "not-an-ip"], "--host"),
        (vec!["--log", "x=[bad"], "--log"),
        (vec!["--max-members", "0"], "--max-members"),
        (vec!["--max-connections", "0"], "--max-connections"),
        (
            vec!["--max-connections-per-peer", "none"],
            "--max-connections-per-peer",
        ),
    ] {
        let mut argv = vec!["--open-mesh", "--port", "0", "--identity", identity];
        argv.extend(args.iter().copied());
        let (code, stderr) = run_failing(&argv);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(
        !std::path::Path::new(identity).exists(),
        "no identity created for a refused start"
    );
}

#[test]
fn refuses_to_start_without_a_mesh_and_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("relay.key");
    let (code, stderr) = run_failing(&[
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--identity",
        identity.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("pass --mesh MESH_ID (printed by `proxymesh mesh init DIR`)")
            && stderr.contains("--open-mesh"),
        "{stderr}"
    );
    assert!(
        !identity.exists(),
        "no identity created for a refused start"
    );
}

#[test]
fn malformed_or_conflicting_mesh_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("relay.key");
    let identity = identity.to_str().unwrap();
    let mesh = Mesh::new().id();
    let now = std::time::SystemTime::now();
    let credential = Mesh::new()
        .authority
        .admit(libp2p::PeerId::random(), now, now + Duration::from_secs(60))
        .to_string();
    // A typo in a copied mesh ID: the checksum catches it.
    let mut typo: Vec<char> = mesh.chars().collect();
    let i = typo.len() - 3;
    typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    for (args, expected) in [
        (vec!["--mesh", "not-a-mesh"], "not a mesh ID"),
        (vec!["--mesh", typo.as_str()], "checksum"),
        (vec!["--mesh", credential.as_str()], "not a mesh ID"),
        (vec!["--mesh", mesh.as_str(), "--open-mesh"], "--open-mesh"),
    ] {
        let mut argv = vec!["--port", "0", "--identity", identity];
        argv.extend(args.iter().copied());
        let (code, stderr) = run_failing(&argv);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stderr.contains("--mesh"), "{args:?}: {stderr}");
    }
}

#[test]
fn open_mesh_starts_with_a_loud_warning() {
    let (relay, _dir) = RelayProcess::start(&["--open-mesh"]);
    let logs = relay.logs();
    assert!(
        logs.contains("WARN") && logs.contains("ANYONE"),
        "the open relay warns:\n{logs}"
    );
    let status = relay.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn help_documents_the_membership_flags() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--mesh <MESH_ID>",
        "--open-mesh",
        "--revocations <FILE>",
        "--max-members <N>",
        "--max-connections <N>",
        "--max-connections-per-peer <N>",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    assert!(!help.contains("rendezvous"), "{help}");
}
