//! The drill's admin API calls, over a plain socket so that the binary needs
//! no HTTP client crate.

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ADMIN_TIMEOUT;

/// One HTTP/1.1 exchange (`Connection: close`) with a control plane at
/// `base` (`http://host:port`), bounded by [`ADMIN_TIMEOUT`]: the status and
/// the body. A plain socket, so that the binary needs no HTTP client crate.
pub(super) async fn http(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let addr = base.strip_prefix("http://").unwrap_or(base).to_string();
    let body = body.unwrap_or("");
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nX-API-KEY: {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
        anyhow::Ok(String::from_utf8_lossy(&resp).into_owned())
    };
    let resp = tokio::time::timeout(ADMIN_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("{method} {base}{path}: no answer within {ADMIN_TIMEOUT:?}"))?
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
