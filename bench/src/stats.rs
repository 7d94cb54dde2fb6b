//! Latency histograms, error counts, and their summary.
//!
//! Each worker records into its own [`Recorder`] (no shared lock on the hot
//! path); the runner merges them when the run ends.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram keeps exactly: longer requests are clamped to
/// it (a request slower than a minute is an outage, not a latency).
const MAX_MICROS: u64 = 60_000_000;

fn new_histogram() -> Histogram<u64> {
    // 3 significant digits: 0.1% resolution at every scale, as etcd's tool reports.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("static bounds are valid")
}

/// Results of one worker (or, after merging, of the whole run).
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Successful requests' latency in microseconds, per operation name.
    ops: BTreeMap<&'static str, Histogram<u64>>,
    /// Failed requests by error kind (see `workloads::error_kind`).
    errors: BTreeMap<String, u64>,
    /// Named counters that are neither latency nor error (e.g. CAS conflicts).
    counters: BTreeMap<&'static str, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            ops: BTreeMap::new(),
            errors: BTreeMap::new(),
            counters: BTreeMap::new(),
        }
    }

    pub fn ok(&mut self, op: &'static str, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        self.ops
            .entry(op)
            .or_insert_with(new_histogram)
            .record(us)
            .expect("value clamped into the histogram's range");
    }

    pub fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn count(&mut self, name: &'static str) {
        *self.counters.entry(name).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (op, h) in &other.ops {
            self.ops
                .entry(op)
                .or_insert_with(new_histogram)
                .add(h)
                .expect("histograms share bounds");
        }
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &other.counters {
            *self.counters.entry(k).or_default() += n;
        }
    }

    pub fn successes(&self) -> u64 {
        self.ops.values().map(|h| h.len()).sum()
    }

    pub fn failures(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }

    pub fn counters(&self) -> &BTreeMap<&'static str, u64> {
        &self.counters
    }

    /// Summary over all operations together.
    pub fn overall(&self) -> Summary {
        let mut all = new_histogram();
        for h in self.ops.values() {
            all.add(h).expect("histograms share bounds");
        }
        Summary::of(&all)
    }

    /// Summary per operation name.
    pub fn per_op(&self) -> BTreeMap<String, Summary> {
        self.ops
            .iter()
            .map(|(op, h)| (op.to_string(), Summary::of(h)))
            .collect()
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary {
                count: 0,
                min_ms: 0.0,
                mean_ms: 0.0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        // The histogram keeps 3 significant digits.
        (a - b).abs() <= b.abs() * 0.001 + 0.001
    }

    #[test]
    fn summary_of_one_to_thousand_ms() {
        let mut r = Recorder::new();
        for ms in 1..=1000u64 {
            r.ok("put", Duration::from_millis(ms));
        }
        let s = r.overall();
        assert_eq!(s.count, 1000);
        assert!(close(s.min_ms, 1.0), "{s:?}");
        assert!(close(s.p50_ms, 500.0), "{s:?}");
        assert!(close(s.p90_ms, 900.0), "{s:?}");
        assert!(close(s.p99_ms, 990.0), "{s:?}");
        assert!(close(s.p999_ms, 999.0), "{s:?}");
        assert!(close(s.max_ms, 1000.0), "{s:?}");
        assert!(close(s.mean_ms, 500.5), "{s:?}");
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = Recorder::new().overall();
        assert_eq!(s.count, 0);
        assert_eq!(s.max_ms, 0.0);
    }

    #[test]
    fn extreme_latencies_are_clamped_not_lost() {
        let mut r = Recorder::new();
        r.ok("put", Duration::ZERO);
        r.ok("put", Duration::from_secs(3600));
        let s = r.overall();
        assert_eq!(s.count, 2);
        assert!(close(s.min_ms, 0.001));
        assert!(close(s.max_ms, 60_000.0));
    }

    #[test]
    fn merge_adds_everything_and_keeps_ops_apart() {
        let mut a = Recorder::new();
        let mut b = Recorder::new();
        a.ok("range", Duration::from_millis(1));
        b.ok("range", Duration::from_millis(3));
        b.ok("put", Duration::from_millis(10));
        a.error("unavailable".into());
        b.error("unavailable".into());
        b.error("outcome-unknown".into());
        b.count("cas-conflict");
        a.merge(&b);
        assert_eq!(a.successes(), 3);
        assert_eq!(a.failures(), 3);
        assert_eq!(a.errors()["unavailable"], 2);
        assert_eq!(a.counters()["cas-conflict"], 1);
        let per = a.per_op();
        assert_eq!(per["range"].count, 2);
        assert_eq!(per["put"].count, 1);
        assert!(close(per["put"].min_ms, 10.0));
        assert_eq!(a.overall().count, 3);
    }
}
