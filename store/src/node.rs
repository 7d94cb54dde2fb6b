//! A running member: Raft, the key-value state, and the two things every API
//! call needs from them: proposing a write through the leader, and a
//! linearizable read barrier (read index).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb::ResponseHeader;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::batcher::Outcome;
use crate::command::{ApplyResult, Command, Proposal};
use crate::error::EtcdError;
use crate::lessor::Lessor;
use crate::mvcc::Mvcc;
use crate::net::peers::PeerPool;
use crate::peer::messages::ForwardReply;
use crate::raft::{MemberNode, Raft};
use crate::storage::Storage;

type ReadWaiter = oneshot::Sender<Result<u64, EtcdError>>;

pub struct Node {
    pub id: u64,
    pub cluster_id: u64,
    pub name: String,
    pub raft: Raft,
    pub mvcc: Arc<Mvcc>,
    pub storage: Storage,
    pub pool: PeerPool,
    /// How long a request may wait for a leader, a commit or an apply; as
    /// etcd's: 5 s plus twice the election timeout.
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// How often an idle watch with progress_notify hears from us.
    pub watch_progress_interval: Duration,
    /// `--max-watches-per-stream`.
    pub max_watches_per_stream: usize,
    /// `--max-request-bytes-in-flight`.
    pub max_request_bytes_in_flight: usize,
    /// Smallest lease TTL granted (etcd: 1.5 election timeouts).
    pub min_lease_ttl: i64,
    /// `--initial-cluster-token`: new member IDs are derived from it.
    pub cluster_token: String,
    /// `--quota-backend-bytes`: above it this member raises NOSPACE.
    pub quota_bytes: u64,
    /// `--auth-token-ttl`: lifetime of the tokens this member issues.
    pub auth_token_ttl: Duration,

    pub lessor: Lessor,
    /// Set before a clean shutdown stops Raft (see [`exit_on_fatal`]).
    pub stopping: std::sync::atomic::AtomicBool,
    read_tx: mpsc::UnboundedSender<ReadWaiter>,
    lead_tx: mpsc::UnboundedSender<ReadWaiter>,
    batcher: crate::batcher::Batcher,
    /// See [`Node::leading`].
    leading: Arc<tokio::sync::RwLock<()>>,
}

/// What a member is started with: its identity and the limits its flags set.
pub struct NodeConfig {
    pub id: u64,
    pub cluster_id: u64,
    pub name: String,
    /// `--initial-cluster-token`: new member IDs are derived from it.
    pub cluster_token: String,
    /// See [`Node::request_timeout`].
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub watch_progress_interval: Duration,
    pub max_watches_per_stream: usize,
    pub max_request_bytes_in_flight: usize,
    pub min_lease_ttl: i64,
    pub quota_bytes: u64,
    pub auth_token_ttl: Duration,
}

impl Node {
    pub fn start(
        cfg: NodeConfig,
        raft: Raft,
        mvcc: Arc<Mvcc>,
        storage: Storage,
        pool: PeerPool,
    ) -> Arc<Node> {
        let NodeConfig {
            id,
            cluster_id,
            name,
            cluster_token,
            request_timeout,
            max_request_bytes,
            max_txn_ops,
            watch_progress_interval,
            max_watches_per_stream,
            max_request_bytes_in_flight,
            min_lease_ttl,
            quota_bytes,
            auth_token_ttl,
        } = cfg;
        let (read_tx, read_rx) = mpsc::unbounded_channel();
        let (lead_tx, lead_rx) = mpsc::unbounded_channel();
        let leading = Arc::new(tokio::sync::RwLock::new(()));
        let batcher = crate::batcher::Batcher::start(
            raft.clone(),
            id,
            pool.clone(),
            request_timeout,
            leading.clone(),
        );
        let node = Arc::new(Node {
            id,
            cluster_id,
            name,
            raft,
            mvcc,
            storage,
            pool,
            request_timeout,
            max_request_bytes,
            max_txn_ops,
            watch_progress_interval,
            max_watches_per_stream,
            max_request_bytes_in_flight,
            min_lease_ttl,
            cluster_token,
            quota_bytes,
            auth_token_ttl,
            batcher,
            leading,

            lessor: Lessor::default(),
            stopping: Default::default(),
            read_tx,
            lead_tx,
        });
        tokio::spawn(confirm_loop(
            Arc::downgrade(&node),
            read_rx,
            Round::ReadIndex,
        ));
        tokio::spawn(confirm_loop(
            Arc::downgrade(&node),
            lead_rx,
            Round::Leadership,
        ));
        tokio::spawn(count_leader_changes(node.raft.metrics()));
        tokio::spawn(exit_on_fatal(node.raft.metrics(), Arc::downgrade(&node)));
        tokio::spawn(quota_loop(Arc::downgrade(&node)));
        node
    }

    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// What `/metrics` mirrors of this member.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let rm = self.raft.metrics().borrow().clone();
        crate::metrics::Snapshot {
            has_leader: rm.current_leader.is_some(),
            is_leader: rm.current_leader == Some(self.id),
            applied: rm.last_applied.map(|l| l.index).unwrap_or(0),
            db_size: self.mvcc.size_bytes(),
            keys: self.mvcc.key_count() as u64,
        }
    }

    /// The leader and the term, read together.
    pub fn leader_and_term(&self) -> (Option<u64>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.current_term)
    }

    pub fn member(&self, id: u64) -> Option<MemberNode> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// Fills the identity fields of a response header. Revision (and, for
    /// writes, the term the entry was committed in) are already set.
    pub fn fill_header(&self, h: &mut Option<ResponseHeader>) {
        let h = h.get_or_insert_with(Default::default);
        h.cluster_id = self.cluster_id;
        h.member_id = self.id;
        if h.raft_term == 0 {
            h.raft_term = self.term();
        }
    }

    /// Held for reading by whatever acts as leader and must not overlap a
    /// leadership transfer: proposing a batch, answering a lease call. The
    /// guard of [`Node::pause_leading`] waits for those in flight and holds
    /// off new ones.
    pub async fn leading(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.leading.read().await
    }

    /// See [`Node::leading`] and [`crate::transfer`].
    pub async fn pause_leading(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.leading.write().await
    }

    /// Waits until some member is known as leader, or the deadline passes.
    pub async fn wait_leader(&self, deadline: Instant) -> Result<u64, EtcdError> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Ok(l);
            }
            if tokio::time::timeout_at(deadline.into(), rx.changed())
                .await
                .is_err()
            {
                return Err(EtcdError::NoLeader);
            }
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), EtcdError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "apply")
            .await
            .map(|_| ())
            .map_err(|_| EtcdError::Timeout)
    }

    /// Commits `cmd` through the leader and returns what applying it answered,
    /// once this member has applied it too (so a read or watch on this member
    /// then sees the write).
    ///
    /// A request is retried only when it certainly was not proposed (this
    /// member or the one it reached was not the leader, or the leader could not
    /// be connected to). Otherwise the caller gets `request timed out` /
    /// `leader changed`, etcd's "outcome unknown".
    pub async fn propose(
        &self,
        user: Option<String>,
        cmd: Command,
    ) -> Result<ApplyResult, EtcdError> {
        let m = &crate::metrics::METRICS;
        m.proposals_pending.inc();
        let res = self.propose_inner(user, cmd).await;
        m.proposals_pending.dec();
        if res.is_err() {
            m.proposals_failed.inc();
        }
        res
    }

    async fn propose_inner(
        &self,
        user: Option<String>,
        cmd: Command,
    ) -> Result<ApplyResult, EtcdError> {
        let req = Proposal::new(user, cmd);
        let deadline = Instant::now() + self.request_timeout;
        let mut tries = 0;
        loop {
            // The batcher proposes here or sends the batch on to the leader.
            match self.batcher.write(req.clone()).await {
                Outcome::Applied {
                    index,
                    response,
                    forwarded,
                } => {
                    if forwarded {
                        self.wait_applied(index, deadline).await?;
                    }
                    return Ok(response);
                }
                Outcome::NotLeader => {}
                Outcome::Failed(e) => return Err(e),
            }
            // Not proposed anywhere: safe to try again once a leader is
            // known, after a beat from the second time on so a changing
            // leadership can settle.
            if Instant::now() >= deadline {
                return Err(EtcdError::NoLeader);
            }
            self.wait_leader(deadline).await?;
            if tries > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tries += 1;
        }
    }

    /// Serves a request forwarded by a follower: propose only if leader.
    pub async fn propose_as_leader(&self, req: Proposal) -> ForwardReply {
        match self.batcher.write_as_leader(req).await {
            Outcome::Applied {
                index, response, ..
            } => ForwardReply::Applied { index, response },
            Outcome::NotLeader => ForwardReply::NotLeader {
                leader: self.leader(),
            },
            Outcome::Failed(e) => ForwardReply::Failed(e),
        }
    }

    /// Linearizable read barrier: once it returns, this member has applied
    /// everything committed before the call started.
    pub async fn read_barrier(&self) -> Result<(), EtcdError> {
        let deadline = Instant::now() + self.request_timeout;
        let index = self.await_round(&self.read_tx, deadline).await?;
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        if applied < index {
            self.wait_applied(index, deadline).await?;
        }
        Ok(())
    }

    /// Proves that this member leads (a quorum confirmed it in a round that
    /// started after the call), then waits until it has applied everything
    /// committed before that round (the read index it confirmed): the state
    /// it then reads includes every earlier decision, a previous leader's
    /// lease revokes among them. Lease renewals need it (see `lease`).
    pub async fn leader_barrier(&self) -> Result<(), EtcdError> {
        let deadline = Instant::now() + self.request_timeout;
        let index = self.await_round(&self.lead_tx, deadline).await?;
        self.wait_applied(index, deadline).await
    }

    /// Joins the next confirmation round of one of the batching loops.
    async fn await_round(
        &self,
        tx: &mpsc::UnboundedSender<ReadWaiter>,
        deadline: Instant,
    ) -> Result<u64, EtcdError> {
        let (w, rx) = oneshot::channel();
        tx.send(w).map_err(|_| EtcdError::Stopped)?;
        tokio::time::timeout_at(deadline.into(), rx)
            .await
            .map_err(|_| EtcdError::Timeout)?
            .map_err(|_| EtcdError::Stopped)?
    }

    /// Read index on the leader: confirms leadership with a quorum.
    pub async fn read_index_as_leader(&self) -> Result<u64, EtcdError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(if f.leader_id.is_some() {
                    EtcdError::NotCapable
                } else {
                    EtcdError::NoLeader
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(EtcdError::Timeout)
            }
            Err(RaftError::Fatal(_)) => Err(EtcdError::Stopped),
        }
    }

    /// One leadership confirmation, from here or via the leader.
    async fn confirm_read_index(&self) -> Result<u64, EtcdError> {
        let deadline = Instant::now() + self.request_timeout;
        loop {
            let leader = self.wait_leader(deadline).await?;
            if leader == self.id {
                // A confirmation round that missed its (heartbeat-long)
                // deadline, or a leader that just stepped down, is retried
                // until the request's own deadline.
                match self.read_index_as_leader().await {
                    Err(EtcdError::NotCapable | EtcdError::Timeout) => {}
                    other => return other,
                }
            } else if let Some(node) = self.member(leader) {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.pool.read_index(&node, left).await {
                    Err(EtcdError::NotCapable | EtcdError::Timeout) => {}
                    other => return other,
                }
            }
            if Instant::now() >= deadline {
                return Err(EtcdError::Timeout);
            }
            // Leadership is moving; look again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Counts leader changes as this member observes them
/// (`etcd_server_leader_changes_seen_total`).
async fn count_leader_changes(
    mut rx: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, MemberNode>>,
) {
    let mut last = None;
    loop {
        let leader = rx.borrow_and_update().current_leader;
        if leader.is_some() && leader != last {
            if last.is_some() {
                crate::metrics::METRICS.leader_changes.inc();
            }
            last = leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Ends the process when Raft stops on a fatal error (a storage failure, a
/// panic in its core). Such a member can no longer replicate, apply or
/// vote, yet its listeners would go on serving serializable reads and
/// watches from state that silently stops moving; exiting lets the
/// supervisor (systemd, compose's `restart: always`) start it again from
/// its durable state. A clean shutdown (`Fatal::Stopped`, or `stopping` set
/// first) is left alone. A panicking core never reports its error: its
/// metrics sender just goes away, which counts as fatal too.
async fn exit_on_fatal(
    mut rx: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, MemberNode>>,
    node: std::sync::Weak<Node>,
) {
    use std::sync::atomic::Ordering;
    let die = |why: String| -> ! {
        tracing::error!(
            error = %why,
            "fatal Raft error: this member stops now (exit code 70) so its \
             supervisor restarts it from its durable state"
        );
        std::process::exit(70);
    };
    let mut closed = false;
    loop {
        match &rx.borrow_and_update().running_state {
            Err(openraft::error::Fatal::Stopped) => return,
            Err(fatal) => die(fatal.to_string()),
            Ok(()) if closed => {
                let clean = node
                    .upgrade()
                    .is_none_or(|n| n.stopping.load(Ordering::SeqCst));
                if !clean {
                    die("the Raft core ended without reporting why (a panic)".into());
                }
                return;
            }
            Ok(()) => {}
        }
        closed = rx.changed().await.is_err();
    }
}

/// Raises this member's NOSPACE alarm once its data dir outgrows the quota,
/// as etcd does; writes are then refused cluster-wide until an operator
/// frees space and disarms it (`etcdctl alarm disarm`).
async fn quota_loop(node: std::sync::Weak<Node>) {
    use crate::mvcc::apply::ALARM_NOSPACE;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(n) = node.upgrade() else { return };
        if n.mvcc.size_bytes() <= n.quota_bytes {
            continue;
        }
        let raised = n.mvcc.read(|v| v.alarms()).unwrap_or_default();
        if raised.contains(&(n.id, ALARM_NOSPACE)) {
            continue;
        }
        tracing::warn!(
            size = n.mvcc.size_bytes(),
            quota = n.quota_bytes,
            "database space exceeded: raising NOSPACE"
        );
        let cmd = Command::Alarm {
            activate: true,
            member: n.id,
            alarm: ALARM_NOSPACE,
        };
        let _ = n.propose(None, cmd).await;
    }
}

/// What a batched confirmation round proves.
#[derive(Clone, Copy)]
enum Round {
    /// A read index, from this member if it leads or from the leader.
    ReadIndex,
    /// That this member itself leads.
    Leadership,
}

/// Batches confirmations: everyone waiting when a round starts shares it;
/// those arriving during it wait for the next one (a round that started
/// before a call arrived cannot serve it).
async fn confirm_loop(
    node: std::sync::Weak<Node>,
    mut rx: mpsc::UnboundedReceiver<ReadWaiter>,
    round: Round,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let Some(node) = node.upgrade() else { return };
        let res = match round {
            Round::ReadIndex => node.confirm_read_index().await,
            Round::Leadership => node.read_index_as_leader().await,
        };
        drop(node);
        for w in waiters {
            let _ = w.send(res.clone());
        }
    }
}
