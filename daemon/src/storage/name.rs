//! The stable text form of [`ObjectName`], used in persisted metadata:
//! `native:<32 hex digits>`, `endpoint:<key>` (the key verbatim; it is
//! only ever stored inside JSON, never used as a file name) or
//! `remote:<peer id>/<32 hex digits>` (a cached copy of another daemon's
//! object) or `staging:<32 hex digits>` (a body being forwarded).

use std::fmt;
use std::str::FromStr;

use super::ObjectName;

const NATIVE: &str = "native:";
const ENDPOINT: &str = "endpoint:";
const REMOTE: &str = "remote:";
const STAGING: &str = "staging:";

/// A string that is not a valid [`ObjectName`] text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed object name {0:?}: expected \"native:<hex id>\", \"endpoint:<key>\", \"remote:<peer id>/<hex id>\" or \"staging:<hex id>\""
)]
pub struct BadObjectName(pub String);

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectName::Native(id) => write!(f, "{NATIVE}{id}"),
            ObjectName::Endpoint(key) => write!(f, "{ENDPOINT}{key}"),
            ObjectName::Remote { peer, id } => write!(f, "{REMOTE}{peer}/{id}"),
            ObjectName::Staging(id) => write!(f, "{STAGING}{id}"),
        }
    }
}

impl FromStr for ObjectName {
    type Err = BadObjectName;
    fn from_str(s: &str) -> Result<Self, BadObjectName> {
        let bad = || BadObjectName(s.chars().take(80).collect());
        if let Some(hex) = s.strip_prefix(NATIVE) {
            hex.parse().map(ObjectName::Native).map_err(|_| bad())
        } else if let Some(key) = s.strip_prefix(ENDPOINT) {
            Ok(ObjectName::Endpoint(key.to_owned()))
        } else if let Some(hex) = s.strip_prefix(STAGING) {
            hex.parse().map(ObjectName::Staging).map_err(|_| bad())
        } else if let Some(rest) = s.strip_prefix(REMOTE) {
            let (peer, hex) = rest.split_once('/').ok_or_else(bad)?;
            Ok(ObjectName::Remote {
                peer: peer.parse().map_err(|_| bad())?,
                id: hex.parse().map_err(|_| bad())?,
            })
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxymesh::ObjectId;

    #[test]
    fn text_form_roundtrips() {
        let id = ObjectId::random();
        let names = [
            ObjectName::Native(id),
            ObjectName::Endpoint("plain".into()),
            ObjectName::Endpoint(format!("native:{id}")),
            ObjectName::Endpoint("../../etc/passwd\n\0 ünïcode:".into()),
            ObjectName::Endpoint(format!("remote:{}/{id}", peer())),
            ObjectName::Remote { peer: peer(), id },
            ObjectName::Staging(id),
            ObjectName::Endpoint(format!("staging:{id}")),
        ];
        for n in names {
            let s = n.to_string();
            assert_eq!(s.parse::<ObjectName>().unwrap(), n, "{s:?}");
        }
        assert_eq!(ObjectName::Native(id).to_string(), format!("native:{id}"));
        let p = peer();
        assert_eq!(
            ObjectName::Remote { peer: p, id }.to_string(),
            format!("remote:{p}/{id}")
        );
    }

    fn peer() -> libp2p::PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn namespaces_do_not_collide() {
        let id = ObjectId::random();
        let native = ObjectName::Native(id);
        let endpoint = ObjectName::Endpoint(id.to_string());
        assert_ne!(native, endpoint);
        assert_ne!(native.to_string(), endpoint.to_string());
        let remote = ObjectName::Remote { peer: peer(), id };
        assert_ne!(remote, native);
        assert_ne!(remote.to_string(), native.to_string());
    }

    #[test]
    fn garbage_is_rejected() {
        for s in [
            "",
            "native:",
            "native:xyz",
            "Native:00",
            "endpoint",
            "foo:bar",
            "remote:",
            "remote:nopeer/00",
            "remote:12D3KooWxyz",
            "staging:",
            "staging:xyz",
        ] {
            assert!(s.parse::<ObjectName>().is_err(), "{s:?} accepted");
        }
    }
}
