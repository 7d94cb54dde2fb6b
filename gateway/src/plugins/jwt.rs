//! jwt-auth (priority 2510): a JWT from the `Authorization` header (with or
//! without `Bearer `), the `jwt` query argument or the `jwt` cookie; its
//! `key` claim names the consumer credential; HS256/HS512 with the
//! consumer's `secret` (`base64_secret` decodes it), RS256 with its
//! `public_key`; `exp`/`nbf` checked with `lifetime_grace_period`.

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::Value;

use super::auth::{Credential, Secret};
use super::auth_plugins::{consumer_for, drop_query_arg};
use super::Ctx;
use super::{conf, message, Flow, Plugin, Scope};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConf {
    #[serde(default = "authorization")]
    header: String,
    #[serde(default = "jwt")]
    query: String,
    #[serde(default = "jwt")]
    cookie: String,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    _meta: Option<Value>,
}

fn authorization() -> String {
    "authorization".into()
}
fn jwt() -> String {
    "jwt".into()
}

#[derive(Deserialize)]
struct ConsumerConf {
    key: String,
    secret: Option<String>,
    public_key: Option<String>,
    #[serde(default = "hs256")]
    algorithm: String,
    #[serde(default)]
    base64_secret: bool,
    #[serde(default)]
    lifetime_grace_period: u64,
}

fn hs256() -> String {
    "HS256".into()
}

/// What verifies a consumer's tokens.
pub struct JwtKey {
    alg: Alg,
    grace: u64,
}

enum Alg {
    Hs256(Vec<u8>),
    Hs512(Vec<u8>),
    Rs256(Vec<u8>),
}

pub struct JwtAuth {
    route: Option<RouteConf>,
    cred: Option<(String, Arc<JwtKey>)>,
}

/// PEM → DER (the base64 between the armor lines).
fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(b64).map_err(|e| format!("public_key: {e}"))
}

pub fn build(v: &Value, scope: Scope) -> Result<Arc<dyn Plugin>, String> {
    if scope == Scope::Route {
        return Ok(Arc::new(JwtAuth {
            route: Some(conf(v)?),
            cred: None,
        }));
    }
    let c: ConsumerConf = conf(v)?;
    let secret = || -> Result<Vec<u8>, String> {
        let s = c
            .secret
            .clone()
            .ok_or("secret is required for HS algorithms")?;
        if c.base64_secret {
            STANDARD
                .decode(s)
                .map_err(|e| format!("base64_secret: {e}"))
        } else {
            Ok(s.into_bytes())
        }
    };
    let alg = match c.algorithm.as_str() {
        "HS256" => Alg::Hs256(secret()?),
        "HS512" => Alg::Hs512(secret()?),
        "RS256" => {
            let pem = c
                .public_key
                .as_deref()
                .ok_or("public_key is required for RS256")?;
            let der = pem_to_der(pem)?;
            // A SubjectPublicKeyInfo: ring wants the inner RSAPublicKey.
            Alg::Rs256(spki_rsa_key(&der).unwrap_or(der))
        }
        a => return Err(format!("algorithm {a} is not supported by cairn gateway")),
    };
    Ok(Arc::new(JwtAuth {
        route: None,
        cred: Some((
            c.key,
            Arc::new(JwtKey {
                alg,
                grace: c.lifetime_grace_period,
            }),
        )),
    }))
}

/// The RSAPublicKey inside a SubjectPublicKeyInfo (DER): the BIT STRING's contents.
fn spki_rsa_key(der: &[u8]) -> Option<Vec<u8>> {
    // SEQUENCE { SEQUENCE { algorithm }, BIT STRING { 0x00, RSAPublicKey } }
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let l0 = *b.get(1)? as usize;
        let (len, hdr) = if l0 < 0x80 {
            (l0, 2)
        } else {
            let n = l0 & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let body = b.get(hdr..hdr + len)?;
        Some((tag, body, &b[hdr + len..]))
    }
    let (t, outer, _) = tlv(der)?;
    if t != 0x30 {
        return None;
    }
    let (t, _alg, rest) = tlv(outer)?;
    if t != 0x30 {
        return None;
    }
    let (t, bits, _) = tlv(rest)?;
    if t != 0x03 || bits.first() != Some(&0) {
        return None;
    }
    Some(bits[1..].to_vec())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtKey {
    /// Checks the signature and the time claims.
    fn verify(&self, signed: &str, sig: &[u8], header_alg: &str, claims: &Value) -> bool {
        let ok = match &self.alg {
            Alg::Hs256(k) if header_alg == "HS256" => {
                let mut m = Hmac::<sha2::Sha256>::new_from_slice(k).expect("any key length");
                m.update(signed.as_bytes());
                m.verify_slice(sig).is_ok()
            }
            Alg::Hs512(k) if header_alg == "HS512" => {
                let mut m = Hmac::<sha2::Sha512>::new_from_slice(k).expect("any key length");
                m.update(signed.as_bytes());
                m.verify_slice(sig).is_ok()
            }
            Alg::Rs256(k) if header_alg == "RS256" => ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                k,
            )
            .verify(signed.as_bytes(), sig)
            .is_ok(),
            _ => false,
        };
        if !ok {
            return false;
        }
        let t = now();
        if let Some(exp) = claims.get("exp").and_then(Value::as_f64) {
            if (t as f64) > exp + self.grace as f64 {
                return false;
            }
        }
        if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
            if (t as f64) + (self.grace as f64) < nbf {
                return false;
            }
        }
        true
    }
}

impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        "jwt-auth"
    }
    fn priority(&self) -> i32 {
        2510
    }
    fn credential(&self) -> Option<Credential> {
        self.cred.as_ref().map(|(k, key)| Credential {
            lookup: k.clone(),
            secret: Secret::Jwt(key.clone()),
        })
    }
    fn rewrite(&self, ctx: &mut Ctx<'_>) -> Flow {
        let Some(c) = &self.route else {
            return Flow::Continue;
        };
        let mut from = 0;
        let token = match crate::vars::header(&ctx.parts.headers, &c.header) {
            Some(h) => {
                let h = h.trim();
                Some(
                    h.strip_prefix("Bearer ")
                        .or_else(|| h.strip_prefix("bearer "))
                        .unwrap_or(h)
                        .to_string(),
                )
            }
            None => None,
        }
        .or_else(|| {
            from = 1;
            crate::vars::arg(ctx.parts.uri.query().unwrap_or(""), &c.query)
        })
        .or_else(|| {
            from = 2;
            crate::vars::cookie(&ctx.parts.headers, &c.cookie)
        });
        let Some(token) = token else {
            return Flow::Respond(message(401, "Missing JWT token in request"));
        };
        let parts: Vec<&str> = token.split('.').collect();
        let decoded = (parts.len() == 3)
            .then(|| {
                let h: Value =
                    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).ok()?).ok()?;
                let p: Value =
                    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).ok()?).ok()?;
                let s = URL_SAFE_NO_PAD
                    .decode(parts[2].trim_end_matches('='))
                    .ok()?;
                Some((h, p, s))
            })
            .flatten();
        let Some((header, claims, sig)) = decoded else {
            return Flow::Respond(message(401, "JWT token invalid"));
        };
        let Some(key) = claims.get("key").and_then(Value::as_str) else {
            return Flow::Respond(message(401, "missing user key in JWT token"));
        };
        let Some((consumer, secret)) = consumer_for(ctx, "jwt-auth", key) else {
            return Flow::Respond(message(401, "Invalid user key in JWT token"));
        };
        let signed_len = parts[0].len() + 1 + parts[1].len();
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let ok =
            matches!(&secret, Secret::Jwt(k) if k.verify(&token[..signed_len], &sig, alg, &claims));
        if !ok {
            return Flow::Respond(message(401, "failed to verify jwt"));
        }
        ctx.consumer = Some(consumer);
        if c.hide_credentials {
            match from {
                0 => {
                    ctx.parts.headers.remove(c.header.as_str());
                }
                1 => drop_query_arg(ctx, &c.query),
                _ => {}
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hs256_signature_and_expiry() {
        let key = JwtKey {
            alg: Alg::Hs256(b"secret".to_vec()),
            grace: 0,
        };
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(json!({"key":"k","exp": now() + 60}).to_string());
        let signed = format!("{h}.{p}");
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"secret").unwrap();
        m.update(signed.as_bytes());
        let sig = m.finalize().into_bytes();
        let claims = json!({"key":"k","exp": now() + 60});
        assert!(key.verify(&signed, &sig, "HS256", &claims));
        assert!(!key.verify(&signed, &sig, "RS256", &claims));
        assert!(!key.verify(&signed, b"bad", "HS256", &claims));
        assert!(!key.verify(&signed, &sig, "HS256", &json!({"exp": now() - 10})));
    }
}
