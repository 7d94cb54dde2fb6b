//! One request through the gateway: 503 until the first config is applied,
//! route matching (404 otherwise), global rules' then the route's plugins
//! (rewrite, consumer merge, access), the upstream call, the response
//! filters, the log phase and metrics.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::listener::{full, Body, Peer};
use crate::metrics::RequestLabels;
use crate::pages;
use crate::plugins::Ctx;
use crate::plugins::{Flow, PluginSet};
use crate::shared::Shared;
use crate::vars::ReqVars;

/// Request bodies are read whole (so an idempotent request can be retried on
/// another node); larger ones get 413.
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Response bodies a response filter must see whole (response-rewrite) are
/// bounded too.
const MAX_FILTERED_BODY: usize = 16 * 1024 * 1024;

/// Lowercase host without port: the Host header, else the URI's authority (HTTP/2).
fn host_of(parts: &http::request::Parts) -> String {
    let raw = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let h = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    h.to_ascii_lowercase()
}

async fn run_phase(sets: &[&PluginSet], ctx: &mut Ctx<'_>, access: bool) -> Option<Response<Body>> {
    for set in sets {
        for (_, p) in set.list.iter() {
            let flow = if access {
                p.access(ctx)
            } else {
                p.rewrite(ctx)
            };
            match flow {
                Flow::Continue => {}
                Flow::Respond(r) => {
                    tracing::debug!(
                        plugin = p.name(),
                        status = r.status().as_u16(),
                        "plugin answered"
                    );
                    return Some(r);
                }
                Flow::Delay(d) => tokio::time::sleep(d).await,
            }
        }
    }
    None
}

/// Handles one client request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let started = Instant::now();
    shared
        .metrics
        .requests_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !shared.ready() {
        return finish(pages::error_page(503));
    }
    let cfg = shared.config_local();
    let cfg: &crate::state::Config = &cfg;
    let (parts, body) = req.into_parts();
    let host = host_of(&parts);
    let route = {
        let v = ReqVars {
            method: parts.method.as_str(),
            host: &host,
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            remote: peer.remote.ip(),
            headers: &parts.headers,
            scheme: if peer.tls { "https" } else { "http" },
            server_port: peer.local.port(),
            request_uri: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
            consumer: None,
            route_id: "",
        };
        cfg.router.find(&v).cloned()
    };
    let Some(route) = route else {
        return finish(pages::not_found());
    };
    let mut ctx = Ctx {
        auth: &cfg.auth,
        consumers: &cfg.consumers,
        peer,
        parts,
        host,
        route_id: route.id.clone(),
        consumer: None,
        upstream_uri: None,
        upstream_host: None,
        resp_headers: Vec::new(),
        guards: Vec::new(),
        node: None,
    };
    let globals: Vec<PluginSet> = cfg.global_rules.values().cloned().collect();
    if let Some(set) = [&route.plugins]
        .into_iter()
        .chain(&globals)
        .find(|s| !s.blocked.is_empty())
    {
        tracing::error!(route = %route.id, plugins = ?set.blocked, "the route or a global rule needs plugins this gateway does not implement; refused");
        return finish(pages::error_page(503));
    }
    let global_refs: Vec<&PluginSet> = globals.iter().collect();
    let mut plugins = route.plugins.clone();
    let mut upstream_ms = None;
    let resp = 'resp: {
        // Global rules run their rewrite and access phases before the route's.
        if let Some(r) = run_phase(&global_refs, &mut ctx, false).await {
            break 'resp r;
        }
        if let Some(r) = run_phase(&global_refs, &mut ctx, true).await {
            break 'resp r;
        }
        if let Some(r) = run_phase(&[&plugins], &mut ctx, false).await {
            break 'resp r;
        }
        // An auth plugin found a consumer: its plugins (over its group's) join
        // the route's, the consumer's winning.
        if let Some(c) = ctx.consumer.clone() {
            let cp = cfg.consumer_plugins(&c);
            if !cp.is_empty() {
                // The consumer's own plugins still run their rewrite phase.
                let (merged, only_new) = PluginSet::merge_consumer(&plugins, &cp);
                plugins = merged;
                if let Some(r) = run_phase(&[&only_new], &mut ctx, false).await {
                    break 'resp r;
                }
            }
        }
        if let Some(r) = run_phase(&[&plugins], &mut ctx, true).await {
            break 'resp r;
        }
        let Some(up) = cfg.upstream_of(&route) else {
            tracing::error!(route = %route.id, "missing upstream configuration in Route or Service");
            break 'resp pages::error_page(502);
        };
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let too_big = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                break 'resp if too_big {
                    pages::error_page(413)
                } else {
                    pages::error_page(400)
                };
            }
        };
        let up_started = Instant::now();
        let res = crate::proxy::forward(&mut ctx, &up, route.route.route.timeout, body).await;
        upstream_ms = Some(up_started.elapsed().as_secs_f64() * 1000.0);
        match res {
            Ok(r) => {
                let (mut parts, body) = r.into_parts();
                let all: Vec<&PluginSet> = global_refs.iter().copied().chain([&plugins]).collect();
                let needs_body = all
                    .iter()
                    .any(|s| s.list.iter().any(|(_, p)| p.needs_body()));
                let mut body: Body = body.boxed();
                if needs_body {
                    match Limited::new(body, MAX_FILTERED_BODY).collect().await {
                        Ok(b) => {
                            body = full(b.to_bytes());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "upstream body unreadable");
                            break 'resp pages::error_page(502);
                        }
                    }
                }
                for set in &all {
                    for (_, p) in set.list.iter() {
                        if let Some(b) = p.response(&mut ctx, &mut parts) {
                            body = full(b);
                        }
                    }
                }
                Response::from_parts(parts, body)
            }
            Err(f) => {
                tracing::error!(route = %route.id, upstream = %up.key, error = %f.message(), "upstream failed");
                pages::error_page(f.status())
            }
        }
    };
    let mut resp = resp;
    for (k, v) in ctx.resp_headers.drain(..) {
        resp.headers_mut().append(k, v);
    }
    let resp = finish(resp);
    let status = resp.status().as_u16();
    let all: Vec<&PluginSet> = global_refs.iter().copied().chain([&plugins]).collect();
    for set in &all {
        for (_, p) in set.list.iter() {
            p.log(&ctx, status);
        }
    }
    if all.iter().any(|s| s.get("prometheus").is_some()) {
        let service = route
            .route
            .route
            .service_id
            .as_ref()
            .map(|s| s.0.as_str())
            .unwrap_or("");
        let egress = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let ingress = ctx
            .parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        shared.metrics.request(
            &RequestLabels {
                code: status,
                route: &route.id,
                matched_uri: route.route.route.first_path(),
                matched_host: &ctx.host,
                service,
                consumer: ctx
                    .consumer
                    .as_ref()
                    .map(|c| c.username.as_str())
                    .unwrap_or(""),
                node: ctx.node.as_deref().unwrap_or(""),
            },
            started.elapsed().as_secs_f64() * 1000.0,
            upstream_ms,
            ingress,
            egress,
        );
    }
    let guards = std::mem::take(&mut ctx.guards);
    if guards.is_empty() {
        resp
    } else {
        resp.map(|b| crate::guarded::Guarded::new(b, guards).boxed())
    }
}

/// The Server header every response carries.
fn finish(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(
        header::SERVER,
        HeaderValue::from_static(concat!("APISIX (cairn ", env!("CARGO_PKG_VERSION"), ")")),
    );
    r
}
