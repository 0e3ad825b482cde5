//! `GET /ui`: a live view of the mesh from this daemon — this site, its
//! relays, the peers with their paths, transfers in flight with their
//! rates — drawn in the browser from `/v1/status`, polled every second.
//! The same rules as the rest of the API: the daemon's user (or API group)
//! on loopback; pages of other sites cannot load it or read it
//! ([`browser_guard`](super::browser_guard)), and it cannot be framed.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page (HTML, CSS and script in one file, no outside resources).
pub const PAGE: &str = include_str!("ui.html");

/// `GET /ui`.
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}
