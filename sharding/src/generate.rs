//! Generation: prefill, then one decode step per token, with sampling and stop rules.
//!
//! The loop is written against [`Stepper`], "give me the logits after these tokens", so
//! the same code drives a chain of shards in one process ([`LocalChain`]) and, in the
//! node crate, a pipeline of remote hops.

use crate::executor::{LogitRows, Shard, ShardInput, ShardOutput};
use crate::kv_cache::KvCache;
use crate::layers::{check_split, LayerRange};
use crate::sampling::{Sampler, SamplingParams, StopChecker};
use crate::source::ModelFile;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

/// Anything that turns token ids into next-token logits while keeping its own state.
pub trait Stepper {
    /// Feeds `tokens` at the next positions and returns the logits of the last one.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Positions already consumed.
    fn position(&self) -> usize;
}

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

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    ContextLength,
    /// The caller's `on_text` asked to stop (e.g. an HTTP client went away), so a
    /// session nobody reads is not kept busy.
    Cancelled,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

/// Throughput of the two phases.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Timings {
    pub prefill_tokens: usize,
    pub prefill_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens: usize,
    pub decode_ms: f64,
    pub decode_tokens_per_s: f64,
}

/// The result of a generation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GenerationOutput {
    pub prompt_token_ids: Vec<u32>,
    pub generated_token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

/// The number of positions a request needs, checked against `context_length` so that a
/// prompt that cannot fit fails before any compute.
pub fn session_length(req: &GenerateRequest, context_length: usize) -> Result<usize> {
    if req.prompt_ids.is_empty() {
        return Err(Error::InvalidInput(
            "the prompt is empty (no tokens)".into(),
        ));
    }
    if req.prompt_ids.len() >= context_length {
        return Err(Error::ContextOverflow {
            needed: req.prompt_ids.len() + 1,
            limit: context_length,
        });
    }
    Ok((req.prompt_ids.len() + req.max_tokens).min(context_length))
}

/// Generates from `req` with `stepper`, calling `on_text` with each piece of text as soon
/// as it is final (stop strings held back until they are ruled out).
pub fn generate<S: Stepper>(
    stepper: &mut S,
    tokenizer: &Tokenizer,
    req: &GenerateRequest,
    context_length: usize,
    mut on_text: impl FnMut(&str),
) -> Result<GenerationOutput> {
    generate_until(stepper, tokenizer, req, context_length, |t| {
        on_text(t);
        ControlFlow::Continue(())
    })
}

/// [`generate`] whose `on_text` can end the generation: `Break` stops before the next
/// step and the output says [`FinishReason::Cancelled`].
pub fn generate_until<S: Stepper>(
    stepper: &mut S,
    tokenizer: &Tokenizer,
    req: &GenerateRequest,
    context_length: usize,
    mut on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<GenerationOutput> {
    let limit = session_length(req, context_length)?;
    let mut sampler = Sampler::new(req.sampling.clone())?;
    let mut stop = StopChecker::new(req.stop.clone());
    let mut decoder = StreamDecoder::new(tokenizer);
    let eog: Vec<u32> = tokenizer.eog_ids().to_vec();

    let mut history: Vec<u32> = req.prompt_ids.clone();
    let mut generated = Vec::new();
    let mut text = String::new();
    let mut timings = Timings::default();
    let mut finish = FinishReason::Length;
    let mut skip_tail = false;

    if req.max_tokens == 0 {
        return Ok(GenerationOutput {
            prompt_token_ids: req.prompt_ids.clone(),
            generated_token_ids: generated,
            text,
            finish_reason: finish,
            timings,
        });
    }

    let t0 = Instant::now();
    let mut logits = stepper.step(&req.prompt_ids)?;
    timings.prefill_tokens = req.prompt_ids.len();
    timings.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mut decode_steps = 0usize;
    loop {
        let tok = sampler.sample(&logits, &history)?;
        if eog.contains(&tok) {
            finish = FinishReason::Stop;
            break;
        }
        generated.push(tok);
        history.push(tok);
        let piece = decoder.push(tok)?;
        let (emit, stopped) = stop.push(&piece);
        if !emit.is_empty() {
            text.push_str(&emit);
            if on_text(&emit).is_break() {
                finish = FinishReason::Cancelled;
                skip_tail = true;
                break;
            }
        }
        if stopped {
            finish = FinishReason::Stop;
            skip_tail = true;
            break;
        }
        if generated.len() >= req.max_tokens {
            finish = FinishReason::Length;
            break;
        }
        if stepper.position() + 1 > limit || stepper.position() >= context_length {
            finish = FinishReason::ContextLength;
            break;
        }
        logits = stepper.step(&[tok])?;
        decode_steps += 1;
    }
    if !skip_tail {
        let rest = decoder.finish();
        let (emit, _) = stop.push(&rest);
        let mut tail = emit;
        tail.push_str(&stop.flush());
        if !tail.is_empty() {
            // The generation is over either way; a `Break` here changes nothing.
            let _ = on_text(&tail);
            text.push_str(&tail);
        }
    }
    timings.decode_tokens = decode_steps;
    timings.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
    timings.prefill_tokens_per_s = rate(timings.prefill_tokens, timings.prefill_ms);
    timings.decode_tokens_per_s = rate(timings.decode_tokens, timings.decode_ms);
    Ok(GenerationOutput {
        prompt_token_ids: req.prompt_ids.clone(),
        generated_token_ids: generated,
        text,
        finish_reason: finish,
        timings,
    })
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 / (ms / 1e3)
    } else {
        0.0
    }
}
