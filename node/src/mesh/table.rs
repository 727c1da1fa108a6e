//! The announcement table: the newest verified record of every peer, as this node knows
//! the mesh. Pure: "now" is an argument, so expiry and replacement are tested without
//! waiting.
//!
//! Records arrive from anyone (every node gossips its whole table), so each one is verified
//! here, once, before it can influence placement or routing. A record replaces the one
//! held for the same peer only if its `seq` is higher: a relay replaying an old record
//! cannot roll a node back, and a withdrawal (signed by the node) wins over the record it
//! withdraws and keeps it from being re-added by peers that still hold the old one.

use std::collections::HashMap;

use lamina_protocol::{AnnounceError, Announcement, MemberError, ModelId, SignedAnnouncement};
use libp2p::PeerId;

use crate::trust::Gate;

/// Why a record was not kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Announce(#[from] AnnounceError),
    /// Its signer is not a member of this node's mesh (a member relayed a stranger's
    /// record, or a revoked member's).
    #[error("its signer is not a member: {0}")]
    Gate(MemberError),
}

/// The most records one table holds: a peer flooding fresh identities cannot grow it
/// without bound. A full table refuses new peers until records expire.
pub const MAX_RECORDS: usize = 4096;

/// What `insert` did with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A peer not in the table.
    New,
    /// A newer record of a known peer.
    Updated,
    /// Not newer than what the table holds.
    Stale,
    /// The table is full.
    Full,
}

/// A verified record and its signed form (kept to gossip it on unchanged).
#[derive(Clone, Debug)]
pub struct Entry {
    pub record: Announcement,
    pub signed: SignedAnnouncement,
}

#[derive(Default, Debug, Clone)]
pub struct Table {
    entries: HashMap<PeerId, Entry>,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies `signed` at `now_ms` and keeps it if it is the newest of its peer (an
    /// open mesh's table: see [`insert_gated`](Self::insert_gated)).
    pub fn insert(
        &mut self,
        signed: SignedAnnouncement,
        now_ms: u64,
    ) -> Result<(PeerId, Inserted), Rejected> {
        self.insert_gated(signed, now_ms, &Gate::Open)
    }

    /// Verifies `signed` at `now_ms`, lets `gate` judge its signer by the membership
    /// certificate the record carries, and keeps it if it is the newest of its peer.
    pub fn insert_gated(
        &mut self,
        signed: SignedAnnouncement,
        now_ms: u64,
        gate: &Gate,
    ) -> Result<(PeerId, Inserted), Rejected> {
        let record = signed.verify(now_ms)?;
        let peer = record.peer().ok_or(AnnounceError::Field("peer_id"))?;
        gate.judge(&peer, record.member.as_ref(), now_ms / 1000)
            .map_err(Rejected::Gate)?;
        Ok((peer, self.insert_verified(peer, record, signed)))
    }

    /// What [`insert_verified`](Self::insert_verified) would do with a record of `peer`
    /// numbered `seq`, without doing it: the gossip intake judges a signer only for a
    /// record the table would take.
    pub fn would_take(&self, peer: &PeerId, seq: u64) -> Inserted {
        match self.entries.get(peer) {
            Some(old) if old.record.seq >= seq => Inserted::Stale,
            Some(_) => Inserted::Updated,
            None if self.entries.len() >= MAX_RECORDS => Inserted::Full,
            None => Inserted::New,
        }
    }

    /// Keeps `record` (verified by the caller, signed by `peer`, in `signed`) if it is
    /// the newest of its peer.
    pub fn insert_verified(
        &mut self,
        peer: PeerId,
        record: Announcement,
        signed: SignedAnnouncement,
    ) -> Inserted {
        let outcome = self.would_take(&peer, record.seq);
        if matches!(outcome, Inserted::New | Inserted::Updated) {
            self.entries.insert(peer, Entry { record, signed });
        }
        outcome
    }

    /// Whether `peer` has a record (live, expired-not-yet-swept, or withdrawn).
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.entries.contains_key(peer)
    }

    /// Drops records that expired at `now_ms`, withdrawals included once they are older
    /// than `keep_withdrawn_ms` (long enough for every peer to have seen them).
    pub fn expire(&mut self, now_ms: u64, keep_withdrawn_ms: u64) -> Vec<PeerId> {
        let mut gone = Vec::new();
        self.entries.retain(|p, e| {
            let keep = if e.record.withdrawn {
                now_ms < e.record.issued_at_ms.saturating_add(keep_withdrawn_ms)
            } else {
                now_ms < e.record.expires_at_ms
            };
            if !keep {
                gone.push(*p);
            }
            keep
        });
        gone
    }

    /// Forgets `peer`'s record (a revoked member); whether there was one.
    pub fn remove(&mut self, peer: &PeerId) -> bool {
        self.entries.remove(peer).is_some()
    }

    pub fn get(&self, peer: &PeerId) -> Option<&Entry> {
        self.entries.get(peer)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What to gossip, at most `max` records: the live ones first (placement and routing
    /// need them), then withdrawals, which must reach peers that still hold the record
    /// they withdraw.
    pub fn gossip(&self, now_ms: u64, max: usize) -> Vec<SignedAnnouncement> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by_key(|e| !e.record.is_live(now_ms));
        v.into_iter().take(max).map(|e| e.signed.clone()).collect()
    }

    /// The live records of `model` at `now_ms`, sorted by peer id so that every node
    /// iterates the mesh in the same order.
    pub fn live(&self, model: &ModelId, now_ms: u64) -> Vec<(PeerId, &Announcement)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| &e.record.model_id == model && e.record.is_live(now_ms))
            .map(|(p, e)| (*p, &e.record))
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    /// Every live record at `now_ms`, any model.
    pub fn all_live(&self, now_ms: u64) -> Vec<(PeerId, &Announcement)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| e.record.is_live(now_ms))
            .map(|(p, e)| (*p, &e.record))
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lamina_protocol::{LayerRange, NodeState, ANNOUNCEMENT_VERSION};
    use libp2p::identity::Keypair;

    pub fn record(key: &Keypair, seq: u64, now: u64, layers: Option<(u32, u32)>) -> Announcement {
        Announcement {
            version: ANNOUNCEMENT_VERSION,
            peer_id: key.public().to_peer_id().to_bytes(),
            model_id: ModelId::from_bytes([1; 32]),
            n_layers: 30,
            layers: layers.map(|(a, b)| LayerRange::new(a, b).unwrap()),
            state: NodeState::Serving,
            dataplane_addr: "127.0.0.1:1".into(),
            listen_addrs: vec![],
            api: None,
            tokens_per_sec: 100.0,
            free_slots: 8,
            max_memory: 0,
            lamina_version: "test".into(),
            seq,
            issued_at_ms: now,
            expires_at_ms: now + 9_000,
            withdrawn: false,
            started_at_ms: 0,
            member: None,
        }
    }

    #[test]
    fn newer_seq_replaces_older_never_the_reverse() {
        let k = Keypair::generate_ed25519();
        let mut t = Table::new();
        let r1 = record(&k, 1, 1000, Some((0, 10))).sign(&k).unwrap();
        let r2 = record(&k, 2, 1500, Some((10, 20))).sign(&k).unwrap();
        assert_eq!(t.insert(r1.clone(), 1000).unwrap().1, Inserted::New);
        assert_eq!(t.insert(r2, 1600).unwrap().1, Inserted::Updated);
        assert_eq!(t.insert(r1, 1700).unwrap().1, Inserted::Stale);
        let live = t.live(&ModelId::from_bytes([1; 32]), 1800);
        assert_eq!(live[0].1.layers, Some(LayerRange::new(10, 20).unwrap()));
    }

    #[test]
    fn forged_and_expired_records_are_refused() {
        let k = Keypair::generate_ed25519();
        let mut t = Table::new();
        let mut forged = record(&k, 1, 1000, Some((0, 10))).sign(&k).unwrap();
        forged.signature[0] ^= 0x55;
        assert!(t.insert(forged, 1000).is_err());
        let expired = record(&k, 1, 1000, Some((0, 10))).sign(&k).unwrap();
        assert!(t.insert(expired, 20_000).is_err());
        assert!(t.is_empty());
    }

    #[test]
    fn withdrawal_hides_the_peer_and_blocks_replays() {
        let k = Keypair::generate_ed25519();
        let mut t = Table::new();
        let live = record(&k, 1, 1000, Some((0, 10))).sign(&k).unwrap();
        t.insert(live.clone(), 1000).unwrap();
        let mut w = record(&k, 2, 2000, Some((0, 10)));
        w.withdrawn = true;
        t.insert(w.sign(&k).unwrap(), 2000).unwrap();
        let model = ModelId::from_bytes([1; 32]);
        assert!(t.live(&model, 2100).is_empty());
        assert_eq!(t.insert(live, 2200).unwrap().1, Inserted::Stale);
        assert_eq!(t.expire(2000 + 60_000, 30_000).len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn expiry_drops_silent_peers() {
        let k = Keypair::generate_ed25519();
        let mut t = Table::new();
        t.insert(record(&k, 1, 1000, None).sign(&k).unwrap(), 1000)
            .unwrap();
        assert!(t.expire(9_999, 30_000).is_empty());
        assert_eq!(t.expire(10_000, 30_000).len(), 1);
    }

    #[test]
    fn gossip_sends_live_records_before_withdrawals_and_caps_them() {
        let mut t = Table::new();
        let gone = Keypair::generate_ed25519();
        let mut w = record(&gone, 2, 1000, None);
        w.withdrawn = true;
        t.insert(w.sign(&gone).unwrap(), 1000).unwrap();
        for _ in 0..3 {
            let k = Keypair::generate_ed25519();
            t.insert(record(&k, 1, 1000, Some((0, 30))).sign(&k).unwrap(), 1000)
                .unwrap();
        }
        let all = t.gossip(1500, 10);
        assert_eq!(all.len(), 4);
        let last = all[3].verify(1500).unwrap();
        assert!(last.withdrawn, "the withdrawal goes last");
        assert_eq!(t.gossip(1500, 2).len(), 2);
    }
}
