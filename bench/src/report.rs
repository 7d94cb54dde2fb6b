//! What a run prints: a human summary, or one JSON object with `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::args::Common;
use crate::stats::{Recorder, Summary};

/// Result of a steady workload.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub rate: Option<f64>,
    pub key_size: usize,
    pub val_size: usize,
    pub elapsed_s: f64,
    /// Successful requests.
    pub ok: u64,
    pub failed: u64,
    /// Successful requests per second over the whole run.
    pub throughput_rps: f64,
    /// Latency of successful requests.
    pub latency: Summary,
    /// The same per operation (e.g. `range` and `put` for `mixed`).
    pub per_op: BTreeMap<String, Summary>,
    pub errors: BTreeMap<String, u64>,
    pub counters: BTreeMap<String, u64>,
}

impl Report {
    pub fn new(
        workload: &str,
        endpoints: Vec<String>,
        common: &Common,
        elapsed: Duration,
        rec: &Recorder,
    ) -> Report {
        let secs = elapsed.as_secs_f64();
        let ok = rec.successes();
        Report {
            workload: workload.to_string(),
            endpoints,
            conns: common.conns,
            clients: common.clients,
            rate: common.rate,
            key_size: common.key_size,
            val_size: common.val_size,
            elapsed_s: secs,
            ok,
            failed: rec.failures(),
            throughput_rps: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            latency: rec.overall(),
            per_op: rec.per_op(),
            errors: rec.errors().clone(),
            counters: rec
                .counters()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {} clients over {} conns to {}",
            self.workload,
            self.clients,
            self.conns,
            self.endpoints.join(",")
        );
        let _ = writeln!(
            s,
            "  requests    {} ok, {} failed in {:.3}s",
            self.ok, self.failed, self.elapsed_s
        );
        let _ = writeln!(s, "  throughput  {:.1} req/s", self.throughput_rps);
        latency_line(&mut s, "latency", &self.latency);
        if self.per_op.len() > 1 {
            for (op, sum) in &self.per_op {
                latency_line(&mut s, &format!("  {op}"), sum);
            }
        }
        for (k, n) in &self.counters {
            let _ = writeln!(s, "  {k:<11} {n}");
        }
        errors_block(&mut s, &self.errors);
        s
    }
}

/// `latency (ms)  min .. max` on one line.
pub fn latency_line(s: &mut String, label: &str, l: &Summary) {
    let _ = writeln!(
        s,
        "  {label:<11} ms: min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, n={})",
        l.min_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.count
    );
}

pub fn errors_block(s: &mut String, errors: &BTreeMap<String, u64>) {
    if errors.is_empty() {
        return;
    }
    let _ = writeln!(s, "  errors by kind:");
    for (k, n) in errors {
        let _ = writeln!(s, "    {n:>8}  {k}");
    }
}
