//! Hands out request numbers ("tickets") to the workers until the run's end
//! (`--total`, `--duration`, or SIGTERM / Ctrl-C, after which the run
//! reports what it did), pacing them under `--rate`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::rate;

#[derive(Debug)]
pub struct Schedule {
    start: Instant,
    next: AtomicU64,
    total: Option<u64>,
    deadline: Option<Instant>,
    rate: Option<f64>,
    stopped: AtomicBool,
}

impl Schedule {
    /// Runs for `total` requests and/or `duration`; with neither, 10,000
    /// requests (etcd's tool needs `--total` too; a default keeps a first
    /// try short).
    pub fn new(total: Option<u64>, duration: Option<Duration>, rate: Option<f64>) -> Self {
        let start = Instant::now();
        let total = match (total, duration) {
            (None, None) => Some(10_000),
            (t, _) => t,
        };
        Self {
            start,
            next: AtomicU64::new(0),
            total,
            deadline: duration.map(|d| start + d),
            rate: rate.filter(|r| *r > 0.0),
            stopped: AtomicBool::new(false),
        }
    }

    /// Ends the run early on SIGTERM or SIGINT: no ticket is handed out
    /// after it, requests in flight finish, and the caller reports as at a
    /// normal end (`docker stop` on a load container gets its numbers).
    pub fn stop_on_signal(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            if let Some(s) = me.upgrade() {
                s.stopped.store(true, Ordering::Relaxed);
            }
        });
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// The next ticket, after waiting for its slot under `--rate`; `None`
    /// once the run is over.
    pub async fn next(&self) -> Option<u64> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let t = self.next.fetch_add(1, Ordering::Relaxed);
        if self.total.is_some_and(|n| t >= n) {
            return None;
        }
        if let Some(r) = self.rate {
            let due = self.start + rate::due(t, r);
            if self.deadline.is_some_and(|d| due >= d) {
                return None;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d)
            || self.stopped.load(Ordering::Relaxed)
        {
            return None;
        }
        Some(t)
    }
}
