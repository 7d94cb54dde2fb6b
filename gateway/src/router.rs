//! Route matching with APISIX's `radixtree_host_uri` semantics:
//!
//! 1. routes with hosts first: the request's host exactly, then wildcard
//!    hosts (`*.example.com`, i.e. a suffix `.example.com`) longest first;
//!    then the routes without hosts;
//! 2. within one host table: the exact URI first, then prefixes (`/foo*` is
//!    a byte prefix `/foo`), longest first;
//! 3. within one URI: by `priority`, highest first (equal priorities in the
//!    order the routes appeared), and the first whose `methods`,
//!    `remote_addrs` and `vars` all hold wins.
//!
//! Changes are incremental: a route is placed into (and removed from) only
//! the buckets of its hosts and URIs; tables are behind `Arc`s so the
//! published copy shares everything that did not change (a publish clones
//! the maps of `Arc`s, not the routes).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::cidr::Cidr;
use crate::vars::{self, ReqVars, Term};

/// What, besides host and URI, a route asks of a request.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// Bit per method of [`crate::resources::METHODS`]; 0 = any method.
    methods: u16,
    remote_addrs: Vec<Cidr>,
    vars: Vec<Term>,
}

impl Conditions {
    pub fn new(
        methods: Option<&[String]>,
        remote_addrs: Option<&[String]>,
        vars_expr: Option<&serde_json::Value>,
    ) -> Result<Conditions, String> {
        let mut mask = 0u16;
        for m in methods.unwrap_or_default() {
            let i = crate::resources::METHODS
                .iter()
                .position(|x| x == m)
                .ok_or_else(|| format!("unknown method {m}"))?;
            mask |= 1 << i;
        }
        let remote_addrs = remote_addrs
            .unwrap_or_default()
            .iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<_, _>>()?;
        let vars = match vars_expr {
            Some(v) if !v.is_null() => vars::parse(v)?,
            _ => Vec::new(),
        };
        Ok(Conditions {
            methods: mask,
            remote_addrs,
            vars,
        })
    }

    fn method_ok(&self, method: &str) -> bool {
        if self.methods == 0 {
            return true;
        }
        crate::resources::METHODS
            .iter()
            .position(|x| *x == method)
            .is_some_and(|i| self.methods & (1 << i) != 0)
    }

    fn matches(&self, v: &ReqVars<'_>, remote: IpAddr) -> bool {
        self.method_ok(v.method)
            && (self.remote_addrs.is_empty()
                || self.remote_addrs.iter().any(|c| c.contains(remote)))
            && vars::eval_all(&self.vars, v)
    }
}

/// One route in one bucket.
#[derive(Debug)]
struct Entry<T> {
    id: Arc<str>,
    priority: i64,
    /// When the route first appeared: APISIX's tie-break among equal priorities.
    seq: u64,
    conds: Conditions,
    value: T,
}

type Bucket<T> = Arc<[Arc<Entry<T>>]>;

/// The routes of one host (or of no host), by URI.
#[derive(Debug)]
struct UriTable<T> {
    exact: HashMap<Arc<str>, Bucket<T>>,
    prefix: HashMap<Arc<str>, Bucket<T>>,
    /// Distinct prefix lengths, with how many prefixes have each.
    prefix_lens: BTreeMap<usize, usize>,
}

impl<T> Default for UriTable<T> {
    fn default() -> Self {
        UriTable {
            exact: HashMap::new(),
            prefix: HashMap::new(),
            prefix_lens: BTreeMap::new(),
        }
    }
}

impl<T> Clone for UriTable<T> {
    fn clone(&self) -> Self {
        UriTable {
            exact: self.exact.clone(),
            prefix: self.prefix.clone(),
            prefix_lens: self.prefix_lens.clone(),
        }
    }
}

/// `/foo*` → (prefix, "/foo"); `/foo` → (exact, "/foo").
fn split_path(p: &str) -> (bool, &str) {
    match p.strip_suffix('*') {
        Some(pre) => (true, pre),
        None => (false, p),
    }
}

impl<T> UriTable<T> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefix.is_empty()
    }

    fn insert(&mut self, path: &str, e: Arc<Entry<T>>) {
        let (is_prefix, key) = split_path(path);
        let map = if is_prefix {
            &mut self.prefix
        } else {
            &mut self.exact
        };
        let mut v: Vec<Arc<Entry<T>>> = match map.get(key) {
            Some(b) => b.iter().filter(|x| x.id != e.id).cloned().collect(),
            None => {
                if is_prefix {
                    *self.prefix_lens.entry(key.len()).or_default() += 1;
                }
                Vec::new()
            }
        };
        v.push(e);
        v.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.seq.cmp(&b.seq)));
        let map = if is_prefix {
            &mut self.prefix
        } else {
            &mut self.exact
        };
        map.insert(Arc::from(key), v.into());
    }

    fn remove(&mut self, path: &str, id: &str) {
        let (is_prefix, key) = split_path(path);
        let map = if is_prefix {
            &mut self.prefix
        } else {
            &mut self.exact
        };
        let Some(b) = map.get(key) else { return };
        let v: Vec<Arc<Entry<T>>> = b.iter().filter(|x| &*x.id != id).cloned().collect();
        if !v.is_empty() {
            map.insert(Arc::from(key), v.into());
            return;
        }
        map.remove(key);
        if is_prefix {
            if let Some(n) = self.prefix_lens.get_mut(&key.len()) {
                *n -= 1;
                if *n == 0 {
                    self.prefix_lens.remove(&key.len());
                }
            }
        }
    }

    fn find(&self, v: &ReqVars<'_>) -> Option<&Entry<T>> {
        fn hit<'b, T>(b: &'b Bucket<T>, v: &ReqVars<'_>) -> Option<&'b Entry<T>> {
            b.iter()
                .find(|e| e.conds.matches(v, v.remote))
                .map(|e| &**e)
        }
        if let Some(e) = self.exact.get(v.path).and_then(|b| hit(b, v)) {
            return Some(e);
        }
        for &len in self.prefix_lens.keys().rev() {
            if len > v.path.len() || !v.path.is_char_boundary(len) {
                continue;
            }
            if let Some(e) = self.prefix.get(&v.path[..len]).and_then(|b| hit(b, v)) {
                return Some(e);
            }
        }
        None
    }
}

/// Where a route was placed, to take it out again.
#[derive(Debug, Clone)]
struct Placement {
    hosts: Option<Vec<String>>,
    paths: Vec<String>,
    seq: u64,
}

/// The whole routing table.
#[derive(Debug)]
pub struct Router<T> {
    exact_hosts: HashMap<Arc<str>, Arc<UriTable<T>>>,
    /// `*.example.com` under `.example.com`; `*` under the empty string.
    wild_hosts: HashMap<Arc<str>, Arc<UriTable<T>>>,
    wild_lens: BTreeMap<usize, usize>,
    no_host: Arc<UriTable<T>>,
    placed: HashMap<Arc<str>, Arc<Placement>>,
    next_seq: u64,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            exact_hosts: HashMap::new(),
            wild_hosts: HashMap::new(),
            wild_lens: BTreeMap::new(),
            no_host: Arc::default(),
            placed: HashMap::new(),
            next_seq: 0,
        }
    }
}

impl<T> Clone for Router<T> {
    fn clone(&self) -> Self {
        Router {
            exact_hosts: self.exact_hosts.clone(),
            wild_hosts: self.wild_hosts.clone(),
            wild_lens: self.wild_lens.clone(),
            no_host: self.no_host.clone(),
            placed: self.placed.clone(),
            next_seq: self.next_seq,
        }
    }
}

/// A route's place: what to insert.
pub struct RouteSpec<T> {
    pub id: String,
    /// `None`: the route has no hosts (its service neither).
    pub hosts: Option<Vec<String>>,
    pub paths: Vec<String>,
    pub priority: i64,
    pub conds: Conditions,
    pub value: T,
}

impl<T> Router<T> {
    pub fn len(&self) -> usize {
        self.placed.len()
    }

    fn table_for(&mut self, host: &str) -> &mut UriTable<T> {
        let host = host.to_ascii_lowercase();
        let arc = match host.strip_prefix('*') {
            Some(suffix) => {
                if !self.wild_hosts.contains_key(suffix) {
                    *self.wild_lens.entry(suffix.len()).or_default() += 1;
                }
                self.wild_hosts.entry(Arc::from(suffix)).or_default()
            }
            None => self
                .exact_hosts
                .entry(Arc::from(host.as_str()))
                .or_default(),
        };
        Arc::make_mut(arc)
    }

    fn drop_if_empty(&mut self, host: &str) {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix('*') {
            Some(suffix) => {
                if self.wild_hosts.get(suffix).is_some_and(|t| t.is_empty()) {
                    self.wild_hosts.remove(suffix);
                    if let Some(n) = self.wild_lens.get_mut(&suffix.len()) {
                        *n -= 1;
                        if *n == 0 {
                            self.wild_lens.remove(&suffix.len());
                        }
                    }
                }
            }
            None => {
                if self
                    .exact_hosts
                    .get(host.as_str())
                    .is_some_and(|t| t.is_empty())
                {
                    self.exact_hosts.remove(host.as_str());
                }
            }
        }
    }

    /// Takes route `id` out of every bucket it was in.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(p) = self.placed.remove(id) else {
            return false;
        };
        match &p.hosts {
            None => {
                let t = Arc::make_mut(&mut self.no_host);
                for path in &p.paths {
                    t.remove(path, id);
                }
            }
            Some(hosts) => {
                for h in hosts {
                    for path in &p.paths {
                        self.table_for(h).remove(path, id);
                    }
                    self.drop_if_empty(h);
                }
            }
        }
        true
    }

    /// Places (or re-places) a route.
    pub fn insert(&mut self, spec: RouteSpec<T>)
    where
        T: Clone,
    {
        // An update keeps the route's place among equal priorities.
        let seq = match self.placed.get(spec.id.as_str()) {
            Some(p) => p.seq,
            None => {
                self.next_seq += 1;
                self.next_seq
            }
        };
        self.remove(&spec.id);
        let id: Arc<str> = Arc::from(spec.id.as_str());
        let entry = Arc::new(Entry {
            id: id.clone(),
            priority: spec.priority,
            seq,
            conds: spec.conds,
            value: spec.value,
        });
        match &spec.hosts {
            None => {
                let t = Arc::make_mut(&mut self.no_host);
                for path in &spec.paths {
                    t.insert(path, entry.clone());
                }
            }
            Some(hosts) => {
                for h in hosts {
                    let t = self.table_for(h);
                    for path in &spec.paths {
                        t.insert(path, entry.clone());
                    }
                }
            }
        }
        self.placed.insert(
            id,
            Arc::new(Placement {
                hosts: spec.hosts,
                paths: spec.paths,
                seq,
            }),
        );
    }

    /// The route serving `v`, if any.
    pub fn find(&self, v: &ReqVars<'_>) -> Option<&T> {
        if let Some(e) = self.exact_hosts.get(v.host).and_then(|t| t.find(v)) {
            return Some(&e.value);
        }
        for &len in self.wild_lens.keys().rev() {
            if len > v.host.len() || !v.host.is_char_boundary(v.host.len() - len) {
                continue;
            }
            let suffix = &v.host[v.host.len() - len..];
            if let Some(e) = self.wild_hosts.get(suffix).and_then(|t| t.find(v)) {
                return Some(&e.value);
            }
        }
        self.no_host.find(v).map(|e| &e.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use serde_json::json;

    fn spec(id: &str, hosts: Option<&[&str]>, paths: &[&str], prio: i64) -> RouteSpec<String> {
        RouteSpec {
            id: id.into(),
            hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            priority: prio,
            conds: Conditions::default(),
            value: id.to_string(),
        }
    }

    fn find(r: &Router<String>, method: &str, host: &str, path: &str) -> Option<String> {
        let h = HeaderMap::new();
        let v = ReqVars {
            method,
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
        r.find(&v).cloned()
    }

    #[test]
    fn exact_then_longest_prefix_then_priority() {
        let mut r = Router::default();
        r.insert(spec("p1", None, &["/a*"], 0));
        r.insert(spec("p2", None, &["/a/b*"], 0));
        r.insert(spec("e", None, &["/a/b/c"], 0));
        r.insert(spec("hi", None, &["/a*"], 10));
        assert_eq!(find(&r, "GET", "x", "/a/b/c").unwrap(), "e");
        assert_eq!(find(&r, "GET", "x", "/a/b/d").unwrap(), "p2");
        assert_eq!(find(&r, "GET", "x", "/a/x").unwrap(), "hi");
        // `/a*` is a byte prefix: `/abc` matches too.
        assert_eq!(find(&r, "GET", "x", "/abc").unwrap(), "hi");
        assert!(find(&r, "GET", "x", "/b").is_none());
        r.remove("hi");
        assert_eq!(find(&r, "GET", "x", "/a/x").unwrap(), "p1");
        r.remove("p1");
        assert!(find(&r, "GET", "x", "/a/x").is_none());
        assert!(!r.no_host.prefix_lens.contains_key(&2));
    }

    #[test]
    fn hosts_before_no_host_and_wildcards() {
        let mut r = Router::default();
        r.insert(spec("any", None, &["/*"], 100));
        r.insert(spec("wild", Some(&["*.foo.com"]), &["/*"], 0));
        r.insert(spec("deep", Some(&["*.b.foo.com"]), &["/x"], 0));
        r.insert(spec("exact", Some(&["a.foo.com"]), &["/only"], 0));
        // The host tables come first even over a higher priority without host.
        assert_eq!(find(&r, "GET", "z.foo.com", "/").unwrap(), "wild");
        // Exact host wins; when its table has no match, wildcards are tried.
        assert_eq!(find(&r, "GET", "a.foo.com", "/only").unwrap(), "exact");
        assert_eq!(find(&r, "GET", "a.foo.com", "/other").unwrap(), "wild");
        assert_eq!(find(&r, "GET", "q.b.foo.com", "/x").unwrap(), "deep");
        assert_eq!(find(&r, "GET", "q.b.foo.com", "/y").unwrap(), "wild");
        // The wildcard does not cover the bare domain.
        assert_eq!(find(&r, "GET", "foo.com", "/").unwrap(), "any");
        r.remove("wild");
        assert_eq!(find(&r, "GET", "z.foo.com", "/").unwrap(), "any");
        r.remove("exact");
        assert!(r.exact_hosts.is_empty());
    }

    #[test]
    fn conditions_and_update_keeps_order() {
        let mut r = Router::default();
        let mut post = spec("post", None, &["/m"], 0);
        post.conds = Conditions::new(Some(&["POST".into()]), None, None).unwrap();
        r.insert(post);
        let mut v = spec("vars", None, &["/m"], 0);
        v.conds = Conditions::new(None, Some(&["10.0.0.0/8".into()]), Some(&json!([]))).unwrap();
        r.insert(v);
        r.insert(spec("last", None, &["/m"], 0));
        assert_eq!(find(&r, "POST", "h", "/m").unwrap(), "post");
        // 127.0.0.1 is outside 10/8: falls through to "last".
        assert_eq!(find(&r, "GET", "h", "/m").unwrap(), "last");
        // Updating "post" to any method keeps it first among equals.
        r.insert(spec("post", None, &["/m"], 0));
        assert_eq!(find(&r, "GET", "h", "/m").unwrap(), "post");
        // A moved route leaves its old URI.
        r.insert(spec("post", None, &["/n"], 0));
        assert_eq!(find(&r, "GET", "h", "/m").unwrap(), "last");
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn one_change_at_10k_routes_is_cheap() {
        let mut r = Router::default();
        for i in 0..10_000 {
            r.insert(spec(&i.to_string(), None, &[&format!("/r/{i}")], 0));
        }
        let published = r.clone();
        let t = std::time::Instant::now();
        let mut next = published.clone();
        next.insert(spec("5", None, &["/moved"], 0));
        let took = t.elapsed();
        // Printed, never asserted (timings are measured, not tested).
        eprintln!("one change + publish at 10k routes: {took:?}");
        assert_eq!(find(&next, "GET", "h", "/moved").unwrap(), "5");
        assert_eq!(find(&published, "GET", "h", "/r/5").unwrap(), "5");
        assert!(find(&next, "GET", "h", "/r/5").is_none());
    }
}
