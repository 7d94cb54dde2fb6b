//! proxy-rewrite (1008): the upstream URI (`uri` with `$var`s, or
//! `regex_uri`), `host`, `method`, and request headers (`set`/`add`/`remove`,
//! or the older flat map meaning `set`). response-rewrite (899): status,
//! body (`body`, `body_base64`) and response headers, optionally only when
//! `vars` hold.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Ctx;
use super::{conf, header_pair, Flow, Plugin};

/// `headers` in either shape: `{set:{}, add:{}, remove:[]}` or `{k: v}` (set).
#[derive(Default)]
struct HeaderOps {
    set: Vec<(HeaderName, String)>,
    add: Vec<(HeaderName, String)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn parse(v: Option<&Value>) -> Result<HeaderOps, String> {
        let mut ops = HeaderOps::default();
        let Some(Value::Object(m)) = v else {
            return Ok(ops);
        };
        let structured = m.keys().all(|k| k == "set" || k == "add" || k == "remove");
        let pairs = |m: &Map<String, Value>| -> Result<Vec<(HeaderName, String)>, String> {
            m.iter()
                .map(|(k, v)| {
                    let val = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(format!("header {k}: value must be a string")),
                    };
                    Ok((header_pair(k, "x")?.0, val))
                })
                .collect()
        };
        if structured {
            if let Some(Value::Object(s)) = m.get("set") {
                ops.set = pairs(s)?;
            }
            if let Some(Value::Object(a)) = m.get("add") {
                ops.add = pairs(a)?;
            }
            if let Some(Value::Array(r)) = m.get("remove") {
                for n in r.iter().filter_map(Value::as_str) {
                    ops.remove.push(header_pair(n, "x")?.0);
                }
            }
        } else {
            ops.set = pairs(m)?;
        }
        Ok(ops)
    }

    fn apply(&self, h: &mut http::HeaderMap, v: &crate::vars::ReqVars<'_>) {
        let value = |s: &str| HeaderValue::from_str(&crate::vars::expand(s, v)).ok();
        let mut out = Vec::new();
        for (k, s) in &self.add {
            if let Some(val) = value(s) {
                out.push((k.clone(), val, false));
            }
        }
        for (k, s) in &self.set {
            // An empty value in `set` removes the header (APISIX).
            out.push((
                k.clone(),
                value(s).unwrap_or(HeaderValue::from_static("")),
                true,
            ));
        }
        for (k, val, set) in out {
            if set {
                if val.is_empty() {
                    h.remove(&k);
                } else {
                    h.insert(k, val);
                }
            } else {
                h.append(k, val);
            }
        }
        for k in &self.remove {
            h.remove(k);
        }
    }
}

#[derive(Deserialize)]
struct ProxyRewriteConf {
    uri: Option<String>,
    regex_uri: Option<Vec<String>>,
    host: Option<String>,
    method: Option<String>,
    headers: Option<Value>,
    #[serde(default)]
    use_real_request_uri_unsafe: bool,
}

pub struct ProxyRewrite {
    uri: Option<String>,
    regex: Option<(Regex, String)>,
    host: Option<String>,
    method: Option<http::Method>,
    headers: HeaderOps,
}

pub fn proxy_rewrite(v: &Value) -> Result<Arc<dyn Plugin>, String> {
    let c: ProxyRewriteConf = conf(v)?;
    let regex = match &c.regex_uri {
        Some(r) if r.len() == 2 => Some((
            Regex::new(&r[0]).map_err(|e| format!("regex_uri: {e}"))?,
            r[1].clone(),
        )),
        Some(_) => return Err("regex_uri needs [regex, replacement]".into()),
        None => None,
    };
    let method = match &c.method {
        Some(m)
            if crate::resources::METHODS.contains(&m.as_str())
                || m == "MKCOL"
                || m == "COPY"
                || m == "MOVE" =>
        {
            Some(http::Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string())?)
        }
        Some(m) => return Err(format!("method {m} is not allowed")),
        None => None,
    };
    let _ = c.use_real_request_uri_unsafe;
    Ok(Arc::new(ProxyRewrite {
        uri: c.uri,
        regex,
        host: c.host,
        method,
        headers: HeaderOps::parse(c.headers.as_ref())?,
    }))
}

impl Plugin for ProxyRewrite {
    fn name(&self) -> &'static str {
        "proxy-rewrite"
    }
    fn priority(&self) -> i32 {
        1008
    }
    fn rewrite(&self, ctx: &mut Ctx<'_>) -> Flow {
        let v = ctx.vars();
        let mut new_uri = match (&self.uri, &self.regex) {
            (Some(u), _) => Some(crate::vars::expand(u, &v)),
            (None, Some((re, rep))) => re
                .is_match(v.path)
                .then(|| re.replace(v.path, rep.as_str()).into_owned()),
            _ => None,
        };
        // The client's query string follows a rewritten path that has none.
        if let Some(u) = &mut new_uri {
            if !u.contains('?') && !v.query.is_empty() {
                u.push('?');
                u.push_str(v.query);
            }
        }
        let mut headers = ctx.parts.headers.clone();
        self.headers.apply(&mut headers, &v);
        if let Some(u) = new_uri {
            ctx.upstream_uri = Some(u);
        }
        ctx.parts.headers = headers;
        if let Some(h) = &self.host {
            ctx.upstream_host = Some(h.clone());
        }
        if let Some(m) = &self.method {
            ctx.parts.method = m.clone();
        }
        Flow::Continue
    }
}

#[derive(Deserialize)]
struct ResponseRewriteConf {
    status_code: Option<u16>,
    body: Option<String>,
    #[serde(default)]
    body_base64: bool,
    headers: Option<Value>,
    vars: Option<Value>,
}

pub struct ResponseRewrite {
    status: Option<http::StatusCode>,
    body: Option<Bytes>,
    headers: HeaderOps,
    vars: Vec<crate::vars::Term>,
}

pub fn response_rewrite(v: &Value) -> Result<Arc<dyn Plugin>, String> {
    let c: ResponseRewriteConf = conf(v)?;
    let status = match c.status_code {
        Some(s) if (200..=598).contains(&s) => {
            Some(http::StatusCode::from_u16(s).map_err(|e| e.to_string())?)
        }
        Some(s) => return Err(format!("status_code {s} out of 200-598")),
        None => None,
    };
    let body = match c.body {
        Some(b) if c.body_base64 => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("body_base64: {e}"))?,
        )),
        Some(b) => Some(Bytes::from(b)),
        None => None,
    };
    let vars = match &c.vars {
        Some(v) => crate::vars::parse(v)?,
        None => Vec::new(),
    };
    Ok(Arc::new(ResponseRewrite {
        status,
        body,
        headers: HeaderOps::parse(c.headers.as_ref())?,
        vars,
    }))
}

impl Plugin for ResponseRewrite {
    fn name(&self) -> &'static str {
        "response-rewrite"
    }
    fn priority(&self) -> i32 {
        899
    }
    fn response(&self, ctx: &mut Ctx<'_>, resp: &mut http::response::Parts) -> Option<Bytes> {
        if !crate::vars::eval_all(&self.vars, &ctx.vars()) {
            return None;
        }
        if let Some(s) = self.status {
            resp.status = s;
        }
        self.headers.apply(&mut resp.headers, &ctx.vars());
        let b = self.body.clone()?;
        // The length changes; hyper sets it from the new body.
        resp.headers.remove(http::header::CONTENT_LENGTH);
        resp.headers.remove(http::header::CONTENT_ENCODING);
        Some(b)
    }
}
