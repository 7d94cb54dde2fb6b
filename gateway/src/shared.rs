//! What the sync task, the request handlers, the registration and the
//! metrics share: the published config, readiness (and draining), the last
//! sync error.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::state::Config;

thread_local! {
    /// [`Shared::config_local`]'s cache: (shared id, generation, config).
    static LOCAL: RefCell<Option<(u64, u64, Arc<Snapshot>)>> = const { RefCell::new(None) };
}

/// A published config as one serving thread holds it (see
/// [`Shared::config_local`]).
pub struct Snapshot(Arc<Config>);

impl std::ops::Deref for Snapshot {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

pub struct Shared {
    /// Tells instances apart in [`LOCAL`] (tests run several in one thread).
    id: u64,
    pub prefix: String,
    pub keyring: cairn_apisix::Keyring,
    pub metrics: Metrics,
    current: RwLock<Arc<Config>>,
    ready: AtomicBool,
    /// Set on SIGTERM: `/readyz` says not ready while requests are still served.
    draining: AtomicBool,
    /// Set when the drain period is over: the client listeners shut their
    /// connections down gracefully (see `drain`).
    pub closing: Arc<crate::listener::Switch>,
    last_error: Mutex<Option<String>>,
    /// Bumped on every publish; `applied` wakes the registration.
    pub generation: AtomicU64,
    pub applied: Notify,
    /// Server certificates by SNI, rebuilt when `ssls` change.
    pub sni: Arc<crate::tls::SniResolver>,
}

impl Shared {
    pub fn new(prefix: String, keyring: cairn_apisix::Keyring, metrics: Metrics) -> Shared {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            prefix,
            keyring,
            metrics,
            current: RwLock::new(Arc::new(Config::default())),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            closing: Arc::default(),
            last_error: Mutex::new(None),
            generation: AtomicU64::new(0),
            applied: Notify::new(),
            sni: Arc::default(),
        }
    }

    /// The config requests are served from.
    pub fn config(&self) -> Arc<Config> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The config requests are served from, as this thread's own handle:
    /// while nothing is published, a request writes no memory another
    /// serving thread reads (no lock word, no shared reference count), only
    /// a load of `generation`. The outer `Arc` is this thread's alone.
    pub fn config_local(&self) -> Arc<Snapshot> {
        let generation = self.generation.load(Ordering::Acquire);
        LOCAL.with(|l| {
            let mut l = l.borrow_mut();
            if let Some((id, g, c)) = &*l {
                if *id == self.id && *g == generation {
                    return c.clone();
                }
            }
            // Read after `generation`: at least as new as what it counts.
            let c = Arc::new(Snapshot(self.config()));
            *l = Some((self.id, generation, c.clone()));
            c
        })
    }

    pub fn publish(&self, cfg: &Config) {
        self.sni.update(cfg);
        let next = Arc::new(cfg.clone());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.ready.store(true, Ordering::Release);
        self.metrics
            .config_revision
            .store(cfg.revision, Ordering::Relaxed);
        // Release: a thread that sees the new generation sees `current` too.
        self.generation.fetch_add(1, Ordering::Release);
        self.applied.notify_waiters();
    }

    /// Whether the first full load was applied.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the gateway is stopping (see `drain`).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn sync_error(&self, e: String) {
        tracing::warn!(error = %e, "config sync");
        self.metrics.etcd_reachable.store(0, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    pub fn sync_ok(&self) {
        self.metrics.etcd_reachable.store(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
