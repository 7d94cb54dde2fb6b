//! etcd's Watch service: one bidirectional stream carries many watches.
//!
//! One task serves a stream: it answers create, cancel and progress requests
//! in order and sends its watches' events ([`crate::watch::Watchers`]), all
//! into one bounded queue, so a client that stops reading slows its watches
//! down (they read history later) instead of growing a buffer, and no event
//! can follow the response that cancels its watch. The gRPC side of the
//! service is in `watch_grpc.rs`, which sends shared events encoded once.

use std::pin::Pin;
use std::time::Duration;

use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::auth::perms::Need;
use crate::error::EtcdError;
use crate::node::Node;
use crate::watch::{WatchConfig, WatchOut, WatchSpec, Watchers};

pub struct WatchService {
    pub node: Arc<Node>,
    pub progress_interval: Duration,
    pub limits: StreamLimits,
}

/// Responses queued for the client, a step's worth at a time.
type Out = mpsc::Sender<Vec<Result<WatchOut, Status>>>;

/// Steps (batches of responses) a stream may queue ahead of its client.
const QUEUED_STEPS: usize = 8;

/// etcd's cancel reason for a client-chosen ID already in use on the stream.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// What one stream may hold: its watches are specs with their keys, so a
/// client that opens many and never reads costs at most this much.
#[derive(Clone, Copy)]
pub struct StreamLimits {
    /// Watches (`--max-watches-per-stream`).
    pub watches: usize,
    /// Bytes of keys and range ends of those watches together.
    pub key_bytes: usize,
}

struct StreamState {
    node: Arc<Node>,
    out: Out,
    watchers: Watchers,
    limits: StreamLimits,
    next_id: i64,
    /// Who opened the stream (auth): each watch is checked for read access.
    user: Option<String>,
}

impl StreamState {
    fn header(&self, rev: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.node.cluster_id,
            member_id: self.node.id,
            revision: rev,
            raft_term: self.node.term(),
        })
    }

    async fn send(&self, r: WatchResponse) -> bool {
        self.out.send(vec![Ok(WatchOut::Whole(r))]).await.is_ok()
    }

    /// Answers a create that is refused: created and canceled at once.
    async fn refuse(&self, watch_id: i64, reason: String) -> bool {
        let r = WatchResponse {
            header: self.header(self.node.mvcc.revision()),
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        self.send(r).await
    }

    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        let user = self.user.as_deref();
        let allowed = self
            .node
            .mvcc
            .read(|v| crate::auth::perms::check(v, user, &c.key, &c.range_end, Need::Read));
        if let Err(e) = allowed {
            // etcd puts the whole gRPC error text in the cancel reason (no
            // token: "user name is empty"; no role: "permission denied").
            let status = Status::from(e);
            let reason = format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            );
            return self.refuse(c.watch_id, reason).await;
        }
        let key_bytes = c.key.len() + c.range_end.len();
        if self.watchers.count() >= self.limits.watches
            || self.watchers.key_bytes() + key_bytes > self.limits.key_bytes
        {
            let reason = format!(
                "cairn: too many watches on one stream (at most {} watches, {} bytes of keys)",
                self.limits.watches, self.limits.key_bytes
            );
            return self.refuse(c.watch_id, reason).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains(c.watch_id) {
                // etcd answers a duplicate under ID -1.
                return self.refuse(-1, DUPLICATE_ID.into()).await;
            }
            c.watch_id
        } else {
            // Server-chosen IDs only ever grow on a stream: a client must
            // never confuse a new watch with one it just canceled.
            while self.watchers.contains(self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let current = self.node.mvcc.revision();
        // A watch "from now" starts after the current revision; one from a
        // past revision reports, as its starting point, what it has not yet
        // delivered (it must never claim more than it has sent).
        let (start, created_rev) = if c.start_revision > 0 {
            (c.start_revision, (c.start_revision - 1).min(current))
        } else {
            (current + 1, current)
        };
        let spec = WatchSpec {
            watch_id: id,
            key: c.key,
            range_end: c.range_end,
            start_rev: start,
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&0),
            no_delete: c.filters.contains(&1),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
        };
        let created = WatchResponse {
            header: self.header(created_rev),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if !self.send(created).await {
            return false;
        }
        self.watchers.add(spec);
        true
    }

    async fn cancel(&mut self, id: i64) -> bool {
        if !self.watchers.remove(id) {
            return true;
        }
        let r = WatchResponse {
            header: self.header(self.node.mvcc.revision()),
            watch_id: id,
            canceled: true,
            ..Default::default()
        };
        self.send(r).await
    }

    async fn progress(&self) -> bool {
        // The revision every watch of the stream has been brought up to; a
        // watch that ended on its own (canceled by compaction) holds nothing
        // back, though its ID stays taken, as in etcd.
        let rev = self
            .watchers
            .delivered()
            .unwrap_or_else(|| self.node.mvcc.revision());
        let r = WatchResponse {
            header: self.header(rev),
            watch_id: -1,
            ..Default::default()
        };
        self.send(r).await
    }
}

/// A stream's responses, as the service sends them.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchOut, Status>> + Send>>;

impl WatchService {
    /// Opens a watch stream fed by `inbound`; shared by gRPC and the JSON
    /// gateway. Dropping the returned stream cancels every watch on it.
    pub fn open<S>(
        &self,
        inbound: S,
        require_leader: bool,
        md: &tonic::metadata::MetadataMap,
    ) -> Result<WatchStream, Status>
    where
        S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
    {
        let user = super::auth::caller(&self.node, md)?;
        // clientv3's WithRequireLeader: a member without a leader must not
        // keep such a watch open.
        if require_leader && self.node.leader().is_none() {
            return Err(EtcdError::NoLeader.into());
        }
        let (out, rx) = mpsc::channel(QUEUED_STEPS);
        let state = StreamState {
            node: self.node.clone(),
            out,
            watchers: Watchers::new(WatchConfig {
                cluster_id: self.node.cluster_id,
                member_id: self.node.id,
                max_response_bytes: self.node.max_request_bytes,
            }),
            limits: self.limits,
            next_id: 0,
            user,
        };
        tokio::spawn(serve_stream(
            state,
            inbound,
            require_leader,
            self.progress_interval,
        ));
        Ok(Box::pin(
            ReceiverStream::new(rx).flat_map(futures::stream::iter),
        ))
    }
}

async fn serve_stream<S>(
    mut st: StreamState,
    mut inbound: S,
    require_leader: bool,
    progress_interval: Duration,
) where
    S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
{
    let check = st.node.request_timeout / 4;
    let mut leaderless_since: Option<tokio::time::Instant> = None;
    let mut leader_tick = tokio::time::interval(check);
    let start = tokio::time::Instant::now();
    let mut progress_tick = tokio::time::interval_at(start + progress_interval, progress_interval);
    // While no watch asks for progress the tick is not polled; it must not
    // then fire a burst of missed ticks.
    progress_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut revs = st.node.mvcc.subscribe();
    // The client may finish sending (grpc-gateway half-closes after the
    // single create request of an HTTP watch) and keep reading.
    let mut inbound_open = true;
    // The queue's sender for the select's futures, which must not borrow
    // the state the branches change.
    let out = st.out.clone();
    loop {
        let rev = *revs.borrow_and_update();
        let owed = st.watchers.owed(rev);
        tokio::select! {
            // Requests first: a cancel must not wait behind a backlog.
            biased;
            msg = inbound.next(), if inbound_open => {
                let ok = match msg {
                    Some(Ok(WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) })) => st.create(c).await,
                    Some(Ok(WatchRequest { request_union: Some(RequestUnion::CancelRequest(c)) })) => st.cancel(c.watch_id).await,
                    Some(Ok(WatchRequest { request_union: Some(RequestUnion::ProgressRequest(_)) })) => st.progress().await,
                    Some(Ok(WatchRequest { request_union: None })) => true,
                    None => {
                        inbound_open = false;
                        true
                    }
                    Some(Err(_)) => false,
                };
                if !ok {
                    break;
                }
            }
            _ = out.closed() => break,
            // A place in the queue first, and only then the history.
            permit = out.reserve(), if owed => {
                let Ok(permit) = permit else { break };
                let batch = st.watchers.step(&st.node.mvcc, rev, st.node.term());
                if !batch.is_empty() {
                    permit.send(batch.into_iter().map(Ok).collect());
                }
            }
            r = revs.changed(), if !owed => if r.is_err() { break },
            _ = progress_tick.tick(), if st.watchers.wants_progress() => {
                let batch = st.watchers.progress_tick(rev, st.node.term());
                if !batch.is_empty() && st.out.send(batch.into_iter().map(Ok).collect()).await.is_err() {
                    break;
                }
            }
            _ = leader_tick.tick(), if require_leader => {
                if st.node.leader().is_some() {
                    leaderless_since = None;
                } else {
                    let since = *leaderless_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= check * 2 {
                        let _ = st.out.send(vec![Err(EtcdError::NoLeader.into())]).await;
                        break;
                    }
                }
            }
        }
    }
}
