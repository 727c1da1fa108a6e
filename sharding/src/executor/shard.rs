//! [`Shard`]: the weights of one layer range, loaded from a model file, and the step
//! that runs them for a batch of sessions.

use super::block::Block;
use super::embedding::Embedding;
use super::head::Head;
use super::linear::KernelPlan;
use super::rope::Rope;
use super::step::{LogitRows, SeqStep, ShardInput, ShardOutput};
use crate::config::ModelConfig;
use crate::kernels::KernelConfig;
use crate::kv_cache::KvCache;
use crate::layers::LayerRange;
use crate::source::ModelFile;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// The weights of one layer range, and the code to run them.
#[derive(Debug, Clone)]
pub struct Shard {
    cfg: Arc<ModelConfig>,
    range: LayerRange,
    device: Device,
    embedding: Option<Embedding>,
    blocks: Vec<Block>,
    head: Option<Head>,
    rope: Rope,
    /// Positions a session may reach: the model's context length.
    max_positions: usize,
}

impl Shard {
    /// Loads layers `range` of `model`, reading only the tensors this range needs.
    pub fn load(model: &ModelFile, range: LayerRange, device: &Device) -> Result<Self> {
        let cfg = model.config()?;
        Self::load_with_config(model, Arc::new(cfg), range, device)
    }

    /// As [`Shard::load`], with a config already read (shared between shards).
    pub fn load_with_config(
        model: &ModelFile,
        cfg: Arc<ModelConfig>,
        range: LayerRange,
        device: &Device,
    ) -> Result<Self> {
        crate::layers::check_range(range, cfg.n_layers)?;
        let _span = tracing::info_span!("load_shard", layers = %range).entered();
        let is_last = range.is_last(cfg.n_layers);

        let embedding = if range.is_first() {
            Some(Embedding::load(model, cfg.vocab_size, cfg.dim, device)?)
        } else {
            None
        };

        let linear = Self::linear_weights_of(&cfg, range.indices(), is_last);
        let plan = KernelPlan::for_shard(model, &linear, *KernelConfig::global());

        let blocks = range
            .indices()
            .map(|l| Block::load(model, &cfg, l, device, &plan))
            .collect::<Result<Vec<_>>>()?;
        let head = if is_last {
            Some(Head::load(model, &cfg, device, &plan)?)
        } else {
            None
        };
        let max_positions = cfg.context_length;
        let rope = Rope::new(&cfg, max_positions, device)?;
        Ok(Self {
            cfg,
            range,
            device: device.clone(),
            embedding,
            blocks,
            head,
            rope,
            max_positions,
        })
    }

    /// A shard that runs only layers `sub` of this one, sharing its weights (no copy, no
    /// read): a hop of a chain may run part of the range its node loaded, which is what
    /// lets a router chain nodes whose ranges overlap rather than tile.
    pub fn sub_shard(&self, sub: LayerRange) -> Result<Shard> {
        if sub.start >= sub.end || sub.start < self.range.start || sub.end > self.range.end {
            return Err(Error::InvalidInput(format!(
                "layers {sub} are not inside this shard's {}",
                self.range
            )));
        }
        let off = (sub.start - self.range.start) as usize;
        Ok(Shard {
            cfg: self.cfg.clone(),
            range: sub,
            device: self.device.clone(),
            embedding: (sub.start == self.range.start)
                .then(|| self.embedding.clone())
                .flatten(),
            blocks: self.blocks[off..off + sub.len() as usize].to_vec(),
            head: (sub.end == self.range.end)
                .then(|| self.head.clone())
                .flatten(),
            rope: self.rope.clone(),
            max_positions: self.max_positions,
        })
    }

    /// `(name, n, k)` of every linear weight of `layers` (and of the head when `head`):
    /// what a shard's [`KernelPlan`] is chosen from.
    pub(super) fn linear_weights_of(
        cfg: &ModelConfig,
        layers: std::ops::Range<usize>,
        head: bool,
    ) -> Vec<(String, usize, usize)> {
        let mut linear = Vec::with_capacity(layers.len() * 7 + 1);
        for l in layers {
            linear.extend(Block::linear_weights(cfg, l));
        }
        if head {
            linear.push(Head::linear_weight(cfg));
        }
        linear
    }

    /// This shard without the embedding and the head, sharing its weights: for a hop
    /// whose entry runs the model's ends itself ([`super::Ends`]), so the hop takes and
    /// gives hidden states even where its range starts at layer 0 or ends at the last.
    pub fn without_ends(&self) -> Shard {
        Shard {
            embedding: None,
            head: None,
            ..self.clone()
        }
    }

    /// Whether this shard embeds token ids (its range starts at layer 0 and it kept the
    /// embedding).
    pub fn has_embedding(&self) -> bool {
        self.embedding.is_some()
    }

    /// Whether this shard turns its output into logits.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn range(&self) -> LayerRange {
        self.range
    }

    pub fn is_first(&self) -> bool {
        self.range.is_first()
    }

    pub fn is_last(&self) -> bool {
        self.head.is_some()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A new, empty cache for one session of at most `max_len` positions (capped by the
    /// model's context length).
    pub fn new_cache(&self, max_len: usize) -> Result<KvCache> {
        if max_len == 0 || max_len > self.max_positions {
            return Err(Error::ContextOverflow {
                needed: max_len,
                limit: self.max_positions,
            });
        }
        Ok(KvCache::new(
            self.range.indices().start,
            self.range.indices().len(),
            self.cfg.n_kv_heads,
            self.cfg.head_dim,
            max_len,
        ))
    }

    /// Whether a session's outputs are the same, bit for bit, whether its step runs
    /// alone or stacked with others' in [`forward_batch`](Self::forward_batch): true when
    /// every linear layer runs on lamina's kernels (attention, norms and RoPE are per
    /// row or per session already). Candle's matmul, used for weight types the kernels do
    /// not cover (F32), blocks by row count, so stacking changes the last bits.
    pub fn batch_invariant(&self) -> bool {
        self.blocks.iter().all(|b| b.batch_invariant())
            && self.head.as_ref().is_none_or(|h| h.batch_invariant())
    }

    /// Runs one step for one session.
    pub fn forward(
        &self,
        cache: &mut KvCache,
        input: ShardInput,
        logits: LogitRows,
    ) -> Result<ShardOutput> {
        let mut steps = [SeqStep {
            cache,
            input,
            logits,
        }];
        let mut out = self.forward_batch(&mut steps)?;
        out.pop()
            .ok_or_else(|| Error::InvalidInput("empty batch".into()))
    }

    /// Runs one step for several sessions at once. Either every session advances or, on
    /// error, none does.
    pub fn forward_batch(&self, steps: &mut [SeqStep<'_>]) -> Result<Vec<ShardOutput>> {
        if steps.is_empty() {
            return Ok(Vec::new());
        }
        let _span = tracing::debug_span!("shard_forward", layers = %self.range, seqs = steps.len())
            .entered();
        // Validate everything before touching any cache.
        let mut rows_of = Vec::with_capacity(steps.len());
        for s in steps.iter() {
            let rows = self.check_input(s)?;
            s.cache.check_room(rows)?;
            rows_of.push(rows);
        }
        // Positions of every row, and the input rows stacked.
        let mut pos = Vec::with_capacity(rows_of.iter().sum());
        for (s, &rows) in steps.iter().zip(&rows_of) {
            let start = s.cache.len() as u32;
            pos.extend(start..start + rows as u32);
        }
        let pos_t = Tensor::new(pos.as_slice(), &self.device)?;
        let rope = self.rope.tables(&pos_t)?;
        let mut x = self.stack_inputs(steps)?;

        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(i, &x, &rope, steps, &rows_of)?;
        }

        for (s, &rows) in steps.iter_mut().zip(&rows_of) {
            s.cache.commit(rows);
        }

        let mut outs = Vec::with_capacity(steps.len());
        let mut offset = 0;
        for (s, &rows) in steps.iter().zip(&rows_of) {
            let h = x.narrow(0, offset, rows)?;
            offset += rows;
            outs.push(match &self.head {
                None => ShardOutput::Hidden(h),
                Some(head) => {
                    let h = match s.logits {
                        LogitRows::Last => h.narrow(0, rows - 1, 1)?,
                        LogitRows::All => h,
                    };
                    ShardOutput::Logits(head.forward(&h)?)
                }
            });
        }
        Ok(outs)
    }

    fn check_input(&self, s: &SeqStep<'_>) -> Result<usize> {
        if s.cache.first_layer() != self.range.indices().start
            || s.cache.n_layers() != self.range.indices().len()
        {
            return Err(Error::InvalidInput(format!(
                "the cache is for layers {}..{}, this shard runs {}",
                s.cache.first_layer(),
                s.cache.first_layer() + s.cache.n_layers(),
                self.range
            )));
        }
        match (&s.input, self.embedding.is_some()) {
            (ShardInput::Tokens(t), true) => {
                if t.is_empty() {
                    return Err(Error::InvalidInput("no tokens in the step".into()));
                }
                if let Some(bad) = t.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
                    return Err(Error::InvalidInput(format!(
                        "token id {bad} is outside the vocabulary (size {})",
                        self.cfg.vocab_size
                    )));
                }
                Ok(t.len())
            }
            (ShardInput::Hidden(h), false) => {
                let dims = h.dims();
                if dims.len() != 2 || dims[1] != self.cfg.dim || dims[0] == 0 {
                    return Err(Error::InvalidInput(format!(
                        "hidden states must have shape (rows >= 1, {}), got {:?}",
                        self.cfg.dim, dims
                    )));
                }
                if h.dtype() != DType::F32 {
                    return Err(Error::InvalidInput(format!(
                        "hidden states must be f32, got {:?}",
                        h.dtype()
                    )));
                }
                Ok(dims[0])
            }
            (ShardInput::Tokens(_), false) => Err(Error::InvalidInput(format!(
                "shard {} starts mid-model and takes hidden states, not token ids",
                self.range
            ))),
            (ShardInput::Hidden(_), true) => Err(Error::InvalidInput(format!(
                "shard {} starts the model and takes token ids, not hidden states",
                self.range
            ))),
        }
    }

    fn stack_inputs(&self, steps: &[SeqStep<'_>]) -> Result<Tensor> {
        let parts = steps
            .iter()
            .map(|s| match &s.input {
                ShardInput::Tokens(t) => match &self.embedding {
                    Some(e) => e.forward(t, &self.device),
                    None => Err(Error::InvalidInput("no embedding".into())),
                },
                ShardInput::Hidden(h) => Ok(h.to_device(&self.device)?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(if parts.len() == 1 {
            parts
                .into_iter()
                .next()
                .ok_or_else(|| Error::InvalidInput("empty".into()))?
        } else {
            Tensor::cat(&parts, 0)?
        })
    }
}
