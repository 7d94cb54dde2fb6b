//! Proposal batching, on the leader and on its followers.
//!
//! openraft 0.9 turns every `client_write` into its own log entry, append,
//! replication round and fsync. Under concurrent load that makes the Raft
//! pipeline, not the disk, the limit. Here every write waits in one queue;
//! the batcher proposes whatever is waiting as a single entry
//! (`Command::Batch`), with one batch in flight at a time, so a batch is
//! exactly what arrived while the previous one was being committed. A lone
//! request is proposed as itself: no delay at low load.
//!
//! On a follower the same queue forms the same batches and sends each to the
//! leader as ONE forwarded proposal (`PeerPool::forward`), which the leader
//! puts through its own batcher; the answer carries one response per
//! request. Clients spread their writes over every member (etcdctl,
//! clientv3, lua-resty-etcd), so most writes arrive at a follower: one peer
//! call per batch instead of one per write is most of what forwarding costs.
//! A proposal forwarded to this member is never forwarded again (a member
//! that lost the lead answers "not leader"), so two members with stale views
//! of the leader cannot wait on each other.
//!
//! Each request of a batch is applied in order as if it had its own entry
//! (its own revision, its own response), so batching changes no semantics.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, RwLock};

use crate::command::{ApplyResult, Command, Proposal};
use crate::error::EtcdError;
use crate::net::peers::PeerPool;
use crate::peer::calls::ForwardError;
use crate::peer::messages::ForwardReply;
use crate::raft::{MemberNode, Raft};

/// What became of one proposed request.
#[derive(Debug)]
pub enum Outcome {
    /// Committed in the entry at `index` and applied on the leader; on this
    /// member too unless `forwarded` (the caller then waits for `index`).
    Applied {
        index: u64,
        response: ApplyResult,
        forwarded: bool,
    },
    /// This member is not the leader: nothing was proposed.
    NotLeader,
    /// Proposed, but the outcome is unknown or the node failed.
    Failed(EtcdError),
}

/// A request, whether it may be sent on to the leader, and who waits for it.
type Waiter = (Proposal, bool, oneshot::Sender<Outcome>);

/// Caps keep a batch entry well inside the peer message limit.
const MAX_BATCH_REQUESTS: usize = 512;
const MAX_BATCH_BYTES: usize = 2 << 20;

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl Batcher {
    /// `leading` is held for reading while a batch is proposed: whoever holds
    /// it for writing (a leadership transfer) knows nothing this member
    /// proposed is still travelling, and that nothing more will be until it
    /// lets go. Requests keep queueing meanwhile and are proposed (or, if
    /// leadership moved, sent on to the new leader) afterwards.
    pub fn start(
        raft: Raft,
        id: u64,
        pool: PeerPool,
        timeout: Duration,
        leading: Arc<RwLock<()>>,
    ) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let b = Run {
            raft,
            id,
            pool,
            timeout,
            leading,
        };
        tokio::spawn(b.run(rx));
        Batcher { tx }
    }

    /// Proposes `req` here if this member leads, else sends it on to the
    /// leader with the other requests waiting.
    pub async fn write(&self, req: Proposal) -> Outcome {
        self.submit(req, true).await
    }

    /// Proposes `req` only if this member leads (a request another member
    /// forwarded here): otherwise `NotLeader`.
    pub async fn write_as_leader(&self, req: Proposal) -> Outcome {
        self.submit(req, false).await
    }

    async fn submit(&self, req: Proposal, may_forward: bool) -> Outcome {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((req, may_forward, tx)).is_err() {
            return Outcome::Failed(EtcdError::Stopped);
        }
        rx.await.unwrap_or(Outcome::Failed(EtcdError::Stopped))
    }
}

/// Where a batch goes.
enum Route {
    Propose,
    Forward(MemberNode),
    NoLeader,
}

struct Run {
    raft: Raft,
    id: u64,
    pool: PeerPool,
    timeout: Duration,
    leading: Arc<RwLock<()>>,
}

impl Run {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Waiter>) {
        while let Some(first) = rx.recv().await {
            let _leading = self.leading.read().await;
            let mut bytes = first.0.command().approx_size();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(w) => {
                        bytes += w.0.command().approx_size();
                        batch.push(w);
                    }
                    Err(_) => break,
                }
            }
            let route = self.route();
            if matches!(route, Route::Forward(_)) {
                // What was forwarded here goes back: this member does not lead.
                let (ours, theirs): (Vec<Waiter>, Vec<Waiter>) = batch
                    .into_iter()
                    .partition(|(_, may_forward, _)| *may_forward);
                for (_, _, tx) in theirs {
                    let _ = tx.send(Outcome::NotLeader);
                }
                if ours.is_empty() {
                    continue;
                }
                batch = ours;
            }
            let (reqs, waiters): (Vec<Proposal>, Vec<_>) =
                batch.into_iter().map(|(r, _, tx)| (r, tx)).unzip();
            let n = waiters.len();
            let entry = one_entry(reqs);
            let outcomes = match route {
                Route::Propose => self.propose(entry, n).await,
                Route::Forward(leader) => self.forward(&leader, entry, n).await,
                Route::NoLeader => not_leader(n),
            };
            for (tx, outcome) in waiters.into_iter().zip(outcomes) {
                let _ = tx.send(outcome);
            }
        }
    }

    /// This member if it leads, else the leader it knows of.
    fn route(&self) -> Route {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(l) if l == self.id => Route::Propose,
            Some(l) => match m.membership_config.membership().get_node(&l) {
                Some(node) => Route::Forward(node.clone()),
                None => Route::NoLeader,
            },
            None => Route::NoLeader,
        }
    }

    async fn propose(&self, entry: Proposal, n: usize) -> Vec<Outcome> {
        match tokio::time::timeout(self.timeout, self.raft.client_write(entry)).await {
            Ok(Ok(r)) => split(n, r.log_id.index, r.data, false),
            // Refused before it was appended: nothing proposed.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => not_leader(n),
            // Appended, then removed from this log by a newer leader: another
            // member may still commit it, so it must not be proposed again.
            Ok(Err(RaftError::APIError(ClientWriteError::Truncated(_)))) => {
                all_failed(n, EtcdError::LeaderChanged)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                all_failed(n, EtcdError::Internal(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(_))) => all_failed(n, EtcdError::Stopped),
            // Proposed but not answered in time: it may still commit.
            Err(_) => all_failed(n, EtcdError::Timeout),
        }
    }

    /// The batch as one proposal to the leader, which answers for all.
    async fn forward(&self, leader: &MemberNode, entry: Proposal, n: usize) -> Vec<Outcome> {
        match self.pool.forward(leader, &entry, self.timeout).await {
            Ok(ForwardReply::Applied { index, response }) => split(n, index, response, true),
            Ok(ForwardReply::Failed(e)) => all_failed(n, e),
            // Not proposed anywhere: the caller may try again.
            Ok(ForwardReply::NotLeader { .. }) | Err(ForwardError::NotSent) => not_leader(n),
            Err(ForwardError::Unknown) => all_failed(n, EtcdError::LeaderChanged),
        }
    }
}

/// A lone request is its own entry; more are one `Command::Batch`.
fn one_entry(mut reqs: Vec<Proposal>) -> Proposal {
    if reqs.len() == 1 {
        if let Some(r) = reqs.pop() {
            return r;
        }
    }
    Proposal::new(None, Command::Batch(reqs))
}

/// One outcome per request from the entry's answer.
fn split(n: usize, index: u64, response: ApplyResult, forwarded: bool) -> Vec<Outcome> {
    let applied = |response| Outcome::Applied {
        index,
        response,
        forwarded,
    };
    match (n, response) {
        (1, response) => vec![applied(response)],
        (_, ApplyResult::Batch(responses)) if responses.len() == n => {
            responses.into_iter().map(applied).collect()
        }
        (_, other) => all_failed(
            n,
            EtcdError::Internal(format!("unexpected batch result {other:?}")),
        ),
    }
}

/// Nothing was proposed: each caller may try again.
fn not_leader(n: usize) -> Vec<Outcome> {
    (0..n).map(|_| Outcome::NotLeader).collect()
}

fn all_failed(n: usize, e: EtcdError) -> Vec<Outcome> {
    (0..n).map(|_| Outcome::Failed(e.clone())).collect()
}
