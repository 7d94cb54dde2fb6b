//! Small builders for Txn: compares and ops.
//!
//! ```no_run
//! # async fn demo(client: cairn_client::Client) -> cairn_client::Result<()> {
//! use cairn_client::txn::{self, Txn, CompareResult};
//! let t = Txn::new()
//!     .when([txn::value("k", CompareResult::Equal, "v1")])
//!     .and_then([txn::op_put("k", "v2", Default::default())])
//!     .or_else([txn::op_range("k", Default::default())]);
//! client.txn(t).await?;
//! # Ok(())
//! # }
//! ```

pub use cairn_proto::etcdserverpb::compare::CompareResult;
use cairn_proto::etcdserverpb::compare::{CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::{request_op, Compare, RequestOp, TxnRequest};

use crate::kv::{delete_request, put_request, range_request};
use crate::{DeleteOptions, GetOptions, PutOptions};

fn compare(
    key: impl Into<Vec<u8>>,
    result: CompareResult,
    target: CompareTarget,
    u: TargetUnion,
) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        target_union: Some(u),
        range_end: Vec::new(),
    }
}

/// Compare the key's value.
pub fn value(key: impl Into<Vec<u8>>, r: CompareResult, v: impl Into<Vec<u8>>) -> Compare {
    compare(key, r, CompareTarget::Value, TargetUnion::Value(v.into()))
}

/// Compare the key's version (0 = the key does not exist).
pub fn version(key: impl Into<Vec<u8>>, r: CompareResult, v: i64) -> Compare {
    compare(key, r, CompareTarget::Version, TargetUnion::Version(v))
}

/// Compare the key's create_revision.
pub fn create_revision(key: impl Into<Vec<u8>>, r: CompareResult, v: i64) -> Compare {
    compare(
        key,
        r,
        CompareTarget::Create,
        TargetUnion::CreateRevision(v),
    )
}

/// Compare the key's mod_revision.
pub fn mod_revision(key: impl Into<Vec<u8>>, r: CompareResult, v: i64) -> Compare {
    compare(key, r, CompareTarget::Mod, TargetUnion::ModRevision(v))
}

/// Compare the key's lease ID.
pub fn lease(key: impl Into<Vec<u8>>, r: CompareResult, v: i64) -> Compare {
    compare(key, r, CompareTarget::Lease, TargetUnion::Lease(v))
}

/// Makes a compare apply to every key in `[key, range_end)`.
pub fn with_range_end(mut c: Compare, range_end: impl Into<Vec<u8>>) -> Compare {
    c.range_end = range_end.into();
    c
}

/// A put op.
pub fn op_put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, o: PutOptions) -> RequestOp {
    let r = put_request(key.into(), value.into(), &o);
    RequestOp {
        request: Some(request_op::Request::RequestPut(r)),
    }
}

/// A range op.
pub fn op_range(key: impl Into<Vec<u8>>, o: GetOptions) -> RequestOp {
    let r = range_request(key.into(), &o);
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

/// A delete op.
pub fn op_delete(key: impl Into<Vec<u8>>, o: DeleteOptions) -> RequestOp {
    let r = delete_request(key.into(), &o);
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(r)),
    }
}

/// A nested txn op.
pub fn op_txn(t: impl Into<TxnRequest>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(t.into())),
    }
}

/// Builder for a [`TxnRequest`]: `when` compares (ANDed), `and_then` ops run if
/// all hold, `or_else` ops otherwise. Each method appends.
#[derive(Debug, Clone, Default)]
pub struct Txn(TxnRequest);

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.0.compare.extend(compares);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = RequestOp>) -> Self {
        self.0.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = RequestOp>) -> Self {
        self.0.failure.extend(ops);
        self
    }

    pub fn build(self) -> TxnRequest {
        self.0
    }
}

impl From<Txn> for TxnRequest {
    fn from(t: Txn) -> Self {
        t.0
    }
}
