//! `GET /metrics` (Prometheus/OpenMetrics text) and the layer that counts
//! every request of the local API by door, operation and outcome.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::metrics::{self, Door, Snapshot};

/// `GET /metrics`: the daemon's counters and its state of the moment.
pub async fn scrape(State(state): State<Arc<AppState>>) -> Response {
    let storage = state.objects.storage();
    let stats = storage.stats();
    let disk_objects = storage.disk_objects();
    let mesh = state.objects.mesh();
    let snap = Snapshot {
        objects_memory: stats.objects.saturating_sub(disk_objects),
        objects_disk: disk_objects,
        bytes_memory: stats.memory_bytes,
        bytes_disk: stats.disk_bytes,
        memory_cap: storage.config().memory_cap,
        cache_bytes: mesh.map_or(0, |m| m.fetcher().cached_bytes()),
        mesh: mesh.map(crate::mesh::Mesh::view),
    };
    let text = metrics::render(&state.metrics, &snap);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

/// Which door and operation a request of the local API is (`None`: not an
/// object operation worth counting, e.g. `/metrics` itself).
pub fn door_and_op(method: &Method, path: &str) -> Option<(Door, &'static str)> {
    use Door::{Native, Proxystore};
    let m = method.as_str();
    let op = match (m, path) {
        (_, "/metrics" | "/ui") => return None,
        ("POST", "/v1/objects") => (Native, "put"),
        ("POST", "/v1/keys") => (Native, "new_key"),
        ("POST", "/v1/batch/put") => (Native, "batch_put"),
        ("POST", "/v1/batch/get") => (Native, "batch_get"),
        ("POST", "/v1/batch/exists") => (Native, "batch_exists"),
        ("POST", "/v1/batch/evict") => (Native, "batch_evict"),
        ("GET", "/v1/status") => (Native, "status"),
        (_, p) if p.starts_with("/v1/objects/") => match m {
            "GET" => (Native, "get"),
            "HEAD" => (Native, "exists"),
            "PUT" => (Native, "set"),
            "DELETE" => (Native, "evict"),
            _ => (Native, "other"),
        },
        ("POST", "/set") => (Proxystore, "put"),
        ("GET", "/get") => (Proxystore, "get"),
        ("GET", "/exists") => (Proxystore, "exists"),
        ("POST", "/evict") => (Proxystore, "evict"),
        ("GET", "/endpoint") => (Proxystore, "status"),
        _ => return None,
    };
    Some(op)
}

/// A request's outcome label from its status.
pub fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        404 => "not_found",
        401 | 403 | 409 => "refused",
        400..=499 => "bad_request",
        _ => "error",
    }
}

/// Count the request (the outermost layer: requests the browser guard
/// refuses are counted as refused too).
pub async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let which = door_and_op(req.method(), req.uri().path());
    let started = Instant::now();
    let resp = next.run(req).await;
    if let Some((door, op)) = which {
        state
            .metrics
            .request(door, op, outcome(resp.status()), started.elapsed());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_to_doors_and_operations() {
        let g = |m: Method, p: &str| door_and_op(&m, p);
        assert_eq!(g(Method::POST, "/v1/objects"), Some((Door::Native, "put")));
        assert_eq!(
            g(Method::GET, "/v1/objects/pm1abc"),
            Some((Door::Native, "get"))
        );
        assert_eq!(
            g(Method::DELETE, "/v1/objects/pm1abc"),
            Some((Door::Native, "evict"))
        );
        assert_eq!(g(Method::GET, "/get"), Some((Door::Proxystore, "get")));
        assert_eq!(g(Method::GET, "/metrics"), None);
        assert_eq!(g(Method::GET, "/nothing"), None);
        assert_eq!(outcome(StatusCode::FORBIDDEN), "refused");
        assert_eq!(outcome(StatusCode::BAD_GATEWAY), "error");
        assert_eq!(outcome(StatusCode::PARTIAL_CONTENT), "ok");
    }
}
