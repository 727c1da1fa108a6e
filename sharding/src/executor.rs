//! The layer-range executor: one shard of a Llama-family model on candle.
//!
//! A [`Shard`] holds the weights of layers `a..b` (plus the embedding when `a == 0` and
//! the final norm and output head when `b == L`) and runs forward steps for any number of
//! sessions, each with its own [`KvCache`]. One step may carry several sessions' rows at
//! once: the weight matmuls run over all rows together (that is where batching pays, the
//! weights are streamed once), attention runs per session against its own cache.
//!
//! candle-transformers' `quantized_llama` loads every layer and keeps its caches inside
//! the layers, so it cannot be cut; this executor reuses candle's building blocks
//! (`QMatMul`, the fused RMSNorm, `rope_i`/`rope`) with explicit caches and per-row
//! positions. Matmuls run on the quantized weights; nothing is dequantized at load except
//! float weights, which candle keeps as plain tensors.

use crate::config::{ModelConfig, RopeStyle};
use crate::kv_cache::KvCache;
use crate::layers::LayerRange;
use crate::source::ModelFile;
use crate::{Error, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::sync::Arc;

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

/// RMSNorm with its weight; candle's fused kernel over the last dimension.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(model: &ModelFile, name: &str, dim: usize, eps: f64, dev: &Device) -> Result<Self> {
        let w = model.load(name, Some(&[dim]), dev)?.dequantize(dev)?;
        Ok(Self {
            weight: w,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

/// A linear layer on the stored (usually quantized) weight: lamina's kernels when they
/// cover the weight type (and `LAMINA_KERNELS` is not `candle`), reading the weight in
/// place from the mapped file; else candle's `QMatMul` on a copy.
#[derive(Debug, Clone)]
enum Linear {
    Kernel(crate::kernels::QLinear),
    Candle(QMatMul),
}

impl Linear {
    fn from_qtensor(t: Arc<QTensor>) -> Result<Self> {
        if crate::kernels::enabled() {
            if let Some(k) = crate::kernels::QLinear::new(t.clone()).filter(|k| {
                let (n, kk) = k.shape();
                crate::kernels::preferred_for(k.weight_type(), n, kk)
            }) {
                return Ok(Self::Kernel(k));
            }
        }
        Ok(Self::Candle(QMatMul::from_arc(t)?))
    }

    fn load(
        model: &ModelFile,
        name: &str,
        out: usize,
        inp: usize,
        dev: &Device,
        plan: &KernelPlan,
    ) -> Result<Self> {
        if dev.is_cpu() && crate::kernels::enabled() {
            if let Some((view, dtype)) = model.view(name, &[out, inp])? {
                let wanted = crate::kernels::WeightType::from_ggml(dtype)
                    .is_some_and(|t| plan.wants(t, out, inp));
                if wanted {
                    if let Some(k) = crate::kernels::QLinear::from_view(view, dtype, out, inp)? {
                        return Ok(Self::Kernel(k));
                    }
                }
            }
        }
        let t = model.load(name, Some(&[out, inp]), dev)?;
        Self::from_qtensor(Arc::new(t))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Kernel(k) => k.forward(x)?.ok_or_else(|| {
                Error::InvalidInput(format!(
                    "linear layer: the kernels take f32 CPU inputs, got {:?} on {:?}",
                    x.dtype(),
                    x.device()
                ))
            }),
            Self::Candle(m) => Ok(m.forward(x)?),
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Which weights of one shard run on lamina's kernels.
///
/// Per weight, [`crate::kernels::preferred_for`] decides; on top of that a type goes wholly
/// to lamina when any of its weights in the shard does, because a forward step that
/// alternates between lamina's pool and candle's (each spinning between matmuls) makes
/// them steal each other's cores: SmolLM2 Q8_0 on 2 threads decoded at 84-94 tok/s with
/// its k = 1536 weights on candle and the rest on lamina, and at 146-155 tok/s with every
/// Q8_0 weight on lamina.
#[derive(Clone, Copy, Debug, Default)]
struct KernelPlan {
    all_q8_0: bool,
    all_q4k: bool,
}

impl KernelPlan {
    /// `weights`: `(name, n, k)` of every linear weight the shard will load.
    fn for_shard(model: &ModelFile, weights: &[(String, usize, usize)]) -> Self {
        use crate::kernels::{preferred, preferred_for, WeightType};
        let mut plan = Self::default();
        for (name, n, k) in weights {
            let Ok(Some((_, dtype))) = model.view(name, &[*n, *k]) else {
                continue;
            };
            let Some(ty) = WeightType::from_ggml(dtype) else {
                continue;
            };
            if !preferred(ty) && preferred_for(ty, *n, *k) {
                match ty {
                    WeightType::Q8_0 => plan.all_q8_0 = true,
                    WeightType::Q4K => plan.all_q4k = true,
                    _ => {}
                }
            }
        }
        plan
    }

    fn wants(&self, ty: crate::kernels::WeightType, n: usize, k: usize) -> bool {
        use crate::kernels::WeightType;
        crate::kernels::preferred_for(ty, n, k)
            || (ty == WeightType::Q8_0 && self.all_q8_0)
            || (ty == WeightType::Q4K && self.all_q4k)
    }
}

/// How one row of a mapped embedding is stored.
#[derive(Debug, Clone, Copy)]
enum RowFormat {
    F32,
    F16,
    BF16,
    Blocks(crate::kernels::WeightType),
}

impl RowFormat {
    fn of(dtype: GgmlDType, dim: usize) -> Option<Self> {
        use crate::kernels::{WeightType, QK};
        Some(match dtype {
            GgmlDType::F32 => Self::F32,
            GgmlDType::F16 => Self::F16,
            GgmlDType::BF16 => Self::BF16,
            GgmlDType::Q4_0 if dim.is_multiple_of(QK) => Self::Blocks(WeightType::Q4_0),
            GgmlDType::Q4_1 if dim.is_multiple_of(QK) => Self::Blocks(WeightType::Q4_1),
            GgmlDType::Q8_0 if dim.is_multiple_of(QK) => Self::Blocks(WeightType::Q8_0),
            _ => return None,
        })
    }

    fn row_bytes(self, dim: usize) -> usize {
        match self {
            Self::F32 => dim * 4,
            Self::F16 | Self::BF16 => dim * 2,
            Self::Blocks(t) => dim / crate::kernels::QK * t.block_bytes(),
        }
    }

    fn decode(self, row: &[u8], out: &mut [f32]) {
        use crate::kernels::{blocks, QK};
        match self {
            Self::F32 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Self::F16 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            Self::BF16 => {
                for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            Self::Blocks(t) => {
                for (o, b) in out
                    .chunks_exact_mut(QK)
                    .zip(row.chunks_exact(t.block_bytes()))
                {
                    blocks::dequantize_block(t, b, o);
                }
            }
        }
    }
}

/// The token embedding. A lookup needs only a prompt's rows, so on the CPU the table stays
/// in the mapped file and rows are decoded on lookup: the first shard does not hold a
/// vocabulary-sized table it barely reads. Other devices and formats copy it.
#[derive(Debug, Clone)]
enum Embedding {
    Float(Tensor),
    Quantized(Arc<QTensor>),
    Mapped {
        view: crate::gguf::TensorView,
        format: RowFormat,
        dim: usize,
    },
}

impl Embedding {
    fn load(model: &ModelFile, vocab: usize, dim: usize, dev: &Device) -> Result<Self> {
        const NAME: &str = "token_embd.weight";
        if dev.is_cpu() {
            if let Some((view, dtype)) = model.view(NAME, &[vocab, dim])? {
                if let Some(format) = RowFormat::of(dtype, dim) {
                    if view.len() == vocab * format.row_bytes(dim) {
                        return Ok(Self::Mapped { view, format, dim });
                    }
                }
            }
        }
        let q = model.load(NAME, Some(&[vocab, dim]), dev)?;
        Ok(match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => Self::Float(q.dequantize(dev)?),
            _ => Self::Quantized(Arc::new(q)),
        })
    }

    fn forward(&self, ids: &[u32], dev: &Device) -> Result<Tensor> {
        Ok(match self {
            Self::Float(t) => t.index_select(&Tensor::new(ids, dev)?, 0)?,
            Self::Quantized(q) => q.embedding(&Tensor::new(ids, dev)?)?,
            Self::Mapped { view, format, dim } => {
                let rb = format.row_bytes(*dim);
                let bytes = view.as_bytes();
                let mut out = vec![0f32; ids.len() * dim];
                for (&id, o) in ids.iter().zip(out.chunks_exact_mut(*dim)) {
                    let at = id as usize * rb;
                    let row = bytes.get(at..at + rb).ok_or_else(|| {
                        Error::InvalidInput(format!("token id {id} is outside the embedding table"))
                    })?;
                    format.decode(row, o);
                }
                Tensor::from_vec(out, (ids.len(), *dim), dev)?
            }
        })
    }
}

/// Final norm and output head.
#[derive(Debug, Clone)]
struct Head {
    norm: RmsNorm,
    output: Linear,
}

/// Precomputed rotary tables `(positions, head_dim / 2)`.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl Rope {
    fn new(cfg: &ModelConfig, max_pos: usize, dev: &Device) -> Result<Self> {
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
    fn tables(&self, pos: &Tensor) -> Result<RopeTables> {
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
struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl RopeTables {
    /// Rotates `x` of shape `(rows, heads, head_dim)`, each row at its own position.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
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
        let dim = cfg.dim;
        let q_dim = cfg.n_heads * cfg.head_dim;
        let kv_dim = cfg.n_kv_heads * cfg.head_dim;
        let is_last = range.is_last(cfg.n_layers);

        let embedding = if range.is_first() {
            Some(Embedding::load(model, cfg.vocab_size, dim, device)?)
        } else {
            None
        };

        let head_name = if cfg.tied_embeddings {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let mut linear = Vec::with_capacity(range.indices().len() * 7 + 1);
        for l in range.indices() {
            for (s, n, k) in [
                ("attn_q.weight", q_dim, dim),
                ("attn_k.weight", kv_dim, dim),
                ("attn_v.weight", kv_dim, dim),
                ("attn_output.weight", dim, q_dim),
                ("ffn_gate.weight", cfg.ffn_dim, dim),
                ("ffn_up.weight", cfg.ffn_dim, dim),
                ("ffn_down.weight", dim, cfg.ffn_dim),
            ] {
                linear.push((format!("blk.{l}.{s}"), n, k));
            }
        }
        if is_last {
            linear.push((head_name.to_string(), cfg.vocab_size, dim));
        }
        let plan = KernelPlan::for_shard(model, &linear);

        let mut blocks = Vec::with_capacity(range.indices().len());
        for l in range.indices() {
            let n = |s: &str| format!("blk.{l}.{s}");
            blocks.push(Block {
                attn_norm: RmsNorm::load(model, &n("attn_norm.weight"), dim, cfg.rms_eps, device)?,
                wq: Linear::load(model, &n("attn_q.weight"), q_dim, dim, device, &plan)?,
                wk: Linear::load(model, &n("attn_k.weight"), kv_dim, dim, device, &plan)?,
                wv: Linear::load(model, &n("attn_v.weight"), kv_dim, dim, device, &plan)?,
                wo: Linear::load(model, &n("attn_output.weight"), dim, q_dim, device, &plan)?,
                ffn_norm: RmsNorm::load(model, &n("ffn_norm.weight"), dim, cfg.rms_eps, device)?,
                gate: Linear::load(
                    model,
                    &n("ffn_gate.weight"),
                    cfg.ffn_dim,
                    dim,
                    device,
                    &plan,
                )?,
                up: Linear::load(model, &n("ffn_up.weight"), cfg.ffn_dim, dim, device, &plan)?,
                down: Linear::load(
                    model,
                    &n("ffn_down.weight"),
                    dim,
                    cfg.ffn_dim,
                    device,
                    &plan,
                )?,
            });
        }

        let head = if is_last {
            let norm = RmsNorm::load(model, "output_norm.weight", dim, cfg.rms_eps, device)?;
            // A tied head reads the embedding table as its weight: in place for the
            // kernels' types, else as candle's own copy.
            let output = Linear::load(model, head_name, cfg.vocab_size, dim, device, &plan)?;
            Some(Head { norm, output })
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
            x = self.block_forward(i, block, &x, &rope, steps, &rows_of)?;
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
                    let h = head.norm.forward(&h)?;
                    ShardOutput::Logits(head.output.forward(&h)?)
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

    fn block_forward(
        &self,
        layer: usize,
        b: &Block,
        x: &Tensor,
        rope: &RopeTables,
        steps: &mut [SeqStep<'_>],
        rows_of: &[usize],
    ) -> Result<Tensor> {
        let cfg = &*self.cfg;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let rows = x.dim(0)?;
        let h = b.attn_norm.forward(x)?;
        let q = b.wq.forward(&h)?.reshape((rows, nh, hd))?;
        let k = b.wk.forward(&h)?.reshape((rows, nkv, hd))?;
        let v = b.wv.forward(&h)?.reshape((rows, nkv, hd))?;
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
        let x = (x + b.wo.forward(&attn)?)?;

        let h = b.ffn_norm.forward(&x)?;
        let g = candle_nn::ops::silu(&b.gate.forward(&h)?)?;
        let u = b.up.forward(&h)?;
        let y = b.down.forward(&(g * u)?)?;
        Ok((x + y)?)
    }
}

/// Causal grouped-query attention of `q` `(t, n_heads, hd)` at positions
/// `start..start + t` against the cached `k`, `v` `(n_kv, start + t, hd)`. Query heads
/// sharing a KV head are folded into one matmul instead of copying K and V per head.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    start: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> Result<Tensor> {
    let t = q.dim(0)?;
    let rep = nh / nkv;
    // (t, nh, hd) -> (nh, t, hd) -> (nkv, rep * t, hd)
    let q = q
        .transpose(0, 1)?
        .contiguous()?
        .reshape((nkv, rep * t, hd))?;
    let scale = 1.0 / (hd as f32).sqrt();
    let att = causal_softmax(&q.matmul(&k.t()?)?, t, start, scale)?;
    let y = att.matmul(v)?; // (nkv, rep * t, hd)
    Ok(y.reshape((nh, t, hd))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((t, nh * hd))?)
}

/// `softmax(scale * att)` over the last dimension with the causal mask, in one pass over
/// one buffer: `att` is `(nkv, rep * t, kv_len)` with query row `i` of the step (the row
/// index modulo `t`) seeing keys `0..=start + i`. Doing scale, mask and softmax as three
/// tensor ops allocated three score-sized tensors per layer (8 MiB each for a 256-token
/// TinyLlama prefill) and ran the mask as a broadcast; masked keys are skipped here
/// instead of exponentiated.
fn causal_softmax(att: &Tensor, t: usize, start: usize, scale: f32) -> Result<Tensor> {
    let kv_len = att.dim(candle_core::D::Minus1)?;
    if kv_len != start + t {
        return Err(Error::InvalidInput(format!(
            "attention: {kv_len} keys for {t} queries after {start} cached positions"
        )));
    }
    let op = CausalSoftmax { t, start, scale };
    if att.device().is_cpu() && att.is_contiguous() {
        // The matmul's fresh output is ours alone: rewrite it in place.
        att.inplace_op1(&op)?;
        return Ok(att.clone());
    }
    let mut data = att.flatten_all()?.to_vec1::<f32>()?;
    op.rows(&mut data, kv_len);
    Ok(Tensor::from_vec(data, att.shape().clone(), att.device())?)
}

/// The in-place causal softmax of [`causal_softmax`].
struct CausalSoftmax {
    t: usize,
    start: usize,
    scale: f32,
}

impl CausalSoftmax {
    fn rows(&self, data: &mut [f32], kv_len: usize) {
        let (t, start, scale) = (self.t, self.start, self.scale);
        let softmax_row = |(r, row): (usize, &mut [f32])| {
            let seen = (start + r % t + 1).min(row.len());
            let (live, masked) = row.split_at_mut(seen);
            let mut max = f32::NEG_INFINITY;
            for x in live.iter_mut() {
                *x *= scale;
                max = max.max(*x);
            }
            let mut sum = 0f32;
            for x in live.iter_mut() {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            for x in live.iter_mut() {
                *x *= inv;
            }
            masked.fill(0.0);
        };
        // Prefill scores are large enough to share out (rows are independent); a decode
        // step's are not worth a wake-up.
        if data.len() >= 1 << 16 {
            use rayon::prelude::*;
            data.par_chunks_exact_mut(kv_len)
                .enumerate()
                .for_each(softmax_row);
        } else {
            data.chunks_exact_mut(kv_len)
                .enumerate()
                .for_each(softmax_row);
        }
    }
}

impl candle_core::InplaceOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "lamina-causal-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let candle_core::CpuStorage::F32(all) = storage else {
            candle_core::bail!("causal softmax takes f32 scores");
        };
        let kv_len = layout.dims().last().copied().unwrap_or(0);
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("causal softmax: scores not contiguous".into())
        })?;
        let data = all
            .get_mut(start..end)
            .ok_or_else(|| candle_core::Error::Msg("causal softmax: storage too short".into()))?;
        if kv_len > 0 {
            self.rows(data, kv_len);
        }
        Ok(())
    }
}

/// One row of a logits tensor as a vector.
pub fn logits_row(logits: &Tensor, row: usize) -> Result<Vec<f32>> {
    Ok(logits.get(row)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}
