//! Plugins: each configured plugin becomes an instance (its conf parsed and
//! checked once, its counters kept) when the resource holding it is read from
//! the store. A request runs the instances in APISIX's priority order, phase
//! by phase: `rewrite`, `access`, then after the upstream answered
//! `response` (header and body filters), then `log`.
//!
//! A plugin the gateway does not implement is reported (log + metric
//! `cairn_gateway_unsupported_plugins`). Plugins that restrict access (auth,
//! restrictions, limits) fail closed: the route answers 503 rather than being
//! served without them. Any other is skipped, as an APISIX gateway skips a
//! plugin it does not have enabled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use hyper::Response;
use serde_json::{Map, Value};

use crate::listener::Body;
pub use ctx::Ctx;

/// What a phase decided.
pub enum Flow {
    Continue,
    /// Answer now with this response; later phases and the upstream are skipped.
    Respond(Response<Body>),
    /// Wait this long, then go on (limit-req's delay).
    Delay(Duration),
}

/// One configured plugin.
pub trait Plugin: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn priority(&self) -> i32;
    fn rewrite(&self, _ctx: &mut Ctx<'_>) -> Flow {
        Flow::Continue
    }
    fn access(&self, _ctx: &mut Ctx<'_>) -> Flow {
        Flow::Continue
    }
    /// Header and body filter of the response: may change headers and status,
    /// and may return a replacement body.
    fn response(&self, _ctx: &mut Ctx<'_>, _resp: &mut http::response::Parts) -> Option<Bytes> {
        None
    }
    /// Whether `response` needs the whole upstream body (it is then buffered).
    fn needs_body(&self) -> bool {
        false
    }
    fn log(&self, _ctx: &Ctx<'_>, _status: u16) {}
    /// On a consumer: the credential an auth plugin looks consumers up by
    /// (key-auth's `key`, basic-auth's `username`, jwt-auth's `key`) and
    /// what it then checks.
    fn credential(&self) -> Option<auth::Credential> {
        None
    }
}

/// A plugin instance under its configured name.
pub type Named = (Arc<str>, Arc<dyn Plugin>);

/// The plugins of one resource (or a merged set), highest priority first.
#[derive(Clone, Default)]
pub struct PluginSet {
    pub list: Arc<Vec<Named>>,
    /// Names configured but not implemented that restrict access: requests
    /// through this set are refused with 503 (fail closed).
    pub blocked: Arc<Vec<String>>,
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|(n, _)| n))
            .finish()
    }
}

/// Access-restricting plugins: refusing the route is safer than serving it
/// without them.
fn restricts_access(name: &str) -> bool {
    name.ends_with("-auth")
        || name.ends_with("-restriction")
        || name.starts_with("limit-")
        || name.starts_with("authz-")
        || matches!(
            name,
            "uri-blocker"
                | "opa"
                | "openid-connect"
                | "csrf"
                | "cas-auth"
                | "wolf-rbac"
                | "ldap-auth"
        )
}

/// Parses one plugin conf. `Ok(None)`: not implemented (reported by the caller).
pub fn build(name: &str, conf: &Value, scope: Scope) -> Result<Option<Arc<dyn Plugin>>, String> {
    // `_meta.disable: true` turns a configured plugin off (APISIX 3.x).
    if conf
        .get("_meta")
        .and_then(|m| m.get("disable"))
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Ok(None);
    }
    registry::build(name, conf, scope)
}

/// Whether a conf is read as a route's (any holder) or a consumer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Route,
    Consumer,
}

/// Builds a set from a `plugins` object; unknown plugins are reported in
/// `unsupported`. An invalid conf fails the whole resource (kept as before).
pub fn build_set(
    plugins: &Map<String, Value>,
    scope: Scope,
    unsupported: &mut Vec<String>,
) -> Result<PluginSet, String> {
    let mut list: Vec<Named> = Vec::new();
    let mut blocked = Vec::new();
    for (name, conf) in plugins {
        match build(name, conf, scope) {
            Ok(Some(p)) => list.push((Arc::from(name.as_str()), p)),
            Ok(None) => {
                let disabled =
                    conf.pointer("/_meta/disable").and_then(Value::as_bool) == Some(true);
                if !disabled {
                    unsupported.push(name.clone());
                    if scope == Scope::Route && restricts_access(name) {
                        blocked.push(name.clone());
                    }
                }
            }
            Err(e) => return Err(format!("plugin {name}: {e}")),
        }
    }
    sort(&mut list);
    Ok(PluginSet {
        list: Arc::new(list),
        blocked: Arc::new(blocked),
    })
}

fn sort(list: &mut [Named]) {
    list.sort_by(|a, b| b.1.priority().cmp(&a.1.priority()).then(a.0.cmp(&b.0)));
}

impl PluginSet {
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.blocked.is_empty()
    }

    /// `over` wins for plugins both have (route over service, consumer over route).
    pub fn merge(base: &PluginSet, over: &PluginSet) -> PluginSet {
        if base.is_empty() {
            return over.clone();
        }
        if over.is_empty() {
            return base.clone();
        }
        let mut list: Vec<_> = over.list.iter().cloned().collect();
        for (n, p) in base.list.iter() {
            if !list.iter().any(|(m, _)| m == n) && !over.blocked.iter().any(|b| **b == **n) {
                list.push((n.clone(), p.clone()));
            }
        }
        sort(&mut list);
        let mut blocked: Vec<String> = over.blocked.iter().cloned().collect();
        for b in base.blocked.iter() {
            if !blocked.contains(b) && !over.list.iter().any(|(m, _)| &**m == b) {
                blocked.push(b.clone());
            }
        }
        PluginSet {
            list: Arc::new(list),
            blocked: Arc::new(blocked),
        }
    }

    /// [`PluginSet::merge`], remembered per serving thread for the pair:
    /// sets never change once built, and authenticated requests merge the
    /// same route and consumer sets again and again (was: lists built and
    /// sorted on every such request).
    pub fn merge_memo(base: &PluginSet, over: &PluginSet) -> PluginSet {
        memo(Derived::Merge, base, over, || PluginSet::merge(base, over))
    }

    /// A consumer's plugins joining a route's: the merged set (the
    /// consumer's winning) and the consumer's plugins the route lacks (they
    /// still run their rewrite phase), both remembered as `merge_memo`.
    pub fn merge_consumer(route: &PluginSet, consumer: &PluginSet) -> (PluginSet, PluginSet) {
        let only_new = memo(Derived::OnlyNew, route, consumer, || PluginSet {
            list: Arc::new(
                consumer
                    .list
                    .iter()
                    .filter(|(n, _)| route.get(n).is_none())
                    .cloned()
                    .collect(),
            ),
            blocked: Arc::default(),
        });
        (PluginSet::merge_memo(route, consumer), only_new)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.list.iter().find(|(n, _)| &**n == name).map(|(_, p)| p)
    }
}

/// What [`memo`] remembers of a pair of sets.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Derived {
    Merge,
    OnlyNew,
}

/// Bounds the memo (many consumers × routes): cleared when full.
const MAX_MEMO: usize = 1024;

type MemoKey = (Derived, [usize; 4]);

thread_local! {
    /// Keyed by the sets' addresses; an entry holds the sets themselves, so
    /// an address is not reused while it is a key.
    static MEMO: std::cell::RefCell<HashMap<MemoKey, ([PluginSet; 2], PluginSet)>> =
        std::cell::RefCell::new(HashMap::new());
}

/// `f()`, derived from sets `a` and `b` only, computed once per pair and thread.
fn memo(what: Derived, a: &PluginSet, b: &PluginSet, f: impl FnOnce() -> PluginSet) -> PluginSet {
    let addr = |s: &PluginSet| {
        [
            Arc::as_ptr(&s.list) as *const () as usize,
            Arc::as_ptr(&s.blocked) as *const () as usize,
        ]
    };
    let ([w, x], [y, z]) = (addr(a), addr(b));
    let key = (what, [w, x, y, z]);
    if let Some(hit) = MEMO.with(|m| m.borrow().get(&key).map(|(_, out)| out.clone())) {
        return hit;
    }
    let out = f();
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= MAX_MEMO {
            m.clear();
        }
        m.insert(key, ([a.clone(), b.clone()], out.clone()));
    });
    out
}

/// A JSON body with APISIX's shape: `{"message": ...}` for plugin refusals.
pub fn message(status: u16, msg: &str) -> Response<Body> {
    json_response(status, &serde_json::json!({ "message": msg }))
}

pub use crate::pages::json_response;

/// A plain (or empty) body with a status.
pub fn plain(status: u16, body: Option<&str>) -> Response<Body> {
    let mut r = Response::new(crate::listener::full(body.unwrap_or("").to_string()));
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Header name/value from config strings, with a readable error.
pub fn header_pair(k: &str, v: &str) -> Result<(HeaderName, HeaderValue), String> {
    Ok((
        HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("bad header name {k}"))?,
        HeaderValue::from_str(v).map_err(|_| format!("bad value of header {k}"))?,
    ))
}

/// Reads a plugin conf into its typed form with a readable error.
pub fn conf<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

pub mod auth;
mod auth_plugins;
mod cors;
mod ctx;
pub mod jwt;
mod limits;
mod registry;
mod rewrite;
mod small;
pub use registry::SUPPORTED;
