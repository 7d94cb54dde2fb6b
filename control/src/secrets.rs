//! Secret fields on their way between the API and the store.
//!
//! - Read from the store: [`decode`] parses a value and decrypts its secret
//!   fields (APISIX's `data_encryption`, `cairn_apisix`), so handlers work on
//!   clear text in memory only.
//! - Written to the store: [`encode`] encrypts them again.
//! - Answered to anyone (GET, list, history, audit, the answer to a write):
//!   [`redact`] replaces each secret string with a placeholder that carries a
//!   fingerprint, `<secret fp:0123456789ab>`: enough to see that a secret is
//!   set and whether it changed, not enough to recover it. The fingerprint is
//!   an HMAC keyed from the shared session secret, so a viewer cannot test
//!   guesses of a weak password offline.
//! - A write that sends a placeholder back (a GET edited and PUT again) keeps
//!   the stored secret if the fingerprint matches ([`restore`]); otherwise
//!   it is refused, so a placeholder is never stored as a secret.

use std::collections::HashMap;

use axum::http::StatusCode;
use cairn_apisix::{decrypt_secrets, encrypt_secrets, for_each_secret, Kind};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::crypto::hex;
use crate::error::{ApiError, ApiResult};
use crate::resources::Resource;
use crate::state::AppState;

const PLACEHOLDER_START: &str = "<secret fp:";
const PLACEHOLDER_END: &str = ">";

/// The secret kind of resource `res` with id `id`.
pub fn kind<'a>(res: &Resource, id: &'a str) -> Kind<'a> {
    Kind::of(res.name, id)
}

/// A stored value as JSON with its secrets in clear text. A value that is
/// not JSON (written by someone else) is a string rather than hidden; a
/// field that does not decrypt is kept as stored (APISIX takes it for clear
/// text too).
pub fn decode(state: &AppState, res: &Resource, id: &str, bytes: &[u8]) -> Value {
    let mut v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => return Value::String(String::from_utf8_lossy(bytes).into()),
    };
    for u in decrypt_secrets(&state.settings.keyring, kind(res, id), &mut v) {
        tracing::debug!(
            "{}/{id}: secret field {} kept as stored ({})",
            res.name,
            u.path,
            u.error
        );
    }
    v
}

/// The bytes to store: secrets encrypted as APISIX's Admin API would.
pub fn encode(state: &AppState, res: &Resource, id: &str, value: &Value) -> ApiResult<Vec<u8>> {
    let mut v = value.clone();
    encrypt_secrets(&state.settings.keyring, kind(res, id), &mut v);
    serde_json::to_vec(&v).map_err(|e| ApiError::internal(e.to_string()))
}

fn fingerprint_key(state: &AppState) -> ApiResult<Vec<u8>> {
    let secret = state.keys.session_secret().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the shared secrets are not loaded yet (is the store reachable?); try again",
        )
    })?;
    Ok(fingerprint_key_from(&secret))
}

/// The fingerprint key derived from the shared session secret: every
/// instance computes the same fingerprints.
pub fn fingerprint_key_from(session_secret: &[u8]) -> Vec<u8> {
    let mut m =
        <Hmac<Sha256> as Mac>::new_from_slice(session_secret).expect("HMAC takes any key length");
    m.update(b"cairn secret fingerprint v1");
    m.finalize().into_bytes().to_vec()
}

/// 12 hex digits of HMAC-SHA256(key, secret).
pub fn fingerprint(key: &[u8], secret: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(secret.as_bytes());
    hex(&m.finalize().into_bytes()[..6])
}

/// The fingerprint a placeholder carries, if `s` is one.
fn placeholder_fp(s: &str) -> Option<&str> {
    s.strip_prefix(PLACEHOLDER_START)?
        .strip_suffix(PLACEHOLDER_END)
}

fn placeholder(fp: &str) -> String {
    format!("{PLACEHOLDER_START}{fp}{PLACEHOLDER_END}")
}

/// Replaces every secret string of `v` with its placeholder (placeholders
/// already there stay as they are).
pub fn redact(state: &AppState, res: &Resource, id: &str, v: &mut Value) -> ApiResult<()> {
    let key = fingerprint_key(state)?;
    redact_with(&key, kind(res, id), v);
    Ok(())
}

fn redact_with(key: &[u8], kind: Kind<'_>, v: &mut Value) {
    for_each_secret(kind, v, &mut |s| {
        if placeholder_fp(s.value).is_none() {
            *s.value = placeholder(&fingerprint(key, s.value));
        }
    });
}

/// Puts the stored secrets back where `new` holds their placeholders;
/// refuses a placeholder that matches no stored secret at its path.
pub fn restore(
    state: &AppState,
    res: &Resource,
    id: &str,
    new: &mut Value,
    prev: Option<&Value>,
) -> ApiResult<()> {
    let key = fingerprint_key(state)?;
    restore_with(&key, kind(res, id), new, prev).map_err(ApiError::invalid)
}

fn restore_with(
    key: &[u8],
    kind: Kind<'_>,
    new: &mut Value,
    prev: Option<&Value>,
) -> Result<(), String> {
    let mut stored: HashMap<String, String> = HashMap::new();
    if let Some(p) = prev {
        let mut p = p.clone();
        for_each_secret(kind, &mut p, &mut |s| {
            stored.insert(s.path, s.value.clone());
        });
    }
    let mut err = None;
    for_each_secret(kind, new, &mut |s| {
        let Some(fp) = placeholder_fp(s.value) else {
            return;
        };
        match stored.get(&s.path) {
            Some(old) if fingerprint(key, old) == fp => *s.value = old.clone(),
            _ => {
                err.get_or_insert_with(|| {
                    format!(
                        "property \"{}\" holds a secret placeholder that matches no stored secret; send the secret itself",
                        s.path
                    )
                });
            }
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redact_then_restore_round_trips() {
        let key = b"k".to_vec();
        let kind = Kind::ConsumerPlugins;
        let stored = json!({"username": "j", "plugins": {"key-auth": {"key": "s3cret"}}});
        let mut shown = stored.clone();
        redact_with(&key, kind, &mut shown);
        let p = shown["plugins"]["key-auth"]["key"].as_str().unwrap();
        assert!(p.starts_with("<secret fp:") && !p.contains("s3cret"), "{p}");
        // Redacting twice changes nothing.
        let mut twice = shown.clone();
        redact_with(&key, kind, &mut twice);
        assert_eq!(twice, shown);
        let mut back = shown.clone();
        restore_with(&key, kind, &mut back, Some(&stored)).unwrap();
        assert_eq!(back, stored);
        // Against another secret, or with none stored: refused.
        let other = json!({"username": "j", "plugins": {"key-auth": {"key": "other"}}});
        let e = restore_with(&key, kind, &mut shown.clone(), Some(&other)).unwrap_err();
        assert!(e.contains("plugins.key-auth.key"), "{e}");
        assert!(restore_with(&key, kind, &mut shown.clone(), None).is_err());
        // A new clear-text secret passes through.
        let mut fresh = other.clone();
        restore_with(&key, kind, &mut fresh, Some(&stored)).unwrap();
        assert_eq!(fresh, other);
    }
}
