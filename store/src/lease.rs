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

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::command::Command;
use crate::error::EtcdError;
use crate::node::Node;
use crate::peer::messages::{LeaseAnswer, LeaseCall};

/// etcd's upper bound on a lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds.
pub fn min_ttl(election_timeout_ms: u64) -> i64 {
    ((election_timeout_ms * 3 / 2).div_ceil(1000)).max(1) as i64
}

/// Asks the leader (perhaps this member) to renew a lease or report its
/// remaining time. Both are idempotent, so retrying after a leader change
/// is safe.
pub async fn call(node: &Node, call: LeaseCall) -> Result<LeaseAnswer, EtcdError> {
    let deadline = Instant::now() + node.request_timeout;
    loop {
        let leader = node.wait_leader(deadline).await?;
        let answer = if leader == node.id {
            answer_as_leader(node, &call).await
        } else if let Some(member) = node.member(leader) {
            let left = deadline.saturating_duration_since(Instant::now());
            node.pool
                .lease(&member, &call, left)
                .await
                .unwrap_or(LeaseAnswer::NotLeader)
        } else {
            LeaseAnswer::NotLeader
        };
        match answer {
            LeaseAnswer::NotLeader => {
                if Instant::now() >= deadline {
                    return Err(EtcdError::Timeout);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            LeaseAnswer::Failed(e) => return Err(e),
            other => return Ok(other),
        }
    }
}

/// Answers a lease call on this member, which must be the leader (see the
/// module doc for the order: expired leases first, then a leadership
/// confirmation, then the renewal).
pub async fn answer_as_leader(node: &Node, call: &LeaseCall) -> LeaseAnswer {
    // Not while leadership is being handed over: the transferee may take
    // over before the leader lease that the round below relies on runs out
    // (see `crate::transfer`). After a transfer this member no longer leads.
    let outcome = {
        let _leading = node.leading().await;
        answer_while_leading(node, call).await
    };
    match outcome {
        Ok(answer) => answer,
        // Outside the guard: the revoke goes through the batcher, which a
        // transfer waiting for the guard holds back (tokio's RwLock lets a
        // waiting writer go first), so waiting for it inside would stall both.
        Err(Expired(id)) => await_revoke(node, id, call).await,
    }
}

/// A lease whose deadline has passed: its revoke is to be awaited.
struct Expired(i64);

async fn answer_while_leading(node: &Node, call: &LeaseCall) -> Result<LeaseAnswer, Expired> {
    if node.leader() != Some(node.id) {
        return Ok(LeaseAnswer::NotLeader);
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
        return Ok(LeaseAnswer::NotLeader);
    }
    let (leader, term) = node.leader_and_term();
    if leader != Some(node.id) {
        return Ok(LeaseAnswer::NotLeader);
    }
    // Perhaps the first lease call of this leadership, before the expiry
    // loop's next tick: the barrier applied everything before the term, so
    // the deadlines can start now.
    if let Err(e) = catch_up(node, term) {
        return Ok(LeaseAnswer::Failed(e));
    }
    let granted = match node.mvcc.read(|v| v.lease_ttl(id)) {
        Ok(g) => g,
        Err(e) => return Ok(LeaseAnswer::Failed(e)),
    };
    let Some(granted) = granted else {
        return Ok(gone(call));
    };
    if node.lessor.expired(id) {
        return Err(Expired(id));
    }
    Ok(match call {
        LeaseCall::KeepAlive(_) => {
            if !node.lessor.renew(id, granted) {
                // The deadline passed while leadership was being confirmed.
                return Err(Expired(id));
            }
            LeaseAnswer::KeepAlive(granted)
        }
        LeaseCall::TimeToLive { .. } => {
            let keys = if keys {
                match node.mvcc.read(|v| v.lease_keys(id)) {
                    Ok(k) => k,
                    Err(e) => return Ok(LeaseAnswer::Failed(e)),
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
    })
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

/// Brings the lessor up to date for leadership in `term`: every lease with
/// a fresh TTL on the first call of a term, then only the grants and revokes
/// applied since the last call (see [`crate::lessor`]).
fn catch_up(node: &Node, term: u64) -> Result<(), EtcdError> {
    if node.lessor.synced_for(term) {
        node.lessor.apply_changes(&node.mvcc.drain_lease_changes());
    } else {
        let leases = node.mvcc.start_lease_feed()?;
        node.lessor.start_term(term, &leases);
    }
    Ok(())
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
            n.mvcc.stop_lease_feed();
            continue;
        }
        // Wait until this leader has applied everything committed before its
        // term, so it knows every lease before it starts any clock.
        let applied_term = n
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.leader_id.term);
        if applied_term != Some(term) || catch_up(&n, term).is_err() {
            continue;
        }
        for id in n.lessor.due() {
            let n2: Arc<Node> = n.clone();
            tokio::spawn(async move {
                // Proposed here only, never forwarded: the deadline is this
                // leader's view. A leader that was paused past its leadership
                // would otherwise hand a stale expiry to the new leader, which
                // may have renewed the lease since. For the same reason it
                // carries the term whose deadline passed: queued here until
                // this member leads again, in a later term, it revokes
                // nothing (found by the robustness suite: a leader paused
                // and re-elected renewed a lease, then applied its own
                // earlier expiry). A lease already gone answers "not
                // found": nothing to do.
                let req = crate::command::Proposal::new(None, Command::LeaseExpire { id, term });
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
}
