//! The gate: decides whether a peer is a member of this node's mesh. Pure: no I/O and no
//! clocks ("now" is an argument), so every refusal is tested without a network.
//!
//! An open mesh admits everyone. A private mesh admits a peer only with a certificate
//! signed by the mesh's authority, for the peer id the transport proved (never the one a
//! message claims), unexpired and not revoked. Revocations are learnt from anyone (they are
//! signed by the authority, so who relays them does not matter) and kept, bounded.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use lamina_protocol::{MemberError, MeshKey, Role, SignedMemberCert, SignedRevocation};
use libp2p::PeerId;

/// Revocations one gate keeps at most: a mesh revoking more than this needs a new mesh key.
pub const MAX_REVOCATIONS: usize = 4096;

/// What an admitted peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The role its certificate grants (`None` in an open mesh).
    pub role: Option<Role>,
}

/// Who may take part.
#[derive(Clone, Debug, Default)]
pub enum Gate {
    /// Anyone (the operator chose `--open`).
    #[default]
    Open,
    /// Members of one private mesh.
    Member(MemberGate),
}

/// The state of a private mesh's gate.
#[derive(Clone, Debug)]
pub struct MemberGate {
    mesh: MeshKey,
    own: SignedMemberCert,
    revoked: HashMap<PeerId, SignedRevocation>,
}

impl Gate {
    /// The gate of the private mesh `mesh`, for a node holding `own` (its certificate,
    /// which it presents to others).
    pub fn member(mesh: MeshKey, own: SignedMemberCert) -> Self {
        Gate::Member(MemberGate {
            mesh,
            own,
            revoked: HashMap::new(),
        })
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Gate::Open)
    }

    /// The mesh key, in a private mesh.
    pub fn mesh(&self) -> Option<MeshKey> {
        match self {
            Gate::Open => None,
            Gate::Member(m) => Some(m.mesh),
        }
    }

    /// The certificate this node presents (none in an open mesh).
    pub fn own_cert(&self) -> Option<&SignedMemberCert> {
        match self {
            Gate::Open => None,
            Gate::Member(m) => Some(&m.own),
        }
    }

    /// Whether `peer`, proven by the transport, is a member at `now_unix` with `cert`.
    pub fn judge(
        &self,
        peer: &PeerId,
        cert: Option<&SignedMemberCert>,
        now_unix: u64,
    ) -> Result<Admitted, MemberError> {
        let m = match self {
            Gate::Open => return Ok(Admitted { role: None }),
            Gate::Member(m) => m,
        };
        if m.revoked.contains_key(peer) {
            return Err(MemberError::Revoked);
        }
        let cert = cert.ok_or(MemberError::Missing)?;
        let c = cert.verify(&m.mesh, peer, now_unix)?;
        Ok(Admitted { role: Some(c.role) })
    }

    /// Learns a revocation. `Ok(Some(peer))` when it is new (the caller cuts the peer
    /// off), `Ok(None)` when already known; an error when it is not this mesh's. In an
    /// open mesh there is nothing to revoke.
    pub fn learn_revocation(
        &mut self,
        r: &SignedRevocation,
    ) -> Result<Option<PeerId>, MemberError> {
        let m = match self {
            Gate::Open => return Ok(None),
            Gate::Member(m) => m,
        };
        let (_, peer) = r.verify(&m.mesh)?;
        if m.revoked.contains_key(&peer) || m.revoked.len() >= MAX_REVOCATIONS {
            return Ok(None);
        }
        m.revoked.insert(peer, r.clone());
        Ok(Some(peer))
    }

    /// Whether `peer` was revoked.
    pub fn is_revoked(&self, peer: &PeerId) -> bool {
        match self {
            Gate::Open => false,
            Gate::Member(m) => m.revoked.contains_key(peer),
        }
    }

    /// Every revocation known, to hand to peers (so they reach late joiners).
    pub fn revocations(&self) -> Vec<SignedRevocation> {
        match self {
            Gate::Open => Vec::new(),
            Gate::Member(m) => m.revoked.values().cloned().collect(),
        }
    }
}

/// A gate shared by the mesh event loop (which learns revocations) and the session
/// server (which judges every `Hello`).
#[derive(Clone, Debug, Default)]
pub struct SharedGate(Arc<RwLock<Gate>>);

impl SharedGate {
    pub fn new(gate: Gate) -> Self {
        Self(Arc::new(RwLock::new(gate)))
    }

    /// Runs `f` on the gate as it is now.
    pub fn read<R>(&self, f: impl FnOnce(&Gate) -> R) -> R {
        f(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Changes the gate.
    pub fn write<R>(&self, f: impl FnOnce(&mut Gate) -> R) -> R {
        f(&mut self.0.write().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use lamina_protocol::{MemberCert, Revocation};
    use libp2p::identity::ed25519;

    use super::*;

    fn authority() -> (ed25519::Keypair, MeshKey) {
        let k = ed25519::Keypair::generate();
        let m = MeshKey::from_bytes(k.public().to_bytes());
        (k, m)
    }

    fn cert(k: &ed25519::Keypair, m: MeshKey, peer: &PeerId, expires: u64) -> SignedMemberCert {
        let c = MemberCert {
            mesh: m,
            peer: peer.to_bytes(),
            role: Role::Serve,
            expires_unix: expires,
        };
        SignedMemberCert::sign(&c, k).unwrap()
    }

    #[test]
    fn open_admits_everyone() {
        let g = Gate::Open;
        assert!(g.judge(&PeerId::random(), None, 0).is_ok());
    }

    #[test]
    fn member_gate_refuses_with_reasons() {
        let (k, m) = authority();
        let (k2, m2) = authority();
        let me = PeerId::random();
        let mut g = Gate::member(m, cert(&k, m, &me, 1000));
        let peer = PeerId::random();
        assert_eq!(g.judge(&peer, None, 10), Err(MemberError::Missing));
        let other_mesh = cert(&k2, m2, &peer, 1000);
        assert_eq!(
            g.judge(&peer, Some(&other_mesh), 10),
            Err(MemberError::OtherMesh(m2))
        );
        let expired = cert(&k, m, &peer, 5);
        assert!(matches!(
            g.judge(&peer, Some(&expired), 10),
            Err(MemberError::Expired { .. })
        ));
        let someone_else = cert(&k, m, &PeerId::random(), 1000);
        assert_eq!(
            g.judge(&peer, Some(&someone_else), 10),
            Err(MemberError::OtherPeer)
        );
        let good = cert(&k, m, &peer, 1000);
        assert_eq!(
            g.judge(&peer, Some(&good), 10),
            Ok(Admitted {
                role: Some(Role::Serve)
            })
        );
        let r = Revocation {
            mesh: m,
            peer: peer.to_bytes(),
            issued_unix: 10,
        };
        let r = SignedRevocation::sign(&r, &k).unwrap();
        assert_eq!(g.learn_revocation(&r), Ok(Some(peer)));
        assert_eq!(g.learn_revocation(&r), Ok(None));
        assert_eq!(g.judge(&peer, Some(&good), 10), Err(MemberError::Revoked));
        assert_eq!(g.revocations().len(), 1);
        // A revocation signed by another authority is refused.
        let forged = Revocation {
            mesh: m,
            peer: me.to_bytes(),
            issued_unix: 10,
        };
        let forged = SignedRevocation::sign(&forged, &k2).unwrap();
        assert!(g.learn_revocation(&forged).is_err());
        assert!(!g.is_revoked(&me));
    }
}
