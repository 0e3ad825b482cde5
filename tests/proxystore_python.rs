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

/// The Python with ProxyStore; `None` (and the test skips, saying why)
/// outside CI when there is none.
fn python_or_skip() -> Option<std::path::PathBuf> {
    let py = proxystore_python();
    if py.is_none() {
        assert!(
            !in_ci(),
            "CI=true but no Python with proxystore; .ci/run must create .venv"
        );
        eprintln!("SKIPPED: no Python with proxystore (set PROXYMESH_TEST_PYTHON or run .ci/run)");
    }
    py
}

#[test]
fn python_proxystore_endpoint_connector_uses_the_daemon() {
    let Some(py) = python_or_skip() else {
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

/// `proxystore-endpoint list` (ProxyStore's own CLI) shows a daemon started
/// with `--proxystore-name` as RUNNING while it runs, because the daemon
/// writes the PID file ProxyStore 1.x looks for (`daemon.pid` beside the
/// endpoint's `config.toml`, checked with `psutil.pid_exists`), and as
/// STOPPED once it stopped cleanly (the file is gone, the config stays).
#[test]
fn proxystore_endpoint_list_shows_the_daemon_running_then_stopped() {
    let Some(py) = python_or_skip() else {
        return;
    };
    // The CLI comes with ProxyStore's `endpoints` extra (psutil,
    // python-daemon, its endpoint server); the plain package lacks it.
    let cli = Command::new(&py)
        .args(["-c", "import proxystore.endpoint.cli"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !cli {
        assert!(
            !in_ci(),
            "CI=true but {} lacks ProxyStore's endpoint CLI; tests/run.sh installs proxystore[endpoints]",
            py.display()
        );
        eprintln!(
            "SKIPPED: {} cannot import ProxyStore's endpoint CLI (proxystore-endpoint); \
             install it with: pip install 'proxystore[endpoints]>=1,<2'",
            py.display()
        );
        return;
    }
    const NAME: &str = "proxymesh-listed";
    let home = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // PROXYSTORE_HOME for this daemon only: the other test of this binary
    // sets the process-wide variable.
    let mut cmd = Command::new(proxymesh_suite::bin_path("proxymeshd"));
    cmd.arg("--data-dir")
        .arg(data.path())
        .args(["--api", "127.0.0.1:0"])
        .env("PROXYSTORE_HOME", home.path());
    let mut d = DaemonProcess::spawn(cmd, &["--proxystore-name", NAME], data.path());
    let endpoint_dir = home.path().join(NAME);
    assert!(endpoint_dir.join("config.toml").is_file());
    let status = endpoint_list_status(&py, home.path(), NAME, &d.uuid);
    assert_eq!(status, "RUNNING", "while the daemon runs");
    let pid_file = endpoint_dir.join("daemon.pid");
    let held = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("no PID file at {}: {e}", pid_file.display()));
    assert_eq!(
        held.trim(),
        d.pid().to_string(),
        "the PID file names the daemon"
    );

    assert_eq!(d.stop(), Some(0), "the daemon stops cleanly on SIGTERM");
    assert!(!pid_file.exists(), "the PID file is removed at shutdown");
    let status = endpoint_list_status(&py, home.path(), NAME, &d.uuid);
    assert_eq!(status, "STOPPED", "after the daemon stopped");
}

/// The STATUS column of endpoint `name` in `proxystore-endpoint list` run
/// with `PROXYSTORE_HOME=home` (the venv's console script next to `py`, else
/// the same CLI through `py`), checking the listed UUID is `uuid`.
fn endpoint_list_status(
    py: &std::path::Path,
    home: &std::path::Path,
    name: &str,
    uuid: &str,
) -> String {
    let script = py.with_file_name("proxystore-endpoint");
    let mut cmd = if script.is_file() {
        Command::new(&script)
    } else {
        let mut c = Command::new(py);
        c.args([
            "-c",
            "import sys; from proxystore.endpoint.cli import cli; sys.argv[0] = 'proxystore-endpoint'; sys.exit(cli())",
        ]);
        c
    };
    let out = cmd
        .arg("list")
        .env("PROXYSTORE_HOME", home)
        .output()
        .expect("run proxystore-endpoint list");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "proxystore-endpoint list failed:\n{stdout}\n{stderr}"
    );
    // Rows are `NAME STATUS UUID`, padded; log prefixes may precede them.
    let row = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find_map(|words| {
            let at = words.iter().position(|w| *w == name)?;
            (words.len() == at + 3).then(|| (words[at + 1].to_string(), words[at + 2].to_string()))
        })
        .unwrap_or_else(|| panic!("endpoint {name} not listed:\n{stdout}\n{stderr}"));
    assert_eq!(
        row.1, uuid,
        "listed with the daemon's endpoint UUID:\n{stdout}"
    );
    row.0
}
