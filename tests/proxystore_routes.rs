//! Every ProxyStore 1.x endpoint route and status code, against a real
//! `proxymeshd` process, spoken in raw HTTP as ProxyStore's client sends it.

use proxymesh_suite::{chunked, http, DaemonProcess};

const OCTET: (&str, &str) = ("content-type", "application/octet-stream");

#[test]
fn root_and_endpoint() {
    let d = DaemonProcess::start(&[]);
    assert_eq!(http(&d.api, "GET", "/", &[], b"").status, 200);
    let r = http(&d.api, "GET", "/endpoint", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uuid"], d.uuid.as_str());
    uuid_v4_shaped(&d.uuid);
}

fn uuid_v4_shaped(u: &str) {
    // Python ProxyStore re-parses the UUID with version=4.
    assert_eq!(u.len(), 36, "{u}");
    assert_eq!(&u[14..15], "4", "{u}");
}

#[test]
fn set_get_exists_evict_roundtrip_with_chunked_body() {
    let d = DaemonProcess::start(&[]);
    let key = "8b0e5b8e-1f8a-4d3c-9a57-2b7f0d6c1e11";
    let r = http(&d.api, "GET", &format!("/exists?key={key}"), &[], b"");
    assert_eq!((r.status, r.json()["exists"].as_bool()), (200, Some(false)));

    // ProxyStore's client sends the body chunked.
    let payload = vec![42u8; 300_000];
    let body = chunked(&[&payload[..1000], &payload[1000..]]);
    let r = http(
        &d.api,
        "POST",
        &format!("/set?key={key}"),
        &[OCTET, ("transfer-encoding", "chunked")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let r = http(&d.api, "GET", &format!("/exists?key={key}"), &[], b"");
    assert_eq!((r.status, r.json()["exists"].as_bool()), (200, Some(true)));
    let r = http(&d.api, "GET", &format!("/get?key={key}"), &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, payload);

    // With endpoint = this daemon's UUID: same as local.
    let r = http(
        &d.api,
        "GET",
        &format!("/get?key={key}&endpoint={}", d.uuid),
        &[],
        b"",
    );
    assert_eq!((r.status, r.body.len()), (200, payload.len()));

    assert_eq!(
        http(&d.api, "POST", &format!("/evict?key={key}"), &[], b"").status,
        200
    );
    let r = http(&d.api, "GET", &format!("/get?key={key}"), &[], b"");
    assert_eq!(r.status, 404);
    // Evicting a missing key is fine.
    assert_eq!(
        http(&d.api, "POST", &format!("/evict?key={key}"), &[], b"").status,
        200
    );
}

#[test]
fn set_replaces_and_keys_are_separate_from_native_ids() {
    let d = DaemonProcess::start(&[]);
    let key = "00000000000000000000000000000001";
    for v in [b"first".as_slice(), b"second"] {
        assert_eq!(
            http(&d.api, "POST", &format!("/set?key={key}"), &[OCTET], v).status,
            200
        );
    }
    assert_eq!(
        http(&d.api, "GET", &format!("/get?key={key}"), &[], b"").body,
        b"second"
    );
    // The same string as a native object ID names nothing.
    assert_eq!(
        http(&d.api, "GET", &format!("/v1/objects/{key}"), &[], b"").status,
        404
    );
}

#[test]
fn bad_requests_are_400_and_missing_is_404() {
    let d = DaemonProcess::start(&[]);
    for (method, path) in [
        ("GET", "/exists"),
        ("GET", "/get"),
        ("POST", "/set"),
        ("POST", "/evict"),
    ] {
        let r = http(&d.api, method, path, &[OCTET], b"x");
        assert_eq!(r.status, 400, "{method} {path} without key: {}", r.text());
        assert!(r.text().contains("key"), "{}", r.text());
        let r = http(
            &d.api,
            method,
            &format!("{path}?key=k&endpoint=not-a-uuid"),
            &[OCTET],
            b"x",
        );
        assert_eq!(r.status, 400, "{method} {path} bad uuid: {}", r.text());
    }
    assert_eq!(
        http(&d.api, "GET", "/get?key=nothing-here", &[], b"").status,
        404
    );
    // Empty bodies are refused, plain and chunked, and do not clobber an existing object.
    assert_eq!(
        http(&d.api, "POST", "/set?key=k", &[OCTET], b"keep").status,
        200
    );
    let r = http(&d.api, "POST", "/set?key=k", &[OCTET], b"");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = http(
        &d.api,
        "POST",
        "/set?key=k",
        &[OCTET, ("transfer-encoding", "chunked")],
        &chunked(&[]),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(http(&d.api, "GET", "/get?key=k", &[], b"").body, b"keep");
}

#[test]
fn unknown_endpoint_is_an_error_not_a_hang() {
    let d = DaemonProcess::start(&[]);
    let other = "2b0e5b8e-1f8a-4d3c-9a57-2b7f0d6c1e11";
    let r = http(
        &d.api,
        "GET",
        &format!("/exists?key=k&endpoint={other}"),
        &[],
        b"",
    );
    assert!(r.status >= 500, "{}", r.status);
    assert!(r.text().contains(other), "{}", r.text());
}
