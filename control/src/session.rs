//! Console sessions: a cookie `cairn_session=v2.<payload hex>.<HMAC-SHA256 hex>`
//! signed with the secret every instance shares (config or store), so any
//! instance accepts a session another one issued.
//!
//! The payload is `name|role|expiry|nonce|binding`. The binding is a hash
//! prefix of what the session was opened with (the API key, or the user's
//! password hash), so every request re-checks the session against the
//! current config: a removed or demoted user, a changed password or a
//! rotated API key ends it at once. Logout revokes the nonce in the store
//! (`<cairn_prefix>/control/revoked/<nonce>`, under a lease that ends with
//! the session), which every instance checks.
//!
//! Its own module, not the console's: `console` issues sessions and `auth`
//! checks them, so both import it and it imports neither.

use std::time::Duration;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::clock::now_secs;
use crate::config::Role;
use crate::crypto::{ct_eq, hex, random_token, sha256, unhex};
use crate::error::ApiResult;
use crate::state::AppState;

pub const COOKIE: &str = "cairn_session";
/// A session lasts this long; logging in again renews it.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    pub role: Role,
    /// Unix seconds.
    pub expires: u64,
    pub nonce: String,
    /// Hash prefix of the credential the session was opened with.
    pub binding: String,
}

fn mac(secret: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(payload);
    m.finalize().into_bytes().to_vec()
}

/// The binding of a credential: 8 bytes of its SHA-256, hex.
pub fn binding_of(credential: &[u8]) -> String {
    hex(&sha256(credential)[..8])
}

/// The cookie value for `name` with `role`, bound to `binding`, valid until
/// `LIFETIME` from now.
pub fn issue(secret: &[u8], name: &str, role: Role, binding: &str) -> String {
    let exp = now_secs() + LIFETIME.as_secs();
    let role = role.name();
    let nonce = &random_token()[..24];
    let payload = format!("{name}|{role}|{exp}|{nonce}|{binding}");
    format!(
        "v2.{}.{}",
        hex(payload.as_bytes()),
        hex(&mac(secret, payload.as_bytes()))
    )
}

/// The session a cookie value stands for, if its signature holds and it has
/// not expired (the config and revocation checks are [`check`]'s).
pub fn verify(secret: &[u8], value: &str) -> Option<Session> {
    let mut parts = value.split('.');
    let (Some("v2"), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let payload = unhex(p)?;
    if !ct_eq(&unhex(sig)?, &mac(secret, &payload)) {
        return None;
    }
    let payload = String::from_utf8(payload).ok()?;
    let f: Vec<&str> = payload.split('|').collect();
    let [name, role, exp, nonce, binding] = f.as_slice() else {
        return None;
    };
    let expires = exp.parse::<u64>().ok()?;
    if expires < now_secs() {
        return None;
    }
    let role = match *role {
        "admin" => Role::Admin,
        "viewer" => Role::Viewer,
        _ => return None,
    };
    Some(Session {
        name: name.to_string(),
        role,
        expires,
        nonce: nonce.to_string(),
        binding: binding.to_string(),
    })
}

/// The signed, unexpired session of a request's cookie, if any.
pub fn from_headers(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let secret = state.keys.session_secret()?;
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .find_map(|(_, v)| verify(&secret, v))
}

pub fn revoked_key(state: &AppState, nonce: &str) -> String {
    format!("{}/control/revoked/{nonce}", state.settings.cairn_prefix)
}

/// Whether the session still stands: its credential is still configured
/// with the same role, and it was not logged out on any instance.
pub async fn check(state: &AppState, s: &Session) -> ApiResult<bool> {
    let current = if let Some(user) = s.name.strip_prefix("console:") {
        state.settings.users.iter().any(|u| {
            u.username == user
                && u.role == s.role
                && binding_of(u.password_hash.as_bytes()) == s.binding
        })
    } else {
        state.keys.has_binding(&s.binding, s.role)
    };
    if !current {
        return Ok(false);
    }
    Ok(state
        .store
        .get(&revoked_key(state, &s.nonce))
        .await?
        .is_none())
}

/// Revokes a session on every instance until it would have expired.
pub async fn revoke(state: &AppState, s: &Session) -> ApiResult<()> {
    let now = now_secs();
    let ttl = s.expires.saturating_sub(now).max(1) as i64;
    let lease = state.store.lease(ttl).await?;
    state
        .store
        .client
        .put(
            revoked_key(state, &s.nonce),
            "1",
            cairn_client::PutOptions {
                lease,
                ..Default::default()
            },
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_only_with_the_secret() {
        let c = issue(b"s1", "console:alice", Role::Viewer, "b1");
        let s = verify(b"s1", &c).unwrap();
        assert_eq!(
            (s.name.as_str(), s.role, s.binding.as_str()),
            ("console:alice", Role::Viewer, "b1")
        );
        assert_eq!(s.nonce.len(), 24);
        assert!(verify(b"s2", &c).is_none());
        let forged = c.replacen("76696577", "61646d69", 1);
        assert!(verify(b"s1", &forged).is_none());
        assert!(verify(b"s1", "v2.zz.zz").is_none());
    }
}
