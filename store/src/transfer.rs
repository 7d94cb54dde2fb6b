//! Leadership hand-over: `etcdctl move-leader`, and a leader asked to stop
//! (SIGTERM) handing over first, as etcd does, so a rolling restart never
//! waits out an election timeout.
//!
//! openraft 0.9 has no leadership transfer. The vendored copy adds the one
//! step only Raft's core can take (`Trigger::allow_transfer`, see
//! `vendor/openraft/CAIRN.md`); the rest is here, in the order etcd's raft
//! follows:
//!
//! 1. stop acting as leader ([`Node::pause_leading`]): no batch is proposed,
//!    so the log stops growing and writes queue instead of failing, and no
//!    lease is renewed (a renewal relies on the followers' leader lease,
//!    which the transfer lets the transferee pass);
//! 2. wait until the transferee holds the whole log (the leader's
//!    replication metrics), so it can win a vote from anyone;
//! 3. tell every voter, the transferee last, that the transferee may have
//!    their vote before their leader lease runs out; the transferee then
//!    campaigns at once;
//! 4. wait until it leads, and let the queued writes go: this member is a
//!    follower now, so they are forwarded to the new leader.
//!
//! Nothing here can break Raft's safety: votes are still granted only to a
//! greater term and a log at least as long, and the old leader learns of the
//! new term like any deposed leader (its lease renewals and read index need a
//! quorum that now follows someone else). If the transferee does not lead in
//! time the writes resume here, and the caller gets etcd's error.

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::error::EtcdError;
use crate::node::Node;
use crate::peer::messages::TransferCall;

/// How long a voter other than the transferee gets to take the notice: the
/// transferee can win without one that is down or cut off, so such a voter
/// must not use up the whole transfer's time.
const NOTICE_TIMEOUT: Duration = Duration::from_millis(500);

/// Hands leadership to `to`; returns once `to` leads. From a member that is
/// not the leader: etcd's `not leader`; to a learner or a stranger: `bad
/// leader transferee`; to the leader itself: done, as etcd.
pub async fn move_leader(node: &Node, to: u64, timeout: Duration) -> Result<(), EtcdError> {
    let deadline = Instant::now() + timeout;
    if node.leader() != Some(node.id) {
        return Err(EtcdError::NotLeader);
    }
    let voters: Vec<u64> = {
        let m = node.raft.metrics();
        let m = m.borrow();
        m.membership_config.membership().voter_ids().collect()
    };
    if !voters.contains(&to) {
        return Err(EtcdError::BadLeaderTransferee);
    }
    if to == node.id {
        return Ok(());
    }
    let started = Instant::now();
    // Waits for the batch in flight to commit (or fail) and for lease
    // answers under way.
    let _paused = tokio::time::timeout_at(deadline.into(), node.pause_leading())
        .await
        .map_err(|_| EtcdError::TimeoutLeaderTransfer)?;
    let leader_vote = caught_up(node, to, deadline).await?;
    let call = TransferCall { leader_vote, to };
    // Every voter first (this member included), so none can still refuse
    // the transferee for its lease when its vote request arrives.
    let others = voters.iter().filter(|&&v| v != to && v != node.id);
    let told = others.filter_map(|&v| node.member(v)).map(|m| {
        let call = call.clone();
        async move {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = node
                .pool
                .transfer(&m, &call, left.min(NOTICE_TIMEOUT))
                .await
            {
                // It may be down: the transferee can win without it.
                tracing::info!(member = %m.name, "transfer notice not delivered: {e}");
            }
        }
    });
    join_all(told).await;
    node.raft
        .trigger()
        .allow_transfer(leader_vote, to)
        .await
        .map_err(|_| EtcdError::Stopped)?;
    let target = node.member(to).ok_or(EtcdError::BadLeaderTransferee)?;
    let left = deadline.saturating_duration_since(Instant::now());
    if let Err(e) = node.pool.transfer(&target, &call, left).await {
        tracing::warn!(to, "leadership transfer not delivered: {e}");
        return Err(EtcdError::TimeoutLeaderTransfer);
    }
    led_by(node, to, deadline).await?;
    tracing::info!(
        to,
        took_ms = started.elapsed().as_millis() as u64,
        "leadership handed over"
    );
    Ok(())
}

/// On a clean stop: if this member leads, hands leadership to the voter
/// with the most of its log, within `timeout`. Logs the outcome; a stop
/// goes on either way.
pub async fn hand_over_before_stop(node: &Node, timeout: Duration) {
    let best = {
        let m = node.raft.metrics();
        let m = m.borrow();
        if m.current_leader != Some(node.id) {
            return;
        }
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        m.replication.as_ref().and_then(|r| {
            r.iter()
                .filter(|(id, _)| **id != node.id && voters.contains(id))
                .max_by_key(|(_, matched)| matched.map(|l| l.index))
                .map(|(id, _)| *id)
        })
    };
    let Some(to) = best else {
        return;
    };
    let started = Instant::now();
    match move_leader(node, to, timeout).await {
        Ok(()) => tracing::info!(
            to,
            took_ms = started.elapsed().as_millis() as u64,
            "stopping: leadership handed over"
        ),
        Err(e) => tracing::warn!(to, "stopping without handing leadership over: {e}"),
    }
}

/// Waits until `to` has this leader's whole log; returns the leader's vote.
async fn caught_up(
    node: &Node,
    to: u64,
    deadline: Instant,
) -> Result<openraft::Vote<u64>, EtcdError> {
    let mut rx = node.raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update();
            if m.current_leader != Some(node.id) {
                return Err(EtcdError::NotLeader);
            }
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&to).copied().flatten())
                .map(|l| l.index);
            if matched.is_some() && matched >= m.last_log_index {
                return Ok(m.vote);
            }
        }
        if tokio::time::timeout_at(deadline.into(), rx.changed())
            .await
            .is_err()
        {
            return Err(EtcdError::TimeoutLeaderTransfer);
        }
    }
}

/// Waits until `to` leads, as this member sees it.
async fn led_by(node: &Node, to: u64, deadline: Instant) -> Result<(), EtcdError> {
    let mut rx = node.raft.metrics();
    loop {
        if rx.borrow_and_update().current_leader == Some(to) {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline.into(), rx.changed())
            .await
            .is_err()
        {
            return Err(EtcdError::TimeoutLeaderTransfer);
        }
    }
}
