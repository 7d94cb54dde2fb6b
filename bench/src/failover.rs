//! `cairn bench failover`: steady writes, `kill -9` of the leader, and the
//! unavailability window it causes.
//!
//! The window is measured from the client's side: from the completion of the
//! last successful write before the kill to the completion of the first
//! successful write *sent* after the kill. (A write sent before the kill may
//! still complete afterwards because it was already committed; counting it
//! would hide the outage.) Which process is the leader is found with
//! Maintenance.Status, and its PID from `--pids ENDPOINT=PID,...` or
//! `--leader-pid-cmd`, so the same invocation works for etcd and Cairn.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use cairn_client::{Client, Error, PutOptions};
use serde::Serialize;

use crate::args::{Common, FailoverArgs};
use crate::conn::{self, Leader};
use crate::keys::{self, KeyGen};
use crate::report::{errors_block, latency_line};
use crate::schedule::Schedule;
use crate::stats::{Recorder, Summary};
use crate::workloads::{error_kind, WorkerState};

/// One write as seen by the client, times relative to the run's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub sent: Duration,
    pub done: Duration,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Certainly not applied, or refused by the server.
    Failed,
    /// Outcome unknown: may or may not have been applied.
    Ambiguous,
}

/// The unavailability window around a kill at `kill` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Window {
    /// Completion of the last success before the kill (s since start).
    pub last_ok_before_s: Option<f64>,
    /// Completion of the first success sent after the kill (s since start).
    pub first_ok_after_s: Option<f64>,
    /// `first_ok_after - last_ok_before`, the headline number.
    pub unavailable_ms: Option<f64>,
    /// `first_ok_after - kill`.
    pub kill_to_first_ok_ms: Option<f64>,
}

pub fn window(events: &[Event], kill: Duration) -> Window {
    let last = events
        .iter()
        .filter(|e| e.outcome == Outcome::Ok && e.done <= kill)
        .map(|e| e.done)
        .max();
    let first = events
        .iter()
        .filter(|e| e.outcome == Outcome::Ok && e.sent >= kill)
        .map(|e| e.done)
        .min();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Window {
        last_ok_before_s: last.map(|d| d.as_secs_f64()),
        first_ok_after_s: first.map(|d| d.as_secs_f64()),
        unavailable_ms: first.zip(last).map(|(f, l)| ms(f.saturating_sub(l))),
        kill_to_first_ok_ms: first.map(|f| ms(f.saturating_sub(kill))),
    }
}

/// Parses `ENDPOINT=PID` pairs into a map keyed by normalized endpoint.
pub fn parse_pids(pairs: &[String]) -> Result<HashMap<String, i32>> {
    let mut m = HashMap::new();
    for p in pairs {
        let (ep, pid) = p
            .rsplit_once('=')
            .ok_or_else(|| anyhow!("--pids: {p:?} is not ENDPOINT=PID"))?;
        let pid: i32 = pid
            .trim()
            .parse()
            .map_err(|_| anyhow!("--pids: bad PID in {p:?}"))?;
        if pid <= 0 {
            bail!("--pids: bad PID in {p:?}");
        }
        m.insert(normalize(ep), pid);
    }
    Ok(m)
}

/// `host:port` and `http://host:port/` both become `http://host:port`, as the client spells them.
fn normalize(ep: &str) -> String {
    let e = ep.trim().trim_end_matches('/');
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

async fn leader_pid(args: &FailoverArgs, leader: &Leader) -> Result<i32> {
    if let Some(cmd) = &args.leader_pid_cmd {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("CAIRN_BENCH_LEADER_ENDPOINT", &leader.endpoint)
            .env("CAIRN_BENCH_LEADER_ID", format!("{:x}", leader.member_id))
            .output()
            .await
            .context("running --leader-pid-cmd")?;
        if !out.status.success() {
            bail!("--leader-pid-cmd failed: {}", out.status);
        }
        let s = String::from_utf8_lossy(&out.stdout);
        return s
            .trim()
            .parse()
            .map_err(|_| anyhow!("--leader-pid-cmd printed {s:?}, not a PID"));
    }
    let pids = parse_pids(&args.pids)?;
    pids.get(&leader.endpoint).copied().ok_or_else(|| {
        anyhow!(
            "leader {} is not in --pids {:?}",
            leader.endpoint,
            args.pids
        )
    })
}

/// Result of a failover run.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub endpoints: Vec<String>,
    pub rate: f64,
    pub clients: usize,
    pub killed_endpoint: String,
    pub killed_pid: i32,
    pub kill_at_s: f64,
    pub new_leader: Option<String>,
    pub window: Window,
    pub ok: u64,
    /// Certainly not applied (or refused).
    pub failed: u64,
    /// Outcome unknown.
    pub ambiguous: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Summary,
}

impl FailoverReport {
    pub fn text(&self) -> String {
        let mut s = String::new();
        let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1} ms"));
        let _ = writeln!(
            s,
            "failover: {} writes/s from {} clients; killed leader {} (pid {}) at {:.3}s; new leader {}",
            self.rate,
            self.clients,
            self.killed_endpoint,
            self.killed_pid,
            self.kill_at_s,
            self.new_leader.as_deref().unwrap_or("none")
        );
        let _ = writeln!(
            s,
            "  unavailable {} (last ok before kill -> first ok sent after); kill -> first ok {}",
            ms(self.window.unavailable_ms),
            ms(self.window.kill_to_first_ok_ms)
        );
        let _ = writeln!(
            s,
            "  requests    {} ok, {} failed, {} ambiguous (outcome unknown)",
            self.ok, self.failed, self.ambiguous
        );
        latency_line(&mut s, "latency", &self.latency);
        errors_block(&mut s, &self.errors);
        s
    }
}

pub async fn run(common: &Common, args: &FailoverArgs) -> Result<FailoverReport> {
    let rate = common.rate.unwrap_or(200.0);
    if rate <= 0.0 {
        bail!("--rate must be positive for failover");
    }
    let duration = common.duration.unwrap_or(Duration::from_secs(10));
    if args.kill_after >= duration {
        bail!("--kill-after must be shorter than --duration");
    }
    let probe = Client::connect(common.endpoints.clone(), conn::options(common)).await?;
    let leader = conn::find_leader(&probe, Duration::from_secs(10)).await?;
    let pid = leader_pid(args, &leader).await?;
    let clients = conn::connect(common).await?;
    let keys = Arc::new(KeyGen::new(
        common.key_size,
        common.key_space,
        common.sequential_keys,
    )?);
    let value = Arc::new(keys::value(common.val_size));
    let sched = Arc::new(Schedule::new(None, Some(duration), Some(rate)));
    let start = sched.start();
    let show = !common.json && std::io::stderr().is_terminal();
    if show {
        eprintln!(
            "writing {rate}/s for {duration:?}; killing {} (pid {pid}) after {:?}",
            leader.endpoint, args.kill_after
        );
    }

    let mut tasks = Vec::with_capacity(common.clients);
    for id in 0..common.clients {
        let client = clients[id % clients.len()].clone();
        let (sched, keys, value) = (sched.clone(), keys.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut st = WorkerState::new(id);
            let mut rec = Recorder::new();
            let mut events = Vec::new();
            while let Some(t) = sched.next().await {
                let sent = start.elapsed();
                let k = keys.key(keys.index(t, &mut st.rng));
                let r = client
                    .put(k, value.as_ref().clone(), PutOptions::default())
                    .await;
                let done = start.elapsed();
                let outcome = match &r {
                    Ok(_) => {
                        rec.ok("put", done - sent);
                        Outcome::Ok
                    }
                    Err(e) => {
                        rec.error(error_kind(e));
                        if matches!(e, Error::OutcomeUnknown(_)) {
                            Outcome::Ambiguous
                        } else {
                            Outcome::Failed
                        }
                    }
                };
                events.push(Event {
                    sent,
                    done,
                    outcome,
                });
            }
            (rec, events)
        }));
    }

    tokio::time::sleep_until((start + args.kill_after).into()).await;
    // SAFETY: kill(2) with a PID we were given; no memory is touched.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    let kill_at = start.elapsed();
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        for t in &tasks {
            t.abort();
        }
        bail!("kill -9 {pid}: {err}");
    }
    if show {
        eprintln!("killed pid {pid} at {:.3}s", kill_at.as_secs_f64());
    }

    let mut rec = Recorder::new();
    let mut events = Vec::new();
    for t in tasks {
        let (r, e) = t.await?;
        rec.merge(&r);
        events.extend(e);
    }
    let new_leader = conn::find_leader(&probe, Duration::from_secs(5))
        .await
        .ok()
        .map(|l| l.endpoint);
    let count = |o: Outcome| events.iter().filter(|e| e.outcome == o).count() as u64;
    Ok(FailoverReport {
        endpoints: probe.endpoints(),
        rate,
        clients: common.clients,
        killed_endpoint: leader.endpoint,
        killed_pid: pid,
        kill_at_s: kill_at.as_secs_f64(),
        new_leader,
        window: window(&events, kill_at),
        ok: count(Outcome::Ok),
        failed: count(Outcome::Failed),
        ambiguous: count(Outcome::Ambiguous),
        errors: rec.errors().clone(),
        latency: rec.overall(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(sent_ms: u64, done_ms: u64, outcome: Outcome) -> Event {
        Event {
            sent: Duration::from_millis(sent_ms),
            done: Duration::from_millis(done_ms),
            outcome,
        }
    }

    #[test]
    fn window_spans_last_success_before_to_first_success_sent_after() {
        let kill = Duration::from_millis(1000);
        let events = [
            ev(900, 950, Outcome::Ok),
            ev(980, 990, Outcome::Ok),  // last ok before the kill
            ev(995, 1002, Outcome::Ok), // sent before, done after: not "back"
            ev(1010, 2000, Outcome::Ambiguous),
            ev(1100, 1500, Outcome::Failed),
            ev(1200, 1800, Outcome::Ok), // first ok sent after the kill
            ev(1300, 1700, Outcome::Failed),
            ev(1900, 1950, Outcome::Ok),
        ];
        let w = window(&events, kill);
        assert_eq!(w.last_ok_before_s, Some(0.99));
        assert_eq!(w.first_ok_after_s, Some(1.8));
        assert!((w.unavailable_ms.unwrap() - 810.0).abs() < 1e-6);
        assert!((w.kill_to_first_ok_ms.unwrap() - 800.0).abs() < 1e-6);
    }

    #[test]
    fn no_recovery_means_no_window() {
        let kill = Duration::from_millis(100);
        let events = [ev(10, 20, Outcome::Ok), ev(150, 900, Outcome::Ambiguous)];
        let w = window(&events, kill);
        assert_eq!(w.first_ok_after_s, None);
        assert_eq!(w.unavailable_ms, None);
    }

    #[test]
    fn pid_map_accepts_both_endpoint_spellings() {
        let m = parse_pids(&[
            "127.0.0.1:2379=100".to_string(),
            "http://127.0.0.1:22379/=200".to_string(),
        ])
        .unwrap();
        assert_eq!(m["http://127.0.0.1:2379"], 100);
        assert_eq!(m["http://127.0.0.1:22379"], 200);
        assert!(parse_pids(&["127.0.0.1:2379".to_string()]).is_err());
        assert!(parse_pids(&["127.0.0.1:2379=x".to_string()]).is_err());
        assert!(parse_pids(&["127.0.0.1:2379=0".to_string()]).is_err());
    }
}
