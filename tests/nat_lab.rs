//! Smoke tests of the NAT lab itself (see `src/natlab/`) and its `natlab`
//! command: the rig
//! routes what it should and nothing else, its NATs behave as their names
//! say when observed from the public side, and it leaves nothing behind.
//!
//! Programs inside the lab's namespaces are this test binary, re-run on its
//! ignored `echo_child` / `probe_child` tests with their parameters in
//! environment variables, so no extra tools are needed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use proxymesh_suite::natlab::{leftovers, udp_round_trips, Host, Lab, LabChild, Nat, RELAY_IP};

/// `udp:PORT,tcp:PORT,...`: what `echo_child` serves.
const ECHO_ENV: &str = "NATLAB_ECHO";
/// `udp ADDR ADDR...` or `tcp ADDR ADDR...`: what `probe_child` tries.
const PROBE_ENV: &str = "NATLAB_PROBE";

const TCP_PORT: u16 = 7000;
const UDP_PORT_1: u16 = 7001;
const UDP_PORT_2: u16 = 7002;

// ---------------------------------------------------------------------------
// Children, run inside lab namespaces.

/// Echo servers: every UDP datagram and every TCP connection is answered
/// with the source `ip:port` the server saw. Prints `ECHO READY` once all
/// sockets are bound, then serves until killed (by the lab).
#[test]
#[ignore = "run inside a NAT lab namespace by the NAT lab tests"]
fn echo_child() {
    let Ok(spec) = std::env::var(ECHO_ENV) else {
        return;
    };
    for item in spec.split(',') {
        let (proto, port) = item.split_once(':').expect("proto:port");
        let addr = format!("0.0.0.0:{port}");
        match proto {
            "udp" => {
                let sock = UdpSocket::bind(&addr).expect("bind udp");
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1500];
                    while let Ok((_, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(from.to_string().as_bytes(), from);
                    }
                });
            }
            "tcp" => {
                let listener = TcpListener::bind(&addr).expect("bind tcp");
                std::thread::spawn(move || {
                    for mut conn in listener.incoming().flatten() {
                        if let Ok(peer) = conn.peer_addr() {
                            let _ = writeln!(conn, "{peer}");
                        }
                    }
                });
            }
            other => panic!("unknown protocol {other}"),
        }
    }
    println!("ECHO READY");
    loop {
        std::thread::park();
    }
}

/// Probes: from ONE UDP socket (or one TCP connection per target), ask every
/// target who we are. Prints `LOCAL addr` (UDP), then per target
/// `REPLY target observed` or `NOREPLY target reason`.
#[test]
#[ignore = "run inside a NAT lab namespace by the NAT lab tests"]
fn probe_child() {
    let Ok(spec) = std::env::var(PROBE_ENV) else {
        return;
    };
    let mut words = spec.split_whitespace();
    let proto = words.next().expect("protocol");
    let targets: Vec<SocketAddr> = words.map(|t| t.parse().expect("target")).collect();
    match proto {
        "udp" => {
            let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
            sock.set_read_timeout(Some(Duration::from_millis(700)))
                .unwrap();
            println!("LOCAL {}", sock.local_addr().unwrap());
            for target in targets {
                let mut answer = None;
                'tries: for _ in 0..3 {
                    if let Err(e) = sock.send_to(b"who am i", target) {
                        answer = Some(Err(format!("send: {e}")));
                        break;
                    }
                    let mut buf = [0u8; 1500];
                    while let Ok((n, from)) = sock.recv_from(&mut buf) {
                        if from == target {
                            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                            answer = Some(Ok(text));
                            break 'tries;
                        }
                    }
                }
                match answer {
                    Some(Ok(observed)) => println!("REPLY {target} {observed}"),
                    Some(Err(e)) => println!("NOREPLY {target} {e}"),
                    None => println!("NOREPLY {target} timeout"),
                }
            }
        }
        "tcp" => {
            for target in targets {
                match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    Ok(mut conn) => {
                        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut text = String::new();
                        match conn.read_to_string(&mut text) {
                            Ok(_) => println!("REPLY {target} {}", text.trim()),
                            Err(e) => println!("NOREPLY {target} read:{:?}", e.kind()),
                        }
                    }
                    Err(e) => println!("NOREPLY {target} connect:{:?}", e.kind()),
                }
            }
        }
        other => panic!("unknown protocol {other}"),
    }
}

// ---------------------------------------------------------------------------
// Helpers for the parent tests.

/// Start the echo child on `h` serving `spec`; wait until it is listening.
fn start_echo(lab: &Lab, h: Host, spec: &str) -> LabChild {
    let mut cmd = lab.command(h, std::env::current_exe().unwrap());
    cmd.args(["echo_child", "--exact", "--ignored", "--nocapture"])
        .env(ECHO_ENV, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = lab.spawn(h, cmd);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "ECHO READY" {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("echo child on {h:?} did not get ready ({spec})"));
    child
}

/// What one probe run saw.
#[derive(Debug)]
struct Probe {
    /// The UDP socket's local address (UDP probes only).
    local: Option<SocketAddr>,
    /// Per target, in order: the observed source address, or why not.
    answers: Vec<(SocketAddr, Result<SocketAddr, String>)>,
}

impl Probe {
    fn reply(&self, target: &str) -> Result<SocketAddr, String> {
        let target: SocketAddr = target.parse().unwrap();
        self.answers
            .iter()
            .find(|(t, _)| *t == target)
            .unwrap_or_else(|| panic!("{target} not probed: {self:?}"))
            .1
            .clone()
    }

    fn observed(&self, target: &str) -> SocketAddr {
        self.reply(target)
            .unwrap_or_else(|e| panic!("no answer from {target}: {e}"))
    }

    fn no_reply(&self, target: &str) -> String {
        match self.reply(target) {
            Ok(seen) => panic!("{target} answered (saw us as {seen}), but must be unreachable"),
            Err(why) => why,
        }
    }
}

/// Run the probe child on `h`: `proto` is `udp` or `tcp`.
fn probe(lab: &Lab, h: Host, proto: &str, targets: &[&str]) -> Probe {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["probe_child", "--exact", "--ignored", "--nocapture"])
        .env(PROBE_ENV, format!("{proto} {}", targets.join(" ")));
    let out = lab.run(h, cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "probe on {h:?} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut probe = Probe {
        local: None,
        answers: Vec::new(),
    };
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["LOCAL", addr] => probe.local = Some(addr.parse().unwrap()),
            ["REPLY", target, seen] => probe
                .answers
                .push((target.parse().unwrap(), Ok(seen.parse().unwrap()))),
            ["NOREPLY", target, why @ ..] => probe
                .answers
                .push((target.parse().unwrap(), Err(why.join(" ")))),
            _ => {}
        }
    }
    assert_eq!(probe.answers.len(), targets.len(), "{stdout}");
    probe
}

fn at(ip: &str, port: u16) -> String {
    format!("{ip}:{port}")
}

// ---------------------------------------------------------------------------
// The smoke tests.

/// Both sites reach the relay (through their NAT: the relay sees the router's
/// WAN address); nothing reaches into a site uninvited; sites cannot reach
/// each other's LAN; no IPv6 anywhere.
#[test]
fn sites_reach_the_relay_and_nothing_reaches_into_a_site() {
    let Some(lab) = Lab::new(Nat::EndpointIndependent, Nat::EndpointIndependent) else {
        return;
    };
    let relay = lab.relay_ip();
    let (ha, hb) = (lab.host_ip(Host::A), lab.host_ip(Host::B));
    let _relay_echo = start_echo(
        &lab,
        Host::Relay,
        &format!("tcp:{TCP_PORT},udp:{UDP_PORT_1}"),
    );
    let _a_echo = start_echo(&lab, Host::A, &format!("tcp:{TCP_PORT}"));
    let _b_echo = start_echo(&lab, Host::B, &format!("tcp:{TCP_PORT}"));

    for h in [Host::A, Host::B] {
        let tcp = probe(&lab, h, "tcp", &[&at(relay, TCP_PORT)]);
        let seen = tcp.observed(&at(relay, TCP_PORT));
        println!("{h:?} -> relay tcp: relay saw {seen}");
        assert_eq!(seen.ip().to_string(), lab.public_ip(h), "{h:?} not NATed");
        let udp = probe(&lab, h, "udp", &[&at(relay, UDP_PORT_1)]);
        let seen = udp.observed(&at(relay, UDP_PORT_1));
        println!("{h:?} -> relay udp: relay saw {seen}");
        assert_eq!(seen.ip().to_string(), lab.public_ip(h));
    }

    // Controls: the site echo servers do answer, from inside their site.
    let own = probe(&lab, Host::A, "tcp", &[&at(ha, TCP_PORT)]);
    assert_eq!(own.observed(&at(ha, TCP_PORT)).ip().to_string(), ha);
    let own = probe(&lab, Host::B, "tcp", &[&at(hb, TCP_PORT)]);
    assert_eq!(own.observed(&at(hb, TCP_PORT)).ip().to_string(), hb);

    // The relay has no route to the LANs, and the routers drop unsolicited
    // packets on their WAN side (a timeout, not a refusal: no RST).
    let from_relay = probe(
        &lab,
        Host::Relay,
        "tcp",
        &[
            &at(ha, TCP_PORT),
            &at(hb, TCP_PORT),
            &at(lab.public_ip(Host::A), TCP_PORT),
        ],
    );
    println!(
        "relay -> site A host: {}",
        from_relay.no_reply(&at(ha, TCP_PORT))
    );
    println!(
        "relay -> site B host: {}",
        from_relay.no_reply(&at(hb, TCP_PORT))
    );
    let why = from_relay.no_reply(&at(lab.public_ip(Host::A), TCP_PORT));
    println!("relay -> router A WAN: {why}");
    assert_eq!(why, "connect:TimedOut", "router A answers unsolicited SYNs");

    // Sites cannot reach each other's LAN, nor each other's router uninvited.
    let a_to_b = probe(
        &lab,
        Host::A,
        "tcp",
        &[&at(hb, TCP_PORT), &at(lab.public_ip(Host::B), TCP_PORT)],
    );
    println!("A -> B's LAN: {}", a_to_b.no_reply(&at(hb, TCP_PORT)));
    println!(
        "A -> B's router: {}",
        a_to_b.no_reply(&at(lab.public_ip(Host::B), TCP_PORT))
    );
    let b_to_a = probe(&lab, Host::B, "tcp", &[&at(ha, TCP_PORT)]);
    println!("B -> A's LAN: {}", b_to_a.no_reply(&at(ha, TCP_PORT)));

    // IPv6 is disabled everywhere: no addresses at all (not even ::1).
    for ns in lab.namespaces() {
        let out = std::process::Command::new("ip")
            .args(["-n", &ns, "-6", "-o", "addr", "show"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            out.stdout.is_empty(),
            "IPv6 addresses in {ns}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// From one UDP socket to two relay ports: an endpoint-independent NAT shows
/// the relay one public port, a symmetric NAT a different one per
/// destination.
#[test]
fn nat_mappings_are_endpoint_independent_or_symmetric_as_configured() {
    let Some(lab) = Lab::new(Nat::EndpointIndependent, Nat::Symmetric) else {
        return;
    };
    let relay = lab.relay_ip();
    let _echo = start_echo(
        &lab,
        Host::Relay,
        &format!("udp:{UDP_PORT_1},udp:{UDP_PORT_2}"),
    );
    let (t1, t2) = (at(relay, UDP_PORT_1), at(relay, UDP_PORT_2));

    // Endpoint-independent: one mapping for both destinations, every time.
    for _ in 0..3 {
        let p = probe(&lab, Host::A, "udp", &[&t1, &t2]);
        let (s1, s2) = (p.observed(&t1), p.observed(&t2));
        println!(
            "A (endpoint-independent), local {:?}: relay saw {s1} and {s2}",
            p.local
        );
        assert_eq!(s1.ip().to_string(), lab.public_ip(Host::A));
        assert_eq!(s1, s2, "endpoint-independent NAT changed the mapping");
    }

    // Symmetric: a mapping per destination (two random ports may collide by
    // chance, ~1/30000; a few tries make a false failure negligible).
    let mut seen = Vec::new();
    let differ = (0..5).any(|_| {
        let p = probe(&lab, Host::B, "udp", &[&t1, &t2]);
        let (s1, s2) = (p.observed(&t1), p.observed(&t2));
        println!(
            "B (symmetric), local {:?}: relay saw {s1} and {s2}",
            p.local
        );
        assert_eq!(s1.ip().to_string(), lab.public_ip(Host::B));
        assert_eq!(s2.ip().to_string(), lab.public_ip(Host::B));
        seen.push((s1, s2));
        s1.port() != s2.port()
    });
    assert!(differ, "symmetric NAT kept one port per socket: {seen:?}");
}

/// A site with UDP blocked gets no UDP answer from the relay, while its TCP
/// works; the other site's UDP works (so the echo is not the problem).
#[test]
fn udp_blocked_site_gets_no_udp_but_tcp_works() {
    let Some(lab) = Lab::new(Nat::UdpBlocked, Nat::EndpointIndependent) else {
        return;
    };
    let relay = lab.relay_ip();
    let _echo = start_echo(
        &lab,
        Host::Relay,
        &format!("tcp:{TCP_PORT},udp:{UDP_PORT_1}"),
    );
    let udp = at(relay, UDP_PORT_1);
    let tcp = at(relay, TCP_PORT);

    let a_udp = probe(&lab, Host::A, "udp", &[&udp]);
    println!("A (UDP blocked) -> relay udp: {}", a_udp.no_reply(&udp));
    let seen = probe(&lab, Host::A, "tcp", &[&tcp]).observed(&tcp);
    println!("A (UDP blocked) -> relay tcp: relay saw {seen}");
    assert_eq!(seen.ip().to_string(), lab.public_ip(Host::A));

    let seen = probe(&lab, Host::B, "udp", &[&udp]).observed(&udp);
    println!("B -> relay udp: relay saw {seen}");
    assert_eq!(seen.ip().to_string(), lab.public_ip(Host::B));
}

/// Code of the test process itself runs inside a lab host's namespace with
/// `Lab::within`: it reaches what that host reaches, including its
/// loopback, and nothing else.
#[test]
fn test_code_runs_inside_a_host_namespace() {
    let Some(lab) = Lab::new(Nat::EndpointIndependent, Nat::EndpointIndependent) else {
        return;
    };
    let _echo = start_echo(&lab, Host::A, &format!("tcp:{TCP_PORT}"));
    let ask = |addr: String| {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("{:?}", e.kind()))?;
        let mut text = String::new();
        conn.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok::<_, String>(text.trim().to_string())
    };
    // Host A's loopback, from the test process.
    let seen = lab.within(Host::A, || ask(at("127.0.0.1", TCP_PORT)));
    println!("within A -> 127.0.0.1: echo saw {seen:?}");
    assert!(seen.unwrap().starts_with("127.0.0.1:"));
    // The relay cannot reach it, from the test process either.
    let from_relay = lab.within(Host::Relay, || ask(at(lab.host_ip(Host::A), TCP_PORT)));
    println!("within relay -> A: {from_relay:?}");
    assert!(from_relay.is_err(), "{from_relay:?}");
    // A socket opened inside keeps working from this (root namespace) thread.
    let sock = lab.within(Host::A, || UdpSocket::bind("0.0.0.0:0").unwrap());
    let relay_echo = start_echo(&lab, Host::Relay, &format!("udp:{UDP_PORT_1}"));
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(b"hi", at(lab.relay_ip(), UDP_PORT_1)).unwrap();
    let mut buf = [0u8; 100];
    let (n, _) = sock.recv_from(&mut buf).expect("relay echo answers");
    let seen = String::from_utf8_lossy(&buf[..n]).into_owned();
    println!("A's socket used outside: relay saw {seen}");
    assert!(seen.starts_with(&format!("{}:", lab.public_ip(Host::A))));
    drop(relay_echo);
    // A panic inside reaches the caller.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lab.within(Host::B, || panic!("deliberate panic inside a namespace"))
    }));
    assert!(panicked.is_err());
}

/// Whether `child` has exited, within 2 s (reaps it).
fn exited(child: &mut LabChild) -> bool {
    for _ in 0..100 {
        if child.try_wait().expect("wait").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Dropping a lab kills its processes and removes every namespace and link
/// it made; tearing down twice is harmless; a panicking test cleans up too.
#[test]
fn lab_leaves_nothing_behind_even_when_the_test_panics() {
    let Some(lab) = Lab::new(Nat::EndpointIndependent, Nat::Symmetric) else {
        return;
    };
    let prefix = lab.prefix();
    let mut echo = start_echo(&lab, Host::Relay, &format!("udp:{UDP_PORT_1}"));
    let before: BTreeSet<String> = leftovers(&prefix).into_iter().collect();
    assert_eq!(
        before.len(),
        6,
        "a running lab has six namespaces: {before:?}"
    );
    lab.teardown();
    lab.teardown();
    drop(lab);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    assert!(exited(&mut echo), "the lab did not kill its echo process");

    // The same when the test panics inside the lab.
    let state: Mutex<(Option<String>, Option<LabChild>)> = Mutex::new((None, None));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new(Nat::UdpBlocked, Nat::Symmetric).expect("root");
        let echo = start_echo(&lab, Host::A, &format!("tcp:{TCP_PORT}"));
        *state.lock().unwrap() = (Some(lab.prefix()), Some(echo));
        assert!(!leftovers(&lab.prefix()).is_empty());
        panic!("deliberate panic inside a lab");
    }));
    assert!(result.is_err(), "the closure was meant to panic");
    let (prefix, echo) = state.into_inner().unwrap_or_else(|e| e.into_inner());
    let prefix = prefix.expect("the lab was built");
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    assert!(
        exited(&mut echo.expect("echo started")),
        "the panicking lab did not kill its echo process"
    );
}

/// A port forward opens exactly that port of a site to the public segment.
#[test]
fn a_forwarded_port_reaches_the_site_host_and_only_that_port() {
    let Some(lab) = Lab::new(Nat::EndpointIndependent, Nat::EndpointIndependent) else {
        return;
    };
    let _echo = start_echo(&lab, Host::B, &format!("udp:{UDP_PORT_1},udp:{UDP_PORT_2}"));
    lab.forward_port(Host::B, "udp", UDP_PORT_1);
    let forwarded = at(lab.public_ip(Host::B), UDP_PORT_1);
    let closed = at(lab.public_ip(Host::B), UDP_PORT_2);
    let p = probe(&lab, Host::Relay, "udp", &[&forwarded, &closed]);
    assert_eq!(
        p.observed(&forwarded).ip().to_string(),
        lab.relay_ip(),
        "the site host sees the relay's own address through a forward"
    );
    p.no_reply(&closed);
}

/// `natlab up` builds a lab with the link asked for and keeps it until
/// `natlab down`, which leaves nothing behind; bad settings are refused
/// with a clear message.
#[test]
fn natlab_command_brings_a_delayed_lab_up_and_down() {
    if !proxymesh_suite::require_root("the natlab command") {
        return;
    }
    let natlab = env!("CARGO_BIN_EXE_natlab");
    let bad = std::process::Command::new(natlab)
        .args(["up", "cone", "--rtt", "fast"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("e.g. 200ms"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let name = format!("t{}", std::process::id() % 1_000_000);
    let mut up = std::process::Command::new(natlab)
        .args(["up", "cone,symmetric", "--rtt", "80ms", "--rate", "100mbit"])
        .args(["--forward", "7003", "--name", &name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(up.id());
    let mut banner = String::new();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("takes it down") {
            break;
        }
    }
    assert!(banner.contains("RTT 80ms"), "{banner}");
    assert!(
        banner.contains(&format!("ip netns exec {name}-ha")),
        "{banner}"
    );
    assert_eq!(leftovers(&format!("{name}-")).len(), 6, "{banner}");

    // A site and the relay are half the RTT apart, through the delay line.
    let rtts = udp_round_trips(
        &format!("{name}-ha"),
        &format!("{name}-relay"),
        RELAY_IP,
        7004,
        3,
    );
    let least = *rtts.iter().min().unwrap();
    assert!(
        least >= Duration::from_millis(39) && least < Duration::from_secs(5),
        "a site is RTT/2 = 40 ms from the relay; measured {least:?}"
    );

    let down = std::process::Command::new(natlab)
        .args(["down", "--name", &name])
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let status = up.wait().unwrap();
    assert!(status.success(), "natlab up ended with {status}");
    std::mem::forget(guard);
    assert_eq!(leftovers(&format!("{name}-")), Vec::<String>::new());
}

/// Kills a process (by pid) when dropped: a failed assertion must not
/// leave `natlab up` holding its lab.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the child this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
    }
}
