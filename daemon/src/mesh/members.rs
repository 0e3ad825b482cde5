//! The daemon's side of mesh membership (see [`proxymesh::membership`]).
//!
//! - [`serve`]: answers other daemons' `Hello`s on the member protocol:
//!   admits a peer whose credential holds (and then answers with our own
//!   credential and the newest revocation list), refuses and drops any other.
//! - [`hello`]: presents our credential to a relay or daemon and returns
//!   the members it vouches for, each verified here against our [`Gate`]:
//!   a relay's answer is never taken on trust. A daemon answers with its own
//!   credential, and is admitted to our gate if that holds.
//!
//! Nothing of this daemon (objects, discovery, forwarded ProxyStore
//! operations) is served to a peer until the gate admitted it; the fetch
//! server checks [`Gate::is_member`] on every stream.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{AsyncWriteExt, StreamExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use proxymesh::membership::wire::{read_message, write_message, Member, Message};
use proxymesh::membership::{wire, Credential, Gate, RevocationList};
use tokio::sync::{mpsc, Semaphore};

use super::MeshError;

/// The member protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new(wire::PROTOCOL);
/// Longest a member-protocol exchange may take.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most member-protocol streams answered at once.
const MAX_CONCURRENT: usize = 64;

/// Peers to drop, with the reason; the swarm task disconnects them.
pub type Dropper = mpsc::UnboundedSender<(PeerId, String)>;

/// What this daemon presents.
#[derive(Debug, Clone)]
pub struct Me {
    /// Our peer ID.
    pub peer: PeerId,
    /// Our credential (`None` in an open mesh).
    pub credential: Option<Credential>,
}

/// What a `Welcome` vouched for, after verification.
#[derive(Debug, Default)]
pub struct Welcomed {
    /// Members whose credentials hold here, with their addresses.
    pub members: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Entries refused (bad or foreign credentials), with the reason.
    pub rejected: Vec<(PeerId, String)>,
    /// A revocation list newer than ours, already applied: the members it
    /// revoked.
    pub revoked: Vec<PeerId>,
}

/// Answer inbound member-protocol streams until `incoming` ends.
pub async fn serve(
    mut incoming: libp2p_stream::IncomingStreams,
    gate: Arc<Gate>,
    me: Me,
    addrs: impl Fn() -> Vec<Multiaddr> + Send + Sync + 'static,
    dropper: Dropper,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let addrs = Arc::new(addrs);
    while let Some((peer, mut stream)) = incoming.next().await {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many member-protocol exchanges at once; dropping this one");
            continue;
        };
        let (gate, me, addrs, dropper) = (gate.clone(), me.clone(), addrs.clone(), dropper.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let answered = tokio::time::timeout(HELLO_TIMEOUT, async {
                let credential = match read_message(&mut stream).await {
                    Ok(Message::Hello { credential, .. }) => credential,
                    Ok(other) => {
                        return Err(Some(format!("expected Hello, got {other:?}")));
                    }
                    // The stream or its connection failed (a relayed
                    // connection closing for a punched one, say): the peer
                    // proved nothing, and did nothing wrong either; it says
                    // hello again on the connection it keeps.
                    Err(e @ wire::WireError::Io(_)) => {
                        tracing::debug!(%peer, error = %e, "a member-protocol stream failed before its hello");
                        return Err(None);
                    }
                    Err(e) => return Err(Some(e.to_string())),
                };
                match gate.admit(peer, credential.as_ref(), SystemTime::now()) {
                    Ok(m) => {
                        let revocations = m.mesh.as_ref().and_then(|mesh| gate.revocations(mesh));
                        let welcome = Message::Welcome {
                            members: vec![Member {
                                peer: me.peer,
                                credential: me.credential.clone(),
                                addrs: addrs(),
                            }],
                            revocations,
                        };
                        let _ = write_message(&mut stream, &welcome).await;
                        tracing::debug!(%peer, "admitted a member");
                        Ok(())
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        let _ = write_message(&mut stream, &Message::Refused(reason.clone())).await;
                        let _ = stream.close().await;
                        linger(&mut stream).await;
                        Err(Some(reason))
                    }
                }
            })
            .await
            .unwrap_or_else(|_| Err(Some("no Hello in time".into())));
            if let Err(Some(reason)) = answered {
                let _ = dropper.send((peer, format!("not a member of this mesh: {reason}")));
            }
        });
    }
}

/// Before dropping a refused peer: give it a moment to read our answer
/// (until it closes its side), so it learns why instead of seeing a reset.
pub async fn linger<S: futures::AsyncRead + Unpin>(stream: &mut S) {
    use futures::AsyncReadExt;
    let mut byte = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await;
}

/// Present our credential to `peer` and verify what it vouches for.
pub async fn hello(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    me: &Me,
    addrs: Vec<Multiaddr>,
    gate: &Gate,
) -> Result<Welcomed, MeshError> {
    let exchange = async {
        let mut stream =
            control
                .open_stream(peer, PROTOCOL)
                .await
                .map_err(|e| MeshError::Unreachable {
                    peer,
                    reason: super::error::open_failure("the member protocol", &e),
                })?;
        let protocol = |e: wire::WireError| MeshError::Protocol {
            peer,
            reason: e.to_string(),
        };
        let hello = Message::Hello {
            credential: me.credential.clone(),
            addrs,
        };
        write_message(&mut stream, &hello)
            .await
            .map_err(|e| protocol(e.into()))?;
        read_message(&mut stream).await.map_err(protocol)
    };
    let answer = tokio::time::timeout(HELLO_TIMEOUT, exchange)
        .await
        .map_err(|_| MeshError::TimedOut {
            peer,
            id: None,
            phase: "membership exchange",
            after: HELLO_TIMEOUT,
        })??;
    match answer {
        Message::Welcome {
            members,
            revocations,
        } => Ok(verify_welcome(
            gate,
            me.peer,
            peer,
            members,
            revocations.as_ref(),
        )),
        Message::Refused(reason) => Err(MeshError::Refused {
            peer,
            reason: format!("not admitted to the mesh: {reason}"),
        }),
        Message::Hello { .. } => Err(MeshError::Protocol {
            peer,
            reason: "answered Hello with Hello".into(),
        }),
    }
}

/// Check every member of a `Welcome` from `from` against `gate`
/// (revocations first, so a list that arrives with the members applies to
/// them). `from`'s own entry, if it holds, admits `from` to the gate: it
/// proved its membership on the connection it answered on.
pub fn verify_welcome(
    gate: &Gate,
    me: PeerId,
    from: PeerId,
    members: Vec<Member>,
    revocations: Option<&RevocationList>,
) -> Welcomed {
    let mut out = Welcomed::default();
    if let Some(list) = revocations {
        match gate.apply_revocations(list) {
            Ok(Some(revoked)) => {
                tracing::info!(
                    serial = list.serial(),
                    revoked = list.peers().len(),
                    "newer revocation list applied"
                );
                out.revoked = revoked;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring a revocation list"),
        }
    }
    let now = SystemTime::now();
    for m in members {
        if m.peer == me {
            continue;
        }
        let checked = if m.peer == from {
            gate.admit(m.peer, m.credential.as_ref(), now)
        } else {
            gate.check(m.peer, m.credential.as_ref(), now)
        };
        match checked {
            Ok(_) => out.members.push((m.peer, m.addrs)),
            Err(e) => out.rejected.push((m.peer, e.to_string())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxymesh::membership::{Authority, Policy};

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn welcomes_are_verified_entry_by_entry() {
        let (a, b) = (Authority::generate(), Authority::generate());
        let gate = Gate::new(Policy::Meshes(vec![a.mesh_id()]));
        let now = SystemTime::now();
        let (me, good, foreign, forger) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let addr: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap();
        let member = |peer, credential| Member {
            peer,
            credential,
            addrs: vec![addr.clone()],
        };
        let members = vec![
            member(me, Some(a.admit(me, now, now + HOUR))),
            member(good, Some(a.admit(good, now, now + HOUR))),
            member(foreign, Some(b.admit(foreign, now, now + HOUR))),
            // Someone else's credential under its own peer ID.
            member(forger, Some(a.admit(good, now, now + HOUR))),
            member(PeerId::random(), None),
        ];
        // From a relay: entries are checked, nobody is admitted.
        let relay = PeerId::random();
        let w = verify_welcome(&gate, me, relay, members.clone(), None);
        assert_eq!(w.members, vec![(good, vec![addr.clone()])]);
        assert_eq!(w.rejected.len(), 3);
        assert!(!gate.is_member(&good, now));

        // From a daemon: its own entry admits it; a forger's does not.
        verify_welcome(&gate, me, good, members.clone(), None);
        assert!(gate.is_member(&good, now));
        verify_welcome(&gate, me, forger, members.clone(), None);
        assert!(!gate.is_member(&forger, now));

        // A revocation list that comes along applies before the entries.
        let dir = tempfile::tempdir().unwrap();
        let list = a.revoke(dir.path(), &[good]).unwrap();
        let w = verify_welcome(&gate, me, relay, members.clone(), Some(&list));
        assert!(w.members.is_empty());
        assert_eq!(w.revoked, vec![good]);
        assert!(!gate.is_member(&good, now));
    }
}
