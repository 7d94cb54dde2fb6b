//! The Raft log (in [`Wal`] segment files) and the vote (in sled).
//!
//! Durability: `save_vote` returns only after [`Storage::sync`]. `append`
//! writes the entries and hands openraft's callback to one flusher thread,
//! which fdatasyncs once for everything appended since its last sync (group
//! commit) and only then fires the callbacks, in order.
//!
//! A leader does not wait for its own flush before replicating (see
//! `vendor/openraft/CAIRN.md`), so `save_vote` also waits until everything
//! appended before it is flushed: a member that starts an election, and may
//! lead again, counts its whole log as flushed.
//!
//! The state machine lives in memory; its durable image is the snapshot file.
//! After a crash openraft re-applies the log from the image's applied index.
//! The image may also be ahead of what reached the log's disk (an installed
//! snapshot, or power loss), and openraft then starts the log after it. So the
//! committed index handed back at start is capped at the log's end:
//! re-applying never asks for an entry the log does not hold. A purge waits
//! until the snapshot file covers it.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};

use super::wal::Wal;
use super::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::storage::Storage;

#[derive(Clone)]
pub struct LogStore {
    storage: Storage,
    wal: Arc<Wal>,
    flusher: mpsc::Sender<Flush>,
    /// Index the durable snapshot file covers (see [`LogStore::purge_behind`]).
    snapshot: Option<tokio::sync::watch::Receiver<Option<u64>>>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// How long a purge waits for the snapshot file to cover it.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl LogStore {
    /// Opens the log of a data dir.
    pub fn open(storage: Storage) -> anyhow::Result<LogStore> {
        let purged = read_meta::<LogId>(&storage, "last_purged")?.map(|l| l.index);
        let wal = Arc::new(Wal::open(&storage.wal_dir(), purged)?);
        Ok(LogStore::new(storage, wal))
    }

    /// Purges only behind the durable snapshot, as `durable` reports it.
    /// openraft purges the log behind an installed snapshot without waiting
    /// for the install; a crash in between would leave the old image and a
    /// log that no longer reaches it.
    pub fn purge_behind(mut self, durable: tokio::sync::watch::Receiver<Option<u64>>) -> LogStore {
        self.snapshot = Some(durable);
        self
    }

    fn new(storage: Storage, wal: Arc<Wal>) -> LogStore {
        let (tx, rx) = mpsc::channel::<Flush>();
        let sync_wal = wal.clone();
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let timer = crate::metrics::METRICS.wal_fsync.start_timer();
                    let res = sync_wal.sync();
                    timer.observe_duration();
                    for w in waiting {
                        let res = match &res {
                            Ok(()) => Ok(()),
                            Err(e) => Err(super::io_err(e)),
                        };
                        match w {
                            Flush::Log(cb) => cb.log_io_completed(res),
                            Flush::Barrier(tx) => {
                                let _ = tx.send(res);
                            }
                        }
                    }
                }
            })
            .expect("spawn fsync thread");
        LogStore {
            storage,
            wal,
            flusher: tx,
            snapshot: None,
        }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        read_meta(&self.storage, key)
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<(), StorageError> {
        let b = bincode::serialize(v).map_err(write_err)?;
        self.storage.raft.insert(key, b).map_err(write_err)?;
        Ok(())
    }
}

/// What the flusher thread answers once the log written before it is on disk.
enum Flush {
    /// openraft's callback for an append.
    Log(LogFlushed<TypeConfig>),
    /// A caller that waits for the flush (`save_vote`).
    Barrier(tokio::sync::oneshot::Sender<std::io::Result<()>>),
}

/// A bincode value of the `raft` tree (vote, purge point, committed index).
fn read_meta<T: serde::de::DeserializeOwned>(
    storage: &Storage,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match storage.raft.get(key).map_err(read_err)? {
        Some(v) => Ok(Some(bincode::deserialize(&v).map_err(read_err)?)),
        None => Ok(None),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.wal.read(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta("last_purged")?;
        let last = self.wal.last_log_id().or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote_err = |e: String| {
            StorageError::from(StorageIOError::write_vote(openraft::AnyError::error(e)))
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flusher
            .send(Flush::Barrier(tx))
            .map_err(|_| vote_err("log flusher stopped".into()))?;
        rx.await
            .map_err(|_| vote_err("log flusher stopped".into()))?
            .map_err(|e| vote_err(e.to_string()))?;
        self.put_meta("vote", vote)?;
        self.storage.flush().await.map_err(|e| {
            StorageError::from(StorageIOError::write_vote(openraft::AnyError::error(
                e.to_string(),
            )))
        })?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Advisory: lets a restarted node re-apply up to here before serving.
        self.put_meta("committed", &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.get_meta::<Option<LogId>>("committed")?.flatten();
        let end = self.wal.last_log_id().or(self.get_meta("last_purged")?);
        Ok(committed.min(end))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.wal.append(&entries).map_err(write_err)?;
        self.flusher.send(Flush::Log(callback)).map_err(|_| {
            StorageError::from(StorageIOError::new(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                openraft::AnyError::error("fsync thread stopped"),
            ))
        })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal.truncate(log_id.index).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(rx) = self.snapshot.as_mut() {
            let covered = |d: &Option<u64>| *d >= Some(log_id.index);
            match tokio::time::timeout(PURGE_WAIT, rx.wait_for(covered)).await {
                Ok(Ok(_)) => {}
                _ => {
                    return Err(
                        StorageIOError::write_logs(openraft::AnyError::error(format!(
                        "no durable snapshot covers index {} within {PURGE_WAIT:?}: not purging",
                        log_id.index
                    )))
                        .into(),
                    )
                }
            }
        }
        // The purge point is made durable first: a crash in between leaves
        // entries the log skips when it is opened, never a hole.
        // Stored as a bare LogId: get_log_state reads it back as one.
        self.put_meta("last_purged", &log_id)?;
        self.storage.flush().await.map_err(|e| {
            StorageError::from(StorageIOError::write_logs(openraft::AnyError::error(
                e.to_string(),
            )))
        })?;
        self.wal.purge(log_id.index).map_err(write_err)
    }
}
