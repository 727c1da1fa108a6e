//! The layer-range executor: one shard of a Llama-family model on candle.
//!
//! A [`Shard`] holds the weights of layers `a..b` (plus the embedding when `a == 0` and
//! the final norm and output head when `b == L`) and runs forward steps for any number of
//! sessions, each with its own [`KvCache`](crate::kv_cache::KvCache). One step may carry
//! several sessions' rows at once: the weight matmuls run over all rows together (that
//! is where batching pays, the weights are streamed once), attention runs per session
//! against its own cache.
//!
//! candle-transformers' `quantized_llama` loads every layer and keeps its caches inside
//! the layers, so it cannot be cut; this executor reuses candle's building blocks
//! (`QMatMul`, the fused RMSNorm, `rope_i`/`rope`) with explicit caches and per-row
//! positions. Matmuls run on the quantized weights; nothing is dequantized at load except
//! float weights, which candle keeps as plain tensors.
//!
//! Modules, in the order a step runs through them:
//! - `step`: what a step takes and gives per session ([`ShardInput`], [`SeqStep`],
//!   [`LogitRows`], [`ShardOutput`]).
//! - `shard`: [`Shard`]: loads a range, validates a batch, stacks its rows, runs the
//!   blocks, commits the caches, cuts the outputs per session.
//! - `embedding`: token ids to rows, decoded from the mapped file on the CPU.
//! - `rope`: rotary tables, gathered once per step for every layer.
//! - `block`: one layer, `Block::load` and `Block::forward` (norm, QKV, RoPE,
//!   attention, output projection, norm, SwiGLU, residuals).
//! - `attention`: grouped-query attention against a session's cache, with an in-place
//!   causal softmax.
//! - `norm`: RMSNorm.
//! - `linear`: a weight on lamina's kernels or candle's `QMatMul`, and the shard's
//!   `KernelPlan` of which.
//! - `head`: the final norm and output head, hidden states to logits.
//! - `ends`: [`Ends`], the embedding and the head without any layer, for an entry that
//!   keeps token ids and logits to itself.

mod attention;
mod block;
mod embedding;
mod ends;
mod head;
mod linear;
mod norm;
mod rope;
mod shard;
mod step;

pub use ends::Ends;
pub use shard::Shard;
pub use step::{logits_row, LogitRows, SeqStep, ShardInput, ShardOutput};
