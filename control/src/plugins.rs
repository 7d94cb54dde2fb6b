//! The plugin catalog endpoints APISIX tools call:
//! `GET /apisix/admin/plugins/list[?subsystem=stream]`,
//! `GET /apisix/admin/plugins/<name>` and
//! `GET /apisix/admin/schema/plugins/<name>[?schema_type=consumer|metadata]`
//! (the plugin's JSON Schema; `{"type":"object"}` for a plugin whose
//! config Cairn checks by name only).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::validate::{self, KNOWN_PLUGINS, STREAM_PLUGINS};

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let builtin = if q.get("subsystem").map(String::as_str) == Some("stream") {
        STREAM_PLUGINS
    } else {
        KNOWN_PLUGINS
    };
    let mut names: Vec<&str> = builtin.to_vec();
    names.extend(state.settings.extra_plugins.iter().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    Json(json!(names))
}

pub async fn schema(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Json<Value>> {
    let known = KNOWN_PLUGINS.contains(&name.as_str())
        || STREAM_PLUGINS.contains(&name.as_str())
        || state.settings.extra_plugins.contains(&name);
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("plugin not found: {name}"),
        ));
    }
    let consumer = q.get("schema_type").map(String::as_str) == Some("consumer");
    Ok(Json(
        validate::plugin_schema(&name, consumer).unwrap_or_else(|| json!({"type": "object"})),
    ))
}
