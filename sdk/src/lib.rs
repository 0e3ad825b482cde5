//! proxymesh SDK.
pub mod api;
pub mod connector;
mod error;
mod key;
pub mod runtime;

pub use connector::{
    ByteStream, Connector, ConnectorConfig, DaemonConnector, FileConnector, LocalConnector,
};
pub use error::{Error, Result};
pub use key::TICKET_PREFIX;
pub use key::{Key, KeyError, ObjectId};
