//! `natlab`: bring the NAT lab (a relay and two NATed sites in network
//! namespaces, optionally behind a long, thin link) up by hand, to run
//! daemons, benches or `iperf`-style tools across it. Needs root.
//!
//! ```text
//! natlab up cone --rtt 200ms --rate 400mbit    # until Ctrl-C / `natlab down`
//! ip netns exec nl-ha proxymeshd …             # site A
//! natlab down
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use proxymesh_suite::natlab::{leftovers, Host, Lab, Link, Nat};

#[derive(Parser)]
#[command(about = "The NAT lab: a relay and two NATed sites in network namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a lab and keep it up until interrupted (SIGINT, SIGTERM or
    /// `natlab down`), then tear it down.
    Up {
        /// Each site's NAT: `cone` (alias `strict`), `symmetric` or
        /// `udp-blocked`; `A,B` gives the two sites different ones.
        #[arg(default_value = "cone")]
        nat: String,
        /// Round-trip time between the two sites (a site and the relay are
        /// half of it apart), e.g. `200ms`.
        #[arg(long, value_parser = Link::parse_rtt)]
        rtt: Option<Duration>,
        /// Each site's rate in each direction, e.g. `400mbit`.
        #[arg(long, value_parser = Link::parse_rate_mbit)]
        rate: Option<u32>,
        /// Forward this UDP and TCP port on both routers to their site host
        /// (repeatable): a server at a site is then reachable at its
        /// router's public address.
        #[arg(long = "forward")]
        forward: Vec<u16>,
        /// Namespace prefix: namespaces are `NAME-relay`, `NAME-ha`, ….
        #[arg(long, default_value = "nl", value_parser = parse_name)]
        name: String,
    },
    /// Stop the lab NAME (its `up` process) and delete whatever it left.
    Down {
        #[arg(long, default_value = "nl", value_parser = parse_name)]
        name: String,
    },
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 8
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "lab name {s:?}: 1 to 8 lowercase letters or digits"
        ))
    }
}

fn pid_file(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/natlab-{name}.pid"))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Up {
            nat,
            rtt,
            rate,
            forward,
            name,
        } => up(&nat, rtt, rate, &forward, &name),
        Command::Down { name } => down(&name),
    }
}

fn up(
    nat: &str,
    rtt: Option<Duration>,
    rate: Option<u32>,
    forward: &[u16],
    name: &str,
) -> ExitCode {
    let nats: Result<Vec<Nat>, String> = nat.split(',').map(str::parse).collect();
    let (a, b) = match nats.as_deref() {
        Ok([n]) => (*n, *n),
        Ok([a, b]) => (*a, *b),
        Ok(_) => {
            eprintln!("natlab: NAT {nat:?}: one kind, or two as A,B");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("natlab: {e}");
            return ExitCode::from(2);
        }
    };
    if !proxymesh_suite::require_root("natlab") {
        return ExitCode::FAILURE;
    }
    let missing: Vec<&str> = ["ip", "tc", "iptables"]
        .into_iter()
        .filter(|tool| std::process::Command::new(tool).arg("-V").output().is_err())
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "natlab: {} not found; install iproute2 and iptables (Debian: apt-get install iproute2 iptables)",
            missing.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let pid = pid_file(name);
    if let Some(other) = running(&pid) {
        eprintln!("natlab: lab {name:?} is up already (process {other}); `natlab down --name {name}` first");
        return ExitCode::FAILURE;
    }
    let link = Link {
        rtt: rtt.unwrap_or_default(),
        rate_mbit: rate,
    };
    let lab = Lab::named(name, a, b, link);
    for &port in forward {
        for h in [Host::A, Host::B] {
            lab.forward_port(h, "udp", port);
            lab.forward_port(h, "tcp", port);
        }
    }
    if let Err(e) = std::fs::write(&pid, std::process::id().to_string()) {
        eprintln!("natlab: cannot write {}: {e}", pid.display());
    }
    println!("natlab {name}: up ({a:?} / {b:?})");
    match (rtt, rate) {
        (None, None) => println!("  link: none (namespace speed)"),
        _ => println!(
            "  link: {} between the sites ({} to the relay), {} per site each way",
            rtt.map_or("no delay".into(), |r| format!("RTT {r:?}")),
            rtt.map_or("none".into(), |r| format!("{:?}", r / 2)),
            rate.map_or("no rate limit".into(), |r| format!("{r} Mbit/s"))
        ),
    }
    for (h, what) in [
        (Host::Relay, "relay "),
        (Host::A, "site A"),
        (Host::B, "site B"),
    ] {
        let public = if h == Host::Relay {
            String::new()
        } else {
            format!(" (public {})", lab.public_ip(h))
        };
        println!(
            "  {what} {}{public}: ip netns exec {} COMMAND",
            lab.host_ip(h),
            lab.namespace(h)
        );
    }
    if !forward.is_empty() {
        println!("  forwarded to the site hosts: ports {forward:?} (udp and tcp)");
    }
    println!("Ctrl-C or `natlab down --name {name}` takes it down.");
    wait_for_signal();
    drop(lab);
    let _ = std::fs::remove_file(&pid);
    println!("natlab {name}: down");
    ExitCode::SUCCESS
}

fn down(name: &str) -> ExitCode {
    let pid = pid_file(name);
    if let Some(up) = running(&pid) {
        // SAFETY: kill(2) of the `natlab up` process the pid file names.
        unsafe { libc::kill(up, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while running(&pid).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let prefix = format!("{name}-");
    if !leftovers(&prefix).is_empty() {
        // Its `up` process died without tearing down: do it here.
        if !proxymesh_suite::require_root("natlab") {
            return ExitCode::FAILURE;
        }
        Lab::teardown_named(name);
    }
    let _ = std::fs::remove_file(&pid);
    let left = leftovers(&prefix);
    if left.is_empty() {
        println!("natlab {name}: down");
        ExitCode::SUCCESS
    } else {
        eprintln!("natlab {name}: still there: {left:?}");
        ExitCode::FAILURE
    }
}

/// The live process a pid file names, if any.
fn running(pid: &std::path::Path) -> Option<i32> {
    let p: i32 = std::fs::read_to_string(pid).ok()?.trim().parse().ok()?;
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    (unsafe { libc::kill(p, 0) } == 0).then_some(p)
}

/// Block until SIGINT, SIGTERM or SIGHUP.
fn wait_for_signal() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    });
}
