//! Who may do what to which object: the one authorization table behind
//! every door. Pure (no sockets, no storage), so the whole table is tested
//! below.
//!
//! | caller | read | write a native object | write a ProxyStore key | evict a native object | evict a ProxyStore key |
//! |---|---|---|---|---|---|
//! | local user, object here | yes | yes | yes | yes | yes |
//! | local user, object at a peer | yes (fetched) | no: put at your own daemon | yes (forwarded; the peer applies its quota) | forwarded; the peer checks the owner capability | forwarded |
//! | member, object here | yes | no | within its quota, its own keys only | with the owner capability | yes (ProxyStore's contract: the key is the capability) |
//! | member, object elsewhere | no: a daemon acts only on what it holds | no | no | no | no |
//!
//! Non-members never reach this table: the membership gate drops them first.

use libp2p::PeerId;

use crate::mesh::protocol::RemoteName;

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The daemon's own user (or the API group) through the local API,
    /// already identified by the kernel: the owner of everything this
    /// daemon stores.
    Local,
    /// Another daemon, proven a member of the mesh, through the fetch
    /// protocol.
    Member(PeerId),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Local => f.write_str("the local user"),
            Caller::Member(p) => write!(f, "member {p}"),
        }
    }
}

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Get, exists, head.
    Read,
    /// Create or replace.
    Write,
    /// Remove.
    Evict,
}

/// Whether the object is held by the deciding daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// In this daemon's store.
    Here,
    /// At another daemon of the mesh.
    Peer,
}

/// A permission, possibly with a condition the service checks next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Go ahead.
    Yes,
    /// Go ahead if the member writes only keys it wrote itself (or new
    /// ones) and stays within its write quota.
    WithinQuota(PeerId),
    /// Go ahead if the request carries the object's owner capability.
    IfOwner,
}

/// A refusal, with the sentence the caller reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller may not do this.
    Forbidden(String),
    /// The request names the wrong daemon for this operation.
    Misdirected(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Forbidden(s) | Refusal::Misdirected(s) => f.write_str(s),
        }
    }
}

/// Decide whether `caller` may perform `action` on `name`, held `at`.
pub fn authorize(
    caller: Caller,
    action: Action,
    name: &RemoteName,
    at: Where,
) -> Result<Grant, Refusal> {
    use Action::*;
    let native = matches!(name, RemoteName::Native(_));
    match (caller, at) {
        (Caller::Local, Where::Peer) if action == Write && native => Err(Refusal::Misdirected(
            "this key names another daemon; put objects at your own daemon and share the key"
                .into(),
        )),
        // The local user owns this daemon; at a peer, the peer decides again.
        (Caller::Local, _) => Ok(Grant::Yes),
        (Caller::Member(_), Where::Peer) => Err(Refusal::Forbidden(
            "a daemon serves only the objects it holds; it does not act on other sites for a peer"
                .into(),
        )),
        // Our copies of other daemons' objects: members read them (as they
        // may read the original); only this daemon changes its cache.
        (Caller::Member(_), Where::Here) if matches!(name, RemoteName::Copy { .. }) => match action
        {
            Read => Ok(Grant::Yes),
            Write | Evict => Err(Refusal::Forbidden(
                "a daemon's copies of other daemons' objects are read-only to members".into(),
            )),
        },
        (Caller::Member(_), Where::Here) => match action {
            Read => Ok(Grant::Yes),
            Write if native => Err(Refusal::Forbidden(
                "only ProxyStore endpoint keys can be stored by another daemon".into(),
            )),
            Write => match caller {
                Caller::Member(peer) => Ok(Grant::WithinQuota(peer)),
                Caller::Local => unreachable!("matched above"),
            },
            Evict if native => Ok(Grant::IfOwner),
            Evict => Ok(Grant::Yes),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxymesh::ObjectId;

    #[test]
    fn the_whole_table() {
        let peer = PeerId::random();
        let native = RemoteName::Native(ObjectId::random());
        let key = RemoteName::Endpoint("k".into());
        let member = Caller::Member(peer);
        let forbidden = |r: Result<Grant, Refusal>| matches!(r, Err(Refusal::Forbidden(_)));
        use Action::*;
        use Where::*;

        // The local user: everything, except writing a native object at a peer.
        for action in [Read, Write, Evict] {
            for name in [&native, &key] {
                assert_eq!(authorize(Caller::Local, action, name, Here), Ok(Grant::Yes));
            }
        }
        assert_eq!(
            authorize(Caller::Local, Read, &native, Peer),
            Ok(Grant::Yes)
        );
        assert_eq!(
            authorize(Caller::Local, Evict, &native, Peer),
            Ok(Grant::Yes)
        );
        assert_eq!(authorize(Caller::Local, Write, &key, Peer), Ok(Grant::Yes));
        assert_eq!(authorize(Caller::Local, Evict, &key, Peer), Ok(Grant::Yes));
        assert!(matches!(
            authorize(Caller::Local, Write, &native, Peer),
            Err(Refusal::Misdirected(m)) if m.contains("your own daemon")
        ));

        // A member: reads here; writes only ProxyStore keys, within quota;
        // evicts native objects only as their owner.
        assert_eq!(authorize(member, Read, &native, Here), Ok(Grant::Yes));
        assert_eq!(authorize(member, Read, &key, Here), Ok(Grant::Yes));
        assert!(forbidden(authorize(member, Write, &native, Here)));
        assert_eq!(
            authorize(member, Write, &key, Here),
            Ok(Grant::WithinQuota(peer))
        );
        assert_eq!(authorize(member, Evict, &native, Here), Ok(Grant::IfOwner));
        assert_eq!(authorize(member, Evict, &key, Here), Ok(Grant::Yes));
        // Our copies of other daemons' objects: read-only to members.
        let copy = RemoteName::Copy {
            producer: PeerId::random(),
            id: ObjectId::random(),
        };
        assert_eq!(authorize(member, Read, &copy, Here), Ok(Grant::Yes));
        assert!(forbidden(authorize(member, Write, &copy, Here)));
        assert!(forbidden(authorize(member, Evict, &copy, Here)));

        // A member never makes this daemon act on another site.
        for action in [Read, Write, Evict] {
            for name in [&native, &key] {
                assert!(forbidden(authorize(member, action, name, Peer)));
            }
        }
    }
}
