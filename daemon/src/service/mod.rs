//! The object service: one door behind every door. The native `/v1`
//! routes, ProxyStore's endpoint routes and the fetch protocol all turn
//! their requests into the same few operations here (read, exists, write,
//! evict), on a [`Target`] that says which object and which daemon holds
//! it. Whether the caller may do that is decided in one place,
//! [`policy::authorize`]; where the bytes come from (this daemon's store
//! or another site through the mesh) in [`Objects`].
//!
//! - [`Objects`]: the local user's view (the HTTP routes): this daemon's
//!   objects and, through the mesh, other sites' objects.
//! - [`LocalObjects`]: the objects this daemon holds; what the
//!   fetch-protocol server offers other members.
//!
//! ```no_run
//! # async fn demo(objects: &proxymesh_daemon::service::Objects, key: &proxymesh::Key)
//! # -> Result<(), proxymesh_daemon::service::Error> {
//! use proxymesh_daemon::service::Caller;
//! let target = objects.target_of_key(key)?;
//! if objects.exists(Caller::Local, &target).await? {
//!     let object = objects.get(Caller::Local, &target).await?;
//!     println!("{} bytes", object.size());
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use libp2p::{Multiaddr, PeerId};
use proxymesh::{Key, ObjectId, OwnerCap};
use uuid::Uuid;

use crate::mesh::fetcher::{Fetched, Ranged};
use crate::mesh::protocol::RemoteName;
use crate::mesh::{Mesh, MeshError};
use crate::storage::{ChunkStream, ObjectMeta, ObjectReader, Storage, StorageError};

pub mod local;
pub mod policy;
pub mod range;
mod writes;

pub use local::{LocalObjects, Writer, DEFAULT_PEER_WRITE_QUOTA};
pub use policy::Caller;
use policy::{authorize, Action, Where};

/// Why an operation failed, by kind (each door renders it its own way).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No such object here.
    #[error("no object {0} on this daemon")]
    NotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    Denied(String),
    /// The request names the wrong daemon for this operation.
    #[error("{0}")]
    WrongPeer(String),
    /// The daemon that should hold the object cannot be found.
    #[error("{0}")]
    NoRoute(String),
    /// The request body ended early or failed.
    #[error("request body ended early or failed ({0}); nothing was stored")]
    Incomplete(String),
    /// The object here is not what the ticket promised.
    #[error("{0}")]
    Corrupt(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Another daemon failed or refused.
    #[error(transparent)]
    Mesh(Box<MeshError>),
    /// No byte of the range asked for is in the object.
    #[error("the range asked for is outside the object's {0} bytes")]
    Unsatisfiable(u64),
}

impl Error {
    /// Whether the object does not exist (here, or at the daemon asked).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NotFound(_) => true,
            Error::Mesh(e) => matches!(**e, MeshError::NotFound { .. }),
            _ => false,
        }
    }
}

impl From<MeshError> for Error {
    fn from(e: MeshError) -> Self {
        Error::Mesh(Box::new(e))
    }
}

/// Which object an operation is about, and what the request proves about it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The object.
    pub name: RemoteName,
    /// Who holds it.
    pub site: Site,
    /// The BLAKE3 the key promises, checked on get.
    pub hash: Option<blake3::Hash>,
    /// The owner capability, if the key carries it (a peer's native
    /// objects are evicted with it).
    pub owner: Option<OwnerCap>,
}

/// Who holds an object.
#[derive(Debug, Clone)]
pub enum Site {
    /// This daemon.
    Here,
    /// Another daemon of the mesh.
    Peer {
        /// Its peer ID.
        peer: PeerId,
        /// Addresses to reach it through (relay circuits from a key).
        addrs: Vec<Multiaddr>,
    },
}

impl Target {
    /// A ProxyStore key or native object held here.
    pub fn here(name: RemoteName) -> Self {
        Self {
            name,
            site: Site::Here,
            hash: None,
            owner: None,
        }
    }

    fn at(&self) -> Where {
        match self.site {
            Site::Here => Where::Here,
            Site::Peer { .. } => Where::Peer,
        }
    }
}

/// An object being read.
pub enum Object {
    /// From this daemon's store.
    Here(ObjectReader),
    /// From another daemon (cached copy, or arriving now).
    Fetched(Fetched),
}

impl Object {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Object::Here(r) | Object::Fetched(Fetched::Cached { reader: r }) => r.meta().size,
            Object::Fetched(Fetched::Streaming { size, .. }) => *size,
        }
    }

    /// The bytes, in pieces of about `chunk` bytes.
    pub fn into_stream(self, chunk: usize) -> ChunkStream {
        match self {
            Object::Here(r) | Object::Fetched(Fetched::Cached { reader: r }) => {
                r.into_stream(chunk)
            }
            Object::Fetched(Fetched::Streaming { body, .. }) => body,
        }
    }
}

/// A range of an object being read ([`Objects::get_range`]).
pub struct RangeRead {
    /// The whole object's size.
    pub size: u64,
    /// The range's first byte and length.
    pub offset: u64,
    pub len: u64,
    /// Its bytes, verified as they come.
    pub body: ChunkStream,
}

/// The local user's view of every object: this daemon's and, through the
/// mesh, other sites'.
#[derive(Debug)]
pub struct Objects {
    local: Arc<LocalObjects>,
    mesh: Option<Mesh>,
    peer_id: PeerId,
    uuid: Uuid,
}

impl Objects {
    /// The service of daemon `peer_id` (ProxyStore endpoint `uuid`) over
    /// `local`, reaching other sites through `mesh`.
    pub fn new(local: Arc<LocalObjects>, mesh: Option<Mesh>, peer_id: PeerId, uuid: Uuid) -> Self {
        Self {
            local,
            mesh,
            peer_id,
            uuid,
        }
    }

    /// This daemon's own objects.
    pub fn local(&self) -> &LocalObjects {
        &self.local
    }

    /// The store underneath (for status).
    pub fn storage(&self) -> &Arc<Storage> {
        self.local.storage()
    }

    /// The mesh node, when the daemon joined a mesh.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// This daemon's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This daemon's ProxyStore endpoint UUID.
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }

    /// The key of this daemon's object `id`, for its owner (the local
    /// user): address hints, the owner capability, and the hash once known.
    pub fn key_for(&self, id: ObjectId, hash: Option<blake3::Hash>) -> Key {
        let mut key = Key::on_peer(id, self.peer_id);
        if let Some(mesh) = &self.mesh {
            key.addrs = mesh.advertised_addrs();
        }
        key.hash = hash.map(|h| *h.as_bytes());
        key.owner = Some(self.local.owners().cap(&id));
        key
    }

    /// Where a native key's object lives: here, or at another daemon of
    /// the mesh (refused when this daemon is in none).
    pub fn target_of_key(&self, key: &Key) -> Result<Target, Error> {
        let site = match key.peer {
            Some(p) if p == self.peer_id => Site::Here,
            Some(p) if self.mesh.is_some() => Site::Peer {
                peer: p,
                addrs: key.addrs.clone(),
            },
            Some(p) => {
                return Err(Error::WrongPeer(format!(
                    "object {} lives at peer {p}, not at this daemon ({}), and this daemon is not in a mesh \
                     (start it with --relay to fetch from other sites)",
                    key.id, self.peer_id
                )))
            }
            None => {
                return Err(Error::Invalid(format!(
                    "key {key} names no daemon (it belongs to an in-process or file connector)"
                )))
            }
        };
        Ok(Target {
            name: RemoteName::Native(key.id),
            site,
            hash: key.blake3(),
            owner: key.owner,
        })
    }

    /// The target of a `/v1/objects/{segment}` route: a bare object ID
    /// (this daemon's) or a ticket.
    pub fn target_of_segment(&self, segment: &str) -> Result<Target, Error> {
        use proxymesh::api::{parse_key_segment, KeySegment};
        match parse_key_segment(segment).map_err(|e| Error::Invalid(e.to_string()))? {
            KeySegment::Bare(id) => Ok(Target::here(RemoteName::Native(id))),
            KeySegment::Ticket(key) => self.target_of_key(&key),
        }
    }

    /// The target of a ProxyStore request: `key` at `endpoint` (a UUID:
    /// this daemon's, or one a member of the mesh registered; none: here).
    pub async fn target_of_endpoint(
        &self,
        key: String,
        endpoint: Option<&str>,
    ) -> Result<Target, Error> {
        let name = RemoteName::Endpoint(key);
        let Some(ep) = endpoint else {
            return Ok(Target::here(name));
        };
        let uuid = Uuid::parse_str(ep)
            .map_err(|_| Error::Invalid(format!("endpoint {ep:?} is not a valid UUID")))?;
        if uuid == self.uuid {
            return Ok(Target::here(name));
        }
        let found = match &self.mesh {
            Some(mesh) => mesh.find_endpoint(&uuid.to_string()).await,
            None => None,
        };
        match found {
            Some((peer, addrs)) => Ok(Target {
                name,
                site: Site::Peer { peer, addrs },
                hash: None,
                owner: None,
            }),
            None => Err(Error::NoRoute(format!(
                "endpoint {uuid} is not this endpoint ({}) and {}",
                self.uuid,
                if self.mesh.is_some() {
                    "no daemon of the mesh registered it"
                } else {
                    "this daemon is not in a mesh (start it with --relay)"
                }
            ))),
        }
    }

    /// Read an object: from the store here (its hash checked against the
    /// key's), or fetched from the daemon holding it.
    pub async fn get(&self, caller: Caller, t: &Target) -> Result<Object, Error> {
        match self.remote(caller, Action::Read, t)? {
            None => {
                let reader = self.local.read(caller, &t.name).await?;
                if let Some(want) = t.hash.filter(|w| *w != reader.meta().hash) {
                    return Err(Error::Corrupt(format!(
                        "object {} here has BLAKE3 {}, but the ticket promises {want}",
                        t.name,
                        reader.meta().hash
                    )));
                }
                Ok(Object::Here(reader))
            }
            Some((mesh, peer, addrs)) => Ok(Object::Fetched(
                mesh.fetcher()
                    .get_checked(peer, t.name.clone(), addrs, t.hash)
                    .await?,
            )),
        }
    }

    /// Bytes `range` of an object, each chunk group verified against its
    /// hash before it is handed out: read from the store here (or this
    /// daemon's cached copy) through the object's outboard, or asked of
    /// the daemon holding it (only the range crosses the mesh; it is not
    /// cached).
    pub async fn get_range(
        &self,
        caller: Caller,
        t: &Target,
        range: range::ByteRange,
    ) -> Result<RangeRead, Error> {
        let local = |reader: ObjectReader| -> Result<RangeRead, Error> {
            if let Some(want) = t.hash.filter(|w| *w != reader.meta().hash) {
                return Err(Error::Corrupt(format!(
                    "object {} has BLAKE3 {}, but the ticket promises {want}",
                    t.name,
                    reader.meta().hash
                )));
            }
            let size = reader.meta().size;
            let (offset, len) = range.resolve(size).ok_or(Error::Unsatisfiable(size))?;
            Ok(RangeRead {
                size,
                offset,
                len,
                body: range::verified_read(reader, offset, len),
            })
        };
        match self.remote(caller, Action::Read, t)? {
            None => local(self.local.read(caller, &t.name).await?),
            Some((mesh, peer, addrs)) => {
                match mesh
                    .fetcher()
                    .get_range(peer, t.name.clone(), addrs, t.hash, range)
                    .await?
                {
                    Ranged::Cached { reader } => local(reader),
                    Ranged::Streaming {
                        size,
                        offset,
                        len,
                        body,
                    } => Ok(RangeRead {
                        size,
                        offset,
                        len,
                        body,
                    }),
                    Ranged::Unsatisfiable { size } => Err(Error::Unsatisfiable(size)),
                }
            }
        }
    }

    /// Size of an object held here (`None` when it is elsewhere and
    /// exists), or `Err(NotFound)`.
    pub async fn size(&self, caller: Caller, t: &Target) -> Result<Option<u64>, Error> {
        let missing = || Error::NotFound(t.name.to_string());
        match self.remote(caller, Action::Read, t)? {
            None => match self.local.meta(caller, &t.name)? {
                Some(meta) => Ok(Some(meta.size)),
                None => Err(missing()),
            },
            Some((mesh, peer, addrs)) => {
                match mesh.fetcher().exists(peer, t.name.clone(), addrs).await? {
                    true => Ok(None),
                    false => Err(missing()),
                }
            }
        }
    }

    /// Whether the object exists.
    pub async fn exists(&self, caller: Caller, t: &Target) -> Result<bool, Error> {
        match self.remote(caller, Action::Read, t)? {
            None => self.local.exists(caller, &t.name),
            Some((mesh, peer, addrs)) => {
                Ok(mesh.fetcher().exists(peer, t.name.clone(), addrs).await?)
            }
        }
    }

    /// Remove the object (at a peer, with the key's owner capability);
    /// whether it was there.
    pub async fn evict(&self, caller: Caller, t: &Target) -> Result<bool, Error> {
        match self.remote(caller, Action::Evict, t)? {
            None => self.local.evict(caller, &t.name, t.owner).await,
            Some((mesh, peer, addrs)) => Ok(mesh
                .fetcher()
                .evict(peer, t.name.clone(), addrs, t.owner)
                .await?),
        }
    }

    /// Store `body` as a new native object here.
    pub async fn put<S, E>(
        &self,
        caller: Caller,
        declared_len: Option<u64>,
        body: &mut S,
    ) -> Result<(ObjectId, ObjectMeta), Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (id, writer) = self.create(caller, declared_len)?;
        Ok((id, fill(writer, declared_len, body).await?))
    }

    /// A writer for a new native object here (`size` bytes, if known).
    pub fn create(
        &self,
        caller: Caller,
        size: Option<u64>,
    ) -> Result<(ObjectId, Writer<'_>), Error> {
        let id = ObjectId::random();
        Ok((
            id,
            self.local.writer(caller, &RemoteName::Native(id), size)?,
        ))
    }

    /// Store `body` as the target object: here, or (a ProxyStore key of
    /// another daemon) forwarded there. Nothing is replaced unless every
    /// byte arrived.
    pub async fn set<S, E>(
        &self,
        caller: Caller,
        t: &Target,
        declared_len: Option<u64>,
        body: &mut S,
    ) -> Result<ObjectMeta, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let Some((mesh, peer, addrs)) = self.remote(caller, Action::Write, t)? else {
            let writer = self.local.writer(caller, &t.name, declared_len)?;
            return fill(writer, declared_len, body).await;
        };
        // The fetch protocol announces sizes up front and ProxyStore sends
        // chunked bodies: stage the object here (a name no door reaches),
        // then forward it.
        let (staging, writer) = self.local.staging_writer(declared_len)?;
        let meta = fill(writer, declared_len, body).await?;
        let storage = self.local.storage();
        let staged = || async {
            let reader = storage.open_reader(&staging).await?.ok_or_else(|| {
                MeshError::Storage(std::io::Error::other("the staged body vanished").into())
            })?;
            Ok(reader.into_stream(crate::api::STREAM_CHUNK))
        };
        let result = mesh
            .fetcher()
            .put_again(peer, t.name.clone(), addrs, meta.size, staged)
            .await
            .map(|()| meta)
            .map_err(Error::from);
        let _ = storage.evict(&staging).await;
        result
    }

    /// Authorize `action` on `t`; for an object at another daemon, the
    /// mesh and how to reach it.
    fn remote<'a>(
        &'a self,
        caller: Caller,
        action: Action,
        t: &'a Target,
    ) -> Result<Option<Route<'a>>, Error> {
        match &t.site {
            // Checked by `LocalObjects`, which every local operation goes through.
            Site::Here => Ok(None),
            Site::Peer { peer, addrs } => {
                authorize(caller, action, &t.name, t.at())?;
                let mesh = self.mesh.as_ref().ok_or_else(|| {
                    Error::NoRoute("this daemon is not in a mesh (start it with --relay)".into())
                })?;
                Ok(Some((mesh, *peer, addrs.as_slice())))
            }
        }
    }
}

/// How to reach an object at another daemon: the mesh, the peer and its
/// addresses.
type Route<'a> = (&'a Mesh, PeerId, &'a [Multiaddr]);

/// Stream `body` into `writer` and commit it, if exactly the declared
/// number of bytes arrived.
async fn fill<S, E>(
    mut writer: Writer<'_>,
    declared_len: Option<u64>,
    body: &mut S,
) -> Result<ObjectMeta, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::Incomplete(e.to_string()))?;
        writer.write(chunk).await?;
    }
    check_len(writer.written(), declared_len)?;
    writer.commit().await
}

fn check_len(received: u64, declared: Option<u64>) -> Result<(), Error> {
    match declared {
        Some(len) if received != len => Err(Error::Incomplete(format!(
            "got {received} of {len} declared bytes"
        ))),
        _ => Ok(()),
    }
}
