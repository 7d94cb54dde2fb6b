//! Who is calling: API keys (`X-API-KEY` header or `api_key` query, as
//! APISIX, checked against [`crate::keys::Keys`]) and console session
//! cookies (`session`), each with a role; the middleware that
//! refuses the rest. It imports `session`, which imports nothing of this
//! module.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Role;
use crate::error::ApiError;
use crate::session;
use crate::state::AppState;

/// Kept at this path for the binary (`cairn up`, `cairn drill`).
pub use crate::crypto::random_token;

/// The authenticated caller, put into request extensions by [`require`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// For the audit log: `api-key:admin`, `api-key:viewer`, `console:alice`.
    pub name: String,
    pub role: Role,
}

/// Header a console page sends with every call. A cross-site form cannot
/// set it, so a session cookie alone never authorizes a write (CSRF).
pub const CONSOLE_HEADER: &str = "x-cairn-console";

/// Finds the caller of a request, or answers 401 as APISIX does. A wrong
/// API key counts against the client's address (`AppState::key_failures`).
pub async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    method: &Method,
    peer: Option<IpAddr>,
) -> Result<Caller, ApiError> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.get("api_key").cloned());
    if let Some(key) = key {
        return match state.keys.role_of(&key) {
            Some(role) => Ok(Caller {
                name: format!("api-key:{}", role.name()),
                role,
            }),
            // Past its budget, an address gets 429 for a wrong key. A right
            // key still works: a client behind the same load balancer, or a
            // flood of wrong keys, cannot lock an operator out.
            None => match peer {
                Some(ip) if !state.key_failures.allow(&ip) => Err(too_many("wrong API keys")),
                _ => Err(ApiError::unauthorized("wrong apikey")),
            },
        };
    }
    if let Some(sess) = session::from_headers(state, headers) {
        if !session::check(state, &sess).await? {
            return Err(ApiError::unauthorized(
                "session ended (logged out, or its user or key changed)",
            ));
        }
        if *method != Method::GET && !headers.contains_key(CONSOLE_HEADER) {
            return Err(ApiError::forbidden(format!(
                "a console session may only write with the {CONSOLE_HEADER} header"
            )));
        }
        return Ok(Caller {
            name: sess.name,
            role: sess.role,
        });
    }
    Err(ApiError::unauthorized("missing apikey"))
}

/// 429 with a message naming what was limited.
pub fn too_many(what: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        format!("too many {what} from this address or for this name; wait a minute"),
    )
}

/// Middleware for the admin API and the console's data calls: 401 without a
/// valid key or session, 403 for a viewer's write.
pub async fn require(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    mut req: Request,
    next: Next,
) -> Response {
    state.keys.wait_for_secret(Duration::from_secs(5)).await;
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let c = match caller(&state, req.headers(), &query, req.method(), peer).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if c.role == Role::Viewer && !read {
        return ApiError::forbidden("role viewer may only read (GET)").into_response();
    }
    req.extensions_mut().insert(c);
    next.run(req).await
}
