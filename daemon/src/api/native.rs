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
use crate::storage::{ObjectName, ObjectReader};

type St = State<Arc<AppState>>;

/// Resolve a key to a name in this daemon's store, refusing keys of other daemons.
fn local_name(state: &AppState, key: &Key) -> Result<ObjectName, Failure> {
    match key.peer {
        Some(p) if p == state.peer_id => Ok(ObjectName::Native(key.id)),
        Some(p) => Err(Failure::new(
            StatusCode::CONFLICT,
            api::ErrorCode::WrongPeer,
            format!(
                "object {} lives at peer {p}, not at this daemon ({}); fetching from other sites needs the mesh",
                key.id, state.peer_id
            ),
        )),
        None => Err(Failure::bad_request(format!(
            "key {key} names no daemon (it belongs to an in-process or file connector)"
        ))),
    }
}

fn parse_segment(state: &AppState, segment: &str) -> Result<ObjectName, Failure> {
    match api::parse_key_segment(segment).map_err(|e| Failure::bad_request(e.to_string()))? {
        KeySegment::Bare(id) => Ok(ObjectName::Native(id)),
        KeySegment::Ticket(key) => local_name(state, &key),
    }
}

fn key_for(state: &AppState, id: ObjectId) -> Key {
    Key::on_peer(id, state.peer_id)
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
    let name = parse_segment(&state, &segment)?;
    let ObjectName::Native(id) = name else {
        unreachable!("native routes only make native names")
    };
    let meta = store_body(
        &state.storage,
        name,
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
    let name = parse_segment(&state, &segment)?;
    match state.storage.open_reader(&name).await? {
        Some(reader) => Ok(object_response(reader)),
        None => Err(Failure::not_found(&segment)),
    }
}

/// `HEAD /v1/objects/{key}`.
pub async fn head(State(state): St, Path(segment): Path<String>) -> Result<Response, Failure> {
    let name = parse_segment(&state, &segment)?;
    let meta = state
        .storage
        .meta(&name)
        .ok_or_else(|| Failure::not_found(&segment))?;
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    Ok(resp)
}

/// `DELETE /v1/objects/{key}`.
pub async fn evict(
    State(state): St,
    Path(segment): Path<String>,
) -> Result<Json<EvictResponse>, Failure> {
    let name = parse_segment(&state, &segment)?;
    let evicted = state.storage.evict(&name).await?;
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

fn names(state: &AppState, req: &KeysRequest) -> Result<Vec<ObjectName>, Failure> {
    req.keys.iter().map(|k| local_name(state, k)).collect()
}

/// `POST /v1/batch/get`.
pub async fn batch_get(
    State(state): St,
    Json(req): Json<KeysRequest>,
) -> Result<Response, Failure> {
    let mut out = Vec::new();
    for name in names(&state, &req)? {
        match state.storage.open_reader(&name).await? {
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
    let exists = names(&state, &req)?
        .iter()
        .map(|n| state.storage.contains(n))
        .collect();
    Ok(Json(ExistsBatchResponse { exists }))
}

/// `POST /v1/batch/evict`.
pub async fn batch_evict(
    State(state): St,
    Json(req): Json<KeysRequest>,
) -> Result<Json<EvictBatchResponse>, Failure> {
    let mut evicted = Vec::with_capacity(req.keys.len());
    for name in names(&state, &req)? {
        evicted.push(state.storage.evict(&name).await?);
    }
    Ok(Json(EvictBatchResponse { evicted }))
}
