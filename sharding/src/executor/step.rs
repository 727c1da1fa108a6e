//! What one step of a shard takes and gives, per session.

use crate::kv_cache::KvCache;
use crate::Result;
use candle_core::{DType, Tensor};

/// What a shard is fed for one session in one step.
#[derive(Clone, Debug)]
pub enum ShardInput {
    /// Token ids (first shard only).
    Tokens(Vec<u32>),
    /// Hidden states `(rows, dim)`, f32 (every other shard).
    Hidden(Tensor),
}

impl ShardInput {
    pub fn rows(&self) -> Result<usize> {
        Ok(match self {
            ShardInput::Tokens(t) => t.len(),
            ShardInput::Hidden(h) => h.dim(0)?,
        })
    }
}

/// Which rows the last shard turns into logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Only the last row (what generation needs).
    Last,
    /// Every row (for tests that compare whole sequences).
    All,
}

/// The result of one session's step.
#[derive(Clone, Debug)]
pub enum ShardOutput {
    /// Hidden states `(rows, dim)` to send to the next shard.
    Hidden(Tensor),
    /// Logits `(n, vocab)` from the last shard.
    Logits(Tensor),
}

impl ShardOutput {
    pub fn into_tensor(self) -> Tensor {
        match self {
            ShardOutput::Hidden(t) | ShardOutput::Logits(t) => t,
        }
    }
}

/// One session's part of a batched step.
pub struct SeqStep<'a> {
    pub cache: &'a mut KvCache,
    pub input: ShardInput,
    pub logits: LogitRows,
}

/// One row of a logits tensor as a vector.
pub fn logits_row(logits: &Tensor, row: usize) -> Result<Vec<f32>> {
    Ok(logits.get(row)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}
