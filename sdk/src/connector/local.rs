//! stub
/// stub
#[derive(Debug)]
pub struct LocalConnector;
impl LocalConnector { pub(crate) fn lookup(_i: uuid::Uuid) -> crate::Result<Self> { todo!() } }
#[async_trait::async_trait]
impl super::Connector for LocalConnector {
    async fn put(&self, _d: bytes::Bytes) -> crate::Result<crate::Key> { todo!() }
    async fn get(&self, _k: &crate::Key) -> crate::Result<Option<bytes::Bytes>> { todo!() }
    async fn exists(&self, _k: &crate::Key) -> crate::Result<bool> { todo!() }
    async fn evict(&self, _k: &crate::Key) -> crate::Result<()> { todo!() }
    async fn new_key(&self) -> crate::Result<crate::Key> { todo!() }
    async fn set(&self, _k: &crate::Key, _d: bytes::Bytes) -> crate::Result<()> { todo!() }
    fn config(&self) -> super::ConnectorConfig { todo!() }
}
