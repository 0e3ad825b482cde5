//! ProxyStore 1.x endpoint routes (`/`, `/endpoint`, `/exists`, `/get`,
//! `/set`, `/evict`), so Python ProxyStore's `EndpointConnector` can use this
//! daemon unchanged. Keys are ProxyStore's own strings, stored in their own
//! namespace. `endpoint=UUID` naming another daemon of the mesh (found
//! through the relays' discovery) forwards the request there, as ProxyStore
//! endpoints do. Errors are plain text, as ProxyStore's endpoint answers them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use super::native::{fetched_response, object_response};
use super::{declared_len, store_body, AppState, Failure};
use crate::mesh::protocol::RemoteName;
use crate::mesh::MeshError;
use crate::storage::{ObjectName, ObjectReader};

/// Longest accepted ProxyStore key.
const MAX_KEY_LEN: usize = 1024;

/// The query of every ProxyStore route.
#[derive(Debug, Deserialize)]
pub struct KeyQuery {
    key: Option<String>,
    endpoint: Option<String>,
}

/// A ProxyStore-style error: status + text body.
pub struct PsError(StatusCode, String);

impl IntoResponse for PsError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

impl From<Failure> for PsError {
    fn from(f: Failure) -> Self {
        PsError(f.status(), f.message().to_string())
    }
}

impl From<MeshError> for PsError {
    fn from(e: MeshError) -> Self {
        Failure::from(e).into()
    }
}

/// Where a ProxyStore request goes.
enum Target {
    /// This daemon.
    Local(ObjectName),
    /// Another daemon of the mesh, by its endpoint UUID.
    Remote {
        peer: libp2p::PeerId,
        addrs: Vec<libp2p::Multiaddr>,
        name: RemoteName,
    },
}

impl KeyQuery {
    /// Validate the query: a non-empty key, and an `endpoint` that, when
    /// given, is a UUID naming this daemon or one found in the mesh.
    async fn target(&self, state: &AppState) -> Result<Target, PsError> {
        let key = match &self.key {
            None => {
                return Err(PsError(
                    StatusCode::BAD_REQUEST,
                    "request is missing the key parameter".into(),
                ))
            }
            Some(k) if k.is_empty() => {
                return Err(PsError(
                    StatusCode::BAD_REQUEST,
                    "key must not be empty".into(),
                ))
            }
            Some(k) if k.len() > MAX_KEY_LEN => {
                return Err(PsError(
                    StatusCode::BAD_REQUEST,
                    format!("key is {} bytes long; the limit is {MAX_KEY_LEN}", k.len()),
                ))
            }
            Some(k) => k.clone(),
        };
        let Some(ep) = &self.endpoint else {
            return Ok(Target::Local(ObjectName::Endpoint(key)));
        };
        let uuid = Uuid::parse_str(ep).map_err(|_| {
            PsError(
                StatusCode::BAD_REQUEST,
                format!("endpoint {ep:?} is not a valid UUID"),
            )
        })?;
        if uuid == state.uuid {
            return Ok(Target::Local(ObjectName::Endpoint(key)));
        }
        let found = match &state.mesh {
            Some(mesh) => mesh.find_endpoint(&uuid.to_string()).await,
            None => None,
        };
        match found {
            Some((peer, addrs)) => Ok(Target::Remote {
                peer,
                addrs,
                name: RemoteName::Endpoint(key),
            }),
            None => Err(PsError(
                StatusCode::BAD_GATEWAY,
                format!(
                    "endpoint {uuid} is not this endpoint ({}) and {}",
                    state.uuid,
                    if state.mesh.is_some() {
                        "no daemon of the mesh registered it"
                    } else {
                        "this daemon is not in a mesh (start it with --relay)"
                    }
                ),
            )),
        }
    }
}

/// `GET /endpoint`.
pub async fn endpoint(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "uuid": state.uuid.to_string() }))
}

/// `GET /exists?key=K`.
pub async fn exists(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, PsError> {
    let exists = match q.target(&state).await? {
        Target::Local(name) => state.storage.contains(&name),
        Target::Remote { peer, addrs, name } => {
            state.mesh().fetcher().exists(peer, name, &addrs).await?
        }
    };
    Ok(Json(serde_json::json!({ "exists": exists })).into_response())
}

/// `GET /get?key=K`: streamed bytes, 404 when missing.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, PsError> {
    let missing = || PsError(StatusCode::NOT_FOUND, "no object with that key".into());
    match q.target(&state).await? {
        Target::Local(name) => match state
            .storage
            .open_reader(&name)
            .await
            .map_err(Failure::from)?
        {
            Some(reader) => Ok(object_response(reader)),
            None => Err(missing()),
        },
        Target::Remote { peer, addrs, name } => {
            match state.mesh().fetcher().get(peer, name, &addrs).await {
                Ok(fetched) => Ok(fetched_response(fetched)),
                Err(MeshError::NotFound { .. }) => Err(missing()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// `POST /set?key=K` with an `application/octet-stream` body (400 if empty).
pub async fn set(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PsError> {
    let target = q.target(&state).await?;
    let declared = declared_len(&headers);
    if declared == Some(0) {
        return Err(PsError(
            StatusCode::BAD_REQUEST,
            "received empty payload".into(),
        ));
    }
    // Refuse an empty chunked body before touching storage, so an existing
    // object under this key is never replaced by nothing.
    let mut stream = body.into_data_stream();
    let first = loop {
        match stream.next().await {
            None => {
                return Err(PsError(
                    StatusCode::BAD_REQUEST,
                    "received empty payload".into(),
                ))
            }
            Some(Err(e)) => return Err(Failure::incomplete(e).into()),
            Some(Ok(chunk)) if chunk.is_empty() => continue,
            Some(Ok(chunk)) => break chunk,
        }
    };
    let body = Box::pin(futures::stream::once(async move { Ok(first) }).chain(stream));
    match target {
        Target::Local(name) => {
            store_body(&state.storage, name, declared, body).await?;
        }
        Target::Remote { peer, addrs, name } => {
            // The fetch protocol announces sizes up front and ProxyStore
            // sends chunked bodies: stage the object here, then forward it.
            let staging =
                ObjectName::Endpoint(format!("\0forward/{}", proxymesh::ObjectId::random()));
            let meta = store_body(&state.storage, staging.clone(), declared, body).await?;
            let result = match state
                .storage
                .open_reader(&staging)
                .await
                .map_err(Failure::from)?
            {
                Some(reader) => forward(&state, peer, &addrs, name, reader, meta.size).await,
                None => Err(PsError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "staged object vanished".into(),
                )),
            };
            let _ = state.storage.evict(&staging).await;
            result?;
        }
    }
    Ok(StatusCode::OK.into_response())
}

async fn forward(
    state: &AppState,
    peer: libp2p::PeerId,
    addrs: &[libp2p::Multiaddr],
    name: RemoteName,
    reader: ObjectReader,
    size: u64,
) -> Result<(), PsError> {
    let body = reader.into_stream(super::STREAM_CHUNK);
    state
        .mesh()
        .fetcher()
        .put(peer, name, addrs, body, size)
        .await?;
    Ok(())
}

/// `POST /evict?key=K`: 200 even when the key is missing.
pub async fn evict(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, PsError> {
    match q.target(&state).await? {
        Target::Local(name) => {
            state.storage.evict(&name).await.map_err(Failure::from)?;
        }
        Target::Remote { peer, addrs, name } => {
            state
                .mesh()
                .fetcher()
                .evict(peer, name, &addrs, None)
                .await?;
        }
    }
    Ok(StatusCode::OK.into_response())
}
