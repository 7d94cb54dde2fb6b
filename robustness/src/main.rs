//! `robustness`: seeded runs of the robustness suite on demand.
//!
//! ```text
//! robustness --target cairn --runs 100             # a soak: every fault, in turn
//! robustness --target etcd --runs 10               # the same suite on etcd 3.4
//! robustness --seed 0x2a --faults kill-all         # one run, reproduced by its seed
//! robustness --broken-reads --faults partition-follower   # the checkers must object
//! ```
//!
//! Run N uses seed `base + N` and the fault `ALL[N % len]` (the ones the
//! target supports) unless `--faults` names them. Exits 1 if any run found a
//! violation; those runs keep their directory (logs, history.json, report).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use cairn_robustness::cluster::{ClusterOptions, Target};
use cairn_robustness::nemesis::{self, Fault};
use cairn_robustness::run::{run, RunConfig};
use cairn_robustness::workload::WorkloadOptions;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Cairn's robustness suite: seeded runs under faults, checked")]
struct Args {
    /// cairn or etcd.
    #[arg(long, default_value = "cairn")]
    target: String,
    /// The server binary (default: target/release/cairn, else target/debug/cairn; /usr/bin/etcd).
    #[arg(long)]
    bin: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Seed of the first run (decimal or 0x hex); later runs add 1.
    #[arg(long, default_value = "1", value_parser = parse_seed)]
    seed: u64,
    /// Comma-separated faults applied in each run (default: one per run, in turn).
    #[arg(long, value_delimiter = ',')]
    faults: Vec<Fault>,
    /// Workload seconds before, between and after faults.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Report serializable gets as linearizable (the checkers must catch it).
    #[arg(long)]
    broken_reads: bool,
    /// Keep every run's directory (logs, history.json), not only failed ones.
    #[arg(long)]
    keep: bool,
    /// Where run directories go.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Extra flags for every member, e.g. `--extra=--election-timeout=500`.
    #[arg(long = "extra", allow_hyphen_values = true)]
    extra: Vec<String>,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| e.to_string())
}

fn default_bin(target: &str) -> Result<PathBuf> {
    if target == "etcd" {
        return Ok("/usr/bin/etcd".into());
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "target".into());
    for p in [dir.join("release/cairn"), dir.join("debug/cairn")] {
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no cairn binary under {}: build it or pass --bin",
        dir.display()
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => default_bin(&args.target)?,
    };
    let target = match args.target.as_str() {
        "cairn" => Target::Cairn { bin },
        "etcd" => Target::Etcd { bin },
        other => bail!("unknown target {other:?} (cairn or etcd)"),
    };
    let supported: Vec<Fault> = nemesis::ALL
        .iter()
        .copied()
        .filter(|f| f.supported(target.is_cairn()))
        .collect();
    let base_dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let (mut ops, mut events, mut violations, mut failed_runs) = (0, 0, 0, 0);
    let mut per_fault: std::collections::BTreeMap<String, u64> = Default::default();
    for n in 0..args.runs {
        let faults = if args.faults.is_empty() {
            vec![supported[(n as usize) % supported.len()]]
        } else {
            args.faults.clone()
        };
        for f in &faults {
            *per_fault.entry(f.to_string()).or_default() += 1;
        }
        let cfg = RunConfig {
            target: target.clone(),
            seed: args.seed + n,
            faults,
            settle: Duration::from_secs_f64(args.settle),
            workload: WorkloadOptions {
                broken_serializable_reads: args.broken_reads,
                ..Default::default()
            },
            cluster: ClusterOptions {
                extra_args: args.extra.clone(),
                ..Default::default()
            },
            base_dir: base_dir.clone(),
            keep: args.keep,
        };
        let r = run(&cfg).await?;
        println!("run {}/{}: {}", n + 1, args.runs, r.summary());
        for line in &r.fault_log {
            println!("    {line}");
        }
        for v in &r.violations {
            println!("  VIOLATION {v}");
        }
        if let Some(k) = &r.kept {
            println!("  kept {}", k.display());
        }
        ops += r.kv_ok + r.kv_failed + r.kv_unknown + r.lease_ops;
        events += r.watch_events;
        violations += r.violations.len();
        failed_runs += usize::from(!r.violations.is_empty());
    }
    println!(
        "== {} runs on {}: {ops} operations, {events} watch events, faults {per_fault:?}; \
         {violations} violations in {failed_runs} runs",
        args.runs, args.target
    );
    if violations > 0 {
        std::process::exit(1);
    }
    Ok(())
}
