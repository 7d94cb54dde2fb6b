//! The web console: one page of plain HTML/CSS/JS compiled into the binary
//! (`include_str!`, no build step), which calls the Admin API with the
//! session cookie; login and logout (the cookies themselves: `session`).

use std::net::SocketAddr;
use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{too_many, Caller};
use crate::error::ApiError;
use crate::session;
use crate::state::AppState;

pub async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("app.js"),
    )
        .into_response()
}

pub async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct Login {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// Signing in with an API key instead (e.g. the one `cairn up` prints).
    #[serde(default)]
    api_key: String,
}

fn cookie(value: &str, max_age: u64) -> String {
    format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}",
        session::COOKIE
    )
}

/// `POST /login` `{"username","password"}` or `{"api_key"}`. Limited per
/// client address and per user name; at most two argon2 checks run at once
/// (a third waits up to 2 s, then is told to retry).
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<Login>,
) -> Response {
    let by_name = req.api_key.is_empty() && !state.user_limiter.allow(&req.username);
    if !state.login_limiter.allow(&peer.ip()) || by_name {
        return too_many("login attempts").into_response();
    }
    let Some(secret) = state.keys.session_secret() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session secret is not loaded yet (is the store reachable?)",
        )
        .into_response();
    };
    let who = if !req.api_key.is_empty() {
        state.keys.role_of(&req.api_key).map(|role| {
            (
                format!("api-key:{}", role.name()),
                role,
                session::binding_of(req.api_key.as_bytes()),
            )
        })
    } else {
        let user = state
            .settings
            .users
            .iter()
            .find(|u| u.username == req.username)
            .cloned();
        match user {
            None => None,
            Some(u) => {
                let permit = match tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    state.argon2.acquire(),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    _ => {
                        return ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "too many logins at once; try again",
                        )
                        .into_response()
                    }
                };
                let password = req.password.clone();
                let hash = u.password_hash.clone();
                // argon2 takes tens of milliseconds of CPU: off the async threads.
                let ok = tokio::task::spawn_blocking(move || {
                    PasswordHash::new(&hash)
                        .map(|h| {
                            Argon2::default()
                                .verify_password(password.as_bytes(), &h)
                                .is_ok()
                        })
                        .unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                drop(permit);
                ok.then(|| {
                    (
                        format!("console:{}", u.username),
                        u.role,
                        session::binding_of(u.password_hash.as_bytes()),
                    )
                })
            }
        }
    };
    match who {
        Some((name, role, binding)) => (
            [(
                header::SET_COOKIE,
                cookie(
                    &session::issue(&secret, &name, role, &binding),
                    session::LIFETIME.as_secs(),
                ),
            )],
            Json(json!({ "user": name, "role": role.name() })),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong user name, password or API key",
        )
        .into_response(),
    }
}

/// `POST /logout`: revokes the session on every instance (a key in the
/// store that lives as long as the session would have) and clears the cookie.
pub async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(s) = session::from_headers(&state, &headers) {
        if let Err(e) = session::revoke(&state, &s).await {
            return e.into_response();
        }
    }
    (
        [(header::SET_COOKIE, cookie("", 0))],
        Json(json!({ "ok": true })),
    )
        .into_response()
}

/// `GET /api/session`: who the console is signed in as.
pub async fn whoami(Extension(c): Extension<Caller>) -> Json<serde_json::Value> {
    Json(json!({ "user": c.name, "role": c.role.name() }))
}

/// Hash for the `users` section of the config file.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use rand_core::OsRng;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
}
