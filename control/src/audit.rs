//! Audit records: one per write, put in the same txn as the write (see
//! `store::Store::commit`), under `<cairn_prefix>/audit/`, outside the prefix
//! data planes watch. Two keys per record, both ending `<ms, 13 digits>-<random>`
//! so key order is time order:
//!
//! - `audit/r/<resource>/<id>/@<ms>-<rand>`: the full record. One resource's
//!   records are one prefix range, so its history costs O(its versions),
//!   however long the log is.
//! - `audit/t/<ms>-<rand>`: the same record without its `revert` patch: the
//!   time index the audit log page and the pruning (`retention`) read.
//!
//! A record holds no value, only `revert`: the merge patch from the new value
//! back to the old one, secrets as fingerprints (`secrets::redact`). The new
//! value is the key's own at the record's revision (same txn), so a write
//! costs its value plus the changed fields, not twice its size; a patch over
//! [`REVERT_MAX`] is left out (`revert_omitted`), and the store's MVCC history
//! is then the only source of that old version until it is compacted.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiResult;
use crate::ids;
use crate::state::AppState;

/// Larger revert patches are not kept (the record stays, marked).
pub const REVERT_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// `api-key:admin`, `console:alice`, …
    pub who: String,
    /// Milliseconds since the Unix epoch, by the instance's clock.
    pub when_ms: u64,
    /// create, update, patch, delete, rollback.
    pub action: String,
    pub resource: String,
    pub id: String,
    /// The store key changed.
    pub key: String,
    /// The key's mod_revision before the change (0: it did not exist).
    pub old_revision: i64,
    /// The revision of the change (the record's own mod_revision).
    #[serde(default)]
    pub new_revision: i64,
    /// The merge patch that turns the new value back into the old one
    /// (secrets as fingerprints); the whole old value for a delete; none
    /// for a create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<Value>,
    /// The revert patch was over `REVERT_MAX` bytes and not kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revert_omitted: bool,
}

/// `<cairn_prefix>/audit/`.
pub fn prefix(state: &AppState) -> String {
    format!("{}/audit/", state.settings.cairn_prefix)
}

/// The time index, `<cairn_prefix>/audit/t/`.
pub fn time_prefix(state: &AppState) -> String {
    format!("{}t/", prefix(state))
}

/// The records of one resource, `<cairn_prefix>/audit/r/<resource>/<id>/@`
/// (`@` never occurs in an id, so `consumers/jack/@` is not a prefix of
/// `consumers/jack/credentials/c1/@`).
pub fn resource_prefix(state: &AppState, resource: &str, id: &str) -> String {
    format!("{}r/{resource}/{id}/@", prefix(state))
}

/// The two keys and values of a new record: the full record under its
/// resource, the summary in the time index.
pub fn entries(state: &AppState, rec: &AuditRecord) -> [(String, Vec<u8>); 2] {
    let suffix = format!("{:013}-{:08x}", rec.when_ms, OsRng.next_u32());
    let full = serde_json::to_vec(rec).unwrap_or_default();
    let summary = AuditRecord {
        revert: None,
        ..rec.clone()
    };
    [
        (
            format!("{}{suffix}", resource_prefix(state, &rec.resource, &rec.id)),
            full,
        ),
        (
            format!("{}{suffix}", time_prefix(state)),
            serde_json::to_vec(&summary).unwrap_or_default(),
        ),
    ]
}

/// The record of a time-index entry's key (`…/t/<suffix>`) under its resource.
pub fn resource_key_of(state: &AppState, time_key: &[u8], rec: &AuditRecord) -> Option<String> {
    let suffix = std::str::from_utf8(time_key)
        .ok()?
        .strip_prefix(&time_prefix(state))?
        .to_string();
    Some(format!(
        "{}{suffix}",
        resource_prefix(state, &rec.resource, &rec.id)
    ))
}

pub fn decode(kv: &cairn_client::mvccpb::KeyValue) -> Option<AuditRecord> {
    let mut r: AuditRecord = serde_json::from_slice(&kv.value).ok()?;
    r.new_revision = kv.mod_revision;
    Some(r)
}

/// Every record of one resource, oldest first: one prefix range.
pub async fn for_resource(
    state: &AppState,
    resource: &str,
    id: &str,
) -> ApiResult<Vec<AuditRecord>> {
    let kvs = state
        .store
        .list(&resource_prefix(state, resource, id))
        .await?;
    Ok(kvs.iter().filter_map(decode).collect())
}

/// `GET /api/audit?limit=N`: the newest records first (default 200, at most
/// 5000), from the time index. With `resource` and `id`: that resource's
/// records with their revert patches, newest first.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(200)
        .clamp(1, 5000);
    let list: Vec<AuditRecord> = match (q.get("resource"), q.get("id")) {
        (Some(res), Some(id)) => {
            let res = ids::resource(res)?;
            ids::check_id(res, id)?;
            let mut all = for_resource(&state, res.name, id).await?;
            all.reverse();
            all.truncate(limit as usize);
            all
        }
        _ => {
            let kvs = state.store.list_last(&time_prefix(&state), limit).await?;
            kvs.iter().filter_map(decode).collect()
        }
    };
    Ok(Json(
        serde_json::json!({ "total": list.len(), "list": list }),
    ))
}
