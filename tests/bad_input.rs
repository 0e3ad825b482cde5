//! Bad input against a real daemon: every case gets a clear 4xx (or 507 for a
//! full disk) with a message, and loses nothing: no half-written object ever
//! becomes visible, nothing is left on disk, earlier objects are intact.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use proxymesh_suite::{bin_path, chunked, http, require_root, DaemonProcess};

const OCTET: (&str, &str) = ("content-type", "application/octet-stream");

fn object_count(d: &DaemonProcess) -> u64 {
    http(&d.api, "GET", "/v1/status", &[], b"").json()["objects"]
        .as_u64()
        .unwrap()
}

/// Bytes in regular files below the daemon's object store.
fn stored_file_bytes(data_dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    walk(&e.path())
                } else {
                    m.len()
                }
            })
            .sum()
    }
    walk(&data_dir.join("store"))
}

fn put(d: &DaemonProcess, body: &[u8]) -> String {
    let r = http(&d.api, "POST", "/v1/objects", &[OCTET], body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["key"].as_str().unwrap().to_string()
}

#[test]
fn malformed_keys_are_400_with_a_message() {
    let d = DaemonProcess::start(&[]);
    for bad in [
        "nope",
        "pm1zzzz",
        "pm1!!",
        "0123456789abcdef0123456789abcdeg",
    ] {
        for method in ["GET", "HEAD", "DELETE", "PUT"] {
            let r = http(
                &d.api,
                method,
                &format!("/v1/objects/{bad}"),
                &[OCTET],
                b"x",
            );
            assert_eq!(r.status, 400, "{method} {bad}: {}", r.text());
            if method != "HEAD" {
                assert_eq!(r.json()["code"], "bad_request", "{}", r.text());
                assert!(!r.json()["error"].as_str().unwrap().is_empty());
            }
        }
    }
    let r = http(
        &d.api,
        "POST",
        "/v1/batch/exists",
        &[("content-type", "application/json")],
        br#"{"keys":["bad"]}"#,
    );
    assert!((400..500).contains(&r.status), "{}", r.text());
    let r = http(
        &d.api,
        "POST",
        "/v1/batch/exists",
        &[("content-type", "application/json")],
        b"not json",
    );
    assert!((400..500).contains(&r.status), "{}", r.text());
}

#[test]
fn missing_objects_are_404_and_other_daemons_keys_409() {
    let a = DaemonProcess::start(&[]);
    let b = DaemonProcess::start(&[]);
    let key_a = put(&a, b"hello");
    let bare_missing = "0123456789abcdef0123456789abcdef";
    let r = http(
        &a.api,
        "GET",
        &format!("/v1/objects/{bare_missing}"),
        &[],
        b"",
    );
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(
        http(
            &a.api,
            "HEAD",
            &format!("/v1/objects/{bare_missing}"),
            &[],
            b""
        )
        .status,
        404
    );
    let r = http(
        &a.api,
        "DELETE",
        &format!("/v1/objects/{bare_missing}"),
        &[],
        b"",
    );
    assert_eq!(
        (r.status, r.json()["evicted"].as_bool()),
        (200, Some(false))
    );
    // A ticket of daemon A given to daemon B: B says whose it is.
    let r = http(&b.api, "GET", &format!("/v1/objects/{key_a}"), &[], b"");
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains(&a.peer_id), "{}", r.text());
    assert_eq!(
        http(&a.api, "GET", "/v1/no-such-route", &[], b"").status,
        404
    );
}

#[test]
fn oversized_objects_are_413_declared_or_streamed() {
    let d = DaemonProcess::start(&["--max-object-size", "1MiB", "--memory-cap", "256KiB"]);
    let keep = put(&d, b"earlier object");
    let big = vec![1u8; (1 << 20) + 1];
    // Declared too large: refused before the body is read.
    let r = http(&d.api, "POST", "/v1/objects", &[OCTET], &big);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (413, Some("too_large")),
        "{}",
        r.text()
    );
    // Chunked, so only the streamed count can tell.
    let body = chunked(&[&big[..500_000], &big[500_000..]]);
    let r = http(
        &d.api,
        "POST",
        "/v1/objects",
        &[OCTET, ("transfer-encoding", "chunked")],
        &body,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // ProxyStore's /set obeys the same limit.
    let r = http(
        &d.api,
        "POST",
        "/set?key=k",
        &[OCTET, ("transfer-encoding", "chunked")],
        &body,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // Exactly at the limit is fine.
    put(&d, &big[..1 << 20]);
    assert_eq!(object_count(&d), 2);
    assert_eq!(
        http(&d.api, "GET", &format!("/v1/objects/{keep}"), &[], b"").body,
        b"earlier object"
    );
}

/// Declare `declared` bytes, send `sent`, then close the sending side.
fn truncated_put(api: &str, path: &str, declared: usize, sent: usize) -> u16 {
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\ncontent-length: {declared}\r\n\r\n").unwrap();
    let chunk = vec![9u8; 64 * 1024];
    let mut left = sent;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn bodies_that_end_early_leave_nothing_behind() {
    let d = DaemonProcess::start(&["--memory-cap", "4MiB", "--inline-limit", "1MiB"]);
    let keep = put(&d, b"still here");
    let disk_before = stored_file_bytes(&d.data_dir);
    // Small (memory) and large (spilled to disk) objects, native and ProxyStore routes.
    for (path, declared, sent) in [
        ("/v1/objects", 1000, 10),
        ("/v1/objects", 64 << 20, 8 << 20),
        ("/set?key=partial", 64 << 20, 8 << 20),
    ] {
        let status = truncated_put(&d.api, path, declared, sent);
        assert!(
            status == 0 || (400..500).contains(&status),
            "{path}: status {status}"
        );
    }
    assert_eq!(object_count(&d), 1);
    assert_eq!(
        http(&d.api, "GET", "/exists?key=partial", &[], b"").json()["exists"],
        false
    );
    assert_eq!(
        http(&d.api, "GET", &format!("/v1/objects/{keep}"), &[], b"").body,
        b"still here"
    );
    // No temp file survives (give the server a moment to notice the EOF).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored_file_bytes(&d.data_dir) != disk_before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        stored_file_bytes(&d.data_dir),
        disk_before,
        "partial data left on disk"
    );
}

#[test]
fn batch_put_is_all_or_nothing() {
    let d = DaemonProcess::start(&["--max-object-size", "1KiB"]);
    let mut body = Vec::new();
    proxymesh::api::write_frame(&mut body, b"ok");
    proxymesh::api::write_frame(&mut body, &[0u8; 2048]);
    let r = http(&d.api, "POST", "/v1/batch/put", &[OCTET], &body);
    assert_eq!(r.status, 413, "{}", r.text());
    // A body that ends inside a frame.
    let mut body = Vec::new();
    proxymesh::api::write_frame(&mut body, b"ok");
    body.extend_from_slice(&100u64.to_be_bytes());
    body.extend_from_slice(b"short");
    let r = http(&d.api, "POST", "/v1/batch/put", &[OCTET], &body);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("incomplete_body")),
        "{}",
        r.text()
    );
    assert_eq!(object_count(&d), 0);
}

#[test]
fn full_disk_is_507_and_loses_nothing() {
    if !require_root("full-disk test (mounts a small tmpfs)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    // A private mount namespace: the 8 MiB tmpfs vanishes with the daemon.
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"d="$0"; b="$1"; shift; mount -t tmpfs -o size=8m tmpfs "$d" && exec "$b" --data-dir "$d" --api 127.0.0.1:0 --memory-cap 1MiB --inline-limit 64KiB "$@""#)
        .arg(&dir)
        .arg(bin_path("proxymeshd"));
    let d = DaemonProcess::spawn(cmd, &[], &dir);
    let keep = put(&d, &[5u8; 100_000]);
    let big = vec![7u8; 16 << 20];
    for (path, headers) in [("/v1/objects", vec![OCTET]), ("/set?key=big", vec![OCTET])] {
        let r = http(&d.api, "POST", path, &headers, &big);
        assert_eq!(r.status, 507, "{path}: {}", r.text());
        assert!(r.text().contains("full"), "{}", r.text());
    }
    let body = chunked(&[&big[..1 << 20], &big[1 << 20..]]);
    let r = http(
        &d.api,
        "POST",
        "/v1/objects",
        &[OCTET, ("transfer-encoding", "chunked")],
        &body,
    );
    assert_eq!(r.status, 507, "{}", r.text());
    // Nothing half-written stays; the earlier object is intact; space is free again.
    assert_eq!(object_count(&d), 1);
    assert_eq!(
        http(&d.api, "GET", &format!("/v1/objects/{keep}"), &[], b"").body,
        vec![5u8; 100_000]
    );
    put(&d, &[6u8; 4 << 20]);
}

/// Send `bytes` on a fresh quick-protocol connection to `socket` (`unix:PATH`)
/// and read answers until the daemon closes it or goes quiet: each answer's
/// status and body.
fn quick_exchange(socket: &str, bytes: &[u8]) -> (Vec<(u16, String)>, bool) {
    let path = socket.strip_prefix("unix:").unwrap();
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(bytes).unwrap();
    let mut answers = Vec::new();
    loop {
        let mut header = [0u8; 10];
        match s.read_exact(&mut header) {
            Ok(()) => {}
            // Closed by the daemon (true; a reset if it left bytes unread),
            // or still open and quiet (false: the read timed out).
            Err(e) => {
                let closed = matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                );
                return (answers, closed);
            }
        }
        let (status, len) = proxymesh::api::quick::parse_answer_header(&header);
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).unwrap();
        answers.push((status, String::from_utf8_lossy(&body).into_owned()));
    }
}

#[test]
fn bad_quick_protocol_requests_get_an_answer_or_a_closed_connection() {
    use proxymesh::api::quick::{request, EXISTS, GET, HELLO, MAX_KEY};
    let d = DaemonProcess::start(&[]);
    let socket = d.socket.clone().expect("a Unix socket");
    let key = put(&d, b"quick");

    // A malformed key is a 400 with a message, and the connection goes on:
    // the next request (a missing bare object ID) is a 404, then a real get.
    let mut bytes = HELLO.to_vec();
    bytes.extend(request(GET, "not-a-key"));
    bytes.extend(request(EXISTS, &"0".repeat(32)));
    bytes.extend(request(GET, &key));
    let (answers, closed) = quick_exchange(&socket, &bytes);
    assert!(!closed, "{answers:?}");
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[0].0, 400, "{answers:?}");
    assert!(
        answers[0].1.contains("\"code\":\"bad_request\""),
        "{answers:?}"
    );
    assert_eq!(answers[1], (404, String::new()));
    assert_eq!(answers[2], (200, "quick".to_string()));

    // An unknown request is answered 400, then the connection closes (what
    // follows cannot be trusted to be framed).
    let mut bytes = HELLO.to_vec();
    bytes.extend([9u8, 0, 0]);
    let (answers, closed) = quick_exchange(&socket, &bytes);
    assert!(
        closed && answers.len() == 1 && answers[0].0 == 400,
        "{answers:?}"
    );

    // A key longer than the limit, or another version's hello: closed unanswered.
    let mut bytes = HELLO.to_vec();
    bytes.push(GET);
    bytes.extend(((MAX_KEY + 1) as u16).to_be_bytes());
    bytes.extend(vec![b'k'; MAX_KEY + 1]);
    assert_eq!(quick_exchange(&socket, &bytes), (vec![], true));
    assert_eq!(quick_exchange(&socket, b"\0PM9"), (vec![], true));

    // The daemon still serves, and stored nothing for any of it.
    assert_eq!(object_count(&d), 1);
}
