//! Audit records: one per write, put in the same txn as the write (see
//! `store::Store::commit`), under `<cairn_prefix>/audit/`, outside the prefix
//! data planes watch.
//!
//! The key is `<ms since epoch, 13 digits>-<random>`, so a range in key order
//! is time order. The record's own mod_revision is the revision of the change
//! it describes (same txn), so `new_revision` is filled in on read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::Json;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiResult;
use crate::AppState;

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
    /// The value before the change.
    pub old_value: Option<Value>,
    /// The value after the change (none for a delete).
    pub new_value: Option<Value>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn prefix(state: &AppState) -> String {
    format!("{}/audit/", state.settings.cairn_prefix)
}

/// The key and bytes of a new record.
pub fn entry(state: &AppState, rec: &AuditRecord) -> (String, Vec<u8>) {
    let key = format!(
        "{}{:013}-{:08x}",
        prefix(state),
        rec.when_ms,
        OsRng.next_u32()
    );
    let bytes = serde_json::to_vec(rec).unwrap_or_default();
    (key, bytes)
}

fn decode(kv: &cairn_client::mvccpb::KeyValue) -> Option<AuditRecord> {
    let mut r: AuditRecord = serde_json::from_slice(&kv.value).ok()?;
    r.new_revision = kv.mod_revision;
    Some(r)
}

/// Every record about `key`, oldest first.
pub async fn for_key(state: &AppState, key: &str) -> ApiResult<Vec<AuditRecord>> {
    let kvs = state.store.list(&prefix(state)).await?;
    Ok(kvs
        .iter()
        .filter_map(decode)
        .filter(|r| r.key == key)
        .collect())
}

/// `GET /api/audit?limit=N`: the newest records first (default 200).
pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(200)
        .clamp(1, 5000);
    let kvs = state.store.list_last(&prefix(&state), limit).await?;
    let list: Vec<AuditRecord> = kvs.iter().filter_map(decode).collect();
    Ok(Json(
        serde_json::json!({ "total": list.len(), "list": list }),
    ))
}
