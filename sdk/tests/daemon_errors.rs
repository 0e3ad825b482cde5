//! `DaemonConnector` without a real daemon: a closed port, and a scripted
//! HTTP/1.1 server for the error mapping, the batch framing and streaming.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use proxymesh::api::{self, ErrorCode};
use proxymesh::{Connector, ConnectorConfig, DaemonConnector, Error, Key, ObjectId, Proxy, Store};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn closed_port_is_unreachable_promptly() {
    let port = closed_port();
    let c = DaemonConnector::new(&format!("127.0.0.1:{port}")).unwrap();
    let key = Key::local(ObjectId::random());
    let started = Instant::now();
    let results: Vec<(&str, proxymesh::Result<()>)> = vec![
        ("put", c.put(Bytes::from_static(b"x")).await.map(drop)),
        ("get", c.get(&key).await.map(drop)),
        ("exists", c.exists(&key).await.map(drop)),
        ("evict", c.evict(&key).await),
        ("new_key", c.new_key().await.map(drop)),
        ("set", c.set(&key, Bytes::new()).await),
        ("status", c.status().await.map(drop)),
        ("put_batch", c.put_batch(vec![Bytes::new()]).await.map(drop)),
        (
            "get_batch",
            c.get_batch(std::slice::from_ref(&key)).await.map(drop),
        ),
        (
            "exists_batch",
            c.exists_batch(std::slice::from_ref(&key)).await.map(drop),
        ),
        (
            "evict_batch",
            c.evict_batch(std::slice::from_ref(&key)).await,
        ),
        (
            "put_stream",
            c.put_stream(futures::stream::iter([Ok(Bytes::from_static(b"x"))]).boxed())
                .await
                .map(drop),
        ),
        ("get_stream", c.get_stream(&key).await.map(drop)),
    ];
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    for (op, r) in results {
        match r {
            Err(Error::Unreachable { api, reason }) => {
                assert_eq!(api, format!("http://127.0.0.1:{port}"), "{op}");
                assert!(!reason.is_empty(), "{op}");
            }
            other => panic!("{op}: expected Unreachable, got {other:?}"),
        }
    }
    let msg = c.status().await.unwrap_err().to_string();
    assert!(
        msg.contains(api::API_ENV) && msg.contains(&port.to_string()),
        "{msg}"
    );
}

#[test]
fn closed_port_proxy_resolution_fails_cleanly() {
    let c = DaemonConnector::new(&format!("http://127.0.0.1:{}/", closed_port())).unwrap();
    assert_eq!(c.config(), ConnectorConfig::Daemon);
    let store = Store::new("daemon-errors-proxy", Arc::new(c));
    let p: Proxy<u8> = store.proxy_from_key(Key::local(ObjectId::random()));
    assert!(matches!(p.try_resolve(), Err(Error::Unreachable { .. })));
}

#[test]
fn from_env_reads_the_api_variable() {
    // The only test of this binary touching the environment.
    std::env::set_var(api::API_ENV, "http://127.0.0.1:1");
    assert_eq!(
        DaemonConnector::from_env().unwrap().api_addr(),
        "http://127.0.0.1:1"
    );
    std::env::set_var(api::API_ENV, "not an address");
    let err = DaemonConnector::from_env().unwrap_err();
    assert!(err.to_string().contains(api::API_ENV), "{err}");
    std::env::remove_var(api::API_ENV);
    assert_eq!(
        DaemonConnector::from_env().unwrap().api_addr(),
        format!("http://{}", api::DEFAULT_API_ADDR)
    );
}

// ---------------------------------------------------------------------------
// A scripted HTTP/1.1 server (keep-alive, content-length and chunked bodies),
// on its own thread and runtime so tests may block theirs.

struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Resp {
    status: u16,
    body: Vec<u8>,
}

fn json(status: u16, v: impl serde::Serialize) -> Resp {
    Resp {
        status,
        body: serde_json::to_vec(&v).unwrap(),
    }
}

fn api_error(status: u16, code: ErrorCode, msg: &str) -> Resp {
    json(
        status,
        api::ApiError {
            code,
            error: msg.into(),
        },
    )
}

type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

fn mock(handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> String {
    let handler: Handler = Arc::new(handler);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().to_string()).unwrap();
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(sock, handler.clone()));
            }
        });
    });
    rx.recv().unwrap()
}

async fn serve(sock: tokio::net::TcpStream, handler: Handler) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).await?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').unwrap();
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut req = Req {
            method,
            path,
            headers,
            body: Vec::new(),
        };
        if req.header("transfer-encoding") == Some("chunked") {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).await?;
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                r.read_exact(&mut chunk).await?;
                if size == 0 {
                    break;
                }
                req.body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(len) = req.header("content-length") {
            let mut body = vec![0; len.parse().unwrap()];
            r.read_exact(&mut body).await?;
            req.body = body;
        }
        let resp = handler(&req);
        let head = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n\r\n",
            resp.status,
            resp.body.len()
        );
        w.write_all(head.as_bytes()).await?;
        if req.method != "HEAD" {
            w.write_all(&resp.body).await?;
        }
    }
}

fn put_response(key: Key, body: &[u8]) -> Resp {
    json(
        201,
        api::PutResponse {
            ticket: Some(key.ticket()),
            key,
            size: body.len() as u64,
            blake3: blake3::hash(body).to_hex().to_string(),
        },
    )
}

#[tokio::test]
async fn error_answers_are_mapped() {
    let addr = mock(|req| match (req.method.as_str(), req.path.as_str()) {
        ("GET", p) | ("HEAD", p) if p.starts_with("/v1/objects/") => {
            api_error(404, ErrorCode::NotFound, "no such object")
        }
        ("DELETE", _) => api_error(404, ErrorCode::NotFound, "no such object"),
        ("POST", "/v1/objects") => {
            api_error(413, ErrorCode::TooLarge, "object exceeds the 10 byte limit")
        }
        ("POST", "/v1/keys") => Resp {
            status: 500,
            body: b"boom".to_vec(),
        },
        ("PUT", _) => api_error(409, ErrorCode::WrongPeer, "key of another daemon"),
        _ => Resp {
            status: 200,
            body: b"not json".to_vec(),
        },
    });
    let c = DaemonConnector::new(&addr).unwrap();
    let key = Key::local(ObjectId::random());
    assert_eq!(c.get(&key).await.unwrap(), None);
    assert!(!c.exists(&key).await.unwrap());
    assert!(c.get_stream(&key).await.unwrap().is_none());
    c.evict(&key).await.unwrap();
    match c.put(Bytes::from_static(b"too large!!")).await {
        Err(Error::Daemon {
            status: 413,
            code: ErrorCode::TooLarge,
            message,
            api,
        }) => {
            assert!(message.contains("10 byte"), "{message}");
            assert_eq!(api, format!("http://{addr}"));
        }
        other => panic!("{other:?}"),
    }
    match c.new_key().await {
        Err(Error::Daemon {
            status: 500,
            code: ErrorCode::Internal,
            message,
            ..
        }) => assert_eq!(message, "boom"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.set(&key, Bytes::new()).await,
        Err(Error::Daemon {
            code: ErrorCode::WrongPeer,
            ..
        })
    ));
    // A 200 that is not the expected JSON.
    assert!(matches!(c.status().await, Err(Error::Daemon { .. })));
}

#[tokio::test]
async fn requests_and_answers_follow_the_api() {
    let addr = mock(|req| match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/v1/objects") => {
            // Streamed puts are chunked unless a length was declared.
            let declared = req
                .header("content-length")
                .map(|l| l.parse::<usize>().unwrap());
            let chunked = req.header("transfer-encoding") == Some("chunked");
            assert!(declared == Some(req.body.len()) || (declared.is_none() && chunked));
            put_response(Key::local(ObjectId::random()), &req.body)
        }
        ("POST", "/v1/batch/put") => {
            let mut p = api::FrameParser::default();
            p.push(&req.body);
            let mut keys = Vec::new();
            while let Some(f) = p.next_frame() {
                assert_eq!(f, vec![keys.len() as u8; keys.len()]);
                keys.push(Key::local(ObjectId::random()));
            }
            p.finish().unwrap();
            let tickets = keys.iter().map(|k| k.ticket()).collect();
            json(200, api::KeysResponse { keys, tickets })
        }
        ("POST", "/v1/batch/get") => {
            let r: api::KeysRequest = serde_json::from_slice(&req.body).unwrap();
            let mut body = Vec::new();
            for (i, _) in r.keys.iter().enumerate() {
                api::write_batch_item(&mut body, (i % 2 == 0).then_some(&[i as u8; 3][..]));
            }
            Resp { status: 200, body }
        }
        ("POST", "/v1/batch/exists") => {
            let r: api::KeysRequest = serde_json::from_slice(&req.body).unwrap();
            json(
                200,
                api::ExistsBatchResponse {
                    exists: vec![true; r.keys.len()],
                },
            )
        }
        ("POST", "/v1/batch/evict") => {
            let r: api::KeysRequest = serde_json::from_slice(&req.body).unwrap();
            json(
                200,
                api::EvictBatchResponse {
                    evicted: vec![false; r.keys.len()],
                },
            )
        }
        ("GET", "/v1/status") => json(
            200,
            api::Status {
                peer_id: "12D3KooW".into(),
                uuid: "u".into(),
                version: "0.1.0".into(),
                objects: 1,
                bytes: 2,
                memory_bytes: 2,
                disk_bytes: 0,
                memory_cap: 100,
                max_object_size: None,
                persist: false,
                data_dir: "/tmp".into(),
                api: "127.0.0.1:7878".into(),
                api_socket: None,
                uptime_secs: 3,
                mesh: None,
            },
        ),
        ("GET", p) if p.starts_with("/v1/objects/") => {
            let key: Key = p["/v1/objects/".len()..].parse().unwrap();
            Resp {
                status: 200,
                body: vec![7u8; key.id.0[0] as usize * 1000],
            }
        }
        (m, p) => panic!("unexpected {m} {p}"),
    });
    let c = DaemonConnector::new(&format!("http://{addr}")).unwrap();
    assert_eq!(c.status().await.unwrap().objects, 1);
    let data: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; i as usize])).collect();
    assert_eq!(c.put_batch(data).await.unwrap().len(), 4);
    let keys: Vec<Key> = (0..3).map(|_| Key::local(ObjectId::random())).collect();
    let got = c.get_batch(&keys).await.unwrap();
    assert_eq!(
        got,
        vec![
            Some(Bytes::from(vec![0u8; 3])),
            None,
            Some(Bytes::from(vec![2u8; 3]))
        ]
    );
    assert_eq!(c.exists_batch(&keys).await.unwrap(), vec![true; 3]);
    c.evict_batch(&keys).await.unwrap();

    let chunks =
        || futures::stream::iter((0..5u8).map(|i| Ok(Bytes::from(vec![i; 10_000])))).boxed();
    c.put_stream(chunks()).await.unwrap();
    c.put_stream_with_len(chunks(), 50_000).await.unwrap();
    let failing = futures::stream::iter([
        Ok(Bytes::from_static(b"x")),
        Err(std::io::Error::other("source broke")),
    ])
    .boxed();
    match c.put_stream(failing).await {
        Err(Error::Io(e)) => assert!(e.to_string().contains("source broke"), "{e}"),
        other => panic!("{other:?}"),
    }

    let mut id = ObjectId::random();
    id.0[0] = 200;
    let key = Key::local(id);
    assert_eq!(c.get(&key).await.unwrap().unwrap().len(), 200_000);
    let stream = c.get_stream(&key).await.unwrap().unwrap();
    let parts: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(parts.iter().map(Bytes::len).sum::<usize>(), 200_000);
}

#[tokio::test(flavor = "current_thread")]
async fn sync_resolution_inside_a_current_thread_runtime_does_not_deadlock() {
    let addr = mock(|req| {
        assert_eq!(req.method, "GET");
        Resp {
            status: 200,
            body: b"payload".to_vec(),
        }
    });
    let c = DaemonConnector::new(&addr).unwrap();
    let store = Store::new("daemon-errors-current-thread", Arc::new(c.clone()));
    let key = Key::local(ObjectId::random());
    // A pooled connection driven by this (current-thread) runtime ...
    assert_eq!(c.get(&key).await.unwrap().unwrap(), "payload");
    // ... must not be what a blocking resolution on this thread waits on.
    for _ in 0..3 {
        let p: Proxy<Vec<u8>> = store.proxy_from_key(key.clone());
        assert_eq!(p.as_slice(), b"payload");
        assert_eq!(c.get(&key).await.unwrap().unwrap(), "payload");
    }
}

#[test]
fn one_connector_across_successive_runtimes() {
    let addr = mock(|_| Resp {
        status: 200,
        body: b"ok".to_vec(),
    });
    let c = DaemonConnector::new(&addr).unwrap();
    let key = Key::local(ObjectId::random());
    for i in 0..4 {
        let rt = if i % 2 == 0 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        };
        for _ in 0..3 {
            assert_eq!(
                rt.block_on(c.get(&key)).unwrap().unwrap(),
                "ok",
                "runtime {i}"
            );
        }
        drop(rt);
    }
}
