//! The changes of one item: `PUT` (and `POST`, with a generated id)
//! replaces it, `PATCH` merges into it, `DELETE` removes it unless the
//! reference index says something still names it. Each is a loop around
//! the write txn (`write`) that re-reads on a conflict it may retry.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::request::{Ctx, Q};
use super::stored::{current, read};
use super::write::{commit, record, stamp, written};
use crate::audit;
use crate::error::{ApiError, ApiResult};
use crate::ids::key_of;
use crate::patch::merge;
use crate::resources::Resource;
use crate::store::{Also, Committed, Expect, Write};
use crate::{refs, secrets};

/// APISIX refuses `create_time`/`update_time` in a PUT or POST body (they
/// are the admin layer's), at the top, in `upstream` and in `plugins`.
fn forbid_times(body: &Value) -> ApiResult<()> {
    let scopes = [
        (Some(body), ""),
        (body.get("upstream"), "upstream."),
        (body.get("plugins"), "plugins."),
    ];
    for (scope, prefix) in scopes {
        let Some(Value::Object(m)) = scope else {
            continue;
        };
        for f in ["create_time", "update_time"] {
            if m.contains_key(f) {
                // APISIX's message, its double space included.
                return Err(ApiError::bad_request(format!(
                    "the property is forbidden:  {prefix}{f}"
                )));
            }
        }
    }
    Ok(())
}

fn ttl_lease_secs(q: &Q) -> ApiResult<Option<i64>> {
    match q.get("ttl") {
        None => Ok(None),
        Some(t) => t
            .parse::<i64>()
            .ok()
            .filter(|t| *t > 0)
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("ttl must be a positive integer (seconds)")),
    }
}

/// PUT (and POST, with a fresh id): replace the whole value. Without
/// If-Match, a replace that races another write is re-read and retried (the
/// caller asked for this exact value); with If-Match it is a 409.
pub async fn put(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: &str,
    body: Value,
    action: &str,
) -> ApiResult<Response> {
    let state = ctx.state;
    let key = key_of(state, res, id);
    forbid_times(&body)?;
    let lease = match ttl_lease_secs(ctx.query)? {
        Some(ttl) => state.store.lease(ttl).await?,
        None => 0,
    };
    for _ in 0..5 {
        let prev = read(state, res, id).await?;
        let found = prev.as_ref().map(|p| p.kv.mod_revision).unwrap_or(0);
        if let Some(expected) = ctx.if_match {
            if found != expected {
                return Err(ApiError::conflict(&key, expected, found));
            }
        }
        if action == "create" && prev.is_some() {
            return Err(ApiError::conflict(&key, 0, found));
        }
        let mut body = body.clone();
        secrets::restore(state, res, id, &mut body, prev.as_ref().map(|p| &p.value))?;
        let value = stamp(res, id, body, prev.as_ref().map(|p| &p.value))?;
        match commit(ctx, res, id, value, prev.as_ref(), action, lease).await? {
            Ok((rev, value)) => return written(state, res, id, prev.as_ref(), rev, value),
            Err(found) if ctx.if_match.is_some() => {
                return Err(ApiError::conflict(&key, ctx.if_match.unwrap_or(0), found))
            }
            Err(_) => continue,
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("{key} kept changing while being replaced; try again"),
    ))
}

/// PATCH: a JSON merge patch (`null` deletes a field, arrays are replaced),
/// or with a sub-path, a replacement of that one field. Based on the version
/// read (or the If-Match revision): a concurrent change is a 409.
pub async fn patch(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: &str,
    body: Value,
    path: &[&str],
) -> ApiResult<Response> {
    let state = ctx.state;
    let key = key_of(state, res, id);
    let prev = current(ctx, res, id).await?;
    let old = prev.value.clone();
    let mut merged = old.clone();
    if path.is_empty() {
        if !body.is_object() {
            return Err(ApiError::invalid("a PATCH body must be a JSON object"));
        }
        merge(&mut merged, body);
    } else {
        set_path(&mut merged, path, body)?;
    }
    secrets::restore(state, res, id, &mut merged, Some(&old))?;
    // The merge may carry the old update_time: stamp a fresh one.
    if let Value::Object(m) = &mut merged {
        m.remove("update_time");
    }
    let value = stamp(res, id, merged, Some(&old))?;
    match commit(ctx, res, id, value, Some(&prev), "patch", prev.kv.lease).await? {
        Ok((rev, value)) => written(state, res, id, Some(&prev), rev, value),
        Err(found) => Err(ApiError::conflict(&key, prev.kv.mod_revision, found)),
    }
}

fn set_path(v: &mut Value, path: &[&str], new: Value) -> ApiResult<()> {
    let mut cur = v;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let Value::Object(m) = cur else {
            return Err(ApiError::invalid(format!(
                "property \"{}\" is not an object",
                path[..i].join(".")
            )));
        };
        if last {
            if new.is_null() {
                m.remove(*seg);
            } else {
                m.insert((*seg).to_string(), new);
            }
            return Ok(());
        }
        cur = m
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

/// DELETE: refused while another resource names this one (the reference
/// index, `refs`), unless `?force=true`. The txn requires that nothing names
/// it still, so a reference added meanwhile makes it check again. A
/// consumer's credentials go with it (same txn).
pub async fn delete(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
    let state = ctx.state;
    let key = key_of(state, res, id);
    let force = ctx.query.get("force").map(String::as_str) == Some("true");
    for _ in 0..5 {
        let prev = current(ctx, res, id).await?;
        let mut also = Also {
            ops: refs::ops(state, res, id, Some(&prev.value), None),
            ..Default::default()
        };
        if force {
            also.ops.push(cairn_client::txn::op_delete(
                refs::prefix(state, res.name, id),
                cairn_client::DeleteOptions::prefix(),
            ));
        } else {
            if let Some((user, uid)) = refs::first_user(state, res, id).await? {
                return Err(ApiError::bad_request(format!(
                    "can not delete this {}, {user} [{uid}] is still using it now",
                    res.singular
                )));
            }
            also.compares.push(refs::unreferenced(state, res, id));
        }
        let rec = record(ctx, res, id, "delete", Some(&prev), None)?;
        let credentials = (res.name == "consumers" && res.id_segments == 1)
            .then(|| format!("{key}/credentials/"));
        match state
            .store
            .commit(
                &key,
                Expect::ModRevision(prev.kv.mod_revision),
                Write::Delete {
                    also_prefix: credentials,
                },
                audit::entries(state, &rec),
                also,
            )
            .await?
        {
            Committed::At(_) => {
                return Ok(Json(json!({ "deleted": "1", "key": key })).into_response())
            }
            // The key is as read: a reference appeared; check again.
            Committed::Conflict { found } if found == prev.kv.mod_revision => continue,
            Committed::Conflict { found } => {
                return Err(ApiError::conflict(&key, prev.kv.mod_revision, found))
            }
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("{key}: references to it kept changing; try again"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_path_replaces_one_field() {
        let mut v = json!({"plugins": {"a": {"x": 1}}});
        set_path(&mut v, &["plugins", "b"], json!({"y": 2})).unwrap();
        assert_eq!(v, json!({"plugins": {"a": {"x": 1}, "b": {"y": 2}}}));
        assert!(set_path(&mut json!({"a": 1}), &["a", "b"], json!(1)).is_err());
    }

    #[test]
    fn times_are_forbidden_in_bodies() {
        assert!(forbid_times(&json!({"uri": "/"})).is_ok());
        let e = forbid_times(&json!({"upstream": {"create_time": 1}})).unwrap_err();
        assert_eq!(
            e.body["error_msg"],
            "the property is forbidden:  upstream.create_time"
        );
    }
}
