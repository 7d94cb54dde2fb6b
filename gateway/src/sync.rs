//! Config sync as APISIX's `config_etcd`: one range of the whole prefix,
//! then one watch from `revision + 1`. `init_dir` placeholders are skipped;
//! a value that fails parsing or checks is logged and the previous good
//! value kept. A watch cancelled for compaction, or a store that went back
//! in revisions (restored / restarted empty), means a full reload. On store
//! errors the watch resumes on another member from the last revision, with a
//! backoff; meanwhile the last applied config keeps being served.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{mvccpb, Client, GetOptions, WatchOptions};
use serde_json::Value;

use crate::shared::Shared;
use crate::state::Config;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reads a value: `None` for placeholders; errors for invalid JSON.
fn decode(shared: &Shared, rel: &str, raw: &[u8]) -> Result<Option<Value>, String> {
    if raw == b"init_dir" || raw.is_empty() {
        return Ok(None);
    }
    let mut v: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {e}"))?;
    if v.is_string() {
        // Other placeholders (`"init_dir"` as a JSON string).
        return Ok(None);
    }
    for u in cairn_apisix::decrypt_secrets(&shared.keyring, cairn_apisix::Kind::of_key(rel), &mut v)
    {
        tracing::warn!(key = rel, field = ?u, "secret field could not be decrypted (wrong data_encryption keyring?); used as stored");
    }
    Ok(Some(v))
}

/// Applies one key to `cfg`; invalid values are logged and counted.
fn apply_kv(shared: &Shared, cfg: &mut Config, prefix: &str, kv: &mvccpb::KeyValue, delete: bool) {
    let Ok(key) = std::str::from_utf8(&kv.key) else {
        return;
    };
    let Some(rel) = key.strip_prefix(prefix) else {
        return;
    };
    let value = if delete {
        None
    } else {
        match decode(shared, rel, &kv.value) {
            Ok(Some(v)) => Some(v),
            Ok(None) => return,
            Err(e) => {
                invalid(shared, key, &e);
                return;
            }
        }
    };
    match cfg.apply(rel, value) {
        Ok(a) => {
            for p in a.unsupported {
                tracing::warn!(key, plugin = %p, "plugin not supported by cairn gateway");
                shared.metrics.unsupported_plugin(&p);
            }
        }
        Err(e) => invalid(shared, key, &e),
    }
}

fn invalid(shared: &Shared, key: &str, e: &str) {
    tracing::error!(key, error = %e, "invalid value in the store, previous value kept");
    shared
        .metrics
        .invalid_resources
        .fetch_add(1, Ordering::Relaxed);
}

/// Runs forever.
pub async fn run(client: Client, shared: Arc<Shared>) {
    let prefix = format!("{}/", shared.prefix);
    let mut backoff = BACKOFF_MIN;
    loop {
        // Full load.
        let r = match client.get(prefix.clone(), GetOptions::prefix()).await {
            Ok(r) => r,
            Err(e) => {
                shared.sync_error(format!("range {prefix}: {e}"));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        shared.metrics.full_reloads.fetch_add(1, Ordering::Relaxed);
        let rev = r.header.as_ref().map_or(0, |h| h.revision);
        // The config being built; the published copy is in `shared`.
        let mut cfg = Config::default();
        // The router's tie-break among equal priorities follows load order: key order.
        for kv in &r.kvs {
            apply_kv(&shared, &mut cfg, &prefix, kv, false);
        }
        cfg.revision = rev;
        shared.publish(&cfg);
        shared.sync_ok();
        tracing::info!(
            revision = rev,
            routes = cfg.routes.len(),
            served = cfg.router.len(),
            "config loaded"
        );
        backoff = BACKOFF_MIN;

        let opts = WatchOptions {
            start_revision: rev + 1,
            progress_notify: true,
            ..WatchOptions::prefix()
        };
        let mut w = loop {
            match client.watch_resuming(prefix.clone(), opts.clone()).await {
                Ok(w) => break Some(w),
                Err(e) => {
                    shared.sync_error(format!("watch {prefix}: {e}"));
                    if e.code() == cairn_client::Code::OutOfRange {
                        break None;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        let Some(watcher) = w.as_mut() else { continue };
        loop {
            let resp = match watcher.next().await {
                Ok(r) => r,
                Err(e) => {
                    // The watcher resumes from its last revision on the next call.
                    shared.sync_error(format!("watch {prefix}: {e}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            if resp.canceled {
                tracing::warn!(
                    compact_revision = resp.compact_revision,
                    reason = %resp.cancel_reason,
                    "watch cancelled; reading everything again"
                );
                break;
            }
            let header_rev = resp.header.as_ref().map_or(0, |h| h.revision);
            if header_rev > 0 && header_rev < cfg.revision {
                // As APISIX: "etcd may be restarted" (a store rolled back).
                tracing::warn!(
                    header_rev,
                    applied = cfg.revision,
                    "store revision went back; reading everything again"
                );
                break;
            }
            for ev in &resp.events {
                let Some(kv) = &ev.kv else { continue };
                let delete = ev.r#type == mvccpb::event::EventType::Delete as i32;
                apply_kv(&shared, &mut cfg, &prefix, kv, delete);
            }
            cfg.revision = cfg.revision.max(watcher.next_revision() - 1);
            shared.publish(&cfg);
            shared.sync_ok();
        }
    }
}
