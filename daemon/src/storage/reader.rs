//! Reading committed objects: opening the current version, and turning an
//! [`ObjectReader`] into chunks or one buffer.

use std::io;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::error::classify;
use super::layout::Kind;
use super::{ChunkStream, Inner, ObjectMeta, ObjectName, ObjectReader, StorageError};

/// How many times to chase a version that was replaced between lookup and open.
const OPEN_ATTEMPTS: usize = 8;

impl Inner {
    /// Open the current version of `name`. A version evicted or replaced
    /// between the lookup and the open is retried against the new state.
    pub(crate) async fn open_reader(
        &self,
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
                }));
            }
            let id = snap.file.expect("a disk entry has a file");
            match tokio::fs::File::open(self.layout.path(id, Kind::Data)).await {
                Ok(file) => {
                    return Ok(Some(ObjectReader::File {
                        file,
                        meta: snap.meta,
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Replaced or evicted meanwhile? Then look again.
                    let same = self.index.snapshot(name).and_then(|s| s.file) == Some(id);
                    if same {
                        return Err(StorageError::Io(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("data file of {name} vanished from the data directory"),
                        )));
                    }
                }
                Err(e) => return Err(classify(e)),
            }
        }
        Err(StorageError::Io(io::Error::other(format!(
            "{name} kept being replaced while opening it"
        ))))
    }
}

impl ObjectReader {
    /// Metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            ObjectReader::Memory { meta, .. } | ObjectReader::File { meta, .. } => meta,
        }
    }

    /// The bytes as a stream of chunks of about `chunk_size` bytes. A file
    /// shorter than the recorded size ends the stream with `UnexpectedEof`.
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
            ObjectReader::File { file, meta } => {
                let size = meta.size;
                let inner = ReaderStream::with_capacity(file.take(size), chunk_size);
                Box::pin(futures::stream::unfold(
                    (inner, size, false),
                    |(mut inner, remaining, done)| async move {
                        if done {
                            return None;
                        }
                        match inner.next().await {
                            Some(Ok(b)) => {
                                let rest = remaining - b.len() as u64;
                                Some((Ok(b), (inner, rest, false)))
                            }
                            Some(Err(e)) => Some((Err(e), (inner, remaining, true))),
                            None if remaining > 0 => {
                                Some((Err(short_file(remaining)), (inner, 0, true)))
                            }
                            None => None,
                        }
                    },
                ))
            }
        }
    }

    /// All the bytes at once (for small objects).
    pub async fn read_all(self) -> io::Result<Bytes> {
        match self {
            ObjectReader::Memory { data, .. } => Ok(data),
            ObjectReader::File { file, meta } => {
                let size = usize::try_from(meta.size).map_err(io::Error::other)?;
                let mut buf = Vec::with_capacity(size);
                file.take(meta.size).read_to_end(&mut buf).await?;
                if buf.len() < size {
                    return Err(short_file((size - buf.len()) as u64));
                }
                Ok(Bytes::from(buf))
            }
        }
    }
}

fn short_file(missing: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("object file is {missing} bytes shorter than recorded"),
    )
}
