//! The workload: clients that each talk to one member only, as gateways and
//! operators pinned to an endpoint do, recording everything they do.
//!
//! - KV clients: put, linearizable get, compare-and-swap txn, delete and a
//!   two-key txn on a few keys under `/r/k`, each value unique in the run
//!   (so a read names the write it saw).
//! - Lease clients: grant a short lease, put a key on it (`/r/lease/...`),
//!   keep it alive over a stream a random number of times, then revoke it
//!   or let it expire.
//! - Watchers: one watch on `/r/` per member from revision 1; after any
//!   error the watch is opened again on the same member from the revision
//!   after the last one delivered.
//!
//! Every operation has a deadline: the client's own (2 s per attempt) and an
//! outer one, so a paused member costs an unknown outcome, never a hang.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::pb::TxnResponse;
use cairn_client::txn::{self, CompareResult, Txn};
use cairn_client::{Client, ClientOptions, DeleteOptions, GetOptions, PutOptions, WatchOptions};

use crate::history::{
    Clock, KvOp, KvRecord, KvRet, LeaseOp, LeaseRecord, Outcome, Recorder, WatchEvent, WatchRecord,
    WatchResponseRecord,
};

/// Prefix of every key the workload writes (and the watchers watch).
pub const PREFIX: &str = "/r/";

#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Keys under `/r/k`.
    pub keys: usize,
    /// KV clients per member.
    pub kv_clients_per_member: usize,
    /// Lease clients per member.
    pub lease_clients_per_member: usize,
    /// Pause between one client's operations (uniform in this range, ms).
    pub think_ms: (u64, u64),
    /// Deliberately broken: gets are served serializable but recorded as
    /// linearizable (the checkers must catch this).
    pub broken_serializable_reads: bool,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            keys: 4,
            kv_clients_per_member: 2,
            lease_clients_per_member: 1,
            think_ms: (1, 12),
            broken_serializable_reads: false,
        }
    }
}

fn client_options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        retry_budget: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Outer bound on any one call.
const CALL_DEADLINE: Duration = Duration::from_secs(6);

/// Shared stop signals.
#[derive(Clone, Default)]
pub struct Stop {
    /// Clients stop issuing operations.
    pub ops: Arc<AtomicBool>,
    /// Watchers stop once they reach `watch_target` or pass `watch_deadline`.
    pub watch_target: Arc<std::sync::Mutex<Option<(i64, Instant)>>>,
}

impl Stop {
    fn ops_stopped(&self) -> bool {
        self.ops.load(Ordering::Relaxed)
    }

    fn watch_done(&self, reached: i64) -> bool {
        match *self.watch_target.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((target, deadline)) => reached >= target || Instant::now() >= deadline,
            None => false,
        }
    }
}

/// What every workload task gets: who it is, which member it talks to, its
/// seed, and where it records.
#[derive(Clone)]
pub struct Ctx {
    pub id: usize,
    pub member: usize,
    pub url: String,
    pub seed: u64,
    pub clock: Clock,
    pub rec: Recorder,
    pub stop: Stop,
}

/// Runs a call under the outer deadline; a timeout counts as a transport failure.
async fn bounded<T>(
    f: impl std::future::Future<Output = cairn_client::Result<T>>,
) -> cairn_client::Result<T> {
    match tokio::time::timeout(CALL_DEADLINE, f).await {
        Ok(r) => r,
        Err(_) => Err(cairn_client::Error::OutcomeUnknown(format!(
            "no answer within {CALL_DEADLINE:?}"
        ))),
    }
}

fn outcome<T>(
    res: cairn_client::Result<T>,
    f: impl FnOnce(T) -> KvRet,
    read: bool,
) -> Outcome<KvRet> {
    match res {
        Ok(v) => Outcome::Ok(f(v)),
        Err(e) if e.is_outcome_unknown() && !read => Outcome::Unknown(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn revision(h: &Option<cairn_client::pb::ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

/// The second key of a two-key txn: `other`, or the spare key if it is `k`.
fn second_key(k: &str, other: String, keys: usize) -> String {
    if other == k {
        format!("{PREFIX}k{keys}")
    } else {
        other
    }
}

/// A two-key read's answer: each range's value and mod_revision.
fn multi_get_ret(r: TxnResponse) -> KvRet {
    use cairn_client::pb::response_op::Response;
    let values = r
        .responses
        .iter()
        .map(|op| match &op.response {
            Some(Response::ResponseRange(rr)) => rr
                .kvs
                .first()
                .map_or((None, 0), |kv| (Some(text(&kv.value)), kv.mod_revision)),
            _ => (None, 0),
        })
        .collect();
    KvRet::MultiGet {
        values,
        revision: revision(&r.header),
    }
}

/// A get's answer: the value (if any) and its revisions.
fn get_ret(r: cairn_client::pb::RangeResponse) -> KvRet {
    let kv = r.kvs.first();
    KvRet::Get {
        value: kv.map(|kv| text(&kv.value)),
        mod_revision: kv.map_or(0, |kv| kv.mod_revision),
        revision: revision(&r.header),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One KV client pinned to `url`.
pub async fn kv_client(ctx: Ctx, opts: WorkloadOptions) {
    let Ctx {
        id,
        member,
        url,
        seed,
        clock,
        rec,
        stop,
    } = ctx;
    let mut rng = fastrand::Rng::with_seed(seed);
    let Ok(client) = Client::connect(vec![url], client_options()).await else {
        return;
    };
    let key = |rng: &mut fastrand::Rng| format!("{PREFIX}k{}", rng.usize(..opts.keys));
    let mut n = 0u64;
    let mut fresh = || {
        n += 1;
        format!("c{id}-{n}")
    };
    let get_opts = GetOptions {
        serializable: opts.broken_serializable_reads,
        ..Default::default()
    };
    // The last value this client read per key, so compare-and-swaps often succeed.
    let mut seen: std::collections::HashMap<String, Option<String>> = Default::default();
    while !stop.ops_stopped() {
        let roll = rng.u32(..100);
        let k = key(&mut rng);
        let invoke = clock.now();
        let (op, outcome) = if roll < 30 {
            let value = fresh();
            let res = bounded(client.put(k.clone(), value.clone(), PutOptions::default())).await;
            let out = outcome(
                res,
                |r| KvRet::Written {
                    revision: revision(&r.header),
                },
                false,
            );
            (KvOp::Put { key: k, value }, out)
        } else if roll < 65 {
            let res = bounded(client.get(k.clone(), get_opts.clone())).await;
            let out = outcome(res, get_ret, true);
            if let Outcome::Ok(KvRet::Get { value, .. }) = &out {
                seen.insert(k.clone(), value.clone());
            }
            (KvOp::Get { key: k }, out)
        } else if roll < 80 {
            let expect = seen.get(&k).cloned().flatten();
            let new = fresh();
            let compare = match &expect {
                Some(v) => txn::value(k.clone(), CompareResult::Equal, v.clone()),
                None => txn::create_revision(k.clone(), CompareResult::Equal, 0),
            };
            let t = Txn::new().when([compare]).and_then([txn::op_put(
                k.clone(),
                new.clone(),
                PutOptions::default(),
            )]);
            let res = bounded(client.txn(t)).await;
            let out = outcome(
                res,
                |r: TxnResponse| KvRet::Cas {
                    succeeded: r.succeeded,
                    revision: revision(&r.header),
                },
                false,
            );
            (
                KvOp::Cas {
                    key: k,
                    expect,
                    new,
                },
                out,
            )
        } else if roll < 90 {
            let res = bounded(client.delete(k.clone(), DeleteOptions::default())).await;
            let out = outcome(
                res,
                |r| KvRet::Delete {
                    deleted: r.deleted > 0,
                    revision: revision(&r.header),
                },
                false,
            );
            (KvOp::Delete { key: k }, out)
        } else if roll < 95 {
            let k2 = second_key(&k, key(&mut rng), opts.keys);
            let keys = vec![k, k2];
            let t = Txn::new().and_then(
                keys.iter()
                    .map(|k| txn::op_range(k.clone(), get_opts.clone())),
            );
            let res = bounded(client.txn(t)).await;
            let out = outcome(res, multi_get_ret, true);
            (KvOp::MultiGet { keys }, out)
        } else {
            let k2 = second_key(&k, key(&mut rng), opts.keys);
            let writes = vec![(k, fresh()), (k2, fresh())];
            let t = Txn::new().and_then(
                writes
                    .iter()
                    .map(|(k, v)| txn::op_put(k.clone(), v.clone(), PutOptions::default())),
            );
            let res = bounded(client.txn(t)).await;
            let out = outcome(
                res,
                |r: TxnResponse| KvRet::Written {
                    revision: revision(&r.header),
                },
                false,
            );
            (KvOp::MultiPut { writes }, out)
        };
        rec.kv(KvRecord {
            client: id,
            member,
            op,
            invoke,
            complete: clock.now(),
            outcome,
        });
        think(&mut rng, opts.think_ms).await;
    }
}

async fn think(rng: &mut fastrand::Rng, (lo, hi): (u64, u64)) {
    tokio::time::sleep(Duration::from_millis(rng.u64(lo..=hi))).await;
}

/// One lease client pinned to `url`.
pub async fn lease_client(ctx: Ctx) {
    let Ctx {
        id,
        member,
        url,
        seed,
        clock,
        rec,
        stop,
    } = ctx;
    let mut rng = fastrand::Rng::with_seed(seed);
    let Ok(client) = Client::connect(vec![url], client_options()).await else {
        return;
    };
    let mut n = 0u64;
    let record = |lease: i64, op: LeaseOp, invoke: u64| {
        rec.lease(LeaseRecord {
            client: id,
            member,
            lease,
            op,
            invoke,
            complete: clock.now(),
        })
    };
    while !stop.ops_stopped() {
        n += 1;
        let ttl = rng.i64(2..=3);
        let invoke = clock.now();
        let Ok(granted) = bounded(client.lease_grant(ttl, 0)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let lease = granted.id;
        let key = format!("{PREFIX}lease/l{id}-{n}");
        record(
            lease,
            LeaseOp::Grant {
                ttl: granted.ttl,
                key: key.clone(),
            },
            invoke,
        );
        let put = PutOptions {
            lease,
            ..Default::default()
        };
        let _ = bounded(client.put(key, "held", put)).await;
        let mut keeper = client.lease_keep_alive(lease);
        for _ in 0..rng.usize(0..8) {
            if stop.ops_stopped() {
                break;
            }
            // Renew at a third to a half of the TTL, as clients do.
            tokio::time::sleep(Duration::from_millis(
                rng.u64(ttl as u64 * 330..ttl as u64 * 500),
            ))
            .await;
            let invoke = clock.now();
            match bounded(keeper.keep_alive()).await {
                Ok(r) => {
                    record(lease, LeaseOp::KeepAlive { ttl: r.ttl }, invoke);
                    if r.ttl <= 0 {
                        break;
                    }
                }
                // A failed renewal promises nothing; the holder keeps trying.
                Err(_) => continue,
            }
        }
        if rng.bool() {
            let invoke = clock.now();
            let ok = bounded(client.lease_revoke(lease)).await.is_ok();
            record(lease, LeaseOp::Revoke { ok }, invoke);
        }
        // Otherwise the lease is abandoned and expires on its own.
        tokio::time::sleep(Duration::from_millis(rng.u64(50..300))).await;
    }
}

/// One watcher on `/r/` pinned to `url`, from revision 1.
pub async fn watcher(ctx: Ctx) {
    let Ctx {
        id,
        member,
        url,
        clock,
        rec,
        stop,
        ..
    } = ctx;
    let mut record = WatchRecord {
        watcher: id,
        member,
        ..Default::default()
    };
    let client = match Client::connect(vec![url], client_options()).await {
        Ok(c) => c,
        Err(e) => {
            record.errors.push(e.to_string());
            rec.watch(record);
            return;
        }
    };
    let mut next = 1i64;
    let mut reached = 0i64;
    'outer: while !stop.watch_done(reached) {
        record.starts.push(next);
        let opts = WatchOptions {
            start_revision: next,
            ..WatchOptions::prefix()
        };
        let mut w = match bounded(client.watch(PREFIX, opts)).await {
            Ok(w) if !w.created().canceled => w,
            Ok(w) => {
                record
                    .errors
                    .push(format!("watch refused: {}", w.created().cancel_reason));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                record.errors.push(e.to_string());
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            if stop.watch_done(reached) {
                break 'outer;
            }
            let resp = match tokio::time::timeout(Duration::from_millis(300), w.next()).await {
                Err(_) => continue,
                Ok(Err(e)) => {
                    record.errors.push(e.to_string());
                    break;
                }
                Ok(Ok(r)) => r,
            };
            if resp.canceled {
                record.errors.push(format!(
                    "canceled: {} (compact_revision {})",
                    resp.cancel_reason, resp.compact_revision
                ));
                break;
            }
            if resp.events.is_empty() {
                continue;
            }
            let events: Vec<WatchEvent> = resp
                .events
                .iter()
                .filter_map(|e| {
                    let kv = e.kv.as_ref()?;
                    Some(WatchEvent {
                        revision: kv.mod_revision,
                        key: text(&kv.key),
                        value: (e.r#type == 0).then(|| text(&kv.value)),
                    })
                })
                .collect();
            let last = events.iter().map(|e| e.revision).max().unwrap_or(reached);
            reached = reached.max(last);
            next = reached + 1;
            record.responses.push(WatchResponseRecord {
                received: clock.now(),
                header_revision: revision(&resp.header),
                events,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rec.watch(record);
}

/// Reads every key of the workload linearizably through any member, each
/// until it succeeds or `within` passes, recording the reads like any other
/// (client `usize::MAX`). Fails if some key could not be read.
pub async fn final_reads(
    urls: Vec<String>,
    keys: usize,
    clock: Clock,
    rec: Recorder,
    within: Duration,
) -> anyhow::Result<()> {
    let client = Client::connect(urls, client_options()).await?;
    let deadline = Instant::now() + within;
    // keys..=keys: the second key of a two-key txn may be this one.
    for k in (0..=keys).map(|i| format!("{PREFIX}k{i}")) {
        loop {
            let invoke = clock.now();
            let res = bounded(client.get(k.clone(), GetOptions::default())).await;
            let ok = res.is_ok();
            let out = outcome(res, get_ret, true);
            if ok {
                rec.kv(KvRecord {
                    client: usize::MAX,
                    member: usize::MAX,
                    op: KvOp::Get { key: k.clone() },
                    invoke,
                    complete: clock.now(),
                    outcome: out,
                });
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!("no linearizable read of {k} succeeded within {within:?} after the faults healed: {out:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Writes `count` puts to one filler key through `url` from `parallel`
/// tasks (to push a stopped member past the snapshot point). Not recorded:
/// the key is outside the checked keys, and the watchers see its events.
pub async fn fill(url: String, count: usize, parallel: usize) {
    let Ok(client) = Client::connect(vec![url], client_options()).await else {
        return;
    };
    let per = count.div_ceil(parallel);
    let tasks: Vec<_> = (0..parallel)
        .map(|t| {
            let c = client.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    let _ = bounded(c.put(
                        format!("{PREFIX}fill/{t}"),
                        format!("f{i}"),
                        PutOptions::default(),
                    ))
                    .await;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}
