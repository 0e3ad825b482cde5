//! The quick protocol on the Unix socket ([`proxymesh::api::quick`]): gets
//! and exists checks without HTTP, for the SDK's small objects. The same
//! service calls as `GET`/`HEAD /v1/objects/{key}`, the same answers (HTTP
//! statuses, [`Failure`] bodies), on a connection [`server`](super::server)
//! already checked and counted.

use std::io;
use std::sync::Arc;

use futures::StreamExt;
use proxymesh::api::quick;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::server::Limits;
use super::{AppState, Failure, STREAM_CHUNK};
use crate::mesh::fetcher::Fetched;
use crate::metrics::Door;
use crate::service::{Caller, Object};
use crate::storage::{ChunkStream, ObjectReader};
use axum::http::StatusCode;

/// Chunks up to this size are copied behind the answer's header, to send
/// both in one write.
const COALESCE: usize = 64 * 1024;

/// Serve quick-protocol requests on `conn` (its [`quick::HELLO`] already
/// read) until the client closes it, goes idle or breaks a rule.
pub async fn serve<S>(mut conn: S, state: Arc<AppState>, limits: Limits) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let op = match timeout(limits.idle, conn.read_u8()).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let key = timeout(limits.header, async {
            let len = conn.read_u16().await? as usize;
            if len > quick::MAX_KEY {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a key of {len} bytes (at most {})", quick::MAX_KEY),
                ));
            }
            let mut key = vec![0u8; len];
            conn.read_exact(&mut key).await?;
            Ok(key)
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "a request stopped midway"))??;
        let Ok(key) = String::from_utf8(key) else {
            let failure = Failure::bad_request("the key is not UTF-8 text");
            answer_failure(&mut conn, failure, limits).await?;
            continue;
        };
        let started = std::time::Instant::now();
        let counted = |op, answer: &io::Result<StatusCode>| {
            let outcome = match answer {
                Ok(status) => crate::api::metrics::outcome(*status),
                Err(_) => "error",
            };
            state
                .metrics
                .request(Door::Native, op, outcome, started.elapsed());
        };
        match op {
            quick::GET => {
                let answer = get(&mut conn, &state, &key, limits).await;
                counted("get", &answer);
                answer?;
            }
            quick::EXISTS => {
                let answer = exists(&mut conn, &state, &key, limits).await;
                counted("exists", &answer);
                answer?;
            }
            other => {
                let failure =
                    Failure::bad_request(format!("unknown quick-protocol request {other}"));
                // The rest of the stream cannot be trusted to be framed.
                answer_failure(&mut conn, failure, limits).await?;
                return Ok(());
            }
        }
    }
}

/// Answer a get; the status answered.
async fn get<S>(conn: &mut S, state: &AppState, key: &str, limits: Limits) -> io::Result<StatusCode>
where
    S: AsyncWrite + Unpin,
{
    let object = match state.objects.target_of_segment(key) {
        Ok(t) => state.objects.get(Caller::Local, &t).await,
        Err(e) => Err(e),
    };
    let (size, mut body) = match object {
        Ok(object) => sized(object),
        Err(e) => {
            let failure = Failure::from(e);
            let status = failure.status();
            answer_failure(conn, failure, limits).await?;
            return Ok(status);
        }
    };
    // A small object goes out with its header in one write.
    let mut header = Some(quick::answer_header(200, size));
    let mut sent = 0u64;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                sent += chunk.len() as u64;
                match header.take() {
                    Some(h) if chunk.len() <= COALESCE => {
                        let mut out = Vec::with_capacity(h.len() + chunk.len());
                        out.extend_from_slice(&h);
                        out.extend_from_slice(&chunk);
                        write(conn, &out, limits).await?;
                    }
                    Some(h) => {
                        write(conn, &h, limits).await?;
                        write(conn, &chunk, limits).await?;
                    }
                    None => write(conn, &chunk, limits).await?,
                }
            }
            // The answer cannot change now: end the connection short.
            Err(e) => return Err(e),
        }
    }
    if let Some(h) = header {
        write(conn, &h, limits).await?;
    }
    if sent != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the object ended after {sent} of {size} bytes"),
        ));
    }
    timeout(limits.stall, conn.flush())
        .await
        .map_err(|_| stalled())??;
    Ok(StatusCode::OK)
}

/// Answer an exists check; the status answered.
async fn exists<S>(
    conn: &mut S,
    state: &AppState,
    key: &str,
    limits: Limits,
) -> io::Result<StatusCode>
where
    S: AsyncWrite + Unpin,
{
    let size = match state.objects.target_of_segment(key) {
        Ok(t) => state.objects.size(Caller::Local, &t).await,
        Err(e) => Err(e),
    };
    match size {
        Ok(_) => {
            write(conn, &quick::answer_header(200, 0), limits).await?;
            Ok(StatusCode::OK)
        }
        Err(e) => {
            let failure = Failure::from(e);
            let status = failure.status();
            if status.as_u16() == 404 {
                write(conn, &quick::answer_header(404, 0), limits).await?;
            } else {
                answer_failure(conn, failure, limits).await?;
            }
            Ok(status)
        }
    }
}

/// An object's size and bytes, wherever it comes from.
fn sized(object: Object) -> (u64, ChunkStream) {
    let reader = match object {
        Object::Here(reader) | Object::Fetched(Fetched::Cached { reader }) => reader,
        Object::Fetched(Fetched::Streaming { size, body, .. }) => return (size, body),
    };
    let size = reader.meta().size;
    let body = match reader {
        ObjectReader::Memory { data, .. } => futures::stream::once(async move { Ok(data) }).boxed(),
        reader => reader.into_stream(STREAM_CHUNK),
    };
    (size, body)
}

async fn answer_failure<S>(conn: &mut S, failure: Failure, limits: Limits) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let body = serde_json::to_vec(&failure.body).unwrap_or_default();
    let mut out = quick::answer_header(failure.status().as_u16(), body.len() as u64).to_vec();
    out.extend_from_slice(&body);
    write(conn, &out, limits).await
}

async fn write<S>(conn: &mut S, bytes: &[u8], limits: Limits) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    timeout(limits.stall, conn.write_all(bytes))
        .await
        .map_err(|_| stalled())?
}

fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")
}
