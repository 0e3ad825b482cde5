//! stub
/// stub
#[derive(Debug)]
pub struct FileConnector;
impl FileConnector { pub fn new(_d: impl AsRef<std::path::Path>) -> crate::Result<Self> { todo!() } }
#[async_trait::async_trait]
impl super::Connector for FileConnector {
    async fn put(&self, _d: bytes::Bytes) -> crate::Result<crate::Key> { todo!() }
    async fn get(&self, _k: &crate::Key) -> crate::Result<Option<bytes::Bytes>> { todo!() }
    async fn exists(&self, _k: &crate::Key) -> crate::Result<bool> { todo!() }
    async fn evict(&self, _k: &crate::Key) -> crate::Result<()> { todo!() }
    async fn new_key(&self) -> crate::Result<crate::Key> { todo!() }
    async fn set(&self, _k: &crate::Key, _d: bytes::Bytes) -> crate::Result<()> { todo!() }
    fn config(&self) -> super::ConnectorConfig { todo!() }
}
