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
    },
}

/// Resolve a key: this daemon's objects are local; another daemon's go
/// through the mesh (or are refused with 409 when there is none).
fn target_of(state: &AppState, key: &Key) -> Result<Target, Failure> {
    match key.peer {
        Some(p) if p == state.peer_id => Ok(Target::Local(ObjectName::Native(key.id))),
        Some(p) if state.mesh.is_some() => Ok(Target::Remote { peer: p, id: key.id, addrs: key.addrs.clone() }),
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

fn key_for(state: &AppState, id: ObjectId) -> Key {
    let mut key = Key::on_peer(id, state.peer_id);
    if let Some(mesh) = &state.mesh {
        key.addrs = mesh.advertised_addrs();
    }
    key
}

fn put_response(state: &AppState, id: ObjectId, meta: &crate::storage::ObjectMeta) -> PutResponse {
    PutResponse {
        key: key_for(state, id),
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
        key: key_for(&state, ObjectId::random()),
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
        Target::Remote { peer, id, addrs } => {
            let fetched = state
                .mesh()
                .fetcher()
                .get(peer, RemoteName::Native(id), &addrs)
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
        Target::Remote { peer, id, addrs } => Ok(state
            .mesh()
            .fetcher()
            .exists(*peer, RemoteName::Native(*id), addrs)
            .await?),
    }
}

async fn evict_target(state: &AppState, target: &Target) -> Result<bool, Failure> {
    match target {
        Target::Local(name) => Ok(state.storage.evict(name).await?),
        Target::Remote { peer, id, addrs } => Ok(state
            .mesh()
            .fetcher()
            .evict(*peer, RemoteName::Native(*id), addrs)
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

async fn batch_put_inner(
    state: &AppState,
    stream: &mut axum::body::BodyDataStream,
    stored: &mut Vec<ObjectId>,
) -> Result<Json<KeysResponse>, Failure> {
    let limit = state.storage.config().max_object_size;
    let mut parser = api::FrameParser::default();
    let mut keys = Vec::new();
    while let Some(chunk) = stream.next().await {
        parser.push(&chunk.map_err(Failure::incomplete)?);
        if let (Some(len), Some(limit)) = (parser.pending_len(), limit) {
            if len > limit {
                return Err(crate::storage::StorageError::TooLarge { size: len, limit }.into());
            }
        }
        while let Some(frame) = parser.next_frame() {
            let id = ObjectId::random();
            let len = frame.len() as u64;
            let one = futures::stream::iter([Ok::<_, std::convert::Infallible>(
                bytes::Bytes::from(frame),
            )]);
            store_body(&state.storage, ObjectName::Native(id), Some(len), one).await?;
            stored.push(id);
            keys.push(key_for(state, id));
        }
    }
    parser.finish().map_err(Failure::incomplete)?;
    Ok(Json(KeysResponse { keys }))
}

fn targets(state: &AppState, req: &KeysRequest) -> Result<Vec<Target>, Failure> {
    req.keys.iter().map(|k| target_of(state, k)).collect()
}

/// `POST /v1/batch/get`.
pub async fn batch_get(
    State(state): St,
    Json(req): Json<KeysRequest>,
) -> Result<Response, Failure> {
    let mut out = Vec::new();
    for target in targets(&state, &req)? {
        let reader = match target {
            Target::Local(name) => state.storage.open_reader(&name).await?,
            Target::Remote { peer, id, addrs } => {
                match state
                    .mesh()
                    .fetcher()
                    .get(peer, RemoteName::Native(id), &addrs)
                    .await
                {
                    Ok(fetched) => {
                        let bytes = collect(fetched).await?;
                        api::write_batch_item(&mut out, Some(&bytes));
                        continue;
                    }
                    Err(crate::mesh::MeshError::NotFound { .. }) => None,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        match reader {
            Some(r) => api::write_batch_item(
                &mut out,
                Some(
                    &r.read_all()
                        .await
                        .map_err(crate::storage::StorageError::Io)?,
                ),
            ),
            None => api::write_batch_item(&mut out, None),
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], out).into_response())
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

/// All the bytes of a fetched object (batch gets are for small objects).
async fn collect(fetched: Fetched) -> Result<bytes::Bytes, Failure> {
    use futures::TryStreamExt;
    let io = |e: std::io::Error| Failure::from(crate::storage::StorageError::Io(e));
    match fetched {
        Fetched::Cached { reader } => reader.read_all().await.map_err(io),
        Fetched::Streaming { body, .. } => {
            let chunks: Vec<bytes::Bytes> = body.try_collect().await.map_err(|e| {
                Failure::new(
                    StatusCode::BAD_GATEWAY,
                    api::ErrorCode::PeerError,
                    format!("remote transfer failed: {e}"),
                )
            })?;
            Ok(bytes::Bytes::from(chunks.concat()))
        }
    }
}
