//! What a handler knows of the request ([`Ctx`]: the caller, the query, the
//! `If-Match` revision) and how the body and the conditional headers are
//! read. The bottom of `admin`: every operation takes a [`Ctx`], so it lives
//! apart from the routing in `mod.rs`, which imports the operations.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The query parameters.
pub type Q = HashMap<String, String>;

/// Query parameters and headers a handler needs.
pub struct Ctx<'a> {
    pub state: &'a AppState,
    pub caller: &'a Caller,
    pub query: &'a Q,
    /// `If-Match: <modifiedIndex>`: the revision the caller's edit is based on.
    pub if_match: Option<i64>,
}

/// `If-Match: <modifiedIndex>`; `If-None-Match: *` (create only, never
/// overwrite) is `If-Match: 0`, the revision of a key that does not exist.
pub fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
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

/// The JSON body of a write; an empty or malformed one is a 400.
pub fn parse_body(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::invalid("empty request body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}
