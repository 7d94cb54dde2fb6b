//! etcd's Maintenance service. Status is served here; the rest of the
//! maintenance surface (snapshot, hash, defragment, alarms) is answered with
//! an explicit Unimplemented until it exists.

use std::sync::Arc;

use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use cairn_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::node::Node;

/// The etcd server version Cairn answers with (the API it implements).
pub const SERVER_VERSION: &str = "3.4.23";
/// The cluster version APISIX and etcdctl check against.
pub const CLUSTER_VERSION: &str = "3.4.0";

pub struct MaintenanceService {
    pub node: Arc<Node>,
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("cairn: {what} is not supported yet"))
}

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

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
                    crate::command::Response::Alarms(a) => a,
                    crate::command::Response::Error(e) => return Err(e.into()),
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
        let db_size = n.storage.size_on_disk() as i64;
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
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_yet("Defragment"))
    }

    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(not_yet("Hash"))
    }

    async fn hash_kv(&self, _: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(not_yet("HashKV"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("Snapshot"))
    }

    async fn move_leader(
        &self,
        _: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(not_yet("MoveLeader"))
    }
}
