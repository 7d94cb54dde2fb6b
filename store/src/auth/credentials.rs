//! Passwords (bcrypt hashes, as etcd's, so users move between etcd and
//! Cairn with their snapshots; argon2 hashes written by earlier versions are
//! still verified) and signed tokens.
//!
//! A token is `<user, base64url>.<expiry, unix seconds>.<stamp>.<mac>`, where
//! `stamp` is derived from the user's stored password hash and `mac` is
//! HMAC-SHA256 over the rest with the cluster's auth secret. It is ASCII, so
//! it travels in gRPC metadata (`token`) and the gateway's `Authorization`.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::error::EtcdError;

/// etcd's default `--bcrypt-cost`.
const BCRYPT_COST: u32 = 10;

/// Hashes a password for storage: bcrypt at etcd's default cost, the form
/// etcd keeps in its `authUsers` bucket.
pub fn hash_password(password: &str) -> Result<String, EtcdError> {
    bcrypt::hash(password, BCRYPT_COST)
        .map_err(|e| EtcdError::Internal(format!("hashing password: {e}")))
}

/// Whether `password` matches a stored hash (bcrypt, or the argon2 PHC
/// string earlier versions wrote); a malformed hash matches nothing.
pub fn verify_password(password: &str, stored: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(stored) else {
        return false;
    };
    if s.starts_with("$2") {
        return bcrypt::verify(password, s).unwrap_or(false);
    }
    let Ok(h) = PasswordHash::new(s) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &h)
        .is_ok()
}

/// A fresh random secret for signing tokens.
pub fn new_secret() -> Vec<u8> {
    let mut s = vec![0u8; 32];
    OsRng.fill_bytes(&mut s);
    s
}

/// Short fingerprint of a stored password hash: a token carries it, so a
/// password change (a new hash) invalidates earlier tokens.
fn stamp(stored_hash: &[u8]) -> String {
    let d = Sha256::digest(stored_hash);
    B64.encode(&d[..9])
}

fn mac(secret: &[u8], body: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key");
    m.update(body.as_bytes());
    m
}

/// Issues a token for `user` valid until `expiry` (unix seconds).
pub fn issue(secret: &[u8], user: &str, stored_hash: &[u8], expiry: u64) -> String {
    let body = format!("{}.{expiry}.{}", B64.encode(user), stamp(stored_hash));
    let sig = B64.encode(mac(secret, &body).finalize().into_bytes());
    format!("{body}.{sig}")
}

/// What a well-signed, unexpired token claims: its user and password stamp.
pub struct Claims {
    pub user: String,
    stamp: String,
}

impl Claims {
    /// Whether the token was issued for the user's current password.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        self.stamp == stamp(stored_hash)
    }
}

/// Checks a token's signature and expiry; `None` if it is not valid.
pub fn verify(secret: &[u8], token: &str, now: u64) -> Option<Claims> {
    let (body, sig) = token.rsplit_once('.')?;
    // `verify_slice` compares in constant time.
    mac(secret, body)
        .verify_slice(&B64.decode(sig).ok()?)
        .ok()?;
    let mut parts = body.split('.');
    let user = String::from_utf8(B64.decode(parts.next()?).ok()?).ok()?;
    let expiry: u64 = parts.next()?.parse().ok()?;
    let stamp = parts.next()?.to_string();
    if parts.next().is_some() || expiry <= now {
        return None;
    }
    Some(Claims { user, stamp })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords() {
        let h = hash_password("s3cret").unwrap();
        assert!(verify_password("s3cret", h.as_bytes()));
        assert!(!verify_password("S3cret", h.as_bytes()));
        assert!(!verify_password("", b""));
        assert!(!verify_password("x", b"not a hash"));
        assert!(h.starts_with("$2b$10$"), "etcd's hash: bcrypt at cost 10");
        // Users created before the switch keep their argon2 hashes.
        use argon2::password_hash::{PasswordHasher, SaltString};
        let old = Argon2::default()
            .hash_password(b"s3cret", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify_password("s3cret", old.as_bytes()));
        assert!(!verify_password("other", old.as_bytes()));
    }

    #[test]
    fn tokens() {
        let secret = new_secret();
        let t = issue(&secret, "alice", b"hash1", 1000);
        let c = verify(&secret, &t, 999).expect("valid");
        assert_eq!(c.user, "alice");
        assert!(c.matches(b"hash1"));
        assert!(!c.matches(b"hash2"));
        assert!(verify(&secret, &t, 1000).is_none(), "expired");
        assert!(verify(&new_secret(), &t, 1).is_none(), "other secret");
        let forged = t.replacen(&B64.encode("alice"), &B64.encode("root"), 1);
        assert!(verify(&secret, &forged, 1).is_none(), "forged user");
        assert!(verify(&secret, "garbage", 1).is_none());
        assert!(verify(&secret, "", 1).is_none());
    }
}
