//! The first, minimal HTTP API of an entry node: `POST /v1/completions` (OpenAI-compatible,
//! non-streaming, greedy or sampled) run through the chain in the node's chain file.
//!
//! The chain file is read on every request, so a testnet can write it after every node
//! printed its address, and it can change without a restart.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use lamina_protocol::WireDType;
use lamina_sharding::generate::GenerateRequest;
use lamina_sharding::sampling::SamplingParams;
use serde::Deserialize;
use serde_json::json;

use crate::pipeline::{check_chain, read_chain_file, ChainClient};

/// What the API handlers share.
pub struct ApiState {
    pub client: ChainClient,
    pub routes: Routes,
    pub n_layers: u32,
    pub model_name: String,
}

/// Where a request's chain comes from.
pub enum Routes {
    /// A fixed chain file, read on every request.
    File(PathBuf),
    /// Planned from the mesh's announcements.
    Mesh(crate::mesh::MeshHandle),
}

/// `stop`: one string or a list.
#[derive(Deserialize, Debug, Default)]
#[serde(untagged)]
pub enum Stop {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// The request body of `/v1/completions` (the fields lamina uses).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub prompt: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default = "one")]
    pub top_p: f32,
    #[serde(default)]
    pub top_k: usize,
    #[serde(default)]
    pub min_p: f32,
    #[serde(default = "one")]
    pub repetition_penalty: f32,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub stop: Stop,
    #[serde(default)]
    pub stream: bool,
    /// lamina extension: activations on the wire, "f16" (default) or "f32".
    #[serde(default)]
    pub activation_dtype: Option<WireDType>,
}

fn default_max_tokens() -> usize {
    16
}

fn one() -> f32 {
    1.0
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind}});
    (status, Json(body)).into_response()
}

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/status", axum::routing::get(status))
        .with_state(state)
}

async fn status(State(st): State<Arc<ApiState>>) -> Response {
    match &st.routes {
        Routes::File(p) => Json(json!({"chain_file": p.display().to_string()})).into_response(),
        Routes::Mesh(m) => Json(m.status()).into_response(),
    }
}

async fn completions(
    State(st): State<Arc<ApiState>>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                e.body_text(),
            )
        }
    };
    if req.stream {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "streaming is not supported yet",
        );
    }
    let sampling = SamplingParams {
        temperature: req.temperature,
        top_k: req.top_k,
        top_p: req.top_p,
        min_p: req.min_p,
        repetition_penalty: req.repetition_penalty,
        seed: req.seed,
        ..SamplingParams::default()
    };
    if let Err(e) = sampling.validate() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            e.to_string(),
        );
    }
    let planned = match &st.routes {
        Routes::File(path) => {
            read_chain_file(path).and_then(|c| check_chain(&c, st.n_layers).map(|()| c))
        }
        Routes::Mesh(m) => m
            .route()
            .map(|r| r.hops)
            .map_err(|e| crate::pipeline::PipelineError::Chain(e.to_string())),
    };
    let chain = match planned {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        }
    };
    let tok = &st.client.tokenizer;
    let prompt_ids = match tok.encode(&req.prompt, tok.add_bos_default(), false) {
        Ok(ids) => ids,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                e.to_string(),
            )
        }
    };
    let stop = match req.stop {
        Stop::None => vec![],
        Stop::One(s) => vec![s],
        Stop::Many(v) => v,
    };
    let greq = GenerateRequest {
        prompt_ids,
        max_tokens: req.max_tokens,
        sampling,
        stop,
    };
    let dtype = req.activation_dtype.unwrap_or(WireDType::F16);
    let handle = tokio::runtime::Handle::current();
    let st2 = st.clone();
    let span = tracing::info_span!("http_completion", max_tokens = req.max_tokens);
    let result = tokio::task::spawn_blocking(move || {
        let _g = span.enter();
        st2.client.generate(&handle, &chain, &greq, dtype, |_| {})
    })
    .await;
    let out = match result {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return error(StatusCode::BAD_GATEWAY, "pipeline_error", e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prompt_tokens = out.prompt_token_ids.len();
    let completion_tokens = out.generated_token_ids.len();
    Json(json!({
        "id": format!("cmpl-{}", crate::pipeline::new_session_id()),
        "object": "text_completion",
        "created": created,
        "model": req.model.unwrap_or_else(|| st.model_name.clone()),
        "choices": [{
            "index": 0,
            "text": out.text,
            "finish_reason": out.finish_reason,
            "logprobs": null,
            "token_ids": out.generated_token_ids,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
    .into_response()
}
