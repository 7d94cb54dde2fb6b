//! Request checks etcd makes before proposing (etcd's `v3rpc/key.go`), with
//! its errors. A request that fails here changes nothing.

use cairn_proto::etcdserverpb::request_op::Request as Op;
use cairn_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use std::collections::{BTreeMap, HashSet};

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

/// etcd's `checkTxnRequest`: at most `max_ops` compares and ops per branch;
/// a nested txn gets only what its parent left (`max_ops` minus the parent's
/// largest count), so nesting cannot multiply the work.
fn txn_ops(r: &TxnRequest, max_ops: usize) -> Result<(), EtcdError> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
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
            Some(Op::RequestTxn(t)) => txn_ops(t, max_ops - ops)?,
            // etcd answers an empty op with "key not found".
            None => return Err(EtcdError::KeyNotFound),
        }
    }
    Ok(())
}

/// The keys a txn level deletes: single keys, and ranges merged into
/// disjoint `[start, end)` intervals (`end` `None`: to the end of the
/// keyspace), so a lookup is a hash probe plus one ordered-map step.
#[derive(Default)]
struct Deleted {
    keys: HashSet<Vec<u8>>,
    ranges: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Deleted {
    fn insert(&mut self, key: &[u8], end: &[u8]) {
        if end.is_empty() {
            self.keys.insert(key.to_vec());
            return;
        }
        let mut start = key.to_vec();
        let mut end = (end != [0]).then(|| end.to_vec());
        if end.as_ref().is_some_and(|e| e.as_slice() <= key) {
            return; // an empty range deletes nothing
        }
        // Merge with every interval that overlaps or touches [start, end).
        if let Some((s, e)) = self.ranges.range(..=start.clone()).next_back() {
            if e.as_ref().is_none_or(|e| e.as_slice() >= start.as_slice()) {
                start = s.clone();
                end = max_end(end, e.clone());
            }
        }
        let overlapping: Vec<Vec<u8>> = self
            .ranges
            .range(start.clone()..)
            .take_while(|(s, _)| end.as_ref().is_none_or(|e| s.as_slice() <= e.as_slice()))
            .map(|(s, _)| s.clone())
            .collect();
        for s in overlapping {
            if let Some(e) = self.ranges.remove(&s) {
                end = max_end(end, e);
            }
        }
        self.ranges.insert(start, end);
    }

    fn contains(&self, k: &[u8]) -> bool {
        self.keys.contains(k)
            || self
                .ranges
                .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(k)))
                .next_back()
                .is_some_and(|(_, e)| e.as_ref().is_none_or(|e| k < e.as_slice()))
    }

    fn extend(&mut self, other: Deleted) {
        self.keys.extend(other.keys);
        for (s, e) in other.ranges {
            let end = e.unwrap_or_else(|| vec![0]);
            self.insert(&s, &end);
        }
    }
}

/// The later end of two (`None` is the end of the keyspace).
fn max_end(a: Option<Vec<u8>>, b: Option<Vec<u8>>) -> Option<Vec<u8>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

/// etcd's `checkIntervals`: one txn may not put a key twice, nor put a key it
/// also deletes, including across nested txns (then/else branches of one
/// nested txn may both put the same key: only one of them runs). Hash sets
/// and merged intervals keep it O(n log n) in the number of ops.
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Deleted), EtcdError> {
    let mut dels = Deleted::default();
    for op in ops {
        if let Some(Op::RequestDeleteRange(d)) = &op.request {
            dels.insert(&d.key, &d.range_end);
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Op::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Op::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || dels.contains(&p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
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

    #[test]
    fn a_nested_txn_gets_only_the_ops_its_parent_left() {
        // 100 ops at the top leave 28 for the nested txn (etcd: maxTxnOps - opc).
        let mut top: Vec<RequestOp> = (0..99).map(|i| put_op(&format!("k{i}"))).collect();
        let nested: Vec<RequestOp> = (0..29).map(|i| put_op(&format!("n{i}"))).collect();
        top.push(txn_op(nested, vec![]));
        assert_eq!(txn(&t(top.clone()), 128), Err(EtcdError::TooManyOps));
        top.pop();
        let nested: Vec<RequestOp> = (0..28).map(|i| put_op(&format!("n{i}"))).collect();
        top.push(txn_op(nested, vec![]));
        assert!(txn(&t(top), 128).is_ok());
    }

    #[test]
    fn deleted_ranges_merge_and_answer_points() {
        let mut d = Deleted::default();
        d.insert(b"b", b"d");
        d.insert(b"c", b"f");
        d.insert(b"x", b"");
        d.insert(b"m", &[0]);
        d.insert(b"z", b"a"); // empty range
        for (k, want) in [
            ("a", false),
            ("b", true),
            ("e", true),
            ("f", false),
            ("x", true),
            ("l", false),
            ("m", true),
            ("zzz", true),
        ] {
            assert_eq!(d.contains(k.as_bytes()), want, "{k}");
        }
        assert_eq!(d.ranges.len(), 2, "b..d and c..f merged; m.. open-ended");
    }

    #[test]
    fn thousands_of_ops_are_checked_by_sets_not_scans() {
        // As many single deletes and puts (in nested txns) as a request may
        // carry; each lookup is a probe, so this stays linear.
        let mut top = Vec::new();
        for block in 0..100 {
            let dels: Vec<RequestOp> = (0..100)
                .map(|i| del_op(&format!("d{block}-{i}"), ""))
                .collect();
            let puts: Vec<RequestOp> = (0..27).map(|i| put_op(&format!("p{block}-{i}"))).collect();
            top.push(txn_op(dels, puts));
        }
        assert!(txn(&t(top), 10_000).is_ok());
    }
}
