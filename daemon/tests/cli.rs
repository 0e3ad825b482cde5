//! The `proxymesh` client CLI and `proxymeshd`'s own command line, run as
//! real processes against a real daemon.

use std::process::{Command, Output, Stdio};

use proxymesh_suite::DaemonProcess;

fn cli(d: &DaemonProcess, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proxymesh"))
        .arg("--api")
        .arg(&d.api)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run proxymesh")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn put_get_exists_evict_status() {
    let d = DaemonProcess::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();

    let out = cli(&d, &["put", input.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ticket = stdout(&out);
    assert!(ticket.starts_with("pm1"), "{ticket}");
    let key: proxymesh::Key = ticket.parse().unwrap();
    assert_eq!(key.peer.unwrap().to_string(), d.peer_id);

    let output = dir.path().join("out.bin");
    let out = cli(&d, &["get", &ticket, "-o", output.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&output).unwrap(), data);

    let out = cli(&d, &["exists", &ticket]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "true")
    );

    let out = cli(&d, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["peer_id"], d.peer_id.as_str());
    assert_eq!(status["objects"], 1);
    assert_eq!(status["bytes"], data.len() as u64);
    let out = cli(&d, &["status"]);
    assert!(stdout(&out).contains(&d.peer_id));

    let out = cli(&d, &["evict", &ticket]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&d, &["exists", &ticket]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(1), "false")
    );
    // A missing object: exit 1, a message, and no output file written.
    let missing = dir.path().join("missing.bin");
    let out = cli(&d, &["get", &ticket, "-o", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no object"), "{}", stderr(&out));
    assert!(!missing.exists());
}

#[test]
fn put_from_stdin_and_get_to_stdout_with_json() {
    let d = DaemonProcess::start(&[]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxymesh"))
        .args(["--api", &d.api, "put", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["size"], 10);
    assert_eq!(
        answer["blake3"],
        blake3::hash(b"from stdin").to_hex().as_str()
    );
    let ticket = answer["key"].as_str().unwrap();
    let out = cli(&d, &["get", ticket]);
    assert_eq!(out.stdout, b"from stdin");
}

#[test]
fn bad_input_and_unreachable_daemon_give_clear_errors() {
    let d = DaemonProcess::start(&[]);
    let out = cli(&d, &["get", "not-a-ticket"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("ticket"), "{}", stderr(&out));
    let out = cli(&d, &["put", "/definitely/not/here"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/definitely/not/here"),
        "{}",
        stderr(&out)
    );
    // Nobody listens on port 1.
    let out = Command::new(env!("CARGO_BIN_EXE_proxymesh"))
        .args(["--api", "127.0.0.1:1", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}

#[test]
fn daemon_flags_are_validated() {
    for args in [
        vec!["--memory-cap", "lots"],
        vec!["--api", "nowhere"],
        vec!["--proxystore-name", "bad name"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_proxymeshd"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(!stderr(&out).is_empty());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_proxymeshd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(stdout(&out).contains("--data-dir"));
}

#[test]
fn config_file_env_and_flags_layer_with_flags_winning() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxymeshd.toml");
    std::fs::write(&cfg, "memory_cap = \"3MiB\"\nmax_object_size = \"1KiB\"\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxymeshd"));
    cmd.arg("--config")
        .arg(&cfg)
        .args([
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--api",
            "127.0.0.1:0",
        ])
        .env("PROXYMESHD_MAX_OBJECT_SIZE", "2KiB")
        .args(["--memory-cap", "5MiB"]);
    let d = DaemonProcess::spawn(cmd, &[], &dir.path().join("data"));
    let out = cli(&d, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(status["memory_cap"], 5 << 20, "flag beats file");
    assert_eq!(status["max_object_size"], 2048, "env beats file");
}

#[test]
fn identity_is_stable_and_data_dir_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = DaemonProcess::start_in(dir.path(), &[]);
    let (peer, uuid) = (a.peer_id.clone(), a.uuid.clone());
    // A second daemon on the same directory refuses to start.
    let out = Command::new(env!("CARGO_BIN_EXE_proxymeshd"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--api",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already using"), "{}", stderr(&out));
    assert_eq!(a.stop(), Some(0), "clean exit on SIGTERM");
    let b = DaemonProcess::start_in(dir.path(), &[]);
    assert_eq!(
        (b.peer_id.as_str(), b.uuid.as_str()),
        (peer.as_str(), uuid.as_str())
    );
}

#[test]
fn persist_keeps_objects_and_default_cleans_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("obj");
    std::fs::write(&file, vec![3u8; 200_000]).unwrap();
    let data = dir.path().join("data");
    for persist in [true, false] {
        let flags: &[&str] = if persist { &["--persist"] } else { &[] };
        let mut d = DaemonProcess::start_in(&data, flags);
        let ticket = stdout(&cli(&d, &["put", file.to_str().unwrap()]));
        let small = stdout(&cli(&d, &["put", "-"]));
        assert_eq!(d.stop(), Some(0));
        let d = DaemonProcess::start_in(&data, flags);
        for t in [&ticket, &small] {
            let out = cli(&d, &["exists", t]);
            assert_eq!(stdout(&out), persist.to_string(), "persist={persist}");
        }
        if persist {
            let out = cli(&d, &["get", &ticket]);
            assert_eq!(out.stdout, vec![3u8; 200_000]);
        }
    }
}
