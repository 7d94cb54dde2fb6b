//! Nginx variables as APISIX reads them (`arg_*`, `http_*`, `cookie_*`,
//! `uri`, `host`, `remote_addr`, ...), and `vars` expressions
//! (lua-resty-expr: `[[var, op, value], ...]`, all must hold; `!` before an
//! operator negates it), used by route matching, chash keys and plugins.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;
use regex::Regex;
use serde_json::Value;

use crate::cidr::Cidr;

/// The request as variables see it.
#[derive(Debug, Clone, Copy)]
pub struct ReqVars<'a> {
    pub method: &'a str,
    /// Lowercase, without port.
    pub host: &'a str,
    /// The path, not decoded (`$uri` in APISIX is the normalized path).
    pub path: &'a str,
    pub query: &'a str,
    pub remote: IpAddr,
    pub headers: &'a HeaderMap,
    pub scheme: &'a str,
    pub server_port: u16,
    /// Path and query as sent.
    pub request_uri: &'a str,
    /// The consumer's username once an auth plugin identified one.
    pub consumer: Option<&'a str>,
    pub route_id: &'a str,
}

/// The value of variable `name`, if set.
pub fn get<'a>(v: &ReqVars<'a>, name: &str) -> Option<Cow<'a, str>> {
    if let Some(h) = name.strip_prefix("http_") {
        return header(v.headers, h);
    }
    if let Some(a) = name.strip_prefix("arg_") {
        return arg(v.query, a).map(Cow::Owned);
    }
    if let Some(c) = name.strip_prefix("cookie_") {
        return cookie(v.headers, c).map(Cow::Owned);
    }
    Some(Cow::Borrowed(match name {
        "uri" => v.path,
        "host" => v.host,
        "remote_addr" => return Some(Cow::Owned(ip_string(v.remote))),
        "request_method" => v.method,
        "scheme" => v.scheme,
        "server_port" => return Some(Cow::Owned(v.server_port.to_string())),
        "request_uri" => v.request_uri,
        "args" | "query_string" => {
            if v.query.is_empty() {
                return None;
            }
            v.query
        }
        "consumer_name" => return v.consumer.map(Cow::Borrowed),
        "route_id" => v.route_id,
        _ => return None,
    }))
}

/// An address as text, as `to_string` writes it.
pub fn ip_string(ip: IpAddr) -> String {
    let mut v = Vec::with_capacity(15);
    write_ip(&mut v, ip);
    String::from_utf8(v).unwrap_or_default()
}

/// Appends an address as `to_string` writes it, without the formatting
/// machinery for IPv4 (every proxied request writes its client's address).
pub fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if o >= 100 {
                    out.push(b'0' + o / 100);
                }
                if o >= 10 {
                    out.push(b'0' + o / 10 % 10);
                }
                out.push(b'0' + o % 10);
            }
        }
        IpAddr::V6(_) => out.extend_from_slice(ip.to_string().as_bytes()),
    }
}

/// `http_x_api_key` → header `x-api-key` (several values joined by `, ` as nginx does).
pub fn header<'a>(h: &'a HeaderMap, underscored: &str) -> Option<Cow<'a, str>> {
    // Names are usually written as sent (`apikey`): no copy then.
    let name: Cow<str> = if underscored
        .bytes()
        .any(|b| b == b'_' || b.is_ascii_uppercase())
    {
        Cow::Owned(underscored.replace('_', "-").to_ascii_lowercase())
    } else {
        Cow::Borrowed(underscored)
    };
    let mut it = h.get_all(&*name).iter();
    let first = it.next()?.to_str().ok()?;
    let mut out: Option<String> = None;
    for more in it {
        let s = out.get_or_insert_with(|| first.to_string());
        s.push_str(", ");
        s.push_str(more.to_str().unwrap_or(""));
    }
    Some(match out {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(first),
    })
}

/// The first query argument `name`, percent-decoded.
pub fn arg(query: &str, name: &str) -> Option<String> {
    crate::echo::url_pairs(query)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Cookie `name` from the Cookie header(s).
pub fn cookie(h: &HeaderMap, name: &str) -> Option<String> {
    for v in h.get_all(http::header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(';') {
            if let Some((k, val)) = part.trim().split_once('=') {
                if k == name {
                    return Some(val.to_string());
                }
            }
        }
    }
    None
}

/// One `[var, op, value]` term.
#[derive(Debug, Clone)]
pub struct Term {
    var: String,
    negate: bool,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Value),
    Ne(Value),
    Gt(f64),
    Lt(f64),
    Ge(f64),
    Le(f64),
    Regex(Regex),
    In(Vec<Value>),
    Has(String),
    IpMatch(Vec<Cidr>),
}

/// Parses `vars` (`[[var, op, value], ...]`).
pub fn parse(v: &Value) -> Result<Vec<Term>, String> {
    let arr = v.as_array().ok_or("vars must be an array")?;
    arr.iter().map(parse_term).collect()
}

fn parse_term(t: &Value) -> Result<Term, String> {
    let a = t.as_array().ok_or("each vars item must be an array")?;
    let var = a
        .first()
        .and_then(Value::as_str)
        .ok_or("vars item: variable name must be a string")?
        .to_string();
    let (negate, op_i) = match a.get(1).and_then(Value::as_str) {
        Some("!") => (true, 2),
        _ => (false, 1),
    };
    let (op, val) = match (a.get(op_i).and_then(Value::as_str), a.get(op_i + 1)) {
        (Some(op), Some(val)) if a.len() == op_i + 2 => (op, val),
        // `[var, value]` is `==` in lua-resty-expr.
        (_, None) if a.len() == 2 && !negate => ("==", &a[1]),
        _ => return Err(format!("vars item {t}: expected [var, op, value]")),
    };
    let num = |v: &Value| -> Result<f64, String> {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| format!("vars item {t}: {op} needs a number"))
    };
    let op = match op {
        "==" => Op::Eq(val.clone()),
        "~=" => Op::Ne(val.clone()),
        ">" => Op::Gt(num(val)?),
        "<" => Op::Lt(num(val)?),
        ">=" => Op::Ge(num(val)?),
        "<=" => Op::Le(num(val)?),
        "~~" | "~*" => {
            let p = val.as_str().ok_or("regex must be a string")?;
            let p = if op == "~*" {
                format!("(?i){p}")
            } else {
                p.to_string()
            };
            Op::Regex(Regex::new(&p).map_err(|e| format!("bad regex {p}: {e}"))?)
        }
        "in" => Op::In(val.as_array().ok_or("in needs an array")?.clone()),
        "has" => Op::Has(val.as_str().unwrap_or_default().to_string()),
        "ipmatch" => {
            let list: Vec<&str> = match val {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => return Err("ipmatch needs an address or a list".into()),
            };
            Op::IpMatch(
                list.into_iter()
                    .map(Cidr::parse)
                    .collect::<Result<_, _>>()?,
            )
        }
        other => return Err(format!("vars operator {other} is not supported")),
    };
    Ok(Term { var, negate, op })
}

/// `l == r` as lua-resty-expr compares: a number on the right compares numerically.
fn eq(l: &str, r: &Value) -> bool {
    match r {
        Value::String(s) => l == s,
        Value::Number(n) => l.parse::<f64>().ok() == n.as_f64(),
        Value::Bool(b) => l == if *b { "true" } else { "false" },
        _ => false,
    }
}

impl Term {
    pub fn eval(&self, v: &ReqVars<'_>) -> bool {
        let val = get(v, &self.var);
        let res = match (&self.op, val.as_deref()) {
            // A missing variable only satisfies `~=` (nil ~= value).
            (Op::Ne(_), None) => true,
            (_, None) => false,
            (Op::Eq(r), Some(l)) => eq(l, r),
            (Op::Ne(r), Some(l)) => !eq(l, r),
            (Op::Gt(r), Some(l)) => l.parse::<f64>().is_ok_and(|l| l > *r),
            (Op::Lt(r), Some(l)) => l.parse::<f64>().is_ok_and(|l| l < *r),
            (Op::Ge(r), Some(l)) => l.parse::<f64>().is_ok_and(|l| l >= *r),
            (Op::Le(r), Some(l)) => l.parse::<f64>().is_ok_and(|l| l <= *r),
            (Op::Regex(re), Some(l)) => re.is_match(l),
            (Op::In(list), Some(l)) => list.iter().any(|r| eq(l, r)),
            (Op::Has(r), Some(l)) => l.split(", ").any(|x| x == r),
            (Op::IpMatch(c), Some(l)) => l
                .parse::<IpAddr>()
                .is_ok_and(|ip| c.iter().any(|c| c.contains(ip))),
        };
        res != self.negate
    }
}

/// All terms hold.
pub fn eval_all(terms: &[Term], v: &ReqVars<'_>) -> bool {
    terms.iter().all(|t| t.eval(v))
}

/// `$host-$arg_a` → the variables' values.
pub fn expand(tpl: &str, v: &ReqVars<'_>) -> String {
    let mut out = String::new();
    let mut rest = tpl;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if let Some(val) = get(v, &tail[..end]) {
            out.push_str(&val);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ip_string_is_to_string() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.9.99",
            "::1",
            "fe80::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_string(ip), ip.to_string());
        }
    }

    fn with<R>(q: &str, h: &[(&str, &str)], f: impl FnOnce(&ReqVars<'_>) -> R) -> R {
        let mut hm = HeaderMap::new();
        for (k, v) in h {
            hm.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let v = ReqVars {
            method: "GET",
            host: "a.com",
            path: "/p",
            query: q,
            remote: "10.0.0.1".parse().unwrap(),
            headers: &hm,
            scheme: "http",
            server_port: 80,
            request_uri: "/p",
            consumer: None,
            route_id: "1",
        };
        f(&v)
    }

    #[test]
    fn operators() {
        let t = parse(&json!([
            ["arg_a", "==", "1"],
            ["http_x_b", "~~", "^v[0-9]$"],
            ["arg_n", ">", 5],
            ["arg_c", "in", ["x", "y"]],
            ["arg_missing", "~=", "z"],
            ["cookie_s", "!", "==", "no"],
            ["remote_addr", "ipmatch", ["10.0.0.0/8"]]
        ]))
        .unwrap();
        with(
            "a=1&n=6&c=y",
            &[("x-b", "v7"), ("cookie", "s=yes; t=1")],
            |v| assert!(eval_all(&t, v)),
        );
        with("a=1&n=5&c=y", &[("x-b", "v7")], |v| {
            assert!(!eval_all(&t, v))
        });
        with("a=1&n=6&c=q", &[("x-b", "v7")], |v| {
            assert!(!eval_all(&t, v))
        });
        assert!(parse(&json!([["a", "bogus", 1]])).is_err());
        with("", &[], |v| {
            assert_eq!(get(v, "host").unwrap(), "a.com");
            assert!(get(v, "arg_x").is_none());
        });
    }
}
