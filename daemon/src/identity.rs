//! The daemon's persistent identity, kept in its data directory:
//! an Ed25519 libp2p keypair (`identity.key`, owner-only permissions), whose
//! peer ID names this site in keys and tickets. The ProxyStore endpoint UUID
//! by which ProxyStore clients address it is derived from the peer ID
//! ([`proxymesh::membership::endpoint_uuid`]), so no other daemon can claim
//! it. The key survives restarts; a damaged file is an error, never silently
//! replaced (that would orphan every ticket). The data directory is made
//! private to the daemon's user (0700).
//!
//! Also the data directory lock, so two daemons never share one directory.

use std::fs::{self, File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};
use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId};
use proxymesh::{ObjectId, OwnerCap};
use uuid::Uuid;

const KEY_FILE: &str = "identity.key";
const OWNER_SECRET_FILE: &str = "owner.secret";
const LEGACY_UUID_FILE: &str = "endpoint.uuid";
const LOCK_FILE: &str = "proxymeshd.lock";

/// The daemon's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The libp2p keypair.
    pub keypair: Keypair,
    /// The ProxyStore endpoint UUID.
    pub uuid: Uuid,
    /// Derives the owner capabilities of this daemon's objects.
    pub owners: Arc<OwnerSecret>,
}

/// The secret from which this daemon derives each object's [`OwnerCap`]:
/// keyed BLAKE3 of the object ID, so a capability is unforgeable without
/// the secret and needs no storage. Kept in the data directory (0600).
pub struct OwnerSecret([u8; 32]);

impl std::fmt::Debug for OwnerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerSecret(..)")
    }
}

impl OwnerSecret {
    /// A secret from these bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The owner capability of object `id`.
    pub fn cap(&self, id: &ObjectId) -> OwnerCap {
        let h = blake3::keyed_hash(&self.0, id.as_bytes());
        OwnerCap(h.as_bytes()[..16].try_into().expect("16 bytes"))
    }

    /// Whether `cap` is the owner capability of `id` (constant time).
    pub fn verify(&self, id: &ObjectId, cap: &OwnerCap) -> bool {
        let want = self.cap(id);
        want.0
            .iter()
            .zip(cap.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Identity {
    /// The peer ID derived from the keypair.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Load the identity from `dir`, creating missing parts.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        private_dir(dir)?;
        let keypair =
            proxymesh::keyfile::load_or_create(&dir.join(KEY_FILE)).map_err(anyhow::Error::msg)?;
        let uuid = proxymesh::membership::endpoint_uuid(&keypair.public().to_peer_id());
        let owners = Arc::new(load_or_create_secret(&dir.join(OWNER_SECRET_FILE))?);
        // Before endpoint UUIDs were derived, they were random and kept here.
        let old = dir.join(LEGACY_UUID_FILE);
        if let Ok(text) = fs::read_to_string(&old) {
            if text.trim() != uuid.to_string() {
                tracing::warn!(old = %text.trim(), new = %uuid, "the ProxyStore endpoint UUID is now derived from the peer ID; ProxyStore keys naming the old UUID no longer resolve here");
            }
            let _ = fs::remove_file(&old);
        }
        Ok(Self {
            keypair,
            uuid,
            owners,
        })
    }
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<OwnerSecret> {
    if path.exists() {
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| {
            anyhow::anyhow!(
                "owner secret {} is damaged; restore it from a backup (owner capabilities of existing objects depend on it)",
                path.display()
            )
        })?;
        return Ok(OwnerSecret(bytes));
    }
    let bytes: [u8; 32] = rand::random();
    proxymesh::keyfile::write_atomic(path, &bytes, 0o600).map_err(anyhow::Error::msg)?;
    Ok(OwnerSecret(bytes))
}

/// Create `dir` if needed and make it private to this user (0700): it holds
/// the identity key and every object.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make data directory {} private", dir.display()))
}

/// An exclusive lock on a data directory, held for the daemon's lifetime.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Take the lock, failing at once if another daemon holds it.
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        // SAFETY: flock on a valid open descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            bail!(
                "another proxymeshd is already using data directory {} (pick another with --data-dir)",
                dir.display()
            );
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        assert_eq!(a.uuid, b.uuid);
        assert_eq!(a.uuid, proxymesh::membership::endpoint_uuid(&a.peer_id()));
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777
        };
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
        assert_eq!(mode(dir.path()), 0o700, "the data directory is private");
    }

    #[test]
    fn owner_capabilities_are_stable_per_daemon_and_unforgeable() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let again = Identity::load_or_create(dir.path()).unwrap();
        let other = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let (x, y) = (ObjectId::random(), ObjectId::random());
        let cap = a.owners.cap(&x);
        assert!(again.owners.verify(&x, &cap), "stable across restarts");
        assert!(!a.owners.verify(&y, &cap), "bound to its object");
        assert!(!other.owners.verify(&x, &cap), "bound to its daemon");
        assert!(!a.owners.verify(&x, &OwnerCap([0; 16])));
        let mode = std::fs::metadata(dir.path().join(OWNER_SECRET_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn damaged_identity_is_an_error_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        fs::write(dir.path().join(KEY_FILE), b"garbage").unwrap();
        let err = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("damaged"), "{err}");
        assert_eq!(fs::read(dir.path().join(KEY_FILE)).unwrap(), b"garbage");
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("already using"), "{err}");
        drop(lock);
        DirLock::acquire(dir.path()).unwrap();
    }
}
