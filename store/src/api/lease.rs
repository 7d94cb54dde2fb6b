//! etcd's Lease service. Grant and revoke go through Raft; keep-alive and
//! time-to-live are answered by the leader, which owns the deadlines.

use std::pin::Pin;
use std::sync::Arc;

use cairn_proto::etcdserverpb::lease_server::Lease;
use cairn_proto::etcdserverpb::*;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::perms::{self, Need};
use crate::command::{ApplyResult, Command, Proto};
use crate::error::EtcdError;
use crate::lease::{new_lease_id, MAX_LEASE_TTL};
use crate::node::Node;
use crate::peer::messages::{LeaseAnswer, LeaseCall};

pub struct LeaseService {
    pub node: Arc<Node>,
}

impl LeaseService {
    fn header(&self) -> Option<ResponseHeader> {
        let mut h = Some(ResponseHeader {
            revision: self.node.mvcc.revision(),
            ..Default::default()
        });
        self.node.fill_header(&mut h);
        h
    }
}

/// Renews one lease through the leader: etcd's keep-alive answer.
async fn keep_alive(node: &Node, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
    let ttl = match crate::lease::call(node, LeaseCall::KeepAlive(id)).await? {
        LeaseAnswer::KeepAlive(ttl) => ttl,
        other => {
            return Err(Status::internal(format!(
                "unexpected lease answer {other:?}"
            )))
        }
    };
    let mut header = Some(ResponseHeader {
        revision: node.mvcc.revision(),
        ..Default::default()
    });
    node.fill_header(&mut header);
    Ok(LeaseKeepAliveResponse { header, id, ttl })
}

pub type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

impl LeaseService {
    /// Answers each keep-alive of `inbound` in order; shared by gRPC and the
    /// JSON gateway.
    pub fn keep_alive_stream<S>(&self, mut inbound: S) -> KeepAliveStream
    where
        S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    {
        use futures::StreamExt;
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                let resp = keep_alive(&node, r.id).await;
                let stop = resp.is_err();
                if tx.send(resp).await.is_err() || stop {
                    return;
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let r = req.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::LeaseTtlTooLarge.into());
        }
        let id = if r.id != 0 {
            r.id
        } else {
            new_lease_id(self.node.id)
        };
        let ttl = r.ttl.max(self.node.min_lease_ttl);
        match self
            .node
            .propose(None, Command::LeaseGrant { id, ttl })
            .await?
        {
            ApplyResult::LeaseGrant(Proto(mut resp)) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            ApplyResult::Error(e) => Err(e.into()),
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let user = super::auth::caller(&self.node, req.metadata())?;
        let id = req.into_inner().id;
        // As etcd: revoking deletes the lease's keys, so it needs write
        // access to each of them.
        self.node
            .mvcc
            .read(|v| perms::check_lease_keys(v, user.as_deref(), id, Need::Write))?;
        match self.node.propose(user, Command::LeaseRevoke { id }).await? {
            ApplyResult::LeaseRevoke(Proto(mut resp)) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            ApplyResult::Error(e) => Err(e.into()),
            other => Err(Status::internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        Ok(Response::new(self.keep_alive_stream(req.into_inner())))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        // With auth on: a user, and read access to every key on the lease
        // (its answer names them; etcd's fix for CVE-2023-32082).
        let user = super::auth::caller(&self.node, req.metadata())?;
        let r = req.into_inner();
        self.node.mvcc.read(|v| {
            if crate::auth::state::enabled(v)? && user.is_none() {
                return Err(EtcdError::UserEmpty);
            }
            perms::check_lease_keys(v, user.as_deref(), r.id, Need::Read)
        })?;
        let call = LeaseCall::TimeToLive {
            id: r.id,
            keys: r.keys,
        };
        let (ttl, granted, keys) = match crate::lease::call(&self.node, call).await? {
            LeaseAnswer::TimeToLive { ttl, granted, keys } => (ttl, granted, keys),
            other => {
                return Err(Status::internal(format!(
                    "unexpected lease answer {other:?}"
                )))
            }
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: self.header(),
            id: r.id,
            ttl,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        // With auth on, only an authenticated user may list leases.
        let user = super::auth::caller(&self.node, req.metadata())?;
        let leases = self.node.mvcc.read(|v| {
            if crate::auth::state::enabled(v)? && user.is_none() {
                return Err(EtcdError::UserEmpty);
            }
            v.leases()
        })?;
        Ok(Response::new(LeaseLeasesResponse {
            header: self.header(),
            leases: leases
                .into_iter()
                .map(|(id, _)| LeaseStatus { id })
                .collect(),
        }))
    }
}
