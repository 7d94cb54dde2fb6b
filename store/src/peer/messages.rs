//! What members ask each other beyond openraft's RPCs, as bincode in a
//! `RaftMessage`: a forwarded write and the leader's reply, lease calls and
//! membership changes (which only the leader answers), and the leader's
//! word in a leadership transfer.

use serde::{Deserialize, Serialize};

use crate::command::ApplyResult;
use crate::error::EtcdError;

/// Answer of the leader to a forwarded request.
#[derive(Serialize, Deserialize, Debug)]
pub enum ForwardReply {
    /// Applied at `index` on the leader with this result.
    Applied { index: u64, response: ApplyResult },
    /// The receiver is not the leader; nothing was proposed.
    NotLeader { leader: Option<u64> },
    /// The receiver could not tell whether the request was committed.
    Failed(EtcdError),
}

/// A lease question only the leader can answer.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum LeaseCall {
    KeepAlive(i64),
    TimeToLive { id: i64, keys: bool },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum LeaseAnswer {
    /// New TTL; 0 for an unknown lease (etcd answers so, without error).
    KeepAlive(i64),
    /// Remaining and granted TTL; remaining -1 for an unknown lease.
    TimeToLive {
        ttl: i64,
        granted: i64,
        keys: Vec<Vec<u8>>,
    },
    NotLeader,
    Failed(EtcdError),
}

/// A membership change, run on the leader.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum MemberCall {
    Add {
        peer_urls: Vec<String>,
        learner: bool,
        unix_time: i64,
    },
    Remove {
        id: u64,
    },
    Update {
        id: u64,
        peer_urls: Vec<String>,
    },
    Promote {
        id: u64,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum MemberAnswer {
    /// Done; for Add, the new member's ID.
    Done {
        id: u64,
    },
    NotLeader,
    Failed(EtcdError),
}

/// The leader holding `leader_vote` hands leadership to `to` (see
/// `crate::transfer`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct TransferCall {
    pub leader_vote: openraft::Vote<u64>,
    pub to: u64,
}
