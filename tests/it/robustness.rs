//! The robustness suite's short set, as CI runs it (`robustness/` has the
//! suite itself and the `robustness` binary for soaks):
//! - every fault once on Cairn, each run checked by every checker;
//! - faults etcd 3.4 survives, on etcd 3.4 (the checkers are not too strict);
//! - serializable reads reported as linearizable are caught (the checkers are
//!   not too lenient).
//!
//! Needs root (network namespaces), `ip`, `iptables`, `etcd` and `etcdctl`;
//! under `CI=true` a missing one is a failure, otherwise the test says why
//! and returns.

use std::path::PathBuf;
use std::time::Duration;

use cairn_robustness::cluster::{ClusterOptions, Target};
use cairn_robustness::nemesis::{Fault, ALL};
use cairn_robustness::run::{run, RunConfig, RunReport};
use cairn_robustness::workload::WorkloadOptions;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether the suite can run here (see the module doc).
fn can_run(etcd: bool) -> bool {
    let mut missing = Vec::new();
    if let Err(e) = cairn_robustness::net::available() {
        missing.push(e.to_string());
    }
    let mut tools = vec![cairn_robustness::cluster::etcdctl_bin()];
    if etcd {
        tools.push(PathBuf::from("/usr/bin/etcd"));
    }
    for t in tools {
        if !t.is_file() {
            missing.push(format!("{} is not installed", t.display()));
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        !in_ci(),
        "CI=true and the robustness suite cannot run: {missing:?}"
    );
    eprintln!("SKIP: {missing:?}");
    false
}

fn config(target: Target, seed: u64, fault: Fault) -> RunConfig {
    RunConfig {
        target,
        seed,
        faults: vec![fault],
        settle: Duration::from_secs(2),
        workload: WorkloadOptions::default(),
        cluster: ClusterOptions::default(),
        base_dir: std::env::temp_dir(),
        keep: false,
    }
}

fn cairn() -> Target {
    Target::Cairn {
        bin: env!("CARGO_BIN_EXE_cairn").into(),
    }
}

/// Runs each config; prints every report; returns the ones with violations.
async fn run_all(cfgs: Vec<RunConfig>) -> Vec<RunReport> {
    let mut bad = Vec::new();
    for cfg in cfgs {
        let r = run(&cfg).await.expect("run");
        eprintln!("{}", r.summary());
        for l in &r.fault_log {
            eprintln!("    {l}");
        }
        for v in &r.violations {
            eprintln!("  VIOLATION {v}");
        }
        assert!(r.kv_ok > 0, "no operation succeeded: {}", r.summary());
        if !r.violations.is_empty() {
            bad.push(r);
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_on_cairn() {
    if !can_run(false) {
        return;
    }
    let cfgs = ALL
        .iter()
        .enumerate()
        .map(|(i, f)| config(cairn(), 0x5eed_0000 + i as u64, *f))
        .collect();
    let bad = run_all(cfgs).await;
    assert!(bad.is_empty(), "violations on Cairn: {:#?}", bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_checkers_pass_on_etcd() {
    if !can_run(true) {
        return;
    }
    let etcd = Target::Etcd {
        bin: "/usr/bin/etcd".into(),
    };
    // Not pause-leader: etcd 3.4 renews leases on a leader that was paused
    // past its leadership, which the lease checker rightly reports (see the
    // README's Robustness section).
    let faults = [
        Fault::KillLeader,
        Fault::KillAll,
        Fault::PartitionLeader,
        Fault::ReplaceMember,
    ];
    let cfgs = faults
        .iter()
        .enumerate()
        .map(|(i, f)| config(etcd.clone(), 0xe7cd_0000 + i as u64, *f))
        .collect();
    let bad = run_all(cfgs).await;
    assert!(bad.is_empty(), "violations on etcd: {:#?}", bad);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serializable_reads_reported_as_linearizable_are_caught() {
    if !can_run(false) {
        return;
    }
    let mut cfg = config(cairn(), 0xb40c_0000, Fault::PartitionFollower);
    cfg.workload.broken_serializable_reads = true;
    let r = run(&cfg).await.expect("run");
    eprintln!("{}", r.summary());
    assert!(
        r.violations
            .iter()
            .any(|v| v.starts_with("linearizability")),
        "stale serializable reads on a partitioned member went unnoticed: {r:#?}"
    );
    if let Some(dir) = &r.kept {
        std::fs::remove_dir_all(dir).ok();
    }
}
