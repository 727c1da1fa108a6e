//! The HTTP server: the API's router on hyper, with the bounds `axum::serve` does not
//! keep: connections at once, a deadline on each request's headers (slowloris), and a
//! deadline and size cap on each body ([`bounded_body`]).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::ApiError;
use crate::limits::{Bound, ConnRefused, Connections, HttpBounds, Refusals};

/// Serves `app` on `listener` until `stop`, then lets open connections finish their
/// requests. A connection over [`HttpBounds::max_connections`] (in all, or from its IP
/// address) is closed at accept (counted as a refusal): answering it would take the very
/// resources the cap protects.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    bounds: HttpBounds,
    refusals: Refusals,
    stop: CancellationToken,
) {
    let held: Connections<std::net::IpAddr> =
        Connections::new(bounds.max_connections, bounds.max_connections_per_ip);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::debug!("HTTP accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match held.admit(addr.ip()) {
            Ok(p) => p,
            Err(refused) => {
                refusals.count(match refused {
                    ConnRefused::Total(_) => Bound::HttpConnections,
                    ConnRefused::PerPeer(_) => Bound::HttpIpConnections,
                });
                tracing::debug!(%addr, "refused an HTTP connection: {refused}");
                drop(stream);
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let svc = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        let refusals = refusals.clone();
        conns.spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(bounds.header_within);
            let conn = http.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                if e.is_timeout() {
                    refusals.count(Bound::HttpDeadline);
                }
                tracing::debug!(%addr, "HTTP connection ended: {e}");
            }
        });
    }
    while conns.join_next().await.is_some() {}
}

/// Reads the whole request body within [`HttpBounds::body_within`] and
/// [`HttpBounds::max_body_bytes`] before any handler sees it: a client that trickles its
/// body (or sends an endless one) is answered 408 / 413 instead of holding a task.
///
/// Its state is the bounds and the counters only, so any router can use it.
pub async fn bounded_body(
    State((bounds, refusals)): State<(HttpBounds, Refusals)>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, bounds.max_body_bytes);
    let bytes = match tokio::time::timeout(bounds.body_within, read).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            refusals.count(Bound::HttpBody);
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!(
                    "the request body is over {} bytes (or broke off)",
                    bounds.max_body_bytes
                ),
            )
            .into_response();
        }
        Err(_) => {
            refusals.count(Bound::HttpDeadline);
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                format!(
                    "the request body did not arrive within {:?}",
                    bounds.body_within
                ),
            )
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}
