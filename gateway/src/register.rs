//! The gateway's registration under `<cairn_prefix>/gateways/<id>`, the
//! shape `cairn control` reads (`GET /api/gateways`): id, hostname,
//! address, version, start time, the store revision of the applied config,
//! the last sync error, and when it was written. The key lives under a 60 s
//! lease; it is written again every 10 s (the lease renewed with it) and
//! within a second of applying a new revision. A gateway that stops cleanly
//! revokes the lease, so it leaves the list at once instead of a minute
//! later; one that dies leaves with the lease.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, PutOptions};
use serde_json::json;

use crate::shared::Shared;

const LEASE_TTL: i64 = 60;
const REFRESH: Duration = Duration::from_secs(10);
/// Several revisions applied in a burst make one write.
const DEBOUNCE: Duration = Duration::from_millis(200);

pub struct Identity {
    pub key: String,
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub start_time: u64,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Identity {
    pub fn new(cairn_prefix: &str, id: &str, listen: std::net::SocketAddr) -> Identity {
        let hostname = crate::config::hostname();
        let address = if listen.ip().is_unspecified() {
            format!("{hostname}:{}", listen.port())
        } else {
            listen.to_string()
        };
        Identity {
            key: format!("{cairn_prefix}/gateways/{id}"),
            id: id.to_string(),
            hostname,
            address,
            start_time: now_secs(),
        }
    }

    fn value(&self, shared: &Shared) -> String {
        json!({
            "id": self.id,
            "hostname": self.hostname,
            "address": self.address,
            "version": env!("CARGO_PKG_VERSION"),
            "start_time": self.start_time,
            "config_revision": shared.config().revision,
            "last_error": shared.last_error(),
            "updated_at": now_secs(),
        })
        .to_string()
    }
}

/// The running registration.
pub struct Registration {
    client: Client,
    lease: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Registration {
    pub fn start(client: Client, shared: Arc<Shared>, me: Identity) -> Registration {
        let lease = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn(run(client.clone(), shared, me, lease.clone()));
        Registration {
            client,
            lease,
            task,
        }
    }

    /// Stops writing and revokes the lease, which deletes the key. Bounded:
    /// a store that does not answer leaves the key to expire with its lease.
    pub async fn withdraw(self) {
        self.task.abort();
        let _ = self.task.await;
        let lease = self.lease.load(Ordering::SeqCst);
        if lease == 0 {
            return;
        }
        let revoke = self.client.lease_revoke(lease);
        match tokio::time::timeout(Duration::from_secs(2), revoke).await {
            Ok(Ok(_)) => tracing::info!("registration withdrawn"),
            Ok(Err(e)) => tracing::warn!(error = %e, "registration left to expire with its lease"),
            Err(_) => {
                tracing::warn!("registration left to expire with its lease: no answer in 2 s")
            }
        }
    }
}

async fn run(client: Client, shared: Arc<Shared>, me: Identity, current: Arc<AtomicI64>) {
    let mut lease = 0i64;
    loop {
        let seen = shared.generation.load(Ordering::Relaxed);
        // Registered only once a config is applied: a gateway still loading
        // has nothing to report.
        if shared.ready() {
            let written = write(&client, &shared, &me, &mut lease).await;
            current.store(lease, Ordering::SeqCst);
            if let Err(e) = written {
                tracing::warn!(error = %e, key = %me.key, "registration not written");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        // A revision applied while writing is written at once.
        let applied = shared.applied.notified();
        if shared.generation.load(Ordering::Relaxed) != seen {
            tokio::time::sleep(DEBOUNCE).await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            _ = applied => tokio::time::sleep(DEBOUNCE).await,
        }
    }
}

async fn write(
    client: &Client,
    shared: &Shared,
    me: &Identity,
    lease: &mut i64,
) -> cairn_client::Result<()> {
    if *lease != 0 {
        // TTL 0 in the answer: the lease expired (store down for a minute).
        match client.lease_keep_alive_once(*lease).await {
            Ok(r) if r.ttl > 0 => {}
            Ok(_) => *lease = 0,
            // Transient (store unreachable): the same lease is tried again.
            Err(e) => return Err(e),
        }
    }
    if *lease == 0 {
        *lease = client.lease_grant(LEASE_TTL, 0).await?.id;
    }
    let opts = PutOptions {
        lease: *lease,
        ..Default::default()
    };
    client.put(me.key.clone(), me.value(shared), opts).await?;
    Ok(())
}
