//! The model's two ends without its layers: the token embedding and the final norm and
//! output head, for an entry that keeps token ids and logits to itself (`--private-ends`
//! in the node). Remote hops then see hidden states only.
//!
//! Numerically the same code as a first or last shard's: the embedding decodes the same
//! rows, and the head runs on the kernel plan a shard of the whole model would choose, so
//! the logits (and the tokens drawn from them) equal those of a chain whose hops run the
//! ends themselves.

use super::embedding::Embedding;
use super::head::Head;
use super::linear::KernelPlan;
use super::shard::Shard;
use crate::config::ModelConfig;
use crate::kernels::KernelConfig;
use crate::source::ModelFile;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// Embedding and head of one model.
#[derive(Debug, Clone)]
pub struct Ends {
    cfg: Arc<ModelConfig>,
    device: Device,
    embedding: Embedding,
    head: Head,
}

impl Ends {
    /// Loads the embedding table (mapped, on the CPU) and the final norm and head.
    pub fn load(model: &ModelFile, device: &Device) -> Result<Self> {
        let cfg = Arc::new(model.config()?);
        let _span = tracing::info_span!("load_ends").entered();
        let embedding = Embedding::load(model, cfg.vocab_size, cfg.dim, device)?;
        let plan = KernelPlan::for_shard(
            model,
            &Shard::linear_weights_of(&cfg, 0..cfg.n_layers, true),
            *KernelConfig::global(),
        );
        let head = Head::load(model, &cfg, device, &plan)?;
        Ok(Self {
            cfg,
            device: device.clone(),
            embedding,
            head,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Hidden states of `ids`: `rows * dim` f32, row after row.
    pub fn embed(&self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::InvalidInput("no tokens to embed".into()));
        }
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            )));
        }
        Ok(self
            .embedding
            .forward(ids, &self.device)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// The logits (`vocab` f32) of one row of hidden states (`dim` f32).
    pub fn logits(&self, row: &[f32]) -> Result<Vec<f32>> {
        if row.len() != self.cfg.dim {
            return Err(Error::InvalidInput(format!(
                "a hidden-state row has {} values, the model's width is {}",
                row.len(),
                self.cfg.dim
            )));
        }
        let h = Tensor::from_slice(row, (1, self.cfg.dim), &self.device)?;
        let logits = self.head.forward(&h)?;
        super::step::logits_row(&logits, 0)
    }
}
