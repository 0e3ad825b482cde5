//! Where the data plane meets the control plane: [`SwarmOpener`] gets a
//! connection from the [event loop](super::event_loop) (any path, at once:
//! transfers never wait for a hole punch), proves membership both ways, and
//! opens a fetch-protocol stream. A stream that does not open within a few
//! round trips means the connection is dead although it looks open (the
//! peer restarted): the connection is replaced within the same request.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libp2p::{Multiaddr, PeerId};
use proxymesh::api::Path;
use proxymesh::membership::Gate;

use super::event_loop::Network;
use super::members;
use super::{protocol, MeshError, PathInfo, StreamOpener};

/// Shortest wait for a stream to open before its connection is suspected
/// dead (longer on slow paths: [`SUSPECT_RTTS`] round trips).
pub const SUSPECT_AFTER: Duration = Duration::from_millis(1500);
/// Round trips a stream may take to open before its connection is suspected.
pub const SUSPECT_RTTS: u32 = 8;

/// The swarm's [`StreamOpener`].
pub struct SwarmOpener {
    /// The event loop.
    pub network: Network,
    /// Opens streams.
    pub control: libp2p_stream::Control,
    /// Who is a member.
    pub gate: Arc<Gate>,
    /// What this daemon presents.
    pub me: members::Me,
    /// Longest wait for a connection (and for a stream on a fresh one).
    pub connect_timeout: Duration,
}

impl SwarmOpener {
    /// Present our credential to `peer` (connected over `path`) and admit
    /// it from its answer.
    async fn prove_membership(&self, peer: PeerId, path: PathInfo) -> Result<(), MeshError> {
        let mut control = self.control.clone();
        let addrs = self.network.snapshot().advertised();
        // A hello can be lost when the peer is flooded with them (its
        // streams are handed over without a buffer), or hang on a relayed
        // connection that closes because a direct one came up: try again.
        let first = tokio::select! {
            welcomed = members::hello(&mut control, peer, &self.me, addrs.clone(), &self.gate) => welcomed,
            () = StreamOpener::better_path(self, peer, path) => Err(MeshError::Unreachable {
                peer,
                reason: "a direct path came up".into(),
            }),
        };
        let welcomed = match first {
            Err(e) if !matches!(e, MeshError::Refused { .. }) => {
                tracing::debug!(%peer, error = %e, "membership exchange failed; trying again");
                members::hello(&mut control, peer, &self.me, addrs, &self.gate).await?
            }
            other => other?,
        };
        if self.gate.is_member(&peer, SystemTime::now()) {
            return Ok(());
        }
        let reason = welcomed
            .rejected
            .iter()
            .find(|(p, _)| *p == peer)
            .map_or_else(
                || "it presented no credential".to_string(),
                |(_, r)| r.clone(),
            );
        self.network.drop_peer(peer, reason.clone());
        Err(MeshError::Refused {
            peer,
            reason: format!("not a member of our mesh: {reason}"),
        })
    }

    /// How long a stream to `peer` may take to open on a live connection.
    fn open_limit(&self, peer: &PeerId) -> Duration {
        let rtt = self
            .network
            .snapshot()
            .conns
            .get(peer)
            .into_iter()
            .flat_map(|c| c.values())
            .filter_map(|c| c.rtt)
            .max()
            .unwrap_or_default();
        SUSPECT_AFTER.max(rtt * SUSPECT_RTTS)
    }

    /// One attempt: a connection (`fresh`: a new one), membership, a stream
    /// within `limit`.
    async fn attempt(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        fresh: bool,
    ) -> Result<(libp2p::Stream, PathInfo), Attempt> {
        // Connected already: no round trip through the event loop.
        let known = (!fresh)
            .then(|| self.network.snapshot().best(&peer))
            .flatten();
        let path = match known {
            Some(path) => path,
            None => self
                .network
                .connect(peer, addrs, fresh, self.connect_timeout)
                .await
                .map_err(Attempt::Failed)?,
        };
        // The path now (a direct connection may have come up meanwhile).
        let path = self.network.snapshot().best(&peer).unwrap_or(path);
        if !self.gate.is_member(&peer, SystemTime::now()) {
            match self.prove_membership(peer, path).await {
                Ok(()) => {}
                Err(e @ MeshError::Refused { .. }) => return Err(Attempt::Failed(e)),
                Err(e @ MeshError::TimedOut { .. }) => return Err(Attempt::Suspect(e)),
                Err(e) => return Err(Attempt::Again(e)),
            }
        }
        let path = self.network.snapshot().best(&peer).unwrap_or(path);
        let limit = if fresh {
            self.connect_timeout
        } else {
            self.open_limit(&peer)
        };
        let mut control = self.control.clone();
        let opened = tokio::select! {
            opened = tokio::time::timeout(limit, control.open_stream(peer, protocol::PROTOCOL)) => opened,
            // The relayed connection it may be opening on is closing.
            () = StreamOpener::better_path(self, peer, path) => {
                return Err(Attempt::Again(MeshError::Unreachable {
                    peer,
                    reason: "a direct path came up".into(),
                }))
            }
        };
        match opened {
            Ok(Ok(stream)) => {
                let path = self.network.snapshot().best(&peer).unwrap_or(path);
                Ok((stream, path))
            }
            Ok(Err(e)) => Err(Attempt::Again(MeshError::Unreachable {
                peer,
                reason: super::error::open_failure("the fetch protocol", &e),
            })),
            Err(_) => Err(Attempt::Suspect(MeshError::TimedOut {
                peer,
                id: None,
                phase: "opening a stream",
                after: limit,
            })),
        }
    }

    async fn open_with(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
        fresh: bool,
    ) -> Result<(libp2p::Stream, PathInfo), MeshError> {
        // Replace the connections at most once per open.
        let (mut fresh, mut replaced) = (fresh, false);
        let mut again = 0;
        loop {
            let result = self.attempt(peer, addrs, fresh).await;
            replaced |= fresh;
            fresh = false;
            match result {
                Ok(opened) => return Ok(opened),
                Err(Attempt::Failed(e)) => return Err(e),
                // A connection closing right now (e.g. the relayed one, for
                // the direct one just punched) refuses streams at once: ask
                // again on what remains.
                Err(Attempt::Again(e)) if again < RETRIES => {
                    again += 1;
                    tracing::debug!(%peer, error = %e, "no stream on that connection; trying again");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
                Err(Attempt::Again(e) | Attempt::Suspect(e)) if replaced => return Err(e),
                Err(Attempt::Again(e) | Attempt::Suspect(e)) => {
                    tracing::info!(%peer, error = %e, "the connection to the peer does not answer; dialing it again");
                    fresh = true;
                }
            }
        }
    }
}

/// How an attempt to open a stream failed.
enum Attempt {
    /// For good (refused, no address, timed out connecting).
    Failed(MeshError),
    /// At once, on a connection that is going away: worth asking again.
    Again(MeshError),
    /// Silently, on a connection that may be dead: worth a fresh one.
    Suspect(MeshError),
}

/// Immediate refusals to open a stream retried before a fresh connection.
const RETRIES: u32 = 4;
/// Pause before such a retry (the closing connection is forgotten by then).
const RETRY_AFTER: Duration = Duration::from_millis(100);

#[async_trait::async_trait]
impl StreamOpener for SwarmOpener {
    fn forget_member(&self, peer: &PeerId) {
        self.gate.forget(peer);
    }

    async fn open(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<(libp2p::Stream, PathInfo), MeshError> {
        self.open_with(peer, addrs, false).await
    }

    async fn reopen(
        &self,
        peer: PeerId,
        addrs: &[Multiaddr],
    ) -> Result<(libp2p::Stream, PathInfo), MeshError> {
        self.open_with(peer, addrs, true).await
    }

    fn path_now(&self, peer: &PeerId) -> Option<PathInfo> {
        self.network.snapshot().best(peer)
    }

    fn suspect_after(&self, peer: &PeerId) -> Duration {
        self.open_limit(peer)
    }

    async fn better_path(&self, peer: PeerId, current: PathInfo) {
        if current.path == Path::Direct {
            return std::future::pending().await;
        }
        let mut watch = self.network.watch();
        loop {
            if watch
                .borrow_and_update()
                .best(&peer)
                .is_some_and(|p| p.path == Path::Direct)
            {
                return;
            }
            if watch.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}
