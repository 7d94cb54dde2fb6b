//! etcd's Cluster service: the member list from the Raft membership plus the
//! attributes (name, client URLs) each member published; changes go through
//! [`crate::membership`] on the leader.

use std::sync::Arc;

use cairn_proto::etcdserverpb::cluster_server::Cluster;
use cairn_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::peer::messages::MemberCall;
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

impl ClusterService {
    fn header(&self) -> Option<ResponseHeader> {
        // As etcd's cluster service, the header carries no revision.
        let mut header = None;
        self.node.fill_header(&mut header);
        header
    }

    /// Runs a change, then waits until this member's own view of the
    /// membership satisfies `done`, so the answer lists the new members.
    async fn change(
        &self,
        call: MemberCall,
        done: impl Fn(&crate::raft::StoredMembership, u64) -> bool + Send + Sync,
    ) -> Result<u64, Status> {
        let id = crate::membership::request(&self.node, call).await?;
        let _ = self
            .node
            .raft
            .wait(Some(self.node.request_timeout))
            .metrics(|m| done(&m.membership_config, id), "membership applied")
            .await;
        Ok(id)
    }
}

fn has(m: &crate::raft::StoredMembership, id: u64) -> bool {
    m.membership().get_node(&id).is_some()
}

fn is_voter(m: &crate::raft::StoredMembership, id: u64) -> bool {
    m.membership().voter_ids().any(|v| v == id)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        super::auth::require_admin(&self.node, req.metadata())?;
        let r = req.into_inner();
        let unix_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let call = MemberCall::Add {
            peer_urls: r.peer_ur_ls.clone(),
            learner: r.is_learner,
            unix_time,
        };
        let learner = r.is_learner;
        let id = self
            .change(call, |m, id| has(m, id) && (learner || is_voter(m, id)))
            .await?;
        let members = members(&self.node);
        let member = members
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .unwrap_or(Member {
                id,
                peer_ur_ls: r.peer_ur_ls,
                is_learner: r.is_learner,
                ..Default::default()
            });
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        super::auth::require_admin(&self.node, req.metadata())?;
        let id = req.into_inner().id;
        self.change(MemberCall::Remove { id }, |m, id| !has(m, id))
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: members(&self.node),
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        super::auth::require_admin(&self.node, req.metadata())?;
        let r = req.into_inner();
        let mut want: Vec<String> = r
            .peer_ur_ls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect();
        want.sort();
        let call = MemberCall::Update {
            id: r.id,
            peer_urls: r.peer_ur_ls,
        };
        self.change(call, move |m, id| {
            m.membership()
                .get_node(&id)
                .is_some_and(|n| n.peer_urls == want)
        })
        .await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: members(&self.node),
        }))
    }

    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: members(&self.node),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        super::auth::require_admin(&self.node, req.metadata())?;
        let id = req.into_inner().id;
        self.change(MemberCall::Promote { id }, is_voter).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: members(&self.node),
        }))
    }
}
