//! Reading multiaddrs: which transport, relayed or not, through which relay,
//! to which peer.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use proxymesh::api::Transport;

/// Whether `addr` goes through a relay circuit.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The transport an address names (QUIC if it says so, TCP if it says so).
pub fn transport_of(addr: &Multiaddr) -> Option<Transport> {
    addr.iter().find_map(|p| match p {
        Protocol::QuicV1 | Protocol::Quic => Some(Transport::Quic),
        Protocol::Tcp(_) => Some(Transport::Tcp),
        _ => None,
    })
}

/// The relay peer of a circuit address (`…/p2p/<relay>/p2p-circuit…`).
pub fn circuit_relay(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// The peer ID at the end of an address, if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classification() {
        let r = PeerId::random();
        let quic: Multiaddr = format!("/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{r}")
            .parse()
            .unwrap();
        let tcp: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{r}").parse().unwrap();
        assert_eq!(transport_of(&quic), Some(Transport::Quic));
        assert_eq!(transport_of(&tcp), Some(Transport::Tcp));
        let circuit = tcp
            .clone()
            .with(Protocol::P2pCircuit)
            .with(Protocol::P2p(PeerId::random()));
        assert!(is_relayed(&circuit) && !is_relayed(&tcp));
        assert_eq!(circuit_relay(&circuit), Some(r));
        assert_eq!(circuit_relay(&tcp), None);
        assert_eq!(peer_of(&quic), Some(r));
    }
}
