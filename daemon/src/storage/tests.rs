//! Behavioural tests of the store as a whole.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use proxymesh::ObjectId;

use super::writer::COALESCE;
use super::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn cfg(dir: &Path) -> StorageConfig {
    StorageConfig {
        dir: dir.to_path_buf(),
        memory_cap: MIB,
        inline_limit: 64 * KIB,
        max_object_size: None,
        persist: false,
    }
}

fn nid() -> ObjectName {
    ObjectName::Native(ObjectId::random())
}

/// Deterministic, position-dependent bytes.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

async fn put(
    s: &Storage,
    name: &ObjectName,
    bytes: &[u8],
    chunk: usize,
) -> Result<ObjectMeta, StorageError> {
    let mut w = s.writer(name.clone(), None)?;
    for c in bytes.chunks(chunk.max(1)) {
        w.write(Bytes::copy_from_slice(c)).await?;
    }
    w.commit().await
}

async fn get(s: &Storage, name: &ObjectName) -> Option<Vec<u8>> {
    let r = s.open_reader(name).await.unwrap()?;
    Some(collect(r, 4096).await)
}

async fn collect(r: ObjectReader, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = r.into_stream(chunk);
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        assert!(
            !c.is_empty() && c.len() <= chunk,
            "chunk of {} bytes",
            c.len()
        );
        out.extend_from_slice(&c);
    }
    out
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn objects(root: &Path) -> Vec<PathBuf> {
    list(&root.join("objects"))
}

fn data_files(root: &Path) -> Vec<PathBuf> {
    objects(root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "data"))
        .collect()
}

fn tmp_files(root: &Path) -> Vec<PathBuf> {
    list(&root.join("tmp"))
}

/// The counters agree with the index contents and the budget.
fn assert_consistent(s: &Storage) {
    let st = s.stats();
    let (mut n, mut bytes, mut mem, mut disk) = (0, 0, 0, 0);
    for e in s.inner.index_entries() {
        n += 1;
        bytes += e.size;
        match e.location {
            Location::Memory => mem += e.size,
            Location::Disk => disk += e.size,
        }
    }
    assert_eq!(
        st,
        StorageStats {
            objects: n,
            bytes,
            memory_bytes: mem,
            disk_bytes: disk
        }
    );
    assert_eq!(
        s.memory_reserved(),
        mem,
        "budget holds exactly the memory objects"
    );
}

impl Inner {
    fn index_entries(&self) -> Vec<ObjectMeta> {
        self.index.with_all().into_iter().map(|(_, m)| m).collect()
    }
}

#[tokio::test]
async fn small_object_round_trip_stays_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = nid();
    let bytes = data(1000, 1);
    let meta = put(&s, &name, &bytes, 300).await.unwrap();
    assert_eq!(
        meta,
        ObjectMeta {
            size: 1000,
            hash: blake3::hash(&bytes),
            location: Location::Memory
        }
    );
    assert_eq!(s.meta(&name), Some(meta.clone()));
    assert!(s.contains(&name));
    assert_eq!(
        s.stats(),
        StorageStats {
            objects: 1,
            bytes: 1000,
            memory_bytes: 1000,
            disk_bytes: 0
        }
    );
    assert_eq!(s.memory_reserved(), 1000);
    let r = s.open_reader(&name).await.unwrap().unwrap();
    assert!(matches!(r, ObjectReader::Memory { .. }));
    assert_eq!(r.meta(), &meta);
    assert_eq!(collect(r, 100).await, bytes);
    let all = s
        .open_reader(&name)
        .await
        .unwrap()
        .unwrap()
        .read_all()
        .await
        .unwrap();
    assert_eq!(all, bytes);
    assert!(
        objects(dir.path()).is_empty(),
        "memory objects have no files"
    );
    assert!(tmp_files(dir.path()).is_empty());
    assert!(s.open_reader(&nid()).await.unwrap().is_none());
    assert_eq!(s.meta(&nid()), None);
}

#[tokio::test]
async fn empty_object_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = nid();
    let w = s.writer(name.clone(), Some(0)).unwrap();
    let meta = w.commit().await.unwrap();
    assert_eq!(meta.size, 0);
    assert_eq!(meta.hash, blake3::hash(b""));
    assert_eq!(get(&s, &name).await.unwrap(), b"");
    // Also an empty object forced to disk.
    let mut c = cfg(dir.path());
    c.inline_limit = 0;
    c.memory_cap = 0;
    drop(s);
    let s = Storage::open(c).await.unwrap();
    let meta = put(&s, &name, b"", 1).await.unwrap();
    assert_eq!(meta.size, 0);
    let r = s.open_reader(&name).await.unwrap().unwrap();
    assert_eq!(r.read_all().await.unwrap(), Bytes::new());
}

#[tokio::test]
async fn object_over_inline_limit_goes_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = nid();
    let bytes = data(200 * KIB as usize, 2);
    let mut w = s.writer(name.clone(), None).unwrap();
    w.write(Bytes::copy_from_slice(&bytes[..10 * KIB as usize]))
        .await
        .unwrap();
    assert_eq!(w.location(), Some(Location::Memory));
    assert_eq!(
        s.memory_reserved(),
        10 * KIB,
        "writer reserves what it buffers"
    );
    for c in bytes[10 * KIB as usize..].chunks(10 * KIB as usize) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    assert_eq!(w.location(), Some(Location::Disk));
    assert_eq!(s.memory_reserved(), 0, "spilling releases the reservation");
    assert!(!s.contains(&name), "nothing visible before commit");
    assert_eq!(tmp_files(dir.path()).len(), 1);
    let meta = w.commit().await.unwrap();
    assert_eq!(meta.location, Location::Disk);
    assert_eq!(meta.hash, blake3::hash(&bytes));
    assert_eq!(data_files(dir.path()).len(), 1);
    assert!(tmp_files(dir.path()).is_empty());
    let r = s.open_reader(&name).await.unwrap().unwrap();
    assert!(matches!(r, ObjectReader::File { .. }));
    assert_eq!(r.read_all().await.unwrap(), bytes);
    assert_eq!(get(&s, &name).await.unwrap(), bytes);
    assert_eq!(
        s.stats(),
        StorageStats {
            objects: 1,
            bytes: bytes.len() as u64,
            memory_bytes: 0,
            disk_bytes: bytes.len() as u64
        }
    );

    // A declared length over the inline limit goes straight to disk.
    let w = s.writer(nid(), Some(64 * KIB + 1)).unwrap();
    assert_eq!(w.location(), Some(Location::Disk));
    let w = s.writer(nid(), Some(64 * KIB)).unwrap();
    assert_eq!(w.location(), Some(Location::Memory));
}

#[tokio::test]
async fn memory_cap_overflow_spills_next_object_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.memory_cap = 100 * KIB;
    let s = Storage::open(c).await.unwrap();
    let (a, b, d) = (nid(), nid(), nid());
    let (da, db, dd) = (
        data(60 * KIB as usize, 3),
        data(60 * KIB as usize, 4),
        data(60 * KIB as usize, 5),
    );
    assert_eq!(
        put(&s, &a, &da, 8192).await.unwrap().location,
        Location::Memory
    );
    assert_eq!(
        put(&s, &b, &db, 8192).await.unwrap().location,
        Location::Disk
    );
    assert_eq!(
        s.stats(),
        StorageStats {
            objects: 2,
            bytes: 120 * KIB,
            memory_bytes: 60 * KIB,
            disk_bytes: 60 * KIB
        }
    );
    assert_eq!(s.memory_reserved(), 60 * KIB);
    assert_eq!(get(&s, &a).await.unwrap(), da);
    assert_eq!(get(&s, &b).await.unwrap(), db);
    // The existing memory object stays; once evicted, memory is free again.
    assert!(s.evict(&a).await.unwrap());
    assert_eq!(s.memory_reserved(), 0);
    assert_eq!(
        put(&s, &d, &dd, 8192).await.unwrap().location,
        Location::Memory
    );
    assert_eq!(s.meta(&b).unwrap().location, Location::Disk);
    assert_consistent(&s);
}

#[tokio::test]
async fn large_object_streams_with_bounded_buffering() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = nid();
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 300 * 1024 * 1024;
    // A 1 MiB pattern, shifted and stamped per chunk so chunks differ.
    let pattern = data(1 << 20, 6);
    let mut expected = blake3::Hasher::new();
    let mut w = s.writer(name.clone(), None).unwrap();
    let mut peak = 0;
    let started = std::time::Instant::now();
    for i in 0..TOTAL / CHUNK {
        let off = (i * 4099) % (pattern.len() - CHUNK);
        let mut chunk = pattern[off..off + CHUNK].to_vec();
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        expected.update(&chunk);
        w.write(Bytes::from(chunk)).await.unwrap();
        peak = peak.max(w.buffered_bytes());
        assert!(s.memory_reserved() <= 64 * KIB);
    }
    let meta = w.commit().await.unwrap();
    let write_secs = started.elapsed().as_secs_f64();
    assert!(
        peak <= 2 * COALESCE as u64 + CHUNK as u64,
        "writer held {peak} bytes"
    );
    assert!(peak > 0);
    assert_eq!(meta.size, TOTAL as u64);
    assert_eq!(meta.hash, expected.finalize());
    assert_eq!(meta.location, Location::Disk);

    let started = std::time::Instant::now();
    let mut stream = s
        .open_reader(&name)
        .await
        .unwrap()
        .unwrap()
        .into_stream(CHUNK);
    let (mut got, mut n) = (blake3::Hasher::new(), 0usize);
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        assert!(c.len() <= CHUNK);
        n += c.len();
        got.update(&c);
    }
    assert_eq!(n, TOTAL);
    assert_eq!(got.finalize(), meta.hash);
    eprintln!(
        "300 MiB: write {:.0} MiB/s, read {:.0} MiB/s (peak writer buffer {} KiB)",
        300.0 / write_secs,
        300.0 / started.elapsed().as_secs_f64(),
        peak / 1024
    );
}

#[tokio::test]
async fn too_large_by_declared_len() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.max_object_size = Some(1000);
    let s = Storage::open(c).await.unwrap();
    let err = s.writer(nid(), Some(1001)).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooLarge {
                size: 1001,
                limit: 1000
            }
        ),
        "{err}"
    );
    let name = nid();
    let mut w = s.writer(name.clone(), Some(1000)).unwrap();
    w.write(Bytes::from(vec![7u8; 1000])).await.unwrap();
    assert_eq!(
        w.commit().await.unwrap().size,
        1000,
        "exactly the limit is fine"
    );
    assert!(tmp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn too_large_by_streamed_bytes_discards_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.inline_limit = 16 * KIB;
    c.max_object_size = Some(3 * MIB);
    let s = Storage::open(c).await.unwrap();

    // On disk by the time the limit is hit.
    let name = nid();
    let mut w = s.writer(name.clone(), None).unwrap();
    let chunk = Bytes::from(vec![1u8; 1200 * KIB as usize]);
    w.write(chunk.clone()).await.unwrap();
    w.write(chunk.clone()).await.unwrap();
    assert_eq!(tmp_files(dir.path()).len(), 1);
    let err = w.write(chunk.clone()).await.unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { size, limit } if size == 3600 * KIB && limit == 3 * MIB),
        "{err}"
    );
    assert!(
        tmp_files(dir.path()).is_empty(),
        "temp file removed at once"
    );
    assert!(
        w.write(Bytes::from_static(b"x")).await.is_err(),
        "writer is closed"
    );
    assert!(w.commit().await.is_err());
    assert!(!s.contains(&name));

    // Still in memory when the limit is hit.
    let mut c2 = s.config().clone();
    c2.max_object_size = Some(12 * KIB);
    drop(s);
    let s = Storage::open(c2).await.unwrap();
    let mut w = s.writer(name.clone(), None).unwrap();
    w.write(Bytes::from(vec![2u8; 10 * KIB as usize]))
        .await
        .unwrap();
    assert_eq!(s.memory_reserved(), 10 * KIB);
    let err = w
        .write(Bytes::from(vec![2u8; 3 * KIB as usize]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { size, limit } if size == 13 * KIB && limit == 12 * KIB)
    );
    assert_eq!(s.memory_reserved(), 0, "reservation released on failure");
    assert_eq!(s.stats(), StorageStats::default());
    assert!(objects(dir.path()).is_empty());
    assert!(tmp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = nid();
    let old = data(100, 9);
    put(&s, &name, &old, 100).await.unwrap();

    let mut w = s.writer(name.clone(), None).unwrap();
    w.write(Bytes::from(vec![1u8; 1000])).await.unwrap();
    assert_eq!(s.memory_reserved(), 1100);
    drop(w);
    assert_eq!(s.memory_reserved(), 100);

    let mut w = s.writer(name.clone(), None).unwrap();
    for _ in 0..5 {
        w.write(Bytes::from(vec![3u8; 700 * KIB as usize]))
            .await
            .unwrap();
    }
    assert_eq!(w.location(), Some(Location::Disk));
    assert_eq!(tmp_files(dir.path()).len(), 1);
    drop(w);
    assert!(
        tmp_files(dir.path()).is_empty(),
        "temp file removed on drop"
    );
    assert!(objects(dir.path()).is_empty());
    assert_eq!(
        get(&s, &name).await.unwrap(),
        old,
        "previous version untouched"
    );
    assert_consistent(&s);

    // A write whose future is dropped midway poisons the writer: committing
    // it could publish an object missing bytes.
    let name2 = nid();
    let big = Bytes::from(vec![4u8; 4 * MIB as usize]);
    let mut interrupted = false;
    for _ in 0..50 {
        let mut w = s.writer(name2.clone(), Some(10 * MIB)).unwrap();
        w.write(big.clone()).await.unwrap();
        {
            let fut = w.write(big.clone());
            futures::pin_mut!(fut);
            if futures::poll!(fut.as_mut()).is_ready() {
                continue; // The previous disk write had already finished.
            }
        }
        interrupted = true;
        assert!(w.write(big.clone()).await.is_err(), "writer is poisoned");
        assert!(w.commit().await.is_err());
        break;
    }
    assert!(interrupted, "never caught a write in flight");
    assert!(!s.contains(&name2));
    assert!(tmp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn replace_keeps_open_readers_on_the_old_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = ObjectName::Endpoint("replace-me".into());
    let v1 = data(300 * KIB as usize, 10);
    let v2 = data(200 * KIB as usize, 11);
    put(&s, &name, &v1, 32 * 1024).await.unwrap();
    let old_reader = s.open_reader(&name).await.unwrap().unwrap();
    let meta2 = put(&s, &name, &v2, 32 * 1024).await.unwrap();
    assert_eq!(s.meta(&name), Some(meta2));
    assert_eq!(
        data_files(dir.path()).len(),
        1,
        "old version's file unlinked"
    );
    assert_eq!(old_reader.meta().hash, blake3::hash(&v1));
    assert_eq!(
        collect(old_reader, 4096).await,
        v1,
        "old reader reads old bytes intact"
    );
    assert_eq!(get(&s, &name).await.unwrap(), v2);
    assert_eq!(
        s.stats(),
        StorageStats {
            objects: 1,
            bytes: v2.len() as u64,
            memory_bytes: 0,
            disk_bytes: v2.len() as u64
        }
    );

    // Disk -> memory -> disk changes the counters accordingly.
    let v3 = data(500, 12);
    assert_eq!(
        put(&s, &name, &v3, 64).await.unwrap().location,
        Location::Memory
    );
    assert!(data_files(dir.path()).is_empty());
    assert_eq!(s.stats().memory_bytes, 500);
    assert_eq!(s.stats().disk_bytes, 0);
    assert_eq!(s.memory_reserved(), 500);
    put(&s, &name, &v2, 64 * 1024).await.unwrap();
    assert_eq!(s.memory_reserved(), 0);
    assert_consistent(&s);
}

#[tokio::test]
async fn evict_present_and_missing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let (m, d) = (nid(), nid());
    let dd = data(100 * KIB as usize, 13);
    put(&s, &m, b"tiny", 4).await.unwrap();
    put(&s, &d, &dd, 8192).await.unwrap();
    let reader = s.open_reader(&d).await.unwrap().unwrap();

    assert!(s.evict(&m).await.unwrap());
    assert!(!s.contains(&m));
    assert_eq!(s.memory_reserved(), 0);
    assert!(s.evict(&d).await.unwrap());
    assert!(objects(dir.path()).is_empty(), "evicted file removed");
    assert!(s.open_reader(&d).await.unwrap().is_none());
    assert!(!s.evict(&d).await.unwrap(), "second evict finds nothing");
    assert!(!s.evict(&nid()).await.unwrap());
    assert_eq!(s.stats(), StorageStats::default());
    assert_eq!(
        reader.read_all().await.unwrap(),
        dd,
        "reader opened before evict still reads"
    );
}

#[tokio::test]
async fn truncated_file_is_reported_not_silently_short() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = nid();
    put(&s, &name, &data(100 * KIB as usize, 14), 8192)
        .await
        .unwrap();
    let file = &data_files(dir.path())[0];
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let mut stream = s
        .open_reader(&name)
        .await
        .unwrap()
        .unwrap()
        .into_stream(4096);
    let mut err = None;
    while let Some(c) = stream.next().await {
        if let Err(e) = c {
            err = Some(e);
        }
    }
    assert_eq!(err.unwrap().kind(), std::io::ErrorKind::UnexpectedEof);
    let e = s
        .open_reader(&name)
        .await
        .unwrap()
        .unwrap()
        .read_all()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_bit_flipped_at_rest_fails_the_read_and_drops_the_object() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let (name, other) = (nid(), nid());
    let bytes = data(300 * KIB as usize, 15);
    put(&s, &name, &bytes, 8192).await.unwrap();
    // Intact objects read back whole (verification passes).
    assert_eq!(get(&s, &name).await.unwrap(), bytes);
    let file = data_files(dir.path())[0].clone();
    put(&s, &other, &data(200 * KIB as usize, 16), 8192)
        .await
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    f.seek(SeekFrom::Start(123_456)).unwrap();
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(123_456)).unwrap();
    f.write_all(&[b[0] ^ 0x10]).unwrap();
    drop(f);

    // Streamed: every chunk but the last comes out, then the error; the
    // bytes received are never the whole object.
    let mut stream = s
        .open_reader(&name)
        .await
        .unwrap()
        .unwrap()
        .into_stream(4096);
    let (mut got, mut err) = (0usize, None);
    while let Some(c) = stream.next().await {
        match c {
            Ok(c) => got += c.len(),
            Err(e) => err = Some(e),
        }
    }
    assert!(got < bytes.len());
    let err = err.expect("the corruption is reported");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    // Dropped from the store (asynchronously), files and all; others untouched.
    for _ in 0..100 {
        if !s.contains(&name) && !file.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!s.contains(&name));
    assert!(!file.exists());
    assert!(get(&s, &other).await.is_some());
    assert_consistent(&s);
}

#[tokio::test]
async fn read_all_verifies_disk_objects_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = nid();
    put(&s, &name, &data(100 * KIB as usize, 17), 8192)
        .await
        .unwrap();
    let file = data_files(dir.path())[0].clone();
    let mut raw = std::fs::read(&file).unwrap();
    raw[0] ^= 1;
    std::fs::write(&file, raw).unwrap();
    let e = s
        .open_reader(&name)
        .await
        .unwrap()
        .unwrap()
        .read_all()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
}

fn persist_cfg(dir: &Path) -> StorageConfig {
    StorageConfig {
        persist: true,
        ..cfg(dir)
    }
}

#[tokio::test]
async fn persist_objects_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let small = data(1000, 15);
    let big = data(3 * MIB as usize + 17, 16);
    let (a, b) = (nid(), ObjectName::Endpoint("ep/key with spaces".into()));
    let (ma, mb) = {
        let s = Storage::open(persist_cfg(dir.path())).await.unwrap();
        let ma = put(&s, &a, &small, 100).await.unwrap();
        let mb = put(&s, &b, &big, 100_000).await.unwrap();
        assert_eq!(
            ma.location,
            Location::Memory,
            "memory objects keep their in-memory copy"
        );
        assert_eq!(
            objects(dir.path()).len(),
            5,
            "data + sidecar for both, and the disk object's outboard"
        );
        s.shutdown().await.unwrap();
        assert_eq!(objects(dir.path()).len(), 5, "persist shutdown keeps files");
        (ma, mb)
    };
    let s = Storage::open(persist_cfg(dir.path())).await.unwrap();
    assert_eq!(s.meta(&a), Some(ma));
    assert_eq!(s.meta(&b), Some(mb));
    assert_eq!(get(&s, &a).await.unwrap(), small);
    assert_eq!(get(&s, &b).await.unwrap(), big);
    assert_eq!(s.stats().objects, 2);
    assert_consistent(&s);

    // Evict and replace persist too.
    assert!(s.evict(&a).await.unwrap());
    put(&s, &b, b"replaced", 3).await.unwrap();
    assert_eq!(objects(dir.path()).len(), 2);
    drop(s);
    let s = Storage::open(persist_cfg(dir.path())).await.unwrap();
    assert!(!s.contains(&a));
    assert_eq!(get(&s, &b).await.unwrap(), b"replaced");
    assert_consistent(&s);
}

#[tokio::test]
async fn persist_drops_corrupt_and_garbled_files_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<_> = (0..3).map(|_| nid()).collect();
    let contents: Vec<_> = (0..3)
        .map(|i| data(200 * KIB as usize, 20 + i as u8))
        .collect();
    {
        let s = Storage::open(persist_cfg(dir.path())).await.unwrap();
        for (n, c) in names.iter().zip(&contents) {
            put(&s, n, c, 50_000).await.unwrap();
        }
    }
    // Find the file of names[1] through its sidecar, and flip one byte.
    let victim = objects(dir.path())
        .into_iter()
        .find(|p| {
            p.extension().is_some_and(|e| e == "meta")
                && std::fs::read_to_string(p)
                    .unwrap()
                    .contains(&names[1].to_string())
        })
        .unwrap()
        .with_extension("data");
    let mut raw = std::fs::read(&victim).unwrap();
    raw[12345] ^= 0x01;
    std::fs::write(&victim, raw).unwrap();
    // Plus: garbled sidecar, orphan data file, stray files.
    let objs = dir.path().join("objects");
    let garbled = super::layout::FileId::random();
    std::fs::write(objs.join(format!("{garbled}.meta")), b"{not json").unwrap();
    std::fs::write(objs.join(format!("{garbled}.data")), b"x").unwrap();
    let orphan = super::layout::FileId::random();
    std::fs::write(objs.join(format!("{orphan}.data")), b"orphan").unwrap();
    std::fs::write(objs.join("README"), b"?").unwrap();
    let stray_outboard = objs.join(format!("{}.obao", super::layout::FileId::random()));
    std::fs::write(&stray_outboard, [0u8; 64]).unwrap();
    std::fs::write(
        dir.path().join("tmp").join("leftover.data.part"),
        b"partial",
    )
    .unwrap();

    let s = Storage::open(persist_cfg(dir.path())).await.unwrap();
    assert!(!s.contains(&names[1]), "corrupted object not loaded");
    assert!(!victim.exists(), "corrupted data file deleted");
    assert!(!victim.with_extension("meta").exists(), "its sidecar too");
    assert_eq!(get(&s, &names[0]).await.unwrap(), contents[0]);
    assert_eq!(get(&s, &names[2]).await.unwrap(), contents[2]);
    assert_eq!(s.stats().objects, 2);
    assert_eq!(
        objects(dir.path()).len(),
        6,
        "only the two good (disk) objects remain, each with its outboard"
    );
    assert!(
        !stray_outboard.exists(),
        "an outboard without data is deleted"
    );
    assert!(!victim.with_extension("obao").exists());
    assert!(tmp_files(dir.path()).is_empty());
    assert_consistent(&s);
}

#[tokio::test]
async fn persist_memory_objects_reload_into_memory_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = persist_cfg(dir.path());
    c.memory_cap = 10 * KIB;
    let names: Vec<_> = (0..4).map(|_| nid()).collect();
    {
        let s = Storage::open(c.clone()).await.unwrap();
        for n in &names {
            put(&s, n, &data(4 * KIB as usize, 1), 1024).await.unwrap();
        }
        // Two fit in memory, the others overflow to disk; all have files.
        assert_eq!(s.stats().memory_bytes, 8 * KIB);
        assert_eq!(data_files(dir.path()).len(), 4);
    }
    let s = Storage::open(c).await.unwrap();
    assert_eq!(s.stats().objects, 4);
    assert_eq!(
        s.stats().memory_bytes,
        8 * KIB,
        "reload fills memory up to the cap"
    );
    assert_consistent(&s);
}

#[tokio::test]
async fn non_persist_reopen_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let name = nid();
    {
        let s = Storage::open(cfg(dir.path())).await.unwrap();
        put(&s, &name, &data(100 * KIB as usize, 30), 8192)
            .await
            .unwrap();
        put(&s, &nid(), b"mem", 3).await.unwrap();
        assert_eq!(data_files(dir.path()).len(), 1);
        s.shutdown().await.unwrap();
        assert!(
            objects(dir.path()).is_empty(),
            "shutdown removes object files"
        );
        assert!(!s.contains(&name), "and their entries");
        assert_eq!(s.stats().disk_bytes, 0);
        assert_eq!(s.stats().objects, 1, "memory objects need nothing");
        // Simulate a crash: files left behind without shutdown.
        put(&s, &name, &data(100 * KIB as usize, 31), 8192)
            .await
            .unwrap();
        std::fs::write(dir.path().join("tmp").join("x.data.part"), b"partial").unwrap();
    }
    assert!(!objects(dir.path()).is_empty());
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    assert_eq!(s.stats(), StorageStats::default());
    assert!(!s.contains(&name));
    assert!(objects(dir.path()).is_empty());
    assert!(tmp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn endpoint_and_native_names_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let id = ObjectId::random();
    let native = ObjectName::Native(id);
    let endpoint = ObjectName::Endpoint(id.to_string());
    let endpoint2 = ObjectName::Endpoint(format!("native:{id}"));
    {
        let s = Storage::open(persist_cfg(dir.path())).await.unwrap();
        put(&s, &native, b"native", 2).await.unwrap();
        put(&s, &endpoint, b"endpoint", 2).await.unwrap();
        put(&s, &endpoint2, &data(100 * KIB as usize, 40), 8192)
            .await
            .unwrap();
        assert_eq!(s.stats().objects, 3);
    }
    let s = Storage::open(persist_cfg(dir.path())).await.unwrap();
    assert_eq!(get(&s, &native).await.unwrap(), b"native");
    assert_eq!(get(&s, &endpoint).await.unwrap(), b"endpoint");
    assert_eq!(
        get(&s, &endpoint2).await.unwrap(),
        data(100 * KIB as usize, 40)
    );
    assert!(s.evict(&native).await.unwrap());
    assert!(s.contains(&endpoint));
    assert!(s.contains(&endpoint2));
}

#[tokio::test]
async fn a_directory_is_used_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let err = Storage::open(cfg(dir.path())).await.unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    drop(s);
    Storage::open(cfg(dir.path())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_one_name_leave_exactly_one_version() {
    for persist in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.persist = persist;
        c.memory_cap = 200 * KIB;
        let s = Arc::new(Storage::open(c.clone()).await.unwrap());
        let name = ObjectName::Endpoint("contended".into());
        // Sizes mix memory objects, spills, and overflow.
        let versions: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..24)
                .map(|i| data([1000, 50_000, 300_000][i % 3] + i, i as u8))
                .collect(),
        );
        let mut tasks = Vec::new();
        for i in 0..versions.len() {
            let (s, name, versions) = (s.clone(), name.clone(), versions.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..3 {
                    put(&s, &name, &versions[i], 7000).await.unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
        for _ in 0..4 {
            let (s, name, versions) = (s.clone(), name.clone(), versions.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    if let Some(r) = s.open_reader(&name).await.unwrap() {
                        let hash = r.meta().hash;
                        let got = collect(r, 8192).await;
                        assert_eq!(blake3::hash(&got), hash, "a reader saw a torn object");
                        assert!(versions.contains(&got));
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let meta = s.meta(&name).unwrap();
        let got = get(&s, &name).await.unwrap();
        assert!(versions.contains(&got));
        assert_eq!(blake3::hash(&got), meta.hash);
        assert_eq!(
            s.stats(),
            StorageStats {
                objects: 1,
                bytes: meta.size,
                memory_bytes: if meta.location == Location::Memory {
                    meta.size
                } else {
                    0
                },
                disk_bytes: if meta.location == Location::Disk {
                    meta.size
                } else {
                    0
                },
            }
        );
        assert_consistent(&s);
        // Data (+ sidecar when persisting, + outboard on disk).
        let expected_files = match (persist, meta.location) {
            (true, Location::Disk) => 3,
            (true, Location::Memory) => 2,
            (false, Location::Disk) => 2,
            (false, Location::Memory) => 0,
        };
        assert_eq!(
            objects(dir.path()).len(),
            expected_files,
            "persist={persist}"
        );
        assert!(tmp_files(dir.path()).is_empty());
        if persist {
            drop(s);
            let s = Storage::open(c).await.unwrap();
            assert_eq!(get(&s, &name).await.unwrap(), got);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mixed_operations_keep_counters_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.memory_cap = 256 * KIB;
    let s = Arc::new(Storage::open(c).await.unwrap());
    let names: Arc<Vec<ObjectName>> = Arc::new(
        (0..6)
            .map(|i| {
                if i % 2 == 0 {
                    nid()
                } else {
                    ObjectName::Endpoint(format!("k{i}"))
                }
            })
            .collect(),
    );
    let mut tasks = Vec::new();
    for t in 0..12usize {
        let (s, names) = (s.clone(), names.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..40usize {
                let name = &names[(t * 7 + round) % names.len()];
                match (t + round) % 5 {
                    0 => {
                        s.evict(name).await.unwrap();
                    }
                    1 => {
                        // Abandoned writer.
                        let mut w = s.writer(name.clone(), None).unwrap();
                        w.write(Bytes::from(vec![1u8; 90_000])).await.unwrap();
                    }
                    2 => {
                        if let Some(r) = s.open_reader(name).await.unwrap() {
                            let h = r.meta().hash;
                            assert_eq!(blake3::hash(&r.read_all().await.unwrap()), h);
                        }
                    }
                    _ => {
                        let len = [10, 40_000, 120_000][round % 3];
                        put(&s, name, &data(len, round as u8), 16_384)
                            .await
                            .unwrap();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_consistent(&s);
    let disk_objects = s
        .inner
        .index_entries()
        .iter()
        .filter(|m| m.location == Location::Disk)
        .count();
    assert_eq!(
        data_files(dir.path()).len(),
        disk_objects,
        "no leaked or missing files"
    );
    assert!(tmp_files(dir.path()).is_empty());
    let files: HashSet<_> = data_files(dir.path()).into_iter().collect();
    assert_eq!(files.len(), disk_objects);
}

#[test]
fn types_are_thread_safe_and_futures_send() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    fn check(s: &Storage, w: &mut ObjectWriter, name: &ObjectName) {
        send_sync(s);
        send(w);
        send(&s.open_reader(name));
        send(&s.evict(name));
        send(&s.shutdown());
        send(&w.write(Bytes::new()));
    }
    let _ = check;
    fn commit_is_send(w: ObjectWriter) {
        send(&w.commit());
    }
    let _ = commit_is_send;
    fn open_is_send(c: StorageConfig) {
        send(&Storage::open(c));
    }
    let _ = open_is_send;
}

/// Throughput measurement, not a pass/fail test:
/// `cargo test --release -p proxymesh-daemon --lib storage::tests::throughput -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release with --ignored --nocapture"]
async fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = nid();
    const CHUNK: usize = 64 * 1024;
    let total: usize = 2 << 30;
    let chunk = Bytes::from(data(CHUNK, 50));
    let started = std::time::Instant::now();
    let mut w = s.writer(name.clone(), None).unwrap();
    for _ in 0..total / CHUNK {
        w.write(chunk.clone()).await.unwrap();
    }
    w.commit().await.unwrap();
    let write = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let mut stream = s
        .open_reader(&name)
        .await
        .unwrap()
        .unwrap()
        .into_stream(CHUNK);
    let mut n = 0;
    while let Some(c) = stream.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, total);
    let read = started.elapsed().as_secs_f64();
    let mib = (total >> 20) as f64;
    eprintln!(
        "2 GiB in 64 KiB chunks: write+hash {:.0} MiB/s, read {:.0} MiB/s",
        mib / write,
        mib / read
    );
}

#[tokio::test]
async fn io_failures_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(cfg(dir.path())).await.unwrap();
    let name = nid();

    // Creating the temp file fails.
    std::fs::remove_dir(dir.path().join("tmp")).unwrap();
    let mut w = s.writer(name.clone(), None).unwrap();
    w.write(Bytes::from(vec![1u8; 1000])).await.unwrap();
    let err = w
        .write(Bytes::from(vec![1u8; 2 * MIB as usize]))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Io(_)), "{err}");
    assert_eq!(s.memory_reserved(), 0);
    assert!(w.commit().await.is_err());
    std::fs::create_dir(dir.path().join("tmp")).unwrap();

    // Publishing (rename into objects/) fails at commit.
    let mut w = s.writer(name.clone(), Some(3 * MIB)).unwrap();
    w.write(Bytes::from(vec![2u8; 3 * MIB as usize]))
        .await
        .unwrap();
    std::fs::remove_dir(dir.path().join("objects")).unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(matches!(err, StorageError::Io(_)), "{err}");
    assert!(
        tmp_files(dir.path()).is_empty(),
        "temp file removed after failed commit"
    );
    assert!(!s.contains(&name));
    assert_eq!(s.stats(), StorageStats::default());
    assert_eq!(s.memory_reserved(), 0);
}

/// Every stored object can be sent as a verified range, from memory, from
/// disk, and after a persisted reopen (whose outboards are rebuilt).
#[tokio::test]
async fn outboards_are_kept_as_objects_are_put_and_prove_any_range() {
    use crate::mesh::verified::{RangeDecoder, Step};
    use crate::storage::outboard::{encode_range, Data};

    async fn check(s: &Storage, name: &ObjectName, want: &[u8]) {
        let reader = s.open_reader(name).await.unwrap().unwrap();
        let size = want.len() as u64;
        for (offset, len) in [
            (0, size),
            (size / 3, size / 2),
            (size.saturating_sub(1), size.min(1)),
        ] {
            // Blocking calls on small files: fine in a test.
            let outboard = reader.outboard().unwrap();
            let mut enc = Vec::new();
            match &reader {
                ObjectReader::Memory { data, .. } => {
                    encode_range(Data::Memory(data), &outboard, offset, len, &mut enc)
                }
                ObjectReader::File { file, .. } => {
                    let f = file.try_clone().await.unwrap().into_std().await;
                    encode_range(Data::File(&f), &outboard, offset, len, &mut enc)
                }
            }
            .unwrap();
            let mut dec = RangeDecoder::new(blake3::hash(want), size, offset, len);
            let mut buf = bytes::BytesMut::from(&enc[..]);
            let mut got = Vec::new();
            loop {
                match dec.next(&mut buf).unwrap() {
                    Step::Data(_, d) => got.extend_from_slice(&d),
                    Step::Parent(..) => {}
                    Step::Done => break,
                    Step::NeedMore(n) => panic!("encoding short by {n}"),
                }
            }
            assert!(
                got == want[offset as usize..(offset + len) as usize],
                "{offset}+{len}"
            );
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let small = data(40 * KIB as usize + 3, 1);
    let big = data(3 * MIB as usize + 17, 2);
    let (a, b) = (nid(), nid());
    {
        let s = Storage::open(persist_cfg(dir.path())).await.unwrap();
        assert_eq!(
            put(&s, &a, &small, 7000).await.unwrap().location,
            Location::Memory
        );
        assert_eq!(
            put(&s, &b, &big, 100_000).await.unwrap().location,
            Location::Disk
        );
        check(&s, &a, &small).await;
        check(&s, &b, &big).await;
        s.shutdown().await.unwrap();
    }
    // A lost outboard is rebuilt when the store is opened again.
    let obao: Vec<_> = objects(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "obao"))
        .collect();
    assert_eq!(obao.len(), 1, "the disk object's outboard");
    std::fs::remove_file(&obao[0]).unwrap();
    let s = Storage::open(persist_cfg(dir.path())).await.unwrap();
    check(&s, &a, &small).await;
    check(&s, &b, &big).await;
}
