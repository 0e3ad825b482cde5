//! The daemon's persistent identity, kept in its data directory:
//! an Ed25519 libp2p keypair (`identity.key`, owner-only permissions), whose
//! peer ID names this site in keys and tickets, and a UUID (`endpoint.uuid`)
//! by which ProxyStore clients address it. Both survive restarts; a damaged
//! file is an error, never silently replaced (that would orphan every ticket).
//!
//! Also the data directory lock, so two daemons never share one directory.

use std::fs::{self, File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};
use libp2p_identity::{Keypair, PeerId};
use uuid::Uuid;

const KEY_FILE: &str = "identity.key";
const UUID_FILE: &str = "endpoint.uuid";
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
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
        let keypair =
            proxymesh::keyfile::load_or_create(&dir.join(KEY_FILE)).map_err(anyhow::Error::msg)?;
        let uuid_path = dir.join(UUID_FILE);
        let uuid = if uuid_path.exists() {
            let text = fs::read_to_string(&uuid_path)
                .with_context(|| format!("cannot read {}", uuid_path.display()))?;
            Uuid::parse_str(text.trim())
                .with_context(|| format!("endpoint UUID file {} is damaged", uuid_path.display()))?
        } else {
            let u = Uuid::new_v4();
            proxymesh::keyfile::write_atomic(&uuid_path, format!("{u}\n").as_bytes(), 0o644)
                .map_err(anyhow::Error::msg)?;
            u
        };
        Ok(Self { keypair, uuid })
    }
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
        let mode = fs::metadata(dir.path().join(KEY_FILE))
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
