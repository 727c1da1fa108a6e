//! Rotary position embeddings: tables precomputed per position, gathered once per step.

use crate::config::{ModelConfig, RopeStyle};
use crate::Result;
use candle_core::{Device, Tensor};

/// Precomputed rotary tables `(positions, head_dim / 2)`.
#[derive(Debug, Clone)]
pub(super) struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl Rope {
    pub(super) fn new(cfg: &ModelConfig, max_pos: usize, dev: &Device) -> Result<Self> {
        let half = cfg.rope_dim / 2;
        // theta_i = base^(-2i/d), the same recurrence as llama.cpp's rope.
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.rope_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_pos, half), dev)?,
            sin: Tensor::from_vec(sin, (max_pos, half), dev)?,
            style: cfg.rope_style,
        })
    }

    /// The rotation tables of one step, rows at positions `pos`: gathered once per step
    /// and shared by every layer's queries and keys.
    pub(super) fn tables(&self, pos: &Tensor) -> Result<RopeTables> {
        let rows = pos.dim(0)?;
        let half = self.cos.dim(1)?;
        Ok(RopeTables {
            cos: self.cos.index_select(pos, 0)?.reshape((rows, 1, half))?,
            sin: self.sin.index_select(pos, 0)?.reshape((rows, 1, half))?,
            style: self.style,
        })
    }
}

/// [`Rope`]'s tables gathered for one step's rows.
pub(super) struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl RopeTables {
    /// Rotates `x` of shape `(rows, heads, head_dim)`, each row at its own position.
    pub(super) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, heads, hd) = x.dims3()?;
        // (rows, heads, 1, hd): each row is its own "batch" with its own position, so
        // rows of different sessions rotate in one call without a copy.
        let x4 = x.reshape((rows, heads, 1, hd))?;
        let y = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x4, &self.cos, &self.sin)?,
            RopeStyle::Neox => candle_nn::rotary_emb::rope(&x4, &self.cos, &self.sin)?,
        };
        Ok(y.reshape((rows, heads, hd))?)
    }
}
