//! `/healthz` (the process lives), `/readyz` (a store quorum answers a
//! linearizable read) and `/metrics` (Prometheus text), plus the middleware
//! that counts requests into [`crate::metrics::Metrics`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::method_label;
use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Counts each request under its route pattern (a fixed set: the router's,
/// not the raw path, so ids do not grow the label set) and method label;
/// an unmatched path is `other`. No client can add a label value.
pub async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let method = method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .observe(method, &route, resp.status().as_str(), start.elapsed());
    resp
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 while a linearizable read succeeds (it needs a quorum), 503 otherwise.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let key = format!("{}/control/ready", state.settings.cairn_prefix);
    match tokio::time::timeout(Duration::from_secs(3), state.store.quorum_read(&key)).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", e.body),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no store quorum answered within 3s\n",
        )
            .into_response(),
    }
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.render() {
        Ok(buf) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
