//! The chain of hops a token flows through.
//!
//! Cost model, per token: each hop costs the layers it runs times its server's seconds per
//! layer, plus that server's RTT as measured from the planning node. The RTT stands in for
//! the link into the hop (entry to first hop, then hop to hop) because the planner knows
//! only its own RTTs, not the pairwise ones; a round trip rather than a one-way time also
//! roughly pays for the last hop's token travelling back. A server the planner has not
//! pinged costs [`RouteParams::default_rtt`], so measured peers win ties against unknown
//! ones only on their merits. An entry node that hosts layers itself should give its own
//! record an RTT of zero.
//!
//! Search: a hop may use any contiguous sub-range of its server's range, so the chain is a
//! path over the layer boundaries `a..=b` whose edges `i -> j` cost the cheapest server able
//! to run layers `i..j`. A dynamic program over (hops used, boundary) gives, for every hop
//! count, the cheapest chain with exactly that many hops; the answer is the fewest hops
//! whose cost is within [`RouteParams::tie_epsilon_secs`] of the overall cheapest. That
//! makes "fewer hops at equal cost" exact, which a Dijkstra on cost alone cannot promise.
//! Work is O(servers x layers^2 + layers^3): under a millisecond for 80 layers and 40
//! servers.
//!
//! A server may appear twice in one chain, on two disjoint sub-ranges (a wide slow server
//! filling in around a fast narrow one), which costs it two sessions although only one free
//! slot is checked. Forbidding repeats would turn the shortest path into a constrained path
//! search; the fewest-hops rule already merges a server's *adjacent* hops into one.

use std::collections::HashSet;
use std::time::Duration;

use crate::layers::LayerRange;

use super::view::{MeshView, ServerId, ServerRecord};
use super::{runs, PlanError};

/// The hop cost of a server the planner has no RTT for: a same-region internet round trip,
/// pessimistic for a LAN (0.15 ms on loopback) so that measured nearby peers are preferred.
pub const DEFAULT_RTT: Duration = Duration::from_millis(50);

/// Costs closer than this are equal: 1 µs is below what ping or a decode-step timer
/// resolves, and far above the rounding of a sum of a few hundred `f64` terms.
pub const DEFAULT_TIE_EPSILON_SECS: f64 = 1e-6;

/// Policy knobs of the router.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteParams {
    pub default_rtt: Duration,
    pub tie_epsilon_secs: f64,
    /// Hops run their server's whole announced range only. Today's session server runs
    /// exactly the range it loaded, so the node plans with this set; sub-range hops wait
    /// for an executor that can run part of its shard.
    pub whole_ranges: bool,
}

impl Default for RouteParams {
    fn default() -> Self {
        Self {
            default_rtt: DEFAULT_RTT,
            tie_epsilon_secs: DEFAULT_TIE_EPSILON_SECS,
            whole_ranges: false,
        }
    }
}

/// One hop: a server and the layers it runs for this chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Hop {
    pub server: ServerId,
    /// The layers this hop runs: inside `announced`, possibly shorter.
    pub layers: LayerRange,
    /// The server's whole announced range.
    pub announced: LayerRange,
    /// Estimated compute seconds per token for `layers`.
    pub compute_secs: f64,
    /// The RTT charged for reaching this hop, in seconds.
    pub rtt_secs: f64,
}

/// A chain of hops, in layer order, and its estimated cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub hops: Vec<Hop>,
    /// Sum over hops of compute plus RTT.
    pub est_secs_per_token: f64,
}

impl Route {
    /// The layers the chain covers, `hops[0].start..hops[last].end`.
    pub fn range(&self) -> Option<LayerRange> {
        Some(LayerRange {
            start: self.hops.first()?.layers.start,
            end: self.hops.last()?.layers.end,
        })
    }
}

/// The cheapest chain over all of the model's layers `0..L`, from the live servers with a
/// free session slot that are not in `exclude`.
pub fn plan_route(
    view: &MeshView,
    params: &RouteParams,
    exclude: &HashSet<ServerId>,
) -> Result<Route, PlanError> {
    let all = super::lr(0, view.n_layers());
    plan_sub_route(view, all, params, exclude)
}

/// The cheapest chain over layers `wanted` only, for failover: the hops before and after a
/// dead one keep their sessions and caches, and only the gap is re-planned.
pub fn plan_sub_route(
    view: &MeshView,
    wanted: LayerRange,
    params: &RouteParams,
    exclude: &HashSet<ServerId>,
) -> Result<Route, PlanError> {
    if !wanted.fits(view.n_layers()) {
        return Err(PlanError::BadRange {
            range: wanted,
            n_layers: view.n_layers(),
        });
    }
    let (usable, full, excluded) = usable_servers(view, wanted, exclude);
    let uncovered = uncovered_by(&usable, wanted);
    if !uncovered.is_empty() {
        return Err(PlanError::Uncovered {
            wanted,
            uncovered,
            full,
            excluded,
        });
    }
    let edges = Edges::build(&usable, wanted, params);
    let hops = cheapest_chain(&edges, params.tie_epsilon_secs).ok_or_else(|| {
        // Unreachable when every layer is covered (each layer is an edge of its own);
        // kept as an error rather than a panic all the same.
        PlanError::Uncovered {
            wanted,
            uncovered: vec![wanted],
            full,
            excluded,
        }
    })?;
    Ok(to_route(&usable, &edges, &hops, params.default_rtt))
}

/// `route` with hop `index` replaced by a chain over the same layers that avoids its server
/// (and `exclude`): the repair after a hop dies mid-generation.
pub fn replace_hop(
    view: &MeshView,
    route: &Route,
    index: usize,
    params: &RouteParams,
    exclude: &HashSet<ServerId>,
) -> Result<Route, PlanError> {
    let dead = route.hops.get(index).ok_or(PlanError::NoSuchHop {
        index,
        len: route.hops.len(),
    })?;
    let mut banned = exclude.clone();
    banned.insert(dead.server.clone());
    let patch = plan_sub_route(view, dead.layers, params, &banned)?;
    let mut hops = route.hops[..index].to_vec();
    hops.extend(patch.hops);
    hops.extend_from_slice(&route.hops[index + 1..]);
    let est_secs_per_token = hops.iter().map(|h| h.compute_secs + h.rtt_secs).sum();
    Ok(Route {
        hops,
        est_secs_per_token,
    })
}

/// The estimated seconds per token of a given chain of `(server, layers)` under the same
/// cost model, or `None` if a hop names an unknown server or runs layers outside its range.
/// For `/status` (what did the last route cost?) and for checking the planner.
pub fn route_cost(
    view: &MeshView,
    chain: &[(ServerId, LayerRange)],
    params: &RouteParams,
) -> Option<f64> {
    chain.iter().try_fold(0.0, |acc, (id, layers)| {
        let s = view.get(id)?;
        let inside =
            !layers.is_empty() && s.layers.start <= layers.start && layers.end <= s.layers.end;
        inside.then(|| acc + hop_secs(s, layers.indices().len(), params.default_rtt))
    })
}

/// The servers a chain over `wanted` may use, plus how many live ones were passed over
/// for being full and for being excluded (for the error message).
fn usable_servers<'a>(
    view: &'a MeshView,
    wanted: LayerRange,
    exclude: &HashSet<ServerId>,
) -> (Vec<&'a ServerRecord>, usize, usize) {
    let (mut full, mut excluded) = (0, 0);
    let mut usable = Vec::new();
    let overlapping = view
        .servers()
        .iter()
        .filter(|s| s.layers.start < wanted.end && wanted.start < s.layers.end);
    for s in overlapping {
        if exclude.contains(&s.id) {
            excluded += 1;
        } else if s.free_slots == 0 {
            full += 1;
        } else {
            usable.push(s);
        }
    }
    (usable, full, excluded)
}

fn uncovered_by(servers: &[&ServerRecord], wanted: LayerRange) -> Vec<LayerRange> {
    let hosted = |l: usize| servers.iter().any(|s| s.layers.indices().contains(&l));
    runs(wanted.indices().map(|l| !hosted(l)), wanted.indices().start)
}

fn hop_secs(s: &ServerRecord, n_layers: usize, default_rtt: Duration) -> f64 {
    n_layers as f64 * s.secs_per_layer() + s.rtt_secs(default_rtt)
}

/// For every pair of boundaries `i < j` inside the wanted range, the cheapest server able
/// to run layers `i..j` and its cost. Indices are relative to `wanted.start`.
struct Edges {
    start: usize,
    m: usize,
    /// `best[i * (m + 1) + j]`: (cost, index into the usable servers).
    best: Vec<Option<(f64, usize)>>,
}

impl Edges {
    fn build(servers: &[&ServerRecord], wanted: LayerRange, params: &RouteParams) -> Self {
        let default_rtt = params.default_rtt;
        let m = wanted.indices().len();
        let (w0, w1) = (wanted.indices().start, wanted.indices().end);
        let mut best: Vec<Option<(f64, usize)>> = vec![None; (m + 1) * (m + 1)];
        for (k, s) in servers.iter().enumerate() {
            let (s0, s1) = (s.layers.indices().start, s.layers.indices().end);
            if params.whole_ranges && (s0 < w0 || s1 > w1) {
                continue;
            }
            let lo = s0.max(w0) - w0;
            let hi = s1.min(w1) - w0;
            for i in lo..hi {
                let js = if params.whole_ranges {
                    hi..=hi
                } else {
                    i + 1..=hi
                };
                if params.whole_ranges && i != lo {
                    break;
                }
                for j in js {
                    let cost = hop_secs(s, j - i, default_rtt);
                    let slot = &mut best[i * (m + 1) + j];
                    if beats(cost, s, *slot, servers) {
                        *slot = Some((cost, k));
                    }
                }
            }
        }
        Self { start: w0, m, best }
    }

    fn get(&self, i: usize, j: usize) -> Option<(f64, usize)> {
        self.best[i * (self.m + 1) + j]
    }
}

/// Cheaper wins; at exactly equal cost the lower server id, so the chain does not depend
/// on the order servers were listed in.
fn beats(
    cost: f64,
    s: &ServerRecord,
    slot: Option<(f64, usize)>,
    servers: &[&ServerRecord],
) -> bool {
    match slot {
        None => true,
        Some((c, k)) => cost < c || (cost == c && s.id < servers[k].id),
    }
}

/// The boundaries `[0, b1, .., m]` (relative) of the fewest-hop chain within `eps` of the
/// cheapest. `dp[h][j]` is the cheapest way to reach boundary `j` in exactly `h` hops.
fn cheapest_chain(edges: &Edges, eps: f64) -> Option<Vec<usize>> {
    let m = edges.m;
    let mut dp: Vec<Vec<Option<(f64, usize)>>> = vec![vec![None; m + 1]; m + 1];
    dp[0][0] = Some((0.0, 0));
    for h in 1..=m {
        for j in 1..=m {
            dp[h][j] = best_step(&dp[h - 1], edges, j);
        }
    }
    let min = (1..=m)
        .filter_map(|h| dp[h][m])
        .map(|(c, _)| c)
        .min_by(f64::total_cmp)?;
    let hops = (1..=m).find(|&h| dp[h][m].is_some_and(|(c, _)| c <= min + eps))?;
    let mut bounds = vec![m];
    let mut j = m;
    for h in (1..=hops).rev() {
        let (_, i) = dp[h][j]?;
        bounds.push(i);
        j = i;
    }
    bounds.reverse();
    Some(bounds)
}

/// The cheapest predecessor boundary `i` for reaching `j` from row `prev`; at equal cost
/// the lowest `i`, for determinism.
fn best_step(prev: &[Option<(f64, usize)>], edges: &Edges, j: usize) -> Option<(f64, usize)> {
    let mut best: Option<(f64, usize)> = None;
    for (i, reach) in prev.iter().enumerate().take(j) {
        let (Some((ci, _)), Some((ce, _))) = (reach, edges.get(i, j)) else {
            continue;
        };
        let c = ci + ce;
        if best.is_none_or(|(b, _)| c < b) {
            best = Some((c, i));
        }
    }
    best
}

fn to_route(
    servers: &[&ServerRecord],
    edges: &Edges,
    bounds: &[usize],
    default_rtt: Duration,
) -> Route {
    let hops: Vec<Hop> = bounds
        .windows(2)
        .filter_map(|w| {
            let (_, k) = edges.get(w[0], w[1])?;
            let s = servers[k];
            let layers = super::lr(edges.start + w[0], edges.start + w[1]);
            Some(Hop {
                server: s.id.clone(),
                layers,
                announced: s.layers,
                compute_secs: layers.len() as f64 * s.secs_per_layer(),
                rtt_secs: s.rtt_secs(default_rtt),
            })
        })
        .collect();
    let est_secs_per_token = hops.iter().map(|h| h.compute_secs + h.rtt_secs).sum();
    Route {
        hops,
        est_secs_per_token,
    }
}
