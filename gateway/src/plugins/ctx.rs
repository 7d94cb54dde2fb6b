//! The per-request context plugins and the proxy share. It holds what the
//! plugins need of the config (the consumers) rather than the config itself,
//! so plugins never import the state that is built from them.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};

use super::auth::{ConsumerRt, Index};
use crate::listener::Peer;
use crate::vars::ReqVars;

pub struct Ctx<'a> {
    /// The auth plugins' credential index and the consumers it names.
    pub auth: &'a Index,
    pub consumers: &'a HashMap<Arc<str>, Arc<ConsumerRt>>,
    pub peer: Peer,
    /// The client's request head; plugins may change headers.
    pub parts: http::request::Parts,
    /// Lowercase host without port.
    pub host: String,
    /// The matched route's ID.
    pub route_id: Arc<str>,
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
            route_id: &self.route_id,
        }
    }
}
