//! Object identities: [`ObjectId`] (128 random bits) and [`Key`] (where an
//! object lives), with the copy-pasteable *ticket* form of a key.
//!
//! A ticket is `pm1` followed by lowercase base32 (no padding) of a small
//! binary record: version, object ID, optional producer peer ID, optional
//! address hints, and a 4-byte BLAKE3 checksum that catches typos and
//! truncation.
//!
//! ```
//! use proxymesh::{Key, ObjectId};
//! let key = Key::local(ObjectId::random());
//! let ticket = key.to_string();
//! assert!(ticket.starts_with("pm1"));
//! assert_eq!(ticket.parse::<Key>().unwrap(), key);
//! ```

use std::fmt;
use std::str::FromStr;

use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of every ticket string.
pub const TICKET_PREFIX: &str = "pm1";
const TICKET_VERSION: u8 = 1;
const CHECKSUM_LEN: usize = 4;
const MAX_ADDRS: usize = 16;

/// Why a key, object ID or ticket string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An object ID was not 32 hex digits.
    #[error("malformed object ID {0:?}: expected 32 hex digits")]
    BadObjectId(String),
    /// A ticket did not start with `pm1`.
    #[error("malformed ticket: it must start with \"{TICKET_PREFIX}\" (got {0:?})")]
    BadPrefix(String),
    /// A ticket's body was not valid base32.
    #[error("malformed ticket: not valid base32 after \"{TICKET_PREFIX}\"")]
    BadEncoding,
    /// A ticket's checksum did not match: a typo or a truncated copy.
    #[error("malformed ticket: checksum mismatch (was it copied whole?)")]
    BadChecksum,
    /// A ticket's contents could not be decoded.
    #[error("malformed ticket: {0}")]
    BadBody(&'static str),
    /// A ticket came from a newer proxymesh.
    #[error("unsupported ticket version {0}; this proxymesh understands version {TICKET_VERSION}")]
    UnsupportedVersion(u8),
}

/// A 128-bit random object identifier. Unguessable: knowing one ID says
/// nothing about any other.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 16]);

impl ObjectId {
    /// A fresh ID from the operating system's CSPRNG.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

impl FromStr for ObjectId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadObjectId(s.chars().take(64).collect());
        if s.len() != 32 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl Serialize for ObjectId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ObjectId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where an object lives: its ID, the peer ID of the daemon that holds it
/// (absent for in-process and shared-directory connectors), and address hints
/// for reaching that daemon (relay addresses, filled in by the mesh).
///
/// `Display`/`FromStr` and serde use the ticket form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The object's ID.
    pub id: ObjectId,
    /// The producer daemon's peer ID, for daemon-held objects.
    pub peer: Option<PeerId>,
    /// Addresses at which the producer can be reached (e.g. relay circuits).
    pub addrs: Vec<Multiaddr>,
}

impl Key {
    /// A key for an object not held by a daemon (in-process, shared directory).
    pub fn local(id: ObjectId) -> Self {
        Self {
            id,
            peer: None,
            addrs: Vec::new(),
        }
    }

    /// A key for an object held by the daemon `peer`.
    pub fn on_peer(id: ObjectId, peer: PeerId) -> Self {
        Self {
            id,
            peer: Some(peer),
            addrs: Vec::new(),
        }
    }

    /// The ticket string (same as `to_string()`).
    pub fn ticket(&self) -> String {
        self.to_string()
    }

    fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(TICKET_VERSION);
        out.extend_from_slice(&self.id.0);
        match &self.peer {
            Some(p) => {
                let bytes = p.to_bytes();
                out.push(bytes.len() as u8);
                out.extend_from_slice(&bytes);
            }
            None => out.push(0),
        }
        let addrs = &self.addrs[..self.addrs.len().min(MAX_ADDRS)];
        out.push(addrs.len() as u8);
        for a in addrs {
            let bytes = a.to_vec();
            out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
        out
    }

    fn decode_body(raw: &[u8]) -> Result<Self, KeyError> {
        if raw.len() < 1 + 16 + 2 + CHECKSUM_LEN {
            return Err(KeyError::BadBody("too short"));
        }
        let (body, sum) = raw.split_at(raw.len() - CHECKSUM_LEN);
        if blake3::hash(body).as_bytes()[..CHECKSUM_LEN] != *sum {
            return Err(KeyError::BadChecksum);
        }
        let mut r = Reader(body);
        let version = r.u8()?;
        if version != TICKET_VERSION {
            return Err(KeyError::UnsupportedVersion(version));
        }
        let id = ObjectId(r.take(16)?.try_into().expect("16 bytes"));
        let peer_len = r.u8()? as usize;
        let peer = if peer_len == 0 {
            None
        } else {
            Some(
                PeerId::from_bytes(r.take(peer_len)?)
                    .map_err(|_| KeyError::BadBody("bad peer ID"))?,
            )
        };
        let n = r.u8()? as usize;
        if n > MAX_ADDRS {
            return Err(KeyError::BadBody("too many addresses"));
        }
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let len = u16::from_be_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
            let a = Multiaddr::try_from(r.take(len)?.to_vec())
                .map_err(|_| KeyError::BadBody("bad address"))?;
            addrs.push(a);
        }
        if !r.0.is_empty() {
            return Err(KeyError::BadBody("trailing bytes"));
        }
        Ok(Self { id, peer, addrs })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeyError> {
        if self.0.len() < n {
            return Err(KeyError::BadBody("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, KeyError> {
        Ok(self.take(1)?[0])
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = data_encoding::BASE32_NOPAD.encode(&self.encode_body());
        write!(f, "{TICKET_PREFIX}{}", body.to_ascii_lowercase())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Key");
        d.field("id", &format_args!("{}", self.id));
        if let Some(p) = &self.peer {
            d.field("peer", &format_args!("{p}"));
        }
        if !self.addrs.is_empty() {
            d.field("addrs", &self.addrs);
        }
        d.finish()
    }
}

impl FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        let Some(body) = s.strip_prefix(TICKET_PREFIX) else {
            return Err(KeyError::BadPrefix(s.chars().take(16).collect()));
        };
        let raw = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| KeyError::BadEncoding)?;
        Self::decode_body(&raw)
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p_identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn object_id_roundtrip_and_rejects_garbage() {
        let id = ObjectId::random();
        assert_eq!(id.to_string().len(), 32);
        assert_eq!(id.to_string().parse::<ObjectId>().unwrap(), id);
        for bad in ["", "xyz", &"g".repeat(32), &"a".repeat(31), &"é".repeat(16)] {
            assert!(bad.parse::<ObjectId>().is_err(), "{bad:?} accepted");
        }
        assert_ne!(ObjectId::random(), ObjectId::random());
    }

    #[test]
    fn ticket_roundtrip_with_peer_and_addrs() {
        let mut key = Key::on_peer(ObjectId::random(), peer());
        key.addrs
            .push("/ip4/10.0.0.1/udp/4001/quic-v1".parse().unwrap());
        let t = key.ticket();
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric()), "{t}");
        assert_eq!(t.parse::<Key>().unwrap(), key);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), key);
    }

    #[test]
    fn malformed_tickets_are_rejected_clearly() {
        let t = Key::on_peer(ObjectId::random(), peer()).ticket();
        assert!(matches!("xx".parse::<Key>(), Err(KeyError::BadPrefix(_))));
        assert!(matches!(
            "pm1!!!".parse::<Key>(),
            Err(KeyError::BadEncoding)
        ));
        // Truncation and single-character typos are caught by the checksum
        // (or the decoder), never silently accepted.
        let truncated = &t[..t.len() - 3];
        assert!(truncated.parse::<Key>().is_err());
        let mut typo = t.clone().into_bytes();
        let i = typo.len() / 2;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert!(typo.parse::<Key>().is_err());
        // Upper case copies (some terminals/shells) still parse.
        assert!(t
            .to_ascii_uppercase()
            .replacen("PM1", "pm1", 1)
            .parse::<Key>()
            .is_ok());
    }
}
