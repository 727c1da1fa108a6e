//! The gate's side of the event loop: the membership exchange on every new connection,
//! admitting or refusing the peer, and spreading revocations. Judging itself is pure
//! ([`crate::trust`]); this is what the loop does with the verdict.

use super::*;

impl EventLoop {
    /// This node's side of the membership exchange, carrying `revocations`.
    pub(super) fn member_hello(&self, revocations: Vec<SignedRevocation>) -> MemberHello {
        MemberHello {
            cert: self.gate.read(|g| g.own_cert().cloned()),
            revocations,
        }
    }

    /// `peer` proved membership: records flow both ways from now on.
    pub(super) fn admit(&mut self, peer: PeerId) {
        self.pending.remove(&peer);
        if !self.admitted.insert(peer) {
            return;
        }
        tracing::debug!(%peer, "gate: admitted");
        self.state.connected = self.admitted.len();
        self.dirty = true;
        let records = self.records();
        self.swarm
            .behaviour_mut()
            .announce
            .send_request(&peer, Sync { records });
    }

    /// `peer` is no member: disconnect it, and say why at the gate.
    pub(super) fn refuse(&mut self, peer: PeerId, reason: &str) {
        self.pending.remove(&peer);
        self.admitted.remove(&peer);
        self.state.connected = self.admitted.len();
        self.state.refused_connections += 1;
        self.dirty = true;
        tracing::warn!(%peer, %reason, "gate: refused a peer");
        // Out of Kademlia's table too, or its routing updates would redial it.
        self.swarm.behaviour_mut().kad.remove_peer(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// A revoked peer: out of the table, disconnected, refused from now on (the gate
    /// knows the revocation).
    pub(super) fn cut_off(&mut self, peer: PeerId) {
        if self.state.table.remove(&peer) {
            self.table_changed();
        }
        self.state.obs.rtt.remove(&peer);
        self.last_dial.remove(&peer);
        self.refuse(peer, &MemberError::Revoked.to_string());
    }

    /// Hands `revocations` to every admitted peer.
    pub(super) fn forward_revocations(&mut self, revocations: Vec<SignedRevocation>) {
        if revocations.is_empty() {
            return;
        }
        let hello = self.member_hello(revocations);
        let peers: Vec<PeerId> = self.admitted.iter().copied().collect();
        for p in peers {
            self.swarm
                .behaviour_mut()
                .member
                .send_request(&p, hello.clone());
        }
    }

    /// What a peer's [`MemberHello`] says: revocations first (they may concern anyone,
    /// the sender included), then the sender's own certificate, if it is still pending.
    /// A revocation handled before costs a hash; a new one a signature check (under the
    /// gate's lock, one at a time) on the sender's budget.
    pub(super) fn on_member_hello(&mut self, peer: PeerId, hello: MemberHello) {
        let mut new = Vec::new();
        let now = now_ms();
        let mut over_budget = 0usize;
        for r in hello
            .revocations
            .into_iter()
            .take(MAX_REVOCATIONS_PER_MESSAGE)
        {
            let hash = match self.state.intake.screen_revocation(peer, &r, now) {
                Ok(Some(hash)) => hash,
                Ok(None) => continue,
                Err(_) => {
                    over_budget += 1;
                    continue;
                }
            };
            let learnt = self.gate.write(|g| g.learn_revocation(&r));
            if learnt.is_ok() {
                self.state.intake.revocation_handled(hash);
            }
            match learnt {
                Ok(Some(revoked)) if revoked == self.me => {
                    tracing::error!(from = %peer, "this node's membership was revoked");
                    self.revoked_self = true;
                }
                Ok(Some(revoked)) => {
                    tracing::info!(peer = %revoked, from = %peer, "learnt a revocation");
                    self.cut_off(revoked);
                    new.push(r);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(%peer, "ignored a revocation: {e}"),
            }
        }
        if over_budget > 0 {
            tracing::debug!(%peer, revocations = over_budget, "over the sender's revocation budget");
            self.dirty = true;
        }
        self.forward_revocations(new);
        // Only a pending peer is judged: an admitted one was already, and one neither
        // pending nor admitted is being disconnected.
        if !self.pending.contains_key(&peer) {
            return;
        }
        let now = now / 1000;
        match self.gate.read(|g| g.judge(&peer, hello.cert.as_ref(), now)) {
            Ok(_) => self.admit(peer),
            Err(reason) => self.refuse(peer, &reason.to_string()),
        }
    }
}
