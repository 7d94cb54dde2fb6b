//! Prometheus text on `--metrics` at `/apisix/prometheus/metrics`, with
//! APISIX's metric names. Per-request metrics (`apisix_http_status`,
//! `apisix_http_latency`, `apisix_bandwidth`) are recorded only for
//! requests whose plugins include `prometheus` (on the route, its service,
//! or a global rule), as in APISIX; the gauges always.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// APISIX's default latency buckets (ms).
const BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
    60000.0,
];

/// Bounds the label sets kept (a flood of distinct routes/nodes cannot grow memory).
const MAX_SERIES: usize = 20_000;

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, ms: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if ms <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += ms;
        self.count += 1;
    }

    fn add(&mut self, o: &Histogram) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }
}

/// The labels of one series of per-request metrics (`apisix_http_status`'s;
/// latency and bandwidth use a subset and are summed over the rest when
/// rendered).
#[derive(Clone, PartialEq, Eq)]
struct SeriesKey {
    code: u16,
    route: String,
    matched_uri: String,
    matched_host: String,
    service: String,
    consumer: String,
    node: String,
}

impl SeriesKey {
    fn is(&self, l: &RequestLabels<'_>) -> bool {
        self.code == l.code
            && self.route == l.route
            && self.matched_uri == l.matched_uri
            && self.matched_host == l.matched_host
            && self.service == l.service
            && self.consumer == l.consumer
            && self.node == l.node
    }

    /// `route=…,service=…,consumer=…,node=…`: latency's and bandwidth's labels.
    fn base(&self) -> String {
        format!(
            "route=\"{}\",service=\"{}\",consumer=\"{}\",node=\"{}\"",
            esc(&self.route),
            esc(&self.service),
            esc(&self.consumer),
            esc(&self.node)
        )
    }
}

/// What one series counted.
#[derive(Default)]
struct Series {
    requests: u64,
    /// request, upstream, apisix (the last two only when an upstream answered).
    latency: [Option<Histogram>; 3],
    ingress: u64,
    egress: u64,
}

const LATENCY_TYPES: [&str; 3] = ["request", "upstream", "apisix"];

/// Per-request series, found by a hash of the borrowed labels so that a
/// request of a known series neither formats nor allocates (was: five label
/// strings formatted and escaped, four maps locked, per request).
#[derive(Default)]
struct SeriesMap {
    by_hash: HashMap<u64, Vec<(SeriesKey, Series)>>,
    len: usize,
}

fn labels_hash(l: &RequestLabels<'_>) -> u64 {
    let mut h = DefaultHasher::new();
    (
        l.code,
        l.route,
        l.matched_uri,
        l.matched_host,
        l.service,
        l.consumer,
        l.node,
    )
        .hash(&mut h);
    h.finish()
}

#[derive(Default)]
pub struct Metrics {
    pub etcd_reachable: AtomicI64,
    pub config_revision: AtomicI64,
    pub connections_active: Arc<AtomicI64>,
    pub requests_total: AtomicU64,
    pub invalid_resources: AtomicU64,
    pub full_reloads: AtomicU64,
    series: Mutex<SeriesMap>,
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

impl Metrics {
    pub fn new(hostname: String) -> Metrics {
        Metrics {
            hostname,
            ..Default::default()
        }
    }

    pub fn unsupported_plugin(&self, name: &str) {
        let mut m = self.unsupported.lock().unwrap_or_else(|p| p.into_inner());
        let key = format!("plugin=\"{}\"", esc(name));
        if !m.contains_key(&key) && m.len() >= MAX_SERIES {
            return;
        }
        *m.entry(key).or_default() += 1;
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
        let hash = labels_hash(l);
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let SeriesMap { by_hash, len } = &mut *m;
        let bucket = by_hash.entry(hash).or_default();
        let i = match bucket.iter().position(|(k, _)| k.is(l)) {
            Some(i) => i,
            None => {
                if *len >= MAX_SERIES {
                    return;
                }
                *len += 1;
                bucket.push((
                    SeriesKey {
                        code: l.code,
                        route: l.route.to_string(),
                        matched_uri: l.matched_uri.to_string(),
                        matched_host: l.matched_host.to_string(),
                        service: l.service.to_string(),
                        consumer: l.consumer.to_string(),
                        node: l.node.to_string(),
                    },
                    Series::default(),
                ));
                bucket.len() - 1
            }
        };
        let s = &mut bucket[i].1;
        s.requests += 1;
        s.latency[0]
            .get_or_insert_with(Histogram::default)
            .observe(total_ms);
        if let Some(u) = upstream_ms {
            s.latency[1]
                .get_or_insert_with(Histogram::default)
                .observe(u);
            s.latency[2]
                .get_or_insert_with(Histogram::default)
                .observe((total_ms - u).max(0.0));
        }
        s.ingress += ingress;
        s.egress += egress;
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
        // The series, as the text APISIX renders: status by every label,
        // latency and bandwidth by route/service/consumer/node (summed over
        // codes and matched uri/host), each sorted by its label text.
        let mut status: BTreeMap<String, u64> = BTreeMap::new();
        let mut latency: BTreeMap<String, Histogram> = BTreeMap::new();
        let mut bandwidth: BTreeMap<String, u64> = BTreeMap::new();
        for (k, s) in self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_hash
            .values()
            .flatten()
        {
            let base = k.base();
            status.insert(
                format!(
                    "code=\"{}\",route=\"{}\",matched_uri=\"{}\",matched_host=\"{}\",service=\"{}\",consumer=\"{}\",node=\"{}\"",
                    k.code,
                    esc(&k.route),
                    esc(&k.matched_uri),
                    esc(&k.matched_host),
                    esc(&k.service),
                    esc(&k.consumer),
                    esc(&k.node)
                ),
                s.requests,
            );
            for (ty, h) in LATENCY_TYPES.iter().zip(&s.latency) {
                if let Some(h) = h {
                    latency
                        .entry(format!("type=\"{ty}\",{base}"))
                        .or_default()
                        .add(h);
                }
            }
            *bandwidth
                .entry(format!("type=\"ingress\",{base}"))
                .or_default() += s.ingress;
            *bandwidth
                .entry(format!("type=\"egress\",{base}"))
                .or_default() += s.egress;
        }
        for (k, v) in &status {
            let _ = writeln!(o, "apisix_http_status{{{k}}} {v}");
        }
        g(
            &mut o,
            "apisix_http_latency",
            "HTTP request latency in milliseconds per service in APISIX",
            "histogram",
        );
        for (k, h) in &latency {
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
        for (k, v) in &bandwidth {
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
