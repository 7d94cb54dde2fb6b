//! Config sync as APISIX's `config_etcd`: one range of the whole prefix,
//! then one watch from `revision + 1`. `init_dir` placeholders are skipped;
//! a value that fails parsing or checks is logged and the previous good
//! value kept. A watch cancelled for compaction, or a store that went back
//! in revisions (restored / restarted empty), means a full reload. On store
//! errors the watch resumes on another member from the last revision, with a
//! backoff; meanwhile the last applied config keeps being served.
//!
//! A reader task hands watch responses over a channel; everything waiting
//! there is applied as one batch and published once, so a burst of writes
//! (a bulk import) costs one publish, not one per revision.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::pb::WatchResponse;
use cairn_client::{mvccpb, Client, GetOptions, ResumingWatcher, WatchOptions};
use serde_json::Value;

use crate::shared::Shared;
use crate::state::Config;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Watch responses queued between the reader and the applier; at most this
/// many are applied as one batch.
const QUEUE: usize = 4096;

/// Reads the watch until it is cancelled or the applier is gone; an error
/// is handed over, then the watch resumes (from its last revision) after a
/// backoff.
async fn read_watch(
    mut w: ResumingWatcher,
    tx: tokio::sync::mpsc::Sender<cairn_client::Result<WatchResponse>>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let r = w.next().await;
        let (failed, cancelled) = match &r {
            Ok(r) => (false, r.canceled),
            Err(_) => (true, false),
        };
        if tx.send(r).await.is_err() || cancelled {
            return;
        }
        if failed {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        } else {
            backoff = BACKOFF_MIN;
        }
    }
}

/// The revision a watch response brings the config to: its last event's,
/// or for a progress notification its header's.
fn revision_of(r: &WatchResponse) -> i64 {
    match r.events.last().and_then(|e| e.kv.as_ref()) {
        Some(kv) => kv.mod_revision,
        None => r.header.as_ref().map_or(0, |h| h.revision),
    }
}

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
        let w = loop {
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
        let Some(watcher) = w else { continue };
        let (tx, mut rx) = tokio::sync::mpsc::channel(QUEUE);
        let reader = tokio::spawn(read_watch(watcher, tx));
        'watch: while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < QUEUE {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut applied = false;
            for r in batch {
                let resp = match r {
                    Ok(r) => r,
                    Err(e) => {
                        // The reader resumes from the last revision after a backoff.
                        shared.sync_error(format!("watch {prefix}: {e}"));
                        continue;
                    }
                };
                if resp.canceled {
                    tracing::warn!(
                        compact_revision = resp.compact_revision,
                        reason = %resp.cancel_reason,
                        "watch cancelled; reading everything again"
                    );
                    break 'watch;
                }
                let header_rev = resp.header.as_ref().map_or(0, |h| h.revision);
                if header_rev > 0 && header_rev < cfg.revision {
                    // As APISIX: "etcd may be restarted" (a store rolled back).
                    tracing::warn!(
                        header_rev,
                        applied = cfg.revision,
                        "store revision went back; reading everything again"
                    );
                    break 'watch;
                }
                for ev in &resp.events {
                    let Some(kv) = &ev.kv else { continue };
                    let delete = ev.r#type == mvccpb::event::EventType::Delete as i32;
                    apply_kv(&shared, &mut cfg, &prefix, kv, delete);
                }
                cfg.revision = cfg.revision.max(revision_of(&resp));
                applied = true;
            }
            if applied {
                shared.publish(&cfg);
                shared.sync_ok();
            }
        }
        reader.abort();
    }
}
