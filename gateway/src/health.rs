//! Upstream health checks with APISIX's `checks` fields and defaults
//! (lua-resty-healthcheck's rules): active probes (`http`, `https`, `tcp`)
//! on an interval per state, and passive checks of real responses. A node
//! turns unhealthy after `unhealthy.http_failures` / `tcp_failures` /
//! `timeouts` consecutive failures of that kind, and healthy again after
//! `healthy.successes` successes. Unhealthy nodes are skipped, unless every
//! node is unhealthy: then all are used, as APISIX does.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::UpstreamRt;

fn one_f() -> f64 {
    1.0
}
fn http() -> String {
    "http".into()
}
fn slash() -> String {
    "/".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Checks {
    pub active: Option<Active>,
    pub passive: Option<Passive>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Active {
    #[serde(rename = "type", default = "http")]
    pub kind: String,
    #[serde(default = "one_f")]
    pub timeout: f64,
    #[serde(default = "slash")]
    pub http_path: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(default)]
    pub req_headers: Vec<String>,
    #[serde(default)]
    pub healthy: ActiveHealthy,
    #[serde(default)]
    pub unhealthy: ActiveUnhealthy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ActiveHealthy {
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub successes: u32,
}

impl Default for ActiveHealthy {
    fn default() -> Self {
        ActiveHealthy {
            interval: 1.0,
            http_statuses: vec![200, 302],
            successes: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ActiveUnhealthy {
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
}

impl Default for ActiveUnhealthy {
    fn default() -> Self {
        ActiveUnhealthy {
            interval: 1.0,
            http_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505],
            http_failures: 5,
            tcp_failures: 2,
            timeouts: 3,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Passive {
    #[serde(rename = "type", default = "http")]
    pub kind: String,
    #[serde(default)]
    pub healthy: PassiveHealthy,
    #[serde(default)]
    pub unhealthy: PassiveUnhealthy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PassiveHealthy {
    pub http_statuses: Vec<u16>,
    pub successes: u32,
}

impl Default for PassiveHealthy {
    fn default() -> Self {
        PassiveHealthy {
            http_statuses: vec![
                200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305,
                306, 307, 308,
            ],
            successes: 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PassiveUnhealthy {
    pub http_statuses: Vec<u16>,
    pub tcp_failures: u32,
    pub timeouts: u32,
    pub http_failures: u32,
}

impl Default for PassiveUnhealthy {
    fn default() -> Self {
        PassiveUnhealthy {
            http_statuses: vec![429, 500, 503],
            tcp_failures: 2,
            timeouts: 7,
            http_failures: 5,
        }
    }
}

impl Checks {
    pub fn parse(v: &serde_json::Value) -> Result<Checks, String> {
        let c: Checks = serde_json::from_value(v.clone()).map_err(|e| format!("checks: {e}"))?;
        match &c.active {
            None => {
                return Err("checks: passive health checks need active ones (APISIX's rule)".into())
            }
            Some(a) if !matches!(a.kind.as_str(), "http" | "https" | "tcp") => {
                return Err(format!("checks.active.type {} is not supported", a.kind))
            }
            _ => {}
        }
        if let Some(p) = &c.passive {
            if p.kind != "http" && p.kind != "https" && p.kind != "tcp" {
                return Err(format!("checks.passive.type {} is not supported", p.kind));
            }
        }
        Ok(c)
    }
}

/// What one probe or one proxied attempt showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    TcpFailure,
    Timeout,
}

/// One node's state and counters.
#[derive(Debug, Default)]
pub struct NodeHealth {
    unhealthy: AtomicBool,
    successes: AtomicU32,
    http_failures: AtomicU32,
    tcp_failures: AtomicU32,
    timeouts: AtomicU32,
}

/// Thresholds of one kind of check.
pub struct Rules<'a> {
    pub healthy_statuses: &'a [u16],
    pub successes: u32,
    pub unhealthy_statuses: &'a [u16],
    pub http_failures: u32,
    pub tcp_failures: u32,
    pub timeouts: u32,
}

impl NodeHealth {
    pub fn healthy(&self) -> bool {
        !self.unhealthy.load(Ordering::Relaxed)
    }

    /// Counts `o`; returns true when the node changed state.
    pub fn report(&self, o: Outcome, r: &Rules<'_>) -> bool {
        let bump = |c: &AtomicU32| c.fetch_add(1, Ordering::Relaxed) + 1;
        let reset_failures = || {
            self.http_failures.store(0, Ordering::Relaxed);
            self.tcp_failures.store(0, Ordering::Relaxed);
            self.timeouts.store(0, Ordering::Relaxed);
        };
        let (success, tripped) = match o {
            Outcome::Status(s) if r.healthy_statuses.contains(&s) => (true, false),
            Outcome::Status(s) if r.unhealthy_statuses.contains(&s) => {
                (false, bump(&self.http_failures) >= r.http_failures.max(1))
            }
            // A status in neither list counts for nothing.
            Outcome::Status(_) => return false,
            Outcome::TcpFailure => (false, bump(&self.tcp_failures) >= r.tcp_failures.max(1)),
            Outcome::Timeout => (false, bump(&self.timeouts) >= r.timeouts.max(1)),
        };
        if success {
            reset_failures();
            if self.unhealthy.load(Ordering::Relaxed) && bump(&self.successes) >= r.successes.max(1)
            {
                self.successes.store(0, Ordering::Relaxed);
                self.unhealthy.store(false, Ordering::Relaxed);
                return true;
            }
            return false;
        }
        self.successes.store(0, Ordering::Relaxed);
        if tripped && !self.unhealthy.swap(true, Ordering::Relaxed) {
            reset_failures();
            return true;
        }
        false
    }
}

impl Active {
    fn rules(&self) -> Rules<'_> {
        Rules {
            healthy_statuses: &self.healthy.http_statuses,
            successes: self.healthy.successes,
            unhealthy_statuses: &self.unhealthy.http_statuses,
            http_failures: self.unhealthy.http_failures,
            tcp_failures: self.unhealthy.tcp_failures,
            timeouts: self.unhealthy.timeouts,
        }
    }
}

impl Passive {
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            healthy_statuses: &self.healthy.http_statuses,
            successes: self.healthy.successes,
            unhealthy_statuses: &self.unhealthy.http_statuses,
            http_failures: self.unhealthy.http_failures,
            tcp_failures: self.unhealthy.tcp_failures,
            timeouts: self.unhealthy.timeouts,
        }
    }
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
pub fn start(up: &Arc<UpstreamRt>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let a: Active = serde_json::from_value(serde_json::json!({})).unwrap();
        let r = a.rules();
        let n = NodeHealth::default();
        assert!(!n.report(Outcome::TcpFailure, &r));
        assert!(n.report(Outcome::TcpFailure, &r));
        assert!(!n.healthy());
        // A status in neither list does not count.
        assert!(!n.report(Outcome::Status(418), &r));
        assert!(!n.report(Outcome::Status(200), &r));
        assert!(n.report(Outcome::Status(302), &r));
        assert!(n.healthy());
        for _ in 0..4 {
            assert!(!n.report(Outcome::Status(500), &r));
        }
        assert!(n.report(Outcome::Status(500), &r));
        assert!(Checks::parse(&serde_json::json!({"passive": {}})).is_err());
        assert!(Checks::parse(&serde_json::json!({"active": {"type": "tcp"}})).is_ok());
    }
}
