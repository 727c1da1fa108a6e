//! Runs one request's generation: admission (the concurrency limit), the generation as a
//! task of its own, and the events the handlers turn into a response.
//!
//! The generation reports through a bounded channel: the channel's bound is the
//! back-pressure on a slow reader, and its closing is how a client that went away stops
//! the generation.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use axum::Json;
use lamina_protocol::WireDType;
use lamina_sharding::generate::{FinishReason, GenerateRequest};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::pipeline::{FailoverPolicy, GenerateOptions};

use super::audit::RouteHop;
use super::auth::{Caller, Outcome};
use super::errors::ApiError;
pub use super::event::Event;
use super::openai::{usage, ResponseMeta};
use super::stream::{self, ChunkWriter};
use super::ApiState;

/// Text pieces buffered between the generation and a slow client.
const CHANNEL_BOUND: usize = 32;

/// One validated request, ready to run.
pub struct Job {
    pub meta: ResponseMeta,
    pub req: GenerateRequest,
    pub activation_dtype: WireDType,
    /// The request's trace id, which every hop logs.
    pub trace_id: Option<lamina_protocol::TraceId>,
    pub stream: bool,
    pub include_usage: bool,
    /// When the request arrived (time to first token counts from here).
    pub received: Instant,
    /// Whose request it is: the generation's tokens are counted against the key, and its
    /// outcome goes into the audit line, when it ends (a stream ends after the handler).
    pub caller: Caller,
    /// Its generation slot, taken by [`admit`] before the prompt was tokenized; held by
    /// the generation's task until it ends.
    pub permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// Takes a generation slot, or answers 429. Handlers call it before any CPU work on the
/// request (tokenizing, rendering the template): a node at its limit refuses at once
/// instead of tokenizing prompts it will not run.
pub fn admit(st: &ApiState) -> Result<Arc<tokio::sync::OwnedSemaphorePermit>, ApiError> {
    st.slots
        .clone()
        .try_acquire_owned()
        .map(Arc::new)
        .map_err(|_| ApiError::too_many_requests(st.limits.max_concurrent_requests))
}

/// What the generation tells the HTTP side: the first step's arrival, each step's time
/// (metrics), and the text, through the bounded channel.
struct Reporter {
    tx: mpsc::Sender<Event>,
    metrics: Arc<super::Metrics>,
    received: Instant,
}

impl crate::pipeline::Observer for Reporter {
    async fn step(&mut self, index: usize, took: std::time::Duration) {
        if index == 0 {
            self.metrics
                .observe_time_to_first_token(self.received.elapsed().as_secs_f64());
            // A full or closed channel is seen by `text` next.
            let _ = self.tx.try_send(Event::Started);
        } else {
            self.metrics.observe_step(took.as_secs_f64());
        }
    }

    async fn text(&mut self, piece: &str) -> ControlFlow<()> {
        match self.tx.send(Event::Text(piece.to_owned())).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

/// Starts `job` (admitted: it holds its slot); the receiver yields its events.
fn start(st: &Arc<ApiState>, job: &Job) -> Result<mpsc::Receiver<Event>, ApiError> {
    let permit = job.permit.clone();
    let metrics = st.metrics.clone();
    let active = metrics.active_request();
    metrics.add_prompt_tokens(job.req.prompt_ids.len() as u64);
    let (tx, rx) = mpsc::channel(CHANNEL_BOUND);
    let st = st.clone();
    let req = job.req.clone();
    let opts = GenerateOptions {
        activation_dtype: job.activation_dtype,
        trace_id: job.trace_id,
        policy: FailoverPolicy::default(),
    };
    let mut reporter = Reporter {
        tx: tx.clone(),
        metrics: metrics.clone(),
        received: job.received,
    };
    let caller = job.caller.clone();
    let task = async move {
        let _permit = permit;
        let _active = active;
        let mut route = Vec::new();
        let result = st
            .client
            .generate(st.routes.as_ref(), &req, &opts, &mut reporter)
            .await
            .map(|g| {
                for r in &g.recoveries {
                    metrics.observe_recovery(r.as_secs_f64());
                }
                if !g.recoveries.is_empty() {
                    tracing::info!(
                        recoveries = g.recoveries.len(),
                        "generation survived hop failures"
                    );
                }
                route = g.route;
                g.output
            })
            .map_err(ApiError::from);
        let outcome = match &result {
            Ok(out) => {
                metrics.add_generated_tokens(out.generated_token_ids.len() as u64);
                if out.finish_reason == FinishReason::Cancelled {
                    metrics.record_cancelled();
                }
                Outcome {
                    prompt_tokens: out.prompt_token_ids.len() as u64,
                    completion_tokens: out.generated_token_ids.len() as u64,
                    route: route
                        .iter()
                        .map(|h| RouteHop {
                            peer_id: h.peer.to_string(),
                            layers: h.layers.to_string(),
                        })
                        .collect(),
                    status: 200,
                    completion: Some(&out.text),
                }
            }
            Err(e) => {
                tracing::warn!("generation failed: {}", e.message);
                Outcome {
                    status: e.status.as_u16(),
                    ..Outcome::default()
                }
            }
        };
        caller.finished(outcome);
        drop(caller);
        let _ = tx.send(Event::Done(result)).await;
    };
    tokio::spawn(task.in_current_span());
    Ok(rx)
}

/// Runs `job` and answers it, streamed or whole.
pub async fn serve(st: &Arc<ApiState>, job: Job) -> Result<Response, ApiError> {
    let mut rx = start(st, &job)?;
    if job.stream {
        // Wait for the prefill, so that a chain that cannot open is still an HTTP error.
        let first = rx
            .recv()
            .await
            .ok_or_else(|| ApiError::internal("the generation ended without a result"))?;
        if let Event::Done(Err(e)) = first {
            return Err(e);
        }
        let writer = ChunkWriter {
            meta: job.meta,
            include_usage: job.include_usage,
        };
        return Ok(stream::response(writer, first, rx));
    }
    let out = loop {
        match rx.recv().await {
            Some(Event::Done(r)) => break r?,
            Some(_) => {}
            None => return Err(ApiError::internal("the generation ended without a result")),
        }
    };
    let u = usage(out.prompt_token_ids.len(), out.generated_token_ids.len());
    let body = job
        .meta
        .response(&out.text, out.finish_reason, &out.generated_token_ids, u);
    Ok(Json(body).into_response())
}

/// Runs CPU work of a request (tokenizing a prompt of up to the body limit, rendering a
/// template) off the async workers, which serve every other connection.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))
}

/// Checks the prompt against the context and picks `max_tokens`: a prompt that leaves no
/// room, or a `max_tokens` larger than the whole context, is refused; otherwise the
/// generation stops at the context's end with `finish_reason: "length"`.
pub fn fit_context(
    prompt_tokens: usize,
    max_tokens: Option<usize>,
    default_max: Option<usize>,
    context_length: usize,
    prompt_param: &str,
) -> Result<usize, ApiError> {
    if prompt_tokens == 0 {
        return Err(ApiError::invalid_param(
            prompt_param,
            "the prompt is empty (no tokens)",
        ));
    }
    if prompt_tokens >= context_length {
        return Err(ApiError::context_length(
            prompt_param,
            format!(
                "this model's maximum context length is {context_length} tokens; the prompt has {prompt_tokens} and leaves no room to generate"
            ),
        ));
    }
    let room = context_length - prompt_tokens;
    match max_tokens {
        Some(m) if m > context_length => Err(ApiError::context_length(
            "max_tokens",
            format!(
                "max_tokens = {m} is more than this model's maximum context length ({context_length} tokens)"
            ),
        )),
        Some(m) => Ok(m),
        None => Ok(default_max.unwrap_or(room).min(room)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn context_rules() {
        assert_eq!(fit_context(10, None, Some(16), 512, "prompt").unwrap(), 16);
        assert_eq!(fit_context(10, None, None, 512, "prompt").unwrap(), 502);
        assert_eq!(fit_context(500, None, Some(16), 512, "prompt").unwrap(), 12);
        assert_eq!(
            fit_context(10, Some(512), None, 512, "prompt").unwrap(),
            512
        );
        let e = fit_context(10, Some(513), None, 512, "prompt").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = fit_context(512, Some(1), None, 512, "messages").unwrap_err();
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = fit_context(0, None, None, 512, "prompt").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
