//! What the sync task, the request handlers, the registration and the
//! metrics share: the published config, readiness (and draining), the last
//! sync error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::state::Config;

pub struct Shared {
    pub prefix: String,
    pub keyring: cairn_apisix::Keyring,
    pub metrics: Metrics,
    current: RwLock<Arc<Config>>,
    ready: AtomicBool,
    /// Set on SIGTERM: `/readyz` says not ready while requests are still served.
    draining: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Bumped on every publish; `applied` wakes the registration.
    pub generation: AtomicU64,
    pub applied: Notify,
    /// Server certificates by SNI, rebuilt when `ssls` change.
    pub sni: Arc<crate::tls::SniResolver>,
}

impl Shared {
    pub fn new(prefix: String, keyring: cairn_apisix::Keyring, metrics: Metrics) -> Shared {
        Shared {
            prefix,
            keyring,
            metrics,
            current: RwLock::new(Arc::new(Config::default())),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
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

    pub fn publish(&self, cfg: &Config) {
        self.sni.update(cfg);
        let next = Arc::new(cfg.clone());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.ready.store(true, Ordering::Release);
        self.metrics
            .config_revision
            .store(cfg.revision, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
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
