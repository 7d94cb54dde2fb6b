//! etcd's Cluster service: the member list from the Raft membership plus the
//! attributes (name, client URLs) each member published. Membership changes
//! are answered with an explicit Unimplemented until they exist.

use std::sync::Arc;

use cairn_proto::etcdserverpb::cluster_server::Cluster;
use cairn_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::raft::state_machine::member_attrs;

pub struct ClusterService {
    pub node: Arc<Node>,
}

/// Every voter and learner, in ID order, as etcd lists them.
pub fn members(node: &Node) -> Vec<Member> {
    let m = node.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let attrs = member_attrs(&node.mvcc);
    let mut out: Vec<Member> = membership
        .nodes()
        .map(|(id, n)| {
            let a = attrs
                .iter()
                .find(|(aid, _)| aid == id)
                .map(|(_, a)| a.clone());
            Member {
                id: *id,
                // As etcd: a member that never started has an empty name.
                name: a.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
                peer_ur_ls: n.peer_urls.clone(),
                client_ur_ls: a.map(|a| a.client_urls).unwrap_or_default(),
                is_learner: !voters.contains(id),
            }
        })
        .collect();
    out.sort_by_key(|m| m.id);
    out
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("cairn: {what} is not supported yet"))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(not_yet("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(not_yet("MemberRemove"))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(not_yet("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // As etcd's cluster service, the header carries no revision.
        let mut header = None;
        self.node.fill_header(&mut header);
        Ok(Response::new(MemberListResponse {
            header,
            members: members(&self.node),
        }))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(not_yet("MemberPromote"))
    }
}
