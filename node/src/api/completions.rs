//! `POST /v1/completions`: one prompt, tokenized as `lamina generate` does.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use lamina_sharding::generate::GenerateRequest;

use super::auth::Caller;
use super::errors::{parse_value, ApiError, ApiJson};
use super::generation::{admit, blocking, fit_context, serve, Job};
use super::openai::{CommonParams, CompletionFields, Kind};
use super::{ApiState, RequestId};

/// OpenAI's default for this endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

pub async fn completions(
    State(st): State<Arc<ApiState>>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    caller.set_prompt(|| body.get("prompt").cloned().unwrap_or_default());
    let common: CommonParams = parse_value(body.clone())?;
    let fields: CompletionFields = parse_value(body)?;
    let max_tokens = common.max_tokens;
    let settings = common.settings(max_tokens)?;
    let prompt = fields.prompt()?;
    st.check_model(settings.model.as_deref())?;
    caller.set_model(&st.model_name);
    let permit = admit(&st)?;
    let tok = st.client.tokenizer.clone();
    let prompt_ids = blocking(move || tok.encode(&prompt, tok.add_bos_default(), false))
        .await?
        .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))?;
    let max_tokens = fit_context(
        prompt_ids.len(),
        settings.max_tokens,
        Some(DEFAULT_MAX_TOKENS),
        st.limits.max_prompt_tokens,
        "prompt",
    )?;
    let job = Job {
        meta: st.meta(Kind::Completion, &rid),
        req: GenerateRequest {
            prompt_ids,
            max_tokens,
            sampling: settings.sampling,
            stop: settings.stop,
        },
        activation_dtype: settings.activation_dtype,
        trace_id: rid.trace_id(),
        stream: settings.stream,
        include_usage: settings.include_usage,
        received,
        caller,
        permit,
    };
    serve(&st, job).await
}
