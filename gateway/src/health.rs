//! Upstream health checks with APISIX's `checks` fields and defaults
//! (lua-resty-healthcheck's rules): active probes (`http`, `https`, `tcp`)
//! on an interval per state, and passive checks of real responses. A node
//! turns unhealthy after `unhealthy.http_failures` / `tcp_failures` /
//! `timeouts` consecutive failures of that kind, and healthy again after
//! `healthy.successes` successes. Unhealthy nodes are skipped, unless every
//! node is unhealthy: then all are used, as APISIX does.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use serde::Deserialize;

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
