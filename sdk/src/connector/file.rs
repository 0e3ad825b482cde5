//! [`FileConnector`]: objects as files in a (shared) directory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{ByteStream, Connector, ConnectorConfig};
use crate::error::{Error, Result};
use crate::key::{Key, ObjectId};

/// Chunk size of [`FileConnector::get_stream`].
const READ_CHUNK: usize = 256 * 1024;

/// Object storage in a directory, one file per object named by its object ID
/// (32 hex digits). Any process that sees the directory (a shared or network
/// file system) can read the objects, which makes it the simplest way to pass
/// proxies between processes on one machine or cluster.
///
/// Writes are atomic: data goes to a temporary file in the same directory,
/// which is then renamed into place, so readers never see a partial object.
/// (They are not `fsync`ed: objects are transient, not durable.)
/// [`put_stream`](Connector::put_stream) and [`get_stream`](Connector::get_stream)
/// stream to and from the file without holding the object in memory.
#[derive(Debug, Clone)]
pub struct FileConnector {
    dir: Arc<PathBuf>,
}

impl FileConnector {
    /// A connector on `dir`, which is created if missing. A relative path is
    /// made absolute (against the current directory) so that the
    /// connector's [`config`](Connector::config) means the same directory
    /// wherever it is rebuilt.
    pub fn new(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Io(io::Error::new(
                e.kind(),
                format!("cannot create object directory {}: {e}", dir.display()),
            ))
        })?;
        let dir = std::path::absolute(dir)?;
        Ok(Self { dir: Arc::new(dir) })
    }

    /// The object directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of the object under `key`.
    pub fn path_of(&self, key: &Key) -> Result<PathBuf> {
        Ok(self.object_path(Self::check(key)?))
    }

    fn object_path(&self, id: ObjectId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn temp_path(&self, id: ObjectId) -> PathBuf {
        self.dir
            .join(format!(".tmp-{id}-{:016x}", rand::random::<u64>()))
    }

    fn check(key: &Key) -> Result<ObjectId> {
        super::peerless_id(key, "a FileConnector")
    }

    fn io_err(&self, what: &str, path: &Path, e: io::Error) -> Error {
        Error::Io(io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", path.display()),
        ))
    }

    /// Write `data` atomically as object `id`.
    async fn write_object(&self, id: ObjectId, data: Bytes) -> Result<()> {
        let tmp = self.temp_path(id);
        if let Err(e) = tokio::fs::write(&tmp, &data).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(self.io_err("cannot write", &tmp, e));
        }
        self.commit(&tmp, id).await
    }

    /// Rename a finished temporary file into place.
    async fn commit(&self, tmp: &Path, id: ObjectId) -> Result<()> {
        let path = self.object_path(id);
        if let Err(e) = tokio::fs::rename(tmp, &path).await {
            let _ = tokio::fs::remove_file(tmp).await;
            return Err(self.io_err("cannot move object into place at", &path, e));
        }
        Ok(())
    }

    async fn stream_to(&self, tmp: &Path, mut stream: ByteStream) -> io::Result<()> {
        let mut file = tokio::fs::File::create(tmp).await?;
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Connector for FileConnector {
    async fn put(&self, data: Bytes) -> Result<Key> {
        let id = ObjectId::random();
        self.write_object(id, data).await?;
        Ok(Key::local(id))
    }

    async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(v) => Ok(Some(Bytes::from(v))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_err("cannot read", &path, e)),
        }
    }

    async fn exists(&self, key: &Key) -> Result<bool> {
        let path = self.path_of(key)?;
        tokio::fs::try_exists(&path)
            .await
            .map_err(|e| self.io_err("cannot check", &path, e))
    }

    async fn evict(&self, key: &Key) -> Result<()> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_err("cannot remove", &path, e)),
        }
    }

    async fn new_key(&self) -> Result<Key> {
        Ok(Key::local(ObjectId::random()))
    }

    async fn set(&self, key: &Key, data: Bytes) -> Result<()> {
        let id = Self::check(key)?;
        self.write_object(id, data).await
    }

    fn config(&self) -> ConnectorConfig {
        ConnectorConfig::File {
            dir: self.dir.as_ref().clone(),
        }
    }

    async fn put_stream(&self, stream: ByteStream) -> Result<Key> {
        let id = ObjectId::random();
        let tmp = self.temp_path(id);
        if let Err(e) = self.stream_to(&tmp, stream).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(self.io_err("cannot write", &tmp, e));
        }
        self.commit(&tmp, id).await?;
        Ok(Key::local(id))
    }

    async fn get_stream(&self, key: &Key) -> Result<Option<ByteStream>> {
        let path = self.path_of(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Some(
                tokio_util::io::ReaderStream::with_capacity(f, READ_CHUNK).boxed(),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_err("cannot open", &path, e)),
        }
    }
}
