//! The drill's gateway tier: two gateways and an echo upstream, with steady
//! traffic sent to them the way the load balancer in front of them would,
//! configured as compose's drill configures haproxy: each gateway's
//! `/readyz` is checked every 200 ms (out after 2 failures, back after 2
//! successes), requests take turns among the gateways in service, and one
//! that gets no answer at all (refused, reset) is tried on the next. A
//! request counts as failed when no gateway answers it or the answer is not
//! 200.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::task::JoinHandle;

use super::admin::{gateway_get, http};
use super::{ready, Drill, SLOW};

/// The virtual host of the drill's routes (the reference guide's).
const HOST: &str = "test.com";

/// The route the steady traffic uses.
pub(super) const TRAFFIC_ROUTE: &str = "drill-traffic";

/// Time between two requests of the steady traffic (about 50 a second).
const PACE: Duration = Duration::from_millis(20);

/// Bound of one request through a gateway.
const REQUEST_LIMIT: Duration = Duration::from_secs(5);

/// Health checks: interval, bound of one check, and how many results in a
/// row take a gateway out of service or back in (haproxy's `inter`,
/// `timeout check`, `fall`, `rise`).
const CHECK_EVERY: Duration = Duration::from_millis(200);
const CHECK_LIMIT: Duration = Duration::from_secs(1);
const FALL: u32 = 2;
const RISE: u32 = 2;

/// The admin API body of a route for `uri` on [`HOST`], served by the echo
/// upstream at `echo` (`host:port`).
pub(super) fn echo_route(uri: &str, echo: &str) -> String {
    format!(
        r#"{{"uri":"{uri}","hosts":["{HOST}"],"upstream":{{"type":"roundrobin","nodes":{{"{echo}":1}}}}}}"#
    )
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, for the summary.
    errors: Mutex<Vec<String>>,
}

/// Steady traffic through the gateways, until stopped.
pub(super) struct Traffic {
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A gateway behind the load balancer.
pub(super) struct Backend {
    /// Where traffic goes (`http://host:port`).
    url: String,
    /// Where its `/readyz` is.
    status: String,
    /// In service (the health checks' verdict); every gateway starts in.
    up: AtomicBool,
}

impl Backend {
    pub(super) fn new(url: String, status: String) -> Backend {
        Backend {
            url,
            status,
            up: AtomicBool::new(true),
        }
    }
}

/// Requests sent up to a point: (answered 200, failed).
#[derive(Clone, Copy)]
pub(super) struct Mark(u64, u64);

impl Mark {
    pub(super) const ZERO: Mark = Mark(0, 0);
}

impl Traffic {
    pub(super) fn start(gateways: Vec<Backend>) -> Traffic {
        let gateways = Arc::new(gateways);
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks: Vec<JoinHandle<()>> = (0..gateways.len())
            .map(|i| tokio::spawn(health_checks(gateways.clone(), i, stop.clone())))
            .collect();
        tasks.push({
            let (counts, stop) = (counts.clone(), stop.clone());
            tokio::spawn(async move {
                let mut turn = 0;
                while !stop.load(Ordering::Relaxed) {
                    let next = Instant::now() + PACE;
                    turn += 1;
                    let outcome = send(&gateways, turn).await;
                    match outcome {
                        Ok(()) => counts.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            let mut errors = counts.errors.lock().unwrap();
                            if errors.len() < 5 {
                                errors.push(e);
                            }
                            counts.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep_until(next.into()).await;
                }
            })
        });
        Traffic {
            counts,
            stop,
            tasks,
        }
    }

    pub(super) fn mark(&self) -> Mark {
        Mark(
            self.counts.ok.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        )
    }

    /// (requests, failed) since `m`, and the first failures seen at all.
    pub(super) fn since(&self, m: Mark) -> (u64, u64, Vec<String>) {
        let now = self.mark();
        let failed = now.1 - m.1;
        let sent = now.0 - m.0 + failed;
        (sent, failed, self.counts.errors.lock().unwrap().clone())
    }

    pub(super) async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Checks gateway `i` until stopped, taking it out of service and back.
async fn health_checks(gateways: Arc<Vec<Backend>>, i: usize, stop: Arc<AtomicBool>) {
    let g = &gateways[i];
    let mut streak = 0;
    while !stop.load(Ordering::Relaxed) {
        let next = Instant::now() + CHECK_EVERY;
        let ok = matches!(
            gateway_get(&g.status, HOST, "/readyz", CHECK_LIMIT).await,
            Ok((200, _))
        );
        let up = g.up.load(Ordering::Relaxed);
        // A result that agrees with the state resets the streak.
        streak = if ok == up { 0 } else { streak + 1 };
        if streak >= if up { FALL } else { RISE } {
            g.up.store(!up, Ordering::Relaxed);
            println!(
                "  load balancer: {} {}",
                g.url,
                if up {
                    "out of service"
                } else {
                    "back in service"
                }
            );
            streak = 0;
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

/// One request: to the gateway in service whose turn it is, then to the
/// next ones while none answers.
async fn send(gateways: &[Backend], turn: usize) -> Result<(), String> {
    let up: Vec<&Backend> = gateways
        .iter()
        .filter(|g| g.up.load(Ordering::Relaxed))
        .collect();
    if up.is_empty() {
        return Err("no gateway in service".into());
    }
    let mut last = String::new();
    for k in 0..up.len() {
        let g = &up[(turn + k) % up.len()].url;
        match gateway_get(g, HOST, "/get", REQUEST_LIMIT).await {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => return Err(format!("{g}: {code} {body}")),
            Err(e) => last = format!("{e:#}"),
        }
    }
    Err(format!("no gateway answered: {last}"))
}

impl Drill {
    /// Starts the echo upstream and both gateways, and waits until each
    /// gateway says it is ready (its first full load of the config).
    pub(super) async fn start_gateway_tier(&mut self) -> Result<()> {
        let exe = self.exe.clone();
        self.echo.spawn(&exe)?;
        for i in 0..self.gateways.len() {
            self.start_gateway(i).await?;
        }
        Ok(())
    }

    /// Starts gateway `i` and waits until it is ready.
    pub(super) async fn start_gateway(&mut self, i: usize) -> Result<()> {
        let exe = self.exe.clone();
        self.gateways[i].spawn(&exe)?;
        ready(&self.gateway_status[i], self.gateways[i].name).await
    }

    /// Writes a route for `uri` through control plane `control` and waits
    /// until every gateway serves it: the time from the PUT until the last
    /// gateway answered 200.
    pub(super) async fn route_reaches_gateways(
        &mut self,
        control: usize,
        id: &str,
        uri: &str,
    ) -> Result<Duration> {
        let base = self.controls[control].client_url.clone();
        let path = format!("/apisix/admin/routes/{id}");
        let t = Instant::now();
        match http(
            &base,
            "PUT",
            &path,
            &self.admin_key,
            Some(&echo_route(uri, &self.echo_addr)),
        )
        .await
        {
            Ok((200 | 201, _)) => {}
            other => bail!("PUT {path} via {}: {other:?}", self.controls[control].name),
        }
        for g in &self.gateways {
            loop {
                match gateway_get(&g.client_url, HOST, uri, REQUEST_LIMIT).await {
                    Ok((200, _)) => break,
                    other if t.elapsed() > SLOW => {
                        bail!(
                            "{} does not serve {uri} {SLOW:?} after the PUT: {other:?}",
                            g.name
                        )
                    }
                    _ => tokio::time::sleep(Duration::from_millis(2)).await,
                }
            }
        }
        Ok(t.elapsed())
    }

    /// The result line of the traffic through the gateways since `m`:
    /// passes when requests flowed and none failed.
    pub(super) fn traffic_result(&mut self, scenario: &str, m: Mark) {
        let Some(t) = &self.traffic else { return };
        let (sent, failed, errors) = t.since(m);
        if failed > 0 {
            println!("  failed requests through the gateways (first ones): {errors:?}");
        }
        self.result(
            sent > 0 && failed == 0,
            format!("{scenario} gateways kept serving: {sent} requests, {failed} failed"),
        );
    }

    /// 0b: stop gateway1 (SIGTERM: it drains, then exits); the traffic
    /// goes on through gateway2; gateway1 comes back.
    pub(super) async fn gateway_failover(&mut self) -> Result<()> {
        let Some(m) = self.traffic.as_ref().map(Traffic::mark) else {
            return Ok(());
        };
        self.gateways[0].stop().await;
        println!("stopped gateway1");
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.start_gateway(0).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.traffic_result("0b stop gateway1:", m);
        Ok(())
    }
}
