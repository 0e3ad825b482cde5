//! The member protocol (`/proxymesh/member/1`), spoken on a fresh stream
//! right after two nodes connect and again whenever a daemon refreshes its
//! entry at a relay:
//!
//! 1. the daemon sends [`Message::Hello`]: its credential (none in an open
//!    mesh) and the addresses others can reach it at;
//! 2. the other side checks the credential against the connection's
//!    authenticated peer ID and answers [`Message::Welcome`] — a relay with
//!    the members of the daemon's mesh it knows, a daemon with itself, both
//!    with the newest revocation list they hold — or [`Message::Refused`]
//!    with the reason, and then drops the connection.
//!
//! Every member listed in a welcome carries its own credential, so a
//! receiver verifies each entry itself and need not trust the relay.
//! Messages are a 4-byte big-endian length and bincode, at most
//! [`MAX_MESSAGE`] bytes.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use serde::{Deserialize, Serialize};

use super::{Credential, RevocationList};

/// The protocol name.
pub const PROTOCOL: &str = "/proxymesh/member/1";
/// Largest message accepted.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Most members one welcome lists.
pub const MAX_MEMBERS: usize = 4096;
/// Most addresses one member may list.
pub const MAX_ADDRS: usize = 16;

/// A member as others see it: who, its credential, where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its peer ID.
    pub peer: PeerId,
    /// Its credential (`None` in an open mesh).
    pub credential: Option<Credential>,
    /// Addresses to reach it at (relay circuits first).
    pub addrs: Vec<Multiaddr>,
}

/// One message of the member protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// "Here is who I am" (daemon → relay or daemon).
    Hello {
        /// The sender's credential.
        credential: Option<Credential>,
        /// Where others reach the sender.
        addrs: Vec<Multiaddr>,
    },
    /// "You are in": the members known here, and the newest revocation list.
    Welcome {
        /// Members of the sender's mesh (a daemon lists itself).
        members: Vec<Member>,
        /// The newest revocation list held for the mesh.
        revocations: Option<RevocationList>,
    },
    /// "You are not": why. The connection closes next.
    Refused(String),
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream failed or ended.
    #[error("member protocol stream: {0}")]
    Io(#[from] std::io::Error),
    /// The message was larger than [`MAX_MESSAGE`].
    #[error("member protocol message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The message did not decode.
    #[error("malformed member protocol message: {0}")]
    Malformed(String),
}

#[derive(Serialize, Deserialize)]
struct RawMember {
    peer: Vec<u8>,
    credential: Option<String>,
    addrs: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
enum Raw {
    Hello {
        credential: Option<String>,
        addrs: Vec<Vec<u8>>,
    },
    Welcome {
        members: Vec<RawMember>,
        revocations: Option<String>,
    },
    Refused(String),
}

fn addrs_out(addrs: &[Multiaddr]) -> Vec<Vec<u8>> {
    addrs.iter().take(MAX_ADDRS).map(|a| a.to_vec()).collect()
}

fn addrs_in(raw: Vec<Vec<u8>>) -> Result<Vec<Multiaddr>, WireError> {
    if raw.len() > MAX_ADDRS {
        return Err(WireError::Malformed(format!(
            "{} addresses (at most {MAX_ADDRS})",
            raw.len()
        )));
    }
    raw.into_iter()
        .map(|b| Multiaddr::try_from(b).map_err(|e| WireError::Malformed(e.to_string())))
        .collect()
}

fn parsed<T: std::str::FromStr>(s: Option<String>) -> Result<Option<T>, WireError>
where
    T::Err: std::fmt::Display,
{
    s.map(|s| {
        s.parse()
            .map_err(|e: T::Err| WireError::Malformed(e.to_string()))
    })
    .transpose()
}

impl Message {
    fn to_raw(&self) -> Raw {
        match self {
            Message::Hello { credential, addrs } => Raw::Hello {
                credential: credential.as_ref().map(|c| c.to_string()),
                addrs: addrs_out(addrs),
            },
            Message::Welcome {
                members,
                revocations,
            } => Raw::Welcome {
                members: members
                    .iter()
                    .take(MAX_MEMBERS)
                    .map(|m| RawMember {
                        peer: m.peer.to_bytes(),
                        credential: m.credential.as_ref().map(|c| c.to_string()),
                        addrs: addrs_out(&m.addrs),
                    })
                    .collect(),
                revocations: revocations.as_ref().map(|r| r.to_string()),
            },
            Message::Refused(reason) => Raw::Refused(reason.clone()),
        }
    }

    fn from_raw(raw: Raw) -> Result<Self, WireError> {
        Ok(match raw {
            Raw::Hello { credential, addrs } => Message::Hello {
                credential: parsed(credential)?,
                addrs: addrs_in(addrs)?,
            },
            Raw::Welcome {
                members,
                revocations,
            } => {
                if members.len() > MAX_MEMBERS {
                    return Err(WireError::Malformed(format!(
                        "{} members (at most {MAX_MEMBERS})",
                        members.len()
                    )));
                }
                Message::Welcome {
                    members: members
                        .into_iter()
                        .map(|m| {
                            Ok(Member {
                                peer: PeerId::from_bytes(&m.peer)
                                    .map_err(|e| WireError::Malformed(e.to_string()))?,
                                credential: parsed(m.credential)?,
                                addrs: addrs_in(m.addrs)?,
                            })
                        })
                        .collect::<Result<_, WireError>>()?,
                    revocations: parsed(revocations)?,
                }
            }
            Raw::Refused(reason) => Message::Refused(reason),
        })
    }

    /// Encode (length prefix included).
    pub fn encode(&self) -> Vec<u8> {
        let body = bincode::serde::encode_to_vec(self.to_raw(), bincode::config::standard())
            .expect("encoding to a Vec cannot fail");
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decode one message body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let config = bincode::config::standard().with_limit::<MAX_MESSAGE>();
        let (raw, used): (Raw, usize) = bincode::serde::decode_from_slice(body, config)
            .map_err(|e| WireError::Malformed(e.to_string()))?;
        if used != body.len() {
            return Err(WireError::Malformed("trailing bytes".into()));
        }
        Self::from_raw(raw)
    }
}

/// Write `msg` to `io` and flush.
pub async fn write_message<W: AsyncWrite + Unpin>(
    io: &mut W,
    msg: &Message,
) -> std::io::Result<()> {
    io.write_all(&msg.encode()).await?;
    io.flush().await
}

/// Read one message from `io`.
pub async fn read_message<R: AsyncRead + Unpin>(io: &mut R) -> Result<Message, WireError> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Message::decode(&body)
}
