//! A proxy serialized in one OS process resolves in another, through the
//! daemon. The child is this test binary, re-run on its (ignored) `child`
//! test with the proxy in an environment variable.

use std::process::Command;
use std::sync::Arc;

use proxymesh::{DaemonConnector, Proxy, Store};
use proxymesh_suite::DaemonProcess;
use serde::{Deserialize, Serialize};

const PROXY_ENV: &str = "PROXYMESH_TEST_PROXY";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payload {
    label: String,
    values: Vec<u32>,
}

fn payload() -> Payload {
    Payload {
        label: "cross-process".into(),
        values: (0..250_000).collect(),
    }
}

#[tokio::test]
async fn proxy_resolves_in_another_process() {
    let d = DaemonProcess::start(&[]);
    let store = Store::new(
        "cross-process",
        Arc::new(DaemonConnector::new(&d.api).unwrap()),
    );
    let proxy = store.proxy(&payload()).await.unwrap();
    let json = serde_json::to_string(&proxy).unwrap();
    assert!(
        json.len() < 1024,
        "a proxy must be small, got {} bytes",
        json.len()
    );
    assert!(!proxy.is_resolved());

    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--ignored", "--nocapture"])
        .env(PROXY_ENV, &json)
        // The child finds *its* local daemon through the environment: the
        // serialized proxy names no daemon address.
        .env(proxymesh::api::API_ENV, &d.api)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHILD RESOLVED 250000"), "{stdout}");
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run: {stdout}"
    );
}

#[tokio::test]
async fn evicted_object_fails_clearly_in_another_process() {
    let d = DaemonProcess::start(&[]);
    let store = Store::new(
        "cross-process-evicted",
        Arc::new(DaemonConnector::new(&d.api).unwrap()),
    );
    let proxy = store.proxy(&payload()).await.unwrap();
    store.evict(proxy.key()).await.unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--ignored", "--nocapture"])
        .env(PROXY_ENV, serde_json::to_string(&proxy).unwrap())
        .env(proxymesh::api::API_ENV, &d.api)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CHILD FAILED"), "{stdout}");
    assert!(
        stdout.contains(&proxy.key().to_string()),
        "error must name the key: {stdout}"
    );
}

/// Runs only as the child of the tests above.
#[test]
#[ignore = "run by the cross-process tests as a child process"]
fn child() {
    let json = std::env::var(PROXY_ENV).expect("run by the parent test");
    let proxy: Proxy<Payload> = serde_json::from_str(&json).unwrap();
    assert!(!proxy.is_resolved());
    match proxy.try_resolve() {
        Ok(p) => {
            assert_eq!(*p, payload());
            println!("CHILD RESOLVED {}", p.values.len());
        }
        Err(e) => println!("CHILD FAILED: {e}"),
    }
}
