//! The per-request context plugins and the proxy share.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use crate::listener::Peer;
use crate::state::{Compiled, Config, ConsumerRt};
use crate::vars::ReqVars;

pub struct Ctx<'a> {
    pub config: &'a Config,
    pub peer: Peer,
    /// The client's request head; plugins may change headers.
    pub parts: http::request::Parts,
    /// Lowercase host without port.
    pub host: String,
    pub route: Arc<Compiled>,
    pub consumer: Option<Arc<ConsumerRt>>,
    /// proxy-rewrite: the path and query sent upstream instead of the client's.
    pub upstream_uri: Option<String>,
    /// proxy-rewrite: the Host sent upstream.
    pub upstream_host: Option<String>,
    /// Headers added to the response (rate-limit counters, request id, CORS).
    pub resp_headers: Vec<(HeaderName, HeaderValue)>,
    /// Held until the response is finished (limit-conn's slot).
    pub guards: Vec<Box<dyn std::any::Any + Send + Sync>>,
    /// The upstream node the request went to (`host:port`), for logs and metrics.
    pub node: Option<Arc<str>>,
}

impl<'a> Ctx<'a> {
    pub fn vars(&self) -> ReqVars<'_> {
        ReqVars {
            method: self.parts.method.as_str(),
            host: &self.host,
            path: self.parts.uri.path(),
            query: self.parts.uri.query().unwrap_or(""),
            remote: self.peer.remote.ip(),
            headers: &self.parts.headers,
            scheme: if self.peer.tls { "https" } else { "http" },
            server_port: self.peer.local.port(),
            request_uri: self
                .parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
            consumer: self.consumer.as_ref().map(|c| c.username.as_str()),
            route_id: &self.route.id,
        }
    }
}
