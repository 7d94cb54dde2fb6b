//! The small plugins: ip-restriction (3000), request-id (12015),
//! prometheus (500, a marker: `server` records the request's metrics when a
//! route's plugins include it).

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use super::Ctx;
use super::{conf, message, Flow, Plugin};
use crate::cidr::Cidr;

// ---- ip-restriction ----

#[derive(Deserialize)]
struct IpConf {
    whitelist: Option<Vec<String>>,
    blacklist: Option<Vec<String>>,
    #[serde(default = "not_allowed")]
    message: String,
}

fn not_allowed() -> String {
    "Your IP address is not allowed".into()
}

pub struct IpRestriction {
    allow: Option<Vec<Cidr>>,
    deny: Vec<Cidr>,
    message: String,
}

pub fn ip_restriction(v: &Value) -> Result<Arc<dyn Plugin>, String> {
    let c: IpConf = conf(v)?;
    let parse = |l: &Vec<String>| {
        l.iter()
            .map(|s| Cidr::parse(s))
            .collect::<Result<Vec<_>, _>>()
    };
    if c.whitelist.is_some() == c.blacklist.is_some() {
        return Err("exactly one of whitelist and blacklist is required".into());
    }
    Ok(Arc::new(IpRestriction {
        allow: c.whitelist.as_ref().map(parse).transpose()?,
        deny: c
            .blacklist
            .as_ref()
            .map(parse)
            .transpose()?
            .unwrap_or_default(),
        message: c.message,
    }))
}

impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        "ip-restriction"
    }
    fn priority(&self) -> i32 {
        3000
    }
    fn access(&self, ctx: &mut Ctx<'_>) -> Flow {
        let ip = ctx.peer.remote.ip();
        let denied = self.deny.iter().any(|c| c.contains(ip))
            || self
                .allow
                .as_ref()
                .is_some_and(|a| !a.iter().any(|c| c.contains(ip)));
        if denied {
            Flow::Respond(message(403, &self.message))
        } else {
            Flow::Continue
        }
    }
}

// ---- request-id ----

#[derive(Deserialize)]
struct RequestIdConf {
    #[serde(default = "x_request_id")]
    header_name: String,
    #[serde(default = "yes")]
    include_in_response: bool,
    #[serde(default = "uuid")]
    algorithm: String,
}

fn x_request_id() -> String {
    "X-Request-Id".into()
}
fn yes() -> bool {
    true
}
fn uuid() -> String {
    "uuid".into()
}

pub struct RequestId {
    header: HeaderName,
    include: bool,
}

pub fn request_id(v: &Value) -> Result<Arc<dyn Plugin>, String> {
    let c: RequestIdConf = conf(v)?;
    if c.algorithm != "uuid" {
        return Err(format!(
            "algorithm {} is not supported by cairn gateway (only uuid)",
            c.algorithm
        ));
    }
    Ok(Arc::new(RequestId {
        header: HeaderName::from_bytes(c.header_name.as_bytes()).map_err(|e| e.to_string())?,
        include: c.include_in_response,
    }))
}

/// A random (v4) UUID.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Plugin for RequestId {
    fn name(&self) -> &'static str {
        "request-id"
    }
    fn priority(&self) -> i32 {
        12015
    }
    fn rewrite(&self, ctx: &mut Ctx<'_>) -> Flow {
        let id = match ctx.parts.headers.get(&self.header) {
            Some(v) => v.clone(),
            None => {
                let v = HeaderValue::from_str(&uuid_v4()).unwrap_or(HeaderValue::from_static(""));
                ctx.parts.headers.insert(self.header.clone(), v.clone());
                v
            }
        };
        if self.include {
            ctx.resp_headers.push((self.header.clone(), id));
        }
        Flow::Continue
    }
}

// ---- prometheus ----

pub struct Prometheus;

pub fn prometheus(_v: &Value) -> Result<Arc<dyn Plugin>, String> {
    Ok(Arc::new(Prometheus))
}

impl Plugin for Prometheus {
    fn name(&self) -> &'static str {
        "prometheus"
    }
    fn priority(&self) -> i32 {
        500
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid_shape() {
        let u = super::uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, super::uuid_v4());
    }
}
