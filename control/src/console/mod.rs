//! The web console: one page of plain HTML/CSS/JS compiled into the binary
//! (`include_str!`, no build step), which calls the Admin API with the
//! session cookie; login and logout.

pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{role_name, Caller};
use crate::error::ApiError;
use crate::AppState;

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

/// `POST /login` `{"username","password"}` or `{"api_key"}`.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<Login>,
) -> Response {
    if !state.login_limiter.allow(peer.ip()) {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many login attempts from this address; wait a minute",
        )
        .into_response();
    }
    let Some(secret) = state.keys.session_secret() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session secret is not loaded yet (is the store reachable?)",
        )
        .into_response();
    };
    let who = if !req.api_key.is_empty() {
        state
            .keys
            .role_of(&req.api_key)
            .map(|role| (format!("api-key:{}", role_name(role)), role))
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
                ok.then(|| (format!("console:{}", u.username), u.role))
            }
        }
    };
    match who {
        Some((name, role)) => (
            [(
                header::SET_COOKIE,
                cookie(
                    &session::issue(&secret, &name, role),
                    session::LIFETIME.as_secs(),
                ),
            )],
            Json(json!({ "user": name, "role": role_name(role) })),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong user name, password or API key",
        )
        .into_response(),
    }
}

/// `POST /logout`: clears the cookie. Sessions are stateless (signed), so
/// this ends the session in this browser; the cookie expires on its own.
pub async fn logout() -> Response {
    (
        [(header::SET_COOKIE, cookie("", 0))],
        Json(json!({ "ok": true })),
    )
        .into_response()
}

/// `GET /api/session`: who the console is signed in as.
pub async fn whoami(Extension(c): Extension<Caller>) -> Json<serde_json::Value> {
    Json(json!({ "user": c.name, "role": role_name(c.role) }))
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
