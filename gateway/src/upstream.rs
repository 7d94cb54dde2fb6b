//! Upstreams at run time: node choice (weighted round robin, consistent
//! hash, least connections; `priority` groups, lower ones only once every
//! node of the higher ones was tried), and the keep-alive connection pools
//! ([`crate::pool`], one per upstream and serving thread, so the connect
//! timeout is the upstream's and a pooled connection is driven by the
//! thread that uses it).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Uri;

use crate::health::{Checks, NodeHealth, Outcome};
use crate::pool::Pool;
use crate::resources::{Node, Timeout, Upstream};

/// How many serving threads (each with its own current-thread runtime) the
/// gateway runs; set once at start, before any upstream is built.
static WORKERS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This serving thread's index; `None` on the main runtime.
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

pub fn set_workers(n: usize) {
    WORKERS.store(n, Ordering::Relaxed);
}

/// Marks the calling thread as serving thread `i`.
pub fn enter_worker(i: usize) {
    WORKER.with(|w| w.set(Some(i)));
}

pub struct UpstreamRt {
    /// `upstreams/1`, or `routes/1` for an inline upstream: for logs and metrics.
    pub key: String,
    pub spec: Upstream,
    /// One pool per serving thread (see [`set_workers`]), and one for the
    /// main runtime.
    pools: Vec<Arc<Pool>>,
    /// Smooth weighted round robin state (nginx's): current weights per node.
    rr: Mutex<Vec<i64>>,
    /// In-flight requests per node (least_conn).
    active: Vec<AtomicUsize>,
    /// chash ring: (point, node index), sorted.
    ring: Vec<(u64, usize)>,
    /// Per node: `host:port`, for logs and metrics, and where to connect
    /// (`scheme://host:port`, or why it does not parse), made once rather
    /// than per request.
    addrs: Vec<Arc<str>>,
    targets: Vec<Result<Uri, String>>,
    /// `checks`, and each node's health.
    pub checks: Option<Checks>,
    pub health: Vec<NodeHealth>,
}

impl std::fmt::Debug for UpstreamRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRt")
            .field("key", &self.key)
            .finish()
    }
}

fn hash_of(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Virtual points per weight unit on the chash ring.
const POINTS_PER_WEIGHT: usize = 40;
/// Bounds the ring for huge weights.
const MAX_POINTS: usize = 100_000;

impl UpstreamRt {
    pub fn new(key: String, spec: Upstream) -> Result<UpstreamRt, String> {
        let checks = spec.checks.as_ref().map(Checks::parse).transpose()?;
        let timeout = spec.timeout.unwrap_or_default();
        let pools = (0..=WORKERS.load(Ordering::Relaxed))
            .map(|_| Arc::new(Pool::new(spec.nodes.len(), secs(timeout.connect))))
            .collect();
        let mut ring = Vec::new();
        if spec.kind == "chash" {
            let total: usize = spec.nodes.iter().map(|n| n.weight as usize).sum();
            let per = if total * POINTS_PER_WEIGHT > MAX_POINTS {
                (MAX_POINTS / total.max(1)).max(1)
            } else {
                POINTS_PER_WEIGHT
            };
            for (i, n) in spec.nodes.iter().enumerate() {
                for p in 0..(n.weight as usize * per) {
                    ring.push((hash_of(&format!("{}#{p}", n.addr())), i));
                }
            }
            ring.sort_unstable();
        }
        let addrs: Vec<Arc<str>> = spec.nodes.iter().map(|n| Arc::from(n.addr())).collect();
        let targets = addrs
            .iter()
            .map(|a| {
                format!("{}://{a}/", spec.scheme)
                    .parse::<Uri>()
                    .map_err(|e| e.to_string())
            })
            .collect();
        Ok(UpstreamRt {
            key,
            addrs,
            targets,
            rr: Mutex::new(vec![0; spec.nodes.len()]),
            active: spec.nodes.iter().map(|_| AtomicUsize::new(0)).collect(),
            ring,
            health: spec.nodes.iter().map(|_| NodeHealth::default()).collect(),
            checks,
            spec,
            pools,
        })
    }

    /// The pool of the calling thread.
    pub fn pool(&self) -> &Arc<Pool> {
        let last = self.pools.len() - 1;
        let i = WORKER
            .with(|w| w.get())
            .filter(|i| *i < last)
            .unwrap_or(last);
        &self.pools[i]
    }

    /// Passive health check: what an attempt on node `i` showed.
    pub fn observed(&self, i: usize, o: Outcome) {
        let Some(p) = self.checks.as_ref().and_then(|c| c.passive.as_ref()) else {
            return;
        };
        if self.health[i].report(o, &p.rules()) {
            tracing::warn!(upstream = %self.key, node = %self.node(i).addr(), healthy = self.health[i].healthy(), outcome = ?o, "passive health check changed a node's state");
        }
    }

    pub fn timeout(&self, route: Option<Timeout>) -> Timeout {
        route.or(self.spec.timeout).unwrap_or_default()
    }

    /// How many more nodes to try after a failure: `retries`, or every other
    /// node when unset (APISIX's default).
    pub fn retries(&self) -> usize {
        match self.spec.retries {
            Some(r) => r as usize,
            None => self.spec.nodes.len().saturating_sub(1),
        }
    }

    /// Picks a node not in `tried`: the highest priority group that still has
    /// an untried node with weight > 0; `hash_key` for chash.
    pub fn pick(&self, tried: &[usize], hash_key: Option<&str>) -> Option<usize> {
        let nodes = &self.spec.nodes;
        // Unhealthy nodes are skipped, unless none is healthy (then all are used).
        let any_healthy = self
            .health
            .iter()
            .enumerate()
            .any(|(i, h)| h.healthy() && nodes[i].weight > 0);
        let usable = |i: usize| {
            nodes[i].weight > 0 && !tried.contains(&i) && (!any_healthy || self.health[i].healthy())
        };
        let prio = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| usable(*i))
            .map(|(_, n)| n.priority)
            .max()?;
        let cand = |i: usize| usable(i) && nodes[i].priority == prio;
        match self.spec.kind.as_str() {
            "chash" if !self.ring.is_empty() => {
                let h = hash_of(hash_key.unwrap_or(""));
                let start = self.ring.partition_point(|(p, _)| *p < h);
                (0..self.ring.len())
                    .map(|k| self.ring[(start + k) % self.ring.len()].1)
                    .find(|i| cand(*i))
            }
            "least_conn" | "ewma" => (0..nodes.len()).filter(|i| cand(*i)).min_by(|a, b| {
                // Fewest in-flight per weight: (active+1)/weight, compared crosswise.
                let ca =
                    (self.active[*a].load(Ordering::Relaxed) as u64 + 1) * nodes[*b].weight as u64;
                let cb =
                    (self.active[*b].load(Ordering::Relaxed) as u64 + 1) * nodes[*a].weight as u64;
                ca.cmp(&cb)
            }),
            _ => {
                let mut cw = self.rr.lock().unwrap_or_else(|p| p.into_inner());
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..nodes.len() {
                    if !cand(i) {
                        continue;
                    }
                    let w = nodes[i].weight as i64;
                    cw[i] += w;
                    total += w;
                    if best.is_none_or(|b| cw[i] > cw[b]) {
                        best = Some(i);
                    }
                }
                if let Some(b) = best {
                    cw[b] -= total;
                }
                best
            }
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.spec.nodes[i]
    }

    /// Node `i`'s `host:port`.
    pub fn addr(&self, i: usize) -> &Arc<str> {
        &self.addrs[i]
    }

    /// Where node `i` is reached: `scheme://host:port/`.
    pub fn target(&self, i: usize) -> Result<&Uri, &String> {
        self.targets[i].as_ref()
    }

    /// Counts a request on node `i` until the guard drops; only least_conn
    /// reads the counts, so other balancers skip it (and its shared atomics).
    pub fn enter(self: &Arc<Self>, i: usize) -> Option<ActiveGuard> {
        if !matches!(self.spec.kind.as_str(), "least_conn" | "ewma") {
            return None;
        }
        self.active[i].fetch_add(1, Ordering::Relaxed);
        Some(ActiveGuard {
            up: self.clone(),
            i,
        })
    }
}

pub struct ActiveGuard {
    up: Arc<UpstreamRt>,
    i: usize,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.up.active[self.i].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Seconds (APISIX's unit, fractions allowed) as a bounded Duration.
pub fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(86_400.0))
    } else {
        Duration::from_secs(60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn up(v: serde_json::Value) -> UpstreamRt {
        UpstreamRt::new("t".into(), serde_json::from_value(v).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn weighted_round_robin_is_smooth() {
        let u = up(json!({"nodes":{"a:1":5,"b:1":1,"c:1":1}}));
        let picks: Vec<usize> = (0..7).map(|_| u.pick(&[], None).unwrap()).collect();
        assert_eq!(picks.iter().filter(|i| **i == 0).count(), 5);
        // nginx's smooth order spreads the heavy node: a a b a c a a.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        // A tried node is skipped.
        assert_ne!(u.pick(&[0], None), Some(0));
        assert_eq!(u.pick(&[0, 1, 2], None), None);
    }

    #[tokio::test]
    async fn priority_groups_and_zero_weight() {
        let u = up(json!({"nodes":[
            {"host":"a","port":1,"weight":1,"priority":1},
            {"host":"b","port":1,"weight":1,"priority":0},
            {"host":"c","port":1,"weight":0,"priority":5}]}));
        assert_eq!(u.pick(&[], None), Some(0));
        assert_eq!(u.pick(&[0], None), Some(1));
        assert_eq!(u.retries(), 2);
    }

    #[tokio::test]
    async fn chash_is_stable_and_least_conn_balances() {
        let u = up(json!({"type":"chash","key":"remote_addr","nodes":{"a:1":1,"b:1":1,"c:1":1}}));
        let first = u.pick(&[], Some("10.0.0.1")).unwrap();
        for _ in 0..10 {
            assert_eq!(u.pick(&[], Some("10.0.0.1")), Some(first));
        }
        let spread: std::collections::HashSet<usize> = (0..100)
            .filter_map(|i| u.pick(&[], Some(&format!("k{i}"))))
            .collect();
        assert_eq!(spread.len(), 3);
        // Retrying moves to another node.
        assert_ne!(u.pick(&[first], Some("10.0.0.1")), Some(first));

        let u = Arc::new(up(json!({"type":"least_conn","nodes":{"a:1":1,"b:1":1}})));
        let g = u.enter(0);
        assert_eq!(u.pick(&[], None), Some(1));
        drop(g);
        let _g = u.enter(1);
        assert_eq!(u.pick(&[], None), Some(0));
    }
}
