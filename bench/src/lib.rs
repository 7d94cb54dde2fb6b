//! `cairn-bench`: a load generator for any etcd v3 cluster (Cairn or etcd),
//! shaped like etcd's own `benchmark` tool and built on Cairn's `client/`.
//!
//! - [`args`]: the flags ([`BenchArgs`]): connection/load flags and the workload subcommand.
//! - `conn`: `--conns` clients, leader discovery for `--target-leader` and failover.
//! - `schedule`: hands out request numbers until `--total`/`--duration`, paced by `rate`.
//! - `rate`: the pacing math (request n is due n/rate seconds after the start).
//! - `keys`: key and value generation (`--key-size`, `--key-space`, `--sequential-keys`).
//! - `workloads`: put, range, txn-put (compare-and-swap), mixed; the worker loop.
//! - `stats`: per-worker hdrhistogram recorders, merged into latency summaries.
//! - `report`: the human summary and the `--json` object.
//! - `failover`: steady writes, `kill -9` of the leader, the unavailability window.
//!
//! - `watch`: `watch` (put-to-event latency) and `watch-fanout` (events/s).
//!
//! `lease-keepalive`: one lease per client, renewed over a keep-alive stream.

pub mod args;
mod conn;
mod failover;
mod keys;
mod rate;
mod report;
mod schedule;
mod stats;
mod watch;
mod workloads;

pub use args::BenchArgs;

use anyhow::Result;

use args::Workload;

/// Runs `cairn bench ...` and prints its result on stdout.
pub async fn run(args: BenchArgs) -> Result<()> {
    let common = &args.common;
    if let Workload::Failover(f) = &args.workload {
        let r = failover::run(common, f).await?;
        if common.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print!("{}", r.text());
        }
        return Ok(());
    }
    let r = match &args.workload {
        Workload::Watch(w) => watch::run(common, w.watchers, w.streams, false).await?,
        Workload::WatchFanout(w) => watch::run(common, w.watchers, w.streams, true).await?,
        other => workloads::run(common, workloads::Op::from_args(common, other)?).await?,
    };
    if common.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", r.text());
    }
    Ok(())
}
