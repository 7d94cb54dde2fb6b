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
//! Also the rate limits of logins and wrong API keys ([`RateLimiter`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::{ct_eq, hex, random_token, sha256, unhex};
use crate::config::Role;
use crate::error::ApiResult;
use crate::AppState;

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
    let exp = crate::audit::now_ms() / 1000 + LIFETIME.as_secs();
    let role = crate::auth::role_name(role);
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
    if expires < crate::audit::now_ms() / 1000 {
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
    let now = crate::audit::now_ms() / 1000;
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

/// At most `max` events per key per `window`, counted on this instance. The
/// map holds at most `capacity` keys; when it is full of active keys, a new
/// key is refused (an attacker spraying addresses or names cannot grow it).
pub struct RateLimiter<K> {
    max: usize,
    window: Duration,
    capacity: usize,
    events: Mutex<HashMap<K, Vec<Instant>>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(max: usize, window: Duration, capacity: usize) -> Self {
        RateLimiter {
            max,
            window,
            capacity,
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Records an event; false if the key is over its budget.
    pub fn allow(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut map = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.capacity {
            // Forget idle keys; if none is idle, refuse the newcomer.
            let w = self.window;
            map.retain(|_, v| v.last().is_some_and(|t| now.duration_since(*t) < w));
            if map.len() >= self.capacity {
                return false;
            }
        }
        let v = map.entry(key.clone()).or_default();
        v.retain(|t| now.duration_since(*t) < self.window);
        if v.len() >= self.max {
            return false;
        }
        v.push(now);
        true
    }

    /// Whether the key is over its budget, without recording anything.
    pub fn blocked(&self, key: &K) -> bool {
        let now = Instant::now();
        let map = self.events.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|v| {
            v.iter()
                .filter(|t| now.duration_since(**t) < self.window)
                .count()
                >= self.max
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

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

    #[test]
    fn rate_limit_per_key_and_bounded() {
        let r = RateLimiter::new(3, Duration::from_secs(60), 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert!(r.allow(&a));
        }
        assert!(!r.allow(&a));
        assert!(r.blocked(&a));
        assert!(r.allow(&b));
        // Full of active keys: a third is refused rather than stored.
        assert!(!r.allow(&c));
    }
}
