//! limit-count (1002, fixed window), limit-req (1001, leaky bucket),
//! limit-conn (1003, concurrent requests): counters kept in this gateway's
//! memory (APISIX's `policy: local`; the redis policies are refused), keyed
//! by `key_type`/`key` as APISIX does (`var`, `var_combination`,
//! `constant`; an empty key falls back to the client address). A rejection
//! answers `rejected_code` (default 503) with `{"error_msg": rejected_msg}`
//! when a message is set, else the status's error page.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Ctx;
use super::{conf, json_response, Flow, Plugin};

/// Distinct keys one limiter remembers; when full, expired ones are swept
/// and, failing that, the request is counted under a shared overflow key.
const MAX_KEYS: usize = 100_000;

#[derive(Deserialize, Clone)]
struct KeyConf {
    #[serde(default = "var")]
    key_type: String,
    #[serde(default = "remote_addr")]
    key: String,
    #[serde(default = "c503")]
    rejected_code: u16,
    rejected_msg: Option<String>,
    #[serde(default = "local")]
    policy: String,
}

fn var() -> String {
    "var".into()
}
fn remote_addr() -> String {
    "remote_addr".into()
}
fn c503() -> u16 {
    503
}
fn local() -> String {
    "local".into()
}
fn yes() -> bool {
    true
}

impl KeyConf {
    fn check(&self) -> Result<(), String> {
        if self.policy != "local" {
            return Err(format!(
                "policy {} is not supported by cairn gateway (only local)",
                self.policy
            ));
        }
        if !(200..=599).contains(&self.rejected_code) {
            return Err("rejected_code must be 200-599".into());
        }
        match self.key_type.as_str() {
            "var" | "var_combination" | "constant" => Ok(()),
            k => Err(format!("unknown key_type {k}")),
        }
    }

    fn key<'a>(&'a self, ctx: &'a Ctx<'_>) -> Cow<'a, str> {
        let v = ctx.vars();
        let k = match self.key_type.as_str() {
            "constant" => Cow::Borrowed(self.key.as_str()),
            "var_combination" => Cow::Owned(crate::vars::expand(&self.key, &v)),
            _ => crate::vars::get(&v, &self.key).unwrap_or_default(),
        };
        if k.is_empty() {
            Cow::Owned(crate::vars::ip_string(v.remote))
        } else {
            k
        }
    }

    fn reject(&self) -> Flow {
        Flow::Respond(match &self.rejected_msg {
            Some(m) => json_response(self.rejected_code, &json!({"error_msg": m})),
            None => crate::pages::error_page(self.rejected_code),
        })
    }
}

/// The entry of `key`, copying the key only when it is new.
fn bounded_entry<'m, V>(
    m: &'m mut HashMap<String, V>,
    key: &str,
    expired: impl Fn(&V) -> bool,
    fresh: impl FnOnce() -> V,
) -> &'m mut V {
    if m.contains_key(key) {
        return m.get_mut(key).expect("just checked");
    }
    if m.len() >= MAX_KEYS {
        m.retain(|_, v| !expired(v));
        if m.len() >= MAX_KEYS {
            return m.entry("\u{0}overflow".to_string()).or_insert_with(fresh);
        }
    }
    m.entry(key.to_string()).or_insert_with(fresh)
}

// ---- limit-count ----

// Statics: `from_static` checks a custom name each time it runs.
static X_RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("x-ratelimit-reset");

#[derive(Deserialize)]
struct CountConf {
    count: u64,
    time_window: u64,
    #[serde(flatten)]
    key: KeyConf,
    #[serde(default = "yes")]
    show_limit_quota_header: bool,
    #[serde(default)]
    allow_degradation: bool,
    group: Option<String>,
}

pub struct LimitCount {
    c: CountConf,
    /// key → (window start, used).
    windows: Mutex<HashMap<String, (Instant, u64)>>,
}

pub fn limit_count(v: &Value) -> Result<Arc<dyn Plugin>, String> {
    let c: CountConf = conf(v)?;
    c.key.check()?;
    if c.count == 0 || c.time_window == 0 {
        return Err("count and time_window must be positive".into());
    }
    let _ = (c.allow_degradation, &c.group);
    Ok(Arc::new(LimitCount {
        c,
        windows: Mutex::new(HashMap::new()),
    }))
}

impl Plugin for LimitCount {
    fn name(&self) -> &'static str {
        "limit-count"
    }
    fn priority(&self) -> i32 {
        1002
    }
    fn access(&self, ctx: &mut Ctx<'_>) -> Flow {
        let key = self.c.key.key(ctx);
        let window = Duration::from_secs(self.c.time_window);
        let now = Instant::now();
        let (allowed, remaining, reset) = {
            let mut m = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            let e = bounded_entry(
                &mut m,
                &key,
                |(start, _)| now.duration_since(*start) >= window,
                || (now, 0),
            );
            if now.duration_since(e.0) >= window {
                *e = (now, 0);
            }
            let reset = window
                .saturating_sub(now.duration_since(e.0))
                .as_secs_f64()
                .ceil() as u64;
            if e.1 >= self.c.count {
                (false, 0, reset)
            } else {
                e.1 += 1;
                (true, self.c.count - e.1, reset)
            }
        };
        if self.c.show_limit_quota_header {
            for (k, v) in [
                (&X_RATELIMIT_LIMIT, self.c.count),
                (&X_RATELIMIT_REMAINING, remaining),
                (&X_RATELIMIT_RESET, reset),
            ] {
                ctx.resp_headers.push((k.clone(), HeaderValue::from(v)));
            }
        }
        if allowed {
            Flow::Continue
        } else {
            self.c.key.reject()
        }
    }
}

// ---- limit-req ----

#[derive(Deserialize)]
struct ReqConf {
    rate: f64,
    burst: f64,
    #[serde(flatten)]
    key: KeyConf,
    #[serde(default)]
    nodelay: bool,
    #[serde(default)]
    allow_degradation: bool,
}

pub struct LimitReq {
    c: ReqConf,
    /// key → (last update, excess requests).
    state: Mutex<HashMap<String, (Instant, f64)>>,
}

pub fn limit_req(v: &Value) -> Result<Arc<dyn Plugin>, String> {
    let c: ReqConf = conf(v)?;
    c.key.check()?;
    if c.rate <= 0.0 || c.burst < 0.0 {
        return Err("rate must be positive and burst not negative".into());
    }
    let _ = c.allow_degradation;
    Ok(Arc::new(LimitReq {
        c,
        state: Mutex::new(HashMap::new()),
    }))
}

impl Plugin for LimitReq {
    fn name(&self) -> &'static str {
        "limit-req"
    }
    fn priority(&self) -> i32 {
        1001
    }
    fn access(&self, ctx: &mut Ctx<'_>) -> Flow {
        let key = self.c.key.key(ctx);
        let now = Instant::now();
        let rate = self.c.rate;
        let excess = {
            let mut m = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let drained =
                |(t, ex): &(Instant, f64)| ex - rate * now.duration_since(*t).as_secs_f64() <= 0.0;
            let e = bounded_entry(&mut m, &key, drained, || (now, 0.0));
            // nginx's leaky bucket: the excess drains at `rate` per second.
            let ex = (e.1 - rate * now.duration_since(e.0).as_secs_f64()).max(0.0) + 1.0;
            if ex - 1.0 > self.c.burst {
                None
            } else {
                *e = (now, ex);
                Some(ex - 1.0)
            }
        };
        match excess {
            None => self.c.key.reject(),
            Some(ex) if ex > 0.0 && !self.c.nodelay => {
                Flow::Delay(Duration::from_secs_f64((ex / rate).min(60.0)))
            }
            Some(_) => Flow::Continue,
        }
    }
}

// ---- limit-conn ----

#[derive(Deserialize)]
struct ConnConf {
    conn: u64,
    burst: u64,
    default_conn_delay: f64,
    #[serde(default)]
    only_use_default_delay: bool,
    #[serde(flatten)]
    key: KeyConf,
    #[serde(default)]
    allow_degradation: bool,
}

pub struct LimitConn {
    c: ConnConf,
    active: Arc<Mutex<HashMap<String, u64>>>,
}

pub fn limit_conn(v: &Value) -> Result<Arc<dyn Plugin>, String> {
    let c: ConnConf = conf(v)?;
    c.key.check()?;
    if c.conn == 0 || c.default_conn_delay <= 0.0 {
        return Err("conn and default_conn_delay must be positive".into());
    }
    let _ = (c.allow_degradation, c.only_use_default_delay);
    Ok(Arc::new(LimitConn {
        c,
        active: Arc::new(Mutex::new(HashMap::new())),
    }))
}

/// One in-flight request under a key; released when the response ends.
struct Slot {
    active: Arc<Mutex<HashMap<String, u64>>>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Plugin for LimitConn {
    fn name(&self) -> &'static str {
        "limit-conn"
    }
    fn priority(&self) -> i32 {
        1003
    }
    fn access(&self, ctx: &mut Ctx<'_>) -> Flow {
        let key = self.c.key.key(ctx);
        let n = {
            let mut m = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let e = bounded_entry(&mut m, &key, |n| *n == 0, || 0);
            if *e >= self.c.conn + self.c.burst {
                return self.c.key.reject();
            }
            *e += 1;
            *e
        };
        let key = key.into_owned();
        ctx.guards.push(Box::new(Slot {
            active: self.active.clone(),
            key,
        }));
        if n > self.c.conn {
            // Over `conn` but within `burst`: delayed, as nginx's limit_conn.
            let excess = (n - self.c.conn) as f64;
            return Flow::Delay(Duration::from_secs_f64(
                (self.c.default_conn_delay * excess).min(60.0),
            ));
        }
        Flow::Continue
    }
}
