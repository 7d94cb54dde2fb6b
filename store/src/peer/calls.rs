//! The etcd-level calls one member makes to another over the cached
//! channels of [`crate::net::peers`]: forwarding a write to the leader,
//! asking it for a read index, lease calls, membership changes, a
//! leadership transfer, and the join handshake (`hello`). The first three
//! are on clients' paths and go as [`crate::net::wire`] frames to peers that
//! take them, else over gRPC. The server side is `crate::api::peer`.

use std::time::Duration;

use cairn_proto::peer::{HelloReply, HelloRequest, RaftMessage, ReadIndexReply, ReadIndexRequest};

use super::messages::{
    ForwardReply, LeaseAnswer, LeaseCall, MemberAnswer, MemberCall, TransferCall,
};
use crate::command::Proposal;
use crate::error::EtcdError;
use crate::net::peers::{never_sent, PeerPool};
use crate::net::wire::{Call, CallError, Method};
use crate::raft::MemberNode;

/// Why a forwarded write got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// It certainly never reached the leader: safe to send again.
    NotSent,
    /// It may have been proposed: the outcome is unknown.
    Unknown,
}

/// The peer URL a member is called on.
fn url_of(node: &MemberNode) -> Result<&str, String> {
    node.peer_urls
        .first()
        .map(String::as_str)
        .ok_or_else(|| format!("member {} has no peer URL", node.name))
}

/// A framed call's outcome: `None` when the peer does not take frames (call
/// it over gRPC instead).
type Framed = Option<Result<Vec<u8>, CallError>>;

impl PeerPool {
    /// A call as a frame to `url`, if the peer takes frames.
    async fn framed(&self, url: &str, call: Call<'_>) -> Framed {
        if !self.wire.usable(url) {
            return None;
        }
        match self.wire.call(url, call).await {
            Err(CallError::NotSupported) => None,
            other => Some(other),
        }
    }

    /// Sends a membership change to `leader`.
    pub async fn membership(
        &self,
        leader: &MemberNode,
        call: &MemberCall,
        timeout: Duration,
    ) -> Result<MemberAnswer, String> {
        let mut c = self.client(url_of(leader)?)?;
        let data = bincode::serialize(call).map_err(|e| e.to_string())?;
        let mut r = tonic::Request::new(RaftMessage { data });
        r.set_timeout(timeout);
        let reply = c.membership(r).await.map_err(|e| e.to_string())?;
        bincode::deserialize(&reply.into_inner().data).map_err(|e| e.to_string())
    }

    /// Tells `member` of a leadership transfer.
    pub async fn transfer(
        &self,
        member: &MemberNode,
        call: &TransferCall,
        timeout: Duration,
    ) -> Result<(), String> {
        let mut c = self.client(url_of(member)?)?;
        let data = bincode::serialize(call).map_err(|e| e.to_string())?;
        let mut r = tonic::Request::new(RaftMessage { data });
        r.set_timeout(timeout);
        c.transfer(r).await.map(|_| ()).map_err(|e| e.to_string())
    }

    pub async fn hello(
        &self,
        url: &str,
        req: HelloRequest,
        timeout: Duration,
    ) -> Result<HelloReply, String> {
        let mut c = self.client(url)?;
        let mut r = tonic::Request::new(req);
        r.set_timeout(timeout);
        c.hello(r)
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string())
    }

    /// Asks `leader` for a read index.
    pub async fn read_index(
        &self,
        leader: &MemberNode,
        timeout: Duration,
    ) -> Result<u64, EtcdError> {
        let url = url_of(leader).map_err(EtcdError::Internal)?;
        let reply = match self
            .framed(
                url,
                Call {
                    method: Method::ReadIndex,
                    body: &[],
                    timeout,
                    repeatable: true,
                },
            )
            .await
        {
            Some(Ok(bytes)) => {
                prost::Message::decode(bytes.as_slice()).map_err(|_| EtcdError::Timeout)?
            }
            Some(Err(_)) => return Err(EtcdError::Timeout),
            None => {
                let mut c = self.client(url).map_err(EtcdError::Internal)?;
                let mut r = tonic::Request::new(ReadIndexRequest {});
                r.set_timeout(timeout);
                c.read_index(r)
                    .await
                    .map_err(|_| EtcdError::Timeout)?
                    .into_inner()
            }
        };
        read_index_of(reply)
    }

    /// Sends a lease call to `leader` (one that may be repeated: a renewal
    /// or a question).
    pub async fn lease(
        &self,
        leader: &MemberNode,
        call: &LeaseCall,
        timeout: Duration,
    ) -> Result<LeaseAnswer, String> {
        let url = url_of(leader)?;
        let data = bincode::serialize(call).map_err(|e| e.to_string())?;
        let reply = match self
            .framed(
                url,
                Call {
                    method: Method::Lease,
                    body: &data,
                    timeout,
                    repeatable: true,
                },
            )
            .await
        {
            Some(r) => r.map_err(|e| e.to_string())?,
            None => {
                let mut c = self.client(url)?;
                let mut r = tonic::Request::new(RaftMessage { data });
                r.set_timeout(timeout);
                c.lease(r)
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .data
            }
        };
        bincode::deserialize(&reply).map_err(|e| e.to_string())
    }

    /// Forwards `req` to `leader`.
    pub async fn forward(
        &self,
        leader: &MemberNode,
        req: &Proposal,
        timeout: Duration,
    ) -> Result<ForwardReply, ForwardError> {
        let url = url_of(leader).map_err(|_| ForwardError::NotSent)?;
        let data = bincode::serialize(req).map_err(|_| ForwardError::NotSent)?;
        let reply = match self
            .framed(
                url,
                Call {
                    method: Method::Forward,
                    body: &data,
                    timeout,
                    repeatable: false,
                },
            )
            .await
        {
            Some(Ok(bytes)) => bytes,
            Some(Err(CallError::Unreachable(_))) => return Err(ForwardError::NotSent),
            Some(Err(_)) => return Err(ForwardError::Unknown),
            None => {
                let mut c = self.client(url).map_err(|_| ForwardError::NotSent)?;
                let mut r = tonic::Request::new(RaftMessage { data });
                r.set_timeout(timeout);
                match c.forward(r).await {
                    Ok(reply) => reply.into_inner().data,
                    Err(status) if never_sent(&status) => return Err(ForwardError::NotSent),
                    Err(_) => return Err(ForwardError::Unknown),
                }
            }
        };
        bincode::deserialize(&reply).map_err(|_| ForwardError::Unknown)
    }
}

/// The read index in a leader's reply, or the error it gave.
fn read_index_of(reply: ReadIndexReply) -> Result<u64, EtcdError> {
    if !reply.error.is_empty() {
        return Err(if reply.error == EtcdError::NoLeader.to_string() {
            EtcdError::NoLeader
        } else if reply.error == EtcdError::NotCapable.to_string() {
            // It is no longer the leader: the caller looks for the new one.
            EtcdError::NotCapable
        } else {
            EtcdError::Timeout
        });
    }
    Ok(reply.index)
}
