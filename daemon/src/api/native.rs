//! proxymesh's native `/v1` routes (see [`proxymesh::api`] for the contract).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use proxymesh::api::{
    self, ErrorCode, EvictBatchResponse, EvictResponse, ExistsBatchResponse, KeyResponse,
    KeysRequest, KeysResponse, PutResponse, Status,
};
use proxymesh::ObjectId;

use super::{declared_len, settle, AppState, Failure, STREAM_CHUNK};
use crate::mesh::fetcher::Fetched;
use crate::mesh::Mesh;
use crate::service::range::ByteRange;
use crate::service::{self, Caller, Object, Target};
use crate::storage::ObjectReader;

type St = State<Arc<AppState>>;

/// Everyone the local API serves is the daemon's user (see [`super::server`]).
const LOCAL: Caller = Caller::Local;

fn target(state: &AppState, segment: &str) -> Result<Target, Failure> {
    Ok(state.objects.target_of_segment(segment)?)
}

/// Render an object being read: from this daemon's store, or another's.
pub fn read_response(object: Object) -> Response {
    match object {
        Object::Here(reader) => object_response(reader),
        Object::Fetched(fetched) => fetched_response(fetched),
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

fn put_response(state: &AppState, id: ObjectId, meta: &crate::storage::ObjectMeta) -> PutResponse {
    let key = state.objects.key_for(id, Some(meta.hash));
    PutResponse {
        ticket: Some(key.ticket()),
        key,
        size: meta.size,
        blake3: meta.hash.to_hex().to_string(),
    }
}

/// `GET /v1/status`.
pub async fn status(State(state): St) -> Json<Status> {
    let s = state.objects.storage().stats();
    let cfg = state.objects.storage().config();
    Json(Status {
        peer_id: state.objects.peer_id().to_string(),
        uuid: state.objects.uuid().to_string(),
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
        api_socket: state.api_socket.clone(),
        uptime_secs: state.started.elapsed().as_secs(),
        mesh: state.objects.mesh().map(Mesh::status),
    })
}

/// `POST /v1/keys`.
pub async fn new_key(State(state): St) -> Json<KeyResponse> {
    Json(KeyResponse {
        key: state.objects.key_for(ObjectId::random(), None),
    })
}

/// `POST /v1/objects`.
pub async fn put(State(state): St, headers: HeaderMap, body: Body) -> Result<Response, Failure> {
    let mut body = body.into_data_stream();
    let result = state
        .objects
        .put(LOCAL, declared_len(&headers), &mut body)
        .await;
    let (id, meta) = settle(result, &mut body).await?;
    Ok((StatusCode::CREATED, Json(put_response(&state, id, &meta))).into_response())
}

/// `PUT /v1/objects/{key}`.
pub async fn set(
    State(state): St,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PutResponse>, Failure> {
    let mut body = body.into_data_stream();
    let result = match state.objects.target_of_segment(&segment) {
        Ok(t) => state
            .objects
            .set(LOCAL, &t, declared_len(&headers), &mut body)
            .await
            .map(|meta| (t, meta)),
        Err(e) => Err(e),
    };
    let (t, meta) = settle(result, &mut body).await?;
    let crate::mesh::protocol::RemoteName::Native(id) = t.name else {
        unreachable!("native routes name native objects")
    };
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

/// `GET /v1/objects/{key}`. With `Range: bytes=…` (one range), `206` and
/// just those bytes, verified chunk group by chunk group (from the store
/// here, or from the daemon holding it: only the range crosses the mesh);
/// `416` when no byte of it is in the object.
pub async fn get(
    State(state): St,
    Path(segment): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let t = target(&state, &segment)?;
    let range = match headers.get(header::RANGE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => {
            ByteRange::parse(v).map_err(|e| Failure::from(service::Error::Invalid(e)))?
        }
        Some(Err(_)) => {
            return Err(service::Error::Invalid("the Range header is not text".into()).into())
        }
    };
    let Some(range) = range else {
        let mut resp = read_response(state.objects.get(LOCAL, &t).await?);
        resp.headers_mut()
            .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        return Ok(resp);
    };
    match state.objects.get_range(LOCAL, &t, range).await {
        Ok(mut r) => {
            // A range whose first group fails gets an error answer, not a
            // 206 cut short before its first byte.
            let first = match r.body.next().await {
                Some(Err(e)) => {
                    let (status, code) = match e.kind() {
                        // Damaged here (a disk) or arriving damaged.
                        std::io::ErrorKind::InvalidData => match t.site {
                            service::Site::Here => {
                                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Corrupt)
                            }
                            service::Site::Peer { .. } => {
                                (StatusCode::BAD_GATEWAY, ErrorCode::Corrupt)
                            }
                        },
                        std::io::ErrorKind::TimedOut => {
                            (StatusCode::GATEWAY_TIMEOUT, ErrorCode::TimedOut)
                        }
                        _ => (StatusCode::BAD_GATEWAY, ErrorCode::PeerError),
                    };
                    return Err(Failure::new(status, code, e.to_string()));
                }
                first => first,
            };
            let body = futures::stream::iter(first).chain(r.body);
            let mut resp = Response::new(Body::from_stream(body));
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.len));
            if let Ok(v) = HeaderValue::from_str(&format!(
                "bytes {}-{}/{}",
                r.offset,
                r.offset + r.len - 1,
                r.size
            )) {
                h.insert(header::CONTENT_RANGE, v);
            }
            Ok(resp)
        }
        Err(service::Error::Unsatisfiable(size)) => {
            let mut resp = Failure::from(service::Error::Unsatisfiable(size)).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

/// `HEAD /v1/objects/{key}`: 200 (with the size, for this daemon's
/// objects) or 404.
pub async fn head(State(state): St, Path(segment): Path<String>) -> Result<Response, Failure> {
    let t = target(&state, &segment)?;
    let mut resp = StatusCode::OK.into_response();
    if let Some(size) = state.objects.size(LOCAL, &t).await? {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    Ok(resp)
}

/// `DELETE /v1/objects/{key}`.
pub async fn evict(
    State(state): St,
    Path(segment): Path<String>,
) -> Result<Json<EvictResponse>, Failure> {
    let t = target(&state, &segment)?;
    let evicted = state.objects.evict(LOCAL, &t).await?;
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
            let _ = state.objects.evict(LOCAL, &Target::here(native(*id))).await;
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
    let limit = state.objects.storage().config().max_object_size;
    let mut keys = Vec::new();
    // The length prefix being read, or the object being written.
    let mut header: Vec<u8> = Vec::with_capacity(8);
    let mut current: Option<(ObjectId, crate::service::Writer<'_>, u64)> = None;
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
                    let (id, writer) = state.objects.create(LOCAL, Some(len))?;
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
                        keys.push(state.objects.key_for(id, Some(meta.hash)));
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
    let tickets = keys.iter().map(|k| k.ticket()).collect();
    Ok(Json(KeysResponse { keys, tickets }))
}

fn targets(state: &AppState, req: &KeysRequest) -> Result<Vec<Target>, Failure> {
    req.keys
        .iter()
        .map(|k| Ok(state.objects.target_of_key(k)?))
        .collect()
}

fn native(id: ObjectId) -> crate::mesh::protocol::RemoteName {
    crate::mesh::protocol::RemoteName::Native(id)
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
    for t in targets(&state, &req)? {
        let item = match state.objects.get(LOCAL, &t).await {
            Ok(object) => Some((object.size(), object.into_stream(STREAM_CHUNK))),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
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
        exists.push(state.objects.exists(LOCAL, &t).await?);
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
        evicted.push(state.objects.evict(LOCAL, &t).await?);
    }
    Ok(Json(EvictBatchResponse { evicted }))
}
