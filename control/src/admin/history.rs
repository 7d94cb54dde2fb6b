//! History and rollback of one resource.
//!
//! Versions come from the store's MVCC history first: the current version,
//! then the key read at `mod_revision - 1`, and so on back to its creation or
//! to the compaction point. The resource's audit records (one prefix range,
//! `audit::for_resource`) add who/when/action, deletes, and the versions
//! compaction removed: each record's `revert` patch turns the version it
//! wrote back into the one before, so walking the records newest first
//! rebuilds older versions from newer ones. Versions rebuilt that way carry
//! secrets as fingerprints only (the audit log never holds a secret).

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::request::Ctx;
use super::stored::{read, shown};
use super::write::commit;
use crate::audit::{self, AuditRecord};
use crate::error::{ApiError, ApiResult};
use crate::ids::key_of;
use crate::patch::merge;
use crate::resources::Resource;
use crate::secrets;

/// One version of a resource. Internally `value` has secrets in clear text
/// when it came from the store; answers show it through `stored::shown`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Version {
    /// The revision that wrote this version (its mod_revision).
    pub revision: i64,
    /// The value; none for a delete.
    pub value: Option<Value>,
    /// `mvcc` (read from the store's history) or `audit` (compacted away,
    /// rebuilt from audit records).
    pub source: &'static str,
    /// Whether this is the value the key holds now.
    pub current: bool,
    /// From the audit record of the write, when there is one.
    pub who: Option<String>,
    pub when_ms: Option<u64>,
    pub action: Option<String>,
}

/// All versions, newest first, and whether MVCC history was cut by compaction.
pub async fn versions(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<(Vec<Version>, bool)> {
    let state = ctx.state;
    let store = &state.store;
    let key = key_of(state, res, id);
    let mut found: BTreeMap<i64, Version> = BTreeMap::new();
    let mut compacted = false;
    let mut next = store.get(&key).await?;
    let mut current = true;
    while let Some(kv) = next.take() {
        found.insert(
            kv.mod_revision,
            Version {
                revision: kv.mod_revision,
                value: Some(secrets::decode(state, res, id, &kv.value)),
                source: "mvcc",
                current,
                who: None,
                when_ms: None,
                action: None,
            },
        );
        current = false;
        if kv.version <= 1 {
            break;
        }
        match store.get_at(&key, kv.mod_revision - 1).await {
            Ok(kv) => next = kv,
            Err(None) => compacted = true,
            Err(Some(e)) => return Err(e),
        }
    }
    let records: Vec<AuditRecord> = audit::for_resource(state, res.name, id).await?;
    // Newest first: the version a record wrote is known (from the store or
    // rebuilt from a newer record) before the one it replaced is rebuilt.
    for r in records.iter().rev() {
        let written = if r.action == "delete" {
            found.entry(r.new_revision).or_insert_with(|| Version {
                revision: r.new_revision,
                value: None,
                source: "audit",
                current: false,
                who: None,
                when_ms: None,
                action: None,
            });
            Some(None)
        } else {
            found
                .get(&r.new_revision)
                .map(|v| v.value.clone().map(|v| shown(state, res, id, v)))
        };
        if let Some(v) = found.get_mut(&r.new_revision) {
            v.who = Some(r.who.clone());
            v.when_ms = Some(r.when_ms);
            v.action = Some(r.action.clone());
        }
        if r.old_revision == 0 || found.contains_key(&r.old_revision) {
            continue;
        }
        let (Some(written), Some(revert)) = (written, r.revert.clone()) else {
            continue;
        };
        let old = match written {
            None => revert,
            Some(v) => {
                let mut v = v?;
                merge(&mut v, revert);
                v
            }
        };
        found.insert(
            r.old_revision,
            Version {
                revision: r.old_revision,
                value: Some(old),
                source: "audit",
                current: false,
                who: None,
                when_ms: None,
                action: None,
            },
        );
    }
    Ok((found.into_values().rev().collect(), compacted))
}

/// `GET /apisix/admin/<res>/<id>/history`.
pub async fn history(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
    let key = key_of(ctx.state, res, id);
    let (mut list, compacted) = versions(ctx, res, id).await?;
    if list.is_empty() {
        return Err(ApiError::not_found());
    }
    for v in &mut list {
        if let Some(value) = v.value.take() {
            v.value = Some(shown(ctx.state, res, id, value)?);
        }
    }
    Ok(Json(json!({
        "key": key,
        "total": list.len(),
        "compacted": compacted,
        "list": list,
    }))
    .into_response())
}

/// `POST /apisix/admin/<res>/<id>/rollback?revision=N`: writes the version of
/// revision N again, as a new revision (validated and audited as any write).
/// A version rebuilt from the audit log holds fingerprints, not secrets: it
/// can be restored only where its secrets are the ones stored now.
pub async fn rollback(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
    let state = ctx.state;
    let revision: i64 = ctx
        .query
        .get("revision")
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request("rollback needs ?revision=N (a modifiedIndex from the history)")
        })?;
    let key = key_of(state, res, id);
    let (list, _) = versions(ctx, res, id).await?;
    let target = list
        .iter()
        .find(|v| v.revision == revision)
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                format!("{key} has no version at revision {revision}"),
            )
        })?;
    let Some(mut value) = target.value.clone() else {
        return Err(ApiError::bad_request(format!(
            "revision {revision} of {key} is a delete; nothing to restore"
        )));
    };
    let prev = read(state, res, id).await?;
    if let Some(expected) = ctx.if_match {
        let found = prev.as_ref().map(|p| p.kv.mod_revision).unwrap_or(0);
        if found != expected {
            return Err(ApiError::conflict(&key, expected, found));
        }
    }
    secrets::restore(state, res, id, &mut value, prev.as_ref().map(|p| &p.value)).map_err(
        |_| {
            ApiError::bad_request(format!(
                "revision {revision} of {key} holds a secret that is no longer stored (the audit log keeps fingerprints only); restore it with a PUT that sends the secret"
            ))
        },
    )?;
    if res.timestamps {
        if let Value::Object(m) = &mut value {
            m.insert("update_time".into(), json!(crate::clock::now_secs()));
        }
    }
    match commit(ctx, res, id, value, prev.as_ref(), "rollback", 0).await? {
        Ok((rev, value)) => Ok(Json(json!({
            "key": key,
            "value": shown(state, res, id, value)?,
            "createdIndex": prev.as_ref().map(|p| p.kv.create_revision).unwrap_or(rev),
            "modifiedIndex": rev,
            "rolled_back_to": revision,
        }))
        .into_response()),
        Err(found) => Err(ApiError::conflict(
            &key,
            prev.map(|p| p.kv.mod_revision).unwrap_or(0),
            found,
        )),
    }
}
