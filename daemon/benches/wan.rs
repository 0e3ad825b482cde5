//! WAN benchmark: a remote get between two NATed sites across an emulated
//! long, fat link (the NAT lab's delay line and rate limit), next to raw
//! QUIC (quinn) across the same link, with libp2p's windows and with
//! windows tuned for the link under each of quinn's congestion controllers.
//! Needs root (network namespaces).
//!
//! ```sh
//! cargo bench -p proxymesh-daemon --bench wan                  # 100 and 300 ms, 400 Mbit/s
//! cargo bench -p proxymesh-daemon --bench wan -- --rtt 200ms --rate 200mbit --size 128
//! ```
//!
//! Site B's daemon fetches from site A's over a hole-punched direct QUIC
//! connection (the bench waits for it); the raw QUIC server runs at site B
//! behind a port forward and the client at site A, so both cross the same
//! two routers and see the link's full RTT.

use std::time::{Duration, Instant};

use proxymesh_suite::natlab::{Host, Lab, LabMesh, Link, Nat, SITE_API as API};
use proxymesh_suite::{http, wait_until};

#[path = "common/raw_quic.rs"]
mod raw_quic;
use raw_quic::{Cc, Tuning};

const QUIC_PORT: u16 = 7100;

fn main() {
    raw_quic::serve_if_asked();
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let rtts: Vec<Duration> = flag("--rtt")
        .unwrap_or_else(|| "100ms,300ms".into())
        .split(',')
        .map(|r| Link::parse_rtt(r).unwrap())
        .collect();
    let rate = Link::parse_rate_mbit(&flag("--rate").unwrap_or_else(|| "400mbit".into())).unwrap();
    let size: u64 = flag("--size").map_or(256, |s| s.parse().unwrap()) << 20;
    if !proxymesh_suite::require_root("the WAN bench (NAT lab)") {
        return;
    }
    println!(
        "proxymesh WAN benchmark: {} MiB from site A to site B, {rate} Mbit/s per site ({:.1} MB/s)",
        size >> 20,
        f64::from(rate) / 8.0
    );
    for rtt in rtts {
        let link = Link {
            rtt,
            rate_mbit: Some(rate),
        };
        let bdp = f64::from(rate) * 1e6 / 8.0 * rtt.as_secs_f64();
        println!(
            "-- RTT {rtt:?}: bandwidth-delay product {:.1} MB --",
            bdp / 1e6
        );
        let lab =
            Lab::with_link(Nat::EndpointIndependent, Nat::EndpointIndependent, link).expect("root");
        lab.forward_port(Host::B, "udp", QUIC_PORT);
        // Tuned: windows of twice the BDP (at least libp2p's).
        let tuned = (2.0 * bdp) as u64;
        let mut cases = vec![("raw quinn, libp2p's windows, cubic", Tuning::LIBP2P)];
        for cc in [Cc::Cubic, Cc::NewReno, Cc::Bbr] {
            let t = Tuning {
                stream: tuned.max(Tuning::LIBP2P.stream),
                connection: tuned.max(Tuning::LIBP2P.connection),
                cc,
            };
            cases.push((
                match cc {
                    Cc::Cubic => "raw quinn, tuned windows, cubic",
                    Cc::NewReno => "raw quinn, tuned windows, newreno",
                    Cc::Bbr => "raw quinn, tuned windows, bbr",
                },
                t,
            ));
        }
        // `--only-proxymesh`: skip the baselines (for experiments).
        if args.iter().any(|a| a == "--only-proxymesh") {
            cases.clear();
        }
        for (label, tuning) in cases {
            let d = raw_fetch(&lab, tuning, size);
            report(&lab, label, size, d, rate);
        }
        let d = proxymesh_fetch(&lab, size);
        report(
            &lab,
            "proxymesh remote get (direct, verified, cached)",
            size,
            d,
            rate,
        );
    }
}

fn report(lab: &Lab, label: &str, size: u64, d: Duration, rate_mbit: u32) {
    let mbps = size as f64 / d.as_secs_f64() / 1e6;
    // Drops of the emulation itself (delay line, rate limiter), so far.
    let drops: u64 = lab.link_drops().iter().map(|(_, n)| n).sum();
    println!(
        "{label:<50} {mbps:>7.1} MB/s  ({:>3.0}% of the link)  {d:.2?}  (link drops so far: {drops})",
        100.0 * mbps / (f64::from(rate_mbit) / 8.0)
    );
}

/// One raw QUIC fetch of `size` bytes, B's server to A's client.
fn raw_fetch(lab: &Lab, tuning: Tuning, size: u64) -> Duration {
    let ns = lab.namespace(Host::B);
    let server = raw_quic::Server::start(
        &["ip", "netns", "exec", &ns],
        &format!("0.0.0.0:{QUIC_PORT}"),
        tuning,
    );
    let to = format!("{}:{}", lab.public_ip(Host::B), server.port)
        .parse()
        .unwrap();
    let d = lab.within(Host::A, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let conn = server.connect(to, tuning).await;
                raw_quic::fetch(&conn, size).await
            })
    });
    drop(server);
    d
}

/// Put `size` bytes at A, wait for B's direct connection to A, and time
/// B's get of them.
fn proxymesh_fetch(lab: &Lab, size: u64) -> Duration {
    let mesh = LabMesh::start(lab);
    let start = |h: Host, name: &str| mesh.site(lab, h, name, &[]);
    let a = start(Host::A, "a");
    let _b = start(Host::B, "b");
    for h in [Host::A, Host::B] {
        wait_until(Duration::from_secs(60), || {
            let s = lab.within(h, || http(API, "GET", "/v1/status", &[], b"").json());
            s["mesh"]["relays"]
                .as_array()?
                .iter()
                .any(|r| r["reserved"] == true)
                .then_some(())
        })
        .expect("a reservation");
    }
    let put = |bytes: Vec<u8>| {
        lab.within(Host::A, || {
            let r = http(
                API,
                "POST",
                "/v1/objects",
                &[("content-type", "application/octet-stream")],
                &bytes,
            );
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["key"].as_str().unwrap().to_string()
        })
    };
    // A small get first: the connection, and the hole punch behind it.
    let small = put(vec![1; 1024]);
    lab.within(Host::B, || {
        assert_eq!(
            http(API, "GET", &format!("/v1/objects/{small}"), &[], b"").status,
            200
        )
    });
    wait_until(Duration::from_secs(60), || {
        let s = lab.within(Host::B, || http(API, "GET", "/v1/status", &[], b"").json());
        let conns: Vec<serde_json::Value> = s["mesh"]["peers"]
            .as_array()?
            .iter()
            .filter(|p| p["peer_id"] == a.peer_id.as_str())
            .flat_map(|p| p["connections"].as_array().cloned().unwrap_or_default())
            .collect();
        (!conns.is_empty() && conns.iter().all(|c| c["path"] == "direct")).then_some(())
    })
    .expect("a direct connection between the sites");
    let data = proxymesh::testing::pattern(size as usize, 9).to_vec();
    let key = put(data);
    lab.within(Host::B, || {
        let t = Instant::now();
        let r = http(API, "GET", &format!("/v1/objects/{key}"), &[], b"");
        let d = t.elapsed();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len() as u64, size);
        d
    })
}
