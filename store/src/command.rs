//! The Raft log entry format: what a committed entry asks the state machine to
//! do, and what applying it answered.
//!
//! [`Proposal`] is a versioned enum. Each version carries the requesting user,
//! because etcd checks permissions when an entry is applied (so a permission
//! revoked after proposal still applies). New commands are added as new
//! [`Command`] variants at the end; existing variants never change shape, so
//! logs and snapshots written by older binaries stay readable.
//!
//! etcd request and response messages travel as their protobuf encoding
//! ([`Proto`], from [`crate::codec`]). Variants are
//! only ever appended, here and in [`ApplyResult`] and `EtcdError`, because
//! members of different versions exchange them during a rolling upgrade.

use serde::{Deserialize, Serialize};

use cairn_proto::etcdserverpb as pb;

use crate::error::EtcdError;

pub use crate::codec::Proto;

/// One log entry's payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Proposal {
    V1 {
        /// Authenticated user that made the request (`None` without auth).
        user: Option<String>,
        cmd: Command,
    },
}

impl Proposal {
    pub fn new(user: Option<String>, cmd: Command) -> Proposal {
        Proposal::V1 { user, cmd }
    }

    pub fn command(&self) -> &Command {
        match self {
            Proposal::V1 { cmd, .. } => cmd,
        }
    }

    pub fn user(&self) -> Option<&str> {
        match self {
            Proposal::V1 { user, .. } => user.as_deref(),
        }
    }
}

/// What an entry asks the state machine to do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    Put(Proto<pb::PutRequest>),
    DeleteRange(Proto<pb::DeleteRangeRequest>),
    Txn(Proto<pb::TxnRequest>),
    Compact(Proto<pb::CompactionRequest>),
    /// A member publishes its name and client URLs (etcd's `publish`), so
    /// every member can list them.
    MemberAttributes {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// Creates a lease. The ID is chosen when the request is received (so
    /// every member applies the same one) and the TTL already raised to the
    /// minimum.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Revokes a lease (client request or expiry): its keys are deleted.
    LeaseRevoke {
        id: i64,
    },
    /// Raises or clears an alarm (etcd's AlarmType numbers).
    Alarm {
        activate: bool,
        member: u64,
        alarm: i32,
    },
    /// Requests the leader batched into one entry (see `batcher`); each is
    /// applied in order as if it had an entry of its own.
    Batch(Vec<Proposal>),
    /// A change to users, roles, permissions or the auth switch.
    Auth(crate::auth::AuthCmd),
    /// The leader's expiry of a lease whose deadline passed while it led in
    /// `term`. It revokes the lease only from an entry of that term. Queued
    /// across a change of leadership (the batcher proposes what waited in
    /// it once this member leads again), it lands in a later term, whose
    /// leader restarted every deadline and may have renewed the lease since:
    /// then it does nothing. (Last in the enum: the log's encoding of the
    /// variants before it is unchanged.)
    LeaseExpire {
        id: i64,
        term: u64,
    },
}

impl Command {
    /// Rough encoded size, to keep batches bounded without encoding twice.
    pub fn approx_size(&self) -> usize {
        match self {
            Command::Put(Proto(p)) => p.key.len() + p.value.len() + 32,
            Command::Txn(Proto(t)) => prost::Message::encoded_len(t),
            Command::Batch(reqs) => reqs.iter().map(|r| r.command().approx_size()).sum(),
            _ => 64,
        }
    }
}

/// What applying an entry answered. ApplyResult headers carry only the revision
/// here; each member fills in cluster_id, member_id and raft_term.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub enum ApplyResult {
    Put(Proto<pb::PutResponse>),
    DeleteRange(Proto<pb::DeleteRangeResponse>),
    Txn(Proto<pb::TxnResponse>),
    Compact(Proto<pb::CompactionResponse>),
    Error(EtcdError),
    /// Membership entries, blank entries and attribute updates.
    #[default]
    Done,
    LeaseGrant(Proto<pb::LeaseGrantResponse>),
    LeaseRevoke(Proto<pb::LeaseRevokeResponse>),
    /// Alarms raised after an `Alarm` command, as (member, type).
    Alarms(Vec<(u64, i32)>),
    /// One response per request of a `Command::Batch`, in order.
    Batch(Vec<ApplyResult>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrips_through_bincode() {
        let r = Proposal::new(
            Some("root".into()),
            Command::Put(Proto(pb::PutRequest {
                key: b"k".to_vec(),
                value: vec![0, 1, 2],
                ..Default::default()
            })),
        );
        let b = bincode::serialize(&r).unwrap();
        let back: Proposal = bincode::deserialize(&b).unwrap();
        assert_eq!(back, r);
    }
}
