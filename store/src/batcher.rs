//! Proposal batching on the leader.
//!
//! openraft 0.9 turns every `client_write` into its own log entry, append,
//! replication round and fsync. Under concurrent load that makes the Raft
//! pipeline, not the disk, the limit. Here every write waits in one queue;
//! the batcher proposes whatever is waiting as a single entry
//! (`Command::Batch`), with one batch in flight at a time, so a batch is
//! exactly what arrived while the previous one was being committed. A lone
//! request is proposed as itself: no delay at low load.
//!
//! Each request of a batch is applied in order as if it had its own entry
//! (its own revision, its own response), so batching changes no semantics.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, RwLock};

use crate::command::{ApplyResult, Command, Proposal};
use crate::error::EtcdError;
use crate::raft::Raft;

/// What became of one proposed request.
#[derive(Debug)]
pub enum Outcome {
    /// Committed in the entry at `index` and applied on this member.
    Applied { index: u64, response: ApplyResult },
    /// This member is not the leader: nothing was proposed.
    NotLeader,
    /// Proposed, but the outcome is unknown or the node failed.
    Failed(EtcdError),
}

type Waiter = (Proposal, oneshot::Sender<Outcome>);

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
    pub fn start(raft: Raft, timeout: Duration, leading: Arc<RwLock<()>>) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, timeout, leading));
        Batcher { tx }
    }

    pub async fn write(&self, req: Proposal) -> Outcome {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((req, tx)).is_err() {
            return Outcome::Failed(EtcdError::Stopped);
        }
        rx.await.unwrap_or(Outcome::Failed(EtcdError::Stopped))
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
    timeout: Duration,
    leading: Arc<RwLock<()>>,
) {
    while let Some(first) = rx.recv().await {
        let _leading = leading.read().await;
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
        let (mut reqs, waiters): (Vec<Proposal>, Vec<_>) = batch.into_iter().unzip();
        let entry = if reqs.len() == 1 {
            reqs.pop()
                .unwrap_or_else(|| Proposal::new(None, Command::Batch(Vec::new())))
        } else {
            Proposal::new(None, Command::Batch(reqs))
        };
        let n = waiters.len();
        let outcomes: Vec<Outcome> =
            match tokio::time::timeout(timeout, raft.client_write(entry)).await {
                Ok(Ok(r)) => {
                    let index = r.log_id.index;
                    match (n, r.data) {
                        (1, response) => vec![Outcome::Applied { index, response }],
                        (_, ApplyResult::Batch(responses)) if responses.len() == n => responses
                            .into_iter()
                            .map(|response| Outcome::Applied { index, response })
                            .collect(),
                        (_, other) => (0..n)
                            .map(|_| {
                                Outcome::Failed(EtcdError::Internal(format!(
                                    "unexpected batch result {other:?}"
                                )))
                            })
                            .collect(),
                    }
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                    (0..n).map(|_| Outcome::NotLeader).collect()
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => (0..n)
                    .map(|_| Outcome::Failed(EtcdError::Internal(e.to_string())))
                    .collect(),
                Ok(Err(RaftError::Fatal(_))) => (0..n)
                    .map(|_| Outcome::Failed(EtcdError::Stopped))
                    .collect(),
                // Proposed but not answered in time: it may still commit.
                Err(_) => (0..n)
                    .map(|_| Outcome::Failed(EtcdError::Timeout))
                    .collect(),
            };
        for (tx, outcome) in waiters.into_iter().zip(outcomes) {
            let _ = tx.send(outcome);
        }
    }
}
