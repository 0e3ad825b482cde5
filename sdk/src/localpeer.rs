//! Who owns the other end of a loopback TCP connection.
//!
//! The daemon's local API has no passwords: ProxyStore's `EndpointConnector`
//! sends no credentials. Both ends of a loopback connection live on this
//! machine, though, and the kernel knows which Unix user created each
//! socket: every TCP socket of the network namespace has a local and remote
//! address, a state, its owner's uid and an inode. This module asks the
//! kernel for the one socket with a given pair of addresses
//! ([`lookup`]):
//!
//! 1. with `sock_diag` (a `NETLINK_SOCK_DIAG` request naming the exact
//!    socket, as `ss` does): the kernel finds it in its hash table, ~20 µs
//!    whatever the number of sockets;
//! 2. else (no netlink, e.g. under a seccomp filter, and for half-open
//!    connections, which `sock_diag` shows without a uid) from
//!    `/proc/net/tcp` and `/proc/net/tcp6`: every socket is a row. Reading
//!    them walks the kernel's whole established-connection hash table,
//!    which costs milliseconds on big machines (~5 ms here, with 2^18
//!    buckets), hence the fast path.
//!
//! Both sides of proxymesh use it:
//!
//! - `proxymeshd` looks up the **client** end of each accepted connection
//!   (the row whose local address is the client's and whose remote address
//!   is the daemon's) and serves only its own user (and, optionally, one
//!   named group);
//! - the SDK's [`DaemonConnector`](crate::DaemonConnector) looks up the
//!   **server** end of each new connection (see [`check_server`]) before it
//!   writes a single request byte, so a process of another user squatting
//!   on the daemon's port (say `127.0.0.1:7878` before the daemon started)
//!   never receives data.
//!
//! Either way this happens once per connection, not per request. Rows of
//! `/proc/net/tcp` are parsed as the kernel prints them: IPv4 addresses are one 32-bit word and IPv6
//! addresses four, each printed as hex in the machine's byte order (so
//! `127.0.0.1` reads `0100007F` on little-endian machines); ports are
//! big-endian hex (`1EC6` is 7878). The table of the calling thread's
//! network namespace is read (`/proc/thread-self/net`), so callers that
//! entered another namespace see their own sockets.
//!
//! Linux only: elsewhere [`lookup`] and [`check_server`] report that the
//! owner cannot be known, and callers allow the connection (documented at
//! each use). An address can be checked only on loopback; a connection to a
//! non-loopback address is not checked.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Environment variable naming a uid (other than the caller's own) whose
/// daemon the SDK may talk to, for deliberate cross-user use: by default the
/// SDK sends requests only to a daemon run by its own effective uid.
pub const TRUST_UID_ENV: &str = "PROXYMESH_TRUST_UID";

/// Whether this build can identify socket owners (Linux only).
pub const SUPPORTED: bool = cfg!(target_os = "linux");

/// TCP states as numbered in `/proc/net/tcp` (`include/net/tcp_states.h`).
pub mod state {
    /// `TCP_ESTABLISHED`.
    pub const ESTABLISHED: u8 = 0x01;
    /// `TCP_SYN_SENT`.
    pub const SYN_SENT: u8 = 0x02;
    /// `TCP_SYN_RECV`: a connection the server has not finished accepting.
    pub const SYN_RECV: u8 = 0x03;
    /// `TCP_FIN_WAIT1`.
    pub const FIN_WAIT1: u8 = 0x04;
    /// `TCP_FIN_WAIT2`.
    pub const FIN_WAIT2: u8 = 0x05;
    /// `TCP_TIME_WAIT`: a closed socket; its row shows uid 0.
    pub const TIME_WAIT: u8 = 0x06;
    /// `TCP_CLOSE`.
    pub const CLOSE: u8 = 0x07;
    /// `TCP_CLOSE_WAIT`.
    pub const CLOSE_WAIT: u8 = 0x08;
    /// `TCP_LAST_ACK`.
    pub const LAST_ACK: u8 = 0x09;
    /// `TCP_LISTEN`.
    pub const LISTEN: u8 = 0x0A;
    /// `TCP_CLOSING`.
    pub const CLOSING: u8 = 0x0B;
}

/// One socket, as a row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRow {
    /// The socket's own address.
    pub local: SocketAddr,
    /// The address it is connected to (`0.0.0.0:0` when listening).
    pub remote: SocketAddr,
    /// Its TCP state (see [`state`]).
    pub state: u8,
    /// The uid that created it. Closed sockets the kernel keeps around
    /// (`TIME_WAIT`, and `FIN_WAIT2` after the owner closed it) show 0.
    pub uid: u32,
    /// Its inode; 0 once no process holds the socket any more (closed, or
    /// not yet accepted by the server).
    pub inode: u64,
}

impl TcpRow {
    /// Whether a process still holds this socket (it was not closed, and a
    /// server has accepted it). Only then does [`uid`](Self::uid) name a
    /// user who can read what is sent to it.
    pub fn is_held(&self) -> bool {
        self.inode != 0
    }
}

/// Parse an address as `/proc/net/tcp{,6}` prints it: `0100007F:1EC6`
/// (IPv4: one 32-bit word) or `00000000000000000000000001000000:1EC6`
/// (IPv6: four words), each word hex in the machine's byte order, the port
/// hex.
pub fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word =
        |hex: &str| -> Option<[u8; 4]> { Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes()) };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parse one row of `/proc/net/tcp{,6}` (`None` for the header line or
/// anything malformed). Columns: `sl local_address rem_address st
/// tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...`.
pub fn parse_row(line: &str) -> Option<TcpRow> {
    let mut fields = line.split_ascii_whitespace();
    let sl = fields.next()?;
    if !sl.ends_with(':') {
        return None;
    }
    let local = parse_addr(fields.next()?)?;
    let remote = parse_addr(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let mut fields = fields.skip(3); // tx:rx, tr:when, retrnsmt
    let uid = fields.next()?.parse().ok()?;
    let _timeout = fields.next()?;
    let inode = fields.next()?.parse().ok()?;
    Some(TcpRow {
        local,
        remote,
        state,
        uid,
        inode,
    })
}

/// An address with IPv4-mapped IPv6 (`::ffff:127.0.0.1`) turned into IPv4,
/// so an address matches however the socket family prints it.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The row of `table` (the text of `/proc/net/tcp` or `tcp6`) for the
/// socket whose own address is `local` and whose peer is `remote`. Live
/// rows win over closed ones that still show the same addresses.
pub fn find_row(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<TcpRow> {
    let (local, remote) = (canonical(local), canonical(remote));
    // Cheap filter before parsing a row: its local port, as printed.
    let port = format!(":{:04X} ", local.port());
    let mut closed = None;
    for line in table.lines() {
        if !line.contains(&port) {
            continue;
        }
        let Some(row) = parse_row(line) else { continue };
        if canonical(row.local) != local || canonical(row.remote) != remote {
            continue;
        }
        if row.state == state::TIME_WAIT {
            closed = Some(row);
            continue;
        }
        return Some(row);
    }
    closed
}

/// The table of one address family, for the calling thread's network
/// namespace.
#[cfg(target_os = "linux")]
fn read_table(v6: bool) -> io::Result<String> {
    let name = if v6 { "tcp6" } else { "tcp" };
    match std::fs::read_to_string(format!("/proc/thread-self/net/{name}")) {
        Ok(t) => Ok(t),
        // Kernels before 3.17 have no thread-self.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::read_to_string(format!("/proc/net/{name}"))
        }
        Err(e) => Err(e),
    }
}

/// Find the socket whose own address is `local` and whose peer is `remote`:
/// with `sock_diag`, else (see the module docs) in `/proc/net/tcp{,6}`.
/// `Ok(None)` when no socket matches (it closed meanwhile). Errors when the
/// kernel cannot be asked, and on systems other than Linux ([`SUPPORTED`]
/// is false).
pub fn lookup(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpRow>> {
    #[cfg(target_os = "linux")]
    {
        match diag::lookup(local, remote) {
            // A half-open connection shows uid 0 there: ask /proc instead.
            Ok(Some(row)) if row.state == state::SYN_RECV => {}
            Ok(found) => return Ok(found),
            Err(e) => tracing::debug!(error = %e, "sock_diag unavailable; reading /proc/net/tcp"),
        }
    }
    lookup_proc(local, remote)
}

/// [`lookup`] through `/proc/net/tcp{,6}` only (IPv4 first for IPv4
/// addresses, which IPv6 sockets may also hold as `::ffff:a.b.c.d`).
pub fn lookup_proc(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpRow>> {
    #[cfg(target_os = "linux")]
    {
        let v4 = canonical(local).is_ipv4() && canonical(remote).is_ipv4();
        if v4 {
            if let Some(row) = find_row(&read_table(false)?, local, remote) {
                return Ok(Some(row));
            }
        }
        match read_table(true) {
            Ok(table) => Ok(find_row(&table, local, remote)),
            // No IPv6 in this kernel: nothing more to find.
            Err(e) if v4 && e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (local, remote);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "socket owners can be looked up on Linux only",
        ))
    }
}

/// The `sock_diag` netlink lookup of one TCP socket by its addresses.
#[cfg(target_os = "linux")]
mod diag {
    use std::io;
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::{canonical, TcpRow};

    /// `SOCK_DIAG_BY_FAMILY` (`linux/sock_diag.h`).
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    /// `NLMSG_ERROR`.
    const NLMSG_ERROR: u16 = 2;
    /// `NLM_F_REQUEST`: one socket, no dump.
    const NLM_F_REQUEST: u16 = 1;
    /// `struct nlmsghdr`.
    const NLMSG_HDR: usize = 16;
    /// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, id.
    const REQ_LEN: usize = 8 + SOCKID_LEN;
    /// `struct inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
    const SOCKID_LEN: usize = 48;
    /// `struct inet_diag_msg`: family, state, timer, retrans, id, expires,
    /// rqueue, wqueue, uid, inode.
    const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

    fn addr_words(ip: IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => {
                let mut out = [0u8; 16];
                out[..4].copy_from_slice(&v4.octets());
                out
            }
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    /// The socket id of the socket `local` → `remote`, as the kernel lays
    /// out `struct inet_diag_sockid` (ports and addresses in network order).
    fn sockid(local: SocketAddr, remote: SocketAddr) -> [u8; SOCKID_LEN] {
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&local.port().to_be_bytes());
        id[2..4].copy_from_slice(&remote.port().to_be_bytes());
        id[4..20].copy_from_slice(&addr_words(local.ip()));
        id[20..36].copy_from_slice(&addr_words(remote.ip()));
        // idiag_if = 0; idiag_cookie = INET_DIAG_NOCOOKIE.
        id[40..48].fill(0xFF);
        id
    }

    /// Ask the kernel for the TCP socket `local` → `remote`.
    pub(super) fn lookup(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<TcpRow>> {
        let (local, remote) = (canonical(local), canonical(remote));
        if local.is_ipv4() != remote.is_ipv4() {
            return Ok(None);
        }
        // IPv4 lookups also find IPv6 sockets holding IPv4-mapped addresses.
        let family = if local.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket creation; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: `timeout` is a valid timeval for the duration of the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };

        let mut req = [0u8; NLMSG_HDR + REQ_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
        let body = &mut req[NLMSG_HDR..];
        body[0] = family as u8;
        body[1] = libc::IPPROTO_TCP as u8;
        body[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
        body[8..].copy_from_slice(&sockid(local, remote));

        // SAFETY: zeroed sockaddr_nl is valid; pid 0 is the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `req` and `kernel` are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 8192];
        let n = loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        parse_answer(&buf[..n], local, remote)
    }

    /// The socket in a `sock_diag` answer, if it is the one asked for
    /// (the kernel falls back to a listener on the local port).
    fn parse_answer(
        buf: &[u8],
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<TcpRow>> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag answer");
        let u16_at = |i: usize| buf.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let u32_at = |i: usize| {
            buf.get(i..i + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        let len = u32_at(0).ok_or_else(bad)? as usize;
        let kind = u16_at(4).ok_or_else(bad)?;
        if len > buf.len() || len < NLMSG_HDR {
            return Err(bad());
        }
        if kind == NLMSG_ERROR {
            let errno = u32_at(NLMSG_HDR).ok_or_else(bad)? as i32;
            return match -errno {
                0 | libc::ENOENT => Ok(None),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        if kind != SOCK_DIAG_BY_FAMILY || len < NLMSG_HDR + MSG_LEN {
            return Err(bad());
        }
        let msg = &buf[NLMSG_HDR..NLMSG_HDR + MSG_LEN];
        // The socket's own family: an IPv6 socket found by an IPv4 lookup
        // reports IPv4-mapped addresses.
        let ip = |at: usize| -> Option<IpAddr> {
            let raw = &msg[at..at + 16];
            match i32::from(msg[0]) {
                libc::AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(&raw[..4]).ok()?)),
                libc::AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(raw).ok()?)),
                _ => None,
            }
        };
        let port = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
        let (Some(src), Some(dst)) = (ip(8), ip(24)) else {
            return Err(bad());
        };
        let (found_local, found_remote) =
            (SocketAddr::new(src, port(4)), SocketAddr::new(dst, port(6)));
        if canonical(found_local) != local || canonical(found_remote) != remote {
            return Ok(None);
        }
        let word = |i: usize| u32::from_ne_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
        let tail = 4 + SOCKID_LEN;
        Ok(Some(TcpRow {
            local: found_local,
            remote: found_remote,
            state: msg[1],
            uid: word(tail + 12),
            inode: u64::from(word(tail + 16)),
        }))
    }
}

/// This process's effective uid (0 where there are no Unix users).
pub fn effective_uid() -> u32 {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// The user database's entry for `uid` (`getpwuid_r`, so NSS sources such
/// as LDAP count): its login name and primary gid; `None` if it has none.
/// May block on NSS.
#[cfg(unix)]
pub fn user_entry(uid: u32) -> Option<(std::ffi::CString, u32)> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: `pwd` and `buf` outlive the call; the result points
        // into `buf`, which is read before it is dropped.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (16 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_owned();
        return Some((name, pwd.pw_gid));
    }
}

/// The login name of `uid` (see [`user_entry`]); `None` if it has none.
pub fn user_name(uid: u32) -> Option<String> {
    #[cfg(unix)]
    {
        user_entry(uid).map(|(name, _)| name.to_string_lossy().into_owned())
    }
    #[cfg(not(unix))]
    {
        let _ = uid;
        None
    }
}

/// `uid 1000 (alice)`, or `uid 1000` when the user has no name.
pub fn describe_uid(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// The user whose daemon the SDK may send requests to, besides its own
/// effective uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedUid {
    /// The uid.
    pub uid: u32,
    /// Whether it came from [`TRUST_UID_ENV`] rather than being our own.
    pub from_env: bool,
}

impl TrustedUid {
    /// Whether a server socket of `uid` may receive requests of a process
    /// running as `me`: `me`'s own, or the trusted uid's.
    pub fn trusts(&self, uid: u32, me: u32) -> bool {
        uid == self.uid || uid == me
    }
}

impl TrustedUid {
    /// Our own effective uid.
    pub fn own() -> Self {
        Self {
            uid: effective_uid(),
            from_env: false,
        }
    }

    /// [`TRUST_UID_ENV`] if set (a numeric uid), else our own effective uid.
    /// Errors (a message) when the variable is set but not a uid.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::var(TRUST_UID_ENV).ok().as_deref())
    }

    /// The trusted uid given a value of [`TRUST_UID_ENV`] (`None` or empty:
    /// our own).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            Some(v) if !v.is_empty() => match v.parse::<u32>() {
                Ok(uid) => Ok(Self {
                    uid,
                    from_env: uid != effective_uid(),
                }),
                Err(_) => Err(format!(
                    "{TRUST_UID_ENV}={v:?} is not a numeric uid (it names the one other user \
                     whose proxymesh daemon you mean to use)"
                )),
            },
            _ => Ok(Self::own()),
        }
    }
}

/// Why a connection to a daemon was refused by [`check_server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCheckError {
    /// Another user's process accepted the connection.
    NotTrusted {
        /// The server address.
        server: SocketAddr,
        /// The uid holding the server socket.
        uid: u32,
        /// Our own effective uid.
        me: u32,
        /// The uid trusted besides.
        trusted: TrustedUid,
    },
    /// Another user's process serves the Unix socket.
    NotTrustedSocket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// The uid of the process serving it.
        uid: u32,
        /// Our own effective uid.
        me: u32,
        /// The uid trusted besides.
        trusted: TrustedUid,
    },
    /// The server socket could not be identified.
    Unknown {
        /// The server address.
        server: SocketAddr,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for ServerCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTrusted {
                server,
                uid,
                me,
                trusted,
            } => {
                let whom = whom(*me, trusted);
                write!(
                    f,
                    "{server} is served by {}, not by {whom}; refusing to send data to it \
                     (another user's process holds that port: start your own daemon on another \
                     port with `proxymeshd --api 127.0.0.1:PORT` and point {} at it; to use that \
                     user's daemon on purpose, set {TRUST_UID_ENV}={uid})",
                    describe_uid(*uid),
                    crate::api::API_ENV,
                )
            }
            Self::NotTrustedSocket {
                path,
                uid,
                me,
                trusted,
            } => {
                let whom = whom(*me, trusted);
                write!(
                    f,
                    "the Unix socket {} is served by {}, not by {whom}; refusing to send data to it \
                     (start your own daemon with its own --data-dir or --api-socket and point {} \
                     at it; to use that user's daemon on purpose, set {TRUST_UID_ENV}={uid})",
                    path.display(),
                    describe_uid(*uid),
                    crate::api::API_ENV,
                )
            }
            Self::Unknown { server, reason } => write!(
                f,
                "cannot tell which user serves {server} ({reason}); refusing to send data to it"
            ),
        }
    }
}

impl std::error::Error for ServerCheckError {}

/// "you (uid …)", and the trusted uid if any, for refusals.
fn whom(me: u32, trusted: &TrustedUid) -> String {
    let me = describe_uid(me);
    if trusted.from_env {
        format!(
            "you ({me}) nor by {} (trusted by {TRUST_UID_ENV})",
            describe_uid(trusted.uid)
        )
    } else {
        format!("you ({me})")
    }
}

/// Check a fresh connection to the daemon's Unix socket at `path`, whose
/// server runs as `uid` (the kernel's `SO_PEERCRED`), before sending
/// anything on it: `uid` must be `me` or `trusted`.
pub fn judge_socket_server(
    path: &std::path::Path,
    uid: u32,
    trusted: TrustedUid,
    me: u32,
) -> Result<(), ServerCheckError> {
    if trusted.trusts(uid, me) {
        return Ok(());
    }
    Err(ServerCheckError::NotTrustedSocket {
        path: path.to_path_buf(),
        uid,
        me,
        trusted,
    })
}

/// Check the fresh connection from `local` to `server` before sending
/// anything on it: the server end must be held by our own effective uid or
/// `trusted` (see [`TrustedUid::trusts`]). Connections to
/// non-loopback addresses are not checked (their owner cannot be known),
/// nor is anything on systems other than Linux.
pub fn check_server(
    local: SocketAddr,
    server: SocketAddr,
    trusted: TrustedUid,
) -> Result<(), ServerCheckError> {
    if !SUPPORTED || !server.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    let row = lookup(server, local).map_err(|e| ServerCheckError::Unknown {
        server,
        reason: format!("cannot ask the kernel (sock_diag, /proc/net/tcp): {e}"),
    })?;
    judge_server(row, server, trusted, effective_uid())
}

/// [`check_server`]'s decision, given the server socket's row (`None`: not
/// found) and our effective uid `me`.
pub fn judge_server(
    row: Option<TcpRow>,
    server: SocketAddr,
    trusted: TrustedUid,
    me: u32,
) -> Result<(), ServerCheckError> {
    let unknown = |reason: String| ServerCheckError::Unknown { server, reason };
    let row = row.ok_or_else(|| unknown("the server closed the connection".into()))?;
    // A server socket already closed shows uid 0 and inode 0 (TIME_WAIT or
    // an orphaned FIN_WAIT2): nobody would read what we send, and uid 0
    // must not be mistaken for root.
    let closed = row.inode == 0 && !matches!(row.state, state::ESTABLISHED | state::SYN_RECV);
    if closed {
        return Err(unknown("the server closed the connection".into()));
    }
    if !trusted.trusts(row.uid, me) {
        return Err(ServerCheckError::NotTrusted {
            server,
            uid: row.uid,
            me,
            trusted,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real rows (x86-64, little-endian): a listener on 127.0.0.1:7878, an
    // established pair, a TIME_WAIT leftover.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1EC6 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2715117 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:1EC6 01 00000000:00000000 00:00000000 00000000  1001        0 2718542 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1EC6 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 2715120 1 0000000000000000 20 4 28 10 -1
   3: 0100007F:C351 0100007F:1EC6 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";
    // IPv6: a listener on [::1]:7878, an established pair from [::1]:50000,
    // and an IPv4-mapped connection ([::ffff:127.0.0.1]:7878).
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1EC6 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2721466 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:C350 00000000000000000000000001000000:1EC6 01 00000000:00000000 00:00000000 00000000  1001        0 2721470 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:1EC6 0000000000000000FFFF00000100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 2721501 1 0000000000000000 20 4 30 10 -1
";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_ipv4_and_ipv6_addresses() {
        assert_eq!(parse_addr("0100007F:1EC6"), Some(a("127.0.0.1:7878")));
        assert_eq!(parse_addr("00000000:0000"), Some(a("0.0.0.0:0")));
        assert_eq!(parse_addr("0101A8C0:0050"), Some(a("192.168.1.1:80")));
        assert_eq!(
            parse_addr("00000000000000000000000001000000:1EC6"),
            Some(a("[::1]:7878"))
        );
        assert_eq!(
            parse_addr("0000000000000000FFFF00000100007F:0016"),
            Some(a("[::ffff:127.0.0.1]:22"))
        );
        // fe80::1 on a little-endian machine.
        assert_eq!(
            parse_addr("000080FE000000000000000001000000:0016"),
            Some(a("[fe80::1]:22"))
        );
        for bad in [
            "",
            "0100007F",
            "0100007F:",
            "100007F:1EC6",
            "0100007G:1EC6",
            "0100007F:1EC6A",
        ] {
            assert_eq!(parse_addr(bad), None, "{bad:?}");
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_rows_and_finds_each_end() {
        assert_eq!(TCP.lines().filter_map(parse_row).count(), 4);
        let listener = parse_row(TCP.lines().nth(1).unwrap()).unwrap();
        assert_eq!(listener.state, state::LISTEN);
        assert_eq!((listener.uid, listener.inode), (1000, 2715117));
        // The client end: local = client, remote = server.
        let client = find_row(TCP, a("127.0.0.1:50000"), a("127.0.0.1:7878")).unwrap();
        assert_eq!((client.uid, client.state, client.inode), (1001, 1, 2718542));
        // The server end.
        let server = find_row(TCP, a("127.0.0.1:7878"), a("127.0.0.1:50000")).unwrap();
        assert_eq!((server.uid, server.inode), (1000, 2715120));
        assert!(server.is_held());
        // A closed socket still matches, but shows uid 0 and no inode.
        let tw = find_row(TCP, a("127.0.0.1:50001"), a("127.0.0.1:7878")).unwrap();
        assert_eq!(
            (tw.state, tw.uid, tw.is_held()),
            (state::TIME_WAIT, 0, false)
        );
        assert_eq!(
            find_row(TCP, a("127.0.0.1:50002"), a("127.0.0.1:7878")),
            None
        );

        let client6 = find_row(TCP6, a("[::1]:50000"), a("[::1]:7878")).unwrap();
        assert_eq!((client6.uid, client6.inode), (1001, 2721470));
        // IPv4-mapped addresses match their IPv4 form, and vice versa.
        let mapped = find_row(TCP6, a("127.0.0.1:7878"), a("127.0.0.1:54321")).unwrap();
        assert_eq!(mapped.inode, 2721501);
        let mapped = find_row(
            TCP6,
            a("[::ffff:127.0.0.1]:7878"),
            a("[::ffff:127.0.0.1]:54321"),
        )
        .unwrap();
        assert_eq!(mapped.inode, 2721501);
    }

    #[test]
    fn header_and_garbage_are_not_rows() {
        assert_eq!(parse_row(TCP.lines().next().unwrap()), None);
        assert_eq!(parse_row(""), None);
        assert_eq!(parse_row("   0: 0100007F:1EC6"), None);
    }

    #[cfg(target_os = "linux")]
    fn pair(listen: &str) -> Option<(std::net::TcpStream, std::net::TcpStream)> {
        let l = std::net::TcpListener::bind(listen).ok()?;
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        Some((c, s))
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn finds_both_ends_of_a_real_connection() {
        let me = effective_uid();
        let mut checked = 0;
        for listen in ["127.0.0.1:0", "[::1]:0"] {
            let Some((client, server)) = pair(listen) else {
                eprintln!("no {listen} here; skipped");
                continue;
            };
            let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
            let client_row = lookup(c, s).unwrap().expect("client socket found");
            assert_eq!(client_row.uid, me);
            assert_eq!(client_row.state, state::ESTABLISHED);
            assert!(client_row.is_held());
            let server_row = lookup(s, c).unwrap().expect("server socket found");
            assert_eq!(server_row.uid, me);
            assert!(server_row.is_held());
            assert_ne!(client_row.inode, server_row.inode);
            check_server(c, s, TrustedUid::own()).unwrap();
            // Judged as if we were another user, trusting nobody else.
            let other = me.wrapping_add(1);
            let trusted = TrustedUid {
                uid: other,
                from_env: false,
            };
            let err = judge_server(Some(server_row), s, trusted, other).unwrap_err();
            assert!(
                matches!(err, ServerCheckError::NotTrusted { uid, .. } if uid == me),
                "{err}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&format!("{s} is served by uid {me}")),
                "{text}"
            );
            assert!(text.contains("refusing to send data to it"), "{text}");
            checked += 1;
        }
        assert!(checked >= 1, "no loopback at all?");
    }

    #[test]
    fn socket_server_judgement() {
        let path = std::path::Path::new("/run/pm/api.sock");
        let own = TrustedUid {
            uid: 1000,
            from_env: false,
        };
        judge_socket_server(path, 1000, own, 1000).unwrap();
        let err = judge_socket_server(path, 1001, own, 1000)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("the Unix socket /run/pm/api.sock is served by uid 1001")
                && err.contains("not by you (uid 1000")
                && err.contains("PROXYMESH_TRUST_UID=1001"),
            "{err}"
        );
        let bob = TrustedUid {
            uid: 1001,
            from_env: true,
        };
        judge_socket_server(path, 1001, bob, 1000).unwrap();
        judge_socket_server(path, 1000, bob, 1000).unwrap();
        assert!(judge_socket_server(path, 0, bob, 1000).is_err());
    }

    #[test]
    fn server_judgement() {
        let server = a("127.0.0.1:7878");
        let row = |uid, state, inode| TcpRow {
            local: server,
            remote: a("127.0.0.1:50000"),
            state,
            uid,
            inode,
        };
        let own = TrustedUid {
            uid: 1000,
            from_env: false,
        };
        // Ours, accepted or still in the accept queue (no inode yet).
        judge_server(Some(row(1000, state::ESTABLISHED, 7)), server, own, 1000).unwrap();
        judge_server(Some(row(1000, state::ESTABLISHED, 0)), server, own, 1000).unwrap();
        // Another user's.
        let err = judge_server(Some(row(1001, state::ESTABLISHED, 7)), server, own, 1000)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("127.0.0.1:7878 is served by uid 1001")
                && err.contains("not by you (uid 1000")
                && err.contains("refusing to send data to it")
                && err.contains("PROXYMESH_TRUST_UID=1001"),
            "{err}"
        );
        // ... unless trusted on purpose; our own stays trusted then.
        let bob = TrustedUid {
            uid: 1001,
            from_env: true,
        };
        judge_server(Some(row(1001, state::ESTABLISHED, 7)), server, bob, 1000).unwrap();
        judge_server(Some(row(1000, state::ESTABLISHED, 7)), server, bob, 1000).unwrap();
        let err = judge_server(Some(row(1002, state::ESTABLISHED, 7)), server, bob, 1000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("trusted by PROXYMESH_TRUST_UID"), "{err}");
        // A closed server socket shows uid 0: never taken for root.
        let root = TrustedUid {
            uid: 0,
            from_env: false,
        };
        for closed in [state::TIME_WAIT, state::FIN_WAIT2, state::FIN_WAIT1] {
            let err = judge_server(Some(row(0, closed, 0)), server, root, 0).unwrap_err();
            assert!(matches!(err, ServerCheckError::Unknown { .. }), "{err}");
        }
        assert!(judge_server(None, server, own, 1000).is_err());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn closed_client_is_not_held() {
        let (client, server) = pair("127.0.0.1:0").unwrap();
        let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
        drop(client);
        // The orphaned client socket either vanished or shows no inode.
        let row = lookup(c, s).unwrap();
        assert!(row.is_none_or(|r| !r.is_held()), "{row:?}");
        drop(server);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn sock_diag_and_proc_agree() {
        let mut checked = 0;
        for listen in ["127.0.0.1:0", "[::1]:0"] {
            let Some((client, server)) = pair(listen) else {
                continue;
            };
            let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
            let Ok(fast) = diag::lookup(c, s) else {
                eprintln!("no sock_diag here; skipped");
                return;
            };
            let fast = fast.expect("sock_diag finds the client socket");
            assert_eq!(Some(fast), lookup_proc(c, s).unwrap());
            let fast = diag::lookup(s, c).unwrap().expect("and the server socket");
            assert_eq!(Some(fast), lookup_proc(s, c).unwrap());
            // No such socket.
            let gone = SocketAddr::new(c.ip(), 1);
            assert_eq!(diag::lookup(gone, s).unwrap(), None);
            checked += 1;
        }
        // A dual-stack IPv6 listener reached over IPv4: the server socket is
        // an IPv6 socket holding IPv4-mapped addresses.
        if let Ok(l) = std::net::TcpListener::bind("[::]:0") {
            let port = l.local_addr().unwrap().port();
            if let Ok(client) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let (server, _) = l.accept().unwrap();
                let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
                let row = diag::lookup(s, c).unwrap().expect("mapped server socket");
                assert_eq!(row.uid, effective_uid());
                assert_eq!(Some(row), lookup_proc(s, c).unwrap());
                assert!(lookup(c, s).unwrap().is_some());
            }
        }
        assert!(checked >= 1);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn lookup_is_cheap() {
        let (client, server) = pair("127.0.0.1:0").unwrap();
        let (c, s) = (client.local_addr().unwrap(), server.local_addr().unwrap());
        let time = |f: &dyn Fn() -> Option<TcpRow>, n: u32| {
            let t = std::time::Instant::now();
            for _ in 0..n {
                assert!(f().is_some());
            }
            t.elapsed() / n
        };
        let each = time(&|| lookup(c, s).unwrap(), 500);
        let proc_each = time(&|| lookup_proc(c, s).unwrap(), 20);
        eprintln!(
            "socket owner lookup: {each:?} each (sock_diag), {proc_each:?} through /proc/net/tcp \
             ({} rows)",
            read_table(false).unwrap().lines().count() - 1
        );
    }

    #[test]
    fn trust_env_is_a_uid() {
        let me = effective_uid();
        for unset in [None, Some(""), Some("  ")] {
            assert_eq!(TrustedUid::parse(unset), Ok(TrustedUid::own()));
        }
        assert_eq!(
            TrustedUid::parse(Some(&me.to_string())),
            Ok(TrustedUid {
                uid: me,
                from_env: false
            })
        );
        let other = me.wrapping_add(7);
        assert_eq!(
            TrustedUid::parse(Some(&format!(" {other}\n"))),
            Ok(TrustedUid {
                uid: other,
                from_env: true
            })
        );
        let err = TrustedUid::parse(Some("bob")).unwrap_err();
        assert!(
            err.contains(TRUST_UID_ENV) && err.contains("numeric uid"),
            "{err}"
        );
    }
}
