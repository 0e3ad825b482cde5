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

use super::native::read_response;
use super::{declared_len, settle, AppState, Failure};
use crate::service::{Caller, Error as ServiceError, Target};

/// Longest accepted ProxyStore key.
const MAX_KEY_LEN: usize = 1024;

/// Everyone the local API serves is the daemon's user (see [`super::server`]).
const LOCAL: Caller = Caller::Local;

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

impl From<ServiceError> for PsError {
    fn from(e: ServiceError) -> Self {
        if e.is_not_found() {
            return PsError(StatusCode::NOT_FOUND, "no object with that key".into());
        }
        Failure::from(e).into()
    }
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
        Ok(state
            .objects
            .target_of_endpoint(key, self.endpoint.as_deref())
            .await?)
    }
}

/// `GET /endpoint`.
pub async fn endpoint(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "uuid": state.objects.uuid().to_string() }))
}

/// `GET /exists?key=K`.
pub async fn exists(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, PsError> {
    let exists = state
        .objects
        .exists(LOCAL, &q.target(&state).await?)
        .await?;
    Ok(Json(serde_json::json!({ "exists": exists })).into_response())
}

/// `GET /get?key=K`: streamed bytes, 404 when missing.
pub async fn get(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, PsError> {
    let object = state.objects.get(LOCAL, &q.target(&state).await?).await?;
    Ok(read_response(object))
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
    let mut body = futures::stream::iter([Ok(first)]).chain(stream);
    let result = state.objects.set(LOCAL, &target, declared, &mut body).await;
    settle(result, &mut body).await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /evict?key=K`: 200 even when the key is missing.
pub async fn evict(
    State(state): State<Arc<AppState>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, PsError> {
    state.objects.evict(LOCAL, &q.target(&state).await?).await?;
    Ok(StatusCode::OK.into_response())
}
