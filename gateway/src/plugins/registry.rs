//! Which plugin names the gateway implements, and their constructors.

use std::sync::Arc;

use serde_json::Value;

use super::{Plugin, Scope};

/// Builds `name` from `conf`; `Ok(None)` if not implemented.
pub fn build(name: &str, conf: &Value, scope: Scope) -> Result<Option<Arc<dyn Plugin>>, String> {
    // Consumers carry only the auth plugins' credentials (and plugins that
    // then run for the consumer's requests, read with the route schema).
    let p = match name {
        "key-auth" => super::auth_plugins::key_auth(conf, scope)?,
        "basic-auth" => super::auth_plugins::basic_auth(conf, scope)?,
        "jwt-auth" => super::jwt::build(conf, scope)?,
        "limit-count" => super::limits::limit_count(conf)?,
        "limit-req" => super::limits::limit_req(conf)?,
        "limit-conn" => super::limits::limit_conn(conf)?,
        "proxy-rewrite" => super::rewrite::proxy_rewrite(conf)?,
        "response-rewrite" => super::rewrite::response_rewrite(conf)?,
        "cors" => super::cors::build(conf)?,
        "ip-restriction" => super::small::ip_restriction(conf)?,
        "request-id" => super::small::request_id(conf)?,
        "prometheus" => super::small::prometheus(conf)?,
        _ => return Ok(None),
    };
    Ok(Some(p))
}

/// The implemented plugins, in APISIX priority order (README).
pub const SUPPORTED: &[&str] = &[
    "request-id",
    "cors",
    "ip-restriction",
    "basic-auth",
    "jwt-auth",
    "key-auth",
    "proxy-rewrite",
    "limit-conn",
    "limit-count",
    "limit-req",
    "response-rewrite",
    "prometheus",
];
