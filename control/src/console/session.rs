//! Console sessions: a cookie `cairn_session=v1.<payload hex>.<HMAC-SHA256 hex>`
//! signed with the secret every instance shares (config or store), so any
//! instance accepts a session another one issued. Also the per-instance
//! login rate limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::{ct_eq, hex, unhex};
use crate::config::Role;
use crate::AppState;

pub const COOKIE: &str = "cairn_session";
/// A session lasts this long; logging in again renews it.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);

pub struct Session {
    pub name: String,
    pub role: Role,
}

fn mac(secret: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(payload);
    m.finalize().into_bytes().to_vec()
}

/// The cookie value for `name` with `role`, valid until `LIFETIME` from now.
pub fn issue(secret: &[u8], name: &str, role: Role) -> String {
    let exp = crate::audit::now_ms() / 1000 + LIFETIME.as_secs();
    let role = crate::auth::role_name(role);
    let payload = format!("{name}|{role}|{exp}");
    format!(
        "v1.{}.{}",
        hex(payload.as_bytes()),
        hex(&mac(secret, payload.as_bytes()))
    )
}

/// The session a cookie value stands for, if its signature holds and it has
/// not expired.
pub fn verify(secret: &[u8], value: &str) -> Option<Session> {
    let mut parts = value.split('.');
    let (Some("v1"), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let payload = unhex(p)?;
    if !ct_eq(&unhex(sig)?, &mac(secret, &payload)) {
        return None;
    }
    let payload = String::from_utf8(payload).ok()?;
    let mut f = payload.split('|');
    let (name, role, exp) = (f.next()?, f.next()?, f.next()?.parse::<u64>().ok()?);
    if exp < crate::audit::now_ms() / 1000 {
        return None;
    }
    let role = match role {
        "admin" => Role::Admin,
        "viewer" => Role::Viewer,
        _ => return None,
    };
    Some(Session {
        name: name.to_string(),
        role,
    })
}

/// The session of a request's cookie.
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

/// At most `MAX_ATTEMPTS` logins per client address per `WINDOW`, counted
/// on this instance (argon2 is deliberately slow; this also bounds guessing).
pub struct RateLimiter {
    attempts: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

const MAX_ATTEMPTS: usize = 10;
const WINDOW: Duration = Duration::from_secs(60);

impl RateLimiter {
    pub fn new() -> Self {
        RateLimiter {
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Records an attempt; false if the address is over its budget.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        // Forget idle addresses so the map cannot grow without bound.
        map.retain(|_, v| v.last().is_some_and(|t| now.duration_since(*t) < WINDOW));
        let v = map.entry(ip).or_default();
        v.retain(|t| now.duration_since(*t) < WINDOW);
        if v.len() >= MAX_ATTEMPTS {
            return false;
        }
        v.push(now);
        true
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_only_with_the_secret() {
        let c = issue(b"s1", "console:alice", Role::Viewer);
        let s = verify(b"s1", &c).unwrap();
        assert_eq!((s.name.as_str(), s.role), ("console:alice", Role::Viewer));
        assert!(verify(b"s2", &c).is_none());
        let forged = c.replacen("76696577", "61646d69", 1);
        assert!(verify(b"s1", &forged).is_none());
        assert!(verify(b"s1", "v1.zz.zz").is_none());
    }

    #[test]
    fn rate_limit_per_address() {
        let r = RateLimiter::new();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..MAX_ATTEMPTS {
            assert!(r.allow(a));
        }
        assert!(!r.allow(a));
        assert!(r.allow(b));
    }
}
