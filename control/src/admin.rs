//! The APISIX-compatible Admin API: one generic handler for every resource
//! of `resources::RESOURCES`.
//!
//! - `GET /apisix/admin/<res>`: list (`page`/`page_size`, `name`/`uri`/`label`).
//! - `POST /apisix/admin/<res>`: create with a generated id.
//! - `PUT /apisix/admin/<res>` (id in the body) or `/<res>/<id>`: create (201) or replace (200).
//! - `GET`, `DELETE`, `PATCH /<res>/<id>`; `PATCH /<res>/<id>/<path>` replaces one sub-field.
//! - `GET /<res>/<id>/history`, `POST /<res>/<id>/rollback?revision=N` (module `history`).
//!
//! Every write checks the key's revision in its txn (`If-Match: <modifiedIndex>`
//! pins the revision the caller saw), so concurrent edits are never lost.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_client::mvccpb::KeyValue;
use serde_json::{json, Map, Value};

use crate::audit::{self, AuditRecord};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::resources::{self, valid_id_segment, Resource};
use crate::store::{Committed, Expect, Write};
use crate::{history, validate, AppState};

type Q = HashMap<String, String>;

/// Query parameters and headers a handler needs.
pub struct Ctx<'a> {
    pub state: &'a AppState,
    pub caller: &'a Caller,
    pub query: &'a Q,
    /// `If-Match: <modifiedIndex>`: the revision the caller's edit is based on.
    pub if_match: Option<i64>,
}

pub fn resource(name: &str) -> ApiResult<&'static Resource> {
    resources::find(name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown resource [{name}]")))
}

pub fn key_of(state: &AppState, res: &Resource, id: &str) -> String {
    format!("{}/{}/{}", state.settings.prefix, res.name, id)
}

/// The stored item at `key`, checked against the caller's `If-Match` (the
/// `modifiedIndex` it last saw) when one was sent.
async fn current(ctx: &Ctx<'_>, key: &str) -> ApiResult<cairn_client::mvccpb::KeyValue> {
    let prev = ctx
        .state
        .store
        .get(key)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if let Some(expected) = ctx.if_match {
        if prev.mod_revision != expected {
            return Err(ApiError::conflict(key, expected, prev.mod_revision));
        }
    }
    Ok(prev)
}

/// `{"key","value","createdIndex","modifiedIndex"}`, APISIX's item envelope.
pub fn envelope(kv: &KeyValue) -> Value {
    json!({
        "key": String::from_utf8_lossy(&kv.key),
        "value": parse_value(&kv.value),
        "createdIndex": kv.create_revision,
        "modifiedIndex": kv.mod_revision,
    })
}

/// A stored value as JSON; a value that is not JSON (written by someone
/// else) is shown as a string rather than hidden.
pub fn parse_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into()))
}

fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    match headers.get("if-match") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .map(|s| s.trim().trim_matches('"'))
            .and_then(|s| s.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("If-Match must be a modifiedIndex (an integer)")),
    }
}

fn parse_body(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::invalid("empty request body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// `/apisix/admin/<res>`.
pub async fn collection(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    Path(name): Path<String>,
    Query(query): Query<Q>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let res = match resource(&name) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let ctx = match if_match(&headers) {
        Ok(if_match) => Ctx {
            state: &state,
            caller: &caller,
            query: &query,
            if_match,
        },
        Err(e) => return e.into_response(),
    };
    let r = match method {
        Method::GET => list(&ctx, res).await,
        Method::POST if res.post => match parse_body(&body) {
            Ok(v) => match state.store.gen_id(&state.settings.prefix).await {
                Ok(id) => put(&ctx, res, &id, v, "create").await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        // PUT without an id in the path: the id comes from the body.
        Method::PUT => match parse_body(&body) {
            Ok(v) => {
                let field = res.id_field.unwrap_or("id");
                match v.get(field).map(id_string) {
                    Some(id) => put(&ctx, res, &id, v, "update").await,
                    None => Err(ApiError::invalid(format!(
                        "missing {} {field}",
                        res.singular
                    ))),
                }
            }
            Err(e) => Err(e),
        },
        m => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on /apisix/admin/{name}"
        ))),
    };
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `/apisix/admin/<res>/<id>[/...]`.
pub async fn item(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    Path((name, rest)): Path<(String, String)>,
    Query(query): Query<Q>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        let res = resource(&name)?;
        let ctx = Ctx {
            state: &state,
            caller: &caller,
            query: &query,
            if_match: if_match(&headers)?,
        };
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        if segs.len() < res.id_segments {
            return Err(ApiError::bad_request(format!(
                "missing {} id",
                res.singular
            )));
        }
        let (id_segs, tail) = segs.split_at(res.id_segments);
        if !id_segs.iter().all(|s| valid_id_segment(s)) {
            return Err(ApiError::invalid(format!(
                "{} id [{}]: use 1-64 characters of a-z, A-Z, 0-9, -, _ and .",
                res.singular,
                id_segs.join("/")
            )));
        }
        let id = id_segs.join("/");
        match (&method, tail) {
            (&Method::GET, []) => get(&ctx, res, &id).await,
            (&Method::PUT, []) => put(&ctx, res, &id, parse_body(&body)?, "update").await,
            (&Method::PATCH, []) => patch(&ctx, res, &id, parse_body(&body)?, &[]).await,
            (&Method::PATCH, path) => patch(&ctx, res, &id, parse_body(&body)?, path).await,
            (&Method::DELETE, []) => delete(&ctx, res, &id).await,
            (&Method::GET, ["history"]) => history::history(&ctx, res, &id).await,
            (&Method::POST, ["rollback"]) => history::rollback(&ctx, res, &id).await,
            (m, _) => Err(ApiError::method_not_allowed(format!(
                "{m} /apisix/admin/{name}/{rest} is not supported"
            ))),
        }
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

fn id_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn get(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
    match ctx.state.store.get(&key_of(ctx.state, res, id)).await? {
        Some(kv) => Ok(Json(envelope(&kv)).into_response()),
        None => Err(ApiError::not_found()),
    }
}

async fn list(ctx: &Ctx<'_>, res: &Resource) -> ApiResult<Response> {
    let dir = format!("{}/{}/", ctx.state.settings.prefix, res.name);
    let mut kvs: Vec<KeyValue> = ctx
        .state
        .store
        .list(&dir)
        .await?
        .into_iter()
        // APISIX's CLI puts `<prefix>/<res>/` = init_dir: not a resource.
        .filter(|kv| kv.key.len() > dir.len())
        .filter(|kv| {
            matches!(
                serde_json::from_slice::<Value>(&kv.value),
                Ok(Value::Object(_))
            )
        })
        .collect();
    let q = ctx.query;
    kvs.retain(|kv| matches_filters(&parse_value(&kv.value), q));
    kvs.sort_by_key(|kv| kv.create_revision);
    let total = kvs.len();
    let page = match (q.get("page"), q.get("page_size")) {
        (Some(p), Some(s)) => {
            let p: usize = p
                .parse()
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| ApiError::bad_request("page must be an integer >= 1"))?;
            let s: usize = s
                .parse()
                .ok()
                .filter(|s| (10..=500).contains(s))
                .ok_or_else(|| {
                    ApiError::bad_request("page_size must be an integer between 10 and 500")
                })?;
            kvs.into_iter().skip((p - 1) * s).take(s).collect()
        }
        _ => kvs,
    };
    let list: Vec<Value> = page.iter().map(envelope).collect();
    Ok(Json(json!({ "total": total, "list": list })).into_response())
}

/// APISIX's list filters: `name` (substring), `uri` (substring of `uri` or
/// any of `uris`), `label` (`k` or `k:v`, several comma-separated, all must hold).
fn matches_filters(v: &Value, q: &Q) -> bool {
    if let Some(n) = q.get("name").filter(|n| !n.is_empty()) {
        if !v
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains(n.as_str()))
        {
            return false;
        }
    }
    if let Some(u) = q.get("uri").filter(|u| !u.is_empty()) {
        let one = v
            .get("uri")
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains(u.as_str()));
        let many = v.get("uris").and_then(Value::as_array).is_some_and(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|s| s.contains(u.as_str()))
        });
        if !one && !many {
            return false;
        }
    }
    if let Some(l) = q.get("label").filter(|l| !l.is_empty()) {
        let labels = v.get("labels").and_then(Value::as_object);
        for want in l.split(',') {
            let (k, val) = match want.split_once(':') {
                Some((k, val)) => (k, Some(val)),
                None => (want, None),
            };
            let have = labels.and_then(|m| m.get(k)).and_then(Value::as_str);
            let ok = match (have, val) {
                (Some(h), Some(v)) => h == v,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

fn now_secs() -> i64 {
    (audit::now_ms() / 1000) as i64
}

/// The value as APISIX stores it: the id in its field, `create_time` kept
/// from the previous version (or now), `update_time` now.
fn stamp(res: &Resource, id: &str, mut v: Value, prev: Option<&Value>) -> ApiResult<Value> {
    let Value::Object(obj) = &mut v else {
        return Err(ApiError::invalid(format!(
            "the {} must be a JSON object",
            res.singular
        )));
    };
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
    validate::check(res, id, v).map_err(ApiError::invalid)?;
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

/// Validates and commits `value` (already stamped) over `prev`.
pub async fn commit(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: &str,
    value: Value,
    prev: Option<&KeyValue>,
    action: &str,
    lease: i64,
) -> ApiResult<Result<(i64, Value), i64>> {
    let state = ctx.state;
    let key = key_of(state, res, id);
    check(state, res, id, &value).await?;
    let rec = AuditRecord {
        who: ctx.caller.name.clone(),
        when_ms: audit::now_ms(),
        action: action.into(),
        resource: res.name.into(),
        id: id.into(),
        key: key.clone(),
        old_revision: prev.map(|p| p.mod_revision).unwrap_or(0),
        new_revision: 0,
        old_value: prev.map(|p| parse_value(&p.value)),
        new_value: Some(value.clone()),
    };
    let expect = match prev {
        Some(p) => Expect::ModRevision(p.mod_revision),
        None => Expect::Absent,
    };
    let bytes = serde_json::to_vec(&value).map_err(|e| ApiError::internal(e.to_string()))?;
    match state
        .store
        .commit(
            &key,
            expect,
            Write::Put {
                value: bytes,
                lease,
            },
            audit::entry(state, &rec),
        )
        .await?
    {
        Committed::At(rev) => Ok(Ok((rev, value))),
        Committed::Conflict { found } => Ok(Err(found)),
    }
}

fn written(key: String, prev: Option<&KeyValue>, rev: i64, value: Value) -> Response {
    let status = if prev.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = json!({
        "key": key,
        "value": value,
        "createdIndex": prev.map(|p| p.create_revision).unwrap_or(rev),
        "modifiedIndex": rev,
    });
    (status, Json(body)).into_response()
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
    let lease = match ttl_lease_secs(ctx.query)? {
        Some(ttl) => state.store.lease(ttl).await?,
        None => 0,
    };
    for _ in 0..5 {
        let prev = state.store.get(&key).await?;
        if let Some(expected) = ctx.if_match {
            let found = prev.as_ref().map(|p| p.mod_revision).unwrap_or(0);
            if found != expected {
                return Err(ApiError::conflict(&key, expected, found));
            }
        }
        if action == "create" && prev.is_some() {
            return Err(ApiError::conflict(
                &key,
                0,
                prev.map(|p| p.mod_revision).unwrap_or(0),
            ));
        }
        let prev_v = prev.as_ref().map(|p| parse_value(&p.value));
        let value = stamp(res, id, body.clone(), prev_v.as_ref())?;
        match commit(ctx, res, id, value, prev.as_ref(), action, lease).await? {
            Ok((rev, value)) => return Ok(written(key, prev.as_ref(), rev, value)),
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
async fn patch(
    ctx: &Ctx<'_>,
    res: &Resource,
    id: &str,
    body: Value,
    path: &[&str],
) -> ApiResult<Response> {
    let state = ctx.state;
    let key = key_of(state, res, id);
    let prev = current(ctx, &key).await?;
    let old = parse_value(&prev.value);
    let mut merged = old.clone();
    if path.is_empty() {
        if !body.is_object() {
            return Err(ApiError::invalid("a PATCH body must be a JSON object"));
        }
        merge(&mut merged, body);
    } else {
        set_path(&mut merged, path, body)?;
    }
    // The merge may carry the old update_time: stamp a fresh one.
    if let Value::Object(m) = &mut merged {
        m.remove("update_time");
    }
    let value = stamp(res, id, merged, Some(&old))?;
    match commit(ctx, res, id, value, Some(&prev), "patch", prev.lease).await? {
        Ok((rev, value)) => Ok(written(key, Some(&prev), rev, value)),
        Err(found) => Err(ApiError::conflict(&key, prev.mod_revision, found)),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
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

/// DELETE: refused while another resource names this one, unless `?force=true`.
async fn delete(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
    let state = ctx.state;
    let key = key_of(state, res, id);
    let prev = current(ctx, &key).await?;
    if ctx.query.get("force").map(String::as_str) != Some("true") {
        for (user, field) in resources::users_of(res.name) {
            let dir = format!("{}/{}/", state.settings.prefix, user.name);
            for kv in state.store.list(&dir).await? {
                let v = parse_value(&kv.value);
                if v.get(field).map(id_string).as_deref() == Some(id) {
                    let uid = String::from_utf8_lossy(&kv.key[dir.len()..]).to_string();
                    return Err(ApiError::bad_request(format!(
                        "can not delete this {}, {} [{uid}] is still using it now",
                        res.singular, user.singular
                    )));
                }
            }
        }
    }
    let rec = AuditRecord {
        who: ctx.caller.name.clone(),
        when_ms: audit::now_ms(),
        action: "delete".into(),
        resource: res.name.into(),
        id: id.into(),
        key: key.clone(),
        old_revision: prev.mod_revision,
        new_revision: 0,
        old_value: Some(parse_value(&prev.value)),
        new_value: None,
    };
    match state
        .store
        .commit(
            &key,
            Expect::ModRevision(prev.mod_revision),
            Write::Delete,
            audit::entry(state, &rec),
        )
        .await?
    {
        Committed::At(_) => Ok(Json(json!({ "deleted": "1", "key": key })).into_response()),
        Committed::Conflict { found } => Err(ApiError::conflict(&key, prev.mod_revision, found)),
    }
}

/// `GET /apisix/admin/schema/<res>`: the JSON Schema a resource is checked against.
pub async fn schema(Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let res = resource(&name)?;
    let mut s: Value =
        serde_json::from_str(res.schema).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Value::Object(m) = &mut s {
        let defs: Value = serde_json::from_str(include_str!("schemas/defs.json"))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        m.insert("$defs".into(), defs);
    }
    Ok(Json(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_rules() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        merge(&mut v, json!({"a": null, "b": {"c": 5}, "e": [3]}));
        assert_eq!(v, json!({"b": {"c": 5, "d": 3}, "e": [3]}));
    }

    #[test]
    fn sub_path_replaces_one_field() {
        let mut v = json!({"plugins": {"a": {"x": 1}}});
        set_path(&mut v, &["plugins", "b"], json!({"y": 2})).unwrap();
        assert_eq!(v, json!({"plugins": {"a": {"x": 1}, "b": {"y": 2}}}));
        assert!(set_path(&mut json!({"a": 1}), &["a", "b"], json!(1)).is_err());
    }

    #[test]
    fn list_filters() {
        let v = json!({"name": "hello-route", "uris": ["/a", "/bc"], "labels": {"env": "prod"}});
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Q>()
        };
        assert!(matches_filters(
            &v,
            &q(&[("name", "hello"), ("uri", "/b"), ("label", "env:prod")])
        ));
        assert!(!matches_filters(&v, &q(&[("label", "env:dev")])));
        assert!(!matches_filters(&v, &q(&[("name", "x")])));
    }
}
