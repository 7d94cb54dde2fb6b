//! `GET /api/gateways`: every `cairn gateway` registered under
//! `<cairn_prefix>/gateways/<id>` (a key each gateway keeps under a 60 s
//! lease and puts again every 10 s, and within 1 s of applying a revision),
//! with its sync state against the store:
//!
//! - `lost`: its `updated_at` is more than [`LOST_AFTER`] old;
//! - `lagging`: its `config_revision` is below `target_revision`, the newest
//!   change under the resource prefix (the highest `mod_revision` there, or
//!   the newest audit record, which also covers deletes made through the
//!   control plane). The store's own revision would not do: every gateway's
//!   registration put moves it, so every gateway would always look behind;
//! - `healthy` otherwise.
//!
//! `?revision=N` also answers how many gateways have applied revision N (the
//! console's "applied by every gateway" after a save).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use cairn_client::{GetOptions, SortOrder, SortTarget};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiResult;
use crate::state::AppState;

/// A registration older than this is lost.
pub const LOST_AFTER: u64 = 30;

/// A gateway's registration, as `cairn gateway` writes it.
#[derive(Debug, Deserialize)]
pub struct Registration {
    pub id: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub start_time: u64,
    #[serde(default)]
    pub config_revision: i64,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub updated_at: u64,
}

/// The newest change under `prefix/`: the highest mod_revision of its keys.
async fn newest_mod_revision(state: &AppState, prefix: &str) -> ApiResult<(i64, i64)> {
    let opts = GetOptions {
        limit: 1,
        keys_only: true,
        sort: Some((SortOrder::Descend, SortTarget::Mod)),
        ..GetOptions::prefix()
    };
    let r = state.store.client.get(prefix, opts).await?;
    let store_rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
    Ok((
        r.kvs.first().map(|kv| kv.mod_revision).unwrap_or(0),
        store_rev,
    ))
}

/// The state of one registration at `now` (Unix seconds).
pub fn status(g: &Registration, target: i64, now: u64) -> &'static str {
    if now.saturating_sub(g.updated_at) > LOST_AFTER {
        "lost"
    } else if g.config_revision < target {
        "lagging"
    } else {
        "healthy"
    }
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let s = &state.settings;
    let (data_rev, store_rev) = newest_mod_revision(&state, &format!("{}/", s.prefix)).await?;
    let (audit_rev, _) = newest_mod_revision(&state, &crate::audit::time_prefix(&state)).await?;
    let target = data_rev.max(audit_rev);
    let now = crate::clock::now_secs();
    let dir = format!("{}/gateways/", s.cairn_prefix);
    let mut rows = Vec::new();
    for kv in state.store.list(&dir).await? {
        let Ok(g) = serde_json::from_slice::<Registration>(&kv.value) else {
            continue;
        };
        rows.push(json!({
            "id": g.id,
            "hostname": g.hostname,
            "address": g.address,
            "version": g.version,
            "start_time": g.start_time,
            "config_revision": g.config_revision,
            "last_error": g.last_error,
            "updated_at": g.updated_at,
            "status": status(&g, target, now),
        }));
    }
    let mut body = json!({
        "target_revision": target,
        "store_revision": store_rev,
        "total": rows.len(),
        "list": rows,
    });
    if let Some(want) = q.get("revision").and_then(|r| r.parse::<i64>().ok()) {
        let live = |r: &&Value| r["status"] != "lost";
        let rows = body["list"].as_array().cloned().unwrap_or_default();
        body["applied"] = json!({
            "revision": want,
            "gateways": rows.iter().filter(live).count(),
            "done": rows.iter().filter(live).filter(|r| r["config_revision"].as_i64() >= Some(want)).count(),
        });
    }
    Ok(Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rules() {
        let g = Registration {
            id: "g".into(),
            hostname: String::new(),
            address: String::new(),
            version: String::new(),
            start_time: 0,
            config_revision: 10,
            last_error: None,
            updated_at: 1000,
        };
        assert_eq!(status(&g, 10, 1005), "healthy");
        assert_eq!(status(&g, 11, 1005), "lagging");
        assert_eq!(status(&g, 10, 1031), "lost");
    }
}
