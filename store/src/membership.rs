//! Membership changes (`etcdctl member add/remove/update/promote`) on top of
//! openraft's `add_learner` and `change_membership`, with etcd's checks.
//!
//! Changes run on the leader; other members forward them. A member counts as
//! *started* when it has published its attributes (etcd's rule) and the
//! leader has heard from it recently (etcd's strict reconfiguration check):
//! a change that would leave fewer started voters than a quorum is refused.
//!
//! openraft leaves a change interrupted by a leader crash in a joint
//! configuration; [`finish_joint_loop`] has each new leader complete it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tracing::{info, warn};

use crate::error::EtcdError;
use crate::ids;
use crate::node::Node;
use crate::peer::messages::{MemberAnswer, MemberCall};
use crate::raft::state_machine::member_attrs;
use crate::raft::MemberNode;

/// How recently the leader must have heard from a member for it to count as
/// started (etcd's HealthInterval).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// Votes needed for a majority of `voters`.
fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

fn normalize(urls: &[String]) -> Result<Vec<String>, EtcdError> {
    let mut out = Vec::new();
    for u in urls {
        let parsed = url::Url::parse(u).map_err(|_| EtcdError::InvalidPeerUrls)?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(EtcdError::InvalidPeerUrls);
        }
        out.push(u.trim_end_matches('/').to_string());
    }
    if out.is_empty() {
        return Err(EtcdError::InvalidPeerUrls);
    }
    out.sort();
    Ok(out)
}

fn write_err(e: RaftError<u64, ClientWriteError<u64, MemberNode>>) -> EtcdError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => EtcdError::NotCapable,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            EtcdError::Internal(e.to_string())
        }
        // The change may still be committed by another leader.
        RaftError::APIError(ClientWriteError::Truncated(_)) => EtcdError::LeaderChanged,
        RaftError::Fatal(_) => EtcdError::Stopped,
    }
}

/// Voters that count as started, excluding `without`.
/// Voters (except `without`) that have started, i.e. published their
/// client URLs: etcd's `IsReadyTo{Add,Remove}VotingMember`.
fn started_voters(node: &Node, voters: &BTreeSet<u64>, without: Option<u64>) -> Vec<u64> {
    let attrs = member_attrs(&node.mvcc);
    voters
        .iter()
        .copied()
        .filter(|id| Some(*id) != without)
        .filter(|id| {
            attrs
                .iter()
                .any(|(a, at)| a == id && !at.client_urls.is_empty())
        })
        .collect()
}

/// Of `ids`, how many this member has heard from within the health
/// interval (itself included): etcd's `isConnected*Since`.
fn connected(node: &Node, ids: &[u64]) -> usize {
    ids.iter()
        .filter(|id| **id == node.id || node.pool.reachable(**id, HEALTH_INTERVAL))
        .count()
}

/// Applies a membership change on this member, which must be the leader.
/// Runs a membership change on the leader (here or forwarded).
pub async fn request(node: &Node, call: MemberCall) -> Result<u64, EtcdError> {
    let deadline = Instant::now() + node.request_timeout;
    loop {
        let leader = node.wait_leader(deadline).await?;
        let answer = if leader == node.id {
            change_as_leader(node, call.clone()).await
        } else if let Some(member) = node.member(leader) {
            let left = deadline.saturating_duration_since(Instant::now());
            match node.pool.membership(&member, &call, left).await {
                Ok(a) => a,
                // Sent but unanswered: the change may or may not be in.
                Err(_) => return Err(EtcdError::LeaderChanged),
            }
        } else {
            MemberAnswer::NotLeader
        };
        match answer {
            MemberAnswer::Done { id } => return Ok(id),
            MemberAnswer::Failed(e) => return Err(e),
            MemberAnswer::NotLeader => {
                if Instant::now() >= deadline {
                    return Err(EtcdError::NoLeader);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

pub async fn change_as_leader(node: &Node, call: MemberCall) -> MemberAnswer {
    if node.leader() != Some(node.id) {
        return MemberAnswer::NotLeader;
    }
    match change(node, call).await {
        Ok(id) => MemberAnswer::Done { id },
        Err(EtcdError::NotCapable) => MemberAnswer::NotLeader,
        Err(e) => MemberAnswer::Failed(e),
    }
}

async fn change(node: &Node, call: MemberCall) -> Result<u64, EtcdError> {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let nodes: BTreeMap<u64, MemberNode> =
        membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
    match call {
        MemberCall::Add {
            peer_urls,
            learner,
            unix_time,
        } => {
            let urls = normalize(&peer_urls)?;
            if nodes
                .values()
                .any(|n| n.peer_urls.iter().any(|u| urls.contains(u)))
            {
                return Err(EtcdError::PeerUrlExists);
            }
            let id = ids::member_id(&urls, &node.cluster_token, Some(unix_time));
            if nodes.contains_key(&id) {
                return Err(EtcdError::MemberExists);
            }
            if learner {
                if nodes.len() > voters.len() {
                    return Err(EtcdError::TooManyLearners);
                }
            } else {
                // As etcd's strict reconfig check: a quorum of the larger
                // voter set must have started, and every voter must be
                // connected (a dead one makes the cluster "unhealthy").
                let started = started_voters(node, &voters, None);
                if started.len() < quorum(voters.len() + 1) {
                    return Err(EtcdError::NotEnoughStartedMembers);
                }
                if connected(node, &started) < voters.len() {
                    return Err(EtcdError::Unhealthy);
                }
            }
            let member = MemberNode {
                name: String::new(),
                peer_urls: urls,
            };
            node.raft
                .add_learner(id, member, false)
                .await
                .map_err(write_err)?;
            if !learner {
                let add = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                node.raft
                    .change_membership(add, false)
                    .await
                    .map_err(write_err)?;
            }
            info!(member = %ids::hex(id), learner, "member added");
            Ok(id)
        }
        MemberCall::Remove { id } => {
            if !nodes.contains_key(&id) {
                return Err(EtcdError::MemberNotFound);
            }
            if voters.contains(&id) {
                // etcd: a quorum of the voters left must have started and
                // be connected.
                let quorum = quorum(voters.len() - 1);
                let started = started_voters(node, &voters, Some(id));
                if started.len() < quorum {
                    return Err(EtcdError::NotEnoughStartedMembers);
                }
                if connected(node, &started) < quorum {
                    return Err(EtcdError::Unhealthy);
                }
                let rm = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
                node.raft
                    .change_membership(rm, false)
                    .await
                    .map_err(write_err)?;
            } else {
                let rm = ChangeMembers::RemoveNodes(BTreeSet::from([id]));
                node.raft
                    .change_membership(rm, false)
                    .await
                    .map_err(write_err)?;
            }
            info!(member = %ids::hex(id), "member removed");
            Ok(id)
        }
        MemberCall::Update { id, peer_urls } => {
            let Some(current) = nodes.get(&id) else {
                return Err(EtcdError::MemberNotFound);
            };
            let urls = normalize(&peer_urls)?;
            if nodes
                .iter()
                .any(|(other, n)| *other != id && n.peer_urls.iter().any(|u| urls.contains(u)))
            {
                return Err(EtcdError::PeerUrlExists);
            }
            let updated = MemberNode {
                name: current.name.clone(),
                peer_urls: urls,
            };
            let set = ChangeMembers::SetNodes(BTreeMap::from([(id, updated)]));
            node.raft
                .change_membership(set, false)
                .await
                .map_err(write_err)?;
            Ok(id)
        }
        MemberCall::Promote { id } => {
            if !nodes.contains_key(&id) {
                return Err(EtcdError::MemberNotFound);
            }
            if voters.contains(&id) {
                return Err(EtcdError::MemberNotLearner);
            }
            // etcd: a learner is ready once it has 90% of the leader's log.
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index)
                .unwrap_or(0);
            let last = m.last_log_index.unwrap_or(0);
            if (matched as f64) < 0.9 * last as f64 {
                return Err(EtcdError::LearnerNotReady);
            }
            let add = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
            node.raft
                .change_membership(add, false)
                .await
                .map_err(write_err)?;
            Ok(id)
        }
    }
}

/// Completes a membership change that a leader crash left in a joint
/// configuration: the new leader re-proposes the target configuration.
pub async fn finish_joint_loop(node: Weak<Node>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    // Seen joint since: a change in progress is given one tick to finish.
    let mut joint_seen = false;
    loop {
        interval.tick().await;
        let Some(n) = node.upgrade() else { return };
        if n.leader() != Some(n.id) {
            joint_seen = false;
            continue;
        }
        let membership = n
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let configs = membership.get_joint_config();
        if configs.len() < 2 {
            joint_seen = false;
            continue;
        }
        if !joint_seen {
            joint_seen = true;
            continue;
        }
        let target: BTreeSet<u64> = configs.last().cloned().unwrap_or_default();
        warn!(
            ?target,
            "finishing a membership change left in joint configuration"
        );
        if let Err(e) = n
            .raft
            .change_membership(ChangeMembers::ReplaceAllVoters(target), false)
            .await
        {
            warn!("could not finish the membership change: {e}");
        }
    }
}
