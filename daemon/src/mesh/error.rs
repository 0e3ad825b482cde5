//! Typed errors of remote operations. Each names the peer (and the object,
//! where there is one), so a message says exactly what failed where.

use std::time::Duration;

use libp2p::PeerId;

use super::protocol::RemoteName;
use crate::storage::StorageError;

/// What went wrong talking to another daemon. Cloned for every waiter of
/// a coalesced fetch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MeshError {
    /// No connection to the peer could be made (no address, all dials failed, no relay).
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The peer does not have the object.
    #[error("peer {peer} has no object {id}")]
    NotFound {
        /// The peer.
        peer: PeerId,
        /// The object.
        id: RemoteName,
    },
    /// The peer refused the request.
    #[error("peer {peer} refused the request: {reason}")]
    Refused {
        /// The peer.
        peer: PeerId,
        /// Its reason.
        reason: String,
    },
    /// The peer does not know this daemon as a member of its mesh (it
    /// restarted, or membership was never proved on this connection).
    #[error("peer {peer} does not know this daemon as a member of its mesh: {reason}")]
    NotMember {
        /// The peer.
        peer: PeerId,
        /// Its reason.
        reason: String,
    },
    /// The bytes received do not match the size or BLAKE3 hash announced.
    #[error("object {id} from peer {peer} arrived corrupt or truncated: {reason}")]
    Corrupt {
        /// The peer.
        peer: PeerId,
        /// The object.
        id: RemoteName,
        /// What did not match.
        reason: String,
    },
    /// A phase (connect, hole punch, request, idle stream) took too long.
    #[error("timed out after {after:?} during {phase} with peer {peer}{}", id.as_ref().map(|i| format!(" (object {i})")).unwrap_or_default())]
    TimedOut {
        /// The peer.
        peer: PeerId,
        /// The object, if the operation had one.
        id: Option<RemoteName>,
        /// Which phase.
        phase: &'static str,
        /// The limit that ran out.
        after: Duration,
    },
    /// The peer broke the protocol (bad header, unexpected answer).
    #[error("protocol error with peer {peer}: {reason}")]
    Protocol {
        /// The peer.
        peer: PeerId,
        /// What was wrong.
        reason: String,
    },
    /// Storing the fetched object locally failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What an I/O failure on a stream to a peer means, in words (the error's
/// own text is a transport internal such as `00000002/7: connection is
/// closed`).
pub fn stream_failure(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            "the connection to it closed"
        }
        K::TimedOut => "the connection to it timed out",
        K::ConnectionRefused => "it refused the connection",
        _ => "the connection to it failed",
    }
}

/// Why a stream of `what` (a protocol) could not be opened, in words.
pub fn open_failure(what: &str, e: &libp2p_stream::OpenStreamError) -> String {
    match e {
        libp2p_stream::OpenStreamError::UnsupportedProtocol(_) => {
            format!("it does not speak {what} (is it a proxymesh daemon of the same version?)")
        }
        libp2p_stream::OpenStreamError::Io(e) => {
            format!("no {what} stream could be opened: {}", stream_failure(e))
        }
        _ => format!("no {what} stream could be opened"),
    }
}
