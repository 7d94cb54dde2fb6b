//! cors (4000): answers preflight `OPTIONS` requests itself and adds the
//! CORS headers to every response of the route, with APISIX's defaults
//! (`*` everywhere, `max_age` 5, no credentials).

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::Ctx;
use super::{conf, plain, Flow, Plugin};

fn star() -> String {
    "*".into()
}
fn five() -> i64 {
    5
}

#[derive(Deserialize)]
struct CorsConf {
    #[serde(default = "star")]
    allow_origins: String,
    #[serde(default = "star")]
    allow_methods: String,
    #[serde(default = "star")]
    allow_headers: String,
    #[serde(default)]
    expose_headers: Option<String>,
    #[serde(default = "five")]
    max_age: i64,
    #[serde(default)]
    allow_credential: bool,
    #[serde(default)]
    allow_origins_by_regex: Vec<String>,
}

pub struct Cors {
    c: CorsConf,
    regexes: Vec<Regex>,
}

pub fn build(v: &Value) -> Result<Arc<dyn Plugin>, String> {
    let c: CorsConf = conf(v)?;
    if c.allow_credential
        && (c.allow_origins == "*" || c.allow_methods == "*" || c.allow_headers == "*")
    {
        // APISIX refuses `*` with credentials (browsers would reject it).
        return Err("you can not set '*' for other option when 'allow_credential' is true".into());
    }
    let regexes = c
        .allow_origins_by_regex
        .iter()
        .map(|r| Regex::new(r).map_err(|e| format!("allow_origins_by_regex: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Arc::new(Cors { c, regexes }))
}

const ALL_METHODS: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }
    fn priority(&self) -> i32 {
        4000
    }
    fn rewrite(&self, ctx: &mut Ctx<'_>) -> Flow {
        let h = &ctx.parts.headers;
        let origin = h
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let allow_origin = if self.c.allow_origins == "*" && self.regexes.is_empty() {
            Some("*".to_string())
        } else if self.c.allow_origins == "**"
            || self.c.allow_origins.split(',').any(|o| o.trim() == origin)
            || self.regexes.iter().any(|r| r.is_match(origin))
        {
            (!origin.is_empty()).then(|| origin.to_string())
        } else {
            None
        };
        let req_headers = h
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if let Some(o) = allow_origin {
            let mut add = |k: &'static str, v: &str| {
                if let Ok(v) = HeaderValue::from_str(v) {
                    ctx.resp_headers.push((HeaderName::from_static(k), v));
                }
            };
            add("access-control-allow-origin", &o);
            if o != "*" {
                add("vary", "Origin");
            }
            let methods = match self.c.allow_methods.as_str() {
                "*" | "**" => ALL_METHODS,
                m => m,
            };
            add("access-control-allow-methods", methods);
            let headers = match self.c.allow_headers.as_str() {
                "*" | "**" => req_headers.as_str(),
                m => m,
            };
            if !headers.is_empty() {
                add("access-control-allow-headers", headers);
            }
            if let Some(e) = &self.c.expose_headers {
                add("access-control-expose-headers", e);
            }
            add("access-control-max-age", &self.c.max_age.to_string());
            if self.c.allow_credential {
                add("access-control-allow-credentials", "true");
            }
        }
        if ctx.parts.method == http::Method::OPTIONS {
            return Flow::Respond(plain(200, None));
        }
        Flow::Continue
    }
}
