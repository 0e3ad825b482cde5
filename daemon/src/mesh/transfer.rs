//! STUB (the data-plane owner replaces this): serving the fetch protocol.
use std::sync::Arc;

use crate::storage::Storage;

/// Serve inbound fetch-protocol streams from `storage`.
pub async fn serve(_incoming: libp2p_stream::IncomingStreams, _storage: Arc<Storage>) {
    todo!("data plane")
}
