//! An item as read and as shown. [`Stored`] holds the key as read and the
//! value with its secrets in clear text, for this process only; [`shown`]
//! and [`envelope`] are what any reader gets (secrets as placeholders, an
//! SSL's validity read from its certificate). Also `GET` of one item.

use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_client::mvccpb::KeyValue;
use serde_json::{json, Value};

use super::request::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::ids::key_of;
use crate::resources::Resource;
use crate::secrets;
use crate::state::AppState;

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
pub async fn current(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Stored> {
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
pub const COMPUTED: &[&str] = &["validity_start", "validity_end"];

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

/// `GET /apisix/admin/<res>/<id>`.
pub async fn get(ctx: &Ctx<'_>, res: &Resource, id: &str) -> ApiResult<Response> {
    match read(ctx.state, res, id).await? {
        Some(s) => Ok(Json(envelope(ctx.state, res, id, &s)?).into_response()),
        None => Err(ApiError::not_found()),
    }
}
