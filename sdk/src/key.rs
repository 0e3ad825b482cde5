//! Object identities: [`ObjectId`] (128 random bits) and [`Key`] (where an
//! object lives), with the copy-pasteable *ticket* form of a key.
//!
//! A ticket is `pm1` followed by lowercase base32 (no padding) of a small
//! binary record: version, object ID, optional producer peer ID, optional
//! address hints, optionally the object's BLAKE3 (a consumer checks the bytes
//! against it), and a 4-byte BLAKE3 checksum that catches typos and
//! truncation.
//!
//! A ticket lets its holder **read** (get, exists). Evicting or overwriting
//! another daemon's object needs the key's [`OwnerCap`], which the producing
//! daemon derives from a secret of its own, so a read ticket cannot be turned
//! into it. A key that carries it prints as a plain ticket; only
//! [`Key::owner_ticket`] (`pmo1…`) and serialization carry the capability.
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
/// Prefix of a ticket that also carries the owner capability.
pub const OWNER_TICKET_PREFIX: &str = "pmo1";
/// Tickets without hash or owner capability (byte-identical to the first format).
const TICKET_VERSION: u8 = 1;
/// Tickets with a flags byte: bit 0 a BLAKE3 hash follows, bit 1 an owner capability.
const TICKET_VERSION_2: u8 = 2;
const FLAG_HASH: u8 = 1;
const FLAG_OWNER: u8 = 2;
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
    #[error("unsupported ticket version {0}; this proxymesh understands versions {TICKET_VERSION} and {TICKET_VERSION_2}")]
    UnsupportedVersion(u8),
    /// An owner capability was not 32 hex digits.
    #[error("malformed owner capability: expected 32 hex digits")]
    BadOwnerCap,
}

/// The capability to evict or overwrite an object: 128 bits the producing
/// daemon derives from the object ID and a secret it never shares. Tickets
/// (read-only) never contain it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerCap(pub [u8; 16]);

impl fmt::Display for OwnerCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for OwnerCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret in logs.
        f.write_str("OwnerCap(..)")
    }
}

impl FromStr for OwnerCap {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        s.parse::<ObjectId>()
            .map(|id| Self(id.0))
            .map_err(|_| KeyError::BadOwnerCap)
    }
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
/// (absent for in-process and shared-directory connectors), address hints
/// for reaching that daemon (relay addresses, filled in by the mesh), and
/// optionally the object's BLAKE3 and the owner capability.
///
/// `Display` gives the read-only ticket (`pm1…`), whatever the key carries;
/// `FromStr` reads both forms; serde keeps the owner capability when present
/// (`pmo1…`), so an [`OwnedProxy`](crate::OwnedProxy) can still evict
/// after travelling. Use [`Key::read_only`] before handing a key to others.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The object's ID.
    pub id: ObjectId,
    /// The producer daemon's peer ID, for daemon-held objects.
    pub peer: Option<PeerId>,
    /// Addresses at which the producer can be reached (e.g. relay circuits).
    pub addrs: Vec<Multiaddr>,
    /// BLAKE3 of the object's bytes, when known at key creation: whoever
    /// fetches the object checks the bytes against it.
    pub hash: Option<[u8; 32]>,
    /// The capability to evict or overwrite (the producer's, never in a ticket).
    pub owner: Option<OwnerCap>,
}

impl Key {
    /// A key for an object not held by a daemon (in-process, shared directory).
    pub fn local(id: ObjectId) -> Self {
        Self {
            id,
            peer: None,
            addrs: Vec::new(),
            hash: None,
            owner: None,
        }
    }

    /// A key for an object held by the daemon `peer`.
    pub fn on_peer(id: ObjectId, peer: PeerId) -> Self {
        Self {
            id,
            peer: Some(peer),
            addrs: Vec::new(),
            hash: None,
            owner: None,
        }
    }

    /// The read-only ticket string (same as `to_string()`).
    pub fn ticket(&self) -> String {
        self.to_string()
    }

    /// The ticket that also carries the owner capability (`pmo1…`), if this
    /// key has it. Whoever holds it may evict and overwrite: keep it.
    pub fn owner_ticket(&self) -> Option<String> {
        self.owner?;
        let body = data_encoding::BASE32_NOPAD.encode(&self.encode_body(true));
        Some(format!(
            "{OWNER_TICKET_PREFIX}{}",
            body.to_ascii_lowercase()
        ))
    }

    /// This key without the owner capability: what to give readers.
    pub fn read_only(&self) -> Key {
        Key {
            owner: None,
            ..self.clone()
        }
    }

    /// The expected BLAKE3 of the bytes, if the key carries it.
    pub fn blake3(&self) -> Option<blake3::Hash> {
        self.hash.map(blake3::Hash::from_bytes)
    }

    fn encode_body(&self, with_owner: bool) -> Vec<u8> {
        let owner = self.owner.filter(|_| with_owner);
        let mut flags = 0;
        if self.hash.is_some() {
            flags |= FLAG_HASH;
        }
        if owner.is_some() {
            flags |= FLAG_OWNER;
        }
        let mut out = Vec::with_capacity(96);
        out.push(if flags == 0 {
            TICKET_VERSION
        } else {
            TICKET_VERSION_2
        });
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
        if flags != 0 {
            out.push(flags);
            if let Some(h) = &self.hash {
                out.extend_from_slice(h);
            }
            if let Some(o) = owner {
                out.extend_from_slice(&o.0);
            }
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
        if version != TICKET_VERSION && version != TICKET_VERSION_2 {
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
        let (mut hash, mut owner) = (None, None);
        if version == TICKET_VERSION_2 {
            let flags = r.u8()?;
            if flags & !(FLAG_HASH | FLAG_OWNER) != 0 {
                return Err(KeyError::BadBody("unknown flags"));
            }
            if flags & FLAG_HASH != 0 {
                hash = Some(r.take(32)?.try_into().expect("32 bytes"));
            }
            if flags & FLAG_OWNER != 0 {
                owner = Some(OwnerCap(r.take(16)?.try_into().expect("16 bytes")));
            }
        }
        if !r.0.is_empty() {
            return Err(KeyError::BadBody("trailing bytes"));
        }
        Ok(Self {
            id,
            peer,
            addrs,
            hash,
            owner,
        })
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
        let body = data_encoding::BASE32_NOPAD.encode(&self.encode_body(false));
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
        if let Some(h) = self.blake3() {
            d.field("blake3", &format_args!("{h}"));
        }
        if self.owner.is_some() {
            d.field("owner", &"..");
        }
        d.finish()
    }
}

impl FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        let Some(body) = s
            .strip_prefix(OWNER_TICKET_PREFIX)
            .or_else(|| s.strip_prefix(TICKET_PREFIX))
        else {
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
        match self.owner_ticket() {
            Some(t) => s.serialize_str(&t),
            None => s.collect_str(self),
        }
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
    fn hashes_travel_in_tickets_owner_capabilities_only_in_owner_tickets() {
        let mut key = Key::on_peer(ObjectId::random(), peer());
        let plain = key.ticket();
        key.hash = Some(*blake3::hash(b"bytes").as_bytes());
        let with_hash = key.ticket();
        assert_ne!(with_hash, plain);
        assert_eq!(with_hash.parse::<Key>().unwrap(), key);
        // A v1 ticket (no hash, no owner) is unchanged, and still parses.
        assert_eq!(plain.parse::<Key>().unwrap().hash, None);

        key.owner = Some(OwnerCap([7; 16]));
        // Printing never shows the capability...
        assert_eq!(key.to_string(), with_hash);
        assert_eq!(key.read_only().owner, None);
        assert!(!format!("{key:?}").contains("0707"));
        // ...the owner ticket and serde carry it.
        let owner = key.owner_ticket().unwrap();
        assert!(owner.starts_with(OWNER_TICKET_PREFIX));
        assert_eq!(owner.parse::<Key>().unwrap(), key);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), key);
        let json = serde_json::to_string(&key.read_only()).unwrap();
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap().owner, None);
        // A read ticket cannot be turned into an owner ticket by relabelling.
        let relabelled = with_hash.replacen(TICKET_PREFIX, OWNER_TICKET_PREFIX, 1);
        assert_eq!(relabelled.parse::<Key>().unwrap().owner, None);
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
