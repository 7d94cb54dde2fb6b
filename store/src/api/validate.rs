//! Request checks etcd makes before proposing (etcd's `v3rpc/key.go`), with
//! its errors. A request that fails here changes nothing.

use cairn_proto::etcdserverpb::request_op::Request as Op;
use cairn_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use crate::error::EtcdError;

pub fn range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if !(0..=2).contains(&r.sort_order) || !(0..=4).contains(&r.sort_target) {
        return Err(EtcdError::InvalidSortOption);
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

pub fn txn(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    txn_ops(r, max_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    if r.compare.len().max(r.success.len()).max(r.failure.len()) > max_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Op::RequestRange(q)) => range(q)?,
            Some(Op::RequestPut(p)) => put(p)?,
            Some(Op::RequestDeleteRange(d)) => delete(d)?,
            Some(Op::RequestTxn(t)) => txn_ops(t, max_ops)?,
            // etcd answers an empty op with "key not found".
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted key range: `[key, end)`, or the single `key` when `end` is empty.
#[derive(Clone)]
struct Interval {
    key: Vec<u8>,
    end: Vec<u8>,
}

impl Interval {
    fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            k == self.key.as_slice()
        } else {
            k >= self.key.as_slice() && (self.end == [0] || k < self.end.as_slice())
        }
    }
}

/// etcd's `checkIntervals`: one txn may not put a key twice, nor put a key it
/// also deletes, including across nested txns (then/else branches of one
/// nested txn may both put the same key: only one of them runs).
fn check_intervals(ops: &[RequestOp]) -> Result<(Vec<Vec<u8>>, Vec<Interval>), EtcdError> {
    let mut dels: Vec<Interval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Op::RequestDeleteRange(d)) => Some(Interval {
                key: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: Vec<Vec<u8>> = Vec::new();
    let deleted = |dels: &[Interval], k: &[u8]| dels.iter().any(|d| d.contains(k));
    for op in ops {
        let Some(Op::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.push(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.push(k.clone());
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Op::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.push(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn t(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }
    }

    #[test]
    fn duplicate_puts_and_overlapping_deletes() {
        assert_eq!(
            txn(&t(vec![put_op("a"), put_op("a")]), 128),
            Err(EtcdError::DuplicateKey)
        );
        assert_eq!(
            txn(&t(vec![del_op("a", "c"), put_op("b")]), 128),
            Err(EtcdError::DuplicateKey)
        );
        assert!(txn(&t(vec![del_op("a", "b"), put_op("b")]), 128).is_ok());
        // then/else of one nested txn may put the same key.
        assert!(txn(&t(vec![txn_op(vec![put_op("x")], vec![put_op("x")])]), 128).is_ok());
        assert_eq!(
            txn(
                &t(vec![put_op("x"), txn_op(vec![put_op("x")], vec![])]),
                128
            ),
            Err(EtcdError::DuplicateKey)
        );
    }

    #[test]
    fn op_limits() {
        let many: Vec<_> = (0..129).map(|i| put_op(&format!("k{i}"))).collect();
        assert_eq!(txn(&t(many), 128), Err(EtcdError::TooManyOps));
        assert_eq!(
            txn(&t(vec![RequestOp { request: None }]), 128),
            Err(EtcdError::KeyNotFound)
        );
    }
}
