//! Permission checks: what a request needs, and whether a user has it.
//!
//! A permission covers `[key, range_end)`; an empty `range_end` means just
//! `key`, and `"\0"` means every key from `key` on (etcd's conventions). A
//! request's range is permitted when the union of the user's matching
//! permissions covers all of it, as etcd's interval check.

use cairn_proto::authpb::permission::Type;
use cairn_proto::etcdserverpb::request_op::Request as Op;
use cairn_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use super::state;
use crate::error::EtcdError;
use crate::mvcc::view::View;

/// What a request wants to do to a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// An interval end: `None` is "no upper bound".
type End = Option<Vec<u8>>;

/// The half-open interval a key / range_end pair covers.
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, End) {
    match range_end {
        [] => {
            let mut next = key.to_vec();
            next.push(0);
            (key.to_vec(), Some(next))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// Whether `perms` (unsorted intervals) cover all of `want`.
fn covers(mut perms: Vec<(Vec<u8>, End)>, want: (Vec<u8>, End)) -> bool {
    perms.sort();
    let (mut pos, want_end) = want;
    for (start, end) in perms {
        if start > pos {
            break;
        }
        match end {
            None => return true,
            Some(e) if e > pos => pos = e,
            Some(_) => {}
        }
        if want_end.as_ref().is_some_and(|w| pos >= *w) {
            return true;
        }
    }
    want_end.as_ref().is_some_and(|w| pos >= *w)
}

/// The permission check of one range (etcd's `isOpPermitted`).
pub fn check(
    v: &View,
    user: Option<&str>,
    key: &[u8],
    range_end: &[u8],
    need: Need,
) -> Result<(), EtcdError> {
    if !state::enabled(v)? {
        return Ok(());
    }
    let name = user.ok_or(EtcdError::UserEmpty)?;
    let u = state::user(v, name)?.ok_or(EtcdError::PermissionDenied)?;
    if state::has_root_role(&u) {
        return Ok(());
    }
    let mut granted = Vec::new();
    for r in &u.roles {
        let Some(role) = state::role(v, r)? else {
            continue;
        };
        for p in role.key_permission {
            let ok = match Type::try_from(p.perm_type) {
                Ok(Type::Readwrite) => true,
                Ok(Type::Read) => need == Need::Read,
                Ok(Type::Write) => need == Need::Write,
                Err(_) => false,
            };
            if ok {
                granted.push(interval(&p.key, &p.range_end));
            }
        }
    }
    // A range request whose end is at or below its key selects nothing in
    // etcd, but is still checked as the single key, so it cannot probe.
    let end: &[u8] = if !range_end.is_empty() && range_end != [0] && range_end <= key {
        &[]
    } else {
        range_end
    };
    if covers(granted, interval(key, end)) {
        Ok(())
    } else {
        Err(EtcdError::PermissionDenied)
    }
}

/// Whether every key the user could touch in a txn is allowed, including the
/// keys its comparisons read.
pub fn check_txn(v: &View, user: Option<&str>, t: &TxnRequest) -> Result<(), EtcdError> {
    for c in &t.compare {
        let Compare { key, range_end, .. } = c;
        check(v, user, key, range_end, Need::Read)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        check_op(v, user, op)?;
    }
    Ok(())
}

fn check_op(v: &View, user: Option<&str>, op: &RequestOp) -> Result<(), EtcdError> {
    match &op.request {
        Some(Op::RequestRange(r)) => check_range(v, user, r),
        Some(Op::RequestPut(p)) => check_put(v, user, p),
        Some(Op::RequestDeleteRange(d)) => check_delete(v, user, d),
        Some(Op::RequestTxn(t)) => check_txn(v, user, t),
        None => Ok(()),
    }
}

pub fn check_range(v: &View, user: Option<&str>, r: &RangeRequest) -> Result<(), EtcdError> {
    check(v, user, &r.key, &r.range_end, Need::Read)
}

/// A put writes its key, and reads it too when it asks for the previous value.
/// Putting a key on a lease also needs write access to the keys already on
/// it: whoever holds the lease can revoke it, deleting them all (etcd's
/// `checkLeasePuts`).
pub fn check_put(v: &View, user: Option<&str>, p: &PutRequest) -> Result<(), EtcdError> {
    check(v, user, &p.key, &[], Need::Write)?;
    if p.prev_kv {
        check(v, user, &p.key, &[], Need::Read)?;
    }
    if p.lease != 0 {
        check_lease_keys(v, user, p.lease, Need::Write)?;
    }
    Ok(())
}

/// `need` on every key attached to lease `id` (nothing to check without
/// auth, or for an unknown lease).
pub fn check_lease_keys(
    v: &View,
    user: Option<&str>,
    id: i64,
    need: Need,
) -> Result<(), EtcdError> {
    if !state::enabled(v)? {
        return Ok(());
    }
    for k in v.lease_keys(id)? {
        check(v, user, &k, &[], need)?;
    }
    Ok(())
}

pub fn check_delete(v: &View, user: Option<&str>, d: &DeleteRangeRequest) -> Result<(), EtcdError> {
    check(v, user, &d.key, &d.range_end, Need::Write)?;
    if d.prev_kv {
        check(v, user, &d.key, &d.range_end, Need::Read)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(k: &str, e: &str) -> (Vec<u8>, End) {
        let e = if e == "\\0" { "\0" } else { e };
        interval(k.as_bytes(), e.as_bytes())
    }

    #[test]
    fn single_keys_and_ranges() {
        let perms = vec![iv("a", ""), iv("b", "d")];
        assert!(covers(perms.clone(), iv("a", "")));
        assert!(!covers(perms.clone(), iv("a0", "")));
        assert!(covers(perms.clone(), iv("b", "d")));
        assert!(covers(perms.clone(), iv("c", "")));
        assert!(covers(perms.clone(), iv("b", "c")));
        assert!(!covers(perms.clone(), iv("b", "e")));
        assert!(!covers(perms.clone(), iv("a", "c")));
        assert!(!covers(perms, iv("b", "\\0")));
    }

    #[test]
    fn unions_and_open_ends() {
        let perms = vec![iv("c", "e"), iv("a", "c"), iv("x", "\\0")];
        assert!(covers(perms.clone(), iv("a", "e")));
        assert!(covers(perms.clone(), iv("x", "\\0")));
        assert!(covers(perms.clone(), iv("y", "")));
        assert!(!covers(perms.clone(), iv("a", "f")));
        assert!(!covers(perms, iv("", "\\0")));
        assert!(covers(vec![iv("", "\\0")], iv("", "\\0")));
        assert!(!covers(Vec::new(), iv("a", "")));
    }
}
