//! Announcements: the signed record a node publishes so that other nodes can place
//! themselves, route through it and reach its data plane.
//!
//! A record is trusted only as far as its signature goes. The body is bincode bytes signed
//! with the node's libp2p ed25519 identity key under a domain-separation prefix, and the
//! body names the signer's peer id, so a record cannot be replayed under another identity,
//! and a relay that forwards records (every node gossips the table it holds) cannot alter
//! them. What the signature cannot vouch for (that the throughput is true, that the
//! address answers) the receiver checks by using it: a dialer of the data plane expects the
//! announcing peer id in the TLS handshake (so an address copied from another peer's record
//! reaches a handshake that fails), and the router measures RTT itself.
//!
//! In a private mesh the record also carries the signer's membership certificate, so a
//! record relayed by a member from a non-member is still judged by the receiver's gate.
//!
//! Freshness is decided by the receiver's clock against `issued_at_ms`/`expires_at_ms`
//! (milliseconds since the Unix epoch), with explicit bounds on how far in the future a
//! record may claim to be issued ([`MAX_CLOCK_SKEW_MS`]) and how long it may live
//! ([`MAX_TTL_MS`]): a peer cannot make its record immortal. A newer `seq` from the same
//! peer replaces the older record; a withdrawal is a record with `withdrawn = true`, signed
//! like any other, so nobody but the node itself can withdraw it.
//!
//! Pure code: the caller passes "now"; no clocks here.

use bincode::{Decode, Encode};
use libp2p_identity::{Keypair, PeerId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::ids::ModelId;
use crate::layers::LayerRange;
use crate::member::SignedMemberCert;

/// Bumped when the body layout changes; receivers drop records of other versions.
pub const ANNOUNCEMENT_VERSION: u16 = 2;
/// Signed bytes are `DOMAIN || body`, so an announcement signature is never valid as a
/// signature over anything else the same key signs (libp2p's own handshakes included).
const DOMAIN: &[u8] = b"lamina-announcement-v2:";
/// The largest encoded body accepted (a record with a handful of addresses is ~300 bytes).
pub const MAX_BODY_BYTES: usize = 4096;
/// A record may claim to be issued at most this far in the receiver's future.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;
/// A record may live at most this long past its issue time.
pub const MAX_TTL_MS: u64 = 10 * 60_000;
/// Bounds on the variable-length fields, checked on decode.
pub const MAX_ADDRS: usize = 16;
pub const MAX_TEXT_BYTES: usize = 256;

/// Where a node is in its life: placement counts `Loading` nodes (so that two nodes
/// joining at once do not pick the same range), routing only uses `Serving` ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub enum NodeState {
    /// It has chosen `layers` and is loading them.
    Loading,
    /// It serves `layers` on its data plane.
    Serving,
}

/// What a node says about itself.
#[derive(Clone, Debug, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct Announcement {
    pub version: u16,
    /// The signer's libp2p peer id (its multihash bytes).
    pub peer_id: Vec<u8>,
    pub model_id: ModelId,
    /// The model's layer count, so a receiver can check ranges without the model file.
    pub n_layers: u32,
    /// The layers it hosts; `None` for a node that only routes and serves the API.
    pub layers: Option<LayerRange>,
    pub state: NodeState,
    /// The data plane's UDP address, `host:port`.
    pub dataplane_addr: String,
    /// libp2p multiaddrs the node listens on (text), so peers can dial it.
    pub listen_addrs: Vec<String>,
    /// Its HTTP API base URL, if it serves one.
    pub api: Option<String>,
    /// Measured decode tokens per second for one sequence through all of `layers`.
    pub tokens_per_sec: f32,
    /// Sessions it can still open.
    pub free_slots: u32,
    /// The memory budget it placed itself with, in bytes (0: unknown).
    pub max_memory: u64,
    /// `CARGO_PKG_VERSION` of its lamina.
    pub lamina_version: String,
    /// Strictly increasing per node across a node's life; the newest wins.
    pub seq: u64,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    /// A withdrawal: the node leaves (clean shutdown).
    pub withdrawn: bool,
    /// When this incarnation of the node started: a restarted node (same identity, same
    /// certificate) is a new incarnation, so bans earned by the old one can be lifted.
    pub started_at_ms: u64,
    /// The signer's membership certificate of a private mesh (`None` in an open mesh).
    #[serde(default)]
    pub member: Option<SignedMemberCert>,
}

/// An announcement with its signature, as it travels and as tables keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedAnnouncement {
    /// bincode of the [`Announcement`].
    pub body: Vec<u8>,
    /// The signer's public key, libp2p protobuf encoding.
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    #[error("announcement body of {0} bytes exceeds {MAX_BODY_BYTES}")]
    TooLarge(usize),
    #[error("announcement body does not decode: {0}")]
    Malformed(String),
    #[error("announcement version {0} is not {ANNOUNCEMENT_VERSION}")]
    Version(u16),
    #[error("announcement public key does not decode: {0}")]
    BadKey(String),
    #[error("announcement signature does not verify")]
    BadSignature,
    #[error("announcement names peer {claimed} but is signed by {signer}")]
    WrongSigner { claimed: String, signer: String },
    #[error("announcement expired at {expires_at_ms} (now {now_ms})")]
    Expired { expires_at_ms: u64, now_ms: u64 },
    #[error("announcement issued at {issued_at_ms}, too far after now ({now_ms})")]
    FromTheFuture { issued_at_ms: u64, now_ms: u64 },
    #[error("announcement lives {ttl_ms} ms, more than {MAX_TTL_MS}")]
    TtlTooLong { ttl_ms: u64 },
    #[error("announcement field {0} is out of bounds")]
    Field(&'static str),
    #[error("signing failed: {0}")]
    Sign(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_BODY_BYTES>()
}

impl Announcement {
    /// Signs the record with `key` (which must be the key of `peer_id`).
    pub fn sign(&self, key: &Keypair) -> Result<SignedAnnouncement, AnnounceError> {
        let body = bincode::encode_to_vec(self, bincode::config::standard())
            .map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        if body.len() > MAX_BODY_BYTES {
            return Err(AnnounceError::TooLarge(body.len()));
        }
        let signature = key
            .sign(&signed_bytes(&body))
            .map_err(|e| AnnounceError::Sign(e.to_string()))?;
        Ok(SignedAnnouncement {
            body,
            public_key: key.public().encode_protobuf(),
            signature,
        })
    }

    /// The signer as a libp2p peer id, if the bytes are one.
    pub fn peer(&self) -> Option<PeerId> {
        PeerId::from_bytes(&self.peer_id).ok()
    }

    /// Live at `now_ms`: not withdrawn and not expired.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.withdrawn && now_ms < self.expires_at_ms
    }

    fn check_fields(&self) -> Result<(), AnnounceError> {
        if self.listen_addrs.len() > MAX_ADDRS {
            return Err(AnnounceError::Field("listen_addrs"));
        }
        let texts = std::iter::once(&self.dataplane_addr)
            .chain(&self.listen_addrs)
            .chain(self.api.iter())
            .chain(std::iter::once(&self.lamina_version));
        for t in texts {
            if t.len() > MAX_TEXT_BYTES {
                return Err(AnnounceError::Field("text"));
            }
        }
        if let Some(r) = self.layers {
            if r.start >= r.end || r.end > self.n_layers {
                return Err(AnnounceError::Field("layers"));
            }
        }
        if !(self.tokens_per_sec.is_finite() && self.tokens_per_sec >= 0.0) {
            return Err(AnnounceError::Field("tokens_per_sec"));
        }
        Ok(())
    }
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + body.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(body);
    v
}

impl SignedAnnouncement {
    /// Checks the signature, the signer, the version, the field bounds and freshness at
    /// `now_ms`, and returns the record. Expired records and withdrawals both decode; a
    /// withdrawal is returned (the table uses it to drop the peer), an expired one is not.
    pub fn verify(&self, now_ms: u64) -> Result<Announcement, AnnounceError> {
        if self.body.len() > MAX_BODY_BYTES {
            return Err(AnnounceError::TooLarge(self.body.len()));
        }
        let key = PublicKey::try_decode_protobuf(&self.public_key)
            .map_err(|e| AnnounceError::BadKey(e.to_string()))?;
        if !key.verify(&signed_bytes(&self.body), &self.signature) {
            return Err(AnnounceError::BadSignature);
        }
        let (a, used): (Announcement, usize) = bincode::decode_from_slice(&self.body, config())
            .map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        if used != self.body.len() {
            return Err(AnnounceError::Malformed(format!(
                "{} trailing bytes",
                self.body.len() - used
            )));
        }
        if a.version != ANNOUNCEMENT_VERSION {
            return Err(AnnounceError::Version(a.version));
        }
        let signer = key.to_peer_id();
        if a.peer_id != signer.to_bytes() {
            let claimed = PeerId::from_bytes(&a.peer_id)
                .map_or_else(|_| "<not a peer id>".to_string(), |p| p.to_string());
            return Err(AnnounceError::WrongSigner {
                claimed,
                signer: signer.to_string(),
            });
        }
        a.check_fields()?;
        if a.issued_at_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(AnnounceError::FromTheFuture {
                issued_at_ms: a.issued_at_ms,
                now_ms,
            });
        }
        let ttl_ms = a.expires_at_ms.saturating_sub(a.issued_at_ms);
        if ttl_ms > MAX_TTL_MS {
            return Err(AnnounceError::TtlTooLong { ttl_ms });
        }
        if !a.withdrawn && now_ms >= a.expires_at_ms {
            return Err(AnnounceError::Expired {
                expires_at_ms: a.expires_at_ms,
                now_ms,
            });
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &Keypair, now: u64) -> Announcement {
        Announcement {
            version: ANNOUNCEMENT_VERSION,
            peer_id: key.public().to_peer_id().to_bytes(),
            model_id: ModelId::from_bytes([7; 32]),
            n_layers: 30,
            layers: Some(LayerRange::new(0, 10).unwrap()),
            state: NodeState::Serving,
            dataplane_addr: "127.0.0.1:4000".into(),
            listen_addrs: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".into()],
            api: Some("http://127.0.0.1:8080".into()),
            tokens_per_sec: 150.0,
            free_slots: 64,
            max_memory: 0,
            lamina_version: "0.1.0".into(),
            seq: 1,
            issued_at_ms: now,
            expires_at_ms: now + 30_000,
            withdrawn: false,
            started_at_ms: 0,
            member: None,
        }
    }

    #[test]
    fn signed_record_verifies() {
        let key = Keypair::generate_ed25519();
        let a = record(&key, 1000);
        let s = a.sign(&key).unwrap();
        assert_eq!(s.verify(2000).unwrap(), a);
    }

    #[test]
    fn tampered_body_is_refused() {
        let key = Keypair::generate_ed25519();
        let mut s = record(&key, 1000).sign(&key).unwrap();
        let last = s.body.len() - 1;
        s.body[last] ^= 1;
        assert_eq!(s.verify(2000), Err(AnnounceError::BadSignature));
    }

    #[test]
    fn record_for_another_peer_is_refused() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut a = record(&key, 1000);
        a.peer_id = other.public().to_peer_id().to_bytes();
        let s = a.sign(&key).unwrap();
        assert!(matches!(
            s.verify(2000),
            Err(AnnounceError::WrongSigner { .. })
        ));
    }

    #[test]
    fn expiry_skew_and_ttl_are_enforced() {
        let key = Keypair::generate_ed25519();
        let a = record(&key, 1000);
        let s = a.sign(&key).unwrap();
        assert!(matches!(
            s.verify(31_000),
            Err(AnnounceError::Expired { .. })
        ));
        assert!(matches!(
            record(&key, 200_000).sign(&key).unwrap().verify(1000),
            Err(AnnounceError::FromTheFuture { .. })
        ));
        let mut long = record(&key, 1000);
        long.expires_at_ms = 1000 + MAX_TTL_MS + 1;
        assert!(matches!(
            long.sign(&key).unwrap().verify(2000),
            Err(AnnounceError::TtlTooLong { .. })
        ));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let key = Keypair::generate_ed25519();
        let s = SignedAnnouncement {
            body: vec![1, 2, 3],
            public_key: vec![0; 5],
            signature: vec![],
        };
        assert!(matches!(s.verify(0), Err(AnnounceError::BadKey(_))));
        let body = vec![0xff; 64];
        let s = SignedAnnouncement {
            signature: key.sign(&signed_bytes(&body)).unwrap(),
            body,
            public_key: key.public().encode_protobuf(),
        };
        assert!(matches!(s.verify(0), Err(AnnounceError::Malformed(_))));
    }

    #[test]
    fn withdrawal_verifies_after_expiry() {
        let key = Keypair::generate_ed25519();
        let mut a = record(&key, 1000);
        a.withdrawn = true;
        a.expires_at_ms = 1000;
        let v = a.sign(&key).unwrap().verify(5000).unwrap();
        assert!(v.withdrawn && !v.is_live(5000));
    }
}
