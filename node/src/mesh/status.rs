//! The mesh as `/status` shows it, typed: peers with their ranges, state, speed, RTT and
//! bans; coverage per layer; the last route. Built from a snapshot (pure); the API layer
//! turns it into JSON.

use std::collections::HashMap;
use std::time::Duration;

use lamina_protocol::{LayerRange, ModelId, NodeState};
use lamina_sharding::planner::Coverage;
use libp2p::{Multiaddr, PeerId};

use super::plan;
use super::state::MeshSnapshot;

/// One peer as this node sees it.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub peer_id: PeerId,
    pub is_self: bool,
    pub layers: Option<LayerRange>,
    pub state: NodeState,
    /// What the peer announces (a prior only, see [`super::speed`]).
    pub tokens_per_sec: f32,
    /// What this node measured of it, if it did.
    pub measured_tokens_per_sec: Option<f64>,
    /// What routing takes its speed to be now.
    pub routed_tokens_per_sec: f64,
    /// Measured far below its claim: ranked by measurement only from then on.
    pub demoted: bool,
    /// Routes this node planned through it (second chains of spot checks included).
    pub routes: u64,
    /// How this node reaches it (`direct`, `hole-punched`, `relayed`), if connected.
    pub path: Option<&'static str>,
    pub free_slots: u32,
    pub dataplane: String,
    pub api: Option<String>,
    pub rtt: Option<Duration>,
    pub reachable: bool,
    /// Routes avoid a peer that failed a generation until this runs out.
    pub banned_for: Option<Duration>,
    pub failures: u32,
    pub expires_in: Duration,
    pub version: String,
}

/// One layer's coverage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerStatus {
    pub servers: usize,
    pub tokens_per_sec: f64,
}

/// The last route this node planned.
#[derive(Clone, Debug)]
pub enum RouteSummary {
    Planned {
        /// Peer, layers and data-plane address of each hop.
        hops: Vec<(PeerId, LayerRange, String)>,
        est_secs_per_token: f64,
    },
    Failed(String),
}

/// The mesh as one node sees it.
#[derive(Clone, Debug)]
pub struct MeshStatus {
    pub peer_id: PeerId,
    pub model_id: ModelId,
    pub n_layers: usize,
    pub listen: Vec<Multiaddr>,
    pub connected_peers: usize,
    pub rejected_announcements: u64,
    /// Connections the membership gate refused.
    pub refused_connections: u64,
    pub peers: Vec<PeerStatus>,
    pub coverage: Vec<LayerStatus>,
    pub uncovered: Vec<LayerRange>,
    pub complete: bool,
    pub last_route: Option<RouteSummary>,
    /// What AutoNAT says of this node's reachability, once it said anything.
    pub nat_status: Option<String>,
    /// What UPnP says (`--upnp`): `mapped ADDR`, `no gateway`, `gateway not routable`.
    pub upnp: Option<String>,
}

/// What `snap` says about `model` at `now_ms`, as seen by `me`.
pub fn mesh_status(
    snap: &MeshSnapshot,
    me: PeerId,
    model_id: ModelId,
    n_layers: usize,
    now_ms: u64,
    last_route: Option<RouteSummary>,
    routes: &HashMap<PeerId, u64>,
) -> MeshStatus {
    let live = snap.live(&model_id, now_ms);
    let view = plan::routing_view(
        &live,
        &model_id,
        n_layers,
        now_ms,
        &snap.obs,
        &snap.speeds,
        &me,
        plan::Spread::NONE,
    );
    let coverage = Coverage::of(&view);
    let peers = live
        .iter()
        .map(|(p, a)| PeerStatus {
            peer_id: *p,
            is_self: *p == me,
            layers: a.layers,
            state: a.state,
            tokens_per_sec: a.tokens_per_sec,
            measured_tokens_per_sec: snap.speeds.get(p).map(|m| m.tokens_per_sec),
            routed_tokens_per_sec: snap
                .speeds
                .effective(p, f64::from(a.tokens_per_sec), now_ms),
            demoted: snap.speeds.get(p).is_some_and(|m| m.demoted),
            routes: routes.get(p).copied().unwrap_or(0),
            path: snap.paths.get(p).map(|x| x.as_str()),
            free_slots: a.free_slots,
            dataplane: a.dataplane_addr.clone(),
            api: a.api.clone(),
            rtt: snap.obs.rtt.get(p).copied(),
            reachable: !snap.obs.unreachable.contains(p),
            banned_for: snap.bans.remaining(p, now_ms, snap.started_at(p)),
            failures: snap.bans.failures(p, now_ms),
            expires_in: Duration::from_millis(a.expires_at_ms.saturating_sub(now_ms)),
            version: a.lamina_version.clone(),
        })
        .collect();
    MeshStatus {
        peer_id: me,
        model_id,
        n_layers,
        listen: snap.listen_addrs.clone(),
        connected_peers: snap.connected,
        rejected_announcements: snap.rejected,
        refused_connections: snap.refused_connections,
        peers,
        coverage: coverage
            .layers()
            .iter()
            .map(|l| LayerStatus {
                servers: l.servers,
                tokens_per_sec: l.tokens_per_sec,
            })
            .collect(),
        uncovered: coverage.uncovered(),
        complete: coverage.is_complete(),
        last_route,
        nat_status: snap.nat_status.clone(),
        upnp: snap.upnp.clone(),
    }
}
