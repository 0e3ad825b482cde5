//! Mesh membership: who may join a mesh, and how every party checks it.
//!
//! A mesh has an **authority**: an Ed25519 key that its operator keeps
//! offline ([`Authority`], created by `proxymesh mesh init DIR`). The
//! authority's public key *is* the mesh's identity ([`MeshId`], `pmm1…`).
//! The authority admits a site by signing a [`Credential`] (`pmc1…`) for that
//! daemon's peer ID, valid until an expiry; it withdraws one early with a
//! signed [`RevocationList`] (`pmr1…`) that relays hand to every member
//! (a list with a higher serial replaces a lower one).
//!
//! Membership lives above the transport (libp2p's pre-shared-key `pnet` is
//! TCP-only): right after connecting, a daemon presents its credential on
//! the member protocol ([`wire`]); relays and daemons keep a [`Gate`] of the
//! peers that proved membership and serve nothing else to anyone else.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use proxymesh::membership::{Authority, Credential, Gate, Policy};
//!
//! let authority = Authority::generate();
//! let site = libp2p_identity::Keypair::generate_ed25519().public().to_peer_id();
//! let now = SystemTime::now();
//! let cred = authority.admit(site, now, now + Duration::from_secs(3600));
//! let text = cred.to_string();                       // pmc1…, copy-pasteable
//! let cred: Credential = text.parse().unwrap();
//!
//! let gate = Gate::new(Policy::Meshes(vec![authority.mesh_id()]));
//! assert!(gate.admit(site, Some(&cred), now).is_ok());
//! assert!(gate.is_member(&site, now));
//! // Another peer cannot use the same credential.
//! let other = libp2p_identity::PeerId::random();
//! assert!(gate.admit(other, Some(&cred), now).is_err());
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p_identity::{ed25519, Keypair, PeerId};

mod codec;
pub mod wire;

use codec::{decode_text, encode_text, Reader};

/// Prefix of a mesh ID string.
pub const MESH_ID_PREFIX: &str = "pmm1";
/// Prefix of a credential string.
pub const CREDENTIAL_PREFIX: &str = "pmc1";
/// Prefix of a revocation-list string.
pub const REVOCATIONS_PREFIX: &str = "pmr1";

const CREDENTIAL_VERSION: u8 = 1;
const REVOCATIONS_VERSION: u8 = 1;
const CREDENTIAL_DOMAIN: &[u8] = b"proxymesh credential v1\0";
const REVOCATIONS_DOMAIN: &[u8] = b"proxymesh revocations v1\0";
/// More revoked peers than this in one list is refused (bounds memory).
pub const MAX_REVOKED: usize = 100_000;

/// File names inside an authority directory.
const AUTHORITY_KEY_FILE: &str = "authority.key";
const MESH_ID_FILE: &str = "mesh.id";
const REVOCATIONS_FILE: &str = "revocations";

/// Why a mesh ID, credential or revocation list was rejected, or a peer refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Not the expected `pmm1`/`pmc1`/`pmr1` string.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// A mesh ID, a credential or a revocation list.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The signature does not verify: forged, or altered after signing.
    #[error("{what} has an invalid signature (forged, or altered after it was issued)")]
    BadSignature {
        /// A credential or a revocation list.
        what: &'static str,
    },
    /// No credential was presented where one is required.
    #[error("no credential presented; this {0} serves members of its mesh only")]
    NoCredential(&'static str),
    /// The credential was issued for another peer.
    #[error("credential was issued for peer {issued_for}, not {peer}")]
    WrongPeer {
        /// The peer named in the credential.
        issued_for: PeerId,
        /// The peer that presented it.
        peer: PeerId,
    },
    /// The credential belongs to a mesh this party does not serve.
    #[error("credential is for mesh {0}, which is not served here")]
    WrongMesh(MeshId),
    /// The credential has expired.
    #[error("credential of peer {peer} expired {ago:?} ago; the mesh operator issues a new one with `proxymesh mesh admit`")]
    Expired {
        /// Its peer.
        peer: PeerId,
        /// How long ago.
        ago: Duration,
    },
    /// The peer's membership was revoked by the authority.
    #[error("peer {0} was revoked by the mesh authority")]
    Revoked(PeerId),
}

fn malformed(what: &'static str, reason: impl Into<String>) -> MembershipError {
    MembershipError::Malformed {
        what,
        reason: reason.into(),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn from_unix_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// A mesh's identity: its authority's public key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MeshId(ed25519::PublicKey);

impl MeshId {
    /// The authority's public key.
    pub fn public_key(&self) -> &ed25519::PublicKey {
        &self.0
    }

    fn from_bytes(what: &'static str, bytes: &[u8]) -> Result<Self, MembershipError> {
        ed25519::PublicKey::try_from_bytes(bytes)
            .map(Self)
            .map_err(|_| malformed(what, "bad mesh key"))
    }

    /// A short form for logs (the first characters of the mesh ID).
    pub fn short(&self) -> String {
        self.to_string().chars().take(16).collect()
    }
}

impl fmt::Display for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_text(MESH_ID_PREFIX, &self.0.to_bytes()))
    }
}

impl fmt::Debug for MeshId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshId({self})")
    }
}

impl FromStr for MeshId {
    type Err = MembershipError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = decode_text("mesh ID", MESH_ID_PREFIX, s)?;
        Self::from_bytes("mesh ID", &raw)
    }
}

/// A mesh authority: the key that admits sites. Keep it offline; only its
/// [`MeshId`], credentials and revocation lists leave the operator's hands.
pub struct Authority {
    keypair: ed25519::Keypair,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("mesh_id", &self.mesh_id())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new authority key (in memory; see [`Authority::init`] to keep one).
    pub fn generate() -> Self {
        Self {
            keypair: ed25519::Keypair::generate(),
        }
    }

    /// Create an authority in directory `dir` (made 0700; key file 0600).
    /// Refuses if `dir` already holds one: a new key would orphan every
    /// credential of the old mesh.
    pub fn init(dir: &Path) -> Result<Self, String> {
        let key_path = dir.join(AUTHORITY_KEY_FILE);
        if key_path.exists() {
            return Err(format!(
                "{} already holds a mesh authority ({}); refusing to replace it",
                dir.display(),
                key_path.display()
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        set_mode(dir, 0o700)?;
        let authority = Self::generate();
        let bytes = Keypair::from(authority.keypair.clone())
            .to_protobuf_encoding()
            .map_err(|e| format!("cannot encode the authority key: {e}"))?;
        crate::keyfile::write_atomic(&key_path, &bytes, 0o600)?;
        crate::keyfile::write_atomic(
            &dir.join(MESH_ID_FILE),
            format!("{}\n", authority.mesh_id()).as_bytes(),
            0o644,
        )?;
        Ok(authority)
    }

    /// Load the authority kept in `dir`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let key_path = dir.join(AUTHORITY_KEY_FILE);
        let bytes = std::fs::read(&key_path).map_err(|e| {
            format!(
                "cannot read the mesh authority key {}: {e} (create one with `proxymesh mesh init {}`)",
                key_path.display(),
                dir.display()
            )
        })?;
        let keypair = Keypair::from_protobuf_encoding(&bytes)
            .ok()
            .and_then(|k| k.try_into_ed25519().ok())
            .ok_or_else(|| format!("the mesh authority key {} is damaged", key_path.display()))?;
        Ok(Self { keypair })
    }

    /// The mesh this authority governs.
    pub fn mesh_id(&self) -> MeshId {
        MeshId(self.keypair.public())
    }

    /// A credential admitting `peer` from `now` until `expires`.
    pub fn admit(&self, peer: PeerId, now: SystemTime, expires: SystemTime) -> Credential {
        let mut c = Credential {
            mesh: self.mesh_id(),
            peer,
            issued: unix_secs(now),
            expires: unix_secs(expires),
            signature: [0; 64],
        };
        let sig = self.keypair.sign(&c.signed_bytes());
        c.signature.copy_from_slice(&sig);
        c
    }

    /// The revocation list in `dir` (an empty one at serial 0 if none yet).
    pub fn revocations(&self, dir: &Path) -> Result<RevocationList, String> {
        let path = dir.join(REVOCATIONS_FILE);
        if !path.exists() {
            return Ok(self.sign_revocations(0, Vec::new(), SystemTime::now()));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let list: RevocationList = text
            .parse()
            .map_err(|e| format!("{} is damaged: {e}", path.display()))?;
        list.verify()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if list.mesh != self.mesh_id() {
            return Err(format!("{} belongs to another mesh", path.display()));
        }
        Ok(list)
    }

    /// Revoke `peers`: the next revocation list (serial + 1), saved in `dir`.
    pub fn revoke(&self, dir: &Path, peers: &[PeerId]) -> Result<RevocationList, String> {
        let old = self.revocations(dir)?;
        let mut revoked = old.peers.clone();
        for p in peers {
            if !revoked.contains(p) {
                revoked.push(*p);
            }
        }
        let list = self.sign_revocations(old.serial + 1, revoked, SystemTime::now());
        crate::keyfile::write_atomic(
            &dir.join(REVOCATIONS_FILE),
            format!("{list}\n").as_bytes(),
            0o644,
        )?;
        Ok(list)
    }

    fn sign_revocations(&self, serial: u64, peers: Vec<PeerId>, now: SystemTime) -> RevocationList {
        let mut list = RevocationList {
            mesh: self.mesh_id(),
            serial,
            issued: unix_secs(now),
            peers,
            signature: [0; 64],
        };
        let sig = self.keypair.sign(&list.signed_bytes());
        list.signature.copy_from_slice(&sig);
        list
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set permissions of {}: {e}", path.display()))
}

/// The authority directory's files, for tools that show them.
pub fn authority_files(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join(AUTHORITY_KEY_FILE),
        dir.join(MESH_ID_FILE),
        dir.join(REVOCATIONS_FILE),
    ]
}

/// An authority's statement that a peer is a member of its mesh until an
/// expiry. Text form: `pmc1…` (base32, checksummed).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    mesh: MeshId,
    peer: PeerId,
    issued: u64,
    expires: u64,
    signature: [u8; 64],
}

impl Credential {
    /// The mesh it admits to.
    pub fn mesh(&self) -> &MeshId {
        &self.mesh
    }

    /// The peer it admits.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// When it was issued.
    pub fn issued(&self) -> SystemTime {
        from_unix_secs(self.issued)
    }

    /// When it stops being valid.
    pub fn expires(&self) -> SystemTime {
        from_unix_secs(self.expires)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = CREDENTIAL_DOMAIN.to_vec();
        out.extend_from_slice(&self.body_bytes());
        out
    }

    fn body_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(CREDENTIAL_VERSION);
        out.extend_from_slice(&self.mesh.0.to_bytes());
        let peer = self.peer.to_bytes();
        out.push(peer.len() as u8);
        out.extend_from_slice(&peer);
        out.extend_from_slice(&self.issued.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        out
    }

    /// Whether the authority's signature holds.
    pub fn verify_signature(&self) -> Result<(), MembershipError> {
        if self.mesh.0.verify(&self.signed_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(MembershipError::BadSignature { what: "credential" })
        }
    }

    /// Every check but revocation: signature, that it names `peer`, that it
    /// is of one of `meshes`, and that it has not expired at `now`.
    pub fn check(
        &self,
        peer: PeerId,
        meshes: &[MeshId],
        now: SystemTime,
    ) -> Result<(), MembershipError> {
        if !meshes.contains(&self.mesh) {
            return Err(MembershipError::WrongMesh(self.mesh.clone()));
        }
        self.verify_signature()?;
        if self.peer != peer {
            return Err(MembershipError::WrongPeer {
                issued_for: self.peer,
                peer,
            });
        }
        if let Ok(ago) = now.duration_since(self.expires()) {
            return Err(MembershipError::Expired { peer, ago });
        }
        Ok(())
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = self.body_bytes();
        raw.extend_from_slice(&self.signature);
        f.write_str(&encode_text(CREDENTIAL_PREFIX, &raw))
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("mesh", &format_args!("{}", self.mesh))
            .field("peer", &format_args!("{}", self.peer))
            .field("issued", &self.issued)
            .field("expires", &self.expires)
            .finish()
    }
}

impl FromStr for Credential {
    type Err = MembershipError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "credential";
        let raw = decode_text(WHAT, CREDENTIAL_PREFIX, s)?;
        let mut r = Reader::new(WHAT, &raw);
        let version = r.u8()?;
        if version != CREDENTIAL_VERSION {
            return Err(malformed(WHAT, format!("unsupported version {version}")));
        }
        let mesh = MeshId::from_bytes(WHAT, r.take(32)?)?;
        let n = r.u8()? as usize;
        let peer = PeerId::from_bytes(r.take(n)?).map_err(|_| malformed(WHAT, "bad peer ID"))?;
        let issued = r.u64()?;
        let expires = r.u64()?;
        let signature = r.take(64)?.try_into().expect("64 bytes");
        r.end()?;
        Ok(Self {
            mesh,
            peer,
            issued,
            expires,
            signature,
        })
    }
}

/// The authority's list of revoked peers. Lists replace each other by
/// serial; only the authority can sign one. Text form: `pmr1…`.
#[derive(Clone, PartialEq, Eq)]
pub struct RevocationList {
    mesh: MeshId,
    serial: u64,
    issued: u64,
    peers: Vec<PeerId>,
    signature: [u8; 64],
}

impl RevocationList {
    /// The mesh it applies to.
    pub fn mesh(&self) -> &MeshId {
        &self.mesh
    }

    /// Its serial: a list with a higher one replaces this one.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The revoked peers.
    pub fn peers(&self) -> &[PeerId] {
        &self.peers
    }

    /// Whether `peer` is revoked.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains(peer)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = REVOCATIONS_DOMAIN.to_vec();
        out.extend_from_slice(&self.body_bytes());
        out
    }

    fn body_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.peers.len() * 40);
        out.push(REVOCATIONS_VERSION);
        out.extend_from_slice(&self.mesh.0.to_bytes());
        out.extend_from_slice(&self.serial.to_be_bytes());
        out.extend_from_slice(&self.issued.to_be_bytes());
        out.extend_from_slice(&(self.peers.len() as u32).to_be_bytes());
        for p in &self.peers {
            let b = p.to_bytes();
            out.push(b.len() as u8);
            out.extend_from_slice(&b);
        }
        out
    }

    /// Whether the authority's signature holds.
    pub fn verify(&self) -> Result<(), MembershipError> {
        if self.mesh.0.verify(&self.signed_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(MembershipError::BadSignature {
                what: "revocation list",
            })
        }
    }
}

impl fmt::Display for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = self.body_bytes();
        raw.extend_from_slice(&self.signature);
        f.write_str(&encode_text(REVOCATIONS_PREFIX, &raw))
    }
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field("mesh", &format_args!("{}", self.mesh))
            .field("serial", &self.serial)
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl FromStr for RevocationList {
    type Err = MembershipError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "revocation list";
        let raw = decode_text(WHAT, REVOCATIONS_PREFIX, s)?;
        let mut r = Reader::new(WHAT, &raw);
        let version = r.u8()?;
        if version != REVOCATIONS_VERSION {
            return Err(malformed(WHAT, format!("unsupported version {version}")));
        }
        let mesh = MeshId::from_bytes(WHAT, r.take(32)?)?;
        let serial = r.u64()?;
        let issued = r.u64()?;
        let n = r.u32()? as usize;
        if n > MAX_REVOKED {
            return Err(malformed(
                WHAT,
                format!("{n} peers is more than {MAX_REVOKED}"),
            ));
        }
        let mut peers = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u8()? as usize;
            peers.push(
                PeerId::from_bytes(r.take(len)?).map_err(|_| malformed(WHAT, "bad peer ID"))?,
            );
        }
        let signature = r.take(64)?.try_into().expect("64 bytes");
        r.end()?;
        Ok(Self {
            mesh,
            serial,
            issued,
            peers,
            signature,
        })
    }
}

/// Whom a relay or daemon serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Anyone (`--open-mesh`: labs and trusted networks only).
    Open,
    /// Holders of a valid credential of one of these meshes.
    Meshes(Vec<MeshId>),
}

impl Policy {
    /// Whether anyone is served.
    pub fn is_open(&self) -> bool {
        matches!(self, Policy::Open)
    }
}

/// A verified member: which mesh, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The mesh (`None` in an open mesh).
    pub mesh: Option<MeshId>,
    /// When the credential expires (`None` in an open mesh).
    pub expires: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct GateState {
    members: HashMap<PeerId, Membership>,
    revocations: HashMap<MeshId, RevocationList>,
}

/// The peers that proved membership to this node, and the newest
/// revocation list of each mesh it serves. Thread-safe; checks are
/// in-memory lookups, so a gate can sit in front of every request.
#[derive(Debug)]
pub struct Gate {
    policy: Policy,
    state: Mutex<GateState>,
}

impl Gate {
    /// A gate serving `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            state: Mutex::new(GateState::default()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Check `credential` presented by `peer` (authenticated by the
    /// connection) and, if it holds, remember `peer` as a member.
    pub fn admit(
        &self,
        peer: PeerId,
        credential: Option<&Credential>,
        now: SystemTime,
    ) -> Result<Membership, MembershipError> {
        let membership = self.check(peer, credential, now)?;
        self.state().members.insert(peer, membership.clone());
        Ok(membership)
    }

    /// [`Gate::admit`] without remembering: whether `credential` would admit `peer`.
    pub fn check(
        &self,
        peer: PeerId,
        credential: Option<&Credential>,
        now: SystemTime,
    ) -> Result<Membership, MembershipError> {
        match (&self.policy, credential) {
            // Anyone is served; a credential, if shown and sound, says which
            // mesh the peer belongs to (an unsound one is ignored).
            (Policy::Open, _) => Ok(Membership {
                mesh: credential
                    .filter(|c| c.peer == peer && c.verify_signature().is_ok())
                    .map(|c| c.mesh.clone()),
                expires: None,
            }),
            (Policy::Meshes(_), None) => Err(MembershipError::NoCredential("node")),
            (Policy::Meshes(meshes), Some(c)) => {
                c.check(peer, meshes, now)?;
                if self
                    .state()
                    .revocations
                    .get(&c.mesh)
                    .is_some_and(|l| l.contains(&peer))
                {
                    return Err(MembershipError::Revoked(peer));
                }
                Ok(Membership {
                    mesh: Some(c.mesh.clone()),
                    expires: Some(c.expires()),
                })
            }
        }
    }

    /// The membership `peer` proved, if it still holds at `now` (not
    /// expired, not revoked since).
    pub fn membership(&self, peer: &PeerId, now: SystemTime) -> Option<Membership> {
        if self.policy.is_open() {
            return Some(
                self.state()
                    .members
                    .get(peer)
                    .cloned()
                    .unwrap_or(Membership {
                        mesh: None,
                        expires: None,
                    }),
            );
        }
        let mut state = self.state();
        let m = state.members.get(peer)?.clone();
        let expired = m.expires.is_some_and(|e| e <= now);
        let revoked = m.mesh.as_ref().is_some_and(|mesh| {
            state
                .revocations
                .get(mesh)
                .is_some_and(|l| l.contains(peer))
        });
        if expired || revoked {
            state.members.remove(peer);
            return None;
        }
        Some(m)
    }

    /// Whether `peer` may be served at `now`.
    pub fn is_member(&self, peer: &PeerId, now: SystemTime) -> bool {
        self.membership(peer, now).is_some()
    }

    /// Whether a revocation list held here revokes `peer`.
    pub fn is_revoked(&self, peer: &PeerId) -> bool {
        self.state().revocations.values().any(|l| l.contains(peer))
    }

    /// Forget `peer` (it disconnected): it must prove membership again.
    pub fn forget(&self, peer: &PeerId) {
        self.state().members.remove(peer);
    }

    /// Take `list` if it is validly signed for a mesh served here and newer
    /// than the one held. Returns the members it revokes now (to disconnect),
    /// or `None` if the list was not newer.
    pub fn apply_revocations(
        &self,
        list: &RevocationList,
    ) -> Result<Option<Vec<PeerId>>, MembershipError> {
        if let Policy::Meshes(meshes) = &self.policy {
            if !meshes.contains(&list.mesh) {
                return Err(MembershipError::WrongMesh(list.mesh.clone()));
            }
        }
        list.verify()?;
        let mut state = self.state();
        if state
            .revocations
            .get(&list.mesh)
            .is_some_and(|old| old.serial >= list.serial)
        {
            return Ok(None);
        }
        state.revocations.insert(list.mesh.clone(), list.clone());
        let gone: Vec<PeerId> = state
            .members
            .iter()
            .filter(|(p, m)| m.mesh.as_ref() == Some(&list.mesh) && list.contains(p))
            .map(|(p, _)| *p)
            .collect();
        for p in &gone {
            state.members.remove(p);
        }
        Ok(Some(gone))
    }

    /// The newest revocation list held for `mesh`.
    pub fn revocations(&self, mesh: &MeshId) -> Option<RevocationList> {
        self.state().revocations.get(mesh).cloned()
    }

    /// Number of members remembered.
    pub fn len(&self) -> usize {
        self.state().members.len()
    }

    /// Whether no member is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ProxyStore endpoint UUID of the daemon with peer ID `peer`. It is
/// derived from the peer ID, so a daemon cannot claim another's endpoint:
/// whoever checks recomputes it.
pub fn endpoint_uuid(peer: &PeerId) -> uuid::Uuid {
    let mut h = blake3::Hasher::new_derive_key("proxymesh endpoint uuid v1");
    h.update(&peer.to_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

#[cfg(test)]
mod tests;
