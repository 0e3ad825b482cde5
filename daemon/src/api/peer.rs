//! Who may use the local API: the daemon's own Unix user, and optionally
//! the members of one group the operator names.
//!
//! On a shared machine (an HPC login node) every user can reach
//! `127.0.0.1:7878`, and ProxyStore's `EndpointConnector` sends no
//! credentials, so callers are identified by the operating system instead:
//! when a connection is accepted, the daemon finds the **client's** socket
//! in the kernel's TCP table (`/proc/net/tcp{,6}`: the row whose local
//! address is the client's and whose remote address is ours; see
//! [`proxymesh::localpeer`]) and reads the uid that created it. This happens
//! once per connection, at accept time, never per request.
//!
//! The caller is allowed when its uid is
//! - the daemon's effective uid, or
//! - when a group is configured ([`Access::new`]), a member of that group:
//!   the group is the user's primary group (`pw_gid` from `getpwuid_r`) or
//!   one of its supplementary groups (`getgrouplist`, which asks the same
//!   NSS sources as `id`, LDAP and sssd included). Answers are cached for
//!   [`GROUP_CACHE_TTL`], so adding a user to the group takes effect within
//!   a minute; the lookup runs off the async runtime because NSS may block.
//!
//! Everyone else is refused, root included: uid 0 is allowed only when the
//! daemon itself runs as root. (Root can read the data directory anyway,
//! but a daemon should not act for a user it was not started by without
//! the operator saying so; add root's group with `--api-group` if wanted.)
//! A connection whose client socket cannot be found (it closed, or it comes
//! from another host, which only a non-loopback `--api` allows) is refused
//! as well: the kernel shows closed sockets as uid 0, which must never be
//! mistaken for root.
//!
//! Where this is unsupported (operating systems other than Linux), every
//! caller is allowed, as before: the loopback-only listener is then the
//! only barrier.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxymesh::localpeer;

/// How long a group-membership answer for one uid is reused.
pub const GROUP_CACHE_TTL: Duration = Duration::from_secs(60);

/// A group whose members may use the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its name, as configured (for messages).
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

/// The access policy of one daemon's local API.
#[derive(Debug)]
pub struct Access {
    /// The daemon's effective uid: always allowed.
    owner: u32,
    /// `uid 1000 (alice)`, looked up once, for messages.
    owner_desc: String,
    /// The optional group whose members are allowed too.
    group: Option<Group>,
    /// Whether callers can be identified at all on this system.
    enforced: bool,
    /// The verdict for each other uid seen, with when it was reached: NSS
    /// is asked once per uid per [`GROUP_CACHE_TTL`], however many
    /// connections it opens.
    verdicts: Mutex<HashMap<u32, (Verdict, Instant)>>,
}

/// The outcome of [`Access::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the connection.
    Allowed {
        /// The caller's uid (the owner's where callers cannot be identified).
        uid: u32,
    },
    /// Answer 403 with this message and close.
    Denied {
        /// The caller's uid, when it could be identified.
        uid: Option<u32>,
        /// Why, naming both users.
        message: String,
    },
}

impl Access {
    /// Only the daemon's own user.
    pub fn owner_only() -> Self {
        Self::with_group(localpeer::effective_uid(), None)
    }

    /// The daemon's own user and, if `group` is given, the members of the
    /// group with that name (or numeric gid). Errors when no such group
    /// exists.
    pub fn new(group: Option<&str>) -> anyhow::Result<Self> {
        let group = match group.map(str::trim).filter(|g| !g.is_empty()) {
            None => None,
            Some(name) => Some(resolve_group(name)?),
        };
        Ok(Self::with_group(localpeer::effective_uid(), group))
    }

    /// A policy for `owner` and an already resolved `group`.
    pub fn with_group(owner: u32, group: Option<Group>) -> Self {
        Self {
            owner,
            owner_desc: localpeer::describe_uid(owner),
            group,
            enforced: localpeer::SUPPORTED,
            verdicts: Mutex::default(),
        }
    }

    /// The uid the API belongs to.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The group allowed besides the owner.
    pub fn group(&self) -> Option<&Group> {
        self.group.as_ref()
    }

    /// Identify the client of the connection accepted on `local` from
    /// `peer` and decide. The owner's connections cost one `sock_diag`
    /// query (see [`localpeer::lookup`]); another uid's first connection
    /// also asks NSS (off the runtime), later ones reuse the verdict.
    pub async fn check(self: &Arc<Self>, local: SocketAddr, peer: SocketAddr) -> Verdict {
        if !self.enforced {
            return Verdict::Allowed { uid: self.owner };
        }
        match identify(local, peer) {
            Ok(uid) => self.decide_for(uid, &peer).await,
            Err(why) => Verdict::Denied {
                uid: None,
                message: format!(
                    "{why}; this proxymesh daemon belongs to {}{}",
                    self.owner_desc,
                    self.group_note()
                ),
            },
        }
    }

    /// Decide for a Unix-socket caller whose uid the kernel gave with the
    /// connection (`SO_PEERCRED`); `None` (not told) is refused.
    pub async fn check_uid(self: &Arc<Self>, uid: Option<u32>) -> Verdict {
        if !self.enforced {
            return Verdict::Allowed { uid: self.owner };
        }
        match uid {
            Some(uid) => self.decide_for(uid, &"unix socket").await,
            None => Verdict::Denied {
                uid: None,
                message: format!(
                    "cannot tell which user connected to the Unix socket; this proxymesh daemon \
                     belongs to {}{}",
                    self.owner_desc,
                    self.group_note()
                ),
            },
        }
    }

    /// The verdict for an identified caller (`peer`, for the log).
    async fn decide_for(
        self: &Arc<Self>,
        uid: u32,
        peer: &(dyn std::fmt::Display + Sync),
    ) -> Verdict {
        if uid == self.owner {
            return Verdict::Allowed { uid };
        }
        if let Some((verdict, at)) = self.cache().get(&uid) {
            if at.elapsed() < GROUP_CACHE_TTL {
                return verdict.clone();
            }
        }
        let me = self.clone();
        let verdict = tokio::task::spawn_blocking(move || me.decide(uid))
            .await
            .unwrap_or_else(|e| Verdict::Denied {
                uid: Some(uid),
                message: format!("cannot check the caller: {e}"),
            });
        if let Verdict::Denied { message, .. } = &verdict {
            // Once per uid and TTL, not per connection.
            tracing::warn!(%peer, uid, "refusing local API connections of another user: {message}");
        }
        let mut cache = self.cache();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(uid, (verdict.clone(), Instant::now()));
        verdict
    }

    /// The verdict for `uid`, not the owner (blocking: NSS).
    fn decide(&self, uid: u32) -> Verdict {
        match &self.group {
            Some(group) if user_in_group(uid, group.gid) => Verdict::Allowed { uid },
            _ => Verdict::Denied {
                uid: Some(uid),
                message: self.denial(uid),
            },
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Verdict, Instant)>> {
        self.verdicts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn group_note(&self) -> String {
        match &self.group {
            Some(g) => format!(" and the members of group {} (gid {})", g.name, g.gid),
            None => String::new(),
        }
    }

    /// The 403 message for `uid`: both users, and what to do (blocking:
    /// looks up `uid`'s name).
    pub fn denial(&self, uid: u32) -> String {
        format!(
            "this proxymesh daemon belongs to {}{}; you are {}. Start your own daemon \
             (`proxymeshd --api 127.0.0.1:PORT`) and point {} at it",
            self.owner_desc,
            self.group_note(),
            localpeer::describe_uid(uid),
            proxymesh::api::API_ENV,
        )
    }
}

/// The uid of the client of the connection accepted on `local` from `peer`,
/// or why it cannot be known.
pub fn identify(local: SocketAddr, peer: SocketAddr) -> Result<u32, String> {
    if !peer.ip().to_canonical().is_loopback() {
        return Err(format!(
            "connections from other hosts ({peer}) cannot be identified; the local API serves \
             users of this machine only"
        ));
    }
    match localpeer::lookup(peer, local) {
        Ok(Some(row)) if row.is_held() => Ok(row.uid),
        Ok(_) => Err(format!(
            "the connection from {peer} closed before its user could be identified"
        )),
        Err(e) => Err(format!(
            "cannot identify the user connecting from {peer} (reading /proc/net/tcp: {e})"
        )),
    }
}

/// Resolve a group name (or a numeric gid) to a [`Group`].
pub fn resolve_group(name: &str) -> anyhow::Result<Group> {
    if let Some(gid) = group_gid(name) {
        return Ok(Group {
            name: name.to_string(),
            gid,
        });
    }
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(Group {
            name: name.to_string(),
            gid,
        });
    }
    anyhow::bail!("no group named {name:?} (check `getent group {name}`)")
}

/// A buffer size for the reentrant NSS calls, growing on `ERANGE`.
#[cfg(target_os = "linux")]
fn nss_retry<T>(mut call: impl FnMut(&mut Vec<u8>) -> Result<T, i32>) -> Option<T> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match call(&mut buf) {
            Ok(v) => return Some(v),
            Err(libc::ERANGE) if buf.len() < (16 << 20) => {
                let len = buf.len() * 4;
                buf.resize(len, 0);
            }
            Err(_) => return None,
        }
    }
}

/// The gid of the group called `name` (`getgrnam_r`).
#[cfg(target_os = "linux")]
fn group_gid(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    nss_retry(|buf| {
        // SAFETY: `grp` and `buf` outlive the call; only `gr_gid` (a plain
        // integer) is read from the result.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => Ok(None),
            0 => Ok(Some(grp.gr_gid)),
            e => Err(e),
        }
    })
    .flatten()
}

#[cfg(not(target_os = "linux"))]
fn group_gid(_name: &str) -> Option<u32> {
    None
}

/// Whether the user `uid` belongs to group `gid`: its primary group or one
/// of its supplementary groups, as NSS reports them (`getpwuid_r`,
/// `getgrouplist`). A uid without a user entry belongs to no group.
#[cfg(target_os = "linux")]
pub fn user_in_group(uid: u32, gid: u32) -> bool {
    let Some((name, primary)) = proxymesh::localpeer::user_entry(uid) else {
        return false;
    };
    if primary == gid {
        return true;
    }
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; getgrouplist writes at
        // most that many and sets `n` to the number it needs.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            return groups.contains(&gid);
        }
        if n as usize <= groups.len() || groups.len() >= 1 << 16 {
            return false;
        }
        groups.resize(n as usize, 0);
    }
}

/// Group membership is checked on Linux only.
#[cfg(not(target_os = "linux"))]
pub fn user_in_group(_uid: u32, _gid: u32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[tokio::test]
    #[cfg(target_os = "linux")]
    async fn the_owner_is_allowed_and_others_are_not() {
        let (client, server) = pair();
        let (local, peer) = (server.local_addr().unwrap(), client.local_addr().unwrap());
        let me = localpeer::effective_uid();
        assert_eq!(identify(local, peer), Ok(me));
        let access = Arc::new(Access::owner_only());
        assert_eq!(
            access.check(local, peer).await,
            Verdict::Allowed { uid: me }
        );

        // The same connection, checked for a daemon of another user.
        let other = Arc::new(Access::with_group(me + 1, None));
        let Verdict::Denied { uid, message } = other.check(local, peer).await else {
            panic!("allowed a stranger");
        };
        assert_eq!(uid, Some(me));
        assert!(
            message.contains(&format!("belongs to uid {}", me + 1))
                && message.contains(&format!("you are uid {me}")),
            "{message}"
        );
    }

    #[tokio::test]
    #[cfg(target_os = "linux")]
    async fn group_members_are_allowed() {
        let (client, server) = pair();
        let (local, peer) = (server.local_addr().unwrap(), client.local_addr().unwrap());
        let me = localpeer::effective_uid();
        // Our own primary group: we are a member, whatever our uid.
        // SAFETY: getegid has no preconditions.
        let gid = unsafe { libc::getegid() };
        let primary = user_in_group(me, gid);
        if !primary {
            eprintln!("uid {me} has no user entry with primary group {gid}; skipped");
            return;
        }
        let group = Group {
            name: "test".into(),
            gid,
        };
        let access = Arc::new(Access::with_group(me + 1, Some(group)));
        assert_eq!(
            access.check(local, peer).await,
            Verdict::Allowed { uid: me }
        );
        // A group nobody is in.
        let access = Arc::new(Access::with_group(
            me + 1,
            Some(Group {
                name: "nobody-here".into(),
                gid: 0xFFFF_FFF0,
            }),
        ));
        let v = access.check(local, peer).await;
        assert!(
            matches!(&v, Verdict::Denied { message, .. } if message.contains("members of group nobody-here")),
            "{v:?}"
        );
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn groups_resolve_by_name_or_number() {
        // `root` exists on every Linux system.
        assert_eq!(resolve_group("root").unwrap().gid, 0);
        assert_eq!(resolve_group("4242").unwrap().gid, 4242);
        let err = resolve_group("no-such-group-proxymesh").unwrap_err();
        assert!(err.to_string().contains("no group named"), "{err}");
        assert!(Access::new(Some("no-such-group-proxymesh")).is_err());
        assert!(Access::new(None).unwrap().group().is_none());
    }

    #[test]
    fn remote_and_closed_callers_are_not_identified() {
        let local: SocketAddr = "127.0.0.1:7878".parse().unwrap();
        let err = identify(local, "192.0.2.7:5000".parse().unwrap()).unwrap_err();
        assert!(err.contains("other hosts"), "{err}");
        if localpeer::SUPPORTED {
            // No such connection exists.
            let err = identify(local, "127.0.0.1:1".parse().unwrap()).unwrap_err();
            assert!(err.contains("closed before"), "{err}");
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_closed_client_is_denied_not_taken_for_root() {
        let (client, server) = pair();
        let (local, peer) = (server.local_addr().unwrap(), client.local_addr().unwrap());
        drop(client);
        // Closed sockets show uid 0; they must not identify as root.
        assert!(identify(local, peer).is_err());
        drop(server);
    }
}
