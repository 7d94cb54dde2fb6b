//! Active health checks of one upstream: a task per upstream that probes
//! its nodes on the intervals of [`crate::health`]'s rules and records the
//! outcomes. Its own module so that the health rules and the upstream they
//! watch do not depend on each other: this one depends on both.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::health::{Active, Outcome};
use crate::resources::Upstream;
use crate::upstream::UpstreamRt;

/// A shared upstream with its active health checks running.
pub fn shared(key: String, spec: Upstream) -> Result<Arc<UpstreamRt>, String> {
    let up = Arc::new(UpstreamRt::new(key, spec)?);
    start(&up);
    Ok(up)
}

/// Probes node `i` once.
async fn probe(up: &UpstreamRt, a: &Active, i: usize) -> Outcome {
    let n = up.node(i);
    let port = a.port.unwrap_or(if n.port == 0 {
        if a.kind == "https" {
            443
        } else {
            80
        }
    } else {
        n.port
    });
    let timeout = crate::upstream::secs(a.timeout);
    let scheme = if a.kind == "https" { "https" } else { "http" };
    let host = if n.host.contains(':') {
        format!("[{}]", n.host)
    } else {
        n.host.clone()
    };
    let Ok(uri) = format!("{scheme}://{host}:{port}/").parse::<http::Uri>() else {
        return Outcome::TcpFailure;
    };
    let mut c = crate::connect::Connector::new(timeout);
    let io = match tower_service::Service::call(&mut c, uri).await {
        Ok(io) => io.into_inner(),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Outcome::Timeout,
        Err(_) => return Outcome::TcpFailure,
    };
    if a.kind == "tcp" {
        // Connected: that is all a tcp check asks.
        return Outcome::Status(200);
    }
    let mut io = io;
    let host_header = a.host.clone().unwrap_or_else(|| n.host.clone());
    let mut req = format!(
        "GET {} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: cairn-gateway health check\r\n",
        a.http_path
    );
    for h in &a.req_headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let exchange = async {
        io.write_all(req.as_bytes()).await?;
        let mut buf = vec![0u8; 1024];
        let mut got = 0;
        // The status line fits in the first kilobyte.
        while got < buf.len() {
            let n = io.read(&mut buf[got..]).await?;
            if n == 0 || buf[..got + n].contains(&b'\n') {
                got += n;
                break;
            }
            got += n;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..got]).into_owned())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Outcome::Timeout,
        Ok(Err(_)) => Outcome::TcpFailure,
        Ok(Ok(head)) => match head.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            Some(s) => Outcome::Status(s),
            None => Outcome::TcpFailure,
        },
    }
}

/// Runs the active checks of `up` while it is in use (the task ends once the
/// upstream was replaced or deleted and its last request finished).
fn start(up: &Arc<UpstreamRt>) {
    let Some(a) = up.checks.as_ref().and_then(|c| c.active.clone()) else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<UpstreamRt> = Arc::downgrade(up);
    let every = |s: f64| (s > 0.0).then(|| crate::upstream::secs(s));
    let (hi, ui) = (every(a.healthy.interval), every(a.unhealthy.interval));
    let Some(tick) = [hi, ui].into_iter().flatten().min() else {
        return;
    };
    rt.spawn(async move {
        let mut elapsed = Duration::ZERO;
        loop {
            tokio::time::sleep(tick).await;
            elapsed += tick;
            let Some(up) = weak.upgrade() else { return };
            for i in 0..up.spec.nodes.len() {
                let interval = if up.health[i].healthy() { hi } else { ui };
                let due = interval.is_some_and(|iv| elapsed.as_millis() % iv.as_millis().max(1) < tick.as_millis());
                if !due {
                    continue;
                }
                let o = probe(&up, &a, i).await;
                if up.health[i].report(o, &a.rules()) {
                    tracing::warn!(upstream = %up.key, node = %up.node(i).addr(), healthy = up.health[i].healthy(), outcome = ?o, "active health check changed a node's state");
                }
            }
        }
    });
}
