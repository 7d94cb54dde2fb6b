//! What the workload records: every operation with the time it was invoked,
//! the time it completed and what came back, and every watch response with
//! the time it arrived. The checkers read only this.
//!
//! Times are microseconds on one monotonic clock shared by all clients of a
//! run ([`Clock`]), so "A completed before B was invoked" is a plain `<`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

/// Microseconds since the start of the run.
pub type Micros = u64;

/// The run's clock; cheap to clone.
#[derive(Clone, Debug)]
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(Instant::now())
    }
}

impl Clock {
    pub fn now(&self) -> Micros {
        self.0.elapsed().as_micros() as Micros
    }
}

/// What a client learned of an operation's fate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome<T> {
    /// The server answered with this.
    Ok(T),
    /// Certainly did not happen (refused before it was applied, or a read
    /// that got no answer: a read changes nothing either way).
    Failed(String),
    /// A mutation that may or may not have happened (timeout, connection
    /// lost after sending, `leader changed`).
    Unknown(String),
}

/// A key-value operation, as sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum KvOp {
    Put {
        key: String,
        value: String,
    },
    /// A linearizable get (or, in the broken variant, a serializable one
    /// that the workload still reports as linearizable).
    Get {
        key: String,
    },
    /// `txn if value(key) == expect (or: key absent) then put(key, new)`.
    Cas {
        key: String,
        expect: Option<String>,
        new: String,
    },
    Delete {
        key: String,
    },
    /// One txn that puts several keys at once (its events must arrive together).
    MultiPut {
        writes: Vec<(String, String)>,
    },
    /// One txn that reads several keys at once (one revision for all).
    MultiGet {
        keys: Vec<String>,
    },
}

/// What the server answered to a [`KvOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum KvRet {
    /// Revision of the write (Put, MultiPut).
    Written {
        revision: i64,
    },
    Get {
        value: Option<String>,
        mod_revision: i64,
        revision: i64,
    },
    Cas {
        succeeded: bool,
        revision: i64,
    },
    Delete {
        deleted: bool,
        revision: i64,
    },
    /// Per key: the value (if any) and its mod_revision.
    MultiGet {
        values: Vec<(Option<String>, i64)>,
        revision: i64,
    },
}

impl KvRet {
    /// What a read (single or multi-key) saw: (key, value, mod_revision) at
    /// the answer's revision.
    pub fn reads<'a>(&'a self, op: &'a KvOp) -> Vec<(&'a str, Option<&'a str>, i64)> {
        match (op, self) {
            (
                KvOp::Get { key },
                KvRet::Get {
                    value,
                    mod_revision,
                    ..
                },
            ) => vec![(key.as_str(), value.as_deref(), *mod_revision)],
            (KvOp::MultiGet { keys }, KvRet::MultiGet { values, .. }) => keys
                .iter()
                .zip(values)
                .map(|(k, (v, m))| (k.as_str(), v.as_deref(), *m))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The store revision the answer reports.
    pub fn revision(&self) -> i64 {
        match self {
            KvRet::Written { revision }
            | KvRet::Get { revision, .. }
            | KvRet::Cas { revision, .. }
            | KvRet::Delete { revision, .. }
            | KvRet::MultiGet { revision, .. } => *revision,
        }
    }
}

/// One recorded key-value operation.
#[derive(Clone, Debug, Serialize)]
pub struct KvRecord {
    pub client: usize,
    /// The member the client is pinned to.
    pub member: usize,
    pub op: KvOp,
    pub invoke: Micros,
    pub complete: Micros,
    pub outcome: Outcome<KvRet>,
}

/// One recorded lease operation.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseRecord {
    pub client: usize,
    pub member: usize,
    pub lease: i64,
    pub op: LeaseOp,
    pub invoke: Micros,
    pub complete: Micros,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum LeaseOp {
    /// Granted with this TTL (seconds), and the key put on it.
    Grant { ttl: i64, key: String },
    /// A keep-alive answered with this TTL (0: the lease is gone).
    KeepAlive { ttl: i64 },
    /// A revoke was sent; `ok` whether it was acknowledged. Either way the
    /// client stops relying on the lease from `invoke` on.
    Revoke { ok: bool },
}

/// One event of a watch response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchEvent {
    pub revision: i64,
    pub key: String,
    /// `None` for a delete.
    pub value: Option<String>,
}

/// One watch response that carried events.
#[derive(Clone, Debug, Serialize)]
pub struct WatchResponseRecord {
    pub received: Micros,
    pub header_revision: i64,
    pub events: Vec<WatchEvent>,
}

/// Everything one watcher saw, in order, including where it (re)started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchRecord {
    pub watcher: usize,
    pub member: usize,
    /// Revisions it asked to start from, in order (the first create, then
    /// each resume after an error).
    pub starts: Vec<i64>,
    pub responses: Vec<WatchResponseRecord>,
    /// Streams that broke or were cancelled, with the reason.
    pub errors: Vec<String>,
}

/// The whole history of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct History {
    pub kv: Vec<KvRecord>,
    pub leases: Vec<LeaseRecord>,
    pub watches: Vec<WatchRecord>,
}

/// Where clients append their records concurrently.
#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<History>>,
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn kv(&self, r: KvRecord) {
        self.lock().kv.push(r);
    }

    pub fn lease(&self, r: LeaseRecord) {
        self.lock().leases.push(r);
    }

    pub fn watch(&self, r: WatchRecord) {
        self.lock().watches.push(r);
    }

    pub fn take(&self) -> History {
        std::mem::take(&mut *self.lock())
    }
}

impl History {
    /// Counts of operations by outcome: (ok, failed, unknown).
    pub fn kv_outcomes(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for r in &self.kv {
            match r.outcome {
                Outcome::Ok(_) => c.0 += 1,
                Outcome::Failed(_) => c.1 += 1,
                Outcome::Unknown(_) => c.2 += 1,
            }
        }
        c
    }

    pub fn watch_events(&self) -> usize {
        self.watches
            .iter()
            .flat_map(|w| &w.responses)
            .map(|r| r.events.len())
            .sum()
    }
}
