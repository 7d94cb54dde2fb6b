//! The drill's HTTP calls (the admin API, and requests through the
//! gateways), over a plain socket so that the binary needs no HTTP client
//! crate.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ADMIN_TIMEOUT;

/// One HTTP/1.1 exchange (`Connection: close`) with a control plane at
/// `base` (`http://host:port`), bounded by [`ADMIN_TIMEOUT`]: the status and
/// the body.
pub(super) async fn http(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let body = body.unwrap_or("");
    let headers = format!(
        "X-API-KEY: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    exchange(base, method, path, None, &headers, body, ADMIN_TIMEOUT).await
}

/// A GET through a gateway at `base` for virtual host `host`, bounded by
/// `limit`. An error means no answer at all (refused, reset, timed out),
/// which a load balancer would try on another gateway.
pub(super) async fn gateway_get(
    base: &str,
    host: &str,
    path: &str,
    limit: Duration,
) -> Result<(u16, String)> {
    exchange(base, "GET", path, Some(host), "", "", limit).await
}

async fn exchange(
    base: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
    headers: &str,
    body: &str,
    limit: Duration,
) -> Result<(u16, String)> {
    let addr = base.strip_prefix("http://").unwrap_or(base).to_string();
    let host = host.unwrap_or(&addr);
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n{body}"
        );
        s.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        anyhow::Ok(String::from_utf8_lossy(&resp).into_owned())
    };
    let resp = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| anyhow!("{method} {base}{path}: no answer within {limit:?}"))?
        .with_context(|| format!("{method} {base}{path}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{method} {base}{path}: no HTTP status in {head:?}"))?;
    Ok((status, body.to_string()))
}

pub(super) fn route_body(id: &str) -> String {
    format!(
        r#"{{"uri":"/drill/{id}","upstream":{{"type":"roundrobin","nodes":{{"127.0.0.1:1980":1}}}}}}"#
    )
}
