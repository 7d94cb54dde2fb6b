//! Prometheus text on `--metrics` at `/apisix/prometheus/metrics`, with
//! APISIX's metric names. Per-request metrics (`apisix_http_status`,
//! `apisix_http_latency`, `apisix_bandwidth`) are recorded only for
//! requests whose plugins include `prometheus` (on the route, its service,
//! or a global rule), as in APISIX; the gauges always.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// APISIX's default latency buckets (ms).
const BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
    60000.0,
];

/// Bounds the label sets kept (a flood of distinct routes/nodes cannot grow memory).
const MAX_SERIES: usize = 20_000;

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    pub etcd_reachable: AtomicI64,
    pub config_revision: AtomicI64,
    pub connections_active: Arc<AtomicI64>,
    pub requests_total: AtomicU64,
    pub invalid_resources: AtomicU64,
    pub full_reloads: AtomicU64,
    status: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    bandwidth: Mutex<BTreeMap<String, u64>>,
    unsupported: Mutex<BTreeMap<String, u64>>,
    pub hostname: String,
}

/// The labels of one request, APISIX's names.
pub struct RequestLabels<'a> {
    pub code: u16,
    pub route: &'a str,
    pub matched_uri: &'a str,
    pub matched_host: &'a str,
    pub service: &'a str,
    pub consumer: &'a str,
    pub node: &'a str,
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn bump<V: Default>(m: &Mutex<BTreeMap<String, V>>, key: String, f: impl FnOnce(&mut V)) {
    let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
    if !m.contains_key(&key) && m.len() >= MAX_SERIES {
        return;
    }
    f(m.entry(key).or_default());
}

impl Metrics {
    pub fn new(hostname: String) -> Metrics {
        Metrics {
            hostname,
            ..Default::default()
        }
    }

    pub fn unsupported_plugin(&self, name: &str) {
        bump(
            &self.unsupported,
            format!("plugin=\"{}\"", esc(name)),
            |v| *v += 1,
        );
    }

    /// One request through a route with the prometheus plugin.
    pub fn request(
        &self,
        l: &RequestLabels<'_>,
        total_ms: f64,
        upstream_ms: Option<f64>,
        ingress: u64,
        egress: u64,
    ) {
        let base = format!(
            "route=\"{}\",service=\"{}\",consumer=\"{}\",node=\"{}\"",
            esc(l.route),
            esc(l.service),
            esc(l.consumer),
            esc(l.node)
        );
        bump(
            &self.status,
            format!(
                "code=\"{}\",route=\"{}\",matched_uri=\"{}\",matched_host=\"{}\",service=\"{}\",consumer=\"{}\",node=\"{}\"",
                l.code,
                esc(l.route),
                esc(l.matched_uri),
                esc(l.matched_host),
                esc(l.service),
                esc(l.consumer),
                esc(l.node)
            ),
            |v| *v += 1,
        );
        let obs = |ty: &str, ms: f64| {
            bump(&self.latency, format!("type=\"{ty}\",{base}"), |h| {
                if h.counts.is_empty() {
                    h.counts = vec![0; BUCKETS.len()];
                }
                for (i, b) in BUCKETS.iter().enumerate() {
                    if ms <= *b {
                        h.counts[i] += 1;
                    }
                }
                h.sum += ms;
                h.count += 1;
            })
        };
        obs("request", total_ms);
        if let Some(u) = upstream_ms {
            obs("upstream", u);
            obs("apisix", (total_ms - u).max(0.0));
        }
        bump(&self.bandwidth, format!("type=\"ingress\",{base}"), |v| {
            *v += ingress
        });
        bump(&self.bandwidth, format!("type=\"egress\",{base}"), |v| {
            *v += egress
        });
    }

    /// `apisix_upstream_status`: 1 healthy, 0 unhealthy, for every node of
    /// every upstream with health checks (inline ones named by their route
    /// or service key, as APISIX does).
    pub fn upstream_status(&self, cfg: &crate::state::Config, prefix: &str) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP apisix_upstream_status Upstream status from health check\n# TYPE apisix_upstream_status gauge");
        let ups = cfg
            .upstreams
            .values()
            .chain(cfg.routes.values().filter_map(|r| r.upstream.as_ref()))
            .chain(cfg.services.values().filter_map(|s| s.upstream.as_ref()));
        for up in ups.filter(|u| u.checks.is_some()) {
            for (i, n) in up.spec.nodes.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "apisix_upstream_status{{name=\"{}/{}\",ip=\"{}\",port=\"{}\"}} {}",
                    esc(prefix),
                    esc(&up.key),
                    esc(&n.host),
                    n.port,
                    u8::from(up.health[i].healthy())
                );
            }
        }
        o
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let g = |o: &mut String, name: &str, help: &str, ty: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {ty}");
        };
        g(
            &mut o,
            "apisix_etcd_reachable",
            "Config server etcd reachable from APISIX, 0 is unreachable",
            "gauge",
        );
        let _ = writeln!(
            o,
            "apisix_etcd_reachable {}",
            self.etcd_reachable.load(Ordering::Relaxed)
        );
        g(
            &mut o,
            "apisix_etcd_modify_indexes",
            "Etcd modify index for APISIX keys",
            "gauge",
        );
        let _ = writeln!(
            o,
            "apisix_etcd_modify_indexes{{key=\"prev_index\"}} {}",
            self.config_revision.load(Ordering::Relaxed)
        );
        g(&mut o, "apisix_node_info", "Info of APISIX node", "gauge");
        let _ = writeln!(
            o,
            "apisix_node_info{{hostname=\"{}\"}} 1",
            esc(&self.hostname)
        );
        g(
            &mut o,
            "apisix_nginx_http_current_connections",
            "Number of HTTP connections",
            "gauge",
        );
        let _ = writeln!(
            o,
            "apisix_nginx_http_current_connections{{state=\"active\"}} {}",
            self.connections_active.load(Ordering::Relaxed)
        );
        g(
            &mut o,
            "apisix_http_requests_total",
            "The total number of client requests since APISIX started",
            "gauge",
        );
        let _ = writeln!(
            o,
            "apisix_http_requests_total {}",
            self.requests_total.load(Ordering::Relaxed)
        );
        g(
            &mut o,
            "apisix_http_status",
            "HTTP status codes per service in APISIX",
            "counter",
        );
        for (k, v) in self.status.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(o, "apisix_http_status{{{k}}} {v}");
        }
        g(
            &mut o,
            "apisix_http_latency",
            "HTTP request latency in milliseconds per service in APISIX",
            "histogram",
        );
        for (k, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "apisix_http_latency_bucket{{{k},le=\"{b:.0}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "apisix_http_latency_bucket{{{k},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(o, "apisix_http_latency_sum{{{k}}} {}", h.sum);
            let _ = writeln!(o, "apisix_http_latency_count{{{k}}} {}", h.count);
        }
        g(
            &mut o,
            "apisix_bandwidth",
            "Total bandwidth in bytes consumed per service in APISIX",
            "counter",
        );
        for (k, v) in self
            .bandwidth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(o, "apisix_bandwidth{{{k}}} {v}");
        }
        g(
            &mut o,
            "cairn_gateway_config_revision",
            "Store revision of the config this gateway applied",
            "gauge",
        );
        let _ = writeln!(
            o,
            "cairn_gateway_config_revision {}",
            self.config_revision.load(Ordering::Relaxed)
        );
        g(
            &mut o,
            "cairn_gateway_invalid_resources_total",
            "Store values refused (the previous good value was kept)",
            "counter",
        );
        let _ = writeln!(
            o,
            "cairn_gateway_invalid_resources_total {}",
            self.invalid_resources.load(Ordering::Relaxed)
        );
        g(
            &mut o,
            "cairn_gateway_full_reloads_total",
            "Full reads of the prefix (start, compaction, store restart)",
            "counter",
        );
        let _ = writeln!(
            o,
            "cairn_gateway_full_reloads_total {}",
            self.full_reloads.load(Ordering::Relaxed)
        );
        g(
            &mut o,
            "cairn_gateway_unsupported_plugins",
            "Plugins configured in the store that this gateway does not implement",
            "counter",
        );
        for (k, v) in self
            .unsupported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(o, "cairn_gateway_unsupported_plugins{{{k}}} {v}");
        }
        o
    }
}
