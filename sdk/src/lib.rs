//! proxymesh SDK.
pub mod api;
pub mod connector;
mod error;
mod key;

pub use connector::{ByteStream, Connector, ConnectorConfig, DaemonConnector, FileConnector, LocalConnector};
pub use error::{Error, Result};
pub use key::{Key, KeyError, ObjectId, TICKET_PREFIX};
