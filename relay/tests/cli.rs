//! The `proxymesh-relay` binary: its stdout contract, persistent identity and
//! error exits.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{is_quic, is_tcp, peer_of, RelayProcess, BIN};

#[test]
fn prints_dialable_quic_and_tcp_addresses_and_exits_cleanly_on_sigterm() {
    let (relay, _dir) = RelayProcess::start(&[]);
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
    let status = relay.terminate();
    assert!(status.success(), "exit status {status:?}; stderr:\n{logs}");
}

#[test]
fn peer_id_survives_restarts_with_the_same_identity_file() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("nested/relay.key");
    let first = RelayProcess::start_with_identity(&identity, &[]);
    let first_id = first.peer_id;
    drop(first);
    assert!(identity.exists(), "the identity file is created");
    let second = RelayProcess::start_with_identity(&identity, &[]);
    assert_eq!(second.peer_id, first_id);
    let (other, _other_dir) = RelayProcess::start(&[]);
    assert_ne!(
        other.peer_id, first_id,
        "another identity file, another peer ID"
    );
}

#[test]
fn external_addresses_replace_listen_addresses_on_stdout() {
    let (relay, _dir) = RelayProcess::start(&[
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
    let (relay, dir) = RelayProcess::start(&[]);
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
    let (code, stderr) = run_failing(&[
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
    ] {
        let mut argv = vec!["--port", "0", "--identity", identity];
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
