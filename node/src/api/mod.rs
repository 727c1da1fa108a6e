//! The OpenAI-compatible HTTP API of a node: `/v1/models`, `/v1/completions`,
//! `/v1/chat/completions` (streamed with SSE or whole), `/v1/usage`, `/status` and
//! `/metrics`.
//!
//! Handlers never pick a chain themselves: they ask a [`RouteSource`] (the mesh, or a
//! chain file). Every answer, errors included, has OpenAI's shape, so the official clients
//! work unchanged. `/status` is rendered here from the typed views of the mesh
//! ([`crate::mesh::MeshStatus`]) or the chain file.
//!
//! Every `/v1` route passes the access layer ([`auth`]): API keys ([`keys`]), quotas
//! ([`quota`]), the day's usage persisted ([`access`]) and the audit log ([`audit`]).

pub mod access;
pub mod audit;
pub mod auth;
mod chat;
mod completions;
pub mod errors;
pub mod event;
pub mod generation;
pub mod keys;
pub mod metrics;
pub mod openai;
pub mod quota;
pub mod server;
mod status;
pub mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lamina_protocol::ModelId;
use lamina_sharding::chat::ChatTemplate;
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use errors::ApiError;
pub use metrics::Metrics;

use crate::info::NodeInfo;
use crate::mesh::MeshHandle;
use crate::pipeline::ChainClient;
use crate::routes::{ChainFileRoutes, RouteSource};
use openai::{Kind, ResponseMeta};

/// What the API admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Generations at once; more are answered 429 rather than queued, so a client can go
    /// to another entry node instead of waiting behind this one.
    pub max_concurrent_requests: usize,
    /// The longest prompt (the model's context length: the prompt needs room for at least
    /// one generated token).
    pub max_prompt_tokens: usize,
    /// Connections, header and body deadlines, body size.
    pub http: crate::limits::HttpBounds,
}

/// Where `/status` learns about the routes.
#[derive(Clone)]
pub enum StatusSource {
    /// The mesh this node belongs to.
    Mesh(MeshHandle),
    /// A chain file read on every request.
    ChainFile(Arc<ChainFileRoutes>),
}

/// What the API is built from.
pub struct ApiParts {
    pub client: ChainClient,
    pub routes: Arc<dyn RouteSource>,
    pub status: StatusSource,
    /// The id shown in `/v1/models` and accepted in `model`.
    pub model_name: String,
    pub model_id: ModelId,
    /// The model's own template (`tokenizer.chat_template`), or ChatML without one.
    pub chat_template: ChatTemplate,
    pub metrics: Arc<Metrics>,
    pub limits: ApiLimits,
    /// The node serving the API, as `/status` shows it.
    pub node: Option<NodeInfo>,
    /// Keys, quotas, usage and audit of the `/v1` routes.
    pub access: Arc<access::Access>,
}

/// What the API handlers share.
pub struct ApiState {
    pub client: ChainClient,
    pub routes: Arc<dyn RouteSource>,
    pub status: StatusSource,
    pub model_name: String,
    /// lamina's blake3 model id; its hex is accepted in `model` too.
    pub model_id: ModelId,
    pub chat_template: ChatTemplate,
    pub metrics: Arc<Metrics>,
    pub limits: ApiLimits,
    pub node: Option<NodeInfo>,
    pub access: Arc<access::Access>,
    slots: Arc<Semaphore>,
    started: Instant,
    created: u64,
}

/// The id of one HTTP request (its tracing span, its `x-request-id`, its response id). It
/// is a [`TraceId`](lamina_protocol::TraceId)'s hex, so the same id names the request in
/// the logs of every hop it goes through.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    /// The trace id this request id is the hex of.
    pub fn trace_id(&self) -> Option<lamina_protocol::TraceId> {
        self.0.parse().ok()
    }
}

impl ApiState {
    pub fn new(p: ApiParts) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(p.limits.max_concurrent_requests)),
            client: p.client,
            routes: p.routes,
            status: p.status,
            model_name: p.model_name,
            model_id: p.model_id,
            chat_template: p.chat_template,
            metrics: p.metrics,
            limits: p.limits,
            node: p.node,
            access: p.access,
            started: Instant::now(),
            created: crate::ids::unix_secs(),
        }
    }

    /// Accepts the model's name, its lamina id (hex, any case) or no model at all.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            None => Ok(()),
            Some(m) if m == self.model_name => Ok(()),
            Some(m) if m.parse::<ModelId>().is_ok_and(|id| id == self.model_id) => Ok(()),
            Some(m) => Err(ApiError::model_not_found(m)),
        }
    }

    fn meta(&self, kind: Kind, rid: &RequestId) -> ResponseMeta {
        ResponseMeta {
            kind,
            id: format!("{}-{}", kind.id_prefix(), rid.0),
            created: crate::ids::unix_secs(),
            model: self.model_name.clone(),
        }
    }
}

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    // `route_layer`: the access layer runs for these routes only (an unknown path is a
    // 404 with or without a key).
    let v1 = Router::new()
        .route("/v1/models", get(status::models))
        .route("/v1/models/{model}", get(status::model))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/usage", get(auth::usage))
        // Layers run outside in, last added first: the key is checked before the body is
        // read (bounded), so a stranger without one cannot make the node buffer anything.
        .route_layer(axum::middleware::from_fn_with_state(
            (state.limits.http, state.metrics.refusals().clone()),
            server::bounded_body,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .merge(v1)
        .route("/status", get(status::status))
        .route("/metrics", get(status::metrics))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn fallback(req: Request) -> ApiError {
    ApiError::not_found(req.uri().path())
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// A span per request, its id on the response, and the request counter.
async fn observe(
    State(st): State<Arc<ApiState>>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = crate::ids::new_trace_id().to_string();
    let endpoint = matched.map_or_else(|| "other".to_owned(), |m| m.as_str().to_owned());
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %id,
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| tracing::debug!(status, "answered"));
    st.metrics.record_request(&endpoint, status);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp.into_response()
}
