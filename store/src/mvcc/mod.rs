//! The revisioned key-value store (etcd's MVCC) over one ordered map in memory.
//!
//! - [`keys`]: byte layout of the tree (current values, history, per-key index).
//! - [`view`]: reads at the current or any uncompacted past revision.
//! - [`apply`]: Put / DeleteRange / Txn / Compact, written into an overlay.
//! - [`hash`]: the history checksum `HashKV` answers.
//! - [`tree`]: the ordered set of records itself; `thin`: its 8-byte owned
//!   byte strings.
//!
//! Readers take a read lock while they iterate. The state machine (the only
//! writer) applies a batch of log entries in two steps: it evaluates them
//! under a read lock into an overlay of pending writes, then takes the write
//! lock just to merge that overlay, so a reader never sees half a batch.
//!
//! The map is not durable by itself: the Raft snapshot file plus the Raft
//! log after it are (see `raft::state_machine`).

pub mod apply;
mod counts;
pub mod hash;
pub mod keys;
mod thin;
pub mod tree;
pub mod view;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use std::sync::RwLock;

use apply::Writer;
use view::View;

pub use tree::Tree;

/// Revision bookkeeping plus the tree they describe.
struct State {
    tree: Tree,
    rev: i64,
    compact_rev: i64,
    /// Size of the tree as a snapshot holds it (see [`record_size`]).
    bytes: u64,
}

/// Bytes one record takes in a snapshot: two u32 lengths, key and value.
fn record_size(k: &[u8], v: &[u8]) -> u64 {
    (8 + k.len() + v.len()) as u64
}

fn tree_size(tree: &Tree) -> u64 {
    tree.iter().map(|(k, v)| record_size(k, v)).sum()
}

/// Shared handle on the key-value state.
pub struct Mvcc {
    state: RwLock<State>,
    /// The committed revision, for watchers to wait on.
    rev_tx: tokio::sync::watch::Sender<i64>,
    /// The last history read that reached the current revision. Caught-up
    /// watchers all wake for the same new revisions; the first one reads
    /// them, the others reuse its read.
    history_cache: std::sync::Mutex<Option<HistoryChunk>>,
    /// Lease grants and revokes as they are applied, for the leader's
    /// lessor (see [`LeaseFeed`]).
    lease_feed: std::sync::Mutex<LeaseFeed>,
}

/// The lease grants (`Some(ttl)`) and revokes (`None`) applied since the
/// consumer last drained them. Recorded only while a consumer (the leader's
/// lessor) is on, so it never grows on a member that does not lead.
#[derive(Default)]
pub struct LeaseFeed {
    on: bool,
    changes: Vec<(i64, Option<i64>)>,
}

/// Events of revisions `from..=upto`, in order.
struct HistoryChunk {
    from: i64,
    upto: i64,
    events: std::sync::Arc<Vec<cairn_proto::mvccpb::Event>>,
}

fn read_i64(tree: &Tree, name: &str) -> Option<i64> {
    tree.get(&keys::meta_key(name))
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(i64::from_be_bytes)
}

impl Mvcc {
    /// Opens the store over `tree`; an empty store is at revision 1, as etcd.
    pub fn open(tree: Tree) -> Mvcc {
        let rev = read_i64(&tree, "rev").unwrap_or(1);
        let compact_rev = read_i64(&tree, "compact").unwrap_or(0);
        Mvcc {
            state: RwLock::new(State {
                bytes: tree_size(&tree),
                tree,
                rev,
                compact_rev,
            }),
            rev_tx: tokio::sync::watch::channel(rev).0,
            history_cache: std::sync::Mutex::new(None),
            lease_feed: Default::default(),
        }
    }

    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a consistent view of the current state.
    pub fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        let s = self.lock_read();
        f(&View {
            tree: &s.tree,
            overlay: None,
            rev: s.rev,
            compact_rev: s.compact_rev,
        })
    }

    /// For a watcher: the history from revision `from` (about `max_bytes`,
    /// whole revisions), handed to `f` with the view it was read from and the
    /// last revision read. `Err(compact_rev)` if `from` is compacted away.
    pub fn read_history<R>(
        &self,
        from: i64,
        max_bytes: usize,
        f: impl FnOnce(&View, &[cairn_proto::mvccpb::Event], i64) -> R,
    ) -> Result<R, i64> {
        let s = self.lock_read();
        let view = View {
            tree: &s.tree,
            overlay: None,
            rev: s.rev,
            compact_rev: s.compact_rev,
        };
        if from < s.compact_rev {
            return Err(s.compact_rev);
        }
        let mut cache = self.history_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_ref().filter(|c| c.from == from && c.upto == s.rev) {
            let events = c.events.clone();
            drop(cache);
            return Ok(f(&view, &events, s.rev));
        }
        let (events, upto) = view.history(from, max_bytes).map_err(|_| s.compact_rev)?;
        let events = std::sync::Arc::new(events);
        if upto == s.rev {
            *cache = Some(HistoryChunk {
                from,
                upto,
                events: events.clone(),
            });
        }
        drop(cache);
        Ok(f(&view, &events, upto))
    }

    /// Notifies of every newly committed revision (latest value only).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.rev_tx.subscribe()
    }

    /// Live keys at the current revision (for the keys gauge).
    pub fn key_count(&self) -> usize {
        self.lock_read().tree.prefix(&[keys::KV]).count()
    }

    pub fn revision(&self) -> i64 {
        self.lock_read().rev
    }

    pub fn compact_revision(&self) -> i64 {
        self.lock_read().compact_rev
    }

    /// Size of the state as a snapshot would hold it: etcd's backend size,
    /// which `--quota-backend-bytes` limits and Status reports as dbSize.
    pub fn size_bytes(&self) -> u64 {
        self.lock_read().bytes
    }

    /// Applies one batch: `f` evaluates requests on a [`Writer`] that reads
    /// the current state through its own pending writes; then those writes
    /// and the new revision land at once. Only the state machine's task calls
    /// this and [`Mvcc::replace_tree`], one at a time, so nothing changes the
    /// tree between the two steps.
    pub fn apply<T>(&self, f: impl FnOnce(&mut Writer) -> T) -> T {
        let s = self.lock_read();
        let mut w = Writer::new(&s.tree, s.rev, s.compact_rev);
        let out = f(&mut w);
        w.put_meta("rev", w.rev.to_be_bytes().to_vec());
        let (overlay, rev, compact_rev) = (std::mem::take(&mut w.overlay), w.rev, w.compact_rev);
        drop(w);
        drop(s);
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        let timer = crate::metrics::METRICS.backend_commit.start_timer();
        let mut bytes = s.bytes;
        let mut feed = self.lease_feed.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in overlay {
            if feed.on {
                if let Some(id) = keys::parse_lease_key(&k) {
                    let ttl = v.as_deref().and_then(keys::parse_lease_ttl);
                    feed.changes.push((id, ttl));
                }
            }
            let added = v.as_ref().map_or(0, |v| record_size(&k, v));
            let key_part = record_size(&k, &[]);
            let old = match v {
                Some(v) => s.tree.insert(&k, &v),
                None => s.tree.remove(&k),
            };
            let removed = old.map_or(0, |len| key_part + len as u64);
            bytes = (bytes + added).saturating_sub(removed);
        }
        drop(feed);
        s.bytes = bytes;
        timer.observe_duration();
        s.rev = rev;
        s.compact_rev = compact_rev;
        drop(s);
        self.rev_tx.send_replace(rev);
        out
    }

    /// Starts recording lease changes and returns every lease (id, TTL) as
    /// of now; later changes come from [`Mvcc::drain_lease_changes`].
    pub fn start_lease_feed(&self) -> Result<Vec<(i64, i64)>, crate::error::EtcdError> {
        let s = self.lock_read();
        let mut feed = self.lease_feed.lock().unwrap_or_else(|p| p.into_inner());
        feed.on = true;
        feed.changes.clear();
        drop(feed);
        View {
            tree: &s.tree,
            overlay: None,
            rev: s.rev,
            compact_rev: s.compact_rev,
        }
        .leases()
    }

    /// Stops recording lease changes (this member no longer leads).
    pub fn stop_lease_feed(&self) {
        let mut feed = self.lease_feed.lock().unwrap_or_else(|p| p.into_inner());
        feed.on = false;
        feed.changes = Vec::new();
    }

    /// The lease changes applied since the last call.
    pub fn drain_lease_changes(&self) -> Vec<(i64, Option<i64>)> {
        let mut feed = self.lease_feed.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut feed.changes)
    }

    /// Replaces the whole state with `tree` (a freshly installed snapshot).
    pub fn replace_tree(&self, tree: Tree) {
        let rev = read_i64(&tree, "rev").unwrap_or(1);
        let compact_rev = read_i64(&tree, "compact").unwrap_or(0);
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.bytes = tree_size(&tree);
        let old = std::mem::replace(&mut s.tree, tree);
        // The history may differ entirely after a snapshot install.
        *self.history_cache.lock().unwrap_or_else(|p| p.into_inner()) = None;
        s.rev = rev;
        s.compact_rev = compact_rev;
        drop(s);
        self.rev_tx.send_replace(rev);
        drop(old);
    }
}
