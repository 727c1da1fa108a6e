//! [`MeshHandle`]: what the rest of the node holds of the mesh. Cheap to clone; commands go
//! to the event loop, reads come from the latest published snapshot, and waits are waits
//! on the snapshot channel.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lamina_protocol::{Announcement, ModelId, SignedRevocation};
use lamina_sharding::planner::{format_ranges, MeshView, PlanError};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::behaviour::{build_swarm_with, SwarmOptions};
use super::event_loop::{Command, EventLoop};
use super::limits::MeshLimits;
use super::plan::{self, PlannedRoute};
use super::state::{MeshSnapshot, MeshState, OwnRecord};
use super::status::{mesh_status, MeshStatus, RouteSummary};
use super::MeshError;
use crate::ids::now_ms;
use crate::pipeline::ChainHop;
use crate::routes::{RouteError, RouteSource};
use crate::trust::SharedGate;

/// Commands queued for the event loop at most (updates, bans, a withdrawal: the node's own
/// traffic, not peers').
const COMMAND_QUEUE: usize = 256;

/// The handle the node uses to talk to the mesh.
#[derive(Clone)]
pub struct MeshHandle {
    commands: mpsc::Sender<Command>,
    snapshots: watch::Receiver<MeshSnapshot>,
    /// The last route planned here, for `/status` (planning happens on the handles).
    last_route: Arc<watch::Sender<Option<RouteSummary>>>,
    /// Routes planned here through each peer, for `/status`; departed peers pruned.
    routes_via: Arc<Mutex<HashMap<PeerId, u64>>>,
    /// Plans made here: each plan's [`plan::Spread`] seed.
    plans: Arc<AtomicU64>,
    /// The spread's width ([`plan::Spread::DEFAULT_FRACTION`] unless set).
    spread_fraction: f64,
    /// Opens and accepts data-plane session streams on the swarm's connections.
    streams: libp2p_stream::Control,
    me: PeerId,
    model_id: ModelId,
    n_layers: usize,
}

impl MeshHandle {
    /// Builds the swarm, starts its event loop on the current tokio runtime, and returns
    /// the handle. `template` is this node's record (its seq and times are set when it is
    /// first signed, by [`update`](Self::update)). `gate` judges every connection and
    /// record (and learns the revocations the loop receives). The loop stops (and the
    /// swarm with it) when `stop` is cancelled or every handle is dropped.
    pub fn start(
        key: Keypair,
        opts: &SwarmOptions,
        template: Announcement,
        gate: SharedGate,
        stop: CancellationToken,
    ) -> Result<Self, MeshError> {
        Self::start_with(key, opts, template, gate, stop, MeshLimits::default())
    }

    /// As [`start`](Self::start), under `limits`.
    pub fn start_with(
        key: Keypair,
        opts: &SwarmOptions,
        template: Announcement,
        gate: SharedGate,
        stop: CancellationToken,
        limits: MeshLimits,
    ) -> Result<Self, MeshError> {
        let swarm = build_swarm_with(&key, opts, &limits)?;
        let streams = swarm.behaviour().streams.new_control();
        let me = key.public().to_peer_id();
        let (model_id, n_layers) = (template.model_id, template.n_layers as usize);
        let state = MeshState::with_limits(OwnRecord::new(template), limits);
        let (snap_tx, snap_rx) = watch::channel(MeshSnapshot::default());
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let event_loop = EventLoop::new(swarm, state, key, cmd_rx, snap_tx, gate, limits)
            .with_nat(opts.behind_nat, opts.relay.is_some());
        tokio::spawn(event_loop.run(stop));
        Ok(Self {
            commands: cmd_tx,
            snapshots: snap_rx,
            last_route: Arc::new(watch::channel(None).0),
            routes_via: Arc::default(),
            plans: Arc::new(AtomicU64::new(u64::from_le_bytes(
                me.to_bytes()[..8].try_into().unwrap_or_default(),
            ))),
            spread_fraction: plan::Spread::DEFAULT_FRACTION,
            streams,
            me,
            model_id,
            n_layers,
        })
    }

    /// Sets how widely routes are spread over servers of about the same speed (0: always
    /// the cheapest chain).
    pub fn with_route_spread(mut self, fraction: f64) -> Self {
        self.spread_fraction = fraction;
        self
    }

    /// A control of the swarm's session streams: a [`crate::dataplane::Dialer`] opens
    /// sessions to [`crate::dataplane::P2P_ADDR`] hops with it, a session server accepts
    /// them with it ([`crate::session::SessionServer::serve_p2p`]).
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    pub fn model_id(&self) -> ModelId {
        self.model_id
    }

    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> MeshSnapshot {
        self.snapshots.borrow().clone()
    }

    /// A receiver of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<MeshSnapshot> {
        self.snapshots.clone()
    }

    /// Waits (at most `timeout`) until a snapshot satisfies `pred`; whether one did.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl FnMut(&MeshSnapshot) -> bool,
    ) -> bool {
        let mut rx = self.snapshots.clone();
        let r = tokio::time::timeout(timeout, rx.wait_for(pred)).await;
        let ok = matches!(&r, Ok(Ok(_)));
        drop(r);
        ok
    }

    /// The p2p addresses this node listens on, each with its `/p2p/<peer id>` suffix.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.snapshots.borrow().listen_addrs.clone()
    }

    /// Waits until the swarm listens (so the record can carry its addresses).
    pub async fn wait_listening(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| !s.listen_addrs.is_empty()).await
    }

    /// Waits until a first table exchange has completed, or `timeout` (a lone first node
    /// has nobody to sync with).
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.synced).await
    }

    /// Changes this node's record with `f`, signs it with a new seq and gossips it now.
    /// The loop re-signs it every [`super::REFRESH_INTERVAL`] from then on.
    pub async fn update(
        &self,
        f: impl FnOnce(&mut Announcement) + Send + 'static,
    ) -> Result<(), MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Update(Box::new(f), tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)?
    }

    /// Signs and gossips a withdrawal, and waits briefly for it to leave.
    pub async fn withdraw(&self) -> Result<(), MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Withdraw(tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .map_err(|_| MeshError::Stopped)?
            .map_err(|_| MeshError::Stopped)?
    }

    /// Applies a revocation signed by the mesh's authority: the peer leaves this node's
    /// table and connections at once, and the revocation goes to every admitted peer.
    pub async fn revoke(&self, r: SignedRevocation) -> Result<(), MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Revoke(r, tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)?
    }

    /// Avoids `peer` for a while: it failed a generation (see [`super::bans`] for how
    /// long). A later record does not lift the ban; its expiry or the peer's own restart
    /// does.
    pub fn ban(&self, peer: PeerId) {
        if let Err(e) = self.commands.try_send(Command::Ban(peer)) {
            tracing::warn!(%peer, "cannot record a ban: {e}");
        }
    }

    /// Records a measurement of `peer`'s speed (tokens/s through its announced range, as
    /// [`super::probe`] takes it): routing uses it from the next snapshot on.
    pub fn record_speed(&self, peer: PeerId, tokens_per_sec: f64) {
        if let Err(e) = self
            .commands
            .try_send(Command::Measured(peer, tokens_per_sec))
        {
            tracing::warn!(%peer, "cannot record a measurement: {e}");
        }
    }

    /// The peers a route could use now (serving this model's layers, reachable, not
    /// banned, with a free slot, not this node): the ones worth measuring.
    pub fn route_candidates(&self) -> Vec<(PeerId, Announcement)> {
        let snap = self.snapshot();
        let now = now_ms();
        let banned: HashSet<PeerId> = snap
            .bans
            .banned(now, |p| snap.started_at(p))
            .into_iter()
            .collect();
        snap.live(&self.model_id, now)
            .into_iter()
            .filter(|(p, a)| {
                *p != self.me
                    && a.layers.is_some()
                    && a.free_slots > 0
                    && a.state == lamina_protocol::NodeState::Serving
                    && !banned.contains(p)
                    && !snap.obs.unreachable.contains(p)
            })
            .map(|(p, a)| (p, a.clone()))
            .collect()
    }

    /// The live records of this node's model, cloned (sorted by peer id).
    pub fn live(&self) -> Vec<(PeerId, Announcement)> {
        let snap = self.snapshots.borrow();
        snap.live(&self.model_id, now_ms())
            .into_iter()
            .map(|(p, a)| (p, a.clone()))
            .collect()
    }

    /// The cheapest chain over the whole model from fresh records and measured RTTs.
    pub fn route(&self) -> Result<PlannedRoute, PlanError> {
        self.route_avoiding(&HashSet::new())
    }

    /// As [`route`](Self::route), also avoiding `exclude` (failover) and banned peers.
    pub fn route_avoiding(&self, exclude: &HashSet<PeerId>) -> Result<PlannedRoute, PlanError> {
        let snap = self.snapshot();
        let spread = plan::Spread {
            seed: self.plans.fetch_add(1, Ordering::Relaxed),
            fraction: self.spread_fraction,
        };
        let r = self.plan_in(&snap, exclude, spread);
        if let Ok(r) = &r {
            self.count_routes(&snap, &r.peers);
        }
        let summary = match &r {
            Ok(r) => RouteSummary::Planned {
                hops: r
                    .hops
                    .iter()
                    .map(|h| (h.peer, h.layers, h.addr.clone()))
                    .collect(),
                est_secs_per_token: r.est_secs_per_token,
            },
            Err(e) => RouteSummary::Failed(e.to_string()),
        };
        self.last_route.send_replace(Some(summary));
        r
    }

    /// Counts a planned route's peers; forgets peers without a record once the map
    /// outgrows the table (bounded by the table's own bound).
    fn count_routes(&self, snap: &MeshSnapshot, peers: &[PeerId]) {
        let Ok(mut m) = self.routes_via.lock() else {
            return;
        };
        for p in peers {
            *m.entry(*p).or_default() += 1;
        }
        if m.len() > 2 * snap.records.len() + 16 {
            m.retain(|p, _| snap.records.iter().any(|(q, _)| q == p));
        }
    }

    /// The cheapest chain in `snap` (each server's speed scaled by `spread`) avoiding
    /// `exclude` and banned peers (pure).
    fn plan_in(
        &self,
        snap: &MeshSnapshot,
        exclude: &HashSet<PeerId>,
        spread: plan::Spread,
    ) -> Result<PlannedRoute, PlanError> {
        let now = now_ms();
        let banned: HashSet<PeerId> = snap
            .bans
            .banned(now, |p| snap.started_at(p))
            .into_iter()
            .collect();
        let live: Vec<(PeerId, &Announcement)> = snap
            .live(&self.model_id, now)
            .into_iter()
            .filter(|(p, _)| !exclude.contains(p) && !banned.contains(p))
            .collect();
        let view = plan::routing_view(
            &live,
            &self.model_id,
            self.n_layers,
            now,
            &snap.obs,
            &snap.speeds,
            &self.me,
            spread,
        );
        plan::route(&view, &live)
    }

    /// Waits (at most `timeout`) until the mesh covers the model; the route then.
    pub async fn wait_covered(&self, timeout: Duration) -> Result<PlannedRoute, PlanError> {
        let none = HashSet::new();
        self.wait_for(timeout, |s| {
            self.plan_in(s, &none, plan::Spread::NONE).is_ok()
        })
        .await;
        self.route()
    }

    /// The mesh as placement sees it (loading nodes included).
    pub fn placement_view(&self) -> MeshView {
        let snap = self.snapshot();
        let now = now_ms();
        let live = snap.live(&self.model_id, now);
        plan::placement_view(&live, &self.model_id, self.n_layers, now)
    }

    /// The mesh as `/status` shows it.
    pub fn status(&self) -> MeshStatus {
        let last = self.last_route.borrow().clone();
        let routes = self
            .routes_via
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        mesh_status(
            &self.snapshots.borrow(),
            self.me,
            self.model_id,
            self.n_layers,
            now_ms(),
            last,
            &routes,
        )
    }
}

/// Requests are routed through the mesh.
impl RouteSource for MeshHandle {
    fn route(&self, exclude: &HashSet<PeerId>) -> Result<Vec<ChainHop>, RouteError> {
        match self.route_avoiding(exclude) {
            Ok(r) => Ok(r.hops),
            Err(PlanError::Uncovered { uncovered, .. }) => Err(RouteError::Uncovered {
                layers: format_ranges(&uncovered),
            }),
            Err(e) => Err(RouteError::Other(e.to_string())),
        }
    }

    fn report_failure(&self, peer: PeerId) {
        self.ban(peer);
    }
}
