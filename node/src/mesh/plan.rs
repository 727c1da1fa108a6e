//! From the announcement table to the planners' terms and back: the mesh view of one
//! model, the chain for a request, where this node should sit. Pure: the table, the RTTs
//! and "now" are arguments.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lamina_protocol::{Announcement, LayerRange, ModelId, NodeState};
use lamina_sharding::planner::{
    check_rebalance, choose_range, plan_route, Coverage, MeshView, PlanError, RouteParams,
    ServerId, ServerRecord, DEFAULT_RTT,
};
use libp2p::PeerId;

use super::speed::SpeedBook;
use crate::pipeline::ChainHop;

/// What the planners need to know about each peer besides its record.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    /// RTT measured by ping, per peer.
    pub rtt: HashMap<PeerId, Duration>,
    /// Peers this node could not reach lately: left out of routes until they answer again.
    pub unreachable: HashSet<PeerId>,
    /// Peers this node reaches only through a relay's circuit.
    pub relayed: HashSet<PeerId>,
}

/// A relayed hop's RTT counts this many times in its cost: its sessions cross someone
/// else's relay (shared bandwidth, bounded circuits, one more machine that can fail), so
/// a direct server of the same layers and speed is preferred; where the relayed one is
/// the only server, it is used all the same.
pub const RELAYED_RTT_FACTOR: u32 = 3;

/// The planners' record of one announcement, or `None` for a node without layers.
fn server_record(
    peer: &PeerId,
    a: &Announcement,
    rtt: Option<Duration>,
    tokens_per_sec: f64,
) -> Option<ServerRecord> {
    Some(ServerRecord {
        id: ServerId::new(peer.to_string()),
        model: a.model_id.to_string(),
        layers: a.layers?,
        tokens_per_sec,
        free_slots: a.free_slots,
        expires_at_ms: a.expires_at_ms,
        rtt,
    })
}

/// A stand-in throughput for nodes that have not measured theirs yet (still loading):
/// placement must count them, or two nodes joining together pick the same range.
const PROVISIONAL_TOKENS_PER_SEC: f64 = 1.0;

/// The view placement works on: serving and loading nodes, reachable or not (a node that
/// is merely slow to answer this one still covers its layers for everyone else).
pub fn placement_view(
    live: &[(PeerId, &Announcement)],
    model: &ModelId,
    n_layers: usize,
    now_ms: u64,
) -> MeshView {
    let records = live.iter().filter_map(|(p, a)| {
        let tps = match a.state {
            NodeState::Serving if a.tokens_per_sec > 0.0 => f64::from(a.tokens_per_sec),
            _ => PROVISIONAL_TOKENS_PER_SEC,
        };
        server_record(p, a, None, tps)
    });
    MeshView::new(&model.to_string(), n_layers, now_ms, records)
}

/// How routes are spread over servers of about the same speed.
///
/// Why: the planner picks the cheapest chain, and two servers measured a few percent
/// apart (noise, on equal machines) would otherwise see one take every route: the other
/// idles while its twin queues every user's steps, and whichever measured a hair faster
/// gets all the traffic, which is also what a peer that lies about its speed wants. So
/// each plan scales every server's speed by its own draw from `1..1 + fraction` (seeded
/// per plan, so a plan is reproducible): servers within `fraction` of each other share
/// routes, about evenly when equal; a server faster by more than `fraction` still wins
/// every time. With measured speeds (the speed book) the share a server gets follows
/// what this node measured of it, never what it claims.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub seed: u64,
    pub fraction: f64,
}

impl Spread {
    /// The default width: the spread of honest probes of equal servers on a busy
    /// machine is of this order.
    pub const DEFAULT_FRACTION: f64 = 0.2;

    /// No spreading: every plan picks the strictly cheapest chain.
    pub const NONE: Self = Self {
        seed: 0,
        fraction: 0.0,
    };

    /// This plan's factor for `peer`'s speed, in `1..1 + fraction`.
    pub fn factor(&self, peer: &PeerId) -> f64 {
        if self.fraction <= 0.0 || !self.fraction.is_finite() {
            return 1.0;
        }
        let h = blake3::hash(&peer.to_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.as_bytes()[..8]);
        let mut rng = crate::ids::SplitMix(self.seed ^ u64::from_le_bytes(b));
        1.0 + self.fraction * rng.unit()
    }
}

/// The view routing works on: serving, reachable nodes, with their RTTs, each at the
/// speed the speed book believes of it (its measurement where this node measured it,
/// its announced figure, a prior, otherwise), scaled by this plan's `spread`. `me` (if it
/// serves layers) costs no RTT.
#[allow(clippy::too_many_arguments)]
pub fn routing_view(
    live: &[(PeerId, &Announcement)],
    model: &ModelId,
    n_layers: usize,
    now_ms: u64,
    obs: &Observations,
    speeds: &SpeedBook,
    me: &PeerId,
    spread: Spread,
) -> MeshView {
    let records = live
        .iter()
        .filter(|(p, a)| a.state == NodeState::Serving && !obs.unreachable.contains(p))
        .filter_map(|(p, a)| {
            let rtt = if p == me {
                Some(Duration::ZERO)
            } else if obs.relayed.contains(p) {
                let via = obs.rtt.get(p).copied().unwrap_or(DEFAULT_RTT);
                Some(via * RELAYED_RTT_FACTOR)
            } else {
                obs.rtt.get(p).copied()
            };
            let tps = speeds.effective(p, f64::from(a.tokens_per_sec), now_ms) * spread.factor(p);
            server_record(p, a, rtt, tps)
        });
    MeshView::new(&model.to_string(), n_layers, now_ms, records)
}

/// A planned chain, with what `/status` shows about it.
#[derive(Clone, Debug)]
pub struct PlannedRoute {
    pub hops: Vec<ChainHop>,
    pub peers: Vec<PeerId>,
    pub est_secs_per_token: f64,
}

/// The cheapest chain over `0..L` from `view`, as chain hops with addresses and pinned
/// certificates taken from the records.
pub fn route(view: &MeshView, live: &[(PeerId, &Announcement)]) -> Result<PlannedRoute, PlanError> {
    // Hops may run part of their node's range (the session server makes a sub-shard).
    let params = RouteParams::default();
    let r = plan_route(view, &params, &HashSet::new())?;
    let by_id: HashMap<String, (PeerId, &Announcement)> = live
        .iter()
        .map(|(p, a)| (p.to_string(), (*p, *a)))
        .collect();
    let mut hops = Vec::with_capacity(r.hops.len());
    let mut peers = Vec::with_capacity(r.hops.len());
    for h in &r.hops {
        let Some((peer, a)) = by_id.get(h.server.as_str()) else {
            return Err(PlanError::Uncovered {
                wanted: h.layers,
                uncovered: vec![h.layers],
                full: 0,
                excluded: 0,
            });
        };
        if h.layers.validate().is_err() {
            return Err(PlanError::BadRange {
                range: h.layers,
                n_layers: view.n_layers(),
            });
        }
        hops.push(ChainHop {
            layers: h.layers,
            addr: a.dataplane_addr.clone(),
            peer: *peer,
        });
        peers.push(*peer);
    }
    Ok(PlannedRoute {
        hops,
        peers,
        est_secs_per_token: r.est_secs_per_token,
    })
}

/// Where a joining node should sit: Petals' rule over everyone else's records.
pub fn initial_range(
    view: &MeshView,
    me: &PeerId,
    span: usize,
    tokens_per_sec: f64,
) -> Result<LayerRange, PlanError> {
    let others = Coverage::of(&view.without(&ServerId::new(me.to_string())));
    Ok(choose_range(&others, span, tokens_per_sec)?.range)
}

/// Whether this node should move from `current`, and where. When several nodes on the
/// same range would all move (they see the same mesh), only the one with the lowest peer
/// id does this round; the others see its new record before their next check. Without
/// that, nodes that joined together would keep trading places as a herd.
pub fn rebalance_target(
    view: &MeshView,
    me: &PeerId,
    current: LayerRange,
    tokens_per_sec: f64,
    margin: f64,
) -> Result<Option<LayerRange>, PlanError> {
    let my_id = ServerId::new(me.to_string());
    let others_view = view.without(&my_id);
    let others = Coverage::of(&others_view);
    let r = check_rebalance(&others, current, tokens_per_sec, margin)?;
    if !r.should_move {
        return Ok(None);
    }
    let senior_twin = others_view
        .servers()
        .iter()
        .any(|s| s.layers == current && s.id < my_id);
    Ok((!senior_twin).then_some(r.best.range))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::table::tests::record;
    use libp2p::identity::Keypair;

    fn keys(n: usize) -> Vec<(PeerId, Keypair)> {
        let mut v: Vec<_> = (0..n)
            .map(|_| {
                let k = Keypair::generate_ed25519();
                (k.public().to_peer_id(), k)
            })
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    #[test]
    fn herd_on_one_range_spreads_one_node_per_round() {
        // Four nodes that each fit 10 layers of 30 all joined on 0..10.
        let ks = keys(4);
        let mut recs: Vec<Announcement> = ks
            .iter()
            .map(|(_, k)| record(k, 1, 0, Some((0, 10))))
            .collect();
        let model = recs[0].model_id;
        for round in 0..4 {
            let live: Vec<(PeerId, &Announcement)> =
                ks.iter().map(|(p, _)| *p).zip(recs.iter()).collect();
            let view = placement_view(&live, &model, 30, 1);
            let moves: Vec<(usize, LayerRange)> = ks
                .iter()
                .enumerate()
                .filter_map(|(i, (p, _))| {
                    let cur = recs[i].layers.unwrap();
                    rebalance_target(&view, p, cur, 100.0, 0.2)
                        .unwrap()
                        .map(|t| (i, t))
                })
                .collect();
            assert!(moves.len() <= 1, "round {round}: {moves:?}");
            for (i, t) in moves {
                recs[i].layers = Some(t);
            }
        }
        let live: Vec<(PeerId, &Announcement)> =
            ks.iter().map(|(p, _)| *p).zip(recs.iter()).collect();
        let view = placement_view(&live, &model, 30, 1);
        assert!(Coverage::of(&view).is_complete(), "{recs:?}");
    }

    #[test]
    fn route_uses_serving_reachable_nodes_and_pins_their_certs() {
        let ks = keys(3);
        let mut a = record(&ks[0].1, 1, 0, Some((0, 15)));
        a.dataplane_addr = "127.0.0.1:1000".into();
        let b = record(&ks[1].1, 1, 0, Some((15, 30)));
        let mut c = record(&ks[2].1, 1, 0, Some((15, 30)));
        c.state = NodeState::Loading;
        let model = a.model_id;
        let live = vec![(ks[0].0, &a), (ks[1].0, &b), (ks[2].0, &c)];
        let obs = Observations::default();
        let view = routing_view(
            &live,
            &model,
            30,
            1,
            &obs,
            &SpeedBook::default(),
            &ks[0].0,
            Spread::NONE,
        );
        let r = route(&view, &live).unwrap();
        assert_eq!(r.peers, vec![ks[0].0, ks[1].0]);
        assert_eq!(r.hops[0].addr, "127.0.0.1:1000");
        let mut obs = Observations::default();
        obs.unreachable.insert(ks[1].0);
        let view = routing_view(
            &live,
            &model,
            30,
            1,
            &obs,
            &SpeedBook::default(),
            &ks[0].0,
            Spread::NONE,
        );
        let e = route(&view, &live).unwrap_err();
        assert!(e.to_string().contains("15..30"), "{e}");
    }

    /// An inflated claim wins routes until the hop is measured; then it is ranked as an
    /// honest hop announcing its measured speed would be.
    #[test]
    fn routes_follow_measured_speed_not_claims() {
        let ks = keys(2);
        let honest = record(&ks[0].1, 1, 0, Some((0, 30)));
        let mut liar = record(&ks[1].1, 1, 0, Some((0, 30)));
        liar.tokens_per_sec = 100.0 * honest.tokens_per_sec;
        let model = honest.model_id;
        let live = vec![(ks[0].0, &honest), (ks[1].0, &liar)];
        let obs = Observations::default();
        let me = PeerId::random();
        let mut speeds = SpeedBook::default();
        let plan = |speeds: &SpeedBook| {
            let view = routing_view(&live, &model, 30, 1, &obs, speeds, &me, Spread::NONE);
            route(&view, &live).unwrap().peers
        };
        assert_eq!(plan(&speeds), vec![ks[1].0], "the claim is the prior");
        // Measured at half the honest hop's (announced, unmeasured) speed: demoted, and
        // routed as a hop announcing that speed would be.
        let measured = f64::from(honest.tokens_per_sec) / 2.0;
        let m = speeds
            .record(ks[1].0, measured, f64::from(liar.tokens_per_sec), 1)
            .unwrap();
        assert!(m.demoted);
        assert_eq!(plan(&speeds), vec![ks[0].0]);
        let mut as_honest = liar.clone();
        as_honest.tokens_per_sec = measured as f32;
        let live2 = vec![(ks[0].0, &honest), (ks[1].0, &as_honest)];
        let view = routing_view(
            &live2,
            &model,
            30,
            1,
            &obs,
            &SpeedBook::default(),
            &me,
            Spread::NONE,
        );
        assert_eq!(route(&view, &live2).unwrap().peers, vec![ks[0].0]);
        // Measured faster than the honest hop: it gets the route on its measurement.
        speeds.record(ks[1].0, 4.0 * measured, f64::from(liar.tokens_per_sec), 2);
        assert_eq!(plan(&speeds), vec![ks[1].0]);
    }

    /// Routes planned with spreading: equal servers share them about evenly, a server
    /// slower by more than the spread gets none, and a demoted liar gets exactly the
    /// routes an honest server announcing its measured speed would get.
    #[test]
    fn spread_routes_follow_measured_speed_and_a_liar_gets_an_honest_share() {
        let ks = keys(3);
        let a = record(&ks[0].1, 1, 0, Some((0, 30)));
        let b = record(&ks[1].1, 1, 0, Some((0, 30)));
        let mut liar = record(&ks[2].1, 1, 0, Some((0, 30)));
        let speed = f64::from(a.tokens_per_sec);
        liar.tokens_per_sec = (100.0 * speed) as f32;
        let model = a.model_id;
        let obs = Observations::default();
        let me = PeerId::random();
        let shares = |live: &[(PeerId, &Announcement)], speeds: &SpeedBook| {
            let mut n = HashMap::<PeerId, usize>::new();
            for seed in 0..3000 {
                let spread = Spread {
                    seed,
                    fraction: Spread::DEFAULT_FRACTION,
                };
                let view = routing_view(live, &model, 30, 1, &obs, speeds, &me, spread);
                for p in route(&view, live).unwrap().peers {
                    *n.entry(p).or_default() += 1;
                }
            }
            n
        };
        // The liar, measured at the honest speed: demoted.
        let mut speeds = SpeedBook::default();
        let m = speeds
            .record(ks[2].0, speed, f64::from(liar.tokens_per_sec), 1)
            .unwrap();
        assert!(m.demoted);
        let live = vec![(ks[0].0, &a), (ks[1].0, &b), (ks[2].0, &liar)];
        let lied = shares(&live, &speeds);
        for (p, _) in &live {
            let n = lied.get(p).copied().unwrap_or(0);
            assert!((800..=1200).contains(&n), "{p}: {n} of 3000 ({lied:?})");
        }
        // An honest twin announcing what the liar measured: the same routes, plan by plan.
        let mut twin = liar.clone();
        twin.tokens_per_sec = speed as f32;
        let live2 = vec![(ks[0].0, &a), (ks[1].0, &b), (ks[2].0, &twin)];
        assert_eq!(shares(&live2, &SpeedBook::default()), lied);
        // Measured 30% slower than the others (more than the spread): no routes.
        let mut slow = SpeedBook::default();
        slow.record(ks[2].0, speed / 1.3, f64::from(liar.tokens_per_sec), 1);
        assert_eq!(shares(&live, &slow).get(&ks[2].0), None);
    }

    /// Of two servers of the same layers and speed, the one reached directly gets the
    /// route; the relayed one still serves when it is the only one.
    #[test]
    fn a_relayed_hop_costs_more_than_a_direct_one() {
        let ks = keys(2);
        let a = record(&ks[0].1, 1, 0, Some((0, 30)));
        let b = record(&ks[1].1, 1, 0, Some((0, 30)));
        let model = a.model_id;
        let me = PeerId::random();
        let mut obs = Observations::default();
        for (p, _) in &ks {
            obs.rtt.insert(*p, Duration::from_millis(20));
        }
        obs.relayed.insert(ks[0].0);
        let live = vec![(ks[0].0, &a), (ks[1].0, &b)];
        let plan = |live: &[(PeerId, &Announcement)]| {
            let view = routing_view(
                live,
                &model,
                30,
                1,
                &obs,
                &SpeedBook::default(),
                &me,
                Spread::NONE,
            );
            route(&view, live).unwrap().peers
        };
        assert_eq!(plan(&live), vec![ks[1].0], "the direct one");
        assert_eq!(
            plan(&live[..1]),
            vec![ks[0].0],
            "the relayed one when alone"
        );
    }
}
