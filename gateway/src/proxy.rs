//! Sending a request to an upstream: node choice per attempt, the headers
//! APISIX's nginx sets (`Host` by `pass_host`, `X-Real-IP`,
//! `X-Forwarded-*`), timeouts, and retries as nginx's
//! `proxy_next_upstream error timeout`: another node after a failure, up to
//! `retries` times and within `retry_timeout`, but a request whose method is
//! not idempotent is re-sent only when it never reached the upstream (the
//! connection failed).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri};
use http_body_util::Full;
use hyper::Response;

use crate::health::Outcome;
use crate::plugins::Ctx;
use crate::pool::Pooled;
use crate::resources::Timeout;
use crate::upstream::{secs, UpstreamRt};
use crate::vars;

/// Why no upstream answer came.
#[derive(Debug)]
pub enum Failure {
    /// 504.
    Timeout(String),
    /// 502.
    Error(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Timeout(m) | Failure::Error(m) => m,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Failure::Timeout(_) => 504,
            Failure::Error(_) => 502,
        }
    }
}

/// Headers that belong to one connection, never forwarded. Constants, so
/// removing them neither parses nor lowercases a name per request (statics:
/// a `HeaderName` holds `Bytes`, not a plain constant).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names (comparisons of known names are cheap) finds
    // which are there; most heads carry none, an upstream's often only
    // `Connection: keep-alive`. Only those are removed (hashed lookups).
    let mut found = [false; 7];
    for k in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
            found[i] = true;
        }
    }
    if !found.contains(&true) {
        return;
    }
    // Names listed in Connection are hop-by-hop too.
    let listed: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (n, there) in HOP_BY_HOP.iter().zip(found) {
        if there {
            h.remove(n);
        }
    }
    for n in listed {
        h.remove(n.as_str());
    }
}

fn idempotent(m: &Method) -> bool {
    !matches!(m.as_str(), "POST" | "PATCH" | "LOCK")
}

/// The chash key of this request (`hash_on` + `key`).
fn hash_key(ctx: &Ctx<'_>, up: &UpstreamRt) -> Option<String> {
    if up.spec.kind != "chash" {
        return None;
    }
    let v = ctx.vars();
    let key = up.spec.key.as_deref().unwrap_or("");
    let out = match up.spec.hash_on.as_str() {
        "header" => vars::header(v.headers, key).map(|c| c.into_owned()),
        "cookie" => vars::cookie(v.headers, key),
        "consumer" => v.consumer.map(str::to_string),
        "vars_combinations" => Some(vars::expand(key, &v)),
        _ => vars::get(&v, key).map(|c| c.into_owned()),
    };
    // APISIX falls back to remote_addr when the key is empty.
    Some(
        out.filter(|s| !s.is_empty())
            .unwrap_or_else(|| v.remote.to_string()),
    )
}

/// The Host header sent upstream.
fn upstream_host(ctx: &Ctx<'_>, up: &UpstreamRt, node: usize) -> Option<HeaderValue> {
    if let Some(h) = &ctx.upstream_host {
        return HeaderValue::from_str(h).ok();
    }
    match up.spec.pass_host.as_str() {
        "node" => {
            let n = up.node(node);
            let default = if up.spec.scheme == "https" { 443 } else { 80 };
            let s = if n.port == 0 || n.port == default {
                n.host.clone()
            } else {
                n.addr()
            };
            HeaderValue::from_str(&s).ok()
        }
        "rewrite" => up
            .spec
            .upstream_host
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok()),
        _ => ctx.parts.headers.get(header::HOST).cloned().or_else(|| {
            ctx.parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        }),
    }
}

/// The request head sent upstream, without Host and URI.
fn upstream_headers(ctx: &Ctx<'_>) -> HeaderMap {
    let mut h = ctx.parts.headers.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::HOST);
    let remote = ctx.peer.remote.ip();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => HeaderValue::try_from(format!("{prev}, {remote}")).ok(),
        None => None,
    };
    let real_ip = HeaderValue::try_from(vars::ip_string(remote)).ok();
    if let Some(ip) = &real_ip {
        h.insert(X_FORWARDED_FOR.clone(), xff.unwrap_or_else(|| ip.clone()));
        h.insert(X_REAL_IP.clone(), ip.clone());
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if ctx.peer.tls { "https" } else { "http" }),
        );
    }
    if !h.contains_key(&X_FORWARDED_HOST) {
        if let Ok(v) = HeaderValue::from_str(&ctx.host) {
            h.insert(X_FORWARDED_HOST.clone(), v);
        }
    }
    if !h.contains_key(&X_FORWARDED_PORT) {
        h.insert(
            X_FORWARDED_PORT.clone(),
            HeaderValue::from(ctx.peer.local.port()),
        );
    }
    h
}

/// Forwards the request; the body is the client's, already read (so an
/// idempotent request can be sent again to another node).
/// `route_timeout` is the route's own `timeout`, which wins over the upstream's.
pub async fn forward(
    ctx: &mut Ctx<'_>,
    up: &Arc<UpstreamRt>,
    route_timeout: Option<Timeout>,
    body: Bytes,
) -> Result<Response<Pooled>, Failure> {
    if up.spec.nodes.is_empty() {
        return Err(Failure::Error(format!("{}: no nodes", up.key)));
    }
    let t = up.timeout(route_timeout);
    let wait = secs(t.send) + secs(t.read);
    // The path goes upstream as the client sent it (already parsed) unless
    // proxy-rewrite replaced it; scheme and authority are the node's, parsed
    // once when the upstream was read.
    let path_q: Result<PathAndQuery, String> = match &ctx.upstream_uri {
        Some(u) => PathAndQuery::try_from(u.as_str()).map_err(|e| e.to_string()),
        None => Ok(ctx
            .parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))),
    };
    let mut headers = upstream_headers(ctx);
    let key = hash_key(ctx, up);
    let started = Instant::now();
    let budget = (up.spec.retry_timeout > 0.0).then(|| secs(up.spec.retry_timeout));
    let mut tried: Vec<usize> = Vec::new();
    let mut left = up.retries();
    loop {
        let i = match up.pick(&tried, key.as_deref()) {
            Some(i) => i,
            None if tried.is_empty() => {
                return Err(Failure::Error(format!("{}: no usable node", up.key)))
            }
            // Every node was tried: nginx tries the list again while retries last.
            None => {
                tried.clear();
                match up.pick(&tried, key.as_deref()) {
                    Some(i) => i,
                    None => return Err(Failure::Error(format!("{}: no usable node", up.key))),
                }
            }
        };
        tried.push(i);
        let addr = up.addr(i).clone();
        ctx.node = Some(addr.clone());
        // HTTP/1.1 to the node: the request line carries the origin form
        // (`/path?query`), the node's address is where the pool connects.
        let (uri, target) = match (&path_q, up.target(i)) {
            (Ok(pq), Ok(t)) => (Uri::from(pq.clone()), t),
            (Err(e), _) | (_, Err(e)) => {
                return Err(Failure::Error(format!("bad upstream uri: {e}")))
            }
        };
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = ctx.parts.method.clone();
        *req.uri_mut() = uri;
        // The last possible attempt takes the head; earlier ones copy it.
        *req.headers_mut() = if left == 0 {
            std::mem::take(&mut headers)
        } else {
            headers.clone()
        };
        if let Some(h) = upstream_host(ctx, up, i) {
            req.headers_mut().insert(header::HOST, h);
        }
        let guard = up.enter(i);
        let res = tokio::time::timeout(wait, up.pool().send(i, target, req)).await;
        let failure = match res {
            Ok(Ok(resp)) => {
                up.observed(i, Outcome::Status(resp.status().as_u16()));
                if let Some(g) = guard {
                    ctx.guards.push(Box::new(g));
                }
                return Ok(resp);
            }
            Ok(Err(e)) => {
                let msg = format!("{addr}: {e}");
                let f = if e.timed_out() {
                    Failure::Timeout(msg)
                } else {
                    Failure::Error(msg)
                };
                (f, e.never_sent())
            }
            Err(_) => (
                Failure::Timeout(format!("{addr}: no response in {wait:?}")),
                false,
            ),
        };
        drop(guard);
        let (f, never_sent) = failure;
        up.observed(
            i,
            match f {
                Failure::Timeout(_) => Outcome::Timeout,
                Failure::Error(_) => Outcome::TcpFailure,
            },
        );
        tracing::warn!(upstream = %up.key, error = %f.message(), "upstream attempt failed");
        let may_resend = never_sent || idempotent(&ctx.parts.method);
        let in_budget = budget.is_none_or(|b| started.elapsed() < b);
        if left == 0 || !may_resend || !in_budget {
            return Err(f);
        }
        left -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_methods() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
        assert!(!idempotent(&Method::POST));
        assert!(idempotent(&Method::PUT));
    }
}
