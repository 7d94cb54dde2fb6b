//! [`Metrics`]: the Prometheus registry of the HTTP request counters and
//! latencies (`/metrics`, counted by `health::track`). A leaf, so `state`
//! can hold it without importing the handlers that read `AppState`.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

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

    /// Counts one request under its route pattern and method label.
    pub fn observe(&self, method: &str, route: &str, code: &str, took: Duration) {
        self.duration
            .with_label_values(&[method, route])
            .observe(took.as_secs_f64());
        self.requests
            .with_label_values(&[method, route, code])
            .inc();
    }

    /// Every metric in Prometheus' text format.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
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
