//! `POST /v1/chat/completions`: the conversation rendered through the model's chat
//! template (with the generation prompt), then generated like a completion.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use lamina_sharding::chat::encode_chat;
use lamina_sharding::generate::GenerateRequest;

use super::auth::Caller;
use super::errors::{parse_value, ApiError, ApiJson};
use super::generation::{admit, blocking, fit_context, serve, Job};
use super::openai::{ChatFields, CommonParams, Kind};
use super::{ApiState, RequestId};

pub async fn chat_completions(
    State(st): State<Arc<ApiState>>,
    Extension(rid): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    caller.set_prompt(|| body.get("messages").cloned().unwrap_or_default());
    let common: CommonParams = parse_value(body.clone())?;
    let fields: ChatFields = parse_value(body)?;
    let max_tokens = fields.max_completion_tokens.or(common.max_tokens);
    let settings = common.settings(max_tokens)?;
    let messages = fields.messages()?;
    st.check_model(settings.model.as_deref())?;
    caller.set_model(&st.model_name);
    let permit = admit(&st)?;
    // A template that refuses the conversation (e.g. roles that do not alternate) is the
    // request's fault.
    let st2 = st.clone();
    let prompt_ids =
        blocking(move || encode_chat(&st2.client.tokenizer, &st2.chat_template, &messages))
            .await?
            .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
    let max_tokens = fit_context(
        prompt_ids.len(),
        settings.max_tokens,
        None,
        st.limits.max_prompt_tokens,
        "messages",
    )?;
    let job = Job {
        meta: st.meta(Kind::Chat, &rid),
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
