//! The API keys and shared secrets this instance accepts ([`Keys`]): the
//! configured admin and viewer keys (by hash), the generated admin key's
//! hash and the session-signing secret, both loaded by [`Keys::bootstrap`]
//! from the store, where the first instance creates them once with a
//! create-if-absent txn so every instance agrees.
//!
//! Below `state` (`AppState` holds a `Keys`) and below `auth` and
//! `session`, which read it: it imports neither.

use std::sync::RwLock;
use std::time::Duration;

use crate::config::{Role, Settings};
use crate::crypto::{ct_eq, hex, random_token, sha256, unhex};
use crate::store::Store;

/// Accepted keys. The generated admin key is only known by its hash (the
/// instance that generated it printed it and forgot it).
#[derive(Default)]
pub struct Keys {
    configured: Vec<([u8; 32], Role)>,
    stored_admin: RwLock<Option<[u8; 32]>>,
    session_secret: RwLock<Option<Vec<u8>>>,
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

    /// Creates or loads the shared secrets; retried until the store answers, so
    /// an instance started while the store is down comes up once it is back.
    pub async fn bootstrap(&self, s: &Settings, store: &Store) {
        if let Some(secret) = &s.session_secret {
            *self
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
                match store
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
                                *self.stored_admin.write().unwrap_or_else(|p| p.into_inner()) = Some(h)
                            }
                            None => tracing::error!("{admin_key_path} does not hold a SHA-256 hex digest; generated admin keys are not accepted"),
                        }
                        admin_done = true;
                    }
                    Err(e) => tracing::warn!("admin key bootstrap: {:?}", e.body),
                }
            }
            if !secret_done {
                match store
                    .create_if_absent(&secret_path, random_token().as_bytes())
                    .await
                {
                    Ok(v) => {
                        *self
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
}
