//! Reading committed objects: opening the current version, and turning an
//! [`ObjectReader`] into chunks or one buffer.
//!
//! Objects on disk are verified as they are read: the bytes are hashed on
//! the way out and the last chunk is released only once the BLAKE3 matches
//! the one recorded at commit, so a file damaged at rest (a flipped bit, a
//! truncation, a tampering hand) ends the read with `InvalidData` instead of
//! serving wrong bytes as complete, and that version is dropped from the
//! store with an error in the log. Objects in memory are the daemon's own
//! memory and are not re-hashed.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::error::classify;
use super::layout::{FileId, Kind};
use super::outboard::Outboard;
use super::{ChunkStream, Inner, ObjectMeta, ObjectName, ObjectReader, StorageError};

/// How many times to chase a version that was replaced between lookup and open.
const OPEN_ATTEMPTS: usize = 8;

impl Inner {
    /// Open the current version of `name`. A version evicted or replaced
    /// between the lookup and the open is retried against the new state.
    pub(crate) async fn open_reader(
        self: &Arc<Self>,
        name: &ObjectName,
    ) -> Result<Option<ObjectReader>, StorageError> {
        for _ in 0..OPEN_ATTEMPTS {
            let Some(snap) = self.index.snapshot(name) else {
                return Ok(None);
            };
            if let Some(data) = snap.data {
                return Ok(Some(ObjectReader::Memory {
                    data,
                    meta: snap.meta,
                    outboard: snap.outboard.unwrap_or_default(),
                }));
            }
            let id = snap.file.expect("a disk entry has a file");
            match tokio::fs::File::open(self.layout.path(id, Kind::Data)).await {
                Ok(file) => {
                    return Ok(Some(ObjectReader::File {
                        file,
                        meta: snap.meta,
                        quarantine: Box::new(Quarantine {
                            inner: Arc::downgrade(self),
                            name: name.clone(),
                            file: id,
                        }),
                        outboard: self.layout.path(id, Kind::Outboard),
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Replaced or evicted meanwhile? Then look again.
                    let same = self.index.snapshot(name).and_then(|s| s.file) == Some(id);
                    if same {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("data file of {name} vanished from the data directory"),
                        )
                        .into());
                    }
                }
                Err(e) => return Err(classify(e)),
            }
        }
        Err(io::Error::other(format!("{name} kept being replaced while opening it")).into())
    }
}

/// Drops one stored version whose bytes failed verification.
#[derive(Debug, Clone)]
pub struct Quarantine {
    inner: std::sync::Weak<Inner>,
    name: ObjectName,
    file: FileId,
}

impl Quarantine {
    /// The version's bytes do not match its hash: log it, drop it from the
    /// store (unless it was replaced meanwhile), and say so in an error.
    fn corrupt(&self, expected: &blake3::Hash, got: &blake3::Hash) -> io::Error {
        tracing::error!(name = %self.name, %expected, %got, "stored object is corrupt (damaged at rest); dropping it");
        if let Some(inner) = self.inner.upgrade() {
            if let Some(entry) = inner.index.remove_version(&self.name, self.file) {
                tokio::spawn(async move { inner.discard_entry(entry).await });
            }
        }
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "stored object {} is corrupt (its BLAKE3 is {got}, {expected} was recorded); it was dropped",
                self.name
            ),
        )
    }
}

impl ObjectReader {
    /// The object's BLAKE3 outboard, to serve verified ranges from. Opens
    /// a disk object's `.obao` file (blocking).
    pub fn outboard(&self) -> io::Result<Outboard> {
        match self {
            ObjectReader::Memory { meta, outboard, .. } => {
                Ok(Outboard::memory(meta.hash, meta.size, outboard.clone()))
            }
            ObjectReader::File { meta, outboard, .. } => {
                let file = std::fs::File::open(outboard).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("the outboard of a stored object cannot be opened: {e}"),
                    )
                })?;
                Outboard::file(meta.hash, meta.size, file)
            }
        }
    }

    /// Metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            ObjectReader::Memory { meta, .. } | ObjectReader::File { meta, .. } => meta,
        }
    }

    /// The bytes as a stream of chunks of about `chunk_size` bytes. A file
    /// shorter than the recorded size ends the stream with `UnexpectedEof`;
    /// one whose bytes do not match the recorded hash ends it with
    /// `InvalidData` before its last chunk (see the module docs).
    pub fn into_stream(self, chunk_size: usize) -> ChunkStream {
        let chunk_size = chunk_size.max(1);
        match self {
            ObjectReader::Memory { data, .. } => {
                let n = data.len().div_ceil(chunk_size);
                Box::pin(futures::stream::iter((0..n).map(move |i| {
                    let start = i * chunk_size;
                    Ok(data.slice(start..(start + chunk_size).min(data.len())))
                })))
            }
            ObjectReader::File {
                file,
                meta,
                quarantine,
                ..
            } => {
                let size = meta.size;
                let inner = ReaderStream::with_capacity(file.take(size), chunk_size);
                let state = Verify {
                    inner,
                    remaining: size,
                    hasher: blake3::Hasher::new(),
                    expected: meta.hash,
                    quarantine,
                    done: false,
                };
                Box::pin(futures::stream::unfold(state, |mut st| async move {
                    if st.done {
                        return None;
                    }
                    let item = match st.inner.next().await {
                        Some(Ok(b)) => {
                            st.remaining -= b.len() as u64;
                            st.hasher.update(&b);
                            if st.remaining == 0 {
                                // The last chunk: released only if the hash holds.
                                st.done = true;
                                st.check().map(|()| b)
                            } else {
                                Ok(b)
                            }
                        }
                        Some(Err(e)) => {
                            st.done = true;
                            Err(e)
                        }
                        None if st.remaining > 0 => {
                            st.done = true;
                            Err(short_file(st.remaining))
                        }
                        // An empty object.
                        None => {
                            st.done = true;
                            match st.check() {
                                Ok(()) => return None,
                                Err(e) => Err(e),
                            }
                        }
                    };
                    Some((item, st))
                }))
            }
        }
    }

    /// All the bytes at once (for small objects).
    pub async fn read_all(self) -> io::Result<Bytes> {
        match self {
            ObjectReader::Memory { data, .. } => Ok(data),
            ObjectReader::File {
                file,
                meta,
                quarantine,
                ..
            } => {
                let size = usize::try_from(meta.size).map_err(io::Error::other)?;
                let mut buf = Vec::with_capacity(size);
                file.take(meta.size).read_to_end(&mut buf).await?;
                if buf.len() < size {
                    return Err(short_file((size - buf.len()) as u64));
                }
                let got = blake3::hash(&buf);
                if got != meta.hash {
                    return Err(quarantine.corrupt(&meta.hash, &got));
                }
                Ok(Bytes::from(buf))
            }
        }
    }
}

/// The state of a verified file stream.
struct Verify<R> {
    inner: R,
    remaining: u64,
    hasher: blake3::Hasher,
    expected: blake3::Hash,
    quarantine: Box<Quarantine>,
    done: bool,
}

impl<R> Verify<R> {
    fn check(&self) -> io::Result<()> {
        let got = self.hasher.finalize();
        if got == self.expected {
            Ok(())
        } else {
            Err(self.quarantine.corrupt(&self.expected, &got))
        }
    }
}

fn short_file(missing: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("object file is {missing} bytes shorter than recorded"),
    )
}
