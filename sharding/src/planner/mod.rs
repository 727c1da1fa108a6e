//! Planners: which layers a node should host, and which chain of peers a token should
//! flow through.
//!
//! Everything here is pure: the caller hands in the announcements it holds, the RTTs it
//! measured and the current time as a number, and gets back a decision. No clocks, no I/O,
//! no libp2p, so that placement and routing are tested deterministically, and so that the
//! node, `lamina status` and the testnet all reason about the mesh with the same code.
//!
//! - [`view`]: the live servers of one model, filtered from raw announcement records.
//! - [`coverage`]: per-layer host counts and summed throughput; weakest and uncovered layers.
//! - [`placement`]: Petals' rule for choosing a range to host, and the rebalance check.
//! - [`routing`]: the cheapest chain of hops over layers `0..L` (or a sub-range, for failover).
//!
//! Units, chosen once for the whole module:
//! - Throughput is tokens per second for a server running its *whole announced range* for
//!   one sequence, because that is what a node measures directly (time one decode step
//!   through its shard) and what its announcement carries. Per-layer cost is derived as
//!   `1 / (tokens_per_sec * range_len)` seconds, assuming the layers of one model cost the
//!   same (they have identical shapes in the llama family).
//! - Times and costs are `f64` seconds; RTTs are [`std::time::Duration`]s as ping reports
//!   them; expiry instants and "now" are `u64` milliseconds on whatever clock the caller
//!   uses for both.

pub mod coverage;
pub mod placement;
pub mod routing;
pub mod view;

pub use coverage::{Coverage, LayerCoverage};
pub use placement::{check_rebalance, choose_range, span_for_budget, Placement, Rebalance};
pub use routing::{
    plan_route, plan_sub_route, replace_hop, route_cost, Hop, Route, RouteParams, DEFAULT_RTT,
    DEFAULT_TIE_EPSILON_SECS,
};
pub use view::{MeshView, Rejection, ServerId, ServerRecord};

use crate::layers::LayerRange;

/// Why a plan could not be made. Kept apart from [`crate::Error`] because planning failures
/// are about the mesh's state (nobody serves some layers), not about model files, and the
/// node maps them to their own responses (a 503 naming the layers, a retry later).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "{} not served by any live peer{}",
        subject(.uncovered),
        skipped_note(*.full, *.excluded)
    )]
    Uncovered {
        /// The range the chain had to cover (`0..L`, or the sub-range being re-planned).
        wanted: LayerRange,
        /// Maximal runs of layers no usable server hosts, in order.
        uncovered: Vec<LayerRange>,
        /// Live servers skipped because they had no free session slot.
        full: usize,
        /// Live servers skipped because the caller excluded them.
        excluded: usize,
    },

    #[error(
        "a memory budget of {budget_bytes} bytes does not hold one layer ({bytes_per_layer} bytes)"
    )]
    BudgetTooSmall {
        budget_bytes: u64,
        bytes_per_layer: u64,
    },

    #[error("layer range {range} is not inside the model's layers 0..{n_layers}, or is empty")]
    BadRange { range: LayerRange, n_layers: usize },

    #[error("throughput {0} tokens/s is not a positive finite number")]
    BadThroughput(f64),

    #[error("the route has {len} hops, there is no hop {index}")]
    NoSuchHop { index: usize, len: usize },
}

/// Writes ranges as `3..5, 12..18`, the notation operators type for `--layers`.
pub fn format_ranges(ranges: &[LayerRange]) -> String {
    ranges
        .iter()
        .map(LayerRange::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// "layer 4..5 is" for one layer, "layers 4..6 are" for several.
fn subject(ranges: &[LayerRange]) -> String {
    let plural = ranges.len() > 1 || ranges.iter().any(|r| r.len() > 1);
    let (noun, verb) = if plural {
        ("layers", "are")
    } else {
        ("layer", "is")
    };
    format!("{noun} {} {verb}", format_ranges(ranges))
}

/// Says which live peers were passed over, so "not served" is not mistaken for "nobody
/// announced it" when the cause is a full or banned peer.
fn skipped_note(full: usize, excluded: usize) -> String {
    match (full, excluded) {
        (0, 0) => String::new(),
        (f, 0) => format!(" with a free session slot ({f} full)"),
        (0, e) => format!(" that is not excluded ({e} excluded)"),
        (f, e) => format!(" that is usable ({f} full, {e} excluded)"),
    }
}

/// A range from `usize` bounds, unchecked (the planners work in indices; bounds past
/// `u32::MAX` saturate and fail the range checks).
pub(crate) fn lr(start: usize, end: usize) -> LayerRange {
    let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    LayerRange {
        start: u(start),
        end: u(end),
    }
}

/// Maximal runs of `true` in `mask`, offset by `base`, as ranges.
pub(crate) fn runs(mask: impl IntoIterator<Item = bool>, base: usize) -> Vec<LayerRange> {
    let mut out = Vec::new();
    let mut start = None;
    let mut i = base;
    for on in mask {
        match (on, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push(lr(s, i));
                start = None;
            }
            _ => {}
        }
        i += 1;
    }
    if let Some(s) = start {
        out.push(lr(s, i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_maximal() {
        let m = [false, true, true, false, true];
        assert_eq!(
            runs(m, 10),
            vec![
                LayerRange { start: 11, end: 13 },
                LayerRange { start: 14, end: 15 }
            ]
        );
        assert!(runs([false; 3], 0).is_empty());
    }

    #[test]
    fn messages_name_layers() {
        let e = PlanError::Uncovered {
            wanted: LayerRange { start: 0, end: 30 },
            uncovered: vec![LayerRange { start: 12, end: 18 }],
            full: 0,
            excluded: 0,
        };
        assert_eq!(
            e.to_string(),
            "layers 12..18 are not served by any live peer"
        );
        let e = PlanError::Uncovered {
            wanted: LayerRange { start: 0, end: 30 },
            uncovered: vec![LayerRange { start: 4, end: 5 }],
            full: 2,
            excluded: 1,
        };
        assert_eq!(
            e.to_string(),
            "layer 4..5 is not served by any live peer that is usable (2 full, 1 excluded)"
        );
    }
}
