//! Who is calling: API keys (`X-API-KEY` header or `api_key` query, as
//! APISIX) and console session cookies, each with a role. Also the start-up
//! bootstrap of the shared secrets every instance must agree on: the
//! generated admin key's hash and the session-signing secret, both created
//! once in the store with a create-if-absent txn.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::config::Role;
use crate::error::ApiError;
use crate::{console::session, AppState};

/// The authenticated caller, put into request extensions by [`require`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// For the audit log: `api-key:admin`, `api-key:viewer`, `console:alice`.
    pub name: String,
    pub role: Role,
}

/// Accepted keys. The generated admin key is only known by its hash (the
/// instance that generated it printed it and forgot it).
#[derive(Default)]
pub struct Keys {
    configured: Vec<([u8; 32], Role)>,
    stored_admin: RwLock<Option<[u8; 32]>>,
    session_secret: RwLock<Option<Vec<u8>>>,
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// Equal without an early exit, so timing does not leak a matching prefix.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes, hex: generated API keys and session secrets.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex(&b)
}

impl Keys {
    pub fn new(admin_key: Option<&str>, viewer_keys: &[String]) -> Keys {
        // API keys are long random tokens, so one SHA-256 is enough to keep
        // them out of memory dumps and the store; argon2 is for passwords.
        let mut configured: Vec<([u8; 32], Role)> = viewer_keys
            .iter()
            .map(|k| (sha256(k.as_bytes()), Role::Viewer))
            .collect();
        if let Some(k) = admin_key {
            configured.push((sha256(k.as_bytes()), Role::Admin));
        }
        Keys {
            configured,
            ..Default::default()
        }
    }

    /// The role of an API key, if it is one we accept.
    pub fn role_of(&self, key: &str) -> Option<Role> {
        let h = sha256(key.as_bytes());
        let mut found = None;
        for (k, role) in &self.configured {
            if ct_eq(k, &h) {
                found = Some(*role);
            }
        }
        if found.is_none() {
            let stored = self.stored_admin.read().unwrap_or_else(|p| p.into_inner());
            if stored.is_some_and(|s| ct_eq(&s, &h)) {
                found = Some(Role::Admin);
            }
        }
        found
    }

    /// Whether a key with this binding (`session::binding_of`) and role is
    /// still accepted: a session opened with a rotated key ends.
    pub fn has_binding(&self, binding: &str, role: Role) -> bool {
        let matches = |h: &[u8; 32]| hex(&h[..8]) == binding;
        self.configured
            .iter()
            .any(|(h, r)| *r == role && matches(h))
            || (role == Role::Admin
                && self
                    .stored_admin
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .is_some_and(matches))
    }

    /// Waits (at most `limit`) for the shared session secret, which the
    /// start-up bootstrap loads from the store: requests that arrive in the
    /// first moments then work instead of failing.
    pub async fn wait_for_secret(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.session_secret().is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn session_secret(&self) -> Option<Vec<u8>> {
        self.session_secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Creates or loads the shared secrets; retried until the store answers, so
/// an instance started while the store is down comes up once it is back.
pub async fn bootstrap(state: Arc<AppState>) {
    let s = &state.settings;
    if let Some(secret) = &s.session_secret {
        *state
            .keys
            .session_secret
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(secret.as_bytes().to_vec());
    }
    let admin_key_path = format!("{}/control/admin_key_sha256", s.cairn_prefix);
    let secret_path = format!("{}/control/session_secret", s.cairn_prefix);
    let mut admin_done = s.admin_key.is_some();
    let mut secret_done = s.session_secret.is_some();
    let mut delay = Duration::from_millis(200);
    while !(admin_done && secret_done) {
        if !admin_done {
            let key = random_token();
            let ours = hex(&sha256(key.as_bytes()));
            match state
                .store
                .create_if_absent(&admin_key_path, ours.as_bytes())
                .await
            {
                Ok(stored) => {
                    let stored = String::from_utf8_lossy(&stored).to_string();
                    if stored == ours {
                        // Printed once, on stdout, by the instance that made it.
                        println!(
                            "cairn control: generated admin API key (shown once, keep it): {key}"
                        );
                    } else {
                        tracing::info!(
                            "admin key: using the hash another instance stored at {admin_key_path}"
                        );
                    }
                    match unhex(&stored).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                        Some(h) => {
                            *state.keys.stored_admin.write().unwrap_or_else(|p| p.into_inner()) = Some(h)
                        }
                        None => tracing::error!("{admin_key_path} does not hold a SHA-256 hex digest; generated admin keys are not accepted"),
                    }
                    admin_done = true;
                }
                Err(e) => tracing::warn!("admin key bootstrap: {:?}", e.body),
            }
        }
        if !secret_done {
            match state
                .store
                .create_if_absent(&secret_path, random_token().as_bytes())
                .await
            {
                Ok(v) => {
                    *state
                        .keys
                        .session_secret
                        .write()
                        .unwrap_or_else(|p| p.into_inner()) = Some(v);
                    secret_done = true;
                }
                Err(e) => tracing::warn!("session secret bootstrap: {:?}", e.body),
            }
        }
        if !(admin_done && secret_done) {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
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
                name: format!("api-key:{}", role_name(role)),
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

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    }
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
