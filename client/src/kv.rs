//! Typed KV calls (Range, Put, DeleteRange, Txn, Compact).

use cairn_proto::etcdserverpb::kv_client::KvClient;
use cairn_proto::etcdserverpb::{
    request_op, CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use tonic::transport::Channel;

use crate::call::Kind;
use crate::{Client, DeleteOptions, GetOptions, PutOptions, Result};

impl Client {
    fn kv(&self, ch: Channel) -> KvClient<Channel> {
        KvClient::new(ch).max_decoding_message_size(self.inner.opts.max_decoding_message_size)
    }

    /// Put `key` = `value`. A mutation: never re-sent once it may have been applied.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        opts: PutOptions,
    ) -> Result<PutResponse> {
        let req = put_request(key.into(), value.into(), &opts);
        self.call(Kind::Mutation, |ch| {
            let req = self.request(req.clone());
            let mut kv = self.kv(ch);
            async move { kv.put(req).await }
        })
        .await
    }

    /// Read `key` (or a range, per `opts`). Retried on other members on failure.
    pub async fn get(&self, key: impl Into<Vec<u8>>, opts: GetOptions) -> Result<RangeResponse> {
        self.range(range_request(key.into(), &opts)).await
    }

    /// Raw Range.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.call(Kind::Read, |ch| {
            let req = self.request(req.clone());
            let mut kv = self.kv(ch);
            async move { kv.range(req).await }
        })
        .await
    }

    /// Delete `key` (or a range, per `opts`).
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        opts: DeleteOptions,
    ) -> Result<DeleteRangeResponse> {
        let req = delete_request(key.into(), &opts);
        self.call(Kind::Mutation, |ch| {
            let req = self.request(req.clone());
            let mut kv = self.kv(ch);
            async move { kv.delete_range(req).await }
        })
        .await
    }

    /// Raw Txn. A txn without any put or delete (nested txns included) is a read
    /// and may be retried; any other txn is a mutation.
    pub async fn txn(&self, req: impl Into<TxnRequest>) -> Result<TxnResponse> {
        let req = req.into();
        let kind = if txn_is_read_only(&req) {
            Kind::Read
        } else {
            Kind::Mutation
        };
        self.call(kind, |ch| {
            let req = self.request(req.clone());
            let mut kv = self.kv(ch);
            async move { kv.txn(req).await }
        })
        .await
    }

    /// Compact history up to `revision`; `physical` waits until it is removed
    /// from the backend.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<CompactionResponse> {
        let req = CompactionRequest { revision, physical };
        self.call(Kind::Mutation, |ch| {
            let req = self.request(req);
            let mut kv = self.kv(ch);
            async move { kv.compact(req).await }
        })
        .await
    }
}

pub(crate) fn put_request(key: Vec<u8>, value: Vec<u8>, o: &PutOptions) -> PutRequest {
    PutRequest {
        key,
        value,
        lease: o.lease,
        prev_kv: o.prev_kv,
        ignore_value: o.ignore_value,
        ignore_lease: o.ignore_lease,
    }
}

pub(crate) fn range_request(key: Vec<u8>, o: &GetOptions) -> RangeRequest {
    let range_end = o.range.range_end(&key);
    let (order, target) = o.sort.unwrap_or_default();
    RangeRequest {
        key,
        range_end,
        limit: o.limit,
        revision: o.revision,
        sort_order: order as i32,
        sort_target: target as i32,
        serializable: o.serializable,
        keys_only: o.keys_only,
        count_only: o.count_only,
        min_mod_revision: o.min_mod_revision,
        max_mod_revision: o.max_mod_revision,
        min_create_revision: o.min_create_revision,
        max_create_revision: o.max_create_revision,
    }
}

pub(crate) fn delete_request(key: Vec<u8>, o: &DeleteOptions) -> DeleteRangeRequest {
    let range_end = o.range.range_end(&key);
    DeleteRangeRequest {
        key,
        range_end,
        prev_kv: o.prev_kv,
    }
}

fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op: &RequestOp| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_is_read_only(inner),
            Some(_) => false,
        })
}

/// etcd's prefix `range_end`: the key with its last byte incremented, after
/// dropping trailing `0xff` bytes; an empty or all-`0xff` key gives `"\0"`
/// (every key >= key), as clientv3's `GetPrefixRangeEnd`.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("non-empty") += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::{op_put, op_range, op_txn, Txn};

    #[test]
    fn prefix_end_rules() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"/apisix/"), b"/apisix0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"a\xfe\xff\xff"), b"a\xff");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn key_range_options() {
        let r = range_request(b"k".to_vec(), &GetOptions::prefix());
        assert_eq!(r.range_end, b"l");
        let r = range_request(b"k".to_vec(), &GetOptions::from_key());
        assert_eq!(r.range_end, b"\0");
        let r = range_request(b"k".to_vec(), &GetOptions::range_end("z"));
        assert_eq!(r.range_end, b"z");
        let r = range_request(b"k".to_vec(), &GetOptions::default());
        assert!(r.range_end.is_empty());
    }

    #[test]
    fn read_only_txn_detection() {
        let ro = Txn::new()
            .and_then([op_range("a", GetOptions::default())])
            .build();
        assert!(txn_is_read_only(&ro));
        let nested_write = Txn::new()
            .or_else([op_txn(Txn::new().and_then([op_put(
                "a",
                "b",
                Default::default(),
            )]))])
            .build();
        assert!(!txn_is_read_only(&nested_write));
        assert!(txn_is_read_only(&Txn::new().build()));
    }
}
