//! `/healthz` (the process lives), `/readyz` (a store quorum answers a
//! linearizable read) and `/metrics` (Prometheus text), plus the middleware
//! that counts requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::AppState;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "cairn_control_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "cairn_control_http_request_duration_seconds",
                "HTTP request latency",
            ),
            &["method", "route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("register once");
        registry
            .register(Box::new(duration.clone()))
            .expect("register once");
        Metrics {
            registry,
            requests,
            duration,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The method label: one of a fixed set, `other` for anything else.
pub fn method_label(m: &axum::http::Method) -> &'static str {
    const KNOWN: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    KNOWN
        .iter()
        .find(|k| **k == m.as_str())
        .copied()
        .unwrap_or("other")
}

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
    let m = &state.metrics;
    m.duration
        .with_label_values(&[method, &route])
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[method, &route, resp.status().as_str()])
        .inc();
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
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&state.metrics.registry.gather(), &mut buf) {
        Ok(()) => (
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
