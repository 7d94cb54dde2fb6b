//! etcd's KV service: writes are proposed through Raft, linearizable reads
//! wait on the read-index barrier, serializable reads are served locally.

use std::sync::Arc;

use cairn_proto::etcdserverpb::kv_server::Kv;
use cairn_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use prost::Message;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::validate;
use crate::auth::perms;
use crate::command::{ApplyResult, Command, Proto};
use crate::error::EtcdError;
use crate::node::Node;

pub struct KvService {
    pub node: Arc<Node>,
}

impl KvService {
    fn check_size(&self, m: &impl Message) -> Result<(), EtcdError> {
        if m.encoded_len() > self.node.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        Ok(())
    }

    /// What a txn is refused for before anything else, in etcd's order:
    /// shape and operation count (`checkTxnRequest`, in the gRPC handler),
    /// then size (when the request is marshalled for Raft). Also run on the
    /// JSON gateway's parse thread, so a refused 20,000-operation txn is
    /// dropped there rather than on a request worker.
    pub fn screen_txn(&self, r: &TxnRequest) -> Result<(), Status> {
        validate::txn(r, self.node.max_txn_ops)?;
        self.check_size(r)?;
        Ok(())
    }

    /// Proposes as the request's caller; permissions are checked at apply.
    async fn propose(&self, md: &MetadataMap, cmd: Command) -> Result<ApplyResult, Status> {
        let user = caller(&self.node, md)?;
        match self.node.propose(user, cmd).await? {
            ApplyResult::Error(e) => Err(e.into()),
            other => Ok(other),
        }
    }
}

fn unexpected(r: ApplyResult) -> Status {
    Status::internal(format!("unexpected apply result {r:?}"))
}

/// Whether a txn only reads (then it is served like a range, not proposed).
fn txn_is_read_only(t: &TxnRequest) -> bool {
    use cairn_proto::etcdserverpb::request_op::Request as Op;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Op::RequestRange(_)) => true,
            Some(Op::RequestTxn(t)) => txn_is_read_only(t),
            _ => false,
        })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let user = caller(&self.node, req.metadata())?;
        let r = req.into_inner();
        validate::range(&r)?;
        if !r.serializable {
            self.node.read_barrier().await?;
        }
        let mut resp = self.node.mvcc.read(|v| {
            perms::check_range(v, user.as_deref(), &r)?;
            v.range(&r)
        })?;
        self.node.fill_header(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (md, r) = (req.metadata().clone(), req.into_inner());
        self.check_size(&r)?;
        validate::put(&r)?;
        match self.propose(&md, Command::Put(Proto(r))).await? {
            ApplyResult::Put(Proto(mut resp)) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let (md, r) = (req.metadata().clone(), req.into_inner());
        self.check_size(&r)?;
        validate::delete(&r)?;
        match self.propose(&md, Command::DeleteRange(Proto(r))).await? {
            ApplyResult::DeleteRange(Proto(mut resp)) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let (md, r) = (req.metadata().clone(), req.into_inner());
        if let Err(e) = self.screen_txn(&r) {
            // Not caught by the byte screen (a nested txn, say): answered
            // at the refusal pace, the request already dropped.
            let len = r.encoded_len();
            drop(r);
            return Err(super::refusal_pace::refused(len, e).await);
        }
        if txn_is_read_only(&r) {
            // etcd serves read-only txns without a proposal, after the
            // linearizable barrier; evaluating it on a throwaway writer gives
            // exactly the answer applying it would.
            let user = caller(&self.node, &md)?;
            self.node.read_barrier().await?;
            let mut resp = self.node.mvcc.read(|v| {
                perms::check_txn(v, user.as_deref(), &r)?;
                crate::mvcc::apply::Writer::new(v.tree, v.rev, v.compact_rev).txn(&r)
            })?;
            self.node.fill_header(&mut resp.header);
            return Ok(Response::new(resp));
        }
        match self.propose(&md, Command::Txn(Proto(r))).await? {
            ApplyResult::Txn(Proto(mut resp)) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd 3.4 checks no permission for compaction; Cairn at least wants
        // a user once auth is on.
        let user = caller(&self.node, req.metadata())?;
        if user.is_none() && self.node.mvcc.read(crate::auth::state::enabled)? {
            return Err(EtcdError::UserEmpty.into());
        }
        let (md, r) = (req.metadata().clone(), req.into_inner());
        match self.propose(&md, Command::Compact(Proto(r))).await? {
            ApplyResult::Compact(Proto(mut resp)) => {
                self.node.fill_header(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(unexpected(other)),
        }
    }
}
