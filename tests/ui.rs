//! The live view (`/ui`) in a real headless Chromium: real relay and
//! daemons, a remote get under way, and the DOM the page drew from the
//! daemon's status checked for the peer, its path and the transfer. A
//! screenshot is kept as an artefact (`target/tmp/ui/mesh.png`).
//!
//! Needs Chromium (`/usr/bin/chromium`, Debian's package; `tests/run.sh`
//! installs it as root): fails in CI without it, skips with a reason
//! elsewhere.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use proxymesh_suite::{http, wait_until, DaemonProcess, RelayProcess};

const OCTET: (&str, &str) = ("content-type", "application/octet-stream");

fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let why = "needs Chromium (apt-get install chromium)";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
    }
    found
}

/// Run headless Chromium on `url` with `args` (after the page's script ran
/// for `budget_ms` of virtual time); its stdout.
fn headless(chrome: &PathBuf, url: &str, budget_ms: u32, args: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,860",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn status(d: &DaemonProcess) -> serde_json::Value {
    http(&d.api, "GET", "/v1/status", &[], b"").json()
}

#[test]
fn the_live_view_draws_the_peers_their_paths_and_a_transfer() {
    let Some(chrome) = chromium() else {
        return;
    };
    let relay = RelayProcess::start(&[]);
    let a = relay.start_daemon(&[]);
    let b = relay.start_daemon(&[]);
    for d in [&a, &b] {
        wait_until(Duration::from_secs(30), || {
            status(d)["mesh"]["relays"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["reserved"] == true))
                .then_some(())
        })
        .expect("a reservation");
    }
    let size = 64 << 20;
    let data = proxymesh::testing::pattern(size, 9).to_vec();
    let put = http(&a.api, "POST", "/v1/objects", &[OCTET], &data);
    assert_eq!(put.status, 201, "{}", put.text());
    let key = put.json()["key"].as_str().unwrap().to_string();

    // A get at B that reads slowly, so the transfer is in flight while the
    // page is drawn (or just done, on a fast machine).
    let mut reader = std::net::TcpStream::connect(&b.api).unwrap();
    write!(
        reader,
        "GET /v1/objects/{key} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 4096];
    let _ = reader.read(&mut first).unwrap();
    let transfer = wait_until(Duration::from_secs(30), || {
        status(&b)["mesh"]["recent_transfers"]
            .as_array()
            .and_then(|t| t.last().cloned())
    })
    .expect("B lists the transfer");
    let object = transfer["object"].as_str().unwrap().to_string();

    let url = format!("http://{}/ui", b.api);
    let dom = headless(&chrome, &url, 3000, &["--dump-dom".to_string()]);
    assert!(
        dom.contains(r#"data-ready="true""#),
        "the page never drew:\n{dom}"
    );
    assert!(dom.contains(&b.peer_id), "this site's peer ID:\n{dom}");
    // Peer A, as a node of the picture and a row, with its path.
    assert!(
        dom.contains(r#"class="node peer"#)
            && dom.contains(&format!(r#"data-peer="{}""#, a.peer_id)),
        "peer A drawn:\n{dom}"
    );
    assert!(
        dom.contains(r#"class="link direct""#) || dom.contains(r#"class="link relayed""#),
        "a link to A:\n{dom}"
    );
    assert!(dom.contains(r#"data-relay=""#), "the relay drawn:\n{dom}");
    // The transfer: its row, state and a rate.
    let row_at = dom
        .find(&format!(r#"data-object="{object}""#))
        .unwrap_or_else(|| panic!("transfer {object} not shown:\n{dom}"));
    let row = &dom[row_at
        ..dom[row_at..]
            .find("</tr>")
            .map_or(dom.len(), |e| row_at + e)];
    assert!(
        row.contains(r#"data-state="running""#) || row.contains(r#"data-state="done""#),
        "{row}"
    );
    assert!(row.contains("class=\"num rate\""), "{row}");

    // The artefact.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("mesh.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &chrome,
        &url,
        3000,
        &[format!("--screenshot={}", shot.display())],
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());

    // Let the get finish.
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}

#[test]
fn the_live_view_is_not_served_to_other_sites_pages() {
    let d = DaemonProcess::start(&[]);
    let ok = http(&d.api, "GET", "/ui", &[], b"");
    assert_eq!(ok.status, 200);
    assert!(ok.text().contains("<title>proxymesh</title>"));
    assert!(ok
        .header("content-security-policy")
        .is_some_and(|c| c.contains("frame-ancestors 'none'")));
    // A page of another site (cross-site fetch) or a rebinding DNS name.
    for (k, v) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
        ("host", "evil.example"),
    ] {
        let r = http(&d.api, "GET", "/ui", &[(k, v)], b"");
        assert_eq!(r.status, 403, "{k}: {v}");
    }
}
