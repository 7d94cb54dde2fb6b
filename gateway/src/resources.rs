//! The APISIX resources the gateway reads, parsed from the JSON the store
//! holds. Parsing is lenient where APISIX's schema has defaults and strict
//! where a value could not be served (a bad route is logged and the previous
//! good one kept by `sync`). Field names and defaults are APISIX's
//! (`apisix/schema_def.lua`).

use serde::Deserialize;
use serde_json::{Map, Value};

/// An APISIX id: a string or an integer in the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Id(pub String);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Id(s)),
            Value::Number(n) => Ok(Id(n.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "id must be a string or an integer, got {other}"
            ))),
        }
    }
}

/// `timeout: {connect, send, read}` in seconds (APISIX defaults: 60 each,
/// nginx's proxy_*_timeout).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub struct Timeout {
    #[serde(default = "sixty")]
    pub connect: f64,
    #[serde(default = "sixty")]
    pub send: f64,
    #[serde(default = "sixty")]
    pub read: f64,
}

fn sixty() -> f64 {
    60.0
}

impl Default for Timeout {
    fn default() -> Self {
        Timeout {
            connect: 60.0,
            send: 60.0,
            read: 60.0,
        }
    }
}

fn one() -> i64 {
    1
}

/// A route (`<prefix>/routes/<id>`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Route {
    pub uri: Option<String>,
    pub uris: Option<Vec<String>>,
    pub host: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub remote_addr: Option<String>,
    pub remote_addrs: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub priority: i64,
    pub vars: Option<Value>,
    #[serde(default)]
    pub plugins: Map<String, Value>,
    pub plugin_config_id: Option<Id>,
    pub upstream: Option<Upstream>,
    pub upstream_id: Option<Id>,
    pub service_id: Option<Id>,
    #[serde(default = "one")]
    pub status: i64,
    pub timeout: Option<Timeout>,
    pub filter_func: Option<String>,
    pub script: Option<String>,
}

impl Route {
    /// The URIs the route is reached at (`uris` or `uri`).
    pub fn paths(&self) -> Vec<String> {
        match (&self.uris, &self.uri) {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => vec![u.clone()],
            (None, None) => Vec::new(),
        }
    }

    /// The first of [`Self::paths`] (the `matched_uri` metric label), without
    /// copying them.
    pub fn first_path(&self) -> &str {
        match (&self.uris, &self.uri) {
            (Some(u), _) => u.first().map_or("", String::as_str),
            (None, Some(u)) => u,
            (None, None) => "",
        }
    }

    /// Its own hosts (`hosts` or `host`), before any service's.
    pub fn own_hosts(&self) -> Option<Vec<String>> {
        match (&self.hosts, &self.host) {
            (Some(h), _) => Some(h.clone()),
            (None, Some(h)) => Some(vec![h.clone()]),
            (None, None) => None,
        }
    }

    /// Checks what APISIX's schema would refuse and the gateway could not serve.
    pub fn check(&self) -> Result<(), String> {
        if self.uri.is_some() == self.uris.is_some() {
            return Err("exactly one of uri and uris is required".into());
        }
        if self.paths().iter().any(|p| p.is_empty()) {
            return Err("an empty uri".into());
        }
        if self.filter_func.is_some() || self.script.is_some() {
            return Err("filter_func and script (Lua) are not supported by cairn gateway".into());
        }
        if let Some(m) = &self.methods {
            for m in m {
                if !METHODS.contains(&m.as_str()) {
                    return Err(format!("unknown method {m}"));
                }
            }
        }
        if let Some(u) = &self.upstream {
            u.check()?;
        }
        Ok(())
    }
}

/// The methods APISIX's schema allows on a route.
pub const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

/// A service (`<prefix>/services/<id>`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Service {
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub plugins: Map<String, Value>,
    pub upstream: Option<Upstream>,
    pub upstream_id: Option<Id>,
}

impl Service {
    pub fn check(&self) -> Result<(), String> {
        match &self.upstream {
            Some(u) => u.check(),
            None => Ok(()),
        }
    }
}

/// Resources that only carry plugins: plugin configs, global rules,
/// consumer groups.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct PluginHolder {
    #[serde(default)]
    pub plugins: Map<String, Value>,
}

/// A consumer (`<prefix>/consumers/<username>`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Consumer {
    pub username: String,
    #[serde(default)]
    pub plugins: Map<String, Value>,
    pub group_id: Option<Id>,
}

/// An upstream node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub priority: i64,
}

impl Node {
    /// `host:port` (IPv6 in brackets), the address connections go to.
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An upstream (`<prefix>/upstreams/<id>` or embedded in a route/service).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Upstream {
    #[serde(rename = "type", default = "roundrobin")]
    pub kind: String,
    #[serde(default, deserialize_with = "nodes")]
    pub nodes: Vec<Node>,
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry_timeout: f64,
    pub timeout: Option<Timeout>,
    #[serde(default = "http_scheme")]
    pub scheme: String,
    #[serde(default = "pass")]
    pub pass_host: String,
    pub upstream_host: Option<String>,
    #[serde(default = "vars")]
    pub hash_on: String,
    pub key: Option<String>,
    pub checks: Option<Value>,
    pub service_name: Option<String>,
}

fn roundrobin() -> String {
    "roundrobin".into()
}
fn http_scheme() -> String {
    "http".into()
}
fn pass() -> String {
    "pass".into()
}
fn vars() -> String {
    "vars".into()
}

impl Upstream {
    pub fn check(&self) -> Result<(), String> {
        match self.kind.as_str() {
            "roundrobin" | "chash" | "least_conn" | "ewma" => {}
            k => return Err(format!("upstream type {k} is not supported")),
        }
        match self.scheme.as_str() {
            "http" | "https" => {}
            s => {
                return Err(format!(
                    "upstream scheme {s} is not supported by cairn gateway"
                ))
            }
        }
        match self.pass_host.as_str() {
            "pass" | "node" => {}
            "rewrite" if self.upstream_host.is_some() => {}
            "rewrite" => return Err("pass_host rewrite needs upstream_host".into()),
            p => return Err(format!("unknown pass_host {p}")),
        }
        if self.kind == "chash" {
            match self.hash_on.as_str() {
                "vars" | "header" | "cookie" | "consumer" | "vars_combinations" => {}
                h => return Err(format!("unknown hash_on {h}")),
            }
            if self.hash_on != "consumer" && self.key.is_none() {
                return Err("chash needs key".into());
            }
        }
        if self.service_name.is_some() && self.nodes.is_empty() {
            return Err(
                "service discovery (service_name) is not supported by cairn gateway".into(),
            );
        }
        Ok(())
    }
}

/// `nodes` as `{"host:port": weight}` or `[{"host", "port", "weight", "priority"}]`.
fn nodes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Node>, D::Error> {
    use serde::de::Error;
    let v = Value::deserialize(d)?;
    let mut out = Vec::new();
    match v {
        Value::Object(m) => {
            for (addr, w) in m {
                let (host, port) = split_host_port(&addr).map_err(D::Error::custom)?;
                let weight = w.as_u64().ok_or_else(|| {
                    D::Error::custom(format!("weight of {addr} must be an integer"))
                })?;
                out.push(Node {
                    host,
                    port,
                    weight: weight.min(u32::MAX as u64) as u32,
                    priority: 0,
                });
            }
            // A JSON object has no order; sort so every gateway balances alike.
            out.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        }
        Value::Array(a) => {
            for n in a {
                let host = n["host"]
                    .as_str()
                    .ok_or_else(|| D::Error::custom("node without host"))?
                    .to_string();
                let port = match n.get("port") {
                    Some(p) => p
                        .as_u64()
                        .filter(|p| *p > 0 && *p < 65536)
                        .ok_or_else(|| D::Error::custom("node port must be 1-65535"))?
                        as u16,
                    None => 0,
                };
                out.push(Node {
                    host,
                    port,
                    weight: n["weight"].as_u64().unwrap_or(1).min(u32::MAX as u64) as u32,
                    priority: n["priority"].as_i64().unwrap_or(0),
                });
            }
        }
        Value::Null => {}
        other => {
            return Err(D::Error::custom(format!(
                "nodes must be an object or array, got {other}"
            )))
        }
    }
    Ok(out)
}

/// `host:port`, `[v6]:port`, or a bare host (port 0: the scheme's default).
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad node address {s}"))?;
        let port = match p.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port in {s}"))?,
            None => 0,
        };
        return Ok((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((
            h.to_string(),
            p.parse().map_err(|_| format!("bad port in {s}"))?,
        )),
        _ => Ok((s.to_string(), 0)),
    }
}

/// An SSL object (`<prefix>/ssls/<id>`).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Ssl {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub sni: Option<String>,
    pub snis: Option<Vec<String>>,
    #[serde(default = "one")]
    pub status: i64,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

impl Ssl {
    pub fn snis(&self) -> Vec<String> {
        match (&self.snis, &self.sni) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_both_shapes() {
        let u: Upstream =
            serde_json::from_str(r#"{"nodes":{"127.0.0.1:80":2,"[::1]:81":1}}"#).unwrap();
        assert_eq!(u.kind, "roundrobin");
        assert_eq!(u.nodes.len(), 2);
        assert_eq!(u.nodes[0].addr(), "127.0.0.1:80");
        assert_eq!(u.nodes[1].addr(), "[::1]:81");
        let u: Upstream = serde_json::from_str(
            r#"{"type":"chash","key":"remote_addr","nodes":[{"host":"a","port":1,"weight":3,"priority":-1}]}"#,
        )
        .unwrap();
        assert_eq!(u.nodes[0].priority, -1);
        assert!(u.check().is_ok());
        let bad: Upstream = serde_json::from_str(r#"{"scheme":"grpc","nodes":{}}"#).unwrap();
        assert!(bad.check().is_err());
    }

    #[test]
    fn route_ids_and_checks() {
        let r: Route = serde_json::from_str(r#"{"id":1,"uri":"/a","upstream_id":2}"#).unwrap();
        assert_eq!(r.upstream_id.unwrap().0, "2");
        assert_eq!(r.status, 1);
        let both: Route = serde_json::from_str(r#"{"uri":"/a","uris":["/b"]}"#).unwrap();
        assert!(both.check().is_err());
    }
}
