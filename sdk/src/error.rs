//! The SDK's error type.

use crate::api::ErrorCode;
use crate::key::{Key, KeyError};

/// Result alias for SDK operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the SDK. Messages name the key, address or
/// file involved and, where there is one, what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed key, object ID or ticket.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The daemon answered with an error.
    #[error("daemon at {api} refused the request ({status}): {message}")]
    Daemon {
        /// The daemon's API address.
        api: String,
        /// HTTP status.
        status: u16,
        /// Machine-readable class.
        code: ErrorCode,
        /// The daemon's message.
        message: String,
    },
    /// The daemon could not be reached.
    #[error("cannot reach the proxymesh daemon at {api}: {reason} (is proxymeshd running? set {env} to its address)", env = crate::api::API_ENV)]
    Unreachable {
        /// The address tried.
        api: String,
        /// What failed.
        reason: String,
    },
    /// A key that this connector cannot serve (e.g. a daemon key given to a
    /// file connector, or an in-process key from another process).
    #[error("key {key} cannot be served by this connector: {reason}")]
    WrongConnector {
        /// The key.
        key: Key,
        /// Why.
        reason: String,
    },
    /// The object a proxy or `get` needed does not exist (any more).
    #[error("object {0} does not exist (evicted, or never stored)")]
    NotFound(Key),
    /// Encoding or decoding a value failed.
    #[error("serialization failed: {0}")]
    Serialization(String),
    /// A connector or store configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Local I/O failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
