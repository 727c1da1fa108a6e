//! Membership of a private mesh: the certificate a mesh's authority signs for one peer
//! ([`MemberCert`]) and the revocation that takes it back ([`Revocation`]).
//!
//! A private mesh is named by its authority's Ed25519 public key ([`MeshKey`]). The operator
//! keeps the private half and signs, per admitted peer, a certificate binding that peer's
//! libp2p id to the mesh, a [`Role`] and an expiry. A node checks the certificate of every
//! peer before anything else is exchanged: signed by *its* mesh's key, for *this*
//! connection's peer id, not expired, not revoked. A revocation is signed by the same key,
//! so any node can check one it receives from anyone and pass it on.
//!
//! Both travel as [`Signed`]: the bincode body and an Ed25519 signature over
//! `DOMAIN || body`, a domain of its own per type, so neither signature is ever valid as
//! the other's (or as anything else a key signs). Sizes are bounded on decode.
//!
//! Pure code: the caller passes "now" (Unix seconds); no clocks here.

use std::fmt;
use std::marker::PhantomData;

use bincode::{Decode, Encode};
use libp2p_identity::{ed25519, PeerId};

use crate::ids::MeshKey;

/// The largest encoded body of a certificate or revocation (a peer id is at most ~42
/// bytes; the rest is fixed).
pub const MAX_MEMBER_BODY_BYTES: usize = 256;
/// An Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// The largest encoded [`Signed`] (`to_bytes`).
pub const MAX_SIGNED_BYTES: usize = MAX_MEMBER_BODY_BYTES + SIGNATURE_BYTES + 8;

/// What a member may do. Today both roles join the mesh alike; the role is signed so that
/// later admission rules (who may serve layers) cannot be granted by the member itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Role {
    /// Serves layers (and may also use the mesh).
    Serve,
    /// Only uses the mesh (an entry, an API front, a light client).
    Client,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Serve => "serve",
            Role::Client => "client",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "serve" => Ok(Role::Serve),
            "client" => Ok(Role::Client),
            other => Err(format!("`{other}` is not a role (serve, client)")),
        }
    }
}

/// The authority's statement "this peer is a member of this mesh, in this role, until
/// then".
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct MemberCert {
    /// The mesh (its authority's public key).
    pub mesh: MeshKey,
    /// The member's libp2p peer id (multihash bytes).
    pub peer: Vec<u8>,
    pub role: Role,
    /// Unix seconds after which the certificate is void.
    pub expires_unix: u64,
}

/// The authority's statement "this peer is no longer a member of this mesh".
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Revocation {
    pub mesh: MeshKey,
    /// The revoked peer id (multihash bytes).
    pub peer: Vec<u8>,
    /// Unix seconds when it was signed (for logs; a revocation never expires).
    pub issued_unix: u64,
}

/// A body type that a mesh authority signs, with the domain its signatures live in.
pub trait AuthorityBody: Encode + Decode<()> {
    /// Signed bytes are `DOMAIN || body`.
    const DOMAIN: &'static [u8];
}

impl AuthorityBody for MemberCert {
    const DOMAIN: &'static [u8] = b"lamina/member/v1";
}

impl AuthorityBody for Revocation {
    const DOMAIN: &'static [u8] = b"lamina/revoke/v1";
}

/// Why a certificate or revocation was refused. Each names a fact the receiver checked,
/// never text the peer wrote.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("the signature is not the mesh authority's")]
    BadSignature,
    #[error("it belongs to another mesh ({0})")]
    OtherMesh(MeshKey),
    #[error("it was issued for another peer")]
    OtherPeer,
    #[error("it expired at {expires_unix} (now {now_unix})")]
    Expired { expires_unix: u64, now_unix: u64 },
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("the peer was revoked")]
    Revoked,
    #[error("no membership certificate")]
    Missing,
}

/// bincode's allocation limit for these records: it counts claims (a byte vector's
/// length and its bytes), so it sits above the byte bounds, which are checked explicitly.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<4096>()
}

/// A body signed by a mesh authority: the bincode body and the signature over
/// `T::DOMAIN || body`. Only [`verify_with`](Self::verify_with) yields the body.
pub struct Signed<T> {
    body: Vec<u8>,
    signature: Vec<u8>,
    _body: PhantomData<fn() -> T>,
}

/// A [`MemberCert`] as it travels.
pub type SignedMemberCert = Signed<MemberCert>;
/// A [`Revocation`] as it travels.
pub type SignedRevocation = Signed<Revocation>;

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self {
            body: self.body.clone(),
            signature: self.signature.clone(),
            _body: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body && self.signature == other.signature
    }
}

impl<T> Eq for Signed<T> {}

impl<T> std::hash::Hash for Signed<T> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.body.hash(h);
        self.signature.hash(h);
    }
}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signed({} body bytes)", self.body.len())
    }
}

fn signed_bytes(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(domain.len() + body.len());
    v.extend_from_slice(domain);
    v.extend_from_slice(body);
    v
}

impl<T: AuthorityBody> Signed<T> {
    /// Signs `body` with the mesh authority's key.
    pub fn sign(body: &T, authority: &ed25519::Keypair) -> Result<Self, MemberError> {
        let body = bincode::encode_to_vec(body, bincode::config::standard())
            .map_err(|e| MemberError::Malformed(e.to_string()))?;
        if body.len() > MAX_MEMBER_BODY_BYTES {
            return Err(MemberError::Malformed(format!(
                "body of {} bytes",
                body.len()
            )));
        }
        let signature = authority.sign(&signed_bytes(T::DOMAIN, &body));
        Ok(Self {
            body,
            signature,
            _body: PhantomData,
        })
    }

    /// The body, if the signature is `mesh`'s. Any other check is the caller's.
    pub fn verify_with(&self, mesh: &MeshKey) -> Result<T, MemberError> {
        if self.body.len() > MAX_MEMBER_BODY_BYTES || self.signature.len() != SIGNATURE_BYTES {
            return Err(MemberError::Malformed("size out of bounds".into()));
        }
        let key = ed25519::PublicKey::try_from_bytes(mesh.as_bytes())
            .map_err(|e| MemberError::Malformed(format!("mesh key: {e}")))?;
        if !key.verify(&signed_bytes(T::DOMAIN, &self.body), &self.signature) {
            return Err(MemberError::BadSignature);
        }
        let (body, used): (T, usize) = bincode::decode_from_slice(&self.body, config())
            .map_err(|e| MemberError::Malformed(e.to_string()))?;
        if used != self.body.len() {
            return Err(MemberError::Malformed("trailing bytes".into()));
        }
        Ok(body)
    }

    /// The body without checking anything: for logs and error messages only.
    pub fn peek_unverified(&self) -> Option<T> {
        bincode::decode_from_slice(&self.body, config())
            .ok()
            .map(|(b, _)| b)
    }

    /// The compact encoding (bincode of body and signature).
    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::encode_to_vec((&self.body, &self.signature), bincode::config::standard())
            .unwrap_or_default()
    }

    /// Decodes [`to_bytes`](Self::to_bytes), bounded; the signature is not checked here.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MemberError> {
        if bytes.len() > MAX_SIGNED_BYTES {
            return Err(MemberError::Malformed(format!("{} bytes", bytes.len())));
        }
        let ((body, signature), used): ((Vec<u8>, Vec<u8>), usize) =
            bincode::decode_from_slice(bytes, config())
                .map_err(|e| MemberError::Malformed(e.to_string()))?;
        if used != bytes.len() {
            return Err(MemberError::Malformed("trailing bytes".into()));
        }
        if body.len() > MAX_MEMBER_BODY_BYTES || signature.len() != SIGNATURE_BYTES {
            return Err(MemberError::Malformed("size out of bounds".into()));
        }
        Ok(Self {
            body,
            signature,
            _body: PhantomData,
        })
    }
}

impl SignedMemberCert {
    /// The certificate, if it makes `peer` a member of `mesh` at `now_unix`: signed by the
    /// mesh's key, naming this mesh and this peer, not expired. Revocation is the
    /// receiver's list to check (see the node's gate).
    pub fn verify(
        &self,
        mesh: &MeshKey,
        peer: &PeerId,
        now_unix: u64,
    ) -> Result<MemberCert, MemberError> {
        // The mesh named inside decides between "another mesh" and "a forgery" for logs;
        // only the signature check below makes the body trusted.
        if let Some(claimed) = self.peek_unverified() {
            if claimed.mesh != *mesh {
                return Err(MemberError::OtherMesh(claimed.mesh));
            }
        }
        let cert = self.verify_with(mesh)?;
        if cert.mesh != *mesh {
            return Err(MemberError::OtherMesh(cert.mesh));
        }
        if cert.peer != peer.to_bytes() {
            return Err(MemberError::OtherPeer);
        }
        if now_unix >= cert.expires_unix {
            return Err(MemberError::Expired {
                expires_unix: cert.expires_unix,
                now_unix,
            });
        }
        Ok(cert)
    }
}

impl SignedRevocation {
    /// The revocation and the peer it revokes, if `mesh`'s authority signed it.
    pub fn verify(&self, mesh: &MeshKey) -> Result<(Revocation, PeerId), MemberError> {
        let r = self.verify_with(mesh)?;
        if r.mesh != *mesh {
            return Err(MemberError::OtherMesh(r.mesh));
        }
        let peer = PeerId::from_bytes(&r.peer)
            .map_err(|e| MemberError::Malformed(format!("peer id: {e}")))?;
        Ok((r, peer))
    }
}

impl<T> Encode for Signed<T> {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        e: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.body.encode(e)?;
        self.signature.encode(e)
    }
}

impl<T, Context> Decode<Context> for Signed<T> {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let body: Vec<u8> = Decode::decode(d)?;
        let signature: Vec<u8> = Decode::decode(d)?;
        if body.len() > MAX_MEMBER_BODY_BYTES || signature.len() != SIGNATURE_BYTES {
            return Err(bincode::error::DecodeError::Other(
                "signed membership record out of bounds",
            ));
        }
        Ok(Self {
            body,
            signature,
            _body: PhantomData,
        })
    }
}

impl<'de, T, Context> bincode::BorrowDecode<'de, Context> for Signed<T> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Decode::decode(d)
    }
}

/// JSON (member files) shows hex of [`Signed::to_bytes`]; binary formats (CBOR on the
/// mesh) carry the bytes.
impl<T: AuthorityBody> serde::Serialize for Signed<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let bytes = self.to_bytes();
        if s.is_human_readable() {
            let mut hex = String::with_capacity(bytes.len() * 2);
            for b in &bytes {
                hex.push_str(&format!("{b:02x}"));
            }
            s.serialize_str(&hex)
        } else {
            s.serialize_bytes(&bytes)
        }
    }
}

impl<'de, T: AuthorityBody> serde::Deserialize<'de> for Signed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let bytes: Vec<u8> = if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            if text.len() % 2 != 0 || text.len() > 2 * MAX_SIGNED_BYTES {
                return Err(D::Error::custom("not hex of a signed record"));
            }
            (0..text.len())
                .step_by(2)
                .map(|i| {
                    text.get(i..i + 2)
                        .and_then(|p| u8::from_str_radix(p, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| D::Error::custom("not hex"))?
        } else {
            serde_bytes_vec(d)?
        };
        Signed::from_bytes(&bytes).map_err(D::Error::custom)
    }
}

/// Bytes from a binary format, accepting a byte string or a sequence of numbers.
fn serde_bytes_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            if v.len() > MAX_SIGNED_BYTES {
                return Err(E::custom("signed record too large"));
            }
            Ok(v.to_vec())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::new();
            while let Some(b) = a.next_element::<u8>()? {
                if v.len() >= MAX_SIGNED_BYTES {
                    return Err(serde::de::Error::custom("signed record too large"));
                }
                v.push(b);
            }
            Ok(v)
        }
    }
    d.deserialize_bytes(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh() -> (ed25519::Keypair, MeshKey) {
        let k = ed25519::Keypair::generate();
        let m = MeshKey::from_bytes(k.public().to_bytes());
        (k, m)
    }

    fn cert_for(m: MeshKey, peer: &PeerId, expires: u64) -> MemberCert {
        MemberCert {
            mesh: m,
            peer: peer.to_bytes(),
            role: Role::Serve,
            expires_unix: expires,
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let (k, m) = mesh();
        let peer = PeerId::random();
        let s = SignedMemberCert::sign(&cert_for(m, &peer, 100), &k).unwrap();
        let back = SignedMemberCert::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.verify(&m, &peer, 50).unwrap().role, Role::Serve);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SignedMemberCert>(&json).unwrap(), s);
    }

    #[test]
    fn forged_expired_other_peer_other_mesh() {
        let (k, m) = mesh();
        let (k2, m2) = mesh();
        let peer = PeerId::random();
        // Signed by another key while naming this mesh: a forgery.
        let forged = SignedMemberCert::sign(&cert_for(m, &peer, 100), &k2).unwrap();
        assert_eq!(forged.verify(&m, &peer, 50), Err(MemberError::BadSignature));
        // A genuine certificate of another mesh.
        let other = SignedMemberCert::sign(&cert_for(m2, &peer, 100), &k2).unwrap();
        assert_eq!(other.verify(&m, &peer, 50), Err(MemberError::OtherMesh(m2)));
        let s = SignedMemberCert::sign(&cert_for(m, &peer, 100), &k).unwrap();
        assert!(matches!(
            s.verify(&m, &peer, 100),
            Err(MemberError::Expired { .. })
        ));
        assert_eq!(
            s.verify(&m, &PeerId::random(), 50),
            Err(MemberError::OtherPeer)
        );
        // A flipped bit of the body.
        let mut bytes = s.to_bytes();
        bytes[3] ^= 1;
        let tampered = SignedMemberCert::from_bytes(&bytes).unwrap();
        assert!(tampered.verify(&m, &peer, 50).is_err());
    }

    #[test]
    fn revocation_is_not_a_certificate() {
        let (k, m) = mesh();
        let peer = PeerId::random();
        let r = Revocation {
            mesh: m,
            peer: peer.to_bytes(),
            issued_unix: 7,
        };
        let s = SignedRevocation::sign(&r, &k).unwrap();
        assert_eq!(s.verify(&m).unwrap().1, peer);
        // The same bytes read as a certificate fail: domains differ.
        let as_cert = SignedMemberCert::from_bytes(&s.to_bytes()).unwrap();
        assert!(as_cert.verify(&m, &peer, 0).is_err());
    }

    #[test]
    fn garbage_is_typed() {
        assert!(SignedMemberCert::from_bytes(&[1, 2, 3]).is_err());
        assert!(SignedMemberCert::from_bytes(&vec![0; 4096]).is_err());
        assert!(serde_json::from_str::<SignedMemberCert>("\"zz\"").is_err());
    }
}
