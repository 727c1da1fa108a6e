//! One step's work at a hop: the shard's forward, the sampler on the last hop, and the
//! conversions between wire tensors and candle's; for one session ([`run_step`]) or for
//! several at once ([`run_batch`]: their rows stacked into one forward, so the weights
//! are read once for all of them, each session with its own KV cache and positions).
//!
//! No threads and no queue here: [`super::queue`] decides what runs together and when.

use candle_core::{DType, Device, Tensor};
use lamina_protocol::{ForwardInput, WireDType, WireTensor};
use lamina_sharding::executor::{LogitRows, SeqStep, Shard, ShardInput, ShardOutput};
use lamina_sharding::kv_cache::KvCache;
use lamina_sharding::sampling::Sampler;

use super::machine::Role;

/// A session's state that the compute thread works on: moved there for each step and back.
pub struct SessionCompute {
    pub cache: KvCache,
    pub sampler: Option<Sampler>,
    /// Tokens this hop drew (the repetition penalty's window, on the last hop).
    pub history: Vec<u32>,
}

/// What a step produced.
pub enum StepOut {
    Hidden(WireTensor),
    Token { id: u32, logits: Option<WireTensor> },
}

/// Why a step failed on this hop.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The input does not fit the session (wrong width, token ids out of range).
    #[error("bad input: {0}")]
    BadInput(String),
    /// The hop itself failed.
    #[error("{0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> StepError {
    StepError::Internal(e.to_string())
}

/// One session's step: its state, what it was sent and how its output is used.
pub struct Step {
    pub compute: SessionCompute,
    pub input: ForwardInput,
    pub rows: usize,
    pub dtype: WireDType,
    pub role: Role,
}

/// One forward step of `rows` rows through `shard`.
pub fn run_step(
    shard: &Shard,
    c: &mut SessionCompute,
    input: ForwardInput,
    rows: usize,
    dtype: WireDType,
    role: Role,
) -> Result<StepOut, StepError> {
    let input = shard_input(shard, input, rows)?;
    let out = shard
        .forward(&mut c.cache, input, LogitRows::Last)
        .map_err(|e| StepError::BadInput(e.to_string()))?;
    finish(shard, c, out, rows, dtype, role)
}

/// The steps of several sessions on `shard` as one forward; each result, in the order of
/// `steps`, is what [`run_step`] gives that session alone (bit for bit where the shard's
/// kernels are batch-invariant: see [`Shard::forward_batch`]). A step whose input is bad
/// fails alone; if the stacked forward fails, every step runs again by itself (the batch
/// changed no cache), so an error lands on the session that caused it.
pub fn run_batch(
    shard: &Shard,
    steps: Vec<Step>,
) -> Vec<(SessionCompute, Result<StepOut, StepError>)> {
    let n = steps.len();
    let mut done: Vec<Option<(SessionCompute, Result<StepOut, StepError>)>> =
        (0..n).map(|_| None).collect();
    let mut ready: Vec<(usize, Step, ShardInput)> = Vec::with_capacity(n);
    for (i, mut s) in steps.into_iter().enumerate() {
        let input = std::mem::replace(&mut s.input, ForwardInput::Tokens(Vec::new()));
        match shard_input(shard, input, s.rows) {
            Ok(input) => ready.push((i, s, input)),
            Err(e) => done[i] = Some((s.compute, Err(e))),
        }
    }
    let outs = {
        let mut seq: Vec<SeqStep<'_>> = ready
            .iter_mut()
            .map(|(_, s, input)| SeqStep {
                cache: &mut s.compute.cache,
                input: input.clone(),
                logits: LogitRows::Last,
            })
            .collect();
        shard.forward_batch(&mut seq)
    };
    match outs {
        Ok(outs) => {
            for ((i, mut s, _), out) in ready.into_iter().zip(outs) {
                let r = finish(shard, &mut s.compute, out, s.rows, s.dtype, s.role);
                done[i] = Some((s.compute, r));
            }
        }
        Err(e) => {
            tracing::debug!(
                seqs = ready.len(),
                "the stacked step failed ({e}): one by one"
            );
            for (i, mut s, input) in ready {
                let r = shard
                    .forward(&mut s.compute.cache, input, LogitRows::Last)
                    .map_err(|e| StepError::BadInput(e.to_string()))
                    .and_then(|out| finish(shard, &mut s.compute, out, s.rows, s.dtype, s.role));
                done[i] = Some((s.compute, r));
            }
        }
    }
    done.into_iter().flatten().collect()
}

/// The wire input as the shard's: token ids as they are, hidden states as an f32
/// `(rows, dim)` tensor.
fn shard_input(shard: &Shard, input: ForwardInput, rows: usize) -> Result<ShardInput, StepError> {
    match input {
        ForwardInput::Tokens(t) => Ok(ShardInput::Tokens(t)),
        ForwardInput::Hidden(h) => {
            let v = h.to_f32().map_err(|e| StepError::BadInput(e.to_string()))?;
            let dim = shard.config().dim;
            Ok(ShardInput::Hidden(
                Tensor::from_vec(v, (rows, dim), &Device::Cpu).map_err(internal)?,
            ))
        }
    }
}

/// What the hop sends on for a step's shard output: hidden states on the wire (the last
/// row only, in f32, for an entry that runs the head), or the token the sampler drew.
fn finish(
    shard: &Shard,
    c: &mut SessionCompute,
    out: ShardOutput,
    rows: usize,
    dtype: WireDType,
    role: Role,
) -> Result<StepOut, StepError> {
    let dim = shard.config().dim;
    let flat = |t: Tensor| -> Result<Vec<f32>, StepError> {
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(internal)
    };
    match (out, role) {
        (ShardOutput::Hidden(h), Role::ReturnLast) => {
            // The entry's head needs the last row only, and exactly: f32, whatever the
            // session's activation type.
            let last = h.narrow(0, rows.saturating_sub(1), 1).map_err(internal)?;
            let v = flat(last)?;
            let shape = [1, u32::try_from(dim).map_err(internal)?];
            Ok(StepOut::Hidden(
                WireTensor::from_f32(&shape, &v, WireDType::F32).map_err(internal)?,
            ))
        }
        (ShardOutput::Hidden(h), _) => {
            let v = flat(h)?;
            let shape = [
                u32::try_from(rows).map_err(internal)?,
                u32::try_from(dim).map_err(internal)?,
            ];
            Ok(StepOut::Hidden(
                WireTensor::from_f32(&shape, &v, dtype).map_err(internal)?,
            ))
        }
        (ShardOutput::Logits(l), Role::Sample { return_logits }) => {
            let v = flat(l)?;
            let sampler = c
                .sampler
                .as_mut()
                .ok_or_else(|| internal("no sampler on the last hop"))?;
            let id = sampler.sample(&v, &c.history).map_err(internal)?;
            c.history.push(id);
            let logits = if return_logits {
                let n = u32::try_from(v.len()).map_err(internal)?;
                Some(WireTensor::from_f32(&[n], &v, WireDType::F32).map_err(internal)?)
            } else {
                None
            };
            Ok(StepOut::Token { id, logits })
        }
        (ShardOutput::Logits(_), _) => Err(internal("logits on a hop that does not sample")),
    }
}
