//! History and rollback of one resource.
//!
//! Versions come from the store's MVCC history first: the current version,
//! then the key read at `mod_revision - 1`, and so on back to its creation or
//! to the compaction point. Audit records (which keep the old and new value
//! of every write) fill in what compaction removed, and deletes.

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use crate::admin::{commit, key_of, parse_value, Ctx};
use crate::audit::{self, AuditRecord};
use crate::error::{ApiError, ApiResult};
use crate::resources::Resource;

/// One version of a resource.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Version {
    /// The revision that wrote this version (its mod_revision).
    pub revision: i64,
    /// The value; none for a delete.
    pub value: Option<Value>,
    /// `mvcc` (read from the store's history) or `audit` (compacted away,
    /// known from an audit record).
    pub source: &'static str,
    /// Whether this is the value the key holds now.
    pub current: bool,
    /// From the audit record of the write, when there is one.
    pub who: Option<String>,
    pub when_ms: Option<u64>,
    pub action: Option<String>,
}

/// All versions, newest first, and whether MVCC history was cut by compaction.
pub async fn versions(ctx: &Ctx<'_>, key: &str) -> ApiResult<(Vec<Version>, bool)> {
    let store = &ctx.state.store;
    let mut found: BTreeMap<i64, Version> = BTreeMap::new();
    let mut compacted = false;
    let mut next = store.get(key).await?;
    let mut current = true;
    while let Some(kv) = next.take() {
        found.insert(
            kv.mod_revision,
            Version {
                revision: kv.mod_revision,
                value: Some(parse_value(&kv.value)),
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
        match store.get_at(key, kv.mod_revision - 1).await {
            Ok(kv) => next = kv,
            Err(None) => compacted = true,
            Err(Some(e)) => return Err(e),
        }
    }
    let records: Vec<AuditRecord> = audit::for_key(ctx.state, key).await?;
    for r in &records {
        let from_audit = |revision, value: &Option<Value>| Version {
            revision,
            value: value.clone(),
            source: "audit",
            current: false,
            who: None,
            when_ms: None,
            action: None,
        };
        found
            .entry(r.new_revision)
            .or_insert_with(|| from_audit(r.new_revision, &r.new_value));
        if r.old_revision > 0 {
            found
                .entry(r.old_revision)
                .or_insert_with(|| from_audit(r.old_revision, &r.old_value));
        }
    }
    for r in &records {
        if let Some(v) = found.get_mut(&r.new_revision) {
            v.who = Some(r.who.clone());
            v.when_ms = Some(r.when_ms);
            v.action = Some(r.action.clone());
        }
    }
    Ok((found.into_values().rev().collect(), compacted))
}

/// `GET /apisix/admin/<res>/<id>/history`.
pub async fn history(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
    let key = key_of(ctx.state, res, id);
    let (list, compacted) = versions(ctx, &key).await?;
    if list.is_empty() {
        return Err(ApiError::not_found());
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
pub async fn rollback(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
    let revision: i64 = ctx
        .query
        .get("revision")
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| {
            ApiError::bad_request("rollback needs ?revision=N (a modifiedIndex from the history)")
        })?;
    let key = key_of(ctx.state, res, id);
    let (list, _) = versions(ctx, &key).await?;
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
    let prev = ctx.state.store.get(&key).await?;
    if let Some(expected) = ctx.if_match {
        let found = prev.as_ref().map(|p| p.mod_revision).unwrap_or(0);
        if found != expected {
            return Err(ApiError::conflict(&key, expected, found));
        }
    }
    if res.timestamps {
        if let Value::Object(m) = &mut value {
            m.insert("update_time".into(), json!(audit::now_ms() / 1000));
        }
    }
    match commit(ctx, res, id, value, prev.as_ref(), "rollback", 0).await? {
        Ok((rev, value)) => Ok(Json(json!({
            "key": key,
            "value": value,
            "createdIndex": prev.as_ref().map(|p| p.create_revision).unwrap_or(rev),
            "modifiedIndex": rev,
            "rolled_back_to": revision,
        }))
        .into_response()),
        Err(found) => Err(ApiError::conflict(
            &key,
            prev.map(|p| p.mod_revision).unwrap_or(0),
            found,
        )),
    }
}
