//! The access layer of every `/v1` route: the key (`Authorization: Bearer KEY`), the
//! key's quotas, and the request's audit line.
//!
//! Without `--api-keys` every request is let through (a loopback node, or one started
//! with `--api-open`); with them, a request without a key or with one that is not in the
//! keys file is answered 401, and one over a quota 429 with `Retry-After`, both in
//! OpenAI's error shape, so the official clients raise their usual exceptions.
//!
//! Each admitted request carries a [`Caller`] (a request extension): the handler and the
//! generation it starts hold it, and when the last of them lets go (a streamed answer
//! outlives the handler) its slot is freed and its audit line written.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::access::Access;
use super::audit::{AuditLine, RouteHop};
use super::errors::ApiError;
use super::quota::{day_text, rfc3339_ms, InFlight, Refusal};
use super::{ApiState, RequestId};

/// The request a handler serves: whose it is, and its audit line in the making.
#[derive(Clone)]
pub struct Caller(Arc<CallerInner>);

struct CallerInner {
    key: Option<String>,
    access: Arc<Access>,
    /// The key's slot of its `concurrent` limit, freed with the last holder.
    _slot: Option<InFlight>,
    started: Instant,
    line: Mutex<Pending>,
}

struct Pending {
    line: AuditLine,
    /// Whether the generation has set the status (a stream's outcome is known only at
    /// its end, after the HTTP status went out).
    finished: bool,
}

/// What a finished generation reports for usage and audit. Tokens of a failed generation
/// count zero: the key is not charged for the mesh's failures.
#[derive(Debug, Default)]
pub struct Outcome<'a> {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub route: Vec<RouteHop>,
    pub status: u16,
    pub completion: Option<&'a str>,
}

impl Caller {
    fn new(
        access: Arc<Access>,
        key: Option<String>,
        slot: Option<InFlight>,
        line: AuditLine,
    ) -> Self {
        Self(Arc::new(CallerInner {
            key,
            access,
            _slot: slot,
            started: Instant::now(),
            line: Mutex::new(Pending {
                line,
                finished: false,
            }),
        }))
    }

    /// The name of the caller's key (`None` without `--api-keys`).
    pub fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    /// Whether the audit keeps prompt and completion text.
    pub fn keeps_content(&self) -> bool {
        self.0.access.audit.as_ref().is_some_and(|a| a.content)
    }

    fn with_line(&self, f: impl FnOnce(&mut Pending)) {
        let mut g = match self.0.line.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g);
    }

    /// The model the request asked for.
    pub fn set_model(&self, model: &str) {
        self.with_line(|p| p.line.model = Some(model.to_owned()));
    }

    /// The prompt as the request gave it; kept only with `--audit-content`.
    pub fn set_prompt(&self, prompt: impl FnOnce() -> serde_json::Value) {
        if self.keeps_content() {
            let v = prompt();
            self.with_line(|p| p.line.prompt = Some(v));
        }
    }

    /// Counts a generation's tokens against the key and fills in the audit line.
    pub fn finished(&self, o: Outcome<'_>) {
        if let Some(k) = self.key() {
            self.0
                .access
                .add_tokens(k, o.prompt_tokens, o.completion_tokens);
        }
        let content = self.keeps_content();
        self.with_line(|p| {
            p.finished = true;
            p.line.prompt_tokens = o.prompt_tokens;
            p.line.completion_tokens = o.completion_tokens;
            p.line.route = o.route;
            p.line.status = o.status;
            if content {
                p.line.completion = o.completion.map(str::to_owned);
            }
        });
    }

    /// The HTTP status sent, unless the generation has set its own outcome.
    fn answered(&self, status: StatusCode) {
        self.with_line(|p| {
            if !p.finished {
                p.line.status = status.as_u16();
            }
        });
    }
}

impl Drop for CallerInner {
    fn drop(&mut self) {
        let Some(audit) = &self.access.audit else {
            return;
        };
        let pending = match self.line.get_mut() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut p = std::mem::take(&mut pending.line);
        p.key = self.key.clone();
        p.duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        audit.record(p);
    }
}

/// The key of `Authorization: Bearer KEY` (the scheme in any case), if present.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, key) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

/// OpenAI's answer to a missing or unknown key.
pub fn invalid_api_key(presented: bool) -> ApiError {
    let message = if presented {
        "Incorrect API key provided. Ask this node's operator for a key (`lamina keys add`)."
    } else {
        "You didn't provide an API key. Send it as `Authorization: Bearer KEY` \
         (keys are made with `lamina keys add`)."
    };
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        .with_code("invalid_api_key")
}

/// OpenAI's answer to a request over a quota, with `Retry-After`.
pub fn over_quota(key: &str, r: &Refusal) -> Response {
    let e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        format!(
            "Rate limit reached for key `{key}`: its limit is {}. Retry in {} s.",
            r.limit, r.retry_after_secs
        ),
    )
    .with_code("rate_limit_exceeded");
    let mut resp = e.into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after_secs));
    resp
}

/// The middleware of the `/v1` routes.
pub async fn authorize(State(st): State<Arc<ApiState>>, mut req: Request, next: Next) -> Response {
    let access = st.access.clone();
    let line = AuditLine {
        time: rfc3339_ms(crate::ids::now_ms()),
        request_id: req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        ..AuditLine::default()
    };
    let (key, slot) = if access.requires_keys() {
        let presented = bearer(req.headers());
        let Some(entry) = presented.and_then(|k| access.find_key(k)) else {
            let caller = Caller::new(access, None, None, line);
            caller.answered(StatusCode::UNAUTHORIZED);
            tracing::info!(presented = presented.is_some(), "refused: no valid API key");
            let mut resp = invalid_api_key(presented.is_some()).into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        };
        match access.admit(&entry) {
            Ok(slot) => (Some(entry.name), Some(slot)),
            Err(refusal) => {
                let caller = Caller::new(access, Some(entry.name.clone()), None, line);
                caller.answered(StatusCode::TOO_MANY_REQUESTS);
                tracing::info!(key = %entry.name, limit = %refusal.limit, "refused: over quota");
                return over_quota(&entry.name, &refusal);
            }
        }
    } else {
        (None, None)
    };
    let caller = Caller::new(access, key, slot, line);
    req.extensions_mut().insert(caller.clone());
    let resp = next.run(req).await;
    caller.answered(resp.status());
    resp
}

/// `GET /v1/usage`: the caller's key's counts today (this request included) and limits.
pub async fn usage(
    State(st): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(name) = caller.key() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "usage is counted per API key, and this node serves its API without --api-keys",
        )
        .with_code("no_api_keys"));
    };
    let (u, in_flight) = st.access.usage(name);
    let limits = st
        .access
        .key_named(name)
        .map(|e| e.limits)
        .unwrap_or_default();
    Ok(Json(json!({
        "object": "usage",
        "key": name,
        "date": day_text(u.day),
        "requests": u.requests,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.tokens(),
        "in_flight": in_flight,
        "limits": {
            "rpm": limits.rpm,
            "tokens_per_day": limits.tokens_per_day,
            "concurrent": limits.concurrent,
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_keys_are_read_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer lam-abc"),
        );
        assert_eq!(bearer(&h), Some("lam-abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  lam-x "),
        );
        assert_eq!(bearer(&h), Some("lam-x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn refusals_have_openai_shape() {
        let e = invalid_api_key(false);
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.body()["error"]["code"], "invalid_api_key");
        assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        let r = over_quota(
            "alice",
            &Refusal {
                limit: super::super::quota::Exceeded::RequestsPerMinute(3),
                retry_after_secs: 17,
            },
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "17");
    }
}
