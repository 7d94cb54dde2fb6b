//! One seeded run: a fresh cluster, the workload, the faults, the heal, then
//! convergence and the checkers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::{Cluster, ClusterOptions, Target};
use crate::history::{Clock, History, Recorder};
use crate::nemesis::{self, Fault, FaultLog};
use crate::workload::{self, Stop, WorkloadOptions};
use crate::{lease_check, linearizable, watch_check};

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: Target,
    pub seed: u64,
    /// Faults applied one after another during the workload.
    pub faults: Vec<Fault>,
    /// Workload time before the first fault and after the last one.
    pub settle: Duration,
    pub workload: WorkloadOptions,
    pub cluster: ClusterOptions,
    /// Where runs keep their files (a run that finds a violation keeps its dir).
    pub base_dir: PathBuf,
    /// Keep the run's directory even when it passed.
    pub keep: bool,
}

#[derive(Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    pub target: String,
    pub faults: Vec<String>,
    pub fault_log: Vec<String>,
    pub kv_ok: usize,
    pub kv_failed: usize,
    pub kv_unknown: usize,
    pub lease_ops: usize,
    pub keep_alives: usize,
    pub leases_gone: usize,
    pub watch_events: usize,
    pub last_revision: i64,
    pub violations: Vec<String>,
    pub inconclusive: Vec<String>,
    pub duration: Duration,
    /// The run's directory, when it was kept.
    pub kept: Option<PathBuf>,
}

impl RunReport {
    pub fn summary(&self) -> String {
        format!(
            "seed {:#x} {} [{}]: kv ok/failed/unknown {}/{}/{}, leases {} (keep-alives {}, gone {}), \
             watch events {} to revision {}, violations {}{} ({:.1}s)",
            self.seed,
            self.target,
            self.faults.join(","),
            self.kv_ok,
            self.kv_failed,
            self.kv_unknown,
            self.lease_ops,
            self.keep_alives,
            self.leases_gone,
            self.watch_events,
            self.last_revision,
            self.violations.len(),
            if self.inconclusive.is_empty() {
                String::new()
            } else {
                format!(", inconclusive {}", self.inconclusive.len())
            },
            self.duration.as_secs_f64()
        )
    }
}

/// Runs the checkers over a history.
pub fn check(h: &History, report: &mut RunReport) {
    let lin = linearizable::check(&h.kv);
    let watch = watch_check::check(h);
    let lease = lease_check::check(h);
    report.violations.extend(
        lin.violations
            .iter()
            .map(|v| format!("linearizability: {v}")),
    );
    // A key the search could not settle fails the run too: nothing was proven.
    report.violations.extend(
        lin.inconclusive
            .iter()
            .map(|v| format!("linearizability (inconclusive): {v}")),
    );
    report.inconclusive.extend(lin.inconclusive);
    report
        .violations
        .extend(watch.violations.iter().map(|v| format!("watch: {v}")));
    report
        .violations
        .extend(lease.violations.iter().map(|v| format!("lease: {v}")));
    report.watch_events = watch.events;
    report.last_revision = watch.last_revision;
    report.keep_alives = lease.keep_alives;
    report.leases_gone = lease.expired_or_revoked;
}

pub async fn run(cfg: &RunConfig) -> Result<RunReport> {
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let dir = tempfile::Builder::new()
        .prefix(&format!("robustness-{}-{:x}-", cfg.target.name(), cfg.seed))
        .tempdir_in(&cfg.base_dir)
        .context("run dir")?;
    let mut cluster =
        Cluster::start(cfg.target.clone(), 3, cfg.cluster.clone(), dir.path()).await?;
    let mut report = RunReport {
        seed: cfg.seed,
        target: cfg.target.name().into(),
        faults: cfg.faults.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    };
    cluster.wait_leader(Duration::from_secs(30)).await?;

    let clock = Clock::default();
    let rec = Recorder::default();
    let stop = Stop::default();
    let mut clients = Vec::new();
    let mut watchers = Vec::new();
    let urls = cluster.endpoints();
    let mut next_id = 0;
    for (m, url) in urls.iter().enumerate() {
        let ctx = |id: usize, seed: u64| workload::Ctx {
            id,
            member: m,
            url: url.clone(),
            seed,
            clock: clock.clone(),
            rec: rec.clone(),
            stop: stop.clone(),
        };
        watchers.push(tokio::spawn(workload::watcher(ctx(m, 0))));
        for _ in 0..cfg.workload.kv_clients_per_member {
            let c = ctx(next_id, rng.u64(..));
            clients.push(tokio::spawn(workload::kv_client(c, cfg.workload.clone())));
            next_id += 1;
        }
        for _ in 0..cfg.workload.lease_clients_per_member {
            clients.push(tokio::spawn(workload::lease_client(ctx(
                next_id,
                rng.u64(..),
            ))));
            next_id += 1;
        }
    }

    let mut log = FaultLog::default();
    tokio::time::sleep(cfg.settle).await;
    let mut nemesis_error = None;
    for &fault in &cfg.faults {
        if let Err(e) = nemesis::inject(&mut cluster, fault, &mut rng, &clock, &mut log).await {
            nemesis_error = Some(format!("{fault}: {e:#}"));
            break;
        }
        tokio::time::sleep(cfg.settle).await;
    }
    nemesis::heal_all(&mut cluster)?;
    // Operations after the heal are checked too.
    tokio::time::sleep(cfg.settle).await;
    stop.ops.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    // Every key read once more, linearizably, once the faults are healed:
    // a cluster that lost acknowledged writes, or never recovers, shows here.
    let final_reads = workload::final_reads(
        urls.clone(),
        cfg.workload.keys,
        clock.clone(),
        rec.clone(),
        Duration::from_secs(60),
    )
    .await;
    // Convergence: one leader, every member at the same revision and hash.
    let converged = converge(&mut cluster).await;
    let final_rev = converged.as_ref().map_or(0, |r| *r);
    *stop.watch_target.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((final_rev, Instant::now() + Duration::from_secs(30)));
    for w in watchers {
        let _ = w.await;
    }
    let history = rec.take();
    let (ok, failed, unknown) = history.kv_outcomes();
    report.kv_ok = ok;
    report.kv_failed = failed;
    report.kv_unknown = unknown;
    report.lease_ops = history.leases.len();
    report.fault_log = log.lines;
    if let Some(e) = nemesis_error {
        report.violations.push(format!("nemesis failed: {e}"));
    }
    if let Err(e) = &converged {
        report.violations.push(format!("convergence: {e:#}"));
    }
    if let Err(e) = final_reads {
        report.violations.push(format!("recovery: {e:#}"));
    }
    let acknowledged = history
        .kv
        .iter()
        .filter_map(|r| match &r.outcome {
            crate::history::Outcome::Ok(ret) => Some(ret.revision()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    if final_rev > 0 && acknowledged > final_rev {
        report.violations.push(format!(
            "convergence: revision {acknowledged} was acknowledged, but the healed cluster is at {final_rev}"
        ));
    }
    check(&history, &mut report);
    for w in &history.watches {
        let reached = w
            .responses
            .iter()
            .flat_map(|r| &r.events)
            .map(|e| e.revision)
            .max();
        if final_rev > 0 && reached.unwrap_or(0) < final_rev {
            report.violations.push(format!(
                "watch: watcher on m{} reached revision {:?}, not the final {final_rev}; last errors: {:?}",
                w.member,
                reached,
                &w.errors[w.errors.len().saturating_sub(3)..]
            ));
        }
    }
    report.duration = started.elapsed();
    cluster.shutdown();
    if !report.violations.is_empty() || cfg.keep {
        std::fs::write(
            dir.path().join("history.json"),
            serde_json::to_vec(&history).unwrap_or_default(),
        )?;
        std::fs::write(dir.path().join("report.txt"), format!("{report:#?}\n"))?;
        report.kept = Some(dir.keep());
    }
    Ok(report)
}

/// Waits for one leader, then for every member to reach the same revision,
/// then compares their HashKV at it. Returns that revision.
async fn converge(c: &mut Cluster) -> Result<i64> {
    c.wait_leader(Duration::from_secs(60)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut revs = Vec::new();
        for i in 0..c.members.len() {
            revs.push(c.status(i).await.and_then(|s| s.header).map(|h| h.revision));
        }
        let first = revs[0];
        if first.is_some() && revs.iter().all(|r| *r == first) {
            let rev = first.unwrap_or_default();
            let mut hashes = Vec::new();
            for i in 0..c.members.len() {
                let m = &c.members[i];
                let client =
                    cairn_client::Client::connect(vec![m.client_url.clone()], Default::default())
                        .await?;
                let h = client
                    .hash_kv(&m.client_url, rev)
                    .await
                    .with_context(|| format!("HashKV of {} at {rev}", m.name))?;
                hashes.push((h.hash, h.compact_revision));
            }
            anyhow::ensure!(
                hashes.iter().all(|h| *h == hashes[0]),
                "members differ at revision {rev}: (hash, compact revision) = {hashes:?}"
            );
            return Ok(rev);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("members did not reach one revision within 30 s: {revs:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
