//! `GET /status`, `GET /metrics` and `GET /v1/models`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::ApiState;

/// The route source's view (node, peers, coverage, last route) plus this API's own.
pub async fn status(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let mut v = st.routes.status();
    let api = json!({
        "model": st.model_name,
        "model_id": st.model_id.to_string(),
        "context_length": st.client.context_length,
        "max_concurrent_requests": st.limits.max_concurrent_requests,
        "max_prompt_tokens": st.limits.max_prompt_tokens,
        "active_requests": st.metrics.active_requests(),
        "cancelled_requests": st.metrics.cancelled_requests(),
        "prompt_tokens": st.metrics.prompt_tokens(),
        "generated_tokens": st.metrics.generated_tokens(),
        "uptime_secs": st.started.elapsed().as_secs(),
    });
    match v.as_object_mut() {
        Some(obj) => {
            obj.insert("api".into(), api);
            if !st.node_info.is_null() {
                obj.entry("node").or_insert_with(|| st.node_info.clone());
            }
        }
        None => v = json!({"routes": v, "api": api}),
    }
    Json(v)
}

pub async fn metrics(State(st): State<Arc<ApiState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
}

fn model_object(st: &ApiState) -> Value {
    json!({
        "id": st.model_name,
        "object": "model",
        "created": st.created,
        "owned_by": "lamina",
        "lamina_model_id": st.model_id.to_string(),
    })
}

pub async fn models(State(st): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&st)]}))
}

pub async fn model(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.check_model(Some(&name))?;
    Ok(Json(model_object(&st)))
}
