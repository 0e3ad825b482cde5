//! Who may use the relay, and who they can find here.
//!
//! [`Members`] holds the relay's [`Gate`] (which peers proved membership of
//! a served mesh, and the newest revocation list of each mesh) and one
//! **directory** per mesh: the members that said hello, with their
//! credentials and addresses. [`Members::hello`] is the whole decision the
//! member protocol ([`wire::PROTOCOL`]) makes for one `Hello`; the relay's node
//! runs that protocol on the streams libp2p hands over.
//!
//! The rules:
//!
//! * a `Hello` whose credential the gate admits for the connection's
//!   authenticated peer ID puts that peer in the directory of its mesh (or
//!   refreshes its entry: daemons say hello again periodically and whenever
//!   their addresses change) and is answered with a `Welcome` listing the
//!   *other* members of the same mesh that are still valid, plus the mesh's
//!   newest revocation list;
//! * anything else — no credential, another peer's, an expired, revoked,
//!   forged or foreign-mesh one, a full directory, a malformed message — is
//!   answered `Refused(reason)`, the peer is dropped from the gate and the
//!   directory, and the connection is closed;
//! * members of different meshes never see each other;
//! * a peer leaves the gate and the directory when its last connection
//!   closes ([`Members::forget`]) or when a revocation list names it
//!   ([`Members::apply_revocations`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, PeerId, Stream};
use proxymesh::membership::wire::{self, Member, Message, WireError};
use proxymesh::membership::{Credential, Gate, MembershipError, MeshId, Policy, RevocationList};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::node::{Command, LogLimiter};

/// How long a peer has to send its `Hello` on a member stream.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing an answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a refusal, how long to wait for the peer to read it and close the
/// stream before the connection is closed anyway.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// Room left in a welcome for framing and the revocation list's header.
const WELCOME_SLACK: usize = 16 << 10;
/// Upper bound of the encoded size of one member entry, besides its addresses.
const MEMBER_OVERHEAD: usize = 512;
/// Upper bound of the encoded size of one revoked peer.
const REVOKED_PEER_SIZE: usize = 80;

/// What a welcomed member is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The mesh it was admitted to (`None`: an open relay, no credential).
    pub mesh: Option<MeshId>,
    /// Whether it was not in the directory before this hello.
    pub new: bool,
    /// The other valid members of the same mesh.
    pub members: Vec<Member>,
    /// The mesh's newest revocation list, if the relay holds one.
    pub revocations: Option<RevocationList>,
}

impl From<Welcome> for Message {
    fn from(w: Welcome) -> Message {
        Message::Welcome {
            members: w.members,
            revocations: w.revocations,
        }
    }
}

#[derive(Debug, Default)]
struct Directory {
    /// Members by mesh, then peer.
    meshes: HashMap<Option<MeshId>, HashMap<PeerId, Member>>,
    /// The mesh each listed peer is in.
    mesh_of: HashMap<PeerId, Option<MeshId>>,
}

impl Directory {
    fn remove(&mut self, peer: &PeerId) -> bool {
        let Some(mesh) = self.mesh_of.remove(peer) else {
            return false;
        };
        if let Some(entries) = self.meshes.get_mut(&mesh) {
            entries.remove(peer);
            if entries.is_empty() {
                self.meshes.remove(&mesh);
            }
        }
        true
    }
}

/// The relay's gate and its per-mesh member directories. Thread-safe.
#[derive(Debug)]
pub struct Members {
    gate: Gate,
    max_members: usize,
    directory: Mutex<Directory>,
}

fn mesh_name(mesh: &Option<MeshId>) -> String {
    match mesh {
        Some(mesh) => format!("mesh {mesh}"),
        None => "the open mesh".to_string(),
    }
}

impl Members {
    /// Serve `policy`, listing at most `max_members` per mesh.
    pub fn new(policy: Policy, max_members: usize) -> Self {
        Members {
            gate: Gate::new(policy),
            max_members,
            directory: Mutex::new(Directory::default()),
        }
    }

    /// The gate (membership checks, revocation lists).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    // Lock order: the directory first, then (inside its methods) the gate.
    fn directory(&self) -> MutexGuard<'_, Directory> {
        self.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decide on a `Hello` from `peer` (authenticated by its connection):
    /// admit it and list it in its mesh's directory (idempotently), or say
    /// why not. A refused peer is no member afterwards, whatever it was
    /// before.
    pub fn hello(
        &self,
        peer: PeerId,
        credential: Option<Credential>,
        addrs: Vec<Multiaddr>,
        now: SystemTime,
    ) -> Result<Welcome, String> {
        let mut dir = self.directory();
        let membership = match self.gate.admit(peer, credential.as_ref(), now) {
            Ok(m) => m,
            Err(e) => {
                self.gate.forget(&peer);
                dir.remove(&peer);
                return Err(e.to_string());
            }
        };
        let mesh = membership.mesh;
        // A peer that now presents another mesh's credential moves.
        if dir.mesh_of.get(&peer).is_some_and(|m| *m != mesh) {
            dir.remove(&peer);
        }
        let new = !dir.mesh_of.contains_key(&peer);
        if new && dir.meshes.get(&mesh).map_or(0, HashMap::len) >= self.max_members {
            // Make room by dropping members that expired or were revoked.
            self.prune(&mut dir, &mesh, now);
            if dir.meshes.get(&mesh).map_or(0, HashMap::len) >= self.max_members {
                self.gate.forget(&peer);
                return Err(format!(
                    "the relay's directory of {} is full ({} members)",
                    mesh_name(&mesh),
                    self.max_members
                ));
            }
        }
        dir.meshes.entry(mesh.clone()).or_default().insert(
            peer,
            Member {
                peer,
                credential,
                addrs,
            },
        );
        dir.mesh_of.insert(peer, mesh.clone());

        let revocations = mesh.as_ref().and_then(|m| self.gate.revocations(m));
        let mut budget = wire::MAX_MESSAGE.saturating_sub(
            WELCOME_SLACK
                + revocations
                    .as_ref()
                    .map_or(0, |l| l.peers().len() * REVOKED_PEER_SIZE),
        );
        let mut members = Vec::new();
        let mut stale = Vec::new();
        for (other, entry) in dir.meshes.get(&mesh).into_iter().flatten() {
            if *other == peer {
                continue;
            }
            if !self.gate.is_member(other, now) {
                stale.push(*other);
                continue;
            }
            let size = MEMBER_OVERHEAD + entry.addrs.iter().map(|a| a.len() + 8).sum::<usize>();
            if members.len() >= wire::MAX_MEMBERS || size > budget {
                continue;
            }
            budget -= size;
            members.push(entry.clone());
        }
        for other in &stale {
            dir.remove(other);
        }
        Ok(Welcome {
            mesh,
            new,
            members,
            revocations,
        })
    }

    /// Drop the entries of `mesh` whose membership no longer holds.
    fn prune(&self, dir: &mut Directory, mesh: &Option<MeshId>, now: SystemTime) {
        let stale: Vec<PeerId> = dir
            .meshes
            .get(mesh)
            .into_iter()
            .flat_map(HashMap::keys)
            .filter(|p| !self.gate.is_member(p, now))
            .copied()
            .collect();
        for p in &stale {
            dir.remove(p);
        }
    }

    /// `peer` is gone (its last connection closed): it leaves the gate and
    /// the directory. Returns whether it was listed.
    pub fn forget(&self, peer: &PeerId) -> bool {
        let mut dir = self.directory();
        self.gate.forget(peer);
        dir.remove(peer)
    }

    /// Take `list` if it is validly signed for a served mesh and newer than
    /// the one held: its peers leave the gate and that mesh's directory, and
    /// later welcomes of the mesh carry it. Returns the peers to disconnect,
    /// or `None` if the list was not newer.
    // The error is `Gate::apply_revocations`'s, returned as it is; lists
    // arrive every few seconds at most, so its size does not matter.
    #[allow(clippy::result_large_err)]
    pub fn apply_revocations(
        &self,
        list: &RevocationList,
    ) -> Result<Option<Vec<PeerId>>, MembershipError> {
        let mut dir = self.directory();
        let Some(mut gone) = self.gate.apply_revocations(list)? else {
            return Ok(None);
        };
        let mesh = Some(list.mesh().clone());
        let listed: Vec<PeerId> = dir
            .meshes
            .get(&mesh)
            .into_iter()
            .flat_map(HashMap::keys)
            .filter(|p| list.contains(p))
            .copied()
            .collect();
        for p in listed {
            dir.remove(&p);
            if !gone.contains(&p) {
                gone.push(p);
            }
        }
        Ok(Some(gone))
    }

    /// Whether `peer` may be served at `now` (always, for an open relay).
    pub fn is_member(&self, peer: &PeerId, now: SystemTime) -> bool {
        self.gate.is_member(peer, now)
    }

    /// The directory of `mesh` (`None`: members of an open relay that
    /// presented no credential), in no particular order.
    pub fn directory_of(&self, mesh: Option<&MeshId>) -> Vec<Member> {
        self.directory()
            .meshes
            .get(&mesh.cloned())
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of peers listed in all directories together.
    pub fn listed(&self) -> usize {
        self.directory().mesh_of.len()
    }
}

/// Serve the member protocol on `incoming` until it ends, with at most
/// `max_streams` streams at once; further streams are dropped unanswered
/// (a daemon says hello again later). Verdicts that need the swarm (close a
/// refused peer's connections, check an admitted peer is still connected)
/// go to `commands`.
pub(crate) async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    members: Arc<Members>,
    commands: mpsc::UnboundedSender<Command>,
    max_streams: usize,
) {
    let mut tasks = JoinSet::new();
    let mut flood_log = LogLimiter::new(Duration::from_secs(10));
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { return };
                if tasks.len() >= max_streams {
                    if let Some(suppressed) = flood_log.allow((), tokio::time::Instant::now()) {
                        tracing::warn!(
                            %peer,
                            max_streams,
                            suppressed,
                            "too many member streams at once; dropping one unanswered"
                        );
                    }
                    drop(stream);
                    continue;
                }
                tasks.spawn(serve_stream(peer, stream, members.clone(), commands.clone()));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// One member-protocol exchange with `peer`: read its `Hello`, answer.
async fn serve_stream(
    peer: PeerId,
    mut stream: Stream,
    members: Arc<Members>,
    commands: mpsc::UnboundedSender<Command>,
) {
    let verdict = match tokio::time::timeout(HELLO_TIMEOUT, wire::read_message(&mut stream)).await {
        Err(_) => {
            tracing::warn!(%peer, "no hello within {} s; closing the member stream", HELLO_TIMEOUT.as_secs());
            return;
        }
        Ok(Err(WireError::Io(error))) => {
            tracing::debug!(%peer, %error, "member stream ended before a hello");
            return;
        }
        Ok(Err(error)) => Err(error.to_string()),
        Ok(Ok(Message::Hello { credential, addrs })) => {
            members.hello(peer, credential, addrs, SystemTime::now())
        }
        Ok(Ok(_)) => Err("expected a Hello on the member protocol".to_string()),
    };
    match verdict {
        Ok(welcome) => {
            let mesh = welcome
                .mesh
                .as_ref()
                .map_or_else(|| "open".to_string(), |m| m.to_string());
            let listed = welcome.members.len();
            if welcome.new {
                tracing::info!(%peer, %mesh, others = listed, "member joined");
            } else {
                tracing::debug!(%peer, %mesh, others = listed, "member said hello again");
            }
            let message = Message::from(welcome);
            let sent = tokio::time::timeout(WRITE_TIMEOUT, async {
                wire::write_message(&mut stream, &message).await?;
                stream.close().await
            })
            .await;
            if let Ok(Err(error)) = &sent {
                tracing::debug!(%peer, %error, "sending the welcome failed");
            }
            // The peer may have disconnected while this hello was handled;
            // the swarm task, which sees connections close, sorts that out.
            let _ = commands.send(Command::Admitted(peer));
        }
        Err(reason) => {
            tracing::warn!(%peer, %reason, "refused");
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                wire::write_message(&mut stream, &Message::Refused(reason)).await?;
                stream.close().await?;
                // Let the peer read the refusal: wait until it closes.
                let mut buf = [0u8; 256];
                while stream.read(&mut buf).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
            let _ = commands.send(Command::Disconnect(peer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxymesh::membership::Authority;

    const HOUR: Duration = Duration::from_secs(3600);

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn addr(n: u16) -> Vec<Multiaddr> {
        vec![format!("/ip4/192.0.2.1/udp/{n}/quic-v1").parse().unwrap()]
    }

    fn peers(w: &Welcome) -> Vec<PeerId> {
        let mut p: Vec<PeerId> = w.members.iter().map(|m| m.peer).collect();
        p.sort();
        p
    }

    #[test]
    fn members_see_each_other_and_hello_is_idempotent() {
        let auth = Authority::generate();
        let now = SystemTime::now();
        let members = Members::new(Policy::Meshes(vec![auth.mesh_id()]), 16);
        let (a, b) = (peer(), peer());
        let ca = auth.admit(a, now, now + HOUR);
        let cb = auth.admit(b, now, now + HOUR);

        let w = members.hello(a, Some(ca.clone()), addr(1), now).unwrap();
        assert!(w.new);
        assert_eq!(w.mesh, Some(auth.mesh_id()));
        assert!(w.members.is_empty(), "nobody else yet");
        assert!(members.is_member(&a, now));

        let w = members.hello(b, Some(cb.clone()), addr(2), now).unwrap();
        assert_eq!(peers(&w), vec![a]);
        assert_eq!(w.members[0].addrs, addr(1));
        assert_eq!(w.members[0].credential, Some(ca.clone()));

        // A says hello again with new addresses: one entry, updated.
        let w = members.hello(a, Some(ca.clone()), addr(3), now).unwrap();
        assert!(!w.new);
        assert_eq!(peers(&w), vec![b]);
        let w = members.hello(b, Some(cb), addr(2), now).unwrap();
        assert_eq!(w.members.len(), 1);
        assert_eq!(w.members[0].addrs, addr(3));
        assert_eq!(members.listed(), 2);

        // A disconnects: gone from gate and directory.
        assert!(members.forget(&a));
        assert!(!members.is_member(&a, now));
        assert_eq!(members.directory_of(Some(&auth.mesh_id())).len(), 1);
        assert!(!members.forget(&a));
    }

    #[test]
    fn non_members_are_refused_and_leave_no_trace() {
        let auth = Authority::generate();
        let foreign = Authority::generate();
        let now = SystemTime::now();
        let members = Members::new(Policy::Meshes(vec![auth.mesh_id()]), 16);
        let p = peer();

        let no_cred = members.hello(p, None, addr(1), now).unwrap_err();
        assert!(no_cred.contains("no credential"), "{no_cred}");

        let other = members
            .hello(p, Some(auth.admit(peer(), now, now + HOUR)), addr(1), now)
            .unwrap_err();
        assert!(other.contains("issued for peer"), "{other}");

        let expired = members
            .hello(
                p,
                Some(auth.admit(p, now - 2 * HOUR, now - HOUR)),
                addr(1),
                now,
            )
            .unwrap_err();
        assert!(expired.contains("expired"), "{expired}");

        let wrong_mesh = members
            .hello(p, Some(foreign.admit(p, now, now + HOUR)), addr(1), now)
            .unwrap_err();
        assert!(wrong_mesh.contains("not served here"), "{wrong_mesh}");

        assert!(!members.is_member(&p, now));
        assert_eq!(members.listed(), 0);

        // A member that later presents a bad credential is dropped.
        members
            .hello(p, Some(auth.admit(p, now, now + HOUR)), addr(1), now)
            .unwrap();
        assert!(members.is_member(&p, now));
        members.hello(p, None, addr(1), now).unwrap_err();
        assert!(!members.is_member(&p, now));
        assert_eq!(members.listed(), 0);
    }

    #[test]
    fn meshes_are_kept_apart() {
        let (x, y) = (Authority::generate(), Authority::generate());
        let now = SystemTime::now();
        let members = Members::new(Policy::Meshes(vec![x.mesh_id(), y.mesh_id()]), 16);
        let (x1, x2, y1) = (peer(), peer(), peer());
        members
            .hello(x1, Some(x.admit(x1, now, now + HOUR)), addr(1), now)
            .unwrap();
        let w = members
            .hello(y1, Some(y.admit(y1, now, now + HOUR)), addr(2), now)
            .unwrap();
        assert!(w.members.is_empty(), "Y sees nobody of X: {w:?}");
        let w = members
            .hello(x2, Some(x.admit(x2, now, now + HOUR)), addr(3), now)
            .unwrap();
        assert_eq!(peers(&w), vec![x1]);
        assert_eq!(members.directory_of(Some(&y.mesh_id())).len(), 1);

        // A peer switching meshes moves from one directory to the other.
        let w = members
            .hello(x1, Some(y.admit(x1, now, now + HOUR)), addr(1), now)
            .unwrap();
        assert_eq!(peers(&w), vec![y1]);
        assert_eq!(members.directory_of(Some(&x.mesh_id())).len(), 1);
        assert_eq!(members.directory_of(Some(&y.mesh_id())).len(), 2);
    }

    #[test]
    fn expired_members_are_not_listed() {
        let auth = Authority::generate();
        let now = SystemTime::now();
        let members = Members::new(Policy::Meshes(vec![auth.mesh_id()]), 16);
        let (a, b) = (peer(), peer());
        members
            .hello(
                a,
                Some(auth.admit(a, now, now + Duration::from_secs(60))),
                addr(1),
                now,
            )
            .unwrap();
        let later = now + Duration::from_secs(120);
        let w = members
            .hello(b, Some(auth.admit(b, now, now + HOUR)), addr(2), later)
            .unwrap();
        assert!(w.members.is_empty(), "{w:?}");
        assert!(!members.is_member(&a, later));
        assert_eq!(members.listed(), 1);
    }

    #[test]
    fn a_full_directory_refuses_newcomers_but_not_returning_members() {
        let auth = Authority::generate();
        let now = SystemTime::now();
        let members = Members::new(Policy::Meshes(vec![auth.mesh_id()]), 2);
        let (a, b, c) = (peer(), peer(), peer());
        let cred = |p| Some(auth.admit(p, now, now + HOUR));
        members.hello(a, cred(a), addr(1), now).unwrap();
        members.hello(b, cred(b), addr(2), now).unwrap();
        let full = members.hello(c, cred(c), addr(3), now).unwrap_err();
        assert!(full.contains("full"), "{full}");
        assert!(
            !members.is_member(&c, now),
            "a refused peer gets no reservation"
        );
        members.hello(a, cred(a), addr(4), now).unwrap();
        members.forget(&b);
        members.hello(c, cred(c), addr(3), now).unwrap();
    }

    #[test]
    fn revocations_drop_members_and_reach_later_welcomes() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authority::generate();
        let foreign = Authority::generate();
        let now = SystemTime::now();
        let members = Members::new(Policy::Meshes(vec![auth.mesh_id()]), 16);
        let (a, b) = (peer(), peer());
        let cred = |p| Some(auth.admit(p, now, now + HOUR));
        members.hello(a, cred(a), addr(1), now).unwrap();
        members.hello(b, cred(b), addr(2), now).unwrap();

        let list = auth.revoke(dir.path(), &[a]).unwrap();
        assert_eq!(members.apply_revocations(&list).unwrap(), Some(vec![a]));
        assert_eq!(members.apply_revocations(&list).unwrap(), None, "not newer");
        assert!(!members.is_member(&a, now));
        let refused = members.hello(a, cred(a), addr(1), now).unwrap_err();
        assert!(refused.contains("revoked"), "{refused}");
        let w = members.hello(b, cred(b), addr(2), now).unwrap();
        assert!(w.members.is_empty());
        assert_eq!(w.revocations, Some(list));

        let other_dir = tempfile::tempdir().unwrap();
        let foreign_list = foreign.revoke(other_dir.path(), &[b]).unwrap();
        assert!(members.apply_revocations(&foreign_list).is_err());
        assert!(members.is_member(&b, now));
    }

    #[test]
    fn an_open_relay_serves_anyone() {
        let members = Members::new(Policy::Open, 16);
        let now = SystemTime::now();
        let (a, b) = (peer(), peer());
        assert!(members.is_member(&a, now), "even before hello");
        members.hello(a, None, addr(1), now).unwrap();
        let w = members.hello(b, None, addr(2), now).unwrap();
        assert_eq!(w.mesh, None);
        assert_eq!(peers(&w), vec![a]);
    }

    #[test]
    fn welcomes_stay_within_the_message_limit() {
        // An open relay stores whatever credential a peer shows (it only
        // uses sound ones to group peers by mesh), so one credential can
        // stand in for every member's (signing thousands is slow in debug);
        // issued for another peer, it groups them all as mesh-less.
        let auth = Authority::generate();
        let now = SystemTime::now();
        let cred = auth.admit(peer(), now, now + HOUR);
        let members = Members::new(Policy::Open, wire::MAX_MEMBERS);
        let many: Vec<Multiaddr> = (0..wire::MAX_ADDRS as u16)
            .map(|i| {
                let host = format!("site-{i}.{}.example.org", "long-label".repeat(20));
                format!("/dns4/{host}/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit")
                    .parse()
                    .unwrap()
            })
            .collect();
        // Enough members with the most addresses to overflow a welcome.
        let n = 1200;
        let mut last = None;
        for _ in 0..n {
            last = Some(
                members
                    .hello(PeerId::random(), Some(cred.clone()), many.clone(), now)
                    .unwrap(),
            );
        }
        let w = last.unwrap();
        assert_eq!(members.listed(), n);
        let everyone = Message::Welcome {
            members: members.directory_of(None),
            revocations: None,
        };
        assert!(
            everyone.encode().len() > wire::MAX_MESSAGE,
            "the test lists enough to overflow a welcome"
        );
        let listed = w.members.len();
        assert!(listed > 500 && listed < n - 1, "{listed}");
        let encoded = Message::from(w).encode();
        assert!(encoded.len() <= wire::MAX_MESSAGE, "{}", encoded.len());
        Message::decode(&encoded[4..]).unwrap();
    }
}
