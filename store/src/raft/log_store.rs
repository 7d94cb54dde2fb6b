//! The Raft log and vote in sled.
//!
//! Durability: `save_vote` returns only after [`Storage::sync`]. `append` hands
//! openraft's callback to one flusher thread, which fsyncs once for everything
//! appended since its last flush (group commit) and only then fires the
//! callbacks, in order. Nothing is acknowledged on sled's background flush.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, StorageIOError};

use super::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::storage::Storage;

#[derive(Clone)]
pub struct LogStore {
    storage: Storage,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    pub fn new(storage: Storage) -> LogStore {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let sync_storage = storage.clone();
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let timer = crate::metrics::METRICS.wal_fsync.start_timer();
                    let res = sync_storage.sync();
                    timer.observe_duration();
                    for cb in waiting {
                        cb.log_io_completed(match &res {
                            Ok(()) => Ok(()),
                            Err(e) => Err(super::io_err(e)),
                        });
                    }
                }
            })
            .expect("spawn fsync thread");
        LogStore {
            storage,
            flusher: tx,
        }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        match self.storage.raft.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(bincode::deserialize(&v).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<(), StorageError> {
        let b = bincode::serialize(v).map_err(write_err)?;
        self.storage.raft.insert(key, b).map_err(write_err)?;
        Ok(())
    }
}

fn bound_key(b: Bound<&u64>) -> Bound<[u8; 8]> {
    match b {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let r = (bound_key(range.start_bound()), bound_key(range.end_bound()));
        let mut out = Vec::new();
        for item in self.storage.log.range(r) {
            let (_, v) = item.map_err(read_err)?;
            out.push(bincode::deserialize::<Entry>(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta("last_purged")?;
        let last = match self.storage.log.last().map_err(read_err)? {
            Some((_, v)) => Some(
                *bincode::deserialize::<Entry>(&v)
                    .map_err(read_err)?
                    .get_log_id(),
            ),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
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
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
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
        let mut batch = sled::Batch::default();
        for e in entries {
            let b = bincode::serialize(&e).map_err(|err| {
                StorageError::from(StorageIOError::write_log_entry(*e.get_log_id(), &err))
            })?;
            batch.insert(&e.get_log_id().index.to_be_bytes(), b);
        }
        self.storage.log.apply_batch(batch).map_err(write_err)?;
        self.flusher.send(callback).map_err(|_| {
            StorageError::from(StorageIOError::new(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                openraft::AnyError::error("fsync thread stopped"),
            ))
        })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.storage.log.range(log_id.index.to_be_bytes()..) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.storage.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point is recorded first: a crash in between leaves entries
        // that get_log_state reports as purged, never a hole.
        // Stored as a bare LogId: get_log_state reads it back as one.
        self.put_meta("last_purged", &log_id)?;
        let mut batch = sled::Batch::default();
        for item in self.storage.log.range(..=log_id.index.to_be_bytes()) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.storage.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}
