//! What the mesh event loop knows, and the snapshot of it the rest of the node reads.
//!
//! Only the event loop holds a [`MeshState`] and changes it; everyone else sees immutable
//! [`MeshSnapshot`]s published on a `tokio::sync::watch` channel after every change, and
//! waits for a state by waiting on that channel, not by polling.

use std::sync::Arc;

use lamina_protocol::{Announcement, SignedAnnouncement};
use libp2p::{Multiaddr, PeerId};

use super::bans::Bans;
use super::plan::Observations;
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
}

impl MeshState {
    pub fn new(own: OwnRecord) -> Self {
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

    /// When the newest live incarnation of `peer` started (its own signed record).
    pub fn started_at(&self, peer: &PeerId) -> Option<u64> {
        self.records
            .iter()
            .filter(|(p, _)| p == peer)
            .map(|(_, a)| a.started_at_ms)
            .max()
    }
}
