//! openraft's state machine: applies committed entries to [`Mvcc`] and builds
//! and installs snapshots.
//!
//! - The state is in memory. Its durable form is the snapshot file (see
//!   [`snapshot_file`]) plus the Raft log after it: on start the file is
//!   loaded and openraft re-applies the committed entries that follow. So an
//!   apply writes nothing to disk, and the log behind a snapshot is purged
//!   only after the file is durable.
//! - A snapshot is the whole state at one applied index. openraft calls
//!   `get_snapshot_builder` and `apply` from the same task, so the copy taken
//!   there sees no concurrent apply: it is one point in time.
//! - Installing a snapshot writes its file durably first, then swaps the
//!   state in memory: a crash leaves the old image or the new one.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend};

use super::snapshot_file::{self, decode_tree, encode_tree, snap_err};
use super::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::command::{ApplyResult, Command, Proposal, Proto};
use crate::mvcc::{keys, Mvcc, Tree};
use crate::storage::Storage;

/// Attributes a member publishes about itself.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

pub struct StateMachine {
    pub mvcc: Arc<Mvcc>,
    applied: Option<LogId>,
    membership: StoredMembership,
    slot: Arc<SnapshotSlot>,
    /// The snapshot file as read when opening: openraft's start-up asks for
    /// the current snapshot at once, and gets this instead of a second read.
    opened_with: Option<(SnapshotMeta, Vec<u8>)>,
}

/// The snapshot file and what is known of it, shared by the state machine
/// and its builders: openraft runs a build in its own task, so a build and
/// an install can finish at the same time.
pub struct SnapshotSlot {
    path: std::path::PathBuf,
    /// Serializes writers (they share the file's temporary name).
    write: Mutex<()>,
    /// Meta of the file, if it is a Raft snapshot (a restored data dir's
    /// image has no log position and is not offered to peers).
    current: Mutex<Option<SnapshotMeta>>,
    /// Index the durable file covers: the log store purges no further.
    durable: tokio::sync::watch::Sender<Option<u64>>,
}

impl SnapshotSlot {
    /// Makes `data` the image at `meta`, durably. A build older than the file
    /// (an install overtook it) is dropped: `false`.
    fn store(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
        is_build: bool,
    ) -> Result<bool, StorageError> {
        let _writer = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let on_file = self.durable.borrow().to_owned();
        if is_build && on_file >= meta.last_log_id.map(|l| l.index) {
            return Ok(false);
        }
        snapshot_file::save(&self.path, meta, data)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            meta.last_log_id.is_some().then(|| meta.clone());
        self.durable.send_replace(meta.last_log_id.map(|l| l.index));
        Ok(true)
    }

    /// Follows the index the durable snapshot covers.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.durable.subscribe()
    }
}

fn snapshot_meta(applied: Option<LogId>, membership: StoredMembership) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: format!(
            "{}-{}-{}",
            applied.map(|l| l.leader_id.term).unwrap_or(0),
            applied.map(|l| l.index).unwrap_or(0),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ),
    }
}

impl StateMachine {
    pub fn open(storage: Storage) -> anyhow::Result<StateMachine> {
        let path = storage.snapshot_path();
        let loaded = snapshot_file::load(&path)?;
        let (tree, applied, membership) = match &loaded {
            Some((meta, data)) => (
                decode_tree(data).map_err(|e| anyhow::anyhow!("snapshot file: {e}"))?,
                meta.last_log_id,
                meta.last_membership.clone(),
            ),
            None => (Tree::new(), None, StoredMembership::default()),
        };
        // Only a snapshot with a log position is a Raft snapshot.
        let opened_with = loaded.filter(|(meta, _)| meta.last_log_id.is_some());
        let current = opened_with.as_ref().map(|(meta, _)| meta.clone());
        Ok(StateMachine {
            mvcc: Arc::new(Mvcc::open(tree)),
            applied,
            membership,
            opened_with,
            slot: Arc::new(SnapshotSlot {
                path,
                write: Mutex::new(()),
                durable: tokio::sync::watch::channel(applied.map(|l| l.index)).0,
                current: Mutex::new(current),
            }),
        })
    }

    pub fn snapshot_slot(&self) -> Arc<SnapshotSlot> {
        self.slot.clone()
    }

    fn apply_command(w: &mut crate::mvcc::apply::Writer, req: &Proposal, term: u64) -> ApplyResult {
        use crate::auth::perms;
        let user = req.user();
        // Writes are permission-checked here, with the state as of this
        // entry, as etcd's auth applier does.
        let res = match req.command() {
            Command::Put(Proto(r)) => {
                perms::check_put(&w.view(), user, r).and_then(|()| stamped!(w.put(r), term, Put))
            }
            Command::DeleteRange(Proto(r)) => perms::check_delete(&w.view(), user, r)
                .and_then(|()| stamped!(w.delete_range(r), term, DeleteRange)),
            Command::Txn(Proto(r)) => {
                perms::check_txn(&w.view(), user, r).and_then(|()| stamped!(w.txn(r), term, Txn))
            }
            Command::Compact(Proto(r)) => stamped!(w.compact(r), term, Compact),
            Command::MemberAttributes {
                id,
                name,
                client_urls,
            } => {
                let attrs = MemberAttrs {
                    name: name.clone(),
                    client_urls: client_urls.clone(),
                };
                w.put_raw(
                    keys::member_key(*id),
                    Some(serde_json::to_vec(&attrs).unwrap_or_default()),
                );
                Ok(ApplyResult::Done)
            }
            Command::LeaseGrant { id, ttl } => stamped!(w.lease_grant(*id, *ttl), term, LeaseGrant),
            // Checked again here, as etcd does at apply: a permission revoked
            // after the request was served stops it. No user: the leader's
            // own expiry, which may revoke anything.
            Command::LeaseRevoke { id } => user
                .map_or(Ok(()), |u| {
                    perms::check_lease_keys(&w.view(), Some(u), *id, perms::Need::Write)
                })
                .and_then(|()| stamped!(w.lease_revoke(*id), term, LeaseRevoke)),
            Command::LeaseExpire { id, term: decided } if *decided == term => {
                stamped!(w.lease_revoke(*id), term, LeaseRevoke)
            }
            Command::LeaseExpire { .. } => Ok(ApplyResult::Done),
            Command::Alarm {
                activate,
                member,
                alarm,
            } => w.alarm(*activate, *member, *alarm).map(ApplyResult::Alarms),
            Command::Batch(reqs) => Ok(ApplyResult::Batch(
                reqs.iter()
                    .map(|r| Self::apply_command(w, r, term))
                    .collect(),
            )),
            Command::Auth(c) => crate::auth::state::apply(w, user, c).map(|()| ApplyResult::Done),
        };
        res.unwrap_or_else(ApplyResult::Error)
    }
}

/// Wraps an apply result as a [`ApplyResult`], with the entry's term in its
/// header (as etcd's raft_term).
macro_rules! stamped {
    ($res:expr, $term:expr, $variant:ident) => {
        $res.map(|mut r| {
            stamp(&mut r.header, $term);
            ApplyResult::$variant(Proto(r))
        })
    };
}
use stamped;

fn stamp(h: &mut Option<cairn_proto::etcdserverpb::ResponseHeader>, term: u64) {
    h.get_or_insert_with(Default::default).raft_term = term;
}

/// Reads the attributes of every member that published them.
pub fn member_attrs(mvcc: &Mvcc) -> Vec<(u64, MemberAttrs)> {
    mvcc.read(|v| {
        v.tree
            .prefix(&[keys::MEMBER])
            .filter_map(|(k, v)| {
                let id = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
                Some((id, serde_json::from_slice(v).ok()?))
            })
            .collect()
    })
}

/// Builds a snapshot from a point-in-time copy taken by the state machine.
pub struct SnapshotBuilder {
    copy: Option<(SnapshotMeta, Vec<u8>)>,
    slot: Arc<SnapshotSlot>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = self
            .copy
            .take()
            .ok_or_else(|| snap_err("snapshot already built"))?;
        // Durable before openraft purges the log behind it.
        let (slot, m) = (self.slot.clone(), meta.clone());
        let data = tokio::task::spawn_blocking(move || slot.store(&m, &data, true).map(|_| data))
            .await
            .map_err(snap_err)??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (applied, membership) = (&mut self.applied, &mut self.membership);
        Ok(self.mvcc.apply(|w| {
            entries
                .into_iter()
                .map(|e| {
                    *applied = Some(e.log_id);
                    let term = e.log_id.leader_id.term;
                    match e.payload {
                        EntryPayload::Blank => ApplyResult::Done,
                        EntryPayload::Normal(req) => Self::apply_command(w, &req, term),
                        EntryPayload::Membership(m) => {
                            *membership = StoredMembership::new(Some(e.log_id), m);
                            ApplyResult::Done
                        }
                    }
                })
                .collect()
        }))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let data = self.mvcc.read(|v| encode_tree(v.tree));
        SnapshotBuilder {
            copy: Some((snapshot_meta(self.applied, self.membership.clone()), data)),
            slot: self.slot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let tree = decode_tree(&data)?;
        // openraft purges the log behind the snapshot without waiting for
        // this; the log store holds that purge until the file is durable.
        let (slot, m) = (self.slot.clone(), meta.clone());
        tokio::task::spawn_blocking(move || slot.store(&m, &data, false))
            .await
            .map_err(snap_err)??;
        self.mvcc.replace_tree(tree);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self
            .slot
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| m.snapshot_id.clone());
        let Some(current) = current else {
            return Ok(None);
        };
        if let Some((meta, data)) = self.opened_with.take() {
            if meta.snapshot_id == current {
                return Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                }));
            }
        }
        // The file is read whole rather than kept in memory between sends.
        let path = self.slot.path.clone();
        let loaded = tokio::task::spawn_blocking(move || snapshot_file::load(&path))
            .await
            .map_err(snap_err)?
            .map_err(snap_err)?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::etcdserverpb::{PutRequest, RangeRequest};
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn put(index: u64, key: &str, value: &str) -> Entry {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(Proposal::new(None, Command::Put(Proto(req)))),
        }
    }

    fn get(sm: &StateMachine, key: &str) -> Option<Vec<u8>> {
        let r = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let resp = sm.mvcc.read(|v| v.range(&r)).unwrap();
        resp.kvs.first().map(|kv| kv.value.clone())
    }

    fn entry(term: u64, index: u64, command: Command) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Proposal::new(None, command)),
        }
    }

    fn lease_ttl(sm: &StateMachine, id: i64) -> Option<i64> {
        sm.mvcc.read(|v| v.lease_ttl(id)).unwrap()
    }

    /// A leader's expiry revokes only from an entry of the term it was
    /// decided in: carried into a later leadership, which restarted every
    /// deadline and may have renewed the lease, it does nothing.
    #[tokio::test]
    async fn a_lease_expiry_from_an_earlier_term_revokes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _) = Storage::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(storage).unwrap();
        sm.apply(vec![entry(1, 1, Command::LeaseGrant { id: 7, ttl: 2 })])
            .await
            .unwrap();
        sm.apply(vec![entry(3, 2, Command::LeaseExpire { id: 7, term: 2 })])
            .await
            .unwrap();
        assert_eq!(
            lease_ttl(&sm, 7),
            Some(2),
            "a stale expiry revoked the lease"
        );
        // An explicit revoke has no term: it always applies.
        sm.apply(vec![entry(3, 3, Command::LeaseGrant { id: 8, ttl: 2 })])
            .await
            .unwrap();
        sm.apply(vec![entry(3, 4, Command::LeaseRevoke { id: 8 })])
            .await
            .unwrap();
        assert_eq!(lease_ttl(&sm, 8), None);
        // The expiry of the entry's own term revokes.
        sm.apply(vec![entry(3, 5, Command::LeaseExpire { id: 7, term: 3 })])
            .await
            .unwrap();
        assert_eq!(lease_ttl(&sm, 7), None);
    }

    #[tokio::test]
    async fn a_built_snapshot_is_the_state_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _) = Storage::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(storage.clone()).unwrap();
        sm.apply(vec![put(1, "a", "1"), put(2, "b", "2")])
            .await
            .unwrap();
        let mut b = sm.get_snapshot_builder().await;
        let snap = b.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(2)));
        // Applied after the snapshot: gone from memory with the process, and
        // re-applied from the log by openraft.
        sm.apply(vec![put(3, "a", "3")]).await.unwrap();
        drop(sm);

        let mut sm = StateMachine::open(storage).unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(2)));
        assert_eq!(get(&sm, "a").as_deref(), Some(&b"1"[..]));
        assert_eq!(get(&sm, "b").as_deref(), Some(&b"2"[..]));
        assert_eq!(sm.mvcc.revision(), 3);
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta.last_log_id, Some(log_id(2)));
    }

    #[tokio::test]
    async fn an_installed_snapshot_replaces_the_state_durably() {
        let src_dir = tempfile::tempdir().unwrap();
        let (src_storage, _) = Storage::open(src_dir.path()).unwrap();
        let mut src = StateMachine::open(src_storage).unwrap();
        src.apply(vec![put(1, "x", "1")]).await.unwrap();
        let snap = src
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (storage, _) = Storage::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(storage.clone()).unwrap();
        sm.apply(vec![put(1, "old", "1")]).await.unwrap();
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(get(&sm, "old"), None);
        assert_eq!(get(&sm, "x").as_deref(), Some(&b"1"[..]));
        drop(sm);
        let sm = StateMachine::open(storage).unwrap();
        assert_eq!(get(&sm, "x").as_deref(), Some(&b"1"[..]));
        assert_eq!(sm.applied, Some(log_id(1)));
    }
}
