//! Daemon configuration: defaults, overlaid by a TOML file, overlaid by
//! environment variables and command-line flags (flags win).
//!
//! ```toml
//! # proxymeshd.toml — every key optional
//! data_dir = "/var/lib/proxymesh"
//! api = "127.0.0.1:7878"
//! api_socket = "off"            # default: api.sock in data_dir (the SDK's fast path)
//! memory_cap = "1GiB"
//! inline_limit = "64MiB"
//! max_object_size = "10GiB"     # omit for unlimited
//! persist = false
//! proxystore_name = "site-a"    # also register as a ProxyStore endpoint
//! log = "info"
//! api_group = "hpc-project"     # its members may use the local API too (else only this user)
//!
//! # the mesh (enabled by `relays` or `listen_port`)
//! credential = "pmc1..."        # from the mesh operator's `proxymesh mesh admit`
//! # open_mesh = true            # labs only: no credentials, anyone may join
//! relays = ["/ip4/203.0.113.7/udp/4001/quic-v1/p2p/12D3KooW...", "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW..."]
//! listen_port = 4002
//! external_addresses = []
//! connect_timeout = 20.0        # seconds
//! hole_punch_timeout = 8.0
//! idle_timeout = 10.0
//! cache_cap = "4GiB"            # fetched copies of other sites' objects
//! directory_refresh = 60.0      # ask the relays for members and revocations
//! peer_write_quota = "4GiB"     # ProxyStore sets each other member may keep here
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Default local API address.
pub const DEFAULT_API: &str = proxymesh::api::DEFAULT_API_ADDR;
/// Default in-memory cap for objects.
pub const DEFAULT_MEMORY_CAP: u64 = 1 << 30;
/// Default size above which objects go straight to disk.
pub const DEFAULT_INLINE_LIMIT: u64 = 64 << 20;

/// Everything `proxymeshd` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Identity, endpoint UUID and spilled/persisted objects live here.
    pub data_dir: PathBuf,
    /// Local HTTP API listen address (loopback by default; port 0 picks one).
    pub api: SocketAddr,
    /// The local API's Unix socket: a path, `"off"`, or unset for
    /// `api.sock` in the data directory.
    pub api_socket: Option<String>,
    /// Total bytes of objects held in memory.
    #[serde(with = "size")]
    pub memory_cap: u64,
    /// Objects larger than this are written to disk.
    #[serde(with = "size")]
    pub inline_limit: u64,
    /// Largest accepted object (`None`: unlimited).
    #[serde(with = "opt_size")]
    pub max_object_size: Option<u64>,
    /// Keep objects across restarts.
    pub persist: bool,
    /// If set, write a ProxyStore endpoint config under this name so Python
    /// ProxyStore's `EndpointConnector` finds this daemon.
    pub proxystore_name: Option<String>,
    /// Log filter (`tracing` env-filter syntax), e.g. `info` or `proxymesh_daemon=debug`.
    pub log: String,
    /// Relay multiaddrs (each ending in `/p2p/<relay peer id>`); joins the mesh.
    pub relays: Vec<String>,
    /// Mesh listen port for QUIC and TCP (`None` without relays: no mesh).
    pub listen_port: Option<u16>,
    /// Mesh listen address.
    pub listen_host: std::net::IpAddr,
    /// Addresses this daemon is reachable at, if known (e.g. a public IP).
    pub external_addresses: Vec<String>,
    /// Seconds to wait for a first connection to a peer.
    pub connect_timeout: f64,
    /// Seconds to wait for a hole-punched direct connection before using the relay.
    pub hole_punch_timeout: f64,
    /// Seconds without bytes before a remote transfer is abandoned.
    pub idle_timeout: f64,
    /// Bytes of fetched copies of other sites' objects kept.
    #[serde(with = "size")]
    pub cache_cap: u64,
    /// This daemon's mesh credential (`pmc1…`, from `proxymesh mesh admit`),
    /// or the path of a file holding it. Required to join a mesh.
    pub credential: Option<String>,
    /// Join an open mesh: no credentials, every peer is served. Labs only.
    pub open_mesh: bool,
    /// Seconds between asking the relays for the members and the newest
    /// revocation list.
    pub directory_refresh: f64,
    /// Bytes of ProxyStore objects each other member may keep stored here
    /// through forwarded sets.
    #[serde(with = "size")]
    pub peer_write_quota: u64,
    /// A Unix group (name or gid) whose members may use the local API
    /// besides the daemon's own user.
    pub api_group: Option<String>,
}

impl Default for Config {
    /// The defaults; the mesh's come from [`MeshConfig::default`](crate::mesh::MeshConfig),
    /// so each is set in one place.
    fn default() -> Self {
        let mesh = crate::mesh::MeshConfig::default();
        Self {
            data_dir: default_data_dir(),
            api: DEFAULT_API.parse().expect("valid default"),
            api_socket: None,
            memory_cap: DEFAULT_MEMORY_CAP,
            inline_limit: DEFAULT_INLINE_LIMIT,
            max_object_size: None,
            persist: false,
            proxystore_name: None,
            log: "info".into(),
            relays: Vec::new(),
            listen_port: None,
            listen_host: std::net::IpAddr::from([0, 0, 0, 0]),
            external_addresses: Vec::new(),
            connect_timeout: mesh.connect_timeout.as_secs_f64(),
            hole_punch_timeout: mesh.hole_punch_timeout.as_secs_f64(),
            idle_timeout: mesh.fetch.idle_timeout.as_secs_f64(),
            cache_cap: mesh.fetch.cache_cap,
            credential: None,
            open_mesh: false,
            directory_refresh: mesh.directory_refresh.as_secs_f64(),
            peer_write_quota: crate::service::DEFAULT_PEER_WRITE_QUOTA,
            api_group: None,
        }
    }
}

/// `$XDG_DATA_HOME/proxymesh` (or the platform equivalent), else `./proxymesh-data`.
pub fn default_data_dir() -> PathBuf {
    proxymesh::api::default_data_dir()
}

impl Config {
    /// Where the local API's Unix socket goes (`None`: turned off).
    pub fn api_socket_path(&self) -> Option<PathBuf> {
        match self.api_socket.as_deref().map(str::trim) {
            None | Some("") => Some(self.data_dir.join(proxymesh::api::API_SOCKET)),
            Some("off") => None,
            Some(path) => Some(PathBuf::from(path)),
        }
    }

    /// Read a TOML config file over the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parse TOML over the defaults.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check cross-field constraints.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(name) = &self.proxystore_name {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                bail!("proxystore_name {name:?} must match [A-Za-z0-9_-]+");
            }
        }
        if self.max_object_size == Some(0) {
            bail!("max_object_size must be positive (omit it for unlimited)");
        }
        for (name, v) in [
            ("connect_timeout", self.connect_timeout),
            ("hole_punch_timeout", self.hole_punch_timeout),
            ("idle_timeout", self.idle_timeout),
            ("directory_refresh", self.directory_refresh),
        ] {
            if !(v.is_finite() && v > 0.0) {
                bail!("{name} must be a positive number of seconds (got {v})");
            }
        }
        self.mesh()?;
        Ok(())
    }

    /// The mesh settings, or `None` when the daemon runs alone (no relays
    /// and no listen port).
    pub fn mesh(&self) -> anyhow::Result<Option<crate::mesh::MeshConfig>> {
        use std::time::Duration;
        if self.relays.is_empty() && self.listen_port.is_none() {
            return Ok(None);
        }
        let parse = |what: &str, a: &String| -> anyhow::Result<libp2p::Multiaddr> {
            a.parse()
                .map_err(|e| anyhow::anyhow!("invalid {what} {a:?}: {e} (expected a multiaddr like /ip4/1.2.3.4/udp/4001/quic-v1/p2p/12D3KooW...)"))
        };
        let relays = self
            .relays
            .iter()
            .map(|a| parse("relay address", a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        crate::mesh::event_loop::relay_slots(&relays).map_err(anyhow::Error::msg)?;
        let external_addrs = self
            .external_addresses
            .iter()
            .map(|a| parse("external address", a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let credential = match (&self.credential, self.open_mesh) {
            (Some(_), true) => bail!("credential and open_mesh exclude each other: a credential joins a closed mesh"),
            (Some(c), false) => Some(read_credential(c)?),
            (None, true) => None,
            (None, false) => bail!(
                "this daemon joins a mesh (relays or a listen port are set) but has no credential.\n\
                 Ask the mesh's operator to admit it:\n\
                 \x20 1. here:     proxymeshd --print-peer-id --data-dir {}\n\
                 \x20 2. operator: proxymesh mesh admit MESH_DIR <that peer id>\n\
                 \x20 3. here:     proxymeshd --credential <the pmc1... it printed> ...\n\
                 For a lab where anyone may join, pass --open-mesh instead.",
                self.data_dir.display()
            ),
        };
        Ok(Some(crate::mesh::MeshConfig {
            credential,
            relays,
            listen_host: self.listen_host,
            listen_port: self
                .listen_port
                .unwrap_or(crate::mesh::MeshConfig::default().listen_port),
            external_addrs,
            connect_timeout: Duration::from_secs_f64(self.connect_timeout),
            hole_punch_timeout: Duration::from_secs_f64(self.hole_punch_timeout),
            directory_refresh: Duration::from_secs_f64(self.directory_refresh),
            serve: crate::mesh::serve::ServeConfig::default(),
            fetch: crate::mesh::fetcher::FetchConfig {
                idle_timeout: Duration::from_secs_f64(self.idle_timeout),
                cache_cap: self.cache_cap,
                ..Default::default()
            },
        }))
    }

    /// The storage engine's settings.
    pub fn storage(&self) -> crate::storage::StorageConfig {
        crate::storage::StorageConfig {
            dir: self.data_dir.join("store"),
            memory_cap: self.memory_cap,
            inline_limit: self.inline_limit.min(self.memory_cap),
            max_object_size: self.max_object_size,
            persist: self.persist,
        }
    }
}

/// A credential given inline (`pmc1…`) or as the path of a file holding one.
fn read_credential(value: &str) -> anyhow::Result<proxymesh::membership::Credential> {
    let value = value.trim();
    let text = if value.starts_with(proxymesh::membership::CREDENTIAL_PREFIX) {
        value.to_string()
    } else {
        std::fs::read_to_string(value).with_context(|| {
            format!("credential {value:?} is neither a pmc1... string nor a readable file")
        })?
    };
    text.parse()
        .with_context(|| format!("invalid credential {:?}", text.trim()))
}

pub use proxymesh::units::parse_size;

/// serde adapter: sizes as numbers or strings with units.
mod size {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Raw {
        Num(u64),
        Text(String),
    }

    impl Raw {
        pub(super) fn bytes<E: serde::de::Error>(self) -> Result<u64, E> {
            match self {
                Raw::Num(n) => Ok(n),
                Raw::Text(t) => proxymesh::units::parse_size(&t).map_err(E::custom),
            }
        }
    }

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Raw::deserialize(d)?.bytes()
    }
}

/// serde adapter: optional sizes.
mod opt_size {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_some(n),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Option::<super::size::Raw>::deserialize(d)?
            .map(|r| r.bytes())
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overlays_defaults() {
        let cfg =
            Config::from_toml("memory_cap = \"16MiB\"\nmax_object_size = 1000\npersist = true\n")
                .unwrap();
        assert_eq!(cfg.memory_cap, 16 << 20);
        assert_eq!(cfg.max_object_size, Some(1000));
        assert!(cfg.persist);
        assert_eq!(cfg.api, Config::default().api);
    }

    #[test]
    fn toml_rejects_unknown_keys_and_bad_values() {
        assert!(Config::from_toml("memroy_cap = 5").is_err());
        assert!(Config::from_toml("memory_cap = \"lots\"").is_err());
        assert!(Config::from_toml("api = \"nowhere\"").is_err());
        assert!(Config::from_toml("proxystore_name = \"bad name\"").is_err());
        assert!(Config::from_toml("max_object_size = 0").is_err());
        assert!(Config::from_toml("relays = [\"not an address\"]").is_err());
        assert!(
            Config::from_toml("relays = [\"/ip4/1.2.3.4/tcp/4001\"]").is_err(),
            "relay needs /p2p/"
        );
        assert!(Config::from_toml("idle_timeout = 0").is_err());
    }

    #[test]
    fn mesh_is_on_with_relays_or_a_port() {
        assert!(Config::default().mesh().unwrap().is_none());
        let cfg = Config {
            listen_port: Some(0),
            open_mesh: true,
            ..Config::default()
        };
        assert_eq!(cfg.mesh().unwrap().unwrap().listen_port, 0);
        let relay = format!(
            "/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{}",
            libp2p::PeerId::random()
        );
        let cfg = Config::from_toml(&format!(
            "relays = [\"{relay}\"]\nhole_punch_timeout = 2.5\nopen_mesh = true"
        ))
        .unwrap();
        let mesh = cfg.mesh().unwrap().unwrap();
        assert_eq!(mesh.relays.len(), 1);
        assert_eq!(
            mesh.hole_punch_timeout,
            std::time::Duration::from_millis(2500)
        );
    }

    #[test]
    fn a_mesh_needs_a_credential_unless_open() {
        use proxymesh::membership::Authority;
        let relay = format!(
            "/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{}",
            libp2p::PeerId::random()
        );
        let err = Config::from_toml(&format!("relays = [\"{relay}\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no credential")
                && err.contains("mesh admit")
                && err.contains("--open-mesh"),
            "{err}"
        );
        let now = std::time::SystemTime::now();
        let cred = Authority::generate().admit(
            libp2p::PeerId::random(),
            now,
            now + std::time::Duration::from_secs(60),
        );
        let cfg =
            Config::from_toml(&format!("relays = [\"{relay}\"]\ncredential = \"{cred}\"")).unwrap();
        assert_eq!(cfg.mesh().unwrap().unwrap().credential, Some(cred.clone()));
        // From a file too; a damaged one is an error that names it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cred");
        std::fs::write(&file, format!("{cred}\n")).unwrap();
        let cfg = Config {
            credential: Some(file.display().to_string()),
            listen_port: Some(0),
            ..Config::default()
        };
        assert_eq!(cfg.mesh().unwrap().unwrap().credential, Some(cred.clone()));
        let bad = format!("{}x", cred.to_string().trim_end_matches(|c: char| c != 'a'));
        assert!(Config::from_toml(&format!("listen_port = 1\ncredential = \"{bad}\"")).is_err());
        assert!(Config::from_toml(&format!(
            "listen_port = 1\ncredential = \"{cred}\"\nopen_mesh = true"
        ))
        .is_err());
    }

    #[test]
    fn inline_limit_never_exceeds_memory_cap() {
        let cfg = Config {
            memory_cap: 1000,
            ..Config::default()
        };
        assert_eq!(cfg.storage().inline_limit, 1000);
    }
}
