//! Where a node sits: its first range (auto placement over what the mesh announced) and
//! the rebalance loop that moves it when the mesh would be better served elsewhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lamina_protocol::LayerRange;
use lamina_sharding::source::ModelFile;
use libp2p::PeerId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::measure::load_and_measure;
use crate::mesh::plan::{initial_range, rebalance_target};
use crate::mesh::MeshHandle;
use crate::session::SessionServer;

/// How long a joining node listens to the mesh before choosing its layers.
pub const JOIN_WAIT: Duration = Duration::from_secs(3);
/// How often an auto-placed node checks whether it should move.
const REBALANCE_INTERVAL: Duration = Duration::from_secs(2);
/// A move must raise the weakest layer's throughput by more than this (20%), unless it
/// closes a gap: Petals' rule of thumb against chasing noise.
const REBALANCE_MARGIN: f64 = 0.2;
/// A node that just moved stays put this long, so the mesh sees its new record first.
const MOVE_COOLDOWN: Duration = Duration::from_secs(4);

/// A delay in `0..max_ms` derived from the peer id (stable per node, spread across nodes).
pub fn peer_jitter(peer: &PeerId, max_ms: u64) -> Duration {
    let h = blake3::hash(&peer.to_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    Duration::from_millis(u64::from_le_bytes(b) % max_ms.max(1))
}

/// The range an auto-placed node takes: after a first sync with the mesh (bounded by
/// `wait`) and a delay drawn from its peer id (nodes started together see the same empty
/// mesh; the delay spreads their choices so most see each other's), Petals' max-min rule
/// over everyone else's records within `span` layers.
pub async fn choose_initial(
    mesh: &MeshHandle,
    span: usize,
    wait: Duration,
) -> Result<LayerRange, lamina_sharding::planner::PlanError> {
    let me = mesh.peer_id();
    let synced = mesh.wait_synced(wait).await;
    tokio::time::sleep(peer_jitter(&me, 500)).await;
    let r = initial_range(&mesh.placement_view(), &me, span, 1.0)?;
    tracing::info!(synced, range = %r, span, "placed");
    Ok(r)
}

/// Moves the node when the mesh would be better served elsewhere (a gap it can close, or
/// a much weaker range), only while it has no sessions, loading the new layers before
/// the old are dropped. Sessions opened meanwhile keep the old shard until they end.
/// Publishes the range it serves on `layers`; runs until `stop`.
pub async fn rebalance_loop(
    mesh: MeshHandle,
    server: Arc<SessionServer>,
    model: Arc<ModelFile>,
    mut tps: f64,
    layers: watch::Sender<Option<LayerRange>>,
    stop: CancellationToken,
) {
    let me = mesh.peer_id();
    let mut last_move = Instant::now();
    let mut tick = tokio::time::interval(REBALANCE_INTERVAL + peer_jitter(&me, 300));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if last_move.elapsed() < MOVE_COOLDOWN || server.active_sessions() > 0 {
            continue;
        }
        let current = server.host().layers;
        let view = mesh.placement_view();
        let target = match rebalance_target(&view, &me, current, tps, REBALANCE_MARGIN) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!("rebalance check: {e}");
                continue;
            }
        };
        tracing::info!(from = %current, to = %target, "moving");
        match load_and_measure(model.clone(), target).await {
            Ok((shard, new_tps)) => {
                server.replace(shard);
                let claim = crate::session::faults::FaultPlan::announced_tps(
                    server.options().faults.as_deref(),
                    new_tps,
                );
                let announced = mesh
                    .update(move |a| {
                        a.layers = Some(target);
                        a.tokens_per_sec = claim;
                    })
                    .await;
                if let Err(e) = announced {
                    tracing::warn!("cannot announce the move: {e}");
                }
                layers.send_replace(Some(target));
                last_move = Instant::now();
                tps = new_tps;
                tracing::info!(layers = %target, tokens_per_sec = new_tps, "moved");
            }
            Err(e) => tracing::warn!("cannot load {target}: {e}"),
        }
    }
}
