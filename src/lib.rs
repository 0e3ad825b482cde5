//! # proxymesh-suite
//!
//! The workspace's root package: it owns the top-level `examples/` and
//! `tests/` (system tests that run real `proxymeshd` processes against the
//! SDK). This library is their shared harness: find the built binaries, start
//! a daemon process on a free port with a private data directory, read its
//! peak memory, stop it; a throw-away mesh authority ([`TestMesh`]) whose
//! relays and daemons admit only the members it issued credentials to.

pub mod natlab;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary (`proxymeshd`, `proxymesh`, `proxymesh-relay`)
/// built next to the running executable (tests, examples and benches all
/// live under `target/<profile>/`). Build them with `cargo build --workspace`
/// (`cargo test --workspace` does).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "binary {name} not found near {}; build it first with `cargo build --workspace` \
         (or run the tests with `cargo test --workspace`)",
        exe.display()
    );
}

/// A `proxymeshd` child process, killed when dropped.
#[derive(Debug)]
pub struct DaemonProcess {
    child: Option<Child>,
    /// Its API address (`127.0.0.1:PORT`).
    pub api: String,
    /// Its API's Unix socket (`unix:PATH`), if it serves one.
    pub socket: Option<String>,
    /// Its peer ID, from the start banner.
    pub peer_id: String,
    /// Its ProxyStore endpoint UUID, from the start banner.
    pub uuid: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl DaemonProcess {
    /// Start a daemon with a fresh temporary data directory and extra flags.
    pub fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut d = Self::start_in(&dir, extra);
        d._tmp = Some(tmp);
        d
    }

    /// Start a daemon on `data_dir` (kept after the daemon stops).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin_path("proxymeshd"));
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--api")
            .arg("127.0.0.1:0");
        Self::spawn(cmd, extra, data_dir)
    }

    /// Start `cmd` (a `proxymeshd` command line) with `extra` flags and wait
    /// for its `ready` banner.
    pub fn spawn(mut cmd: Command, extra: &[&str], data_dir: &Path) -> Self {
        cmd.args(extra)
            .env_remove("PROXYMESH_API")
            .env(
                "PROXYMESHD_LOG",
                std::env::var("PROXYMESHD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn proxymeshd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let ready = line == "ready";
                banner.push(line);
                if ready {
                    let _ = tx.send(banner.clone());
                }
            }
            let _ = tx.send(banner);
        });
        let banner = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        if banner.last().map(String::as_str) != Some("ready") {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!("proxymeshd did not start (exit {status:?}); stdout: {banner:?}");
        }
        let field = |name: &str| {
            banner
                .iter()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("banner lacks {name}: {banner:?}"))
        };
        let api = field("api:").trim_start_matches("http://").to_string();
        let socket = banner
            .iter()
            .find_map(|l| l.strip_prefix("socket:").map(|v| v.trim().to_string()));
        Self {
            socket,
            peer_id: field("peer id:"),
            uuid: field("endpoint:"),
            api,
            data_dir: data_dir.to_path_buf(),
            child: Some(child),
            _tmp: None,
        }
    }

    /// Remove `dir` (its data directory) when this daemon is dropped.
    pub fn keep_dir(mut self, dir: tempfile::TempDir) -> Self {
        self._tmp = Some(dir);
        self
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// Process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Send SIGTERM and wait for exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("proxymeshd did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill with SIGKILL (a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A field of `/proc/PID/status`, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Whether tests run in CI (`CI=true`), where tests that need root must not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// For tests that need root: `true` if running as root; otherwise fail in CI
/// and return `false` (after printing why) elsewhere, so the caller can skip.
pub fn require_root(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(!in_ci(), "{what} needs root, and CI=true: refusing to skip");
    eprintln!("SKIPPED {what}: needs root (runs in CI)");
    false
}

/// A raw HTTP/1.1 answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Send raw request bytes to `addr` and read the whole answer (the request
/// should say `Connection: close`). Raw, so tests can send malformed or
/// truncated requests. Gives up after 30 s.
pub fn raw_request(addr: &str, request: &[u8]) -> RawResponse {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // A server may answer (an error) before reading the whole body and stop
    // reading; the answer is what matters, so a refused write is not fatal.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf) {
        assert!(!buf.is_empty(), "no answer from {addr}: {e}");
    }
    parse_response(&buf)
}

/// Send an HTTP/1.1 request with a body (empty body: no content-length
/// unless given in `headers`).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    let explicit_len = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !explicit_len && (!body.is_empty() || method == "POST" || method == "PUT") {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw_request(addr, &bytes)
}

/// Encode `chunks` as a chunked transfer-encoding body.
pub fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks.iter().filter(|c| !c.is_empty()) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn parse_response(buf: &[u8]) -> RawResponse {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP header in answer: {:?}",
                String::from_utf8_lossy(buf)
            )
        });
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// A throw-away mesh: an authority in a temporary directory, which admits
/// the daemons of a test.
#[derive(Debug)]
pub struct TestMesh {
    /// The authority.
    pub authority: proxymesh::membership::Authority,
    /// Its directory (for `proxymesh mesh …` and revocations).
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Default for TestMesh {
    fn default() -> Self {
        Self::new()
    }
}

impl TestMesh {
    /// A new authority.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("authority");
        let authority = proxymesh::membership::Authority::init(&dir).expect("mesh init");
        Self {
            authority,
            dir,
            _tmp: tmp,
        }
    }

    /// The mesh ID.
    pub fn id(&self) -> String {
        self.authority.mesh_id().to_string()
    }

    /// A credential for the daemon whose data directory is `data_dir`
    /// (its identity is created there if needed), valid for a day.
    pub fn admit_dir(&self, data_dir: &Path) -> String {
        let id = proxymesh_daemon::identity::Identity::load_or_create(data_dir).expect("identity");
        self.admit(id.peer_id(), Duration::from_secs(86_400))
    }

    /// A credential for `peer`, valid for `lifetime`.
    pub fn admit(&self, peer: libp2p_identity::PeerId, lifetime: Duration) -> String {
        let now = std::time::SystemTime::now();
        self.authority.admit(peer, now, now + lifetime).to_string()
    }
}

/// A `proxymesh-relay` child process, killed when dropped.
#[derive(Debug)]
pub struct RelayProcess {
    child: Option<Child>,
    /// Its dialable addresses (each ending in `/p2p/<peer id>`).
    pub addrs: Vec<String>,
    /// The port it listens on (QUIC and TCP).
    pub port: u16,
    /// The mesh it serves (unless started with `--open-mesh` or `--mesh`).
    pub mesh: Option<TestMesh>,
    identity: PathBuf,
    /// Flags it was started with (kept for restarts).
    flags: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

/// A port free for both TCP and UDP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl RelayProcess {
    /// Start a relay on 127.0.0.1 with a fresh identity on a free port,
    /// serving a new [`TestMesh`] unless `extra` names a mesh policy.
    pub fn start(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let identity = tmp.path().join("relay.key");
        let mut r = Self::start_with(&identity, free_port(), extra);
        r._tmp = Some(tmp);
        r
    }

    /// Start a relay with `identity` on `port`.
    pub fn start_with(identity: &Path, port: u16, extra: &[&str]) -> Self {
        Self::start_cmd(
            Command::new(bin_path("proxymesh-relay")),
            "127.0.0.1",
            identity,
            port,
            extra,
        )
    }

    /// Start `cmd` (a `proxymesh-relay` command line, e.g. wrapped in `ip
    /// netns exec`) on `host`:`port` with `identity`; wait for its addresses.
    pub fn start_cmd(cmd: Command, host: &str, identity: &Path, port: u16, extra: &[&str]) -> Self {
        let mut flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mesh =
            (!extra.iter().any(|f| *f == "--open-mesh" || *f == "--mesh")).then(TestMesh::new);
        if let Some(m) = &mesh {
            // `proxymesh mesh revoke` (or `Authority::revoke`) writes this file.
            let revocations = m.dir.join("revocations").display().to_string();
            flags.extend([
                "--mesh".to_string(),
                m.id(),
                "--revocations".into(),
                revocations,
            ]);
        }
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (child, addrs) = Self::spawn(cmd, host, identity, port, &args);
        Self {
            child: Some(child),
            addrs,
            port,
            mesh,
            identity: identity.to_path_buf(),
            flags,
            _tmp: None,
        }
    }

    /// A credential of this relay's mesh for the daemon with `data_dir`
    /// (none for an open-mesh relay).
    pub fn credential_for(&self, data_dir: &Path) -> Option<String> {
        self.mesh.as_ref().map(|m| m.admit_dir(data_dir))
    }

    /// Flags joining the daemon with `data_dir` to this relay: relay
    /// addresses, a credential of its mesh (or `--open-mesh`), loopback ports.
    pub fn member_flags(&self, data_dir: &Path) -> Vec<String> {
        let mut flags = self.daemon_flags();
        match self.credential_for(data_dir) {
            Some(c) => flags.extend(["--credential".into(), c]),
            None => flags.push("--open-mesh".into()),
        }
        flags
    }

    /// Start a member daemon of this relay's mesh (fresh data directory) with `extra` flags.
    pub fn start_daemon(&self, extra: &[&str]) -> DaemonProcess {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut flags = self.member_flags(tmp.path());
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        DaemonProcess::start_in(tmp.path(), &flags).keep_dir(tmp)
    }

    fn spawn(
        mut cmd: Command,
        host: &str,
        identity: &Path,
        port: u16,
        extra: &[&str],
    ) -> (Child, Vec<String>) {
        let mut child = cmd
            .args(["--host", host, "--port", &port.to_string(), "--identity"])
            .arg(identity)
            .args(extra)
            .env(
                "PROXYMESH_RELAY_LOG",
                std::env::var("PROXYMESH_RELAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn proxymesh-relay");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut addrs: Vec<String> = Vec::new();
        while !(addrs.iter().any(|a| a.contains("/quic-v1/"))
            && addrs.iter().any(|a| a.contains("/tcp/")))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => addrs.push(line.trim().to_string()),
                Err(_) => {
                    let _ = child.kill();
                    panic!("proxymesh-relay did not print its addresses; got {addrs:?}");
                }
            }
        }
        (child, addrs)
    }

    /// The relay's QUIC address.
    pub fn quic(&self) -> &str {
        self.addrs
            .iter()
            .find(|a| a.contains("/quic-v1/"))
            .expect("quic address")
    }

    /// The relay's TCP address.
    pub fn tcp(&self) -> &str {
        self.addrs
            .iter()
            .find(|a| a.contains("/tcp/"))
            .expect("tcp address")
    }

    /// Flags joining a daemon to this relay (both transports), on loopback;
    /// without a credential (see [`RelayProcess::member_flags`]).
    pub fn daemon_flags(&self) -> Vec<String> {
        vec![
            "--relay".into(),
            self.quic().into(),
            "--relay".into(),
            self.tcp().into(),
            "--listen-host".into(),
            "127.0.0.1".into(),
            "--listen-port".into(),
            "0".into(),
        ]
    }

    /// Kill the relay (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again with the same identity and port.
    pub fn restart(&mut self) {
        self.restart_cmd(Command::new(bin_path("proxymesh-relay")), "127.0.0.1");
    }

    /// [`RelayProcess::restart`] as `cmd` runs the relay (e.g. inside a
    /// NAT lab namespace), listening on `host`.
    pub fn restart_cmd(&mut self, cmd: Command, host: &str) {
        self.kill();
        let args: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let (child, addrs) = Self::spawn(cmd, host, &self.identity, self.port, &args);
        self.child = Some(child);
        self.addrs = addrs;
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Re-run the current executable with `args` as a helper process (stdout
/// piped) and read the first line it prints (e.g. the port it bound).
pub fn spawn_self(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn helper process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the helper's first line");
    (child, line.trim().to_string())
}

/// Run `cmd` (`useradd`, `userdel`, ...) until it succeeds, retrying while
/// another process holds the user database's lock. Panics with its output
/// after ~10 s of failures.
fn run_retrying(cmd: &mut Command) {
    let mut last = String::new();
    for _ in 0..100 {
        match cmd.output() {
            Ok(o) if o.status.success() => return,
            Ok(o) => {
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{cmd:?} failed: {last}");
}

/// A unique name for a throw-away user or group (`pmt<pid><n><tag>`, at
/// most 31 characters).
fn temp_account_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("pmt{}x{n}{tag}", std::process::id());
    name.truncate(31);
    name
}

/// A throw-away Unix group (`groupadd -r`), deleted when dropped. Needs root.
#[derive(Debug)]
pub struct TempGroup {
    /// Its name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

impl TempGroup {
    /// Create a group with a unique name containing `tag`.
    pub fn create(tag: &str) -> Self {
        let name = temp_account_name(tag);
        run_retrying(Command::new("groupadd").args(["-r", &name]));
        // Deleted on drop from here on, whatever happens next.
        let mut group = Self { gid: 0, name };
        group.gid = Command::new("getent")
            .args(["group", &group.name])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split(':')
                    .nth(2)
                    .and_then(|g| g.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no gid for new group {}", group.name));
        group
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// A throw-away Unix user (`useradd -M -r`, no home directory, no login
/// shell, its own private group), deleted when dropped, even when the test
/// fails. Needs root (see [`require_root`]).
#[derive(Debug)]
pub struct TempUser {
    /// Its login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl TempUser {
    /// Create a user with a unique name containing `tag`, also a member of
    /// `groups` (supplementary groups, by name).
    pub fn create(tag: &str, groups: &[&str]) -> Self {
        let name = temp_account_name(tag);
        let mut cmd = Command::new("useradd");
        cmd.args(["-M", "-r", "-U", "-s", "/usr/sbin/nologin"]);
        if !groups.is_empty() {
            cmd.args(["-G", &groups.join(",")]);
        }
        run_retrying(cmd.arg(&name));
        // Deleted on drop from here on, whatever happens next.
        let mut user = Self {
            name,
            uid: u32::MAX,
            gid: u32::MAX,
        };
        let name = user.name.clone();
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, &name])
                .output()
                .expect("run id");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("id {flag} {name} failed"))
        };
        user.uid = id("-u");
        user.gid = id("-g");
        user
    }

    /// `program` to run as this user (uid and primary gid; no supplementary
    /// groups), in `/` with `HOME=/` and without proxymesh's environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        cmd.uid(self.uid)
            .gid(self.gid)
            .current_dir("/")
            .env("HOME", "/")
            .env_remove("PROXYMESH_API")
            .env_remove("PROXYMESH_TRUST_UID");
        cmd
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-f", &self.name]).output();
        // The private group goes with the user; make sure.
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// The Python interpreter with ProxyStore installed (`PROXYMESH_TEST_PYTHON`,
/// else the `.venv` that `tests/run.sh` creates), if it can import
/// ProxyStore's endpoint connector.
pub fn proxystore_python() -> Option<PathBuf> {
    let candidate = std::env::var_os("PROXYMESH_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", "import proxystore.connectors.endpoint"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(candidate)
}
