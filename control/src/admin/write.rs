//! The write txn every change of an item goes through (`PUT`/`POST`,
//! `PATCH`, rollback; `DELETE` shares its audit record): the value stamped as
//! APISIX stores it, validated and its references checked, encrypted, and
//! committed in one txn with its audit record and reference index entries,
//! if the key's revision is still the one read. Nothing is written when a
//! check fails.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::request::Ctx;
use super::stored::{read, shown, Stored, COMPUTED};
use crate::audit::{self, AuditRecord};
use crate::clock::{now_ms, now_secs};
use crate::error::{ApiError, ApiResult};
use crate::ids::{id_string, key_of, resource, value_id};
use crate::patch::diff;
use crate::resources::Resource;
use crate::state::AppState;
use crate::store::{Also, Committed, Expect, Write};
use crate::{refs, secrets, validate};

/// The value as APISIX stores it: the id in its field, `create_time` kept
/// from the previous version (or now), `update_time` now.
pub fn stamp(res: &Resource, id: &str, mut v: Value, prev: Option<&Value>) -> ApiResult<Value> {
    let Value::Object(obj) = &mut v else {
        return Err(ApiError::invalid(format!(
            "the {} must be a JSON object",
            res.singular
        )));
    };
    if res.name == "ssls" {
        for f in COMPUTED {
            obj.remove(*f);
        }
    }
    let id = value_id(res, id);
    if let Some(field) = res.id_field {
        match obj.get(field) {
            Some(given) if id_string(given) != id => {
                return Err(ApiError::bad_request(format!(
                    "wrong {} {field} [{}], the path says [{id}]",
                    res.singular,
                    id_string(given)
                )));
            }
            // Keep an integer id as the caller gave it, as APISIX does.
            Some(_) => {}
            None => {
                obj.insert(field.into(), Value::String(id.into()));
            }
        }
    }
    if res.timestamps {
        let created = prev.and_then(|p| p.get("create_time")).cloned();
        if !obj.contains_key("create_time") {
            obj.insert(
                "create_time".into(),
                created.unwrap_or_else(|| json!(now_secs())),
            );
        }
        obj.insert("update_time".into(), json!(now_secs()));
    }
    Ok(v)
}

/// Schema and references. Nothing is written when this fails.
pub async fn check(state: &AppState, res: &Resource, id: &str, v: &Value) -> ApiResult<()> {
    validate::check(res, id, &state.settings.extra_plugins, v).map_err(ApiError::invalid)?;
    if res.id_segments == 3 {
        let owner = id.split('/').next().unwrap_or_default();
        if read(state, resource("consumers")?, owner).await?.is_none() {
            return Err(ApiError::bad_request(format!(
                "consumer not found: {owner}"
            )));
        }
    }
    for (field, target) in res.refs {
        let Some(rid) = v.get(*field) else { continue };
        let rid = id_string(rid);
        let target_res = resource(target)?;
        if state
            .store
            .get(&key_of(state, target_res, &rid))
            .await?
            .is_none()
        {
            let s = target_res.singular;
            return Err(ApiError::bad_request(format!(
                "failed to fetch {s} info by {s} id [{rid}], response code: 404"
            )));
        }
    }
    Ok(())
}

/// The audit record of a change from `old` to `new` (clear values; the
/// record keeps only the patch back, secrets as fingerprints).
pub fn record(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: &str,
    action: &str,
    old: Option<&Stored>,
    new: Option<&Value>,
) -> ApiResult<AuditRecord> {
    let state = ctx.state;
    let revert = match (old, new) {
        (None, _) => None,
        (Some(o), None) => Some(shown(state, res, id, o.value.clone())?),
        (Some(o), Some(n)) => Some(diff(
            &shown(state, res, id, n.clone())?,
            &shown(state, res, id, o.value.clone())?,
        )),
    };
    let too_big = revert
        .as_ref()
        .is_some_and(|r| r.to_string().len() > audit::REVERT_MAX);
    Ok(AuditRecord {
        who: ctx.caller.name.clone(),
        when_ms: now_ms(),
        action: action.into(),
        resource: res.name.into(),
        id: id.into(),
        key: key_of(state, res, id),
        old_revision: old.map(|p| p.kv.mod_revision).unwrap_or(0),
        new_revision: 0,
        revert: if too_big { None } else { revert },
        revert_omitted: too_big,
    })
}

/// Validates and commits `value` (clear text, already stamped) over `prev`.
/// `Ok(Err(found))`: the key changed since `prev` was read.
pub async fn commit(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: &str,
    value: Value,
    prev: Option<&Stored>,
    action: &str,
    lease: i64,
) -> ApiResult<Result<(i64, Value), i64>> {
    let state = ctx.state;
    let key = key_of(state, res, id);
    check(state, res, id, &value).await?;
    let rec = record(ctx, res, id, action, prev, Some(&value))?;
    let expect = match prev {
        Some(p) => Expect::ModRevision(p.kv.mod_revision),
        None => Expect::Absent,
    };
    let bytes = secrets::encode(state, res, id, &value)?;
    let also = Also {
        ops: refs::ops(state, res, id, prev.map(|p| &p.value), Some(&value)),
        ..Default::default()
    };
    match state
        .store
        .commit(
            &key,
            expect,
            Write::Put {
                value: bytes,
                lease,
            },
            audit::entries(state, &rec),
            also,
        )
        .await?
    {
        Committed::At(rev) => Ok(Ok((rev, value))),
        Committed::Conflict { found } => Ok(Err(found)),
    }
}

/// The answer to a write: APISIX's envelope, 201 if it created the key.
pub fn written(
    state: &AppState,
    res: &Resource,
    id: &str,
    prev: Option<&Stored>,
    rev: i64,
    value: Value,
) -> ApiResult<Response> {
    let status = if prev.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = json!({
        "key": key_of(state, res, id),
        "value": shown(state, res, id, value)?,
        "createdIndex": prev.map(|p| p.kv.create_revision).unwrap_or(rev),
        "modifiedIndex": rev,
    });
    Ok((status, Json(body)).into_response())
}
