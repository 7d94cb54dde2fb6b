//! The workloads (`put`, `range`, `txn-put`, `mixed`, `lease-keepalive`)
//! and the runner that drives `--clients` workers over `--conns` connections.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use cairn_client::pb::{response_op, RangeRequest};
use cairn_client::txn::{self, CompareResult, Txn};
use cairn_client::{Client, Error, GetOptions, LeaseKeepAlive, PutOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{Common, Consistency, Workload};
use crate::keys::{self, KeyGen};
use crate::report::Report;
use crate::schedule::Schedule;
use crate::stats::Recorder;

/// One workload, ready to run: everything a worker needs, shared read-only.
#[derive(Debug)]
pub enum Op {
    Put {
        keys: KeyGen,
        value: Vec<u8>,
    },
    Range {
        req: RangeRequest,
    },
    TxnPut {
        keys: KeyGen,
        value: Vec<u8>,
    },
    Mixed {
        keys: KeyGen,
        value: Vec<u8>,
        serializable: bool,
        write_percent: u8,
    },
    LeaseKeepalive {
        ttl: i64,
        /// Leases to grant before the run and leave idle.
        idle: u64,
    },
}

impl Op {
    pub fn from_args(common: &Common, w: &Workload) -> Result<Op> {
        let keys = || KeyGen::new(common.key_size, common.key_space, common.sequential_keys);
        let value = keys::value(common.val_size);
        Ok(match w {
            Workload::Put => Op::Put {
                keys: keys()?,
                value,
            },
            Workload::Range {
                key,
                end,
                consistency,
                limit,
            } => Op::Range {
                req: RangeRequest {
                    key: key.clone().into_bytes(),
                    range_end: end.clone().unwrap_or_default().into_bytes(),
                    serializable: *consistency == Consistency::Serializable,
                    limit: *limit,
                    ..Default::default()
                },
            },
            Workload::TxnPut => Op::TxnPut {
                keys: keys()?,
                value,
            },
            Workload::Mixed {
                consistency,
                write_percent,
            } => Op::Mixed {
                keys: keys()?,
                value,
                serializable: *consistency == Consistency::Serializable,
                write_percent: *write_percent,
            },
            Workload::Watch(_) | Workload::WatchFanout(_) => {
                bail!("watch workloads run on their own")
            }
            Workload::LeaseKeepalive { ttl, idle_leases } => Op::LeaseKeepalive {
                ttl: *ttl,
                idle: *idle_leases,
            },
            Workload::Failover(_) => bail!("failover is not a steady workload"),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::Range { req } if req.serializable => "range-serializable",
            Op::Range { .. } => "range-linearizable",
            Op::TxnPut { .. } => "txn-put",
            Op::Mixed { .. } => "mixed",
            Op::LeaseKeepalive { .. } => "lease-keepalive",
        }
    }
}

/// What one worker keeps between requests.
pub struct WorkerState {
    pub rng: fastrand::Rng,
    /// txn-put: the mod_revision this worker last saw per key index (absent = 0,
    /// "the key does not exist", which is what etcd compares a missing key as).
    seen: HashMap<u64, i64>,
    /// lease-keepalive: this worker's lease and its stream.
    lease: Option<LeaseKeepAlive>,
}

impl WorkerState {
    pub fn new(id: usize) -> Self {
        Self {
            // Fixed seeds: two runs draw the same keys, so A/B runs compare like with like.
            rng: fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15 ^ id as u64),
            seen: HashMap::new(),
            lease: None,
        }
    }
}

/// Setup of `lease-keepalive --idle-leases`: grants `n` one-hour leases
/// from `parallel` tasks, untimed.
async fn grant_idle_leases(clients: &[Client], n: u64, parallel: usize) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let parallel = parallel.max(1) as u64;
    let mut tasks = Vec::new();
    for t in 0..parallel {
        let client = clients[t as usize % clients.len()].clone();
        let share = n / parallel + u64::from(t < n % parallel);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                client.lease_grant(3600, 0).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// A short, stable name for an error, used to count errors by kind.
pub fn error_kind(e: &Error) -> String {
    match e {
        // The message says which of etcd's "may have happened" it was
        // (timed out, leader changed, a connection cut mid-call).
        Error::OutcomeUnknown(m) => format!("outcome-unknown: {m}"),
        Error::Unavailable(_) => "unavailable".into(),
        Error::InvalidArgument(m) => format!("invalid-argument: {m}"),
        Error::Status { code, message } => format!("{code:?}: {message}"),
    }
}

/// Sends request `ticket` and records its outcome.
pub async fn one(op: &Op, ticket: u64, client: &Client, st: &mut WorkerState, rec: &mut Recorder) {
    let t0 = Instant::now();
    let (name, res): (&'static str, Result<(), Error>) = match op {
        Op::Put { keys, value } => {
            let k = keys.key(keys.index(ticket, &mut st.rng));
            let r = client.put(k, value.clone(), PutOptions::default()).await;
            ("put", r.map(drop))
        }
        Op::Range { req } => ("range", client.range(req.clone()).await.map(drop)),
        Op::LeaseKeepalive { ttl, .. } => {
            if st.lease.is_none() {
                // Setup, not measured: one lease per worker, as etcd's benchmark.
                match client.lease_grant(*ttl, 0).await {
                    Ok(g) => st.lease = Some(client.lease_keep_alive(g.id)),
                    Err(e) => {
                        rec.error(error_kind(&e));
                        return;
                    }
                }
            }
            let t0 = Instant::now();
            let r = match st.lease.as_mut() {
                Some(ka) => ka.keep_alive().await.and_then(|resp| match resp.ttl {
                    0 => Err(Error::Status {
                        code: cairn_client::Code::NotFound,
                        message: "lease expired before it was renewed".into(),
                    }),
                    _ => Ok(()),
                }),
                None => return,
            };
            match r {
                Ok(()) => rec.ok("keepalive", t0.elapsed()),
                Err(e) => rec.error(error_kind(&e)),
            }
            return;
        }
        Op::TxnPut { keys, value } => {
            let i = keys.index(ticket, &mut st.rng);
            let k = keys.key(i);
            let expect = st.seen.get(&i).copied().unwrap_or(0);
            let t = Txn::new()
                .when([txn::mod_revision(k.clone(), CompareResult::Equal, expect)])
                .and_then([txn::op_put(k.clone(), value.clone(), PutOptions::default())])
                .or_else([txn::op_range(k, GetOptions::default())]);
            let r = client.txn(t).await.map(|resp| {
                if resp.succeeded {
                    // The txn's revision is the key's new mod_revision.
                    let rev = resp.header.map_or(0, |h| h.revision);
                    st.seen.insert(i, rev);
                } else {
                    rec.count("cas-conflict");
                    let now = resp.responses.into_iter().find_map(|r| match r.response {
                        Some(response_op::Response::ResponseRange(rr)) => {
                            Some(rr.kvs.first().map_or(0, |kv| kv.mod_revision))
                        }
                        _ => None,
                    });
                    st.seen.insert(i, now.unwrap_or(0));
                }
            });
            ("txn", r)
        }
        Op::Mixed {
            keys,
            value,
            serializable,
            write_percent,
        } => {
            let write = st.rng.u8(0..100) < *write_percent;
            let k = keys.key(keys.index(ticket, &mut st.rng));
            if write {
                let r = client.put(k, value.clone(), PutOptions::default()).await;
                ("put", r.map(drop))
            } else {
                let o = GetOptions {
                    serializable: *serializable,
                    ..Default::default()
                };
                ("range", client.get(k, o).await.map(drop))
            }
        }
    };
    match res {
        Ok(()) => rec.ok(name, t0.elapsed()),
        Err(e) => rec.error(error_kind(&e)),
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal or with --json.
fn progress(sched: &Schedule, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match sched.total() {
        Some(n) => {
            let pb = ProgressBar::new(n);
            pb.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
                    .expect("static template"),
            );
            pb
        }
        None => {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} {pos} requests {per_sec} {elapsed}")
                    .expect("static template"),
            );
            pb
        }
    }
}

/// Runs `op` with the flags in `common` and returns the merged results.
pub async fn run(common: &Common, op: Op) -> Result<Report> {
    let clients = crate::conn::connect(common).await?;
    let endpoints = clients[0].endpoints();
    if let Op::LeaseKeepalive { idle, .. } = op {
        grant_idle_leases(&clients, idle, common.clients).await?;
    }
    let sched = Arc::new(Schedule::new(common.total, common.duration, common.rate));
    sched.stop_on_signal();
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let pb = progress(&sched, common.json);

    let mut tasks = Vec::with_capacity(common.clients);
    for id in 0..common.clients {
        let client = clients[id % clients.len()].clone();
        let (sched, op, done) = (sched.clone(), op.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut st = WorkerState::new(id);
            let mut rec = Recorder::new();
            while let Some(t) = sched.next().await {
                one(&op, t, &client, &mut st, &mut rec).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
            rec
        }));
    }
    let ticker = {
        let (pb, done) = (pb.clone(), done.clone());
        tokio::spawn(async move {
            loop {
                pb.set_position(done.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut total = Recorder::new();
    for t in tasks {
        total.merge(&t.await?);
    }
    let elapsed = sched.start().elapsed();
    ticker.abort();
    pb.finish_and_clear();
    Ok(Report::new(op.name(), endpoints, common, elapsed, &total))
}
