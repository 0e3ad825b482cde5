//! STUB (the data-plane owner replaces this): the fetch protocol.
use libp2p::StreamProtocol;
use proxymesh::ObjectId;

/// The fetch protocol.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/proxymesh/fetch/1");

/// An object at another daemon.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RemoteName {
    /// A proxymesh object ID.
    Native(ObjectId),
    /// A ProxyStore endpoint key.
    Endpoint(String),
}
