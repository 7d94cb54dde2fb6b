//! [`Store`]: the control plane's only way to the store, through
//! `cairn-client` over every endpoint (so one member down fails no request).
//!
//! Every change goes through [`Store::commit`]: one txn that checks the key's
//! revision, writes (or deletes) the key and appends the audit record, so a
//! change and its audit record exist together or not at all.

use cairn_client::txn::{self, CompareResult, Txn};
use cairn_client::{mvccpb::KeyValue, Client, Code, DeleteOptions, GetOptions, PutOptions};

use crate::error::{ApiError, ApiResult};

#[derive(Clone, Debug)]
pub struct Store {
    pub client: Client,
}

/// What the key must look like for a commit to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key's mod_revision is this.
    ModRevision(i64),
}

/// The change to the key.
pub enum Write {
    Put {
        value: Vec<u8>,
        lease: i64,
    },
    /// Delete the key, and every key under `also_prefix` (a consumer's
    /// credentials) in the same txn.
    Delete {
        also_prefix: Option<String>,
    },
}

/// More of the same txn: conditions beside the key's revision, and
/// operations beside the write and its audit record (the reference index).
#[derive(Default)]
pub struct Also {
    pub compares: Vec<cairn_client::pb::Compare>,
    pub ops: Vec<cairn_client::pb::RequestOp>,
}

pub enum Committed {
    /// Applied at this revision.
    At(i64),
    /// The key was not as expected; nothing was written. Carries what the key
    /// is now (0 = absent).
    Conflict { found: i64 },
}

/// The etcd message of a read below the compaction point.
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

impl Store {
    /// The key's current version, linearizable.
    pub async fn get(&self, key: &str) -> ApiResult<Option<KeyValue>> {
        let r = self.client.get(key, GetOptions::default()).await?;
        Ok(r.kvs.into_iter().next())
    }

    /// The key as it was at `revision`; `Ok(None)` if it did not exist then,
    /// `Err(None)` if that revision has been compacted away.
    pub async fn get_at(
        &self,
        key: &str,
        revision: i64,
    ) -> Result<Option<KeyValue>, Option<ApiError>> {
        let opts = GetOptions {
            revision,
            ..Default::default()
        };
        match self.client.get(key, opts).await {
            Ok(r) => Ok(r.kvs.into_iter().next()),
            Err(e) if e.code() == Code::OutOfRange && e.message() == COMPACTED => Err(None),
            Err(e) => Err(Some(e.into())),
        }
    }

    /// One page of keys under `prefix` from `from` on (inclusive), in key
    /// order, and whether more follow.
    pub async fn page(
        &self,
        prefix: &str,
        from: &str,
        limit: i64,
    ) -> ApiResult<(Vec<KeyValue>, bool)> {
        let opts = GetOptions {
            limit,
            ..GetOptions::range_end(cairn_client::prefix_end(prefix.as_bytes()))
        };
        let r = self.client.get(from, opts).await?;
        Ok((r.kvs, r.more))
    }

    /// Keys `skip..skip + take` under `prefix` in creation order, with their
    /// values, and how many keys lie under it; the key `prefix` itself
    /// (APISIX's `init_dir` placeholder) is not counted. Two ranges: the
    /// keys up to the page (keys only), then the page's values from its
    /// first creation revision on.
    pub async fn page_by_creation(
        &self,
        prefix: &str,
        skip: usize,
        take: usize,
    ) -> ApiResult<(Vec<KeyValue>, usize)> {
        let placeholder = self.get(prefix).await?.is_some() as usize;
        let total = (self.count(prefix).await?.max(0) as usize).saturating_sub(placeholder);
        let by_creation = Some((
            cairn_client::SortOrder::Ascend,
            cairn_client::SortTarget::Create,
        ));
        let keys = GetOptions {
            keys_only: true,
            limit: (skip + take + 1) as i64,
            sort: by_creation,
            ..GetOptions::prefix()
        };
        let page: Vec<KeyValue> = self
            .client
            .get(prefix, keys)
            .await?
            .kvs
            .into_iter()
            .filter(|kv| kv.key != prefix.as_bytes())
            .skip(skip)
            .take(take)
            .collect();
        let Some(first) = page.first() else {
            return Ok((Vec::new(), total));
        };
        let values = GetOptions {
            limit: (take + 1) as i64,
            sort: by_creation,
            min_create_revision: first.create_revision,
            ..GetOptions::prefix()
        };
        let kvs = self
            .client
            .get(prefix, values)
            .await?
            .kvs
            .into_iter()
            .filter(|kv| kv.key != prefix.as_bytes())
            .take(take)
            .collect();
        Ok((kvs, total))
    }

    /// How many keys lie under `prefix`.
    pub async fn count(&self, prefix: &str) -> ApiResult<i64> {
        let opts = GetOptions {
            count_only: true,
            ..GetOptions::prefix()
        };
        Ok(self.client.get(prefix, opts).await?.count)
    }

    /// Deletes these keys, in txns of at most `batch` deletes.
    pub async fn delete_keys(&self, keys: &[String], batch: usize) -> ApiResult<()> {
        for chunk in keys.chunks(batch.max(1)) {
            let ops: Vec<_> = chunk
                .iter()
                .map(|k| txn::op_delete(k.as_str(), DeleteOptions::default()))
                .collect();
            self.client.txn(Txn::new().and_then(ops)).await?;
        }
        Ok(())
    }

    /// Deletes every key in `[from, to)`.
    pub async fn delete_range(&self, from: &str, to: &str) -> ApiResult<i64> {
        let opts = DeleteOptions {
            range: cairn_client::KeyRange::RangeEnd(to.as_bytes().to_vec()),
            ..Default::default()
        };
        Ok(self.client.delete(from, opts).await?.deleted)
    }

    /// Every key under `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> ApiResult<Vec<KeyValue>> {
        Ok(self.client.get(prefix, GetOptions::prefix()).await?.kvs)
    }

    /// The newest `limit` keys under `prefix` (descending key order).
    pub async fn list_last(&self, prefix: &str, limit: i64) -> ApiResult<Vec<KeyValue>> {
        let opts = GetOptions {
            limit,
            sort: Some((
                cairn_client::SortOrder::Descend,
                cairn_client::SortTarget::Key,
            )),
            ..GetOptions::prefix()
        };
        Ok(self.client.get(prefix, opts).await?.kvs)
    }

    /// One txn: if `key` is as `expect`ed, apply `write` and put the audit
    /// record; otherwise read the key to report what it is now.
    pub async fn commit(
        &self,
        key: &str,
        expect: Expect,
        write: Write,
        audit: [(String, Vec<u8>); 2],
        also: Also,
    ) -> ApiResult<Committed> {
        let cmp = match expect {
            Expect::Absent => txn::version(key, CompareResult::Equal, 0),
            Expect::ModRevision(r) => txn::mod_revision(key, CompareResult::Equal, r),
        };
        let mut ops = match write {
            Write::Put { value, lease } => vec![txn::op_put(
                key,
                value,
                PutOptions {
                    lease,
                    ..Default::default()
                },
            )],
            Write::Delete { also_prefix } => {
                let mut ops = vec![txn::op_delete(key, DeleteOptions::default())];
                if let Some(p) = also_prefix {
                    ops.push(txn::op_delete(p, DeleteOptions::prefix()));
                }
                ops
            }
        };
        let [(rk, rv), (tk, tv)] = audit;
        ops.push(txn::op_put(rk, rv, PutOptions::default()));
        ops.push(txn::op_put(tk, tv, PutOptions::default()));
        ops.extend(also.ops);
        let mut cmps = vec![cmp];
        cmps.extend(also.compares);
        let t = Txn::new()
            .when(cmps)
            .and_then(ops)
            .or_else([txn::op_range(key, GetOptions::default())]);
        let resp = self.client.txn(t).await?;
        let revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
        if resp.succeeded {
            return Ok(Committed::At(revision));
        }
        let found = resp
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(cairn_client::pb::response_op::Response::ResponseRange(rr)) => {
                    Some(rr.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0))
                }
                _ => None,
            })
            .unwrap_or(0);
        Ok(Committed::Conflict { found })
    }

    /// Puts `key` = `value` unless the key exists; returns the value the key
    /// holds afterwards (ours, or the one that was there first).
    pub async fn create_if_absent(&self, key: &str, value: &[u8]) -> ApiResult<Vec<u8>> {
        let t = Txn::new()
            .when([txn::version(key, CompareResult::Equal, 0)])
            .and_then([txn::op_put(key, value.to_vec(), PutOptions::default())])
            .or_else([txn::op_range(key, GetOptions::default())]);
        let resp = self.client.txn(t).await?;
        if resp.succeeded {
            return Ok(value.to_vec());
        }
        for r in resp.responses {
            if let Some(cairn_client::pb::response_op::Response::ResponseRange(rr)) = r.response {
                if let Some(kv) = rr.kvs.into_iter().next() {
                    return Ok(kv.value);
                }
            }
        }
        Err(ApiError::internal(format!(
            "{key}: create-if-absent failed but the key is missing"
        )))
    }

    /// APISIX's POST id: a put to `<prefix>/gen_id`, whose revision, as 20
    /// zero-padded digits, is the new id (unique and increasing).
    pub async fn gen_id(&self, prefix: &str) -> ApiResult<String> {
        let r = self
            .client
            .put(format!("{prefix}/gen_id"), "0", PutOptions::default())
            .await?;
        let rev = r.header.map(|h| h.revision).unwrap_or(0);
        Ok(format!("{rev:020}"))
    }

    /// A lease for `?ttl=`.
    pub async fn lease(&self, ttl: i64) -> ApiResult<i64> {
        Ok(self.client.lease_grant(ttl, 0).await?.id)
    }

    /// A linearizable read of one key: answers only while a quorum does.
    pub async fn quorum_read(&self, key: &str) -> ApiResult<()> {
        self.client.get(key, GetOptions::default()).await?;
        Ok(())
    }
}
