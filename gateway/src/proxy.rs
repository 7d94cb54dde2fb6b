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
use hyper::Response;

use crate::h1;
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

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

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

/// Names the client's head may list in `Connection` (hop-by-hop too);
/// mostly none, so nothing is allocated.
fn connection_listed(h: &HeaderMap) -> Vec<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The client's headers that go upstream: all but hop-by-hop ones, Host
/// and Content-Length (written per attempt) and the two the gateway
/// replaces.
fn passed<'a>(
    h: &'a HeaderMap,
    listed: &'a [String],
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    h.iter().filter(move |(n, _)| {
        !(h1::hop_by_hop(n.as_str())
            || *n == header::HOST
            || *n == header::CONTENT_LENGTH
            || *n == X_FORWARDED_FOR
            || *n == X_REAL_IP
            || listed.iter().any(|l| l == n.as_str()))
    })
}

/// Writes the request head for one attempt: the request line, Host, the
/// client's headers that go on (see [`passed`]), then what APISIX's nginx
/// adds: `X-Forwarded-For` (the client's list with its address appended),
/// `X-Real-IP`, and `X-Forwarded-Proto`/`-Host`/`-Port` unless the client
/// sent them. Written straight into the buffer: nothing is allocated.
fn write_head(
    out: &mut Vec<u8>,
    ctx: &Ctx<'_>,
    target: &str,
    host: Option<&HeaderValue>,
    listed: &[String],
    content_length: Option<usize>,
) {
    let h = &ctx.parts.headers;
    let mut w = h1::HeadWriter::new(out, &ctx.parts.method, target);
    if let Some(host) = host {
        w.header(b"host", host.as_bytes());
    }
    for (n, v) in passed(h, listed) {
        w.header(n.as_str().as_bytes(), v.as_bytes());
    }
    let remote = ctx.peer.remote.ip();
    w.header_with(b"x-forwarded-for", |o| {
        // Several X-Forwarded-For lines are joined, as nginx's
        // $proxy_add_x_forwarded_for does.
        for prev in h.get_all(&X_FORWARDED_FOR) {
            o.extend_from_slice(prev.as_bytes());
            o.extend_from_slice(b", ");
        }
        vars::write_ip(o, remote);
    });
    w.header_with(b"x-real-ip", |o| vars::write_ip(o, remote));
    if !h.contains_key(&X_FORWARDED_PROTO) {
        let proto = if ctx.peer.tls { "https" } else { "http" };
        w.header(b"x-forwarded-proto", proto.as_bytes());
    }
    if !h.contains_key(&X_FORWARDED_HOST) {
        // The Host header's name part (or the URI's): no CR or LF.
        w.header(b"x-forwarded-host", ctx.host.as_bytes());
    }
    if !h.contains_key(&X_FORWARDED_PORT) {
        w.header_with(b"x-forwarded-port", |o| {
            h1::write_u64(o, ctx.peer.local.port().into())
        });
    }
    w.finish(content_length);
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
    let listed = connection_listed(&ctx.parts.headers);
    // A body, or a head that framed one (even empty), or a method that
    // expects one: the length goes up (nginx sends `Content-Length: 0` for
    // an empty POST).
    let framed = ctx.parts.headers.contains_key(header::CONTENT_LENGTH)
        || ctx.parts.headers.contains_key(header::TRANSFER_ENCODING)
        || matches!(ctx.parts.method.as_str(), "POST" | "PUT" | "PATCH");
    let content_length = (framed || !body.is_empty()).then_some(body.len());
    let mut head = Vec::with_capacity(512);
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
        let (pq, target) = match (&path_q, up.target(i)) {
            (Ok(pq), Ok(t)) => (pq, t),
            (Err(e), _) | (_, Err(e)) => {
                return Err(Failure::Error(format!("bad upstream uri: {e}")))
            }
        };
        let host = upstream_host(ctx, up, i);
        write_head(
            &mut head,
            ctx,
            pq.as_str(),
            host.as_ref(),
            &listed,
            content_length,
        );
        let guard = up.enter(i);
        let send = up
            .pool()
            .send(i, target, &ctx.parts.method, &mut head, &body);
        let res = tokio::time::timeout(wait, send).await;
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
        let may_resend = never_sent || h1::idempotent(&ctx.parts.method);
        let in_budget = budget.is_none_or(|b| started.elapsed() < b);
        if left == 0 || !may_resend || !in_budget {
            return Err(f);
        }
        left -= 1;
    }
}
