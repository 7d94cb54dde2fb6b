//! The auth plugins: key-auth, basic-auth, jwt-auth. On a route an instance
//! checks the request and attaches the consumer; on a consumer (or one of
//! its credentials) an instance holds the secret and names the credential
//! the route-side instance finds it by (see `auth::Index`).

use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::auth::{Credential, Secret};
use super::Ctx;
use super::{conf, message, Flow, Plugin, Scope};

/// Finds the consumer for `cred` of `plugin`; `None` if unknown.
pub(super) fn consumer_for(
    ctx: &Ctx<'_>,
    plugin: &str,
    cred: &str,
) -> Option<(Arc<super::auth::ConsumerRt>, Secret)> {
    let (user, c) = ctx.auth.find(plugin, cred)?;
    let consumer = ctx.consumers.get(user.as_str())?.clone();
    Some((consumer, c.secret.clone()))
}

/// Removes query argument `name` from the request URI (hide_credentials).
pub(super) fn drop_query_arg(ctx: &mut Ctx<'_>, name: &str) {
    let Some(q) = ctx.parts.uri.query() else {
        return;
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| p.split('=').next() != Some(name))
        .collect();
    let path = ctx.parts.uri.path().to_string();
    let pq = if kept.is_empty() {
        path
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut b = http::Uri::builder();
    if let Some(s) = ctx.parts.uri.scheme() {
        b = b.scheme(s.clone());
    }
    if let Some(a) = ctx.parts.uri.authority() {
        b = b.authority(a.clone());
    }
    if let Ok(u) = b.path_and_query(pq).build() {
        ctx.parts.uri = u;
    }
}

// ---- key-auth (priority 2500) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAuthRoute {
    #[serde(default = "apikey")]
    header: String,
    #[serde(default = "apikey")]
    query: String,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    _meta: Option<Value>,
}

fn apikey() -> String {
    "apikey".into()
}

#[derive(Deserialize)]
struct KeyAuthConsumer {
    key: String,
}

pub struct KeyAuth {
    route: Option<KeyAuthRoute>,
    key: Option<String>,
}

pub fn key_auth(v: &Value, scope: Scope) -> Result<Arc<dyn Plugin>, String> {
    Ok(Arc::new(match scope {
        Scope::Route => KeyAuth {
            route: Some(conf(v)?),
            key: None,
        },
        Scope::Consumer => KeyAuth {
            route: None,
            key: Some(conf::<KeyAuthConsumer>(v)?.key),
        },
    }))
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        "key-auth"
    }
    fn priority(&self) -> i32 {
        2500
    }
    fn credential(&self) -> Option<Credential> {
        self.key.clone().map(|k| Credential {
            lookup: k,
            secret: Secret::None,
        })
    }
    fn rewrite(&self, ctx: &mut Ctx<'_>) -> Flow {
        let Some(c) = &self.route else {
            return Flow::Continue;
        };
        // Borrowed from the head when it is there (no copy per request).
        let from_header = crate::vars::header(&ctx.parts.headers, &c.header);
        let (key, in_header) = match from_header {
            Some(k) => (k, true),
            None => match crate::vars::arg(ctx.parts.uri.query().unwrap_or(""), &c.query) {
                Some(k) => (std::borrow::Cow::Owned(k), false),
                None => return Flow::Respond(message(401, "Missing API key in request")),
            },
        };
        let Some((consumer, _)) = consumer_for(ctx, "key-auth", &key) else {
            return Flow::Respond(message(401, "Invalid API key in request"));
        };
        ctx.consumer = Some(consumer);
        if c.hide_credentials {
            if in_header {
                ctx.parts.headers.remove(c.header.as_str());
            } else {
                drop_query_arg(ctx, &c.query);
            }
        }
        Flow::Continue
    }
}

// ---- basic-auth (priority 2520) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicRoute {
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    _meta: Option<Value>,
}

#[derive(Deserialize)]
struct BasicConsumer {
    username: String,
    password: String,
}

pub struct BasicAuth {
    route: Option<BasicRoute>,
    cred: Option<BasicConsumer>,
}

pub fn basic_auth(v: &Value, scope: Scope) -> Result<Arc<dyn Plugin>, String> {
    Ok(Arc::new(match scope {
        Scope::Route => BasicAuth {
            route: Some(conf(v)?),
            cred: None,
        },
        Scope::Consumer => BasicAuth {
            route: None,
            cred: Some(conf(v)?),
        },
    }))
}

/// Constant-time equality for secrets.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        "basic-auth"
    }
    fn priority(&self) -> i32 {
        2520
    }
    fn credential(&self) -> Option<Credential> {
        self.cred.as_ref().map(|c| Credential {
            lookup: c.username.clone(),
            secret: Secret::Password(c.password.clone()),
        })
    }
    fn rewrite(&self, ctx: &mut Ctx<'_>) -> Flow {
        let Some(c) = &self.route else {
            return Flow::Continue;
        };
        let Some(h) = ctx.parts.headers.get(http::header::AUTHORIZATION) else {
            let mut r = message(401, "Missing authorization in request");
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm='.'"),
            );
            return Flow::Respond(r);
        };
        let decoded = h
            .to_str()
            .ok()
            .and_then(|s| {
                s.strip_prefix("Basic ")
                    .or_else(|| s.strip_prefix("basic "))
            })
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok());
        let Some((user, pass)) = decoded.as_deref().and_then(|s| s.split_once(':')) else {
            return Flow::Respond(message(401, "Invalid authorization in request"));
        };
        let Some((consumer, secret)) = consumer_for(ctx, "basic-auth", user) else {
            return Flow::Respond(message(401, "Invalid user authorization"));
        };
        let ok = matches!(&secret, Secret::Password(p) if same(p.as_bytes(), pass.as_bytes()));
        if !ok {
            return Flow::Respond(message(401, "Invalid user authorization"));
        }
        ctx.consumer = Some(consumer);
        if c.hide_credentials {
            ctx.parts.headers.remove(http::header::AUTHORIZATION);
        }
        Flow::Continue
    }
}
