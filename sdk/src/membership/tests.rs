use std::time::{Duration, SystemTime};

use futures::executor::block_on;
use multiaddr::Multiaddr;

use super::wire::{read_message, write_message, Member, Message};
use super::*;

const HOUR: Duration = Duration::from_secs(3600);

fn peer() -> PeerId {
    Keypair::generate_ed25519().public().to_peer_id()
}

fn now() -> SystemTime {
    SystemTime::now()
}

#[test]
fn texts_round_trip_and_reject_damage() {
    let a = Authority::generate();
    let p = peer();
    let cred = a.admit(p, now(), now() + HOUR);
    let text = cred.to_string();
    assert!(text.starts_with(CREDENTIAL_PREFIX));
    assert_eq!(text.parse::<Credential>().unwrap(), cred);
    let mesh = a.mesh_id().to_string();
    assert!(mesh.starts_with(MESH_ID_PREFIX));
    assert_eq!(mesh.parse::<MeshId>().unwrap(), a.mesh_id());

    // A typo is caught by the checksum, a truncation too, a ticket is not a credential.
    let mut typo = text.clone().into_bytes();
    let i = typo.len() / 2;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let err = String::from_utf8(typo)
        .unwrap()
        .parse::<Credential>()
        .unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(text[..text.len() - 5].parse::<Credential>().is_err());
    let err = "pm1aaaa".parse::<Credential>().unwrap_err();
    assert!(err.to_string().contains("pmc1"), "{err}");
    assert!(mesh.parse::<Credential>().is_err());
    assert!(text.parse::<MeshId>().is_err());
}

#[test]
fn a_forged_or_altered_credential_fails_its_signature() {
    let a = Authority::generate();
    let impostor = Authority::generate();
    let p = peer();
    // Signed by another key but claiming mesh a: re-encode with a's mesh.
    let mut forged = impostor.admit(p, now(), now() + HOUR);
    forged.mesh = a.mesh_id();
    let text = forged.to_string(); // re-checksummed: only the signature can tell
    let parsed: Credential = text.parse().unwrap();
    assert_eq!(
        parsed.check(p, &[a.mesh_id()], now()),
        Err(MembershipError::BadSignature { what: "credential" })
    );
    // Extending one's own expiry breaks the signature too.
    let mut longer = a.admit(p, now(), now() + HOUR);
    longer.expires += 365 * 24 * 3600;
    assert!(longer.check(p, &[a.mesh_id()], now()).is_err());
}

#[test]
fn gate_checks_peer_mesh_expiry_and_revocation() {
    let a = Authority::generate();
    let b = Authority::generate();
    let (p, q) = (peer(), peer());
    let gate = Gate::new(Policy::Meshes(vec![a.mesh_id()]));
    let t = now();

    assert!(matches!(
        gate.admit(p, None, t),
        Err(MembershipError::NoCredential(_))
    ));
    let cred = a.admit(p, t, t + HOUR);
    assert!(matches!(
        gate.admit(q, Some(&cred), t),
        Err(MembershipError::WrongPeer { .. })
    ));
    assert!(matches!(
        gate.admit(p, Some(&b.admit(p, t, t + HOUR)), t),
        Err(MembershipError::WrongMesh(_))
    ));
    assert!(matches!(
        gate.admit(p, Some(&a.admit(p, t - 2 * HOUR, t - HOUR)), t),
        Err(MembershipError::Expired { .. })
    ));
    assert!(!gate.is_member(&p, t));

    gate.admit(p, Some(&cred), t).unwrap();
    assert!(gate.is_member(&p, t));
    // Membership ends with the credential.
    assert!(!gate.is_member(&p, t + 2 * HOUR));
    assert!(!gate.is_member(&p, t), "an expired member is forgotten");

    // Revocation: takes effect at once for a remembered member, and for new admissions.
    gate.admit(p, Some(&cred), t).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = a.revoke(dir.path(), &[p]).unwrap();
    assert_eq!(list.serial(), 1);
    assert!(!gate.is_revoked(&p));
    assert_eq!(gate.apply_revocations(&list).unwrap(), Some(vec![p]));
    assert!(!gate.is_member(&p, t));
    assert!(gate.is_revoked(&p) && !gate.is_revoked(&q));
    assert_eq!(
        gate.admit(p, Some(&cred), t),
        Err(MembershipError::Revoked(p))
    );
    // An older or equal list changes nothing; another mesh's list is refused.
    assert_eq!(gate.apply_revocations(&list).unwrap(), None);
    let other = b.revoke(tempfile::tempdir().unwrap().path(), &[q]).unwrap();
    assert!(gate.apply_revocations(&other).is_err());
    // A list whose signature was tampered with is refused.
    let mut forged = a.revoke(dir.path(), &[q]).unwrap();
    forged.peers.clear();
    assert!(gate.apply_revocations(&forged).is_err());
}

#[test]
fn one_gate_serves_several_meshes_and_an_open_gate_everyone() {
    let (a, b) = (Authority::generate(), Authority::generate());
    let (p, q) = (peer(), peer());
    let t = now();
    let gate = Gate::new(Policy::Meshes(vec![a.mesh_id(), b.mesh_id()]));
    let m = gate.admit(p, Some(&a.admit(p, t, t + HOUR)), t).unwrap();
    assert_eq!(m.mesh, Some(a.mesh_id()));
    let m = gate.admit(q, Some(&b.admit(q, t, t + HOUR)), t).unwrap();
    assert_eq!(m.mesh, Some(b.mesh_id()));

    let open = Gate::new(Policy::Open);
    assert!(open.admit(p, None, t).is_ok());
    assert!(open.is_member(&peer(), t));
}

#[test]
fn authority_directory_is_private_and_never_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh");
    let a = Authority::init(&path).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);
    let [key, id, _] = authority_files(&path);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        std::fs::read_to_string(id).unwrap().trim(),
        a.mesh_id().to_string()
    );
    let err = Authority::init(&path).unwrap_err();
    assert!(err.contains("already holds"), "{err}");
    assert_eq!(Authority::load(&path).unwrap().mesh_id(), a.mesh_id());
    // Revocations accumulate with rising serials.
    let (p, q) = (peer(), peer());
    a.revoke(&path, &[p]).unwrap();
    let l = a.revoke(&path, &[q, p]).unwrap();
    assert_eq!(l.serial(), 2);
    assert_eq!(l.peers(), &[p, q]);
    assert_eq!(a.revocations(&path).unwrap(), l);
}

#[test]
fn endpoint_uuids_are_bound_to_peer_ids() {
    let (p, q) = (peer(), peer());
    assert_eq!(endpoint_uuid(&p), endpoint_uuid(&p));
    assert_ne!(endpoint_uuid(&p), endpoint_uuid(&q));
    assert_eq!(endpoint_uuid(&p).get_version_num(), 4);
}

#[test]
fn member_protocol_messages_round_trip_and_bound_their_size() {
    let a = Authority::generate();
    let p = peer();
    let t = now();
    let cred = a.admit(p, t, t + HOUR);
    let addr: Multiaddr = "/ip4/127.0.0.1/udp/4002/quic-v1".parse().unwrap();
    let msgs = [
        Message::Hello {
            credential: Some(cred.clone()),
            addrs: vec![addr.clone()],
        },
        Message::Welcome {
            members: vec![Member {
                peer: p,
                credential: Some(cred),
                addrs: vec![addr],
            }],
            revocations: Some(a.revoke(tempfile::tempdir().unwrap().path(), &[p]).unwrap()),
        },
        Message::Refused("no".into()),
    ];
    for m in msgs {
        let mut buf = Vec::new();
        block_on(write_message(&mut buf, &m)).unwrap();
        let back = block_on(read_message(&mut buf.as_slice())).unwrap();
        assert_eq!(back, m);
    }
    // A length beyond the limit is refused before anything is allocated.
    let huge = (wire::MAX_MESSAGE as u32 + 1).to_be_bytes();
    assert!(matches!(
        block_on(read_message(&mut huge.as_slice())),
        Err(wire::WireError::TooLarge(_))
    ));
    // Garbage is malformed, not a panic.
    let mut junk = 5u32.to_be_bytes().to_vec();
    junk.extend_from_slice(&[9, 9, 9, 9, 9]);
    assert!(block_on(read_message(&mut junk.as_slice())).is_err());
}
