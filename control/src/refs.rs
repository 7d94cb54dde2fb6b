//! The reference index: for every reference a resource makes (a route's
//! `upstream_id`, a consumer's `group_id`, … the `refs` of `resources`), a key
//! `<cairn_prefix>/refs/<target>/<target id>/<user>/<user id>`, written and
//! deleted in the same txn as the write that adds or drops the reference.
//!
//! A delete asks the index whether anything still names the resource (one
//! short range, not a scan of every route) and its txn requires that range
//! to be empty, so a reference added between the check and the delete makes
//! the delete retry and be refused: no route can be left naming a deleted
//! upstream. An entry whose user no longer makes the reference (a change
//! written around the control plane, with etcdctl) is dropped when met.
//! References written around the control plane are not indexed until the
//! resource is written again; [`build_once`] indexes what exists when the
//! index is first used.

use cairn_client::pb::{Compare, RequestOp};
use cairn_client::txn::{self, CompareResult, Txn};
use cairn_client::{DeleteOptions, GetOptions, PutOptions};
use serde_json::Value;

use crate::error::ApiResult;
use crate::ids::{id_string, key_of};
use crate::resources::{self, Resource, RESOURCES};
use crate::state::AppState;

/// `<cairn_prefix>/refs/<target>/<target id>/`: who names that resource.
pub fn prefix(state: &AppState, target: &str, target_id: &str) -> String {
    format!("{}/refs/{target}/{target_id}/", state.settings.cairn_prefix)
}

fn entry(
    state: &AppState,
    target: &str,
    target_id: &str,
    user: &Resource,
    user_id: &str,
) -> String {
    format!(
        "{}{}/{user_id}",
        prefix(state, target, target_id),
        user.name
    )
}

/// The (field, target resource, target id) references of `value`.
fn of<'a>(
    res: &'a Resource,
    value: &'a Value,
) -> impl Iterator<Item = (&'static str, &'static str, String)> + 'a {
    res.refs.iter().filter_map(move |(field, target)| {
        value.get(*field).map(|v| (*field, *target, id_string(v)))
    })
}

/// The txn operations that move the index from `old`'s references to `new`'s.
pub fn ops(
    state: &AppState,
    res: &Resource,
    id: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Vec<RequestOp> {
    let keys = |v: Option<&Value>| -> Vec<(String, &'static str)> {
        v.map(|v| {
            of(res, v)
                .map(|(field, target, tid)| (entry(state, target, &tid, res, id), field))
                .collect()
        })
        .unwrap_or_default()
    };
    let (old, new) = (keys(old), keys(new));
    let mut ops: Vec<RequestOp> = old
        .iter()
        .filter(|(k, _)| !new.iter().any(|(n, _)| n == k))
        .map(|(k, _)| txn::op_delete(k.as_str(), DeleteOptions::default()))
        .collect();
    ops.extend(
        new.into_iter()
            .map(|(k, field)| txn::op_put(k, field.as_bytes().to_vec(), PutOptions::default())),
    );
    ops
}

/// The compare a delete's txn carries: nothing names the resource.
pub fn unreferenced(state: &AppState, res: &Resource, id: &str) -> Compare {
    let p = prefix(state, res.name, id);
    let end = cairn_client::prefix_end(p.as_bytes());
    txn::with_range_end(txn::version(p.as_str(), CompareResult::Equal, 0), end)
}

/// The first resource that still names `res`/`id`: (its singular, its id).
pub async fn first_user(
    state: &AppState,
    res: &Resource,
    id: &str,
) -> ApiResult<Option<(&'static str, String)>> {
    let p = prefix(state, res.name, id);
    loop {
        let opts = GetOptions {
            limit: 16,
            ..GetOptions::prefix()
        };
        let kvs = state.store.client.get(p.as_str(), opts).await?.kvs;
        if kvs.is_empty() {
            return Ok(None);
        }
        for kv in kvs {
            let rest = String::from_utf8_lossy(&kv.key[p.len()..]).into_owned();
            let field = String::from_utf8_lossy(&kv.value).into_owned();
            let user = rest
                .split_once('/')
                .and_then(|(u, uid)| resources::find(u).map(|r| (r, uid.to_string())));
            if let Some((user, uid)) = user {
                let key = key_of(state, user, &uid);
                if let Some(ukv) = state.store.get(&key).await? {
                    let v: Value = serde_json::from_slice(&ukv.value).unwrap_or(Value::Null);
                    if v.get(field.as_str()).map(id_string).as_deref() == Some(id) {
                        return Ok(Some((user.singular, uid)));
                    }
                }
            }
            // Stale: the user is gone or no longer names this resource.
            state
                .store
                .client
                .delete(kv.key.clone(), DeleteOptions::default())
                .await?;
        }
    }
}

/// Indexes the references of every existing resource, once per store (the
/// marker `<cairn_prefix>/refs/.built` records it): data written before the
/// index existed, or by APISIX's own Admin API.
pub async fn build_once(state: &AppState) -> ApiResult<()> {
    let marker = format!("{}/refs/.built", state.settings.cairn_prefix);
    if state.store.get(&marker).await?.is_some() {
        return Ok(());
    }
    for res in RESOURCES.iter().filter(|r| !r.refs.is_empty()) {
        let dir = format!("{}/{}/", state.settings.prefix, res.name);
        let mut ops = Vec::new();
        for kv in state.store.list(&dir).await? {
            let id = String::from_utf8_lossy(&kv.key[dir.len()..]).into_owned();
            if id.is_empty() || id.contains('/') {
                continue;
            }
            let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            ops.extend(self::ops(state, res, &id, None, Some(&v)));
        }
        for chunk in ops.chunks(100) {
            state
                .store
                .client
                .txn(Txn::new().and_then(chunk.to_vec()))
                .await?;
        }
    }
    state.store.create_if_absent(&marker, b"1").await?;
    Ok(())
}
