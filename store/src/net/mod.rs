//! Transport: how bytes reach and leave a member.
//!
//! - [`tls`]: rustls configs for the client and peer ports from etcd's flags.
//! - [`authority`]: the HTTP/2 `:authority` fix-up etcdctl 3.4 needs, between
//!   the TCP socket and tonic.
//! - [`wire`]: openraft's RPCs as length-prefixed frames on plain TCP.
//! - [`peers`]: cached connections to the other members (gRPC channels and
//!   frame connections), and when each last answered.
//!
//! Nothing here knows Raft or the etcd API: messages are bytes.

pub mod authority;
pub mod peers;
pub mod tls;
pub mod wire;

/// Largest encoded peer message (a frame or a gRPC message). Append batches
/// are cut well below it (`raft::APPEND_BATCH_BYTES`), and a single entry is
/// at most a 1.5 MiB request.
pub const MAX_PEER_MESSAGE: usize = 16 << 20;
