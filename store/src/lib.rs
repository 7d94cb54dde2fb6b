//! `cairn-store`: a member of Cairn's three-node Raft store, speaking etcd's v3 API.
//!
//! Map of the crate:
//! - [`config`]: etcd's flags and `ETCD_*` variables.
//! - [`server`]: start-up (bootstrap / join / restart) and the listeners.
//! - [`batcher`]: concurrent writes proposed as one Raft entry.
//! - [`node`]: a running member: propose through the leader, read-index barrier.
//! - [`command`]: the Raft log entry format (versioned, carries the user).
//! - [`raft`]: openraft wiring: WAL log store, state machine and its snapshot file, peer network (Raft frames on TCP, gRPC for the rest).
//! - [`compactor`]: `--auto-compaction-*`, proposed by the leader.
//! - [`lease`]: lease deadlines on the leader, expiry, keep-alive.
//! - [`auth`]: users, roles, permissions and tokens (etcd's v3 auth).
//! - [`membership`]: member add/remove/update/promote with etcd's checks.
//! - [`watch`]: watchers, reading the store's history.
//! - [`mvcc`]: etcd's revisioned key-value store, in memory.
//! - [`api`]: the gRPC services clients call.
//! - [`storage`]: the data dir layout and sled (Raft metadata); the only module that opens it.
//! - [`tls`]: rustls configs for the client and peer ports from etcd's flags.
//! - [`metrics`]: `/metrics` with etcd's metric names.
//! - [`restore`]: the snapshot file (`etcdctl snapshot save`) and `cairn snapshot restore`.
//! - [`error`]: etcd's error codes and message strings.
//! - [`failpoint`]: storage faults a test can switch on (`CAIRN_FAILPOINTS`).
//! - [`ids`]: etcd-compatible member and cluster IDs.

// openraft's storage traits return its `StorageError` (>200 bytes) by value;
// helpers that feed them use the same type rather than boxing and unboxing.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
pub mod batcher;
pub mod command;
pub mod compactor;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod ids;
pub mod lease;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod restore;
pub mod server;
pub mod storage;
pub mod tls;
pub mod watch;

pub use config::StoreConfig;
pub use server::run;
