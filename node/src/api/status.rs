//! `GET /status`, `GET /metrics` and `GET /v1/models`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::{ApiState, StatusSource};
use crate::mesh::{MeshStatus, RouteSummary};
use crate::pipeline::check_chain;
use crate::routes::{coverage, uncovered_layers, ChainFileStatus};

/// The routes' view (the mesh's peers, coverage and last route, or the chain file's)
/// plus this API's own counters and the node serving it.
pub async fn status(State(st): State<Arc<ApiState>>) -> Json<Value> {
    let mut v = match &st.status {
        StatusSource::Mesh(mesh) => mesh_json(&mesh.status()),
        StatusSource::ChainFile(routes) => chain_file_json(&routes.status()),
    };
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
    if let Some(obj) = v.as_object_mut() {
        obj.insert("api".into(), api);
        if let Some(n) = &st.node {
            obj.insert(
                "node".into(),
                json!({
                    "name": n.name,
                    "peer_id": n.peer_id.to_string(),
                    "layers": n.layers_text(),
                    "listen": n.dataplane.to_string(),
                }),
            );
        }
    }
    Json(v)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `/status` of a node routing through the mesh.
pub fn mesh_json(m: &MeshStatus) -> Value {
    let peers: Vec<Value> = m
        .peers
        .iter()
        .map(|p| {
            json!({
                "peer_id": p.peer_id.to_string(),
                "self": p.is_self,
                "layers": p.layers.map(|r| r.to_string()),
                "state": format!("{:?}", p.state).to_lowercase(),
                "tokens_per_sec": p.tokens_per_sec,
                "measured_tokens_per_sec": p.measured_tokens_per_sec,
                "routed_tokens_per_sec": p.routed_tokens_per_sec,
                "demoted": p.demoted,
                "routes": p.routes,
                "path": p.path,
                "free_slots": p.free_slots,
                "dataplane": p.dataplane,
                "api": p.api,
                "rtt_ms": p.rtt.map(ms),
                "reachable": p.reachable,
                "banned_for_ms": p.banned_for.map_or(0, |d| d.as_millis() as u64),
                "failures": p.failures,
                "expires_in_ms": p.expires_in.as_millis() as u64,
                "version": p.version,
            })
        })
        .collect();
    let last_route = m.last_route.as_ref().map(|r| match r {
        RouteSummary::Planned {
            hops,
            est_secs_per_token,
        } => json!({
            "hops": hops.iter().map(|(peer, layers, addr)| json!({
                "peer": peer.to_string(), "layers": layers.to_string(), "addr": addr,
            })).collect::<Vec<_>>(),
            "est_ms_per_token": est_secs_per_token * 1e3,
        }),
        RouteSummary::Failed(e) => json!({ "error": e }),
    });
    json!({
        "peer_id": m.peer_id.to_string(),
        "model_id": m.model_id.to_string(),
        "n_layers": m.n_layers,
        "listen": m.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "connected_peers": m.connected_peers,
        "rejected_announcements": m.rejected_announcements,
        "refused_connections": m.refused_connections,
        "peers": peers,
        "coverage": m.coverage.iter().map(|l| json!({
            "servers": l.servers, "tokens_per_sec": l.tokens_per_sec,
        })).collect::<Vec<_>>(),
        "uncovered": m.uncovered.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "complete": m.complete,
        "last_route": last_route,
        "nat_status": m.nat_status,
        "upnp": m.upnp,
    })
}

/// `/status` of a node routing through a chain file.
pub fn chain_file_json(c: &ChainFileStatus) -> Value {
    let file = match &c.chain {
        Ok(chain) => {
            let cov = coverage(chain, c.n_layers);
            json!({
                "chain": chain,
                "coverage": cov,
                "uncovered": uncovered_layers(&cov),
                "usable": check_chain(chain, c.n_layers).is_ok(),
            })
        }
        Err(e) => json!({ "error": e }),
    };
    json!({
        "routes": "chain_file",
        "chain_file": c.path.display().to_string(),
        "n_layers": c.n_layers,
        "peers": file.get("chain").cloned().unwrap_or(json!([])),
        "coverage": file.get("coverage").cloned().unwrap_or(Value::Null),
        "file": file,
        "last_route": c.last.as_ref().map(|(at, chain)| json!({"at": at, "chain": chain})),
    })
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
