//! etcd's Maintenance service: Status, Alarm, Hash, HashKV, Snapshot,
//! Defragment and MoveLeader (see [`crate::transfer`]).
//!
//! - Alarm lists, raises and clears the replicated alarms (NOSPACE comes from
//!   `--quota-backend-bytes`, see `node::quota_loop`).
//!
//! - HashKV hashes the MVCC history, Hash the whole state (see [`crate::mvcc::hash`]).
//! - Snapshot streams the state tree taken at one point in time, framed as
//!   etcdctl's `snapshot save` expects (see [`crate::restore`]).
//! - Defragment has nothing to rewrite: the state is in memory, and its image
//!   on disk is written whole at each snapshot.

use std::sync::Arc;

use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use cairn_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::error::EtcdError;
use crate::node::Node;
use crate::raft::snapshot_file::encode_tree;

/// The etcd server version Cairn answers with (the API it implements).
pub const SERVER_VERSION: &str = "3.4.23";
/// The cluster version APISIX and etcdctl check against.
pub const CLUSTER_VERSION: &str = "3.4.0";

pub struct MaintenanceService {
    pub node: Arc<Node>,
}

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// Size of one `SnapshotResponse` blob (etcd sends 32 KiB; larger chunks
/// mean fewer messages and stay far below gRPC's 4 MiB default limit).
const SNAPSHOT_CHUNK: usize = 1 << 20;

fn internal(e: impl std::fmt::Display) -> Status {
    Status::from(EtcdError::Internal(e.to_string()))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
        let r = req.into_inner();
        let n = &self.node;
        let alarms = match AlarmAction::try_from(r.action).unwrap_or(AlarmAction::Get) {
            AlarmAction::Get => n.mvcc.read(|v| v.alarms())?,
            action => {
                let cmd = crate::command::Command::Alarm {
                    activate: action == AlarmAction::Activate,
                    member: r.member_id,
                    alarm: r.alarm,
                };
                match n.propose(None, cmd).await? {
                    crate::command::ApplyResult::Alarms(a) => a,
                    crate::command::ApplyResult::Error(e) => return Err(e.into()),
                    other => {
                        return Err(Status::internal(format!(
                            "unexpected apply result {other:?}"
                        )))
                    }
                }
            }
        };
        let mut header = Some(ResponseHeader {
            revision: n.mvcc.revision(),
            ..Default::default()
        });
        n.fill_header(&mut header);
        Ok(Response::new(AlarmResponse {
            header,
            alarms: alarms
                .into_iter()
                .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let n = &self.node;
        let m = n.raft.metrics().borrow().clone();
        let mut header = Some(ResponseHeader {
            revision: n.mvcc.revision(),
            ..Default::default()
        });
        n.fill_header(&mut header);
        let db_size = n.mvcc.size_bytes() as i64;
        let is_learner = !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == n.id);
        Ok(Response::new(StatusResponse {
            header,
            version: SERVER_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            // As etcd: one "memberID:… alarm:…" line per raised alarm.
            errors: n
                .mvcc
                .read(|v| v.alarms())
                .unwrap_or_default()
                .into_iter()
                .map(|(m, a)| {
                    let name = AlarmType::try_from(a)
                        .map(|t| t.as_str_name())
                        .unwrap_or("NONE");
                    format!("memberID:{m} alarm:{name} ")
                })
                .collect(),
            db_size_in_use: db_size,
            is_learner,
        }))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        super::auth::require_admin(&self.node, req.metadata())?;
        // The snapshot file is rewritten whole each time, and the log is
        // purged by segment: there is no free space inside a file to give
        // back. Flushing the Raft metadata leaves everything on disk, so the
        // call does what an operator expects of "maintenance done".
        self.node.storage.flush().await.map_err(internal)?;
        info!("defragment: nothing to rewrite (in-memory state, whole-file snapshots); flushed");
        let mut header = Some(ResponseHeader {
            revision: self.node.mvcc.revision(),
            ..Default::default()
        });
        self.node.fill_header(&mut header);
        Ok(Response::new(DefragmentResponse { header }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        super::auth::require_admin(&self.node, req.metadata())?;
        let mvcc = self.node.mvcc.clone();
        // One read-locked pass over the whole state, off the async workers.
        let (hash, revision) =
            tokio::task::spawn_blocking(move || mvcc.read(|v| (v.hash_all(), v.rev)))
                .await
                .map_err(internal)?;
        let mut header = Some(ResponseHeader {
            revision,
            ..Default::default()
        });
        self.node.fill_header(&mut header);
        Ok(Response::new(HashResponse { header, hash }))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        super::auth::require_admin(&self.node, req.metadata())?;
        let rev = req.into_inner().revision;
        let mvcc = self.node.mvcc.clone();
        // One read-locked pass over the history: a consistent view, on a
        // blocking thread because it may walk the whole history.
        let h = tokio::task::spawn_blocking(move || mvcc.read(|v| v.hash_kv(rev)))
            .await
            .map_err(internal)??;
        let mut header = Some(ResponseHeader {
            revision: h.current_rev,
            ..Default::default()
        });
        self.node.fill_header(&mut header);
        Ok(Response::new(HashKvResponse {
            header,
            hash: h.hash,
            compact_revision: h.compact_rev,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        super::auth::require_admin(&self.node, req.metadata())?;
        let mvcc = self.node.mvcc.clone();
        // etcd's consistent index; etcdctl's restore replaces it anyway.
        let applied = self.node.metrics_snapshot().applied;
        // Copied under the MVCC read lock (the state machine cannot commit a
        // batch meanwhile, so the copy is one point in time, one revision),
        // then laid out as etcd's file with the lock released: writes wait
        // for a copy of the records, not for the layout.
        let (body, sha, revision) = tokio::task::spawn_blocking(move || {
            let (payload, rev) = mvcc.read(|v| (encode_tree(v.tree), v.rev));
            crate::restore::seal(&payload, applied).map(|(b, s)| (b, s, rev))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        info!(revision, bytes = body.len(), "streaming snapshot");
        let mut header = Some(ResponseHeader {
            revision,
            ..Default::default()
        });
        self.node.fill_header(&mut header);
        let total = body.len();
        // Chunks are copied out one at a time as the client reads them, so
        // the encoded tree is held once, not twice.
        let chunks = (0..total.div_ceil(SNAPSHOT_CHUNK)).map(move |i| {
            let end = ((i + 1) * SNAPSHOT_CHUNK).min(total);
            Ok(SnapshotResponse {
                header,
                remaining_bytes: (total - end) as u64,
                blob: body[i * SNAPSHOT_CHUNK..end].to_vec(),
            })
        });
        // As etcd: the sha256 of everything sent comes last, on its own.
        let trailer = std::iter::once(Ok(SnapshotResponse {
            header,
            remaining_bytes: 0,
            blob: sha.to_vec(),
        }));
        Ok(Response::new(Box::pin(futures::stream::iter(
            chunks.chain(trailer),
        ))))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        super::auth::require_admin(&self.node, req.metadata())?;
        let to = req.get_ref().target_id;
        crate::transfer::move_leader(&self.node, to, self.node.request_timeout).await?;
        let mut header = None;
        self.node.fill_header(&mut header);
        Ok(Response::new(MoveLeaderResponse { header }))
    }
}
