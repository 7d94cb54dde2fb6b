//! [`AppState`]: what every handler shares (settings, the store client,
//! the accepted keys, metrics, rate limits), and how it is built.
//!
//! It holds only leaf modules' types (`config`, `store`, `keys`,
//! `metrics`, `limit`), so every handler module can import it without a
//! cycle; the crate root imports it, never the other way round.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use cairn_client::{Client, ClientOptions};

use crate::config::Settings;
use crate::keys::Keys;
use crate::limit::RateLimiter;
use crate::metrics::Metrics;
use crate::store::Store;

/// What every handler shares.
pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub keys: Keys,
    pub metrics: Metrics,
    /// Logins per client address.
    pub login_limiter: RateLimiter<IpAddr>,
    /// Logins per user name (guessing one user's password from many addresses).
    pub user_limiter: RateLimiter<String>,
    /// Wrong API keys per client address.
    pub key_failures: RateLimiter<IpAddr>,
    /// Concurrent argon2 verifications (each takes tens of ms of CPU and
    /// ~19 MiB of memory): a login flood cannot take the machine.
    pub argon2: tokio::sync::Semaphore,
}

impl AppState {
    /// Builds the shared state (no network yet: the client dials lazily).
    pub async fn connect(settings: Settings) -> Result<Arc<AppState>> {
        let opts = ClientOptions {
            // Short per-attempt deadlines so a dead member is passed over quickly
            // while the request as a whole still rides out an election.
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(3),
            retry_budget: Duration::from_secs(8),
            credentials: settings.store_credentials.clone(),
            tls: settings.store_tls.clone(),
            ..Default::default()
        };
        let client = Client::connect(settings.endpoints.clone(), opts)
            .await
            .context("store endpoints")?;
        Ok(Arc::new(AppState {
            keys: Keys::new(settings.admin_key.as_deref(), &settings.viewer_keys),
            store: Store { client },
            metrics: Metrics::new(),
            login_limiter: RateLimiter::new(10, Duration::from_secs(60), 10_000),
            user_limiter: RateLimiter::new(10, Duration::from_secs(60), 10_000),
            key_failures: RateLimiter::new(20, Duration::from_secs(60), 10_000),
            argon2: tokio::sync::Semaphore::new(2),
            settings,
        }))
    }
}
