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
use libp2p_identity::{Keypair, PeerId};
use uuid::Uuid;

const KEY_FILE: &str = "identity.key";
const LEGACY_UUID_FILE: &str = "endpoint.uuid";
const LOCK_FILE: &str = "proxymeshd.lock";

/// The daemon's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The libp2p keypair.
    pub keypair: Keypair,
    /// The ProxyStore endpoint UUID.
    pub uuid: Uuid,
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
        // Before endpoint UUIDs were derived, they were random and kept here.
        let old = dir.join(LEGACY_UUID_FILE);
        if let Ok(text) = fs::read_to_string(&old) {
            if text.trim() != uuid.to_string() {
                tracing::warn!(old = %text.trim(), new = %uuid, "the ProxyStore endpoint UUID is now derived from the peer ID; ProxyStore keys naming the old UUID no longer resolve here");
            }
            let _ = fs::remove_file(&old);
        }
        Ok(Self { keypair, uuid })
    }
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
