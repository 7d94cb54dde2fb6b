//! etcd's Watch service: one bidirectional stream carries many watches.
//!
//! The stream task owns the watchers of its stream: it answers create, cancel
//! and progress requests in order, and every watcher sends into the same
//! bounded channel, so a client that stops reading slows its watchers down
//! (they read history later) instead of growing a buffer.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb::watch_request::RequestUnion;
use cairn_proto::etcdserverpb::watch_server::Watch;
use cairn_proto::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::perms::Need;
use crate::error::EtcdError;
use crate::node::Node;
use crate::watch::{self, WatchConfig, WatchSpec, WatcherState};

pub struct WatchService {
    pub node: Arc<Node>,
    pub progress_interval: Duration,
    pub limits: StreamLimits,
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

/// etcd's cancel reason for a client-chosen ID already in use on the stream.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// What one stream may hold: its watches are tasks with their keys, so a
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
    cfg: WatchConfig,
    out: Out,
    /// Each watch's task, progress, and the bytes of its key and range end.
    watchers: HashMap<i64, (JoinHandle<()>, Arc<WatcherState>, usize)>,
    /// Bytes of keys and range ends of the stream's watches.
    key_bytes: usize,
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
        self.out.send(Ok(r)).await.is_ok()
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
        if self.watchers.len() >= self.limits.watches
            || self.key_bytes + key_bytes > self.limits.key_bytes
        {
            let reason = format!(
                "cairn: too many watches on one stream (at most {} watches, {} bytes of keys)",
                self.limits.watches, self.limits.key_bytes
            );
            return self.refuse(c.watch_id, reason).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                // etcd answers a duplicate under ID -1.
                return self.refuse(-1, DUPLICATE_ID.into()).await;
            }
            c.watch_id
        } else {
            // Server-chosen IDs only ever grow on a stream: a client must
            // never confuse a new watch with one it just canceled.
            while self.watchers.contains_key(&self.next_id) {
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
        let state = Arc::new(WatcherState {
            delivered: (start - 1).into(),
        });
        let node = self.node.clone();
        let handle = tokio::spawn(watch::run(
            self.node.mvcc.clone(),
            self.cfg.clone(),
            spec,
            state.clone(),
            move || node.term(),
            self.out.clone(),
        ));
        self.watchers.insert(id, (handle, state, key_bytes));
        self.key_bytes += key_bytes;
        true
    }

    async fn cancel(&mut self, id: i64) -> bool {
        let Some((handle, _, key_bytes)) = self.watchers.remove(&id) else {
            return true;
        };
        self.key_bytes -= key_bytes;
        handle.abort();
        // Wait for it to stop so no event can follow the cancel response.
        let _ = handle.await;
        let r = WatchResponse {
            header: self.header(self.node.mvcc.revision()),
            watch_id: id,
            canceled: true,
            ..Default::default()
        };
        self.send(r).await
    }

    async fn progress(&self) -> bool {
        // The revision every watcher of the stream has been brought up to.
        let rev = self
            .watchers
            .values()
            // A watch that ended on its own (canceled by compaction) holds
            // nothing back; its ID stays taken, as in etcd.
            .filter(|(h, _, _)| !h.is_finished())
            .map(|(_, s, _)| s.delivered.load(Ordering::Acquire))
            .min()
            .unwrap_or_else(|| self.node.mvcc.revision());
        let r = WatchResponse {
            header: self.header(rev),
            watch_id: -1,
            ..Default::default()
        };
        self.send(r).await
    }

    fn stop_all(&mut self) {
        for (_, (h, _, _)) in self.watchers.drain() {
            h.abort();
        }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

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
        let (out, rx) = mpsc::channel(64);
        let state = StreamState {
            node: self.node.clone(),
            cfg: WatchConfig {
                cluster_id: self.node.cluster_id,
                member_id: self.node.id,
                max_response_bytes: self.node.max_request_bytes,
                progress_interval: self.progress_interval,
            },
            out,
            watchers: HashMap::new(),
            key_bytes: 0,
            limits: self.limits,
            next_id: 0,
            user,
        };
        tokio::spawn(serve_stream(state, inbound, require_leader));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let require_leader = req
            .metadata()
            .get("hasleader")
            .map(|v| v.as_bytes() == b"true")
            .unwrap_or(false);
        let md = req.metadata().clone();
        self.open(req.into_inner(), require_leader, &md)
            .map(Response::new)
    }
}

async fn serve_stream<S>(mut st: StreamState, mut inbound: S, require_leader: bool)
where
    S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
{
    use futures::StreamExt;
    let check = st.node.request_timeout / 4;
    let mut leaderless_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(check);
    loop {
        tokio::select! {
            msg = inbound.next() => {
                let ok = match msg {
                    Some(Ok(WatchRequest { request_union: Some(RequestUnion::CreateRequest(c)) })) => st.create(c).await,
                    Some(Ok(WatchRequest { request_union: Some(RequestUnion::CancelRequest(c)) })) => st.cancel(c.watch_id).await,
                    Some(Ok(WatchRequest { request_union: Some(RequestUnion::ProgressRequest(_)) })) => st.progress().await,
                    Some(Ok(WatchRequest { request_union: None })) => true,
                    // The client finished sending: keep serving its watches
                    // until it goes away (grpc-gateway half-closes after the
                    // single create request of an HTTP watch).
                    None => {
                        st.out.closed().await;
                        false
                    }
                    Some(Err(_)) => false,
                };
                if !ok {
                    break;
                }
            }
            _ = st.out.closed() => break,
            _ = tick.tick(), if require_leader => {
                if st.node.leader().is_some() {
                    leaderless_since = None;
                } else {
                    let since = *leaderless_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= check * 2 {
                        st.stop_all();
                        let _ = st.out.send(Err(EtcdError::NoLeader.into())).await;
                        break;
                    }
                }
            }
        }
    }
    st.stop_all();
}
