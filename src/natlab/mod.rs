//! The NAT lab: a relay and two NATed sites built from Linux network
//! namespaces, so system tests can prove hole punching with real packets.
//! Needs root (see [`crate::require_root`]). Tests and benches use it as
//! `proxymesh_suite::natlab`; the `natlab` command brings one up by hand
//! (`natlab up cone --rtt 200ms --rate 400mbit`).
//!
//! ```text
//!                      <p>-pub  (bridge br0, 10.99.0.0/24)
//!          ┌──────────────────────┼───────────────────────┐
//!   <p>-relay                  <p>-ra                   <p>-rb
//!   eth0 10.99.0.1             wan0 10.99.0.11          wan0 10.99.0.12
//!   (no route to the LANs)     NAT router A             NAT router B
//!                              lan0 192.168.1.1         lan0 192.168.2.1
//!                                 │                        │
//!                              <p>-ha                   <p>-hb
//!                              eth0 192.168.1.2         eth0 192.168.2.2
//!                              default via .1.1         default via .2.1
//! ```
//!
//! `<p>` is a prefix unique to the lab (`pm<pid>l<counter>`), so labs of
//! parallel tests and test binaries never share a namespace; addresses repeat
//! across labs, which are isolated from each other and from the machine.
//!
//! Each router forwards LAN→WAN, masquerades behind its WAN address and lets
//! only replies (conntrack `ESTABLISHED,RELATED`) back in, both through
//! FORWARD and INPUT: a router that accepted unsolicited packets on `wan0`
//! would break hole punching (the peer's early packet creates a conntrack
//! entry that collides with the outbound mapping, and MASQUERADE silently
//! moves the port). [`Nat`] picks each site's flavour. IPv6 is disabled in
//! every namespace; nothing in the rig routes anywhere outside it.
//!
//! A lab can also emulate a long, thin public link ([`Link`]: `rtt`,
//! `rate_mbit`; [`Lab::with_link`]): each router delays every packet it
//! forwards by a quarter of the RTT (a [`DelayLine`] on `NFQUEUE`: this
//! kernel has no `netem`) and shapes its WAN and LAN sides with `tbf`. A
//! packet between the two sites passes both routers each way, so A ↔ B sees
//! the whole `rtt`; a site ↔ the relay sees half of it.
//!
//! Veth pairs are created directly inside their namespaces (`ip -n NS link
//! add X type veth peer name Y netns NS2`), so no interface of the lab ever
//! appears in the root namespace other tests share. Dropping the [`Lab`]
//! kills every process inside its namespaces and deletes them, also when
//! the test panicked.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod delay;
mod mesh;
pub use delay::DelayLine;
pub use mesh::{LabMesh, SITE_API};

/// The emulated public link of every site (default: none, loopback speed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Link {
    /// Round-trip time between the two sites (half of it between a site
    /// and the relay). Zero: no delay.
    pub rtt: Duration,
    /// Each site's rate limit in each direction, Mbit/s (`None`: none).
    pub rate_mbit: Option<u32>,
}

/// The `NFQUEUE` number the routers' delay lines use (each router is its
/// own namespace, so both use the same number).
const DELAY_QUEUE: u16 = 0;

/// How a site's router translates its hosts' traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (`MASQUERADE`): one local socket keeps
    /// one public port whatever the destination (the port is preserved when
    /// free). Hole punching works.
    EndpointIndependent,
    /// Address-and-port-dependent mapping (`MASQUERADE --random`): every
    /// destination sees a different public port. Direct UDP punching fails;
    /// the relay must carry the traffic.
    Symmetric,
    /// [`Nat::EndpointIndependent`], and the router drops all forwarded UDP
    /// (a site that allows only TCP out).
    UdpBlocked,
}

impl std::str::FromStr for Nat {
    type Err = String;

    /// `cone` (alias `strict`: endpoint-independent mapping, and only
    /// replies let in), `symmetric`, `udp-blocked`.
    fn from_str(s: &str) -> Result<Nat, String> {
        match s {
            "cone" | "strict" => Ok(Nat::EndpointIndependent),
            "symmetric" => Ok(Nat::Symmetric),
            "udp-blocked" => Ok(Nat::UdpBlocked),
            _ => Err(format!(
                "unknown NAT {s:?}: expected cone (alias strict), symmetric or udp-blocked"
            )),
        }
    }
}

impl Link {
    /// Parse an RTT as `tc` writes one: `200ms`, `0.2s`, `1s`, `500us`.
    pub fn parse_rtt(s: &str) -> Result<Duration, String> {
        let (num, unit) = split_unit(s);
        let scale = match unit {
            "s" => 1.0,
            "ms" => 1e-3,
            "us" => 1e-6,
            _ => {
                return Err(format!(
                    "RTT {s:?}: expected a number and s, ms or us, e.g. 200ms"
                ))
            }
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("RTT {s:?}: {num:?} is not a number"))?;
        if !(0.0..=10.0).contains(&(v * scale)) {
            return Err(format!("RTT {s:?}: between 0 and 10 s, please"));
        }
        Ok(Duration::from_secs_f64(v * scale))
    }

    /// Parse a rate as `tc` writes one, to Mbit/s: `400mbit`, `1gbit`,
    /// `50mbps` (megabytes).
    pub fn parse_rate_mbit(s: &str) -> Result<u32, String> {
        let (num, unit) = split_unit(s);
        let scale = match unit {
            "kbit" => 1e-3,
            "mbit" => 1.0,
            "gbit" => 1e3,
            "mbps" => 8.0,
            "gbps" => 8e3,
            _ => {
                return Err(format!(
                    "rate {s:?}: expected a number and kbit, mbit, gbit, mbps or gbps, e.g. 400mbit"
                ))
            }
        };
        let v: f64 = num
            .parse()
            .map_err(|_| format!("rate {s:?}: {num:?} is not a number"))?;
        let mbit = (v * scale).round();
        if !(1.0..=100_000.0).contains(&mbit) {
            return Err(format!("rate {s:?}: between 1 mbit and 100 gbit, please"));
        }
        Ok(mbit as u32)
    }
}

fn split_unit(s: &str) -> (&str, &str) {
    let at = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    (&s[..at], &s[at..])
}

/// A machine of the lab that runs programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The relay host on the public segment.
    Relay,
    /// The host behind site A's router.
    A,
    /// The host behind site B's router.
    B,
}

/// The relay's address on the public segment.
pub const RELAY_IP: &str = "10.99.0.1";
/// Site A's host (private).
pub const HOST_A_IP: &str = "192.168.1.2";
/// Site B's host (private).
pub const HOST_B_IP: &str = "192.168.2.2";
/// Site A's router on the public segment: what the relay sees of host A.
pub const ROUTER_A_WAN_IP: &str = "10.99.0.11";
/// Site B's router on the public segment: what the relay sees of host B.
pub const ROUTER_B_WAN_IP: &str = "10.99.0.12";

/// How long [`Lab::run`] waits for a command before killing it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

static LABS: AtomicU32 = AtomicU32::new(0);

/// One running lab: six namespaces, torn down on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    a: Nat,
    b: Nat,
    link: Link,
    /// The routers' delay lines, stopped before teardown.
    lines: Mutex<Vec<DelayLine>>,
}

impl Lab {
    /// Build a lab whose site A uses NAT `a` and site B uses NAT `b`.
    ///
    /// Returns `None` when not root outside CI (after
    /// [`crate::require_root`] printed why), so the test can skip;
    /// in CI without root it panics. Any setup failure panics with the
    /// failing command and its stderr, after tearing down what was built.
    pub fn new(a: Nat, b: Nat) -> Option<Lab> {
        Self::with_link(a, b, Link::default())
    }

    /// [`Lab::new`] with every site's public link emulated as `link`.
    pub fn with_link(a: Nat, b: Nat, link: Link) -> Option<Lab> {
        if !crate::require_root("the NAT lab (network namespaces, iptables)") {
            return None;
        }
        let prefix = format!(
            "pm{}l{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        // Anything carrying this prefix was left by a dead process that had
        // our pid: it is stale.
        Some(Lab::build_named(prefix, a, b, link))
    }

    /// A lab whose namespaces are `<name>-relay`, `<name>-ha`, … (what the
    /// `natlab` command builds). Whatever a dead lab of that name left is
    /// removed first. Needs root; panics on any setup failure, after tearing
    /// down what was built.
    pub fn named(name: &str, a: Nat, b: Nat, link: Link) -> Lab {
        Lab::build_named(name.to_string(), a, b, link)
    }

    /// Tear down whatever a lab named `name` left behind (its `up` process
    /// killed without cleaning up), as [`Lab::teardown`] does.
    pub fn teardown_named(name: &str) {
        let lab = Lab {
            prefix: name.to_string(),
            a: Nat::EndpointIndependent,
            b: Nat::EndpointIndependent,
            link: Link::default(),
            lines: Mutex::new(Vec::new()),
        };
        lab.teardown();
    }

    fn build_named(prefix: String, a: Nat, b: Nat, link: Link) -> Lab {
        let lab = Lab {
            prefix,
            a,
            b,
            link,
            lines: Mutex::new(Vec::new()),
        };
        lab.teardown();
        // If a step panics, `lab` is dropped while unwinding: teardown.
        lab.build();
        lab
    }

    /// The emulated public link of every site.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Packets the emulated link dropped so far, per router: the delay
    /// line's queue (`nfnetlink_queue`: queue full, or the netlink socket
    /// full) and `tbf` (its queue full), on both sides. Zero when no link
    /// is emulated.
    pub fn link_drops(&self) -> Vec<(Host, u64)> {
        [Host::A, Host::B]
            .into_iter()
            .map(|h| {
                let router = self.router_namespace(h).expect("a site");
                let mut dropped = 0;
                // `queue pid waiting mode range queue_dropped user_dropped id 1`
                if let Ok(out) = try_cmd(
                    netns_command(&router, "cat").arg("/proc/net/netfilter/nfnetlink_queue"),
                ) {
                    for line in out.lines() {
                        let f: Vec<u64> = line
                            .split_whitespace()
                            .filter_map(|w| w.parse().ok())
                            .collect();
                        if f.len() >= 7 {
                            dropped += f[5] + f[6];
                        }
                    }
                }
                for dev in ["wan0", "lan0"] {
                    // ` Sent 123 bytes 4 pkt (dropped 5, overlimits 6 requeues 0)`
                    if let Ok(out) = try_cmd(
                        netns_command(&router, "tc").args(["-s", "qdisc", "show", "dev", dev]),
                    ) {
                        for part in out.split("(dropped ").skip(1) {
                            dropped += part
                                .split(',')
                                .next()
                                .and_then(|n| n.trim().parse::<u64>().ok())
                                .unwrap_or(0);
                        }
                    }
                }
                (h, dropped)
            })
            .collect()
    }

    /// Forward `proto` (`"udp"` or `"tcp"`) `port` arriving at `h`'s router
    /// from the public segment to the same port on `h` (a port forward, as
    /// a site would configure for a server it exposes). No-op for the relay,
    /// which is public already.
    pub fn forward_port(&self, h: Host, proto: &str, port: u16) {
        let Some(router) = self.router_namespace(h) else {
            return;
        };
        let (host, port) = (self.host_ip(h), port.to_string());
        let to = format!("{host}:{port}");
        for rule in [
            [
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                "wan0",
                "-p",
                proto,
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ]
            .as_slice(),
            [
                "-I", "FORWARD", "-i", "wan0", "-o", "lan0", "-p", proto, "-d", host, "--dport",
                &port, "-j", "ACCEPT",
            ]
            .as_slice(),
        ] {
            let mut argv = vec!["iptables", "-w"];
            argv.extend_from_slice(rule);
            self.sh(Some(&router), &argv);
        }
    }

    /// The prefix of every namespace (and would-be root link) of this lab,
    /// including the trailing `-`: `pm<pid>l<n>-`.
    pub fn prefix(&self) -> String {
        format!("{}-", self.prefix)
    }

    /// The NAT of `h`'s site (`None` for the relay).
    pub fn nat(&self, h: Host) -> Option<Nat> {
        match h {
            Host::Relay => None,
            Host::A => Some(self.a),
            Host::B => Some(self.b),
        }
    }

    /// The relay's address, `10.99.0.1`.
    pub fn relay_ip(&self) -> &'static str {
        RELAY_IP
    }

    /// `h`'s own address: the relay's, or a site host's private one.
    pub fn host_ip(&self, h: Host) -> &'static str {
        match h {
            Host::Relay => RELAY_IP,
            Host::A => HOST_A_IP,
            Host::B => HOST_B_IP,
        }
    }

    /// The address the public segment sees `h`'s traffic come from: the
    /// relay's own, or its site router's WAN address.
    pub fn public_ip(&self, h: Host) -> &'static str {
        match h {
            Host::Relay => RELAY_IP,
            Host::A => ROUTER_A_WAN_IP,
            Host::B => ROUTER_B_WAN_IP,
        }
    }

    /// The namespace `h` runs in.
    pub fn namespace(&self, h: Host) -> String {
        self.ns(match h {
            Host::Relay => "relay",
            Host::A => "ha",
            Host::B => "hb",
        })
    }

    /// The namespace of `h`'s site router (`None` for the relay), e.g. to
    /// inspect its conntrack table or add firewall rules.
    pub fn router_namespace(&self, h: Host) -> Option<String> {
        match h {
            Host::Relay => None,
            Host::A => Some(self.ns("ra")),
            Host::B => Some(self.ns("rb")),
        }
    }

    /// All six namespaces of the lab.
    pub fn namespaces(&self) -> Vec<String> {
        ["pub", "relay", "ra", "ha", "rb", "hb"]
            .iter()
            .map(|n| self.ns(n))
            .collect()
    }

    /// `ip netns exec <ns of h> program`: add arguments, environment and
    /// stdio as usual. The environment passes through to `program`.
    pub fn command(&self, h: Host, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.namespace(h), program)
    }

    /// Start `cmd` on `h`. `cmd` is either from [`Lab::command`] for the same
    /// host (used as is, stdio included), or a plain command, which is moved
    /// into the namespace with its program, arguments, environment and
    /// working directory (not its stdio: stdin is null, stdout and stderr are
    /// inherited). The process is killed (and reaped) when the returned
    /// handle is dropped, and in any case when the lab is torn down, like
    /// every other process inside the lab's namespaces.
    pub fn spawn(&self, h: Host, cmd: Command) -> LabChild {
        let mut cmd = self.in_lab(h, cmd, Stdio::inherit);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} on {h:?}: {e}", show(&cmd)));
        LabChild(child)
    }

    /// Run `cmd` (as for [`Lab::spawn`]) on `h` to completion, capturing
    /// stdout and stderr. Panics if it runs longer than [`RUN_TIMEOUT`].
    /// A failing exit status is the caller's to check.
    pub fn run(&self, h: Host, cmd: Command) -> Output {
        let mut cmd = self.in_lab(h, cmd, Stdio::piped);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = show(&cmd);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what} on {h:?}: {e}"));
        let mut out_pipe = child.stdout.take().expect("stdout");
        let mut err_pipe = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out_pipe.read_to_end(&mut v);
            v
        });
        let err = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err_pipe.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out.join().unwrap_or_default();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "{what} on {h:?} still running after {RUN_TIMEOUT:?}; killed.\n\
                     stdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    }

    /// Run `f` in this process, on a thread inside `h`'s network namespace,
    /// and return its result: sockets it opens live in that namespace (and
    /// stay there when used from other threads afterwards). This is how a
    /// test talks to a daemon whose API listens on `127.0.0.1` inside a
    /// site, e.g. with [`crate::http`]. Only the network namespace
    /// changes (the file system is the test's own); a panic in `f` is
    /// re-raised here.
    pub fn within<T: Send>(&self, h: Host, f: impl FnOnce() -> T + Send) -> T {
        within_namespace(&self.namespace(h), f)
    }

    /// Kill every process inside the lab's namespaces, delete the
    /// namespaces (and with them their links and the bridge) and any root
    /// namespace link carrying the prefix. Idempotent; never panics (it runs
    /// from `Drop`, possibly while unwinding); problems are printed.
    /// [`leftovers`] then finds nothing.
    pub fn teardown(&self) {
        // The delay lines are threads of this process inside the routers'
        // namespaces: stop them first, or the namespaces outlive deletion.
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        let prefix = self.prefix();
        let namespaces: Vec<String> = list_namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect();
        // SIGKILL everything inside, then wait for it to be gone: a deleted
        // namespace lives on while a process is in it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<i32> = namespaces.iter().flat_map(|n| netns_pids(n)).collect();
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("natlab: processes {pids:?} in {prefix}* survive SIGKILL");
                break;
            }
            for pid in pids {
                // SAFETY: plain kill(2) of a process inside this lab's
                // namespaces, which only this lab's commands entered.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for ns in namespaces.iter().rev() {
            if let Err(e) = try_cmd(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("natlab: {e}");
            }
        }
        for link in root_links().into_iter().filter(|l| l.starts_with(&prefix)) {
            if let Err(e) = try_cmd(Command::new("ip").args(["link", "del", &link])) {
                eprintln!("natlab: {e}");
            }
        }
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Move `cmd` into `h`'s namespace unless it already is a lab command
    /// (then check it is for `h`'s namespace).
    fn in_lab(&self, h: Host, cmd: Command, out: fn() -> Stdio) -> Command {
        let ns = self.namespace(h);
        let args: Vec<&OsStr> = cmd.get_args().collect();
        if cmd.get_program() == "ip" && args.len() >= 3 && args[..2] == ["netns", "exec"] {
            assert!(
                args[2] == OsStr::new(&ns),
                "command {} is for namespace {:?}, not {h:?} ({ns})",
                show(&cmd),
                args[2]
            );
            return cmd;
        }
        let mut wrapped = netns_command(&ns, cmd.get_program());
        wrapped.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped.stdin(Stdio::null()).stdout(out()).stderr(out());
        wrapped
    }

    /// Run a setup command in namespace `ns` (`None`: the root namespace's
    /// `ip`, which names its own namespace with `-n`); panic on failure.
    fn sh(&self, ns: Option<&str>, argv: &[&str]) {
        let mut cmd = match ns {
            Some(ns) => netns_command(ns, argv[0]),
            None => Command::new(argv[0]),
        };
        cmd.args(&argv[1..]);
        if let Err(e) = try_cmd(&mut cmd) {
            panic!("NAT lab {} setup failed: {e}", self.prefix);
        }
    }

    fn ip(&self, ns: &str, args: &str) {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend(args.split_whitespace());
        self.sh(None, &argv);
    }

    fn build(&self) {
        let [pub_ns, relay, ra, ha, rb, hb]: [String; 6] =
            self.namespaces().try_into().expect("six namespaces");
        for ns in [&pub_ns, &relay, &ra, &ha, &rb, &hb] {
            self.sh(None, &["ip", "netns", "add", ns]);
            // Before any interface exists, so new ones inherit `default`.
            self.sh(
                Some(ns),
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            );
            self.ip(ns, "link set lo up");
        }

        // The public segment and the relay on it.
        self.ip(&pub_ns, "link add br0 type bridge");
        self.ip(&pub_ns, "link set br0 up");
        self.ip(
            &pub_ns,
            &format!("link add relay type veth peer name eth0 netns {relay}"),
        );
        self.ip(&pub_ns, "link set relay master br0 up");
        self.ip(&relay, &format!("addr add {RELAY_IP}/24 dev eth0"));
        self.ip(&relay, "link set eth0 up");

        for (port, router, host, wan, net, nat) in [
            ("ra", &ra, &ha, ROUTER_A_WAN_IP, "192.168.1", self.a),
            ("rb", &rb, &hb, ROUTER_B_WAN_IP, "192.168.2", self.b),
        ] {
            // Router WAN side, a port of the bridge.
            self.ip(
                &pub_ns,
                &format!("link add {port} type veth peer name wan0 netns {router}"),
            );
            self.ip(&pub_ns, &format!("link set {port} master br0 up"));
            self.ip(router, &format!("addr add {wan}/24 dev wan0"));
            self.ip(router, "link set wan0 up");
            // Router LAN side and the site host.
            self.ip(
                router,
                &format!("link add lan0 type veth peer name eth0 netns {host}"),
            );
            self.ip(router, &format!("addr add {net}.1/24 dev lan0"));
            self.ip(router, "link set lan0 up");
            self.ip(host, &format!("addr add {net}.2/24 dev eth0"));
            self.ip(host, "link set eth0 up");
            self.ip(host, &format!("route add default via {net}.1"));

            self.sh(
                Some(router),
                &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
            );
            let mut masquerade = "-t nat -A POSTROUTING -o wan0 -j MASQUERADE".to_string();
            if nat == Nat::Symmetric {
                masquerade.push_str(" --random");
            }
            let mut rules = vec![
                masquerade.as_str(),
                "-P FORWARD DROP",
                "-A FORWARD -i lan0 -o wan0 -j ACCEPT",
                "-A FORWARD -i wan0 -o lan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-A INPUT -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-A INPUT -i wan0 -j DROP",
            ];
            if nat == Nat::UdpBlocked {
                rules.push("-I FORWARD -p udp -j DROP");
            }
            for rule in rules {
                let mut argv = vec!["iptables", "-w"];
                argv.extend(rule.split_whitespace());
                self.sh(Some(router), &argv);
            }
            self.emulate_link(router);
        }
    }

    /// Delay and shape what `router` forwards, as [`Link`] says.
    fn emulate_link(&self, router: &str) {
        if let Some(mbit) = self.link.rate_mbit {
            // A burst of at least one 10 ms tick at the rate, and up to a
            // second of queue before tbf drops.
            let burst = (u64::from(mbit) * 1_000_000 / 8 / 100).max(64 * 1024);
            for dev in ["wan0", "lan0"] {
                self.sh(
                    Some(router),
                    &[
                        "tc",
                        "qdisc",
                        "add",
                        "dev",
                        dev,
                        "root",
                        "tbf",
                        "rate",
                        &format!("{mbit}mbit"),
                        "burst",
                        &burst.to_string(),
                        "latency",
                        "1s",
                    ],
                );
            }
        }
        if !self.link.rtt.is_zero() {
            // Bound before any packet is sent to it (an unbound queue drops).
            let line = DelayLine::start(
                &format!("/run/netns/{router}"),
                DELAY_QUEUE,
                self.link.rtt / 4,
            );
            self.lines
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(line);
            let queue = DELAY_QUEUE.to_string();
            self.sh(
                Some(router),
                &[
                    "iptables",
                    "-w",
                    "-t",
                    "mangle",
                    "-A",
                    "FORWARD",
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &queue,
                ],
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A process started by [`Lab::spawn`]: a [`Child`] (through `Deref`)
/// that is killed and reaped when dropped, so it never outlives its test nor
/// lingers as a zombie.
#[derive(Debug)]
#[must_use = "dropping a LabChild kills the process"]
pub struct LabChild(Child);

impl std::ops::Deref for LabChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for LabChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for LabChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run `f` on a thread inside the network namespace `ns` (by name, as `ip
/// netns` knows it) and return its result; see [`Lab::within`].
pub fn within_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns(2) on a valid descriptor; it moves only this
            // (fresh, scoped) thread into the namespace.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `n` UDP round trips from a socket in namespace `from` to an echo on
/// `to_ip:port` that this call runs in namespace `to`: the time of each.
/// Panics if an echo does not come back within 10 s.
pub fn udp_round_trips(from: &str, to: &str, to_ip: &str, port: u16, n: u8) -> Vec<Duration> {
    let echo = within_namespace(to, || {
        std::net::UdpSocket::bind(("0.0.0.0", port)).expect("bind the echo")
    });
    let echoing = std::thread::spawn(move || {
        echo.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        while let Ok((len, peer)) = echo.recv_from(&mut buf) {
            if echo.send_to(&buf[..len], peer).is_err() || &buf[..len] == b"bye" {
                break;
            }
        }
    });
    let rtts = within_namespace(from, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.connect((to_ip, port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let rtts = (0..n)
            .map(|i| {
                let t = Instant::now();
                s.send(&[i]).expect("send");
                s.recv(&mut buf).expect("an echo back within 10 s");
                t.elapsed()
            })
            .collect();
        let _ = s.send(b"bye");
        rtts
    });
    let _ = echoing.join();
    rtts
}

/// Namespaces and root-namespace links whose name starts with `prefix`
/// (see [`Lab::prefix`]): empty once a lab is torn down.
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .map(|n| format!("netns {n}"))
        .collect();
    found.extend(
        root_links()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .map(|l| format!("link {l}")),
    );
    found
}

fn netns_command(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Run `cmd`; on failure, the command line, its status and its stderr.
fn try_cmd(cmd: &mut Command) -> Result<String, String> {
    let what = show(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{what}` did not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    let mut parts: Vec<OsString> = vec![cmd.get_program().to_owned()];
    parts.extend(cmd.get_args().map(OsStr::to_owned));
    parts
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn list_namespaces() -> Vec<String> {
    match try_cmd(Command::new("ip").args(["netns", "list"])) {
        // Lines look like `name` or `name (id: 3)`.
        Ok(out) => out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
        Err(e) => {
            eprintln!("natlab: {e}");
            Vec::new()
        }
    }
}

fn netns_pids(ns: &str) -> Vec<i32> {
    try_cmd(Command::new("ip").args(["netns", "pids", ns]))
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn root_links() -> Vec<String> {
    match try_cmd(Command::new("ip").args(["-o", "link", "show"])) {
        // `7: name@peer: <FLAGS> ...`
        Ok(out) => out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect(),
        Err(e) => {
            eprintln!("natlab: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_settings_parse_as_tc_writes_them() {
        assert_eq!(Link::parse_rtt("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(Link::parse_rtt("0.3s"), Ok(Duration::from_millis(300)));
        assert_eq!(
            Link::parse_rtt("0"),
            Err("RTT \"0\": expected a number and s, ms or us, e.g. 200ms".into())
        );
        assert!(Link::parse_rtt("fast").is_err());
        assert!(Link::parse_rtt("20min").is_err());
        assert!(Link::parse_rtt("-5ms").is_err());
        assert_eq!(Link::parse_rate_mbit("400mbit"), Ok(400));
        assert_eq!(Link::parse_rate_mbit("1gbit"), Ok(1000));
        assert_eq!(Link::parse_rate_mbit("50mbps"), Ok(400));
        assert!(Link::parse_rate_mbit("400").is_err());
        assert!(Link::parse_rate_mbit("0mbit").is_err());
        assert_eq!("strict".parse(), Ok(Nat::EndpointIndependent));
        assert_eq!("udp-blocked".parse(), Ok(Nat::UdpBlocked));
        assert!("full-cone"
            .parse::<Nat>()
            .unwrap_err()
            .contains("symmetric"));
    }
}
