//! `proxymesh mesh …`: the mesh operator's commands. They work on an
//! authority directory (the offline key) and never talk to a daemon.
//!
//! ```text
//! proxymesh mesh init DIR                       # last line: the mesh ID (pmm1…)
//! proxymesh mesh admit DIR PEER_ID [--expires 90d]   # last line: the credential (pmc1…)
//! proxymesh mesh revoke DIR PEER_ID...          # last line: the revocation list (pmr1…)
//! proxymesh mesh show CREDENTIAL|MESH_ID|LIST   # what a string says, and whether it verifies
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use libp2p_identity::PeerId;
use proxymesh::membership::{self, Authority, Credential, MeshId, RevocationList};

use super::CliError;

/// Default lifetime of a credential.
pub const DEFAULT_EXPIRY: &str = "90d";

/// Mesh operator commands.
#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Create a mesh authority in DIR (its key never leaves DIR; keep DIR
    /// offline and backed up). Prints the mesh ID, which relays serve with
    /// `proxymesh-relay --mesh MESH_ID`.
    Init {
        /// Directory for the authority (created 0700; must not hold one already).
        dir: PathBuf,
    },
    /// Admit a site: sign a credential for its daemon's peer ID (printed by
    /// `proxymeshd --print-peer-id`). The site starts with `proxymeshd --credential CRED`.
    Admit {
        /// The authority directory.
        dir: PathBuf,
        /// The daemon's peer ID.
        peer_id: String,
        /// How long the credential is valid: 30m, 12h, 90d, 4w...
        #[arg(long, value_name = "DURATION", default_value = DEFAULT_EXPIRY)]
        expires: String,
    },
    /// Revoke sites before their credentials expire: prints the new signed
    /// revocation list (also saved as DIR/revocations). Give the file to every
    /// relay (`proxymesh-relay --revocations FILE`); relays hand it to members.
    Revoke {
        /// The authority directory.
        dir: PathBuf,
        /// Peer IDs to revoke.
        #[arg(required = true)]
        peer_ids: Vec<String>,
    },
    /// Explain a credential, mesh ID or revocation list, and check its signature.
    Show {
        /// A `pmc1…`, `pmm1…` or `pmr1…` string.
        text: String,
    },
}

fn peer(text: &str) -> Result<PeerId, CliError> {
    text.trim().parse().map_err(|e| {
        CliError::usage(format!(
            "invalid peer ID {text:?}: {e} (get it with `proxymeshd --print-peer-id`)"
        ))
    })
}

fn fail(message: String) -> CliError {
    CliError { message, code: 3 }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Run one mesh command.
pub fn run(cmd: MeshCommand) -> Result<ExitCode, CliError> {
    match cmd {
        MeshCommand::Init { dir } => {
            let a = Authority::init(&dir).map_err(fail)?;
            eprintln!(
                "created a mesh authority in {} (keep it offline; anyone with {}/authority.key can admit sites)",
                dir.display(),
                dir.display()
            );
            eprintln!("serve it with: proxymesh-relay --mesh {}", a.mesh_id());
            println!("{}", a.mesh_id());
        }
        MeshCommand::Admit {
            dir,
            peer_id,
            expires,
        } => {
            let peer = peer(&peer_id)?;
            let lifetime = proxymesh::units::parse_duration(&expires).map_err(CliError::usage)?;
            if lifetime.is_zero() {
                return Err(CliError::usage("--expires must be positive"));
            }
            let a = Authority::load(&dir).map_err(fail)?;
            if a.revocations(&dir).map_err(fail)?.contains(&peer) {
                return Err(fail(format!(
                    "peer {peer} is revoked in this mesh; a credential for it would be refused everywhere"
                )));
            }
            let now = SystemTime::now();
            let cred = a.admit(peer, now, now + lifetime);
            eprintln!(
                "admitted {peer} to mesh {} until {} (unix {}); start it with: proxymeshd --credential <the line below>",
                a.mesh_id().short(),
                humanize(lifetime),
                unix(cred.expires())
            );
            println!("{cred}");
        }
        MeshCommand::Revoke { dir, peer_ids } => {
            let peers = peer_ids
                .iter()
                .map(|p| peer(p))
                .collect::<Result<Vec<_>, _>>()?;
            let a = Authority::load(&dir).map_err(fail)?;
            let list = a.revoke(&dir, &peers).map_err(fail)?;
            eprintln!(
                "revocation list #{} ({} peers) saved in {}/revocations; give it to every relay (--revocations FILE)",
                list.serial(),
                list.peers().len(),
                dir.display()
            );
            println!("{list}");
        }
        MeshCommand::Show { text } => show(text.trim())?,
    }
    Ok(ExitCode::SUCCESS)
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if s.is_multiple_of(86_400) => format!("{} days from now", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{} hours from now", s / 3600),
        _ => format!("{s} s from now"),
    }
}

fn show(text: &str) -> Result<(), CliError> {
    let bad = |e: membership::MembershipError| CliError::usage(e.to_string());
    if text.starts_with(membership::CREDENTIAL_PREFIX) {
        let c: Credential = text.parse().map_err(bad)?;
        println!("credential");
        println!("  mesh:      {}", c.mesh());
        println!("  peer:      {}", c.peer());
        println!("  issued:    unix {}", unix(c.issued()));
        println!("  expires:   unix {}", unix(c.expires()));
        let valid = c.check(c.peer(), std::slice::from_ref(c.mesh()), SystemTime::now());
        println!(
            "  status:    {}",
            valid
                .as_ref()
                .map_or_else(|e| e.to_string(), |_| "valid".into())
        );
        valid.map_err(|e| fail(e.to_string()))?;
    } else if text.starts_with(membership::MESH_ID_PREFIX) {
        let m: MeshId = text.parse().map_err(bad)?;
        println!("mesh ID {m}");
    } else if text.starts_with(membership::REVOCATIONS_PREFIX) {
        let l: RevocationList = text.parse().map_err(bad)?;
        println!("revocation list #{} of mesh {}", l.serial(), l.mesh());
        for p in l.peers() {
            println!("  revoked   {p}");
        }
        l.verify().map_err(|e| fail(e.to_string()))?;
        println!("  signature valid");
    } else {
        return Err(CliError::usage(format!(
            "{text:?} is not a credential (pmc1…), mesh ID (pmm1…) or revocation list (pmr1…)"
        )));
    }
    Ok(())
}
