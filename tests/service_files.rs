//! The systemd units in `deploy/systemd/`: `systemd-analyze verify` accepts
//! them (with their `ExecStart=` pointed at the built binaries) and rejects
//! a broken copy, they carry the hardening and layout `deploy/README.md`
//! promises, and, as root, the daemon unit's user, group, directories and
//! environment (reproduced without systemd) let a member of its group use
//! the daemon's socket while other users cannot.
//!
//! Needs `systemd-analyze` (Debian's `systemd` package; `tests/run.sh`
//! installs it as root). In CI a missing tool fails the test; elsewhere it
//! is skipped with a reason.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use proxymesh_suite::{bin_path, in_ci, require_root, DaemonProcess, TempUser};

const DAEMON_UNIT: &str = "proxymeshd.service";
const RELAY_UNIT: &str = "proxymesh-relay.service";
/// Where the units say the binaries are installed.
const INSTALLED: &str = "/usr/local/bin/";

fn unit_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/systemd")
        .join(name)
}

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(unit_path(name))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", unit_path(name).display()))
}

/// Every `Key=value` of `section`, in order (repeated keys kept).
fn directives(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            current = line[1..line.len() - 1].to_string();
            continue;
        }
        if current == section {
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not a directive: {line:?}"));
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// The last value of `key` in `[Service]` (systemd: the last one wins).
fn service_value(text: &str, key: &str) -> Option<String> {
    directives(text, "Service")
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// The daemon unit's `Environment=` assignments.
fn environment(text: &str) -> BTreeMap<String, String> {
    directives(text, "Service")
        .into_iter()
        .filter(|(k, _)| k == "Environment")
        .map(|(_, v)| {
            let (name, value) = v.split_once('=').expect("NAME=value");
            (name.to_string(), value.to_string())
        })
        .collect()
}

/// `text` with the installed binary paths pointed at the built binaries.
fn with_built_binaries(text: &str) -> String {
    let mut out = text.to_string();
    for bin in ["proxymeshd", "proxymesh-relay"] {
        out = out.replace(
            &format!("{INSTALLED}{bin}"),
            bin_path(bin).to_str().expect("UTF-8 path"),
        );
    }
    out
}

/// Write `text` as `dir/name` and run `systemd-analyze verify` on it. Err
/// (with the tool's output) when it fails or says anything about the unit:
/// an unknown or misspelled directive is only a warning, exit status 0.
fn verify(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .map_err(|e| format!("cannot run systemd-analyze: {e}"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_it: Vec<&str> = said.lines().filter(|l| l.contains(name)).collect();
    if out.status.success() && about_it.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "systemd-analyze verify {name}: {}\n{said}",
            out.status
        ))
    }
}

/// Whether `systemd-analyze verify` works here: it must accept a minimal
/// unit. Otherwise say why (failing in CI, where run.sh installs it).
fn systemd_analyze_works(dir: &Path) -> bool {
    let unit = format!(
        "[Unit]\nDescription=probe\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nType=exec\nExecStart={} --version\n\n[Install]\nWantedBy=multi-user.target\n",
        bin_path("proxymeshd").display()
    );
    let why = match verify(dir, "proxymesh-probe.service", &unit) {
        Ok(()) => return true,
        Err(why) => why,
    };
    assert!(
        !in_ci(),
        "CI=true but systemd-analyze cannot verify a minimal unit \
         (tests/run.sh installs Debian's systemd package as root): {why}"
    );
    eprintln!(
        "SKIPPED: systemd-analyze cannot verify units on this machine (install it: \
         apt-get install systemd): {why}"
    );
    false
}

#[test]
fn systemd_analyze_verify_accepts_the_units_and_rejects_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    if !systemd_analyze_works(dir.path()) {
        return;
    }
    for (name, bin) in [(DAEMON_UNIT, "proxymeshd"), (RELAY_UNIT, "proxymesh-relay")] {
        let text = unit_text(name);
        let exec = service_value(&text, "ExecStart").expect("ExecStart=");
        assert!(
            exec.starts_with(&format!("{INSTALLED}{bin}")),
            "{name}: ExecStart= runs {INSTALLED}{bin}: {exec}"
        );
        let built = with_built_binaries(&text);
        if let Err(why) = verify(dir.path(), name, &built) {
            panic!("{why}");
        }

        // The same check fails a copy with a misspelled directive...
        let misspelled = built.replacen("ProtectSystem=", "ProtectSytem=", 1);
        assert_ne!(misspelled, built);
        let why = verify(dir.path(), name, &misspelled).expect_err("a misspelled directive");
        assert!(why.contains("ProtectSytem"), "{why}");
        // ...and one whose binary is not there.
        let missing = text.replace(INSTALLED, "/nonexistent/proxymesh-test/");
        let why = verify(dir.path(), name, &missing).expect_err("a missing binary");
        assert!(why.contains("/nonexistent/proxymesh-test/"), "{why}");
    }
}

#[test]
fn the_units_are_hardened_and_keep_their_state_where_they_say() {
    for name in [DAEMON_UNIT, RELAY_UNIT] {
        let text = unit_text(name);
        let value = |key: &str| service_value(&text, key);
        let has = |key: &str, want: &str| {
            assert_eq!(value(key).as_deref(), Some(want), "{name}: {key}={want}");
        };
        has("ProtectSystem", "strict");
        has("ProtectHome", "yes");
        has("PrivateTmp", "yes");
        has("NoNewPrivileges", "yes");
        has("CapabilityBoundingSet", "");
        has("Restart", "on-failure");
        assert!(
            value("DynamicUser").as_deref() == Some("yes") || value("User").is_some(),
            "{name}: runs as a dedicated or dynamic user"
        );
        let families = value("RestrictAddressFamilies").expect("RestrictAddressFamilies=");
        for family in ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"] {
            assert!(
                families.split_whitespace().any(|f| f == family),
                "{name}: allows {family}: {families}"
            );
        }
        assert!(
            directives(&text, "Service")
                .iter()
                .any(|(k, v)| k == "SystemCallFilter" && v == "@system-service"),
            "{name}: a system call allow-list"
        );
        let env_file = value("EnvironmentFile").expect("EnvironmentFile=");
        let stem = name.trim_end_matches(".service");
        assert_eq!(
            env_file,
            format!("-/etc/proxymesh/{stem}.env"),
            "{name}: optional env file"
        );
        assert_eq!(
            directives(&text, "Install"),
            [("WantedBy".to_string(), "multi-user.target".to_string())]
        );
    }

    // The daemon: data in its StateDirectory, the socket in its
    // RuntimeDirectory, the group's (see deploy/README.md).
    let text = unit_text(DAEMON_UNIT);
    let state = service_value(&text, "StateDirectory").expect("StateDirectory=");
    let runtime = service_value(&text, "RuntimeDirectory").expect("RuntimeDirectory=");
    let env = environment(&text);
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(
        get("PROXYMESHD_DATA_DIR"),
        Some(format!("/var/lib/{state}").as_str())
    );
    assert_eq!(
        get("PROXYMESHD_API_SOCKET"),
        Some(format!("/run/{runtime}/api.sock").as_str())
    );
    assert_eq!(
        get("PROXYSTORE_HOME"),
        Some(format!("/run/{runtime}/proxystore").as_str())
    );
    let group = service_value(&text, "Group").expect("Group=");
    assert_eq!(get("PROXYMESHD_API_GROUP"), Some(group.as_str()));
    assert_eq!(get("NO_COLOR"), Some("1"), "plain logs in the journal");
    assert_eq!(
        service_value(&text, "RuntimeDirectoryMode").as_deref(),
        Some("0750")
    );
    assert_eq!(
        service_value(&text, "StateDirectoryMode").as_deref(),
        Some("0700")
    );
    assert_eq!(service_value(&text, "DynamicUser"), None);
    // (PrivateUsers= would show the daemon its callers as `nobody`.)
    assert_eq!(service_value(&text, "PrivateUsers"), None);

    // The relay: its identity in its StateDirectory.
    let text = unit_text(RELAY_UNIT);
    let state = service_value(&text, "StateDirectory").expect("StateDirectory=");
    let exec = service_value(&text, "ExecStart").unwrap();
    assert!(
        exec.contains(&format!("--identity %S/{state}/relay.key")),
        "{exec}"
    );
    assert!(exec.ends_with(" $PROXYMESH_RELAY_ARGS"), "{exec}");
}

/// `program` run as `uid`/`gid` with supplementary `groups` (as a login
/// session would have them), in `/`, with `HOME=/` and none of proxymesh's
/// client settings.
fn as_user(uid: u32, gid: u32, groups: &[u32], program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    let groups = groups.to_vec();
    cmd.current_dir("/")
        .env("HOME", "/")
        .env_remove("PROXYMESH_API")
        .env_remove("PROXYMESH_TRUST_UID");
    // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid) on
    // data owned by the closure, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// `proxymesh` (the CLI, through the SDK) as `user` with `env`, `stdin` fed.
fn cli_as(
    cli: &Path,
    user: (u32, u32, &[u32]),
    env: &[(&str, String)],
    args: &[&str],
    stdin: &[u8],
) -> std::process::Output {
    let mut cmd = as_user(user.0, user.1, user.2, cli);
    cmd.arg("--quiet")
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run proxymesh");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_daemon_units_setup_serves_its_group_over_the_socket() {
    if !require_root("the daemon unit's access setup (needs Unix users and a group)") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let text = unit_text(DAEMON_UNIT);
    let unit_group = service_value(&text, "Group").expect("Group=");

    // The unit's user and group (deploy/README.md: useradd --user-group),
    // a member of its group and another user.
    let svc = TempUser::create("svc", &[]);
    let member = TempUser::create("mem", &[&svc.name]);
    let stranger = TempUser::create("str", &[]);

    // The binaries where every user can run them.
    let root = tempfile::Builder::new()
        .prefix("pm-unit")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bins = root.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    for b in ["proxymeshd", "proxymesh"] {
        std::fs::copy(bin_path(b), bins.join(b)).unwrap();
    }

    // What systemd makes of StateDirectory= and RuntimeDirectory=: owned by
    // User=/Group=, with their modes; /var/lib and /run moved under `root`.
    let relocate = |p: &str| -> String {
        for (from, to) in [("/var/lib/", "lib/"), ("/run/", "run/")] {
            if let Some(rest) = p.strip_prefix(from) {
                return root.path().join(to).join(rest).display().to_string();
            }
        }
        p.to_string()
    };
    for (key, mode_key, parent) in [
        ("StateDirectory", "StateDirectoryMode", "/var/lib/"),
        ("RuntimeDirectory", "RuntimeDirectoryMode", "/run/"),
    ] {
        let dir = relocate(&format!(
            "{parent}{}",
            service_value(&text, key).expect("a directory")
        ));
        let mode = service_value(&text, mode_key).expect("a mode");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(svc.uid), Some(svc.gid)).unwrap();
        let mode = u32::from_str_radix(&mode, 8).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    // The unit's Environment=, relocated, its group renamed to the test's;
    // an endpoint name so the ProxyStore files land where the unit says.
    let mut cmd = as_user(svc.uid, svc.gid, &[svc.gid], &bins.join("proxymeshd"));
    let env = environment(&text);
    for (k, v) in &env {
        let v = if *v == unit_group {
            svc.name.clone()
        } else {
            relocate(v)
        };
        cmd.env(k, v);
    }
    cmd.env("PROXYMESHD_PROXYSTORE_NAME", "site");
    let data_dir = PathBuf::from(relocate(&env["PROXYMESHD_DATA_DIR"]));
    let socket = PathBuf::from(relocate(&env["PROXYMESHD_API_SOCKET"]));
    let mut d = DaemonProcess::spawn(cmd, &["--api", "127.0.0.1:0"], &data_dir);
    assert_eq!(
        d.socket.as_deref(),
        Some(format!("unix:{}", socket.display()).as_str())
    );
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "the socket is the group's too");
    assert_eq!(meta.gid(), svc.gid);
    let pid_file = PathBuf::from(relocate(&env["PROXYSTORE_HOME"])).join("site/daemon.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        d.pid().to_string()
    );

    let cli = bins.join("proxymesh");
    let api = ("PROXYMESH_API", format!("unix:{}", socket.display()));
    let trust = ("PROXYMESH_TRUST_UID", svc.uid.to_string());
    let member_ids = (member.uid, member.gid, &[member.gid, svc.gid][..]);

    // A member of the group, trusting the daemon's uid, puts and gets.
    let out = cli_as(
        &cli,
        member_ids,
        &[api.clone(), trust.clone()],
        &["put", "-"],
        b"member's data",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "member's put: {err}");
    let ticket = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = cli_as(
        &cli,
        member_ids,
        &[api.clone(), trust.clone()],
        &["get", &ticket],
        b"",
    );
    assert!(
        out.status.success(),
        "member's get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"member's data");

    // Without PROXYMESH_TRUST_UID the SDK refuses a socket another user
    // serves, before it sends a byte, naming that user.
    let out = cli_as(
        &cli,
        member_ids,
        std::slice::from_ref(&api),
        &["status"],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("PROXYMESH_TRUST_UID"), "{err}");

    // Another user does not get in, trust or not (the directory is the
    // group's, 0750).
    let out = cli_as(
        &cli,
        (stranger.uid, stranger.gid, &[stranger.gid]),
        &[api.clone(), trust.clone()],
        &["status"],
        b"",
    );
    assert!(!out.status.success(), "a stranger is kept out");

    assert_eq!(d.stop(), Some(0), "SIGTERM stops it cleanly");
    assert!(!socket.exists(), "the socket goes with the daemon");
    assert!(!pid_file.exists(), "the PID file goes with the daemon");
}
