//! Generation: prefill, then one decode step per token, with sampling and stop rules.
//!
//! - [`machine`]: the rules, as a pure state machine ([`Generation`]) that any driver
//!   feeds with each step's answer;
//! - [`local`]: shards chained in one process ([`LocalChain`]);
//! - this file: the request and output types, and the synchronous driver over a
//!   [`Stepper`] ([`generate`], [`generate_until`]). The node crate drives the same
//!   machine over the network, asynchronously.

mod local;
pub mod machine;

use crate::sampling::SamplingParams;
use crate::{Error, Result};
use std::ops::ControlFlow;
use std::time::Instant;

pub use local::{ChainSession, LocalChain};
pub use machine::{Generation, Next, StepOutcome};

/// Anything that turns token ids into next-token logits while keeping its own state.
pub trait Stepper {
    /// Feeds `tokens` at the next positions and returns the logits of the last one.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Positions already consumed.
    fn position(&self) -> usize;
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
    tokenizer: &crate::tokenizer::Tokenizer,
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
    tokenizer: &crate::tokenizer::Tokenizer,
    req: &GenerateRequest,
    context_length: usize,
    mut on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<GenerationOutput> {
    let mut g = Generation::new(tokenizer, req, context_length)?;
    let Some(prompt) = g.prompt().map(<[u32]>::to_vec) else {
        return Ok(g.finish(0.0, 0.0));
    };
    let t0 = Instant::now();
    let logits = stepper.step(&prompt)?;
    let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let mut next = g.on_step(StepOutcome::Logits(&logits))?;
    loop {
        let text = g.take_text();
        if !text.is_empty() && on_text(&text).is_break() {
            g.cancel();
            break;
        }
        match next {
            Next::Done => break,
            Next::Step(tok) => {
                let logits = stepper.step(&[tok])?;
                next = g.on_step(StepOutcome::Logits(&logits))?;
            }
        }
    }
    let tail = g.end();
    if !tail.is_empty() {
        // The generation is over either way; a `Break` here changes nothing.
        let _ = on_text(&tail);
    }
    Ok(g.finish(prefill_ms, t1.elapsed().as_secs_f64() * 1e3))
}
