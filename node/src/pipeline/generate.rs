//! One whole generation through the mesh: the async driver of sharding's generation
//! machine ([`Generation`]) over a [`FailoverSession`].
//!
//! The last hop samples, except when the settings penalize repetitions: then the logits
//! come back and this side samples, because the penalty must see the prompt, which only
//! the entry knows.

use std::collections::HashSet;
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lamina_protocol::{ModelId, SamplingSettings, TraceId, WireDType};
use lamina_sharding::generate::{
    session_length, GenerateRequest, Generation, GenerationOutput, Next, StepOutcome,
};
use lamina_sharding::tokenizer::Tokenizer;
use tracing::Instrument;

use super::{FailoverPolicy, FailoverSession, PipelineError, PipelineOptions, StepReply};
use crate::dataplane::Dialer;
use crate::failure::{Failure, Hop};
use crate::routes::RouteSource;

/// Everything a generation through a chain needs besides the request.
#[derive(Clone)]
pub struct ChainClient {
    pub dialer: Dialer,
    pub model_id: ModelId,
    pub tokenizer: Arc<Tokenizer>,
    pub context_length: usize,
    /// The model's ends, when this entry runs them itself (`--private-ends`).
    pub ends: Option<super::EntryEnds>,
    /// How many of the steps to spot-check on other servers (`--verify-rate`).
    pub verify: super::VerifyPolicy,
}

/// How one generation runs.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Activations on the wire.
    pub activation_dtype: WireDType,
    /// The request's trace id, which every hop logs (a new one when `None`).
    pub trace_id: Option<TraceId>,
    pub policy: FailoverPolicy,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            activation_dtype: WireDType::F16,
            trace_id: None,
            policy: FailoverPolicy::default(),
        }
    }
}

/// What the caller sees while a generation runs.
pub trait Observer: Send {
    /// Step `index` (0 is the prefill) took `took`, as the entry measured its round trip,
    /// failovers included. The next step waits for this to finish.
    fn step(&mut self, _index: usize, _took: Duration) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// A piece of text became final. `Break` ends the generation (the reader went away),
    /// so a session nobody reads does not keep every hop busy.
    fn text(&mut self, piece: &str) -> impl Future<Output = ControlFlow<()>> + Send;
}

/// An observer that collects nothing and never stops the generation.
pub struct Quiet;

impl Observer for Quiet {
    async fn text(&mut self, _piece: &str) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Generated {
    pub output: GenerationOutput,
    /// How long each recovery from a hop failure took.
    pub recoveries: Vec<Duration>,
    /// The chain that ran the generation last (after any failover): who saw what, for
    /// the audit log.
    pub route: Vec<Hop>,
}

impl ChainClient {
    /// Runs `req` on chains from `routes`, failing over as `opts.policy` allows.
    pub async fn generate<O: Observer>(
        &self,
        routes: &dyn RouteSource,
        req: &GenerateRequest,
        opts: &GenerateOptions,
        observer: &mut O,
    ) -> Result<Generated, PipelineError> {
        let trace_id = opts.trace_id.unwrap_or_else(crate::ids::new_trace_id);
        let span = tracing::info_span!(
            "generate",
            trace = %trace_id,
            prompt_tokens = req.prompt_ids.len(),
            max_tokens = req.max_tokens
        );
        self.run(routes, req, opts, trace_id, observer)
            .instrument(span)
            .await
    }

    async fn run<O: Observer>(
        &self,
        routes: &dyn RouteSource,
        req: &GenerateRequest,
        opts: &GenerateOptions,
        trace_id: TraceId,
        observer: &mut O,
    ) -> Result<Generated, PipelineError> {
        let mut g = Generation::new(&self.tokenizer, req, self.context_length)?;
        let Some(prompt) = g.prompt().map(<[u32]>::to_vec) else {
            return Ok(Generated {
                output: g.finish(0.0, 0.0),
                recoveries: vec![],
                route: vec![],
            });
        };
        // The last hop samples unless the penalty needs the prompt or this side runs the
        // head itself.
        let remote_samples = req.sampling.repetition_penalty == 1.0 && self.ends.is_none();
        let len = session_length(req, self.context_length)?;
        let popts = PipelineOptions {
            max_length: u32::try_from(len).unwrap_or(u32::MAX),
            activation_dtype: opts.activation_dtype,
            sampling: if remote_samples {
                SamplingSettings::from(&req.sampling)
            } else {
                SamplingSettings::greedy()
            },
            return_logits: !remote_samples,
            trace_id: Some(trace_id),
            ends: self.ends.clone(),
            ..PipelineOptions::default()
        };
        let chain = routes.route(&HashSet::new())?;
        let mut session = FailoverSession::new(self, routes, popts, chain, opts.policy.clone());
        session.start().await?;

        let t0 = Instant::now();
        let r = session.step(&prompt).await?;
        observer.step(0, t0.elapsed()).await;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut next = g.on_step(outcome(&r, remote_samples)?)?;
        let mut steps = 1;
        loop {
            let text = g.take_text();
            if !text.is_empty() && observer.text(&text).await.is_break() {
                g.cancel();
                break;
            }
            match next {
                Next::Done => break,
                Next::Step(tok) => {
                    let t = Instant::now();
                    let r = session.step(&[tok]).await?;
                    observer.step(steps, t.elapsed()).await;
                    steps += 1;
                    next = g.on_step(outcome(&r, remote_samples)?)?;
                }
            }
        }
        let tail = g.end();
        if !tail.is_empty() {
            // The generation is over either way; a `Break` here changes nothing.
            let _ = observer.text(&tail).await;
        }
        let decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        let recoveries = std::mem::take(&mut session.recoveries);
        let route = session.chain().iter().map(super::ChainHop::hop).collect();
        session.close().await;
        let output = g.finish(prefill_ms, decode_ms);
        if output.finish_reason == lamina_sharding::generate::FinishReason::Cancelled {
            tracing::info!(
                generated = output.generated_token_ids.len(),
                "reader went away; generation stopped"
            );
        }
        Ok(Generated {
            output,
            recoveries,
            route,
        })
    }
}

/// What the machine is told about a step's answer.
fn outcome(r: &StepReply, remote_samples: bool) -> Result<StepOutcome<'_>, PipelineError> {
    if remote_samples {
        return Ok(StepOutcome::Token(r.token));
    }
    match &r.logits {
        Some(l) => Ok(StepOutcome::Logits(l)),
        None => Err(PipelineError::hop(
            Failure::BadAnswer,
            "the chain returned no logits where they were asked for".into(),
        )),
    }
}
