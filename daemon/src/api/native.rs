//! proxymesh's native `/v1` routes (see [`proxymesh::api`] for the contract).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use proxymesh::api::{
    self, EvictBatchResponse, EvictResponse, ExistsBatchResponse, KeyResponse, KeySegment,
    KeysRequest, KeysResponse, PutResponse, Status,
};
use proxymesh::{Key, ObjectId};

use super::{declared_len, store_body, AppState, Failure, STREAM_CHUNK};
use crate::mesh::fetcher::Fetched;
use crate::mesh::protocol::RemoteName;
use crate::mesh::Mesh;
use crate::storage::{ObjectName, ObjectReader};

type St = State<Arc<AppState>>;

/// Where a request's object lives.
pub enum Target {
    /// In this daemon's store.
    Local(ObjectName),
    /// At another daemon, reached through the mesh.
    Remote {
        /// The daemon holding it.
        peer: libp2p::PeerId,
        /// The object.
        id: ObjectId,
        /// Addresses from the key (relay circuits).
        addrs: Vec<libp2p::Multiaddr>,
        /// The BLAKE3 the key promises.
        hash: Option<blake3::Hash>,
        /// The owner capability, if the key carries it (evict needs it).
        owner: Option<proxymesh::OwnerCap>,
    },
}

/// Resolve a key: this daemon's objects are local; another daemon's go
/// through the mesh (or are refused with 409 when there is none).
fn target_of(state: &AppState, key: &Key) -> Result<Target, Failure> {
    match key.peer {
        Some(p) if p == state.peer_id => Ok(Target::Local(ObjectName::Native(key.id))),
        Some(p) if state.mesh.is_some() => Ok(Target::Remote {
            peer: p,
            id: key.id,
            addrs: key.addrs.clone(),
            hash: key.blake3(),
            owner: key.owner,
        }),
        Some(p) => Err(Failure::new(
            StatusCode::CONFLICT,
            api::ErrorCode::WrongPeer,
            format!(
                "object {} lives at peer {p}, not at this daemon ({}), and this daemon is not in a mesh \
                 (start it with --relay to fetch from other sites)",
                key.id, state.peer_id
            ),
        )),
        None => Err(Failure::bad_request(format!(
            "key {key} names no daemon (it belongs to an in-process or file connector)"
        ))),
    }
}

fn parse_segment(state: &AppState, segment: &str) -> Result<Target, Failure> {
    match api::parse_key_segment(segment).map_err(|e| Failure::bad_request(e.to_string()))? {
        KeySegment::Bare(id) => Ok(Target::Local(ObjectName::Native(id))),
        KeySegment::Ticket(key) => target_of(state, &key),
    }
}

/// Render a remote object: a cached copy, or the bytes as they arrive.
pub fn fetched_response(fetched: Fetched) -> Response {
    let path = match &fetched {
        Fetched::Cached { .. } => "cache".to_string(),
        Fetched::Streaming { path, .. } => path.to_string(),
    };
    let mut resp = match fetched {
        Fetched::Cached { reader } => object_response(reader),
        Fetched::Streaming {
            size, hash, body, ..
        } => {
            let mut resp = Response::new(Body::from_stream(body));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            if let Ok(v) = HeaderValue::from_str(hash.to_hex().as_str()) {
                h.insert(api::HASH_HEADER, v);
            }
            resp
        }
    };
    if let Ok(v) = HeaderValue::from_str(&path) {
        resp.headers_mut().insert(api::PATH_HEADER, v);
    }
    resp
}

/// The key of this daemon's object `id`, for its owner (the local user):
/// address hints, the owner capability, and the hash once known.
fn key_for(state: &AppState, id: ObjectId, hash: Option<blake3::Hash>) -> Key {
    let mut key = Key::on_peer(id, state.peer_id);
    if let Some(mesh) = &state.mesh {
        key.addrs = mesh.advertised_addrs();
    }
    key.hash = hash.map(|h| *h.as_bytes());
    key.owner = Some(state.owners.cap(&id));
    key
}

fn put_response(state: &AppState, id: ObjectId, meta: &crate::storage::ObjectMeta) -> PutResponse {
    PutResponse {
        key: key_for(state, id, Some(meta.hash)),
        size: meta.size,
        blake3: meta.hash.to_hex().to_string(),
    }
}

/// `GET /v1/status`.
pub async fn status(State(state): St) -> Json<Status> {
    let s = state.storage.stats();
    let cfg = state.storage.config();
    Json(Status {
        peer_id: state.peer_id.to_string(),
        uuid: state.uuid.to_string(),
        version: env!("CARGO_PKG_VERSION").into(),
        objects: s.objects,
        bytes: s.bytes,
        memory_bytes: s.memory_bytes,
        disk_bytes: s.disk_bytes,
        memory_cap: cfg.memory_cap,
        max_object_size: cfg.max_object_size,
        persist: cfg.persist,
        data_dir: state.data_dir.clone(),
        api: state.api_addr.clone(),
        uptime_secs: state.started.elapsed().as_secs(),
        mesh: state.mesh.as_ref().map(Mesh::status),
    })
}

/// `POST /v1/keys`.
pub async fn new_key(State(state): St) -> Json<KeyResponse> {
    Json(KeyResponse {
        key: key_for(&state, ObjectId::random(), None),
    })
}

/// `POST /v1/objects`.
pub async fn put(State(state): St, headers: HeaderMap, body: Body) -> Result<Response, Failure> {
    let id = ObjectId::random();
    let meta = store_body(
        &state.storage,
        ObjectName::Native(id),
        declared_len(&headers),
        body.into_data_stream(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(put_response(&state, id, &meta))).into_response())
}

/// `PUT /v1/objects/{key}`.
pub async fn set(
    State(state): St,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PutResponse>, Failure> {
    let id =
        match parse_segment(&state, &segment)? {
            Target::Local(ObjectName::Native(id)) => id,
            Target::Local(_) => unreachable!("native routes only make native names"),
            Target::Remote { .. } => return Err(Failure::new(
                StatusCode::CONFLICT,
                api::ErrorCode::WrongPeer,
                "this key names another daemon; put objects at your own daemon and share the key",
            )),
        };
    let meta = store_body(
        &state.storage,
        ObjectName::Native(id),
        declared_len(&headers),
        body.into_data_stream(),
    )
    .await?;
    Ok(Json(put_response(&state, id, &meta)))
}

/// Render a stored object as a streamed response.
pub fn object_response(reader: ObjectReader) -> Response {
    let meta = reader.meta().clone();
    let body = match reader {
        ObjectReader::Memory { data, .. } => Body::from(data),
        reader @ ObjectReader::File { .. } => Body::from_stream(reader.into_stream(STREAM_CHUNK)),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    if let Ok(v) = HeaderValue::from_str(meta.hash.to_hex().as_str()) {
        h.insert(api::HASH_HEADER, v);
    }
    resp
}

/// `GET /v1/objects/{key}`.
pub async fn get(State(state): St, Path(segment): Path<String>) -> Result<Response, Failure> {
    match parse_segment(&state, &segment)? {
        Target::Local(name) => match state.storage.open_reader(&name).await? {
            Some(reader) => Ok(object_response(reader)),
            None => Err(Failure::not_found(&segment)),
        },
        Target::Remote {
            peer,
            id,
            addrs,
            hash,
            ..
        } => {
            let fetched = state
                .mesh()
                .fetcher()
                .get_checked(peer, RemoteName::Native(id), &addrs, hash)
                .await?;
            Ok(fetched_response(fetched))
        }
    }
}

/// `HEAD /v1/objects/{key}`.
pub async fn head(State(state): St, Path(segment): Path<String>) -> Result<Response, Failure> {
    let target = parse_segment(&state, &segment)?;
    match &target {
        Target::Local(name) => {
            let meta = state
                .storage
                .meta(name)
                .ok_or_else(|| Failure::not_found(&segment))?;
            let mut resp = StatusCode::OK.into_response();
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
            Ok(resp)
        }
        Target::Remote { .. } if exists_target(&state, &target).await? => {
            Ok(StatusCode::OK.into_response())
        }
        Target::Remote { .. } => Err(Failure::not_found(&segment)),
    }
}

async fn exists_target(state: &AppState, target: &Target) -> Result<bool, Failure> {
    match target {
        Target::Local(name) => Ok(state.storage.contains(name)),
        Target::Remote {
            peer, id, addrs, ..
        } => Ok(state
            .mesh()
            .fetcher()
            .exists(*peer, RemoteName::Native(*id), addrs)
            .await?),
    }
}

async fn evict_target(state: &AppState, target: &Target) -> Result<bool, Failure> {
    match target {
        Target::Local(name) => Ok(state.storage.evict(name).await?),
        Target::Remote {
            peer,
            id,
            addrs,
            owner,
            ..
        } => Ok(state
            .mesh()
            .fetcher()
            .evict(*peer, RemoteName::Native(*id), addrs, *owner)
            .await?),
    }
}

/// `DELETE /v1/objects/{key}`.
pub async fn evict(
    State(state): St,
    Path(segment): Path<String>,
) -> Result<Json<EvictResponse>, Failure> {
    let evicted = evict_target(&state, &parse_segment(&state, &segment)?).await?;
    Ok(Json(EvictResponse { evicted }))
}

/// `POST /v1/batch/put`: frames in, keys out. All or nothing: if any frame
/// fails, the objects already stored by this request are removed again.
pub async fn batch_put(State(state): St, body: Body) -> Result<Json<KeysResponse>, Failure> {
    let mut stored: Vec<ObjectId> = Vec::new();
    let mut stream = body.into_data_stream();
    let result = batch_put_inner(&state, &mut stream, &mut stored).await;
    if result.is_err() {
        super::drain(&mut stream).await;
        for id in &stored {
            let _ = state.storage.evict(&ObjectName::Native(*id)).await;
        }
    }
    result
}

/// Stream each frame of a batch put into its own storage writer as it
/// arrives: no frame is ever held whole in memory, so a batch of large
/// objects stays within the memory cap (large ones go to disk).
async fn batch_put_inner(
    state: &AppState,
    stream: &mut axum::body::BodyDataStream,
    stored: &mut Vec<ObjectId>,
) -> Result<Json<KeysResponse>, Failure> {
    use bytes::Buf;
    let limit = state.storage.config().max_object_size;
    let mut keys = Vec::new();
    // The length prefix being read, or the object being written.
    let mut header: Vec<u8> = Vec::with_capacity(8);
    let mut current: Option<(ObjectId, crate::storage::ObjectWriter, u64)> = None;
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(Failure::incomplete)?;
        while !chunk.is_empty() || current.as_ref().is_some_and(|c| c.2 == 0) {
            match &mut current {
                None => {
                    let take = (8 - header.len()).min(chunk.len());
                    header.extend_from_slice(&chunk[..take]);
                    chunk.advance(take);
                    if header.len() < 8 {
                        continue;
                    }
                    let len = u64::from_be_bytes(header[..].try_into().expect("8 bytes"));
                    header.clear();
                    if let Some(limit) = limit.filter(|l| len > *l) {
                        return Err(
                            crate::storage::StorageError::TooLarge { size: len, limit }.into()
                        );
                    }
                    let id = ObjectId::random();
                    let writer = state.storage.writer(ObjectName::Native(id), Some(len))?;
                    current = Some((id, writer, len));
                }
                Some((_, writer, left)) => {
                    if *left > 0 {
                        let take = (*left).min(chunk.len() as u64) as usize;
                        writer.write(chunk.split_to(take)).await?;
                        *left -= take as u64;
                    }
                    if *left == 0 {
                        let (id, writer, _) = current.take().expect("an object is being written");
                        let meta = writer.commit().await?;
                        stored.push(id);
                        keys.push(key_for(state, id, Some(meta.hash)));
                    }
                }
            }
        }
    }
    if current.is_some() || !header.is_empty() {
        return Err(Failure::incomplete(
            "batch body ended in the middle of a frame",
        ));
    }
    Ok(Json(KeysResponse { keys }))
}

fn targets(state: &AppState, req: &KeysRequest) -> Result<Vec<Target>, Failure> {
    req.keys.iter().map(|k| target_of(state, k)).collect()
}

/// `POST /v1/batch/get`. Every object is found (and every remote transfer
/// started) before the answer begins, so a missing daemon or a refusal is an
/// HTTP error as for a single get; then the objects stream out one after the
/// other, never held whole in memory. A transfer that breaks midway ends the
/// body early (the client sees a truncated answer, never wrong bytes).
pub async fn batch_get(
    State(state): St,
    Json(req): Json<KeysRequest>,
) -> Result<Response, Failure> {
    let mut items: Vec<Option<(u64, crate::storage::ChunkStream)>> = Vec::new();
    for target in targets(&state, &req)? {
        let item = match target {
            Target::Local(name) => state
                .storage
                .open_reader(&name)
                .await?
                .map(|r| (r.meta().size, r.into_stream(STREAM_CHUNK))),
            Target::Remote {
                peer,
                id,
                addrs,
                hash,
                ..
            } => match state
                .mesh()
                .fetcher()
                .get_checked(peer, RemoteName::Native(id), &addrs, hash)
                .await
            {
                Ok(Fetched::Cached { reader }) => {
                    Some((reader.meta().size, reader.into_stream(STREAM_CHUNK)))
                }
                Ok(Fetched::Streaming { size, body, .. }) => Some((size, body)),
                Err(crate::mesh::MeshError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
        };
        items.push(item);
    }
    let body = futures::stream::iter(items).flat_map(|item| {
        let mut head = Vec::with_capacity(9);
        match item {
            None => {
                api::write_batch_item(&mut head, None);
                futures::stream::iter([Ok(bytes::Bytes::from(head))]).boxed()
            }
            Some((size, data)) => {
                head.push(1);
                head.extend_from_slice(&size.to_be_bytes());
                futures::stream::iter([Ok(bytes::Bytes::from(head))])
                    .chain(data)
                    .boxed()
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}

/// `POST /v1/batch/exists`.
pub async fn batch_exists(
    State(state): St,
    Json(req): Json<KeysRequest>,
) -> Result<Json<ExistsBatchResponse>, Failure> {
    let mut exists = Vec::with_capacity(req.keys.len());
    for t in targets(&state, &req)? {
        exists.push(exists_target(&state, &t).await?);
    }
    Ok(Json(ExistsBatchResponse { exists }))
}

/// `POST /v1/batch/evict`.
pub async fn batch_evict(
    State(state): St,
    Json(req): Json<KeysRequest>,
) -> Result<Json<EvictBatchResponse>, Failure> {
    let mut evicted = Vec::with_capacity(req.keys.len());
    for t in targets(&state, &req)? {
        evicted.push(evict_target(&state, &t).await?);
    }
    Ok(Json(EvictBatchResponse { evicted }))
}
