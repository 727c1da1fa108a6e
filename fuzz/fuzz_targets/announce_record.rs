//! libFuzzer target: the records a node receives from the mesh, signed announcements and
//! membership certificates and revocations, from their wire encoding to verification.
//!
//! The first input byte picks the mode (low 3 bits) and the receiver's clock (next 2 bits:
//! the seeds' "now", 0, u64::MAX, or ten minutes later); the rest is:
//! * 0: an announcement body, which the harness signs with the fixed node key so the
//!   fuzzer gets past the signature to the decoder and the field checks;
//! * 1: a signed announcement envelope (bincode of body, public key, signature), checked
//!   as received: key decoding, signature, signer;
//! * 2: a `Sync` message (the announcement exchange) through the swarm's own CBOR codec,
//!   size cap included, then every record verified;
//! * 3: a `MemberHello` (the membership exchange) through its codec, then the certificate
//!   checked against the fixed mesh and peer and every revocation verified;
//! * 4: a certificate body (bit 5 clear) or a revocation body (bit 5 set), which the
//!   harness signs with the fixed authority key, then round-tripped through its compact
//!   encoding and verified;
//! * else: bytes as a compact signed record (`Signed::from_bytes`).
//!
//! Properties: no panic; a record that verifies names its signer, keeps its bounds, and
//! re-encodes (and re-signs) to a record that verifies to the same value; whatever the
//! codec decodes re-encodes to the same records.
#![no_main]

use futures::executor::block_on;
use lamina_fuzz::{authority_key, mesh_key, node_key, write_seeds_if_asked, MODEL, NOW_MS};
use lamina_node::mesh::behaviour::{
    MemberHello, Sync, ANNOUNCE_PROTOCOL, MAX_MEMBER_BYTES, MAX_SYNC_BYTES, MEMBER_PROTOCOL,
};
use lamina_protocol::announce::{MAX_ADDRS, MAX_BODY_BYTES, MAX_TEXT_BYTES};
use lamina_protocol::member::MAX_MEMBER_BODY_BYTES;
use lamina_protocol::{
    Announcement, AuthorityBody, LayerRange, MemberCert, NodeState, Revocation, Role, Signed,
    SignedAnnouncement, SignedMemberCert, SignedRevocation, ANNOUNCEMENT_VERSION,
};
use libfuzzer_sys::fuzz_target;
use libp2p::request_response::{cbor, Codec};
use libp2p::StreamProtocol;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 64 * 1024 }>()
}

fn announce_codec() -> cbor::codec::Codec<Sync, Sync> {
    cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_SYNC_BYTES)
        .set_response_size_maximum(MAX_SYNC_BYTES)
}

fn member_codec() -> cbor::codec::Codec<MemberHello, MemberHello> {
    cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_MEMBER_BYTES)
        .set_response_size_maximum(MAX_MEMBER_BYTES)
}

/// Decodes `bytes` with `codec` as a request, as the swarm would read one.
fn read<C: Codec<Protocol = StreamProtocol>>(
    codec: &mut C,
    protocol: &StreamProtocol,
    bytes: &[u8],
) -> Option<C::Request> {
    let mut io = futures::io::Cursor::new(bytes);
    block_on(codec.read_request(protocol, &mut io)).ok()
}

/// Encodes `req` with `codec` as the swarm would write it.
fn write<C: Codec<Protocol = StreamProtocol>>(
    codec: &mut C,
    protocol: &StreamProtocol,
    req: C::Request,
) -> Vec<u8> {
    let mut out = Vec::new();
    block_on(codec.write_request(protocol, &mut out, req)).expect("a decoded request re-encodes");
    out
}

/// A verified announcement keeps its bounds and survives re-encoding and re-signing.
fn check_verified(a: &Announcement, s: &SignedAnnouncement, now_ms: u64) {
    let signer = libp2p_identity::PublicKey::try_decode_protobuf(&s.public_key)
        .expect("a verified record's key decodes")
        .to_peer_id();
    assert_eq!(a.peer(), Some(signer), "a record verified for another peer");
    assert_eq!(a.version, ANNOUNCEMENT_VERSION);
    assert!(s.body.len() <= MAX_BODY_BYTES);
    assert!(a.listen_addrs.len() <= MAX_ADDRS);
    assert!(a.dataplane_addr.len() <= MAX_TEXT_BYTES && a.lamina_version.len() <= MAX_TEXT_BYTES);
    assert!(a.tokens_per_sec.is_finite() && a.tokens_per_sec >= 0.0);
    if let Some(r) = a.layers {
        assert!(r.start < r.end && r.end <= a.n_layers);
    }
    assert!(a.withdrawn || a.is_live(now_ms));
    let body = bincode::encode_to_vec(a, bincode::config::standard()).expect("re-encodes");
    let (back, _): (Announcement, usize) =
        bincode::decode_from_slice(&body, bincode_config()).expect("and decodes");
    assert_eq!(&back, a);
    if signer == node_key().public().to_peer_id() {
        let again = a.sign(&node_key()).expect("a verified record re-signs");
        assert_eq!(again.verify(now_ms).as_ref(), Ok(a));
    }
}

fn announcement_body(data: &[u8], now_ms: u64) {
    let key = node_key();
    let signature = key
        .sign(&[b"lamina-announcement-v2:".as_slice(), data].concat())
        .expect("ed25519 signs");
    let s = SignedAnnouncement {
        body: data.to_vec(),
        public_key: key.public().encode_protobuf(),
        signature,
    };
    if let Ok(a) = s.verify(now_ms) {
        check_verified(&a, &s, now_ms);
    }
}

fn envelope(data: &[u8], now_ms: u64) {
    type Triple = (Vec<u8>, Vec<u8>, Vec<u8>);
    let Ok(((body, public_key, signature), _)) =
        bincode::decode_from_slice::<Triple, _>(data, bincode_config())
    else {
        return;
    };
    let s = SignedAnnouncement {
        body,
        public_key,
        signature,
    };
    if let Ok(a) = s.verify(now_ms) {
        check_verified(&a, &s, now_ms);
    }
}

fn sync(data: &[u8], now_ms: u64) {
    let mut codec = announce_codec();
    let Some(msg) = read(&mut codec, &ANNOUNCE_PROTOCOL, data) else {
        return;
    };
    for s in &msg.records {
        if let Ok(a) = s.verify(now_ms) {
            check_verified(&a, s, now_ms);
        }
    }
    let records = msg.records.clone();
    let bytes = write(&mut codec, &ANNOUNCE_PROTOCOL, msg);
    let back = read(&mut codec, &ANNOUNCE_PROTOCOL, &bytes).expect("re-encoded Sync decodes");
    assert_eq!(back.records, records);
}

fn check_member_cert(c: &SignedMemberCert, now_ms: u64) {
    let peer = node_key().public().to_peer_id();
    let _ = c.peek_unverified();
    if let Ok(cert) = c.verify(&mesh_key(), &peer, now_ms / 1000) {
        assert_eq!(cert.mesh, mesh_key());
        assert_eq!(cert.peer, peer.to_bytes());
        assert!(now_ms / 1000 < cert.expires_unix);
    }
    let back = Signed::from_bytes(&c.to_bytes()).expect("a decoded certificate re-encodes");
    assert_eq!(&back, c);
}

fn check_revocation(r: &SignedRevocation) {
    if let Ok((rev, peer)) = r.verify(&mesh_key()) {
        assert_eq!(rev.mesh, mesh_key());
        assert_eq!(peer.to_bytes(), rev.peer);
    }
    let back = Signed::from_bytes(&r.to_bytes()).expect("a decoded revocation re-encodes");
    assert_eq!(&back, r);
}

fn member_hello(data: &[u8], now_ms: u64) {
    let mut codec = member_codec();
    let Some(msg) = read(&mut codec, &MEMBER_PROTOCOL, data) else {
        return;
    };
    if let Some(c) = &msg.cert {
        check_member_cert(c, now_ms);
    }
    for r in &msg.revocations {
        check_revocation(r);
    }
    let (cert, revocations) = (msg.cert.clone(), msg.revocations.clone());
    let bytes = write(&mut codec, &MEMBER_PROTOCOL, msg);
    let back = read(&mut codec, &MEMBER_PROTOCOL, &bytes).expect("re-encoded hello decodes");
    assert_eq!((back.cert, back.revocations), (cert, revocations));
}

/// Signs `body` as the authority would sign a `T` and wraps it as received.
fn authority_signed<T: AuthorityBody>(body: &[u8]) -> Option<Signed<T>> {
    let signature = authority_key().sign(&[T::DOMAIN, body].concat());
    let bytes = bincode::encode_to_vec((body, signature), bincode::config::standard()).ok()?;
    Signed::from_bytes(&bytes).ok()
}

fn authority_body(data: &[u8], revocation: bool, now_ms: u64) {
    if data.len() > MAX_MEMBER_BODY_BYTES {
        return;
    }
    if revocation {
        if let Some(r) = authority_signed::<Revocation>(data) {
            check_revocation(&r);
        }
    } else if let Some(c) = authority_signed::<MemberCert>(data) {
        check_member_cert(&c, now_ms);
    }
}

fn compact(data: &[u8], now_ms: u64) {
    if let Ok(c) = SignedMemberCert::from_bytes(data) {
        assert_eq!(c.to_bytes(), data, "a compact record is canonical");
        check_member_cert(&c, now_ms);
    }
    if let Ok(r) = SignedRevocation::from_bytes(data) {
        check_revocation(&r);
    }
}

fn record(now_ms: u64, seq: u64) -> Announcement {
    let key = node_key();
    let peer = key.public().to_peer_id();
    let cert = MemberCert {
        mesh: mesh_key(),
        peer: peer.to_bytes(),
        role: Role::Serve,
        expires_unix: now_ms / 1000 + 86_400,
    };
    Announcement {
        version: ANNOUNCEMENT_VERSION,
        peer_id: peer.to_bytes(),
        model_id: MODEL,
        n_layers: 30,
        layers: Some(LayerRange::new(0, 10).expect("0 < 10")),
        state: NodeState::Serving,
        dataplane_addr: "127.0.0.1:4000".into(),
        listen_addrs: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
        api: Some("http://127.0.0.1:8080".into()),
        tokens_per_sec: 150.0,
        free_slots: 64,
        max_memory: 1 << 30,
        lamina_version: "0.1.0".into(),
        seq,
        issued_at_ms: now_ms - 1000,
        expires_at_ms: now_ms + 30_000,
        withdrawn: false,
        started_at_ms: now_ms - 60_000,
        member: Signed::sign(&cert, &authority_key()).ok(),
    }
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let with = |mode: u8, bytes: Vec<u8>| [vec![mode], bytes].concat();
    let key = node_key();
    let a = record(NOW_MS, 3);
    let mut open_mesh = record(NOW_MS, 4);
    open_mesh.member = None;
    open_mesh.layers = None;
    open_mesh.api = None;
    let mut withdrawn = record(NOW_MS, 5);
    withdrawn.withdrawn = true;
    withdrawn.expires_at_ms = withdrawn.issued_at_ms;
    let body = |a: &Announcement| bincode::encode_to_vec(a, bincode::config::standard()).unwrap();
    let signed = |a: &Announcement| a.sign(&key).expect("seed records sign");
    let envelope = |s: &SignedAnnouncement| {
        bincode::encode_to_vec(
            (&s.body, &s.public_key, &s.signature),
            bincode::config::standard(),
        )
        .unwrap()
    };
    let peer = key.public().to_peer_id();
    let cert = MemberCert {
        mesh: mesh_key(),
        peer: peer.to_bytes(),
        role: Role::Client,
        expires_unix: NOW_MS / 1000 + 3600,
    };
    let revocation = Revocation {
        mesh: mesh_key(),
        peer: peer.to_bytes(),
        issued_unix: NOW_MS / 1000,
    };
    let signed_cert = Signed::sign(&cert, &authority_key()).unwrap();
    let signed_rev = Signed::sign(&revocation, &authority_key()).unwrap();
    let sync = write(
        &mut announce_codec(),
        &ANNOUNCE_PROTOCOL,
        Sync {
            records: vec![signed(&a), signed(&open_mesh), signed(&withdrawn)],
        },
    );
    let hello = write(
        &mut member_codec(),
        &MEMBER_PROTOCOL,
        MemberHello {
            cert: Some(signed_cert.clone()),
            revocations: vec![signed_rev.clone()],
        },
    );
    vec![
        ("body".into(), with(0, body(&a))),
        ("body-open-mesh".into(), with(0, body(&open_mesh))),
        ("body-withdrawn".into(), with(0, body(&withdrawn))),
        ("envelope".into(), with(1, envelope(&signed(&a)))),
        ("sync".into(), with(2, sync)),
        ("member-hello".into(), with(3, hello)),
        (
            "cert-body".into(),
            with(
                4,
                bincode::encode_to_vec(&cert, bincode::config::standard()).unwrap(),
            ),
        ),
        (
            "revocation-body".into(),
            with(
                4 | 0x20,
                bincode::encode_to_vec(&revocation, bincode::config::standard()).unwrap(),
            ),
        ),
        ("compact-cert".into(), with(5, signed_cert.to_bytes())),
        ("compact-revocation".into(), with(5, signed_rev.to_bytes())),
    ]
}

fuzz_target!(
    init: write_seeds_if_asked("announce_record", seeds),
    |data: &[u8]| {
        let Some((&ctl, rest)) = data.split_first() else {
            return;
        };
        let now_ms = match (ctl >> 3) & 3 {
            0 => NOW_MS,
            1 => 0,
            2 => u64::MAX,
            _ => NOW_MS + 10 * 60_000,
        };
        match ctl & 7 {
            0 => announcement_body(rest, now_ms),
            1 => envelope(rest, now_ms),
            2 => sync(rest, now_ms),
            3 => member_hello(rest, now_ms),
            4 => authority_body(rest, ctl & 0x20 != 0, now_ms),
            _ => compact(rest, now_ms),
        }
    }
);
