//! The stable text form of [`ObjectName`], used in persisted metadata:
//! `native:<32 hex digits>` or `endpoint:<key>` (the key verbatim; it is
//! only ever stored inside JSON, never used as a file name).

use std::fmt;
use std::str::FromStr;

use super::ObjectName;

const NATIVE: &str = "native:";
const ENDPOINT: &str = "endpoint:";

/// A string that is not a valid [`ObjectName`] text form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed object name {0:?}: expected \"native:<hex id>\" or \"endpoint:<key>\"")]
pub struct BadObjectName(pub String);

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectName::Native(id) => write!(f, "{NATIVE}{id}"),
            ObjectName::Endpoint(key) => write!(f, "{ENDPOINT}{key}"),
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
        ];
        for n in names {
            let s = n.to_string();
            assert_eq!(s.parse::<ObjectName>().unwrap(), n, "{s:?}");
        }
        assert_eq!(ObjectName::Native(id).to_string(), format!("native:{id}"));
    }

    #[test]
    fn namespaces_do_not_collide() {
        let id = ObjectId::random();
        let native = ObjectName::Native(id);
        let endpoint = ObjectName::Endpoint(id.to_string());
        assert_ne!(native, endpoint);
        assert_ne!(native.to_string(), endpoint.to_string());
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
        ] {
            assert!(s.parse::<ObjectName>().is_err(), "{s:?} accepted");
        }
    }
}
