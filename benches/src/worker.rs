//! One measured run of one implementation, in its own process.
//!
//! candle sizes its thread pools from `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS` at first
//! use, so every (implementation, thread count) pair runs in a fresh child process with those
//! variables set; the child prints one JSON line ([`RunResult`]). llama.cpp's child is
//! `scripts/llamacpp_worker.py`, which prints the same fields.
//!
//! Every run does the same thing: load the model; warm up (one prefill of the prompt and a
//! few decode steps, then drop the state, so page faults and thread start-up are not
//! timed); prefill the `P` prompt ids in one forward; then `G` greedy decode steps of one
//! token each. Prefill tok/s = P / prefill time, decode tok/s = G / decode time (the sum
//! of the G steps' times). The argmax is part of each timed step in all three
//! implementations; the top-2 margin kept for the agreement check is not.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use lamina_sharding::generate::{LocalChain, Stepper};
use lamina_sharding::sampling::argmax;
use lamina_sharding::source::ModelFile;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Decode steps of the untimed warm-up.
pub const WARMUP_DECODE_STEPS: usize = 4;

/// The implementations compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum Impl {
    /// lamina's layer-range executor (`LocalChain` over one shard of all layers).
    #[serde(rename = "lamina")]
    #[value(name = "lamina")]
    Lamina,
    /// candle-transformers' `quantized_llama::ModelWeights`.
    #[serde(rename = "candle")]
    #[value(name = "candle")]
    Candle,
    /// llama.cpp through llama-cpp-python.
    #[serde(rename = "llama.cpp")]
    #[value(name = "llama.cpp", alias = "llamacpp")]
    LlamaCpp,
}

impl Impl {
    pub const ALL: [Impl; 3] = [Impl::Lamina, Impl::Candle, Impl::LlamaCpp];

    pub fn name(self) -> &'static str {
        match self {
            Impl::Lamina => "lamina",
            Impl::Candle => "candle",
            Impl::LlamaCpp => "llama.cpp",
        }
    }

    /// What the table calls it.
    pub fn long_name(self) -> &'static str {
        match self {
            Impl::Lamina => "lamina",
            Impl::Candle => "candle quantized_llama",
            Impl::LlamaCpp => "llama.cpp",
        }
    }
}

/// What one worker process reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    #[serde(rename = "impl")]
    pub implementation: Impl,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub load_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Greedy tokens: the one after the prompt, then one per decode step (`G + 1`).
    pub tokens: Vec<u32>,
    /// Top-1 minus top-2 logit at each of `tokens`.
    #[serde(default)]
    pub margins: Vec<f32>,
    /// Peak resident memory of the worker process (`VmHWM`; `ru_maxrss` in Python), MiB.
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    /// Runtime version and build facts, when the runtime can tell.
    #[serde(default)]
    pub info: Option<String>,
}

/// The gap between the largest and the second largest logit: how close the greedy choice
/// was (a gap near 0 means another implementation may rightly pick the other token).
pub fn top2_margin(logits: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in logits {
        if x > a {
            b = a;
            a = x;
        } else if x > b {
            b = x;
        }
    }
    a - b
}

/// What [`measure`] returns.
struct Measured {
    prefill_s: f64,
    decode_s: f64,
    tokens: Vec<u32>,
    margins: Vec<f32>,
}

/// Prefill then greedy decode on `s`. Each step is timed on its own (forward and argmax);
/// the margin bookkeeping in between is not timed.
fn measure<S: Stepper>(s: &mut S, ids: &[u32], gen: usize) -> Result<Measured> {
    let mut tokens = Vec::with_capacity(gen + 1);
    let mut margins = Vec::with_capacity(gen + 1);
    let t0 = Instant::now();
    let logits = s.step(ids)?;
    let mut tok = argmax(&logits);
    let prefill_s = t0.elapsed().as_secs_f64();
    tokens.push(tok);
    margins.push(top2_margin(&logits));
    let mut decode_s = 0.0;
    for _ in 0..gen {
        let t = Instant::now();
        let logits = s.step(&[tok])?;
        tok = argmax(&logits);
        decode_s += t.elapsed().as_secs_f64();
        tokens.push(tok);
        margins.push(top2_margin(&logits));
    }
    Ok(Measured {
        prefill_s,
        decode_s,
        tokens,
        margins,
    })
}

/// candle's `quantized_llama` behind lamina's [`Stepper`] interface, so both run the very
/// same measurement loop.
struct CandleStepper<'a> {
    model: &'a mut ModelWeights,
    pos: usize,
}

impl<'a> CandleStepper<'a> {
    fn new(model: &'a mut ModelWeights) -> Self {
        model.clear_kv_cache();
        Self { model, pos: 0 }
    }
}

impl Stepper for CandleStepper<'_> {
    fn step(&mut self, tokens: &[u32]) -> lamina_sharding::Result<Vec<f32>> {
        let x = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let logits = self.model.forward(&x, self.pos)?;
        self.pos += tokens.len();
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }

    fn position(&self) -> usize {
        self.pos
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// Runs `implementation` (lamina or candle) in this process. The caller has set the thread
/// environment before anything touched candle.
pub fn run_in_process(
    implementation: Impl,
    model_path: &Path,
    ids: &[u32],
    gen: usize,
    threads: usize,
    warmups: usize,
) -> Result<RunResult> {
    if ids.is_empty() {
        bail!("empty prompt");
    }
    let max_len = ids.len() + gen + 1;
    let t = Instant::now();
    let (load_s, m) = match implementation {
        Impl::Lamina => {
            let model = ModelFile::open(model_path)?;
            let n_layers = model.config()?.n_layers;
            let chain = LocalChain::load(
                &model,
                &[lamina_sharding::layers::range(0, n_layers)?],
                &Device::Cpu,
            )?;
            drop(model);
            let load_s = t.elapsed().as_secs_f64();
            for _ in 0..warmups {
                let mut s = chain.session(max_len)?;
                measure(&mut s, ids, WARMUP_DECODE_STEPS.min(gen))?;
            }
            let mut s = chain.session(max_len)?;
            (load_s, measure(&mut s, ids, gen)?)
        }
        Impl::Candle => {
            let mut file = std::fs::File::open(model_path)
                .with_context(|| format!("opening {}", model_path.display()))?;
            let content = candle_core::quantized::gguf_file::Content::read(&mut file)?;
            let mut model = ModelWeights::from_gguf(content, &mut file, &Device::Cpu)?;
            drop(file);
            let load_s = t.elapsed().as_secs_f64();
            for _ in 0..warmups {
                let mut s = CandleStepper::new(&mut model);
                measure(&mut s, ids, WARMUP_DECODE_STEPS.min(gen))?;
            }
            let mut s = CandleStepper::new(&mut model);
            (load_s, measure(&mut s, ids, gen)?)
        }
        Impl::LlamaCpp => bail!("llama.cpp runs in its Python worker, not in-process"),
    };
    Ok(RunResult {
        implementation,
        threads,
        prompt_tokens: ids.len(),
        gen_tokens: gen,
        load_s,
        prefill_s: m.prefill_s,
        decode_s: m.decode_s,
        prefill_tok_s: rate(ids.len(), m.prefill_s),
        decode_tok_s: rate(gen, m.decode_s),
        tokens: m.tokens,
        margins: m.margins,
        peak_rss_mib: crate::sys::status_kib("VmHWM").map(|k| k as f64 / 1024.0),
        info: None,
    })
}
