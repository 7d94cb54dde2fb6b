//! Server side of the peer protocol on `--listen-peer-urls`: openraft's RPCs
//! and the calls of [`crate::peer`] (gRPC, and the [`crate::net::wire`]
//! frames through [`peer_rpc`]), answered by the running member.

use std::sync::Arc;

use cairn_proto::peer::peer_server::Peer;
use cairn_proto::peer::{
    HelloMember, HelloReply, HelloRequest, RaftMessage, ReadIndexReply, ReadIndexRequest,
};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::command;
use crate::net::wire::Method;
use crate::node::Node;
use crate::peer::messages::ForwardReply;
use crate::raft::TypeConfig;

pub struct PeerService {
    pub node: Arc<Node>,
}

fn decode<T: serde::de::DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    de(&m.data).map_err(Status::invalid_argument)
}

fn de<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, String> {
    bincode::deserialize(data).map_err(|e| format!("bad peer message: {e}"))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    let data = bincode::serialize(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { data }))
}

/// One framed call ([`crate::net::wire`]), bytes in and out: the same bytes
/// as the gRPC method of the same name.
pub async fn peer_rpc(node: &Node, method: Method, data: &[u8]) -> Result<Vec<u8>, String> {
    let out = match method {
        Method::Append => {
            let rpc: AppendEntriesRequest<TypeConfig> = de(data)?;
            bincode::serialize(&node.raft.append_entries(rpc).await)
        }
        Method::Vote => {
            let rpc: VoteRequest<u64> = de(data)?;
            bincode::serialize(&node.raft.vote(rpc).await)
        }
        Method::Snapshot => {
            let rpc: InstallSnapshotRequest<TypeConfig> = de(data)?;
            bincode::serialize(&node.raft.install_snapshot(rpc).await)
        }
        Method::Forward => {
            let r: command::Proposal = de(data)?;
            bincode::serialize(&node.propose_as_leader(r).await)
        }
        Method::ReadIndex => return Ok(read_index_reply(node).await.encode_to_vec()),
        Method::Lease => {
            let call: crate::peer::messages::LeaseCall = de(data)?;
            bincode::serialize(&crate::lease::answer_as_leader(node, &call).await)
        }
    };
    out.map_err(|e| e.to_string())
}

/// The leader's read index, or why this member cannot give one.
async fn read_index_reply(node: &Node) -> ReadIndexReply {
    match node.read_index_as_leader().await {
        Ok(index) => ReadIndexReply {
            index,
            term: node.term(),
            ..Default::default()
        },
        Err(e) => ReadIndexReply {
            error: e.to_string(),
            leader_id: node.leader().unwrap_or(0),
            ..Default::default()
        },
    }
}

impl PeerService {
    async fn raft_call(&self, method: Method, req: Request<RaftMessage>) -> RpcResult {
        let data = peer_rpc(&self.node, method, &req.get_ref().data)
            .await
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(RaftMessage { data }))
    }
}

type RpcResult = Result<Response<RaftMessage>, Status>;

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> RpcResult {
        self.raft_call(Method::Append, req).await
    }

    async fn vote(&self, req: Request<RaftMessage>) -> RpcResult {
        self.raft_call(Method::Vote, req).await
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> RpcResult {
        self.raft_call(Method::Snapshot, req).await
    }

    async fn read_index(
        &self,
        _req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        Ok(Response::new(read_index_reply(&self.node).await))
    }

    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let r: command::Proposal = decode(req.get_ref())?;
        let reply: ForwardReply = self.node.propose_as_leader(r).await;
        encode(&reply)
    }

    async fn lease(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let call: crate::peer::messages::LeaseCall = decode(req.get_ref())?;
        encode(&crate::lease::answer_as_leader(&self.node, &call).await)
    }

    async fn membership(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let call: crate::peer::messages::MemberCall = decode(req.get_ref())?;
        encode(&crate::membership::change_as_leader(&self.node, call).await)
    }

    async fn transfer(&self, req: Request<RaftMessage>) -> RpcResult {
        let call: crate::peer::messages::TransferCall = decode(req.get_ref())?;
        self.node
            .raft
            .trigger()
            .allow_transfer(call.leader_vote, call.to)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(RaftMessage { data: Vec::new() }))
    }

    async fn hello(&self, _req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let n = &self.node;
        let metrics = n.raft.metrics().borrow().clone();
        let attrs = crate::raft::state_machine::member_attrs(&n.mvcc);
        let members = metrics
            .membership_config
            .nodes()
            .map(|(id, node)| HelloMember {
                id: *id,
                name: node.name.clone(),
                peer_urls: node.peer_urls.clone(),
                started: attrs
                    .iter()
                    .any(|(aid, a)| aid == id && !a.client_urls.is_empty()),
            })
            .collect();
        Ok(Response::new(HelloReply {
            member_id: n.id,
            cluster_id: n.cluster_id,
            initialized: metrics.last_log_index.is_some(),
            members,
        }))
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::etcdserverpb::PutRequest;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;
    use crate::command::{Command, Proposal, Proto};

    /// Peer messages from the network: any bytes decode to a message or an
    /// error, never a panic (bincode reads from the slice, so a length prefix
    /// larger than what arrived fails instead of allocating).
    #[test]
    fn peer_messages_decode_any_input_without_panicking() {
        let entry = |i: u64| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), i),
            payload: EntryPayload::Normal(Proposal::new(
                None,
                Command::Put(Proto(PutRequest {
                    key: format!("k{i}").into_bytes(),
                    value: vec![b'v'; 30],
                    ..Default::default()
                })),
            )),
        };
        let append = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 4)),
            entries: (5..8).map(entry).collect(),
            leader_commit: Some(LogId::new(CommittedLeaderId::new(2, 1), 4)),
        };
        let valid = bincode::serialize(&append).unwrap();
        for input in crate::testing::mutations(&valid, 20_000, 5) {
            let _ = de::<AppendEntriesRequest<TypeConfig>>(&input);
            let _ = de::<VoteRequest<u64>>(&input);
            let _ = de::<ForwardReply>(&input);
            let _ = de::<command::Proposal>(&input);
        }
    }
}
