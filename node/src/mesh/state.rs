//! What the mesh event loop knows, and the snapshot of it the rest of the node reads.
//!
//! Only the event loop holds a [`MeshState`] and changes it; everyone else sees immutable
//! [`MeshSnapshot`]s published on a `tokio::sync::watch` channel after every change, and
//! waits for a state by waiting on that channel, not by polling.

use std::collections::HashMap;
use std::sync::Arc;

use lamina_protocol::{Announcement, SignedAnnouncement};
use libp2p::{Multiaddr, PeerId};

use super::bans::Bans;
use super::gossip::{Intake, RefusalCounts};
use super::limits::MeshLimits;
use super::paths::Path;
use super::plan::Observations;
use super::speed::SpeedBook;
use super::table::Table;
use super::MeshError;

/// This node's own record: the fields it sets, the sequence number of the last signed
/// copy, and whether it was withdrawn (then it is not refreshed any more).
pub struct OwnRecord {
    pub template: Announcement,
    pub seq: u64,
    pub withdrawn: bool,
}

impl OwnRecord {
    pub fn new(template: Announcement) -> Self {
        Self {
            template,
            seq: 0,
            withdrawn: false,
        }
    }

    /// The record signed at `now_ms` with a new seq, living `ttl_ms`; `listen` fills the
    /// addresses when the template names none.
    pub fn sign(
        &mut self,
        key: &libp2p::identity::Keypair,
        now_ms: u64,
        ttl_ms: u64,
        listen: &[Multiaddr],
    ) -> Result<SignedAnnouncement, MeshError> {
        // The seq must grow across restarts too (the identity persists, and a stale
        // record with a higher seq would shadow the new one): the clock provides that.
        self.seq = (self.seq + 1).max(now_ms);
        let mut a = self.template.clone();
        a.seq = self.seq;
        a.issued_at_ms = now_ms;
        a.expires_at_ms = now_ms.saturating_add(ttl_ms);
        a.withdrawn = self.withdrawn;
        if self.withdrawn {
            a.expires_at_ms = now_ms;
        }
        if a.listen_addrs.is_empty() {
            a.listen_addrs = listen.iter().take(8).map(|m| m.to_string()).collect();
        }
        Ok(a.sign(key)?)
    }
}

/// What the event loop owns.
pub struct MeshState {
    pub table: Table,
    pub obs: Observations,
    pub connected: usize,
    /// Listen addresses, each with the `/p2p/<id>` suffix.
    pub listen_addrs: Vec<Multiaddr>,
    /// A table exchange with some peer has completed.
    pub synced: bool,
    /// Records dropped for failing verification.
    pub rejected: u64,
    /// Connections the gate refused (no valid membership, or none in time).
    pub refused_connections: u64,
    /// Peers that failed generations, avoided for a while.
    pub bans: Bans,
    pub own: OwnRecord,
    /// The gossip intake: verified records by hash, every peer's budgets, refusals.
    pub intake: Intake,
    /// What this node measured of each hop's speed.
    pub speeds: SpeedBook,
    /// libp2p connections refused for exceeding a limit, by the limit.
    pub connections_refused: RefusalCounts,
    /// How each connected peer is reached, at its best.
    pub paths: HashMap<PeerId, Path>,
    /// What AutoNAT last said of this node's reachability, if anything.
    pub nat_status: Option<String>,
    /// What UPnP last said (`--upnp`): mapped, no gateway, ...
    pub upnp: Option<String>,
}

impl MeshState {
    pub fn new(own: OwnRecord) -> Self {
        Self::with_limits(own, MeshLimits::default())
    }

    pub fn with_limits(own: OwnRecord, limits: MeshLimits) -> Self {
        Self {
            table: Table::new(),
            obs: Observations::default(),
            connected: 0,
            listen_addrs: Vec::new(),
            synced: false,
            rejected: 0,
            refused_connections: 0,
            bans: Bans::default(),
            own,
            intake: Intake::new(limits),
            speeds: SpeedBook::default(),
            connections_refused: RefusalCounts::new(),
            paths: HashMap::new(),
            nat_status: None,
            upnp: None,
        }
    }

    /// The snapshot of this state at `now_ms`.
    pub fn snapshot(&self, now_ms: u64) -> MeshSnapshot {
        MeshSnapshot {
            records: Arc::new(
                self.table
                    .all_live(now_ms)
                    .into_iter()
                    .map(|(p, a)| (p, a.clone()))
                    .collect(),
            ),
            obs: self.obs.clone(),
            connected: self.connected,
            listen_addrs: self.listen_addrs.clone(),
            synced: self.synced,
            rejected: self.rejected,
            refused_connections: self.refused_connections,
            bans: self.bans.clone(),
            speeds: self.speeds.clone(),
            gossip_refused: self.intake.refused.clone(),
            gossip_verified: self.intake.verified,
            gossip_received: self.intake.received,
            connections_refused: self.connections_refused.clone(),
            paths: self.paths.clone(),
            nat_status: self.nat_status.clone(),
            upnp: self.upnp.clone(),
        }
    }
}

/// The mesh as the event loop last published it.
#[derive(Clone, Debug, Default)]
pub struct MeshSnapshot {
    /// Live records (any model) at publication, sorted by peer id. Routing and placement
    /// check expiry again at their own "now".
    pub records: Arc<Vec<(PeerId, Announcement)>>,
    pub obs: Observations,
    pub connected: usize,
    /// Listen addresses, each with the `/p2p/<id>` suffix.
    pub listen_addrs: Vec<Multiaddr>,
    pub synced: bool,
    pub rejected: u64,
    /// Connections the gate refused.
    pub refused_connections: u64,
    pub bans: Bans,
    /// What this node measured of each hop's speed.
    pub speeds: SpeedBook,
    /// Gossiped records (and sync requests) refused, by reason.
    pub gossip_refused: RefusalCounts,
    /// Gossiped records verified (each distinct record once).
    pub gossip_verified: u64,
    /// Gossiped records received (every copy from every peer).
    pub gossip_received: u64,
    /// libp2p connections refused for exceeding a limit, by the limit.
    pub connections_refused: RefusalCounts,
    /// How each connected peer is reached, at its best.
    pub paths: HashMap<PeerId, Path>,
    /// What AutoNAT last said of this node's reachability, if anything.
    pub nat_status: Option<String>,
    /// What UPnP last said, with `--upnp`.
    pub upnp: Option<String>,
}

impl MeshSnapshot {
    /// The records of `model` still live at `now_ms`.
    pub fn live(
        &self,
        model: &lamina_protocol::ModelId,
        now_ms: u64,
    ) -> Vec<(PeerId, &Announcement)> {
        self.records
            .iter()
            .filter(|(_, a)| &a.model_id == model && a.is_live(now_ms))
            .map(|(p, a)| (*p, a))
            .collect()
    }

    /// When the newest live incarnation of `peer` started, from `peer`'s own record: the
    /// table keys records by the peer that signed them, so no other peer's record (and
    /// no relay) can speak for it. An incarnation said to start after the record was
    /// issued is nonsense and ignored (it would otherwise lift every later ban at once).
    pub fn started_at(&self, peer: &PeerId) -> Option<u64> {
        self.records
            .iter()
            .filter(|(p, a)| p == peer && a.started_at_ms <= a.issued_at_ms)
            .map(|(_, a)| a.started_at_ms)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::table::tests::record;
    use libp2p::identity::Keypair;

    /// A ban on a peer is lifted by that peer's own signed restart, and by nothing else:
    /// not another peer's restart, not a record naming it but signed by someone else,
    /// not a restart dated after its own record.
    #[test]
    fn a_ban_is_lifted_only_by_the_peers_own_signed_restart() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (pa, pb) = (a.public().to_peer_id(), b.public().to_peer_id());
        let t = 1_000_000;
        let mut own = record(&a, 1, t, None);
        own.started_at_ms = t - 50_000;
        let mut st = MeshState::new(OwnRecord::new(own.clone()));
        st.table.insert(own.sign(&a).unwrap(), t).unwrap();
        st.bans.fail(pa, t + 1);
        let banned = |st: &MeshState, now| {
            let snap = st.snapshot(now);
            snap.bans.banned(now, |p| snap.started_at(p))
        };
        assert_eq!(banned(&st, t + 2), vec![pa]);

        // Another peer restarts after the failure.
        let mut other = record(&b, 1, t + 10, None);
        other.started_at_ms = t + 5;
        st.table.insert(other.sign(&b).unwrap(), t + 10).unwrap();
        assert_eq!(banned(&st, t + 20), vec![pa]);

        // A record naming the banned peer, signed by the other one: refused.
        let mut forged = record(&a, 2, t + 30, None);
        forged.started_at_ms = t + 25;
        assert!(st.table.insert(forged.sign(&b).unwrap(), t + 30).is_err());
        assert_eq!(banned(&st, t + 40), vec![pa]);

        // The peer's own record, but with an incarnation dated after its issue.
        let mut future = record(&a, 3, t + 50, None);
        future.started_at_ms = t + 10_000_000;
        st.table.insert(future.sign(&a).unwrap(), t + 50).unwrap();
        assert_eq!(banned(&st, t + 60), vec![pa]);

        // The peer's own signed restart: lifted.
        let mut restart = record(&a, 4, t + 70, None);
        restart.started_at_ms = t + 65;
        st.table.insert(restart.sign(&a).unwrap(), t + 70).unwrap();
        assert_eq!(banned(&st, t + 80), Vec::<PeerId>::new());
        assert_eq!(st.snapshot(t + 80).started_at(&pb), Some(t + 5));
    }
}
