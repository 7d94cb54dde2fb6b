//! `cairn-store`: a member of Cairn's three-node Raft store, speaking etcd's v3 API.
//!
//! # The life of a Put
//!
//! The one place that explains durability; the other modules' headers point here.
//!
//! 1. **gRPC** (`api/kv.rs`, `KvService::put`): the request's size and shape
//!    are checked (`api/validate.rs`), the token is resolved to a user
//!    (`auth`), and the write becomes a [`command::Command::Put`].
//! 2. **Proposal** (`node.rs`, `Node::propose`): the command and the user
//!    become one [`command::Proposal`]. `batcher.rs` gathers the writes that
//!    arrive together into one Raft entry. On a follower that batch is
//!    forwarded as one call (`peer/calls.rs`, `PeerPool::forward`) to the
//!    leader's `api/peer.rs`, which proposes it there; a forward that never
//!    left is retried, one that may have arrived is "leader changed".
//! 3. **The leader's log** (`raft/log_store.rs`, `raft/wal.rs`): openraft
//!    hands the entry to `LogStore::append`, which writes it to the current
//!    WAL segment and queues a flush. The leader does not wait: it
//!    replicates at once (`vendor/openraft`, `CAIRN.md`).
//! 4. **Replication** (`raft/network.rs` over `net/wire.rs` frames): each
//!    follower's `api/peer.rs` hands the append to its openraft, whose log
//!    store writes it and answers only after the fsync thread's
//!    `fdatasync` (one sync for everything queued: group commit).
//! 5. **Commit**: the entry is committed once a quorum has it on disk; the
//!    leader counts itself only after its own fsync reported back
//!    (`Notify::LocalLogFlushed`). Nothing is acknowledged before that.
//! 6. **Apply** (`raft/state_machine.rs` into `mvcc/apply.rs`): every member
//!    applies committed entries in order to the in-memory tree (`mvcc`),
//!    checking permissions with the user the entry carries, and wakes the
//!    watchers (`watch.rs`). The tree's durable form is the snapshot file
//!    (`raft/snapshot_file.rs`) plus the WAL after it.
//! 7. **Answer**: the proposer gets the apply result (a forwarded write also
//!    waits until its own member applied the entry, so a read there sees it),
//!    and `api/kv.rs` returns the `PutResponse` with the header revision.
//!
//! After a crash a member reads its snapshot file and re-applies the WAL
//! after it; the WAL is fsynced at open before it counts as durable, a torn
//! tail is cut and anything else corrupt stops the member (`raft/wal.rs`).
//! A member that was leader campaigns for a new term instead of resuming
//! its old one (`vendor/openraft/CAIRN.md`).
//!
//! # Map of the crate
//!
//! Modules depend only on modules listed above them in this order:
//! - [`error`], [`ids`], [`failpoint`], [`metrics`] (the registry), [`codec`],
//!   [`command`] (the Raft log entry format), [`storage`] (the data dir and
//!   sled: vote and member metadata), [`config`] (etcd's flags and `ETCD_*`).
//! - [`net`]: transport: TLS, the `:authority` fix-up, Raft frames, peer connections.
//! - [`mvcc`]: etcd's revisioned key-value store, in memory; [`auth`]: users,
//!   roles, permissions, tokens; [`watch`]: the watchers of a stream, sharing
//!   one history read and one encoding of the events per step.
//! - [`raft`]: the openraft adapters: WAL log store, state machine and its
//!   snapshot file, openraft's network.
//! - [`identity`]: who a member is, written once into its data dir.
//! - [`peer`]: what members ask each other besides Raft (forwarding, read
//!   index, leases, membership), client side.
//! - [`batcher`], [`lessor`], [`node`]: a running member: proposing through
//!   the leader, read index and leadership confirmation.
//! - [`lease`], [`membership`], [`compactor`]: leader duties on top of a node.
//! - [`bbolt`]: bbolt's file format; [`etcd_db`]: the state tree as etcd 3.4's
//!   backend in it (the file `etcdctl snapshot save` writes).
//! - [`restore`]: the snapshot file (`etcdctl snapshot save`) and `cairn snapshot restore`.
//! - [`api`]: the gRPC services clients and peers call, the JSON gateway.
//! - [`server`]: start-up (bootstrap / join / restart) and the listeners.

// openraft's storage traits return its `StorageError` (>200 bytes) by value;
// helpers that feed them use the same type rather than boxing and unboxing.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
pub mod batcher;
pub mod bbolt;
pub mod codec;
pub mod command;
pub mod compactor;
pub mod config;
pub mod error;
pub mod etcd_db;
pub mod failpoint;
pub mod identity;
pub mod ids;
pub mod lease;
pub mod lessor;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod net;
pub mod node;
pub mod peer;
pub mod raft;
pub mod restore;
pub mod server;
pub mod storage;
#[cfg(test)]
mod testing;
pub mod transfer;
pub mod watch;

pub use config::StoreConfig;
pub use server::run;
