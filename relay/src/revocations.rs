//! Revocation-list files (`--revocations FILE`), re-read when they change.
//!
//! Each file holds one `pmr1…` list as `proxymesh mesh revoke` writes it.
//! [`RevocationFiles::poll`] looks at every file's modification time, size
//! and inode, reads the ones that changed and hands the lists to
//! [`Members::apply_revocations`]. The relay polls at start (before it
//! serves anyone) and then every [`POLL_INTERVAL`].
//!
//! * A file that does not exist is "no list yet": nothing is revoked by it,
//!   a warning says so once, and it is picked up when it appears.
//! * A damaged, unsigned or foreign-mesh file is logged as an error and
//!   ignored until it changes again; the list held before stays in force.
//! * A list that is not newer (same or lower serial) than the one held
//!   changes nothing.
//! * A file that disappears after being read leaves its list in force.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use libp2p::PeerId;
use proxymesh::membership::RevocationList;

use crate::members::Members;

/// How often the files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    Missing,
    Present {
        modified: Option<SystemTime>,
        len: u64,
        dev: u64,
        ino: u64,
    },
}

#[derive(Debug)]
struct Watched {
    path: PathBuf,
    /// The version last looked at (`None`: never looked).
    seen: Option<Stamp>,
}

/// The revocation files a relay watches.
#[derive(Debug)]
pub struct RevocationFiles {
    files: Vec<Watched>,
}

impl RevocationFiles {
    /// Watch `paths` (nothing is read yet).
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        RevocationFiles {
            files: paths
                .into_iter()
                .map(|path| Watched { path, seen: None })
                .collect(),
        }
    }

    /// Whether there is nothing to watch.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Read the files that changed since the last poll into `members`;
    /// returns the peers that a newly applied list revoked (to disconnect).
    /// Problems are logged, never returned.
    pub fn poll(&mut self, members: &Members) -> Vec<PeerId> {
        let mut revoked = Vec::new();
        for file in &mut self.files {
            let stamp = match std::fs::metadata(&file.path) {
                Ok(meta) => {
                    use std::os::unix::fs::MetadataExt;
                    Stamp::Present {
                        modified: meta.modified().ok(),
                        len: meta.len(),
                        dev: meta.dev(),
                        ino: meta.ino(),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stamp::Missing,
                Err(error) => {
                    if file.seen.is_some() {
                        tracing::error!(path = %file.path.display(), %error, "cannot inspect the revocation file; keeping the list held");
                    }
                    file.seen = None;
                    continue;
                }
            };
            if file.seen == Some(stamp) {
                continue;
            }
            let first = file.seen.is_none();
            file.seen = Some(stamp);
            if stamp == Stamp::Missing {
                if first {
                    tracing::warn!(path = %file.path.display(), "revocation file does not exist (yet): nothing revoked by it until it appears");
                } else {
                    tracing::warn!(path = %file.path.display(), "revocation file disappeared; the list read before stays in force");
                }
                continue;
            }
            let list = match std::fs::read_to_string(&file.path) {
                Ok(text) => text.trim().parse::<RevocationList>(),
                Err(error) => {
                    tracing::error!(path = %file.path.display(), %error, "cannot read the revocation file; ignoring it");
                    // Try again at the next poll.
                    file.seen = None;
                    continue;
                }
            };
            let list = match list {
                Ok(list) => list,
                Err(error) => {
                    tracing::error!(path = %file.path.display(), %error, "ignoring a damaged revocation file");
                    continue;
                }
            };
            match members.apply_revocations(&list) {
                Ok(Some(gone)) => {
                    tracing::info!(
                        path = %file.path.display(),
                        mesh = %list.mesh(),
                        serial = list.serial(),
                        revoked = list.peers().len(),
                        disconnecting = gone.len(),
                        "revocation list loaded"
                    );
                    for peer in gone {
                        tracing::warn!(%peer, mesh = %list.mesh(), "membership revoked; disconnecting");
                        if !revoked.contains(&peer) {
                            revoked.push(peer);
                        }
                    }
                }
                Ok(None) => {
                    tracing::debug!(path = %file.path.display(), serial = list.serial(), "revocation list is not newer than the one held");
                }
                Err(error) => {
                    tracing::error!(path = %file.path.display(), %error, "ignoring a revocation list this relay cannot use");
                }
            }
        }
        revoked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxymesh::membership::{Authority, Policy};

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn lists_are_picked_up_when_they_appear_and_change() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authority::generate();
        let path = dir.path().join("revocations");
        let members = Members::new(Policy::Meshes(vec![auth.mesh_id()]), 16);
        let now = SystemTime::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        for p in [a, b] {
            members
                .hello(p, Some(auth.admit(p, now, now + HOUR)), Vec::new(), now)
                .unwrap();
        }
        let mut files = RevocationFiles::new([path.clone()]);
        // Missing: nothing revoked, no error.
        assert!(files.poll(&members).is_empty());
        assert!(members.is_member(&a, now));

        auth.revoke(dir.path(), &[a]).unwrap();
        assert_eq!(files.poll(&members), vec![a]);
        assert!(!members.is_member(&a, now));
        assert!(members.is_member(&b, now));
        // Unchanged: nothing to do.
        assert!(files.poll(&members).is_empty());

        auth.revoke(dir.path(), &[b]).unwrap();
        assert_eq!(files.poll(&members), vec![b]);
        assert_eq!(
            members
                .gate()
                .revocations(&auth.mesh_id())
                .unwrap()
                .serial(),
            2
        );
    }

    #[test]
    fn bad_and_foreign_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authority::generate();
        let foreign = Authority::generate();
        let members = Members::new(Policy::Meshes(vec![auth.mesh_id()]), 16);
        let now = SystemTime::now();
        let a = PeerId::random();
        members
            .hello(a, Some(auth.admit(a, now, now + HOUR)), Vec::new(), now)
            .unwrap();

        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, "pmr1 not a list\n").unwrap();
        let foreign_dir = dir.path().join("foreign");
        std::fs::create_dir(&foreign_dir).unwrap();
        foreign.revoke(&foreign_dir, &[a]).unwrap();
        // A list whose text was altered after signing.
        let forged_dir = dir.path().join("forged");
        std::fs::create_dir(&forged_dir).unwrap();
        let list = auth.revoke(&forged_dir, &[a]).unwrap().to_string();
        let forged = dir.path().join("forged.txt");
        std::fs::write(&forged, tamper(&list)).unwrap();

        let mut files = RevocationFiles::new([
            garbage,
            foreign_dir.join("revocations"),
            forged,
            dir.path().join("missing"),
        ]);
        assert!(files.poll(&members).is_empty());
        assert!(members.is_member(&a, now));
        assert!(members.gate().revocations(&auth.mesh_id()).is_none());
    }

    /// `text` with one character of its payload changed to another valid
    /// one (the checksum then fails, or the signature does).
    fn tamper(text: &str) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        chars.into_iter().collect()
    }
}
