//! A mesh inside a lab: a relay on the public segment and site daemons
//! behind the NATs, each with its API on [`SITE_API`] in its namespace.

use super::{Host, Lab};
use crate::{bin_path, DaemonProcess, RelayProcess};

/// Where a site daemon's API listens, inside its host's namespace.
pub const SITE_API: &str = "127.0.0.1:7878";
/// The relay's port, and the sites' mesh port.
const RELAY_PORT: u16 = 4001;
const SITE_PORT: &str = "4002";

/// A relay of a throw-away mesh running on the lab's relay host, and the
/// data directories of the sites started against it.
#[derive(Debug)]
pub struct LabMesh {
    /// The relay (restart it with [`LabMesh::restart_relay`]).
    pub relay: RelayProcess,
    dir: tempfile::TempDir,
}

impl LabMesh {
    /// Start the relay on `lab`'s relay host.
    pub fn start(lab: &Lab) -> LabMesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = RelayProcess::start_cmd(
            lab.command(Host::Relay, bin_path("proxymesh-relay")),
            lab.relay_ip(),
            &dir.path().join("relay.key"),
            RELAY_PORT,
            &[],
        );
        LabMesh { relay, dir }
    }

    /// A member daemon on `h` (data in a directory called `name`), joined
    /// through the relay, with `extra` flags.
    pub fn site(&self, lab: &Lab, h: Host, name: &str, extra: &[&str]) -> DaemonProcess {
        let dir = self.dir.path().join(name);
        let mut cmd = lab.command(h, bin_path("proxymeshd"));
        cmd.arg("--data-dir")
            .arg(&dir)
            .args(["--api", SITE_API, "--listen-port", SITE_PORT])
            .args(extra);
        for addr in [self.relay.quic(), self.relay.tcp()] {
            cmd.args(["--relay", addr]);
        }
        let credential = self
            .relay
            .credential_for(&dir)
            .expect("the relay serves a test mesh");
        cmd.args(["--credential", &credential]);
        DaemonProcess::spawn(cmd, &[], &dir)
    }

    /// Kill the relay and start it again (same identity, port and mesh).
    pub fn restart_relay(&mut self, lab: &Lab) {
        self.relay.restart_cmd(
            lab.command(Host::Relay, bin_path("proxymesh-relay")),
            lab.relay_ip(),
        );
    }
}
