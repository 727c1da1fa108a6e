//! Which contiguous range a node should host.
//!
//! Petals' rule is the baseline: take the range that maximises the minimum per-layer
//! throughput once this node's throughput is added to it. The minimum alone ties often
//! (while any layer is uncovered it stays zero wherever one node goes), so ranges are
//! compared *leximin*: by the sorted per-layer throughputs after placement, weakest first.
//! That maximises the minimum, then covers as many empty layers as possible, then lifts the
//! second-weakest layer, and so on; remaining ties go to the lowest start, so an empty mesh
//! fills from layer 0 and the choice is reproducible on every node.

use std::cmp::Ordering;

use crate::layers::LayerRange;

use super::coverage::Coverage;
use super::PlanError;

/// A range and how the mesh would look with this node on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub range: LayerRange,
    /// The weakest layer's tokens/s with this node on `range`.
    pub min_tokens_per_sec: f64,
    /// Layers still without a host with this node on `range`.
    pub uncovered_after: usize,
}

/// The outcome of [`check_rebalance`].
#[derive(Clone, Debug, PartialEq)]
pub struct Rebalance {
    /// The mesh with this node where it is.
    pub current: Placement,
    /// The best range of the same length for this node, given everyone else stays.
    pub best: Placement,
    /// Whether moving to `best.range` is worth reloading weights for.
    pub should_move: bool,
}

/// How many layers fit in a memory budget, capped at the model's layer count.
/// `bytes_per_layer == 0` (nothing to hold) means the whole model fits.
pub fn span_for_budget(
    budget_bytes: u64,
    bytes_per_layer: u64,
    n_layers: usize,
) -> Result<usize, PlanError> {
    if n_layers == 0 {
        return Err(empty_model());
    }
    let fits = budget_bytes
        .checked_div(bytes_per_layer)
        .map_or(n_layers, |n| usize::try_from(n).unwrap_or(usize::MAX));
    match fits.min(n_layers) {
        0 => Err(PlanError::BudgetTooSmall {
            budget_bytes,
            bytes_per_layer,
        }),
        n => Ok(n),
    }
}

/// The best range of `span` layers (capped at the model's count) for a node adding
/// `tokens_per_sec` to every layer it hosts, on top of `others` (the coverage of every
/// *other* live server: see [`super::MeshView::without`]).
pub fn choose_range(
    others: &Coverage,
    span: usize,
    tokens_per_sec: f64,
) -> Result<Placement, PlanError> {
    check_throughput(tokens_per_sec)?;
    let n = others.n_layers();
    if n == 0 {
        return Err(empty_model());
    }
    let span = span.min(n);
    if span == 0 {
        return Err(PlanError::BadRange {
            range: LayerRange { start: 0, end: 0 },
            n_layers: n,
        });
    }
    let base = others.throughputs();
    let mut best: Option<(LayerRange, Vec<f64>)> = None;
    for start in 0..=n - span {
        let range = super::lr(start, start + span);
        let key = leximin_key(&base, range, tokens_per_sec);
        let better = match &best {
            None => true,
            Some((_, b)) => leximin_cmp(&key, b) == Ordering::Greater,
        };
        if better {
            best = Some((range, key));
        }
    }
    let (range, _) = best.ok_or_else(empty_model)?;
    Ok(score(others, range, tokens_per_sec))
}

/// Whether a node hosting `current` should move, and where to. It moves when another
/// range of the same length leaves fewer layers uncovered (a gap makes the model
/// unservable, so closing one is always worth a reload), or, when the mesh is complete
/// either way, when it raises the weakest layer's throughput by more than `margin` (0.2
/// means by more than 20%). The margin keeps nodes from chasing measurement noise and
/// trading places with each other.
pub fn check_rebalance(
    others: &Coverage,
    current: LayerRange,
    tokens_per_sec: f64,
    margin: f64,
) -> Result<Rebalance, PlanError> {
    check_throughput(tokens_per_sec)?;
    let n = others.n_layers();
    if !current.fits(n) {
        return Err(PlanError::BadRange {
            range: current,
            n_layers: n,
        });
    }
    let now = score(others, current, tokens_per_sec);
    let best = choose_range(others, current.indices().len(), tokens_per_sec)?;
    let closes_gap = best.uncovered_after < now.uncovered_after;
    let lifts_min = now.uncovered_after == 0
        && best.uncovered_after == 0
        && best.min_tokens_per_sec > now.min_tokens_per_sec * (1.0 + margin);
    let should_move = best.range != current && (closes_gap || lifts_min);
    Ok(Rebalance {
        current: now,
        best,
        should_move,
    })
}

/// The mesh's per-layer throughputs with this node on `range`, sorted weakest first.
fn leximin_key(base: &[f64], range: LayerRange, tokens_per_sec: f64) -> Vec<f64> {
    let mut v = with_node(base, range, tokens_per_sec);
    v.sort_by(f64::total_cmp);
    v
}

fn leximin_cmp(a: &[f64], b: &[f64]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

fn with_node(base: &[f64], range: LayerRange, tokens_per_sec: f64) -> Vec<f64> {
    let mut v = base.to_vec();
    for t in &mut v[range.indices()] {
        *t += tokens_per_sec;
    }
    v
}

fn score(others: &Coverage, range: LayerRange, tokens_per_sec: f64) -> Placement {
    let after = with_node(&others.throughputs(), range, tokens_per_sec);
    let uncovered_after = others
        .layers()
        .iter()
        .enumerate()
        .filter(|(i, l)| l.servers == 0 && !range.indices().contains(i))
        .count();
    Placement {
        range,
        min_tokens_per_sec: after.iter().copied().min_by(f64::total_cmp).unwrap_or(0.0),
        uncovered_after,
    }
}

fn check_throughput(tokens_per_sec: f64) -> Result<(), PlanError> {
    if tokens_per_sec.is_finite() && tokens_per_sec > 0.0 {
        Ok(())
    } else {
        Err(PlanError::BadThroughput(tokens_per_sec))
    }
}

fn empty_model() -> PlanError {
    PlanError::BadRange {
        range: LayerRange { start: 0, end: 0 },
        n_layers: 0,
    }
}
