//! The APISIX-compatible Admin API: one generic handler for every resource
//! of `resources::RESOURCES`.
//!
//! - `GET /apisix/admin/<res>`: list (`page`/`page_size`, `name`/`uri`/`label`).
//! - `POST /apisix/admin/<res>`: create with a generated id.
//! - `PUT /apisix/admin/<res>` (id in the body) or `/<res>/<id>`: create (201) or replace (200).
//! - `GET`, `DELETE`, `PATCH /<res>/<id>`; `PATCH /<res>/<id>/<path>` replaces one sub-field.
//! - `GET`, `PUT`, `DELETE /consumers/<name>/credentials[/<id>]` (`resources::CREDENTIALS`).
//! - `GET /<res>/<id>/history`, `POST /<res>/<id>/rollback?revision=N` (module `history`).
//!
//! Every write checks the key's revision in its txn (`If-Match: <modifiedIndex>`
//! pins the revision the caller saw), so concurrent edits are never lost.
//! Values are handled with their secrets in clear text ([`Stored`]), stored
//! encrypted and answered with placeholders (module `secrets`).

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
use crate::clock::{now_ms, now_secs};
use crate::error::{ApiError, ApiResult};
use crate::ids::{check_id, id_string, key_of, resource, value_id};
use crate::patch::{diff, merge};
use crate::resources::{self, Resource, CREDENTIALS};
use crate::state::AppState;
use crate::store::{Also, Committed, Expect, Write};
use crate::{history, refs, secrets, validate};

type Q = HashMap<String, String>;

/// Query parameters and headers a handler needs.
pub struct Ctx<'a> {
    pub state: &'a AppState,
    pub caller: &'a Caller,
    pub query: &'a Q,
    /// `If-Match: <modifiedIndex>`: the revision the caller's edit is based on.
    pub if_match: Option<i64>,
}

/// A stored item: the key as read, and its value with secrets in clear text
/// (`secrets::decode`), for this process only.
pub struct Stored {
    pub kv: KeyValue,
    pub value: Value,
}

/// The item `id` of `res` as stored now, if it exists.
pub async fn read(state: &AppState, res: &Resource, id: &str) -> ApiResult<Option<Stored>> {
    Ok(state
        .store
        .get(&key_of(state, res, id))
        .await?
        .map(|kv| Stored {
            value: secrets::decode(state, res, id, &kv.value),
            kv,
        }))
}

/// The stored item, checked against the caller's `If-Match` (the
/// `modifiedIndex` it last saw) when one was sent.
async fn current(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Stored> {
    let prev = read(ctx.state, res, id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if let Some(expected) = ctx.if_match {
        if prev.kv.mod_revision != expected {
            let key = key_of(ctx.state, res, id);
            return Err(ApiError::conflict(&key, expected, prev.kv.mod_revision));
        }
    }
    Ok(prev)
}

/// Fields answered but never stored: an SSL certificate's validity, read
/// from the certificate itself.
const COMPUTED: &[&str] = &["validity_start", "validity_end"];

/// A value as every reader sees it: secrets replaced by placeholders, and an
/// SSL's validity period (`validity_start`, `validity_end`, Unix seconds).
pub fn shown(state: &AppState, res: &Resource, id: &str, mut v: Value) -> ApiResult<Value> {
    if res.name == "ssls" {
        let cert = v
            .get("cert")
            .and_then(Value::as_str)
            .map(crate::x509::parse_cert);
        if let (Some(Ok(c)), Value::Object(m)) = (cert, &mut v) {
            m.insert("validity_start".into(), json!(c.not_before));
            m.insert("validity_end".into(), json!(c.not_after));
        }
    }
    secrets::redact(state, res, id, &mut v)?;
    Ok(v)
}

/// `{"key","value","createdIndex","modifiedIndex"}`, APISIX's item envelope,
/// secrets shown as placeholders.
pub fn envelope(state: &AppState, res: &Resource, id: &str, s: &Stored) -> ApiResult<Value> {
    Ok(json!({
        "key": String::from_utf8_lossy(&s.kv.key),
        "value": shown(state, res, id, s.value.clone())?,
        "createdIndex": s.kv.create_revision,
        "modifiedIndex": s.kv.mod_revision,
    }))
}

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

/// `If-Match: <modifiedIndex>`; `If-None-Match: *` (create only, never
/// overwrite) is `If-Match: 0`, the revision of a key that does not exist.
fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    if headers
        .get("if-none-match")
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"*")
    {
        return Ok(Some(0));
    }
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

fn not_supported(method: &Method, res: &Resource) -> ApiError {
    ApiError::method_not_allowed(format!(
        "not supported `{method}` method for {}",
        res.singular
    ))
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
    let r = async {
        let res = resource(&name)?;
        let ctx = Ctx {
            state: &state,
            caller: &caller,
            query: &query,
            if_match: if_match(&headers)?,
        };
        match method {
            Method::GET => list(&ctx, res, "").await,
            Method::POST if res.post => {
                let v = parse_body(&body)?;
                let id = state.store.gen_id(&state.settings.prefix).await?;
                put(&ctx, res, &id, v, "create").await
            }
            // PUT without an id in the path: the id comes from the body.
            Method::PUT => {
                let v = parse_body(&body)?;
                let field = res.id_field.unwrap_or("id");
                let id = v.get(field).map(id_string).ok_or_else(|| {
                    ApiError::invalid(format!("missing {} {field}", res.singular))
                })?;
                check_id(res, &id)?;
                put(&ctx, res, &id, v, "update").await
            }
            m => Err(not_supported(&m, res)),
        }
    }
    .await;
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
        let mut res = resource(&name)?;
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
        let (mut id_segs, mut tail) = segs.split_at(res.id_segments);
        // `consumers/<name>/credentials[/<id>]`.
        if res.name == "consumers" && tail.first() == Some(&"credentials") {
            if tail.len() == 1 {
                check_id(res, id_segs[0])?;
                return match method {
                    Method::GET => list(&ctx, &CREDENTIALS, id_segs[0]).await,
                    m => Err(not_supported(&m, &CREDENTIALS)),
                };
            }
            res = &CREDENTIALS;
            (id_segs, tail) = segs.split_at(3);
        }
        let id = id_segs.join("/");
        check_id(res, &id)?;
        match (&method, tail) {
            (&Method::GET, []) => get(&ctx, res, &id).await,
            (&Method::PUT, []) => put(&ctx, res, &id, parse_body(&body)?, "update").await,
            (&Method::PATCH, _) if !res.patch => Err(not_supported(&method, res)),
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

async fn get(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
    match read(ctx.state, res, id).await? {
        Some(s) => Ok(Json(envelope(ctx.state, res, id, &s)?).into_response()),
        None => Err(ApiError::not_found()),
    }
}

/// A list: every item of `res` (for credentials, of consumer `owner`).
async fn list(ctx: &Ctx<'_>, res: &Resource, owner: &str) -> ApiResult<Response> {
    let state = ctx.state;
    let credentials = res.id_segments == 3;
    let dir = if credentials {
        format!(
            "{}/{}/{owner}/credentials/",
            state.settings.prefix, res.name
        )
    } else {
        format!("{}/{}/", state.settings.prefix, res.name)
    };
    let q = ctx.query;
    let paging = page_of(q)?;
    let filtered = ["name", "uri", "label"]
        .iter()
        .any(|f| q.get(*f).is_some_and(|v| !v.is_empty()));
    // Paged in the store when nothing needs filtering and every key under
    // the directory is an item (consumers' directories hold credentials too).
    let (kvs, store_total) = match paging {
        Some((p, s)) if !filtered && res.name != "consumers" => {
            let (kvs, total) = state.store.page_by_creation(&dir, (p - 1) * s, s).await?;
            (kvs, Some(total))
        }
        _ => (state.store.list(&dir).await?, None),
    };
    let mut items: Vec<(String, Stored)> = kvs
        .into_iter()
        .filter_map(|kv| {
            let rel = String::from_utf8_lossy(&kv.key[dir.len()..]).into_owned();
            // APISIX's CLI puts `<prefix>/<res>/` = init_dir: not a resource;
            // a consumer's credentials lie below it: not consumers.
            let want = if res.id_segments == 3 {
                1
            } else {
                res.id_segments
            };
            if rel.is_empty() || rel.split('/').count() != want {
                return None;
            }
            let id = if credentials {
                format!("{owner}/credentials/{rel}")
            } else {
                rel
            };
            let value = secrets::decode(state, res, &id, &kv.value);
            value.is_object().then_some((id, Stored { kv, value }))
        })
        .collect();
    items.retain(|(_, s)| matches_filters(&s.value, q));
    items.sort_by_key(|(_, s)| s.kv.create_revision);
    let (total, page) = match (store_total, paging) {
        (Some(total), _) => (total, items),
        (None, Some((p, s))) => (
            items.len(),
            items.into_iter().skip((p - 1) * s).take(s).collect(),
        ),
        (None, None) => (items.len(), items),
    };
    let list = page
        .iter()
        .map(|(id, s)| envelope(state, res, id, s))
        .collect::<ApiResult<Vec<Value>>>()?;
    Ok(Json(json!({ "total": total, "list": list })).into_response())
}

/// `page` and `page_size`, when both are given (APISIX pages only then):
/// a page below 1 is the first, as in APISIX; sizes 10 to 500.
fn page_of(q: &Q) -> ApiResult<Option<(usize, usize)>> {
    let (Some(p), Some(s)) = (q.get("page"), q.get("page_size")) else {
        return Ok(None);
    };
    let p = p
        .parse::<i64>()
        .map(|p| p.max(1) as usize)
        .map_err(|_| ApiError::bad_request("page must be an integer"))?;
    let s: usize = s
        .parse()
        .ok()
        .filter(|s| (10..=500).contains(s))
        .ok_or_else(|| ApiError::bad_request("page_size must be an integer between 10 and 500"))?;
    Ok(Some((p, s)))
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

/// The value as APISIX stores it: the id in its field, `create_time` kept
/// from the previous version (or now), `update_time` now.
fn stamp(res: &Resource, id: &str, mut v: Value, prev: Option<&Value>) -> ApiResult<Value> {
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
fn record(
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
async fn patch(
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
async fn delete(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
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

/// `GET /apisix/admin/schema/<res>` (APISIX's singular names, and the
/// plural as an alias): the JSON Schema a resource is checked against.
pub async fn schema(Path(name): Path<String>) -> ApiResult<Json<Value>> {
    let res = resources::find(&name)
        .or_else(|| {
            resources::RESOURCES
                .iter()
                .find(|r| r.singular.replace(' ', "_") == name)
        })
        .or_else(|| (name == "credential").then_some(&CREDENTIALS))
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, format!("unknown resource [{name}]"))
        })?;
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
