//! The APISIX-compatible Admin API: one generic handler for every resource
//! of `resources::RESOURCES`.
//!
//! - `GET /apisix/admin/<res>`: list (`page`/`page_size`, `name`/`uri`/`label`).
//! - `POST /apisix/admin/<res>`: create with a generated id.
//! - `PUT /apisix/admin/<res>` (id in the body) or `/<res>/<id>`: create (201) or replace (200).
//! - `GET`, `DELETE`, `PATCH /<res>/<id>`; `PATCH /<res>/<id>/<path>` replaces one sub-field.
//! - `GET`, `PUT`, `DELETE /consumers/<name>/credentials[/<id>]` (`resources::CREDENTIALS`).
//! - `GET /<res>/<id>/history`, `POST /<res>/<id>/rollback?revision=N` ([`history`]).
//!
//! Every write checks the key's revision in its txn (`If-Match: <modifiedIndex>`
//! pins the revision the caller saw), so concurrent edits are never lost.
//! Values are handled with their secrets in clear text ([`stored::Stored`]), stored
//! encrypted and answered with placeholders (module `secrets`).
//!
//! This file routes a request to its operation; the operations live in
//! files named after what they hold, each importing only the ones below it:
//!
//! - [`request`]: what a handler knows of the request ([`request::Ctx`]:
//!   caller, query, `If-Match`) and the body parser.
//! - [`stored`]: an item as read ([`stored::Stored`], secrets in clear) and
//!   as shown (placeholders, an SSL's validity); `GET` of one item.
//! - [`list`]: `GET` of a collection: paging, APISIX's filters.
//! - [`write`](mod@write): the write txn every change goes through: stamp, validate
//!   and check references, audit record, reference index, revision check.
//! - [`edit`]: `PUT`/`POST`, `PATCH`, `DELETE` of one item, on [`write`](mod@write).
//! - [`history`]: versions and rollback, on [`stored`] and [`write`](mod@write).
//!
//! `mod.rs` → `edit`, `history` → `write` → `stored` → `request`, and
//! `mod.rs` → `list` → `stored`; below them the crate's `ids`, `refs`,
//! `audit`, `secrets`, `validate`, `store`, `state`, none of which imports
//! this module.

pub mod edit;
pub mod history;
pub mod list;
pub mod request;
pub mod stored;
pub mod write;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ids::{check_id, id_string, resource};
use crate::resources::{self, Resource, CREDENTIALS};
use crate::state::AppState;
use request::{if_match, parse_body, Ctx, Q};

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
            Method::GET => list::list(&ctx, res, "").await,
            Method::POST if res.post => {
                let v = parse_body(&body)?;
                let id = state.store.gen_id(&state.settings.prefix).await?;
                edit::put(&ctx, res, &id, v, "create").await
            }
            // PUT without an id in the path: the id comes from the body.
            Method::PUT => {
                let v = parse_body(&body)?;
                let field = res.id_field.unwrap_or("id");
                let id = v.get(field).map(id_string).ok_or_else(|| {
                    ApiError::invalid(format!("missing {} {field}", res.singular))
                })?;
                check_id(res, &id)?;
                edit::put(&ctx, res, &id, v, "update").await
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
                    Method::GET => list::list(&ctx, &CREDENTIALS, id_segs[0]).await,
                    m => Err(not_supported(&m, &CREDENTIALS)),
                };
            }
            res = &CREDENTIALS;
            (id_segs, tail) = segs.split_at(3);
        }
        let id = id_segs.join("/");
        check_id(res, &id)?;
        match (&method, tail) {
            (&Method::GET, []) => stored::get(&ctx, res, &id).await,
            (&Method::PUT, []) => edit::put(&ctx, res, &id, parse_body(&body)?, "update").await,
            (&Method::PATCH, _) if !res.patch => Err(not_supported(&method, res)),
            (&Method::PATCH, path) => edit::patch(&ctx, res, &id, parse_body(&body)?, path).await,
            (&Method::DELETE, []) => edit::delete(&ctx, res, &id).await,
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
        let defs: Value = serde_json::from_str(include_str!("../schemas/defs.json"))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        m.insert("$defs".into(), defs);
    }
    Ok(Json(s))
}
