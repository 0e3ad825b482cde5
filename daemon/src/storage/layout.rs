//! On-disk layout of the data directory and the blocking file operations on it.
//!
//! ```text
//! <dir>/storage.lock          flock()ed while a Storage is open
//! <dir>/tmp/<id>.data.part    data of an object being written
//! <dir>/tmp/<id>.meta.part    sidecar being written (persist mode)
//! <dir>/objects/<id>.data     committed object data
//! <dir>/objects/<id>.meta     its sidecar (persist mode only): JSON Sidecar
//! <dir>/objects/<id>.obao     its BLAKE3 outboard (disk objects), see outboard.rs
//! ```
//!
//! `<id>` is a random 128-bit [`FileId`] chosen per object *version*, so a
//! replaced or evicted version can be unlinked while readers keep their open
//! file. Object names never appear in file names.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{ObjectMeta, ObjectName};

const DATA_EXT: &str = "data";
const META_EXT: &str = "meta";
const OUTBOARD_EXT: &str = "obao";
const PART_SUFFIX: &str = ".part";
/// Current sidecar format version.
const SIDECAR_VERSION: u32 = 1;

/// Random name of one object version's files.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId([u8; 16]);

impl FileId {
    pub(crate) fn random() -> Self {
        Self(rand::random())
    }

    /// Parse the 32-hex-digit stem of a file name.
    pub(crate) fn parse(stem: &str) -> Option<Self> {
        if stem.len() != 32 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&stem[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({self})")
    }
}

/// The paths of the data directory.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) objects: PathBuf,
    pub(crate) tmp: PathBuf,
    lock: PathBuf,
}

/// Which kind of file of a [`FileId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Data,
    Meta,
    Outboard,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            objects: root.join("objects"),
            tmp: root.join("tmp"),
            lock: root.join("storage.lock"),
        }
    }

    /// Create the directories and take the exclusive lock (held by the
    /// returned file).
    pub(crate) fn create_and_lock(&self) -> io::Result<File> {
        fs::create_dir_all(&self.objects)?;
        fs::create_dir_all(&self.tmp)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)?;
        // SAFETY: plain syscall on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "data directory {} is in use by another storage instance",
                        self.lock.parent().unwrap_or(Path::new(".")).display()
                    ),
                ));
            }
            return Err(e);
        }
        Ok(lock)
    }

    /// Path of a committed file.
    pub(crate) fn path(&self, id: FileId, kind: Kind) -> PathBuf {
        self.objects.join(format!("{id}.{}", kind.ext()))
    }

    /// Path of a file being written.
    pub(crate) fn tmp_path(&self, id: FileId, kind: Kind) -> PathBuf {
        self.tmp.join(format!("{id}.{}{PART_SUFFIX}", kind.ext()))
    }

    /// Remove every file `id` may have, committed or temporary; missing
    /// files are fine. The sidecar goes first, so a crash midway leaves at
    /// most a data file without sidecar, which the next open deletes.
    pub(crate) fn remove_all(&self, id: FileId) -> io::Result<()> {
        let mut first_err = None;
        for p in [
            self.path(id, Kind::Meta),
            self.path(id, Kind::Data),
            self.path(id, Kind::Outboard),
            self.tmp_path(id, Kind::Meta),
            self.tmp_path(id, Kind::Data),
            self.tmp_path(id, Kind::Outboard),
        ] {
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != io::ErrorKind::NotFound && first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Create the temporary data file of `id`.
    pub(crate) fn create_tmp_data(&self, id: FileId) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.tmp_path(id, Kind::Data))
    }

    /// Write the outboard of version `id` (temp + rename; fsynced when
    /// `durable`). Written before the data is published, so a committed
    /// disk object always has one.
    pub(crate) fn write_outboard(&self, id: FileId, pairs: &[u8], durable: bool) -> io::Result<()> {
        let tmp = self.tmp_path(id, Kind::Outboard);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(pairs)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, self.path(id, Kind::Outboard))
    }

    /// Make a finished temporary data file the committed version `id`:
    /// write its outboard (when given), optionally fsync the data, rename
    /// it into `objects/`, and in persist mode (`sidecar` given) write the
    /// sidecar via temp + fsync + rename and fsync the directory.
    pub(crate) fn publish(
        &self,
        id: FileId,
        file: File,
        outboard: Option<&[u8]>,
        sidecar: Option<&Sidecar>,
    ) -> io::Result<()> {
        let durable = sidecar.is_some();
        if let Some(pairs) = outboard {
            self.write_outboard(id, pairs, durable)?;
        }
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(self.tmp_path(id, Kind::Data), self.path(id, Kind::Data))?;
        if let Some(sidecar) = sidecar {
            let tmp = self.tmp_path(id, Kind::Meta);
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&serde_json::to_vec(sidecar).map_err(io::Error::other)?)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, self.path(id, Kind::Meta))?;
            sync_dir(&self.objects)?;
        }
        Ok(())
    }

    /// Write `data` as the committed version `id` (see [`publish`](Self::publish)).
    pub(crate) fn write_and_publish(
        &self,
        id: FileId,
        data: &[u8],
        sidecar: Option<&Sidecar>,
    ) -> io::Result<()> {
        let mut f = self.create_tmp_data(id)?;
        f.write_all(data)?;
        self.publish(id, f, None, sidecar)
    }
}

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Kind::Data => DATA_EXT,
            Kind::Meta => META_EXT,
            Kind::Outboard => OUTBOARD_EXT,
        }
    }

    /// Split a committed file name into its id and kind.
    pub(crate) fn parse_name(name: &str) -> Option<(FileId, Kind)> {
        let (stem, ext) = name.split_once('.')?;
        let kind = match ext {
            DATA_EXT => Kind::Data,
            META_EXT => Kind::Meta,
            OUTBOARD_EXT => Kind::Outboard,
            _ => return None,
        };
        Some((FileId::parse(stem)?, kind))
    }
}

/// fsync a directory so renames and unlinks in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Remove every non-directory entry of `dir`; returns how many.
pub(crate) fn clear_dir(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            tracing::warn!(path = %entry.path().display(), "unexpected directory in storage dir; left alone");
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The persisted metadata of one object version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sidecar {
    /// Format version, [`SIDECAR_VERSION`].
    pub(crate) v: u32,
    /// [`ObjectName`] in its text form.
    pub(crate) name: String,
    /// Size in bytes.
    pub(crate) size: u64,
    /// BLAKE3 hash, lowercase hex.
    pub(crate) blake3: String,
}

impl Sidecar {
    pub(crate) fn new(name: &ObjectName, meta: &ObjectMeta) -> Self {
        Self {
            v: SIDECAR_VERSION,
            name: name.to_string(),
            size: meta.size,
            blake3: meta.hash.to_hex().to_string(),
        }
    }

    /// Parse and validate a sidecar file's contents.
    pub(crate) fn decode(raw: &[u8]) -> Result<(ObjectName, u64, blake3::Hash), String> {
        let s: Sidecar = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
        if s.v != SIDECAR_VERSION {
            return Err(format!("unsupported sidecar version {}", s.v));
        }
        let name = s.name.parse::<ObjectName>().map_err(|e| e.to_string())?;
        let hash = blake3::Hash::from_hex(&s.blake3).map_err(|e| e.to_string())?;
        Ok((name, s.size, hash))
    }
}

/// Removes all files of a [`FileId`] when dropped, unless disarmed: the
/// cleanup of an uncommitted or failed write, whatever way it ends
/// (error, drop, cancelled future).
#[derive(Debug)]
pub(crate) struct FileGuard {
    layout: Arc<Layout>,
    id: FileId,
    armed: bool,
}

impl FileGuard {
    pub(crate) fn new(layout: &Arc<Layout>, id: FileId) -> Self {
        Self {
            layout: Arc::clone(layout),
            id,
            armed: true,
        }
    }

    pub(crate) fn id(&self) -> FileId {
        self.id
    }

    /// The files are now owned by the index.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.layout.remove_all(self.id) {
                tracing::warn!(file = %self.id, error = %e, "could not remove files of an abandoned object");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_roundtrip() {
        let id = FileId::random();
        let l = Layout::new(Path::new("/x"));
        for kind in [Kind::Data, Kind::Meta] {
            let p = l.path(id, kind);
            let name = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(Kind::parse_name(name), Some((id, kind)));
            let t = l.tmp_path(id, kind);
            assert!(t.starts_with("/x/tmp"));
            assert_eq!(
                Kind::parse_name(t.file_name().unwrap().to_str().unwrap()),
                None
            );
        }
        for bad in [
            "",
            "x.data",
            "zz.meta",
            &format!("{id}.txt"),
            &format!("{id}"),
        ] {
            assert_eq!(Kind::parse_name(bad), None, "{bad:?}");
        }
        assert_ne!(FileId::random(), id);
    }

    #[test]
    fn sidecar_roundtrip_and_rejects_garbage() {
        let name = ObjectName::Endpoint("k\"ey".into());
        let meta = ObjectMeta {
            size: 5,
            hash: blake3::hash(b"hello"),
            location: super::super::Location::Disk,
        };
        let raw = serde_json::to_vec(&Sidecar::new(&name, &meta)).unwrap();
        assert_eq!(Sidecar::decode(&raw).unwrap(), (name, 5, meta.hash));
        for bad in [
            &b""[..],
            b"{",
            br#"{"v":1,"name":"endpoint:k","size":5}"#,
            br#"{"v":2,"name":"endpoint:k","size":5,"blake3":"00"}"#,
            br#"{"v":1,"name":"nope","size":5,"blake3":"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"}"#,
            br#"{"v":1,"name":"endpoint:k","size":5,"blake3":"zz"}"#,
        ] {
            assert!(Sidecar::decode(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn guard_removes_files_unless_disarmed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Arc::new(Layout::new(dir.path()));
        let _lock = layout.create_and_lock().unwrap();
        let id = FileId::random();
        layout.write_and_publish(id, b"abc", None).unwrap();
        assert!(layout.path(id, Kind::Data).exists());
        drop(FileGuard::new(&layout, id));
        assert!(!layout.path(id, Kind::Data).exists());

        let id = FileId::random();
        drop(layout.create_tmp_data(id).unwrap());
        FileGuard::new(&layout, id).disarm();
        assert!(layout.tmp_path(id, Kind::Data).exists());
    }

    #[test]
    fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let lock = layout.create_and_lock().unwrap();
        let err = Layout::new(dir.path()).create_and_lock().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(lock);
        Layout::new(dir.path()).create_and_lock().unwrap();
    }
}
