//! OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the HTTP
//! status OpenAI would use, so clients' error handling (the `openai` package raises by
//! status) works unchanged.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::pipeline::PipelineError;
use crate::routes::RouteError;

/// One error answer of the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// A 400 pointing at one request field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(message).with_param(param)
    }

    /// A 400 `context_length_exceeded`.
    pub fn context_length(param: &str, message: impl Into<String>) -> Self {
        Self::invalid_param(param, message).with_code("context_length_exceeded")
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist"),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    pub fn too_many_requests(limit: usize) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("this node already runs {limit} requests (its limit); retry later"),
        )
        .with_code("rate_limit_exceeded")
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no route {path}"),
        )
        .with_code("unknown_url")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
            .with_code("internal_error")
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body (also sent as an SSE event when a stream fails midway).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let code = match e {
            RouteError::Uncovered { .. } => "layers_uncovered",
            RouteError::Other(_) => "no_route",
        };
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            e.to_string(),
        )
        .with_code(code)
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            // Failover ran out of peers: the same answer as a request that found none.
            PipelineError::Uncovered { layers } => RouteError::Uncovered { layers }.into(),
            PipelineError::NoRoute(m) => RouteError::Other(m).into(),
            e => Self::new(StatusCode::BAD_GATEWAY, "server_error", e.to_string())
                .with_code("pipeline_error"),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // Axum answers a JSON body of the wrong shape with 422; OpenAI says 400.
        let status = match r.status() {
            s @ (StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::PAYLOAD_TOO_LARGE) => s,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = match &r {
            JsonRejection::MissingJsonContentType(_) => {
                "the body must be JSON, sent with `Content-Type: application/json`".to_owned()
            }
            _ => r.body_text(),
        };
        Self::new(status, "invalid_request_error", message)
    }
}

/// A serde error on the request body: 400 naming the field (`messages[1].content`).
pub fn from_serde(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if path.is_empty() || path == "." {
        ApiError::invalid(format!("invalid request body: {inner}"))
    } else {
        ApiError::invalid_param(&path, format!("invalid `{path}`: {inner}"))
    }
}

/// Parses a JSON value into a request type, naming the offending field on failure.
pub fn parse_value<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(from_serde)
}

/// `Json<T>` whose every rejection is an OpenAI-shaped [`ApiError`].
///
/// Axum's own JSON extractor reads the body (its rejections, wrong Content-Type included,
/// are mapped); the typed parse goes through `serde_path_to_error` so the error can name
/// the field in `param`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<serde_json::Value>::from_request(req, state).await?;
        if !v.is_object() {
            return Err(ApiError::invalid("the request body must be a JSON object"));
        }
        parse_value(v).map(ApiJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::context_length("max_tokens", "too long");
        assert_eq!(
            e.body(),
            json!({"error": {"message": "too long", "type": "invalid_request_error",
                "param": "max_tokens", "code": "context_length_exceeded"}})
        );
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = ApiError::invalid("x");
        assert_eq!(e.body()["error"]["param"], serde_json::Value::Null);
        assert_eq!(e.body()["error"]["code"], serde_json::Value::Null);
    }

    #[test]
    fn route_and_pipeline_errors_map_to_503_and_502() {
        let e = ApiError::from(RouteError::Uncovered {
            layers: "3..5".into(),
        });
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.message.contains("3..5"), "{}", e.message);
        let e = ApiError::from(RouteError::Other("no peers".into()));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let e = ApiError::from(PipelineError::InvalidChain("boom".into()));
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert_eq!(e.code, Some("pipeline_error"));
        let e = ApiError::from(PipelineError::Uncovered {
            layers: "2..4".into(),
        });
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code, Some("layers_uncovered"));
    }

    #[test]
    fn serde_errors_name_the_field() {
        #[derive(serde::Deserialize, Debug)]
        struct R {
            #[allow(dead_code)]
            prompt: String,
        }
        let e = parse_value::<R>(json!({"prompt": 5})).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("prompt"));
        let e = parse_value::<R>(json!({})).unwrap_err();
        assert_eq!(e.kind, "invalid_request_error");
        assert!(e.message.contains("prompt"), "{}", e.message);
    }
}
