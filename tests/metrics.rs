//! Prometheus metrics with real processes: a relay serving `--metrics`, two
//! daemons, a remote get; both `/metrics` pages parse as Prometheus text
//! and show the transfer, its path and bytes, and the reservations.

use std::collections::BTreeMap;
use std::time::Duration;

use proxymesh_suite::{free_port, http, wait_until, DaemonProcess, RelayProcess};

const OCTET: (&str, &str) = ("content-type", "application/octet-stream");

fn status(d: &DaemonProcess) -> serde_json::Value {
    http(&d.api, "GET", "/v1/status", &[], b"").json()
}

fn wait_reserved(d: &DaemonProcess) {
    wait_until(Duration::from_secs(30), || {
        status(d)["mesh"]["relays"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["reserved"] == true))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no relay reservation: {}", status(d)));
}

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parse Prometheus/OpenMetrics text strictly enough to catch a malformed
/// page: every sample line is `name{label="value",...} number`, names and
/// label names are valid identifiers, every family has a `# TYPE`, and the
/// page ends with `# EOF`.
fn parse(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut typed = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(ident(name), "bad family name in {line:?}");
            assert!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "info",
                    "unknown",
                    "summary"
                ]
                .contains(&kind),
                "{line:?}"
            );
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                for pair in split_labels(body) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(ident(k), "bad label name in {line:?}");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
                    labels.insert(k.to_string(), v.to_string());
                }
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(ident(name), "bad metric name in {line:?}");
        assert!(
            typed.iter().any(|f| name.starts_with(f.as_str())),
            "{name} has no # TYPE"
        );
        samples.push((name.to_string(), labels, value));
    }
    samples
}

/// `a="x",b="y,z"` → [`a="x"`, `b="y,z"`] (commas inside quotes kept).
fn split_labels(body: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < body.len() {
        out.push(&body[start..]);
    }
    out
}

/// The sum of the samples named `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn scrape(addr: &str) -> Vec<Sample> {
    let r = http(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    parse(&r.text())
}

#[test]
fn metrics_show_a_remote_get_with_its_path_and_bytes_and_the_relay_its_reservations() {
    let port = free_port();
    let relay_metrics = format!("127.0.0.1:{port}");
    let relay = RelayProcess::start(&["--metrics", &relay_metrics]);
    let a = relay.start_daemon(&[]);
    let b = relay.start_daemon(&[]);
    wait_reserved(&a);
    wait_reserved(&b);

    // The relay: both daemons' reservations, and its own byte counters.
    let r = wait_until(Duration::from_secs(10), || {
        let s = scrape(&relay_metrics);
        (value(&s, "proxymesh_relay_reservations", &[]) >= 2.0).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "reservations not shown: {}",
            http(&relay_metrics, "GET", "/metrics", &[], b"").text()
        )
    });
    assert!(
        value(
            &r,
            "proxymesh_relay_reservation_events_total",
            &[("outcome", "accepted")]
        ) >= 2.0
    );
    assert!(value(&r, "proxymesh_relay_libp2p_bandwidth_bytes_total", &[]) > 0.0);
    assert!(value(&r, "proxymesh_relay_members", &[]) >= 2.0);
    let nothing = http(&relay_metrics, "GET", "/other", &[], b"");
    assert_eq!(nothing.status, 404);

    // A remote get of 3 MiB at B.
    let size = 3 << 20;
    let data = proxymesh::testing::pattern(size, 5).to_vec();
    let put = http(&a.api, "POST", "/v1/objects", &[OCTET], &data);
    assert_eq!(put.status, 201, "{}", put.text());
    let key = put.json()["key"].as_str().unwrap().to_string();
    let got = http(&b.api, "GET", &format!("/v1/objects/{key}"), &[], b"");
    assert_eq!(got.status, 200);
    assert!(got.body == data);
    // The path the transfer ended on (it may start relayed and move to the
    // hole-punched path midway): the last of the paths B's status lists
    // for it; the answer's header names the first.
    let first = got
        .header(proxymesh::api::PATH_HEADER)
        .expect("the path header")
        .to_string();
    let transfers =
        http(&b.api, "GET", "/v1/status", &[], b"").json()["mesh"]["recent_transfers"].clone();
    let paths: Vec<String> = transfers[0]["paths"]
        .as_array()
        .expect("B lists the transfer")
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths.first(), Some(&first), "{transfers}");
    let path = paths.last().unwrap().clone();
    let (via, transport) = path.split_once('/').expect("path/transport");
    // Again: now from B's cache.
    assert_eq!(
        http(&b.api, "GET", &format!("/v1/objects/{key}"), &[], b"").status,
        200
    );
    let missing = http(
        &b.api,
        "GET",
        "/v1/objects/0123456789abcdef0123456789abcdef",
        &[],
        b"",
    );
    assert_eq!(missing.status, 404);

    let sb = scrape(&b.api);
    let path_labels = [("path", via), ("transport", transport)];
    assert_eq!(
        value(
            &sb,
            "proxymesh_remote_fetches_total",
            &[("path", via), ("transport", transport), ("outcome", "ok")]
        ),
        1.0,
        "one fetch, on {path}"
    );
    assert_eq!(
        value(&sb, "proxymesh_remote_fetched_bytes_total", &path_labels),
        size as f64
    );
    assert_eq!(
        value(
            &sb,
            "proxymesh_remote_fetch_duration_seconds_count",
            &path_labels
        ),
        1.0
    );
    assert_eq!(
        value(&sb, "proxymesh_cache_lookups_total", &[("outcome", "miss")]),
        1.0
    );
    assert_eq!(
        value(&sb, "proxymesh_cache_lookups_total", &[("outcome", "hit")]),
        1.0
    );
    assert_eq!(
        value(
            &sb,
            "proxymesh_requests_total",
            &[("door", "native"), ("op", "get"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &sb,
            "proxymesh_requests_total",
            &[("door", "native"), ("op", "get"), ("outcome", "not_found")]
        ),
        1.0
    );
    assert!(
        value(
            &sb,
            "proxymesh_peer_fetched_bytes_total",
            &[("peer", &a.peer_id)]
        ) >= size as f64
    );
    assert_eq!(
        value(&sb, "proxymesh_relay_reserved", &[]),
        1.0,
        "B's reservation at its one relay"
    );
    assert!(
        value(&sb, "proxymesh_objects", &[]) >= 1.0,
        "the cached copy"
    );
    assert!(value(&sb, "proxymesh_cache_bytes", &[]) >= size as f64);
    assert!(
        value(&sb, "proxymesh_libp2p_bandwidth_bytes_total", &[]) >= size as f64,
        "libp2p's byte counters carry the transfer"
    );

    // A: served it, through the mesh door.
    let sa = scrape(&a.api);
    assert!(
        value(
            &sa,
            "proxymesh_peer_served_bytes_total",
            &[("peer", &b.peer_id)]
        ) >= size as f64
    );
    assert!(
        value(
            &sa,
            "proxymesh_requests_total",
            &[("door", "mesh"), ("op", "get"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &sa,
            "proxymesh_requests_total",
            &[("door", "native"), ("op", "put"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(value(&sa, "proxymesh_objects", &[("tier", "memory")]), 1.0);
    assert_eq!(
        value(&sa, "proxymesh_stored_bytes", &[("tier", "memory")]),
        size as f64
    );
}

#[test]
fn a_relay_whose_metrics_address_is_taken_refuses_to_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(proxymesh_suite::bin_path("proxymesh-relay"))
        .args([
            "--open-mesh",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics",
            &addr,
        ])
        .arg("--identity")
        .arg(tempfile::tempdir().unwrap().path().join("k"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics"), "{err}");
}
