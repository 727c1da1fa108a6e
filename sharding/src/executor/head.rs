//! The last shard's end: the final norm and the output head, turning hidden states into
//! logits.

use super::linear::{KernelPlan, Linear};
use super::norm::RmsNorm;
use crate::config::ModelConfig;
use crate::source::ModelFile;
use crate::Result;
use candle_core::{Device, Tensor};

/// Final norm and output head.
#[derive(Debug, Clone)]
pub(super) struct Head {
    norm: RmsNorm,
    output: Linear,
}

impl Head {
    /// Whether the output projection is batch-invariant ([`Linear::batch_invariant`]).
    pub(super) fn batch_invariant(&self) -> bool {
        self.output.batch_invariant()
    }

    /// The output weight's name: a tied head reads the embedding table as its weight (in
    /// place for the kernels' types, else as candle's own copy).
    fn output_name(cfg: &ModelConfig) -> &'static str {
        if cfg.tied_embeddings {
            "token_embd.weight"
        } else {
            "output.weight"
        }
    }

    /// `(name, n, k)` of the output weight, for the shard's [`KernelPlan`].
    pub(super) fn linear_weight(cfg: &ModelConfig) -> (String, usize, usize) {
        (Self::output_name(cfg).to_string(), cfg.vocab_size, cfg.dim)
    }

    pub(super) fn load(
        model: &ModelFile,
        cfg: &ModelConfig,
        device: &Device,
        plan: &KernelPlan,
    ) -> Result<Self> {
        let norm = RmsNorm::load(model, "output_norm.weight", cfg.dim, cfg.rms_eps, device)?;
        let output = Linear::load(
            model,
            Self::output_name(cfg),
            cfg.vocab_size,
            cfg.dim,
            device,
            plan,
        )?;
        Ok(Self { norm, output })
    }

    /// Logits `(rows, vocab)` of hidden states `h` `(rows, dim)`.
    pub(super) fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let h = self.norm.forward(h)?;
        self.output.forward(&h)
    }
}
