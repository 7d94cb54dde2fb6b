//! Lease deadlines, which live only in the leader's memory (as etcd's lessor).
//!
//! The leases themselves (ID, granted TTL, attached keys) are replicated state
//! in the MVCC tree. Only the leader tracks when each expires: it renews on
//! keep-alive, and when a deadline passes it proposes a `LeaseRevoke`, whose
//! apply deletes the keys in one revision. A member that becomes leader gives
//! every lease a full TTL from that moment, so a failover never expires a
//! lease whose holder kept it alive.
//!
//! A renewal is a promise that no other member will expire the lease for a
//! TTL, so only a member that can prove it still leads may make it:
//! keep-alive and time-to-live are answered after a quorum confirmed this
//! member's leadership in a round that started after the call arrived (the
//! followers that confirmed refuse to elect anyone else for a leader lease,
//! and a new leader restarts every TTL when it takes over), and after this
//! member applied everything committed before that round (a revoke its
//! predecessor proposed may be among it). A lease whose
//! deadline has passed is never renewed: the call waits until its revoke is
//! applied and answers as for a lease that does not exist (TTL 0 / -1), as
//! etcd's lessor does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::error::EtcdError;
use crate::node::Node;

/// etcd's upper bound on a lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds.
pub fn min_ttl(election_timeout_ms: u64) -> i64 {
    ((election_timeout_ms * 3 / 2).div_ceil(1000)).max(1) as i64
}

/// A lease question only the leader can answer.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum LeaseCall {
    KeepAlive(i64),
    TimeToLive { id: i64, keys: bool },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum LeaseAnswer {
    /// New TTL; 0 for an unknown lease (etcd answers so, without error).
    KeepAlive(i64),
    /// Remaining and granted TTL; remaining -1 for an unknown lease.
    TimeToLive {
        ttl: i64,
        granted: i64,
        keys: Vec<Vec<u8>>,
    },
    NotLeader,
    Failed(EtcdError),
}

#[derive(Default)]
pub struct Lessor {
    deadlines: Mutex<HashMap<i64, Instant>>,
    /// Leases whose revoke has been proposed, and when to try again.
    revoking: Mutex<HashMap<i64, Instant>>,
    /// The term of the leadership the deadlines belong to; `None` while
    /// this member does not lead. Deadlines of an earlier leadership are
    /// never used: a member that leads again starts every TTL afresh.
    term: Mutex<Option<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lessor {
    /// Renews `id` for `ttl` seconds from now, unless its deadline has
    /// already passed (then its revoke is due, and `false` says so).
    pub fn renew(&self, id: i64, ttl: i64) -> bool {
        let now = Instant::now();
        let mut d = lock(&self.deadlines);
        if d.get(&id).is_some_and(|deadline| *deadline <= now) {
            return false;
        }
        d.insert(id, now + Duration::from_secs(ttl as u64));
        true
    }

    /// Whether `id`'s deadline has passed (its revoke is due or in flight).
    pub fn expired(&self, id: i64) -> bool {
        lock(&self.deadlines)
            .get(&id)
            .is_some_and(|d| *d <= Instant::now())
    }

    pub fn remaining(&self, id: i64) -> Option<Duration> {
        lock(&self.deadlines)
            .get(&id)
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadlines belong to leadership in `term`.
    pub fn synced_for(&self, term: u64) -> bool {
        *lock(&self.term) == Some(term)
    }

    /// Forgets every deadline: this member no longer leads.
    fn forget(&self) {
        let mut term = lock(&self.term);
        if term.take().is_some() {
            lock(&self.deadlines).clear();
            lock(&self.revoking).clear();
        }
    }

    /// Aligns deadlines with the replicated leases of leadership in `term`.
    /// The first sync of a term restarts every lease's full TTL.
    fn sync(&self, term: u64, leases: &[(i64, i64)]) {
        let now = Instant::now();
        let mut t = lock(&self.term);
        let mut d = lock(&self.deadlines);
        if *t != Some(term) {
            d.clear();
            *t = Some(term);
        }
        d.retain(|id, _| leases.iter().any(|(l, _)| l == id));
        for (id, ttl) in leases {
            d.entry(*id)
                .or_insert(now + Duration::from_secs(*ttl as u64));
        }
        lock(&self.revoking).retain(|id, _| d.contains_key(id));
    }

    /// Expired leases not already being revoked.
    fn due(&self) -> Vec<i64> {
        let now = Instant::now();
        let d = lock(&self.deadlines);
        let mut revoking = lock(&self.revoking);
        let mut out = Vec::new();
        for (id, deadline) in d.iter() {
            if *deadline <= now && revoking.get(id).is_none_or(|retry| *retry <= now) {
                revoking.insert(*id, now + Duration::from_secs(2));
                out.push(*id);
            }
        }
        out
    }
}

/// Answers a lease call on this member, which must be the leader (see the
/// module doc for the order: expired leases first, then a leadership
/// confirmation, then the renewal).
pub async fn answer_as_leader(node: &Node, call: &LeaseCall) -> LeaseAnswer {
    if node.leader() != Some(node.id) {
        return LeaseAnswer::NotLeader;
    }
    let (id, keys) = match call {
        LeaseCall::KeepAlive(id) => (*id, false),
        LeaseCall::TimeToLive { id, keys } => (*id, *keys),
    };
    // Leadership confirmed after the call arrived, and everything committed
    // before it applied here: a revoke the previous leader proposed and this
    // leader committed with its first entry is then visible, so a lease it
    // already expired is not renewed (found by the robustness suite: a new
    // leader renewed a lease whose revoke it applied a moment later).
    if node.leader_barrier().await.is_err() {
        return LeaseAnswer::NotLeader;
    }
    let (leader, term) = node.leader_and_term();
    if leader != Some(node.id) {
        return LeaseAnswer::NotLeader;
    }
    if !node.lessor.synced_for(term) {
        // The first lease call of this leadership, before the expiry loop's
        // next tick: the barrier applied everything before the term, so the
        // deadlines can start now.
        match node.mvcc.read(|v| v.leases()) {
            Ok(leases) => node.lessor.sync(term, &leases),
            Err(e) => return LeaseAnswer::Failed(e),
        }
    }
    let granted = match node.mvcc.read(|v| v.lease_ttl(id)) {
        Ok(g) => g,
        Err(e) => return LeaseAnswer::Failed(e),
    };
    let Some(granted) = granted else {
        return gone(call);
    };
    if node.lessor.expired(id) {
        return await_revoke(node, id, call).await;
    }
    match call {
        LeaseCall::KeepAlive(_) => {
            if node.lessor.renew(id, granted) {
                LeaseAnswer::KeepAlive(granted)
            } else {
                // The deadline passed while leadership was being confirmed.
                await_revoke(node, id, call).await
            }
        }
        LeaseCall::TimeToLive { .. } => {
            let keys = if keys {
                match node.mvcc.read(|v| v.lease_keys(id)) {
                    Ok(k) => k,
                    Err(e) => return LeaseAnswer::Failed(e),
                }
            } else {
                Vec::new()
            };
            LeaseAnswer::TimeToLive {
                ttl: node
                    .lessor
                    .remaining(id)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(granted),
                granted,
                keys,
            }
        }
    }
}

/// etcd's answer for a lease that does not exist: keep-alive TTL 0,
/// time-to-live -1, both without an error.
fn gone(call: &LeaseCall) -> LeaseAnswer {
    match call {
        LeaseCall::KeepAlive(_) => LeaseAnswer::KeepAlive(0),
        LeaseCall::TimeToLive { .. } => LeaseAnswer::TimeToLive {
            ttl: -1,
            granted: 0,
            keys: Vec::new(),
        },
    }
}

/// Waits until the revoke of an expired lease is applied here, then answers
/// as for a lease that does not exist. Leadership lost meanwhile: the call
/// goes to the new leader (which restarted every TTL and may renew it).
async fn await_revoke(node: &Node, id: i64, call: &LeaseCall) -> LeaseAnswer {
    let deadline = Instant::now() + node.request_timeout;
    loop {
        match node.mvcc.read(|v| v.lease_ttl(id)) {
            Ok(None) => return gone(call),
            Ok(Some(_)) => {}
            Err(e) => return LeaseAnswer::Failed(e),
        }
        if node.leader() != Some(node.id) {
            return LeaseAnswer::NotLeader;
        }
        if Instant::now() >= deadline {
            return LeaseAnswer::Failed(EtcdError::Timeout);
        }
        // Polls a condition (the revoke's apply), bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The leader's expiry loop: keeps deadlines in step with the replicated
/// leases and proposes the revocation of expired ones.
pub async fn expiry_loop(node: Weak<Node>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        let Some(n) = node.upgrade() else { return };
        let (leader, term) = n.leader_and_term();
        if leader != Some(n.id) {
            n.lessor.forget();
            continue;
        }
        let Ok(leases) = n.mvcc.read(|v| v.leases()) else {
            continue;
        };
        // Wait until this leader has applied everything committed before its
        // term, so it knows every lease before it starts any clock.
        let applied_term = n
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.leader_id.term);
        if applied_term != Some(term) {
            continue;
        }
        n.lessor.sync(term, &leases);
        for id in n.lessor.due() {
            let n2: Arc<Node> = n.clone();
            tokio::spawn(async move {
                // Proposed here only, never forwarded: the deadline is this
                // leader's view. A leader that was paused past its leadership
                // would otherwise hand a stale expiry to the new leader, which
                // may have renewed the lease since. A lease already gone
                // answers "not found": nothing to do.
                let req = crate::command::Request::new(None, Command::LeaseRevoke { id });
                let _ = n2.propose_as_leader(req).await;
            });
        }
    }
}

/// A fresh lease ID: positive, unpredictable, unlikely to collide.
pub fn new_lease_id(member_id: u64) -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(member_id);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 1).max(1) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_follows_etcd() {
        assert_eq!(min_ttl(1000), 2, "etcd's default: 2 s");
        assert_eq!(min_ttl(500), 1);
    }

    #[test]
    fn deadlines() {
        let l = Lessor::default();
        l.sync(7, &[(1, 0), (2, 100)]);
        assert!(l.synced_for(7) && !l.synced_for(8));
        let exp = l.due();
        assert_eq!(exp, vec![1]);
        assert!(
            l.due().is_empty(),
            "a revoke in flight is not proposed twice"
        );
        assert!(l.expired(1));
        assert!(!l.renew(1, 100), "an expired lease is not renewed");
        assert!(l.renew(2, 100));
        l.sync(7, &[(2, 100)]);
        assert!(l.remaining(1).is_none());
        assert!(l.remaining(2).unwrap() > Duration::from_secs(90));
        // Leadership lost, then won again: nothing of the old deadlines stays.
        l.forget();
        assert!(!l.synced_for(7) && l.remaining(2).is_none());
        l.sync(9, &[(1, 0)]);
        assert!(
            l.due().len() == 1,
            "a revoke in flight before is proposed again"
        );
    }
}
