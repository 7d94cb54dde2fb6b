//! Audit log retention: records older than `audit.max_age_secs`, and the
//! oldest beyond `audit.max_records`, are deleted by one instance at a time.
//!
//! That instance holds `<cairn_prefix>/audit/pruner` (its name as value)
//! under a short store lease it keeps alive; the key is taken with a
//! create-if-absent txn, so when the holder stops, its lease expires and
//! another instance takes over within a lease TTL plus one look.
//!
//! Also deletes the records of the first audit layout (`audit/<ms>-<rand>`,
//! full old and new values, so clear-text secrets) at the first run.

use std::sync::Arc;
use std::time::Duration;

use cairn_client::txn::{self, CompareResult, Txn};
use cairn_client::{GetOptions, PutOptions};

use crate::audit::{self, AuditRecord};
use crate::error::ApiResult;
use crate::state::AppState;

/// The pruner's lease; renewed every third of it.
const LEASE_TTL: i64 = 15;
/// Records read (and deleted) per round trip: two deletes each stay under
/// the store's default 128 operations per txn.
const BATCH: i64 = 60;
/// At most this many records per run, so one run stays short; the next run
/// continues.
const RUN_CAP: usize = 20_000;

pub fn leader_key(state: &AppState) -> String {
    format!("{}pruner", audit::prefix(state))
}

/// Runs forever: takes the pruner key when it is free, prunes every
/// `prune_interval_secs` while holding it.
pub async fn run(state: Arc<AppState>, name: String) {
    let interval = Duration::from_secs(state.settings.audit.prune_interval_secs);
    loop {
        match lead(&state, &name, interval).await {
            Ok(()) => {}
            Err(e) => tracing::debug!("audit pruner: {:?}", e.body),
        }
        tokio::time::sleep(interval.min(Duration::from_secs(LEASE_TTL as u64))).await;
    }
}

/// Tries to become the pruner; if it does, prunes until the lease is lost.
async fn lead(state: &AppState, name: &str, interval: Duration) -> ApiResult<()> {
    let client = &state.store.client;
    let lease = client.lease_grant(LEASE_TTL, 0).await?.id;
    let key = leader_key(state);
    let t = Txn::new()
        .when([txn::version(key.as_str(), CompareResult::Equal, 0)])
        .and_then([txn::op_put(
            key.as_str(),
            name.as_bytes().to_vec(),
            PutOptions {
                lease,
                ..Default::default()
            },
        )]);
    if !client.txn(t).await?.succeeded {
        let _ = client.lease_revoke(lease).await;
        return Ok(());
    }
    tracing::info!("audit pruner: this instance prunes the audit log");
    let mut keep = client.lease_keep_alive(lease);
    let renew = Duration::from_secs(LEASE_TTL as u64 / 3);
    let mut next_prune = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_prune {
            match prune(state).await {
                Ok(n) if n > 0 => tracing::info!("audit pruner: deleted {n} records"),
                Ok(_) => {}
                Err(e) => tracing::warn!("audit pruner: {:?}", e.body),
            }
            next_prune = tokio::time::Instant::now() + interval;
        }
        tokio::time::sleep(renew.min(interval)).await;
        match keep.keep_alive().await {
            Ok(r) if r.ttl > 0 => {}
            _ => {
                tracing::info!("audit pruner: lease lost; another instance may take over");
                return Ok(());
            }
        }
    }
}

/// One pruning run; returns how many records it deleted.
pub async fn prune(state: &AppState) -> ApiResult<usize> {
    let store = &state.store;
    let base = audit::prefix(state);
    // The first layout: `audit/<13 digits>-…`, keys from `audit/0` to `audit/:`.
    store
        .delete_range(&format!("{base}0"), &format!("{base}:"))
        .await?;
    let tp = audit::time_prefix(state);
    let cfg = &state.settings.audit;
    let cutoff_ms = crate::clock::now_ms().saturating_sub(cfg.max_age_secs.saturating_mul(1000));
    let cutoff_key = format!("{tp}{cutoff_ms:013}");
    let mut deleted = 0usize;
    while deleted < RUN_CAP {
        let count = store.count(&tp).await?.max(0) as u64;
        let over = count.saturating_sub(cfg.max_records);
        let opts = GetOptions {
            limit: BATCH,
            ..GetOptions::range_end(cairn_client::prefix_end(tp.as_bytes()))
        };
        let kvs = store.client.get(tp.as_str(), opts).await?.kvs;
        // Oldest first: delete while too old or too many.
        let mut keys = Vec::new();
        let mut records = 0;
        for (i, kv) in kvs.iter().enumerate() {
            let too_old = kv.key.as_slice() < cutoff_key.as_bytes();
            if !too_old && (i as u64) >= over {
                break;
            }
            records += 1;
            keys.push(String::from_utf8_lossy(&kv.key).into_owned());
            if let Some(r) = serde_json::from_slice::<AuditRecord>(&kv.value)
                .ok()
                .and_then(|rec| audit::resource_key_of(state, &kv.key, &rec))
            {
                keys.push(r);
            }
        }
        if keys.is_empty() {
            break;
        }
        store.delete_keys(&keys, 2 * BATCH as usize).await?;
        deleted += records;
    }
    Ok(deleted)
}
