//! Daemon configuration: defaults, overlaid by a TOML file, overlaid by
//! environment variables and command-line flags (flags win).
//!
//! ```toml
//! # proxymeshd.toml — every key optional
//! data_dir = "/var/lib/proxymesh"
//! api = "127.0.0.1:7878"
//! memory_cap = "1GiB"
//! inline_limit = "64MiB"
//! max_object_size = "10GiB"     # omit for unlimited
//! persist = false
//! proxystore_name = "site-a"    # also register as a ProxyStore endpoint
//! log = "info"
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            api: DEFAULT_API.parse().expect("valid default"),
            memory_cap: DEFAULT_MEMORY_CAP,
            inline_limit: DEFAULT_INLINE_LIMIT,
            max_object_size: None,
            persist: false,
            proxystore_name: None,
            log: "info".into(),
        }
    }
}

/// `$XDG_DATA_HOME/proxymesh` (or the platform equivalent), else `./proxymesh-data`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("proxymesh"))
        .unwrap_or_else(|| PathBuf::from("proxymesh-data"))
}

impl Config {
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
        Ok(())
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

/// Parse a byte size: a plain number of bytes, or a number with a unit
/// (`K`/`KB`/`KiB`, `M`…, `G`…, `T`…; all binary, case-insensitive), e.g. `64MiB`, `1.5G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 1048576, 512KiB, 64MiB, 2GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(bytes as u64)
}

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
                Raw::Text(t) => super::parse_size(&t).map_err(E::custom),
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
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("64 mb").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2KiB").unwrap(), 2048);
        for bad in ["", "MiB", "12XB", "-1", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

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
