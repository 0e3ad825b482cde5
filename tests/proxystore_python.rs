//! Real Python ProxyStore (1.x) against proxymeshd: `EndpointConnector` finds
//! the daemon through the endpoint config the daemon writes
//! (`--proxystore-name`), then stores and resolves objects through it.
//!
//! Needs a Python with `proxystore` installed: `$PROXYMESH_TEST_PYTHON`, else
//! `.venv/bin/python` at the workspace root (`.ci/run` creates it). In CI a
//! missing interpreter fails the test; elsewhere it is skipped with a reason.

use std::process::Command;

use proxymesh_suite::{in_ci, proxystore_python, DaemonProcess};

const SCRIPT: &str = r#"
import sys
from proxystore.connectors.endpoint import EndpointConnector
from proxystore.store import Store

uuid = sys.argv[1]
connector = EndpointConnector([uuid])
with Store('proxymesh-test', connector, register=True) as store:
    data = {'values': list(range(10000)), 'name': 'from-python'}
    key = store.put(data)
    assert store.exists(key)
    assert store.get(key) == data
    big = bytes(range(256)) * 40000  # ~10 MB
    proxy = store.proxy(big)
    assert len(proxy) == len(big) and proxy == big
    store.evict(key)
    assert not store.exists(key)
    assert store.get(key) is None
    print('PYTHON PROXYSTORE OK', key.object_id)
"#;

#[test]
fn python_proxystore_endpoint_connector_uses_the_daemon() {
    let Some(py) = proxystore_python() else {
        assert!(
            !in_ci(),
            "CI=true but no Python with proxystore; .ci/run must create .venv"
        );
        eprintln!("SKIPPED: no Python with proxystore (set PROXYMESH_TEST_PYTHON or run .ci/run)");
        return;
    };
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("PROXYSTORE_HOME", home.path());
    let d = DaemonProcess::start(&["--proxystore-name", "proxymesh-test"]);
    let out = Command::new(py)
        .args(["-c", SCRIPT, &d.uuid])
        .env("PROXYSTORE_HOME", home.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PYTHON PROXYSTORE OK"),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The object key Python made lives in the daemon's ProxyStore namespace;
    // it was evicted, and the daemon says so.
    let status = proxymesh_suite::http(&d.api, "GET", "/v1/status", &[], b"").json();
    assert!(
        status["objects"].as_u64().unwrap() >= 1,
        "the proxied bytes object is still stored"
    );
}
