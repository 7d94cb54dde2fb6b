//! `cairn healthcheck URL`: one HTTP GET, exit 0 on a 2xx answer, 1 otherwise.
//!
//! The image is `FROM scratch` and holds nothing but `cairn`, so compose
//! health checks cannot call curl or wget: the binary checks itself. Plain
//! HTTP/1.1 over one TCP connection is all a health check needs, so this is
//! written out here rather than pulling an HTTP client into the binary.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Args)]
pub struct HealthcheckArgs {
    /// URL to GET, e.g. http://127.0.0.1:2379/health (http only).
    url: String,
    /// Give up after this many seconds (connect, send and answer together).
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

/// Runs the check and prints one short line; the caller maps `Err` to exit 1.
pub async fn run(args: HealthcheckArgs) -> Result<()> {
    let limit = Duration::from_secs(args.timeout);
    let (status, line) = tokio::time::timeout(limit, get(&args.url))
        .await
        .map_err(|_| anyhow!("{}: no answer within {limit:?}", args.url))??;
    if (200..300).contains(&status) {
        println!("{}: {line}", args.url);
        Ok(())
    } else {
        bail!("{}: {line}", args.url)
    }
}

/// `http://host[:port][/path]` split into host, port and path.
fn parse(url: &str) -> Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| anyhow!("{url}: unclosed '['"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("{url}: no host");
    }
    let port = match port {
        Some(p) => p.parse().with_context(|| format!("{url}: bad port"))?,
        None => 80,
    };
    Ok((host.to_string(), port, path.to_string()))
}

/// GETs `url`; returns the status code and the status line plus the start
/// of the body (for the message).
async fn get(url: &str) -> Result<(u16, String)> {
    let (host, port, path) = parse(url)?;
    // The same resolver as every other connection of this binary: in the
    // scratch image the system one cannot resolve names.
    let mut stream = cairn_client::resolve::connect(&host, port)
        .await
        .with_context(|| format!("{url}: connect"))?;
    let host_header = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: cairn-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    // Status line and a little body are enough; a health answer is small and
    // the server closes the connection (Connection: close).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 16 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("");
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("{url}: not an HTTP answer: {status_line:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked bodies start with a size line; show the first line that looks
    // like content.
    let snippet = body
        .lines()
        .find(|l| l.contains('{') || l.len() > 8)
        .unwrap_or("")
        .trim();
    let snippet: String = snippet.chars().take(200).collect();
    Ok((code, format!("{} {snippet}", status_line.trim())))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse("http://127.0.0.1:2379/health").unwrap(),
            ("127.0.0.1".into(), 2379, "/health".into())
        );
        assert_eq!(
            parse("http://store1").unwrap(),
            ("store1".into(), 80, "/".into())
        );
        assert_eq!(
            parse("http://[::1]:9000/readyz").unwrap(),
            ("::1".into(), 9000, "/readyz".into())
        );
        for bad in ["https://a:1/", "a:1", "http://:1/", "http://a:x/"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
