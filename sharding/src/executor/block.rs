//! One transformer block: attention (with RoPE and the sessions' caches) and the SwiGLU
//! feed-forward, each behind an RMSNorm and a residual.

use super::attention::attention;
use super::linear::{KernelPlan, Linear};
use super::norm::RmsNorm;
use super::rope::RopeTables;
use super::step::SeqStep;
use crate::config::ModelConfig;
use crate::source::ModelFile;
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// The weights of one layer, and its head counts.
#[derive(Debug, Clone)]
pub(super) struct Block {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Block {
    /// Whether every linear layer is batch-invariant ([`Linear::batch_invariant`]).
    pub(super) fn batch_invariant(&self) -> bool {
        [
            &self.wq, &self.wk, &self.wv, &self.wo, &self.gate, &self.up, &self.down,
        ]
        .iter()
        .all(|l| l.batch_invariant())
    }

    /// `(name, n, k)` of the linear weights of layer `layer`, for the shard's
    /// [`KernelPlan`].
    pub(super) fn linear_weights(cfg: &ModelConfig, layer: usize) -> [(String, usize, usize); 7] {
        let (dim, q_dim, kv_dim) = dims(cfg);
        [
            ("attn_q.weight", q_dim, dim),
            ("attn_k.weight", kv_dim, dim),
            ("attn_v.weight", kv_dim, dim),
            ("attn_output.weight", dim, q_dim),
            ("ffn_gate.weight", cfg.ffn_dim, dim),
            ("ffn_up.weight", cfg.ffn_dim, dim),
            ("ffn_down.weight", dim, cfg.ffn_dim),
        ]
        .map(|(s, n, k)| (format!("blk.{layer}.{s}"), n, k))
    }

    /// Loads layer `layer` of `model`.
    pub(super) fn load(
        model: &ModelFile,
        cfg: &ModelConfig,
        layer: usize,
        device: &Device,
        plan: &KernelPlan,
    ) -> Result<Self> {
        let (dim, q_dim, kv_dim) = dims(cfg);
        let n = |s: &str| format!("blk.{layer}.{s}");
        let linear =
            |s: &str, out: usize, inp: usize| Linear::load(model, &n(s), out, inp, device, plan);
        Ok(Self {
            attn_norm: RmsNorm::load(model, &n("attn_norm.weight"), dim, cfg.rms_eps, device)?,
            wq: linear("attn_q.weight", q_dim, dim)?,
            wk: linear("attn_k.weight", kv_dim, dim)?,
            wv: linear("attn_v.weight", kv_dim, dim)?,
            wo: linear("attn_output.weight", dim, q_dim)?,
            ffn_norm: RmsNorm::load(model, &n("ffn_norm.weight"), dim, cfg.rms_eps, device)?,
            gate: linear("ffn_gate.weight", cfg.ffn_dim, dim)?,
            up: linear("ffn_up.weight", cfg.ffn_dim, dim)?,
            down: linear("ffn_down.weight", dim, cfg.ffn_dim)?,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// Runs the block on `x` `(rows, dim)`: the stacked rows of `steps`, `rows_of[i]`
    /// of them for session `i`, at the positions `rope` was gathered for. Appends each
    /// session's keys and values to layer `layer` of its cache (uncommitted).
    pub(super) fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        rope: &RopeTables,
        steps: &mut [SeqStep<'_>],
        rows_of: &[usize],
    ) -> Result<Tensor> {
        let (hd, nh, nkv) = (self.head_dim, self.n_heads, self.n_kv_heads);
        let rows = x.dim(0)?;
        let h = self.attn_norm.forward(x)?;
        let q = self.wq.forward(&h)?.reshape((rows, nh, hd))?;
        let k = self.wk.forward(&h)?.reshape((rows, nkv, hd))?;
        let v = self.wv.forward(&h)?.reshape((rows, nkv, hd))?;
        let q = rope.apply(&q)?;
        let k = rope.apply(&k)?;

        let mut outs = Vec::with_capacity(steps.len());
        let mut offset = 0;
        for (s, &n) in steps.iter_mut().zip(rows_of) {
            let qs = q.narrow(0, offset, n)?;
            let ks = k.narrow(0, offset, n)?.transpose(0, 1)?.contiguous()?;
            let vs = v.narrow(0, offset, n)?.transpose(0, 1)?.contiguous()?;
            offset += n;
            let start = s.cache.len();
            let (kc, vc) = s.cache.append(layer, &ks, &vs)?;
            outs.push(attention(&qs, &kc, &vc, start, nh, nkv, hd)?);
        }
        let attn = if outs.len() == 1 {
            outs.pop()
                .ok_or_else(|| Error::InvalidInput("empty".into()))?
        } else {
            Tensor::cat(&outs, 0)?
        };
        let x = (x + self.wo.forward(&attn)?)?;

        let h = self.ffn_norm.forward(&x)?;
        let g = candle_nn::ops::silu(&self.gate.forward(&h)?)?;
        let u = self.up.forward(&h)?;
        let y = self.down.forward(&(g * u)?)?;
        Ok((x + y)?)
    }
}

/// Model width, query width and key/value width.
fn dims(cfg: &ModelConfig) -> (usize, usize, usize) {
    (
        cfg.dim,
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
    )
}
