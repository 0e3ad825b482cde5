//! [`LocalObjects`]: the objects this daemon holds, behind the
//! [policy](super::policy). The fetch-protocol server uses it for other
//! members; [`Objects`](super::Objects) uses it for the local user.

use std::sync::Arc;

use bytes::Bytes;
use proxymesh::OwnerCap;

use super::policy::{authorize, Action, Caller, Grant, Refusal, Where};
use super::writes::RemoteWrites;
use super::Error;
use crate::identity::OwnerSecret;
use crate::mesh::protocol::RemoteName;
use crate::storage::{ObjectMeta, ObjectName, ObjectReader, ObjectWriter, Storage};

/// Default of [`LocalObjects`]' per-member write quota: bytes of ProxyStore
/// objects each other member may keep here through forwarded sets.
pub const DEFAULT_PEER_WRITE_QUOTA: u64 = 4 << 30;

/// This daemon's objects, with every operation authorized per caller.
#[derive(Debug)]
pub struct LocalObjects {
    storage: Arc<Storage>,
    owners: Arc<OwnerSecret>,
    writes: RemoteWrites,
    peer_write_quota: u64,
}

impl LocalObjects {
    /// The objects of `storage`, whose native owner capabilities derive
    /// from `owners`; each member may keep `peer_write_quota` bytes here.
    pub fn new(storage: Arc<Storage>, owners: Arc<OwnerSecret>, peer_write_quota: u64) -> Self {
        Self {
            storage,
            owners,
            writes: RemoteWrites::default(),
            peer_write_quota,
        }
    }

    /// The store underneath (for status and the fetcher's cache).
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The secret owner capabilities derive from.
    pub fn owners(&self) -> &Arc<OwnerSecret> {
        &self.owners
    }

    /// Open `name` for reading.
    pub async fn read(&self, caller: Caller, name: &RemoteName) -> Result<ObjectReader, Error> {
        self.allow(caller, Action::Read, name)?;
        self.storage
            .open_reader(&name.object_name())
            .await?
            .ok_or_else(|| Error::NotFound(name.to_string()))
    }

    /// Whether `caller` may read `name` (for copies served from outside
    /// storage, such as one still arriving).
    pub fn may_read(&self, caller: Caller, name: &RemoteName) -> Result<(), Error> {
        self.allow(caller, Action::Read, name).map(drop)
    }

    /// Size and hash of `name`, if held.
    pub fn meta(&self, caller: Caller, name: &RemoteName) -> Result<Option<ObjectMeta>, Error> {
        self.allow(caller, Action::Read, name)?;
        Ok(self.storage.meta(&name.object_name()))
    }

    /// Whether `name` is held.
    pub fn exists(&self, caller: Caller, name: &RemoteName) -> Result<bool, Error> {
        self.allow(caller, Action::Read, name)?;
        Ok(self.storage.contains(&name.object_name()))
    }

    /// Remove `name`; whether it was there. A member evicting a native
    /// object must prove its `owner` capability.
    pub async fn evict(
        &self,
        caller: Caller,
        name: &RemoteName,
        owner: Option<OwnerCap>,
    ) -> Result<bool, Error> {
        if let Grant::IfOwner = self.allow(caller, Action::Evict, name)? {
            let owns = match (name, &owner) {
                (RemoteName::Native(id), Some(cap)) => self.owners.verify(id, cap),
                _ => false,
            };
            if !owns {
                let why = if owner.is_some() {
                    "that is not the object's owner capability"
                } else {
                    "evicting needs the object's owner capability; a ticket only reads"
                };
                tracing::warn!(%caller, %name, "refused an evict: {why}");
                return Err(Error::Denied(format!("{why} (object {name})")));
            }
        }
        let evicted = self.storage.evict(&name.object_name()).await?;
        if let Caller::Member(peer) = caller {
            tracing::info!(%peer, %name, evicted, "evicted on request of a peer");
        }
        Ok(evicted)
    }

    /// A writer for `name` (`size` bytes, if known); nothing is visible
    /// until [`Writer::commit`]. A member's write is checked against its
    /// quota and the keys it may replace.
    pub fn writer(
        &self,
        caller: Caller,
        name: &RemoteName,
        size: Option<u64>,
    ) -> Result<Writer<'_>, Error> {
        let record = match self.allow(caller, Action::Write, name)? {
            Grant::WithinQuota(peer) => {
                let RemoteName::Endpoint(key) = name else {
                    unreachable!("the policy grants quota writes only for endpoint keys")
                };
                // A member announces its size up front (the fetch protocol does).
                let size = size.unwrap_or(u64::MAX);
                if let Err(why) =
                    self.writes
                        .admit(&self.storage, peer, key, size, self.peer_write_quota)
                {
                    tracing::warn!(%peer, %name, size, "refused a put: {why}");
                    return Err(Error::Denied(why));
                }
                Some((peer, key.clone()))
            }
            Grant::Yes | Grant::IfOwner => None,
        };
        Ok(Writer {
            inner: self.storage.writer(name.object_name(), size)?,
            record,
            book: &self.writes,
        })
    }

    /// A writer for a body held only while it is forwarded to another
    /// daemon (see [`ObjectName::Staging`](crate::storage::ObjectName)),
    /// and its name. The caller was authorized for the forwarded write.
    pub(super) fn staging_writer(
        &self,
        size: Option<u64>,
    ) -> Result<(ObjectName, Writer<'_>), Error> {
        let name = ObjectName::Staging(proxymesh::ObjectId::random());
        let inner = self.storage.writer(name.clone(), size)?;
        Ok((
            name,
            Writer {
                inner,
                record: None,
                book: &self.writes,
            },
        ))
    }

    /// Apply the policy for an object held here.
    fn allow(&self, caller: Caller, action: Action, name: &RemoteName) -> Result<Grant, Error> {
        authorize(caller, action, name, Where::Here).map_err(|r| {
            if let Caller::Member(peer) = caller {
                tracing::warn!(%peer, %name, ?action, "refused: {r}");
            }
            Error::from(r)
        })
    }
}

/// A write in progress through [`LocalObjects::writer`].
pub struct Writer<'a> {
    inner: ObjectWriter,
    /// A member's write, booked against its quota on commit.
    record: Option<(libp2p::PeerId, String)>,
    book: &'a RemoteWrites,
}

impl Writer<'_> {
    /// Append bytes.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        Ok(self.inner.write(chunk).await?)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.inner.written()
    }

    /// Publish the object.
    pub async fn commit(self) -> Result<ObjectMeta, Error> {
        let meta = self.inner.commit().await?;
        if let Some((peer, key)) = &self.record {
            tracing::info!(%peer, key, size = meta.size, "stored on request of a peer");
            self.book.record(*peer, key, meta.size);
        }
        Ok(meta)
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Forbidden(s) => Error::Denied(s),
            Refusal::Misdirected(s) => Error::WrongPeer(s),
        }
    }
}
