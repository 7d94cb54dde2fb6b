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
use http::{Method, Request, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::Response;

use crate::health::Outcome;
use crate::request::Ctx;
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

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Names listed in Connection are hop-by-hop too.
    let listed: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for n in HOP_BY_HOP {
        h.remove(*n);
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
        "vars_combinations" => Some(expand(key, &v)),
        _ => vars::get(&v, key).map(|c| c.into_owned()),
    };
    // APISIX falls back to remote_addr when the key is empty.
    Some(
        out.filter(|s| !s.is_empty())
            .unwrap_or_else(|| v.remote.to_string()),
    )
}

/// `$host-$arg_a` → the variables' values.
pub fn expand(tpl: &str, v: &vars::ReqVars<'_>) -> String {
    let mut out = String::new();
    let mut rest = tpl;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if let Some(val) = vars::get(v, &tail[..end]) {
            out.push_str(&val);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
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
    let remote = ctx.peer.remote.ip().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {remote}"),
        None => remote.clone(),
    };
    let set = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(k), v);
        }
    };
    set(&mut h, "x-forwarded-for", &xff);
    set(&mut h, "x-real-ip", &remote);
    if !h.contains_key("x-forwarded-proto") {
        set(
            &mut h,
            "x-forwarded-proto",
            if ctx.peer.tls { "https" } else { "http" },
        );
    }
    if !h.contains_key("x-forwarded-host") {
        set(&mut h, "x-forwarded-host", &ctx.host);
    }
    if !h.contains_key("x-forwarded-port") {
        set(
            &mut h,
            "x-forwarded-port",
            &ctx.peer.local.port().to_string(),
        );
    }
    h
}

/// Forwards the request; the body is the client's, already read (so an
/// idempotent request can be sent again to another node).
pub async fn forward(
    ctx: &mut Ctx<'_>,
    up: &Arc<UpstreamRt>,
    body: Bytes,
) -> Result<Response<Incoming>, Failure> {
    if up.spec.nodes.is_empty() {
        return Err(Failure::Error(format!("{}: no nodes", up.key)));
    }
    let t = up.timeout(ctx.route.route.route.timeout);
    let wait = secs(t.send) + secs(t.read);
    let path_q = ctx.upstream_uri.clone().unwrap_or_else(|| {
        ctx.parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into())
    });
    let headers = upstream_headers(ctx);
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
        let node = up.node(i);
        let addr = node.addr();
        ctx.node = Some(addr.clone());
        let uri: Uri = match format!("{}://{}{}", up.spec.scheme, addr, path_q).parse() {
            Ok(u) => u,
            Err(e) => return Err(Failure::Error(format!("bad upstream uri: {e}"))),
        };
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = ctx.parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers.clone();
        if let Some(h) = upstream_host(ctx, up, i) {
            req.headers_mut().insert(header::HOST, h);
        }
        let guard = up.enter(i);
        let res = tokio::time::timeout(wait, up.client().request(req)).await;
        let failure = match res {
            Ok(Ok(resp)) => {
                up.observed(i, Outcome::Status(resp.status().as_u16()));
                ctx.guards.push(Box::new(guard));
                return Ok(resp);
            }
            Ok(Err(e)) => {
                let connect = e.is_connect();
                let msg = format!("{addr}: {e}");
                let timed_out = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
                let f = if timed_out {
                    Failure::Timeout(msg)
                } else {
                    Failure::Error(msg)
                };
                (f, connect)
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
