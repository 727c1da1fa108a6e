//! Shards of one model chained in one process: the mesh's data flow without the network,
//! and a [`Stepper`] over it for the synchronous generation driver.

use super::Stepper;
use crate::executor::{LogitRows, Shard, ShardInput, ShardOutput};
use crate::kv_cache::KvCache;
use crate::layers::{check_split, LayerRange};
use crate::source::ModelFile;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// Shards of one model chained in one process: the mesh's data flow without the network.
#[derive(Debug, Clone)]
pub struct LocalChain {
    shards: Vec<Arc<Shard>>,
}

impl LocalChain {
    /// Loads `split` (contiguous ranges covering the model) from `model`.
    pub fn load(model: &ModelFile, split: &[LayerRange], device: &Device) -> Result<Self> {
        let cfg = Arc::new(model.config()?);
        check_split(split, cfg.n_layers)?;
        let shards = split
            .iter()
            .map(|r| Shard::load_with_config(model, cfg.clone(), *r, device).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shards })
    }

    /// Chains already loaded shards, checking they cover the model in order.
    pub fn from_shards(shards: Vec<Arc<Shard>>) -> Result<Self> {
        let first = shards
            .first()
            .ok_or_else(|| Error::BadSplit("no shards".into()))?;
        let n = first.config().n_layers;
        let ranges: Vec<LayerRange> = shards.iter().map(|s| s.range()).collect();
        check_split(&ranges, n)?;
        Ok(Self { shards })
    }

    pub fn shards(&self) -> &[Arc<Shard>] {
        &self.shards
    }

    pub fn config(&self) -> &crate::config::ModelConfig {
        self.shards[0].config()
    }

    /// A session (one cache per shard) of at most `max_len` positions.
    pub fn session(&self, max_len: usize) -> Result<ChainSession<'_>> {
        let caches = self
            .shards
            .iter()
            .map(|s| s.new_cache(max_len))
            .collect::<Result<Vec<_>>>()?;
        Ok(ChainSession {
            chain: self,
            caches,
        })
    }

    /// Runs `tokens` through every shard and returns the logits rows asked for.
    pub fn forward(
        &self,
        caches: &mut [KvCache],
        tokens: &[u32],
        rows: LogitRows,
    ) -> Result<Tensor> {
        let mut input = ShardInput::Tokens(tokens.to_vec());
        for (shard, cache) in self.shards.iter().zip(caches.iter_mut()) {
            match shard.forward(cache, input, rows)? {
                ShardOutput::Hidden(h) => input = ShardInput::Hidden(h),
                ShardOutput::Logits(l) => return Ok(l),
            }
        }
        Err(Error::BadSplit("the chain has no last shard".into()))
    }
}

/// One generation's caches over a [`LocalChain`].
pub struct ChainSession<'a> {
    chain: &'a LocalChain,
    caches: Vec<KvCache>,
}

impl ChainSession<'_> {
    /// Logits for every row of `tokens` (tests compare whole sequences).
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Tensor> {
        self.chain.forward(&mut self.caches, tokens, LogitRows::All)
    }
}

impl Stepper for ChainSession<'_> {
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let l = self
            .chain
            .forward(&mut self.caches, tokens, LogitRows::Last)?;
        Ok(l.get(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    fn position(&self) -> usize {
        self.caches.first().map(|c| c.len()).unwrap_or(0)
    }
}
