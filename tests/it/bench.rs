//! `cairn bench` drives any etcd v3 cluster: each steady workload, run small
//! (`--total`) against etcd 3.4 and Cairn, answers every request without an
//! error, and `--json` reports it. Numbers are not checked: speed is measured
//! by bench/compare.sh, never asserted.

use crate::common;

use std::process::Command;

use common::{cairn_bin, Cluster, Impl};
use serde_json::Value;

cluster_tests!(every_workload_runs_clean);

fn bench(eps: &[String], args: &[&str]) -> Value {
    let out = Command::new(cairn_bin())
        .arg("bench")
        .arg(format!("--endpoints={}", eps.join(",")))
        .args(["--json", "--clients=4", "--conns=2"])
        .args(args)
        .output()
        .expect("run cairn bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cairn bench {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {stdout}"))
}

async fn every_workload_runs_clean(imp: Impl) {
    let c = Cluster::start(imp, 3).await;
    let eps = c.endpoints();
    for args in [
        &["--total=200", "put"][..],
        &["--total=200", "range", "k", "--consistency=l"],
        &["--total=200", "range", "k", "--consistency=s"],
        &["--total=200", "txn-put"],
        &["--total=200", "mixed"],
        &["--total=200", "lease-keepalive", "--ttl=30"],
    ] {
        let r = bench(&eps, args);
        assert_eq!(r["failed"], 0, "{args:?}: {r}");
        assert_eq!(r["ok"], 200, "{args:?}: {r}");
        assert!(
            r["errors"].as_object().is_some_and(|e| e.is_empty()),
            "{args:?}: {r}"
        );
    }
    let r = bench(
        &eps,
        &[
            "--total=50",
            "--rate=100",
            "watch",
            "--watchers=20",
            "--streams=2",
        ],
    );
    assert_eq!(r["failed"], 0, "watch: {r}");
}
