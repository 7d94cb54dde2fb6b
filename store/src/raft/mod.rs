//! Raft: openraft's type configuration and the pieces Cairn plugs into it.
//!
//! - [`log_store`]: openraft's log storage: the log in [`wal`], the vote in
//!   sled, fsynced before openraft is told.
//! - [`wal`]: the Raft log's segment files (append, fdatasync, read back).
//! - [`state_machine`]: applies entries to [`crate::mvcc`], builds and installs snapshots.
//! - [`snapshot_file`]: the state's image on disk, which with the log makes it durable.
//! - [`network`]: openraft's RPCs to other members (frames, or gRPC).

pub mod log_store;
pub mod network;
pub mod snapshot_file;
pub mod state_machine;
pub mod wal;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{ApplyResult, Proposal};

/// What the Raft membership records about a member: its name and peer URLs
/// (client URLs arrive later, through `Command::MemberAttributes`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl std::fmt::Display for MemberNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

openraft::declare_raft_types!(
    /// Cairn's Raft types: member IDs are etcd-style u64s.
    pub TypeConfig:
        D = Proposal,
        R = ApplyResult,
        NodeId = u64,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<u64, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, MemberNode>;
pub type StorageError = openraft::StorageError<u64>;

/// Append batches are cut at this many encoded bytes: small enough that the
/// follower writes and fsyncs one well within the append deadline (half the
/// election timeout), large enough that a lagging follower catches up at
/// hundreds of MB/s on loopback.
pub const APPEND_BATCH_BYTES: usize = 1 << 20;

pub(crate) fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
