//! openraft's state machine: applies committed entries to [`Mvcc`] and builds
//! and installs snapshots.
//!
//! - A batch of entries becomes one atomic sled `apply_batch` that also records
//!   the last applied log id and membership, so a restart resumes exactly
//!   after the last applied entry. sled is not synced per apply (only the
//!   Raft log is, see `log_store`): after a crash it recovers a prefix of its
//!   batches, and openraft re-applies the rest from the log.
//! - A snapshot is the whole state tree at one applied index. openraft calls
//!   `get_snapshot_builder` and `apply` from the same task, so copying the
//!   tree there sees no concurrent apply: the copy is one point in time.
//! - Installing writes the snapshot into a fresh tree generation, fsyncs,
//!   then durably flips the generation pointer: a crash leaves either the old
//!   state or the new one, never a mix.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, StorageIOError};

use super::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::command::{Command, Proto, Request, Response};
use crate::error::EtcdError;
use crate::mvcc::{keys, Mvcc};
use crate::storage::Storage;

const SNAP_MAGIC: &[u8] = b"CAIRNSNAP1";

/// Attributes a member publishes about itself.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Arc<Vec<u8>>,
}

pub struct StateMachine {
    storage: Storage,
    pub mvcc: Arc<Mvcc>,
    generation: u64,
    applied: Option<LogId>,
    membership: StoredMembership,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

fn sm_read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn sm_write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

fn read_meta<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    name: &str,
) -> Result<Option<T>, StorageError> {
    match tree.get(keys::meta_key(name)).map_err(sm_read_err)? {
        Some(v) => Ok(Some(bincode::deserialize(&v).map_err(sm_read_err)?)),
        None => Ok(None),
    }
}

impl StateMachine {
    pub fn open(storage: Storage) -> anyhow::Result<StateMachine> {
        let generation = storage.sm_generation()?;
        let tree = storage.sm_tree(generation)?;
        // Trees of other generations are leftovers of an interrupted install.
        for name in storage.db.tree_names() {
            if let Some(g) = std::str::from_utf8(&name)
                .ok()
                .and_then(|n| n.strip_prefix("sm."))
            {
                if g.parse::<u64>().ok() != Some(generation) {
                    storage.db.drop_tree(&name)?;
                }
            }
        }
        let applied = read_meta::<Option<LogId>>(&tree, "applied")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .flatten();
        let membership = read_meta::<StoredMembership>(&tree, "membership")
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .unwrap_or_default();
        let mvcc = Arc::new(Mvcc::open(tree).map_err(|e| anyhow::anyhow!("{e}"))?);
        let current = load_snapshot_file(&storage).unwrap_or(None);
        Ok(StateMachine {
            storage,
            mvcc,
            generation,
            applied,
            membership,
            current: Arc::new(Mutex::new(current)),
        })
    }

    fn apply_command(w: &mut crate::mvcc::apply::Writer, req: &Request, term: u64) -> Response {
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
                Ok(Response::Done)
            }
            Command::LeaseGrant { id, ttl } => stamped!(w.lease_grant(*id, *ttl), term, LeaseGrant),
            Command::LeaseRevoke { id } => stamped!(w.lease_revoke(*id), term, LeaseRevoke),
            Command::Alarm {
                activate,
                member,
                alarm,
            } => w.alarm(*activate, *member, *alarm).map(Response::Alarms),
            Command::Batch(reqs) => Ok(Response::Batch(
                reqs.iter()
                    .map(|r| Self::apply_command(w, r, term))
                    .collect(),
            )),
            Command::Auth(c) => crate::auth::state::apply(w, user, c).map(|()| Response::Done),
        };
        res.unwrap_or_else(Response::Error)
    }
}

/// Wraps an apply result as a [`Response`], with the entry's term in its
/// header (as etcd's raft_term).
macro_rules! stamped {
    ($res:expr, $term:expr, $variant:ident) => {
        $res.map(|mut r| {
            stamp(&mut r.header, $term);
            Response::$variant(Proto(r))
        })
    };
}
use stamped;

fn stamp(h: &mut Option<cairn_proto::etcdserverpb::ResponseHeader>, term: u64) {
    h.get_or_insert_with(Default::default).raft_term = term;
}

/// Reads the attributes of every member that published them.
pub fn member_attrs(mvcc: &Mvcc) -> Vec<(u64, MemberAttrs)> {
    let tree = mvcc.tree();
    tree.scan_prefix([keys::MEMBER])
        .filter_map(|r| r.ok())
        .filter_map(|(k, v)| {
            let id = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
            Some((id, serde_json::from_slice(&v).ok()?))
        })
        .collect()
}

/// Marks the end of the records where a key length would be. No record has a
/// 4 GiB key, so data written before the marker existed never contains it.
/// Raft snapshots are still written without it (members running older code
/// decode them); `Maintenance.Snapshot` writes it so that the zero padding
/// etcdctl requires after the records is not read as more records.
pub(crate) const SNAP_END: [u8; 4] = [0xff; 4];

/// The whole state tree as `SNAP_MAGIC` + (key len u32 BE, key, value len
/// u32 BE, value)*. The caller makes it one point in time (no concurrent apply).
pub(crate) fn encode_tree(tree: &sled::Tree) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::with_capacity(1 << 16);
    out.extend_from_slice(SNAP_MAGIC);
    for item in tree.iter() {
        let (k, v) = item.map_err(sm_read_err)?;
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(&k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(&v);
    }
    Ok(out)
}

/// Writes the records of an [`encode_tree`] payload into `tree`. After a
/// [`SNAP_END`] marker only zero padding may follow.
pub(crate) fn decode_into(data: &[u8], tree: &sled::Tree) -> Result<(), StorageError> {
    let mut rest = data
        .strip_prefix(SNAP_MAGIC)
        .ok_or_else(|| snap_err("not a Cairn snapshot"))?;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, StorageError> {
        let len = rest
            .get(..4)
            .ok_or_else(|| snap_err("truncated snapshot"))?;
        let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
        let body = rest
            .get(4..4 + len)
            .ok_or_else(|| snap_err("truncated snapshot"))?;
        let v = body.to_vec();
        *rest = &rest[4 + len..];
        Ok(v)
    };
    let mut batch = sled::Batch::default();
    let mut n = 0;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix(&SNAP_END) {
            if after.iter().any(|b| *b != 0) {
                return Err(snap_err("data after the end of the snapshot records"));
            }
            break;
        }
        let k = take(&mut rest)?;
        let v = take(&mut rest)?;
        batch.insert(k, v);
        n += 1;
        if n % 10_000 == 0 {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(snap_err)?;
        }
    }
    tree.apply_batch(batch).map_err(snap_err)?;
    Ok(())
}

fn save_snapshot_file(storage: &Storage, snap: &StoredSnapshot) -> Result<(), StorageError> {
    let meta = bincode::serialize(&snap.meta).map_err(snap_err)?;
    let path = storage.snapshot_path();
    let tmp = path.with_extension("tmp");
    let mut buf = Vec::with_capacity(meta.len() + snap.data.len() + 8);
    buf.extend_from_slice(&(meta.len() as u64).to_be_bytes());
    buf.extend_from_slice(&meta);
    buf.extend_from_slice(&snap.data);
    std::fs::write(&tmp, &buf).map_err(snap_err)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(snap_err)?;
    std::fs::rename(&tmp, &path).map_err(snap_err)?;
    Ok(())
}

fn load_snapshot_file(storage: &Storage) -> anyhow::Result<Option<StoredSnapshot>> {
    let buf = match std::fs::read(storage.snapshot_path()) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let n = u64::from_be_bytes(
        buf.get(..8)
            .ok_or_else(|| anyhow::anyhow!("short"))?
            .try_into()?,
    ) as usize;
    let meta: SnapshotMeta =
        bincode::deserialize(buf.get(8..8 + n).ok_or_else(|| anyhow::anyhow!("short"))?)?;
    Ok(Some(StoredSnapshot {
        meta,
        data: Arc::new(buf[8 + n..].to_vec()),
    }))
}

/// Builds a snapshot from a point-in-time copy taken by the state machine.
pub struct SnapshotBuilder {
    storage: Storage,
    copy: Option<StoredSnapshot>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let snap = self
            .copy
            .take()
            .ok_or_else(|| snap_err("snapshot already built"))?;
        // The state machine must be on disk before openraft purges the log
        // behind this snapshot.
        self.storage.flush().await.map_err(snap_err)?;
        let storage = self.storage.clone();
        let s2 = snap.clone();
        tokio::task::spawn_blocking(move || save_snapshot_file(&storage, &s2))
            .await
            .map_err(snap_err)??;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap.clone());
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.data.as_ref().clone())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut w = self.mvcc.writer();
        let mut out = Vec::new();
        for e in entries {
            self.applied = Some(e.log_id);
            let term = e.log_id.leader_id.term;
            out.push(match &e.payload {
                EntryPayload::Blank => Response::Done,
                EntryPayload::Normal(req) => Self::apply_command(&mut w, req, term),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    Response::Done
                }
            });
        }
        w.put_meta(
            "applied",
            bincode::serialize(&self.applied).map_err(sm_write_err)?,
        );
        w.put_meta(
            "membership",
            bincode::serialize(&self.membership).map_err(sm_write_err)?,
        );
        self.mvcc.commit(w).map_err(sm_write_err)?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let copy = encode_tree(&self.mvcc.tree()).ok().map(|data| {
            let last = self.applied;
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: last,
                    last_membership: self.membership.clone(),
                    snapshot_id: format!(
                        "{}-{}-{}",
                        last.map(|l| l.leader_id.term).unwrap_or(0),
                        last.map(|l| l.index).unwrap_or(0),
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis())
                            .unwrap_or(0)
                    ),
                },
                data: Arc::new(data),
            }
        });
        SnapshotBuilder {
            storage: self.storage.clone(),
            copy,
            current: self.current.clone(),
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
        let next = self.generation + 1;
        let tree = self.storage.sm_tree(next).map_err(snap_err)?;
        tree.clear().map_err(snap_err)?;
        decode_into(&data, &tree)?;
        self.storage.flush().await.map_err(snap_err)?;
        self.storage
            .set_sm_generation(next)
            .await
            .map_err(snap_err)?;
        self.mvcc
            .replace_tree(tree.clone())
            .map_err(|e: EtcdError| snap_err(e))?;
        let old = self.generation;
        self.generation = next;
        let _ = self.storage.drop_sm_tree(old);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        let snap = StoredSnapshot {
            meta: meta.clone(),
            data: Arc::new(data),
        };
        save_snapshot_file(&self.storage, &snap)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let cur = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(cur.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data.as_ref().clone())),
        }))
    }
}
