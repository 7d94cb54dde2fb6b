//! `cairn echo`: a tiny upstream answering any path with the request as JSON,
//! like httpbin's `/get` (method, args, headers, origin, url), so the guide's
//! smoke test and the drill need nothing else installed.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

use crate::listener::{self, full, Body, Peer};

#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// Address to answer on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
}

pub async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let l = listener::bind(args.listen, "echo").await?;
    tracing::info!(listen = %args.listen, "cairn echo serving");
    listener::serve(l, None, None, None, |req, peer| async move {
        if let Some(d) = delay(req.uri().path()) {
            tokio::time::sleep(d).await;
        }
        answer(req, peer)
    })
    .await;
    Ok(())
}

/// httpbin's `/delay/N`: answer after N seconds (at most 10, as httpbin).
fn delay(path: &str) -> Option<std::time::Duration> {
    let secs: f64 = path.strip_prefix("/delay/")?.parse().ok()?;
    secs.is_finite()
        .then(|| std::time::Duration::from_secs_f64(secs.clamp(0.0, 10.0)))
}

/// `content-type` → `Content-Type`, as httpbin prints header names.
fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut up = true;
    for c in name.chars() {
        out.push(if up { c.to_ascii_uppercase() } else { c });
        up = c == '-';
    }
    out
}

/// `a=1&a=2&b` → `{"a":["1","2"],"b":""}` (httpbin's shape: repeated keys as a list).
pub fn query_args(q: &str) -> Map<String, Value> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in url_pairs(q) {
        m.entry(k).or_default().push(v);
    }
    m.into_iter()
        .map(|(k, mut v)| {
            let val = if v.len() == 1 {
                Value::String(v.remove(0))
            } else {
                json!(v)
            };
            (k, val)
        })
        .collect()
}

/// Splits and percent-decodes an `application/x-www-form-urlencoded` string.
pub fn url_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// `%41+b` → `A b`; malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn answer(req: Request<Incoming>, peer: Peer) -> Response<Body> {
    let mut headers = Map::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let k = title_case(k.as_str());
        match headers.get_mut(&k) {
            Some(Value::String(prev)) => {
                prev.push(',');
                prev.push_str(&v);
            }
            _ => {
                headers.insert(k, Value::String(v));
            }
        }
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let scheme = if peer.tls { "https" } else { "http" };
    let body = json!({
        "args": query_args(req.uri().query().unwrap_or("")),
        "headers": headers,
        "method": req.method().as_str(),
        "origin": peer.remote.ip().to_string(),
        "url": format!("{scheme}://{host}{path_q}"),
    });
    let mut text = serde_json::to_string_pretty(&body).unwrap_or_default();
    text.push('\n');
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::SERVER, "cairn-echo")
        .body(full(text))
        .unwrap_or_else(|_| Response::new(full("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_decoding() {
        let a = query_args("a=1&a=2&b=x%20y&c=d+e&bad=%zz&e");
        assert_eq!(a["a"], json!(["1", "2"]));
        assert_eq!(a["b"], "x y");
        assert_eq!(a["c"], "d e");
        assert_eq!(a["bad"], "%zz");
        assert_eq!(a["e"], "");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(title_case("x-forwarded-for"), "X-Forwarded-For");
    }
}
