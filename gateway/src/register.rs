//! The gateway's registration under `<cairn_prefix>/gateways/<id>`, the
//! shape `cairn control` reads (`GET /api/gateways`): id, hostname,
//! address, version, start time, the store revision of the applied config,
//! the last sync error, and when it was written. The key lives under a 60 s
//! lease; it is written again every 10 s (the lease renewed with it) and
//! within a second of applying a new revision.

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

/// Runs forever.
pub async fn run(client: Client, shared: Arc<Shared>, me: Identity) {
    let mut lease = 0i64;
    loop {
        let seen = shared.generation.load(std::sync::atomic::Ordering::Relaxed);
        // Registered only once a config is applied: a gateway still loading
        // has nothing to report.
        if shared.ready() {
            if let Err(e) = write(&client, &shared, &me, &mut lease).await {
                tracing::warn!(error = %e, key = %me.key, "registration not written");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        // A revision applied while writing is written at once.
        let applied = shared.applied.notified();
        if shared.generation.load(std::sync::atomic::Ordering::Relaxed) != seen {
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
