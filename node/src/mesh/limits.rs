//! What one peer can make this node's mesh side spend, in one place: gossip verification,
//! sync requests, libp2p connections, and how long the state of a departed peer is kept.
//! Every figure has a documented default; [`MeshLimits::default`] is what a node runs with.

use std::time::Duration;

/// Bounds of the mesh side of a node.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeshLimits {
    /// Records whose signature one sending peer can make this node verify per second
    /// (records seen before cost a hash, not a verification, and are not counted).
    /// Default 256: every record of a full table re-signed every 3 s
    /// ([`super::REFRESH_INTERVAL`]) still gets through once several peers relay it.
    pub verify_per_sec: f64,
    /// Verifications one peer may spend at once. Default 1024, one whole sync message
    /// ([`super::behaviour::MAX_SYNC_RECORDS`]): a joining node learns the whole table
    /// from its first neighbour in one round trip.
    pub verify_burst: f64,
    /// Records remembered as verified, by hash. Default 8192: twice the table's bound
    /// ([`super::table::MAX_RECORDS`]), so that every live record and the one replacing it
    /// fit in the two generations the cache sweeps.
    pub verified_cache: usize,
    /// Sync requests per second one peer is answered. Default 4: an honest peer sends one
    /// per [`super::behaviour::SYNC_INTERVAL`] plus one per change of its own record.
    /// Each answer carries the whole table, so unanswered excess protects the uplink too.
    pub sync_per_sec: f64,
    /// Sync requests one peer may send at once. Default 8.
    pub sync_burst: f64,
    /// Membership messages per second one peer is answered (each answer carries every
    /// revocation known). Default 2: one per connection, plus forwarded revocations.
    pub member_per_sec: f64,
    /// Membership messages one peer may send at once. Default 16.
    pub member_burst: f64,
    /// Revocations not seen before whose signature one peer can make this node check
    /// per second. Default 16 (revocations are rare; known ones cost a hash).
    pub revocations_per_sec: f64,
    /// Revocation checks one peer may spend at once. Default 1024, one full message
    /// ([`super::behaviour::MAX_REVOCATIONS_PER_MESSAGE`]).
    pub revocations_burst: f64,
    /// Established inbound libp2p connections in total. Default 256 (twice the peers this
    /// node dials itself, [`super::behaviour::MAX_PEERS`]).
    pub max_inbound: u32,
    /// Inbound connections still in their handshake. Default 32.
    pub max_pending_inbound: u32,
    /// Established outbound connections in total. Default 256: this node dials the peers
    /// it gossips with ([`super::behaviour::MAX_PEERS`]) and the ones Kademlia and mDNS
    /// name, which a peer's answers could otherwise make unbounded.
    pub max_outbound: u32,
    /// Outbound connections still dialing. Default 64.
    pub max_pending_outbound: u32,
    /// Established connections with one peer, both directions. Default 4 (a QUIC and a
    /// TCP connection each way while two nodes dial each other at once).
    pub max_per_peer: u32,
    /// How long the RTT, reachability, budget and dial state of a peer that is neither
    /// connected nor in the table is kept. Default 30 s: a peer reconnecting within it
    /// keeps its figures; past it, nothing of it is left (metric labels included).
    pub departed_grace: Duration,
}

impl Default for MeshLimits {
    fn default() -> Self {
        Self {
            verify_per_sec: 256.0,
            verify_burst: 1024.0,
            verified_cache: 8192,
            sync_per_sec: 4.0,
            sync_burst: 8.0,
            member_per_sec: 2.0,
            member_burst: 16.0,
            revocations_per_sec: 16.0,
            revocations_burst: 1024.0,
            max_inbound: 256,
            max_pending_inbound: 32,
            max_outbound: 256,
            max_pending_outbound: 64,
            max_per_peer: 4,
            departed_grace: Duration::from_secs(30),
        }
    }
}
