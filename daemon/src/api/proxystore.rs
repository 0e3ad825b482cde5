//! ProxyStore 1.x endpoint routes (`/`, `/endpoint`, `/exists`, `/get`,
//! `/set`, `/evict`), so Python ProxyStore's `EndpointConnector` can use this
//! daemon unchanged. Keys are ProxyStore's own strings, stored in their own
//! namespace. Errors are plain text, as ProxyStore's endpoint answers them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use super::{declared_len, native::object_response, store_body, AppState, Failure};
use crate::storage::ObjectName;

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

impl KeyQuery {
    /// Validate the query: a non-empty key, and an `endpoint` that, when
    /// given, is a UUID naming this daemon.
    fn name(&self, state: &AppState) -> Result<ObjectName, PsError> {
        if let Some(ep) = &self.endpoint {
            let uuid = Uuid::parse_str(ep).map_err(|_| {
                PsError(
                    StatusCode::BAD_REQUEST,
                    format!("endpoint {ep:?} is not a valid UUID"),
                )
            })?;
            if uuid != state.uuid {
                return Err(PsError(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "endpoint {uuid} is not this endpoint ({}) and is not reachable from it",
                        state.uuid
                    ),
                ));
            }
        }
        match &self.key {
            None => Err(PsError(
                StatusCode::BAD_REQUEST,
                "request is missing the key parameter".into(),
            )),
            Some(k) if k.is_empty() => Err(PsError(
                StatusCode::BAD_REQUEST,
                "key must not be empty".into(),
            )),
            Some(k) if k.len() > MAX_KEY_LEN => Err(PsError(
                StatusCode::BAD_REQUEST,
                format!("key is {} bytes long; the limit is {MAX_KEY_LEN}", k.len()),
            )),
            Some(k) => Ok(ObjectName::Endpoint(k.clone())),
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
    let name = q.name(&state)?;
    Ok(Json(serde_json::json!({ "exists": state.storage.contains(&name) })).into_response())
}

/// `GET /get?key=K`: streamed bytes, 404 when missing.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, PsError> {
    let name = q.name(&state)?;
    match state
        .storage
        .open_reader(&name)
        .await
        .map_err(Failure::from)?
    {
        Some(reader) => Ok(object_response(reader)),
        None => Err(PsError(
            StatusCode::NOT_FOUND,
            "no object with that key".into(),
        )),
    }
}

/// `POST /set?key=K` with an `application/octet-stream` body (400 if empty).
pub async fn set(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, PsError> {
    let name = q.name(&state)?;
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
    let body = futures::stream::once(async move { Ok(first) }).chain(stream);
    store_body(&state.storage, name, declared, Box::pin(body)).await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /evict?key=K`: 200 even when the key is missing.
pub async fn evict(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, PsError> {
    let name = q.name(&state)?;
    state.storage.evict(&name).await.map_err(Failure::from)?;
    Ok(StatusCode::OK.into_response())
}
