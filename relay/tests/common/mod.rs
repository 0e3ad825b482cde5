//! Shared helpers: throw-away mesh authorities, the relay binary as a child
//! process, and libp2p client swarms built like a proxymesh daemon's (relay
//! client, identify, ping, the member protocol) plus a byte-stream protocol
//! for transfers.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, relay, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use proxymesh::membership::wire::{self, Member, Message};
use proxymesh::membership::{Authority, Credential, RevocationList};
use tokio::sync::mpsc as tokio_mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_proxymesh-relay");

/// Generous bound for anything over loopback on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// A throw-away mesh: its authority, and a directory for its revocation list.
pub struct Mesh {
    pub authority: Authority,
    pub dir: tempfile::TempDir,
}

impl Mesh {
    pub fn new() -> Mesh {
        Mesh {
            authority: Authority::generate(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The mesh ID, as passed to `--mesh`.
    pub fn id(&self) -> String {
        self.authority.mesh_id().to_string()
    }

    /// A credential for `peer`, valid for an hour.
    pub fn credential(&self, peer: PeerId) -> Credential {
        let now = std::time::SystemTime::now();
        self.authority
            .admit(peer, now, now + Duration::from_secs(3600))
    }

    /// Where `proxymesh mesh revoke` keeps the list (absent until the first
    /// revocation).
    pub fn revocations_path(&self) -> PathBuf {
        self.dir.path().join("revocations")
    }

    /// Revoke `peers` (the next list, written to [`Mesh::revocations_path`]).
    pub fn revoke(&self, peers: &[PeerId]) -> RevocationList {
        self.authority.revoke(self.dir.path(), peers).unwrap()
    }

    /// Start the relay binary serving this mesh, plus `extra` flags.
    pub fn start_relay(&self, extra: &[&str]) -> (RelayProcess, tempfile::TempDir) {
        let id = self.id();
        let mut args = vec!["--mesh", id.as_str()];
        args.extend_from_slice(extra);
        RelayProcess::start(&args)
    }
}

/// The relay binary running as a child process; killed on drop.
pub struct RelayProcess {
    child: Child,
    /// Dialable addresses printed on stdout.
    pub addresses: Vec<Multiaddr>,
    pub peer_id: PeerId,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RelayProcess {
    /// Start `proxymesh-relay --host 127.0.0.1 --port 0 --identity <identity> <extra>`
    /// and read its addresses.
    pub fn start_with_identity(identity: &Path, extra: &[&str]) -> RelayProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("relay.log");
        let mut child = Command::new(BIN)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--log",
                "info",
                "--identity",
            ])
            .arg(identity)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start proxymesh-relay");
        let lines = read_lines_until_both(&mut child, Duration::from_secs(30), &log);
        let addresses: Vec<Multiaddr> = lines
            .iter()
            .map(|l| {
                l.parse()
                    .unwrap_or_else(|e| panic!("stdout line {l:?} is no multiaddr: {e}"))
            })
            .collect();
        let peer_id = peer_of(&addresses[0]).expect("addresses end in /p2p/<id>");
        RelayProcess {
            child,
            addresses,
            peer_id,
            log,
            _dir: dir,
        }
    }

    /// Start with a fresh identity in a temporary directory.
    pub fn start(extra: &[&str]) -> (RelayProcess, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let relay = Self::start_with_identity(&dir.path().join("relay.key"), extra);
        (relay, dir)
    }

    pub fn quic(&self) -> Multiaddr {
        self.addresses
            .iter()
            .find(|a| is_quic(a))
            .cloned()
            .expect("a QUIC address")
    }

    pub fn tcp(&self) -> Multiaddr {
        self.addresses
            .iter()
            .find(|a| is_tcp(a))
            .cloned()
            .expect("a TCP address")
    }

    /// What the relay logged so far (stderr).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the logs contain `needle` at least `count` times (the relay
    /// logs an event just after acting on it); returns the logs.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= count {
                return logs;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "relay did not log {needle:?} {count} times within {timeout:?}; logs:\n{logs}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until a log line satisfies `pred`; returns it.
    pub fn wait_for_line(
        &self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| pred(l)) {
                return line.to_string();
            }
            if std::time::Instant::now() > deadline {
                panic!("relay did not log {what} within {timeout:?}; logs:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_timeout(&mut self.child, Duration::from_secs(10)).expect("relay exits on SIGTERM")
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for `child` to exit, polling.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Read stdout lines until both a QUIC and a TCP address appeared.
fn read_lines_until_both(child: &mut Child, timeout: Duration, log: &Path) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut lines = Vec::new();
    loop {
        let have_both = lines.iter().any(|l: &String| l.contains("/quic-v1/"))
            && lines.iter().any(|l: &String| l.contains("/tcp/"));
        if have_both {
            // The relay prints all lines in one go; take any stragglers.
            while let Ok(Ok(line)) = rx.recv_timeout(Duration::from_millis(100)) {
                lines.push(line);
            }
            return lines;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(line)) => lines.push(line),
            other => panic!(
                "relay printed no QUIC and TCP address ({other:?}); stdout so far {lines:?}; stderr:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

pub fn is_quic(a: &Multiaddr) -> bool {
    a.iter().any(|p| p == Protocol::QuicV1)
}

pub fn is_tcp(a: &Multiaddr) -> bool {
    a.iter().any(|p| matches!(p, Protocol::Tcp(_)))
}

/// The peer ID in a trailing `/p2p/<id>`.
pub fn peer_of(a: &Multiaddr) -> Option<PeerId> {
    match a.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

/// The protocol of the test's transfer stream.
pub const TRANSFER: StreamProtocol = StreamProtocol::new("/proxymesh-relay-test/transfer/1");

/// What a daemon speaks towards a relay, plus a raw stream protocol.
#[derive(NetworkBehaviour)]
pub struct Client {
    pub relay_client: relay::client::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub stream: libp2p_stream::Behaviour,
}

pub type Event = SwarmEvent<ClientEvent>;
type SwarmCommand = Box<dyn FnOnce(&mut Swarm<Client>) + Send>;

/// A client swarm running in its own task; events arrive on a channel and
/// commands run against the swarm inside that task.
pub struct ClientHandle {
    pub peer_id: PeerId,
    pub control: libp2p_stream::Control,
    events: tokio_mpsc::UnboundedReceiver<Event>,
    commands: tokio_mpsc::UnboundedSender<SwarmCommand>,
}

impl ClientHandle {
    /// Build a client (TCP+QUIC+relay transport) and start its task.
    pub fn spawn() -> ClientHandle {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_quic()
            .with_dns()
            .unwrap()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|key, relay_client| Client {
                relay_client,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/proxymesh/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_millis(500)),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        let (event_tx, events) = tokio_mpsc::unbounded_channel();
        let (commands, mut command_rx) = tokio_mpsc::unbounded_channel::<SwarmCommand>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    command = command_rx.recv() => match command {
                        Some(command) => command(&mut swarm),
                        None => return, // handle dropped: stop the swarm
                    },
                    event = swarm.select_next_some() => {
                        let _ = event_tx.send(event);
                    }
                }
            }
        });
        ClientHandle {
            peer_id,
            control,
            events,
            commands,
        }
    }

    /// Run `f` on the swarm inside its task.
    pub fn with(&self, f: impl FnOnce(&mut Swarm<Client>) + Send + 'static) {
        self.commands
            .send(Box::new(f))
            .expect("client task running");
    }

    /// Wait up to `timeout` for an event `f` maps to `Some`, skipping others.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let mut seen = Vec::new();
        let result = tokio::time::timeout(timeout, async {
            loop {
                let event = self.events.recv().await.expect("client task running");
                if let Some(t) = f(&event) {
                    return t;
                }
                seen.push(format!("{event:?}"));
            }
        })
        .await;
        match result {
            Ok(t) => t,
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for {what}; events meanwhile:\n{}",
                seen.join("\n")
            ),
        }
    }

    /// Dial `relay_addr` (ending in `/p2p/<relay>`) and wait for the
    /// connection; returns its remote address.
    pub async fn connect(&mut self, relay_addr: &Multiaddr) -> Multiaddr {
        let relay_id = peer_of(relay_addr).unwrap();
        let addr = relay_addr.clone();
        self.with(move |s| s.dial(addr).expect("dial relay"));
        self.wait_for("connection to the relay", WAIT, |e| match e {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if *peer_id == relay_id => Some(endpoint.get_remote_address().clone()),
            SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
            _ => None,
        })
        .await
    }

    /// Say hello to `relay` on the member protocol (connected already) and
    /// return its answer. Retries if the stream fails without an answer.
    pub async fn hello(
        &mut self,
        relay: PeerId,
        credential: Option<Credential>,
        addrs: Vec<Multiaddr>,
    ) -> Message {
        let hello = Message::Hello { credential, addrs };
        let mut failures = Vec::new();
        for _ in 0..3 {
            let attempt = tokio::time::timeout(WAIT, async {
                let mut stream = self
                    .control
                    .open_stream(relay, MEMBER)
                    .await
                    .map_err(|e| format!("open: {e}"))?;
                wire::write_message(&mut stream, &hello)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                wire::read_message(&mut stream)
                    .await
                    .map_err(|e| format!("read: {e}"))
            })
            .await;
            match attempt {
                Ok(Ok(answer)) => return answer,
                Ok(Err(e)) => failures.push(e),
                Err(_) => failures.push(format!("no answer within {WAIT:?}")),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("hello to {relay} failed: {failures:?}")
    }

    /// Connect to the relay at `relay_addr` and join `mesh` with a valid
    /// credential and `addrs`; returns the members the welcome lists.
    pub async fn join(
        &mut self,
        relay_addr: &Multiaddr,
        mesh: &Mesh,
        addrs: Vec<Multiaddr>,
    ) -> Vec<Member> {
        self.connect(relay_addr).await;
        let credential = mesh.credential(self.peer_id);
        welcomed(
            self.hello(peer_of(relay_addr).unwrap(), Some(credential), addrs)
                .await,
        )
    }

    /// Wait until the connection to `relay` closes.
    pub async fn disconnected(&mut self, relay: PeerId, within: Duration) {
        self.wait_for("the relay to close the connection", within, |e| match e {
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if *peer_id == relay => Some(()),
            _ => None,
        })
        .await
    }

    /// Ask the relay at `relay_addr` for a reservation and expect a denial.
    pub async fn reservation_denied(&mut self, relay_addr: &Multiaddr) {
        let relay_id = peer_of(relay_addr).unwrap();
        let circuit = relay_addr.clone().with(Protocol::P2pCircuit);
        self.with(move |s| {
            s.listen_on(circuit).expect("listen on the circuit address");
        });
        self.wait_for("the reservation to be denied", WAIT, |e| match e {
            SwarmEvent::Behaviour(ClientEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) if *relay_peer_id == relay_id => {
                panic!("a non-member got a reservation")
            }
            SwarmEvent::NewListenAddr { address, .. }
                if address.iter().any(|p| p == Protocol::P2pCircuit) =>
            {
                panic!("a non-member listens through the relay at {address}")
            }
            SwarmEvent::ListenerClosed { reason, .. } => Some(format!("{reason:?}")),
            _ => None,
        })
        .await;
    }

    /// Reserve a slot on the relay at `relay_addr` (ending in `/p2p/<relay>`)
    /// and wait until the relay accepts. The client then listens at
    /// `<address>/p2p-circuit/p2p/<client>` for every address the relay
    /// announced; returns these, waiting for `announced` of them.
    pub async fn reserve(&mut self, relay_addr: &Multiaddr, announced: usize) -> Vec<Multiaddr> {
        let relay_id = peer_of(relay_addr).unwrap();
        let circuit = relay_addr.clone().with(Protocol::P2pCircuit);
        self.with(move |s| {
            s.listen_on(circuit).expect("listen on the circuit address");
        });
        let mut accepted = false;
        let mut listen_addrs = Vec::new();
        self.wait_for(
            "reservation accepted and relayed listen addresses",
            Duration::from_secs(30),
            |e| {
                match e {
                    SwarmEvent::Behaviour(ClientEvent::RelayClient(
                        relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
                    )) if *relay_peer_id == relay_id => accepted = true,
                    SwarmEvent::NewListenAddr { address, .. }
                        if address.iter().any(|p| p == Protocol::P2pCircuit) =>
                    {
                        listen_addrs.push(address.clone())
                    }
                    SwarmEvent::ListenerClosed { reason: Err(e), .. } => {
                        panic!("relayed listener failed: {e}")
                    }
                    _ => {}
                }
                (accepted && listen_addrs.len() >= announced).then(|| listen_addrs.clone())
            },
        )
        .await
    }

    /// Reserve on the relay at `relay_addr` and return the relayed address
    /// through that very relay address.
    pub async fn reserve_via(&mut self, relay_addr: &Multiaddr, announced: usize) -> Multiaddr {
        let addrs = self.reserve(relay_addr, announced).await;
        let prefix = relay_addr.to_string() + "/p2p-circuit/";
        addrs
            .into_iter()
            .find(|a| a.to_string().starts_with(&prefix))
            .unwrap_or_else(|| panic!("no relayed address through {relay_addr}"))
    }
}

/// The members of a welcome; panics on anything else.
pub fn welcomed(answer: Message) -> Vec<Member> {
    match answer {
        Message::Welcome { members, .. } => members,
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// The reason of a refusal; panics on anything else.
pub fn refused(answer: Message) -> String {
    match answer {
        Message::Refused(reason) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The member protocol.
pub const MEMBER: StreamProtocol = StreamProtocol::new(wire::PROTOCOL);

/// Deterministic test payload.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

/// Serve the transfer protocol on `control`: read a whole stream, answer
/// with its length and a checksum.
pub fn serve_transfers(control: &mut libp2p_stream::Control) {
    let mut incoming = control.accept(TRANSFER).unwrap();
    tokio::spawn(async move {
        while let Some((_peer, mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let mut data = Vec::new();
                if stream.read_to_end(&mut data).await.is_err() {
                    return;
                }
                let mut answer = (data.len() as u64).to_be_bytes().to_vec();
                answer.extend_from_slice(&checksum(&data).to_be_bytes());
                let _ = stream.write_all(&answer).await;
                let _ = stream.close().await;
            });
        }
    });
}

/// Send `data` to `peer` over the transfer protocol and check its answer.
pub async fn transfer(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    data: &[u8],
) -> Result<(), String> {
    let mut stream = control
        .open_stream(peer, TRANSFER)
        .await
        .map_err(|e| format!("open: {e}"))?;
    stream
        .write_all(data)
        .await
        .map_err(|e| format!("write: {e}"))?;
    stream.close().await.map_err(|e| format!("close: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read answer: {e}"))?;
    let mut expected = (data.len() as u64).to_be_bytes().to_vec();
    expected.extend_from_slice(&checksum(data).to_be_bytes());
    if answer == expected {
        Ok(())
    } else {
        Err(format!("wrong answer {answer:?}, expected {expected:?}"))
    }
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
