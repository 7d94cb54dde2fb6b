//! [`ApiError`]: every failure the HTTP layer reports, with APISIX's bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An HTTP error answer. The body is APISIX's `{"error_msg": …}` (plus a
/// `description` where APISIX has one), so tools written against APISIX's
/// Admin API read our errors unchanged.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({ "error_msg": msg.into() }),
        }
    }

    /// 400 `invalid configuration: …`, the form of every schema failure.
    pub fn invalid(msg: impl AsRef<str>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("invalid configuration: {}", msg.as_ref()),
        )
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }

    /// APISIX answers a missing key with `{"message":"Key not found"}`.
    pub fn not_found() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            body: json!({ "message": "Key not found" }),
        }
    }

    /// Someone else changed the key between our read and our write.
    pub fn conflict(key: &str, expected: i64, found: i64) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            body: json!({
                "error_msg": format!("value changed before overwritten: {key} is at revision {found}, expected {expected}"),
                "modifiedIndex": found,
            }),
        }
    }

    pub fn unauthorized(description: &str) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            body: json!({ "error_msg": "failed to check token", "description": description }),
        }
    }

    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, msg)
    }

    pub fn method_not_allowed(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, msg)
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }
}

/// Any store failure is a 503, as APISIX answers when etcd fails: the store,
/// not the request, is at fault. The exception is a request the store
/// refuses as too large: 413, since the request is at fault. An outcome-unknown write says so, so the
/// caller reads before retrying.
impl From<cairn_client::Error> for ApiError {
    fn from(e: cairn_client::Error) -> Self {
        if e.message().contains("request is too large") {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the change is larger than the store accepts in one request ({}); make the resource smaller", e.message()),
            );
        }
        let msg = if e.is_outcome_unknown() {
            format!("store write outcome unknown (read the key before retrying): {e}")
        } else {
            format!("store unavailable: {e}")
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
