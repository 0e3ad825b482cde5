//! Loading persisted objects at open: every sidecar is parsed, every data
//! file is checked against its recorded size and re-hashed (streamed, a few
//! files in parallel). Anything that does not check out is deleted with a
//! warning and not loaded. Small objects are also loaded into memory when
//! the budget allows.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;

use super::budget::Reservation;
use super::error::{classify, join_error};
use super::index::Entry;
use super::layout::{FileId, Kind, Layout, Sidecar};
use super::outboard::OutboardBuilder;
use super::{Inner, Location, ObjectMeta, ObjectName, StorageError};

/// Read buffer for verification.
const VERIFY_BUF: usize = 1 << 20;

/// A sidecar that parsed, whose data file is still to be verified.
struct Candidate {
    id: FileId,
    name: ObjectName,
    size: u64,
    hash: blake3::Hash,
    mtime: SystemTime,
}

/// Load and verify everything in `objects/` into the index.
pub(crate) async fn load(inner: &Inner) -> Result<(), StorageError> {
    let layout = Arc::clone(&inner.layout);
    let candidates = tokio::task::spawn_blocking(move || scan(&layout))
        .await
        .map_err(join_error)
        .and_then(|r| r)
        .map_err(classify)?;
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get().min(8));
    let inline_limit = inner.config.inline_limit;
    let mut verified = futures::stream::iter(candidates)
        .map(|c| {
            let reservation = (c.size <= inline_limit)
                .then(|| Reservation::try_new(&inner.budget, c.size))
                .flatten();
            let layout = Arc::clone(&inner.layout);
            let keep = reservation.is_some();
            async move {
                let res = tokio::task::spawn_blocking(move || {
                    let r = verify(&layout, &c, keep);
                    (c, r)
                })
                .await;
                (res, reservation)
            }
        })
        .buffer_unordered(parallel);

    // The newest sidecar wins if a crash left two versions of one name.
    let mut loaded: HashMap<ObjectName, (SystemTime, Entry)> = HashMap::new();
    let mut losers = Vec::new();
    while let Some((res, reservation)) = verified.next().await {
        let (c, result) = res.map_err(|e| classify(join_error(e)))?;
        if let ObjectName::Staging(_) = c.name {
            // A forward interrupted by the restart: nobody can name it.
            tracing::info!(object = %c.name, "removing a body left over from an interrupted forward");
            losers.push(c.id);
            continue;
        }
        let data = match result {
            Ok(data) => data,
            Err(why) => {
                tracing::warn!(object = %c.name, file = %c.id, "dropping persisted object: {why}");
                losers.push(c.id);
                continue;
            }
        };
        let (data, pairs) = data;
        let memory = data.zip(reservation);
        let outboard = memory.as_ref().map(|_| Bytes::from(pairs));
        let entry = Entry {
            meta: ObjectMeta {
                size: c.size,
                hash: c.hash,
                location: if memory.is_some() {
                    Location::Memory
                } else {
                    Location::Disk
                },
            },
            memory,
            outboard,
            file: Some(c.id),
        };
        match loaded.get(&c.name) {
            Some((t, _)) if *t >= c.mtime => {
                tracing::warn!(object = %c.name, file = %c.id, "dropping older duplicate version");
                losers.push(c.id);
            }
            _ => {
                if let Some((_, old)) = loaded.insert(c.name, (c.mtime, entry)) {
                    tracing::warn!(file = ?old.file, "dropping older duplicate version");
                    losers.extend(old.file);
                }
            }
        }
    }
    drop(verified);
    let n = loaded.len();
    for (name, (_, entry)) in loaded {
        inner.index.insert(name, entry);
    }
    if !losers.is_empty() {
        let layout = Arc::clone(&inner.layout);
        tokio::task::spawn_blocking(move || {
            for id in losers {
                if let Err(e) = layout.remove_all(id) {
                    tracing::warn!(file = %id, error = %e, "could not remove a dropped object");
                }
            }
        })
        .await
        .map_err(|e| classify(join_error(e)))?;
    }
    tracing::info!(objects = n, "loaded persisted objects");
    Ok(())
}

/// List `objects/`: parse sidecars, delete (with a warning) every file that
/// has no partner, an unknown name, or an unreadable sidecar.
fn scan(layout: &Layout) -> io::Result<Vec<Candidate>> {
    let mut data = HashSet::new();
    let mut metas = HashMap::new();
    let mut outboards = HashMap::new();
    for entry in fs::read_dir(&layout.objects)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            tracing::warn!(path = %path.display(), "unexpected directory in storage dir; left alone");
            continue;
        }
        match entry.file_name().to_str().and_then(Kind::parse_name) {
            Some((id, Kind::Data)) => {
                data.insert(id);
            }
            Some((id, Kind::Meta)) => {
                metas.insert(id, path);
            }
            // Rebuilt while the data is verified.
            Some((id, Kind::Outboard)) => {
                outboards.insert(id, path);
            }
            None => {
                tracing::warn!(path = %path.display(), "deleting unknown file in storage dir");
                remove(&path);
            }
        }
    }
    for (id, path) in outboards {
        if !data.contains(&id) {
            tracing::warn!(file = %id, "deleting an outboard without its data file");
            remove(&path);
        }
    }
    let mut out = Vec::with_capacity(metas.len());
    for (id, meta_path) in metas {
        let has_data = data.remove(&id);
        let parsed = fs::read(&meta_path)
            .map_err(|e| e.to_string())
            .and_then(|raw| Sidecar::decode(&raw));
        let why = match (parsed, has_data) {
            (Ok((name, size, hash)), true) => {
                let mtime = fs::metadata(&meta_path)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(Candidate {
                    id,
                    name,
                    size,
                    hash,
                    mtime,
                });
                continue;
            }
            (Ok(_), false) => "its data file is missing".to_string(),
            (Err(e), _) => format!("unreadable metadata: {e}"),
        };
        tracing::warn!(file = %id, "dropping persisted object: {why}");
        remove_all(layout, id);
    }
    for id in data {
        tracing::warn!(file = %id, "dropping persisted data file without metadata");
        remove_all(layout, id);
    }
    Ok(out)
}

/// Check the data file's size and hash, rebuilding its outboard on the way
/// (written to its `.obao` unless the bytes are kept); with `keep`, also
/// return its bytes.
fn verify(layout: &Layout, c: &Candidate, keep: bool) -> Result<(Option<Bytes>, Vec<u8>), String> {
    let mut file =
        File::open(layout.path(c.id, Kind::Data)).map_err(|e| format!("cannot open: {e}"))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != c.size {
        return Err(format!("size is {len} bytes, metadata says {}", c.size));
    }
    let mut hasher = OutboardBuilder::new();
    let kept = if keep {
        let mut buf = vec![0u8; len as usize];
        file.read_exact(&mut buf)
            .map_err(|e| format!("read failed: {e}"))?;
        hasher.update(&buf);
        Some(Bytes::from(buf))
    } else {
        let mut buf = vec![0u8; VERIFY_BUF];
        let mut total = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read failed: {e}")),
            };
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        if total != c.size {
            return Err(format!("read {total} bytes, metadata says {}", c.size));
        }
        None
    };
    let (got, pairs) = hasher.finish();
    if got != c.hash {
        return Err(format!(
            "BLAKE3 mismatch: file hashes to {got}, metadata says {}",
            c.hash
        ));
    }
    if kept.is_none() {
        layout
            .write_outboard(c.id, &pairs, true)
            .map_err(|e| format!("cannot write its outboard: {e}"))?;
    }
    Ok((kept, pairs))
}

fn remove(path: &std::path::Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not delete");
        }
    }
}

fn remove_all(layout: &Layout, id: FileId) {
    if let Err(e) = layout.remove_all(id) {
        tracing::warn!(file = %id, error = %e, "could not delete");
    }
}
