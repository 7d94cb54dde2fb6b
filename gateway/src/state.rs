//! The configuration a gateway serves: every resource read from the store,
//! parsed once (plugins instantiated, upstreams with their balancers), and
//! the routing table. `sync` owns one [`Config`] and applies store events
//! to it; each applied batch is published as a new `Arc<Config>` that
//! requests read without locks. Publishing clones maps of `Arc`s, never the
//! resources.
//!
//! Merges, as APISIX does them: a route's plugins over its plugin config's
//! over its service's; the route's upstream (inline or `upstream_id`) over
//! the service's; the route's hosts, else the service's. Routes depending on
//! a service or plugin config are recompiled when it changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;

pub use crate::plugins::auth::ConsumerRt;
use crate::plugins::{self, PluginSet, Scope};
use crate::resources::{Consumer, PluginHolder, Route, Service, Ssl, Upstream};
use crate::router::{Conditions, RouteSpec, Router};
use crate::upstream::UpstreamRt;

/// A route as read, with its own plugins and inline upstream.
pub struct RouteRt {
    pub route: Route,
    pub plugins: PluginSet,
    pub upstream: Option<Arc<UpstreamRt>>,
    conds: Conditions,
}

pub struct ServiceRt {
    pub service: Service,
    pub plugins: PluginSet,
    pub upstream: Option<Arc<UpstreamRt>>,
}

/// A route ready to serve: merged with its service and plugin config.
pub struct Compiled {
    pub id: Arc<str>,
    pub route: Arc<RouteRt>,
    pub service: Option<Arc<ServiceRt>>,
    pub plugins: PluginSet,
}

/// Where a resource key points, below the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key<'a> {
    pub resource: &'a str,
    pub id: &'a str,
}

impl<'a> Key<'a> {
    /// `routes/1` → (routes, 1); directory placeholders (`routes/`) → None.
    pub fn parse(rel: &'a str) -> Option<Key<'a>> {
        let (resource, id) = rel.split_once('/')?;
        if id.is_empty() || resource.is_empty() {
            return None;
        }
        Some(Key { resource, id })
    }
}

#[derive(Clone, Default)]
pub struct Config {
    /// The store revision this config reflects.
    pub revision: i64,
    pub routes: HashMap<Arc<str>, Arc<RouteRt>>,
    pub services: HashMap<Arc<str>, Arc<ServiceRt>>,
    pub upstreams: HashMap<Arc<str>, Arc<UpstreamRt>>,
    pub plugin_configs: HashMap<Arc<str>, PluginSet>,
    pub consumer_groups: HashMap<Arc<str>, PluginSet>,
    pub consumers: HashMap<Arc<str>, Arc<ConsumerRt>>,
    /// Global rules in key order.
    pub global_rules: BTreeMap<Arc<str>, PluginSet>,
    pub ssls: BTreeMap<Arc<str>, Arc<Ssl>>,
    pub router: Router<Arc<Compiled>>,
    /// Consumer lookups for the auth plugins.
    pub auth: Arc<plugins::auth::Index>,
    /// Bumped when `ssls` change (the TLS acceptor rebuilds its SNI map).
    pub ssl_version: u64,
    by_service: HashMap<String, BTreeSet<String>>,
    by_plugin_config: HashMap<String, BTreeSet<String>>,
}

/// What applying one key did, for logs and metrics.
#[derive(Debug, Default)]
pub struct Applied {
    /// Plugins configured but not implemented.
    pub unsupported: Vec<String>,
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| e.to_string())
}

impl Config {
    /// Applies a put (`Some(value)`) or delete (`None`) of `rel` (a key below
    /// the prefix). On error nothing changed: the previous value stays.
    pub fn apply(&mut self, rel: &str, value: Option<Value>) -> Result<Applied, String> {
        let Some(k) = Key::parse(rel) else {
            return Ok(Applied::default());
        };
        let id: Arc<str> = Arc::from(k.id);
        let mut out = Applied::default();
        let Some(v) = value else {
            self.delete(k.resource, &id);
            return Ok(out);
        };
        let un = &mut out.unsupported;
        match k.resource {
            "routes" => {
                let route: Route = parse(&v)?;
                route.check()?;
                let conds = Conditions::new(
                    route.methods.as_deref(),
                    route
                        .remote_addrs
                        .as_deref()
                        .or(route.remote_addr.as_ref().map(std::slice::from_ref)),
                    route.vars.as_ref(),
                )?;
                let plugins = plugins::build_set(&route.plugins, Scope::Route, un)?;
                let upstream = match &route.upstream {
                    Some(u) => Some(crate::probes::shared(format!("routes/{id}"), u.clone())?),
                    None => None,
                };
                let old = self.routes.insert(
                    id.clone(),
                    Arc::new(RouteRt {
                        route,
                        plugins,
                        upstream,
                        conds,
                    }),
                );
                if let Some(old) = old {
                    self.untrack(&id, &old.route);
                }
                self.compile_route(&id);
            }
            "services" => {
                let service: Service = parse(&v)?;
                service.check()?;
                let plugins = plugins::build_set(&service.plugins, Scope::Route, un)?;
                let upstream = match &service.upstream {
                    Some(u) => Some(crate::probes::shared(format!("services/{id}"), u.clone())?),
                    None => None,
                };
                self.services.insert(
                    id.clone(),
                    Arc::new(ServiceRt {
                        service,
                        plugins,
                        upstream,
                    }),
                );
                self.recompile(self.by_service.get(&*id).cloned());
            }
            "upstreams" => {
                let u: Upstream = parse(&v)?;
                u.check()?;
                self.upstreams.insert(
                    id.clone(),
                    crate::probes::shared(format!("upstreams/{id}"), u)?,
                );
            }
            "plugin_configs" => {
                let h: PluginHolder = parse(&v)?;
                let set = plugins::build_set(&h.plugins, Scope::Route, un)?;
                self.plugin_configs.insert(id.clone(), set);
                self.recompile(self.by_plugin_config.get(&*id).cloned());
            }
            "global_rules" => {
                let h: PluginHolder = parse(&v)?;
                let set = plugins::build_set(&h.plugins, Scope::Route, un)?;
                self.global_rules.insert(id, set);
            }
            "consumer_groups" => {
                let h: PluginHolder = parse(&v)?;
                let set = plugins::build_set(&h.plugins, Scope::Route, un)?;
                self.consumer_groups.insert(id, set);
            }
            "consumers" => {
                if k.id.contains('/') {
                    // `consumers/<name>/credentials/<id>` (APISIX 3.7+).
                    let h: PluginHolder = parse(&v)?;
                    let set = plugins::build_set(&h.plugins, Scope::Consumer, un)?;
                    let user = k.id.split('/').next().unwrap_or_default().to_string();
                    Arc::make_mut(&mut self.auth).set_credential(k.id, &user, &set);
                } else {
                    let c: Consumer = parse(&v)?;
                    let plugins = plugins::build_set(&c.plugins, Scope::Consumer, un)?;
                    let rt = Arc::new(ConsumerRt {
                        username: c.username.clone(),
                        plugins,
                        group_id: c.group_id.map(|g| g.0),
                    });
                    Arc::make_mut(&mut self.auth).set_consumer(&rt);
                    self.consumers.insert(id, rt);
                }
            }
            "ssls" => {
                let s: Ssl = parse(&v)?;
                self.ssls.insert(id, Arc::new(s));
                self.ssl_version += 1;
            }
            // Resources the gateway does not serve (stream routes, protos,
            // secrets, plugin metadata, ...) are ignored.
            _ => {}
        }
        Ok(out)
    }

    fn delete(&mut self, resource: &str, id: &Arc<str>) {
        match resource {
            "routes" => {
                if let Some(old) = self.routes.remove(id) {
                    self.untrack(id, &old.route);
                }
                self.router.remove(id);
            }
            "services" => {
                self.services.remove(id);
                self.recompile(self.by_service.get(&**id).cloned());
            }
            "upstreams" => {
                self.upstreams.remove(id);
            }
            "plugin_configs" => {
                self.plugin_configs.remove(id);
                self.recompile(self.by_plugin_config.get(&**id).cloned());
            }
            "global_rules" => {
                self.global_rules.remove(id);
            }
            "consumer_groups" => {
                self.consumer_groups.remove(id);
            }
            "consumers" => {
                if id.contains('/') {
                    Arc::make_mut(&mut self.auth).remove_credential(id);
                } else if let Some(c) = self.consumers.remove(id) {
                    Arc::make_mut(&mut self.auth).remove_consumer(&c.username);
                }
            }
            "ssls" => {
                self.ssls.remove(id);
                self.ssl_version += 1;
            }
            _ => {}
        }
    }

    fn untrack(&mut self, id: &str, r: &Route) {
        if let Some(s) = &r.service_id {
            if let Some(set) = self.by_service.get_mut(&s.0) {
                set.remove(id);
            }
        }
        if let Some(p) = &r.plugin_config_id {
            if let Some(set) = self.by_plugin_config.get_mut(&p.0) {
                set.remove(id);
            }
        }
    }

    fn recompile(&mut self, ids: Option<BTreeSet<String>>) {
        for id in ids.unwrap_or_default() {
            self.compile_route(&id);
        }
    }

    /// (Re)places route `id` in the router, merged with what it refers to.
    fn compile_route(&mut self, id: &str) {
        let Some(rt) = self.routes.get(id).cloned() else {
            self.router.remove(id);
            return;
        };
        let r = &rt.route;
        if let Some(s) = &r.service_id {
            self.by_service
                .entry(s.0.clone())
                .or_default()
                .insert(id.to_string());
        }
        if let Some(p) = &r.plugin_config_id {
            self.by_plugin_config
                .entry(p.0.clone())
                .or_default()
                .insert(id.to_string());
        }
        // `status: 0` disables the route.
        if r.status == 0 {
            self.router.remove(id);
            return;
        }
        let service = r
            .service_id
            .as_ref()
            .and_then(|s| self.services.get(s.0.as_str()).cloned());
        if let (Some(s), None) = (&r.service_id, &service) {
            // As APISIX: a missing service does not stop the route from matching.
            tracing::warn!(route = id, service = %s.0, "route refers to a missing service");
        }
        let mut plugins = rt.plugins.clone();
        if let Some(pc) = &r.plugin_config_id {
            match self.plugin_configs.get(pc.0.as_str()) {
                Some(set) => plugins = PluginSet::merge(set, &plugins),
                None => {
                    tracing::warn!(route = id, plugin_config = %pc.0, "route refers to a missing plugin config")
                }
            }
        }
        if let Some(s) = &service {
            plugins = PluginSet::merge(&s.plugins, &plugins);
        }
        let hosts = r
            .own_hosts()
            .or_else(|| service.as_ref().and_then(|s| s.service.hosts.clone()));
        let id_arc: Arc<str> = Arc::from(id);
        let compiled = Arc::new(Compiled {
            id: id_arc,
            route: rt.clone(),
            service,
            plugins,
        });
        self.router.insert(RouteSpec {
            id: id.to_string(),
            hosts,
            paths: r.paths(),
            priority: r.priority,
            conds: rt.conds.clone(),
            value: compiled,
        });
    }

    /// The upstream a matched route proxies to: the route's (inline, then
    /// `upstream_id`), else its service's.
    pub fn upstream_of(&self, c: &Compiled) -> Option<Arc<UpstreamRt>> {
        let by_id = |id: &crate::resources::Id| self.upstreams.get(id.0.as_str()).cloned();
        let r = &c.route;
        if let Some(u) = &r.upstream {
            return Some(u.clone());
        }
        if let Some(id) = &r.route.upstream_id {
            return by_id(id);
        }
        let s = c.service.as_ref()?;
        if let Some(u) = &s.upstream {
            return Some(u.clone());
        }
        s.service.upstream_id.as_ref().and_then(by_id)
    }

    /// The consumer's plugins merged over its group's.
    pub fn consumer_plugins(&self, c: &ConsumerRt) -> PluginSet {
        match c
            .group_id
            .as_ref()
            .and_then(|g| self.consumer_groups.get(g.as_str()))
        {
            Some(g) => PluginSet::merge_memo(g, &c.plugins),
            None => c.plugins.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find(c: &Config, host: &str, path: &str) -> Option<String> {
        let h = http::HeaderMap::new();
        let v = crate::vars::ReqVars {
            method: "GET",
            host,
            path,
            query: "",
            remote: "127.0.0.1".parse().unwrap(),
            headers: &h,
            scheme: "http",
            server_port: 80,
            request_uri: path,
            consumer: None,
            route_id: "",
        };
        c.router.find(&v).map(|r| r.id.to_string())
    }

    #[test]
    fn service_hosts_and_upstream_merge() {
        let mut c = Config::default();
        c.apply("routes/1", Some(json!({"uri":"/a","service_id":"s"})))
            .unwrap();
        // The service is missing: the route still matches (no hosts).
        assert_eq!(find(&c, "x.com", "/a").unwrap(), "1");
        c.apply(
            "services/s",
            Some(json!({"hosts":["s.com"],"upstream":{"nodes":{"127.0.0.1:1":1}}})),
        )
        .unwrap();
        // Now it takes the service's hosts.
        assert!(find(&c, "x.com", "/a").is_none());
        assert_eq!(find(&c, "s.com", "/a").unwrap(), "1");
        let r = c.router.find(&crate::vars::ReqVars {
            method: "GET",
            host: "s.com",
            path: "/a",
            query: "",
            remote: "127.0.0.1".parse().unwrap(),
            headers: &http::HeaderMap::new(),
            scheme: "http",
            server_port: 80,
            request_uri: "/a",
            consumer: None,
            route_id: "",
        });
        let u = c.upstream_of(r.unwrap()).unwrap();
        assert_eq!(u.key, "services/s");
        c.apply("upstreams/u", Some(json!({"nodes":{"127.0.0.1:2":1}})))
            .unwrap();
        c.apply(
            "routes/1",
            Some(json!({"uri":"/a","service_id":"s","upstream_id":"u","hosts":["r.com"]})),
        )
        .unwrap();
        assert_eq!(find(&c, "r.com", "/a").unwrap(), "1");
        assert!(find(&c, "s.com", "/a").is_none());
        // status 0 disables; an invalid value leaves the previous one.
        assert!(c
            .apply("routes/1", Some(json!({"uri":"/a","uris":["/b"]})))
            .is_err());
        assert_eq!(find(&c, "r.com", "/a").unwrap(), "1");
        c.apply(
            "routes/1",
            Some(json!({"uri":"/a","status":0,"upstream_id":"u"})),
        )
        .unwrap();
        assert!(find(&c, "r.com", "/a").is_none());
        c.apply("routes/1", None).unwrap();
        assert!(c.routes.is_empty());
        // Directory placeholders are not resources.
        c.apply("routes/", Some(json!("init_dir"))).unwrap();
        assert!(c.routes.is_empty());
    }
}
