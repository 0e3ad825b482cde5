//! Persistent libp2p identities in files, for daemons and relays: an Ed25519
//! keypair in libp2p's protobuf encoding, owner-only permissions. A damaged
//! file is an error, never silently replaced (a new identity would orphan
//! every ticket naming the old one).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libp2p_identity::Keypair;

/// Load the keypair at `path`, creating (and saving) a new Ed25519 one if the
/// file does not exist.
pub fn load_or_create(path: &Path) -> Result<Keypair, String> {
    if path.exists() {
        let bytes = fs::read(path)
            .map_err(|e| format!("cannot read identity file {}: {e}", path.display()))?;
        return Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            format!(
                "identity file {} is damaged ({e}); restore it from a backup, or delete it to start a \
                 new identity (tickets naming the old one stop working)",
                path.display()
            )
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let kp = Keypair::generate_ed25519();
    let bytes = kp
        .to_protobuf_encoding()
        .map_err(|e| format!("cannot encode keypair: {e}"))?;
    write_atomic(path, &bytes, 0o600)?;
    Ok(kp)
}

/// Write a file atomically (temp + fsync + rename) with `mode` permissions.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_private_and_never_replaced_when_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/identity.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        fs::write(&path, b"garbage").unwrap();
        assert!(load_or_create(&path).unwrap_err().contains("damaged"));
        assert_eq!(fs::read(&path).unwrap(), b"garbage");
    }
}
